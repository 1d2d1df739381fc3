//! The state every part of a running bridge shares: the public handlers (`sse`), the admin
//! endpoints (`admin`) and the task owner (`app`) read it, tests inspect it.
//!
//! It lives below all three, so none of them imports another to reach it. It is built once
//! from a validated configuration and never replaced; what changes while the bridge runs sits
//! behind the shared handles it holds (registry, rings, metrics) and the two flags of the
//! bridge's own life: ready (the listeners run) and draining (shutdown has begun).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::info;

use crate::auth::Auth;
use crate::config::{Config, ReplayConfig};
use crate::durable::{Catalog, Positions};
use crate::event::new_run_id;
use crate::ingest::LastSeq;
use crate::limits::Limits;
use crate::memory::MemoryBudget;
use crate::metrics::Metrics;
use crate::policy::DeliveryRules;
use crate::registry::Registry;
use crate::replay::ReplayStore;
use crate::resume::BrokerReader;
use crate::sources::{self, IngestSender, SourceStatus};
use crate::telemetry::Telemetry;

/// State shared by request handlers, the admin endpoints and tests.
#[derive(Debug)]
pub struct AppState {
    /// The validated configuration the bridge started with.
    pub config: Config,
    /// Who is subscribed to what; the fan-out's index.
    pub registry: Arc<Registry>,
    /// The daemon's own Prometheus metrics, served on `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The ingest path, for `/publish`.
    pub ingest: IngestSender,
    /// This process's run id: the first half of every event id it assigns.
    pub run_id: u64,
    /// The last sequence the sequencer published: where a new stream starts.
    pub last_seq: Arc<LastSeq>,
    /// Recent events per topic, for `Last-Event-ID` resume.
    pub replay: Arc<ReplayStore>,
    /// Durable streams (JetStream, Redis Streams), where the sequencer stands in them, and the
    /// bounded reader that replays them for resumes older than the ring.
    pub catalog: Arc<Catalog>,
    /// Where the sequencer stands in each durable stream.
    pub positions: Arc<Positions>,
    /// Reads durable streams back for resumes older than the ring.
    pub broker_reader: Arc<BrokerReader>,
    /// The process memory budget; over it, new streams and publishes are refused.
    pub memory: Arc<MemoryBudget>,
    /// Traces; `Telemetry::off()` unless `telemetry.traces` is on.
    pub telemetry: Arc<Telemetry>,
    /// One entry per configured broker source.
    pub sources: Vec<Arc<SourceStatus>>,
    /// Topic authorization (`[auth]`); without it every topic is public.
    pub auth: Auth,
    /// Admission: stream caps and the per-IP connect rate.
    pub limits: Arc<Limits>,
    /// Per-topic delivery rules (slow-consumer policy, rate).
    pub rules: DeliveryRules,
    ready: AtomicBool,
    draining: AtomicBool,
}

impl AppState {
    /// Builds the state from a validated configuration; `ingest` is the sending side of the
    /// sequencer's channel (the app keeps the receiving side). Nothing runs yet.
    pub fn new(config: Config, telemetry: Telemetry, ingest: IngestSender) -> AppState {
        let statuses = sources::configured(&config).iter().map(|s| Arc::new(SourceStatus::new(s.kind()))).collect();
        let catalog = Arc::new(Catalog::from_config(&config));
        let metrics = Arc::new(Metrics::new());
        let broker_reader = Arc::new(BrokerReader::new(&config, catalog.clone(), metrics.clone()));
        let memory = Arc::new(MemoryBudget::from_config(&config.memory));
        AppState {
            registry: Registry::new(config.fanout.shards),
            metrics,
            ingest,
            run_id: new_run_id(),
            last_seq: Arc::new(LastSeq::default()),
            replay: Arc::new(ReplayStore::new(ring_config(&config, &memory))),
            catalog,
            positions: Arc::new(Positions::default()),
            broker_reader,
            memory,
            telemetry: Arc::new(telemetry),
            sources: statuses,
            auth: Auth::new(config.auth.as_ref(), config.server.max_topic_length),
            limits: Limits::new(config.limits.clone(), config.server.retry, config.server.retry_max),
            rules: DeliveryRules::new(&config.delivery, config.server.slow_consumer),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            config,
        }
    }

    /// Whether shutdown has begun (new streams get 503, `/readyz` fails).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Whether the listeners run and the app is not draining.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_draining()
    }

    /// Called by the app once its listeners run: `/readyz` answers `200` from now on.
    pub(crate) fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Called by the app when shutdown begins: new streams are refused, `/readyz` fails.
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}

/// The replay store's bounds, with its global budget capped at half the memory budget so the
/// rings alone never push the process over it.
fn ring_config(config: &Config, memory: &MemoryBudget) -> ReplayConfig {
    let mut ring = config.replay.clone();
    if let Some(limit) = memory.limit()
        && ring.max_total_bytes > limit / 2
    {
        info!(configured = ring.max_total_bytes, capped = limit / 2, "Replay budget capped at half the memory budget.");
        ring.max_total_bytes = limit / 2;
    }
    ring
}
