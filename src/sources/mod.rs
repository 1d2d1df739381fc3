//! Sources: where messages come from. Each source turns its broker's messages into
//! [`SourceMessage`]s and hands them to the one ingest path through a bounded channel.
//!
//! The contract every source keeps:
//! - it never blocks another source (each runs in its own task; the ingest channel is shared,
//!   and when it is full every sender waits its turn, which pushes back into the broker client);
//! - it copies the payload out of the broker client's read buffer before handing it on, so a
//!   queued message never pins a large buffer;
//! - a session with the broker ends in a named [`SessionEnd`], then the source reconnects with
//!   capped exponential [`Backoff`] until shutdown; the bridge serves while a broker is down;
//! - it reports its state in a [`SourceStatus`] for `/readyz` and `/metrics`.

pub mod jetstream;
pub mod nats;
pub mod publish;
pub mod redis;
pub mod redis_streams;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

/// How a broker session ended; logged with every reconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// The bridge is stopping.
    Shutdown,
    /// The broker connection failed or was lost.
    Disconnected(String),
    /// The ingest path is gone (the bridge is stopping); nothing left to deliver to.
    DownstreamClosed,
}

impl fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionEnd::Shutdown => f.write_str("shutdown"),
            SessionEnd::Disconnected(why) => write!(f, "disconnected: {why}"),
            SessionEnd::DownstreamClosed => f.write_str("downstream closed"),
        }
    }
}

/// A source's connection state, shared with the admin endpoints.
#[derive(Debug)]
pub struct SourceStatus {
    pub kind: SourceKind,
    connected: AtomicBool,
    reconnects: AtomicU64,
    malformed: AtomicU64,
}

impl SourceStatus {
    /// A disconnected source that has not yet connected.
    pub fn new(kind: SourceKind) -> Self {
        SourceStatus {
            kind,
            connected: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
        }
    }

    /// Records a (re)connection; every connection after the first counts as a reconnect.
    pub fn set_connected(&self, first: bool) {
        self.connected.store(true, Ordering::Release);
        if !first {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records a lost connection.
    pub fn set_disconnected(&self) {
        self.connected.store(false, Ordering::Release);
    }

    /// Whether the broker connection is up.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Connections after the first.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Counts a message that could not be turned into an event.
    pub fn count_malformed(&self) -> u64 {
        self.malformed.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Messages dropped as malformed.
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }
}

/// One session with a broker: connect, read until the connection is lost or the bridge stops.
pub trait Session {
    /// Runs the session and says why it ended.
    fn run(&mut self) -> impl std::future::Future<Output = SessionEnd> + Send;
}

/// Runs `session` again and again until shutdown or until the ingest path closes. A lost
/// broker is logged once per outage at warn (retries while it lasts at debug); between sessions
/// it waits a capped, jittered backoff, reset after every session that had connected.
pub async fn supervise(
    source: &'static str,
    url: &str,
    max_delay: Duration,
    status: &SourceStatus,
    shutdown: &tokio_util::sync::CancellationToken,
    session: &mut impl Session,
) -> SessionEnd {
    let mut backoff = Backoff::new(max_delay);
    let mut logged_down = false;
    loop {
        let end = session.run().await;
        let was_connected = status.is_connected();
        status.set_disconnected();
        match &end {
            SessionEnd::Shutdown | SessionEnd::DownstreamClosed => {
                tracing::info!(source, reason = %end, "Source stopped.");
                return end;
            }
            SessionEnd::Disconnected(why) if was_connected || !logged_down => {
                tracing::warn!(source, url, reason = %why, "Broker unavailable; reconnecting with backoff.");
                logged_down = true;
            }
            SessionEnd::Disconnected(why) => tracing::debug!(source, reason = %why, "Reconnect attempt failed."),
        }
        if was_connected {
            backoff.reset();
        }
        tokio::select! {
            _ = shutdown.cancelled() => return SessionEnd::Shutdown,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// Capped exponential backoff with jitter: 100 ms, 200 ms, … up to `max`, each ±20 %, so a
/// fleet of bridges does not reconnect in lock-step after a broker restart.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at 100 ms (or `max` if smaller).
    pub fn new(max: Duration) -> Self {
        Backoff { next: Duration::from_millis(100).min(max), max }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        jitter(d)
    }

    /// Back to the first delay, after a successful connection.
    pub fn reset(&mut self) {
        self.next = Duration::from_millis(100).min(self.max);
    }
}

/// The delay for attempt `n` (1-based) of a capped doubling backoff, with jitter.
pub fn backoff_delay(attempt: usize, max: Duration) -> Duration {
    let base = Duration::from_millis(100).saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    jitter(base.min(max))
}

fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.8..1.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped() {
        let mut b = Backoff::new(Duration::from_secs(1));
        let delays: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays[0] < Duration::from_millis(130));
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(1200)));
        assert!(backoff_delay(50, Duration::from_secs(5)) <= Duration::from_secs(6));
    }
}
