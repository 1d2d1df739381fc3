//! Routes and request handling for the public listener: `GET /events` (SSE), `POST /publish`
//! (in [`super::publish`]), CORS preflight, and `GET /` (the demo page, [`super::demo`]) when
//! `server.demo_page` is on. A refusal that time can fix is a short event stream
//! with a `retry:` hint ([`super::refusal`]); every other refusal is a plain HTTP status with a
//! one-line reason.
//!
//! Opening a stream is a pipeline of named steps over one parsed request: parse
//! (`EventsRequest::parse`) → authorize (`guard::events`, and `upstream::check` against the
//! on-demand allowlists) → admit (`admit`, then `upstream::hold`) → subscribe,
//! which resumes from the client's cursor under the registry lock (`subscribe`, `resume_from`) →
//! respond (`respond`). The first refusal ends the request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use governor::Quota;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tracing::debug;

use super::body::{Rereader, ResponseBody, SseBody, StreamParts};
use super::conn::Conn;
use super::demo;
use super::guard;
use super::public_state::PublicState;
use super::publish::publish;
use super::refusal::refuse;
use super::request::{EventsRequest, TopicBounds};
use super::response::{Refused, text};
use super::upstream;
use crate::client::{ClientQueue, ConnHandle};
use crate::interest::Holds;
use crate::limits::StreamPermit;
use crate::registry::Subscription;
use crate::resume::{self, PendingResume, ResumeContext};
use crate::retry_hint::RetryReason;
use crate::state::AppState;
use crate::telemetry::StreamSpan;
use crate::topic::TopicFilter;

/// Answers one request that arrived on `conn`.
pub async fn handle(
    req: Request<Incoming>,
    state: Arc<PublicState>,
    conn: Conn,
) -> Result<Response<ResponseBody>, Infallible> {
    if req.method() == Method::GET && req.uri().path() == "/events" {
        return Ok(events_with_cors(&req, &state, conn));
    }
    let origin = req.headers().get(header::ORIGIN).cloned();
    let preflight_req = req.method() == Method::OPTIONS;
    let demo_page = state.app.config.server.demo_page;
    let mut resp = match (req.method(), req.uri().path()) {
        (&Method::POST, "/publish") => publish(req, &state.app).await,
        (&Method::GET, "/") if demo_page => demo::page(),
        (_, "/") if demo_page => method_not_allowed("GET"),
        (&Method::OPTIONS, "/events" | "/publish") => preflight(),
        (_, "/events") => method_not_allowed("GET, OPTIONS"),
        (_, "/publish") => method_not_allowed("POST, OPTIONS"),
        _ => text(StatusCode::NOT_FOUND, "no such endpoint: use GET /events?topic=NAME or POST /publish?topic=NAME"),
    };
    state.cors.apply(origin.as_ref(), preflight_req, resp.headers_mut());
    Ok(resp)
}

/// `GET /events` with its CORS headers. Generic over the request body (a GET has none), so
/// a server path other than hyper's can answer it with the same rules.
pub fn events_with_cors<B>(req: &Request<B>, state: &PublicState, conn: Conn) -> Response<ResponseBody> {
    let mut resp = events(req, state, conn).unwrap_or_else(|refused| *refused);
    state.cors.apply(req.headers().get(header::ORIGIN), false, resp.headers_mut());
    resp
}

/// Opens a stream, or says why not: the steps in order.
fn events<B>(req: &Request<B>, state: &PublicState, conn: Conn) -> Result<Response<ResponseBody>, Refused> {
    let app = &state.app;
    let cfg = &app.config.server;
    if app.is_draining() {
        let client_ip = state.trusted_proxies.client_ip(conn.peer.ip(), req.headers());
        let refusal = app.limits.refusal(RetryReason::Draining, client_ip, "this replica is shutting down; reconnect");
        return Err(refuse(cfg.refusal, &app.metrics, &refusal));
    }
    let bounds = TopicBounds { max_topics: cfg.max_topics_per_connection, max_topic_length: cfg.max_topic_length };
    let request = EventsRequest::parse(req, bounds).map_err(|e| e.refuse(&app.metrics))?;
    // Input bounds (headers, Last-Event-ID) and topic authorization; see sse/guard.rs.
    guard::events(app, req, &request)?;
    upstream::check(app, &request.filters)?;
    let permit = admit(state, req, conn.peer, &request.filters, request.last_event_id.is_some())?;
    let holds = upstream::hold(state, req, conn.peer, &request.filters)?;
    let stream = subscribe(state, request, conn.handle);
    Ok(respond(app, stream, permit, holds))
}

/// Admission, last: a malformed or unauthorized request never consumes a connect token or a
/// stream slot. Refused over the memory budget, with too much replay in flight (`resuming`),
/// at the stream caps, at the pattern caps (the distinct patterns of `filters` the address and
/// the bridge would hold) or the connect rate, with the answer an EventSource survives
/// ([`super::refusal`]).
fn admit<B>(
    state: &PublicState,
    req: &Request<B>,
    peer: SocketAddr,
    filters: &[TopicFilter],
    resuming: bool,
) -> Result<StreamPermit, Refused> {
    let app = &state.app;
    let client_ip = state.trusted_proxies.client_ip(peer.ip(), req.headers());
    let replay_cap = app.config.resume.max_inflight_bytes;
    let admitted = if app.memory.is_over() {
        Err(app.limits.refusal(RetryReason::MemoryBudget, client_ip, "over the memory budget"))
    } else if resuming && replay_cap > 0 && app.metrics.replay_inflight_bytes.get() >= replay_cap as i64 {
        // Replayed frames waiting across all streams are at resume.max_inflight_bytes.
        Err(app.limits.refusal(RetryReason::ReplayBudget, client_ip, "too much replay in flight; resume later"))
    } else {
        app.limits.admit_filters(client_ip, filters)
    };
    admitted.map_err(|refusal| refuse(app.config.server.refusal, &app.metrics, &refusal))
}

/// A subscribed stream, not yet a response.
struct Subscribed {
    queue: Arc<ClientQueue>,
    subscription: Subscription,
    /// Per-connection delivery rate (`[[delivery]] max_rate`) for these filters.
    rate: Option<Quota>,
    span: Option<Box<StreamSpan>>,
    /// The read (broker or rings) a resume runs before the stream goes live.
    pending: Option<PendingResume>,
}

/// Registers the stream's queue for its filters, resuming from its cursor atomically with the
/// registration (see `Registry::subscribe_from`).
fn subscribe(state: &PublicState, request: EventsRequest, conn: ConnHandle) -> Subscribed {
    let app = &state.app;
    let cfg = &app.config.server;
    let EventsRequest { filters, last_event_id, .. } = request;
    let rate = app.rules.rate_for(&filters);
    let queue = ClientQueue::new(cfg.queue_capacity, conn, jittered(cfg.max_stream_age));
    let queue = Arc::new(queue.with_bytes(cfg.queue_bytes, app.metrics.replay_inflight_bytes.clone()));
    queue.push_backlog(state.opening_frame.clone());
    let topics: Vec<String> = filters.iter().map(|f| f.as_str().to_owned()).collect();
    let mut span = app.telemetry.stream(&topics, last_event_id.is_some());
    let mut pending = None;
    let subscription = app.registry.subscribe_from(filters, queue.clone(), |filters, _| {
        let (covered, work) = resume_from(app, filters, &queue, last_event_id.as_deref(), &mut span, false);
        pending = work;
        covered
    });
    debug!(?topics, resume = last_event_id.is_some(), backlog = queue.len(), "Stream opened.");
    Subscribed { queue, subscription, rate, span, pending }
}

/// The resume's start, run under the registry lock: takes the snapshot position and returns the
/// sequence the stream is covered up to, with the read (broker or rings) the stream body runs
/// before it goes live, if any (see [`crate::resume`]). `in_place`: the re-read of a stream that
/// spilled (`crate::client`), which reads broker ranges in pages rather than to a limit.
fn resume_from(
    app: &AppState,
    filters: &[TopicFilter],
    queue: &Arc<ClientQueue>,
    last_event_id: Option<&str>,
    span: &mut Option<Box<StreamSpan>>,
    in_place: bool,
) -> (u64, Option<PendingResume>) {
    let cx = ResumeContext {
        catalog: &app.catalog,
        positions: &app.positions,
        last_seq: &app.last_seq,
        replay: &app.replay,
        reader: &app.broker_reader,
        metrics: &app.metrics,
        run_id: app.run_id,
        in_place,
    };
    resume::not_held(&cx, &app.interest, filters, queue, last_event_id);
    resume::start(cx, filters, queue, last_event_id, span.as_deref_mut())
}

/// Answers `200` with the stream body, which holds the subscription, the admission permit and
/// the upstream holds (it starts once they are confirmed).
fn respond(
    app: &Arc<AppState>,
    stream: Subscribed,
    permit: StreamPermit,
    upstream: Option<Holds>,
) -> Response<ResponseBody> {
    let Subscribed { queue, subscription, rate, span, pending } = stream;
    let body = SseBody::new(StreamParts {
        queue,
        subscription,
        permit,
        rate,
        span,
        metrics: app.metrics.clone(),
        resume: pending.map(|r| Box::pin(r.run()) as _),
        upstream,
        reread: Some(rereader(app.clone())),
    });
    let mut r = Response::new(ResponseBody::Sse(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// The in-place resume of a stream whose queue spilled while it resumed (`crate::client`,
/// `spill-reread`): from the id of the last event it wrote, under the registry lock, exactly
/// as a reconnect with that `Last-Event-ID` would resume.
fn rereader(app: Arc<AppState>) -> Rereader {
    Box::new(move |subscription, queue, last_id, span| {
        let mut pending = None;
        subscription.restart(|filters, _| {
            let spilled = queue.unspill();
            debug!(spilled, last_id, "Spilled stream resumes in place.");
            let (covered, work) = resume_from(&app, filters, queue, Some(last_id), span, true);
            pending = work;
            covered
        });
        pending.map(|r| Box::pin(r.run()) as _)
    })
}

/// `age` ±10 %, so streams opened together (after a deploy) do not all end together.
fn jittered(age: std::time::Duration) -> Option<std::time::Duration> {
    (!age.is_zero()).then(|| age.mul_f64(rand::random_range(0.9..1.1)))
}

fn preflight() -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

fn method_not_allowed(allow: &'static str) -> Response<ResponseBody> {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, &format!("method not allowed: use {allow}"));
    r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}
