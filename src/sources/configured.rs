//! The broker sources a configuration names, each with its own settings: the one description
//! from which the app builds the sources' statuses and spawns them.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::message::{IngestSender, SourceKind};
use super::session::SessionEnd;
use super::status::SourceStatus;
use super::{jetstream, nats, nats_interest, redis, redis_interest, redis_streams};
use crate::config::{Config, JetStreamConfig, NatsConfig, RedisConfig, RedisStreamsConfig};
use crate::durable::Catalog;
use crate::interest::InterestTable;

/// One configured broker source (`POST /publish` is not one: it has no task of its own).
#[derive(Debug, Clone)]
pub enum ConfiguredSource {
    /// `[nats]`: core NATS subjects.
    Nats(NatsConfig),
    /// `[redis]`: Redis pub/sub channels and patterns.
    Redis(RedisConfig),
    /// `[jetstream]`: JetStream streams, durable.
    JetStream(JetStreamConfig),
    /// `[redis_streams]`: Redis Streams keys, durable.
    RedisStreams(RedisStreamsConfig),
}

/// Every broker source `config` names, always in the same order (NATS, Redis pub/sub,
/// JetStream, Redis Streams), so a list of statuses built from it lines up with it.
pub fn configured(config: &Config) -> Vec<ConfiguredSource> {
    let mut out = Vec::new();
    out.extend(config.nats.clone().map(ConfiguredSource::Nats));
    out.extend(config.redis.clone().map(ConfiguredSource::Redis));
    out.extend(config.jetstream.clone().map(ConfiguredSource::JetStream));
    out.extend(config.redis_streams.clone().map(ConfiguredSource::RedisStreams));
    out
}

impl ConfiguredSource {
    /// Which kind of source this is: its status's and its metrics' label.
    pub fn kind(&self) -> SourceKind {
        match self {
            ConfiguredSource::Nats(_) => SourceKind::Nats,
            ConfiguredSource::Redis(_) => SourceKind::Redis,
            ConfiguredSource::JetStream(_) => SourceKind::JetStream,
            ConfiguredSource::RedisStreams(_) => SourceKind::RedisStreams,
        }
    }

    /// Runs the source until `shutdown` (or until the ingest path closes), feeding `tx` and
    /// reporting in `status`; the durable sources learn their streams' topics into `catalog`.
    /// `interest` is the source's table when it is on-demand (`crate::interest`), with the
    /// number of subscribe commands per batch.
    pub async fn run(
        self,
        catalog: Arc<Catalog>,
        tx: IngestSender,
        status: Arc<SourceStatus>,
        shutdown: CancellationToken,
        interest: Option<(Arc<InterestTable>, usize)>,
    ) -> SessionEnd {
        match (self, interest) {
            (ConfiguredSource::Nats(cfg), Some((table, batch))) => {
                nats_interest::run(cfg, table, batch, tx, status, shutdown).await
            }
            (ConfiguredSource::Redis(cfg), Some((table, batch))) => {
                redis_interest::run(cfg, table, batch, tx, status, shutdown).await
            }
            (source, _) => source.run_all(catalog, tx, status, shutdown).await,
        }
    }

    /// Runs a source that subscribes to everything it is configured with.
    async fn run_all(
        self,
        catalog: Arc<Catalog>,
        tx: IngestSender,
        status: Arc<SourceStatus>,
        shutdown: CancellationToken,
    ) -> SessionEnd {
        match self {
            ConfiguredSource::Nats(cfg) => nats::run(cfg, tx, status, shutdown).await,
            ConfiguredSource::Redis(cfg) => redis::run(cfg, tx, status, shutdown).await,
            ConfiguredSource::JetStream(cfg) => jetstream::run(cfg, catalog, tx, status, shutdown).await,
            ConfiguredSource::RedisStreams(cfg) => redis_streams::run(cfg, catalog, tx, status, shutdown).await,
        }
    }
}
