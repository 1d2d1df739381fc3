//! Fan-out micro-benchmark: ingest → frame → fan-out into N in-process subscribers, through the
//! library's public API only (`Sequencer::ingest`, `Registry`, `ClientQueue`, `SourceMessage`).
//!
//! Three things come out of one binary:
//!
//! 1. An **allocation report** (always printed first): heap allocations per event and per
//!    delivery for N = 1, 100, 10,000, counted by the `#[global_allocator]` below. Allocation
//!    counts are deterministic, so this is what CI checks.
//! 2. **Timings** (divan): time per event for the whole path, each subscriber's queue drained
//!    after every event (what the stream body does), and for the fan-out alone.
//! 3. A **quick check** for CI: `SSE_BRIDGE_BENCH_QUICK=1 cargo bench --bench fanout` prints the
//!    report and exits non-zero if allocations per event grow with N or exceed the budget; it
//!    skips the timings. `cargo test --bench fanout` does the same check (debug build) and then
//!    runs every divan benchmark once.
//!
//! Full run: `cargo bench --bench fanout` (see docs/benchmarks.md for how to read it).

use std::alloc::{GlobalAlloc, Layout};
use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use divan::AllocProfiler;
use sse_bridge::client::{ClientQueue, ConnHandle, Next};
use sse_bridge::config::{MemoryConfig, ReplayConfig, SlowConsumerPolicy};
use sse_bridge::event::{Event, EventId};
use sse_bridge::ingest::{LastSeq, Pipeline, Sequencer};
use sse_bridge::memory::MemoryBudget;
use sse_bridge::metrics::Metrics;
use sse_bridge::policy::DeliveryRules;
use sse_bridge::registry::{Registry, Subscription};
use sse_bridge::replay::ReplayStore;
use sse_bridge::sources::{SourceKind, SourceMessage};
use sse_bridge::telemetry::Telemetry;
use sse_bridge::topic::TopicFilter;

// ---------------------------------------------------------------------------------------------
// Counting allocator: a thin wrapper around divan's profiler (itself around jemalloc), so the
// divan tables show allocations too and the report below can read exact totals.

struct Counting<A>(A);

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static DEALLOCS: AtomicU64 = AtomicU64::new(0);
static ALLOC_BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the wrapped allocator; we only count.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        ALLOC_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { self.0.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        ALLOC_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { self.0.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        DEALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { self.0.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A realloc is an allocation as far as the budget is concerned.
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        DEALLOCS.fetch_add(1, Ordering::Relaxed);
        ALLOC_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }
}

/// jemalloc, as in the daemon (`src/main.rs`), so timings include the allocator it really uses.
#[global_allocator]
static ALLOC: Counting<AllocProfiler<tikv_jemallocator::Jemalloc>> =
    Counting(AllocProfiler::new(tikv_jemallocator::Jemalloc));

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    allocs: u64,
    deallocs: u64,
    bytes: u64,
}

fn counts() -> Counts {
    Counts {
        allocs: ALLOCS.load(Ordering::Relaxed),
        deallocs: DEALLOCS.load(Ordering::Relaxed),
        bytes: ALLOC_BYTES.load(Ordering::Relaxed),
    }
}

impl std::ops::Sub for Counts {
    type Output = Counts;
    fn sub(self, o: Counts) -> Counts {
        Counts { allocs: self.allocs - o.allocs, deallocs: self.deallocs - o.deallocs, bytes: self.bytes - o.bytes }
    }
}

// ---------------------------------------------------------------------------------------------
// The fixture: one sequencer, one registry, N subscribers on one topic.

/// Subscriber counts measured (the N).
const SIZES: [usize; 3] = [1, 100, 10_000];
/// Payload size of every event, as in the end-to-end loads.
const PAYLOAD_BYTES: usize = 256;
/// The topic every subscriber listens to (exactly, or through `PATTERN`).
const TOPIC: &str = "bench.orders.1";
const PATTERN: &str = "bench.orders.*";
/// The daemon's defaults, so the fan-out walks the same structures it does in production.
const SHARDS: usize = 16;
const QUEUE_CAPACITY: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    /// Every subscriber asks for `TOPIC` by name (hash lookup per shard).
    Exact,
    /// Every subscriber asks for `PATTERN` (one pattern match per shard).
    Pattern,
}

struct Fixture {
    sequencer: Sequencer,
    registry: Arc<Registry>,
    queues: Vec<Arc<ClientQueue>>,
    _subs: Vec<Subscription>,
    payload: Vec<u8>,
    next_seq: u64,
    topic_arc: Arc<str>,
    frame: Bytes,
}

// The library calls are gathered here, so an API change in src/ is fixed in one place.

/// Registers one subscriber on `filter`.
fn subscribe(registry: &Arc<Registry>, filter: &str, queue: Arc<ClientQueue>) -> Subscription {
    let f = TopicFilter::parse(filter, 256).expect("valid filter");
    registry.subscribe(vec![f], queue)
}

/// A subscriber queue as the daemon makes one (default capacity, no max age).
fn new_queue() -> Arc<ClientQueue> {
    Arc::new(ClientQueue::new(QUEUE_CAPACITY, ConnHandle::default(), None))
}

/// The sequencer with the daemon's default replay store, no delivery rules, tracing off, and a
/// memory budget.
fn new_sequencer(registry: &Arc<Registry>) -> Sequencer {
    Sequencer::new(Arc::new(Pipeline {
        run_id: 0x5eed_0000_0001,
        last_seq: Arc::new(LastSeq::default()),
        registry: registry.clone(),
        replay: Arc::new(ReplayStore::new(ReplayConfig::default())),
        rules: DeliveryRules::new(&[], SlowConsumerPolicy::Disconnect),
        // A limit far above use, set explicitly so the periodic budget check runs on every
        // machine (with or without a cgroup limit) and the counts stay deterministic.
        memory: Arc::new(MemoryBudget::from_config(&MemoryConfig { limit: 1 << 40 })),
        telemetry: Arc::new(Telemetry::off()),
        metrics: Arc::new(Metrics::new()),
        catalog: Default::default(),
        positions: Default::default(),
    }))
}

/// An already sequenced and framed event, for the fan-out-only benchmark.
fn prebuilt_event(seq: u64, topic: &Arc<str>, frame: &Bytes) -> Arc<Event> {
    Arc::new(Event {
        id: EventId { run: 0x5eed_0000_0002, seq },
        topic: topic.clone(),
        frame: frame.clone(),
        received_at: Instant::now(),
        policy: SlowConsumerPolicy::Disconnect,
        trace: None,
        published_at_ms: None,
        durable: None,
    })
}

/// Takes one frame from a queue, if one is ready.
fn take(q: &ClientQueue, cx: &mut Context<'_>) -> Option<Bytes> {
    match q.poll_next(cx) {
        Poll::Ready(Next::Frame { frame, .. }) => Some(frame),
        _ => None,
    }
}

/// Events the default replay store keeps per topic: warm-up fills the ring, so the measured
/// events see its steady state (append one, evict one) rather than its growth.
fn replay_ring_len() -> u64 {
    ReplayConfig::default().max_events_per_topic as u64
}

impl Fixture {
    fn new(n: usize, filter: Filter) -> Self {
        let registry = Registry::new(SHARDS);
        let sequencer = new_sequencer(&registry);
        let filter = match filter {
            Filter::Exact => TOPIC,
            Filter::Pattern => PATTERN,
        };
        let mut queues = Vec::with_capacity(n);
        let mut subs = Vec::with_capacity(n);
        for _ in 0..n {
            let q = new_queue();
            subs.push(subscribe(&registry, filter, q.clone()));
            queues.push(q);
        }
        // A 256-byte printable payload, like the load generator's.
        let payload: Vec<u8> = (0..PAYLOAD_BYTES).map(|i| b'a' + (i % 26) as u8).collect();
        let frame = sse_bridge::event::frame_event(EventId { run: 0x5eed_0000_0002, seq: 1 }, None, &payload).0;
        let mut fx = Fixture {
            sequencer,
            registry,
            queues,
            _subs: subs,
            payload,
            // Above anything the sequencer assigns here: the fan-out skips sequences a
            // subscriber has already seen.
            next_seq: 1 << 40,
            topic_arc: Arc::from(TOPIC),
            frame,
        };
        // Warm up: each queue's storage is allocated on its first push and then kept (it is
        // only given back above 64 frames), and the replay ring reaches its steady state once
        // it is full, so measuring starts after that.
        for _ in 0..replay_ring_len() + 8 {
            fx.publish_one();
            fx.drain();
        }
        fx
    }

    /// What a source hands the sequencer: the topic and a copy of the payload.
    fn message(&self) -> SourceMessage {
        SourceMessage::new(SourceKind::Nats, TOPIC.to_owned(), Bytes::copy_from_slice(&self.payload))
    }

    /// The whole ingest path for one event: id, frame, fan-out.
    fn publish_one(&mut self) {
        let msg = self.message();
        drop(self.sequencer.ingest(msg));
    }

    /// The fan-out alone, for an already framed event.
    fn fan_out_prebuilt(&mut self) -> usize {
        self.next_seq += 1;
        let ev = prebuilt_event(self.next_seq, &self.topic_arc, &self.frame);
        self.registry.fan_out(&ev).delivered
    }

    /// Takes every queued frame, as each connection's stream body would.
    fn drain(&self) -> usize {
        let mut cx = Context::from_waker(Waker::noop());
        let mut n = 0;
        for q in &self.queues {
            while let Some(f) = take(q, &mut cx) {
                divan::black_box(f);
                n += 1;
            }
        }
        n
    }
}

// ---------------------------------------------------------------------------------------------
// Allocation report and budget.

/// Most heap allocations one event may cost in `Sequencer::ingest` (id, frame, fan-out), not
/// counting the source's own copy of the message. Override with SSE_BRIDGE_ALLOC_BUDGET.
const DEFAULT_BUDGET_PER_EVENT: u64 = 6;
/// Events measured per N after warm-up.
const MEASURED_EVENTS: u64 = 200;

struct Row {
    filter: Filter,
    n: usize,
    deliveries_per_event: f64,
    /// Allocations in `ingest` (frame + fan-out), per event.
    ingest_allocs: f64,
    ingest_bytes: f64,
    /// Allocations made by creating the `SourceMessage` (the source's copy), per event.
    source_allocs: f64,
    /// Allocations while the subscribers take their frames, per event.
    drain_allocs: f64,
    /// Live allocations left after the measured events were drained (should be 0).
    net_live: i64,
}

fn measure(filter: Filter, n: usize) -> Row {
    let mut fx = Fixture::new(n, filter);
    let (mut src, mut ing, mut drn) = (Counts::default(), Counts::default(), Counts::default());
    let mut delivered = 0usize;
    let start = counts();
    for _ in 0..MEASURED_EVENTS {
        let c0 = counts();
        let msg = fx.message();
        let c1 = counts();
        drop(fx.sequencer.ingest(msg));
        let c2 = counts();
        delivered += fx.drain();
        let c3 = counts();
        src = add(src, c1 - c0);
        ing = add(ing, c2 - c1);
        drn = add(drn, c3 - c2);
    }
    let total = counts() - start;
    let e = MEASURED_EVENTS as f64;
    Row {
        filter,
        n,
        deliveries_per_event: delivered as f64 / e,
        ingest_allocs: ing.allocs as f64 / e,
        ingest_bytes: ing.bytes as f64 / e,
        source_allocs: src.allocs as f64 / e,
        drain_allocs: drn.allocs as f64 / e,
        net_live: total.allocs as i64 - total.deallocs as i64,
    }
}

fn add(a: Counts, b: Counts) -> Counts {
    Counts { allocs: a.allocs + b.allocs, deallocs: a.deallocs + b.deallocs, bytes: a.bytes + b.bytes }
}

/// Prints the allocation table; returns the list of violated rules (empty when all hold).
fn alloc_report() -> Vec<String> {
    let budget: u64 =
        std::env::var("SSE_BRIDGE_ALLOC_BUDGET").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_BUDGET_PER_EVENT);
    let mut rows = Vec::new();
    for filter in [Filter::Exact, Filter::Pattern] {
        for n in SIZES {
            rows.push(measure(filter, n));
        }
    }
    println!(
        "Heap allocations per event, ingest → frame → fan-out → drain ({MEASURED_EVENTS} events after warm-up, {PAYLOAD_BYTES}-byte payload, {SHARDS} shards)"
    );
    println!(
        "{:<8} {:>7} {:>11} {:>13} {:>13} {:>15} {:>14} {:>13} {:>9}",
        "filter",
        "N",
        "deliveries",
        "ingest alloc",
        "ingest bytes",
        "alloc/delivery",
        "source alloc",
        "drain alloc",
        "net live"
    );
    let mut violations = Vec::new();
    for r in &rows {
        let base = rows.iter().find(|b| b.filter == r.filter && b.n == 1).expect("N = 1 measured");
        let per_delivery = if r.n > 1 {
            (r.ingest_allocs + r.drain_allocs - base.ingest_allocs - base.drain_allocs)
                / (r.deliveries_per_event - base.deliveries_per_event)
        } else {
            f64::NAN
        };
        println!(
            "{:<8} {:>7} {:>11.0} {:>13.2} {:>13.0} {:>15} {:>14.2} {:>13.2} {:>9}",
            format!("{:?}", r.filter).to_lowercase(),
            r.n,
            r.deliveries_per_event,
            r.ingest_allocs,
            r.ingest_bytes,
            if per_delivery.is_nan() { "-".to_owned() } else { format!("{per_delivery:.4}") },
            r.source_allocs,
            r.drain_allocs,
            r.net_live
        );
        if r.deliveries_per_event != r.n as f64 {
            violations.push(format!(
                "{:?} N={}: {} deliveries per event, expected {}",
                r.filter, r.n, r.deliveries_per_event, r.n
            ));
        }
        if r.ingest_allocs + r.drain_allocs > base.ingest_allocs + base.drain_allocs {
            violations.push(format!(
                "{:?} N={}: {:.2} allocations per event, more than the {:.2} at N=1 (allocations grow with N)",
                r.filter,
                r.n,
                r.ingest_allocs + r.drain_allocs,
                base.ingest_allocs + base.drain_allocs
            ));
        }
        if r.ingest_allocs > budget as f64 {
            violations.push(format!(
                "{:?} N={}: {:.2} allocations per event in ingest, over the budget of {budget}",
                r.filter, r.n, r.ingest_allocs
            ));
        }
    }
    println!(
        "ingest alloc: allocations inside Sequencer::ingest (id, frame, fan-out); budget {budget}. \
         alloc/delivery: extra allocations per extra subscriber vs N=1 (target 0). \
         source alloc: the source's own copy (topic String + payload). net live: allocations not \
         freed after the run (0 = nothing retained)."
    );
    violations
}

// ---------------------------------------------------------------------------------------------
// Timings (divan).

/// The whole path per event: build the source message, ingest (id, frame, fan-out), and every
/// subscriber takes its frame. Throughput is counted in deliveries.
#[divan::bench(args = SIZES)]
fn ingest_fanout_drain(bencher: divan::Bencher, n: usize) {
    let fx = RefCell::new(Fixture::new(n, Filter::Exact));
    fx.borrow_mut().publish_one();
    assert_eq!(fx.borrow().drain(), n, "every subscriber gets the event");
    bencher.counter(divan::counter::ItemsCount::new(n)).bench_local(|| {
        let mut fx = fx.borrow_mut();
        fx.publish_one();
        fx.drain()
    });
}

/// As `ingest_fanout_drain`, with every subscriber on a pattern instead of the exact topic.
#[divan::bench(args = SIZES)]
fn ingest_fanout_drain_pattern(bencher: divan::Bencher, n: usize) {
    let fx = RefCell::new(Fixture::new(n, Filter::Pattern));
    fx.borrow_mut().publish_one();
    assert_eq!(fx.borrow().drain(), n, "every subscriber gets the event");
    bencher.counter(divan::counter::ItemsCount::new(n)).bench_local(|| {
        let mut fx = fx.borrow_mut();
        fx.publish_one();
        fx.drain()
    });
}

/// The fan-out of an already framed event plus the drain: no id, no framing, no source copy.
#[divan::bench(args = SIZES)]
fn fanout_drain_prebuilt(bencher: divan::Bencher, n: usize) {
    let fx = RefCell::new(Fixture::new(n, Filter::Exact));
    // A benchmark that delivers nothing would measure nothing: check once, untimed.
    assert_eq!(fx.borrow_mut().fan_out_prebuilt(), n, "every subscriber gets the prebuilt event");
    fx.borrow().drain();
    bencher.counter(divan::counter::ItemsCount::new(n)).bench_local(|| {
        let mut fx = fx.borrow_mut();
        fx.fan_out_prebuilt();
        fx.drain()
    });
}

fn main() {
    let quick = std::env::var("SSE_BRIDGE_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    // `cargo bench` passes --bench; `cargo test --bench fanout` passes nothing (divan's test mode).
    let benching = std::env::args().any(|a| a == "--bench");
    let violations = alloc_report();
    for v in &violations {
        eprintln!("ALLOCATION BUDGET VIOLATED: {v}");
    }
    if quick || !benching {
        if !violations.is_empty() {
            std::process::exit(1);
        }
        println!("allocation check: ok");
        if quick {
            return;
        }
    }
    divan::main();
}
