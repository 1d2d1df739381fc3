//! The listeners and per-stream behaviour: `[server]`, `[admin]`, `[publish]` and the
//! per-topic `[[delivery]]` rules, with their checks.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check::{Checked, Invalid, at_least_one};
use super::tls::ServerTlsConfig;
use crate::topic::{DEFAULT_MAX_TOPIC_LEN, Pattern};

/// The SSE and `/publish` listener and per-stream behaviour.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the SSE and `/publish` listener.
    pub listen: SocketAddr,
    /// Origins allowed to read streams cross-origin (exact `scheme://host[:port]`, or `*` for
    /// any origin without credentials). Empty: no cross-origin access.
    pub cors_origins: Vec<String>,
    /// Interval between heartbeat comments on an idle stream; keeps proxies from cutting quiet
    /// streams and notices dead peers.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Reconnect delay announced to clients with `retry:`.
    #[serde(with = "humantime_serde")]
    pub retry: Duration,
    /// Events that may wait for one slow client before the slow-consumer policy applies.
    pub queue_capacity: usize,
    /// What happens to a client whose queue is full.
    pub slow_consumer: SlowConsumerPolicy,
    /// Topics (and patterns) one connection may ask for.
    pub max_topics_per_connection: usize,
    /// Longest accepted topic name, in bytes.
    pub max_topic_length: usize,
    /// Time a client has to send its request headers.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Proxies (CIDRs such as `10.0.0.0/8`) whose `X-Forwarded-For` is believed: behind an
    /// ingress, the per-IP limits then apply to the real client, not to the ingress pod. Empty:
    /// the TCP peer is the client.
    pub trusted_proxies: Vec<String>,
    /// Time open streams get to end after SIGTERM/SIGINT before they are cut.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// A socket write blocked this long ends the connection (a quiet, healthy stream is never
    /// affected: only a client that stopped reading while data waits for it).
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Streams are closed cleanly after this age (±10 % jitter, so reconnects spread out); the
    /// client reconnects and resumes without loss. `0s`: never.
    #[serde(with = "humantime_serde")]
    pub max_stream_age: Duration,
    /// How a `GET /events` refused for a reason time can fix (connect rate, stream caps, memory
    /// budget, draining) is answered: `retry` (a short `200 text/event-stream` with the reason
    /// and a `retry:` hint, which a browser's EventSource survives) or `status` (`429`/`503`
    /// with `Retry-After`, which ends an EventSource for good).
    pub refusal: RefusalMode,
    /// Longest back-off a refusal at capacity or over the memory budget announces.
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Part of `drain_timeout` (0.0–0.9) over which open streams are ended in small batches
    /// after SIGTERM, so their reconnects reach the other replicas spread out. `0`: all at once.
    pub drain_spread: f64,
    /// Listen backlog of the public listener: connections the kernel queues before they are
    /// accepted. A reconnect herd after a rollout arrives at once; the kernel caps the value
    /// at `net.core.somaxconn`.
    pub listen_backlog: u32,
    /// Serve the demo page at `GET /`: a small page that subscribes to `demo` and `demo.>` with
    /// `EventSource` and shows events, ids, gaps and reconnects, and can publish through
    /// `/publish`. For newcomers and smoke tests; off by default (`GET /` is then a 404).
    pub demo_page: bool,
    /// Bytes of live events that may wait for one slow client before the slow-consumer policy
    /// applies, beside `queue_capacity` (whichever is reached first). One event always fits.
    /// 0: the count alone bounds the queue.
    pub queue_bytes: usize,
    /// TLS on the public listener (`[server.tls]`): HTTP/2 and HTTP/1.1 over TLS, chosen by
    /// ALPN. Absent: plain HTTP, as behind an ingress that terminates TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsConfig>,
}

/// How refusals that time can fix are answered (see [`ServerConfig::refusal`]).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RefusalMode {
    /// `200 text/event-stream`: a comment naming the reason, `retry:`, end of body.
    Retry,
    /// `429` (per-address limits) or `503` (capacity, memory, draining) with `Retry-After`.
    Status,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: ([127, 0, 0, 1], 8080).into(),
            cors_origins: Vec::new(),
            heartbeat_interval: Duration::from_secs(15),
            retry: Duration::from_secs(2),
            queue_capacity: 1024,
            slow_consumer: SlowConsumerPolicy::Disconnect,
            max_topics_per_connection: 64,
            max_topic_length: DEFAULT_MAX_TOPIC_LEN,
            header_read_timeout: Duration::from_secs(10),
            trusted_proxies: Vec::new(),
            drain_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            max_stream_age: Duration::from_secs(3600),
            refusal: RefusalMode::Retry,
            retry_max: Duration::from_secs(30),
            drain_spread: 0.5,
            listen_backlog: 4096,
            demo_page: false,
            queue_bytes: 4 * 1024 * 1024,
            tls: None,
        }
    }
}

impl ServerConfig {
    /// Checks what serde cannot: sizes, the heartbeat floor, proxy CIDRs and CORS origins.
    pub fn check(&self) -> Checked {
        at_least_one("server.queue_capacity", self.queue_capacity)?;
        at_least_one("server.max_topics_per_connection", self.max_topics_per_connection)?;
        at_least_one("server.max_topic_length", self.max_topic_length)?;
        at_least_one("server.listen_backlog", self.listen_backlog as usize)?;
        if !(0.0..=0.9).contains(&self.drain_spread) {
            return Err(Invalid::new("server.drain_spread", "must be between 0 and 0.9 (a part of drain_timeout)"));
        }
        if self.retry_max < self.retry {
            return Err(Invalid::new("server.retry_max", "must be at least server.retry"));
        }
        if self.heartbeat_interval < Duration::from_millis(100) {
            return Err(Invalid::new("server.heartbeat_interval", "must be at least 100ms"));
        }
        for (i, p) in self.trusted_proxies.iter().enumerate() {
            if p.parse::<ipnet::IpNet>().is_err() && p.parse::<std::net::IpAddr>().is_err() {
                return Err(Invalid::new(
                    format!("server.trusted_proxies[{i}]"),
                    format!("{p:?}: not an IP address or CIDR"),
                ));
            }
        }
        for (i, o) in self.cors_origins.iter().enumerate() {
            check_origin(o).map_err(|r| Invalid::new(format!("server.cors_origins[{i}]"), format!("{o:?}: {r}")))?;
        }
        if let Some(tls) = &self.tls {
            tls.check()?;
        }
        Ok(())
    }
}

/// A CORS origin is `*` or exactly `scheme://host[:port]`, as browsers send it.
fn check_origin(o: &str) -> Result<(), String> {
    if o == "*" {
        return Ok(());
    }
    let u = url::Url::parse(o).map_err(|e| format!("not an origin ({e})"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err("must be http(s)://host[:port]".into());
    }
    if u.path() != "/" || o.ends_with('/') || u.query().is_some() {
        return Err("an origin has no path (write https://app.example.com)".into());
    }
    Ok(())
}

/// What happens to a client whose bounded queue is full.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SlowConsumerPolicy {
    /// Close the connection at once and free its queue; the client reconnects and resumes with
    /// `Last-Event-ID`. Nobody else waits for it, and its memory is bounded by the queue.
    Disconnect,
    /// Drop the oldest queued event and keep going; the client gets an `sse-bridge.gap` event
    /// (reason `dropped`) before the next event.
    DropOldest,
    /// Keep only the newest event per topic (conflation), for tickers and dashboards.
    Latest,
}

/// Delivery settings for the topics a pattern matches.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeliveryRule {
    /// NATS-style pattern of the topics this rule covers (`ticker.>`, `orders.*`).
    pub topics: String,
    /// Slow-consumer policy for events on these topics (default: `server.slow_consumer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_consumer: Option<SlowConsumerPolicy>,
    /// Events per second delivered to one connection subscribed to these topics; events over
    /// the rate wait in the queue, then the slow-consumer policy applies. A connection covered
    /// by several rules gets the lowest rate. Absent: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<u32>,
    /// Events that may be delivered at once above the rate (default: `max_rate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl DeliveryRule {
    /// Checks the rule at position `i` of `[[delivery]]`: a valid pattern, no zero rate.
    pub fn check(&self, i: usize, max_topic_len: usize) -> Checked {
        if let Err(e) = Pattern::parse(&self.topics, max_topic_len) {
            return Err(Invalid::new(format!("delivery[{i}].topics"), format!("{:?}: {e}", self.topics)));
        }
        if self.max_rate == Some(0) || self.burst == Some(0) {
            return Err(Invalid::new(format!("delivery[{i}]"), "max_rate and burst must be at least 1"));
        }
        Ok(())
    }
}

/// The health and metrics listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address for `/healthz`, `/readyz` and `/metrics`; loopback so it is not public by accident.
    pub listen: SocketAddr,
    /// Profiling on the admin listener: `/debug/pprof/heap` (jemalloc's sampled heap profile,
    /// sampling from startup), `/debug/pprof/profile?seconds=N` (CPU) and `/debug/runtime`
    /// (tasks by kind, runtime workers, allocator figures). Off by default: the endpoints answer
    /// 404 and the heap is not sampled. Never on the public listener.
    pub profiling: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { listen: ([127, 0, 0, 1], 9090).into(), profiling: false }
    }
}

/// `POST /publish`: publishing through the bridge itself, with no broker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PublishConfig {
    /// Bearer token a publisher must send. None: `/publish` answers 403 (never open by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig { token: None, max_body_bytes: 1024 * 1024 }
    }
}

impl PublishConfig {
    /// A token short enough to guess is refused.
    pub fn check(&self) -> Checked {
        if self.token.as_ref().is_some_and(|t| t.len() < 8) {
            return Err(Invalid::new("publish.token", "must be at least 8 characters"));
        }
        Ok(())
    }
}
