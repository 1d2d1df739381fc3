//! Configuration: documented structs, layered loading with figment, and validation.
//!
//! Layers, later wins: built-in defaults → the TOML file (`bridge.toml`, or `--config PATH`) →
//! `SSE_BRIDGE_*` environment variables (`__` between nested keys) → command-line flags.
//! Everything is checked before anything starts: unknown keys, unparsable values, bad broker
//! URLs and bad subject patterns each fail with the key, the file (or variable) that set it,
//! and the reason.
//!
//! Plain data and validation only: this module imports nothing of the bridge but `topic`. The
//! runtime objects built from it check what only they can (`auth` loads the key files,
//! `durable` derives the streams' id tags), with errors that carry the key; the binary runs
//! those checks too before it starts (`crate::startup`).
//!
//! One file per concern, in the order of `bridge.toml`:
//! - `root`: [`Config`], the whole document, and [`Config::validate`];
//! - `server`: `[server]`, `[[delivery]]`, `[admin]`, `[publish]`;
//! - `sources`: `[nats]`, `[redis]`, `[jetstream]`, `[redis_streams]`, `[resume]`;
//! - `capacity`: `[fanout]`, `[replay]`, `[limits]`, `[memory]`;
//! - `interest`: `nats.interest`/`redis.interest` and `[interest]`, on-demand upstream bounds;
//! - `observability`: `[log]`, `[telemetry]`;
//! - `auth`: `[auth]` (checked by `crate::auth`);
//! - `tls`: `[server.tls]`, the brokers' `tls` tables and where secrets come from (the files
//!   themselves are read by `crate::tls_files`);
//! - `check`: the [`Invalid`] error and the checks sections share;
//! - `load`: the layers, [`Config::load`], and `service_links`: the Kubernetes variables the
//!   environment layer leaves out; `error`: [`ConfigError`], as the operator reads it.

mod auth;
mod capacity;
mod check;
mod error;
mod interest;
mod load;
mod observability;
mod root;
mod server;
pub mod service_links;
mod sources;
mod tls;

pub use auth::{AuthConfig, AuthRule, JwtAlgorithm, TopicAccess};
pub use capacity::{FanoutConfig, LimitsConfig, MemoryConfig, ReplayConfig};
pub use check::{Checked, Invalid};
pub use error::{ConfigError, KeyError};
pub use interest::{InterestConfig, InterestMode};
pub use load::{ConfigFile, DEFAULT_FILE, ENV_PREFIX, Loaded, Overrides};
pub use observability::{LogConfig, LogFormat, TelemetryConfig};
pub use root::Config;
pub use server::{AdminConfig, DeliveryRule, PublishConfig, RefusalMode, ServerConfig, SlowConsumerPolicy};
pub use sources::{
    JetStreamConfig, MAX_DURABLE_STREAMS, NatsConfig, RedisConfig, RedisStreamsConfig, ResumeConfig,
    check_durable_count,
};

pub use tls::{ClientTlsConfig, ServerTlsConfig, check_secret_source};

#[cfg(test)]
mod tests;
