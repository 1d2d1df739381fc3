//! JetStream source: reads configured streams live, each through an ordered consumer (no acks,
//! no durable consumer state on the server per bridge), and tags every message with its stream
//! sequence, which becomes part of the event id (see `crate::durable`).
//!
//! A session connects, looks up every stream (its subjects become the durable topic space; its
//! last sequence is the baseline the ids start from), then reads from the next sequence of
//! each. If the session breaks (server gone, stream deleted, consumer error), the next one starts
//! again after the last sequence this source forwarded, so a broker outage loses nothing that
//! the stream still holds. Sessions back off with capped, jittered delays.

use std::sync::Arc;

use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig, OrderedError};
use async_nats::jetstream::{self, consumer::DeliverPolicy};
use futures_util::stream::select_all;
use futures_util::{Stream, StreamExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

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
    let input = BrokerInput::new(SourceKind::JetStream, cfg.max_message_bytes, status.clone());
    let url = cfg.url.clone();
    let max_delay = cfg.reconnect_max_delay;
    let mut session =
        JetStreamSession { cfg, catalog, streams, last, tx, status: status.clone(), shutdown: shutdown.clone(), input };
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
    tx: IngestSender,
    status: Arc<SourceStatus>,
    shutdown: CancellationToken,
    input: BrokerInput,
}

/// One stream's messages, tagged with (stream number in this source, catalog index).
type Tagged = (usize, usize, Result<jetstream::Message, OrderedError>);

impl Session for JetStreamSession {
    async fn run(&mut self) -> SessionEnd {
        // The client does not reconnect by itself: a lost connection ends the session, and the next
        // one reads on from the last sequence forwarded (an ordered consumer left to the client's
        // own reconnect would wait for heartbeats and keep the source looking connected).
        let lost = Arc::new(Notify::new());
        let timeout = self.cfg.connect_timeout * 2;
        let shutdown = self.shutdown.clone();
        let (client, consumers) = tokio::select! {
            _ = shutdown.cancelled() => return SessionEnd::Shutdown,
            r = tokio::time::timeout(timeout, self.open(lost.clone())) => match r {
                Ok(Ok(c)) => c,
                Ok(Err(end)) => return end,
                Err(_) => return BrokerError::ConnectTimedOut(timeout).into(),
            },
        };
        let reconnect = self.status.set_connected();
        info!(source = "jetstream", reconnect, streams = self.streams.len(), "Broker connected; reading streams.");
        let mut messages = select_all(consumers);
        let end = self.read(&mut messages, &lost).await;
        drop(messages);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), client.drain()).await;
        end
    }
}

impl JetStreamSession {
    /// Connects, then opens every stream: the client and one consumer per stream read.
    async fn open(
        &mut self,
        lost: Arc<Notify>,
    ) -> Result<(async_nats::Client, Vec<impl Stream<Item = Tagged> + use<>>), SessionEnd> {
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
        let mut consumers = Vec::with_capacity(self.streams.len());
        for k in 0..self.streams.len() {
            let idx = self.streams[k].0;
            if let Some(messages) = self.open_stream(&js, k).await? {
                consumers.push(messages.map(move |m| (k, idx, m)));
            }
        }
        Ok((client, consumers))
    }

    /// Looks up stream `k` (its subjects become its topic space; on the first session its last
    /// sequence is the baseline) and reads it from the next sequence; None when no configured
    /// subject is in it.
    async fn open_stream(&mut self, js: &jetstream::Context, k: usize) -> Result<Option<Ordered>, SessionEnd> {
        let (idx, name) = &self.streams[k];
        let idx = *idx;
        let lookup = |e: async_nats::Error| BrokerError::Subscribe { target: format!("stream {name:?}"), source: e };
        let mut stream = js.get_stream(name).await.map_err(|e| lookup(e.into()))?;
        let info = stream.info().await.map_err(|e| lookup(e.into()))?;
        self.catalog.set_subjects(idx, &info.config.subjects);
        let start = match self.last[k] {
            Some(seq) => seq + 1,
            None => {
                let seq = info.state.last_sequence;
                send_baseline(&self.tx, SourceKind::JetStream, idx, Pos { a: seq, b: 0 }).await?;
                self.last[k] = Some(seq);
                seq + 1
            }
        };
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

    /// Forwards every new, admitted message until shutdown, the connection is lost or the
    /// ingest path closes.
    async fn read(&mut self, messages: &mut (impl Stream<Item = Tagged> + Unpin), lost: &Notify) -> SessionEnd {
        let JetStreamSession { cfg, catalog, last, tx, status, shutdown, input, .. } = self;
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return SessionEnd::Shutdown,
                _ = lost.notified() => return BrokerError::Lost("connection lost").into(),
                m = messages.next() => m,
            };
            let Some((k, idx, msg)) = next else {
                return BrokerError::Lost("consumers closed").into();
            };
            let msg = match msg {
                Ok(m) => m,
                Err(e) => return BrokerError::broker("consumer", e).into(),
            };
            let Ok(seq) = msg.info().map(|i| i.stream_sequence) else {
                status.count_malformed();
                continue;
            };
            if last[k].is_some_and(|l| seq <= l) {
                continue; // already forwarded (a consumer recreated from an older point)
            }
            last[k] = Some(seq);
            if !catalog.get(idx).holds(&msg.subject) {
                continue; // outside `jetstream.subjects`
            }
            if !input.admit(&msg.subject, &msg.payload, true) {
                continue;
            }
            let mut out = source_message(&msg, SourceKind::JetStream, &cfg.event_header);
            out.durable = Some(DurableMark { stream: idx as u16, pos: Pos { a: seq, b: 0 }, baseline: false });
            if let Err(end) = forward(tx, shutdown, out).await {
                return end;
            }
        }
    }
}
