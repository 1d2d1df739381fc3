//! Redis pub/sub source: `SUBSCRIBE`s channels and `PSUBSCRIBE`s patterns on a dedicated
//! connection and forwards every message.
//!
//! The redis crate does not reconnect a pub/sub connection, so this source does: each session
//! connects (bounded by `connect_timeout`), subscribes, then reads until the connection drops,
//! a periodic `PING` goes unanswered, or shutdown. Then it waits a capped, jittered backoff and
//! starts a new session with the same subscriptions. Messages published while the connection
//! is down are lost by Redis pub/sub's own design (it keeps no history): a session after the
//! first starts with a `source-outage` signal, ahead of its first message.
//!
//! The redis client queues pub/sub messages without bound, so this source never stops reading:
//! what waits for the ingest channel waits in the source's own buffer, bounded in bytes
//! (`redis.buffer_bytes`); past it messages are dropped and counted, and a `source-dropped`
//! signal goes ahead of the next message forwarded.
//!
//! Envelope mode reads `{"event": "...", "data": ..., "traceparent": "..."}`: a string `data`
//! is the payload verbatim, any other JSON value is the payload as compact JSON. A message that
//! is not such an envelope, or is larger than `max_message_bytes`, is counted and dropped
//! (logged at most once per interval, see `sources::bounds`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::bounds::BrokerInput;
use super::buffer::{Buffer, Reserve};
use super::message::{IngestSender, SourceKind, SourceMessage, SourceSignal};
use super::redis_client::{RedisEndpoint, redacted};
use super::redis_connect::RedisConnect;
use super::redis_pubsub::Subscriber;
use super::session::{BrokerError, Session, SessionEnd, supervise};
use super::status::SourceStatus;
use crate::config::RedisConfig;
use crate::outages::{SourceGap, SourceSpace};
use crate::telemetry::TraceContext;

/// Runs the Redis source until `shutdown`.
pub async fn run(
    cfg: RedisConfig,
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
    let spaces = spaces(&cfg);
    let buffer = Buffer::new(SourceKind::Redis, cfg.buffer_bytes);
    let mut session =
        RedisSession { endpoint, cfg, tx, status: status.clone(), shutdown: shutdown.clone(), input, buffer, spaces };
    supervise("redis", &url, session.cfg.reconnect_max_delay, &status, &shutdown, &mut session).await
}

/// The pub/sub source's state across sessions.
struct RedisSession {
    endpoint: RedisEndpoint,
    cfg: RedisConfig,
    tx: IngestSender,
    status: Arc<SourceStatus>,
    shutdown: CancellationToken,
    input: BrokerInput,
    /// Messages read and not yet handed to the ingest channel; kept across sessions, so what
    /// was read before a disconnect is still forwarded, ahead of the outage signal.
    buffer: Buffer,
    /// The channels and patterns, as the spaces a signal names.
    spaces: Arc<[SourceSpace]>,
}

/// The channels and patterns as the spaces a signal names.
pub(super) fn spaces(cfg: &RedisConfig) -> Arc<[SourceSpace]> {
    let channels = cfg.channels.iter().map(|c| SourceSpace::Channel(Arc::from(c.as_str())));
    channels.chain(cfg.patterns.iter().map(|p| SourceSpace::Glob(Arc::from(p.as_str())))).collect()
}

impl RedisSession {
    /// Connects and subscribes to every channel and pattern.
    async fn subscribe(&self) -> Result<Subscriber, BrokerError> {
        let cfg = &self.cfg;
        let connect = async {
            let pubsub = self.endpoint.pubsub(cfg.sharded).await.map_err(|e| BrokerError::Connect(e.into()))?;
            let (mut sink, stream) = pubsub.split();
            for c in &cfg.channels {
                let c = std::slice::from_ref(c);
                sink.subscribe(c).await.map_err(|e| BrokerError::subscribe(format!("channel {:?}", c[0]), e))?;
            }
            for p in &cfg.patterns {
                let p = std::slice::from_ref(p);
                sink.psubscribe(p).await.map_err(|e| BrokerError::subscribe(format!("pattern {:?}", p[0]), e))?;
            }
            Ok(Subscriber::from_parts(sink, stream))
        };
        match tokio::time::timeout(cfg.connect_timeout, connect).await {
            Ok(r) => r,
            Err(_) => Err(BrokerError::ConnectTimedOut(cfg.connect_timeout)),
        }
    }
}

impl Session for RedisSession {
    async fn run(&mut self) -> SessionEnd {
        let pubsub = tokio::select! {
            _ = self.shutdown.cancelled() => return SessionEnd::Shutdown,
            r = self.subscribe() => match r {
                Ok(p) => p,
                Err(e) => return e.into(),
            },
        };
        let cluster = self.endpoint.is_cluster();
        let RedisSession { cfg, tx, status, shutdown, input, buffer, spaces, .. } = self;
        let reconnect = status.set_connected();
        info!(source = "redis", url = %redacted(&cfg.url), reconnect, channels = ?cfg.channels, patterns = ?cfg.patterns, cluster, sharded = cfg.sharded, "Broker connected and subscribed.");
        // Whatever is still buffered came before the outage; the signal goes after it and
        // before any message of this session.
        if reconnect {
            info!(
                source = "redis",
                reason = SourceGap::Outage.as_str(),
                "Broker back after an outage; telling the streams it serves."
            );
            buffer.push_signal(SourceSignal {
                source: SourceKind::Redis,
                gap: SourceGap::Outage,
                spaces: spaces.clone(),
                lost: 0,
            });
        }

        let (mut sink, mut stream) = pubsub.split();
        let mut ping = tokio::time::interval(cfg.ping_interval);
        ping.reset();
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
                    if let Some(lost) = buffer.push(out, spaces)
                        && let Some(suppressed) = buffer.drop_log.due()
                    {
                        warn!(source = "redis", lost, buffer_bytes = cfg.buffer_bytes, suppressed, "Ingest queue full and source buffer full; Redis messages dropped; telling the streams (logged at most every 10s).");
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

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    event: Option<String>,
    data: serde_json::Value,
    #[serde(default)]
    traceparent: Option<String>,
    #[serde(default)]
    tracestate: Option<String>,
    /// The publisher's timestamp, Unix milliseconds.
    #[serde(default)]
    published_at: Option<u64>,
}

/// A message read as an envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The SSE event type, if the publisher named one.
    pub event_type: Option<String>,
    /// `data` verbatim when it is a string, else as compact JSON.
    pub payload: Bytes,
    pub trace: TraceContext,
}

/// Reads `{"event": "...", "data": ..., "traceparent": "...", "tracestate": "..."}`. Pure, so
/// it can be fuzzed (`fuzz/fuzz_targets/envelope.rs`); the caller bounds the input size.
pub fn decode_envelope(raw: &[u8]) -> Result<Decoded, serde_json::Error> {
    // JSON is UTF-8 (RFC 8259). Checked up front: serde skips unknown fields without
    // validating them, which would let invalid bytes through.
    let text = std::str::from_utf8(raw).map_err(|_| serde::de::Error::custom("not UTF-8"))?;
    // An envelope is a JSON object. serde's derived struct decoding also accepts an array of the
    // fields in order (`["type","data"]`), which no publisher means (found by fuzzing).
    if !text.trim_start().starts_with('{') {
        return Err(serde::de::Error::custom("an envelope is a JSON object"));
    }
    let env = serde_json::from_str::<Envelope>(text)?;
    let payload = match env.data {
        serde_json::Value::String(s) => Bytes::from(s),
        other => Bytes::from(other.to_string()),
    };
    Ok(Decoded {
        event_type: env.event,
        payload,
        trace: TraceContext {
            traceparent: env.traceparent,
            tracestate: env.tracestate,
            published_at_ms: env.published_at,
        },
    })
}

pub(super) fn to_source_message(msg: &redis::Msg, envelope: bool, input: &mut BrokerInput) -> Option<SourceMessage> {
    let topic = msg.get_channel_name();
    let raw = msg.get_payload_bytes();
    if !input.admit(topic, raw, !envelope) {
        return None;
    }
    if !envelope {
        return Some(SourceMessage::new(SourceKind::Redis, topic.to_owned(), Bytes::copy_from_slice(raw)));
    }
    match decode_envelope(raw) {
        Ok(d) => Some(SourceMessage {
            source: SourceKind::Redis,
            topic: topic.to_owned(),
            payload: d.payload,
            event_type: d.event_type,
            trace: d.trace,
            received_at: Instant::now(),
            reply: None,
            durable: None,
        }),
        Err(e) => {
            input.invalid(topic, &e);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_is_an_object() {
        let d = decode_envelope(br#"{"event":"e","data":{"a":1}}"#).unwrap();
        assert_eq!((d.event_type.as_deref(), &d.payload[..]), (Some("e"), &br#"{"a":1}"#[..]));
        assert!(decode_envelope(br#"["a",""]"#).is_err(), "an array of the fields is not an envelope");
        assert!(decode_envelope(br#"{"event":"e"}"#).is_err(), "data is required");
        assert!(decode_envelope(b"{\"data\":\"x\",\"z\":\"\xff\"}").is_err(), "JSON is UTF-8");
    }

    /// JSON's grammar allows a `\u` escape naming an unpaired surrogate (RFC 8259 §8.2). In a
    /// field the bridge ignores it is harmless and accepted; in `data` or `event` it cannot
    /// become UTF-8 text, so the message is malformed (found by fuzzing).
    #[test]
    fn unpaired_surrogates_are_refused_only_where_they_are_read() {
        let d = decode_envelope(br#"{"data":"x","note":"\ud802"}"#).unwrap();
        assert_eq!(&d.payload[..], b"x");
        assert!(decode_envelope(br#"{"data":"\ud802"}"#).is_err());
        assert!(decode_envelope(br#"{"data":"x","event":"\udc00"}"#).is_err());
    }
}
