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

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::select_all;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::nats::source_message;
use super::{IngestSender, Session, SessionEnd, SourceKind, SourceMessage, SourceStatus, supervise};
use crate::config::JetStreamConfig;
use crate::durable::{Catalog, DurableKind, DurableMark, Pos};
use crate::input::BrokerInput;

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
    let mut session = JetStreamSession {
        cfg,
        catalog,
        streams,
        last,
        tx,
        status: status.clone(),
        shutdown: shutdown.clone(),
        first: true,
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
    tx: IngestSender,
    status: Arc<SourceStatus>,
    shutdown: CancellationToken,
    first: bool,
    input: BrokerInput,
}

impl Session for JetStreamSession {
    async fn run(&mut self) -> SessionEnd {
        let JetStreamSession { cfg, catalog, streams, last, tx, status, shutdown, first, input } = self;
        // The client does not reconnect by itself: a lost connection ends the session, and the next
        // one reads on from the last sequence forwarded (an ordered consumer left to the client's
        // own reconnect would wait for heartbeats and keep the source looking connected).
        let lost = Arc::new(tokio::sync::Notify::new());
        let on_event = lost.clone();
        let connect = async {
            let client = async_nats::ConnectOptions::new()
                .name("sse-bridge-jetstream")
                .connection_timeout(cfg.connect_timeout)
                .max_reconnects(Some(0))
                .event_callback(move |event| {
                    let lost = on_event.clone();
                    async move {
                        if matches!(event, async_nats::Event::Disconnected | async_nats::Event::Closed) {
                            lost.notify_one();
                        }
                    }
                })
                .connect(cfg.url.as_str())
                .await
                .map_err(|e| e.to_string())?;
            let js = jetstream::new(client.clone());
            let mut consumers = Vec::with_capacity(streams.len());
            for (k, (idx, name)) in streams.iter().enumerate() {
                let mut stream = js.get_stream(name).await.map_err(|e| format!("stream {name:?}: {e}"))?;
                let info = stream.info().await.map_err(|e| format!("stream {name:?}: {e}"))?;
                catalog.set_subjects(*idx, &info.config.subjects);
                let start = match last[k] {
                    Some(seq) => seq + 1,
                    None => {
                        // Baseline: ids carry the stream's position before the first new message.
                        let seq = info.state.last_sequence;
                        let mark = DurableMark { stream: *idx as u16, pos: Pos { a: seq, b: 0 }, baseline: true };
                        let mut m = SourceMessage::new(SourceKind::JetStream, String::new(), Bytes::new());
                        m.durable = Some(mark);
                        // Wait until the sequencer has it: from then on resumes can place the stream.
                        let (reply, done) = tokio::sync::oneshot::channel();
                        m.reply = Some(reply);
                        tx.send(m).await.map_err(|_| "ingest closed".to_string())?;
                        done.await.map_err(|_| "ingest closed".to_string())?;
                        last[k] = Some(seq);
                        seq + 1
                    }
                };
                let filter_subjects = catalog.get(*idx).consumer_filters();
                if !cfg.subjects.is_empty() && filter_subjects.is_empty() {
                    warn!(source = "jetstream", stream = %name, subjects = ?cfg.subjects, "No configured subject is in this stream; not reading it.");
                    continue;
                }
                // One filter goes to the server; several (`filter_subjects` needs nats-server 2.10)
                // are applied here, as every message is checked against the catalog anyway.
                let filter_subject = match filter_subjects.as_slice() {
                    [one] => one.clone(),
                    _ => String::new(),
                };
                let consumer = stream
                    .create_consumer(OrderedConfig {
                        deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: start },
                        filter_subject,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| format!("consumer on {name:?}: {e}"))?;
                let messages = consumer.messages().await.map_err(|e| format!("consumer on {name:?}: {e}"))?;
                consumers.push(messages.map(move |m| (k, *idx, m)));
            }
            Ok::<_, String>((client, consumers))
        };
        let (client, consumers) = tokio::select! {
            _ = shutdown.cancelled() => return SessionEnd::Shutdown,
            r = tokio::time::timeout(cfg.connect_timeout * 2, connect) => match r {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return SessionEnd::Disconnected(e),
                Err(_) => return SessionEnd::Disconnected("connect timed out".into()),
            },
        };
        status.set_connected(*first);
        info!(source = "jetstream", reconnect = !*first, streams = streams.len(), "Broker connected; reading streams.");
        *first = false;
        let mut messages = select_all(consumers);
        let end = loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break SessionEnd::Shutdown,
                _ = lost.notified() => break SessionEnd::Disconnected("connection lost".into()),
                m = messages.next() => m,
            };
            let Some((k, idx, msg)) = next else {
                break SessionEnd::Disconnected("consumers closed".into());
            };
            let msg = match msg {
                Ok(m) => m,
                Err(e) => break SessionEnd::Disconnected(format!("consumer error: {e}")),
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
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break SessionEnd::Shutdown,
                r = tx.send(out) => if r.is_err() { break SessionEnd::DownstreamClosed },
            }
        };
        drop(messages);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), client.drain()).await;
        end
    }
}
