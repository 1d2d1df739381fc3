//! Who listens to what, and the fan-out of one event into every matching client queue.
//!
//! The registry is split into shards; each connection lives in one shard (round-robin), so a
//! connect or disconnect write-locks only its shard while the fan-out reads the others. Within
//! a shard, exact topics are a hash lookup and patterns are a subject index, a token trie
//! ([`sublist`]): the patterns an event's topic matches are found by walking its tokens, so
//! the cost per event follows the subscribers it reaches, not the patterns that exist.
//!
//! Each topic's and pattern's subscribers are a [`members`] list with O(1) add and remove (each
//! subscriber remembers its position in the list of each of its filters), so a connect or
//! disconnect storm on a topic with many subscribers stays linear in the storm, not quadratic.
//!
//! Fan-out is called by the single ingest sequencer, one event at a time, in id order; every
//! queue therefore receives its events in increasing id order, whatever the shard layout. A
//! connection that matches an event through several filters (`orders.1` and `orders.*`) gets it
//! once: each subscriber remembers the last sequence it was given.

mod members;
mod sublist;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use parking_lot::RwLock;
use slab::Slab;

use self::members::{Member, Members, NOT_LISTED};
use self::sublist::PatternIndex;
use crate::client::{ClientQueue, CloseReason, PushOutcome};
use crate::event::{Event, FanoutStats};
use crate::topic::TopicFilter;

/// The sharded topic → subscriber index.
#[derive(Debug)]
pub struct Registry {
    shards: Box<[RwLock<Shard>]>,
    next_shard: AtomicUsize,
    closed: AtomicBool,
}

#[derive(Debug, Default)]
struct Shard {
    subs: Slab<Sub>,
    exact: HashMap<Arc<str>, Members>,
    patterns: PatternIndex,
}

#[derive(Debug)]
struct Sub {
    queue: Arc<ClientQueue>,
    filters: Box<[TopicFilter]>,
    /// Per filter, this subscriber's position in the filter's member list ([`NOT_LISTED`] for
    /// a repeated filter), so removal finds it without a scan.
    slots: Box<[usize]>,
    /// Sequence of the last event queued for this subscriber (or covered by its replay);
    /// suppresses duplicates when several filters match one event and at the replay seam.
    last_seq: AtomicU64,
}

/// A registered subscriber; dropping it removes every registry entry of the connection.
#[derive(Debug)]
pub struct Subscription {
    registry: Arc<Registry>,
    shard: usize,
    key: usize,
}

impl Subscription {
    /// Resumes the stream in place after its queue spilled (`crate::client`, `spill-reread`):
    /// runs `start` under the shard's write lock, as [`Registry::subscribe_from`] does, so the
    /// re-read it plans and the live events queued from then on meet with no gap and no
    /// duplicate; `start` returns the sequence the re-read covers. Shutting down: the queue is
    /// closed cleanly first (the client resumes elsewhere from its last id).
    pub fn restart(&self, start: impl FnOnce(&[TopicFilter], &ClientQueue) -> u64) {
        let g = self.registry.shards[self.shard].write();
        let Some(sub) = g.subs.get(self.key) else { return };
        if self.registry.closed.load(Ordering::Acquire) {
            sub.queue.close(CloseReason::Shutdown);
        }
        let covered = start(&sub.filters, &sub.queue);
        sub.last_seq.fetch_max(covered, Ordering::Relaxed);
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.registry.remove(self.shard, self.key);
    }
}

impl Shard {
    /// Lists subscriber `key`'s filter number `filter`; returns its position in the list.
    fn list(&mut self, f: &TopicFilter, member: Member) -> usize {
        match f {
            TopicFilter::Exact(t) => self.exact.entry(t.clone()).or_default().add(member),
            TopicFilter::Pattern(p) => self.patterns.add(p.as_str(), member),
        }
    }

    /// Takes the entry at `pos` out of `f`'s list and updates the position of the entry moved
    /// into its place.
    fn unlist(&mut self, f: &TopicFilter, pos: usize) {
        let moved = match f {
            TopicFilter::Exact(t) => {
                let list = self.exact.get_mut(&**t);
                debug_assert!(list.is_some(), "exact topic {t} not indexed");
                let Some(list) = list else { return };
                let moved = list.remove(pos);
                if list.is_empty() {
                    self.exact.remove(&**t);
                }
                moved
            }
            TopicFilter::Pattern(p) => self.patterns.remove(p.as_str(), pos),
        };
        if let Some(m) = moved
            && let Some(sub) = self.subs.get_mut(m.key)
        {
            sub.slots[m.filter] = pos;
        }
    }
}

impl Registry {
    /// A registry with `shards` shards (at least one).
    pub fn new(shards: usize) -> Arc<Self> {
        Arc::new(Registry {
            shards: (0..shards.max(1)).map(|_| RwLock::new(Shard::default())).collect(),
            next_shard: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        })
    }

    /// Registers a queue under its filters. After [`Registry::close_all`] the queue is closed at
    /// once, so a connection accepted during shutdown cannot linger.
    pub fn subscribe(self: &Arc<Self>, filters: Vec<TopicFilter>, queue: Arc<ClientQueue>) -> Subscription {
        self.subscribe_from(filters, queue, |_, _| 0)
    }

    /// Registers a queue and, atomically with the registration, runs `start`, which may queue
    /// a backlog (replay) and returns the highest sequence it covered. Fan-out skips events up
    /// to that sequence for this subscriber, so the seam between backlog and live has no gap
    /// (whatever the fan-out had not yet delivered here is covered by `start`'s source) and no
    /// duplicate (whatever `start` covered is skipped live). `start` runs under the shard's
    /// write lock: keep it short and never take a registry lock inside it.
    pub fn subscribe_from(
        self: &Arc<Self>,
        filters: Vec<TopicFilter>,
        queue: Arc<ClientQueue>,
        start: impl FnOnce(&[TopicFilter], &ClientQueue) -> u64,
    ) -> Subscription {
        let shard = self.next_shard.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        let mut g = self.shards[shard].write();
        if self.closed.load(Ordering::Acquire) {
            queue.close(CloseReason::Shutdown);
        }
        let key = g.subs.vacant_entry().key();
        let filters: Box<[TopicFilter]> = filters.into_boxed_slice();
        let slots: Box<[usize]> =
            filters.iter().enumerate().map(|(filter, f)| g.list(f, Member { key, filter })).collect();
        let covered = start(&filters, &queue);
        let inserted = g.subs.insert(Sub { queue, filters, slots, last_seq: AtomicU64::new(covered) });
        debug_assert_eq!(inserted, key);
        Subscription { registry: self.clone(), shard, key }
    }

    fn remove(&self, shard: usize, key: usize) {
        let mut g = self.shards[shard].write();
        let Some(sub) = g.subs.try_remove(key) else {
            return;
        };
        for (f, &pos) in sub.filters.iter().zip(sub.slots.iter()) {
            if pos != NOT_LISTED {
                g.unlist(f, pos);
            }
        }
        // Give back the slab's and maps' memory after a connection storm has passed.
        if g.subs.is_empty() {
            g.subs.shrink_to_fit();
            g.exact.shrink_to_fit();
        }
    }

    /// Queues `event` for every subscriber whose filters match its topic. Allocation-free:
    /// a hash lookup for the exact topic and a walk of the subject index per shard.
    pub fn fan_out(&self, event: &Arc<Event>) -> FanoutStats {
        let mut stats = FanoutStats::default();
        let topic: &str = &event.topic;
        for shard in self.shards.iter() {
            let g = shard.read();
            if g.subs.is_empty() {
                continue;
            }
            if let Some(list) = g.exact.get(topic) {
                for k in list.keys() {
                    deliver(&g.subs[k], event, &mut stats);
                }
            }
            if !g.patterns.is_empty() {
                g.patterns.for_each_match(topic, |list| {
                    for k in list.keys() {
                        deliver(&g.subs[k], event, &mut stats);
                    }
                });
            }
        }
        stats
    }

    /// Calls `f` with every subscriber's queue (housekeeping: heartbeats, deadlines). Holds one
    /// shard's read lock at a time, so fan-out to other shards proceeds meanwhile.
    pub fn for_each_queue(&self, mut f: impl FnMut(&ClientQueue)) {
        for shard in self.shards.iter() {
            for (_, sub) in shard.read().subs.iter() {
                f(&sub.queue);
            }
        }
    }

    /// Calls `f` with every subscriber's filters and queue, for work that depends on what a
    /// stream asked for. Holds one shard's read lock at a time, like [`Registry::for_each_queue`].
    pub fn for_each_subscriber(&self, mut f: impl FnMut(&[TopicFilter], &ClientQueue)) {
        for shard in self.shards.iter() {
            for (_, sub) in shard.read().subs.iter() {
                f(&sub.filters, &sub.queue);
            }
        }
    }

    /// The queues of every registered stream, as of now; for ending them in batches.
    pub fn queues(&self) -> Vec<Arc<ClientQueue>> {
        let mut out = Vec::with_capacity(self.subscriber_count());
        for shard in self.shards.iter() {
            out.extend(shard.read().subs.iter().map(|(_, sub)| sub.queue.clone()));
        }
        out
    }

    /// Ends every stream cleanly and closes streams subscribed from now on.
    pub fn close_all(&self, reason: CloseReason) {
        self.closed.store(true, Ordering::Release);
        for shard in self.shards.iter() {
            for (_, sub) in shard.write().subs.iter() {
                sub.queue.close(reason);
            }
        }
    }

    /// Registered subscribers (one per open stream).
    pub fn subscriber_count(&self) -> usize {
        self.shards.iter().map(|s| s.read().subs.len()).sum()
    }

    /// Distinct exact topics and patterns with at least one subscriber, summed over shards.
    pub fn filter_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let g = s.read();
                g.exact.len() + g.patterns.distinct()
            })
            .sum()
    }

    /// Frames waiting in all subscriber queues together.
    pub fn queued_frames(&self) -> usize {
        self.shards.iter().map(|s| s.read().subs.iter().map(|(_, sub)| sub.queue.len()).sum::<usize>()).sum()
    }
}

fn deliver(sub: &Sub, event: &Arc<Event>, stats: &mut FanoutStats) {
    let seq = event.id.seq;
    if sub.last_seq.fetch_max(seq, Ordering::Relaxed) >= seq {
        return;
    }
    match sub.queue.push(event) {
        PushOutcome::Queued => stats.delivered += 1,
        PushOutcome::Overflowed => stats.overflowed += 1,
        PushOutcome::DroppedOldest => {
            stats.delivered += 1;
            stats.dropped += 1;
        }
        PushOutcome::Conflated => {
            stats.delivered += 1;
            stats.conflated += 1;
        }
        // A resuming stream's spill: re-read later by its in-place resume, not delivered now.
        PushOutcome::Closed | PushOutcome::Spilled => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ConnHandle;
    use crate::config::SlowConsumerPolicy;
    use crate::event::{EventId, frame_event};
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    use std::time::Instant;

    fn ev(seq: u64, topic: &str) -> Arc<Event> {
        let id = EventId { run: 1, seq };
        let frame = frame_event(id, None, b"x").0;
        Arc::new(Event {
            id,
            topic: topic.into(),
            frame,
            received_at: Instant::now(),
            policy: SlowConsumerPolicy::Disconnect,
            trace: None,
            published_at_ms: None,
            durable: None,
        })
    }

    fn q() -> Arc<ClientQueue> {
        Arc::new(ClientQueue::new(16, ConnHandle::default(), None))
    }

    fn f(s: &str) -> TopicFilter {
        TopicFilter::parse(s, 256).unwrap()
    }

    #[test]
    fn exact_and_pattern_deliver_once() {
        let r = Registry::new(4);
        let a = q();
        let _s = r.subscribe(vec![f("orders.1"), f("orders.*"), f("orders.>")], a.clone());
        let st = r.fan_out(&ev(1, "orders.1"));
        assert_eq!(st.delivered, 1);
        assert_eq!(a.len(), 1);
        r.fan_out(&ev(2, "orders.2"));
        r.fan_out(&ev(3, "other"));
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn repeated_filters_are_listed_once_and_released() {
        let r = Registry::new(1);
        let a = q();
        let s = r.subscribe(vec![f("x"), f("p.*"), f("x"), f("p.*")], a.clone());
        assert_eq!(r.filter_count(), 2);
        assert_eq!(r.fan_out(&ev(1, "x")).delivered, 1);
        assert_eq!(r.fan_out(&ev(2, "p.1")).delivered, 1);
        drop(s);
        assert_eq!(r.filter_count(), 0);
    }

    #[test]
    fn drop_releases_every_entry() {
        let r = Registry::new(2);
        let subs: Vec<_> = (0..10).map(|i| r.subscribe(vec![f(&format!("t.{i}")), f("t.*")], q())).collect();
        assert_eq!(r.subscriber_count(), 10);
        assert_eq!(r.filter_count(), 10 + 2); // 10 exact topics, "t.*" once per shard
        drop(subs);
        assert_eq!(r.subscriber_count(), 0);
        assert_eq!(r.filter_count(), 0);
    }

    /// Subscribers leave in random order (each removal moves another entry of the same lists);
    /// after every step, each remaining subscriber gets each event exactly once.
    #[test]
    fn random_removals_keep_every_list_right() {
        let mut rng = StdRng::seed_from_u64(3);
        let r = Registry::new(2);
        let filters = ["hot", "hot.*", "hot.>", "*.a", "hot.a"];
        let mut subs: Vec<(Arc<ClientQueue>, Subscription)> = (0..200)
            .map(|_| {
                let mut fs: Vec<TopicFilter> = filters.iter().filter(|_| rng.random_bool(0.5)).map(|s| f(s)).collect();
                fs.push(f("hot.a"));
                let queue = Arc::new(ClientQueue::new(4096, ConnHandle::default(), None));
                (queue.clone(), r.subscribe(fs, queue))
            })
            .collect();
        subs.shuffle(&mut rng);
        let mut seq = 0;
        while !subs.is_empty() {
            for _ in 0..rng.random_range(1..20).min(subs.len()) {
                subs.pop();
            }
            seq += 1;
            let st = r.fan_out(&ev(seq, "hot.a"));
            assert_eq!(st.delivered, subs.len(), "one delivery per remaining subscriber");
            for (queue, _) in &subs {
                assert_eq!(queue.len(), seq as usize, "each event exactly once");
            }
        }
        assert_eq!(r.filter_count(), 0);
    }

    #[test]
    fn for_each_subscriber_sees_filters() {
        let r = Registry::new(2);
        let _a = r.subscribe(vec![f("a"), f("b.*")], q());
        let _b = r.subscribe(vec![f("c")], q());
        let mut seen = Vec::new();
        r.for_each_subscriber(|fs, _| seen.push(fs.iter().map(|f| f.as_str().to_owned()).collect::<Vec<_>>()));
        seen.sort();
        assert_eq!(seen, vec![vec!["a".to_owned(), "b.*".to_owned()], vec!["c".to_owned()]]);
    }

    #[test]
    fn subscribe_after_close_all_is_closed() {
        let r = Registry::new(2);
        r.close_all(CloseReason::Shutdown);
        let a = q();
        let _s = r.subscribe(vec![f("x")], a.clone());
        assert_eq!(a.push(&ev(1, "x")), PushOutcome::Closed);
    }
}
