//! The state every part of a running bridge shares: the public handlers (`sse`), the admin
//! endpoints (`admin`) and the task owner (`app`) read it, tests inspect it.
//!
//! It lives below all three, so none of them imports another to reach it. It is built once
//! from a validated configuration and never replaced; what changes while the bridge runs sits
//! behind the shared handles it holds (registry, rings, metrics) and the two flags of the
//! bridge's own life: ready (the listeners run) and draining (shutdown has begun).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::auth::Auth;
use crate::config::Config;
use crate::ingest::Pipeline;
use crate::interest::Interest;
use crate::limits::Limits;
use crate::resume::BrokerReader;
use crate::sources::{self, IngestSender, SourceStatus};
use crate::telemetry::Telemetry;

/// State shared by request handlers, the admin endpoints and tests.
///
/// The sequencer's parts (registry, rings, metrics, catalog, …) are the [`Pipeline`], held
/// once and shared with the sequencer task; `AppState` dereferences to it, so a handler reads
/// `state.registry` as the sequencer does, with no second copy of any handle.
#[derive(Debug)]
pub struct AppState {
    /// The validated configuration the bridge started with.
    pub config: Config,
    /// What the sequencer owns and the handlers read: run id, last sequence, registry, rings,
    /// rules, memory budget, telemetry, metrics, durable catalog and positions.
    pub pipeline: Arc<Pipeline>,
    /// The ingest path, for `/publish`.
    pub ingest: IngestSender,
    /// Reads durable streams back for resumes older than the ring.
    pub broker_reader: Arc<BrokerReader>,
    /// One entry per configured broker source.
    pub sources: Vec<Arc<SourceStatus>>,
    /// Topic authorization (`[auth]`); without it every topic is public.
    pub auth: Auth,
    /// Admission: stream caps and the per-IP connect rate.
    pub limits: Arc<Limits>,
    /// On-demand upstream interest: the allowlists and the tables the sources subscribe from.
    pub interest: Arc<Interest>,
    ready: AtomicBool,
    draining: AtomicBool,
}

impl std::ops::Deref for AppState {
    type Target = Pipeline;

    fn deref(&self) -> &Pipeline {
        &self.pipeline
    }
}

impl AppState {
    /// Builds the state from a validated configuration; `ingest` is the sending side of the
    /// sequencer's channel (the app keeps the receiving side). Nothing runs yet.
    pub fn new(config: Config, telemetry: Telemetry, ingest: IngestSender) -> AppState {
        let statuses = sources::configured(&config).iter().map(|s| Arc::new(SourceStatus::new(s.kind()))).collect();
        let pipeline = Arc::new(Pipeline::new(&config, telemetry));
        let broker_reader = Arc::new(BrokerReader::new(&config, pipeline.catalog.clone(), pipeline.metrics.clone()));
        let last_seq = pipeline.last_seq.clone();
        let interest = Arc::new(Interest::new(&config, Arc::new(move || last_seq.get()), &pipeline.metrics));
        AppState {
            pipeline,
            ingest,
            broker_reader,
            sources: statuses,
            auth: Auth::new(config.auth.as_ref(), config.server.max_topic_length),
            limits: Limits::new(config.limits.clone(), config.server.retry, config.server.retry_max),
            interest,
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
