//! The response bodies: the SSE stream, and small fixed bodies for everything else.
//!
//! [`SseBody`] is polled by hyper inside the connection's task; it takes frames from the
//! client's queue one by one. hyper keeps polling while frames are ready and flushes when the
//! body returns `Pending`, so each event reaches the socket at once and a burst goes out in one
//! vectored write. When the body is dropped (client gone, stream ended, connection killed) its
//! [`Subscription`] leaves the registry and the queue is freed: nothing of the client remains.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use tracing::debug;

use crate::client::{ClientQueue, CloseReason, Next};
use crate::metrics::Metrics;
use crate::registry::Subscription;

/// Error that aborts a stream (hyper then resets the stream or closes the connection).
#[derive(Debug, thiserror::Error)]
#[error("stream closed: {0}")]
pub struct StreamAborted(&'static str);

/// An open SSE stream.
#[derive(Debug)]
pub struct SseBody {
    queue: Arc<ClientQueue>,
    _subscription: Subscription,
    metrics: Arc<Metrics>,
    opened: Instant,
    ended: Option<&'static str>,
}

impl SseBody {
    /// A stream that delivers what `queue` receives while `subscription` is registered.
    pub fn new(queue: Arc<ClientQueue>, subscription: Subscription, metrics: Arc<Metrics>) -> Self {
        metrics.streams_opened.inc();
        SseBody { queue, _subscription: subscription, metrics, opened: Instant::now(), ended: None }
    }
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = StreamAborted;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, StreamAborted>>> {
        if self.ended.is_some() {
            return Poll::Ready(None);
        }
        match self.queue.poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Next::Frame(f)) => Poll::Ready(Some(Ok(Frame::data(f)))),
            Poll::Ready(Next::Closed(reason)) => {
                self.ended = Some(reason.as_str());
                match reason {
                    CloseReason::Shutdown => Poll::Ready(None),
                    CloseReason::SlowConsumer => Poll::Ready(Some(Err(StreamAborted(reason.as_str())))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        // A slow consumer is usually cut while hyper is blocked writing to its full socket, so
        // the body never polls the close itself; the queue still knows why it was closed.
        let reason = self.ended.unwrap_or_else(|| match self.queue.closed_reason() {
            Some(CloseReason::SlowConsumer) => CloseReason::SlowConsumer.as_str(),
            _ => "client_closed",
        });
        self.metrics.count_disconnect(reason);
        debug!(reason, duration_ms = self.opened.elapsed().as_millis() as u64, "Stream ended.");
    }
}

/// Every response body the bridge sends: one enum instead of a boxed trait object, so plain
/// responses cost no allocation for the box.
#[derive(Debug)]
pub enum ResponseBody {
    Sse(SseBody),
    Full(Full<Bytes>),
}

impl ResponseBody {
    /// A fixed body.
    pub fn full(b: impl Into<Bytes>) -> Self {
        ResponseBody::Full(Full::new(b.into()))
    }

    /// No body.
    pub fn empty() -> Self {
        ResponseBody::Full(Full::new(Bytes::new()))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = StreamAborted;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, StreamAborted>>> {
        match self.get_mut() {
            ResponseBody::Sse(b) => Pin::new(b).poll_frame(cx),
            ResponseBody::Full(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Sse(b) => b.is_end_stream(),
            ResponseBody::Full(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Sse(b) => b.size_hint(),
            ResponseBody::Full(b) => b.size_hint(),
        }
    }
}
