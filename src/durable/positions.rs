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
    /// Per stream, the last time this run saw it start over (see [`Reset`]); empty until then.
    pub resets: Vec<Option<Reset>>,
}

/// A durable stream that started over: a JetStream stream deleted and recreated (its sequence
/// begins again at 1), a Redis Stream key deleted and recreated with lower ids. A position from
/// before it names an event of a stream that no longer exists, and compares meaninglessly with
/// the new stream's positions, so a resume must not read it as "nothing new".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reset {
    /// The sequence published with the reset: ids of this run up to it carry positions of the
    /// old stream. (The sources announce a reset with a baseline before the new stream's first
    /// event, so no event of the new stream is at or below it.)
    pub seq: u64,
    /// Where the sequencer stood in the old stream.
    pub old: Pos,
}

impl Snapshot {
    /// Whether a client position `after` in stream `idx` comes from before the stream's last
    /// reset: for an id of this run (`ours`: its sequence), exactly; for another run's or
    /// replica's id, when it lies beyond where the new stream stands here (it cannot be a
    /// position of the new stream this process has not reached yet only if this process is not
    /// behind the other one: see docs/delivery.md).
    pub fn crossed_reset(&self, idx: usize, after: Pos, ours: Option<u64>) -> bool {
        let Some(Some(reset)) = self.resets.get(idx) else { return false };
        match ours {
            Some(seq) => seq <= reset.seq,
            None => self.positions.get(idx).copied().flatten().is_none_or(|now| after > now),
        }
    }
}

impl Positions {
    /// Publishes the vector as of sequence `seq`. A stream whose position goes down has started
    /// over (the sequencer's positions only go up otherwise): that is recorded as its [`Reset`].
    pub fn publish(&self, seq: u64, positions: &[Option<Pos>]) {
        let mut g = self.inner.lock();
        for (i, p) in positions.iter().enumerate() {
            if let (Some(new), Some(Some(old))) = (p, g.positions.get(i).copied())
                && *new < old
            {
                if g.resets.len() < positions.len() {
                    g.resets.resize(positions.len(), None);
                }
                g.resets[i] = Some(Reset { seq, old });
                // The old stream's positions do not compare with the new one's: this run has
                // read the new stream since its baseline, and no earlier.
                if g.since.len() < positions.len() {
                    g.since.resize(positions.len(), None);
                }
                g.since[i] = Some(*new);
            }
        }
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
    fn a_position_going_down_is_a_reset() {
        let p = Positions::default();
        let at = |a| Some(Pos { a, b: 0 });
        p.publish(3, &[at(7), None]);
        p.publish(4, &[at(8), at(1)]);
        assert!(p.snapshot().resets.iter().all(Option::is_none));
        p.publish(4, &[at(0), at(1)]); // the baseline of the recreated stream
        p.publish(5, &[at(1), at(1)]);
        let s = p.snapshot();
        assert_eq!(s.resets[0], Some(Reset { seq: 4, old: Pos { a: 8, b: 0 } }));
        assert_eq!(s.resets[1], None);
        assert!(s.crossed_reset(0, Pos { a: 8, b: 0 }, Some(4)), "an id of this run from before the reset");
        assert!(!s.crossed_reset(0, Pos { a: 1, b: 0 }, Some(5)), "after it");
        assert!(s.crossed_reset(0, Pos { a: 8, b: 0 }, None), "another run's position beyond the new stream");
        assert!(!s.crossed_reset(0, Pos { a: 1, b: 0 }, None));
        assert!(!s.crossed_reset(1, Pos { a: 9, b: 0 }, None), "stream 1 never started over");
    }

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
