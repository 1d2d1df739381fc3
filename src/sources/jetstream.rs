//! JetStream source: reads configured streams live, each through an ordered consumer (no acks,
//! no durable consumer state on the server per bridge), and tags every message with its stream
//! sequence, which becomes part of the event id (see `crate::durable`).
//!
//! A session connects, looks up every stream (its subjects become the durable topic space; its
//! last sequence is the baseline the ids start from), then reads from the next sequence of
//! each. If the session breaks (server gone, consumer error), the next one starts again after
//! the last sequence this source forwarded, so a broker outage loses nothing that the stream
//! still holds. Sessions back off with capped, jittered delays.
//!
//! A stream deleted and recreated starts its sequence again at 1: read on "after the last
//! sequence forwarded", every event of the new stream up to that number would be skipped while
//! the source looks healthy (the client's ordered consumer recreates itself on the new stream
//! from the old sequence). So the source watches each stream's identity: its `created` time and
//! a last sequence below ours mean it started over. It learns of it at once from the server's
//! stream advisories (`$JS.EVENT.ADVISORY.STREAM.*.<name>`), at every session start, and every
//! [`CHECK_EVERY`] in case advisories do not reach it; then it logs the reset, announces the new
//! stream's start to the sequencer (a baseline below the old position: `durable::Reset`, which
//! gives resumes from before it a `stream-reset` gap) and reads the new stream from its start,
//! in the same session.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig, OrderedError};
use async_nats::jetstream::{self, consumer::DeliverPolicy};
use futures_util::StreamExt;
use futures_util::stream::{BoxStream, SelectAll};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::bounds::BrokerInput;
use super::message::{IngestSender, SourceKind};
use super::nats::source_message;
use super::nats_connect::{JetStreamConnect, NatsConnectError};
use super::session::{BrokerError, Session, SessionEnd, forward, send_baseline, supervise};
use super::status::SourceStatus;
use crate::config::JetStreamConfig;
use crate::durable::{Catalog, DurableKind, DurableMark, Pos};

/// Runs the JetStream source until `shutdown`.
pub async fn run(
    cfg: JetStreamConfig,
    catalog: Arc<Catalog>,
    tx: IngestSender,
    status: Arc<SourceStatus>,
    shutdown: CancellationToken,
) -> SessionEnd {
    let streams: Vec<(usize, String)> =
        catalog.iter().filter(|(_, s)| s.kind == DurableKind::JetStream).map(|(i, s)| (i, s.name.clone())).collect();
    let last = vec![None; streams.len()];
    let identity = vec![StreamIdentity::default(); streams.len()];
    let input = BrokerInput::new(SourceKind::JetStream, cfg.max_message_bytes, status.clone());
    let url = cfg.url.clone();
    let max_delay = cfg.reconnect_max_delay;
    let mut session = JetStreamSession {
        cfg,
        catalog,
        streams,
        last,
        identity,
        stops: Vec::new(),
        tx,
        status: status.clone(),
        shutdown: shutdown.clone(),
        input,
    };
    supervise("jetstream", &url, max_delay, &status, &shutdown, &mut session).await
}

/// The JetStream source's state across sessions.
struct JetStreamSession {
    cfg: JetStreamConfig,
    catalog: Arc<Catalog>,
    /// (catalog index, stream name) of every JetStream stream.
    streams: Vec<(usize, String)>,
    /// Last sequence forwarded per stream; None until the first session's baseline.
    last: Vec<Option<u64>>,
    /// What each stream was when last looked up: tells a recreated stream from the same one.
    identity: Vec<StreamIdentity>,
    /// Per stream, ends its current consumer (when it is replaced after a reset).
    stops: Vec<CancellationToken>,
    tx: IngestSender,
    status: Arc<SourceStatus>,
    shutdown: CancellationToken,
    input: BrokerInput,
}

/// A stream as last looked up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct StreamIdentity {
    /// Its creation time (Unix nanoseconds): a recreated stream has a new one.
    created: Option<i128>,
    /// The `nats.subjects` entries its subjects overlap, as last logged.
    overlap: Vec<String>,
}

/// How often every stream's identity is checked besides the advisories.
pub const CHECK_EVERY: Duration = Duration::from_secs(30);

/// The server's stream advisories (created, deleted, updated), `.<action>.<stream>`.
const ADVISORIES: &str = "$JS.EVENT.ADVISORY.STREAM.*.*";

/// One stream's messages, tagged with (stream number in this source, catalog index).
type Tagged = (usize, usize, Result<jetstream::Message, OrderedError>);

/// Every stream's consumer, read as one.
type Consumers = SelectAll<BoxStream<'static, Tagged>>;

/// Stream `k`'s consumer as one of [`Consumers`], ending when `stop` is cancelled.
fn tagged(consumer: Ordered, k: usize, idx: usize, stop: CancellationToken) -> BoxStream<'static, Tagged> {
    consumer.take_until(stop.cancelled_owned()).map(move |m| (k, idx, m)).boxed()
}

impl Session for JetStreamSession {
    async fn run(&mut self) -> SessionEnd {
        // The client does not reconnect by itself: a lost connection ends the session, and the next
        // one reads on from the last sequence forwarded (an ordered consumer left to the client's
        // own reconnect would wait for heartbeats and keep the source looking connected).
        let lost = Arc::new(Notify::new());
        let timeout = self.cfg.connect_timeout * 2;
        let shutdown = self.shutdown.clone();
        let (client, js, mut messages) = tokio::select! {
            _ = shutdown.cancelled() => return SessionEnd::Shutdown,
            r = tokio::time::timeout(timeout, self.open(lost.clone())) => match r {
                Ok(Ok(c)) => c,
                Ok(Err(end)) => return end,
                Err(_) => return BrokerError::ConnectTimedOut(timeout).into(),
            },
        };
        // Without advisories (no permission) the periodic check still finds a reset.
        let advisories = match client.subscribe(ADVISORIES).await {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(source = "jetstream", error = %e, "Cannot subscribe to stream advisories; stream resets are found by the periodic check only.");
                None
            }
        };
        let reconnect = self.status.set_connected();
        info!(source = "jetstream", reconnect, streams = self.streams.len(), "Broker connected; reading streams.");
        let end = self.read(&js, &mut messages, advisories, &lost).await;
        drop(messages);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), client.drain()).await;
        end
    }
}

impl JetStreamSession {
    /// Connects, then opens every stream: the client, its JetStream context and the consumers.
    async fn open(
        &mut self,
        lost: Arc<Notify>,
    ) -> Result<(async_nats::Client, jetstream::Context, Consumers), SessionEnd> {
        let opts = async_nats::ConnectOptions::new()
            .name("sse-bridge-jetstream")
            .connection_timeout(self.cfg.connect_timeout)
            .max_reconnects(Some(0))
            .event_callback(move |event| {
                let lost = lost.clone();
                async move {
                    if matches!(event, async_nats::Event::Disconnected | async_nats::Event::Closed) {
                        lost.notify_one();
                    }
                }
            });
        let (client, js) = JetStreamConnect::new(&self.cfg).connect(opts).await.map_err(|e| match e {
            NatsConnectError::Files(f) => BrokerError::Setup(f.into()),
            other => BrokerError::Connect(other.into()),
        })?;
        let mut consumers = Consumers::new();
        self.stops = (0..self.streams.len()).map(|_| CancellationToken::new()).collect();
        for k in 0..self.streams.len() {
            let mut stream = self.lookup(&js, k).await?;
            if let Some(messages) = self.open_stream(&mut stream, k).await? {
                consumers.push(tagged(messages, k, self.streams[k].0, self.stops[k].clone()));
            }
        }
        Ok((client, js, consumers))
    }

    /// Stream `k` as the server has it now.
    async fn lookup(&self, js: &jetstream::Context, k: usize) -> Result<jetstream::stream::Stream, SessionEnd> {
        let name = &self.streams[k].1;
        js.get_stream(name)
            .await
            .map_err(|e| BrokerError::subscribe(format!("stream {name:?}"), async_nats::Error::from(e)).into())
    }

    /// Reads stream `k`'s info (its subjects become its topic space) and reads it from the next
    /// sequence: on the first session after its last sequence (the baseline), after a reset
    /// from the new stream's start, else after the last sequence forwarded. None when no
    /// configured subject is in it.
    async fn open_stream(
        &mut self,
        stream: &mut jetstream::stream::Stream,
        k: usize,
    ) -> Result<Option<Ordered>, SessionEnd> {
        let (idx, name) = self.streams[k].clone();
        let info = stream
            .info()
            .await
            .map_err(|e| BrokerError::subscribe(format!("stream {name:?}"), async_nats::Error::from(e)))?;
        self.learn_subjects(k, &info.config.subjects);
        let created = info.created.unix_timestamp_nanos();
        let recreated = self.identity[k].created.is_some_and(|c| c != created);
        let start = match self.last[k] {
            Some(seq) if recreated || info.state.last_sequence < seq => {
                // The stream started over: read the new one from its start.
                let base = info.state.first_sequence.saturating_sub(1);
                warn!(
                    source = "jetstream",
                    stream = %name,
                    old_position = seq,
                    new_first = info.state.first_sequence,
                    new_last = info.state.last_sequence,
                    "Stream was deleted and recreated (its sequence started over); reading the new stream from its start. Resumes from before it get a stream-reset gap."
                );
                send_baseline(&self.tx, SourceKind::JetStream, idx, Pos { a: base, b: 0 }).await?;
                self.last[k] = Some(base);
                base + 1
            }
            Some(seq) => seq + 1,
            None => {
                let seq = info.state.last_sequence;
                send_baseline(&self.tx, SourceKind::JetStream, idx, Pos { a: seq, b: 0 }).await?;
                self.last[k] = Some(seq);
                seq + 1
            }
        };
        self.identity[k].created = Some(created);
        let filter_subjects = self.catalog.get(idx).consumer_filters();
        if !self.cfg.subjects.is_empty() && filter_subjects.is_empty() {
            warn!(source = "jetstream", stream = %name, subjects = ?self.cfg.subjects, "No configured subject is in this stream; not reading it.");
            return Ok(None);
        }
        // One filter goes to the server; several (`filter_subjects` needs nats-server 2.10)
        // are applied here, as every message is checked against the catalog anyway.
        let filter_subject = match filter_subjects.as_slice() {
            [one] => one.clone(),
            _ => String::new(),
        };
        let consumer_failed = |e: async_nats::Error| BrokerError::subscribe(format!("consumer on {name:?}"), e);
        let consumer = stream
            .create_consumer(OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: start },
                filter_subject,
                ..Default::default()
            })
            .await
            .map_err(|e| consumer_failed(e.into()))?;
        Ok(Some(consumer.messages().await.map_err(|e| consumer_failed(e.into()))?))
    }

    /// Records stream `k`'s subjects in the catalog and logs, once per change, an overlap with
    /// `nats.subjects` (whose copies the sequencer then drops: `Catalog::shadowed`).
    fn learn_subjects(&mut self, k: usize, subjects: &[String]) {
        let (idx, name) = &self.streams[k];
        self.catalog.set_subjects(*idx, subjects);
        let overlap = self.catalog.nats_overlap(*idx);
        if !overlap.is_empty() && overlap != self.identity[k].overlap {
            error!(
                source = "jetstream",
                stream = %name,
                stream_subjects = ?subjects,
                nats_subjects = ?overlap,
                "Core NATS and this JetStream stream both bridge these subjects; the core NATS copies are dropped so each message is delivered once, from the stream. Narrow nats.subjects or set jetstream.subjects."
            );
        }
        self.identity[k].overlap = overlap;
    }

    /// Looks stream `k` up again (an advisory named it, or the periodic check is due); if it
    /// started over, its consumer is replaced by one reading the new stream from its start.
    async fn check_stream(
        &mut self,
        js: &jetstream::Context,
        k: usize,
        messages: &mut Consumers,
    ) -> Result<(), SessionEnd> {
        let mut stream = match self.lookup(js, k).await {
            Ok(s) => s,
            Err(_) => return Ok(()), // deleted: the next advisory or check finds the new one
        };
        let Ok(info) = stream.info().await else { return Ok(()) };
        self.learn_subjects(k, &info.config.subjects);
        let recreated = self.identity[k].created.is_some_and(|c| c != info.created.unix_timestamp_nanos());
        if !recreated && self.last[k].is_none_or(|l| info.state.last_sequence >= l) {
            return Ok(());
        }
        self.stops[k].cancel();
        self.stops[k] = CancellationToken::new();
        if let Some(consumer) = self.open_stream(&mut stream, k).await? {
            messages.push(tagged(consumer, k, self.streams[k].0, self.stops[k].clone()));
        }
        Ok(())
    }

    /// Forwards every new, admitted message until shutdown, the connection is lost or the
    /// ingest path closes; checks a stream an advisory names, and every stream periodically.
    async fn read(
        &mut self,
        js: &jetstream::Context,
        messages: &mut Consumers,
        mut advisories: Option<async_nats::Subscriber>,
        lost: &Notify,
    ) -> SessionEnd {
        let mut check = tokio::time::interval_at(tokio::time::Instant::now() + CHECK_EVERY, CHECK_EVERY);
        loop {
            // Advisories first: a stream's "created" must be handled before the old consumer,
            // recreated on the new stream, delivers anything from it.
            let next = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return SessionEnd::Shutdown,
                _ = lost.notified() => return BrokerError::Lost("connection lost").into(),
                a = next_advisory(&mut advisories) => {
                    match a {
                        Some(a) => {
                            if let Err(end) = self.on_advisory(js, &a.subject, messages).await {
                                return end;
                            }
                        }
                        None => advisories = None,
                    }
                    continue;
                }
                _ = check.tick() => {
                    for k in 0..self.streams.len() {
                        if let Err(end) = self.check_stream(js, k, messages).await {
                            return end;
                        }
                    }
                    continue;
                }
                m = messages.next() => m,
            };
            if let Err(end) = self.forward_one(next).await {
                return end;
            }
        }
    }

    /// A stream advisory (`$JS.EVENT.ADVISORY.STREAM.<action>.<stream>`) about one of ours.
    async fn on_advisory(
        &mut self,
        js: &jetstream::Context,
        subject: &str,
        messages: &mut Consumers,
    ) -> Result<(), SessionEnd> {
        let mut tokens = subject.rsplit('.');
        let (Some(stream), Some(action)) = (tokens.next(), tokens.next()) else { return Ok(()) };
        let Some(k) = self.streams.iter().position(|(_, n)| n == stream) else { return Ok(()) };
        match action {
            "DELETED" => {
                warn!(source = "jetstream", stream, "Stream deleted; waiting for it to be created again.");
                Ok(())
            }
            "CREATED" | "UPDATED" => self.check_stream(js, k, messages).await,
            _ => Ok(()),
        }
    }

    /// Forwards one consumer item, if it is new and admitted.
    async fn forward_one(&mut self, next: Option<Tagged>) -> Result<(), SessionEnd> {
        let JetStreamSession { cfg, catalog, last, tx, status, shutdown, input, .. } = self;
        let Some((k, idx, msg)) = next else {
            return Err(BrokerError::Lost("consumers closed").into());
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => return Err(BrokerError::broker("consumer", e).into()),
        };
        let Ok(seq) = msg.info().map(|i| i.stream_sequence) else {
            status.count_malformed();
            return Ok(());
        };
        if last[k].is_some_and(|l| seq <= l) {
            return Ok(()); // already forwarded (a consumer recreated from an older point)
        }
        last[k] = Some(seq);
        if !catalog.get(idx).holds(&msg.subject) {
            return Ok(()); // outside `jetstream.subjects`
        }
        if !input.admit(&msg.subject, &msg.payload, true) {
            return Ok(());
        }
        let mut out = source_message(&msg, SourceKind::JetStream, &cfg.event_header);
        out.durable = Some(DurableMark { stream: idx as u16, pos: Pos { a: seq, b: 0 }, baseline: false });
        forward(tx, shutdown, out).await
    }
}

/// The next advisory, or never when there is no subscription.
async fn next_advisory(advisories: &mut Option<async_nats::Subscriber>) -> Option<async_nats::Message> {
    match advisories {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}
