//! OpenTelemetry traces that follow each event from the publisher's span to the socket write.
//!
//! Per event (when tracing is on and the trace is sampled):
//! - `sse_bridge.receive` (consumer span): a child of the publisher's span when the message
//!   carried W3C `traceparent`/`tracestate` (NATS headers, any capitalisation; the Redis
//!   envelope's `traceparent`; `/publish`'s own request headers). Starts when the source
//!   received the message, ends when the event is sequenced and fanned out.
//! - `sse_bridge.fan_out`: topic, subscriber count, dropped and conflated counts.
//! - `sse_bridge.deliver`: ONE span per event, not per subscriber, that ends when the last
//!   subscriber's write completed (or its copy was discarded), with `delivered`, `dropped` and
//!   the slowest write latency.
//!
//! Per stream: `sse_bridge.stream` (topics, events written, end reason), with span events for
//! the replay (`replay`, count) and the gap signal (`gap`, reason).
//!
//! The OpenTelemetry API is used directly, not through `tracing` spans: the delivery span
//! starts in the sequencer and ends in whichever connection task writes last, with explicit
//! start times, which `tracing`'s entered-scope model does not express without per-event
//! bookkeeping. When tracing is off, `Telemetry` holds no tracer and every hook is one branch on
//! an `Option`: no allocation, no clock read (see the fan-out benchmark).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Span as _, SpanKind, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, Span};
use parking_lot::Mutex;

use crate::config::TelemetryConfig;

/// W3C trace context as the publisher sent it; kept so traces can follow the event later.
/// Sources fill it from broker headers or envelopes; the receive span continues it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    /// The W3C `traceparent` (version, trace id, parent span id, flags).
    pub traceparent: Option<String>,
    /// The W3C `tracestate`: vendor entries passed on as received.
    pub tracestate: Option<String>,
    /// When the publisher published, in Unix milliseconds, if it said (`Sse-Published-At`
    /// header, `published_at` envelope field): the start of publish-to-write latency.
    pub published_at_ms: Option<u64>,
}

/// What one fan-out did, in the terms its span records. The sequencer fills it from the
/// registry's `FanoutStats` (`FanoutStats::span_counts`), so this module needs no event type.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FanoutCounts {
    /// Queues the event was placed in: the copies the delivery span waits for.
    pub subscribers: usize,
    /// Copies lost: subscribers cut for overflowing, plus older events dropped to make room.
    pub dropped: usize,
    /// Older queued events of the same topic replaced (`latest`).
    pub conflated: usize,
    /// Subscribers cut for overflowing on this event: their copy is never written.
    pub disconnected: usize,
}

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up OTLP trace export: {0}")]
pub struct TelemetryError(String);

/// The tracer of one bridge, or nothing when tracing is off.
#[derive(Debug, Default)]
pub struct Telemetry {
    tracer: Option<SdkTracer>,
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Tracing off: every hook is a no-op.
    pub fn off() -> Self {
        Telemetry::default()
    }

    /// From the configuration: OTLP over HTTP/protobuf to `telemetry.otlp_endpoint` (or the
    /// standard `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`), sampling
    /// `telemetry.sampling_ratio` of root traces and following the publisher's decision.
    pub fn from_config(cfg: &TelemetryConfig) -> Result<Self, TelemetryError> {
        if !cfg.traces {
            return Ok(Telemetry::off());
        }
        use opentelemetry_otlp::WithExportConfig;
        let mut builder = opentelemetry_otlp::SpanExporter::builder().with_http();
        if let Some(endpoint) = &cfg.otlp_endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        let exporter =
            builder.with_timeout(Duration::from_secs(10)).build().map_err(|e| TelemetryError(e.to_string()))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(cfg.sampling_ratio))))
            .with_resource(Resource::builder().with_service_name(cfg.service_name.clone()).build())
            .build();
        Ok(Self::with_provider(provider))
    }

    /// Tracing into a given provider (tests use an in-memory exporter).
    pub fn with_provider(provider: SdkTracerProvider) -> Self {
        Telemetry { tracer: Some(provider.tracer("sse-bridge")), provider: Some(provider) }
    }

    /// Whether spans are produced.
    pub fn enabled(&self) -> bool {
        self.tracer.is_some()
    }

    /// Exports what is buffered and stops the exporter (at shutdown).
    pub fn shutdown(&self) {
        if let Some(p) = &self.provider {
            let _ = p.shutdown_with_timeout(Duration::from_secs(5));
        }
    }

    /// Exports what is buffered now.
    pub fn flush(&self) {
        if let Some(p) = &self.provider {
            let _ = p.force_flush();
        }
    }

    /// Starts the receive span of a message from the source named `source`
    /// (`SourceKind::as_str`); None when off or not sampled.
    pub fn receive(
        &self,
        trace: &TraceContext,
        source: &'static str,
        topic: &str,
        received: Instant,
    ) -> Option<Receive> {
        let tracer = self.tracer.as_ref()?;
        let parent = if trace.traceparent.is_some() {
            TraceContextPropagator::new().extract(&HeaderPair(trace))
        } else {
            Context::new()
        };
        let start = SystemTime::now() - received.elapsed();
        let span = tracer
            .span_builder("sse_bridge.receive")
            .with_kind(SpanKind::Consumer)
            .with_start_time(start)
            .with_attributes([
                KeyValue::new("messaging.system", source),
                KeyValue::new("messaging.destination.name", topic.to_owned()),
            ])
            .start_with_context(tracer, &parent);
        if !span.is_recording() {
            return None;
        }
        Some(Receive { tracer: tracer.clone(), cx: parent.with_span(span) })
    }

    /// Starts the span of one subscriber stream; None when off.
    pub fn stream(&self, topics: &[String], resume: bool) -> Option<Box<StreamSpan>> {
        let tracer = self.tracer.as_ref()?;
        let span = tracer
            .span_builder("sse_bridge.stream")
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("sse_bridge.topics", topics.join(",")),
                KeyValue::new("sse_bridge.resume", resume),
            ])
            .start(tracer);
        Some(Box::new(StreamSpan { span, events: 0 }))
    }
}

struct HeaderPair<'a>(&'a TraceContext);

impl Extractor for HeaderPair<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.0.traceparent.as_deref(),
            "tracestate" => self.0.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// A sampled message between its arrival and its fan-out.
pub struct Receive {
    tracer: SdkTracer,
    /// Holds the receive span, so the children's parent is the receive span.
    cx: Context,
}

impl std::fmt::Debug for Receive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Receive")
    }
}

impl Receive {
    /// Names the event and starts its delivery span (a child of the receive span); the
    /// returned tracker travels with the event into every queue.
    pub fn sequenced(&self, id: impl std::fmt::Display) -> Arc<EventTrace> {
        self.cx.span().set_attribute(KeyValue::new("sse_bridge.event_id", id.to_string()));
        let span = self
            .tracer
            .span_builder("sse_bridge.deliver")
            .with_kind(SpanKind::Producer)
            .start_with_context(&self.tracer, &self.cx);
        Arc::new(EventTrace {
            span: Mutex::new(Some(span)),
            pending: AtomicI64::new(0),
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            slowest_us: AtomicU64::new(0),
        })
    }

    /// Records the fan-out (which ran from `started` to now), arms the delivery span with the
    /// number of queues the event went into, and ends the receive span.
    pub fn fanned_out(self, started: SystemTime, topic: &str, fanout: FanoutCounts, trace: &EventTrace) {
        let mut span = self
            .tracer
            .span_builder("sse_bridge.fan_out")
            .with_start_time(started)
            .start_with_context(&self.tracer, &self.cx);
        span.set_attributes([
            KeyValue::new("messaging.destination.name", topic.to_owned()),
            KeyValue::new("sse_bridge.subscribers", fanout.subscribers as i64),
            KeyValue::new("sse_bridge.dropped", fanout.dropped as i64),
            KeyValue::new("sse_bridge.conflated", fanout.conflated as i64),
        ]);
        span.end();
        trace.dropped.fetch_add(fanout.disconnected as u64, Ordering::Relaxed);
        trace.expect(fanout.subscribers);
        self.cx.span().end();
    }
}

/// The delivery span of one event, shared by every queue that holds the event. Completions
/// (written or discarded) count down; the last one ends the span.
pub struct EventTrace {
    span: Mutex<Option<Span>>,
    /// Queued copies not yet completed, minus completions that came before `expect`.
    pending: AtomicI64,
    delivered: AtomicU64,
    dropped: AtomicU64,
    slowest_us: AtomicU64,
}

impl std::fmt::Debug for EventTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventTrace").field("pending", &self.pending).finish_non_exhaustive()
    }
}

impl EventTrace {
    fn expect(&self, queued: usize) {
        let n = queued as i64;
        if self.pending.fetch_add(n, Ordering::AcqRel) + n == 0 {
            self.finish();
        }
    }

    /// One subscriber's write of the event completed `latency` after it arrived.
    pub fn written(&self, latency: Duration) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.slowest_us.fetch_max(latency.as_micros() as u64, Ordering::Relaxed);
        self.complete();
    }

    /// One subscriber's copy was dropped unwritten (slow-consumer policy, client gone).
    pub fn discarded(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.complete();
    }

    fn complete(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.finish();
        }
    }

    fn finish(&self) {
        if let Some(mut span) = self.span.lock().take() {
            span.set_attributes([
                KeyValue::new("sse_bridge.delivered", self.delivered.load(Ordering::Relaxed) as i64),
                KeyValue::new("sse_bridge.dropped", self.dropped.load(Ordering::Relaxed) as i64),
                KeyValue::new("sse_bridge.slowest_write_ms", self.slowest_us.load(Ordering::Relaxed) as f64 / 1000.0),
            ]);
            span.end();
        }
    }
}

/// The span of one subscriber stream.
pub struct StreamSpan {
    span: Span,
    events: u64,
}

impl std::fmt::Debug for StreamSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSpan").field("events", &self.events).finish()
    }
}

impl StreamSpan {
    /// Records the resume: events replayed and the gap reason, if any.
    pub fn resumed(&mut self, replayed: usize, gap: Option<&str>) {
        if let Some(reason) = gap {
            self.span.add_event("gap", vec![KeyValue::new("sse_bridge.gap.reason", reason.to_owned())]);
        }
        self.span.add_event("replay", vec![KeyValue::new("sse_bridge.replayed", replayed as i64)]);
    }

    /// Counts a live event written.
    pub fn written(&mut self) {
        self.events += 1;
    }

    /// Ends the span with the stream's end reason.
    pub fn end(mut self, reason: &str) {
        self.span.set_attributes([
            KeyValue::new("sse_bridge.events", self.events as i64),
            KeyValue::new("sse_bridge.end_reason", reason.to_owned()),
        ]);
        self.span.end();
    }
}
