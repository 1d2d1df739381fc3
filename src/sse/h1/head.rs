//! Reading the request head on the lean path: a small buffer that grows only as needed, read
//! until the blank line that ends the head, or until it is clear the request is not a plain
//! `GET /events` (then every byte read goes to hyper, which answers as it always has).

use std::io;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::sse::input::MAX_REQUEST_HEAD_BYTES;

/// First size of the head buffer; doubled as needed up to [`MAX_REQUEST_HEAD_BYTES`].
const INITIAL_HEAD_BYTES: usize = 1024;
/// Request headers parsed, as hyper's default; more goes to hyper (which answers `431`).
const MAX_HEADERS: usize = 100;
/// What every request for the lean path starts with; anything else is handed over at once.
const LEAN_PREFIX: &[u8] = b"GET /events";

/// Why a request is not for the lean path: hyper serves it instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotLean {
    /// Another method, path or an absolute URI: not a plain `GET /events`.
    #[error("not a plain GET /events")]
    OtherRequest,
    /// Neither HTTP/1.0 nor HTTP/1.1 (HTTP/2 prior knowledge starts with `PRI`).
    #[error("HTTP version other than 1.0 or 1.1")]
    Version,
    /// A request body, an `Upgrade` or an `Expect`: hyper's to handle.
    #[error("a body, upgrade or expectation")]
    Body,
    /// A header name or value, or the target, that `http` would not accept.
    #[error("a header or target the http crate refuses")]
    Invalid,
    /// Not a valid HTTP/1 head (or more than `MAX_HEADERS` headers).
    #[error("malformed head: {0}")]
    Malformed(httparse::Error),
    /// Larger than [`MAX_REQUEST_HEAD_BYTES`]: hyper refuses it (`431`).
    #[error("head larger than {MAX_REQUEST_HEAD_BYTES} bytes")]
    TooLarge,
    /// The client closed the connection in the middle of the head.
    #[error("cut short")]
    CutShort,
}

/// The request head, as far as the lean path is concerned.
#[derive(Debug)]
pub enum Head {
    /// A plain `GET /events`.
    Events(Box<Request<()>>),
    /// Anything else, with every byte read so far and why it is not for the lean path.
    Other(Bytes, NotLean),
    /// The client closed before sending anything.
    Closed,
}

/// Reads until the end of the request head, or until it is clear the request is not for the
/// lean path. The buffer starts small and grows; a head that does not fit in
/// [`MAX_REQUEST_HEAD_BYTES`] goes to hyper, which refuses it (`431`) as it always has.
pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Head> {
    let mut buf = vec![0u8; INITIAL_HEAD_BYTES];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            if filled >= MAX_REQUEST_HEAD_BYTES {
                return Ok(Head::Other(read_so_far(buf, filled), NotLean::TooLarge));
            }
            buf.resize((filled * 2).min(MAX_REQUEST_HEAD_BYTES), 0);
        }
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            // Cut short: hyper decides what a partial head deserves.
            return Ok(if filled == 0 {
                Head::Closed
            } else {
                Head::Other(read_so_far(buf, filled), NotLean::CutShort)
            });
        }
        // The end of the head may straddle two reads: look back three bytes.
        let search_from = filled.saturating_sub(3);
        filled += n;
        let seen = &buf[..filled];
        let k = filled.min(LEAN_PREFIX.len());
        if seen[..k] != LEAN_PREFIX[..k] {
            return Ok(Head::Other(read_so_far(buf, filled), NotLean::OtherRequest));
        }
        // Parsing only once the blank line is in keeps a head sent byte by byte linear.
        if !ends_head(&seen[search_from..]) {
            continue;
        }
        match parse(seen) {
            Parsed::Events(req) => return Ok(Head::Events(req)),
            Parsed::Partial => continue,
            Parsed::Other(why) => return Ok(Head::Other(read_so_far(buf, filled), why)),
        }
    }
}

fn read_so_far(mut buf: Vec<u8>, filled: usize) -> Bytes {
    buf.truncate(filled);
    Bytes::from(buf)
}

/// Whether `b` holds an empty line after a line end (`\n\n` or `\n\r\n`; httparse takes both).
pub(super) fn ends_head(b: &[u8]) -> bool {
    b.windows(2)
        .enumerate()
        .any(|(i, w)| w[0] == b'\n' && (w[1] == b'\n' || (w[1] == b'\r' && b.get(i + 2) == Some(&b'\n'))))
}

/// A head parsed as far as it goes.
#[derive(Debug)]
pub(super) enum Parsed {
    Events(Box<Request<()>>),
    Partial,
    Other(NotLean),
}

/// Parses a request head; only a plain `GET /events` is kept (the header array lives on the
/// stack of this call only).
pub(super) fn parse(head: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut headers);
    match r.parse(head) {
        Ok(httparse::Status::Complete(_)) => match to_request(&r) {
            Ok(req) => Parsed::Events(Box::new(req)),
            Err(why) => Parsed::Other(why),
        },
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(e) => Parsed::Other(NotLean::Malformed(e)),
    }
}

/// The request for the handler, or why hyper should see it: another method, path or
/// version, a body, an upgrade, or anything `http` would not accept.
fn to_request(r: &httparse::Request<'_, '_>) -> Result<Request<()>, NotLean> {
    if r.method != Some("GET") {
        return Err(NotLean::OtherRequest);
    }
    let version = match r.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Err(NotLean::Version),
    };
    let uri: Uri = r.path.ok_or(NotLean::Invalid)?.parse().map_err(|_| NotLean::Invalid)?;
    if uri.scheme().is_some() || uri.path() != "/events" {
        return Err(NotLean::OtherRequest);
    }
    let mut headers = HeaderMap::with_capacity(r.headers.len());
    for h in r.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| NotLean::Invalid)?;
        if name == header::TRANSFER_ENCODING || name == header::UPGRADE || name == header::EXPECT {
            return Err(NotLean::Body);
        }
        if name == header::CONTENT_LENGTH && h.value.trim_ascii() != b"0" {
            return Err(NotLean::Body);
        }
        headers.append(name, HeaderValue::from_bytes(h.value).map_err(|_| NotLean::Invalid)?);
    }
    let mut req = Request::new(());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    Ok(req)
}
