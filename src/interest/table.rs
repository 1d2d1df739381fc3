//! One on-demand source's interest table, shared by the handler (which takes and releases
//! holds) and the source (which subscribes and unsubscribes upstream).
//!
//! Per distinct client filter: how many local streams hold it, whether the source has
//! subscribed it upstream, and the sequence from which it has been held without a break
//! (`held_since`: every event of the filter sequenced after it was received; a resume from an
//! older cursor cannot be proven complete, see `crate::resume`). One upstream subscription
//! serves every stream holding the filter.
//!
//! The handler never talks to the broker. A new filter is queued (`pending`, each filter at
//! most once) and the source is woken; the source takes work in batches ([`Batch`]): up to
//! `interest.batch` subscribes, confirmed by one round trip, then [`InterestTable::confirm`]
//! lets the waiting streams start. A filter whose last stream left goes on the `idle` list
//! (each at most once) and is released by the source once it has been idle for `linger`.
//! Both lists are bounded by the number of entries, which the [`Caps`] bound.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};

use super::caps::{CapRefusal, Caps};
use crate::metrics::Metrics;
use crate::topic::TopicFilter;

/// The sequencer's last assigned sequence, read when a subscription is confirmed.
pub type SeqClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// One source's table of held filters.
pub struct InterestTable {
    source: &'static str,
    inner: Mutex<Inner>,
    work: Notify,
    caps: Arc<Caps>,
    linger: Duration,
    clock: SeqClock,
    up: AtomicBool,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for InterestTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InterestTable").field("source", &self.source).finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Arc<str>, Entry>,
    /// Filters the source has yet to subscribe, oldest first.
    pending: VecDeque<Arc<str>>,
    /// Filters whose last stream left, with when (re-checked when taken).
    idle: VecDeque<(Arc<str>, Instant)>,
    /// Entries the source has subscribed upstream.
    subscribed: usize,
}

struct Entry {
    filter: TopicFilter,
    refs: usize,
    idle_since: Option<Instant>,
    on_idle_list: bool,
    subscribed: bool,
    held_since: Option<u64>,
    ready: watch::Sender<bool>,
    owner: IpAddr,
}

/// The work a source takes from the table in one round.
#[derive(Debug, Default)]
pub struct Batch {
    /// Filters to subscribe upstream; confirm them with [`InterestTable::confirm`].
    pub subscribe: Vec<(Arc<str>, TopicFilter)>,
    /// Filters whose linger passed: unsubscribe them.
    pub unsubscribe: Vec<(Arc<str>, TopicFilter)>,
}

impl Batch {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.subscribe.is_empty() && self.unsubscribe.is_empty()
    }
}

/// What a table knows of a filter, for a resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Not in the table.
    Absent,
    /// Held upstream without a break since this sequence (`None`: not confirmed yet).
    Since(Option<u64>),
}

/// A stream's hold on one table: its filters there, and the waits for their confirmation.
pub(super) type Taken = (Vec<Arc<str>>, Vec<watch::Receiver<bool>>);

impl InterestTable {
    /// An empty table for `source`; `clock` reads the sequencer's last sequence.
    pub fn new(
        source: &'static str,
        caps: Arc<Caps>,
        linger: Duration,
        clock: SeqClock,
        metrics: Arc<Metrics>,
    ) -> Self {
        InterestTable {
            source,
            inner: Mutex::new(Inner::default()),
            work: Notify::new(),
            caps,
            linger,
            clock,
            up: AtomicBool::new(false),
            metrics,
        }
    }

    /// The source's name (a metrics label).
    pub fn source(&self) -> &'static str {
        self.source
    }

    /// How long a filter stays subscribed after its last stream left.
    pub fn linger(&self) -> Duration {
        self.linger
    }

    /// Holds `filters` for one stream from `ip`: one more reference each, new filters queued for
    /// the source. All or nothing: refused when the new ones do not fit the caps. Returns the
    /// filters' keys and a wait for each that is not confirmed yet.
    pub(super) fn take(&self, filters: &[&TopicFilter], ip: IpAddr) -> Result<Taken, CapRefusal> {
        let mut g = self.inner.lock();
        let mut fresh: Vec<&str> = filters.iter().map(|f| f.as_str()).filter(|k| !g.entries.contains_key(*k)).collect();
        fresh.sort_unstable();
        fresh.dedup();
        self.caps.take(ip, fresh.len())?;
        let mut keys = Vec::with_capacity(filters.len());
        let mut waits = Vec::new();
        for f in filters {
            let key: Arc<str> = Arc::from(f.as_str());
            let inner = &mut *g;
            let e = inner.entries.entry(key.clone()).or_insert_with(|| {
                inner.pending.push_back(key.clone());
                Entry {
                    filter: (*f).clone(),
                    refs: 0,
                    idle_since: None,
                    on_idle_list: false,
                    subscribed: false,
                    held_since: None,
                    ready: watch::Sender::new(false),
                    owner: ip,
                }
            });
            e.refs += 1;
            e.idle_since = None;
            if !*e.ready.borrow() {
                waits.push(e.ready.subscribe());
            }
            keys.push(key);
        }
        let wake = !g.pending.is_empty();
        drop(g);
        if wake {
            self.work.notify_one();
        }
        Ok((keys, waits))
    }

    /// Lets go of one stream's `keys`; a filter whose last stream left starts its linger.
    pub(super) fn release(&self, keys: &[Arc<str>]) {
        let now = Instant::now();
        let mut g = self.inner.lock();
        let inner = &mut *g;
        for k in keys {
            let Some(e) = inner.entries.get_mut(k) else { continue };
            e.refs = e.refs.saturating_sub(1);
            if e.refs == 0 {
                e.idle_since = Some(now);
                if !e.on_idle_list {
                    e.on_idle_list = true;
                    inner.idle.push_back((k.clone(), now));
                }
            }
        }
    }

    /// Waits until there may be work: a new filter to subscribe.
    pub async fn work(&self) {
        self.work.notified().await;
    }

    /// Up to `max` unsubscribes (filters idle for `linger` by `now`, removed from the table)
    /// and up to `max` subscribes (filters not yet subscribed, now marked subscribed).
    pub fn take_batch(&self, max: usize, now: Instant) -> Batch {
        let mut batch = Batch::default();
        let mut g = self.inner.lock();
        let inner = &mut *g;
        while batch.unsubscribe.len() < max
            && let Some((key, since)) = inner.idle.front().cloned()
            && since + self.linger <= now
        {
            inner.idle.pop_front();
            let Some(e) = inner.entries.get_mut(&key) else { continue };
            match e.idle_since {
                None => e.on_idle_list = false,
                // Left again later: back in line with its new time.
                Some(t) if t != since => inner.idle.push_back((key, t)),
                Some(_) => {
                    let e = inner.entries.remove(&key).expect("entry just seen");
                    self.caps.give_back(e.owner);
                    if e.subscribed {
                        inner.subscribed -= 1;
                        batch.unsubscribe.push((key, e.filter));
                    }
                }
            }
        }
        while batch.subscribe.len() < max
            && let Some(key) = inner.pending.pop_front()
        {
            if let Some(e) = inner.entries.get_mut(&key)
                && !e.subscribed
            {
                e.subscribed = true;
                inner.subscribed += 1;
                batch.subscribe.push((key, e.filter.clone()));
            }
        }
        let more = !inner.pending.is_empty();
        let held = inner.subscribed;
        drop(g);
        if more {
            self.work.notify_one();
        }
        self.count(&batch, held);
        batch
    }

    fn count(&self, batch: &Batch, held: usize) {
        let label = crate::metrics::SourceLabel { source: self.source };
        let m = &self.metrics;
        m.upstream_subscribes.get_or_create(&label).inc_by(batch.subscribe.len() as u64);
        m.upstream_unsubscribes.get_or_create(&label).inc_by(batch.unsubscribe.len() as u64);
        m.upstream_subscriptions.get_or_create(&label).set(held as i64);
    }

    /// The broker confirmed `keys` (after a round trip): they are held from the sequencer's
    /// current sequence on, and the streams waiting for them may start.
    pub fn confirm(&self, keys: &[Arc<str>]) {
        let since = (self.clock)();
        let mut g = self.inner.lock();
        for k in keys {
            if let Some(e) = g.entries.get_mut(k) {
                e.held_since.get_or_insert(since);
                e.ready.send_replace(true);
            }
        }
    }

    /// Everything in the table, marked subscribed: what a new broker session (after a
    /// reconnect) subscribes before it reports healthy. Clears the pending list.
    pub fn resubscribe_all(&self) -> Vec<(Arc<str>, TopicFilter)> {
        let mut g = self.inner.lock();
        let inner = &mut *g;
        inner.pending.clear();
        let all: Vec<_> = inner
            .entries
            .iter_mut()
            .map(|(k, e)| {
                e.subscribed = true;
                (k.clone(), e.filter.clone())
            })
            .collect();
        inner.subscribed = all.len();
        drop(g);
        let label = crate::metrics::SourceLabel { source: self.source };
        self.metrics.upstream_subscribes.get_or_create(&label).inc_by(all.len() as u64);
        self.metrics.upstream_subscriptions.get_or_create(&label).set(all.len() as i64);
        all
    }

    /// The broker connection is up again and every subscribed filter re-established: they are
    /// held from now on (what was published during the outage is not).
    pub fn confirm_all_subscribed(&self) {
        let since = (self.clock)();
        let mut g = self.inner.lock();
        for e in g.entries.values_mut().filter(|e| e.subscribed) {
            e.held_since = Some(since);
            e.ready.send_replace(true);
        }
        drop(g);
        self.up.store(true, Ordering::Release);
    }

    /// The broker connection is lost: nothing is held from here until it is re-established.
    pub fn set_down(&self) {
        self.up.store(false, Ordering::Release);
        let mut g = self.inner.lock();
        for e in g.entries.values_mut() {
            e.held_since = None;
        }
    }

    /// Whether the source's broker connection is up (a stream does not wait for a broker that
    /// is down to confirm).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// What the table knows of filter `f`.
    pub fn held(&self, f: &str) -> Held {
        match self.inner.lock().entries.get(f) {
            None => Held::Absent,
            Some(e) => Held::Since(e.held_since),
        }
    }

    /// Distinct filters in the table (held or lingering).
    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    /// Whether the table holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(linger_ms: u64) -> InterestTable {
        let caps = Arc::new(Caps::new(10, 0));
        InterestTable::new("nats", caps, Duration::from_millis(linger_ms), Arc::new(|| 7), Arc::new(Metrics::new()))
    }

    fn f(s: &str) -> TopicFilter {
        TopicFilter::parse(s, 256).unwrap()
    }

    #[test]
    fn one_subscription_per_filter_released_after_linger() {
        let t = table(50);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let (a, f1) = (f("user.1"), f("user.2"));
        let (k1, w1) = t.take(&[&a], ip).unwrap();
        let (k2, _) = t.take(&[&a, &f1], ip).unwrap();
        let b = t.take_batch(100, Instant::now());
        assert_eq!(b.subscribe.len(), 2, "one per distinct filter");
        assert!(t.take_batch(100, Instant::now()).is_empty());
        t.confirm(&[k1[0].clone()]);
        assert!(*w1[0].borrow());
        assert_eq!(t.held("user.1"), Held::Since(Some(7)));
        t.release(&k1);
        t.release(&k2);
        assert!(t.take_batch(100, Instant::now()).is_empty(), "lingering");
        let later = Instant::now() + Duration::from_millis(60);
        let b = t.take_batch(100, later);
        assert_eq!(b.unsubscribe.len(), 2);
        assert_eq!(t.held("user.1"), Held::Absent);
    }

    #[test]
    fn a_return_within_linger_keeps_the_subscription() {
        let t = table(50);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = f("user.1");
        let (k, _) = t.take(&[&a], ip).unwrap();
        t.take_batch(10, Instant::now());
        t.release(&k);
        let (k2, waits) = t.take(&[&a], ip).unwrap();
        assert!(waits.len() == 1, "not confirmed yet");
        let b = t.take_batch(10, Instant::now() + Duration::from_millis(60));
        assert!(b.is_empty(), "held again: nothing to release or subscribe");
        t.release(&k2);
        let b = t.take_batch(10, Instant::now() + Duration::from_millis(200));
        assert_eq!(b.unsubscribe.len(), 1);
    }
}
