//! The response bodies: the SSE stream, and small fixed bodies for everything else.
//!
//! [`SseBody`] is polled by hyper inside the connection's task; it takes frames from the
//! client's queue one by one. hyper keeps polling while frames are ready and flushes when the
//! body returns `Pending`, so each event reaches the socket at once and a burst goes out in one
//! vectored write. When the body is dropped (client gone, stream ended, connection killed) its
//! [`Subscription`] leaves the registry and the queue is freed: nothing of the client remains.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use tracing::debug;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::client::{ClientQueue, Next};
use crate::event::Event;
use crate::interest::Holds;
use crate::limits::StreamPermit;
use crate::metrics::Metrics;
use crate::registry::Subscription;
use crate::telemetry::StreamSpan;

/// Error that aborts a stream (hyper then resets the stream or closes the connection).
#[derive(Debug, thiserror::Error)]
#[error("stream closed: {0}")]
pub struct StreamAborted(&'static str);

/// An open SSE stream.
pub struct SseBody {
    queue: Arc<ClientQueue>,
    subscription: Subscription,
    _permit: StreamPermit,
    /// Per-connection delivery rate (`[[delivery]] max_rate`); live events over it wait here
    /// and in the queue, where the slow-consumer policy applies.
    throttle: Option<Box<Throttle>>,
    /// The stream's span, when tracing is on.
    span: Option<Box<StreamSpan>>,
    metrics: Arc<Metrics>,
    /// A resume's read (broker or rings), run before the stream goes live (see `crate::resume`).
    resume: Option<ResumeFuture>,
    /// On-demand upstream holds: nothing is written (not even `: ok`) until the broker has
    /// confirmed them; released when the stream ends.
    upstream: Option<Holds>,
    /// Plans the in-place resume of a queue that spilled (`crate::client`, `spill-reread`).
    reread: Option<Rereader>,
    opened: Instant,
    ended: Option<&'static str>,
}

/// The read of a resume (broker or rings); it fills the held queue when done and returns what
/// the stream's span records (events replayed, gap reason), if anything.
pub type ResumeFuture = Pin<Box<dyn Future<Output = Option<(usize, Option<&'static str>)>> + Send>>;

/// Resumes a spilled stream in place from the id of the last event it wrote (its queue, its
/// subscription, that id, its span): plans the re-read under the registry lock and returns the
/// read the body runs next, if any. The handler builds it (it knows the shared state).
pub type Rereader =
    Box<dyn FnMut(&Subscription, &Arc<ClientQueue>, &str, &mut Option<Box<StreamSpan>>) -> Option<ResumeFuture> + Send>;

/// A live event on its way to the socket.
type Live = (Bytes, Arc<Event>);

struct Throttle {
    limiter: DefaultDirectRateLimiter,
    held: Option<Live>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl std::fmt::Debug for SseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseBody").field("queue", &self.queue).field("ended", &self.ended).finish_non_exhaustive()
    }
}

/// What the stream body is made of; the handler assembles it.
pub struct StreamParts {
    pub queue: Arc<ClientQueue>,
    pub subscription: Subscription,
    pub permit: StreamPermit,
    pub rate: Option<Quota>,
    pub span: Option<Box<StreamSpan>>,
    pub metrics: Arc<Metrics>,
    pub resume: Option<ResumeFuture>,
    pub upstream: Option<Holds>,
    pub reread: Option<Rereader>,
}

impl SseBody {
    /// A stream that delivers what its queue receives while its subscription is registered.
    pub fn new(p: StreamParts) -> Self {
        p.metrics.streams_opened.inc();
        let throttle = p.rate.map(|q| Box::new(Throttle { limiter: RateLimiter::direct(q), held: None, sleep: None }));
        SseBody {
            queue: p.queue,
            subscription: p.subscription,
            _permit: p.permit,
            throttle,
            span: p.span,
            metrics: p.metrics,
            resume: p.resume,
            upstream: p.upstream,
            reread: p.reread,
            opened: Instant::now(),
            ended: None,
        }
    }

    /// Accounts for a live event handed to hyper for writing: latency histogram, the event's
    /// delivery span, the stream's span. `frame` is the event's frame, as the queue gave it
    /// (not cloned again here: every clone and drop is an atomic on a count all subscribers share).
    fn written(&mut self, frame: Bytes, event: &Event) -> Frame<Bytes> {
        let latency = event.received_at.elapsed();
        self.metrics.delivery_latency.observe(latency);
        if let Some(published) = event.published_at_ms {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let since = now.as_millis().saturating_sub(published as u128);
            self.metrics.publish_latency.observe(std::time::Duration::from_millis(since as u64));
        }
        if let Some(t) = &event.trace {
            t.written(latency);
        }
        if let Some(s) = &mut self.span {
            s.written();
        }
        Frame::data(frame)
    }
}

impl Throttle {
    /// Lets `live` through if the rate allows, else holds it and arms the timer.
    fn admit(&mut self, live: Live, cx: &mut Context<'_>) -> Option<Live> {
        match self.limiter.check() {
            Ok(()) => Some(live),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                self.held = Some(live);
                let mut sleep = Box::pin(tokio::time::sleep(wait));
                // Registers the waker; a zero wait is ready at once and retried below.
                if sleep.as_mut().poll(cx).is_ready() {
                    cx.waker().wake_by_ref();
                } else {
                    self.sleep = Some(sleep);
                }
                None
            }
        }
    }

    /// A held event whose time has come, or Pending while its timer runs.
    fn poll_held(&mut self, cx: &mut Context<'_>) -> Poll<Option<Live>> {
        if let Some(sleep) = &mut self.sleep {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
        match self.held.take() {
            Some(l) => Poll::Ready(self.admit(l, cx)),
            None => Poll::Ready(None),
        }
    }
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = StreamAborted;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, StreamAborted>>> {
        if self.ended.is_some() {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        if let Some(r) = &mut this.resume
            && let Poll::Ready(resumed) = r.as_mut().poll(cx)
        {
            this.resume = None;
            if let (Some((replayed, gap)), Some(s)) = (resumed, &mut this.span) {
                s.resumed(replayed, gap);
            }
        }
        if let Some(u) = &mut this.upstream
            && u.poll_ready(cx).is_pending()
        {
            return Poll::Pending;
        }
        loop {
            if let Some(t) = &mut this.throttle
                && (t.held.is_some() || t.sleep.is_some())
            {
                match t.poll_held(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some((frame, event))) => return Poll::Ready(Some(Ok(this.written(frame, &event)))),
                    Poll::Ready(None) if t.held.is_some() => return Poll::Pending,
                    Poll::Ready(None) => {}
                }
            }
            return match this.queue.poll_next(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Next::Frame { frame, event: None }) => Poll::Ready(Some(Ok(Frame::data(frame)))),
                Poll::Ready(Next::Frame { frame, event: Some(event) }) => match &mut this.throttle {
                    Some(t) => match t.admit((frame, event), cx) {
                        Some((frame, event)) => Poll::Ready(Some(Ok(this.written(frame, &event)))),
                        None => continue,
                    },
                    None => Poll::Ready(Some(Ok(this.written(frame, &event)))),
                },
                Poll::Ready(Next::Reread { last_id }) => {
                    let id = last_id.as_deref().and_then(|b| std::str::from_utf8(b).ok());
                    match (id, &mut this.reread) {
                        (Some(id), Some(reread)) => {
                            this.metrics.resume_spills.inc();
                            this.resume = reread(&this.subscription, &this.queue, id, &mut this.span);
                            // The re-read (if any) is polled at the top; the queue is live again.
                            cx.waker().wake_by_ref();
                            Poll::Pending
                        }
                        // Nowhere to resume from here: end cleanly, the client resumes with its id.
                        _ => {
                            this.ended = Some("spilled");
                            Poll::Ready(None)
                        }
                    }
                }
                Poll::Ready(Next::Closed(reason)) => {
                    this.ended = Some(reason.as_str());
                    if reason.is_clean() {
                        Poll::Ready(None)
                    } else {
                        Poll::Ready(Some(Err(StreamAborted(reason.as_str()))))
                    }
                }
            };
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
            Some(r) if !r.is_clean() => r.as_str(),
            _ => "client_closed",
        });
        self.metrics.count_disconnect(reason);
        if let Some(span) = self.span.take() {
            span.end(reason);
        }
        if let Some(t) = &mut self.throttle
            && let Some((_, event)) = t.held.take()
            && let Some(trace) = &event.trace
        {
            trace.discarded();
        }
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
