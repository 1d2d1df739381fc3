//! Tests of the lean path's parts: head parsing and the chunked writer, against in-memory
//! sockets.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::head::{Head, Parsed, ends_head, parse, read_head};
use super::writer::{Writer, chunk_line, poll_client_gone};
use crate::sse::conn::ConnEnd;
use crate::sse::input::MAX_REQUEST_HEAD_BYTES;

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
    let Parsed::Events(req) = parse(b"GET /events?topic=a&topic=b HTTP/1.1\r\nOrigin: o\r\nX-A: 1\r\nx-a: 2\r\n\r\n")
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

fn poll_once<B: Body<Data = Bytes> + Unpin>(w: &mut Writer, io: &mut Sink, body: &mut B) -> Poll<Result<(), ConnEnd>> {
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
    assert!(matches!(poll_once(&mut w, &mut io, &mut body), Poll::Ready(Ok(()))));
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
        assert!(matches!(poll_once(&mut w, &mut io, &mut body), Poll::Ready(Ok(()))));
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
    assert!(matches!(poll_once(&mut w, &mut io, &mut body), Poll::Ready(Err(ConnEnd::ClientClosed))));
}

#[test]
fn http10_streams_are_close_delimited() {
    let sent = frames(3);
    let mut body = Frames { ready: sent.iter().cloned().collect(), end: true };
    let mut io = Sink { max_write: usize::MAX, ..Sink::default() };
    let mut w = Writer::new(Bytes::from_static(b"H\r\n\r\n"), false);
    assert!(matches!(poll_once(&mut w, &mut io, &mut body), Poll::Ready(Ok(()))));
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
    assert!(matches!(h, Head::Other(ref b, _) if b.as_ref() == b"P"));
    assert_eq!(read, 1);
    let (h, _) = head_of(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 1000).await;
    assert!(matches!(h, Head::Other(ref b, _) if b.len() == 24));
    let (h, _) = head_of(b"GET /events HTTP/1.1\r\ncontent-length: 2\r\n\r\nab", 1000).await;
    assert!(matches!(h, Head::Other(ref b, _) if b.len() == 45));
    // Cut short, and nothing at all.
    assert!(matches!(head_of(b"GET /ev", 2).await.0, Head::Other(ref b, _) if b.as_ref() == b"GET /ev"));
    assert!(matches!(head_of(b"", 2).await.0, Head::Closed));
    // Too big for the head buffer: hyper refuses it (431), from what was read.
    let mut huge = b"GET /events?topic=a HTTP/1.1\r\n".to_vec();
    huge.extend_from_slice(format!("x-pad: {}\r\n\r\n", "p".repeat(70 * 1024)).as_bytes());
    let (h, read) = head_of(&huge, 8192).await;
    assert!(matches!(h, Head::Other(ref b, _) if b.len() == MAX_REQUEST_HEAD_BYTES));
    assert_eq!(read, MAX_REQUEST_HEAD_BYTES);
}
