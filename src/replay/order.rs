//! The rings in order of last use, so the store forgets the quietest ring in O(1) when it is at
//! `replay.max_topics`.
//!
//! An intrusive doubly linked list over the store's ring slots (slab keys): every append moves
//! its ring to the back, so the front is the ring whose newest event is oldest. Appends come in
//! sequence order, which makes "last used" and "newest sequence" the same order.

/// No slot: the end of the list.
const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Links {
    prev: u32,
    next: u32,
}

/// Ring slots from least to most recently appended to.
#[derive(Debug)]
pub(super) struct UseOrder {
    /// Indexed by slot; entries of slots not in the list are stale and never read.
    links: Vec<Links>,
    head: u32,
    tail: u32,
}

impl Default for UseOrder {
    fn default() -> Self {
        UseOrder { links: Vec::new(), head: NIL, tail: NIL }
    }
}

impl UseOrder {
    /// Adds `slot` (not in the list) at the back: the most recently used.
    pub(super) fn push_back(&mut self, slot: usize) {
        let s = u32::try_from(slot).expect("fewer than 2^32 rings");
        if self.links.len() <= slot {
            self.links.resize(slot + 1, Links { prev: NIL, next: NIL });
        }
        self.links[slot] = Links { prev: self.tail, next: NIL };
        match self.tail {
            NIL => self.head = s,
            t => self.links[t as usize].next = s,
        }
        self.tail = s;
    }

    /// Takes `slot` (in the list) out of it.
    pub(super) fn remove(&mut self, slot: usize) {
        let Links { prev, next } = self.links[slot];
        match prev {
            NIL => self.head = next,
            p => self.links[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.links[n as usize].prev = prev,
        }
    }

    /// Moves `slot` (in the list) to the back; nothing to do for the busiest ring.
    pub(super) fn touch(&mut self, slot: usize) {
        if self.tail as usize != slot {
            self.remove(slot);
            self.push_back(slot);
        }
    }

    /// The least recently used slot.
    pub(super) fn front(&self) -> Option<usize> {
        (self.head != NIL).then_some(self.head as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(o: &UseOrder) -> Vec<usize> {
        let mut out = Vec::new();
        let mut at = o.head;
        while at != NIL {
            out.push(at as usize);
            at = o.links[at as usize].next;
        }
        out
    }

    #[test]
    fn least_recently_used_first() {
        let mut o = UseOrder::default();
        for s in [3, 0, 7] {
            o.push_back(s);
        }
        assert_eq!(order(&o), [3, 0, 7]);
        o.touch(3);
        assert_eq!(order(&o), [0, 7, 3]);
        o.touch(3);
        assert_eq!(order(&o), [0, 7, 3], "touching the back is a no-op");
        o.remove(7);
        assert_eq!(order(&o), [0, 3]);
        assert_eq!(o.front(), Some(0));
        o.remove(0);
        o.remove(3);
        assert_eq!(o.front(), None);
        o.push_back(7);
        assert_eq!(order(&o), [7]);
    }
}
