//! The small fixed responses every route sends: a one-line plain-text reason, a JSON value,
//! and the refusals built from them (`400` counted by reason, `503` with `Retry-After`).
//!
//! They sit beside the body types ([`super::body`]) so the guard, the handlers and the admin
//! endpoints answer the same way without importing one another.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use super::body::ResponseBody;
use crate::metrics::Metrics;

/// A response that ends a request early, boxed: it travels up through `Result`s, and a
/// refusal is rare enough that its allocation does not matter.
pub type Refused = Box<Response<ResponseBody>>;

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

/// `400` with `msg`, counted in `sse_bridge_requests_rejected_total{reason}`.
pub fn bad_request(metrics: &Metrics, reason: &'static str, msg: &str) -> Refused {
    metrics.count_rejected(reason);
    Box::new(text(StatusCode::BAD_REQUEST, msg))
}

/// `503` with `msg` and `Retry-After: 1`, counted under `reason`: a refusal that passes on
/// its own (shutdown, memory pressure), so the client is told to come back soon.
pub fn unavailable(metrics: &Metrics, reason: &'static str, msg: &str) -> Refused {
    metrics.count_rejected(reason);
    let mut r = text(StatusCode::SERVICE_UNAVAILABLE, msg);
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    Box::new(r)
}

/// `503` while the process is over its memory budget (see `crate::memory`).
pub fn over_budget(metrics: &Metrics) -> Refused {
    unavailable(metrics, "memory_budget", "over the memory budget; retry shortly")
}
