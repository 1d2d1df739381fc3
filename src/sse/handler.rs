//! Routes and request handling for the public listener: `GET /events` (SSE), `POST /publish`,
//! CORS preflight. Every refusal is a plain HTTP status with a one-line reason.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tracing::debug;

use super::body::{ResponseBody, SseBody, StreamParts};
use super::server::Conn;
use crate::app::AppState;
use crate::client::{ClientQueue, GAP_EVENT};
use crate::durable::{self, resume::ResumeInputs};
use crate::event::{RESERVED_EVENT_PREFIX, frame_control};
use crate::input::truncate;
use crate::limits::Refusal;
use crate::replay::{Cursor, MAX_CURSOR_LEN};
use crate::sources::PUBLISHED_AT_HEADER;
use crate::sources::publish::{PublishError, publish};
use crate::telemetry::TraceContext;
use crate::topic::TopicFilter;

/// Longest query string accepted; far above any sane list of topics, far below abuse.
const MAX_QUERY_BYTES: usize = 16 * 1024;

/// Answers one request that arrived on `conn`.
pub async fn handle(
    req: Request<Incoming>,
    state: Arc<AppState>,
    conn: Conn,
) -> Result<Response<ResponseBody>, Infallible> {
    if req.method() == Method::GET && req.uri().path() == "/events" {
        return Ok(events_with_cors(&req, &state, conn));
    }
    let origin = req.headers().get(header::ORIGIN).cloned();
    let preflight_req = req.method() == Method::OPTIONS;
    let mut resp = match (req.method(), req.uri().path()) {
        (&Method::POST, "/publish") => publish_handler(req, &state).await,
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
pub fn events_with_cors<B>(req: &Request<B>, state: &Arc<AppState>, conn: Conn) -> Response<ResponseBody> {
    let mut resp = events(req, state, conn);
    state.cors.apply(req.headers().get(header::ORIGIN), false, resp.headers_mut());
    resp
}

fn events<B>(req: &Request<B>, state: &Arc<AppState>, conn: Conn) -> Response<ResponseBody> {
    let cfg = &state.config.server;
    if state.is_draining() {
        state.metrics.count_rejected("draining");
        let mut r = text(StatusCode::SERVICE_UNAVAILABLE, "the bridge is shutting down; reconnect");
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    }
    let query = req.uri().query().unwrap_or("");
    if query.len() > MAX_QUERY_BYTES {
        return bad_request(state, "query_too_long", &format!("query string is longer than {MAX_QUERY_BYTES} bytes"));
    }
    let mut filters: Vec<TopicFilter> = Vec::new();
    let mut query_last_id = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "topic" => {
                if filters.len() >= cfg.max_topics_per_connection {
                    return bad_request(
                        state,
                        "too_many_topics",
                        &format!("too many topics: at most {} per connection", cfg.max_topics_per_connection),
                    );
                }
                match TopicFilter::parse(&v, cfg.max_topic_length) {
                    Ok(f) if !filters.contains(&f) => filters.push(f),
                    Ok(_) => {}
                    Err(e) => {
                        return bad_request(state, "bad_topic", &format!("topic {:?}: {e}", truncate(&v, 64)));
                    }
                }
            }
            "lastEventId" => query_last_id = Some(v.into_owned()),
            _ => {}
        }
    }
    if filters.is_empty() {
        return bad_request(
            state,
            "no_topic",
            "no topic: add ?topic=NAME (repeat for more; NATS-style patterns allowed)",
        );
    }
    // The header wins: browsers send the newest id there, while the URL keeps the first one.
    let last_event_id = match req.headers().get("last-event-id") {
        Some(v) => Some(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        None => query_last_id,
    }
    .filter(|s| !s.is_empty());
    // Input bounds (headers, Last-Event-ID) and topic authorization; see sse/guard.rs.
    if let Err(refused) = super::guard::events(state, req, &filters) {
        return *refused;
    }

    // Admission last: a malformed request never consumes a connect token or a stream slot.
    if state.memory.is_over() {
        return over_budget(state);
    }
    let client_ip = state.trusted_proxies.client_ip(conn.peer.ip(), req.headers());
    let permit = match state.limits.admit(client_ip) {
        Ok(p) => p,
        Err(refusal) => {
            state.metrics.count_rejected(refusal.label());
            let status = match refusal {
                Refusal::AtCapacity(_) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::TOO_MANY_REQUESTS,
            };
            let mut r = text(status, &refusal.to_string());
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(refusal.retry_after_secs()));
            return r;
        }
    };
    let rate = state.rules.rate_for(&filters);
    let queue = Arc::new(ClientQueue::new(cfg.queue_capacity, conn.handle, jittered(cfg.max_stream_age)));
    queue.push_backlog(state.opening_frame.clone());
    let topics: Vec<String> = filters.iter().map(|f| f.as_str().to_owned()).collect();
    let mut span = state.telemetry.stream(&topics, last_event_id.is_some());
    // The resume runs atomically with the registration; see Registry::subscribe_from.
    let mut broker_resume = None;
    let subscription = state.registry.subscribe_from(filters, queue.clone(), |filters, q| {
        // Positions first, then the sequence: the sequencer publishes them in the other order.
        let snapshot = (!state.catalog.is_empty()).then(|| state.positions.snapshot());
        let upto = state.last_seq.get();
        let Some(id) = &last_event_id else { return upto };
        if let Some(snapshot) = snapshot {
            let inputs = ResumeInputs {
                catalog: &state.catalog,
                replay: &state.replay,
                reader: &state.broker_reader,
                metrics: &state.metrics,
                run_id: state.run_id,
                upto,
                snapshot,
            };
            if let Some((covered, resume)) = durable::resume::plan(inputs, filters, &queue, id) {
                broker_resume = resume;
                return covered;
            }
        }
        // Without durable streams the id is `<run>-<seq>`; with them, that is its first part.
        let base = id.split_once('_').map_or(id.as_str(), |(b, _)| b);
        let plan = state.replay.resume(filters, Cursor::parse(base, state.run_id, upto), upto);
        if let Some((reason, gap_topics)) = &plan.gap {
            let data = serde_json::json!({
                "reason": reason.as_str(),
                "topics": gap_topics,
                "last_event_id": truncate(id, MAX_CURSOR_LEN),
            });
            q.push_backlog(frame_control(GAP_EVENT, &data.to_string()));
            state.metrics.count_gap(reason.as_str());
        }
        state.metrics.replayed_events.inc_by(plan.events.len() as u64);
        if let Some(s) = &mut span {
            s.resumed(plan.events.len(), plan.gap.as_ref().map(|(r, _)| r.as_str()));
        }
        for e in plan.events {
            q.push_backlog(e.frame.clone());
        }
        upto
    });
    debug!(?topics, resume = last_event_id.is_some(), backlog = queue.len(), "Stream opened.");
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(ResponseBody::Sse(SseBody::new(StreamParts {
            queue,
            subscription,
            permit,
            rate,
            span,
            metrics: state.metrics.clone(),
            resume: broker_resume.map(|r| Box::pin(r.run()) as _),
        })))
        .expect("static headers are valid")
}

/// `age` ±10 %, so streams opened together (after a deploy) do not all end together.
fn jittered(age: std::time::Duration) -> Option<std::time::Duration> {
    (!age.is_zero()).then(|| age.mul_f64(rand::random_range(0.9..1.1)))
}

async fn publish_handler(req: Request<Incoming>, state: &Arc<AppState>) -> Response<ResponseBody> {
    let cfg = &state.config.publish;
    if state.memory.is_over() {
        return over_budget(state);
    }
    // publish.token or a JWT with publish grants, and input bounds; see sse/guard.rs.
    if let Err(refused) = super::guard::publish(state, &req) {
        return *refused;
    }
    let mut topic = None;
    let mut event_type = None;
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match &*k {
            "topic" if topic.is_some() => {
                return bad_request(state, "bad_topic", "give exactly one topic");
            }
            "topic" => topic = Some(v.into_owned()),
            "event" => event_type = Some(v.into_owned()),
            _ => {}
        }
    }
    let Some(topic) = topic else {
        return bad_request(state, "no_topic", "no topic: add ?topic=NAME");
    };
    if let Some(stream) = state.catalog.owner_of(&topic) {
        return bad_request(
            state,
            "durable_topic",
            &format!(
                "topic belongs to durable stream {:?}: publish to the broker, which keeps its history",
                stream.name
            ),
        );
    }
    match TopicFilter::parse(&topic, state.config.server.max_topic_length) {
        Ok(TopicFilter::Exact(_)) => {}
        Ok(TopicFilter::Pattern(_)) => {
            return bad_request(state, "bad_topic", "cannot publish to a pattern: name one topic");
        }
        Err(e) => {
            return bad_request(state, "bad_topic", &format!("topic {:?}: {e}", truncate(&topic, 64)));
        }
    }
    if let Some(t) = &event_type
        && (t.is_empty() || t.contains(['\r', '\n']) || t.starts_with(RESERVED_EVENT_PREFIX))
    {
        return bad_request(
            state,
            "bad_event",
            "event type must be non-empty, one line, and not start with \"sse-bridge.\"",
        );
    }
    let trace = TraceContext {
        traceparent: header_string(req.headers(), "traceparent"),
        tracestate: header_string(req.headers(), "tracestate"),
        published_at_ms: header_string(req.headers(), PUBLISHED_AT_HEADER).and_then(|v| v.trim().parse().ok()),
    };
    let body = match Limited::new(req.into_body(), cfg.max_body_bytes).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            state.metrics.count_rejected("body_too_large");
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("body is larger than publish.max_body_bytes ({})", cfg.max_body_bytes),
            );
        }
        Err(e) => {
            return text(StatusCode::BAD_REQUEST, &format!("could not read body: {e}"));
        }
    };
    match publish(&state.ingest, topic, event_type, body, trace).await {
        Ok(id) => json(StatusCode::OK, &serde_json::json!({ "id": id })),
        Err(PublishError::ShuttingDown) => text(StatusCode::SERVICE_UNAVAILABLE, "the bridge is shutting down"),
    }
}

fn header_string(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

fn preflight() -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

fn over_budget(state: &AppState) -> Response<ResponseBody> {
    state.metrics.count_rejected("memory_budget");
    let mut r = text(StatusCode::SERVICE_UNAVAILABLE, "over the memory budget; retry shortly");
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

fn method_not_allowed(allow: &'static str) -> Response<ResponseBody> {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, &format!("method not allowed: use {allow}"));
    r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

fn bad_request(state: &AppState, reason: &'static str, msg: &str) -> Response<ResponseBody> {
    state.metrics.count_rejected(reason);
    text(StatusCode::BAD_REQUEST, msg)
}

/// A plain-text response with a one-line reason.
pub fn text(status: StatusCode, msg: &str) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(Bytes::from(format!("{msg}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// A JSON response.
pub fn json(status: StatusCode, v: &serde_json::Value) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(Bytes::from(format!("{v}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
