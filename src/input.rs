//! Bounds on untrusted input, from both sides of the bridge.
//!
//! From browsers and other HTTP clients: header bytes and `Last-Event-ID` (topics, their count
//! and the query length are checked where they are parsed, in `sse::handler`). Each violation
//! is a `400` with a one-line reason and a `sse_bridge_requests_rejected_total{reason}` count;
//! see `sse::guard`.
//!
//! From brokers: a publisher can send anything its broker accepts. [`BrokerInput`] drops
//! messages over the source's `max_message_bytes` and counts them with the invalid envelopes
//! (`sse_bridge_events_malformed_total{source}`); non-UTF-8 payloads are still delivered (with
//! U+FFFD, counted by the sequencer in `sse_bridge_events_non_utf8_total`). Either way a
//! warning is logged at most once per [`LOG_INTERVAL`] per source and reason, with the number
//! suppressed since, so a misbehaving publisher cannot flood the logs, and no stream breaks.

use std::fmt::Display;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;
use tracing::warn;

use crate::sources::{SourceKind, SourceStatus};

/// Longest `Last-Event-ID` (header or `lastEventId` query parameter) accepted. A bridge id is
/// at most 33 bytes; ids up to this length that are not ours get the `malformed-id` gap signal
/// (a browser carrying another server's id must keep working); longer ones get `400`.
pub const MAX_LAST_EVENT_ID_BYTES: usize = 1024;

/// Request header bytes (names plus values) accepted; more gets `400`.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// hyper's HTTP/1.1 read buffer, which bounds a request head (request line plus headers):
/// a larger head is answered `431` by hyper itself, before any handler runs. HTTP/2 header
/// lists are bounded by hyper's own default (16 KiB, `SETTINGS_MAX_HEADER_LIST_SIZE`).
pub const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;

/// Longest `event` type accepted by `POST /publish`.
pub const MAX_EVENT_TYPE_BYTES: usize = 256;

/// Broker input problems are logged at most this often per source and reason.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Why a `Last-Event-ID` value is refused with `400`, if it is.
///
/// Refused: longer than [`MAX_LAST_EVENT_ID_BYTES`], not UTF-8, or containing control
/// characters (an SSE id cannot hold CR, LF or NUL, and no server sends the others). Anything
/// else is read by `replay::Cursor::parse`; ids that are not this bridge's get a gap signal.
pub fn check_last_event_id(v: &[u8]) -> Result<(), String> {
    if v.len() > MAX_LAST_EVENT_ID_BYTES {
        return Err(format!("Last-Event-ID is longer than {MAX_LAST_EVENT_ID_BYTES} bytes"));
    }
    let s = std::str::from_utf8(v).map_err(|_| "Last-Event-ID is not UTF-8".to_string())?;
    if s.chars().any(char::is_control) {
        return Err("Last-Event-ID contains a control character".into());
    }
    Ok(())
}

/// `s` cut to at most `max` bytes on a character boundary (for echoing client input back).
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Bytes of all request headers, names and values.
pub fn header_bytes(h: &HeaderMap) -> usize {
    h.iter().map(|(k, v)| k.as_str().len() + v.len()).sum()
}

/// One source's guard against what its publishers send; lives in the source's task.
#[derive(Debug)]
pub struct BrokerInput {
    source: SourceKind,
    max_bytes: usize,
    status: Arc<SourceStatus>,
    oversize: IntervalLog,
    invalid: IntervalLog,
    non_utf8: IntervalLog,
}

impl BrokerInput {
    /// A guard for `source` dropping messages larger than `max_bytes`.
    pub fn new(source: SourceKind, max_bytes: usize, status: Arc<SourceStatus>) -> Self {
        BrokerInput {
            source,
            max_bytes,
            status,
            oversize: IntervalLog::default(),
            invalid: IntervalLog::default(),
            non_utf8: IntervalLog::default(),
        }
    }

    /// Whether a raw message may be bridged. Oversize messages are counted, logged (once per
    /// interval) and refused. When `check_utf8`, a non-UTF-8 payload is logged (once per
    /// interval) but still admitted: it is delivered with U+FFFD in place of invalid bytes.
    pub fn admit(&mut self, topic: &str, payload: &[u8], check_utf8: bool) -> bool {
        if payload.len() > self.max_bytes {
            self.status.count_malformed();
            if let Some(suppressed) = self.oversize.due() {
                warn!(
                    source = self.source.as_str(),
                    topic = %clip(topic),
                    bytes = payload.len(),
                    max_message_bytes = self.max_bytes,
                    suppressed,
                    "Message larger than max_message_bytes; dropped (logged at most every 10s)."
                );
            }
            return false;
        }
        if check_utf8
            && std::str::from_utf8(payload).is_err()
            && let Some(suppressed) = self.non_utf8.due()
        {
            warn!(
                source = self.source.as_str(),
                topic = %clip(topic),
                suppressed,
                "Payload is not UTF-8; delivered with U+FFFD replacements (logged at most every 10s)."
            );
        }
        true
    }

    /// Counts and logs (once per interval) a message that could not be read, e.g. an invalid
    /// envelope.
    pub fn invalid(&mut self, topic: &str, error: &dyn Display) {
        let n = self.status.count_malformed();
        if let Some(suppressed) = self.invalid.due() {
            warn!(
                source = self.source.as_str(),
                topic = %clip(topic),
                error = %error,
                dropped_total = n,
                suppressed,
                "Message is not a valid envelope; dropped (logged at most every 10s)."
            );
        }
    }
}

/// "Log now?" at most once per [`LOG_INTERVAL`], counting what it suppressed in between.
#[derive(Debug, Default)]
struct IntervalLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl IntervalLog {
    /// `Some(suppressed since the last line)` when a line is due.
    fn due(&mut self) -> Option<u64> {
        match self.last {
            Some(t) if t.elapsed() < LOG_INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(Instant::now());
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// A topic for a log line: at most 128 bytes.
fn clip(s: &str) -> &str {
    let mut end = s.len().min(128);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_id_bounds() {
        assert!(check_last_event_id(b"5f3a9c01b2d7-1").is_ok());
        assert!(check_last_event_id(b"urn:uuid:whatever other servers send").is_ok());
        assert!(check_last_event_id(&[b'a'; MAX_LAST_EVENT_ID_BYTES]).is_ok());
        assert!(check_last_event_id(&[b'a'; MAX_LAST_EVENT_ID_BYTES + 1]).is_err());
        assert!(check_last_event_id(b"a\xffb").is_err());
        assert!(check_last_event_id(b"a\x01b").is_err());
    }

    #[test]
    fn broker_input_drops_oversize_and_counts() {
        let status = Arc::new(SourceStatus::new(SourceKind::Redis));
        let mut g = BrokerInput::new(SourceKind::Redis, 4, status.clone());
        assert!(g.admit("t", b"1234", true));
        assert!(!g.admit("t", b"12345", true));
        assert!(g.admit("t", b"\xff", true), "non-UTF-8 is delivered, not dropped");
        g.invalid("t", &"bad");
        assert_eq!(status.malformed(), 2);
    }

    #[test]
    fn interval_log_suppresses() {
        let mut l = IntervalLog::default();
        assert_eq!(l.due(), Some(0));
        assert_eq!(l.due(), None);
        assert_eq!(l.due(), None);
        l.last = Some(Instant::now() - LOG_INTERVAL);
        assert_eq!(l.due(), Some(2));
    }
}
