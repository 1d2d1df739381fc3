//! Subject-index benchmark: what one event's fan-out costs when many patterns exist that do not
//! match it, and what a subscribe/unsubscribe storm on a crowded topic costs (issue 14, items 1
//! and 3). Plain `main` (no divan): it prints one table per question.
//!
//! 1. **Fan-out per event**: 100 subscribers on the exact topic `bench.hot`, each event is
//!    delivered to all of them; beside them, idle streams hold 0, 1,000 or 100,000 distinct
//!    filters that never match `bench.hot` (64 per stream, as a hostile client would open them:
//!    `idle.N.>`, `*.idleN`, `bench.*.xN`, `bench.hot.N`, the last three sharing tokens with the
//!    hot topic so the index must look past its first level). `bench.hot.N` has no wildcard
//!    token, so it is an exact topic: three in four of the idle filters are patterns. A fourth row has 100,000
//!    subscribers on 100,000 distinct exact topics, each event matching one of them. Printed:
//!    time per event for the fan-out alone (the subscribers' queues are drained between
//!    batches, untimed) and heap allocations per event in the fan-out (target 0).
//! 2. **Churn**: 50,000 subscribers on one topic, then 10,000 cycles of one new subscriber in
//!    and the oldest out, with 16 shards (the daemon's default) and with 1 (the whole topic in
//!    one shard's list). Printed: total time and time per cycle.
//!
//! Run: `cargo bench --bench subject_index` (docs/benchmarks.md, "Subject index").
//! `cargo test --bench subject_index` runs a reduced version in a debug build (a smoke test).

use std::alloc::{GlobalAlloc, Layout};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sse_bridge::client::{ClientQueue, ConnHandle, Next};
use sse_bridge::config::SlowConsumerPolicy;
use sse_bridge::event::{Event, EventId, frame_event};
use sse_bridge::registry::{Registry, Subscription};
use sse_bridge::topic::TopicFilter;

/// Counts allocations around jemalloc (the daemon's allocator), so the report can show that
/// the fan-out allocates nothing per event.
struct Counting<A>(A);

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the wrapped allocator; we only count.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { self.0.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { self.0.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { self.0.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting<tikv_jemallocator::Jemalloc> = Counting(tikv_jemallocator::Jemalloc);

/// The daemon's defaults: shards and queue capacity.
const SHARDS: usize = 16;
const QUEUE_CAPACITY: usize = 1024;
/// Subscribers every hot event is delivered to.
const HOT_SUBSCRIBERS: usize = 100;
const HOT_TOPIC: &str = "bench.hot";
/// Distinct patterns per idle stream (the hostile client).
const PATTERNS_PER_STREAM: usize = 64;
/// Events per timed batch: under the 64 frames a queue keeps its storage for, so draining
/// between batches never makes a queue give its storage back and allocate it again.
const BATCH: usize = 32;

/// Sizes of the run: full under `cargo bench`, reduced under `cargo test --bench`.
struct Sizes {
    patterns: [usize; 3],
    exact_topics: usize,
    measure_for: Duration,
    churn_subscribers: usize,
    churn_cycles: usize,
}

fn parse(s: &str) -> TopicFilter {
    TopicFilter::parse(s, 256).expect("valid filter")
}

fn queue() -> Arc<ClientQueue> {
    Arc::new(ClientQueue::new(QUEUE_CAPACITY, ConnHandle::default(), None))
}

/// The `i`-th distinct pattern that never matches `bench.hot` (nor `exact.N`).
fn idle_pattern(i: usize) -> String {
    match i % 4 {
        0 => format!("idle.{i}.>"),
        1 => format!("*.idle{i}"),
        2 => format!("bench.*.x{i}"),
        // A wildcard token, so it is a pattern (`bench.hot.N` alone would be an exact topic).
        _ => format!("bench.hot.{i}.*"),
    }
}

fn event(seq: u64, topic: &Arc<str>, frame: &Bytes) -> Arc<Event> {
    Arc::new(Event {
        id: EventId { run: 0x5eed_0000_0003, seq },
        topic: topic.clone(),
        frame: frame.clone(),
        received_at: Instant::now(),
        policy: SlowConsumerPolicy::Disconnect,
        trace: None,
        published_at_ms: None,
        durable: None,
    })
}

fn drain(queues: &[Arc<ClientQueue>]) -> usize {
    let mut cx = Context::from_waker(Waker::noop());
    let mut n = 0;
    for q in queues {
        while let Poll::Ready(Next::Frame { frame, .. }) = q.poll_next(&mut cx) {
            std::hint::black_box(frame);
            n += 1;
        }
    }
    n
}

/// One fan-out scenario: the registry, the queues that receive, the topics events go to.
struct Scenario {
    registry: Arc<Registry>,
    receivers: Vec<Arc<ClientQueue>>,
    _subs: Vec<Subscription>,
    topics: Vec<Arc<str>>,
    expected_per_event: usize,
}

impl Scenario {
    /// `HOT_SUBSCRIBERS` on `bench.hot`, and idle streams holding `patterns` distinct patterns.
    fn idle_patterns(patterns: usize) -> Self {
        let registry = Registry::new(SHARDS);
        let mut subs = Vec::new();
        let receivers: Vec<_> = (0..HOT_SUBSCRIBERS).map(|_| queue()).collect();
        for q in &receivers {
            subs.push(registry.subscribe(vec![parse(HOT_TOPIC)], q.clone()));
        }
        let mut next = 0;
        while next < patterns {
            let n = PATTERNS_PER_STREAM.min(patterns - next);
            let filters = (next..next + n).map(|i| parse(&idle_pattern(i))).collect();
            subs.push(registry.subscribe(filters, queue()));
            next += n;
        }
        Scenario {
            registry,
            receivers,
            _subs: subs,
            topics: vec![Arc::from(HOT_TOPIC)],
            expected_per_event: HOT_SUBSCRIBERS,
        }
    }

    /// One subscriber on each of `n` exact topics; events cycle through the topics.
    fn exact_topics(n: usize) -> Self {
        let registry = Registry::new(SHARDS);
        let receivers: Vec<_> = (0..n).map(|_| queue()).collect();
        let topics: Vec<Arc<str>> = (0..n).map(|i| Arc::from(format!("exact.{i}"))).collect();
        let subs = receivers
            .iter()
            .zip(&topics)
            .map(|(q, t)| registry.subscribe(vec![TopicFilter::Exact(t.clone())], q.clone()))
            .collect();
        Scenario { registry, receivers, _subs: subs, topics, expected_per_event: 1 }
    }
}

/// Fan-out time per event (median over batches) and allocations per event.
fn measure(s: &Scenario, measure_for: Duration) -> (Duration, f64) {
    let frame = frame_event(EventId { run: 0x5eed_0000_0003, seq: 1 }, None, &[b'x'; 256]).0;
    // Events are built before the timer starts: their Arc is the ingest's allocation, not the
    // fan-out's.
    let mut seq = 1u64;
    let mut next_topic = 0usize;
    let mut batch_times = Vec::new();
    let mut allocs = 0u64;
    let mut events = 0u64;
    let mut started = Instant::now();
    // Untimed batches first, until every receiving queue has had an event: a queue allocates
    // its storage on its first push and keeps it.
    let mut warm = s.topics.len().div_ceil(BATCH);
    while warm > 0 || (started.elapsed() < measure_for && batch_times.len() < 20_000) || batch_times.len() < 3 {
        let batch: Vec<Arc<Event>> = (0..BATCH)
            .map(|_| {
                seq += 1;
                let t = &s.topics[next_topic % s.topics.len()];
                next_topic += 1;
                event(seq, t, &frame)
            })
            .collect();
        let a0 = ALLOCS.load(Ordering::Relaxed);
        let t0 = Instant::now();
        let mut delivered = 0;
        for ev in &batch {
            delivered += s.registry.fan_out(ev).delivered;
        }
        let elapsed = t0.elapsed();
        let a1 = ALLOCS.load(Ordering::Relaxed);
        assert_eq!(delivered, BATCH * s.expected_per_event, "every event reaches its subscribers");
        drop(batch);
        if s.topics.len() > 1 {
            // Few queues hold anything: drain only those that can (one per topic sent to).
            let first = (next_topic - BATCH) % s.receivers.len();
            for i in 0..BATCH {
                drain(std::slice::from_ref(&s.receivers[(first + i) % s.receivers.len()]));
            }
        } else {
            drain(&s.receivers);
        }
        if warm > 0 {
            warm -= 1;
            started = Instant::now();
            continue;
        }
        batch_times.push(elapsed / BATCH as u32);
        allocs += a1 - a0;
        events += BATCH as u64;
    }
    batch_times.sort();
    (batch_times[batch_times.len() / 2], allocs as f64 / events as f64)
}

fn fanout_report(sizes: &Sizes) {
    println!(
        "Fan-out per event: {HOT_SUBSCRIBERS} subscribers on {HOT_TOPIC:?}, idle streams of {PATTERNS_PER_STREAM} \
         distinct non-matching patterns each; {SHARDS} shards; median of {BATCH}-event batches"
    );
    println!("{:<44} {:>14} {:>12} {:>14}", "scenario", "time/event", "vs none", "allocs/event");
    let mut none = None;
    for &n in &sizes.patterns {
        let s = Scenario::idle_patterns(n);
        let (t, a) = measure(&s, sizes.measure_for);
        let base = *none.get_or_insert(t);
        let label = format!("{n} distinct non-matching patterns");
        println!("{label:<44} {:>11.0} ns {:>11.2}× {a:>14.3}", t.as_nanos(), t.as_secs_f64() / base.as_secs_f64());
    }
    let s = Scenario::exact_topics(sizes.exact_topics);
    let (t, a) = measure(&s, sizes.measure_for);
    let base = none.expect("the none row ran first");
    let label = format!("{} matching exact topics (1 sub each)", sizes.exact_topics);
    println!("{label:<44} {:>11.0} ns {:>11.2}× {a:>14.3}", t.as_nanos(), t.as_secs_f64() / base.as_secs_f64());
}

/// `subscribers` on one topic, then `cycles` of one in, oldest out.
fn churn(shards: usize, subscribers: usize, cycles: usize) -> Duration {
    let registry = Registry::new(shards);
    let topic = parse("churn.hot");
    let mut subs: VecDeque<Subscription> =
        (0..subscribers).map(|_| registry.subscribe(vec![topic.clone()], queue())).collect();
    let t0 = Instant::now();
    for _ in 0..cycles {
        subs.push_back(registry.subscribe(vec![topic.clone()], queue()));
        drop(subs.pop_front());
    }
    let elapsed = t0.elapsed();
    assert_eq!(registry.subscriber_count(), subscribers);
    elapsed
}

fn churn_report(sizes: &Sizes) {
    let (n, c) = (sizes.churn_subscribers, sizes.churn_cycles);
    println!("Churn: {n} subscribers on one topic, {c} cycles of one subscribe + the oldest unsubscribed");
    println!("{:<10} {:>12} {:>14}", "shards", "total", "per cycle");
    for shards in [SHARDS, 1] {
        let t = churn(shards, n, c);
        println!("{shards:<10} {:>9.1} ms {:>11.2} µs", t.as_secs_f64() * 1e3, t.as_secs_f64() * 1e6 / c as f64);
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --bench subject_index` does not.
    let full = std::env::args().any(|a| a == "--bench");
    let sizes = if full {
        Sizes {
            patterns: [0, 1_000, 100_000],
            exact_topics: 100_000,
            measure_for: Duration::from_secs(2),
            churn_subscribers: 50_000,
            churn_cycles: 10_000,
        }
    } else {
        Sizes {
            patterns: [0, 100, 1_000],
            exact_topics: 1_000,
            measure_for: Duration::from_millis(50),
            churn_subscribers: 1_000,
            churn_cycles: 200,
        }
    };
    fanout_report(&sizes);
    println!();
    churn_report(&sizes);
}
