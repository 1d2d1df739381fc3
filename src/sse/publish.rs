//! `POST /publish`: an HTTP client publishes one event to one topic, through the same ingest
//! path as the brokers.
//!
//! The steps, in order: the memory budget → header bounds and the query
//! ([`PublishQuery::parse`]) → the credential ([`super::guard::publish`]) → the topic and event
//! type → the body (at most `publish.max_body_bytes`) → the sequencer, whose id is the answer.

use bytes::Bytes;
use http::header::HeaderMap;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::body::ResponseBody;
use super::guard;
use super::request::PublishQuery;
use super::response::{Refused, bad_request, json, over_budget, text};
use crate::event::RESERVED_EVENT_PREFIX;
use crate::sources::PUBLISHED_AT_HEADER;
use crate::sources::publish::{PublishError, publish as send};
use crate::state::AppState;
use crate::telemetry::TraceContext;
use crate::topic::{TopicFilter, truncate};

/// What a publish request sends, once checked.
struct Checked {
    topic: String,
    event_type: Option<String>,
    trace: TraceContext,
}

/// Answers one `POST /publish`.
pub async fn publish(req: Request<Incoming>, app: &AppState) -> Response<ResponseBody> {
    let checked = match check(&req, app) {
        Ok(c) => c,
        Err(refused) => return *refused,
    };
    let body = match read_body(req, app).await {
        Ok(b) => b,
        Err(refused) => return *refused,
    };
    match send(&app.ingest, checked.topic, checked.event_type, body, checked.trace).await {
        Ok(id) => json(StatusCode::OK, &serde_json::json!({ "id": id })),
        Err(PublishError::ShuttingDown) => text(StatusCode::SERVICE_UNAVAILABLE, "the bridge is shutting down"),
    }
}

/// Everything before the body: budget, bounds, credential, topic, event type.
fn check<B>(req: &Request<B>, app: &AppState) -> Result<Checked, Refused> {
    if app.memory.is_over() {
        return Err(over_budget(&app.metrics));
    }
    // publish.token or a JWT with publish grants, and input bounds; see sse/guard.rs.
    guard::check_headers(app, req.headers())?;
    let query = PublishQuery::parse(req).map_err(|e| e.refuse(&app.metrics))?;
    guard::publish(app, req, &query)?;
    let refuse = |reason, msg: &str| bad_request(&app.metrics, reason, msg);
    if query.extra_topic {
        return Err(refuse("bad_topic", "give exactly one topic"));
    }
    let Some(topic) = query.topic else {
        return Err(refuse("no_topic", "no topic: add ?topic=NAME"));
    };
    if let Some(stream) = app.catalog.owner_of(&topic) {
        let msg = format!(
            "topic belongs to durable stream {:?}: publish to the broker, which keeps its history",
            stream.name
        );
        return Err(refuse("durable_topic", &msg));
    }
    match TopicFilter::parse(&topic, app.config.server.max_topic_length) {
        Ok(TopicFilter::Exact(_)) => {}
        Ok(TopicFilter::Pattern(_)) => return Err(refuse("bad_topic", "cannot publish to a pattern: name one topic")),
        Err(e) => return Err(refuse("bad_topic", &format!("topic {:?}: {e}", truncate(&topic, 64)))),
    }
    if let Some(t) = &query.event_type
        && (t.is_empty() || t.contains(['\r', '\n']) || t.starts_with(RESERVED_EVENT_PREFIX))
    {
        let msg = "event type must be non-empty, one line, and not start with \"sse-bridge.\"";
        return Err(refuse("bad_event", msg));
    }
    let h = req.headers();
    let trace = TraceContext {
        traceparent: header_string(h, "traceparent"),
        tracestate: header_string(h, "tracestate"),
        published_at_ms: header_string(h, PUBLISHED_AT_HEADER).and_then(|v| v.trim().parse().ok()),
    };
    Ok(Checked { topic, event_type: query.event_type, trace })
}

/// The request body, up to `publish.max_body_bytes`.
async fn read_body(req: Request<Incoming>, app: &AppState) -> Result<Bytes, Refused> {
    let max = app.config.publish.max_body_bytes;
    match Limited::new(req.into_body(), max).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            app.metrics.count_rejected("body_too_large");
            let msg = format!("body is larger than publish.max_body_bytes ({max})");
            Err(Box::new(text(StatusCode::PAYLOAD_TOO_LARGE, &msg)))
        }
        Err(e) => Err(Box::new(text(StatusCode::BAD_REQUEST, &format!("could not read body: {e}")))),
    }
}

fn header_string(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}
