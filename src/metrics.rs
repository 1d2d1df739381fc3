//! The daemon's own health, in Prometheus text format (encoded by `prometheus-client`, the
//! Prometheus project's own Rust client, rather than by hand).
//!
//! Counters are updated on the hot path through pre-resolved handles (no label hashing per
//! event). Gauges that mirror state owned elsewhere (open streams, queue depth, tasks, RSS,
//! broker state) are read when `/metrics` is scraped, so they cost nothing between scrapes.
//!
//! Two registries are encoded into one exposition: the bridge's own metrics under the
//! `sse_bridge_` prefix, and the standard `process_*` families ([`process`]) under the names
//! every stock dashboard uses. jemalloc's figures ([`allocator`]) are read on each scrape too.
//!
//! This module knows no domain type: label values are `&'static str` that the callers take
//! from their own types (`reason.as_str()`, `kind.as_str()`), so every layer above may count
//! without this one importing it.

mod allocator;
mod latency;
mod process;
#[cfg(test)]
mod tests;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry, Unit};

pub use allocator::AllocatorCollector;
pub use latency::LatencyHistogram;
pub use process::ProcessCollector;

/// Label set with the source of an event.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: &'static str,
}

/// Bucket label of the queue depth distribution.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LeLabel {
    pub le: &'static str,
}

/// Upper bounds of the queue depth distribution.
pub const QUEUE_DEPTH_BUCKETS: [(usize, &str); 8] =
    [(0, "0"), (1, "1"), (4, "4"), (16, "16"), (64, "64"), (256, "256"), (1024, "1024"), (usize::MAX, "+Inf")];

/// Label set of a resume's broker read: the broker kind and how the read ended.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResumeReadLabel {
    pub kind: &'static str,
    pub outcome: &'static str,
}

/// Label set of a live source's loss signal: the source and the gap reason.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceGapLabel {
    pub source: &'static str,
    pub reason: &'static str,
}

/// Label set with a reason (why a stream ended, why a message was dropped).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// All metrics of one bridge instance.
///
/// Each field is the handle of one metric, updated where the thing it counts happens; its
/// name and help text (its documentation, shown by `/metrics`) are in the `register_*`
/// function of its concern below.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Unprefixed: the standard `process_*` families.
    standard: Registry,
    pub events_received: Family<SourceLabel, Counter>,
    pub events_malformed: Family<SourceLabel, Counter>,
    pub events_non_utf8: Counter,
    pub event_types_dropped: Counter,
    /// Core NATS copies of messages a JetStream stream also delivers, dropped.
    pub events_duplicate_dropped: Counter,
    pub deliveries: Counter,
    pub delivery_latency: LatencyHistogram,
    pub publish_latency: LatencyHistogram,
    pub cpu_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    pub open_connections: Gauge,
    pub queue_depth: Family<LeLabel, Gauge>,
    pub drops: Family<ReasonLabel, Counter>,
    pub streams_opened: Counter,
    pub disconnects: Family<ReasonLabel, Counter>,
    pub requests_rejected: Family<ReasonLabel, Counter>,
    pub replayed_events: Counter,
    pub gap_events: Family<ReasonLabel, Counter>,
    pub replay_events: Gauge,
    pub replay_bytes: Gauge,
    pub replay_topics: Gauge,
    pub open_streams: Gauge,
    pub drain_streams_left: Gauge,
    pub subscription_filters: Gauge,
    pub queued_frames: Gauge,
    pub ingest_queue_depth: Gauge,
    pub alive_tasks: Gauge,
    pub resident_memory: Gauge,
    pub heap: Gauge,
    pub memory_limit: Gauge,
    pub memory_shed_ring: Counter,
    pub memory_shed_streams: Counter,
    pub broker_up: Family<SourceLabel, Gauge>,
    pub broker_reconnects: Family<SourceLabel, Counter>,
    pub resume_reads: Family<ResumeReadLabel, Counter>,
    pub resume_reads_active: Gauge,
    pub resume_reads_peak: Gauge,
    pub resume_reads_coalesced: Counter,
    pub resume_spills: Counter,
    pub resume_pages: Counter,
    pub resume_frames_shared: Counter,
    pub replayed_from_broker: Counter,
    pub connections_in_head: Gauge,
    pub replay_inflight_bytes: Gauge,
    pub allocator_purges: Counter,
    pub source_gaps: Family<SourceGapLabel, Counter>,
    pub source_lost_messages: Family<SourceLabel, Counter>,
    pub ingest_queue_bytes: Gauge,
    pub upstream_subscriptions: Family<SourceLabel, Gauge>,
    pub upstream_subscribes: Family<SourceLabel, Counter>,
    pub upstream_unsubscribes: Family<SourceLabel, Counter>,
    pub events_unwanted: Family<SourceLabel, Counter>,
    pub distinct_patterns: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers a handle under `name`; the registry keeps a clone that shares the value.
fn add(r: &mut Registry, name: &str, help: &str, metric: &(impl Metric + Clone)) {
    r.register(name, help, metric.clone());
}

/// [`add`] with a unit, which Prometheus appends to the name (`_seconds`, `_bytes`).
fn add_in(r: &mut Registry, name: &str, help: &str, unit: Unit, metric: &(impl Metric + Clone)) {
    r.register_with_unit(name, help, unit, metric.clone());
}

impl Metrics {
    /// Creates and registers every metric under the `sse_bridge_` prefix.
    pub fn new() -> Self {
        let mut m = Self::unregistered();
        m.register_sources();
        m.register_delivery();
        m.register_streams();
        m.register_replay();
        m.register_resume();
        m.register_process();
        m.register_bounds();
        m.register_source_losses();
        m.register_interest();
        m.registry.register_collector(Box::new(AllocatorCollector));
        m.standard.register_collector(Box::new(ProcessCollector));
        m
    }

    /// Every handle at zero, none registered yet.
    fn unregistered() -> Self {
        Metrics {
            registry: Registry::with_prefix("sse_bridge"),
            standard: Registry::default(),
            events_received: Family::default(),
            events_malformed: Family::default(),
            events_non_utf8: Counter::default(),
            event_types_dropped: Counter::default(),
            events_duplicate_dropped: Counter::default(),
            deliveries: Counter::default(),
            delivery_latency: LatencyHistogram::default(),
            publish_latency: LatencyHistogram::default(),
            cpu_seconds: Counter::default(),
            open_connections: Gauge::default(),
            queue_depth: Family::default(),
            drops: Family::default(),
            streams_opened: Counter::default(),
            disconnects: Family::default(),
            requests_rejected: Family::default(),
            replayed_events: Counter::default(),
            gap_events: Family::default(),
            replay_events: Gauge::default(),
            replay_bytes: Gauge::default(),
            replay_topics: Gauge::default(),
            open_streams: Gauge::default(),
            drain_streams_left: Gauge::default(),
            subscription_filters: Gauge::default(),
            queued_frames: Gauge::default(),
            ingest_queue_depth: Gauge::default(),
            alive_tasks: Gauge::default(),
            resident_memory: Gauge::default(),
            heap: Gauge::default(),
            memory_limit: Gauge::default(),
            memory_shed_ring: Counter::default(),
            memory_shed_streams: Counter::default(),
            broker_up: Family::default(),
            broker_reconnects: Family::default(),
            resume_reads: Family::default(),
            resume_reads_active: Gauge::default(),
            resume_reads_peak: Gauge::default(),
            resume_reads_coalesced: Counter::default(),
            resume_spills: Counter::default(),
            resume_pages: Counter::default(),
            resume_frames_shared: Counter::default(),
            replayed_from_broker: Counter::default(),
            connections_in_head: Gauge::default(),
            replay_inflight_bytes: Gauge::default(),
            allocator_purges: Counter::default(),
            source_gaps: Family::default(),
            source_lost_messages: Family::default(),
            ingest_queue_bytes: Gauge::default(),
            upstream_subscriptions: Family::default(),
            upstream_subscribes: Family::default(),
            upstream_unsubscribes: Family::default(),
            events_unwanted: Family::default(),
            distinct_patterns: Gauge::default(),
        }
    }

    /// What comes in from the brokers and `/publish`, up to the sequencer.
    fn register_sources(&mut self) {
        let r = &mut self.registry;
        add(r, "events_received", "Messages received from each source and sequenced", &self.events_received);
        add(
            r,
            "events_malformed",
            "Broker messages dropped: not a valid envelope, or larger than the source's max_message_bytes",
            &self.events_malformed,
        );
        add(
            r,
            "events_non_utf8",
            "Payloads that were not UTF-8 and were sent with U+FFFD replacements",
            &self.events_non_utf8,
        );
        add(
            r,
            "event_types_dropped",
            "Event types left out because they were unusable or reserved",
            &self.event_types_dropped,
        );
        add(
            r,
            "events_duplicate_dropped",
            "Core NATS messages dropped because a JetStream stream captures their subject and delivers them",
            &self.events_duplicate_dropped,
        );
        add(
            r,
            "ingest_queue_depth",
            "Messages waiting between the sources and the sequencer",
            &self.ingest_queue_depth,
        );
        add(r, "broker_up", "1 while the source's broker connection is up", &self.broker_up);
        add(r, "broker_reconnects", "Broker reconnections after the first connection", &self.broker_reconnects);
    }

    /// The fan-out into subscriber queues and the hand-off to the socket.
    fn register_delivery(&mut self) {
        let r = &mut self.registry;
        add(r, "deliveries", "Events placed in a subscriber queue", &self.deliveries);
        add(r, "dropped_events", "Queued events dropped by drop-oldest or replaced by latest, by reason", &self.drops);
        add_in(
            r,
            "delivery_latency",
            "From the broker message's arrival at the bridge to its hand-off to the socket",
            Unit::Seconds,
            &self.delivery_latency,
        );
        add_in(
            r,
            "publish_latency",
            "From the publisher's timestamp (Sse-Published-At, envelope published_at) to the hand-off to the socket",
            Unit::Seconds,
            &self.publish_latency,
        );
        add(
            r,
            "subscription_filters",
            "Distinct topics and patterns with subscribers, summed over registry shards",
            &self.subscription_filters,
        );
        add(r, "queued_frames", "Frames waiting in subscriber queues", &self.queued_frames);
    }

    /// Connections and streams: opened, open, refused, ended.
    fn register_streams(&mut self) {
        let r = &mut self.registry;
        add(r, "open_connections", "TCP connections open on the public listener", &self.open_connections);
        add(r, "queue_depth_streams", "Streams by live events queued, cumulative (le)", &self.queue_depth);
        add(r, "streams_opened", "SSE streams opened", &self.streams_opened);
        add(r, "disconnects", "SSE streams ended, by reason", &self.disconnects);
        add(r, "requests_rejected", "Requests refused before a stream started, by reason", &self.requests_rejected);
        add(r, "open_streams", "SSE streams open now", &self.open_streams);
        add(
            r,
            "distinct_patterns",
            "Distinct patterns held by open streams (capped by limits.max_patterns and, per address, limits.max_patterns_per_ip)",
            &self.distinct_patterns,
        );
        add(
            r,
            "drain_streams_left",
            "Streams still to be ended by the paced drain after SIGTERM (0 when not draining)",
            &self.drain_streams_left,
        );
    }

    /// The replay rings and the resumes they serve.
    fn register_replay(&mut self) {
        let r = &mut self.registry;
        add(r, "replayed_events", "Events sent from the replay store to resuming streams", &self.replayed_events);
        add(r, "gap_events", "sse-bridge.gap signals sent, by reason", &self.gap_events);
        add(r, "replay_retained_events", "Events held in the replay store", &self.replay_events);
        add_in(
            r,
            "replay_retained",
            "Bytes held in the replay store (frames and bookkeeping)",
            Unit::Bytes,
            &self.replay_bytes,
        );
        add(r, "replay_topics", "Topics with a replay ring", &self.replay_topics);
    }

    /// Resumes older than the ring, read back from the durable brokers.
    fn register_resume(&mut self) {
        let r = &mut self.registry;
        add(
            r,
            "resume_broker_reads",
            "Reads of durable history from a broker for resumes older than the ring, by outcome",
            &self.resume_reads,
        );
        add(
            r,
            "resume_broker_reads_active",
            "Broker reads for resumes running now (bounded by resume.max_concurrent_reads)",
            &self.resume_reads_active,
        );
        add(
            r,
            "resume_broker_reads_peak",
            "Most broker reads for resumes that ran at once since start",
            &self.resume_reads_peak,
        );
        add(
            r,
            "resume_broker_reads_coalesced",
            "Resume reads served by joining an identical read already running",
            &self.resume_reads_coalesced,
        );
        add(
            r,
            "resume_spills",
            "Resuming streams whose full queue spilled and that resumed in place (policy spill-reread) instead of being cut",
            &self.resume_spills,
        );
        add(
            r,
            "resume_pages",
            "Full pages of resume.max_events read from a broker by in-place resumes, each written before the next is read",
            &self.resume_pages,
        );
        add(
            r,
            "resume_frames_shared",
            "Broker resumes served from replay frames another identical resume (same id, filters and range) was building",
            &self.resume_frames_shared,
        );
        add(
            r,
            "replayed_from_broker_events",
            "Events replayed to resuming clients from durable broker history",
            &self.replayed_from_broker,
        );
    }

    /// Where live sources lost messages, and the bytes waiting for the sequencer.
    fn register_source_losses(&mut self) {
        let r = &mut self.registry;
        add(
            r,
            "source_gaps",
            "Losses a live source told its streams about (source-outage, source-dropped), by source and reason",
            &self.source_gaps,
        );
        add(
            r,
            "source_lost_messages",
            "Messages a live source's client or buffer dropped when full, by source (NATS: exact once the client is quiet)",
            &self.source_lost_messages,
        );
        add_in(
            r,
            "ingest_queue",
            "Bytes of the messages waiting between the sources and the sequencer",
            Unit::Bytes,
            &self.ingest_queue_bytes,
        );
    }

    /// The process itself and the memory budget.
    fn register_process(&mut self) {
        let r = &mut self.registry;
        add_in(r, "process_cpu", "CPU time of the process (user + system)", Unit::Seconds, &self.cpu_seconds);
        add(r, "tokio_alive_tasks", "Tasks alive in the runtime", &self.alive_tasks);
        add_in(r, "resident_memory", "Resident set size of the process", Unit::Bytes, &self.resident_memory);
        add_in(r, "heap_allocated", "Live heap (jemalloc stats.allocated)", Unit::Bytes, &self.heap);
        add_in(r, "memory_limit", "The memory budget (0: none)", Unit::Bytes, &self.memory_limit);
        add_in(
            r,
            "memory_shed_ring",
            "Replay bytes evicted because the memory budget was reached",
            Unit::Bytes,
            &self.memory_shed_ring,
        );
        add(
            r,
            "memory_shed_streams",
            "Streams closed because the memory budget was reached",
            &self.memory_shed_streams,
        );
    }

    /// What bounds bytes held for clients: connections still in their head, replay frames
    /// queued ahead of live events, and the allocator giving freed pages back.
    fn register_bounds(&mut self) {
        let r = &mut self.registry;
        add(
            r,
            "connections_in_head",
            "Connections on the public listener still sending their request head",
            &self.connections_in_head,
        );
        add_in(
            r,
            "replay_inflight",
            "Frames queued ahead of live events (replays, gap signals) and not yet written, all streams",
            Unit::Bytes,
            &self.replay_inflight_bytes,
        );
        add(
            r,
            "allocator_purges",
            "Times freed allocator pages were given back to the OS because resident memory was far above the live heap",
            &self.allocator_purges,
        );
    }

    /// The counter for events from the source named `source` (`SourceKind::as_str`), resolved
    /// once and kept by the caller.
    pub fn received_counter(&self, source: &'static str) -> Counter {
        self.events_received.get_or_create(&SourceLabel { source }).clone()
    }

    /// On-demand upstream subscriptions (`nats.interest`/`redis.interest`), and what the
    /// brokers send that no stream wants (the firehose cost of `"all"`).
    fn register_interest(&mut self) {
        let r = &mut self.registry;
        add(
            r,
            "upstream_subscriptions",
            "Upstream subscriptions an on-demand source holds now",
            &self.upstream_subscriptions,
        );
        add(
            r,
            "upstream_subscribes",
            "Subscribe commands an on-demand source sent to its broker",
            &self.upstream_subscribes,
        );
        add(
            r,
            "upstream_unsubscribes",
            "Unsubscribe commands an on-demand source sent (filters released after their linger)",
            &self.upstream_unsubscribes,
        );
        add(
            r,
            "events_unwanted",
            "Messages received from a source that no open stream wanted (fan-out reached no queue)",
            &self.events_unwanted,
        );
    }

    /// Counts a stream end.
    pub fn count_disconnect(&self, reason: &'static str) {
        self.disconnects.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Counts events a slow-consumer policy dropped or conflated.
    pub fn count_drops(&self, reason: &'static str, n: u64) {
        self.drops.get_or_create(&ReasonLabel { reason }).inc_by(n);
    }

    /// Counts what a memory-budget pass shed: replay bytes evicted and streams closed.
    pub fn count_shed(&self, ring_bytes: usize, streams_closed: usize) {
        self.memory_shed_ring.inc_by(ring_bytes as u64);
        self.memory_shed_streams.inc_by(streams_closed as u64);
    }

    /// Counts a live source's loss signal (`reason`: `source-outage`, `source-dropped`) and the
    /// messages it says were lost.
    pub fn count_source_gap(&self, source: &'static str, reason: &'static str, lost: u64) {
        self.source_gaps.get_or_create(&SourceGapLabel { source, reason }).inc();
        if lost > 0 {
            self.source_lost_messages.get_or_create(&SourceLabel { source }).inc_by(lost);
        }
    }

    /// Counts a gap signal.
    pub fn count_gap(&self, reason: &'static str) {
        self.gap_events.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Counts a broker read for a resume: the broker `kind` (`DurableKind::as_str`) and how
    /// the read ended.
    pub fn count_resume_read(&self, kind: &'static str, outcome: &'static str) {
        self.resume_reads.get_or_create(&ResumeReadLabel { kind, outcome }).inc();
    }

    /// Counts a refused request.
    pub fn count_rejected(&self, reason: &'static str) {
        self.requests_rejected.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Encodes everything in the OpenMetrics text format: the bridge's families, then the
    /// standard process families, then the one `# EOF`.
    pub fn encode(&self) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::with_capacity(8192);
        encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &self.standard))
            .and_then(|()| encode_eof(&mut out))
            .expect("writing to a String cannot fail");
        out
    }
}
