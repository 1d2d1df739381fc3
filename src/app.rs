//! The application: owns the shared state and every task, wires sources → sequencer →
//! registry → SSE listener, and runs the shutdown sequence.
//!
//! `App::run(listener, admin_listener, shutdown)` is the testable entry point: tests bind
//! `127.0.0.1:0` and pass any future as `shutdown`; `main` passes the signal future.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::admin;
use crate::auth::Auth;
use crate::client::{CloseReason, now_ms};
use crate::config::{Config, ReplayConfig};
use crate::durable::reader::BrokerReader;
use crate::durable::{Catalog, Positions};
use crate::event::new_run_id;
use crate::ingest::{LastSeq, Pipeline, Sequencer};
use crate::limits::Limits;
use crate::memory::MemoryBudget;
use crate::metrics::Metrics;
use crate::policy::DeliveryRules;
use crate::registry::Registry;
use crate::replay::ReplayStore;
use crate::sources::{self, IngestSender, SourceKind, SourceMessage, SourceStatus};
use crate::sse::client_ip::TrustedProxies;
use crate::sse::cors::Cors;
use crate::sse::h1::LeanEvents;
use crate::sse::handler;
use crate::sse::server::{self, Lifecycle};
use crate::telemetry::Telemetry;

/// State shared by request handlers, the admin endpoints and tests.
#[derive(Debug)]
pub struct AppState {
    pub config: Config,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    /// The ingest path, for `/publish`.
    pub ingest: IngestSender,
    /// This process's run id: the first half of every event id it assigns.
    pub run_id: u64,
    pub last_seq: Arc<LastSeq>,
    pub replay: Arc<ReplayStore>,
    /// Durable streams (JetStream, Redis Streams), where the sequencer stands in them, and the
    /// bounded reader that replays them for resumes older than the ring.
    pub catalog: Arc<Catalog>,
    pub positions: Arc<Positions>,
    pub broker_reader: Arc<BrokerReader>,
    pub memory: Arc<MemoryBudget>,
    /// Traces; `Telemetry::off()` unless `telemetry.traces` is on.
    pub telemetry: Arc<Telemetry>,
    /// One entry per configured broker source.
    pub sources: Vec<Arc<SourceStatus>>,
    pub cors: Cors,
    /// Topic authorization (`[auth]`); without it every topic is public.
    pub auth: Auth,
    pub limits: Arc<Limits>,
    /// Whose `X-Forwarded-For` to believe for the per-IP limits.
    pub trusted_proxies: TrustedProxies,
    pub rules: DeliveryRules,
    /// `: ok` comment plus `retry:`; sent first on every stream so headers and the reconnect
    /// delay reach the client at once. Built once, shared by all streams.
    pub opening_frame: Bytes,
    ready: AtomicBool,
    draining: AtomicBool,
}

impl AppState {
    /// Whether shutdown has begun (new streams get 503, `/readyz` fails).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Whether the listeners run and the app is not draining.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_draining()
    }
}

/// How `run` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Every stream ended within the drain time.
    Drained,
    /// The drain time ran out and the remaining connections were cut.
    DrainTimedOut,
}

/// A configured, not yet running bridge.
#[derive(Debug)]
pub struct App {
    state: Arc<AppState>,
    ingest_rx: mpsc::Receiver<SourceMessage>,
}

/// Heartbeat comment: the shortest valid SSE comment; keeps proxies and dead-peer detection busy.
const HEARTBEAT: &[u8] = b":\n\n";

impl App {
    /// Builds the state from a validated configuration. Nothing runs until [`App::run`].
    pub fn new(config: Config) -> App {
        let telemetry = Telemetry::from_config(&config.telemetry).unwrap_or_else(|e| {
            error!(error = %e, "Tracing stays off.");
            Telemetry::off()
        });
        Self::with_telemetry(config, telemetry)
    }

    /// Like [`App::new`] with a given tracer (tests export to memory).
    pub fn with_telemetry(config: Config, telemetry: Telemetry) -> App {
        let (tx, rx) = mpsc::channel(config.fanout.ingest_queue);
        let mut statuses = Vec::new();
        if config.nats.is_some() {
            statuses.push(Arc::new(SourceStatus::new(SourceKind::Nats)));
        }
        if config.redis.is_some() {
            statuses.push(Arc::new(SourceStatus::new(SourceKind::Redis)));
        }
        if config.jetstream.is_some() {
            statuses.push(Arc::new(SourceStatus::new(SourceKind::JetStream)));
        }
        if config.redis_streams.is_some() {
            statuses.push(Arc::new(SourceStatus::new(SourceKind::RedisStreams)));
        }
        let catalog = Arc::new(Catalog::from_config(&config));
        let metrics = Arc::new(Metrics::new());
        let broker_reader = Arc::new(BrokerReader::new(&config, catalog.clone(), metrics.clone()));
        let memory = Arc::new(MemoryBudget::from_config(&config.memory));
        let opening_frame = Bytes::from(format!(": ok\nretry: {}\n\n", config.server.retry.as_millis()));
        let state = AppState {
            registry: Registry::new(config.fanout.shards),
            metrics,
            ingest: tx,
            run_id: new_run_id(),
            last_seq: Arc::new(LastSeq::default()),
            replay: Arc::new(ReplayStore::new(ring_config(&config, &memory))),
            catalog,
            positions: Arc::new(Positions::default()),
            broker_reader,
            memory,
            telemetry: Arc::new(telemetry),
            sources: statuses,
            cors: Cors::new(&config.server.cors_origins),
            auth: Auth::new(config.auth.as_ref(), config.server.max_topic_length),
            limits: Limits::new(config.limits.clone()),
            trusted_proxies: TrustedProxies::new(&config.server.trusted_proxies),
            rules: DeliveryRules::new(&config.delivery, config.server.slow_consumer),
            opening_frame,
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            config,
        };
        App { state: Arc::new(state), ingest_rx: rx }
    }

    /// The shared state (registry, metrics, …), for tests and embedding.
    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `shutdown` completes, then drains: stop accepting, end every stream, stop
    /// the sources, wait up to `server.drain_timeout`, then cut what is left.
    pub async fn run(
        self,
        listener: TcpListener,
        admin_listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> RunOutcome {
        let state = self.state;
        let cfg = &state.config;
        let tracker = TaskTracker::new();
        let life = Lifecycle {
            stop_accepting: CancellationToken::new(),
            graceful: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            tracker: tracker.clone(),
        };
        let stop_sources = CancellationToken::new();
        let stop_ingest = CancellationToken::new();

        let sequencer = Sequencer::new(Arc::new(Pipeline {
            run_id: state.run_id,
            last_seq: state.last_seq.clone(),
            registry: state.registry.clone(),
            replay: state.replay.clone(),
            rules: state.rules.clone(),
            memory: state.memory.clone(),
            telemetry: state.telemetry.clone(),
            metrics: state.metrics.clone(),
            catalog: state.catalog.clone(),
            positions: state.positions.clone(),
        }));
        tracker.spawn(sequencer.run(self.ingest_rx, stop_ingest.clone()));
        for status in &state.sources {
            let (tx, status, stop) = (state.ingest.clone(), status.clone(), stop_sources.clone());
            match status.kind {
                SourceKind::Nats => {
                    tracker.spawn(sources::nats::run(cfg.nats.clone().expect("configured"), tx, status, stop));
                }
                SourceKind::Redis => {
                    tracker.spawn(sources::redis::run(cfg.redis.clone().expect("configured"), tx, status, stop));
                }
                SourceKind::JetStream => {
                    let cfg = cfg.jetstream.clone().expect("configured");
                    let catalog = state.catalog.clone();
                    tracker.spawn(sources::jetstream::run(cfg, catalog, tx, status, stop));
                }
                SourceKind::RedisStreams => {
                    let cfg = cfg.redis_streams.clone().expect("configured");
                    let catalog = state.catalog.clone();
                    tracker.spawn(sources::redis_streams::run(cfg, catalog, tx, status, stop));
                }
                SourceKind::Publish => {}
            }
        }
        tracker.spawn(housekeeping(state.clone(), life.graceful.clone()));

        let builder = Arc::new(server::http_builder(tracker.clone(), cfg.server.header_read_timeout));
        let public_state = state.clone();
        let public = move |req, kill| handler::handle(req, public_state.clone(), kill);
        // Plain HTTP/1.x `GET /events` skips hyper (and its 16 KiB of buffers per connection).
        let lean_state = state.clone();
        let lean = Arc::new(LeanEvents {
            handler: Box::new(move |req, conn| handler::events_with_cors(req, &lean_state, conn)),
            header_read_timeout: cfg.server.header_read_timeout,
        });
        let conns = state.metrics.open_connections.clone();
        tracker.spawn(server::serve(listener, builder.clone(), public, Some(lean), life.clone(), "public", conns));
        let admin_state = state.clone();
        let admin = move |req, _kill| admin::handle(req, admin_state.clone());
        tracker.spawn(server::serve(admin_listener, builder, admin, None, life.clone(), "admin", Default::default()));
        state.ready.store(true, Ordering::Release);

        shutdown.await;
        let open = state.registry.subscriber_count();
        info!(open_streams = open, drain_timeout = ?cfg.server.drain_timeout, "Shutting down: ending streams.");
        state.draining.store(true, Ordering::Release);
        life.stop_accepting.cancel();
        state.registry.close_all(CloseReason::Shutdown);
        life.graceful.cancel();
        stop_sources.cancel();
        stop_ingest.cancel();
        tracker.close();
        let outcome = match tokio::time::timeout(cfg.server.drain_timeout, tracker.wait()).await {
            Ok(()) => RunOutcome::Drained,
            Err(_) => {
                warn!(remaining_tasks = tracker.len(), "Drain time ran out; cutting remaining connections.");
                life.hard_stop.cancel();
                // Every task selects on hard_stop or ends on its own; this returns promptly.
                let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
                RunOutcome::DrainTimedOut
            }
        };
        let telemetry = state.telemetry.clone();
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
        info!(?outcome, "Stopped.");
        outcome
    }
}

/// One app-wide pass over every stream, instead of a timer per connection: heartbeats for idle
/// streams every `heartbeat_interval`, and every tick the write timeout and the maximum stream
/// age; then the connect-rate limiter forgets idle keys. Ticks at most once a second.
async fn housekeeping(state: Arc<AppState>, stop: CancellationToken) {
    let cfg = &state.config.server;
    let frame = Bytes::from_static(HEARTBEAT);
    let period = cfg.heartbeat_interval.min(Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    let mut last_heartbeat = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Half a tick of slack: ticks wake with jitter, and a tick that lands a hair short of
        // the interval must not push the heartbeat a whole tick late (for intervals up to 1s,
        // that doubled the gap between heartbeats).
        let heartbeat_due = last_heartbeat.elapsed() + period / 2 >= cfg.heartbeat_interval;
        if heartbeat_due {
            last_heartbeat = tokio::time::Instant::now();
        }
        let now = now_ms();
        state.registry.for_each_queue(|q| {
            if q.enforce_deadlines(now, cfg.write_timeout).is_none() && heartbeat_due {
                q.offer_heartbeat(&frame);
            }
        });
        state.limits.prune();
        if let Some(shed) = state.memory.check(&state.replay, &state.registry) {
            state.metrics.count_shed(shed.ring_bytes, shed.streams_closed);
        }
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
