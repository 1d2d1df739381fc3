//! Upstream interest: whether a live source subscribes its broker to everything configured
//! (`nats.interest`, `redis.interest` = `"all"`, the default) or only to the filters its clients
//! hold (`"on-demand"`), and `[interest]`, the bounds of on-demand subscriptions.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check::{Checked, Invalid, at_least_one};

/// What a live source subscribes upstream.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum InterestMode {
    /// Every configured subject, channel and pattern, at start (the bridge's behaviour before
    /// on-demand existed): every replica receives every message.
    #[default]
    All,
    /// Only the filters local clients hold, one upstream subscription per distinct filter; the
    /// configuration is the allowlist of what clients may subscribe to.
    OnDemand,
}

impl InterestMode {
    /// Whether subscriptions follow the clients.
    pub fn is_on_demand(self) -> bool {
        self == InterestMode::OnDemand
    }
}

/// Bounds of on-demand upstream subscriptions, shared by every on-demand source.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InterestConfig {
    /// How long an upstream subscription stays after its last stream left, so a reconnect
    /// within it resumes gaplessly from the ring.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Upstream subscriptions held at most, across the on-demand sources; a stream that needs
    /// one more is refused (`upstream_capacity`, with a `retry:`).
    pub max_subscriptions: usize,
    /// Upstream subscriptions the streams of one client address may have caused to be opened
    /// and still held (0: no per-address share); over it: `ip_upstream_limit`.
    pub max_subscriptions_per_ip: usize,
    /// Subscribe/unsubscribe commands a source sends per round trip; a reconnect herd is
    /// served in batches of this many, each confirmed by one round trip.
    pub batch: usize,
    /// Longest wait of a new stream for the broker to confirm its subscription; after it (the
    /// broker is slow or down) the stream starts anyway.
    #[serde(with = "humantime_serde")]
    pub confirm_timeout: Duration,
}

impl Default for InterestConfig {
    fn default() -> Self {
        InterestConfig {
            linger: Duration::from_secs(30),
            max_subscriptions: 100_000,
            max_subscriptions_per_ip: 0,
            batch: 256,
            confirm_timeout: Duration::from_secs(5),
        }
    }
}

impl InterestConfig {
    /// At least one subscription and a batch of at least one command.
    pub fn check(&self) -> Checked {
        at_least_one("interest.max_subscriptions", self.max_subscriptions)?;
        at_least_one("interest.batch", self.batch)?;
        if self.confirm_timeout.is_zero() {
            return Err(Invalid::new("interest.confirm_timeout", "must be more than 0"));
        }
        Ok(())
    }
}
