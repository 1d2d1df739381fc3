//! NATS source: subscribes to the configured subjects and forwards every message.
//!
//! async-nats reconnects and re-subscribes by itself; this source configures it to do so
//! forever with our capped, jittered backoff, and to connect in the background so the bridge
//! starts and serves while NATS is down. Connection changes arrive through the client's event
//! callback and are logged once each and reflected in [`SourceStatus`].

use std::sync::Arc;
use std::time::Instant;

use async_nats::{ConnectOptions, Event as NatsEvent, HeaderMap, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::{SelectAll, select_all};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::backoff::backoff_delay;
use super::bounds::BrokerInput;
use super::message::{IngestSender, PUBLISHED_AT_HEADER, SourceKind, SourceMessage};
use super::nats_connect::{ConnectReport, NatsSecurity};
use super::session::{BrokerError, SessionEnd, forward};
use super::status::SourceStatus;
use crate::config::NatsConfig;
use crate::telemetry::TraceContext;

/// Messages async-nats may buffer per subscription before it reports a slow consumer and
/// drops; the bound between the broker and our ingest channel.
const SUBSCRIPTION_CAPACITY: usize = 8192;

/// Runs the NATS source until `shutdown`; returns why it ended.
pub async fn run(
    cfg: NatsConfig,
    tx: IngestSender,
    status: Arc<SourceStatus>,
    shutdown: CancellationToken,
) -> SessionEnd {
    let url = cfg.url.clone();
    let security = NatsSecurity::of_nats(&cfg);
    let opts = match security.apply(connect_options(&cfg, status.clone(), security.report())).await {
        Ok(o) => o,
        Err(e) => {
            warn!(source = "nats", error = %e, "Cannot read the NATS credentials or TLS files.");
            return BrokerError::Setup(e.into()).into();
        }
    };
    let client = match opts.connect(url.as_str()).await {
        Ok(c) => c,
        Err(e) => {
            // With retry_on_initial_connect this only fails on unusable options (bad URL).
            warn!(source = "nats", %url, error = %e, "Cannot start NATS client.");
            return BrokerError::Setup(e.into()).into();
        }
    };
    let mut subs = Vec::with_capacity(cfg.subjects.len());
    for subject in &cfg.subjects {
        match client.subscribe(subject.clone()).await {
            Ok(s) => subs.push(s),
            Err(e) => {
                warn!(source = "nats", %subject, error = %e, "Subscribe failed.");
                return BrokerError::subscribe(format!("subject {subject:?}"), e).into();
            }
        }
    }
    info!(source = "nats", %url, subjects = ?cfg.subjects, "Subscribed; messages flow once connected.");
    let mut messages = select_all(subs);
    let mut input = BrokerInput::new(SourceKind::Nats, cfg.max_message_bytes, status.clone());
    let end = forward_all(&mut messages, &mut input, &cfg.event_header, &tx, &shutdown).await;
    status.set_disconnected();
    // Unsubscribes and closes the connection; bounded so a dead server cannot stall shutdown.
    drop(messages);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), client.drain()).await;
    info!(source = "nats", reason = %end, "Source stopped.");
    end
}

/// The client's settings: reconnect forever with our backoff, connect in the background, and
/// report connection changes (logged once each) in `status`.
fn connect_options(cfg: &NatsConfig, status: Arc<SourceStatus>, report: ConnectReport) -> ConnectOptions {
    let url = cfg.url.clone();
    let max_delay = cfg.reconnect_max_delay;
    ConnectOptions::new()
        .name(&cfg.client_name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(cfg.connect_timeout)
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .reconnect_delay_callback(move |attempt| backoff_delay(attempt, max_delay))
        .event_callback(move |event| {
            let status = status.clone();
            let url = url.clone();
            report.event("nats", &url, &event);
            async move {
                match event {
                    NatsEvent::Connected => {
                        let reconnect = status.set_connected();
                        info!(source = "nats", %url, reconnect, "Broker connected.");
                    }
                    NatsEvent::Disconnected => {
                        status.set_disconnected();
                        warn!(source = "nats", %url, "Broker disconnected; reconnecting with backoff.");
                    }
                    NatsEvent::SlowConsumer(sid) => {
                        warn!(source = "nats", sid, "Subscription buffer full; NATS client dropped messages.");
                    }
                    other => debug!(source = "nats", event = %other, "Client event."),
                }
            }
        })
}

/// Forwards every admitted message until shutdown, the ingest path closes, or the client ends
/// the subscriptions.
async fn forward_all(
    messages: &mut SelectAll<Subscriber>,
    input: &mut BrokerInput,
    event_header: &str,
    tx: &IngestSender,
    shutdown: &CancellationToken,
) -> SessionEnd {
    loop {
        let msg = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return SessionEnd::Shutdown,
            m = messages.next() => m,
        };
        let Some(msg) = msg else {
            return BrokerError::Lost("subscription closed by the client").into();
        };
        if !input.admit(&msg.subject, &msg.payload, true) {
            continue;
        }
        if let Err(end) = forward(tx, shutdown, source_message(&msg, SourceKind::Nats, event_header)).await {
            return end;
        }
    }
}

/// A NATS message (core or JetStream) as a [`SourceMessage`]: topic, a copy of the payload
/// (the client's payload is a slice of its 64 KiB read buffer), event type and trace context
/// from the headers.
pub(crate) fn source_message(msg: &async_nats::Message, source: SourceKind, event_header: &str) -> SourceMessage {
    let (event_type, trace) = read_headers(msg.headers.as_ref(), event_header);
    SourceMessage {
        source,
        topic: msg.subject.to_string(),
        payload: Bytes::copy_from_slice(&msg.payload),
        event_type,
        trace,
        received_at: Instant::now(),
        reply: None,
        durable: None,
    }
}

/// Finds the event type and trace context in the headers; names are compared
/// case-insensitively because publishers differ (Go sends `Traceparent`).
pub(crate) fn read_headers(headers: Option<&HeaderMap>, event_header: &str) -> (Option<String>, TraceContext) {
    let mut event_type = None;
    let mut trace = TraceContext::default();
    let Some(h) = headers else {
        return (event_type, trace);
    };
    for (name, values) in h.iter() {
        let name: &str = name.as_ref();
        let Some(value) = values.first() else {
            continue;
        };
        if name.eq_ignore_ascii_case(event_header) {
            event_type = Some(value.as_str().to_owned());
        } else if name.eq_ignore_ascii_case("traceparent") {
            trace.traceparent = Some(value.as_str().to_owned());
        } else if name.eq_ignore_ascii_case("tracestate") {
            trace.tracestate = Some(value.as_str().to_owned());
        } else if name.eq_ignore_ascii_case(PUBLISHED_AT_HEADER) {
            trace.published_at_ms = value.as_str().trim().parse().ok();
        }
    }
    (event_type, trace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_case_insensitive() {
        let mut h = HeaderMap::new();
        h.insert("sse-event", "greeting");
        h.insert("Traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        let (t, tr) = read_headers(Some(&h), "Sse-Event");
        assert_eq!(t.as_deref(), Some("greeting"));
        assert!(tr.traceparent.is_some());
    }
}
