//! A real browser's `EventSource` against the bridge: headless Chromium (driven by
//! `tests/browser/eventsource.mjs`) on a page served from another origin, so the request is
//! cross-origin and the bridge's CORS answer is what the browser really checks.
//!
//! Messages come from private NATS and Redis servers, through the bridge, into the page; the
//! test asserts what the page's listeners saw: event types, data byte-for-byte (line endings
//! normalised to `\n`) and increasing `lastEventId`s.
//!
//! Requirements (CI installs them; the tests fail, never skip, without them):
//! `node` (20+) on PATH, Chromium at `/usr/bin/chromium` (or `CHROMIUM_PATH`), and
//! `npm ci --prefix tests/browser`.

mod common;

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::brokers::{self, NatsServer, RedisServer};
use common::browser_tooling::{crate_root, require_browser_tooling};
use common::{EVENT_TIMEOUT, TestApp, nats_config, redis_config, start_app, sync_on_probe, test_config};
use serde_json::Value;
use sse_bridge::event::EventId;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// Chromium launch plus page load take 1–2 s; allow for a loaded CI machine.
const OPEN_TIMEOUT: Duration = Duration::from_secs(20);
/// The harness's own overall timeout; it exits 1 (and prints a `timeout` line) after this.
const HARNESS_TIMEOUT_MS: u64 = 25_000;

/// One `eventsource.mjs` run: a headless Chromium page with an `EventSource`.
struct Browser {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<tokio::task::JoinHandle<()>>,
}

/// An event as the page's listener saw it.
#[derive(Debug)]
struct PageEvent {
    event: String,
    data: String,
    last_event_id: String,
}

impl Browser {
    fn launch(url: &str, page_port: u16, count: usize, event_types: &[&str], exit_on_closed: bool) -> Browser {
        Self::launch_sources(url, page_port, count, event_types, exit_on_closed, 1)
    }

    /// Like [`Browser::launch`] with `sources` EventSources on the one page (lines then carry
    /// `"source": i`).
    fn launch_sources(
        url: &str,
        page_port: u16,
        count: usize,
        event_types: &[&str],
        exit_on_closed: bool,
        sources: usize,
    ) -> Browser {
        require_browser_tooling();
        let mut cmd = Command::new("node");
        cmd.current_dir(crate_root())
            .arg("tests/browser/eventsource.mjs")
            .args(["--url", url])
            .args(["--page-port", &page_port.to_string()])
            .args(["--count", &count.to_string()])
            .args(["--timeout-ms", &HARNESS_TIMEOUT_MS.to_string()])
            .args(["--sources", &sources.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if !event_types.is_empty() {
            cmd.args(["--event-types", &event_types.join(",")]);
        }
        if exit_on_closed {
            cmd.arg("--exit-on-closed");
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawning node tests/browser/eventsource.mjs: {e}"));
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        let stderr_reader = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Browser { child, lines, stderr, stderr_reader: Some(stderr_reader) }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The next JSON line, `None` at end of output; panics after `timeout`.
    async fn next_line(&mut self, timeout: Duration) -> Option<Value> {
        let line = tokio::time::timeout(timeout, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no output from the browser within {timeout:?}; stderr:\n{}", self.stderr()))
            .expect("reading harness stdout")?;
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("harness printed non-JSON {line:?}: {e}")))
    }

    /// Like `next_line`, but the harness must still be running.
    async fn expect_line(&mut self, timeout: Duration, what: &str) -> Value {
        match self.next_line(timeout).await {
            Some(v) => v,
            None => panic!("harness ended while waiting for {what}; stderr:\n{}", self.stderr()),
        }
    }

    /// Waits for the `EventSource` to open; any other line first is a failure.
    async fn expect_open(&mut self) {
        let v = self.expect_line(OPEN_TIMEOUT, "open").await;
        assert_eq!(v["type"], "open", "expected the EventSource to open, got {v}; stderr:\n{}", self.stderr());
    }

    /// The next event the page received; errors, reopens and timeouts are failures.
    async fn expect_event(&mut self) -> PageEvent {
        let v = self.expect_line(EVENT_TIMEOUT, "an event").await;
        assert_eq!(v["type"], "event", "expected an event, got {v}; stderr:\n{}", self.stderr());
        let s = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("{k} missing in {v}")).to_owned();
        PageEvent { event: s("event"), data: s("data"), last_event_id: s("lastEventId") }
    }

    /// Waits for the harness to exit; returns its status and the lines it printed meanwhile.
    async fn finish(&mut self) -> (ExitStatus, Vec<Value>) {
        let mut rest = Vec::new();
        while let Some(v) = self.next_line(OPEN_TIMEOUT).await {
            rest.push(v);
        }
        let status = tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("harness did not exit; stderr:\n{}", self.stderr()))
            .unwrap();
        // All of stderr, so assertions on diagnostics see the last lines too.
        if let Some(r) = self.stderr_reader.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), r).await;
        }
        (status, rest)
    }
}

/// Checks the ids a page saw: non-empty, from this bridge run, strictly increasing.
fn assert_increasing_ids(app: &TestApp, events: &[PageEvent]) {
    let mut prev: Option<EventId> = None;
    for e in events {
        assert!(!e.last_event_id.is_empty(), "empty lastEventId: {e:?}");
        let id: EventId = e.last_event_id.parse().unwrap_or_else(|_| panic!("lastEventId is not a bridge id: {e:?}"));
        assert_eq!(id.run, app.state.run_id, "id from another run: {e:?}");
        if let Some(p) = prev {
            assert!(id.seq > p.seq, "ids not increasing: {p} then {id}");
        }
        prev = Some(id);
    }
}

fn page_origin(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

async fn nats_publish(nc: &async_nats::Client, subject: &str, headers: Option<(&str, &str)>, payload: &str) {
    let subject = subject.to_owned();
    let payload = payload.to_owned().into();
    match headers {
        Some((k, v)) => {
            let mut h = async_nats::HeaderMap::new();
            h.insert(k, v);
            nc.publish_with_headers(subject, h, payload).await.unwrap();
        }
        None => nc.publish(subject, payload).await.unwrap(),
    }
    nc.flush().await.unwrap();
}

/// Proves the bridge's NATS subscription is live end to end before the browser starts:
/// probes on a bridged subject the page does not subscribe to, read by a Rust SSE stream.
async fn sync_nats(app: &TestApp, nc: &async_nats::Client) {
    let mut probe = app.subscribe(&["web.probe.nats"]).await;
    sync_on_probe(&mut probe, || {
        let nc = nc.clone();
        async move { nats_publish(&nc, "web.probe.nats", None, "probe").await }
    })
    .await;
}

/// Same for Redis, on the bridged channel `web.probe.redis`.
async fn sync_redis(app: &TestApp, conn: &redis::aio::MultiplexedConnection, payload: &'static str) {
    let mut probe = app.subscribe(&["web.probe.redis"]).await;
    sync_on_probe(&mut probe, || {
        let mut c = conn.clone();
        async move {
            brokers::redis_publish(&mut c, "web.probe.redis", payload).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_receives_nats_and_redis_events() {
    require_browser_tooling();
    let (nats, redis) = tokio::join!(NatsServer::start(), RedisServer::start());
    let page_port = brokers::free_port();
    let mut config = test_config();
    config.server.cors_origins = vec![page_origin(page_port)];
    config.nats = Some(nats_config(&nats.url(), &["web.>"]));
    config.redis = Some(redis_config(&redis.url(), &["web.redis", "web.probe.redis"], &[]));
    let app = start_app(config).await;

    let nc = brokers::nats_client(&nats.url()).await;
    let mut rc = brokers::redis_conn(&redis.url()).await;
    sync_nats(&app, &nc).await;
    sync_redis(&app, &rc, "probe").await;

    let url = app.url("/events?topic=web.nats&topic=web.redis");
    let mut browser = Browser::launch(&url, page_port, 5, &["greeting"], false);
    browser.expect_open().await;

    // NATS: a typed event (header), then a multi-line payload with every line ending, a blank
    // line, leading spaces, a colon and non-ASCII text.
    nats_publish(&nc, "web.nats", Some(("Sse-Event", "greeting")), "hello from nats").await;
    let multi = "line one\nline two\r\nline three\rline four\n\n  indented: yes ✓ ünïcödé";
    nats_publish(&nc, "web.nats", None, multi).await;
    let mut got = vec![browser.expect_event().await, browser.expect_event().await];

    // Redis (after the NATS events arrived, so the order across sources is fixed): plain text,
    // and JSON that must stay verbatim because envelope mode is off.
    assert!(brokers::redis_publish(&mut rc, "web.redis", "hello from redis").await >= 1);
    let json = r#"{"event":"greeting","data":"not an envelope here"}"#;
    assert!(brokers::redis_publish(&mut rc, "web.redis", json).await >= 1);
    // A message on a bridged channel the page did not subscribe to must not reach it.
    brokers::redis_publish(&mut rc, "web.probe.redis", "not for the page").await;
    for _ in 0..2 {
        got.push(browser.expect_event().await);
    }
    // Back to NATS only once Redis's events arrived (sources are independent: a publish
    // returning does not mean the bridge has sequenced it). Header name in lower case.
    nats_publish(&nc, "web.nats", Some(("sse-event", "greeting")), "bye").await;
    got.push(browser.expect_event().await);

    let seen: Vec<(&str, &str)> = got.iter().map(|e| (e.event.as_str(), e.data.as_str())).collect();
    assert_eq!(
        seen,
        [
            ("greeting", "hello from nats"),
            ("message", "line one\nline two\nline three\nline four\n\n  indented: yes ✓ ünïcödé"),
            ("message", "hello from redis"),
            ("message", json),
            ("greeting", "bye"),
        ]
    );
    assert_increasing_ids(&app, &got);

    let (status, rest) = browser.finish().await;
    assert!(status.success(), "harness exited {status}; stderr:\n{}", browser.stderr());
    assert!(rest.is_empty(), "harness printed more after {} events: {rest:?}", got.len());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_receives_redis_envelopes() {
    require_browser_tooling();
    let redis = RedisServer::start().await;
    let page_port = brokers::free_port();
    let mut config = test_config();
    config.server.cors_origins = vec![page_origin(page_port)];
    let mut rcfg = redis_config(&redis.url(), &["web.redis", "web.probe.redis"], &[]);
    rcfg.envelope = true;
    config.redis = Some(rcfg);
    let app = start_app(config).await;

    let mut rc = brokers::redis_conn(&redis.url()).await;
    sync_redis(&app, &rc, r#"{"data":"probe"}"#).await;

    let mut browser = Browser::launch(&app.url("/events?topic=web.redis"), page_port, 3, &["greeting"], false);
    browser.expect_open().await;

    let malformed_before = app.state.sources[0].malformed();
    // Not an envelope: counted and dropped, never shown to the page.
    assert!(brokers::redis_publish(&mut rc, "web.redis", "plain text").await >= 1);
    assert!(
        brokers::redis_publish(&mut rc, "web.redis", r#"{"event":"greeting","data":"hi\nthere\r\nall"}"#).await >= 1
    );
    assert!(brokers::redis_publish(&mut rc, "web.redis", r#"{"data":{"n":[1,true,null]}}"#).await >= 1);
    assert!(brokers::redis_publish(&mut rc, "web.redis", r#"{"data":"untyped"}"#).await >= 1);
    let got = vec![browser.expect_event().await, browser.expect_event().await, browser.expect_event().await];
    let seen: Vec<(&str, &str)> = got.iter().map(|e| (e.event.as_str(), e.data.as_str())).collect();
    assert_eq!(
        seen,
        [
            ("greeting", "hi\nthere\nall"),
            // A non-string `data` is sent as compact JSON.
            ("message", r#"{"n":[1,true,null]}"#),
            ("message", "untyped"),
        ]
    );
    assert_increasing_ids(&app, &got);
    assert_eq!(app.state.sources[0].malformed(), malformed_before + 1);

    let (status, rest) = browser.finish().await;
    assert!(status.success(), "harness exited {status}; stderr:\n{}", browser.stderr());
    assert!(rest.is_empty(), "harness printed more: {rest:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_not_in_cors_origins_gets_no_events() {
    require_browser_tooling();
    let page_port = brokers::free_port();
    let allowed_port = loop {
        let p = brokers::free_port();
        if p != page_port {
            break p;
        }
    };
    let mut config = test_config();
    config.server.cors_origins = vec![page_origin(allowed_port)];
    let app = start_app(config).await;
    let opened_before = app.state.metrics.streams_opened.get();

    let mut browser = Browser::launch(&app.url("/events?topic=web.cors"), page_port, 1, &[], true);
    // Keep events flowing on the page's topic while the browser tries, so "no events" is
    // the browser refusing them, not an empty topic.
    let mut published = 0u32;
    let traffic = async {
        let mut every = tokio::time::interval(Duration::from_millis(50));
        loop {
            every.tick().await;
            app.publish("web.cors", None, "must not be seen").await;
            published += 1;
        }
    };
    let (status, lines) = tokio::select! {
        r = browser.finish() => r,
        _ = traffic => unreachable!(),
    };
    let stderr = browser.stderr();
    assert_eq!(
        status.code(),
        Some(3),
        "expected exit 3 (EventSource CLOSED by the CORS failure); lines {lines:?}; stderr:\n{stderr}"
    );
    assert!(
        !lines.iter().any(|v| v["type"] == "event" || v["type"] == "open"),
        "a page from a disallowed origin opened or got events: {lines:?}"
    );
    assert!(
        lines.iter().any(|v| v["type"] == "error" && v["readyState"] == 2),
        "expected an error with readyState 2: {lines:?}"
    );
    // The bridge did answer the request: the browser refused the response for want of an
    // Access-Control-Allow-Origin header (not a network error, not a bad status).
    assert!(stderr.contains("blocked by CORS policy"), "no CORS error from the page; stderr:\n{stderr}");
    assert!(
        app.state.metrics.streams_opened.get() > opened_before,
        "the request never reached the bridge; stderr:\n{stderr}"
    );
    println!("CORS negative: {published} events published while the page was refused");
    app.stop().await;
}

/// The product's promise, in a real browser: a plain `EventSource` reading a JetStream stream
/// keeps its place across a bridge restart. The page never learns the bridge restarted; events
/// published while no bridge ran arrive after its automatic reconnect (with `Last-Event-ID`),
/// with no gap event and no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_resumes_a_jetstream_topic_across_a_bridge_restart() {
    require_browser_tooling();
    let nats = NatsServer::start().await;
    let js = async_nats::jetstream::new(brokers::nats_client(&nats.url()).await);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "WEB".into(),
        subjects: vec!["web.orders.>".into()],
        ..Default::default()
    })
    .await
    .expect("create stream");
    let publish = |n: u32| {
        let js = js.clone();
        async move {
            js.publish(format!("web.orders.{}", n % 2), format!("m{n}").into()).await.unwrap().await.expect("ack");
        }
    };
    let page_port = brokers::free_port();
    let config = || {
        let mut c = test_config();
        c.server.cors_origins = vec![page_origin(page_port)];
        c.server.retry = Duration::from_millis(500);
        c.jetstream = Some(sse_bridge::config::JetStreamConfig {
            url: nats.url(),
            streams: vec!["WEB".into()],
            ..Default::default()
        });
        c
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let first = common::start_app_on(config(), listener).await;
    first.wait_sources_connected().await;

    let url = first.url("/events?topic=web.orders.*");
    let mut browser = Browser::launch(&url, page_port, 6, &["sse-bridge.gap"], false);
    browser.expect_open().await;
    publish(1).await;
    publish(2).await;
    let mut got = vec![browser.expect_event().await, browser.expect_event().await];

    // The bridge stops (its streams end cleanly); the page will reconnect on its own.
    first.stop().await;
    publish(3).await;
    publish(4).await;
    let second = common::start_app_on(config(), tokio::net::TcpListener::bind(addr).await.unwrap()).await;
    second.wait_sources_connected().await;
    // Reconnect attempts while the port was closed show as errors, then the page reopens.
    loop {
        let v = browser.expect_line(OPEN_TIMEOUT, "the page to reconnect").await;
        match v["type"].as_str() {
            Some("error") => continue,
            Some("reopen") => break,
            _ => panic!("expected the page to reconnect, got {v}; stderr:\n{}", browser.stderr()),
        }
    }
    got.push(browser.expect_event().await);
    got.push(browser.expect_event().await);
    publish(5).await;
    publish(6).await;
    got.push(browser.expect_event().await);
    got.push(browser.expect_event().await);
    let data: Vec<&str> = got.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(data, ["m1", "m2", "m3", "m4", "m5", "m6"], "every event once, in order, no gap: {got:?}");
    assert!(got.iter().all(|e| e.event == "message"), "no sse-bridge.gap reached the page: {got:?}");
    assert!(got.iter().all(|e| e.last_event_id.contains("_j")), "ids carry the stream position: {got:?}");
    let (status, _) = browser.finish().await;
    assert!(status.success(), "harness exit {status}; stderr:\n{}", browser.stderr());
}

/// Issue #12: a refusal that time can fix must not kill an `EventSource`. One page opens three
/// at once against a bridge that admits one connect per address at a time (burst 1): two are
/// refused, take the `retry:` hint, reconnect by themselves and are admitted; all three then
/// receive an event published after they opened. None ever reaches `CLOSED`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_event_sources_ride_through_connect_rate_refusals() {
    require_browser_tooling();
    let page_port = brokers::free_port();
    let mut c = test_config();
    c.server.cors_origins = vec![page_origin(page_port)];
    c.limits.connect_rate_per_ip = 20;
    c.limits.connect_burst_per_ip = 1;
    let app = start_app(c).await;
    let url = app.url("/events?topic=herd.t");
    let mut browser = Browser::launch_sources(&url, page_port, 3, &[], true, 3);
    common::wait_until("all three streams admitted", async || app.state.registry.subscriber_count() == 3).await;
    let id = app.publish("herd.t", None, "after all opened").await;
    let mut seen = std::collections::BTreeSet::new();
    let mut reopened = 0;
    while seen.len() < 3 {
        let v = browser.expect_line(EVENT_TIMEOUT, "an event on every source").await;
        match v["type"].as_str() {
            Some("event") => {
                assert_eq!(v["data"], "after all opened", "{v}");
                assert_eq!(v["lastEventId"], id.as_str(), "{v}");
                seen.insert(v["source"].as_u64().expect("source tag"));
            }
            Some("reopen") => reopened += 1,
            Some("open") => {}
            Some("error") => assert_ne!(v["readyState"], 2, "an EventSource was closed for good: {v}"),
            _ => panic!("unexpected line {v}; stderr:\n{}", browser.stderr()),
        }
    }
    let metrics = common::admin_metrics(&app).await;
    let refused = common::sample(&metrics, &common::rejected_series("ip_connect_rate")).unwrap_or(0.0);
    println!("3 EventSources: {refused} connect-rate refusals, {reopened} reopens before the event");
    assert!(refused >= 1.0, "the burst of 1 refused at least one of the three: {metrics}");
    let (status, _) = browser.finish().await;
    assert!(status.success(), "harness exit {status}; stderr:\n{}", browser.stderr());
}

/// Issue #12: a page whose stream is drained by a shutdown reconnects by itself, through a
/// load balancer, to another replica and resumes there: the JetStream topic with no loss and
/// no duplicate, the ring-only core NATS topic with an `sse-bridge.gap` event naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_page_resumes_on_another_replica() {
    require_browser_tooling();
    let nats = NatsServer::start().await;
    let nc = brokers::nats_client(&nats.url()).await;
    let js = async_nats::jetstream::new(nc.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "ROLL".into(),
        subjects: vec!["roll.js.>".into()],
        ..Default::default()
    })
    .await
    .expect("create stream");
    let page_port = brokers::free_port();
    let config = || {
        let mut c = test_config();
        c.server.cors_origins = vec![page_origin(page_port)];
        c.server.retry = Duration::from_millis(500);
        c.nats = Some(nats_config(&nats.url(), &["roll.core.>"]));
        c.jetstream = Some(sse_bridge::config::JetStreamConfig {
            url: nats.url(),
            streams: vec!["ROLL".into()],
            ..Default::default()
        });
        c
    };
    let mut a = start_app(config()).await;
    let b = start_app(config()).await;
    a.wait_sources_connected().await;
    b.wait_sources_connected().await;
    let lb = common::balancer::Balancer::start(&[a.addr, b.addr]).await;
    let publish_js = |n: u32| {
        let js = js.clone();
        async move { js.publish("roll.js.x", format!("m{n}").into()).await.unwrap().await.expect("ack") }
    };
    let url = format!("http://{}/events?topic=roll.js.x&topic=roll.core.x", lb.addr);
    let mut browser = Browser::launch(&url, page_port, 100, &["sse-bridge.gap"], true);
    browser.expect_open().await;
    common::wait_until("the page's stream is on A", async || a.state.registry.subscriber_count() == 1).await;
    publish_js(1).await;
    nc.publish("roll.core.x", "c1".into()).await.unwrap();
    nc.flush().await.unwrap();

    let mut js_data = Vec::new();
    let mut core_data = Vec::new();
    let mut gap_topics: Option<Vec<String>> = None;
    let mut reopened = false;
    let mut published_after_move = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while !(published_after_move && js_data.len() == 3 && core_data.last().is_some_and(|d| d == "c3")) {
        assert!(tokio::time::Instant::now() < deadline, "js {js_data:?}, core {core_data:?}, gap {gap_topics:?}");
        let v = browser.expect_line(EVENT_TIMEOUT, "the page's next event").await;
        match (v["type"].as_str(), v["event"].as_str()) {
            (Some("event"), Some("sse-bridge.gap")) => {
                let data: Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
                gap_topics =
                    Some(data["topics"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().into()).collect());
            }
            (Some("event"), _) => {
                let d = v["data"].as_str().unwrap().to_owned();
                if d.starts_with('m') {
                    js_data.push(d)
                } else {
                    core_data.push(d)
                }
                if js_data.len() == 1 && core_data.len() == 1 && !reopened && a.state.registry.subscriber_count() == 1 {
                    // Both first events arrived on A: drain A (as on SIGTERM); m2 is published
                    // while the page is away.
                    a.signal_stop();
                    common::wait_until("A's stream ended", async || a.state.registry.subscriber_count() == 0).await;
                    publish_js(2).await;
                }
            }
            (Some("reopen"), _) => {
                reopened = true;
                common::wait_until("the page resumed on B", async || b.state.registry.subscriber_count() == 1).await;
                publish_js(3).await;
                nc.publish("roll.core.x", "c3".into()).await.unwrap();
                nc.flush().await.unwrap();
                published_after_move = true;
            }
            (Some("error"), _) => assert_ne!(v["readyState"], 2, "the EventSource was closed for good: {v}"),
            _ => panic!("unexpected line {v}; stderr:\n{}", browser.stderr()),
        }
    }
    assert_eq!(js_data, ["m1", "m2", "m3"], "the JetStream topic: every event once, in order");
    assert_eq!(core_data.first().map(String::as_str), Some("c1"));
    let gap = gap_topics.expect("a gap event for the ring-only topic");
    assert!(gap.iter().any(|t| t == "roll.core.x"), "the gap names the core topic: {gap:?}");
    assert!(!gap.iter().any(|t| t == "roll.js.x"), "the durable topic resumed without a gap: {gap:?}");
    drop(browser);
    a.stop().await;
}
