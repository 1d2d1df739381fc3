//! The chunked writer of the lean path: streams an SSE body to the socket, every frame ready
//! at once in one vectored write (chunk-size lines in a fixed array, frames shared, no
//! allocation per delivery), flushed as soon as the body has nothing more; the last chunk when
//! the body ends, nothing when it fails. While it streams, the socket's read side is read into
//! a small stack buffer only to notice the client leaving.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::CancellationToken;

use crate::sse::body::SseBody;
use crate::sse::conn::{ConnEnd, WatchedIo};

/// Frames coalesced into one vectored write (hyper's limit too).
const BATCH: usize = 16;
/// The last chunk of a chunked body.
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// What cuts a stream short, besides its own end and the client leaving.
pub(super) struct Cuts<'a> {
    /// The connection's kill switch (slow consumer, write timeout).
    pub(super) kill: &'a CancellationToken,
    /// The drain time is over.
    pub(super) hard_stop: &'a CancellationToken,
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
pub(super) fn stream_body<'a, S: AsyncRead + AsyncWrite + Unpin + 'a>(
    mut io: WatchedIo<S>,
    mut body: SseBody,
    head: Bytes,
    chunked: bool,
    cuts: Cuts<'a>,
) -> impl Future<Output = Result<(), ConnEnd>> + 'a {
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
                    return Poll::Ready(Err(ConnEnd::Cut));
                }
                if hard_stop.as_mut().poll(&mut wcx).is_ready() {
                    return Poll::Ready(Err(ConnEnd::DrainTimeOver));
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
        io.shutdown().await.map_err(|_| ConnEnd::ShutdownFailed)
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
pub(super) struct Writer {
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
    /// A writer whose first batch is `head`, written as is.
    pub(super) fn new(head: Bytes, chunked: bool) -> Self {
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
    pub(super) fn poll<S: AsyncWrite + Unpin, B: Body<Data = Bytes> + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut S,
        body: &mut B,
    ) -> Poll<Result<(), ConnEnd>> {
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
                    Poll::Ready(Some(Err(_))) => return Poll::Ready(Err(ConnEnd::StreamAborted)),
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
                        Poll::Ready(Err(_)) => return Poll::Ready(Err(ConnEnd::WriteFailed)),
                        Poll::Pending => {}
                    }
                }
                break;
            }
            match self.poll_write(cx, io) {
                Poll::Ready(Ok(())) => self.unflushed = true,
                Poll::Ready(Err(_)) => return Poll::Ready(Err(ConnEnd::WriteFailed)),
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
pub(super) fn chunk_line(buf: &mut [u8; 18], len: usize) -> usize {
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
pub(super) fn poll_client_gone<S: AsyncRead + Unpin>(cx: &mut Context<'_>, io: &mut S) -> Poll<ConnEnd> {
    let mut scratch = [0u8; 64];
    for _ in 0..16 {
        let mut rb = ReadBuf::new(&mut scratch);
        match Pin::new(&mut *io).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) if rb.filled().is_empty() => return Poll::Ready(ConnEnd::ClientClosed),
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => return Poll::Ready(ConnEnd::ReadFailed),
            Poll::Pending => return Poll::Pending,
        }
    }
    // Still more to discard: come back after others had their turn.
    cx.waker().wake_by_ref();
    Poll::Pending
}
