//! The admin listener: `/healthz` (the process is alive), `/readyz` (ready to serve),
//! `/metrics` (Prometheus). Bound to loopback by default.
//!
//! With `admin.profiling = true`, also the profiles the runbooks need ([`profile`]: heap and
//! CPU in pprof format) and a dump of what the runtime is doing ([`runtime`]). They exist on
//! this listener only: the public listener never routes them.
//!
//! Readiness is about this process only: listening and not draining. A broker outage does not
//! make the bridge unready: streams stay open, `/publish` and other sources keep working, and
//! taking every replica out of a load balancer during a shared broker outage would turn a
//! partial outage into a total one. Broker state is reported in the `/readyz` body and in
//! `sse_bridge_broker_up`, where alerts belong.

pub mod profile;
pub mod runtime;

use std::convert::Infallible;
use std::sync::Arc;

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio_util::task::TaskTracker;

use crate::metrics::{LeLabel, QUEUE_DEPTH_BUCKETS, SourceLabel};
use crate::process::{cpu_seconds, heap_bytes, resident_memory_bytes};
use crate::sse::body::ResponseBody;
use crate::sse::response::{json, text};
use crate::state::AppState;

/// Answers one admin request. `tasks` is the app's task tracker, which `/debug/runtime` counts.
pub async fn handle(
    req: Request<Incoming>,
    state: Arc<AppState>,
    tasks: TaskTracker,
) -> Result<Response<ResponseBody>, Infallible> {
    if req.method() != Method::GET {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "admin endpoints take GET"));
    }
    let path = req.uri().path();
    if path.starts_with("/debug/") {
        return Ok(debug(&req, &state, &tasks).await);
    }
    Ok(match path {
        "/healthz" => text(StatusCode::OK, "ok"),
        "/readyz" => readyz(&state),
        "/metrics" => metrics(&state),
        _ => text(StatusCode::NOT_FOUND, "no such endpoint: /healthz, /readyz, /metrics"),
    })
}

/// The profiling endpoints, when `admin.profiling` is on; 404 otherwise, as if absent.
async fn debug(req: &Request<Incoming>, state: &AppState, tasks: &TaskTracker) -> Response<ResponseBody> {
    if !state.config.admin.profiling {
        return text(StatusCode::NOT_FOUND, "no such endpoint: profiling is off (admin.profiling = false)");
    }
    match req.uri().path() {
        "/debug/pprof/heap" => profile::heap().await,
        "/debug/pprof/profile" => profile::cpu(req.uri().query(), &state.memory).await,
        "/debug/runtime" => json(StatusCode::OK, &runtime::dump(state, tasks)),
        _ => text(
            StatusCode::NOT_FOUND,
            "no such endpoint: /debug/pprof/heap, /debug/pprof/profile?seconds=N, /debug/runtime",
        ),
    }
}

fn readyz(state: &AppState) -> Response<ResponseBody> {
    let sources: serde_json::Map<String, serde_json::Value> = state
        .sources
        .iter()
        .map(|s| (s.kind.as_str().to_owned(), (if s.is_connected() { "connected" } else { "disconnected" }).into()))
        .collect();
    let ready = state.is_ready();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    json(status, &serde_json::json!({ "ready": ready, "draining": state.is_draining(), "sources": sources }))
}

fn metrics(state: &AppState) -> Response<ResponseBody> {
    let m = &state.metrics;
    let streams = state.registry.subscriber_count();
    m.open_streams.set(streams as i64);
    m.subscription_filters.set(state.registry.filter_count() as i64);
    m.distinct_patterns.set(state.limits.distinct_patterns() as i64);
    m.queued_frames.set(state.registry.queued_frames() as i64);
    m.ingest_queue_depth.set((state.ingest.max_capacity() - state.ingest.capacity()) as i64);
    m.ingest_queue_bytes.set(state.ingest.queued_bytes() as i64);
    m.alive_tasks.set(tokio::runtime::Handle::current().metrics().num_alive_tasks() as i64);
    let replay = state.replay.stats();
    m.replay_events.set(replay.events as i64);
    m.replay_bytes.set(replay.bytes as i64);
    m.replay_topics.set(replay.topics as i64);
    m.heap.set(heap_bytes().unwrap_or(0) as i64);
    m.memory_limit.set(state.memory.limit().unwrap_or(0) as i64);
    // A counter mirrored from the kernel's figure: add what it grew since the last scrape.
    m.cpu_seconds.inc_by((cpu_seconds() - m.cpu_seconds.get()).max(0.0));
    let mut depths = [0i64; QUEUE_DEPTH_BUCKETS.len()];
    state.registry.for_each_queue(|q| {
        let n = q.live_len();
        for (i, (le, _)) in QUEUE_DEPTH_BUCKETS.iter().enumerate() {
            if n <= *le {
                depths[i] += 1;
            }
        }
    });
    for (i, (_, label)) in QUEUE_DEPTH_BUCKETS.iter().enumerate() {
        m.queue_depth.get_or_create(&LeLabel { le: label }).set(depths[i]);
    }
    m.resident_memory.set(resident_memory_bytes() as i64);
    for s in &state.sources {
        let label = SourceLabel { source: s.kind.as_str() };
        m.broker_up.get_or_create(&label).set(s.is_connected() as i64);
        let c = m.broker_reconnects.get_or_create(&label);
        c.inc_by(s.reconnects().saturating_sub(c.get()));
        let c = m.events_malformed.get_or_create(&label);
        c.inc_by(s.malformed().saturating_sub(c.get()));
    }
    let mut r = Response::new(ResponseBody::full(m.encode()));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"));
    r
}
