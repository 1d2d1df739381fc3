//! Bounds on what brokers deliver: a publisher can send anything its broker accepts.
//!
//! [`BrokerInput`] drops messages over the source's `max_message_bytes` and counts them with the
//! invalid envelopes (`sse_bridge_events_malformed_total{source}`); non-UTF-8 payloads are still
//! delivered (with U+FFFD, counted by the sequencer in `sse_bridge_events_non_utf8_total`).
//! Either way a warning is logged at most once per [`LOG_INTERVAL`] per source and reason, with
//! the number suppressed since, so a misbehaving publisher cannot flood the logs, and no stream
//! breaks.

use std::fmt::Display;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;

use super::message::SourceKind;
use super::status::SourceStatus;
use crate::topic::truncate;

/// Broker input problems are logged at most this often per source and reason.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

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
pub(super) struct IntervalLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl IntervalLog {
    /// `Some(suppressed since the last line)` when a line is due.
    pub(super) fn due(&mut self) -> Option<u64> {
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
    truncate(s, 128)
}

#[cfg(test)]
mod tests {
    use super::*;

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
