//! Admission: how many streams may be open (globally and per client IP) and how fast one IP
//! may open them. Every refusal is immediate (`503` or `429` with `Retry-After` and a one-line
//! reason), never a hang.
//!
//! The per-IP connect rate is a keyed token bucket (governor). Its keys are pruned on every
//! housekeeping pass ([`Limits::prune`]), so many distinct client addresses cannot grow its
//! memory without bound: an IP whose bucket is full again is forgotten.

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

/// Why a stream was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `limits.max_streams` reached: `503`.
    #[error("server is at capacity ({0} streams); retry shortly")]
    AtCapacity(usize),
    /// `limits.max_streams_per_ip` reached: `429`.
    #[error("too many open streams from this address (limit {0})")]
    TooManyForIp(usize),
    /// `limits.connect_rate_per_ip` exceeded: `429` with `Retry-After`.
    #[error("opening streams too fast from this address; retry after {0:?}")]
    TooFast(Duration),
}

impl Refusal {
    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::AtCapacity(_) => "at_capacity",
            Refusal::TooManyForIp(_) => "ip_stream_limit",
            Refusal::TooFast(_) => "ip_connect_rate",
        }
    }

    /// Seconds for `Retry-After` (at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            Refusal::TooFast(d) => d.as_secs_f64().ceil().max(1.0) as u64,
            _ => 1,
        }
    }
}

/// The admission state of one bridge.
#[derive(Debug)]
pub struct Limits {
    cfg: LimitsConfig,
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    rate: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

/// Held by an open stream; releases its slot when dropped.
#[derive(Debug)]
pub struct StreamPermit {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.limits.open.fetch_sub(1, Ordering::AcqRel);
        let mut m = self.limits.per_ip.lock();
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl Limits {
    /// Admission state from validated limits.
    pub fn new(cfg: LimitsConfig) -> Arc<Self> {
        let rate = NonZeroU32::new(cfg.connect_rate_per_ip).map(|r| {
            let burst = NonZeroU32::new(cfg.connect_burst_per_ip).unwrap_or(r);
            RateLimiter::keyed(Quota::per_second(r).allow_burst(burst))
        });
        Arc::new(Limits { cfg, open: AtomicUsize::new(0), per_ip: Mutex::new(HashMap::new()), rate })
    }

    /// Admits a new stream from `ip`, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<StreamPermit, Refusal> {
        if let Some(rate) = &self.rate
            && let Err(not_until) = rate.check_key(&ip)
        {
            return Err(Refusal::TooFast(not_until.wait_time_from(DefaultClock::default().now())));
        }
        let max = self.cfg.max_streams;
        if self.open.fetch_add(1, Ordering::AcqRel) >= max && max > 0 {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::AtCapacity(max));
        }
        let mut m = self.per_ip.lock();
        let n = m.entry(ip).or_insert(0);
        if self.cfg.max_streams_per_ip > 0 && *n >= self.cfg.max_streams_per_ip {
            drop(m);
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::TooManyForIp(self.cfg.max_streams_per_ip));
        }
        *n += 1;
        Ok(StreamPermit { limits: self.clone(), ip })
    }

    /// Forgets rate-limiter keys whose buckets are full again; bounds its memory.
    pub fn prune(&self) {
        if let Some(rate) = &self.rate {
            rate.retain_recent();
            rate.shrink_to_fit();
        }
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
        Limits::new(LimitsConfig {
            max_streams: max,
            max_streams_per_ip: per_ip,
            connect_rate_per_ip: rate,
            connect_burst_per_ip: burst,
        })
    }

    #[test]
    fn caps_release_on_drop() {
        let l = limits(2, 0, 0, 0);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = l.admit(ip).unwrap();
        let _b = l.admit(ip).unwrap();
        assert_eq!(l.admit(ip).unwrap_err(), Refusal::AtCapacity(2));
        drop(a);
        assert!(l.admit(ip).is_ok());
    }

    #[test]
    fn per_ip_cap() {
        let l = limits(0, 1, 0, 0);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let _p = l.admit(a).unwrap();
        assert_eq!(l.admit(a).unwrap_err(), Refusal::TooManyForIp(1));
        assert!(l.admit("127.0.0.2".parse().unwrap()).is_ok());
    }

    #[test]
    fn connect_rate_and_key_pruning() {
        let l = limits(0, 0, 1, 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let _p1 = l.admit(a).unwrap();
        let _p2 = l.admit(a).unwrap();
        assert!(matches!(l.admit(a), Err(Refusal::TooFast(_))));
        assert!(l.rate_keys() >= 1);
    }
}
