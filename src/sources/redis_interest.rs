//! The Redis pub/sub source with `interest = "on-demand"`: `SUBSCRIBE` per exact filter and
//! `PSUBSCRIBE` per pattern filter (as a glob, `crate::interest::redis_glob`) that the local
//! streams hold, taken from the source's [`InterestTable`] in batches of `interest.batch`
//! names per command. The command's reply is the broker's confirmation: only then do the
//! streams waiting for the filters start.
//!
//! The redis crate does not reconnect a pub/sub connection; each session of this source (run
//! again after a capped backoff by [`supervise`]) opens one, subscribes everything the table
//! holds at that moment, and only then reports the broker up: every held subscription is
//! re-established before the source counts as healthy.
//!
//! As with `interest = "all"` (`super::redis`), the redis client queues pub/sub messages
//! without bound, so this source never stops reading: what waits for the ingest channel waits
//! in the same byte-bounded [`Buffer`] (`redis.buffer_bytes`, newest dropped when full, a
//! `source-dropped` signal ahead of the next message kept, counted in
//! `sse_bridge_source_lost_messages_total{source="redis"}`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::bounds::BrokerInput;
use super::buffer::{Buffer, Reserve};
use super::message::{IngestSender, SourceKind, SourceSignal};
use super::redis::{spaces, to_source_message};
use super::redis_client::{RedisEndpoint, redacted};
use super::redis_connect::RedisConnect;
use super::redis_pubsub::SubscriberSink;
use super::session::{BrokerError, Session, SessionEnd, supervise};
use super::status::SourceStatus;
use crate::config::RedisConfig;
use crate::interest::{InterestTable, redis_glob};
use crate::outages::{SourceGap, SourceSpace};
use crate::topic::TopicFilter;

/// How often the source looks for filters whose linger may have passed.
const MAX_TICK: Duration = Duration::from_millis(100);

/// Runs the on-demand Redis source until `shutdown`.
pub async fn run(
    cfg: RedisConfig,
    table: Arc<InterestTable>,
    batch: usize,
    tx: IngestSender,
    status: Arc<SourceStatus>,
    shutdown: CancellationToken,
) -> SessionEnd {
    let endpoint = match RedisEndpoint::for_source("redis", &RedisConnect::of_redis(&cfg), cfg.connect_timeout) {
        Ok(e) => e,
        Err(end) => return end,
    };
    let input = BrokerInput::new(SourceKind::Redis, cfg.max_message_bytes, status.clone());
    let url = redacted(&cfg.url);
    let max_delay = cfg.reconnect_max_delay;
    let buffer = Buffer::new(SourceKind::Redis, cfg.buffer_bytes);
    let allowlist = spaces(&cfg);
    let mut session = OnDemand {
        endpoint,
        cfg,
        table,
        batch,
        tx,
        status: status.clone(),
        shutdown: shutdown.clone(),
        input,
        buffer,
        allowlist,
    };
    supervise("redis", &url, max_delay, &status, &shutdown, &mut session).await
}

/// The on-demand source's state across sessions.
struct OnDemand {
    endpoint: RedisEndpoint,
    cfg: RedisConfig,
    table: Arc<InterestTable>,
    batch: usize,
    tx: IngestSender,
    status: Arc<SourceStatus>,
    shutdown: CancellationToken,
    input: BrokerInput,
    /// Messages read and not yet handed to the ingest channel; kept across sessions, so what
    /// was read before a disconnect is still forwarded, ahead of the outage signal.
    buffer: Buffer,
    /// The allowlist (configured channels and patterns) as the spaces a drop signal names: it
    /// covers every filter a stream on this source can hold.
    allowlist: Arc<[SourceSpace]>,
}

impl Session for OnDemand {
    async fn run(&mut self) -> SessionEnd {
        let end = self.session().await;
        self.table.set_down();
        end
    }
}

impl OnDemand {
    async fn session(&mut self) -> SessionEnd {
        let timeout = self.cfg.connect_timeout;
        let connect = async {
            let pubsub = self.endpoint.pubsub(self.cfg.sharded).await.map_err(|e| BrokerError::Connect(e.into()))?;
            let (mut sink, stream) = pubsub.split();
            // Everything held now, before the source reports up.
            let held = self.table.resubscribe_all();
            for chunk in held.chunks(self.batch) {
                subscribe(&mut sink, chunk).await?;
            }
            Ok::<_, BrokerError>((sink, stream, held))
        };
        let (mut sink, mut stream, held_filters) = tokio::select! {
            _ = self.shutdown.cancelled() => return SessionEnd::Shutdown,
            r = tokio::time::timeout(timeout, connect) => match r {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return e.into(),
                Err(_) => return BrokerError::ConnectTimedOut(timeout).into(),
            },
        };
        self.table.confirm_all_subscribed();
        let held = held_filters.len();
        let reconnect = self.status.set_connected();
        if reconnect && !held_filters.is_empty() {
            // What was published while the connection was down is lost (Redis pub/sub keeps
            // none): the streams on the held filters are told before this session's first
            // message, as with `interest = "all"`.
            let (channels, globs) = names(&held_filters);
            let spaces: Arc<[SourceSpace]> = channels
                .into_iter()
                .map(|c| SourceSpace::Channel(c.into()))
                .chain(globs.into_iter().map(|g| SourceSpace::Glob(g.into())))
                .collect();
            // Behind what the last session buffered, ahead of this session's messages.
            self.buffer.push_signal(SourceSignal {
                source: SourceKind::Redis,
                gap: SourceGap::Outage,
                spaces,
                lost: 0,
            });
        }
        info!(source = "redis", url = %redacted(&self.cfg.url), reconnect, held, "Broker connected; every held subscription is in place (on-demand).");

        let OnDemand { cfg, table, batch, tx, shutdown, input, buffer, allowlist, .. } = self;
        let mut ping = tokio::time::interval(cfg.ping_interval);
        ping.reset();
        let mut tick = tokio::time::interval((table.linger() / 2).clamp(Duration::from_millis(10), MAX_TICK));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The reservation for the buffer's front, kept across iterations so the source keeps
        // its turn in the ingest channel while it goes on reading.
        let mut reserving: Option<Reserve> = None;
        loop {
            if reserving.is_none() {
                reserving = buffer.reserve_front(tx);
            }
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
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        return BrokerError::Lost("connection closed").into();
                    };
                    let Some(out) = to_source_message(&msg, cfg.envelope, input) else { continue };
                    if let Some(lost) = buffer.push(out, allowlist)
                        && let Some(suppressed) = buffer.drop_log.due()
                    {
                        warn!(source = "redis", lost, buffer_bytes = cfg.buffer_bytes, suppressed, "Ingest queue full and source buffer full; Redis messages dropped; telling the streams (logged at most every 10s).");
                    }
                }
                _ = table.work() => {
                    if let Err(e) = apply(&mut sink, table, *batch).await {
                        return e.into();
                    }
                }
                _ = tick.tick() => {
                    if let Err(e) = apply(&mut sink, table, *batch).await {
                        return e.into();
                    }
                }
                _ = ping.tick() => {
                    let timeout = cfg.ping_interval.min(Duration::from_secs(5));
                    match tokio::time::timeout(timeout, sink.check()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return e.into(),
                        Err(_) => return BrokerError::Lost("ping unanswered").into(),
                    }
                }
            }
        }
    }
}

/// Takes the table's work in batches until none is left: one `UNSUBSCRIBE`/`PUNSUBSCRIBE` and
/// one `SUBSCRIBE`/`PSUBSCRIBE` per batch, the subscribes confirmed by their replies.
async fn apply(sink: &mut SubscriberSink, table: &InterestTable, batch: usize) -> Result<(), BrokerError> {
    loop {
        let work = table.take_batch(batch, Instant::now());
        if work.is_empty() {
            return Ok(());
        }
        let (channels, globs) = names(&work.unsubscribe);
        if !channels.is_empty() {
            sink.unsubscribe(&channels).await.map_err(|e| BrokerError::broker("unsubscribe", e))?;
        }
        if !globs.is_empty() {
            sink.punsubscribe(&globs).await.map_err(|e| BrokerError::broker("punsubscribe", e))?;
        }
        subscribe(sink, &work.subscribe).await?;
        let keys: Vec<Arc<str>> = work.subscribe.into_iter().map(|(k, _)| k).collect();
        table.confirm(&keys);
        debug!(source = "redis", subscribed = keys.len(), unsubscribed = work.unsubscribe.len(), "Interest batch.");
    }
}

/// `SUBSCRIBE`s the exact filters and `PSUBSCRIBE`s the patterns of `filters`, waiting for
/// every confirmation.
async fn subscribe(sink: &mut SubscriberSink, filters: &[(Arc<str>, TopicFilter)]) -> Result<(), BrokerError> {
    let (channels, globs) = names(filters);
    if !channels.is_empty() {
        sink.subscribe(&channels).await.map_err(|e| BrokerError::subscribe(format!("channels {channels:?}"), e))?;
    }
    if !globs.is_empty() {
        sink.psubscribe(&globs).await.map_err(|e| BrokerError::subscribe(format!("patterns {globs:?}"), e))?;
    }
    Ok(())
}

/// The channel names and the globs of `filters`.
fn names(filters: &[(Arc<str>, TopicFilter)]) -> (Vec<String>, Vec<String>) {
    let mut channels = Vec::new();
    let mut globs = Vec::new();
    for (_, f) in filters {
        match f {
            TopicFilter::Exact(t) => channels.push(t.to_string()),
            TopicFilter::Pattern(p) => globs.push(redis_glob(p)),
        }
    }
    (channels, globs)
}
