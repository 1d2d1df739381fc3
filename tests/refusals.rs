//! Refusals that time can fix, as a browser's EventSource needs them (SPEC: "Errors that
//! retrying cannot fix are plain HTTP"; issue #12): with the default `server.refusal = "retry"`
//! each of connect rate, per-address stream cap, global cap, memory budget and draining is a
//! `200 text/event-stream` carrying `: refused (<reason>): …`, a `retry:` in a range that fits
//! the reason, no `id:`, and the end of the body; the reason is in the `sse-bridge-refusal`
//! header and in `sse_bridge_requests_rejected_total{reason}`. `400`/`401`/`403` stay statuses,
//! and `server.refusal = "status"` keeps `429`/`503` with `Retry-After`.

mod common;

use std::time::Duration;

use common::sse_client::test_client;
use common::{TestApp, admin_metrics, rejected_series, sample, start_app, test_config, wait_until};
use sse_bridge::Config;
use sse_bridge::config::RefusalMode;

/// What a refused (or admitted) `GET /events` answered, read to the end of its body.
struct Answer {
    status: u16,
    content_type: String,
    refusal: Option<String>,
    body: String,
}

impl Answer {
    /// The `retry:` value of a refusal stream, in milliseconds.
    fn retry_ms(&self) -> u64 {
        let line = self.body.lines().find_map(|l| l.strip_prefix("retry: ")).expect("a retry: line");
        line.parse().expect("retry: is a number")
    }

    /// Checks the shape every retry-mode refusal has.
    fn assert_refusal(&self, reason: &str) {
        assert_eq!(self.status, 200, "{}", self.body);
        assert_eq!(self.content_type, "text/event-stream");
        assert_eq!(self.refusal.as_deref(), Some(reason), "{}", self.body);
        let first = self.body.lines().next().unwrap_or_default();
        assert!(first.starts_with(&format!(": refused ({reason}): ")), "{:?}", self.body);
        assert!(self.body.ends_with("\n\n"), "{:?}", self.body);
        assert!(!self.body.contains("\nid:") && !self.body.starts_with("id:"), "no id: keeps the client's place");
        assert!(!self.body.contains("data:"), "no event: {:?}", self.body);
    }
}

/// `GET /events?topic=…`, read until the server ends the body (a refusal ends it at once).
async fn get(app: &TestApp, topic: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = test_client().get(app.url(&format!("/events?topic={topic}")));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("an answer");
    let header = |name: &str| r.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (status, content_type, refusal) =
        (r.status().as_u16(), header("content-type").unwrap_or_default(), header("sse-bridge-refusal"));
    let body = tokio::time::timeout(Duration::from_secs(5), r.text()).await.expect("the refusal ends").expect("body");
    Answer { status, content_type, refusal, body }
}

fn config(f: impl FnOnce(&mut Config)) -> Config {
    let mut c = test_config();
    f(&mut c);
    c
}

async fn rejected(app: &TestApp, reason: &str) -> f64 {
    sample(&admin_metrics(app).await, &rejected_series(reason)).unwrap_or(0.0)
}

#[tokio::test]
async fn connect_rate_refusals_are_retry_streams_spread_at_the_configured_rate() {
    let app = start_app(config(|c| {
        c.limits.connect_rate_per_ip = 2;
        c.limits.connect_burst_per_ip = 1;
    }))
    .await;
    let _held = app.subscribe(&["rate.a"]).await;
    let first = get(&app, "rate.a", &[("last-event-id", "abc-1")]).await;
    first.assert_refusal("ip_connect_rate");
    let second = get(&app, "rate.a", &[]).await;
    second.assert_refusal("ip_connect_rate");
    // One token every 500 ms: the first refused comes back within about a token, the next one
    // a slot later, so the herd returns at the configured rate, not as one.
    let (a, b) = (first.retry_ms(), second.retry_ms());
    assert!((1..=1100).contains(&a), "first hint {a} ms");
    assert!(b >= 900 && b > a, "second hint {b} ms after first {a} ms");
    assert_eq!(rejected(&app, "ip_connect_rate").await, 2.0);
}

#[tokio::test]
async fn stream_caps_and_memory_budget_back_off_with_jitter() {
    let app = start_app(config(|c| c.limits.max_streams_per_ip = 1)).await;
    let _held = app.subscribe(&["cap.a"]).await;
    let a = get(&app, "cap.a", &[]).await;
    a.assert_refusal("ip_stream_limit");
    // First refusal in a row: retry (2 s) jittered over its upper half.
    assert!((1000..=2000).contains(&a.retry_ms()), "{}", a.retry_ms());
    let b = get(&app, "cap.a", &[]).await;
    assert!((2000..=4000).contains(&b.retry_ms()), "second in a row doubles: {}", b.retry_ms());

    let app = start_app(config(|c| c.limits.max_streams = 1)).await;
    let _held = app.subscribe(&["cap.b"]).await;
    let c = get(&app, "cap.b", &[]).await;
    c.assert_refusal("at_capacity");
    assert!((1000..=2000).contains(&c.retry_ms()), "{}", c.retry_ms());
    assert_eq!(rejected(&app, "at_capacity").await, 1.0);

    // A budget of one byte: the first housekeeping pass finds the process over it.
    let app = start_app(config(|c| c.memory.limit = 1)).await;
    wait_until("the memory check ran", async || app.state.memory.is_over()).await;
    let m = get(&app, "mem.a", &[]).await;
    m.assert_refusal("memory_budget");
    assert!((1000..=2000).contains(&m.retry_ms()), "{}", m.retry_ms());
    assert_eq!(rejected(&app, "memory_budget").await, 1.0);
}

#[tokio::test]
async fn a_draining_bridge_refuses_new_streams_with_a_jittered_retry() {
    let mut app = start_app(config(|c| c.server.drain_timeout = Duration::from_secs(6))).await;
    // Three open streams: the paced drain ends them over 3 s, so the bridge drains a while.
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(app.subscribe(&["drain.a"]).await);
    }
    app.signal_stop();
    let ready = app.admin_url("/readyz");
    wait_until("readiness fails at once", async || {
        test_client().get(&ready).send().await.is_ok_and(|r| r.status() == 503)
    })
    .await;
    let d = get(&app, "drain.a", &[]).await;
    d.assert_refusal("draining");
    assert!((1000..=3000).contains(&d.retry_ms()), "{}", d.retry_ms());
    assert_eq!(rejected(&app, "draining").await, 1.0);
    drop(streams);
    app.stop().await;
}

#[tokio::test]
async fn refusals_time_cannot_fix_stay_statuses() {
    let app = start_app(config(|c| c.limits.max_streams = 1)).await;
    let r = test_client().get(app.url("/events")).send().await.unwrap();
    assert_eq!(r.status(), 400, "no topic");
    let r = test_client().get(app.url("/events?topic=a.%3E.b")).send().await.unwrap();
    assert_eq!(r.status(), 400, "bad topic");
    assert!(r.headers().get("sse-bridge-refusal").is_none());
    let r = test_client().get(app.url("/nowhere")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn status_mode_keeps_429_and_503_with_retry_after() {
    let app = start_app(config(|c| {
        c.server.refusal = RefusalMode::Status;
        c.limits.max_streams_per_ip = 1;
    }))
    .await;
    let _held = app.subscribe(&["st.a"]).await;
    let a = get(&app, "st.a", &[]).await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!(a.refusal.as_deref(), Some("ip_stream_limit"));
    assert!(a.content_type.starts_with("text/plain"), "{}", a.content_type);

    let app = start_app(config(|c| {
        c.server.refusal = RefusalMode::Status;
        c.limits.max_streams = 1;
    }))
    .await;
    let _held = app.subscribe(&["st.b"]).await;
    let r = test_client().get(app.url("/events?topic=st.b")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let after: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&after), "{after}");
}

#[tokio::test]
async fn a_refused_client_comes_back_after_its_hint_and_is_admitted() {
    let app = start_app(config(|c| {
        c.limits.connect_rate_per_ip = 5;
        c.limits.connect_burst_per_ip = 1;
    }))
    .await;
    let _first = app.subscribe(&["back.a"]).await;
    let refused = get(&app, "back.a", &[]).await;
    refused.assert_refusal("ip_connect_rate");
    tokio::time::sleep(Duration::from_millis(refused.retry_ms())).await;
    // What a browser does after the hint: the same request again, now admitted.
    let mut s = app.subscribe(&["back.a"]).await;
    let id = app.publish("back.a", None, "after the hint").await;
    let ev = s.next_event(common::EVENT_TIMEOUT).await.expect("event");
    assert_eq!((ev.id.as_deref(), ev.data.as_str()), (Some(id.as_str()), "after the hint"));
}
