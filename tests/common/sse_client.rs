//! A minimal Server-Sent Events client for integration tests.
//!
//! It talks real HTTP (reqwest, no TLS, system proxies ignored) and parses
//! the body exactly as the WHATWG EventSource algorithm does
//! (<https://html.spec.whatwg.org/multipage/server-sent-events.html>), so a
//! test passing here means a browser would see the same events. Unlike a
//! browser it never reconnects on its own: reconnection is what tests drive
//! and assert explicitly (e.g. by reconnecting with a `Last-Event-ID` header).
//!
//! The parser ([`SseParser`]) is a pure byte-in/events-out state machine so it
//! can be unit-tested without a server (see `tests/sse_client_parser.rs`).

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, HeaderMap};
use tokio::time::error::Elapsed;

/// How long [`connect`] waits for response headers before giving up, so a
/// server that accepts but never answers fails the test instead of hanging.
pub const HEADERS_TIMEOUT: Duration = Duration::from_secs(10);

/// One dispatched event.
///
/// Fields describe the *block* that produced the event (the lines since the
/// previous blank line), which is what tests about server output care about:
/// - `id`: value of an `id` field in this block, `None` if the block had none
///   (the spec's sticky "last event ID" is [`SseStream::last_event_id`]).
/// - `event`: value of the `event` field; `None` when absent or empty, i.e.
///   when a browser would dispatch it as type `"message"`.
/// - `data`: `data` lines joined with `\n`.
/// - `retry`: value of a valid (all-digit) `retry` field in this block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    pub retry: Option<u64>,
}

/// Why [`connect`] failed.
#[derive(Debug)]
pub enum SseError {
    /// Transport-level failure (connection refused, bad header, ...).
    Request(reqwest::Error),
    /// No response headers within [`HEADERS_TIMEOUT`].
    HeadersTimeout,
    /// The server answered with something other than `200 OK`.
    Status { status: StatusCode, headers: HeaderMap, body: String },
}

impl SseError {
    /// The HTTP status if the server answered with a non-200 response.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            SseError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The response body if the server answered with a non-200 response.
    pub fn body(&self) -> Option<&str> {
        match self {
            SseError::Status { body, .. } => Some(body),
            _ => None,
        }
    }
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SseError::Request(e) => write!(f, "SSE request failed: {e}"),
            SseError::HeadersTimeout => {
                write!(f, "no SSE response headers within {HEADERS_TIMEOUT:?}")
            }
            SseError::Status { status, body, .. } => {
                write!(f, "SSE request answered {status}: {body}")
            }
        }
    }
}

impl std::error::Error for SseError {}

/// A reqwest client suited to tests: ignores `HTTP_PROXY`-style environment
/// variables (reqwest honours them by default, which would route loopback
/// test traffic to a proxy) and speaks HTTP/1.1 over plain `http://`.
pub fn test_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("building reqwest client")
}

/// Like [`test_client`] but speaks HTTP/2 without upgrade (h2c prior
/// knowledge), for testing the server's HTTP/2 path.
pub fn test_client_h2() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().http2_prior_knowledge().build().expect("building reqwest h2c client")
}

/// `GET url` with the given extra headers using a fresh [`test_client`];
/// returns once response headers arrived. See [`connect_with`].
pub async fn connect(url: &str, headers: &[(&str, &str)]) -> Result<SseStream, SseError> {
    connect_with(&test_client(), url, headers).await
}

/// `GET url` with `client`. Sends `Accept: text/event-stream` (as
/// EventSource does) unless `headers` supplies its own `Accept`. A non-200
/// answer is returned as [`SseError::Status`] with the body read to the end.
pub async fn connect_with(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<SseStream, SseError> {
    let mut req = client.get(url);
    // reqwest *appends* headers, so only add the default when not overridden.
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("accept")) {
        req = req.header(ACCEPT, "text/event-stream");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = match tokio::time::timeout(HEADERS_TIMEOUT, req.send()).await {
        Err(_) => return Err(SseError::HeadersTimeout),
        Ok(Err(e)) => return Err(SseError::Request(e)),
        Ok(Ok(resp)) => resp,
    };
    let status = resp.status();
    let headers = resp.headers().clone();
    if status != StatusCode::OK {
        let body = resp.text().await.unwrap_or_else(|e| format!("<failed to read body: {e}>"));
        return Err(SseError::Status { status, headers, body });
    }
    Ok(SseStream {
        status,
        headers,
        body: Box::pin(resp.bytes_stream()),
        parser: SseParser::new(),
        queue: VecDeque::new(),
        ended: false,
        error: None,
    })
}

/// An open SSE response. Dropping it closes the connection (how tests
/// simulate a client going away).
pub struct SseStream {
    status: StatusCode,
    headers: HeaderMap,
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    parser: SseParser,
    /// Events parsed but not yet returned, e.g. while waiting for comments.
    queue: VecDeque<SseEvent>,
    ended: bool,
    error: Option<String>,
}

impl SseStream {
    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Next event, or `None` once the stream has ended (cleanly or with a
    /// transport error, see [`error`](Self::error)). Panics if nothing
    /// arrives within `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<SseEvent> {
        match self.next_event_or_end(timeout).await {
            Ok(ev) => ev,
            Err(_) => panic!(
                "no SSE event or end of stream within {timeout:?} \
                 (comments seen: {}, last event id: {:?})",
                self.comments_seen(),
                self.last_event_id()
            ),
        }
    }

    /// Non-panicking [`next_event`](Self::next_event): `Err(Elapsed)` on
    /// timeout, which is how a test asserts that *no* event arrives. Safe to
    /// call again after a timeout: no bytes or events are lost.
    pub async fn next_event_or_end(&mut self, timeout: Duration) -> Result<Option<SseEvent>, Elapsed> {
        tokio::time::timeout(timeout, async {
            loop {
                if let Some(ev) = self.queue.pop_front() {
                    return Some(ev);
                }
                if self.ended {
                    return None;
                }
                self.read_chunk().await;
            }
        })
        .await
    }

    /// Exactly `n` events; panics if the stream ends first or any single
    /// event takes longer than `timeout_each`.
    pub async fn take_events(&mut self, n: usize, timeout_each: Duration) -> Vec<SseEvent> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next_event(timeout_each).await {
                Some(ev) => out.push(ev),
                None => {
                    panic!("SSE stream ended after {} of {n} events (error: {:?}); got {out:#?}", out.len(), self.error)
                }
            }
        }
        out
    }

    /// Reads until at least `n` comment lines have been seen in total
    /// (e.g. `1` for an opening comment, more for heartbeats). Events read
    /// meanwhile are queued for `next_event`. Panics on timeout or end.
    pub async fn wait_for_comments(&mut self, n: usize, timeout: Duration) {
        let waited = tokio::time::timeout(timeout, async {
            while self.parser.comments().len() < n && !self.ended {
                self.read_chunk().await;
            }
        })
        .await;
        let seen = self.comments_seen();
        if waited.is_err() || seen < n {
            panic!(
                "expected {n} SSE comments within {timeout:?}, saw {seen} \
                 (stream ended: {}, error: {:?})",
                self.ended, self.error
            );
        }
    }

    /// Number of comment lines (starting with `:`) received so far. Only
    /// bytes already read count: comments are read by `next_event*` and
    /// [`wait_for_comments`](Self::wait_for_comments).
    pub fn comments_seen(&self) -> usize {
        self.parser.comments().len()
    }

    /// Text of each comment line, after the `:` (not trimmed).
    pub fn comments(&self) -> &[String] {
        self.parser.comments()
    }

    /// The spec's last event ID (updated at every blank line, including for
    /// blocks without data that are not dispatched). `None` if no `id` field
    /// has been received; `Some("")` if the server reset it with `id:`.
    pub fn last_event_id(&self) -> Option<&str> {
        self.parser.last_event_id()
    }

    /// The latest valid `retry` value received (reconnection time in ms).
    pub fn retry(&self) -> Option<u64> {
        self.parser.retry()
    }

    /// Whether the response body has ended.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// The transport error that ended the stream, if it did not end cleanly
    /// (e.g. the server was killed mid-response).
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Reads one body chunk and feeds it to the parser. Cancel-safe: a
    /// chunk is either fully consumed or not taken from the body at all.
    async fn read_chunk(&mut self) {
        match self.body.next().await {
            Some(Ok(chunk)) => {
                let events = self.parser.feed(&chunk);
                self.queue.extend(events);
            }
            Some(Err(e)) => {
                self.error = Some(format!("{e:?}"));
                self.ended = true;
                self.parser.finish();
            }
            None => {
                self.ended = true;
                self.parser.finish();
            }
        }
    }
}

/// Incremental `text/event-stream` parser (WHATWG "event stream
/// interpretation"). Feed it arbitrary chunks; lines and CRLF pairs may be
/// split anywhere.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of the current, not yet terminated line.
    line: Vec<u8>,
    /// The previous byte was `\r`: a following `\n` (possibly in the next
    /// chunk) belongs to the same line terminator and must be skipped.
    after_cr: bool,
    /// Whether the first line was processed (a leading BOM is stripped).
    seen_first_line: bool,
    data: String,
    event_type: String,
    /// The spec's "last event ID buffer" (set by `id` fields immediately).
    id_buffer: Option<String>,
    /// The spec's event source "last event ID" (copied at each blank line).
    last_event_id: Option<String>,
    retry: Option<u64>,
    block_id: Option<String>,
    block_retry: Option<u64>,
    comments: Vec<String>,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes a chunk and returns the events it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        for &b in chunk {
            match b {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' => self.end_line(&mut out),
                b'\r' => {
                    self.end_line(&mut out);
                    self.after_cr = true;
                }
                _ => {
                    self.after_cr = false;
                    self.line.push(b);
                }
            }
        }
        out
    }

    /// End of stream: per spec, an unterminated line and an event without
    /// its closing blank line are discarded.
    pub fn finish(&mut self) {
        self.line.clear();
        self.after_cr = false;
        self.data.clear();
        self.event_type.clear();
        self.block_id = None;
        self.block_retry = None;
    }

    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref()
    }

    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    pub fn comments(&self) -> &[String] {
        &self.comments
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) {
        let mut bytes = std::mem::take(&mut self.line);
        if !self.seen_first_line {
            self.seen_first_line = true;
            if bytes.starts_with(b"\xEF\xBB\xBF") {
                bytes.drain(..3);
            }
        }
        // The stream is UTF-8; invalid sequences become U+FFFD like a browser.
        // Decoding whole lines means multi-byte chars split across chunks are
        // reassembled before decoding.
        let line = String::from_utf8_lossy(&bytes);
        self.process_line(&line, out);
    }

    fn process_line(&mut self, line: &str, out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if let Some(comment) = line.strip_prefix(':') {
            self.comments.push(comment.to_owned());
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.event_type = value.to_owned(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            // An id containing NUL is ignored entirely.
            "id" if !value.contains('\0') => {
                self.id_buffer = Some(value.to_owned());
                self.block_id = Some(value.to_owned());
            }
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                // Digits-only but too large for u64: ignore like a bad value.
                if let Ok(ms) = value.parse::<u64>() {
                    self.retry = Some(ms);
                    self.block_retry = Some(ms);
                }
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        self.last_event_id = self.id_buffer.clone();
        let id = self.block_id.take();
        let retry = self.block_retry.take();
        // Not `data.is_empty()` on the joined text: a lone `data:` line
        // leaves "\n" in the buffer and *is* dispatched (with empty data).
        if self.data.is_empty() {
            self.event_type.clear();
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        if data.ends_with('\n') {
            data.pop();
        }
        let event_type = std::mem::take(&mut self.event_type);
        out.push(SseEvent { id, event: (!event_type.is_empty()).then_some(event_type), data, retry });
    }
}
