//! [`Config`], the whole daemon configuration: one field per section, and the validation that
//! checks each section in the order they appear in `bridge.toml`.

use serde::{Deserialize, Serialize};

use super::auth::AuthConfig;
use super::capacity::{FanoutConfig, LimitsConfig, MemoryConfig, ReplayConfig};
use super::check::Checked;
use super::interest::InterestConfig;
use super::observability::{LogConfig, TelemetryConfig};
use super::server::{AdminConfig, DeliveryRule, PublishConfig, ServerConfig};
use super::sources::{JetStreamConfig, NatsConfig, RedisConfig, RedisStreamsConfig, ResumeConfig, check_durable_count};

/// The whole daemon configuration. Every field has a default, so an empty file is valid.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
#[derive(Default)]
pub struct Config {
    /// The public listener and per-stream behaviour.
    pub server: ServerConfig,
    /// The private listener: health and metrics.
    pub admin: AdminConfig,
    /// `POST /publish`, off until a token is set.
    pub publish: PublishConfig,
    /// NATS source; absent means NATS is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsConfig>,
    /// Redis pub/sub source; absent means Redis is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisConfig>,
    /// NATS JetStream streams as durable sources; absent means off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jetstream: Option<JetStreamConfig>,
    /// Redis Streams as durable sources; absent means off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_streams: Option<RedisStreamsConfig>,
    /// Resume from durable broker history (JetStream, Redis Streams).
    pub resume: ResumeConfig,
    /// Log level and format.
    pub log: LogConfig,
    /// Ingest queue and registry sharding.
    pub fanout: FanoutConfig,
    /// The in-memory rings that serve `Last-Event-ID` resumes.
    pub replay: ReplayConfig,
    /// Stream admission: caps and the per-IP connect rate.
    pub limits: LimitsConfig,
    /// The heap budget and what is shed to stay under it.
    pub memory: MemoryConfig,
    /// OpenTelemetry trace export.
    pub telemetry: TelemetryConfig,
    /// Per-topic delivery rules, first match wins: slow-consumer policy and delivery rate.
    pub delivery: Vec<DeliveryRule>,
    /// Topic authorization (JWT). Absent: every topic is public, as before `[auth]` existed.
    /// Checked by `crate::auth` (it loads the key files), not by [`Config::validate`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// Bounds of on-demand upstream subscriptions (`nats.interest`/`redis.interest`).
    pub interest: InterestConfig,
}

impl Config {
    /// Checks what serde cannot (URLs, patterns, ranges), section by section; the error names
    /// the first offending key. `[auth]` is checked by `crate::auth::check`, and the durable
    /// streams' id tags by `crate::durable`: both build runtime objects to do it.
    pub fn validate(&self) -> Checked {
        let max_topic_len = self.server.max_topic_length;
        self.server.check()?;
        for (i, rule) in self.delivery.iter().enumerate() {
            rule.check(i, max_topic_len)?;
        }
        self.publish.check()?;
        self.fanout.check()?;
        self.replay.check()?;
        self.limits.check(self.server.max_topics_per_connection)?;
        self.telemetry.check()?;
        self.validate_sources()
    }

    /// The broker sections that are on, then the bounds shared by the durable ones.
    fn validate_sources(&self) -> Checked {
        let max_topic_len = self.server.max_topic_length;
        if let Some(n) = &self.nats {
            n.check(max_topic_len)?;
        }
        if let Some(r) = &self.redis {
            r.check(max_topic_len)?;
        }
        if let Some(j) = &self.jetstream {
            j.check(max_topic_len)?;
        }
        if let Some(r) = &self.redis_streams {
            r.check(max_topic_len)?;
        }
        check_durable_count(self.jetstream.as_ref(), self.redis_streams.as_ref())?;
        self.interest.check()?;
        self.resume.check()
    }
}
