//! Connection plumbing shared by both HTTP paths (hyper's in [`super::server`], the lean one in
//! [`super::h1`]): what a handler knows about its connection ([`Conn`]), the socket wrappers
//! ([`WatchedIo`] reports blocked writes, [`Rewind`] replays bytes already read) and why a
//! connection ended ([`ConnEnd`]), and the signals that end connections ([`Lifecycle`]).

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use prometheus_client::metrics::gauge::Gauge;

use crate::client::{ConnHandle, WriteWatch};
use crate::limits::HeadPermit;

/// Why a connection ended other than normally; logged at debug level (client disconnects
/// are normal for streams), never an error.
#[derive(Debug, thiserror::Error)]
pub enum ConnEnd {
    /// The connection's kill switch fired: a slow consumer or the write timeout.
    #[error("cut by the bridge (slow consumer or write timeout)")]
    Cut,
    /// Shutdown's drain time ran out.
    #[error("drain time over")]
    DrainTimeOver,
    /// Shutdown began before the client sent a request.
    #[error("shutting down")]
    ShuttingDown,
    /// The request head did not arrive within `server.header_read_timeout`.
    #[error("read header from client timeout")]
    HeadTimeout,
    /// The client closed its side of a stream.
    #[error("client closed")]
    ClientClosed,
    /// Reading the client's side of a stream failed.
    #[error("read failed")]
    ReadFailed,
    /// Writing to the client failed.
    #[error("write failed")]
    WriteFailed,
    /// The stream body ended with an error (its queue was closed abnormally).
    #[error("stream aborted")]
    StreamAborted,
    /// Closing the socket after the last chunk failed.
    #[error("shutdown failed")]
    ShutdownFailed,
    /// A socket error outside a stream (reading a request head, writing a refusal).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// hyper ended the connection with an error.
    #[error("{0}")]
    Http(Box<dyn std::error::Error + Send + Sync>),
}

/// A connection still sending its request head: its slot in the head caps
/// ([`crate::limits::Limits::admit_head`]) and its place in `sse_bridge_connections_in_head`.
/// Both are given back by [`InHead::done`] (the head is in) or on drop (the connection closed).
#[derive(Debug)]
pub struct InHead {
    permit: HeadPermit,
    gauge: Gauge,
}

impl InHead {
    /// Counts the connection of `permit` in `gauge` until it is done.
    pub fn new(permit: HeadPermit, gauge: Gauge) -> Self {
        gauge.inc();
        InHead { permit, gauge }
    }

    /// The request head is in: the connection no longer counts as in its head. Idempotent.
    pub fn done(&self) {
        if self.permit.release() {
            self.gauge.dec();
        }
    }
}

impl Drop for InHead {
    fn drop(&mut self) {
        self.done();
    }
}

impl ConnEnd {
    /// A fixed name for the kind of end (the `Display` form adds the error's own words).
    pub fn as_str(&self) -> &'static str {
        match self {
            ConnEnd::Cut => "cut",
            ConnEnd::DrainTimeOver => "drain_time_over",
            ConnEnd::ShuttingDown => "shutting_down",
            ConnEnd::HeadTimeout => "head_timeout",
            ConnEnd::ClientClosed => "client_closed",
            ConnEnd::ReadFailed => "read_failed",
            ConnEnd::WriteFailed => "write_failed",
            ConnEnd::StreamAborted => "stream_aborted",
            ConnEnd::ShutdownFailed => "shutdown_failed",
            ConnEnd::Io(_) => "io_error",
            ConnEnd::Http(_) => "http_error",
        }
    }
}

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

/// What a request handler knows about the connection it arrived on.
#[derive(Debug, Clone)]
pub struct Conn {
    /// Kill switch and write watch, handed to the streams on this connection.
    pub handle: ConnHandle,
    /// The TCP peer (a proxy's address when behind one; see `client_ip`).
    pub peer: SocketAddr,
}

/// The connection's socket, reporting to a [`WriteWatch`] whether writes are blocked, so a
/// client that stopped reading can be cut after `server.write_timeout` while a quiet, healthy
/// stream (nothing to write) is never affected.
#[derive(Debug)]
pub struct WatchedIo<S> {
    inner: S,
    watch: Arc<WriteWatch>,
    /// What `watch` was last told: it is touched only when this changes (a write that
    /// progresses as usual does not reach into the shared watch).
    blocked: bool,
}

impl<S> WatchedIo<S> {
    /// `inner`, reporting its writes to `watch`.
    pub fn new(inner: S, watch: Arc<WriteWatch>) -> Self {
        WatchedIo { inner, watch, blocked: false }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WatchedIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> WatchedIo<S> {
    fn track<T>(&mut self, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        let blocked = r.is_pending();
        if blocked != self.blocked {
            self.blocked = blocked;
            if blocked { self.watch.blocked() } else { self.watch.progressed() }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WatchedIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.track(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.track(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.track(r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A socket that first yields bytes already read from it (the part of the request head the
/// lean path looked at), then reads the socket. The prefix is freed once consumed.
#[derive(Debug)]
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    /// `inner`, after `prefix`.
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Rewind { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Give the storage back now, not when the connection ends.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn rewind_yields_the_prefix_then_the_socket() {
        let mut r = Rewind::new(Bytes::from_static(b"abc"), &b"def"[..]);
        let mut got = Vec::new();
        let mut buf = [0u8; 2];
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"abcdef");
        assert!(r.prefix.is_empty());
    }
}
