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
        })
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
