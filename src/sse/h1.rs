//! A lean HTTP/1.x path for `GET /events`, the one request that stays open.
//!
//! hyper gives every HTTP/1 connection an 8 KiB read buffer and an 8 KiB header write buffer,
//! and its connection future is large: about 16 KiB per idle stream before the stream's own
//! state. A stream needs none of it: after the request head, the only input is the client
//! going away, and the output is frames that already sit in shared `Bytes`. So the connection
//! task reads the request head itself (a small buffer, freed once parsed) and, when it is a
//! plain `GET /events`, answers it here with the same handler rules
//! ([`crate::sse::handler::events_with_cors`]):
//!
//! - a stream: `Transfer-Encoding: chunked` (close-delimited for HTTP/1.0); every frame ready
//!   at once goes out in one vectored write (chunk-size lines in a fixed array, frames shared,
//!   no allocation per delivery), flushed as soon as the body has nothing more; the last chunk
//!   when the body ends (shutdown, maximum age), nothing when it fails; the socket is read into
//!   a small stack buffer only to notice the client leaving, which drops the stream at once.
//! - a refusal (`4xx`, `503`): `Content-Length`, `Connection: close`, then the connection closes.
//!
//! Anything else (other paths and methods, HTTP/2 prior knowledge, bodies, `Upgrade`, malformed
//! or oversized heads, a client that closes mid-head) goes to hyper unchanged: the bytes read so
//! far are replayed to it through [`Rewind`], so it answers exactly as it would have.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes};
use futures_util::task::AtomicWaker;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use http_body::Body;
use http_body_util::Full;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::body::{ResponseBody, SseBody};
use super::input::MAX_REQUEST_HEAD_BYTES;
use super::server::{Conn, Lifecycle, WatchedIo};
use crate::client::ConnHandle;

/// Answers a `GET /events` request (no body) on the lean path.
pub type EventsHandler = dyn Fn(&Request<()>, Conn) -> Response<ResponseBody> + Send + Sync;

/// What the lean path needs from the listener: the `/events` handler and the time a client has
/// to send its request head (hyper's `header_read_timeout`, which applies again after a
/// hand-over).
pub struct LeanEvents {
    pub handler: Box<EventsHandler>,
    pub header_read_timeout: Duration,
}

impl std::fmt::Debug for LeanEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeanEvents").field("header_read_timeout", &self.header_read_timeout).finish_non_exhaustive()
    }
}

/// First size of the head buffer; doubled as needed up to [`MAX_REQUEST_HEAD_BYTES`].
const INITIAL_HEAD_BYTES: usize = 1024;
/// Request headers parsed, as hyper's default; more goes to hyper (which answers `431`).
const MAX_HEADERS: usize = 100;
/// What every request for the lean path starts with; anything else is handed over at once.
const LEAN_PREFIX: &[u8] = b"GET /events";
/// Frames coalesced into one vectored write (hyper's limit too).
const BATCH: usize = 16;
/// The last chunk of a chunked body.
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// How the lean path left the connection.
pub(crate) enum Served {
    /// The connection is done; `Some` says why, when it ended abnormally.
    Done(Option<String>),
    /// Not for the lean path: hyper serves the socket, after the bytes already read.
    Hyper(TcpStream, Bytes),
}

/// Serves one connection's first request if it is a plain `GET /events`; otherwise returns the
/// socket and what was read from it, for hyper.
pub(crate) async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    lean: &LeanEvents,
    handle: &ConnHandle,
    life: &Lifecycle,
) -> Served {
    let head = tokio::select! {
        biased;
        _ = life.hard_stop.cancelled() => return Served::Done(Some("drain time over".into())),
        // Like hyper's graceful shutdown of a connection that has no request yet: close it.
        _ = life.graceful.cancelled() => return Served::Done(Some("shutting down".into())),
        r = tokio::time::timeout(lean.header_read_timeout, read_head(&mut stream)) => r,
    };
    let req = match head {
        Err(_) => return Served::Done(Some("read header from client timeout".into())),
        Ok(Err(e)) => return Served::Done(Some(e.to_string())),
        Ok(Ok(Head::Closed)) => return Served::Done(None),
        Ok(Ok(Head::Other(read))) => return Served::Hyper(stream, read),
        Ok(Ok(Head::Events(req))) => req,
    };
    let conn = Conn { handle: handle.clone(), peer };
    match respond(req, lean, conn) {
        Reply::Full(bytes) => {
            let write = async {
                stream.write_all(&bytes).await?;
                stream.shutdown().await
            };
            tokio::select! {
                r = write => Served::Done(r.err().map(|e| e.to_string())),
                _ = life.hard_stop.cancelled() => Served::Done(Some("drain time over".into())),
            }
        }
        Reply::Stream { head, body, chunked } => {
            let io = WatchedIo::new(stream, handle.write.clone());
            let cuts = Cuts { kill: &handle.kill, hard_stop: &life.hard_stop };
            Served::Done(stream_body(io, body, head, chunked, cuts).await.err().map(String::from))
        }
    }
}

/// The request head, as far as the lean path is concerned.
enum Head {
    /// A plain `GET /events`.
    Events(Box<Request<()>>),
    /// Anything else, with every byte read so far.
    Other(Bytes),
    /// The client closed before sending anything.
    Closed,
}

/// Reads until the end of the request head, or until it is clear the request is not for the
/// lean path. The buffer starts small and grows; a head that does not fit in
/// [`MAX_REQUEST_HEAD_BYTES`] goes to hyper, which refuses it (`431`) as it always has.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Head> {
    let mut buf = vec![0u8; INITIAL_HEAD_BYTES];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            if filled >= MAX_REQUEST_HEAD_BYTES {
                return Ok(Head::Other(read_so_far(buf, filled)));
            }
            buf.resize((filled * 2).min(MAX_REQUEST_HEAD_BYTES), 0);
        }
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            // Cut short: hyper decides what a partial head deserves.
            return Ok(if filled == 0 { Head::Closed } else { Head::Other(read_so_far(buf, filled)) });
        }
        // The end of the head may straddle two reads: look back three bytes.
        let search_from = filled.saturating_sub(3);
        filled += n;
        let seen = &buf[..filled];
        let k = filled.min(LEAN_PREFIX.len());
        if seen[..k] != LEAN_PREFIX[..k] {
            return Ok(Head::Other(read_so_far(buf, filled)));
        }
        // Parsing only once the blank line is in keeps a head sent byte by byte linear.
        if !ends_head(&seen[search_from..]) {
            continue;
        }
        match parse(seen) {
            Parsed::Events(req) => return Ok(Head::Events(req)),
            Parsed::Partial => continue,
            Parsed::Other => return Ok(Head::Other(read_so_far(buf, filled))),
        }
    }
}

fn read_so_far(mut buf: Vec<u8>, filled: usize) -> Bytes {
    buf.truncate(filled);
    Bytes::from(buf)
}

/// Whether `b` holds an empty line after a line end (`\n\n` or `\n\r\n`; httparse takes both).
fn ends_head(b: &[u8]) -> bool {
    b.windows(2)
        .enumerate()
        .any(|(i, w)| w[0] == b'\n' && (w[1] == b'\n' || (w[1] == b'\r' && b.get(i + 2) == Some(&b'\n'))))
}

enum Parsed {
    Events(Box<Request<()>>),
    Partial,
    Other,
}

/// Parses a request head; only a plain `GET /events` is kept (the header array lives on the
/// stack of this call only).
fn parse(head: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut headers);
    match r.parse(head) {
        Ok(httparse::Status::Complete(_)) => to_request(&r).map_or(Parsed::Other, |req| Parsed::Events(Box::new(req))),
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(_) => Parsed::Other,
    }
}

/// The request for the handler, or `None` when hyper should see it: another method, path or
/// version, a body, an upgrade, or anything `http` would not accept.
fn to_request(r: &httparse::Request<'_, '_>) -> Option<Request<()>> {
    if r.method? != "GET" {
        return None;
    }
    let version = match r.version? {
        1 => Version::HTTP_11,
        0 => Version::HTTP_10,
        _ => return None,
    };
    let uri: Uri = r.path?.parse().ok()?;
    if uri.scheme().is_some() || uri.path() != "/events" {
        return None;
    }
    let mut headers = HeaderMap::with_capacity(r.headers.len());
    for h in r.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        if name == header::TRANSFER_ENCODING || name == header::UPGRADE || name == header::EXPECT {
            return None;
        }
        if name == header::CONTENT_LENGTH && h.value.trim_ascii() != b"0" {
            return None;
        }
        headers.append(name, HeaderValue::from_bytes(h.value).ok()?);
    }
    let mut req = Request::new(());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    Some(req)
}

/// What goes back on the lean path.
enum Reply {
    /// A refusal: head and body, then close.
    Full(Vec<u8>),
    /// A stream: its head, written with the first frames.
    Stream { head: Bytes, body: SseBody, chunked: bool },
}

/// Runs the handler and writes the response head; the request is dropped here.
fn respond(req: Box<Request<()>>, lean: &LeanEvents, conn: Conn) -> Reply {
    let http10 = req.version() == Version::HTTP_10;
    let resp = (lean.handler)(&req, conn);
    drop(req);
    let (parts, body) = resp.into_parts();
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"date: ");
    head.extend_from_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
    head.extend_from_slice(b"\r\n");
    match body {
        ResponseBody::Sse(body) => {
            // HTTP/1.0 knows no chunks: the body ends with the connection.
            let chunked = !http10;
            if chunked {
                head.extend_from_slice(b"transfer-encoding: chunked\r\n");
            }
            head.extend_from_slice(b"\r\n");
            Reply::Stream { head: Bytes::from(head), body, chunked }
        }
        ResponseBody::Full(full) => {
            let data = full_bytes(full);
            head.extend_from_slice(b"content-length: ");
            head.extend_from_slice(data.len().to_string().as_bytes());
            head.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
            head.extend_from_slice(&data);
            Reply::Full(head)
        }
    }
}

/// The data of a fixed body (which is always ready).
fn full_bytes(mut full: Full<Bytes>) -> Bytes {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(&mut full).poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    }
}

/// What cuts a stream short, besides its own end and the client leaving.
struct Cuts<'a> {
    /// The connection's kill switch (slow consumer, write timeout).
    kill: &'a CancellationToken,
    /// The drain time is over.
    hard_stop: &'a CancellationToken,
}

/// Streams `body` after `head` until it ends (then the last chunk and a clean close), fails,
/// the client goes away or a cut fires. The body is dropped on return, which releases its
/// subscription.
///
/// The task is woken once per event (by the queue); polling the kill switch, the hard stop (a
/// token every connection shares) and the socket's read side on each such wake would lock
/// three mutexes per delivery. They are polled with a [`Watch`] waker instead, which notes
/// that one of them fired: only then are they polled again.
// Not an async fn (it would keep its arguments twice), whatever clippy's manual_async_fn says.
#[allow(clippy::manual_async_fn)]
fn stream_body<'a>(
    mut io: WatchedIo<TcpStream>,
    mut body: SseBody,
    head: Bytes,
    chunked: bool,
    cuts: Cuts<'a>,
) -> impl Future<Output = Result<(), &'static str>> + 'a {
    // An async block, not an async fn: an async fn's future keeps its arguments twice (as
    // captured and as locals), which made every stream's task a size class bigger.
    async move {
        let mut out = Writer::new(head, chunked);
        let kill = cuts.kill.cancelled();
        let hard_stop = cuts.hard_stop.cancelled();
        tokio::pin!(kill, hard_stop);
        let watch = Arc::new(Watch { fired: AtomicBool::new(true), task: AtomicWaker::new() });
        std::future::poll_fn(|cx| {
            // Acquire: what the firing side did before waking is seen by the polls below.
            let check = watch.fired.swap(false, Ordering::Acquire);
            let watch_waker = if check { Waker::from(watch.clone()) } else { Waker::noop().clone() };
            let mut wcx = Context::from_waker(&watch_waker);
            if check {
                // The connection's future always runs in the same task, so one registration
                // holds until the watch fires (which takes it).
                watch.task.register(cx.waker());
                if kill.as_mut().poll(&mut wcx).is_ready() {
                    return Poll::Ready(Err("cut by the bridge (slow consumer or write timeout)"));
                }
                if hard_stop.as_mut().poll(&mut wcx).is_ready() {
                    return Poll::Ready(Err("drain time over"));
                }
            }
            if let Poll::Ready(r) = out.poll(cx, &mut io, &mut body) {
                return Poll::Ready(r);
            }
            // Nothing to write or the socket is full: is the client still there? (Checked after
            // writing, so a client that half-closes right after its request still gets the head.)
            if check && let Poll::Ready(reason) = poll_client_gone(&mut wcx, &mut io) {
                return Poll::Ready(Err(reason));
            }
            Poll::Pending
        })
        .await?;
        drop(body);
        io.shutdown().await.map_err(|_| "shutdown failed")
    }
}

/// Wakes the connection task for the sources it watches rarely (kill switch, hard stop, the
/// client's side of the socket) and notes that one fired.
struct Watch {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl std::task::Wake for Watch {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// Frames taken from the body and not yet written, sent as one vectored write.
struct Writer {
    frames: [Bytes; BATCH],
    /// Bit `i`: frame `i` goes out as is (the head, the last chunk), not as a chunk.
    raw: u32,
    len: usize,
    /// Bytes of the batch's wire form already written (a write may be partial).
    written: usize,
    chunked: bool,
    /// The body has ended; the batch holds the last bytes.
    done: bool,
    /// Bytes were written since the last flush.
    unflushed: bool,
}

impl Writer {
    fn new(head: Bytes, chunked: bool) -> Self {
        let mut w =
            Writer { frames: Default::default(), raw: 0, len: 0, written: 0, chunked, done: false, unflushed: false };
        w.push(head, true);
        w
    }

    fn push(&mut self, b: Bytes, raw: bool) {
        debug_assert!(self.len < BATCH);
        if raw || !self.chunked {
            self.raw |= 1 << self.len;
        }
        self.frames[self.len] = b;
        self.len += 1;
    }

    /// Drives the stream: write what is batched, take more from the body, flush when it has
    /// nothing more. `Ready(Ok)` once the end of the body is written; `Pending` when the body
    /// has nothing more or the socket is full (the caller then watches for the client leaving:
    /// [`poll_client_gone`]).
    fn poll<S: AsyncWrite + Unpin, B: Body<Data = Bytes> + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut S,
        body: &mut B,
    ) -> Poll<Result<(), &'static str>> {
        loop {
            // Frames are taken only while nothing of the batch is written yet (the first batch
            // also carries the response head), so a client that stops reading leaves its
            // events in its queue, where the slow-consumer policy sees them.
            while self.written == 0 && !self.done && self.len < BATCH {
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        // An empty chunk would end the body: never write one.
                        if let Ok(data) = frame.into_data()
                            && !data.is_empty()
                        {
                            self.push(data, false);
                        }
                    }
                    Poll::Ready(Some(Err(_))) => return Poll::Ready(Err("stream aborted")),
                    Poll::Ready(None) => {
                        self.done = true;
                        if self.chunked {
                            self.push(Bytes::from_static(LAST_CHUNK), true);
                        }
                    }
                    Poll::Pending => break,
                }
            }
            if self.len == 0 {
                if self.done {
                    return Poll::Ready(Ok(()));
                }
                // The body has nothing more: what was written must leave now.
                if self.unflushed {
                    match Pin::new(&mut *io).poll_flush(cx) {
                        Poll::Ready(Ok(())) => self.unflushed = false,
                        Poll::Ready(Err(_)) => return Poll::Ready(Err("write failed")),
                        Poll::Pending => {}
                    }
                }
                break;
            }
            match self.poll_write(cx, io) {
                Poll::Ready(Ok(())) => self.unflushed = true,
                Poll::Ready(Err(_)) => return Poll::Ready(Err("write failed")),
                Poll::Pending => break,
            }
        }
        Poll::Pending
    }

    /// Writes the batch (as many vectored writes as the socket takes); `Ready(Ok)` when it is
    /// all out and the batch is empty again.
    fn poll_write<S: AsyncWrite + Unpin>(&mut self, cx: &mut Context<'_>, io: &mut S) -> Poll<io::Result<()>> {
        while self.len > 0 {
            let mut lines = [[0u8; 18]; BATCH];
            let mut line_lens = [0usize; BATCH];
            for i in 0..self.len {
                if self.raw & (1 << i) == 0 {
                    line_lens[i] = chunk_line(&mut lines[i], self.frames[i].len());
                }
            }
            let mut slices = [IoSlice::new(&[]); 3 * BATCH];
            let mut n = 0;
            let mut skip = self.written;
            let mut total = 0;
            for i in 0..self.len {
                let pieces: [&[u8]; 3] = if self.raw & (1 << i) == 0 {
                    [&lines[i][..line_lens[i]], &self.frames[i], b"\r\n"]
                } else {
                    [&self.frames[i], &[], &[]]
                };
                for p in pieces {
                    total += p.len();
                    if skip >= p.len() {
                        skip -= p.len();
                    } else {
                        slices[n] = IoSlice::new(&p[skip..]);
                        skip = 0;
                        n += 1;
                    }
                }
            }
            let w = std::task::ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..n]))?;
            if w == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += w;
            if self.written >= total {
                for f in &mut self.frames[..self.len] {
                    *f = Bytes::new();
                }
                self.len = 0;
                self.raw = 0;
                self.written = 0;
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// `len` in hex and CRLF: a chunk-size line. Returns its length.
fn chunk_line(buf: &mut [u8; 18], len: usize) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, slot) in buf[..digits].iter_mut().enumerate() {
        *slot = HEX[(len >> (4 * (digits - 1 - i))) & 0xf];
    }
    buf[digits] = b'\r';
    buf[digits + 1] = b'\n';
    digits + 2
}

/// Reads (and discards) what the client sends while it streams; `Ready` with a reason once it
/// closes or the socket fails. A client has nothing to send on a stream, so this reads a
/// little at a time from a small stack buffer.
fn poll_client_gone<S: AsyncRead + Unpin>(cx: &mut Context<'_>, io: &mut S) -> Poll<&'static str> {
    let mut scratch = [0u8; 64];
    for _ in 0..16 {
        let mut rb = ReadBuf::new(&mut scratch);
        match Pin::new(&mut *io).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) if rb.filled().is_empty() => return Poll::Ready("client closed"),
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => return Poll::Ready("read failed"),
            Poll::Pending => return Poll::Pending,
        }
    }
    // Still more to discard: come back after others had their turn.
    cx.waker().wake_by_ref();
    Poll::Pending
}

/// A socket that first yields bytes already read from it (the part of the request head the
/// lean path looked at), then reads the socket. The prefix is freed once consumed.
#[derive(Debug)]
pub(crate) struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    pub(crate) fn new(prefix: Bytes, inner: S) -> Self {
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
    use super::*;

    #[test]
    fn chunk_lines_are_hex() {
        let mut b = [0u8; 18];
        for (len, want) in [(0usize, "0\r\n"), (1, "1\r\n"), (15, "f\r\n"), (16, "10\r\n"), (0x1a2b, "1a2b\r\n")] {
            let n = chunk_line(&mut b, len);
            assert_eq!(&b[..n], want.as_bytes());
        }
        let n = chunk_line(&mut b, usize::MAX);
        assert_eq!(n, 18);
    }

    #[test]
    fn head_end_is_found_with_either_line_ending() {
        assert!(ends_head(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"));
        assert!(ends_head(b"GET / HTTP/1.1\nhost: x\n\n"));
        assert!(ends_head(b"\n\r\n"));
        assert!(!ends_head(b"GET / HTTP/1.1\r\nhost: x\r\n"));
        assert!(!ends_head(b"\n\r"));
    }

    #[test]
    fn only_plain_get_events_takes_the_lean_path() {
        let lean = |h: &str| matches!(parse(h.as_bytes()), Parsed::Events(_));
        assert!(lean("GET /events?topic=a HTTP/1.1\r\nhost: x\r\n\r\n"));
        assert!(lean("GET /events HTTP/1.0\r\n\r\n"));
        assert!(lean("GET /events?topic=a HTTP/1.1\r\ncontent-length: 0\r\n\r\n"));
        assert!(!lean("GET /events/x HTTP/1.1\r\n\r\n"));
        assert!(!lean("GET /eventsx HTTP/1.1\r\n\r\n"));
        assert!(!lean("POST /events HTTP/1.1\r\n\r\n"));
        assert!(!lean("GET /events HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc"));
        assert!(!lean("GET /events HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"));
        assert!(!lean("GET /events HTTP/1.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"));
        assert!(!lean("GET http://x/events HTTP/1.1\r\n\r\n"));
        assert!(matches!(parse(b"GET /events HTTP/1.1\r\nhost: x\r\n"), Parsed::Partial));
        let Parsed::Events(req) =
            parse(b"GET /events?topic=a&topic=b HTTP/1.1\r\nOrigin: o\r\nX-A: 1\r\nx-a: 2\r\n\r\n")
        else {
            panic!("lean")
        };
        assert_eq!(req.uri().query(), Some("topic=a&topic=b"));
        assert_eq!(req.headers().get("origin").unwrap(), "o");
        assert_eq!(req.headers().get_all("x-a").iter().count(), 2);
    }

    /// A body of ready frames, then either its end or `Pending`.
    struct Frames {
        ready: std::collections::VecDeque<Bytes>,
        end: bool,
    }

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            match self.ready.pop_front() {
                Some(b) => Poll::Ready(Some(Ok(http_body::Frame::data(b)))),
                None if self.end => Poll::Ready(None),
                None => Poll::Pending,
            }
        }
    }

    /// A socket that takes at most `max_write` bytes per write and counts the writes; its read
    /// side is pending, or at its end once `eof` is set.
    #[derive(Default)]
    struct Sink {
        out: Vec<u8>,
        writes: usize,
        max_write: usize,
        eof: bool,
    }

    impl AsyncRead for Sink {
        fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, _: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            if self.eof { Poll::Ready(Ok(())) } else { Poll::Pending }
        }
    }

    impl AsyncWrite for Sink {
        fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.writes += 1;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.max_write - n);
                self.out.extend_from_slice(&b[..take]);
                n += take;
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Decodes a chunked body: the chunks' data, and whether the last chunk came.
    fn dechunk(mut b: &[u8]) -> (Vec<Vec<u8>>, bool) {
        let mut chunks = Vec::new();
        while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
            let len = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap(), 16).unwrap();
            if len == 0 {
                assert_eq!(&b[eol..], b"\r\n\r\n", "nothing after the last chunk");
                return (chunks, true);
            }
            chunks.push(b[eol + 2..eol + 2 + len].to_vec());
            assert_eq!(&b[eol + 2 + len..eol + 4 + len], b"\r\n");
            b = &b[eol + 4 + len..];
        }
        assert!(b.is_empty(), "a partial chunk: {b:?}");
        (chunks, false)
    }

    fn frames(n: usize) -> Vec<Bytes> {
        (0..n).map(|i| Bytes::from(format!("data: {}\n\n", "x".repeat(i * 7)))).collect()
    }

    fn poll_once<B: Body<Data = Bytes> + Unpin>(
        w: &mut Writer,
        io: &mut Sink,
        body: &mut B,
    ) -> Poll<Result<(), &'static str>> {
        let mut cx = Context::from_waker(Waker::noop());
        if let Poll::Ready(r) = w.poll(&mut cx, io, body) {
            return Poll::Ready(r);
        }
        poll_client_gone(&mut cx, io).map(Err)
    }

    #[test]
    fn a_burst_goes_out_in_one_vectored_write_per_batch() {
        let sent = frames(40);
        let mut body = Frames { ready: sent.iter().cloned().collect(), end: true };
        let mut io = Sink { max_write: usize::MAX, ..Sink::default() };
        let mut w = Writer::new(Bytes::from_static(b"HEAD\r\n\r\n"), true);
        assert_eq!(poll_once(&mut w, &mut io, &mut body), Poll::Ready(Ok(())));
        // The head and 15 frames, then 16 frames, then 9 frames and the last chunk.
        assert_eq!(io.writes, 3);
        let rest = io.out.strip_prefix(b"HEAD\r\n\r\n").expect("head first");
        let (chunks, ended) = dechunk(rest);
        assert!(ended);
        assert_eq!(chunks, sent.iter().map(|b| b.to_vec()).collect::<Vec<_>>());
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        for max_write in [1, 2, 3, 7, 64] {
            let sent = frames(20);
            let mut body = Frames { ready: sent.iter().cloned().collect(), end: true };
            let mut io = Sink { max_write, ..Sink::default() };
            let mut w = Writer::new(Bytes::from_static(b"HEAD\r\n\r\n"), true);
            assert_eq!(poll_once(&mut w, &mut io, &mut body), Poll::Ready(Ok(())));
            let (chunks, ended) = dechunk(io.out.strip_prefix(b"HEAD\r\n\r\n").unwrap());
            assert!(ended, "max_write {max_write}");
            assert_eq!(chunks, sent.iter().map(|b| b.to_vec()).collect::<Vec<_>>(), "max_write {max_write}");
        }
    }

    #[test]
    fn a_quiet_body_waits_and_a_client_leaving_ends_the_stream() {
        let mut body = Frames { ready: frames(3).into(), end: false };
        let mut io = Sink { max_write: usize::MAX, ..Sink::default() };
        let mut w = Writer::new(Bytes::from_static(b"H\r\n\r\n"), true);
        assert!(poll_once(&mut w, &mut io, &mut body).is_pending());
        assert_eq!(io.writes, 1, "head and the ready frames together");
        let (chunks, ended) = dechunk(io.out.strip_prefix(b"H\r\n\r\n").unwrap());
        assert_eq!((chunks.len(), ended), (3, false));
        // Empty frames are never written: a zero-length chunk would end the body.
        body.ready.push_back(Bytes::new());
        assert!(poll_once(&mut w, &mut io, &mut body).is_pending());
        assert_eq!(io.writes, 1);
        io.eof = true;
        assert_eq!(poll_once(&mut w, &mut io, &mut body), Poll::Ready(Err("client closed")));
    }

    #[test]
    fn http10_streams_are_close_delimited() {
        let sent = frames(3);
        let mut body = Frames { ready: sent.iter().cloned().collect(), end: true };
        let mut io = Sink { max_write: usize::MAX, ..Sink::default() };
        let mut w = Writer::new(Bytes::from_static(b"H\r\n\r\n"), false);
        assert_eq!(poll_once(&mut w, &mut io, &mut body), Poll::Ready(Ok(())));
        let want: Vec<u8> = b"H\r\n\r\n".iter().chain(sent.iter().flat_map(|b| b.iter())).copied().collect();
        assert_eq!(io.out, want);
    }

    /// Yields its bytes `step` at a time, then its end.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        step: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            let n = self.step.min(self.data.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.data[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(()))
        }
    }

    async fn head_of(data: &[u8], step: usize) -> (Head, usize) {
        let mut t = Trickle { data: data.to_vec(), at: 0, step };
        let h = read_head(&mut t).await.unwrap();
        (h, t.at)
    }

    #[tokio::test]
    async fn a_head_in_pieces_is_read_to_its_end() {
        let req = b"GET /events?topic=a HTTP/1.1\r\nhost: x\r\nlast-event-id: 5\r\n\r\n";
        for step in [1, 2, 3, 5, 1000] {
            let (h, _) = head_of(req, step).await;
            let Head::Events(r) = h else { panic!("lean path, step {step}") };
            assert_eq!(r.uri().query(), Some("topic=a"));
            assert_eq!(r.headers()["last-event-id"], "5");
        }
        // Bigger than the first buffer: it grows.
        let mut big = b"GET /events?topic=a HTTP/1.1\r\n".to_vec();
        big.extend_from_slice(format!("x-pad: {}\r\n\r\n", "p".repeat(20_000)).as_bytes());
        assert!(matches!(head_of(&big, 4096).await.0, Head::Events(_)));
    }

    #[tokio::test]
    async fn other_requests_are_handed_over_with_what_was_read() {
        // The first byte that differs from "GET /events" settles it.
        let (h, read) = head_of(b"POST /publish HTTP/1.1\r\n\r\n", 1).await;
        assert!(matches!(h, Head::Other(ref b) if b.as_ref() == b"P"));
        assert_eq!(read, 1);
        let (h, _) = head_of(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 1000).await;
        assert!(matches!(h, Head::Other(ref b) if b.len() == 24));
        let (h, _) = head_of(b"GET /events HTTP/1.1\r\ncontent-length: 2\r\n\r\nab", 1000).await;
        assert!(matches!(h, Head::Other(ref b) if b.len() == 45));
        // Cut short, and nothing at all.
        assert!(matches!(head_of(b"GET /ev", 2).await.0, Head::Other(ref b) if b.as_ref() == b"GET /ev"));
        assert!(matches!(head_of(b"", 2).await.0, Head::Closed));
        // Too big for the head buffer: hyper refuses it (431), from what was read.
        let mut huge = b"GET /events?topic=a HTTP/1.1\r\n".to_vec();
        huge.extend_from_slice(format!("x-pad: {}\r\n\r\n", "p".repeat(70 * 1024)).as_bytes());
        let (h, read) = head_of(&huge, 8192).await;
        assert!(matches!(h, Head::Other(ref b) if b.len() == MAX_REQUEST_HEAD_BYTES));
        assert_eq!(read, MAX_REQUEST_HEAD_BYTES);
    }

    #[tokio::test]
    async fn rewind_yields_the_prefix_then_the_socket() {
        let mut r = Rewind::new(Bytes::from_static(b"abc"), Trickle { data: b"def".to_vec(), at: 0, step: 10 });
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
