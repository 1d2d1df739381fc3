//! The replay store: the recent events of every bridged topic, held whether or not anyone was
//! subscribed, so a client that reconnects with `Last-Event-ID` gets what it missed.
//!
//! One [`TopicRing`] per topic, bounded by event count and by bytes, and one global byte budget
//! across all rings; when the budget is exceeded the globally oldest events go first (a heap of
//! ring fronts finds them). Each ring remembers the highest sequence it evicted, which is what
//! makes a resume provable: a client whose cursor is at or after a topic's `evicted_upto` can
//! be given everything it missed on that topic. The rings hold the same `Arc<Event>` (and so
//! the same frame `Bytes`) that was fanned out: no copies.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::config::ReplayConfig;
use crate::event::{Event, EventId};
use crate::topic::TopicFilter;

/// Bookkeeping bytes charged per retained event on top of its frame (the `Event`, its `Arc`,
/// and the ring slot), so the budget tracks real memory, not just payloads.
pub const PER_EVENT_OVERHEAD: usize = std::mem::size_of::<Event>() + 2 * std::mem::size_of::<usize>() + 8;

/// All topics' rings and the global budget.
#[derive(Debug)]
pub struct ReplayStore {
    inner: Mutex<Inner>,
    cfg: ReplayConfig,
}

#[derive(Debug, Default)]
struct Inner {
    rings: HashMap<Arc<str>, TopicRing>,
    /// Ring fronts by sequence, oldest first; entries go stale when a front is popped and are
    /// skipped (and the heap rebuilt when stale entries dominate).
    fronts: BinaryHeap<Reverse<(u64, Arc<str>)>>,
    total_bytes: usize,
    total_events: usize,
    /// Highest sequence ever evicted from a ring that was then forgotten entirely (beyond
    /// `max_topics`); a resume from before it cannot be proven for topics without a ring.
    forgotten_upto: u64,
    /// Per durable stream, the highest position a forgotten ring had retained (see
    /// [`ReplayStore::kept_durable_after`]).
    forgotten_durable: HashMap<u16, crate::event::Pos>,
}

/// One topic's retained events, oldest first.
#[derive(Debug, Default)]
struct TopicRing {
    events: VecDeque<Arc<Event>>,
    bytes: usize,
    /// Highest sequence evicted from this ring (0: nothing evicted yet).
    evicted_upto: u64,
    /// Sequence of the newest event ever appended (for forgetting the quietest topics).
    newest: u64,
    /// The durable stream and position of the newest durable event evicted from this ring
    /// (a topic's events all come from one stream, in its order).
    evicted_durable: Option<(u16, crate::event::Pos)>,
    /// The same for the newest durable event appended: what forgetting the ring loses.
    newest_durable: Option<(u16, crate::event::Pos)>,
}

/// What a resume gets: the events to replay, in id order, and the topics for which the
/// bridge could not prove completeness.
#[derive(Debug, Default)]
pub struct Replay {
    /// The events after the resume cursor, to queue before live ones.
    pub events: Vec<Arc<Event>>,
    /// Topics (or, for unseen topics, the filters) on which events may have been missed.
    pub incomplete: Vec<String>,
}

/// A client's resume cursor (`Last-Event-ID`), read against this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// An id this run assigned: resume after `seq`.
    Ours(u64),
    /// A well-formed id from another process (a restart or another replica).
    OtherRun,
    /// Not a bridge id, too long, or ahead of anything this run assigned.
    Malformed,
}

/// Longest `Last-Event-ID` looked at; a bridge id is at most 33 bytes.
pub const MAX_CURSOR_LEN: usize = 128;

impl Cursor {
    /// Reads `id` against run `run`, whose newest sequence is `newest`.
    pub fn parse(id: &str, run: u64, newest: u64) -> Cursor {
        if id.len() > MAX_CURSOR_LEN {
            return Cursor::Malformed;
        }
        match id.parse::<EventId>() {
            Err(_) => Cursor::Malformed,
            Ok(EventId { run: r, .. }) if r != run => Cursor::OtherRun,
            Ok(EventId { seq, .. }) if seq > newest => Cursor::Malformed,
            Ok(EventId { seq, .. }) => Cursor::Ours(seq),
        }
    }
}

/// Why a resume could not be proven complete; the `reason` of the `sse-bridge.gap` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapReason {
    /// Events after the cursor were evicted from the rings of some topics.
    Evicted,
    /// The id came from another run or replica; this process cannot place it.
    UnknownRun,
    /// The id is not one this bridge could have sent.
    MalformedId,
}

impl GapReason {
    /// The stable `reason` string clients see.
    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::Evicted => "evicted",
            GapReason::UnknownRun => "unknown-run",
            GapReason::MalformedId => "malformed-id",
        }
    }
}

/// What a resuming stream sends before going live.
#[derive(Debug, Default)]
pub struct ResumePlan {
    /// Sent first when completeness cannot be proven, with the topics concerned.
    pub gap: Option<(GapReason, Vec<String>)>,
    /// Events after the cursor, in id order.
    pub events: Vec<Arc<Event>>,
}

/// Totals for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Topics with a ring.
    pub topics: usize,
    /// Events held, over all rings.
    pub events: usize,
    /// Bytes held: frames and bookkeeping.
    pub bytes: usize,
}

fn cost(e: &Event) -> usize {
    e.frame.len() + e.topic.len() + PER_EVENT_OVERHEAD
}

impl ReplayStore {
    /// An empty store with the given bounds.
    pub fn new(cfg: ReplayConfig) -> Self {
        ReplayStore { inner: Mutex::new(Inner::default()), cfg }
    }

    /// Retains `event`, evicting by the per-topic and global bounds. Called by the sequencer
    /// before it publishes the event's sequence (the resume check relies on that order).
    pub fn append(&self, event: &Arc<Event>) {
        if self.cfg.max_events_per_topic == 0 || self.cfg.max_total_bytes == 0 {
            return;
        }
        let mut g = self.inner.lock();
        let inner = &mut *g;
        let c = cost(event);
        if !inner.rings.contains_key(&event.topic) {
            if inner.rings.len() >= self.cfg.max_topics {
                inner.forget_quietest();
            }
            inner.rings.insert(event.topic.clone(), TopicRing::default());
        }
        let ring = inner.rings.get_mut(&event.topic).expect("inserted above");
        if ring.events.is_empty() {
            inner.fronts.push(Reverse((event.id.seq, event.topic.clone())));
        }
        ring.events.push_back(event.clone());
        ring.bytes += c;
        ring.newest = event.id.seq;
        if event.durable.is_some() {
            ring.newest_durable = event.durable;
        }
        inner.total_bytes += c;
        inner.total_events += 1;
        // Per-topic bounds (always keep the newest event, however large).
        let mut popped = false;
        while ring.events.len() > self.cfg.max_events_per_topic
            || (ring.bytes > self.cfg.max_bytes_per_topic && ring.events.len() > 1)
        {
            let freed = ring.evict_front();
            inner.total_bytes -= freed;
            inner.total_events -= 1;
            popped = true;
        }
        if popped && let Some(front) = ring.events.front() {
            inner.fronts.push(Reverse((front.id.seq, event.topic.clone())));
        }
        // Global budget: oldest events of any topic first.
        while inner.total_bytes > self.cfg.max_total_bytes {
            if !inner.evict_oldest() {
                break;
            }
        }
        if inner.fronts.len() > 2 * inner.rings.len() + 64 {
            inner.rebuild_fronts();
        }
    }

    /// Events on topics matched by `filters` with `after < seq <= upto`, in id order, and the
    /// topics where some such event was evicted (or whose ring was forgotten).
    pub fn collect(&self, filters: &[TopicFilter], after: u64, upto: u64) -> Replay {
        let g = self.inner.lock();
        let mut out = Replay::default();
        let consider = |topic: &Arc<str>, ring: &TopicRing, out: &mut Replay| {
            if ring.evicted_upto > after {
                out.incomplete.push(topic.to_string());
            }
            let start = ring.events.partition_point(|e| e.id.seq <= after);
            out.events.extend(ring.events.range(start..).take_while(|e| e.id.seq <= upto).cloned());
        };
        // Each retained topic matched by any filter, once.
        let mut unseen = false;
        let mut topics: Vec<(&Arc<str>, &TopicRing)> = Vec::new();
        for f in filters {
            match f {
                TopicFilter::Exact(t) => match g.rings.get_key_value(t) {
                    Some(kv) => topics.push(kv),
                    None => unseen = true,
                },
                TopicFilter::Pattern(p) => {
                    unseen = true;
                    topics.extend(g.rings.iter().filter(|(k, _)| p.matches(k)));
                }
            }
        }
        topics.sort_unstable_by(|a, b| a.0.cmp(b.0));
        topics.dedup_by(|a, b| a.0 == b.0);
        for (k, ring) in topics {
            consider(k, ring, &mut out);
        }
        if unseen && g.forgotten_upto > after {
            for f in filters {
                out.incomplete.push(f.as_str().to_owned());
            }
        }
        out.incomplete.sort();
        out.incomplete.dedup();
        out.events.sort_unstable_by_key(|e| e.id.seq);
        out
    }

    /// Plans a resume for `filters` from `cursor`, covering sequences up to `upto` (the newest
    /// sequence published when the subscription was registered).
    ///
    /// Only an id of this run can be placed: everything retained after it is replayed, and a
    /// gap is reported for the topics whose rings evicted part of that range. An id from another
    /// run or a malformed one gets a gap for all the stream's filters and no replay: the
    /// client cannot be placed in this history, so it should refetch its state and follow live.
    pub fn resume(&self, filters: &[TopicFilter], cursor: Cursor, upto: u64) -> ResumePlan {
        let all = || filters.iter().map(|f| f.as_str().to_owned()).collect();
        match cursor {
            Cursor::Malformed => ResumePlan { gap: Some((GapReason::MalformedId, all())), events: Vec::new() },
            Cursor::OtherRun => ResumePlan { gap: Some((GapReason::UnknownRun, all())), events: Vec::new() },
            Cursor::Ours(after) => {
                let r = self.collect(filters, after, upto);
                let gap = (!r.incomplete.is_empty()).then_some((GapReason::Evicted, r.incomplete));
                ResumePlan { gap, events: r.events }
            }
        }
    }

    /// Evicts the globally oldest events until `bytes` are freed or nothing is left (memory
    /// pressure). Returns the bytes freed.
    pub fn shed(&self, bytes: usize) -> usize {
        let mut g = self.inner.lock();
        let before = g.total_bytes;
        while before - g.total_bytes < bytes && g.evict_oldest() {}
        before - g.total_bytes
    }

    /// Whether the rings still hold every event of durable stream `stream` with a position
    /// after `after` on the topics `filters` select, among the events this run sequenced:
    /// no matching ring evicted one, no ring that held one was forgotten, and retention is on.
    /// With the run's start in that stream at or before `after`, this proves that a resume
    /// from `after` (even an id of another run) can be served from the rings alone.
    pub fn kept_durable_after(&self, filters: &[TopicFilter], stream: u16, after: crate::event::Pos) -> bool {
        if self.cfg.max_events_per_topic == 0 || self.cfg.max_total_bytes == 0 {
            return false;
        }
        let g = self.inner.lock();
        if g.forgotten_durable.get(&stream).is_some_and(|p| *p > after) {
            return false;
        }
        let lost = |r: &TopicRing| r.evicted_durable.is_some_and(|(s, p)| s == stream && p > after);
        filters.iter().all(|f| match f {
            TopicFilter::Exact(t) => !g.rings.get(t).is_some_and(lost),
            TopicFilter::Pattern(p) => !g.rings.iter().any(|(k, r)| p.matches(k) && lost(r)),
        })
    }

    /// Current totals.
    pub fn stats(&self) -> ReplayStats {
        let g = self.inner.lock();
        ReplayStats { topics: g.rings.len(), events: g.total_events, bytes: g.total_bytes }
    }
}

impl TopicRing {
    /// Drops the oldest event, remembering its sequence as evicted; returns the bytes freed.
    /// The caller keeps the store's totals and the heap of fronts.
    fn evict_front(&mut self) -> usize {
        let old = self.events.pop_front().expect("callers evict from non-empty rings");
        let freed = cost(&old);
        self.bytes -= freed;
        self.evicted_upto = old.id.seq;
        if old.durable.is_some() {
            self.evicted_durable = old.durable;
        }
        freed
    }
}

impl Inner {
    /// Evicts the globally oldest retained event; false if nothing is retained.
    fn evict_oldest(&mut self) -> bool {
        while let Some(Reverse((seq, topic))) = self.fronts.pop() {
            let Some(ring) = self.rings.get_mut(&topic) else { continue };
            if ring.events.front().map(|e| e.id.seq) != Some(seq) {
                continue; // stale entry
            }
            let freed = ring.evict_front();
            self.total_bytes -= freed;
            self.total_events -= 1;
            if let Some(front) = ring.events.front() {
                self.fronts.push(Reverse((front.id.seq, topic)));
            }
            return true;
        }
        false
    }

    /// Drops the ring whose newest event is oldest, to stay within `max_topics`.
    fn forget_quietest(&mut self) {
        let Some(victim) = self.rings.iter().min_by_key(|(_, r)| r.newest).map(|(k, _)| k.clone()) else { return };
        let ring = self.rings.remove(&victim).expect("found above");
        self.total_bytes -= ring.bytes;
        self.total_events -= ring.events.len();
        self.forgotten_upto = self.forgotten_upto.max(ring.newest);
        self.forget_durable(&ring);
    }

    /// Remembers the newest durable position a forgotten ring held.
    fn forget_durable(&mut self, ring: &TopicRing) {
        if let Some((stream, pos)) = ring.newest_durable {
            let p = self.forgotten_durable.entry(stream).or_default();
            *p = (*p).max(pos);
        }
    }

    fn rebuild_fronts(&mut self) {
        self.fronts =
            self.rings.iter().filter_map(|(k, r)| r.events.front().map(|e| Reverse((e.id.seq, k.clone())))).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::frame_event;
    use std::time::Instant;

    fn ev(seq: u64, topic: &str, payload: &[u8]) -> Arc<Event> {
        let id = EventId { run: 1, seq };
        Arc::new(Event {
            id,
            topic: topic.into(),
            frame: frame_event(id, None, payload).0,
            received_at: Instant::now(),
            policy: crate::config::SlowConsumerPolicy::Disconnect,
            trace: None,
            published_at_ms: None,
            durable: None,
        })
    }

    fn cfg(per_topic: usize, per_topic_bytes: usize, total: usize) -> ReplayConfig {
        ReplayConfig {
            max_events_per_topic: per_topic,
            max_bytes_per_topic: per_topic_bytes,
            max_total_bytes: total,
            max_topics: 100,
        }
    }

    fn f(s: &str) -> TopicFilter {
        TopicFilter::parse(s, 256).unwrap()
    }

    fn seqs(r: &Replay) -> Vec<u64> {
        r.events.iter().map(|e| e.id.seq).collect()
    }

    #[test]
    fn merges_topics_in_id_order() {
        let s = ReplayStore::new(cfg(10, 1 << 20, 1 << 20));
        for (seq, t) in [(1, "a"), (2, "b.x"), (3, "a"), (4, "c"), (5, "b.y")] {
            s.append(&ev(seq, t, b"x"));
        }
        let r = s.collect(&[f("a"), f("b.*")], 1, 5);
        assert_eq!(seqs(&r), [2, 3, 5]);
        assert!(r.incomplete.is_empty());
        assert_eq!(seqs(&s.collect(&[f("a"), f("b.*")], 0, 3)), [1, 2, 3], "bounded by upto");
        assert_eq!(seqs(&s.collect(&[f("b.*"), f("b.x")], 0, 5)), [2, 5], "a topic matched twice is replayed once");
    }

    #[test]
    fn evicts_by_count_and_reports_incomplete() {
        let s = ReplayStore::new(cfg(3, 1 << 20, 1 << 20));
        for seq in 1..=5 {
            s.append(&ev(seq, "a", b"x"));
        }
        let r = s.collect(&[f("a")], 1, 5);
        assert_eq!(seqs(&r), [3, 4, 5]);
        assert_eq!(r.incomplete, ["a"]);
        assert!(s.collect(&[f("a")], 2, 5).incomplete.is_empty(), "cursor at the eviction point is complete");
    }

    #[test]
    fn evicts_by_topic_bytes() {
        let one = cost(&ev(1, "a", &[b'x'; 100]));
        let s = ReplayStore::new(cfg(100, one * 2, 1 << 20));
        for seq in 1..=4 {
            s.append(&ev(seq, "a", &[b'x'; 100]));
        }
        assert_eq!(seqs(&s.collect(&[f("a")], 0, 4)), [3, 4]);
        assert_eq!(s.stats().bytes, one * 2);
    }

    #[test]
    fn global_budget_evicts_oldest_first_across_topics() {
        let one = cost(&ev(1, "a", b"x"));
        let s = ReplayStore::new(cfg(100, 1 << 20, one * 3));
        for (seq, t) in [(1, "a"), (2, "b"), (3, "a"), (4, "b"), (5, "c")] {
            s.append(&ev(seq, t, b"x"));
        }
        assert_eq!(s.stats().events, 3);
        let r = s.collect(&[f("a"), f("b"), f("c")], 0, 5);
        assert_eq!(seqs(&r), [3, 4, 5]);
        assert_eq!(r.incomplete, ["a", "b"]);
    }

    #[test]
    fn shed_frees_oldest_first() {
        let one = cost(&ev(1, "a", b"x"));
        let s = ReplayStore::new(cfg(100, 1 << 20, 1 << 20));
        for seq in 1..=4 {
            s.append(&ev(seq, if seq % 2 == 0 { "a" } else { "b" }, b"x"));
        }
        assert_eq!(s.shed(one + 1), 2 * one);
        assert_eq!(seqs(&s.collect(&[f("a"), f("b")], 0, 4)), [3, 4]);
        assert_eq!(s.shed(usize::MAX), 2 * one);
        assert_eq!(s.stats(), ReplayStats { topics: 2, events: 0, bytes: 0 }, "rings stay to remember evictions");
    }

    #[test]
    fn heap_stays_bounded_under_per_topic_churn() {
        let s = ReplayStore::new(cfg(2, 1 << 20, 1 << 30));
        for seq in 1..=10_000 {
            s.append(&ev(seq, if seq % 2 == 0 { "hot" } else { "warm" }, b"x"));
        }
        assert!(s.inner.lock().fronts.len() <= 2 * 2 + 64 + 1);
        assert_eq!(s.stats().events, 4);
    }

    #[test]
    fn cursors() {
        let id = |run, seq| EventId { run, seq }.to_string();
        assert_eq!(Cursor::parse(&id(7, 3), 7, 10), Cursor::Ours(3));
        assert_eq!(Cursor::parse(&id(7, 10), 7, 10), Cursor::Ours(10));
        assert_eq!(Cursor::parse(&id(7, 11), 7, 10), Cursor::Malformed);
        assert_eq!(Cursor::parse(&id(8, 3), 7, 10), Cursor::OtherRun);
        assert_eq!(Cursor::parse("junk", 7, 10), Cursor::Malformed);
        assert_eq!(Cursor::parse(&"1".repeat(200), 7, 10), Cursor::Malformed);
    }

    #[test]
    fn resume_plans() {
        let s = ReplayStore::new(cfg(2, 1 << 20, 1 << 20));
        for seq in 1..=4 {
            s.append(&ev(seq, "a", b"x"));
        }
        let p = s.resume(&[f("a")], Cursor::Ours(3), 4);
        assert_eq!((p.gap, p.events.len()), (None, 1));
        let p = s.resume(&[f("a")], Cursor::Ours(1), 4);
        assert_eq!(p.gap, Some((GapReason::Evicted, vec!["a".to_string()])));
        assert_eq!(p.events.len(), 2, "then what it has");
        let p = s.resume(&[f("a"), f("b.*")], Cursor::OtherRun, 4);
        assert_eq!(p.gap, Some((GapReason::UnknownRun, vec!["a".to_string(), "b.*".to_string()])));
        assert!(p.events.is_empty());
    }

    #[test]
    fn forgotten_topics_make_old_resumes_incomplete() {
        let mut c = cfg(10, 1 << 20, 1 << 20);
        c.max_topics = 2;
        let s = ReplayStore::new(c);
        s.append(&ev(1, "a", b"x"));
        s.append(&ev(2, "b", b"x"));
        s.append(&ev(3, "c", b"x")); // forgets "a"
        assert_eq!(s.stats().topics, 2);
        assert_eq!(s.collect(&[f("a")], 0, 3).incomplete, ["a"]);
        assert!(s.collect(&[f("a")], 1, 3).incomplete.is_empty());
    }
}
