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
    /// Per stream, where this run started reading it (its first position: the baseline the
    /// source announced). The run has sequenced every event of the stream after it, so a
    /// cursor at or after it can be served from the rings when they kept those events, even an
    /// id of another run (see `crate::resume`).
    pub since: Vec<Option<Pos>>,
}

impl Positions {
    /// Publishes the vector as of sequence `seq`.
    pub fn publish(&self, seq: u64, positions: &[Option<Pos>]) {
        let mut g = self.inner.lock();
        g.seq = seq;
        g.positions.clear();
        g.positions.extend_from_slice(positions);
        if g.since.len() < positions.len() {
            g.since.resize(positions.len(), None);
        }
        for (since, now) in g.since.iter_mut().zip(positions) {
            if since.is_none() {
                *since = *now;
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_the_first_position_of_each_stream() {
        let p = Positions::default();
        let at = |a| Some(Pos { a, b: 0 });
        p.publish(0, &[at(5), None]);
        p.publish(1, &[at(6), at(2)]);
        p.publish(2, &[at(9), at(3)]);
        let s = p.snapshot();
        assert_eq!(s.since, [at(5), at(2)]);
        assert_eq!(s.positions, [at(9), at(3)]);
    }
}
