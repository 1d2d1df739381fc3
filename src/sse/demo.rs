//! `GET /` with `server.demo_page = true`: one small HTML page (`demo.html`, compiled in) for a
//! newcomer's first minute. It subscribes to the public demo topics with a plain
//! `EventSource` and shows events, ids, `sse-bridge.gap` events and reconnects as they
//! happen, and publishes through `POST /publish` when a token is typed in.
//!
//! It is on in the shipped `bridge.toml` (the quick start opens it) and off by default and in
//! the Helm chart: a production listener answers `GET /` with 404. The page is same-origin
//! with `/events` and `/publish` (relative URLs), so it needs no CORS, and its
//! Content-Security-Policy lets it load nothing and talk to nothing but this origin.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use super::body::ResponseBody;

/// The page, compiled into the binary.
const PAGE: &str = include_str!("demo.html");

/// The page may run its own inline script and style and connect to its own origin; nothing
/// else (no external resource, no framing, no form posts elsewhere).
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// `200` with the demo page.
pub fn page() -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(PAGE));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}
