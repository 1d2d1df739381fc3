//! Admission: how many streams may be open (globally and per client IP) and how fast one IP
//! may open them. Every refusal is immediate, never a hang, and comes with the time the client
//! should wait before it tries again ([`crate::retry_hint`]), which the handler turns into a
//! `retry:` (or a `Retry-After`).
//!
//! Order matters for a reconnect herd: the stream caps are checked before the connect rate, so
//! a client refused at capacity keeps its connect token for when it comes back, and a client
//! refused for its rate never held a stream slot. The per-IP connect rate is a keyed token
//! bucket (governor). Its keys, and the refusal history of the retry hints, are pruned on every
//! housekeeping pass ([`Limits::prune`]), so many distinct client addresses cannot grow their
//! memory without bound.

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
    rate: Option<DefaultKeyedRateLimiter<IpAddr>>,
    hints: RetryHints,
}

/// Held by an open stream; releases its slot when dropped.
#[derive(Debug)]
pub struct StreamPermit {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
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
        Arc::new(Limits { cfg, open: AtomicUsize::new(0), per_ip: Mutex::new(HashMap::new()), rate, hints })
    }

    /// Admits a new stream from `ip`, or says why not and when to come back.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<StreamPermit, Refusal> {
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
        // The slot is held from here: a rate refusal gives it back.
        let permit = StreamPermit { limits: self.clone(), ip };
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
        };
        Limits::new(cfg, Duration::from_secs(2), Duration::from_secs(30))
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
}
