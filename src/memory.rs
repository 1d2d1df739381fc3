//! The process memory budget (`memory.limit`): what the bridge does instead of being OOM-killed.
//!
//! The budget is checked against the live heap as jemalloc reports it (the binary runs on
//! jemalloc; see `main.rs`), falling back to the resident set size when jemalloc is not the
//! allocator (e.g. in-process tests). The sequencer checks it every [`CHECK_EVERY`] events and
//! the housekeeping sweep every tick. When over budget, the bridge sheds, in this order:
//!
//! 1. the oldest replay-ring entries, enough to cover the overshoot (clients resuming from
//!    before them get a gap event, as with any eviction);
//! 2. then, if the heap is still over (ring entries still queued for slow clients are not
//!    freed by the ring alone, and replayed frames are not in the ring at all), the streams that
//!    hold the most queued bytes, backlog (replay) included, are shed, largest first: what they
//!    queued is dropped at once and each ends with a `retry:` hint and the reason
//!    (`ClientQueue::shed`), so its client resumes from the last event it got, until what they held covers the overshoot (the next
//!    check sheds more if that was not enough: events shared by many queues count in each); a stream
//!    counts as slow with 64 or more live events queued (or half its capacity) or
//!    [`SLOW_BYTES`] queued (a replay frame shared with other streams counts as its share).
//!    A resuming stream that is reading its replay (its socket took bytes within
//!    [`READING_STALL`]) is not shed: what it holds only shrinks, and shed it would resume and
//!    build that replay again; new streams are refused while the heap is over.
//!    Their clients reconnect and resume (a resume is refused while the
//!    replay in flight is at `resume.max_inflight_bytes`).
//!
//! With a budget, each check also gives the allocator's freed pages back to the OS when the live
//! heap and those pages together are over it (at most every 100 ms): RSS, which is what a
//! container's limit counts, then stays near the heap under a flood too.
//!
//! Independently of any budget, [`MemoryBudget::release_freed`] (every housekeeping tick) gives
//! freed allocator pages back to the OS when they are many against the live heap, so RSS
//! follows the live heap within seconds after a flood.
//!
//! While over budget, new streams get the memory refusal (a `retry:` hint an `EventSource`
//! follows, see `crate::retry_hint`) and `/publish` gets `503`. The ring's own budget is capped at
//! half the memory budget at startup, so in steady state rings alone never trip it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use tracing::{info, warn};

use crate::allocator;
use crate::client::now_ms;
use crate::config::{Config, MemoryConfig, ReplayConfig};
use crate::metrics::Metrics;
use crate::process;
use crate::registry::Registry;
use crate::replay::ReplayStore;

/// Events between two budget checks on the ingest path.
pub const CHECK_EVERY: u64 = 64;

/// Share of a cgroup memory limit used as the default budget; the rest covers code, stacks,
/// socket buffers and allocator fragmentation.
const CGROUP_SHARE: f64 = 0.75;

/// The memory budget and whether it is exceeded now.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: Option<usize>,
    /// The reconnect hint of a shed stream (`server.retry`).
    retry: std::time::Duration,
    over: AtomicBool,
    /// When [`MemoryBudget::release_freed`] last looked, in `now_ms` time.
    last_release_ms: AtomicU64,
    /// When [`MemoryBudget::check`] last looked for freed pages to purge, in `now_ms` time.
    last_pressure_purge_ms: AtomicU64,
    /// Those purges not yet counted in `sse_bridge_allocator_purges_total`.
    pressure_purges: AtomicU64,
}

/// What one shedding pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Shed {
    /// Replay-ring bytes evicted.
    pub ring_bytes: usize,
    /// Slow streams closed (their clients reconnect and resume).
    pub streams_closed: usize,
}

impl MemoryBudget {
    /// The configured limit, or by default a share of the cgroup's memory limit, or none.
    pub fn from_config(cfg: &MemoryConfig) -> Self {
        let limit =
            if cfg.limit > 0 { Some(cfg.limit) } else { cgroup_limit().map(|l| (l as f64 * CGROUP_SHARE) as usize) };
        MemoryBudget {
            limit,
            retry: std::time::Duration::from_secs(3),
            over: AtomicBool::new(false),
            last_release_ms: AtomicU64::new(0),
            last_pressure_purge_ms: AtomicU64::new(0),
            pressure_purges: AtomicU64::new(0),
        }
    }

    /// Sets the reconnect hint a shed stream ends with (`server.retry`).
    pub fn with_retry(mut self, retry: std::time::Duration) -> Self {
        self.retry = retry;
        self
    }

    /// The budget in bytes, if there is one.
    pub fn limit(&self) -> Option<usize> {
        self.limit
    }

    /// The replay store's bounds, with its global budget capped at half the memory budget so
    /// the rings alone never push the process over it.
    pub fn ring_config(&self, configured: &ReplayConfig) -> ReplayConfig {
        let mut ring = configured.clone();
        if let Some(limit) = self.limit
            && ring.max_total_bytes > limit / 2
        {
            info!(
                configured = ring.max_total_bytes,
                capped = limit / 2,
                "Replay budget capped at half the memory budget."
            );
            ring.max_total_bytes = limit / 2;
        }
        ring
    }

    /// Caps the broker side to shares of the budget, as [`MemoryBudget::ring_config`] caps the
    /// rings: the ingest queue (`fanout.ingest_queue_bytes`) gets at most an eighth of it, and
    /// the live sources' own buffers (`nats.buffer_bytes`, `redis.buffer_bytes`) an eighth
    /// between them (each at least one `max_message_bytes`). These hold a flood that the
    /// sequencer has not taken in yet; the budget cannot shed them (what they hold is not in any
    /// stream's queue), so they must fit in it by construction: at the defaults (32 MiB each)
    /// a 64 MiB budget was exceeded by the broker side alone. What a source drops past its
    /// buffer is told to the streams it serves (`source-dropped` gap), as with any full buffer.
    pub fn fit_broker_side(&self, config: &mut Config) {
        let Some(limit) = self.limit else { return };
        let share = (limit / BROKER_SIDE_SHARE).max(1);
        cap_bytes("fanout.ingest_queue_bytes", &mut config.fanout.ingest_queue_bytes, share);
        let sources = usize::from(config.nats.is_some()) + usize::from(config.redis.is_some());
        let per_source = share / sources.max(1);
        if let Some(nats) = &mut config.nats {
            cap_bytes("nats.buffer_bytes", &mut nats.buffer_bytes, per_source.max(nats.max_message_bytes));
        }
        if let Some(redis) = &mut config.redis {
            cap_bytes("redis.buffer_bytes", &mut redis.buffer_bytes, per_source.max(redis.max_message_bytes));
        }
    }

    /// Whether the process is over budget. Once a check found it over, this re-measures (a
    /// few microseconds with jemalloc) so admission reopens as soon as shedding took effect.
    pub fn is_over(&self) -> bool {
        if !self.over.load(Ordering::Acquire) {
            return false;
        }
        let over = self.limit.is_some_and(|l| used_bytes() > l);
        self.over.store(over, Ordering::Release);
        over
    }

    /// Measures memory and, when over budget, sheds (see the module docs).
    pub fn check(&self, replay: &ReplayStore, registry: &Registry) -> Option<Shed> {
        let limit = self.limit?;
        self.purge_under_pressure(limit);
        let used = used_bytes();
        if used <= limit {
            self.over.store(false, Ordering::Release);
            return None;
        }
        // Shed a little more than the overshoot, so the next check does not shed again at once.
        let overshoot = used - limit + limit / 20;
        let mut shed = Shed { ring_bytes: replay.shed(overshoot), streams_closed: 0 };
        // Ring entries still queued for slow clients are not freed by the ring alone, and
        // replayed frames are not in the ring: close the streams that hold the most.
        let now = used_bytes();
        if now > limit {
            let mut slow: Vec<_> = registry
                .queues()
                .into_iter()
                .map(|q| (q.queued_bytes(), q))
                .filter(|(bytes, q)| *bytes >= SLOW_BYTES || q.live_len() >= SLOW_QUEUE.min(q.capacity() / 2).max(1))
                .filter(|(_, q)| !q.reads_its_replay(now_ms(), READING_STALL))
                .collect();
            slow.sort_unstable_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
            let want = now - limit + limit / 20;
            let mut freed = 0;
            for (bytes, q) in slow {
                if freed >= want {
                    break;
                }
                // Its frames are dropped now; it ends with a `retry:` and the reason, and the
                // client resumes from the last event it got (one whose socket takes nothing
                // is still cut by `server.write_timeout`).
                if !q.shed(shed_frame(self.retry)) {
                    continue;
                }
                shed.streams_closed += 1;
                freed += bytes;
            }
        }
        let still_over = used_bytes() > limit;
        self.over.store(still_over, Ordering::Release);
        warn!(
            used,
            limit,
            ring_bytes_shed = shed.ring_bytes,
            streams_closed = shed.streams_closed,
            still_over,
            "Over the memory budget; shed."
        );
        Some(shed)
    }

    /// Gives freed allocator pages back to the OS at once, at most every
    /// [`PRESSURE_PURGE_EVERY_MS`], when the live heap and those pages together exceed the
    /// budget. Under a flood the heap stays within the budget but frees as fast as it
    /// allocates, and jemalloc's decay keeps the freed pages for seconds: the process's RSS
    /// (what a cgroup limit counts) grew to the heap plus 40–110 MiB of freed pages
    /// (tests/flood.rs, 64 MiB budget).
    fn purge_under_pressure(&self, limit: usize) {
        let now = now_ms();
        let last = self.last_pressure_purge_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < PRESSURE_PURGE_EVERY_MS {
            return;
        }
        // Looked at most that often too: reading jemalloc's statistics costs microseconds, and
        // the sequencer checks every 64 events.
        self.last_pressure_purge_ms.store(now, Ordering::Relaxed);
        let Some(s) = allocator::stats() else { return };
        if s.dirty >= RELEASE_ABOVE && (s.allocated + s.dirty) as usize > limit && allocator::purge() {
            self.pressure_purges.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Gives freed allocator pages back to the OS when they are many ([`RELEASE_ABOVE`]) and at
    /// least half the live heap, at most once a second; counted in
    /// `sse_bridge_allocator_purges_total`. jemalloc's own decay purges only on allocator
    /// activity, so after a flood an idle bridge would otherwise keep its peak RSS.
    pub fn release_freed(&self, metrics: &Metrics) {
        metrics.allocator_purges.inc_by(self.pressure_purges.swap(0, Ordering::Relaxed));
        let now = now_ms();
        let last = self.last_release_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < 1000 {
            return;
        }
        self.last_release_ms.store(now, Ordering::Relaxed);
        let Some(s) = allocator::stats() else { return };
        if s.dirty >= RELEASE_ABOVE && s.dirty >= s.allocated / 2 && allocator::purge() {
            metrics.allocator_purges.inc();
            info!(freed = s.dirty, live_heap = s.allocated, "Gave freed allocator pages back to the OS.");
        }
    }
}

/// The broker side's part of the budget: the ingest queue gets `1 / BROKER_SIDE_SHARE` of it,
/// the sources' buffers as much between them (see [`MemoryBudget::fit_broker_side`]).
const BROKER_SIDE_SHARE: usize = 8;

fn cap_bytes(key: &str, value: &mut usize, cap: usize) {
    if *value > cap {
        info!(key, configured = *value, capped = cap, "Broker-side buffer capped to its share of the memory budget.");
        *value = cap;
    }
}

/// The last frame of a stream shed for the memory budget: the reason and the reconnect delay,
/// jittered ±50 % so the shed clients do not come back at once.
fn shed_frame(retry: std::time::Duration) -> Bytes {
    let ms = retry.as_millis().max(2) as u64;
    let jittered = ms / 2 + (now_ms().wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % ms;
    Bytes::from(format!(": sse-bridge shed memory_budget\nretry: {}\n\n", jittered.max(1)))
}

/// Freed allocator pages (bytes) below which [`MemoryBudget::release_freed`] leaves them to
/// jemalloc's decay: a few MiB of dirty pages are reused at once under load. It was 16 MiB, but
/// after a NATS flood (tests/flood.rs, with a smaller NATS hand-off) 11–13 MiB stayed dirty on
/// a 14 MiB process, twice its starting RSS, for good; purging 4 MiB at most once a second costs
/// about a thousand page faults when they are used again.
pub const RELEASE_ABOVE: u64 = 4 * 1024 * 1024;

/// The shortest time between two looks for freed pages to purge while the heap and those
/// pages together are over the budget (see [`MemoryBudget::check`]): a purge costs a few
/// hundred microseconds and, under a flood, the page faults of reusing the pages.
const PRESSURE_PURGE_EVERY_MS: u64 = 100;

/// How long a resuming stream's socket writes may stay blocked while it still counts as
/// reading its replay (not shed, see `ClientQueue::reads_its_replay`).
const READING_STALL: std::time::Duration = std::time::Duration::from_secs(5);

/// Queued live events at which a stream counts as slow when shedding for memory (or half its
/// capacity, if smaller). A reader that keeps up has next to nothing queued.
const SLOW_QUEUE: usize = 64;

/// Queued bytes (live and backlog) at which a stream counts as slow when shedding for memory;
/// a resume's replay that is not being read counts here.
pub const SLOW_BYTES: usize = 1024 * 1024;

/// Live heap bytes from jemalloc when it is the allocator; else the resident set size.
pub fn used_bytes() -> usize {
    match process::heap_bytes() {
        Some(b) if b > 0 => b,
        _ => process::resident_memory_bytes() as usize,
    }
}

/// The memory limit of this process's cgroup (v2 `memory.max`, or v1 `memory.limit_in_bytes`).
pub fn cgroup_limit() -> Option<usize> {
    let read = |p: &str| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok();
    let v = read("/sys/fs/cgroup/memory.max").or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))?;
    // v1 reports "unlimited" as a number near i64::MAX.
    (v < (1 << 60)).then_some(v as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rings_get_at_most_half_the_budget() {
        let replay = ReplayConfig { max_total_bytes: 1000, ..ReplayConfig::default() };
        let budget = MemoryBudget::from_config(&MemoryConfig { limit: 1500 });
        assert_eq!(budget.ring_config(&replay).max_total_bytes, 750);
        let budget = MemoryBudget::from_config(&MemoryConfig { limit: 4000 });
        assert_eq!(budget.ring_config(&replay), replay);
    }

    #[test]
    fn the_broker_side_fits_in_the_budget() {
        let mut config = Config {
            nats: Some(crate::config::NatsConfig::default()),
            redis: Some(crate::config::RedisConfig::default()),
            ..Config::default()
        };
        MemoryBudget::from_config(&MemoryConfig { limit: 64 << 20 }).fit_broker_side(&mut config);
        assert_eq!(config.fanout.ingest_queue_bytes, 8 << 20);
        assert_eq!(config.nats.as_ref().unwrap().buffer_bytes, 4 << 20);
        assert_eq!(config.redis.as_ref().unwrap().buffer_bytes, 4 << 20);
        // Never below one message, and a large budget changes nothing.
        MemoryBudget::from_config(&MemoryConfig { limit: 4 << 20 }).fit_broker_side(&mut config);
        let nats = config.nats.as_ref().unwrap();
        assert_eq!(nats.buffer_bytes, nats.max_message_bytes);
        let mut roomy = Config { nats: Some(crate::config::NatsConfig::default()), ..Config::default() };
        MemoryBudget::from_config(&MemoryConfig { limit: 1 << 30 }).fit_broker_side(&mut roomy);
        assert_eq!(roomy, Config { nats: Some(crate::config::NatsConfig::default()), ..Config::default() });
    }
}
