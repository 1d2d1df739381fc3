//! The NATS source with `interest = "on-demand"`: one NATS subscription per distinct filter the
//! local streams hold (taken from the source's [`InterestTable`]), instead of one per
//! configured subject.
//!
//! Work is taken from the table in batches: up to `interest.batch` SUBs, then one round trip
//! proves the server has processed them all (a message published to the source's own probe
//! inbox comes back: the server handles one connection's operations in order), and only then
//! are the filters confirmed, so the streams waiting for them start (`: ok`) with the broker
//! already routing their messages. Released filters are unsubscribed by dropping their
//! subscriber (async-nats sends the UNSUB).
//!
//! Messages the client drops because a subscription's hand-off buffer was full (async-nats
//! reports a slow consumer, by subscription id) are told to the streams at once, as a
//! `source-dropped` signal naming the filters whose subscriptions dropped. The count is what the
//! client's events reported: they pass through a lossy queue of 128, so under a flood it can be
//! low, but every filter that dropped is named.
//!
//! async-nats re-subscribes by itself after a reconnect; this source reports the broker up
//! (`/readyz`, `broker_up`) only after a round trip on the new connection, so every held
//! subscription is re-established before the source counts as healthy.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{Client, SubscribeErrorKind, Subscriber};
use futures_util::StreamExt;
use futures_util::stream::{AbortHandle, Abortable, SelectAll};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::bounds::{BrokerInput, IntervalLog};
use super::message::{IngestSender, SourceKind, SourceSignal};
use super::nats::{Losses, connect_options, source_message};
use super::nats_connect::NatsSecurity;
use super::session::{BrokerError, SessionEnd, forward};
use super::status::SourceStatus;
use crate::config::NatsConfig;
use crate::interest::InterestTable;
use crate::outages::{SourceGap, SourceSpace};
use crate::topic::Pattern;

/// How often the source looks at its connection and at filters whose linger may have passed.
const MAX_TICK: Duration = Duration::from_millis(100);

/// What the source holds upstream.
struct Upstream {
    client: Client,
    /// The subscription per held filter, and its id; aborting it ends its stream, which drops
    /// the subscriber (UNSUB).
    subs: HashMap<Arc<str>, (AbortHandle, u64)>,
    /// The filter of each subscription id: async-nats numbers one client's subscriptions 1, 2,
    /// … in the order they are made (the probe inbox is 1), and names them in slow-consumer
    /// events only by that id.
    sids: HashMap<u64, Arc<str>>,
    /// The id the next subscription gets.
    next_sid: u64,
    messages: SelectAll<Abortable<Subscriber>>,
    /// The inbox the round trips come back on.
    probe: Subscriber,
    probe_subject: String,
    nonce: u64,
    timeout: Duration,
}

/// Runs the on-demand NATS source until `shutdown`; returns why it ended.
pub async fn run(
    cfg: NatsConfig,
    table: Arc<InterestTable>,
    batch: usize,
    tx: IngestSender,
    status: Arc<SourceStatus>,
    shutdown: CancellationToken,
) -> SessionEnd {
    let url = cfg.url.clone();
    // The client's own view of its connection; `status` says up only after the round trip.
    let link = Arc::new(SourceStatus::new(SourceKind::Nats));
    let losses = Arc::new(Losses::default());
    let security = NatsSecurity::of_nats(&cfg);
    let options = connect_options(&cfg, link.clone(), losses.clone(), security.report());
    let options = match security.apply(options).await {
        Ok(o) => o,
        Err(e) => {
            warn!(source = "nats", error = %e, "Cannot read the NATS credentials or TLS files.");
            return BrokerError::Setup(e.into()).into();
        }
    };
    let client = match options.connect(url.as_str()).await {
        Ok(c) => c,
        Err(e) => {
            warn!(source = "nats", %url, error = %e, "Cannot start NATS client.");
            return BrokerError::Setup(e.into()).into();
        }
    };
    let probe_subject = format!("{}.interest-probe", client.new_inbox());
    let probe = match client.subscribe(probe_subject.clone()).await {
        Ok(s) => s,
        Err(e) => return BrokerError::subscribe(format!("subject {probe_subject:?}"), e).into(),
    };
    info!(source = "nats", %url, allowlist = ?cfg.subjects, "On-demand: subscribing to what clients hold.");
    let mut up = Upstream {
        client,
        subs: HashMap::new(),
        sids: HashMap::new(),
        // The probe took the first.
        next_sid: 2,
        messages: SelectAll::new(),
        probe,
        probe_subject,
        nonce: 0,
        timeout: cfg.connect_timeout,
    };
    let mut input = BrokerInput::new(SourceKind::Nats, cfg.max_message_bytes, status.clone());
    let mut tick = tokio::time::interval((table.linger() / 2).clamp(Duration::from_millis(10), MAX_TICK));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut healthy = false;
    let mut drop_log = IntervalLog::default();
    let end = loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break SessionEnd::Shutdown,
            // Before the messages: a flood keeps them ready, and the streams must learn now.
            _ = losses.notify.notified() => {
                if let Some(signal) = up.dropped(&losses, &mut drop_log)
                    && tx.signal(signal).await.is_err()
                {
                    break SessionEnd::DownstreamClosed;
                }
            }
            m = up.messages.next(), if !up.messages.is_empty() => {
                let Some(msg) = m else { continue };
                if !input.admit(&msg.subject, &msg.payload, true) {
                    continue;
                }
                if let Err(end) = forward(&tx, &shutdown, source_message(&msg, SourceKind::Nats, &cfg.event_header)).await {
                    break end;
                }
            }
            _ = table.work() => up.apply(&table, batch, healthy).await,
            _ = tick.tick() => {
                healthy = follow_link(&mut up, &table, &link, &status, healthy, &tx).await;
                up.apply(&table, batch, healthy).await;
            }
        }
    };
    status.set_disconnected();
    table.set_down();
    drop(up.messages);
    let _ = tokio::time::timeout(Duration::from_secs(1), up.client.drain()).await;
    info!(source = "nats", reason = %end, "Source stopped.");
    end
}

/// Follows the client's connection: after a (re)connect, a round trip on the new connection
/// (async-nats has re-sent every SUB before it) confirms every held filter, then the source
/// reports up; on a loss it reports down and nothing counts as held. Returns whether it is up.
async fn follow_link(
    up: &mut Upstream,
    table: &InterestTable,
    link: &SourceStatus,
    status: &SourceStatus,
    healthy: bool,
    tx: &IngestSender,
) -> bool {
    match (link.is_connected(), healthy) {
        (true, false) => {
            if !up.round_trip().await {
                return false;
            }
            table.confirm_all_subscribed();
            let reconnect = status.set_connected();
            if reconnect && !up.subs.is_empty() {
                // Core NATS keeps nothing for a disconnected client: the streams on the held
                // filters are told of the outage, as with `interest = "all"`.
                let spaces: Arc<[SourceSpace]> =
                    up.subs.keys().filter_map(|s| Pattern::parse(s, s.len()).ok()).map(SourceSpace::Subject).collect();
                let signal = SourceSignal { source: SourceKind::Nats, gap: SourceGap::Outage, spaces, lost: 0 };
                let _ = tx.signal(signal).await;
            }
            info!(
                source = "nats",
                held = up.subs.len(),
                reconnect,
                "Broker connected; every held subscription is in place."
            );
            true
        }
        (false, true) => {
            status.set_disconnected();
            table.set_down();
            warn!(
                source = "nats",
                held = up.subs.len(),
                "Broker disconnected; subscriptions are re-established on reconnect."
            );
            false
        }
        (now, _) => now,
    }
}

impl Upstream {
    /// Takes the table's work in batches until none is left: unsubscribes released filters,
    /// subscribes new ones and, with the broker up, confirms them after one round trip.
    async fn apply(&mut self, table: &InterestTable, batch: usize, healthy: bool) {
        loop {
            let work = table.take_batch(batch, Instant::now());
            if work.is_empty() {
                return;
            }
            for (key, _) in &work.unsubscribe {
                if let Some((h, sid)) = self.subs.remove(key) {
                    h.abort();
                    self.sids.remove(&sid);
                }
            }
            let mut added = Vec::with_capacity(work.subscribe.len());
            for (key, filter) in work.subscribe {
                let subscribed = self.client.subscribe(filter.as_str().to_owned()).await;
                // Every subscribe that got past the subject check took an id.
                let sid = self.next_sid;
                if !matches!(&subscribed, Err(e) if e.kind() == SubscribeErrorKind::InvalidSubject) {
                    self.next_sid += 1;
                }
                match subscribed {
                    Ok(s) => {
                        let (handle, reg) = AbortHandle::new_pair();
                        self.messages.push(Abortable::new(s, reg));
                        self.subs.insert(key.clone(), (handle, sid));
                        self.sids.insert(sid, key.clone());
                        added.push(key);
                    }
                    // Only when the client is closed (the source is stopping).
                    Err(e) => warn!(source = "nats", filter = %filter, error = %e, "Subscribe failed."),
                }
            }
            debug!(source = "nats", subscribed = added.len(), unsubscribed = work.unsubscribe.len(), "Interest batch.");
            // With the broker down they are confirmed with everything else on reconnect.
            if !added.is_empty() && healthy && self.round_trip().await {
                table.confirm(&added);
            }
        }
    }

    /// The drops the client reported since the last call, as the signal that tells the streams
    /// on the filters whose subscriptions dropped (every held filter if an id is not known).
    fn dropped(&self, losses: &Losses, log: &mut IntervalLog) -> Option<SourceSignal> {
        let (sids, lost) = losses.take().filter(|(_, lost)| *lost > 0)?;
        let named: Option<Vec<&Arc<str>>> = sids.iter().map(|sid| self.sids.get(sid)).collect();
        let filters: Vec<&Arc<str>> = match named {
            Some(n) if !n.is_empty() => n,
            _ => self.subs.keys().collect(),
        };
        let spaces: Arc<[SourceSpace]> =
            filters.iter().filter_map(|s| Pattern::parse(s, s.len()).ok()).map(SourceSpace::Subject).collect();
        if let Some(suppressed) = log.due() {
            let filters: Vec<&str> = filters.iter().map(|f| &***f).collect();
            warn!(
                source = "nats",
                lost,
                ?filters,
                suppressed,
                "Subscription buffer full; NATS client dropped messages; telling the streams (logged at most every 10s)."
            );
        }
        Some(SourceSignal { source: SourceKind::Nats, gap: SourceGap::Dropped, spaces, lost })
    }

    /// Publishes to the probe inbox and waits for it to come back: every operation sent
    /// before it (the SUBs) has been processed by the server.
    async fn round_trip(&mut self) -> bool {
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        if self.client.publish(self.probe_subject.clone(), nonce.clone().into()).await.is_err() {
            return false;
        }
        let wait = async {
            while let Some(m) = self.probe.next().await {
                if m.payload == nonce.as_bytes() {
                    return true;
                }
            }
            false
        };
        match tokio::time::timeout(self.timeout, wait).await {
            Ok(ok) => ok,
            Err(_) => {
                debug!(source = "nats", "Interest round trip timed out.");
                false
            }
        }
    }
}
