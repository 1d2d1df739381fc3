//! What every source hands to the sequencer: one [`SourceMessage`] per broker message, tagged
//! with the [`SourceKind`] it came from, over the shared bounded ingest channel.

use std::fmt;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::durable::DurableMark;
use crate::telemetry::TraceContext;

/// Which kind of source a message came from; a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    Nats,
    Redis,
    Publish,
    JetStream,
    RedisStreams,
}

impl SourceKind {
    /// Stable name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Nats => "nats",
            SourceKind::Redis => "redis",
            SourceKind::Publish => "publish",
            SourceKind::JetStream => "jetstream",
            SourceKind::RedisStreams => "redis_streams",
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Header (NATS, `/publish`) carrying the publisher's timestamp in Unix milliseconds.
pub const PUBLISHED_AT_HEADER: &str = "sse-published-at";

/// One message from any source, on its way to the sequencer.
#[derive(Debug)]
pub struct SourceMessage {
    pub source: SourceKind,
    /// The broker's own name for the stream: NATS subject or Redis channel, verbatim.
    pub topic: String,
    /// The payload, owned (copied out of the broker client's buffer).
    pub payload: Bytes,
    /// SSE `event:` type, when the publisher named one.
    pub event_type: Option<String>,
    pub trace: TraceContext,
    /// When the source received the message.
    pub received_at: Instant,
    /// Where the sequencer reports the assigned id, as the frame carries it (`/publish`
    /// answers with it; durable sources wait on it for their baseline to be applied).
    pub reply: Option<oneshot::Sender<String>>,
    /// The message's position in its durable stream (JetStream, Redis Streams), if it has one.
    pub durable: Option<DurableMark>,
}

impl SourceMessage {
    /// A message with no event type, trace or reply.
    pub fn new(source: SourceKind, topic: String, payload: Bytes) -> Self {
        SourceMessage {
            source,
            topic,
            payload,
            event_type: None,
            trace: TraceContext::default(),
            received_at: Instant::now(),
            reply: None,
            durable: None,
        }
    }
}

/// The sending half of the ingest channel, one clone per source.
pub type IngestSender = mpsc::Sender<SourceMessage>;
