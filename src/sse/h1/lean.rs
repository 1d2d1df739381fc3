//! The lean path's entry: serves a connection's first request when it is a plain
//! `GET /events`, else hands the socket (and what was read from it) to hyper. The socket is a
//! plain `TcpStream`, or a TLS stream whose client picked HTTP/1.1 (see [`crate::sse::tls`]).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::trace;

use super::head::{Head, read_head};
use super::reply::{EventsHandler, Reply, respond};
use super::writer::{Cuts, stream_body};
use crate::client::ConnHandle;
use crate::sse::conn::{Conn, ConnEnd, InHead, Lifecycle, WatchedIo};

/// What the lean path needs from the listener: the `/events` handler and the time a client has
/// to send its request head (hyper's `header_read_timeout`, which applies again after a
/// hand-over).
pub struct LeanEvents {
    /// The same `/events` rules as on the hyper path.
    pub handler: Box<EventsHandler>,
    /// `server.header_read_timeout`.
    pub header_read_timeout: Duration,
}

impl std::fmt::Debug for LeanEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeanEvents").field("header_read_timeout", &self.header_read_timeout).finish_non_exhaustive()
    }
}

/// How the lean path left the connection.
pub enum Served<S> {
    /// The connection is done; `Some` says why, when it ended abnormally.
    Done(Option<ConnEnd>),
    /// Not for the lean path: hyper serves the socket, after the bytes already read.
    Hyper(S, Bytes),
}

/// Serves one connection's first request if it is a plain `GET /events`; otherwise returns the
/// socket and what was read from it, for hyper. `in_head` (the connection's place in the head
/// caps) is let go once the head is in, before the stream is admitted.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    lean: &LeanEvents,
    handle: &ConnHandle,
    life: &Lifecycle,
    in_head: Option<&InHead>,
) -> Served<S> {
    let head = tokio::select! {
        biased;
        _ = life.hard_stop.cancelled() => return Served::Done(Some(ConnEnd::DrainTimeOver)),
        // Like hyper's graceful shutdown of a connection that has no request yet: close it.
        _ = life.graceful.cancelled() => return Served::Done(Some(ConnEnd::ShuttingDown)),
        r = tokio::time::timeout(lean.header_read_timeout, read_head(&mut stream)) => r,
    };
    let req = match head {
        Err(_) => return Served::Done(Some(ConnEnd::HeadTimeout)),
        Ok(Err(e)) => return Served::Done(Some(ConnEnd::Io(e))),
        Ok(Ok(Head::Closed)) => return Served::Done(None),
        Ok(Ok(Head::Other(read, why))) => {
            trace!(%peer, reason = %why, "Not for the lean path; hyper serves the connection.");
            return Served::Hyper(stream, read);
        }
        Ok(Ok(Head::Events(req))) => req,
    };
    if let Some(h) = in_head {
        h.done();
    }
    let conn = Conn { handle: handle.clone(), peer };
    match respond(req, &lean.handler, conn) {
        Reply::Full(bytes) => {
            let write = async {
                stream.write_all(&bytes).await?;
                stream.shutdown().await
            };
            tokio::select! {
                r = write => Served::Done(r.err().map(ConnEnd::Io)),
                _ = life.hard_stop.cancelled() => Served::Done(Some(ConnEnd::DrainTimeOver)),
            }
        }
        Reply::Stream { head, body, chunked } => {
            let io = WatchedIo::new(stream, handle.write.clone());
            let cuts = Cuts { kill: &handle.kill, hard_stop: &life.hard_stop };
            Served::Done(stream_body(io, body, head, chunked, cuts).await.err())
        }
    }
}
