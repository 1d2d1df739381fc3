//! # sse-bridge
//!
//! Streams every message published to NATS subjects and Redis channels to browsers over
//! Server-Sent Events. Publishers keep publishing to their broker; browsers use `EventSource`.
//!
//! ## Architecture
//!
//! An event flows broker → [`sources`] → [`ingest`] (one sequencer: id, framing, ring, fan-out)
//! → [`registry`] → [`client`] queues → [`sse`] (socket write). A resuming client enters at
//! [`resume`], which reads [`replay`] rings or the [`durable`] streams before it joins the
//! fan-out. The modules below are listed from the bottom layer up: a module imports only
//! modules listed above it (`tests/layering.rs` fails on any import cycle).
//!
//! **Leaves** (import nothing of the crate but each other):
//! - [`topic`]: topic names and NATS-style patterns (`*`, `>`): parse, validate, match.
//! - [`process`], [`allocator`]: what the kernel (`/proc`, through `procfs`) and jemalloc
//!   report about this process: RSS, CPU, open files, live heap and the allocator's own figures.
//! - [`metrics`]: Prometheus metrics of the daemon's own health and the standard `process_*`
//!   metrics; labels are plain strings, so it imports no domain module.
//! - [`retry_hint`]: the `retry:` a refused or drained client is told, spread so a reconnect
//!   herd comes back at the configured rate instead of at once.
//! - [`shutdown`]: the signal future `main` hands to the app.
//!
//! **Settings**:
//! - [`config`]: documented settings, layered with figment (file → `SSE_BRIDGE_*` env → flags)
//!   and validated before anything starts, with errors that name key, file and reason.
//! - [`tls_files`]: the PEM certificates, keys and CA bundles of every TLS setting, and
//!   secrets from files or the environment, read and checked in one place (key, file, reason).
//! - [`logging`], [`telemetry`]: log setup, and OpenTelemetry spans per event (receive →
//!   fan-out → delivery, ending at the last subscriber's write) and per stream; nothing at all
//!   when tracing is off. [`telemetry`] owns the W3C trace context an event carries.
//! - [`limits`]: admission: stream caps (global, per IP) and the per-IP connect rate; a refusal
//!   carries its reason and its `retry:` hint.
//! - [`policy`]: per-topic delivery rules (slow-consumer policy, delivery rate).
//! - [`auth`]: topic authorization: public/token rules per topic pattern, JWT verification
//!   (pinned algorithm, keys from a secret, a PEM file or a JWKS file), grants in a claim.
//!
//! **Events and where they wait**:
//! - [`event`]: the bridge's [`event::EventId`] (`run-seq`, plus durable positions) and the
//!   SSE framing, done once per event into one refcounted `Bytes`.
//! - [`client`]: one subscriber's bounded queue and the slow-consumer policies.
//! - [`outages`]: where a live source (core NATS, Redis pub/sub) lost messages: the topic
//!   spaces it serves, the `source-outage`/`source-dropped` reasons, and the bounded record of
//!   those losses that a resume from before one reads.
//! - [`replay`]: per-topic rings of recent events (count, bytes, global budget) that serve
//!   `Last-Event-ID` resume and prove when a resume is complete.
//! - [`durable`]: JetStream streams and Redis Streams as durable sources: their catalog and
//!   where the sequencer stands in them (the vector cursor every id carries).
//! - [`interest`]: on-demand upstream interest: per source, the filters local streams hold
//!   (refcounted, released a linger after the last stream), the allowlist and the caps; the
//!   handler holds filters, the sources subscribe them upstream.
//! - [`registry`]: sharded topic/pattern → subscriber index and the fan-out, which puts a clone
//!   of the event's `Bytes` into each matching client queue.
//! - [`memory`]: the process memory budget and what is shed when it is reached.
//! - [`drain`]: the paced drain after SIGTERM: open streams end in spread batches, each with a
//!   jittered `retry:`, so reconnects reach the other replicas spread out.
//!
//! **Inputs**:
//! - [`sources`]: NATS, Redis pub/sub, JetStream, Redis Streams and `POST /publish`. Each source
//!   copies messages out of its client, bounds what it accepts, ends each session in a named
//!   reason, reconnects with capped backoff, and feeds one bounded ingest channel.
//! - [`startup`]: the configuration as `main` loads it: every layer, then the checks of the
//!   modules built from it (token keys, durable stream tags), before anything starts.
//! - [`ingest`]: the single sequencer. It assigns ids in arrival order, frames the event,
//!   retains it for replay and hands it to the registry's fan-out. One task, one order: every
//!   client sees increasing ids, so one id is a resume cursor for all its topics.
//! - [`resume`]: `Last-Event-ID` resume: from the rings, or from the durable streams' brokers
//!   through a bounded, coalescing reader when the id is older than the ring, comes from before
//!   a restart or from a replica; a gap event where neither holds what was missed.
//!
//! **Serving**:
//! - [`state`]: [`AppState`], what every request handler shares (it derefs to the ingest
//!   pipeline's parts).
//! - [`sse`]: the public listener: a lean HTTP/1.1 path for `GET /events` (a small head buffer,
//!   chunked vectored writes) and hyper 1.x for everything else (other routes, h2c, and every
//!   connection over TLS when `[server.tls]` is set: h2 or HTTP/1.1 by ALPN); routes,
//!   CORS, refusals an `EventSource` survives, and the stream that drains a client queue into
//!   the socket.
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics` on a separate (loopback) listener, and with
//!   `admin.profiling` the heap and CPU profiles (pprof) and a runtime dump.
//! - [`app`]: owns the tasks and the shutdown sequence (readiness off → paced drain → sources
//!   stop); `App::run(listener, admin, shutdown)`.

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
pub mod interest;
pub mod limits;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod outages;
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
pub mod tls_files;
pub mod topic;

pub use app::{App, RunOutcome};
pub use config::Config;
pub use state::AppState;
