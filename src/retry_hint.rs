//! When a refused client should come back: the `retry:` of a refusal that time can fix.
//!
//! A browser's `EventSource` gives up for good on any answer but `200 text/event-stream`, so
//! refusals that time can fix (connect rate, stream caps, memory budget, draining) are answered
//! with a short stream that carries a `retry:` hint and ends (see `crate::sse::refusal`). The
//! hint decides when the browser comes back, so it decides whether a herd of reconnects (a
//! rollout, a network blip) is admitted smoothly or refused again as one:
//!
//! - **connect rate**: each refused client of one address gets its own future slot, one
//!   token-refill interval after the previous one (plus jitter inside the interval), so a herd
//!   behind one address comes back at the configured rate instead of all at the next refill;
//! - **stream caps, pattern caps, memory budget and replay budget**: a growing back-off per address (`retry`, doubled per
//!   refusal in a row, up to `retry_max`) with full jitter over its upper half;
//! - **draining**: `retry` jittered ±50 %, so the streams of a replica that is going away
//!   reach the other replicas spread out.
//!
//! Memory is bounded: at most [`MAX_TRACKED_ADDRESSES`] addresses are remembered (past that a
//! refusal gets a stateless jittered hint), and [`RetryHints::prune`] forgets addresses whose
//! slots have passed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Addresses whose refusal history is kept; bounds the memory a flood of addresses can take.
pub const MAX_TRACKED_ADDRESSES: usize = 65_536;

/// Longest hint for the connect-rate refusal: the reservation of slots keeps a herd at the
/// configured rate however long that takes, up to this sanity bound.
const MAX_RATE_HINT: Duration = Duration::from_secs(600);

/// Why a stream was refused, for a reason time can fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryReason {
    /// `limits.connect_rate_per_ip`: the address opened streams too fast.
    ConnectRate,
    /// `limits.max_streams_per_ip`: the address holds its share of streams.
    IpStreamLimit,
    /// `limits.max_streams`: the bridge holds all the streams it may.
    AtCapacity,
    /// `memory.limit`: the process is over its memory budget.
    MemoryBudget,
    /// SIGTERM: this replica is going away; another one will take the stream.
    Draining,
    /// `resume.max_inflight_bytes`: replayed frames waiting across all streams are at the cap;
    /// a resume is refused until clients drain theirs.
    ReplayBudget,
    /// `interest.max_subscriptions`: the on-demand sources hold all the upstream
    /// subscriptions they may.
    UpstreamCapacity,
    /// `interest.max_subscriptions_per_ip`: the address's streams hold their share of them.
    UpstreamIpShare,
    /// `limits.max_patterns_per_ip`: the address's open streams hold its share of distinct
    /// patterns; one of them must end first.
    IpPatternLimit,
    /// `limits.max_patterns`: the bridge's open streams hold all the distinct patterns it may
    /// index.
    PatternCap,
}

impl RetryReason {
    /// Label in `sse_bridge_requests_rejected_total{reason}` and in the refusal header.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::ConnectRate => "ip_connect_rate",
            RetryReason::IpStreamLimit => "ip_stream_limit",
            RetryReason::AtCapacity => "at_capacity",
            RetryReason::MemoryBudget => "memory_budget",
            RetryReason::Draining => "draining",
            RetryReason::ReplayBudget => "replay_budget",
            RetryReason::UpstreamCapacity => "upstream_capacity",
            RetryReason::UpstreamIpShare => "ip_upstream_limit",
            RetryReason::IpPatternLimit => "ip_pattern_limit",
            RetryReason::PatternCap => "pattern_cap",
        }
    }

    /// The HTTP status used when refusals are configured as plain statuses
    /// (`server.refusal = "status"`): `429` for what the client's own address caused, `503` for
    /// the server's state.
    pub fn status_code(self) -> u16 {
        match self {
            RetryReason::ConnectRate | RetryReason::IpStreamLimit | RetryReason::IpPatternLimit => 429,
            RetryReason::AtCapacity | RetryReason::MemoryBudget | RetryReason::Draining | RetryReason::PatternCap => {
                503
            }
            RetryReason::ReplayBudget => 503,
            RetryReason::UpstreamIpShare => 429,
            RetryReason::UpstreamCapacity => 503,
        }
    }
}

/// What the bridge remembers of one refused address.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// The next free connect-rate slot of this address.
    next_slot: Instant,
    /// Capacity/budget refusals in a row (reset after a quiet spell).
    strikes: u32,
    /// The last refusal.
    last: Instant,
}

/// Computes `retry:` hints; one per bridge, shared by every request.
#[derive(Debug)]
pub struct RetryHints {
    base: Duration,
    max: Duration,
    /// One connect-rate token's refill time (`1 / limits.connect_rate_per_ip`).
    rate_interval: Option<Duration>,
    seen: Mutex<HashMap<IpAddr, Seen>>,
}

impl RetryHints {
    /// `base` is `server.retry`, `max` is `server.retry_max`, `connect_rate_per_ip` is the
    /// per-address token rate (0: off).
    pub fn new(base: Duration, max: Duration, connect_rate_per_ip: u32) -> Self {
        let rate_interval = (connect_rate_per_ip > 0).then(|| Duration::from_secs(1) / connect_rate_per_ip);
        RetryHints { base, max: max.max(base), rate_interval, seen: Mutex::new(HashMap::new()) }
    }

    /// The hint for a refusal of `ip` for `reason`; `wait` is how long the limiter says the
    /// next token is away (connect rate only).
    pub fn hint(&self, reason: RetryReason, ip: IpAddr, wait: Duration) -> Duration {
        let now = Instant::now();
        match reason {
            RetryReason::ConnectRate => self.rate_slot(ip, wait, now),
            RetryReason::IpStreamLimit
            | RetryReason::AtCapacity
            | RetryReason::MemoryBudget
            | RetryReason::IpPatternLimit
            | RetryReason::PatternCap => self.backoff(ip, now),
            RetryReason::Draining => self.draining(),
            RetryReason::ReplayBudget => self.backoff(ip, now),
            RetryReason::UpstreamCapacity | RetryReason::UpstreamIpShare => self.backoff(ip, now),
        }
    }

    /// A jittered `retry` (±50 %), for streams that end or are refused because this replica
    /// drains.
    pub fn draining(&self) -> Duration {
        jitter(self.base / 2, self.base + self.base / 2)
    }

    /// The next free slot of `ip`, one refill interval after the last one handed out.
    fn rate_slot(&self, ip: IpAddr, wait: Duration, now: Instant) -> Duration {
        let interval = self.rate_interval.unwrap_or(self.base);
        let earliest = now + wait;
        let slot = self.with_seen(ip, now, |s| {
            let slot = s.next_slot.max(earliest);
            s.next_slot = slot + interval;
            slot
        });
        let slot = slot.unwrap_or(earliest);
        (slot - now + jitter(Duration::ZERO, interval)).min(MAX_RATE_HINT)
    }

    /// `retry` doubled per refusal in a row, capped at `retry_max`, jittered over its upper half.
    fn backoff(&self, ip: IpAddr, now: Instant) -> Duration {
        let quiet = self.max * 2;
        let strikes = self
            .with_seen(ip, now, |s| {
                if now.duration_since(s.last) > quiet {
                    s.strikes = 0;
                }
                s.strikes = s.strikes.saturating_add(1);
                s.strikes
            })
            .unwrap_or(1);
        let ceiling = self.base.saturating_mul(1 << (strikes - 1).min(16)).min(self.max);
        jitter(ceiling / 2, ceiling)
    }

    /// Runs `f` on the record of `ip`, creating it if there is room; `None` when the table
    /// is full and `ip` is not in it.
    fn with_seen<T>(&self, ip: IpAddr, now: Instant, f: impl FnOnce(&mut Seen) -> T) -> Option<T> {
        let mut seen = self.seen.lock();
        let full = seen.len() >= MAX_TRACKED_ADDRESSES;
        let s = match seen.get_mut(&ip) {
            Some(s) => s,
            None if full => return None,
            None => seen.entry(ip).or_insert(Seen { next_slot: now, strikes: 0, last: now }),
        };
        let out = f(s);
        s.last = now;
        Some(out)
    }

    /// Forgets addresses whose slots have passed and whose back-off has expired; called by the
    /// housekeeping pass, so the table follows the refusals of the last minutes only.
    pub fn prune(&self) {
        let now = Instant::now();
        let quiet = self.max * 2;
        self.seen.lock().retain(|_, s| s.next_slot > now || now.duration_since(s.last) <= quiet);
    }

    /// Addresses remembered now (a gauge for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.seen.lock().len()
    }
}

/// Uniform in `[lo, hi]`.
fn jitter(lo: Duration, hi: Duration) -> Duration {
    if hi <= lo {
        return lo;
    }
    lo + (hi - lo).mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn a_herd_behind_one_address_is_spread_at_the_configured_rate() {
        let h = RetryHints::new(Duration::from_secs(2), Duration::from_secs(30), 20);
        let mut hints: Vec<Duration> =
            (0..200).map(|_| h.hint(RetryReason::ConnectRate, ip(1), Duration::from_millis(50))).collect();
        hints.sort();
        // 200 clients at 20/s: spread over about 10 s, never two in the same 50 ms slot twice over.
        let last = hints[199];
        assert!(last >= Duration::from_millis(9_900) && last <= Duration::from_millis(10_200), "last hint {last:?}");
        for w in hints.windows(3) {
            assert!(w[2] - w[0] >= Duration::from_millis(50), "three hints within one refill interval: {w:?}");
        }
        // Another address has its own slots.
        assert!(h.hint(RetryReason::ConnectRate, ip(2), Duration::from_millis(50)) < Duration::from_millis(200));
    }

    #[test]
    fn capacity_backs_off_growing_and_capped() {
        let h = RetryHints::new(Duration::from_secs(2), Duration::from_secs(30), 0);
        let first = h.hint(RetryReason::AtCapacity, ip(1), Duration::ZERO);
        assert!(first >= Duration::from_secs(1) && first <= Duration::from_secs(2), "{first:?}");
        let mut last = first;
        for _ in 0..10 {
            last = h.hint(RetryReason::MemoryBudget, ip(1), Duration::ZERO);
        }
        assert!(last >= Duration::from_secs(15) && last <= Duration::from_secs(30), "{last:?}");
        let other = h.hint(RetryReason::IpStreamLimit, ip(3), Duration::ZERO);
        assert!(other <= Duration::from_secs(2), "{other:?}");
    }

    #[test]
    fn draining_is_jittered_around_retry() {
        let h = RetryHints::new(Duration::from_secs(2), Duration::from_secs(30), 20);
        let hints: Vec<Duration> = (0..100).map(|_| h.hint(RetryReason::Draining, ip(1), Duration::ZERO)).collect();
        assert!(hints.iter().all(|d| *d >= Duration::from_secs(1) && *d <= Duration::from_secs(3)));
        let distinct: std::collections::HashSet<_> = hints.iter().map(|d| d.as_millis()).collect();
        assert!(distinct.len() > 50, "hints are spread");
        assert_eq!(h.tracked(), 0, "draining keeps no state");
    }

    #[test]
    fn the_table_is_bounded_and_pruned() {
        let h = RetryHints::new(Duration::from_millis(1), Duration::from_millis(1), 1000);
        for i in 0..(MAX_TRACKED_ADDRESSES + 10) {
            let a = IpAddr::from(std::net::Ipv6Addr::from(i as u128));
            h.hint(RetryReason::ConnectRate, a, Duration::ZERO);
        }
        assert_eq!(h.tracked(), MAX_TRACKED_ADDRESSES);
        std::thread::sleep(Duration::from_millis(20));
        h.prune();
        assert_eq!(h.tracked(), 0);
    }

    #[test]
    fn statuses_for_the_status_mode() {
        assert_eq!(RetryReason::ConnectRate.status_code(), 429);
        assert_eq!(RetryReason::IpStreamLimit.status_code(), 429);
        assert_eq!(RetryReason::AtCapacity.status_code(), 503);
        assert_eq!(RetryReason::Draining.as_str(), "draining");
        assert_eq!(RetryReason::IpPatternLimit.status_code(), 429);
        assert_eq!(RetryReason::PatternCap.status_code(), 503);
        assert_eq!(RetryReason::IpPatternLimit.as_str(), "ip_pattern_limit");
    }
}
