//! A latency histogram cheap enough to observe once per delivery from every runtime thread.
//!
//! `prometheus_client`'s own histogram keeps its sums behind one mutex; this one keeps a shard
//! per thread and sums them when `/metrics` is scraped. The exposition is the same.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

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
