//! Broker sessions: how one ends ([`SessionEnd`], with the broker failure classified in
//! [`BrokerError`]), the loop that reconnects with backoff, and the steps every session shares
//! (forwarding a message, announcing a durable stream's baseline).

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::message::{IngestSender, SourceKind, SourceMessage};
use super::status::SourceStatus;
use crate::durable::DurableMark;
use crate::event::Pos;

/// Any error a broker client returns, kept as the source of a [`BrokerError`].
pub type ClientError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// How a broker session ended; logged with every reconnect.
#[derive(Debug, thiserror::Error)]
pub enum SessionEnd {
    /// The bridge is stopping.
    #[error("shutdown")]
    Shutdown,
    /// The broker connection failed or was lost.
    #[error("disconnected: {0}")]
    Disconnected(#[from] BrokerError),
    /// The ingest path is gone (the bridge is stopping); nothing left to deliver to.
    #[error("downstream closed")]
    DownstreamClosed,
}

/// Why a broker session could not start or went down: classified, so logs (`cause`) and
/// metrics can tell a broker that is down from one that refuses what the bridge asks of it.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The client could not be built from the configured settings (e.g. an unusable URL).
    #[error("{0}")]
    Setup(#[source] ClientError),
    /// The connection could not be established.
    #[error("{0}")]
    Connect(#[source] ClientError),
    /// Connecting (and, for durable sources, looking up the streams) took too long.
    #[error("connect timed out after {0:?}")]
    ConnectTimedOut(Duration),
    /// The broker refused a subscription or a stream lookup; `target` names it
    /// (`stream "ORDERS"`, `consumer on "ORDERS"`, `subject "a.b"`, `channel "x"`).
    #[error("{target}: {source}")]
    Subscribe {
        target: String,
        #[source]
        source: ClientError,
    },
    /// The connection went away without an error from the broker.
    #[error("{0}")]
    Lost(&'static str),
    /// A command or read on an established connection failed (`ping`, `XREAD`, a consumer).
    #[error("{during} failed: {source}")]
    Broker {
        during: &'static str,
        #[source]
        source: ClientError,
    },
}

impl BrokerError {
    /// A stable label of the failure class, for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            BrokerError::Setup(_) => "setup",
            BrokerError::Connect(_) => "connect",
            BrokerError::ConnectTimedOut(_) => "connect_timeout",
            BrokerError::Subscribe { .. } => "subscribe",
            BrokerError::Lost(_) => "connection_lost",
            BrokerError::Broker { .. } => "broker_error",
        }
    }

    /// A subscription or stream lookup on `target` that the broker refused.
    pub fn subscribe(target: String, source: impl Into<ClientError>) -> Self {
        BrokerError::Subscribe { target, source: source.into() }
    }

    /// A command that failed on an established connection.
    pub fn broker(during: &'static str, source: impl Into<ClientError>) -> Self {
        BrokerError::Broker { during, source: source.into() }
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
    shutdown: &CancellationToken,
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
                let cause = why.as_str();
                tracing::warn!(source, url, cause, reason = %why, "Broker unavailable; reconnecting with backoff.");
                logged_down = true;
            }
            SessionEnd::Disconnected(why) => {
                tracing::debug!(source, cause = why.as_str(), reason = %why, "Reconnect attempt failed.");
            }
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

/// Hands `msg` to the sequencer, waiting for room in the ingest channel (that wait is the
/// backpressure into the broker client) unless the bridge stops first.
pub async fn forward(tx: &IngestSender, shutdown: &CancellationToken, msg: SourceMessage) -> Result<(), SessionEnd> {
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => Err(SessionEnd::Shutdown),
        r = tx.send(msg) => r.map_err(|_| SessionEnd::DownstreamClosed),
    }
}

/// Tells the sequencer where durable stream `stream` stood when the source started reading it
/// (ids carry that position before the first new message), and waits until the sequencer has
/// it: from then on resumes can place the stream.
pub async fn send_baseline(tx: &IngestSender, source: SourceKind, stream: usize, pos: Pos) -> Result<(), SessionEnd> {
    let mut m = SourceMessage::new(source, String::new(), Bytes::new());
    m.durable = Some(DurableMark { stream: stream as u16, pos, baseline: true });
    let (reply, done) = oneshot::channel();
    m.reply = Some(reply);
    tx.send(m).await.map_err(|_| SessionEnd::DownstreamClosed)?;
    done.await.map(drop).map_err(|_| SessionEnd::DownstreamClosed)
}
