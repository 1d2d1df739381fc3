//! Where the sequencer stands in every durable stream, and the position a source message
//! carries: what a resume reads to know which events the broker must supply.

use parking_lot::Mutex;

use crate::event::Pos;

/// Where the sequencer stands in every durable stream, published for resumes: the vector after
/// sequence `seq`. Written by the sequencer only (after the ring append, before it publishes the
/// sequence), so a resume that reads it under the registry lock knows exactly which events the
/// broker must supply and which the ring and the live fan-out will.
#[derive(Debug, Default)]
pub struct Positions {
    inner: Mutex<Snapshot>,
}

/// A consistent copy of [`Positions`].
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub seq: u64,
    pub positions: Vec<Option<Pos>>,
}

impl Positions {
    /// Publishes the vector as of sequence `seq`.
    pub fn publish(&self, seq: u64, positions: &[Option<Pos>]) {
        let mut g = self.inner.lock();
        g.seq = seq;
        g.positions.clear();
        g.positions.extend_from_slice(positions);
    }

    /// The vector as last published.
    pub fn snapshot(&self) -> Snapshot {
        self.inner.lock().clone()
    }
}

/// A durable position attached to a source message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurableMark {
    /// Index of the stream in the [`Catalog`](super::Catalog).
    pub stream: u16,
    pub pos: Pos,
    /// No event: the source tells the sequencer where the stream stood when it started
    /// reading (its last entry), so ids carry the position before the first new event.
    pub baseline: bool,
}
