//! The application: owns every task, wires sources → sequencer → registry → SSE listener,
//! and runs the shutdown sequence. The state those tasks share is in [`crate::state`].
//!
//! `App::run(listener, admin_listener, shutdown)` is the testable entry point: tests bind
//! `127.0.0.1:0` and pass any future as `shutdown`; `main` passes the signal future.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::admin;
use crate::client::{CloseReason, now_ms};
use crate::config::Config;
use crate::drain;
use crate::ingest::Sequencer;
use crate::memory::MemoryBudget;
use crate::sources::{self, IngestReceiver};
use crate::sse::conn::Lifecycle;
use crate::sse::h1::LeanEvents;
use crate::sse::handler;
use crate::sse::public_state::PublicState;
use crate::sse::server;
use crate::sse::tls::TlsListener;
use crate::state::AppState;
use crate::telemetry::Telemetry;

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
    ingest_rx: IngestReceiver,
}

/// Heartbeat comment: the shortest valid SSE comment; keeps proxies and dead-peer detection busy.
const HEARTBEAT: &[u8] = b":\n\n";

/// The running tasks and the signals that stop them, in the order shutdown uses them.
struct Tasks {
    tracker: TaskTracker,
    /// Listeners and connections (stop accepting, graceful end, hard stop).
    life: Lifecycle,
    stop_sources: CancellationToken,
    stop_ingest: CancellationToken,
}

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
    pub fn with_telemetry(mut config: Config, telemetry: Telemetry) -> App {
        MemoryBudget::from_config(&config.memory).fit_broker_side(&mut config);
        let (tx, rx) = sources::ingest_channel(config.fanout.ingest_queue, config.fanout.ingest_queue_bytes);
        App { state: Arc::new(AppState::new(config, telemetry, tx)), ingest_rx: rx }
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
        let tracker = TaskTracker::new();
        let tasks = Tasks {
            life: Lifecycle {
                stop_accepting: CancellationToken::new(),
                graceful: CancellationToken::new(),
                hard_stop: CancellationToken::new(),
                tracker: tracker.clone(),
            },
            tracker,
            stop_sources: CancellationToken::new(),
            stop_ingest: CancellationToken::new(),
        };
        // Heap sampling starts before anything allocates for clients, so profiles see it all.
        admin::profile::activate(state.config.admin.profiling).await;
        start_ingest(&state, self.ingest_rx, &tasks);
        tasks.tracker.spawn(housekeeping(state.clone(), tasks.life.graceful.clone()));
        start_listeners(&state, listener, admin_listener, &tasks.life);
        state.mark_ready();

        shutdown.await;
        let outcome = drain(&state, &tasks).await;
        let telemetry = state.telemetry.clone();
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
        info!(?outcome, "Stopped.");
        outcome
    }
}

/// Starts the sequencer on the ingest channel, and one task per configured broker source.
fn start_ingest(state: &Arc<AppState>, ingest_rx: IngestReceiver, tasks: &Tasks) {
    let cfg = &state.config;
    let tracker = &tasks.tracker;
    let sequencer = Sequencer::new(state.pipeline.clone());
    tracker.spawn(sequencer.run(ingest_rx, tasks.stop_ingest.clone()));
    // `state.sources` was built from the same list, in the same order.
    for (source, status) in sources::configured(cfg).into_iter().zip(&state.sources) {
        let (tx, status, stop) = (state.ingest.clone(), status.clone(), tasks.stop_sources.clone());
        let interest = state.interest.table(source.kind().as_str()).map(|t| (t, cfg.interest.batch));
        tracker.spawn(source.run(state.catalog.clone(), tx, status, stop, interest));
    }
}

/// Starts the public listener (hyper, with the lean HTTP/1.1 path for `GET /events`) and the
/// admin listener.
fn start_listeners(state: &Arc<AppState>, listener: TcpListener, admin_listener: TcpListener, life: &Lifecycle) {
    let cfg = &state.config.server;
    let builder = Arc::new(server::http_builder(life.tracker.clone(), cfg.header_read_timeout));
    let public_state = Arc::new(PublicState::new(state.clone()));
    let hyper_state = public_state.clone();
    let trusted_proxies = public_state.trusted_proxies.clone();
    let public = move |req, conn| handler::handle(req, hyper_state.clone(), conn);
    // Plain HTTP/1.x `GET /events` skips hyper (and its 16 KiB of buffers per connection).
    let lean = Arc::new(LeanEvents {
        handler: Box::new(move |req, conn| handler::events_with_cors(req, &public_state, conn)),
        header_read_timeout: cfg.header_read_timeout,
    });
    let conns = state.metrics.open_connections.clone();
    let heads =
        Arc::new(server::HeadGate { limits: state.limits.clone(), trusted_proxies, metrics: state.metrics.clone() });
    // The files were checked at startup (crate::startup); if they broke since, the public
    // listener stays closed rather than serving plain HTTP where TLS was asked for.
    match cfg.tls.as_ref().map(|t| TlsListener::new(t, cfg.header_read_timeout)).transpose() {
        Ok(tls) => {
            let task = server::serve(
                listener,
                builder.clone(),
                public,
                Some(lean),
                tls,
                Some(heads),
                life.clone(),
                "public",
                conns,
            );
            life.tracker.spawn(task);
        }
        Err(e) => error!(error = %e, "Cannot load server.tls; the public listener is not serving."),
    }
    let (admin_state, tracker) = (state.clone(), life.tracker.clone());
    let admin = move |req, _conn| admin::handle(req, admin_state.clone(), tracker.clone());
    life.tracker.spawn(server::serve(
        admin_listener,
        builder,
        admin,
        None,
        None,
        None,
        life.clone(),
        "admin",
        Default::default(),
    ));
}

/// The shutdown sequence (a "lame duck"): readiness fails and new streams get the draining
/// refusal at once; open streams end in batches over `drain_spread` × `drain_timeout` (see
/// [`crate::drain`]) while the listeners and the sources keep running, so streams waiting for
/// their turn keep receiving events; once the last stream has ended, stop accepting, stop the
/// sources and the sequencer, and wait for every task up to `drain_timeout` after the signal
/// before cutting what is left.
async fn drain(state: &AppState, tasks: &Tasks) -> RunOutcome {
    let cfg = &state.config.server;
    let (life, tracker) = (&tasks.life, &tasks.tracker);
    let deadline = tokio::time::Instant::now() + cfg.drain_timeout;
    let window = cfg.drain_timeout.mul_f64(cfg.drain_spread);
    let open = state.registry.subscriber_count();
    info!(open_streams = open, drain_timeout = ?cfg.drain_timeout, ?window, "Shutting down: ending streams.");
    state.start_draining();
    let retry = || state.limits.draining_hint();
    if window.is_zero() {
        drain::end_streams_now(&state.registry, retry);
    } else {
        drain::end_streams_paced(&state.registry, window, retry, &state.metrics).await;
    }
    // A stream that slipped in while the flag was being set ends too, and none can start now.
    state.registry.close_all(CloseReason::Shutdown);
    let all_ended = async {
        while state.registry.subscriber_count() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let _ = tokio::time::timeout_at(deadline, all_ended).await;
    life.stop_accepting.cancel();
    life.graceful.cancel();
    tasks.stop_sources.cancel();
    tasks.stop_ingest.cancel();
    tracker.close();
    match tokio::time::timeout_at(deadline, tracker.wait()).await {
        Ok(()) => RunOutcome::Drained,
        Err(_) => {
            warn!(remaining_tasks = tracker.len(), "Drain time ran out; cutting remaining connections.");
            life.hard_stop.cancel();
            // Every task selects on hard_stop or ends on its own; this returns promptly.
            let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
            RunOutcome::DrainTimedOut
        }
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
        state.memory.release_freed(&state.metrics);
    }
}
