//! The answer to a `GET /events` refused for a reason time can fix: connect rate, stream caps,
//! memory budget, draining.
//!
//! A browser's `EventSource` treats any answer other than `200 text/event-stream` as final: it
//! closes for good and the page never learns that a retry would have worked. So by default
//! (`server.refusal = "retry"`) such a refusal is a complete, short event stream:
//!
//! ```text
//! HTTP/1.1 200 OK
//! content-type: text/event-stream
//! sse-bridge-refusal: ip_connect_rate
//! retry-after: 2
//!
//! : refused (ip_connect_rate): opening streams too fast from this address
//! retry: 1530
//!
//! ```
//!
//! The browser takes the `retry:`, sees the stream end, and reconnects after that delay with
//! the same `Last-Event-ID` (the refusal carries no `id:`, so the client keeps its place). The
//! reason is in the `sse-bridge-refusal` header and in
//! `sse_bridge_requests_rejected_total{reason}`. With `server.refusal = "status"` the same
//! refusal is `429`/`503` with `Retry-After`, the standard signal for scripts and proxies that
//! are not EventSources. Refusals that time cannot fix (`400`, `401`, `403`, `404`) stay
//! statuses in both modes.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use super::body::ResponseBody;
use super::response::{Refused, text};
use crate::config::RefusalMode;
use crate::limits::Refusal;
use crate::metrics::Metrics;

/// Response header naming the reason of a refusal (the metric's `reason` label).
pub const REFUSAL_HEADER: &str = "sse-bridge-refusal";

/// The response for `refusal`, counted under its reason.
pub fn refuse(mode: RefusalMode, metrics: &Metrics, refusal: &Refusal) -> Refused {
    let reason = refusal.reason.as_str();
    metrics.count_rejected(reason);
    let mut r = match mode {
        RefusalMode::Retry => retry_stream(reason, &refusal.message, refusal.retry),
        RefusalMode::Status => {
            let status = StatusCode::from_u16(refusal.reason.status_code()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            text(status, &refusal.message)
        }
    };
    let h = r.headers_mut();
    h.insert(REFUSAL_HEADER, HeaderValue::from_static(reason));
    h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs(refusal.retry)));
    Box::new(r)
}

/// A stream that says why and when to come back, then ends.
fn retry_stream(reason: &str, message: &str, retry: Duration) -> Response<ResponseBody> {
    // One comment line: the message never holds a line break (it is ours, not the client's).
    let message: String = message.chars().filter(|c| !matches!(c, '\r' | '\n')).collect();
    let body = format!(": refused ({reason}): {message}\nretry: {}\n\n", retry.as_millis().max(1));
    let mut r = Response::new(ResponseBody::full(Bytes::from(body)));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// Whole seconds for `Retry-After`, rounded up, at least 1.
fn retry_after_secs(retry: Duration) -> u64 {
    retry.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;
    use crate::retry_hint::RetryReason;

    fn refusal(reason: RetryReason, ms: u64) -> Refusal {
        Refusal { reason, message: "too fast\r\nnow".into(), retry: Duration::from_millis(ms) }
    }

    async fn body(r: Refused) -> String {
        let b = r.into_body().collect().await.expect("full body").to_bytes();
        String::from_utf8(b.to_vec()).expect("utf-8")
    }

    #[tokio::test]
    async fn retry_mode_is_a_short_event_stream() {
        let m = Metrics::new();
        let r = refuse(RefusalMode::Retry, &m, &refusal(RetryReason::ConnectRate, 1530));
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "text/event-stream");
        assert_eq!(r.headers()[REFUSAL_HEADER], "ip_connect_rate");
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        assert_eq!(body(r).await, ": refused (ip_connect_rate): too fastnow\nretry: 1530\n\n");
    }

    #[tokio::test]
    async fn status_mode_keeps_the_codes() {
        let m = Metrics::new();
        let r = refuse(RefusalMode::Status, &m, &refusal(RetryReason::ConnectRate, 200));
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let r = refuse(RefusalMode::Status, &m, &refusal(RetryReason::Draining, 2500));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
    }
}
