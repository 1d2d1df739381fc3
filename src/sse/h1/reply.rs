//! The response on the lean path: runs the `/events` handler and writes the HTTP/1.1 head by
//! hand, for a stream (chunked, or close-delimited for HTTP/1.0) or a refusal
//! (`Content-Length`, `Connection: close`).

use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::SystemTime;

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body::Body;
use http_body_util::Full;

use crate::sse::body::{ResponseBody, SseBody};
use crate::sse::conn::Conn;

/// Answers a `GET /events` request (no body) on the lean path.
pub type EventsHandler = dyn Fn(&Request<()>, Conn) -> Response<ResponseBody> + Send + Sync;

/// What goes back on the lean path.
// One short-lived value per request, moved once: boxing the stream would cost an allocation
// per stream for nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum Reply {
    /// A refusal: head and body, then close.
    Full(Vec<u8>),
    /// A stream: its head, written with the first frames.
    Stream { head: Bytes, body: SseBody, chunked: bool },
}

/// Runs the handler and writes the response head; the request is dropped here.
pub(super) fn respond(req: Box<Request<()>>, handler: &EventsHandler, conn: Conn) -> Reply {
    let http10 = req.version() == Version::HTTP_10;
    let resp = handler(&req, conn);
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
