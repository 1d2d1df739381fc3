//! The replay store: the recent events of every bridged topic, held whether or not anyone was
//! subscribed, so a client that reconnects with `Last-Event-ID` gets what it missed.
//!
//! One [`TopicRing`] per topic, bounded by event count and by bytes, and one global byte budget
//! across all rings; when the budget is exceeded the globally oldest events go first (a heap of
//! ring fronts finds them). Each ring remembers the highest sequence it evicted, which is what
//! makes a resume provable: a client whose cursor is at or after a topic's `evicted_upto` can
//! be given everything it missed on that topic. The rings hold the same `Arc<Event>` (and so
//! the same frame `Bytes`) that was fanned out: no copies.
//!
//! At `replay.max_topics` a new topic forgets the ring used least recently, found in O(1)
//! through the use log (`order.rs`); the store remembers up to where forgotten rings reached,
//! and a ring created again for such a topic starts with that as its eviction record. With
//! replay off (`max_events_per_topic = 0` or `max_total_bytes = 0`) nothing is retained and
//! every resume from before the newest sequence is reported incomplete.
//!
//! Resumes read the rings in bounded steps (`collect.rs`), taking the store's lock for one step
//! at a time, so the sequencer's `append` never waits behind a long scan; a pattern resume from
//! a recent cursor walks the use log from the cursor on, visiting only the rings written since.

pub mod collect;
mod order;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::hash::BuildHasher;
use std::sync::Arc;

use parking_lot::Mutex;
use slab::Slab;

use crate::config::ReplayConfig;
use crate::event::{Event, EventId};
use crate::outages::OutageLog;
use crate::topic::TopicFilter;

use order::UseLog;

/// Bookkeeping bytes charged per retained event on top of its frame (the `Event`, its `Arc`,
/// and the ring slot), so the budget tracks real memory, not just payloads.
pub const PER_EVENT_OVERHEAD: usize = std::mem::size_of::<Event>() + 2 * std::mem::size_of::<usize>() + 8;

/// Buckets of the forgotten-ring record: a forgotten ring raises its topic's bucket to its
/// newest sequence, so a topic that comes back (or a resume on a topic without a ring) is
/// judged against its bucket, not against every ring ever forgotten. Fixed size: 32 KiB.
const FORGOTTEN_BUCKETS: usize = 4096;

/// All topics' rings and the global budget.
#[derive(Debug)]
pub struct ReplayStore {
    inner: Mutex<Inner>,
    cfg: ReplayConfig,
    /// Where the live sources lost messages (outages, client drops): a resume from before one
    /// gets a `source-outage`/`source-dropped` gap. Held here so every resume path reaches it.
    pub outages: OutageLog,
    /// Replay turned off by configuration: nothing is retained.
    off: bool,
}

#[derive(Debug)]
struct Inner {
    /// Topic → ring slot, for the append path.
    index: HashMap<Arc<str>, usize>,
    /// Topic → ring slot in name order, for resumes: a pattern's literal prefix is a key range,
    /// and a scan continues after the last name it read.
    by_name: BTreeMap<Arc<str>, usize>,
    rings: Slab<TopicRing>,
    /// Slots by the sequence of their last append, least recent first: the front is forgotten
    /// first, and a resume walks it from its cursor on.
    order: UseLog,
    /// Ring fronts by sequence, oldest first; entries go stale when a front is popped and are
    /// skipped (and the heap rebuilt when stale entries dominate).
    fronts: BinaryHeap<Reverse<(u64, usize)>>,
    total_bytes: usize,
    total_events: usize,
    /// Highest sequence ever evicted from a ring that was then forgotten entirely (beyond
    /// `max_topics`); a resume from before it cannot be proven for topics without a ring.
    forgotten_upto: u64,
    /// The same per bucket of topic hashes (see [`FORGOTTEN_BUCKETS`]).
    forgotten: Box<[u64]>,
    /// Highest sequence evicted from any ring: a cursor at or after it (and `forgotten_upto`)
    /// is complete for every filter, which the durable plan checks without a scan.
    evicted_high: u64,
    /// Per durable stream, the highest position a forgotten ring had retained (see
    /// [`ReplayStore::kept_durable_after`]).
    forgotten_durable: HashMap<u16, crate::event::Pos>,
}

/// One topic's retained events, oldest first.
#[derive(Debug)]
struct TopicRing {
    topic: Arc<str>,
    events: std::collections::VecDeque<Arc<Event>>,
    bytes: usize,
    /// Highest sequence evicted from this ring (0: nothing evicted yet), or, for a ring made
    /// for a topic whose earlier ring was forgotten, up to where that one may have reached.
    evicted_upto: u64,
    /// Sequence of the newest event ever appended.
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
        let off = cfg.max_events_per_topic == 0 || cfg.max_total_bytes == 0;
        let inner = Inner {
            index: HashMap::new(),
            by_name: BTreeMap::new(),
            rings: Slab::new(),
            order: UseLog::default(),
            fronts: BinaryHeap::new(),
            total_bytes: 0,
            total_events: 0,
            forgotten_upto: 0,
            forgotten: vec![0; FORGOTTEN_BUCKETS].into_boxed_slice(),
            evicted_high: 0,
            forgotten_durable: HashMap::new(),
        };
        ReplayStore { inner: Mutex::new(inner), cfg, outages: OutageLog::default(), off }
    }

    /// Whether replay is turned off (nothing is retained; resumes from before the newest
    /// sequence are incomplete).
    pub fn is_off(&self) -> bool {
        self.off
    }

    /// Retains `event`, evicting by the per-topic and global bounds. Called by the sequencer
    /// before it publishes the event's sequence (the resume check relies on that order).
    pub fn append(&self, event: &Arc<Event>) {
        if self.off {
            return;
        }
        let mut g = self.inner.lock();
        let inner = &mut *g;
        let c = cost(event);
        let slot = match inner.index.get(&event.topic) {
            Some(&slot) => slot,
            None => {
                if inner.rings.len() >= self.cfg.max_topics {
                    inner.forget_quietest();
                }
                inner.create(&event.topic)
            }
        };
        let ring = &mut inner.rings[slot];
        if ring.events.is_empty() {
            inner.fronts.push(Reverse((event.id.seq, slot)));
        }
        ring.events.push_back(event.clone());
        ring.bytes += c;
        ring.newest = event.id.seq;
        inner.order.push(event.id.seq, slot);
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
            inner.evicted_high = inner.evicted_high.max(ring.evicted_upto);
            inner.total_bytes -= freed;
            inner.total_events -= 1;
            popped = true;
        }
        if popped && let Some(front) = ring.events.front() {
            inner.fronts.push(Reverse((front.id.seq, slot)));
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
        let rings = &inner.rings;
        inner.order.compact(rings.len(), |seq, slot| is_live(rings, seq, slot));
    }

    /// Plans a resume for `filters` from `cursor`, covering sequences up to `upto` (the newest
    /// sequence published when the subscription was registered), in one go.
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
            TopicFilter::Exact(t) => !g.index.get(t).is_some_and(|&slot| lost(&g.rings[slot])),
            TopicFilter::Pattern(p) => !g.rings.iter().any(|(_, r)| p.matches(&r.topic) && lost(r)),
        })
    }

    /// Current totals.
    pub fn stats(&self) -> ReplayStats {
        let g = self.inner.lock();
        ReplayStats { topics: g.rings.len(), events: g.total_events, bytes: g.total_bytes }
    }
}

/// Rings [`ReplayStore::covers`] looks at, at most, for the patterns of one resume (a few tens
/// of microseconds under the lock); past it the answer is "not proven".
pub const COVERS_SCAN: usize = 1024;

/// Whether the use log's entry `(seq, slot)` is its ring's last append (not stale).
fn is_live(rings: &Slab<TopicRing>, seq: u64, slot: usize) -> bool {
    rings.get(slot).is_some_and(|r| r.newest == seq)
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
    /// A new, empty ring for `topic`, which has none; it inherits what a forgotten ring of the
    /// same bucket may have held as its eviction record.
    fn create(&mut self, topic: &Arc<str>) -> usize {
        let evicted_upto = self.forgotten_floor(topic);
        let slot = self.rings.insert(TopicRing {
            topic: topic.clone(),
            events: Default::default(),
            bytes: 0,
            evicted_upto,
            newest: 0,
            evicted_durable: None,
            newest_durable: None,
        });
        self.index.insert(topic.clone(), slot);
        self.by_name.insert(topic.clone(), slot);
        slot
    }

    /// The bucket of `topic` in the forgotten-ring record.
    fn bucket(&self, topic: &str) -> usize {
        (self.index.hasher().hash_one(topic) as usize) % FORGOTTEN_BUCKETS
    }

    /// Up to where a forgotten ring of `topic` may have reached (0: none was forgotten).
    fn forgotten_floor(&self, topic: &str) -> u64 {
        if self.forgotten_upto == 0 {
            return 0;
        }
        self.forgotten[self.bucket(topic)]
    }

    /// Evicts the globally oldest retained event; false if nothing is retained.
    fn evict_oldest(&mut self) -> bool {
        while let Some(Reverse((seq, slot))) = self.fronts.pop() {
            let Some(ring) = self.rings.get_mut(slot) else { continue };
            if ring.events.front().map(|e| e.id.seq) != Some(seq) {
                continue; // stale entry (sequences are unique, so a reused slot cannot match)
            }
            let freed = ring.evict_front();
            self.evicted_high = self.evicted_high.max(ring.evicted_upto);
            self.total_bytes -= freed;
            self.total_events -= 1;
            if let Some(front) = ring.events.front() {
                self.fronts.push(Reverse((front.id.seq, slot)));
            }
            return true;
        }
        false
    }

    /// Drops the ring used least recently (whose newest event is oldest), to stay within
    /// `max_topics`: O(1) amortised through the use log, plus the name index's O(log n).
    fn forget_quietest(&mut self) {
        let rings = &self.rings;
        let Some(slot) = self.order.pop_front(|seq, slot| is_live(rings, seq, slot)) else { return };
        let ring = self.rings.remove(slot);
        self.index.remove(&ring.topic);
        self.by_name.remove(&ring.topic);
        self.total_bytes -= ring.bytes;
        self.total_events -= ring.events.len();
        let reached = ring.newest.max(ring.evicted_upto);
        self.forgotten_upto = self.forgotten_upto.max(reached);
        let b = self.bucket(&ring.topic);
        self.forgotten[b] = self.forgotten[b].max(reached);
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
        self.fronts = self.rings.iter().filter_map(|(k, r)| r.events.front().map(|e| Reverse((e.id.seq, k)))).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::collect::Collection;
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

    #[test]
    fn forgets_the_ring_used_least_recently() {
        let mut c = cfg(10, 1 << 20, 1 << 20);
        c.max_topics = 2;
        let s = ReplayStore::new(c);
        s.append(&ev(1, "a", b"x"));
        s.append(&ev(2, "b", b"x"));
        s.append(&ev(3, "a", b"x")); // "b" is now the quietest
        s.append(&ev(4, "c", b"x"));
        let g = s.inner.lock();
        let mut topics: Vec<&str> = g.index.keys().map(|k| &**k).collect();
        topics.sort();
        assert_eq!(topics, ["a", "c"]);
        assert_eq!(g.by_name.len(), 2);
        assert_eq!(g.forgotten_upto, 2);
    }

    #[test]
    fn a_forgotten_ring_that_comes_back_keeps_its_eviction_record() {
        let mut c = cfg(10, 1 << 20, 1 << 20);
        c.max_topics = 2;
        let s = ReplayStore::new(c);
        s.append(&ev(1, "a", b"x"));
        s.append(&ev(2, "b", b"x"));
        s.append(&ev(3, "c", b"x")); // forgets "a" (and event 1 with it)
        s.append(&ev(4, "a", b"x")); // "a" comes back (forgets "b")
        let r = s.collect(&[f("a")], 0, 4);
        assert_eq!(seqs(&r), [4]);
        assert_eq!(r.incomplete, ["a"], "event 1 of \"a\" is gone: the resume must say so");
        assert!(!s.covers(&[f("a")], 0, 4));
        let r = s.collect(&[f("a")], 1, 4);
        assert!(r.incomplete.is_empty(), "a cursor after what was forgotten is complete: {r:?}");
        assert!(s.covers(&[f("a")], 2, 4));
    }

    #[test]
    fn replay_off_reports_every_resume_from_before_the_newest_as_incomplete() {
        for c in [cfg(0, 1 << 20, 1 << 20), cfg(10, 1 << 20, 0)] {
            let s = ReplayStore::new(c);
            assert!(s.is_off());
            for seq in 1..=3 {
                s.append(&ev(seq, "a", b"x"));
            }
            assert_eq!(s.stats(), ReplayStats::default());
            let r = s.collect(&[f("a"), f("b.*")], 1, 3);
            assert!(r.events.is_empty());
            assert_eq!(r.incomplete, ["a", "b.*"]);
            assert!(s.collect(&[f("a")], 3, 3).incomplete.is_empty(), "nothing after the newest: complete");
            assert!(!s.covers(&[f("a")], 1, 3));
            assert!(s.covers(&[f("a")], 3, 3));
            let p = s.resume(&[f("a")], Cursor::Ours(2), 3);
            assert_eq!(p.gap, Some((GapReason::Evicted, vec!["a".to_string()])));
        }
    }

    #[test]
    fn a_stepped_read_reports_evictions_and_forgetting_between_steps() {
        let mut c = cfg(2, 1 << 20, 1 << 20);
        c.max_topics = 4;
        let s = ReplayStore::new(c);
        for (seq, t) in [(1, "p.a"), (2, "p.b"), (3, "p.c"), (4, "q")] {
            s.append(&ev(seq, t, b"x"));
        }
        // One ring per step: "p.a" is read, then "p.c" loses event 3 before the scan gets there.
        let mut c = Collection::new(&[f("p.*")], 0, 4);
        assert!(!s.collect_step(&mut c, 1));
        s.append(&ev(5, "p.c", b"x"));
        s.append(&ev(6, "p.c", b"x")); // evicts 3
        while !s.collect_step(&mut c, 1) {}
        let r = c.finish();
        assert_eq!(seqs(&r), [1, 2], "bounded by upto; event 3 was evicted");
        assert_eq!(r.incomplete, ["p.c"]);

        // A ring forgotten before the scan reaches it makes the whole read incomplete.
        let mut c = Collection::new(&[f("p.*")], 0, 6);
        assert!(!s.collect_step(&mut c, 1)); // reads "p.a"
        for (seq, t) in [(7, "r"), (8, "s"), (9, "t")] {
            s.append(&ev(seq, t, b"x")); // forgets "p.a", "p.b", "q"
        }
        while !s.collect_step(&mut c, 1) {}
        let r = c.finish();
        assert_eq!(seqs(&r), [1, 5, 6]);
        assert_eq!(r.incomplete, ["p.*", "p.c"], "p.b's event 2 went with its ring; p.c evicted 3");
    }

    #[test]
    fn a_stepped_read_equals_a_read_in_one_go() {
        let s = ReplayStore::new(cfg(3, 1 << 20, 1 << 20));
        let topics = ["a.1", "a.2", "b.1", "a.3.x", "c", "a.2"];
        for seq in 1..=60u64 {
            s.append(&ev(seq, topics[seq as usize % topics.len()], b"x"));
        }
        for filters in [vec![f("a.*")], vec![f("a.>"), f("c")], vec![f("*.1"), f("a.2")], vec![f("c"), f("a.1")]] {
            let whole = s.collect(&filters, 40, 58);
            let mut c = Collection::new(&filters, 40, 58);
            while !s.collect_step(&mut c, 1) {}
            let stepped = c.finish();
            assert_eq!((seqs(&stepped), &stepped.incomplete), (seqs(&whole), &whole.incomplete), "{filters:?}");
        }
    }

    #[test]
    fn covers_is_a_sound_shortcut() {
        let s = ReplayStore::new(cfg(2, 1 << 20, 1 << 20));
        for (seq, t) in [(1, "a.x"), (2, "a.x"), (3, "a.x"), (4, "b.y")] {
            s.append(&ev(seq, t, b"x")); // "a.x" evicts 1
        }
        assert!(s.covers(&[f("b.*")], 0, 4), "nothing evicted under b.");
        assert!(!s.covers(&[f("a.*")], 0, 4));
        assert!(!s.covers(&[f("*.x")], 0, 4));
        assert!(s.covers(&[f("a.*")], 1, 4));
        assert!(s.covers(&[f("never")], 0, 4));
        for (filters, after) in [(vec![f("a.*")], 0), (vec![f("b.*")], 0), (vec![f(">")], 1)] {
            assert_eq!(s.covers(&filters, after, 4), s.collect(&filters, after, 4).incomplete.is_empty());
        }
    }
}
