//! Admission: how many streams may be open (globally and per client IP), how many distinct
//! patterns their filters may hold (globally and per client IP), and how fast one IP may open
//! them. Every refusal is immediate, never a hang, and comes with the time the client
//! should wait before it tries again ([`crate::retry_hint`]), which the handler turns into a
//! `retry:` (or a `Retry-After`).
//!
//! Order matters for a reconnect herd: the stream caps are checked before the connect rate, so
//! a client refused at capacity keeps its connect token for when it comes back, and a client
//! refused for its rate never held a stream slot. The per-IP connect rate is a keyed token
//! bucket (governor). Its keys, and the refusal history of the retry hints, are pruned on every
//! housekeeping pass ([`Limits::prune`]), so many distinct client addresses cannot grow their
//! memory without bound.
//!
//! Connections still sending their request head ([`Limits::admit_head`]) are counted too: each
//! may hold a head buffer of up to 64 KiB for `server.header_read_timeout`. They have their own
//! count against the same caps (at most `max_streams_per_ip` per address, `max_streams` in all),
//! so a client at its stream cap still gets its head read and the usual refusal, and a flood of
//! half-sent heads is bounded. A connection over the head cap is closed at once, before anything
//! is read; the count goes back down when the head is in (the connection becomes a request, and a
//! stream is then admitted by [`Limits::admit`]) or the connection closes.
//! Patterns are capped because each distinct one is a branch of the registry's subject index
//! that every event's topic may walk into; counting distinct ones (streams sharing `orders.*`
//! count it once) caps that index without penalizing many tabs on the same pattern. A stream
//! holds its patterns from admission until its permit is dropped, with its stream slot.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;

use crate::config::LimitsConfig;
use crate::retry_hint::{RetryHints, RetryReason};
use crate::topic::{Pattern, TopicFilter};

/// Why a stream was refused, and when to come back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// What limit was reached.
    pub reason: RetryReason,
    /// One line for the client: what was reached.
    pub message: String,
    /// When the client should try again (the `retry:` hint).
    pub retry: Duration,
}

/// The admission state of one bridge.
#[derive(Debug)]
pub struct Limits {
    cfg: LimitsConfig,
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    patterns: Mutex<PatternBook>,
    rate: Option<DefaultKeyedRateLimiter<IpAddr>>,
    hints: RetryHints,
    /// Connections still sending their request head, in all and per address.
    heads: AtomicUsize,
    heads_per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Why a connection was closed while still in its request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadRefused {
    /// `limits.max_streams_per_ip` connections of this address are already in their head.
    #[error("too many connections from this address still sending their request head")]
    PerIp,
    /// `limits.max_streams` connections are already in their head.
    #[error("too many connections still sending their request head")]
    Global,
}

impl HeadRefused {
    /// Label in `sse_bridge_requests_rejected_total{reason}`.
    pub fn as_str(self) -> &'static str {
        match self {
            HeadRefused::PerIp => "ip_head_limit",
            HeadRefused::Global => "head_capacity",
        }
    }
}

/// Held by a connection while it sends its request head; gives its slot back when released
/// (the head is in) or dropped (the connection closed), whichever comes first.
#[derive(Debug)]
pub struct HeadPermit {
    limits: Arc<Limits>,
    /// The address counted; `None` when only the global count applies (a trusted proxy).
    ip: Option<IpAddr>,
    released: std::sync::atomic::AtomicBool,
}

impl HeadPermit {
    /// Gives the slot back; returns whether this call did (later calls do nothing).
    pub fn release(&self) -> bool {
        if self.released.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.limits.release_head(self.ip);
        true
    }
}

impl Drop for HeadPermit {
    fn drop(&mut self) {
        self.release();
    }
}

/// The distinct patterns open streams hold, with how many streams hold each: globally and per
/// client address. Entries go when their count reaches 0, so its size follows the open
/// streams (at most `limits.max_patterns` patterns).
#[derive(Debug, Default)]
struct PatternBook {
    global: HashMap<Pattern, usize>,
    per_ip: HashMap<IpAddr, HashMap<Pattern, usize>>,
}

impl PatternBook {
    fn hold(&mut self, ip: IpAddr, patterns: &[Pattern]) {
        let mine = self.per_ip.entry(ip).or_default();
        for p in patterns {
            *self.global.entry(p.clone()).or_default() += 1;
            *mine.entry(p.clone()).or_default() += 1;
        }
    }

    fn release(&mut self, ip: IpAddr, patterns: &[Pattern]) {
        for p in patterns {
            forget(&mut self.global, p);
        }
        if let Some(mine) = self.per_ip.get_mut(&ip) {
            for p in patterns {
                forget(mine, p);
            }
            if mine.is_empty() {
                self.per_ip.remove(&ip);
            }
        }
        if self.global.is_empty() {
            // Give the room of a pattern storm back once it has passed.
            self.global.shrink_to_fit();
            self.per_ip.shrink_to_fit();
        }
    }
}

/// One stream fewer holds `p`; the entry goes at 0.
fn forget(counts: &mut HashMap<Pattern, usize>, p: &Pattern) {
    if let Some(n) = counts.get_mut(p) {
        *n -= 1;
        if *n == 0 {
            counts.remove(p);
        }
    }
}

/// Held by an open stream; releases its slot and its patterns when dropped.
#[derive(Debug)]
pub struct StreamPermit {
    limits: Arc<Limits>,
    ip: IpAddr,
    /// The distinct patterns this stream holds in the pattern book.
    patterns: Box<[Pattern]>,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        if !self.patterns.is_empty() {
            self.limits.patterns.lock().release(self.ip, &self.patterns);
        }
        self.limits.release(self.ip);
    }
}

impl Limits {
    /// Admission state from validated limits; `retry` and `retry_max` bound the hints
    /// (`server.retry`, `server.retry_max`).
    pub fn new(cfg: LimitsConfig, retry: Duration, retry_max: Duration) -> Arc<Self> {
        let rate = NonZeroU32::new(cfg.connect_rate_per_ip).map(|r| {
            let burst = NonZeroU32::new(cfg.connect_burst_per_ip).unwrap_or(r);
            RateLimiter::keyed(Quota::per_second(r).allow_burst(burst))
        });
        let hints = RetryHints::new(retry, retry_max, cfg.connect_rate_per_ip);
        Arc::new(Limits {
            cfg,
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            patterns: Mutex::new(PatternBook::default()),
            rate,
            hints,
            heads: AtomicUsize::new(0),
            heads_per_ip: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a new connection as sending its request head, or says it is over the head caps
    /// (see the module docs). `ip` is the TCP peer; `None` counts it globally only (a trusted
    /// proxy, whose connections carry many clients).
    pub fn admit_head(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<HeadPermit, HeadRefused> {
        let max = self.cfg.max_streams;
        if self.heads.fetch_add(1, Ordering::AcqRel) >= max && max > 0 {
            self.heads.fetch_sub(1, Ordering::AcqRel);
            return Err(HeadRefused::Global);
        }
        let per_ip_max = self.cfg.max_streams_per_ip;
        if let Some(ip) = ip {
            let mut m = self.heads_per_ip.lock();
            let n = m.entry(ip).or_insert(0);
            if per_ip_max > 0 && *n >= per_ip_max {
                if *n == 0 {
                    m.remove(&ip);
                }
                drop(m);
                self.heads.fetch_sub(1, Ordering::AcqRel);
                return Err(HeadRefused::PerIp);
            }
            *n += 1;
        }
        Ok(HeadPermit { limits: self.clone(), ip, released: std::sync::atomic::AtomicBool::new(false) })
    }

    fn release_head(&self, ip: Option<IpAddr>) {
        self.heads.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = ip {
            let mut m = self.heads_per_ip.lock();
            if let Some(n) = m.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&ip);
                }
            }
        }
    }

    /// Connections sending their request head now.
    pub fn heads_open(&self) -> usize {
        self.heads.load(Ordering::Acquire)
    }

    /// Connections of `ip` sending their request head now.
    pub fn heads_of(&self, ip: IpAddr) -> usize {
        self.heads_per_ip.lock().get(&ip).copied().unwrap_or(0)
    }

    /// Admits a new stream from `ip` with no pattern filter, or says why not and when to come
    /// back.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<StreamPermit, Refusal> {
        self.admit_filters(ip, &[])
    }

    /// Admits a new stream from `ip` for `filters`, or says why not and when to come back:
    /// stream caps, then pattern caps, then the connect rate (caps first, so a client refused
    /// at a cap keeps its connect token). The permit holds the stream's slot and its patterns.
    pub fn admit_filters(self: &Arc<Self>, ip: IpAddr, filters: &[TopicFilter]) -> Result<StreamPermit, Refusal> {
        let max = self.cfg.max_streams;
        if self.open.fetch_add(1, Ordering::AcqRel) >= max && max > 0 {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(self.refuse(RetryReason::AtCapacity, ip, format!("server is at capacity ({max} streams)")));
        }
        let per_ip_max = self.cfg.max_streams_per_ip;
        {
            let mut m = self.per_ip.lock();
            let n = m.entry(ip).or_insert(0);
            if per_ip_max > 0 && *n >= per_ip_max {
                drop(m);
                self.open.fetch_sub(1, Ordering::AcqRel);
                let msg = format!("too many open streams from this address (limit {per_ip_max})");
                return Err(self.refuse(RetryReason::IpStreamLimit, ip, msg));
            }
            *n += 1;
        }
        // The slot is held from here: a pattern or rate refusal gives it back.
        let mut permit = StreamPermit { limits: self.clone(), ip, patterns: Box::default() };
        permit.patterns = self.hold_patterns(ip, filters)?;
        if let Some(rate) = &self.rate
            && let Err(not_until) = rate.check_key(&ip)
        {
            drop(permit);
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let retry = self.hints.hint(RetryReason::ConnectRate, ip, wait);
            return Err(Refusal {
                reason: RetryReason::ConnectRate,
                message: "opening streams too fast from this address".into(),
                retry,
            });
        }
        Ok(permit)
    }

    /// Counts the distinct patterns among `filters` as held by a stream of `ip`, or refuses
    /// when that would take the address or the bridge past its cap. Returns what was counted
    /// (for the permit to release).
    fn hold_patterns(&self, ip: IpAddr, filters: &[TopicFilter]) -> Result<Box<[Pattern]>, Refusal> {
        let mut mine: Vec<Pattern> = filters
            .iter()
            .filter_map(|f| match f {
                TopicFilter::Pattern(p) => Some(p.clone()),
                TopicFilter::Exact(_) => None,
            })
            .collect();
        if mine.is_empty() {
            return Ok(Box::default());
        }
        mine.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        mine.dedup();
        let (per_ip_max, max) = (self.cfg.max_patterns_per_ip, self.cfg.max_patterns);
        let refused = {
            let mut book = self.patterns.lock();
            let held = book.per_ip.get(&ip);
            let held_n = held.map_or(0, HashMap::len);
            let new_for_ip = mine.iter().filter(|p| !held.is_some_and(|h| h.contains_key(*p))).count();
            let new_global = mine.iter().filter(|p| !book.global.contains_key(*p)).count();
            if per_ip_max > 0 && held_n + new_for_ip > per_ip_max {
                Some((
                    RetryReason::IpPatternLimit,
                    format!(
                        "too many distinct patterns held by streams from this address (limit {per_ip_max}, \
                         {held_n} held, this stream adds {new_for_ip})"
                    ),
                ))
            } else if max > 0 && book.global.len() + new_global > max {
                Some((RetryReason::PatternCap, format!("server holds its limit of {max} distinct patterns")))
            } else {
                book.hold(ip, &mine);
                None
            }
        };
        match refused {
            Some((reason, message)) => Err(self.refuse(reason, ip, message)),
            None => Ok(mine.into_boxed_slice()),
        }
    }

    /// A refusal whose back-off the hints decide.
    fn refuse(&self, reason: RetryReason, ip: IpAddr, message: String) -> Refusal {
        Refusal { reason, message, retry: self.hints.hint(reason, ip, Duration::ZERO) }
    }

    /// A refusal that is not about this bridge's limits (memory budget, draining), with the
    /// hint for its reason.
    pub fn refusal(&self, reason: RetryReason, ip: IpAddr, message: &str) -> Refusal {
        self.refuse(reason, ip, message.into())
    }

    /// The jittered `retry:` of a stream ended (or refused) because this replica drains.
    pub fn draining_hint(&self) -> Duration {
        self.hints.draining()
    }

    fn release(&self, ip: IpAddr) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        let mut m = self.per_ip.lock();
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }

    /// Forgets rate-limiter keys whose buckets are full again and refused addresses whose
    /// hints have passed; bounds their memory.
    pub fn prune(&self) {
        if let Some(rate) = &self.rate {
            rate.retain_recent();
            rate.shrink_to_fit();
        }
        self.hints.prune();
    }

    /// Distinct IPs the connect-rate limiter remembers now.
    pub fn rate_keys(&self) -> usize {
        self.rate.as_ref().map_or(0, |r| r.len())
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Distinct patterns the open streams hold now (what `limits.max_patterns` caps).
    pub fn distinct_patterns(&self) -> usize {
        self.patterns.lock().global.len()
    }

    /// Distinct patterns the open streams of `ip` hold now (what `limits.max_patterns_per_ip`
    /// caps).
    pub fn patterns_held_by(&self, ip: IpAddr) -> usize {
        self.patterns.lock().per_ip.get(&ip).map_or(0, HashMap::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per_ip: usize, rate: u32, burst: u32) -> Arc<Limits> {
        let cfg = LimitsConfig {
            max_streams: max,
            max_streams_per_ip: per_ip,
            connect_rate_per_ip: rate,
            connect_burst_per_ip: burst,
            ..LimitsConfig::default()
        };
        Limits::new(cfg, Duration::from_secs(2), Duration::from_secs(30))
    }

    fn pattern_limits(max: usize, per_ip: usize, rate: u32) -> Arc<Limits> {
        let cfg = LimitsConfig {
            max_patterns: max,
            max_patterns_per_ip: per_ip,
            connect_rate_per_ip: rate,
            connect_burst_per_ip: 2,
            ..LimitsConfig::default()
        };
        Limits::new(cfg, Duration::from_secs(2), Duration::from_secs(30))
    }

    fn filters(list: &[&str]) -> Vec<TopicFilter> {
        list.iter().map(|s| TopicFilter::parse(s, 256).unwrap()).collect()
    }

    fn reason(r: Result<StreamPermit, Refusal>) -> RetryReason {
        r.expect_err("refused").reason
    }

    #[test]
    fn caps_release_on_drop() {
        let l = limits(2, 0, 0, 0);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = l.admit(ip).unwrap();
        let _b = l.admit(ip).unwrap();
        assert_eq!(reason(l.admit(ip)), RetryReason::AtCapacity);
        drop(a);
        assert!(l.admit(ip).is_ok());
    }

    #[test]
    fn per_ip_cap() {
        let l = limits(0, 1, 0, 0);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let _p = l.admit(a).unwrap();
        assert_eq!(reason(l.admit(a)), RetryReason::IpStreamLimit);
        assert!(l.admit("127.0.0.2".parse().unwrap()).is_ok());
    }

    #[test]
    fn connect_rate_and_key_pruning() {
        let l = limits(0, 0, 1, 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let _p1 = l.admit(a).unwrap();
        let _p2 = l.admit(a).unwrap();
        let refused = l.admit(a).expect_err("over the rate");
        assert_eq!(refused.reason, RetryReason::ConnectRate);
        assert!(refused.retry > Duration::ZERO && refused.retry <= Duration::from_secs(3), "{:?}", refused.retry);
        assert_eq!(l.open_streams(), 2, "a refusal holds no slot");
        assert!(l.rate_keys() >= 1);
    }

    #[test]
    fn heads_are_capped_per_address_and_globally_and_released_once() {
        let l = limits(3, 2, 0, 0);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let h1 = l.admit_head(Some(a)).unwrap();
        let _h2 = l.admit_head(Some(a)).unwrap();
        assert_eq!(l.admit_head(Some(a)).unwrap_err(), HeadRefused::PerIp);
        let _h3 = l.admit_head(Some(b)).unwrap();
        assert_eq!(l.admit_head(None).unwrap_err(), HeadRefused::Global);
        assert_eq!((l.heads_open(), l.heads_of(a)), (3, 2));
        assert!(h1.release());
        assert!(!h1.release(), "a second release does nothing");
        drop(h1);
        assert_eq!((l.heads_open(), l.heads_of(a)), (2, 1));
        // Heads do not take stream slots: a head and a stream of one address coexist.
        let _s = l.admit(a).unwrap();
        assert_eq!(l.open_streams(), 1);
    }

    #[test]
    fn a_client_refused_at_capacity_keeps_its_connect_token() {
        let l = limits(1, 0, 1, 1);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let held = l.admit(a).unwrap();
        assert_eq!(reason(l.admit(b)), RetryReason::AtCapacity);
        drop(held);
        assert!(l.admit(b).is_ok(), "b's one token was not spent by the capacity refusal");
    }

    #[test]
    fn per_ip_pattern_cap_counts_distinct_patterns_and_releases_them() {
        let l = pattern_limits(0, 3, 0);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let p1 = l.admit_filters(a, &filters(&["x.*", "y.>", "exact", "x.*"])).unwrap();
        assert_eq!(l.patterns_held_by(a), 2, "repeats and exact topics are not counted");
        let p2 = l.admit_filters(a, &filters(&["x.*", "y.>"])).unwrap();
        assert_eq!(l.patterns_held_by(a), 2, "a pattern the address holds already costs nothing");
        let p3 = l.admit_filters(a, &filters(&["z.*"])).unwrap();
        let refused = l.admit_filters(a, &filters(&["w.*"])).expect_err("a fourth distinct pattern");
        assert_eq!(refused.reason, RetryReason::IpPatternLimit);
        assert!(refused.retry > Duration::ZERO);
        assert_eq!(l.open_streams(), 3, "the refused stream holds no slot");
        assert!(l.admit_filters(b, &filters(&["w.*"])).is_ok(), "another address has its own share");
        drop((p1, p2, p3));
        assert_eq!(l.patterns_held_by(a), 0);
        assert_eq!(l.distinct_patterns(), 0, "every count back to baseline");
        assert!(l.admit_filters(a, &filters(&["w.*"])).is_ok());
    }

    #[test]
    fn global_pattern_cap() {
        let l = pattern_limits(2, 0, 0);
        let _p = l.admit_filters("127.0.0.1".parse().unwrap(), &filters(&["a.*", "b.*"])).unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(l.admit_filters(other, &filters(&["a.*"])).is_ok(), "held patterns are shared");
        assert_eq!(reason(l.admit_filters(other, &filters(&["c.*"]))), RetryReason::PatternCap);
        assert_eq!(l.distinct_patterns(), 2);
    }

    #[test]
    fn a_pattern_refusal_keeps_the_connect_token() {
        let l = pattern_limits(0, 1, 1);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let first = l.admit_filters(a, &filters(&["a.*"])).unwrap_or_else(|r| panic!("{r}"));
        // Caps come before the rate: this refusal spends none of the two tokens.
        assert_eq!(reason(l.admit_filters(a, &filters(&["b.*"]))), RetryReason::IpPatternLimit);
        let second = l.admit_filters(a, &filters(&["a.*"])).unwrap_or_else(|r| panic!("{r}"));
        assert_eq!(reason(l.admit_filters(a, &filters(&["a.*"]))), RetryReason::ConnectRate);
        assert_eq!(l.patterns_held_by(a), 1);
        drop((first, second));
        assert_eq!(l.patterns_held_by(a), 0, "released with the streams");
        assert_eq!(l.distinct_patterns(), 0);
    }
}
