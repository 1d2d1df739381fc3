//! What every source hands to the sequencer: one [`SourceMessage`] per broker message, tagged
//! with the [`SourceKind`] it came from, and a [`SourceSignal`] when a live source lost
//! messages, over the shared ingest channel, bounded in messages and in bytes.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::durable::DurableMark;
use crate::outages::{SourceGap, SourceSpace};
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

impl SourceMessage {
    /// What this message is charged against the ingest channel's byte bound: its payload,
    /// topic and event type plus the fixed size of the message itself.
    pub fn ingest_cost(&self) -> usize {
        std::mem::size_of::<SourceMessage>()
            + self.payload.len()
            + self.topic.len()
            + self.event_type.as_ref().map_or(0, String::len)
    }
}

/// A live source's word to the sequencer that it may have lost messages ([`SourceGap`]) on
/// some of its subscriptions; sent through the ingest channel in order with the source's
/// messages, before any message that came after the loss.
#[derive(Debug, Clone)]
pub struct SourceSignal {
    pub source: SourceKind,
    pub gap: SourceGap,
    /// The subscriptions concerned: streams whose filters these may serve are told.
    pub spaces: Arc<[SourceSpace]>,
    /// Messages known to be lost (0: unknown, e.g. an outage).
    pub lost: u64,
}

/// What travels from the sources to the sequencer.
#[derive(Debug)]
pub enum Ingest {
    /// A message, with the bytes it holds of the channel's byte bound (the sequencer gives
    /// them back with [`IngestReceiver::release`] once it has taken the message in).
    Message(SourceMessage, u32),
    /// A source lost messages.
    Signal(SourceSignal),
}

/// The ingest path is closed (the bridge is stopping).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the ingest channel is closed")]
pub struct IngestClosed;

/// The sending half of the ingest channel, one clone per source. Bounded twice: by messages
/// (`fanout.ingest_queue`) and by bytes (`fanout.ingest_queue_bytes`). Policy when either is
/// full: the sender waits (its turn is first come, first served), which pushes back into the
/// broker client, whose own bounded buffer then drops (and the source says so with a
/// `source-dropped` signal).
#[derive(Debug, Clone)]
pub struct IngestSender {
    tx: mpsc::Sender<Ingest>,
    bytes: Arc<Semaphore>,
    max_bytes: u32,
}

/// The receiving half: the sequencer's.
#[derive(Debug)]
pub struct IngestReceiver {
    rx: mpsc::Receiver<Ingest>,
    bytes: Arc<Semaphore>,
}

/// A reserved place in the ingest channel (a message slot and its bytes), owned so a source can
/// keep waiting for it across a `select!` loop without losing its turn.
#[derive(Debug)]
pub struct IngestPermit {
    slot: mpsc::OwnedPermit<Ingest>,
    bytes: u32,
}

/// The ingest channel: room for `messages` messages holding at most `bytes` bytes together
/// (a larger message is charged the whole bound, so it waits for an empty channel).
pub fn ingest_channel(messages: usize, bytes: usize) -> (IngestSender, IngestReceiver) {
    let (tx, rx) = mpsc::channel(messages.max(1));
    let max_bytes = u32::try_from(bytes).unwrap_or(u32::MAX).max(1);
    let sem = Arc::new(Semaphore::new(max_bytes as usize));
    (IngestSender { tx, bytes: sem.clone(), max_bytes }, IngestReceiver { rx, bytes: sem })
}

impl IngestSender {
    /// Sends `msg`, waiting for a slot and for its bytes.
    pub async fn send(&self, msg: SourceMessage) -> Result<(), IngestClosed> {
        self.reserve(msg.ingest_cost()).await?.send(msg);
        Ok(())
    }

    /// Sends a signal, waiting for a slot (a signal is charged no bytes).
    pub async fn signal(&self, signal: SourceSignal) -> Result<(), IngestClosed> {
        self.tx.send(Ingest::Signal(signal)).await.map_err(|_| IngestClosed)
    }

    /// Waits for a slot and `bytes` (capped at the bound). Cancel-safe: dropping the future
    /// gives back whatever it had acquired.
    pub async fn reserve(&self, bytes: usize) -> Result<IngestPermit, IngestClosed> {
        let n = u32::try_from(bytes).unwrap_or(u32::MAX).min(self.max_bytes);
        let permit = self.bytes.clone().acquire_many_owned(n).await.map_err(|_| IngestClosed)?;
        let slot = self.tx.clone().reserve_owned().await.map_err(|_| IngestClosed)?;
        permit.forget();
        Ok(IngestPermit { slot, bytes: n })
    }

    /// Message slots of the channel.
    pub fn max_capacity(&self) -> usize {
        self.tx.max_capacity()
    }

    /// Message slots free now.
    pub fn capacity(&self) -> usize {
        self.tx.capacity()
    }

    /// Bytes of the messages waiting now.
    pub fn queued_bytes(&self) -> usize {
        (self.max_bytes as usize).saturating_sub(self.bytes.available_permits())
    }
}

impl IngestPermit {
    /// Sends `msg` in the reserved place.
    pub fn send(self, msg: SourceMessage) {
        self.slot.send(Ingest::Message(msg, self.bytes));
    }

    /// Sends `signal` in the reserved place; reserve it with 0 bytes (a signal holds none).
    pub fn signal(self, signal: SourceSignal) {
        debug_assert_eq!(self.bytes, 0, "a signal is reserved with 0 bytes");
        self.slot.send(Ingest::Signal(signal));
    }
}

impl IngestReceiver {
    /// The next item, or None when every sender is gone.
    pub async fn recv(&mut self) -> Option<Ingest> {
        self.rx.recv().await
    }

    /// Gives back the bytes a message held once the sequencer has taken it in.
    pub fn release(&self, bytes: u32) {
        self.bytes.add_permits(bytes as usize);
    }
}

impl Drop for IngestReceiver {
    fn drop(&mut self) {
        // Senders waiting for bytes learn that the path is closed.
        self.bytes.close();
    }
}
