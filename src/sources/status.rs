//! A source's connection state and counters, shared with `/readyz` and `/metrics`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::message::SourceKind;

/// A source's connection state, shared with the admin endpoints.
#[derive(Debug)]
pub struct SourceStatus {
    pub kind: SourceKind,
    connected: AtomicBool,
    /// Whether the source has connected at least once: the next connection is a reconnect.
    ever_connected: AtomicBool,
    reconnects: AtomicU64,
    malformed: AtomicU64,
}

impl SourceStatus {
    /// A disconnected source that has not yet connected.
    pub fn new(kind: SourceKind) -> Self {
        SourceStatus {
            kind,
            connected: AtomicBool::new(false),
            ever_connected: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
        }
    }

    /// Records a (re)connection and says whether it was a reconnect: every connection after
    /// the source's first counts as one. The one place that remembers "first connect", so no
    /// session has to carry its own flag.
    pub fn set_connected(&self) -> bool {
        self.connected.store(true, Ordering::Release);
        let reconnect = self.ever_connected.swap(true, Ordering::AcqRel);
        if reconnect {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        reconnect
    }

    /// Records a lost connection.
    pub fn set_disconnected(&self) {
        self.connected.store(false, Ordering::Release);
    }

    /// Whether the broker connection is up.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Connections after the first.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Counts a message that could not be turned into an event.
    pub fn count_malformed(&self) -> u64 {
        self.malformed.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Messages dropped as malformed.
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connections_after_the_first_are_reconnects() {
        let s = SourceStatus::new(SourceKind::Nats);
        assert!(!s.set_connected());
        s.set_disconnected();
        assert!(s.set_connected());
        assert!(s.is_connected());
        assert_eq!(s.reconnects(), 1);
    }
}
