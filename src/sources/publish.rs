//! The embedded source: `POST /publish` hands messages to the same ingest path as the brokers,
//! so the bridge is useful with no broker at all. The HTTP details (auth, body limit, status
//! codes) live in `sse::handler`; this is the part that talks to the sequencer.

use std::time::Instant;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::message::{IngestSender, SourceKind, SourceMessage};
use crate::telemetry::TraceContext;

/// Why a publish did not get an id.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The ingest path is closed: the bridge is shutting down.
    #[error("the bridge is shutting down")]
    ShuttingDown,
}

/// Sequences one message and returns the id it was given (after it was fanned out).
pub async fn publish(
    tx: &IngestSender,
    topic: String,
    event_type: Option<String>,
    payload: Bytes,
    trace: TraceContext,
) -> Result<String, PublishError> {
    let (reply, rx) = oneshot::channel();
    let msg = SourceMessage {
        source: SourceKind::Publish,
        topic,
        payload,
        event_type,
        trace,
        received_at: Instant::now(),
        reply: Some(reply),
        durable: None,
    };
    tx.send(msg).await.map_err(|_| PublishError::ShuttingDown)?;
    rx.await.map_err(|_| PublishError::ShuttingDown)
}
