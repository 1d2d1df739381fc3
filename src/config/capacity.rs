//! How much the bridge holds and admits: `[fanout]` (ingest queue, registry shards), `[replay]`
//! (the in-memory rings), `[limits]` (stream admission) and `[memory]` (the heap budget).

use serde::{Deserialize, Serialize};

use super::check::{Checked, Invalid, at_least_one};

/// Ingest and fan-out sizing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FanoutConfig {
    /// Registry shards; connects and disconnects lock one shard, so more shards mean less
    /// contention with the fan-out.
    pub shards: usize,
    /// Messages that may wait between the sources and the sequencer. When full, sources wait
    /// (backpressure reaches the broker client, whose own buffer then applies).
    pub ingest_queue: usize,
    /// Bytes those messages may hold together (payload, topic, bookkeeping); the same policy
    /// when reached: sources wait. A larger message waits for the queue to empty. At most
    /// 4 GiB.
    pub ingest_queue_bytes: usize,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        FanoutConfig { shards: 16, ingest_queue: 4096, ingest_queue_bytes: 32 * 1024 * 1024 }
    }
}

impl FanoutConfig {
    /// A shard count the registry can index, and room for at least one message.
    pub fn check(&self) -> Checked {
        if self.shards == 0 || self.shards > 1024 {
            return Err(Invalid::new("fanout.shards", "must be between 1 and 1024"));
        }
        at_least_one("fanout.ingest_queue", self.ingest_queue)?;
        at_least_one("fanout.ingest_queue_bytes", self.ingest_queue_bytes)?;
        if self.ingest_queue_bytes > u32::MAX as usize {
            return Err(Invalid::new("fanout.ingest_queue_bytes", "must be at most 4294967295 (4 GiB)"));
        }
        Ok(())
    }
}

/// The replay store: recent events of every bridged topic, for `Last-Event-ID` resume.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayConfig {
    /// Events kept per topic (0 turns replay off).
    pub max_events_per_topic: usize,
    /// Bytes kept per topic (frames plus bookkeeping); the newest event is always kept.
    pub max_bytes_per_topic: usize,
    /// Bytes kept across all topics; beyond it the globally oldest events go first.
    pub max_total_bytes: usize,
    /// Topics with a ring; beyond it the topic whose newest event is oldest is forgotten.
    pub max_topics: usize,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            max_events_per_topic: 1000,
            max_bytes_per_topic: 1024 * 1024,
            max_total_bytes: 64 * 1024 * 1024,
            max_topics: 100_000,
        }
    }
}

impl ReplayConfig {
    /// The store needs room for at least one topic (`max_events_per_topic = 0` turns it off).
    pub fn check(&self) -> Checked {
        at_least_one("replay.max_topics", self.max_topics)
    }
}

/// Admission limits: how many streams, how fast they may be opened.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Open streams across all clients; beyond it new streams get `503`. 0: unlimited.
    pub max_streams: usize,
    /// Open streams per client IP; beyond it new streams get `429`. 0: unlimited.
    pub max_streams_per_ip: usize,
    /// New streams per second per client IP (token bucket; survives reconnect storms after a
    /// deploy by spreading them). 0: unlimited.
    pub connect_rate_per_ip: u32,
    /// New streams a client IP may open at once above the rate.
    pub connect_burst_per_ip: u32,
    /// Distinct patterns (`orders.*`, `user.42.>`) the open streams of all clients may hold
    /// together; a stream that would add one more is refused (`pattern_cap`). Bounds the
    /// subject index every event is matched against. 0: unlimited.
    pub max_patterns: usize,
    /// Distinct patterns the open streams of one client IP may hold together; beyond it new
    /// streams are refused (`ip_pattern_limit`). Streams sharing a pattern count it once. 0:
    /// unlimited.
    pub max_patterns_per_ip: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_streams: 100_000,
            max_streams_per_ip: 1_000,
            connect_rate_per_ip: 20,
            connect_burst_per_ip: 100,
            max_patterns: 100_000,
            max_patterns_per_ip: 1_000,
        }
    }
}

impl LimitsConfig {
    /// A rate with no burst would admit nobody; a pattern cap below what one stream may ask
    /// for (`server.max_topics_per_connection`, passed as `max_topics_per_connection`) would
    /// refuse that stream forever with a refusal that promises a retry would work.
    pub fn check(&self, max_topics_per_connection: usize) -> Checked {
        if self.connect_rate_per_ip > 0 && self.connect_burst_per_ip == 0 {
            return Err(Invalid::new(
                "limits.connect_burst_per_ip",
                "must be at least 1 when connect_rate_per_ip is set",
            ));
        }
        for (key, cap) in
            [("limits.max_patterns", self.max_patterns), ("limits.max_patterns_per_ip", self.max_patterns_per_ip)]
        {
            if cap > 0 && cap < max_topics_per_connection {
                return Err(Invalid::new(
                    key,
                    format!(
                        "must be 0 (unlimited) or at least server.max_topics_per_connection ({max_topics_per_connection}), \
                         or a stream asking for that many patterns could never open"
                    ),
                ));
            }
        }
        if self.max_patterns > 0 && self.max_patterns_per_ip > self.max_patterns {
            return Err(Invalid::new(
                "limits.max_patterns_per_ip",
                format!("must not exceed limits.max_patterns ({})", self.max_patterns),
            ));
        }
        Ok(())
    }
}

/// The process memory budget.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Bytes of live heap the bridge may use before it sheds (oldest replay entries first,
    /// then the slowest streams). 0: 75 % of the cgroup memory limit if there is one, else none.
    pub limit: usize,
}
