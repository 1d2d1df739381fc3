//! The subscribers of one exact topic or one pattern, with add and remove in O(1).
//!
//! A connect or disconnect storm on a topic with 50,000 subscribers must not scan that topic's
//! list under the shard's write lock (the fan-out waits on that lock). So the list is a plain
//! vector, cheap to walk on every event, and each subscriber remembers, per filter, where it
//! stands in the list of that filter: removal is a `swap_remove` at that position, and the one
//! member moved into the hole has its remembered position updated by the caller.

/// Marks a filter of a subscriber that is not in any list: a repeat of an earlier filter of
/// the same subscriber (`?topic=a&topic=a`), which the first one already covers.
pub(super) const NOT_LISTED: usize = usize::MAX;

/// One entry: the subscriber's key in its shard, and which of its filters put it here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Member {
    /// The subscriber's key in the shard's slab.
    pub key: usize,
    /// The index of the filter, in the subscriber's filters, that this entry stands for.
    pub filter: usize,
}

/// The subscribers of one topic or pattern, in no particular order.
#[derive(Debug, Default)]
pub(super) struct Members {
    list: Vec<Member>,
}

impl Members {
    /// Whether nobody is listed (the topic or pattern can be forgotten).
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// How many subscribers are listed.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// The keys of the subscribers listed, for the fan-out.
    pub fn keys(&self) -> impl Iterator<Item = usize> + '_ {
        self.list.iter().map(|m| m.key)
    }

    /// Lists `member` and returns its position, or [`NOT_LISTED`] when its subscriber is
    /// listed already. A subscriber's filters are listed together under the shard's write
    /// lock, so if it is here already it was the last one added: checking the last entry is
    /// enough, and O(1).
    pub fn add(&mut self, member: Member) -> usize {
        if self.list.last().is_some_and(|m| m.key == member.key) {
            return NOT_LISTED;
        }
        self.list.push(member);
        self.list.len() - 1
    }

    /// Removes the entry at `pos` (which the caller remembered from [`Members::add`]) and
    /// returns the entry moved into `pos`, if any: the caller updates that subscriber's
    /// remembered position. The vector's spare room is given back once it is mostly empty,
    /// so a storm that has passed does not keep its memory (amortized O(1)).
    pub fn remove(&mut self, pos: usize) -> Option<Member> {
        self.list.swap_remove(pos);
        let cap = self.list.capacity();
        if cap > 64 && self.list.len() < cap / 4 {
            self.list.shrink_to(self.list.len() * 2);
        }
        self.list.get(pos).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_skips_a_repeat_and_remove_reports_the_moved_entry() {
        let mut m = Members::default();
        assert_eq!(m.add(Member { key: 1, filter: 0 }), 0);
        assert_eq!(m.add(Member { key: 1, filter: 2 }), NOT_LISTED, "same subscriber, repeated filter");
        assert_eq!(m.add(Member { key: 2, filter: 0 }), 1);
        assert_eq!(m.add(Member { key: 3, filter: 1 }), 2);
        assert_eq!(m.remove(0), Some(Member { key: 3, filter: 1 }), "the last entry fills the hole");
        assert_eq!(m.keys().collect::<Vec<_>>(), vec![3, 2]);
        assert_eq!(m.remove(1), None, "removing the last entry moves nothing");
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn spare_room_is_given_back() {
        let mut m = Members::default();
        for key in 0..10_000 {
            m.add(Member { key, filter: 0 });
        }
        while m.len() > 10 {
            m.remove(0);
        }
        assert!(m.list.capacity() <= 128, "capacity {} after the storm", m.list.capacity());
    }
}
