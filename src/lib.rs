//! # sse-bridge
//!
//! Streams every message published to NATS subjects and Redis channels to browsers over
//! Server-Sent Events. Publishers keep publishing to their broker; browsers use `EventSource`.
//!
//! ## Architecture
//!
//! Modules in data-flow order; lower modules never import higher ones.
//!
//! - [`config`]: documented settings, layered with figment (file → `SSE_BRIDGE_*` env → flags)
//!   and validated before anything starts, with errors that name key, file and reason.
//! - [`topic`]: topic names and NATS-style patterns (`*`, `>`): parse, validate, match.
//! - [`event`]: the bridge's [`event::EventId`] (`run-seq`) and the SSE framing, done once per
//!   event into one refcounted `Bytes`.
//! - [`sources`]: NATS, Redis pub/sub, JetStream, Redis Streams and `POST /publish`. Each source copies messages out of its
//!   client, bounds what it accepts, reconnects with capped backoff, and feeds one bounded
//!   ingest channel.
//! - [`durable`]: JetStream streams and Redis Streams as durable sources: their catalog, where
//!   the sequencer stands in them, and the vector cursor (every id carries each durable
//!   stream's position).
//! - [`ingest`]: the single sequencer. It assigns ids in arrival order, frames the event,
//!   retains it for replay, publishes the last sequence, and hands the event to the registry's fan-out. One task,
//!   one order: every client sees increasing ids, so one id is a resume cursor for all its topics.
//! - [`replay`]: per-topic rings of recent events (count, bytes, global budget) that serve
//!   `Last-Event-ID` resume and prove when a resume is complete.
//! - [`registry`]: sharded topic/pattern → subscriber index and the fan-out, which puts a clone of
//!   the event's `Bytes` into each matching client queue (no per-subscriber work beyond that).
//! - [`policy`]: per-topic delivery rules (slow-consumer policy, delivery rate).
//! - [`client`]: one subscriber's bounded queue and the slow-consumer policies.
//! - [`auth`]: topic authorization: public/token rules per topic pattern, JWT verification
//!   (pinned algorithm, keys from a secret, a PEM file or a JWKS file), grants in a claim.
//! - [`resume`]: `Last-Event-ID` resume: from the rings, or from the durable streams' brokers
//!   through a bounded, coalescing reader when the id is older than the ring, comes from before
//!   a restart or from a replica.
//! - [`limits`]: admission: stream caps (global, per IP) and the per-IP connect rate.
//! - [`sse`]: the listener: a lean HTTP/1.1 path for `GET /events` (no per-connection buffers
//!   beyond a small head buffer; chunked, vectored writes) and hyper 1.x for everything else
//!   (other routes, h2c): routes, CORS, and the stream body that drains
//!   a client queue into the socket.
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics` on a separate (loopback) listener, and with
//!   `admin.profiling` the heap and CPU profiles (pprof) and a runtime dump.
//! - [`memory`]: the process memory budget and what is shed when it is reached.
//! - [`metrics`]: Prometheus metrics of the daemon's own health, and the standard `process_*`.
//! - [`process`], [`allocator`]: what the kernel and jemalloc report about this process.
//! - [`telemetry`]: OpenTelemetry spans per event (receive → fan-out → delivery, ending at the
//!   last subscriber's write) and per stream; nothing at all when tracing is off.
//! - [`app`]: owns the tasks and the shutdown sequence; `App::run(listener, admin, shutdown)`.
//! - [`startup`]: the configuration as `main` loads it: every layer, then the checks of the
//!   modules built from it (token keys, durable stream tags), before anything starts.
//! - [`shutdown`], [`logging`]: signal future and log setup for `main`.

pub mod admin;
pub mod allocator;
pub mod app;
pub mod auth;
pub mod client;
pub mod config;
pub mod drain;
pub mod durable;
pub mod event;
pub mod ingest;
pub mod limits;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod policy;
pub mod process;
pub mod registry;
pub mod replay;
pub mod resume;
pub mod retry_hint;
pub mod shutdown;
pub mod sources;
pub mod sse;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod topic;

pub use app::{App, RunOutcome};
pub use config::Config;
pub use state::AppState;
