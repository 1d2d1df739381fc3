//! The demo page (`GET /` with `server.demo_page`), as a newcomer sees it: headless Chromium
//! (driven by `tests/browser/demo_page.mjs`) opens the bridge's own page, and the test
//! publishes to NATS and Redis and through the page's form; what the page shows is asserted
//! (events with their ids, a gap event and a reconnect). Off, `GET /` stays a 404.
//!
//! Requirements as for tests/browser.rs: node, Chromium, `npm ci --prefix tests/browser`.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::brokers::{self, NatsServer, RedisServer};
use common::browser_tooling::{crate_root, require_browser_tooling};
use common::{TOKEN, TestApp, nats_config, redis_config, start_app, sync_on_probe, test_config};
use serde_json::Value;
use sse_bridge::event::EventId;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// Chromium launch, page load, and an event or a reconnect on a loaded CI machine.
const LINE_TIMEOUT: Duration = Duration::from_secs(20);

/// One `demo_page.mjs` run: Chromium on the bridge's demo page.
struct DemoPage {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl DemoPage {
    /// Opens `url`; the harness exits after `count` event rows. With `publish`, it types the
    /// token and `data` into the page's form and sends it once the stream is open.
    fn open(url: &str, count: usize, publish: Option<&str>) -> DemoPage {
        require_browser_tooling();
        let mut cmd = Command::new("node");
        cmd.current_dir(crate_root())
            .arg("tests/browser/demo_page.mjs")
            .args(["--url", url, "--count", &count.to_string(), "--timeout-ms", "40000"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(data) = publish {
            cmd.args(["--publish-token", TOKEN, "--publish-topic", "demo", "--publish-data", data]);
        }
        let mut child = cmd.spawn().expect("spawning node tests/browser/demo_page.mjs");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        DemoPage { child, lines }
    }

    /// The next line the harness printed; `None` once it exited.
    async fn next(&mut self) -> Option<Value> {
        let line = tokio::time::timeout(LINE_TIMEOUT, self.lines.next_line())
            .await
            .expect("the demo page harness printed nothing in time (its stderr is above)")
            .expect("reading the harness's stdout")?;
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"));
        assert_ne!(v["type"], "timeout", "the harness timed out: {v}");
        Some(v)
    }

    /// Reads lines until one matches `want`, returning it and the lines before it.
    async fn until(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> (Value, Vec<Value>) {
        let mut before = Vec::new();
        while let Some(v) = self.next().await {
            if want(&v) {
                return (v, before);
            }
            before.push(v);
        }
        panic!("the harness exited before {what}; it printed {before:?}");
    }

    /// Waits for the harness to exit 0 and returns what it printed meanwhile.
    async fn finish(mut self) -> Vec<Value> {
        let mut rest = Vec::new();
        while let Some(v) = self.next().await {
            rest.push(v);
        }
        let status = self.child.wait().await.unwrap();
        assert!(status.success(), "harness exited {status}; it printed {rest:?}");
        rest
    }
}

fn is_status(v: &Value, status: &str) -> bool {
    v["type"] == "status" && v["status"] == status
}

/// The event rows among `lines`, as (event type, data, id).
fn event_rows(lines: &[Value]) -> Vec<(String, String, String)> {
    lines
        .iter()
        .filter(|v| v["type"] == "row" && v["kind"] == "event")
        .map(|v| {
            (v["event"].as_str().unwrap().into(), v["data"].as_str().unwrap().into(), v["id"].as_str().unwrap().into())
        })
        .collect()
}

/// The bridge of the quick start: the demo topics from NATS and Redis, the page on.
async fn demo_bridge(nats: &NatsServer, redis: &RedisServer) -> TestApp {
    let mut config = test_config();
    config.server.demo_page = true;
    config.nats = Some(nats_config(&nats.url(), &["demo.>"]));
    config.redis = Some(redis_config(&redis.url(), &["demo"], &["demo.*"]));
    start_app(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_events_from_nats_redis_and_its_own_form() {
    require_browser_tooling();
    let (nats, redis) = tokio::join!(NatsServer::start(), RedisServer::start());
    let app = demo_bridge(&nats, &redis).await;
    let nc = brokers::nats_client(&nats.url()).await;
    let mut rc = brokers::redis_conn(&redis.url()).await;
    // Both subscriptions live end to end before the page opens (on subjects the page also
    // covers: it opens afterwards, without a Last-Event-ID, so it does not see the probes).
    let mut probe = app.subscribe(&["demo.probe"]).await;
    sync_on_probe(&mut probe, || {
        let nc = nc.clone();
        async move { nc.publish("demo.probe", "p".into()).await.unwrap() }
    })
    .await;
    sync_on_probe(&mut probe, || {
        let mut c = rc.clone();
        async move {
            brokers::redis_publish(&mut c, "demo.probe", "p").await;
        }
    })
    .await;
    drop(probe);

    let mut page = DemoPage::open(&app.url("/"), 3, Some("hello from the page"));
    page.until("the stream opened", |v| is_status(v, "open")).await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Sse-Event", "greeting");
    nc.publish_with_headers("demo.hello", headers, "hello from nats".into()).await.unwrap();
    nc.flush().await.unwrap();
    assert!(brokers::redis_publish(&mut rc, "demo", "hello from redis").await >= 1);

    let lines = page.finish().await;
    let published = lines.iter().find(|v| v["type"] == "published").expect("the form was sent");
    assert_eq!(published["status"], 200, "{published}");
    assert!(published["text"].as_str().unwrap().starts_with("published {\"id\":"), "{published}");
    let rows = event_rows(&lines);
    let mut seen: Vec<(&str, &str)> = rows.iter().map(|(t, d, _)| (t.as_str(), d.as_str())).collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        [("greeting", "hello from nats"), ("message", "hello from redis"), ("message", "hello from the page")],
        "{lines:?}"
    );
    // Each row shows the bridge's id, increasing in the order the page received them.
    let ids: Vec<EventId> = rows.iter().map(|(_, _, id)| id.parse().expect("a bridge id")).collect();
    assert!(ids.windows(2).all(|w| w[0].run == app.state.run_id && w[1].seq > w[0].seq), "{ids:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_a_reconnect_and_the_gap_it_resumed_across() {
    require_browser_tooling();
    let mut config = test_config();
    config.server.demo_page = true;
    // Streams end after ~3 s; the page reconnects 2 s later (the announced retry) with its
    // Last-Event-ID. A ring of one event per topic cannot cover what is published meanwhile.
    config.server.max_stream_age = Duration::from_secs(3);
    config.server.retry = Duration::from_secs(2);
    config.replay.max_events_per_topic = 1;
    let app = start_app(config).await;

    let mut page = DemoPage::open(&app.url("/"), 2, None);
    page.until("the stream opened", |v| is_status(v, "open")).await;
    app.publish("demo", None, "before").await;
    let (row, _) = page.until("the first event", |v| v["type"] == "row").await;
    assert_eq!((&row["kind"], &row["data"]), (&"event".into(), &"before".into()), "{row}");
    page.until("the stream ended", |v| is_status(v, "reconnecting")).await;
    for data in ["1", "2", "3"] {
        app.publish("demo", None, data).await;
    }
    let lines = page.finish().await;
    let kinds: Vec<&str> = lines.iter().filter(|v| v["type"] == "row").map(|v| v["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["reconnect", "gap", "event"], "{lines:?}");
    let gap = lines.iter().find(|v| v["kind"] == "gap").unwrap();
    assert_eq!(gap["event"], "sse-bridge.gap");
    assert!(gap["data"].as_str().unwrap().contains("reason evicted"), "{gap}");
    assert_eq!(event_rows(&lines)[0].1, "3", "{lines:?}");
    app.stop().await;
}

#[tokio::test]
async fn get_root_is_the_page_only_when_configured() {
    let http = reqwest::Client::new();
    let off = start_app(test_config()).await;
    let r = http.get(off.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    off.stop().await;

    let mut config = test_config();
    config.server.demo_page = true;
    let on = start_app(config).await;
    let r = http.get(on.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"), "{csp}");
    let body = r.text().await.unwrap();
    assert!(body.contains("new EventSource(url)") && body.contains("sse-bridge.gap"), "{body}");
    assert_eq!(http.post(on.url("/")).send().await.unwrap().status(), 405);
    // The admin listener has no page.
    assert_eq!(http.get(on.admin_url("/")).send().await.unwrap().status(), 404);
    on.stop().await;
}
