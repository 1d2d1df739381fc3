//! NATS source: subscribes to the configured subjects and forwards every message.
//!
//! async-nats reconnects and re-subscribes by itself; this source configures it to do so
//! forever with our capped, jittered backoff, and to connect in the background so the bridge
//! starts and serves while NATS is down. Connection changes arrive through the client's event
//! callback and are logged once each and reflected in [`SourceStatus`].
//!
//! Core NATS keeps nothing for a subscriber that is away, so two things lose messages: an
//! outage (what was published while the client reconnected) and the client's per-subscription
//! buffer overflowing (async-nats drops and reports a slow consumer). The forwarding loop tells
//! the sequencer of both with a [`SourceSignal`] before it forwards any later message: an
//! outage when the client's connection count moved past the first connection (async-nats
//! counts a connection before it re-subscribes, so no message of the new session can come
//! first), a drop when the event callback saw a slow consumer or when its own buffer was full.
//! The loop reads on while the ingest channel is full, into its own buffer bounded in bytes
//! (`nats.buffer_bytes`), so the client's per-subscription buffer (sized from the same budget
//! at `max_message_bytes` per message, at least [`MIN_SUBSCRIPTION_CAPACITY`] messages) is only a
//! hand-off that the loop keeps near empty.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::{ConnectOptions, Event as NatsEvent, HeaderMap, Statistics, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::{SelectAll, select_all};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::backoff::backoff_delay;
use super::bounds::{BrokerInput, IntervalLog};
use super::buffer::{Buffer, Reserve};
use super::message::{IngestSender, PUBLISHED_AT_HEADER, SourceKind, SourceMessage, SourceSignal};
use super::nats_connect::{ConnectReport, NatsSecurity};
use super::session::{BrokerError, SessionEnd};
use super::status::SourceStatus;
use crate::config::NatsConfig;
use crate::outages::{SourceGap, SourceSpace};
use crate::telemetry::TraceContext;
use crate::topic::Pattern;

/// Bytes a buffered message may cost beyond its payload (subject, headers, the `Message`).
pub const MESSAGE_OVERHEAD: usize = 512;

/// The fewest messages a subscription's hand-off buffer holds: async-nats parses everything a
/// socket read brought in one go and drops what does not fit, so the hand-off must hold a
/// burst of small messages (a 64 KiB read holds over a thousand) however large
/// `max_message_bytes` is. So this buffer is bounded in messages, not bytes: up to 1024 ×
/// `max_message_bytes` per subject (1 GiB at the defaults) when the forwarding loop is starved
/// while large messages arrive; the live heap shows it, the memory budget cannot shed it, and
/// `run` says so at startup when it exceeds `nats.buffer_bytes`. A floor of 32 (what fits 32
/// MiB of 1 MiB messages) was tried: it cut the heap of the 16 KiB flood of `tests/flood.rs`
/// from ~95 to ~10 MiB, but dropped 18 of a burst of 50 small messages on a single-threaded
/// runtime (`tests/outage.rs`, `nats_kill9_and_restart_resumes_on_the_open_stream`).
pub const MIN_SUBSCRIPTION_CAPACITY: usize = 1024;

/// Messages async-nats may buffer per subscription before it reports a slow consumer and drops:
/// `nats.buffer_bytes` shared by the subjects, at `max_message_bytes` (plus overhead) each, but
/// at least [`MIN_SUBSCRIPTION_CAPACITY`]. The forwarding loop drains it continuously into its
/// own buffer (bounded by the actual bytes), so it holds more than a read's burst only while
/// that task is starved of CPU.
pub fn subscription_capacity(cfg: &NatsConfig) -> usize {
    let per_subject = cfg.buffer_bytes / cfg.subjects.len().max(1);
    (per_subject / (cfg.max_message_bytes + MESSAGE_OVERHEAD)).max(MIN_SUBSCRIPTION_CAPACITY)
}

/// What the client's event callback saw that the forwarding loop must tell the sequencer:
/// slow-consumer drops (by subscription id) and connection changes (a wake-up only: the
/// connection count itself is read from the client's statistics).
#[derive(Debug, Default)]
pub(super) struct Losses {
    /// Woken on a drop and on a (re)connection.
    pub(super) notify: Notify,
    dirty: AtomicBool,
    dropped: Mutex<(Vec<u64>, u64)>,
}

impl Losses {
    /// A subscription's buffer was full and the client dropped a message.
    fn dropped(&self, sid: u64) {
        let mut g = self.dropped.lock();
        if !g.0.contains(&sid) {
            g.0.push(sid);
        }
        g.1 += 1;
        drop(g);
        self.dirty.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    /// The drops seen since the last call: (subscription ids, count).
    pub(super) fn take(&self) -> Option<(Vec<u64>, u64)> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return None;
        }
        Some(std::mem::take(&mut *self.dropped.lock()))
    }
}

/// Runs the NATS source until `shutdown`; returns why it ended.
pub async fn run(
    cfg: NatsConfig,
    tx: IngestSender,
    status: Arc<SourceStatus>,
    shutdown: CancellationToken,
) -> SessionEnd {
    let url = cfg.url.clone();
    let losses = Arc::new(Losses::default());
    let security = NatsSecurity::of_nats(&cfg);
    let opts = match security.apply(connect_options(&cfg, status.clone(), losses.clone(), security.report())).await {
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
    let capacity = subscription_capacity(&cfg);
    info!(source = "nats", %url, subjects = ?cfg.subjects, capacity, "Subscribed; messages flow once connected.");
    let handoff_bytes = capacity.saturating_mul(cfg.max_message_bytes + MESSAGE_OVERHEAD).saturating_mul(subs.len());
    if handoff_bytes > cfg.buffer_bytes {
        info!(
            source = "nats",
            capacity,
            handoff_bytes,
            buffer_bytes = cfg.buffer_bytes,
            "The NATS client may hold up to `capacity` messages per subject before the source takes them, more than nats.buffer_bytes if they are as large as nats.max_message_bytes; set max_message_bytes to the largest message published to bound it."
        );
    }
    let mut messages = select_all(subs);
    let mut input = BrokerInput::new(SourceKind::Nats, cfg.max_message_bytes, status.clone());
    let mut teller = Teller {
        tx: &tx,
        shutdown: &shutdown,
        stats: client.statistics(),
        seen_connects: 0,
        losses: &losses,
        spaces: spaces(&cfg.subjects),
        drop_log: IntervalLog::default(),
        taken: 0,
        told: 0,
        episode: Vec::new(),
        settle: None,
    };
    let mut buffer = Buffer::new(SourceKind::Nats, cfg.buffer_bytes);
    let end = forward_all(&mut messages, &mut input, &cfg.event_header, &mut teller, &mut buffer).await;
    status.set_disconnected();
    // Unsubscribes and closes the connection; bounded so a dead server cannot stall shutdown.
    drop(messages);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), client.drain()).await;
    info!(source = "nats", reason = %end, "Source stopped.");
    end
}

/// The client's settings: reconnect forever with our backoff, connect in the background, a
/// subscription buffer sized from `nats.buffer_bytes`, report connection changes (logged once
/// each) in `status` and failures through `report`, and slow-consumer drops and reconnections
/// to the forwarding loop through `losses`.
pub(super) fn connect_options(
    cfg: &NatsConfig,
    status: Arc<SourceStatus>,
    losses: Arc<Losses>,
    report: ConnectReport,
) -> ConnectOptions {
    let url = cfg.url.clone();
    let max_delay = cfg.reconnect_max_delay;
    ConnectOptions::new()
        .name(&cfg.client_name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(cfg.connect_timeout)
        .subscription_capacity(subscription_capacity(cfg))
        .reconnect_delay_callback(move |attempt| backoff_delay(attempt, max_delay))
        .event_callback(move |event| {
            let status = status.clone();
            let url = url.clone();
            let losses = losses.clone();
            report.event("nats", &url, &event);
            async move {
                match event {
                    NatsEvent::Connected => {
                        let reconnect = status.set_connected();
                        info!(source = "nats", %url, reconnect, "Broker connected.");
                        losses.notify.notify_one();
                    }
                    NatsEvent::Disconnected => {
                        status.set_disconnected();
                        warn!(source = "nats", %url, "Broker disconnected; reconnecting with backoff.");
                    }
                    // Logged by the forwarding loop, at most once per interval.
                    NatsEvent::SlowConsumer(sid) => losses.dropped(sid),
                    other => debug!(source = "nats", event = %other, "Client event."),
                }
            }
        })
}

/// The subjects as the spaces a signal names; subjects were validated with the config.
fn spaces(subjects: &[String]) -> Arc<[SourceSpace]> {
    subjects.iter().filter_map(|s| Pattern::parse(s, s.len()).ok()).map(SourceSpace::Subject).collect()
}

/// How long the client must have been quiet (no message counted in, none taken out) before the
/// forwarding loop settles the client's drop count (see [`Teller::settle`]).
pub const SETTLE_AFTER: Duration = Duration::from_millis(250);

/// The forwarding loop's side of the loss signals: it notices outages and drops and sends a
/// [`SourceSignal`] before the next message.
///
/// Client-side drops are counted twice over. At once, by the client's slow-consumer events (one
/// per dropped message), which name the subscription; but async-nats queues its events in a
/// channel of 128 and drops events too when that is full (under a flood, when the callback
/// task lags), so that count is a lower bound. Then exactly, once the client is quiet: every
/// message the client counted in (`Statistics::in_messages`) and the loop did not take was
/// dropped, so after a drop the loop waits for [`SETTLE_AFTER`] without traffic and tells what
/// the events missed ([`Teller::settle`]).
struct Teller<'a> {
    tx: &'a IngestSender,
    shutdown: &'a CancellationToken,
    /// The client's statistics: `connects` counts the first connection and every reconnection,
    /// `in_messages` every message the client read.
    stats: Arc<Statistics>,
    /// `connects` as of the last check.
    seen_connects: u64,
    losses: &'a Losses,
    /// One per subject, in subscription order (async-nats numbers this client's subscriptions
    /// 1, 2, … in that order).
    spaces: Arc<[SourceSpace]>,
    drop_log: IntervalLog,
    /// Messages the loop took from the subscriptions.
    taken: u64,
    /// Client-side drops told so far.
    told: u64,
    /// The subscriptions that dropped since the count was last settled.
    episode: Vec<u64>,
    /// Set after a drop until the count is settled: when to look next, and what the counters
    /// were at the last look.
    settle: Option<Settle>,
}

#[derive(Debug, Clone, Copy)]
struct Settle {
    at: tokio::time::Instant,
    in_messages: u64,
    taken: u64,
}

impl Teller<'_> {
    /// Whether an outage or a drop awaits telling; two atomic loads, checked per message.
    fn due(&self) -> bool {
        self.stats.connects.load(Ordering::Relaxed) != self.seen_connects || self.losses.dirty.load(Ordering::Acquire)
    }

    /// Queues the signals due behind what is buffered (so ahead of every message read from now
    /// on): an outage if the client connected again after its first connection, then the
    /// client's drops seen since the last call.
    fn tell(&mut self, buffer: &mut Buffer) {
        let connects = self.stats.connects.load(Ordering::Relaxed);
        if connects != self.seen_connects {
            // Two or more connections (even if none was seen in between): a reconnection.
            let outage = connects >= 2;
            self.seen_connects = connects;
            if outage {
                info!(
                    source = "nats",
                    reason = SourceGap::Outage.as_str(),
                    "Broker back after an outage; telling the streams it serves."
                );
                buffer.push_signal(self.signal(SourceGap::Outage, self.spaces.clone(), 0));
            }
        }
        // Empty when a drop raced the previous take (its count went with that one).
        if let Some((sids, lost)) = self.losses.take().filter(|(sids, lost)| *lost > 0 && !sids.is_empty()) {
            self.told += lost;
            for sid in &sids {
                if !self.episode.contains(sid) {
                    self.episode.push(*sid);
                }
            }
            if self.settle.is_none() {
                self.settle = Some(self.look());
            }
            let spaces = self.spaces_of(&sids);
            if let Some(suppressed) = self.drop_log.due() {
                let subjects: Vec<&str> = spaces.iter().map(SourceSpace::as_str).collect();
                warn!(
                    source = "nats",
                    lost,
                    ?subjects,
                    suppressed,
                    "Subscription buffer full; NATS client dropped messages; telling the streams (logged at most every 10s)."
                );
            }
            buffer.push_signal(self.signal(SourceGap::Dropped, spaces, lost));
        }
    }

    /// The subjects of subscriptions `sids`; every subject if one is not ours (or none is named).
    fn spaces_of(&self, sids: &[u64]) -> Arc<[SourceSpace]> {
        let known: Option<Vec<SourceSpace>> =
            sids.iter().map(|&sid| self.spaces.get(sid.wrapping_sub(1) as usize).cloned()).collect();
        known.filter(|k| !k.is_empty()).map_or_else(|| self.spaces.clone(), Arc::from)
    }

    /// The counters now, to be looked at again after [`SETTLE_AFTER`].
    fn look(&self) -> Settle {
        Settle {
            at: tokio::time::Instant::now() + SETTLE_AFTER,
            in_messages: self.stats.in_messages.load(Ordering::Relaxed),
            taken: self.taken,
        }
    }

    /// Called when the settle timer fires, with the subscriptions just found empty. If nothing
    /// moved since the last look, nothing is in the hand-off or on its way into it, so the
    /// client dropped exactly `in_messages - taken` messages: what the slow-consumer events did
    /// not report is told now (a `source-dropped` signal naming the subscriptions that dropped
    /// since the last settling). Otherwise it looks again later.
    fn settle(&mut self, buffer: &mut Buffer) {
        let Some(last) = self.settle else { return };
        let now = self.look();
        if now.in_messages != last.in_messages || now.taken != last.taken {
            self.settle = Some(now);
            return;
        }
        self.settle = None;
        let dropped = now.in_messages.saturating_sub(self.taken);
        if dropped > self.told {
            let missed = dropped - self.told;
            self.told = dropped;
            let spaces = self.spaces_of(&self.episode);
            info!(
                source = "nats",
                missed,
                dropped,
                "NATS client drops settled: its slow-consumer events missed some; telling the streams."
            );
            buffer.push_signal(self.signal(SourceGap::Dropped, spaces, missed));
        }
        self.episode.clear();
    }

    fn signal(&self, gap: SourceGap, spaces: Arc<[SourceSpace]>, lost: u64) -> SourceSignal {
        SourceSignal { source: SourceKind::Nats, gap, spaces, lost }
    }
}

/// Forwards every admitted message until shutdown, the ingest path closes, or the client ends
/// the subscriptions. Reads on while the ingest channel is full, into `buffer` (bounded in
/// bytes, dropping and telling past it), so the client's own buffer (counted in messages) is
/// only a hand-off and overflows only when this task is starved.
async fn forward_all(
    messages: &mut SelectAll<Subscriber>,
    input: &mut BrokerInput,
    event_header: &str,
    teller: &mut Teller<'_>,
    buffer: &mut Buffer,
) -> SessionEnd {
    let (tx, shutdown) = (teller.tx, teller.shutdown);
    let mut reserving: Option<Reserve> = None;
    loop {
        if reserving.is_none() {
            reserving = buffer.reserve_front(tx);
        }
        let settle_at = teller.settle.map(|s| s.at);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return SessionEnd::Shutdown,
            permit = async { reserving.as_mut().expect("guarded").await }, if reserving.is_some() => {
                reserving = None;
                match permit {
                    Ok(p) => buffer.send_front(p),
                    Err(_) => return SessionEnd::DownstreamClosed,
                }
            }
            // Tell at once, not only before the next message: a quiet topic learns too.
            _ = teller.losses.notify.notified() => teller.tell(buffer),
            msg = messages.next() => {
                let Some(msg) = msg else {
                    return BrokerError::Lost("subscription closed by the client").into();
                };
                teller.taken += 1;
                if teller.due() {
                    teller.tell(buffer);
                }
                if !input.admit(&msg.subject, &msg.payload, true) {
                    continue;
                }
                let out = source_message(&msg, SourceKind::Nats, event_header);
                if let Some(lost) = buffer.push(out, &teller.spaces)
                    && let Some(suppressed) = buffer.drop_log.due()
                {
                    warn!(source = "nats", lost, suppressed, "Ingest queue and source buffer full; NATS messages dropped; telling the streams (logged at most every 10s).");
                }
            }
            // Polled only when every branch above is pending: the subscriptions are empty.
            _ = tokio::time::sleep_until(settle_at.unwrap_or_else(tokio::time::Instant::now)), if settle_at.is_some() => {
                teller.settle(buffer);
            }
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
