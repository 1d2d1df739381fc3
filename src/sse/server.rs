//! The accept loop and the per-connection task, shared by the public and admin listeners.
//!
//! One task per TCP connection, spawned on the app's `TaskTracker` (and so are hyper's HTTP/2
//! stream tasks, through [`TrackedExecutor`]), so "no task outlives its connection" can be
//! checked by counting. Each connection task ends on whichever comes first: the connection
//! finishing, its kill switch (slow-consumer policy: dropped at once, even mid-write), or
//! shutdown (graceful: the streams end, keep-alive connections close; then, after the drain
//! time, hard stop).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::body::ResponseBody;
use super::client_ip::TrustedProxies;
use super::conn::{Conn, ConnEnd, InHead, Lifecycle, Rewind, WatchedIo};
use super::h1::{self, LeanEvents};
use super::tls::TlsListener;
use crate::client::ConnHandle;
use crate::limits::Limits;
use crate::metrics::Metrics;

/// A hyper executor that spawns onto the app's [`TaskTracker`], so HTTP/2 stream tasks are
/// counted and awaited like connection tasks.
///
/// It also gives every HTTP/2 stream its own kill switch. The slow-consumer policy and the
/// write timeout end a stream by cancelling its [`ConnHandle::kill`]; on HTTP/1 that drops the
/// connection, which is the stream. On HTTP/2 the connection carries many streams, and a
/// stalled one (its flow-control window closed) is never polled, so ending it means dropping
/// its task: hyper then resets that stream alone (`RST_STREAM`) and its siblings keep going.
/// hyper calls the service for a new h2 stream and spawns the stream's task right after, in
/// the same poll on the same thread, so the service leaves the stream's switch in
/// [`NEXT_H2_STREAM_KILL`] and [`TrackedExecutor::execute`] takes it for the task it spawns.
#[derive(Debug, Clone)]
pub struct TrackedExecutor(pub TaskTracker);

thread_local! {
    /// The kill switch of the HTTP/2 stream whose task hyper spawns next on this thread.
    static NEXT_H2_STREAM_KILL: std::cell::RefCell<Option<CancellationToken>> = const { std::cell::RefCell::new(None) };
}

impl<F> hyper::rt::Executor<F> for TrackedExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        match NEXT_H2_STREAM_KILL.with(|k| k.borrow_mut().take()) {
            Some(kill) => {
                self.0.spawn(async move {
                    tokio::select! {
                        _ = fut => {}
                        // Dropping the stream's task resets that stream only.
                        _ = kill.cancelled() => {}
                    }
                });
            }
            None => {
                self.0.spawn(fut);
            }
        }
    }
}

/// The handle for a request on a connection: HTTP/2 streams get their own kill switch (a child
/// of the connection's, see [`TrackedExecutor`]) and share the socket's write watch; an HTTP/1
/// request is the connection's only stream and uses the connection's handle.
fn stream_handle<B>(req: &Request<B>, conn: &ConnHandle) -> ConnHandle {
    if req.version() != http::Version::HTTP_2 {
        return conn.clone();
    }
    let kill = conn.kill.child_token();
    NEXT_H2_STREAM_KILL.with(|k| *k.borrow_mut() = Some(kill.clone()));
    ConnHandle { kill, write: conn.write.clone() }
}

/// HTTP/1.1 and h2c (prior knowledge) on one port, with a header read timeout.
pub fn http_builder(tracker: TaskTracker, header_read_timeout: Duration) -> auto::Builder<TrackedExecutor> {
    let mut b = auto::Builder::new(TrackedExecutor(tracker));
    // hyper needs a timer whenever a timeout is set.
    b.http1().timer(TokioTimer::new()).header_read_timeout(header_read_timeout).half_close(false);
    // A request head beyond this gets hyper's 431 (default ~400 KiB); smaller excess is
    // refused by the handler with a 400 and a metric (sse::input).
    b.http1().max_buf_size(super::input::MAX_REQUEST_HEAD_BYTES);
    b.http2().timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(30)));
    b
}

/// Decrements a gauge when the connection task ends, however it ends.
struct DecOnDrop(Gauge);

impl Drop for DecOnDrop {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Counts the public listener's connections that are still sending their request head against
/// the stream caps (see [`crate::limits`]): one over them is closed at once, before anything is
/// read, and counted in `sse_bridge_requests_rejected_total{reason="ip_head_limit"|"head_capacity"}`.
#[derive(Debug)]
pub struct HeadGate {
    /// The caps.
    pub limits: Arc<Limits>,
    /// Peers whose connections carry many clients: counted globally only, not per address.
    pub trusted_proxies: TrustedProxies,
    /// `sse_bridge_connections_in_head` and the refusal counter.
    pub metrics: Arc<Metrics>,
}

impl HeadGate {
    /// The new connection from `peer`, counted as in its head; `None` when it is over a cap.
    fn admit(&self, peer: SocketAddr) -> Option<InHead> {
        let ip = (!self.trusted_proxies.trusts(peer.ip())).then_some(peer.ip());
        match self.limits.admit_head(ip) {
            Ok(permit) => Some(InHead::new(permit, self.metrics.connections_in_head.clone())),
            Err(refused) => {
                self.metrics.count_rejected(refused.as_str());
                debug!(%peer, reason = refused.as_str(), "Connection closed while in its head: {refused}.");
                None
            }
        }
    }
}

/// Accepts connections until `stop_accepting`, serving each with `handler`.
///
/// `handler` gets each request and the connection it arrived on. With `lean`, a connection
/// whose first request is a plain HTTP/1.x `GET /events` is served by [`h1`] instead of hyper
/// (no hyper buffers for the life of the stream); every other connection goes to hyper. With
/// `tls`, every connection is a TLS handshake first; then a client that picked `h2` (ALPN) goes
/// to hyper, and one that picked `http/1.1` or named no protocol goes the plain way (lean path
/// first, when set). With `heads`, connections still sending their request head are counted
/// against the caps.
#[allow(clippy::too_many_arguments)]
pub async fn serve<H, Fut>(
    listener: TcpListener,
    builder: Arc<auto::Builder<TrackedExecutor>>,
    handler: H,
    lean: Option<Arc<LeanEvents>>,
    tls: Option<TlsListener>,
    heads: Option<Arc<HeadGate>>,
    life: Lifecycle,
    name: &'static str,
    open_connections: Gauge,
) where
    H: Fn(Request<Incoming>, Conn) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<ResponseBody>, Infallible>> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            biased;
            _ = life.stop_accepting.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Usually EMFILE/ENFILE: back off briefly instead of spinning on the error.
                warn!(listener = name, error = %e, "Accept failed; pausing 100ms.");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let in_head = match &heads {
            Some(gate) => match gate.admit(peer) {
                Some(h) => Some(h),
                // Over the head caps: closed before anything is read.
                None => continue,
            },
            None => None,
        };
        // Events are small and must leave at once; Nagle would hold them for an ACK.
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let handler = handler.clone();
        let lean = lean.clone();
        let tls = tls.clone();
        let life2 = life.clone();
        let open_connections = open_connections.clone();
        open_connections.inc();
        life.tracker.spawn(async move {
            let _open = DecOnDrop(open_connections);
            let outcome = match tls {
                Some(tls) => Box::pin(tls_connection(stream, peer, tls, lean, in_head, builder, handler, life2)).await,
                None => connection(stream, peer, lean, in_head, builder, handler, life2).await,
            };
            // Client disconnects are normal for streams: debug, never error.
            match outcome {
                None => debug!(listener = name, %peer, "Connection closed."),
                Some(reason) => debug!(listener = name, %peer, %reason, kind = reason.as_str(), "Connection ended."),
            }
        });
    }
    debug!(listener = name, "Stopped accepting.");
}

/// Serves one connection: on the lean path if it applies, else with hyper. Returns why it
/// ended, if not normally.
///
/// This future lives as long as the connection, so it is kept small: hyper's connection
/// future, which is large, is boxed and exists only for connections hyper serves.
async fn connection<H, Fut, S>(
    stream: S,
    peer: SocketAddr,
    lean: Option<Arc<LeanEvents>>,
    in_head: Option<InHead>,
    builder: Arc<auto::Builder<TrackedExecutor>>,
    handler: H,
    life: Lifecycle,
) -> Option<ConnEnd>
where
    H: Fn(Request<Incoming>, Conn) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<ResponseBody>, Infallible>> + Send + 'static,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let handle = ConnHandle::default();
    let (stream, read) = match lean {
        Some(lean) => match h1::serve(stream, peer, &lean, &handle, &life, in_head.as_ref()).await {
            h1::Served::Done(outcome) => return outcome,
            h1::Served::Hyper(stream, read) => (stream, read),
        },
        None => (stream, Bytes::new()),
    };
    // A stream served by the lean path let its head slot go above; here it goes with the
    // first request hyper reads.
    let in_head = in_head.map(Arc::new);
    Box::pin(serve_hyper(Rewind::new(read, stream), peer, builder, handler, handle, in_head, life)).await
}

/// Serves one TLS connection: the handshake (bounded by the header read timeout, and ended by
/// shutdown), then as a plain connection would be: a client that picked `h2` goes to hyper,
/// one that picked `http/1.1` (or named no protocol) to the lean path first, as over plain
/// TCP. Boxed by the caller: TLS state is only paid for on TLS listeners.
#[allow(clippy::too_many_arguments)]
async fn tls_connection<H, Fut>(
    stream: TcpStream,
    peer: SocketAddr,
    tls: TlsListener,
    lean: Option<Arc<LeanEvents>>,
    in_head: Option<InHead>,
    builder: Arc<auto::Builder<TrackedExecutor>>,
    handler: H,
    life: Lifecycle,
) -> Option<ConnEnd>
where
    H: Fn(Request<Incoming>, Conn) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<ResponseBody>, Infallible>> + Send + 'static,
{
    let stream = tokio::select! {
        biased;
        _ = life.hard_stop.cancelled() => return Some(ConnEnd::DrainTimeOver),
        _ = life.graceful.cancelled() => return Some(ConnEnd::ShuttingDown),
        r = tls.accept(stream) => match r {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Some(ConnEnd::HeadTimeout),
            Err(e) => return Some(ConnEnd::Io(e)),
        },
    };
    // HTTP/2 multiplexes streams over the connection: hyper's, whatever the first request.
    let lean = lean.filter(|_| !is_h2(stream.get_ref().1.alpn_protocol()));
    // The head slot (taken at accept, so a slow handshake counts too) goes with the first
    // request read, by the lean path or hyper.
    connection(stream, peer, lean, in_head, builder, handler, life).await
}

/// Whether ALPN settled on HTTP/2.
fn is_h2(alpn: Option<&[u8]>) -> bool {
    alpn == Some(&b"h2"[..])
}

/// hyper serves the connection (HTTP/1.1 keep-alive, h2c, or either over TLS), until it
/// finishes, its kill switch fires or shutdown ends it.
async fn serve_hyper<H, Fut, S>(
    io: Rewind<S>,
    peer: SocketAddr,
    builder: Arc<auto::Builder<TrackedExecutor>>,
    handler: H,
    handle: ConnHandle,
    in_head: Option<Arc<InHead>>,
    life: Lifecycle,
) -> Option<ConnEnd>
where
    H: Fn(Request<Incoming>, Conn) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<ResponseBody>, Infallible>> + Send + 'static,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let kill = handle.kill.clone();
    let io = WatchedIo::new(io, handle.write.clone());
    let info = Conn { handle, peer };
    let svc = service_fn(move |req: Request<Incoming>| {
        if let Some(h) = &in_head {
            h.done();
        }
        let conn = Conn { handle: stream_handle(&req, &info.handle), peer: info.peer };
        handler(req, conn)
    });
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r.err().map(ConnEnd::Http),
        _ = kill.cancelled() => Some(ConnEnd::Cut),
        _ = life.hard_stop.cancelled() => Some(ConnEnd::DrainTimeOver),
        _ = life.graceful.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                r = conn.as_mut() => r.err().map(ConnEnd::Http),
                _ = kill.cancelled() => Some(ConnEnd::Cut),
                _ = life.hard_stop.cancelled() => Some(ConnEnd::DrainTimeOver),
            }
        }
    }
}
