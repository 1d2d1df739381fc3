//! Reading a resume's events out of the rings in bounded steps.
//!
//! A [`Collection`] is the state of one resume's read: which names are left to scan and what
//! was found so far. [`ReplayStore::collect_step`] takes the store's lock for at most a given
//! amount of work, so a resume over 100k rings never holds the sequencer's `append` for longer
//! than one step. Between steps the rings change; the read stays sound because:
//! - it only takes events up to `upto`, which were all appended before the resume started, so
//!   no ring created later holds one of them;
//! - each ring's eviction record is read together with its events, so an eviction before the
//!   read is reported and one after it took nothing the read still needed;
//! - a ring forgotten before the scan reached it raised `forgotten_upto`, which is checked in
//!   the last step, under the same lock as the end of the scan.
//!
//! Exact filters are looked up by name. With a pattern, the read takes the cheaper of two
//! walks, chosen in its first step:
//! - the use log from the cursor on (`order.rs`): only the rings written since the cursor can
//!   hold an event after it or have evicted one (a ring's eviction record never passes its
//!   newest sequence), so a resume from a recent id over 100k idle rings visits the few rings
//!   written since. Between steps a position is a sequence: a ring appended to meanwhile gets
//!   a later entry, which the walk still meets (visiting a ring twice only repeats events, which
//!   [`Collection::finish`] drops);
//! - the name range of the pattern's literal prefix (`orders.eu.*` reads only names starting
//!   with `orders.eu.`), continuing after the last name it read: for an old cursor on a narrow
//!   prefix.

use std::ops::Bound;
use std::sync::Arc;

use super::{COVERS_SCAN, Replay, ReplayStore, TopicRing};
use crate::event::Event;
use crate::topic::TopicFilter;

/// A half-open range of topic names: `[lo, hi)`, `hi = None` for no upper end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NameRange {
    lo: String,
    hi: Option<String>,
}

impl NameRange {
    /// The bounds for a B-tree range, starting after `from` when given (a name already read).
    pub(super) fn bounds<'a>(&'a self, from: Option<&'a str>) -> (Bound<&'a str>, Bound<&'a str>) {
        let lo = from.map_or(Bound::Included(self.lo.as_str()), Bound::Excluded);
        let hi = self.hi.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        (lo, hi)
    }
}

/// The names `filter` can match: itself for an exact topic; for a pattern, every name that
/// starts with its tokens before the first wildcard (all names when it starts with one).
pub(super) fn name_range(filter: &TopicFilter) -> NameRange {
    match filter {
        TopicFilter::Exact(t) => NameRange { lo: t.to_string(), hi: Some(format!("{t}\0")) },
        TopicFilter::Pattern(p) => {
            let mut prefix = String::new();
            for tok in p.as_str().split('.') {
                if tok == "*" || tok == ">" {
                    break;
                }
                prefix.push_str(tok);
                prefix.push('.');
            }
            if prefix.is_empty() {
                return NameRange { lo: String::new(), hi: None };
            }
            // Names starting with "a.b." sort before "a.b/" ('/' follows '.').
            let mut hi = prefix.clone();
            hi.pop();
            hi.push('/');
            NameRange { lo: prefix, hi: Some(hi) }
        }
    }
}

/// One resume's read of the rings: the events on its filters in `(after, upto]` and the
/// topics where some may be missing, gathered in steps ([`ReplayStore::collect_step`]).
#[derive(Debug)]
pub struct Collection {
    filters: Box<[TopicFilter]>,
    after: u64,
    upto: u64,
    /// With a pattern among the filters: the name ranges to scan, merged, in order. Without:
    /// empty, and the exact filters are looked up in one step.
    ranges: Vec<NameRange>,
    /// How the rings are walked (decided in the first step when there is a pattern).
    walk: Walk,
    /// The range being scanned, and the last name read in it.
    at: usize,
    from: Option<Arc<str>>,
    events: Vec<Arc<Event>>,
    incomplete: Vec<String>,
    done: bool,
}

impl Collection {
    /// A read of `filters` after `after` up to and including `upto`, not started.
    pub fn new(filters: &[TopicFilter], after: u64, upto: u64) -> Self {
        let mut filters: Vec<TopicFilter> = filters.to_vec();
        filters.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        filters.dedup();
        let mut ranges = Vec::new();
        if filters.iter().any(|f| matches!(f, TopicFilter::Pattern(_))) {
            let mut all: Vec<NameRange> = filters.iter().map(name_range).collect();
            all.sort_by(|a, b| a.lo.cmp(&b.lo));
            for r in all {
                match ranges.last_mut() {
                    Some(NameRange { hi: prev_hi, .. }) if prev_hi.as_deref().is_none_or(|h| r.lo.as_str() <= h) => {
                        if prev_hi.is_some() && r.hi.as_deref().is_none_or(|h| Some(h) > prev_hi.as_deref()) {
                            *prev_hi = r.hi;
                        }
                    }
                    _ => ranges.push(r),
                }
            }
        }
        Collection {
            filters: filters.into_boxed_slice(),
            after,
            upto,
            ranges,
            walk: Walk::Undecided,
            at: 0,
            from: None,
            events: Vec::new(),
            incomplete: Vec::new(),
            done: false,
        }
    }

    /// Whether the read is complete.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// What was read: the events in id order (each once) and the incomplete topics, sorted.
    pub fn finish(mut self) -> Replay {
        self.incomplete.sort();
        self.incomplete.dedup();
        self.events.sort_unstable_by_key(|e| e.id.seq);
        self.events.dedup_by_key(|e| e.id.seq);
        Replay { events: self.events, incomplete: self.incomplete }
    }

    fn all_incomplete(&mut self) {
        self.incomplete.extend(self.filters.iter().map(|f| f.as_str().to_owned()));
    }
}

/// Takes what `ring` holds in `(after, upto]` and notes `topic` if it evicted part of that
/// range; returns the events taken.
fn consider(
    ring: &TopicRing,
    after: u64,
    upto: u64,
    events: &mut Vec<Arc<Event>>,
    incomplete: &mut Vec<String>,
) -> usize {
    if ring.evicted_upto > after {
        incomplete.push(ring.topic.to_string());
    }
    let start = ring.events.partition_point(|e| e.id.seq <= after);
    let before = events.len();
    events.extend(ring.events.range(start..).take_while(|e| e.id.seq <= upto).cloned());
    events.len() - before
}

impl ReplayStore {
    /// Events on topics matched by `filters` with `after < seq <= upto`, in id order, and the
    /// topics where some such event was evicted (or whose ring was forgotten), in one go.
    /// Resumes use a [`Collection`] instead, which takes the lock in bounded steps.
    pub fn collect(&self, filters: &[TopicFilter], after: u64, upto: u64) -> Replay {
        let mut c = Collection::new(filters, after, upto);
        while !self.collect_step(&mut c, usize::MAX) {}
        c.finish()
    }

    /// Whether the rings provably hold every event on `filters` in `(after, upto]` (a resume
    /// from `after` would need no gap), decided cheaply enough to run under the registry lock:
    /// one look-up per exact filter, and for patterns at most [`COVERS_SCAN`] rings of the
    /// pattern's name range. False when unsure; the caller then takes its slower, sound path.
    pub fn covers(&self, filters: &[TopicFilter], after: u64, upto: u64) -> bool {
        if after >= upto {
            return true;
        }
        if self.off {
            return false;
        }
        let g = self.inner.lock();
        if after >= g.evicted_high.max(g.forgotten_upto) {
            return true;
        }
        let mut budget = COVERS_SCAN;
        for f in filters {
            match f {
                TopicFilter::Exact(t) => match g.index.get(t) {
                    Some(&slot) if g.rings[slot].evicted_upto > after => return false,
                    Some(_) => {}
                    None if g.forgotten_floor(t) > after => return false,
                    None => {}
                },
                TopicFilter::Pattern(p) => {
                    if g.forgotten_upto > after {
                        return false;
                    }
                    let range = name_range(f);
                    for (name, &slot) in g.by_name.range::<str, _>(range.bounds(None)) {
                        if budget == 0 {
                            return false;
                        }
                        budget -= 1;
                        if g.rings[slot].evicted_upto > after && p.matches(name) {
                            return false;
                        }
                    }
                }
            }
        }
        true
    }
}

/// Events taken that cost as much work as reading one more ring, for the step budget.
const EVENTS_PER_UNIT: usize = 16;

/// How a read with a pattern visits the rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// Not yet decided (the first step decides).
    Undecided,
    /// The name ranges of the patterns' prefixes.
    Names,
    /// The use log after this sequence (the cursor, then the last entry visited).
    Log(u64),
}

impl Collection {
    /// Picks the cheaper walk: the use log when it holds fewer entries after the cursor than the
    /// name ranges hold rings. The ranges are counted only up to the log's count, and at most
    /// `budget` names; past that the log is taken if it is no longer than the store's ring count
    /// (the most a name walk can cost). The counting is not charged to the step (so the first
    /// step may do up to twice its budget, and always makes progress).
    fn choose(&mut self, inner: &super::Inner, budget: usize) {
        let since = inner.order.count_after(self.after);
        let cap = since.min(budget);
        let mut names = 0usize;
        for r in &self.ranges {
            names += inner.by_name.range::<str, _>(r.bounds(None)).take(cap + 1 - names).count();
            if names > cap {
                break;
            }
        }
        let names_cheaper = if names <= cap {
            names < since // every name in the ranges was counted
        } else {
            // More names than the log's entries, or both past the budget: the log unless it is
            // longer than the rings a name walk can visit.
            since > cap && since > inner.rings.len()
        };
        self.walk = if names_cheaper { Walk::Names } else { Walk::Log(self.after) };
    }
}

impl ReplayStore {
    /// Advances `c` by at most `budget` units of work (a ring read, or [`EVENTS_PER_UNIT`]
    /// events taken) under one hold of the store's lock; true when the read is complete. A
    /// resume calls it until true, letting other work run between calls.
    pub fn collect_step(&self, c: &mut Collection, budget: usize) -> bool {
        if c.done {
            return true;
        }
        if c.after >= c.upto {
            c.done = true;
            return true;
        }
        if self.off {
            // Nothing was retained: everything after the cursor is missing.
            c.all_incomplete();
            c.done = true;
            return true;
        }
        let g = self.inner.lock();
        let (after, upto) = (c.after, c.upto);
        if c.ranges.is_empty() {
            for f in c.filters.iter() {
                let TopicFilter::Exact(t) = f else { continue };
                match g.index.get(t) {
                    Some(&slot) => {
                        consider(&g.rings[slot], after, upto, &mut c.events, &mut c.incomplete);
                    }
                    None if g.forgotten_floor(t) > after => c.incomplete.push(t.to_string()),
                    None => {}
                }
            }
            c.done = true;
            return true;
        }
        let mut spent = 0usize;
        if c.walk == Walk::Undecided {
            c.choose(&g, budget);
        }
        if let Walk::Log(mut from) = c.walk {
            for (seq, slot) in g.order.after(from) {
                if spent >= budget {
                    c.walk = Walk::Log(from);
                    return false;
                }
                spent += 1;
                from = seq;
                // A stale entry: the ring was appended to later (its live entry is further on)
                // or forgotten (the check below).
                let Some(ring) = g.rings.get(slot).filter(|r| r.newest == seq) else { continue };
                if c.filters.iter().any(|f| f.matches(&ring.topic)) {
                    let n = consider(ring, after, upto, &mut c.events, &mut c.incomplete);
                    spent = spent.saturating_add(n / EVENTS_PER_UNIT);
                }
            }
            c.at = c.ranges.len();
        }
        while c.at < c.ranges.len() {
            let mut last: Option<&Arc<str>> = None;
            let mut names = g.by_name.range::<str, _>(c.ranges[c.at].bounds(c.from.as_deref()));
            loop {
                if spent >= budget {
                    if let Some(name) = last {
                        c.from = Some(name.clone());
                    }
                    return false;
                }
                let Some((name, &slot)) = names.next() else { break };
                spent += 1;
                last = Some(name);
                if c.filters.iter().any(|f| f.matches(name)) {
                    let n = consider(&g.rings[slot], after, upto, &mut c.events, &mut c.incomplete);
                    spent = spent.saturating_add(n / EVENTS_PER_UNIT);
                }
            }
            c.at += 1;
            c.from = None;
        }
        // A pattern may match topics whose rings were forgotten, before or during the scan.
        if g.forgotten_upto > after {
            c.all_incomplete();
        }
        c.done = true;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ReplayConfig;
    use crate::event::{EventId, frame_event};
    use std::time::Instant;

    fn f(s: &str) -> TopicFilter {
        TopicFilter::parse(s, 256).unwrap()
    }

    fn ev(seq: u64, topic: &str) -> Arc<Event> {
        let id = EventId { run: 1, seq };
        Arc::new(Event {
            id,
            topic: topic.into(),
            frame: frame_event(id, None, b"x").0,
            received_at: Instant::now(),
            policy: crate::config::SlowConsumerPolicy::Disconnect,
            trace: None,
            published_at_ms: None,
            durable: None,
        })
    }

    fn store(per_topic: usize, max_topics: usize) -> ReplayStore {
        ReplayStore::new(ReplayConfig {
            max_events_per_topic: per_topic,
            max_bytes_per_topic: 1 << 20,
            max_total_bytes: 1 << 30,
            max_topics,
        })
    }

    fn read(s: &ReplayStore, mut c: Collection, budget: usize) -> (Vec<u64>, Vec<String>) {
        while !s.collect_step(&mut c, budget) {}
        let r = c.finish();
        (r.events.iter().map(|e| e.id.seq).collect(), r.incomplete)
    }

    fn forced(filters: &[TopicFilter], after: u64, upto: u64, walk: Walk) -> Collection {
        let mut c = Collection::new(filters, after, upto);
        c.walk = walk;
        c
    }

    #[test]
    fn a_recent_cursor_walks_the_log_and_an_old_one_on_a_narrow_prefix_walks_names() {
        let s = store(4, 100_000);
        for seq in 1..=10_000u64 {
            s.append(&ev(seq, &format!("load.{seq}")));
        }
        s.append(&ev(10_001, "hot"));
        let mut c = Collection::new(&[f("load.>"), f("hot")], 9_999, 10_001);
        assert!(s.collect_step(&mut c, 512), "two entries after the cursor: one step");
        assert_eq!(c.walk, Walk::Log(9_999));
        assert_eq!(seqs_of(c), [10_000, 10_001]);
        let mut c = Collection::new(&[f("load.7.*")], 0, 10_001);
        assert!(s.collect_step(&mut c, 512));
        assert_eq!(c.walk, Walk::Names, "no name under load.7.: nothing to walk");
    }

    fn seqs_of(c: Collection) -> Vec<u64> {
        c.finish().events.iter().map(|e| e.id.seq).collect()
    }

    #[test]
    fn the_log_walk_meets_rings_appended_to_between_steps() {
        let s = store(10, 100);
        for (seq, t) in [(1, "a.1"), (2, "a.2"), (3, "a.3"), (4, "b")] {
            s.append(&ev(seq, t));
        }
        let mut c = forced(&[f("a.*")], 1, 4, Walk::Log(1));
        assert!(!s.collect_step(&mut c, 1)); // visits a.2
        s.append(&ev(5, "a.3")); // a.3's entry moves behind every other
        for seq in 6..=400 {
            s.append(&ev(seq, "b")); // and the log is compacted meanwhile
        }
        assert_eq!(read(&s, c, 1), (vec![2, 3], vec![]));
    }

    #[test]
    fn both_walks_read_what_a_read_in_one_go_reads() {
        // A small store that evicts and forgets, with topics under several prefixes.
        let s = store(3, 24);
        let mut x = 7u64;
        let mut published = 0u64;
        let check = |s: &ReplayStore, published: u64| {
            for filters in [vec![f("a.*")], vec![f("a.>"), f("c")], vec![f("*.1"), f("a.2")], vec![f(">")]] {
                for after in [0, published / 2, published.saturating_sub(5), published] {
                    let whole = read(s, forced(&filters, after, published, Walk::Names), usize::MAX);
                    for budget in [1, 3] {
                        for walk in [Walk::Names, Walk::Log(after), Walk::Undecided] {
                            let got = read(s, forced(&filters, after, published, walk), budget);
                            assert_eq!(got, whole, "{filters:?} after {after} by {walk:?} in steps of {budget}");
                        }
                    }
                }
            }
        };
        for _ in 0..400 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let n = (x >> 33) % 40;
            let topic = match n % 4 {
                0 => format!("a.{}", n / 4),
                1 => format!("a.{}.x", n / 4),
                2 => format!("b.{}", n / 4),
                _ => "c".to_owned(),
            };
            published += 1;
            s.append(&ev(published, &topic));
            if published.is_multiple_of(50) {
                check(&s, published);
            }
        }
    }

    #[test]
    fn pattern_ranges_follow_the_literal_prefix() {
        let r = name_range(&f("orders.eu.*"));
        assert_eq!((r.lo.as_str(), r.hi.as_deref()), ("orders.eu.", Some("orders.eu/")));
        let r = name_range(&f("*.eu"));
        assert_eq!((r.lo.as_str(), r.hi), ("", None));
        let r = name_range(&f("a.>"));
        assert_eq!((r.lo.as_str(), r.hi.as_deref()), ("a.", Some("a/")));
    }

    #[test]
    fn overlapping_ranges_merge() {
        let c = Collection::new(&[f("a.>"), f("a.b.*"), f("a.b.c"), f("c.*")], 0, 1);
        let los: Vec<&str> = c.ranges.iter().map(|r| r.lo.as_str()).collect();
        assert_eq!(los, ["a.", "c."]);
        let c = Collection::new(&[f("a.*"), f("*.x")], 0, 1);
        assert_eq!(c.ranges, [NameRange { lo: String::new(), hi: None }]);
    }
}
