//! The bounded buffer a live source reads into while the ingest channel is full, so it can go
//! on draining its broker client (whose own buffer is unbounded for Redis, and counted in
//! messages for NATS) and drop by its own byte bound instead, telling the streams.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::bounds::IntervalLog;
use super::message::{IngestClosed, IngestPermit, IngestSender, SourceKind, SourceMessage, SourceSignal};
use crate::outages::{SourceGap, SourceSpace};

/// A pending reservation of room in the ingest channel.
pub(super) type Reserve = Pin<Box<dyn Future<Output = Result<IngestPermit, IngestClosed>> + Send>>;

/// Messages read from a broker that wait for the ingest channel, bounded in bytes
/// (`buffer_bytes` of the source's section). Policy when full: the newest message is dropped
/// and counted, and a `source-dropped` signal goes ahead of the next message kept, so the
/// streams learn of the loss before any later event. The signal names the source's spaces that
/// served a dropped message, so streams on other subjects or channels are not told of a loss
/// that was not theirs.
#[derive(Debug)]
pub(super) struct Buffer {
    source: SourceKind,
    items: VecDeque<Pending>,
    bytes: usize,
    max_bytes: usize,
    /// Messages dropped and not yet told.
    lost: u64,
    /// The spaces that served those messages.
    lost_spaces: Vec<SourceSpace>,
    /// For the warning logged when messages are dropped (at most once per interval).
    pub(super) drop_log: IntervalLog,
}

#[derive(Debug)]
enum Pending {
    Message(SourceMessage, usize),
    Signal(SourceSignal),
}

impl Buffer {
    /// An empty buffer of `max_bytes` for `source`.
    pub(super) fn new(source: SourceKind, max_bytes: usize) -> Self {
        Buffer {
            source,
            items: VecDeque::new(),
            bytes: 0,
            max_bytes,
            lost: 0,
            lost_spaces: Vec::new(),
            drop_log: IntervalLog::default(),
        }
    }

    /// Queues a signal behind what is buffered (a signal holds no bytes).
    pub(super) fn push_signal(&mut self, signal: SourceSignal) {
        self.items.push_back(Pending::Signal(signal));
    }

    /// Queues `msg`, or drops it when the buffer is full (one message always fits); returns
    /// the drops not yet told when it dropped. `spaces` are the source's subscriptions: a drop
    /// signal names those that served a dropped message (all of them if none did).
    pub(super) fn push(&mut self, msg: SourceMessage, spaces: &Arc<[SourceSpace]>) -> Option<u64> {
        let cost = msg.ingest_cost();
        if self.bytes + cost > self.max_bytes && self.bytes > 0 {
            self.lost += 1;
            for space in spaces.iter() {
                if space.serves(&msg.topic) && !self.lost_spaces.contains(space) {
                    self.lost_spaces.push(space.clone());
                }
            }
            return Some(self.lost);
        }
        if self.lost > 0 {
            let lost = std::mem::take(&mut self.lost);
            let named = std::mem::take(&mut self.lost_spaces);
            let spaces = if named.is_empty() { spaces.clone() } else { Arc::from(named) };
            let signal = SourceSignal { source: self.source, gap: SourceGap::Dropped, spaces, lost };
            self.items.push_back(Pending::Signal(signal));
        }
        self.bytes += cost;
        self.items.push_back(Pending::Message(msg, cost));
        None
    }

    /// A reservation for the front, if something is buffered; keep it across a `select!`
    /// loop so the source keeps its turn in the ingest channel while it reads on.
    pub(super) fn reserve_front(&self, tx: &IngestSender) -> Option<Reserve> {
        let cost = match self.items.front()? {
            Pending::Message(_, cost) => *cost,
            Pending::Signal(_) => 0,
        };
        let tx = tx.clone();
        Some(Box::pin(async move { tx.reserve(cost).await }))
    }

    /// Sends the front through `permit` (from [`Buffer::reserve_front`]).
    pub(super) fn send_front(&mut self, permit: IngestPermit) {
        match self.items.pop_front() {
            Some(Pending::Message(msg, cost)) => {
                self.bytes -= cost;
                permit.send(msg);
            }
            Some(Pending::Signal(signal)) => permit.signal(signal),
            None => {}
        }
        if self.items.is_empty() && self.items.capacity() > 1024 {
            self.items = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn drops_past_its_bytes_and_signals_before_the_next_message() {
        let msg = |n: usize| SourceMessage::new(SourceKind::Redis, "t".into(), Bytes::from(vec![b'x'; n]));
        let one = msg(100).ingest_cost();
        let spaces: Arc<[SourceSpace]> = Arc::from(vec![SourceSpace::Channel("t".into())]);
        let mut b = Buffer::new(SourceKind::Redis, 2 * one);
        assert_eq!(b.push(msg(100), &spaces), None);
        assert_eq!(b.push(msg(100), &spaces), None);
        assert_eq!(b.push(msg(100), &spaces), Some(1));
        assert_eq!(b.push(msg(100), &spaces), Some(2));
        b.items.pop_front();
        b.bytes -= one;
        assert_eq!(b.push(msg(100), &spaces), None);
        assert!(matches!(&b.items[1], Pending::Signal(s) if s.lost == 2 && s.gap == SourceGap::Dropped));
        assert!(matches!(&b.items[2], Pending::Message(..)));
    }

    #[test]
    fn a_drop_signal_names_only_the_spaces_that_dropped() {
        let msg = |t: &str| SourceMessage::new(SourceKind::Nats, t.into(), Bytes::from(vec![b'x'; 100]));
        let one = msg("a.1").ingest_cost();
        let subject = |s: &str| SourceSpace::Subject(crate::topic::Pattern::parse(s, 64).unwrap());
        let spaces: Arc<[SourceSpace]> = Arc::from(vec![subject("a.*"), subject("b.*"), subject("c.*")]);
        let mut b = Buffer::new(SourceKind::Nats, one);
        assert_eq!(b.push(msg("a.1"), &spaces), None);
        assert_eq!(b.push(msg("a.2"), &spaces), Some(1));
        assert_eq!(b.push(msg("c.1"), &spaces), Some(2));
        b.items.pop_front();
        b.bytes = 0;
        assert_eq!(b.push(msg("b.1"), &spaces), None);
        let Pending::Signal(s) = &b.items[0] else { panic!("a signal first") };
        let named: Vec<&str> = s.spaces.iter().map(SourceSpace::as_str).collect();
        assert_eq!((s.lost, named), (2, vec!["a.*", "c.*"]));
    }
}
