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
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::body::ResponseBody;

/// The signals that end connections, shared by every listener of one app.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    /// Stop accepting new connections.
    pub stop_accepting: CancellationToken,
    /// Ask open connections to finish (streams have been told to end).
    pub graceful: CancellationToken,
    /// Drop whatever is still open: the drain time is over.
    pub hard_stop: CancellationToken,
    /// Every connection task and hyper-spawned task.
    pub tracker: TaskTracker,
}

/// A hyper executor that spawns onto the app's [`TaskTracker`], so HTTP/2 stream tasks are
/// counted and awaited like connection tasks.
#[derive(Debug, Clone)]
pub struct TrackedExecutor(pub TaskTracker);

impl<F> hyper::rt::Executor<F> for TrackedExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn(fut);
    }
}

/// HTTP/1.1 and h2c (prior knowledge) on one port, with a header read timeout.
pub fn http_builder(tracker: TaskTracker, header_read_timeout: Duration) -> auto::Builder<TrackedExecutor> {
    let mut b = auto::Builder::new(TrackedExecutor(tracker));
    // hyper needs a timer whenever a timeout is set.
    b.http1().timer(TokioTimer::new()).header_read_timeout(header_read_timeout).half_close(false);
    b.http2().timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(30)));
    b
}

/// Accepts connections until `stop_accepting`, serving each with `handler`.
///
/// `handler` gets each request and the connection's kill switch.
pub async fn serve<H, Fut>(
    listener: TcpListener,
    builder: Arc<auto::Builder<TrackedExecutor>>,
    handler: H,
    life: Lifecycle,
    name: &'static str,
) where
    H: Fn(Request<Incoming>, CancellationToken) -> Fut + Clone + Send + Sync + 'static,
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
        // Events are small and must leave at once; Nagle would hold them for an ACK.
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let handler = handler.clone();
        let life2 = life.clone();
        life.tracker.spawn(async move {
            let kill = CancellationToken::new();
            let conn_kill = kill.clone();
            let svc = service_fn(move |req| handler(req, conn_kill.clone()));
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let outcome = tokio::select! {
                r = conn.as_mut() => r.err().map(|e| e.to_string()),
                _ = kill.cancelled() => Some("killed by slow-consumer policy".into()),
                _ = life2.hard_stop.cancelled() => Some("drain time over".into()),
                _ = life2.graceful.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        r = conn.as_mut() => r.err().map(|e| e.to_string()),
                        _ = kill.cancelled() => Some("killed by slow-consumer policy".into()),
                        _ = life2.hard_stop.cancelled() => Some("drain time over".into()),
                    }
                }
            };
            // Client disconnects are normal for streams: debug, never error.
            match outcome {
                None => debug!(listener = name, %peer, "Connection closed."),
                Some(reason) => debug!(listener = name, %peer, %reason, "Connection ended."),
            }
        });
    }
    debug!(listener = name, "Stopped accepting.");
}
