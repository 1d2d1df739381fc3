//! The rings in order of last use, kept as a log of `(sequence, slot)` appends, so the store
//! forgets the quietest ring in O(1) when it is at `replay.max_topics`, and a resume visits
//! only the rings written since its cursor.
//!
//! Every append pushes its sequence and ring slot at the back; the ring's previous entry goes
//! stale (an entry is live while its ring's newest sequence is the entry's). Appends come in
//! sequence order, so the log is sorted by sequence, and the live entries, front to back, are
//! the rings from least to most recently used ("last used" and "newest sequence" are the same
//! order). Stale entries are skipped where met and dropped in one pass when they outnumber the
//! rings 2:1 (amortised O(1) per append; the deque keeps its storage, so a steady state of
//! appends allocates nothing).
//!
//! Why a log rather than a linked list: a resume reads in steps, letting appends run between
//! them, and needs a position that survives them. A position here is a sequence: a ring
//! appended to between steps gets an entry after every existing one, so a walk from the cursor
//! to the back still meets it; a position in a linked list is a node that an append moves.

use std::collections::VecDeque;

/// Ring slots by the sequence of their last append (see the module doc).
#[derive(Debug, Default)]
pub(super) struct UseLog {
    /// `(sequence, slot)`, sequences strictly increasing.
    entries: VecDeque<(u64, u32)>,
}

impl UseLog {
    /// Records an append of sequence `seq` (above every recorded one) to ring `slot`.
    pub(super) fn push(&mut self, seq: u64, slot: usize) {
        debug_assert!(self.entries.back().is_none_or(|&(s, _)| s < seq), "appends come in sequence order");
        self.entries.push_back((seq, u32::try_from(slot).expect("fewer than 2^32 rings")));
    }

    /// Takes out the least recently used ring's entry and returns its slot: the front live entry
    /// (`live(seq, slot)`), dropping the stale entries before it.
    pub(super) fn pop_front(&mut self, live: impl Fn(u64, usize) -> bool) -> Option<usize> {
        while let Some((seq, slot)) = self.entries.pop_front() {
            if live(seq, slot as usize) {
                return Some(slot as usize);
            }
        }
        None
    }

    /// Drops every stale entry when they outnumber the `rings` live ones 2:1.
    pub(super) fn compact(&mut self, rings: usize, live: impl Fn(u64, usize) -> bool) {
        if self.entries.len() > 3 * rings + 64 {
            self.entries.retain(|&(seq, slot)| live(seq, slot as usize));
        }
    }

    /// How many entries (live or stale) have a sequence above `seq`: at most the appends since.
    pub(super) fn count_after(&self, seq: u64) -> usize {
        self.entries.len() - self.entries.partition_point(|&(s, _)| s <= seq)
    }

    /// The entries with a sequence above `seq`, oldest first (stale ones included).
    pub(super) fn after(&self, seq: u64) -> impl Iterator<Item = (u64, usize)> + '_ {
        let start = self.entries.partition_point(|&(s, _)| s <= seq);
        self.entries.range(start..).map(|&(s, slot)| (s, slot as usize))
    }

    /// Entries held, live and stale.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A log plus the newest sequence of each slot, as the store keeps it.
    #[derive(Default)]
    struct Model {
        log: UseLog,
        newest: HashMap<usize, u64>,
        seq: u64,
    }

    impl Model {
        fn append(&mut self, slot: usize) {
            self.seq += 1;
            self.newest.insert(slot, self.seq);
            self.log.push(self.seq, slot);
        }
        fn live(&self) -> impl Fn(u64, usize) -> bool + '_ {
            |seq, slot| self.newest.get(&slot) == Some(&seq)
        }
        fn order(&self) -> Vec<usize> {
            let live = self.live();
            self.log.after(0).filter(|&(s, slot)| live(s, slot)).map(|(_, slot)| slot).collect()
        }
        fn forget_front(&mut self) -> Option<usize> {
            let newest = self.newest.clone();
            let slot = self.log.pop_front(|seq, slot| newest.get(&slot) == Some(&seq))?;
            self.newest.remove(&slot);
            Some(slot)
        }
    }

    #[test]
    fn least_recently_used_first() {
        let mut m = Model::default();
        for s in [3, 0, 7] {
            m.append(s);
        }
        assert_eq!(m.order(), [3, 0, 7]);
        m.append(3);
        assert_eq!(m.order(), [0, 7, 3]);
        m.append(3);
        assert_eq!(m.order(), [0, 7, 3], "appending to the busiest ring keeps the order");
        assert_eq!(m.forget_front(), Some(0));
        assert_eq!(m.forget_front(), Some(7));
        assert_eq!(m.forget_front(), Some(3), "stale entries of 3 were skipped");
        assert_eq!(m.forget_front(), None);
        assert_eq!(m.log.len(), 0);
    }

    #[test]
    fn entries_after_a_sequence_are_the_appends_since() {
        let mut m = Model::default();
        for s in [1, 2, 3, 1, 2] {
            m.append(s); // sequences 1..=5
        }
        assert_eq!(m.log.count_after(3), 2);
        assert_eq!(m.log.after(3).collect::<Vec<_>>(), [(4, 1), (5, 2)]);
        assert_eq!(m.log.count_after(5), 0);
        assert_eq!(m.log.count_after(0), 5);
    }

    #[test]
    fn compaction_keeps_the_live_entries_in_order() {
        let mut m = Model::default();
        for i in 0..1000 {
            m.append(i % 3);
        }
        let before = m.order();
        let newest = m.newest.clone();
        m.log.compact(3, |seq, slot| newest.get(&slot) == Some(&seq));
        assert_eq!(m.log.len(), 3);
        assert_eq!(m.order(), before);
        assert_eq!(before, [1, 2, 0], "the last appends were to 1, 2, 0");
    }
}
