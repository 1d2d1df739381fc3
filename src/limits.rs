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
//!
//! Connections still sending their request head ([`Limits::admit_head`]) are counted too: each
//! may hold a head buffer of up to 64 KiB for `server.header_read_timeout`. They have their own
//! count against the same caps (at most `max_streams_per_ip` per address, `max_streams` in all),
//! so a client at its stream cap still gets its head read and the usual refusal, and a flood of
//! half-sent heads is bounded. A connection over the head cap is closed at once, before anything
//! is read; the count goes back down when the head is in (the connection becomes a request, and a
//! stream is then admitted by [`Limits::admit`]) or the connection closes.

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
        Arc::new(Limits {
            cfg,
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
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
}
