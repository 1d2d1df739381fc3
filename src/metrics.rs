//! The daemon's own health, in Prometheus text format (encoded by `prometheus-client`, the
//! Prometheus project's own Rust client, rather than by hand).
//!
//! Counters are updated on the hot path through pre-resolved handles (no label hashing per
//! event). Gauges that mirror state owned elsewhere (open streams, queue depth, tasks, RSS,
//! broker state) are read when `/metrics` is scraped, so they cost nothing between scrapes.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

use crate::client::CloseReason;
use crate::sources::SourceKind;

/// Label set with the source of an event.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: &'static str,
}

/// Bucket label of the queue depth distribution.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LeLabel {
    pub le: &'static str,
}

/// Upper bounds of the queue depth distribution.
pub const QUEUE_DEPTH_BUCKETS: [(usize, &str); 8] =
    [(0, "0"), (1, "1"), (4, "4"), (16, "16"), (64, "64"), (256, "256"), (1024, "1024"), (usize::MAX, "+Inf")];

/// CPU seconds (user + system) of this process, from `/proc/self/stat`; 0 elsewhere.
pub fn cpu_seconds() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / CLOCK_TICKS_PER_SEC
}

/// `sysconf(_SC_CLK_TCK)` on Linux: 100 on every architecture we build for.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// Label set of a resume's broker read: the broker kind and how the read ended.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResumeReadLabel {
    pub kind: &'static str,
    pub outcome: &'static str,
}

/// Label set with a reason (why a stream ended, why a message was dropped).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// Delivery latency buckets, seconds: 50 µs to 5 s.
const LATENCY_BUCKETS: [f64; 16] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
/// The same bounds in nanoseconds.
const LATENCY_BUCKETS_NS: [u64; 16] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
];

/// Shards of a [`LatencyHistogram`]; a thread always updates the same one.
const HISTOGRAM_SHARDS: usize = 8;

/// A latency histogram observed once per delivery, from every runtime thread.
///
/// `prometheus_client`'s histogram keeps its sums behind one mutex, so with a delivery rate
/// of 100,000/s both worker threads took the same lock (and moved its cache line between
/// cores) for every delivery. Here each thread adds to its own shard with two relaxed atomic
/// adds; a scrape sums the shards. The exposition is the same: `_bucket{le}`, `_sum`
/// (seconds), `_count`, one observation per delivery.
#[derive(Debug, Clone, Default)]
pub struct LatencyHistogram {
    shards: std::sync::Arc<[HistogramShard; HISTOGRAM_SHARDS]>,
}

/// One thread's counts: per bucket (the last is +Inf) and the sum in nanoseconds. Aligned so
/// two shards never share a cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct HistogramShard {
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl LatencyHistogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // Prometheus buckets are `le`: the first bound at or above the value.
        let bucket = LATENCY_BUCKETS_NS.partition_point(|&b| b < ns);
        let shard = &self.shards[histogram_shard()];
        shard.counts[bucket].fetch_add(1, Ordering::Relaxed);
        shard.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.shards.iter().flat_map(|s| s.counts.iter()).map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// This thread's shard: threads are numbered as they first observe.
fn histogram_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % HISTOGRAM_SHARDS;
    }
    SHARD.with(|s| *s)
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut counts = [0u64; LATENCY_BUCKETS.len() + 1];
        let mut sum_ns = 0u64;
        for shard in self.shards.iter() {
            for (total, c) in counts.iter_mut().zip(&shard.counts) {
                *total += c.load(Ordering::Relaxed);
            }
            sum_ns = sum_ns.wrapping_add(shard.sum_ns.load(Ordering::Relaxed));
        }
        let buckets: Vec<(f64, u64)> =
            LATENCY_BUCKETS.iter().copied().chain(std::iter::once(f64::INFINITY)).zip(counts).collect();
        encoder.encode_histogram::<NoLabelSet>(sum_ns as f64 / 1e9, counts.iter().sum(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// All metrics of one bridge instance.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub events_received: Family<SourceLabel, Counter>,
    pub events_malformed: Family<SourceLabel, Counter>,
    pub events_non_utf8: Counter,
    pub event_types_dropped: Counter,
    pub deliveries: Counter,
    pub delivery_latency: LatencyHistogram,
    pub publish_latency: LatencyHistogram,
    pub cpu_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    pub open_connections: Gauge,
    pub queue_depth: Family<LeLabel, Gauge>,
    pub drops: Family<ReasonLabel, Counter>,
    pub streams_opened: Counter,
    pub disconnects: Family<ReasonLabel, Counter>,
    pub requests_rejected: Family<ReasonLabel, Counter>,
    pub replayed_events: Counter,
    pub gap_events: Family<ReasonLabel, Counter>,
    pub replay_events: Gauge,
    pub replay_bytes: Gauge,
    pub replay_topics: Gauge,
    pub open_streams: Gauge,
    pub subscription_filters: Gauge,
    pub queued_frames: Gauge,
    pub ingest_queue_depth: Gauge,
    pub alive_tasks: Gauge,
    pub resident_memory: Gauge,
    pub heap: Gauge,
    pub memory_limit: Gauge,
    pub memory_shed_ring: Counter,
    pub memory_shed_streams: Counter,
    pub broker_up: Family<SourceLabel, Gauge>,
    pub broker_reconnects: Family<SourceLabel, Counter>,
    pub resume_reads: Family<ResumeReadLabel, Counter>,
    pub resume_reads_active: Gauge,
    pub resume_reads_peak: Gauge,
    pub resume_reads_coalesced: Counter,
    pub replayed_from_broker: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric under the `sse_bridge_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sse_bridge");
        let m = Metrics {
            events_received: Family::default(),
            events_malformed: Family::default(),
            events_non_utf8: Counter::default(),
            event_types_dropped: Counter::default(),
            deliveries: Counter::default(),
            delivery_latency: LatencyHistogram::default(),
            publish_latency: LatencyHistogram::default(),
            cpu_seconds: Counter::default(),
            open_connections: Gauge::default(),
            queue_depth: Family::default(),
            drops: Family::default(),
            streams_opened: Counter::default(),
            disconnects: Family::default(),
            requests_rejected: Family::default(),
            replayed_events: Counter::default(),
            gap_events: Family::default(),
            replay_events: Gauge::default(),
            replay_bytes: Gauge::default(),
            replay_topics: Gauge::default(),
            open_streams: Gauge::default(),
            subscription_filters: Gauge::default(),
            queued_frames: Gauge::default(),
            ingest_queue_depth: Gauge::default(),
            alive_tasks: Gauge::default(),
            resident_memory: Gauge::default(),
            resume_reads: Family::default(),
            resume_reads_active: Gauge::default(),
            resume_reads_peak: Gauge::default(),
            resume_reads_coalesced: Counter::default(),
            replayed_from_broker: Counter::default(),
            heap: Gauge::default(),
            memory_limit: Gauge::default(),
            memory_shed_ring: Counter::default(),
            memory_shed_streams: Counter::default(),
            broker_up: Family::default(),
            broker_reconnects: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register("events_received", "Messages received from each source and sequenced", m.events_received.clone());
        r.register(
            "events_malformed",
            "Broker messages dropped: not a valid envelope, or larger than the source's max_message_bytes",
            m.events_malformed.clone(),
        );
        r.register(
            "events_non_utf8",
            "Payloads that were not UTF-8 and were sent with U+FFFD replacements",
            m.events_non_utf8.clone(),
        );
        r.register(
            "event_types_dropped",
            "Event types left out because they were unusable or reserved",
            m.event_types_dropped.clone(),
        );
        r.register("deliveries", "Events placed in a subscriber queue", m.deliveries.clone());
        r.register(
            "dropped_events",
            "Queued events dropped by drop-oldest or replaced by latest, by reason",
            m.drops.clone(),
        );
        r.register_with_unit(
            "delivery_latency",
            "From the broker message's arrival at the bridge to its hand-off to the socket",
            Unit::Seconds,
            m.delivery_latency.clone(),
        );
        r.register_with_unit(
            "publish_latency",
            "From the publisher's timestamp (Sse-Published-At, envelope published_at) to the hand-off to the socket",
            Unit::Seconds,
            m.publish_latency.clone(),
        );
        r.register_with_unit(
            "process_cpu",
            "CPU time of the process (user + system)",
            Unit::Seconds,
            m.cpu_seconds.clone(),
        );
        r.register("open_connections", "TCP connections open on the public listener", m.open_connections.clone());
        r.register("queue_depth_streams", "Streams by live events queued, cumulative (le)", m.queue_depth.clone());
        r.register("streams_opened", "SSE streams opened", m.streams_opened.clone());
        r.register("disconnects", "SSE streams ended, by reason", m.disconnects.clone());
        r.register(
            "requests_rejected",
            "Requests refused before a stream started, by reason",
            m.requests_rejected.clone(),
        );
        r.register(
            "replayed_events",
            "Events sent from the replay store to resuming streams",
            m.replayed_events.clone(),
        );
        r.register("gap_events", "sse-bridge.gap signals sent, by reason", m.gap_events.clone());
        r.register("replay_retained_events", "Events held in the replay store", m.replay_events.clone());
        r.register_with_unit(
            "replay_retained",
            "Bytes held in the replay store (frames and bookkeeping)",
            Unit::Bytes,
            m.replay_bytes.clone(),
        );
        r.register("replay_topics", "Topics with a replay ring", m.replay_topics.clone());
        r.register("open_streams", "SSE streams open now", m.open_streams.clone());
        r.register(
            "subscription_filters",
            "Distinct topics and patterns with subscribers, summed over registry shards",
            m.subscription_filters.clone(),
        );
        r.register("queued_frames", "Frames waiting in subscriber queues", m.queued_frames.clone());
        r.register(
            "ingest_queue_depth",
            "Messages waiting between the sources and the sequencer",
            m.ingest_queue_depth.clone(),
        );
        r.register("tokio_alive_tasks", "Tasks alive in the runtime", m.alive_tasks.clone());
        r.register_with_unit(
            "resident_memory",
            "Resident set size of the process",
            Unit::Bytes,
            m.resident_memory.clone(),
        );
        r.register_with_unit("heap_allocated", "Live heap (jemalloc stats.allocated)", Unit::Bytes, m.heap.clone());
        r.register_with_unit("memory_limit", "The memory budget (0: none)", Unit::Bytes, m.memory_limit.clone());
        r.register_with_unit(
            "memory_shed_ring",
            "Replay bytes evicted because the memory budget was reached",
            Unit::Bytes,
            m.memory_shed_ring.clone(),
        );
        r.register(
            "memory_shed_streams",
            "Streams closed because the memory budget was reached",
            m.memory_shed_streams.clone(),
        );
        r.register("broker_up", "1 while the source's broker connection is up", m.broker_up.clone());
        r.register("broker_reconnects", "Broker reconnections after the first connection", m.broker_reconnects.clone());
        r.register(
            "resume_broker_reads",
            "Reads of durable history from a broker for resumes older than the ring, by outcome",
            m.resume_reads.clone(),
        );
        r.register(
            "resume_broker_reads_active",
            "Broker reads for resumes running now (bounded by resume.max_concurrent_reads)",
            m.resume_reads_active.clone(),
        );
        r.register(
            "resume_broker_reads_peak",
            "Most broker reads for resumes that ran at once since start",
            m.resume_reads_peak.clone(),
        );
        r.register(
            "resume_broker_reads_coalesced",
            "Resume reads served by joining an identical read already running",
            m.resume_reads_coalesced.clone(),
        );
        r.register(
            "replayed_from_broker_events",
            "Events replayed to resuming clients from durable broker history",
            m.replayed_from_broker.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The counter for events from `source`, resolved once and kept by the caller.
    pub fn received_counter(&self, source: SourceKind) -> Counter {
        self.events_received.get_or_create(&SourceLabel { source: source.as_str() }).clone()
    }

    /// Counts a stream end.
    pub fn count_disconnect(&self, reason: &'static str) {
        self.disconnects.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Counts a stream end for a [`CloseReason`].
    pub fn count_close(&self, reason: CloseReason) {
        self.count_disconnect(reason.as_str());
    }

    /// Counts events a slow-consumer policy dropped or conflated.
    pub fn count_drops(&self, reason: &'static str, n: u64) {
        self.drops.get_or_create(&ReasonLabel { reason }).inc_by(n);
    }

    /// Counts what a memory-budget pass shed.
    pub fn count_shed(&self, shed: crate::memory::Shed) {
        self.memory_shed_ring.inc_by(shed.ring_bytes as u64);
        self.memory_shed_streams.inc_by(shed.streams_closed as u64);
    }

    /// Counts a gap signal.
    pub fn count_gap(&self, reason: &'static str) {
        self.gap_events.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Counts a broker read for a resume.
    pub fn count_resume_read(&self, kind: crate::durable::DurableKind, outcome: &'static str) {
        let kind = match kind {
            crate::durable::DurableKind::JetStream => "jetstream",
            crate::durable::DurableKind::RedisStream => "redis_streams",
        };
        self.resume_reads.get_or_create(&ResumeReadLabel { kind, outcome }).inc();
    }

    /// Counts a refused request.
    pub fn count_rejected(&self, reason: &'static str) {
        self.requests_rejected.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Encodes everything in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8192);
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Resident set size of this process, from `/proc/self/statm` (Linux); 0 elsewhere.
pub fn resident_memory_bytes() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = s.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    pages * PAGE_SIZE
}

/// The page size of the Linux targets we build for (x86_64, aarch64 with 4 KiB pages).
const PAGE_SIZE: u64 = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_histogram_exposition() {
        let m = Metrics::new();
        m.delivery_latency.observe(Duration::from_micros(50)); // le 0.00005: bounds are inclusive
        m.delivery_latency.observe(Duration::from_millis(3));
        std::thread::scope(|s| {
            s.spawn(|| m.delivery_latency.observe(Duration::from_secs(9))); // another shard; +Inf
        });
        assert_eq!(m.delivery_latency.count(), 3);
        let text = m.encode();
        let line = |prefix: &str| {
            text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} in {text}")).to_string()
        };
        assert!(text.contains("# TYPE sse_bridge_delivery_latency_seconds histogram"), "{text}");
        assert_eq!(line("sse_bridge_delivery_latency_seconds_count"), "sse_bridge_delivery_latency_seconds_count 3");
        assert_eq!(line("sse_bridge_delivery_latency_seconds_sum"), "sse_bridge_delivery_latency_seconds_sum 9.00305");
        assert!(line("sse_bridge_delivery_latency_seconds_bucket{le=\"0.00005\"}").ends_with(" 1"), "{text}");
        assert!(line("sse_bridge_delivery_latency_seconds_bucket{le=\"0.0025\"}").ends_with(" 1"), "{text}");
        assert!(line("sse_bridge_delivery_latency_seconds_bucket{le=\"0.005\"}").ends_with(" 2"), "{text}");
        assert!(line("sse_bridge_delivery_latency_seconds_bucket{le=\"5.0\"}").ends_with(" 2"), "{text}");
        assert!(line("sse_bridge_delivery_latency_seconds_bucket{le=\"+Inf\"}").ends_with(" 3"), "{text}");
        assert_eq!(line("sse_bridge_publish_latency_seconds_count"), "sse_bridge_publish_latency_seconds_count 0");
    }
}
