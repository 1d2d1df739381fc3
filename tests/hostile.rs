//! Hostile input, over real connections: every out-of-bounds request input gets a `400` with a
//! one-line reason and a metric; broker garbage (oversize, invalid envelopes, non-UTF-8) is
//! counted and never breaks a stream; and 10,000 requests of random garbage leave the real
//! binary serving, with no stream left open and its memory flat.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use common::bridge_process::BridgeProcess;
use common::brokers::{NatsServer, RedisServer, nats_client, redis_conn, redis_publish};
use common::sse_client::test_client;
use common::{
    EVENT_TIMEOUT, SECRET, TOKEN, admin_metrics, nats_config, redis_config, rejected_count, start_app, sync_on_probe,
    test_config, wait_until,
};
use sse_bridge::config::{AuthConfig, AuthRule, TopicAccess};

/// Sends `request` as is on a fresh connection and reads the answer until the server closes
/// (or 5 s pass). With `head_only`, stops as soon as the response head and the first body
/// bytes are in (streams never close by themselves). Returns the status (0 if none could be
/// parsed) and the body.
async fn raw(addr: SocketAddr, request: &[u8], head_only: bool) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr).await else { return (0, String::new()) };
    let _ = s.write_all(request).await;
    if head_only {
        // Nothing more is coming: a cut-short request must not wait for the server's header
        // or body timeout.
        let _ = s.shutdown().await;
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n");
            if head_only && head_end.is_some_and(|i| buf.len() > i + 4) {
                break;
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.strip_prefix("HTTP/1.1 ").and_then(|r| r.get(..3)).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

fn get(target: &str, headers: &[(&str, &[u8])]) -> Vec<u8> {
    let mut r = format!("GET {target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n").into_bytes();
    for (k, v) in headers {
        r.extend_from_slice(k.as_bytes());
        r.extend_from_slice(b": ");
        r.extend_from_slice(v);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"\r\n");
    r
}

fn auth() -> AuthConfig {
    AuthConfig {
        secret: Some(SECRET.into()),
        rules: vec![AuthRule { topics: "pub.>".into(), access: TopicAccess::Public }],
        ..AuthConfig::default()
    }
}

#[tokio::test]
async fn out_of_bounds_requests_get_400_with_a_reason_and_a_metric() {
    let mut cfg = test_config();
    cfg.auth = Some(auth());
    let app = start_app(cfg).await;
    let many_topics: String = (0..65).map(|i| format!("topic=pub.t{i}")).collect::<Vec<_>>().join("&");
    let long_query = format!("topic=pub.a&pad={}", "x".repeat(16 * 1024));
    let long_id = "1".repeat(1025);
    let big = vec![b'v'; 12 * 1024];
    let long_token = "A".repeat(9000);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bad_topic", get(&format!("/events?topic={}", "a".repeat(257)), &[]), "longer than 256 bytes"),
        ("bad_topic", get("/events?topic=a%20b", &[]), "control or whitespace"),
        ("bad_topic", get("/events?topic=a.%3E.b", &[]), "must be the last token"),
        ("bad_topic", get("/events?topic=a.*.b*", &[]), "whole token"),
        ("bad_topic", get("/events?topic=", &[]), "empty"),
        ("no_topic", get("/events", &[]), "no topic"),
        ("too_many_topics", get(&format!("/events?{many_topics}"), &[]), "at most 64"),
        ("query_too_long", get(&format!("/events?{long_query}"), &[]), "query string is longer"),
        ("bad_last_event_id", get("/events?topic=pub.a", &[("last-event-id", long_id.as_bytes())]), "longer than 1024"),
        ("bad_last_event_id", get(&format!("/events?topic=pub.a&lastEventId={long_id}"), &[]), "longer than 1024"),
        ("bad_last_event_id", get("/events?topic=pub.a", &[("last-event-id", b"abc\xff\xfe")]), "not UTF-8"),
        ("bad_last_event_id", get("/events?topic=pub.a&lastEventId=a%01b", &[]), "control character"),
        (
            "headers_too_large",
            get("/events?topic=pub.a", &[("x-a", &big), ("x-b", &big), ("x-c", &big)]),
            "request headers exceed",
        ),
        ("token_too_long", get(&format!("/events?topic=secret&access_token={long_token}"), &[]), "max_token_bytes"),
        ("bad_token", get("/events?topic=secret&access_token=a&access_token=b", &[]), "at most one access_token"),
        (
            "bad_event",
            format!(
                "POST /publish?topic=a&event={} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\ncontent-length: 1\r\nconnection: close\r\n\r\nx",
                "e".repeat(300)
            )
            .into_bytes(),
            "event type is longer",
        ),
    ];
    for (reason, request, says) in &cases {
        let before = rejected_count(&app, reason).await;
        let (status, body) = raw(app.addr, request, false).await;
        let head = String::from_utf8_lossy(&request[..request.len().min(60)]).into_owned();
        assert_eq!(status, 400, "{head}: {body}");
        assert_eq!(body.trim_end().lines().count(), 1, "{head}: one-line reason, got {body:?}");
        assert!(body.contains(says), "{head}: expected {says:?} in {body:?}");
        assert_eq!(rejected_count(&app, reason).await, before + 1.0, "{head}: counted as {reason}");
    }
    // Beyond hyper's request-head buffer: 431 from hyper itself, and the connection closes.
    let huge = vec![b'v'; 70 * 1024];
    let (status, _) = raw(app.addr, &get("/events?topic=pub.a", &[("x-huge", &huge)]), false).await;
    assert_eq!(status, 431);
    // A Last-Event-ID that is merely not ours is not an error: the stream opens with a gap.
    let (status, body) =
        raw(app.addr, &get("/events?topic=pub.a", &[("last-event-id", b"urn:uuid:from-another-server")]), true).await;
    assert_eq!(status, 200);
    assert!(body.contains("sse-bridge.gap") || body.starts_with(": ok"), "{body}");
    // The refused requests opened no stream; the one that opened ends with its connection.
    wait_until("no stream left", async || app.state.registry.subscriber_count() == 0).await;
}

#[tokio::test]
async fn nats_garbage_is_counted_and_never_breaks_a_stream() {
    let nats = NatsServer::start().await;
    let mut cfg = test_config();
    let mut nc = nats_config(&nats.url(), &["t", "probe"]);
    nc.max_message_bytes = 1024;
    cfg.nats = Some(nc);
    let app = start_app(cfg).await;
    let client = nats_client(&nats.url()).await;
    let mut s = app.subscribe(&["t", "probe"]).await;
    sync_on_probe(&mut s, || async {
        client.publish("probe", Bytes::from_static(b"p")).await.unwrap();
        client.flush().await.unwrap();
    })
    .await;
    for payload in [vec![b'x'; 4096], b"a\xffb\r\nc".to_vec(), vec![b'y'; 1025], vec![b'z'; 1024], b"after".to_vec()] {
        client.publish("t", payload.into()).await.unwrap();
    }
    client.flush().await.unwrap();
    let got: Vec<String> = s.take_events(3, EVENT_TIMEOUT).await.into_iter().map(|e| e.data).collect();
    assert_eq!(got, ["a\u{fffd}b\nc".to_string(), "z".repeat(1024), "after".to_string()]);
    assert_eq!(app.state.sources[0].malformed(), 2, "two oversize messages counted");
    let metrics = admin_metrics(&app).await;
    assert!(metrics.contains("sse_bridge_events_malformed_total{source=\"nats\"} 2"), "{metrics}");
    assert!(metrics.contains("sse_bridge_events_non_utf8_total 1"), "{metrics}");
}

#[tokio::test]
async fn redis_garbage_is_counted_and_never_breaks_a_stream() {
    let redis = RedisServer::start().await;
    let mut cfg = test_config();
    let mut rc = redis_config(&redis.url(), &["t", "probe"], &[]);
    rc.envelope = true;
    rc.max_message_bytes = 256;
    cfg.redis = Some(rc);
    let app = start_app(cfg).await;
    let mut conn = redis_conn(&redis.url()).await;
    let mut s = app.subscribe(&["t", "probe"]).await;
    let c2 = conn.clone();
    sync_on_probe(&mut s, || {
        let mut c = c2.clone();
        async move {
            redis_publish(&mut c, "probe", r#"{"data":"p"}"#).await;
        }
    })
    .await;
    let oversize = format!(r#"{{"data":"{}"}}"#, "x".repeat(300));
    for m in ["not json", r#"{"event":"e"}"#, "\u{0}\u{1}", &oversize, r#"{"event":"ok","data":{"n":1}}"#] {
        redis_publish(&mut conn, "t", m).await;
    }
    let e = s.next_event(EVENT_TIMEOUT).await.expect("stream open");
    assert_eq!((e.event.as_deref(), e.data.as_str()), (Some("ok"), r#"{"n":1}"#));
    assert_eq!(app.state.sources[0].malformed(), 4);
}

/// One random garbage request: a mix of plausible and absurd methods, paths, queries,
/// headers and bodies, sometimes not HTTP at all, sometimes cut short.
fn garbage(rng: &mut StdRng) -> Vec<u8> {
    fn junk(rng: &mut StdRng, max: usize) -> Vec<u8> {
        let n = rng.random_range(0..=max);
        (0..n).map(|_| rng.random()).collect()
    }
    fn pct(rng: &mut StdRng, max: usize) -> String {
        junk(rng, max)
            .iter()
            .map(|b| if b.is_ascii_alphanumeric() { (*b as char).to_string() } else { format!("%{b:02X}") })
            .collect()
    }
    if rng.random_ratio(1, 20) {
        return junk(rng, 2048);
    }
    let method = ["GET", "POST", "OPTIONS", "PUT", "DELETE", "HEAD", "G\x01T", "PATCH"][rng.random_range(0..8)];
    let path = match rng.random_range(0..6) {
        0..=2 => "/events".to_string(),
        3 => "/publish".to_string(),
        4 => format!("/{}", pct(rng, 64)),
        _ => format!("/{}", "a/".repeat(rng.random_range(0..500))),
    };
    let mut q = Vec::new();
    for _ in 0..rng.random_range(0..12) {
        let k = ["topic", "lastEventId", "access_token", "event", "x", ""][rng.random_range(0..6)];
        let v = match rng.random_range(0..6) {
            0 => ["pub.a", "pub.*", ">", "a.>.b", "secret.x", "pub.>"][rng.random_range(0..6)].to_string(),
            1 => pct(rng, 32),
            2 => "x".repeat(rng.random_range(0..20_000)),
            3 => format!("{}.{}.{}", pct(rng, 40), pct(rng, 80), pct(rng, 40)),
            _ => pct(rng, 300),
        };
        q.push(format!("{k}={v}"));
    }
    let mut r = format!("{method} {path}?{} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n", q.join("&")).into_bytes();
    for _ in 0..rng.random_range(0..8) {
        let (k, v): (String, Vec<u8>) = match rng.random_range(0..7) {
            0 => (
                "authorization".into(),
                format!("Bearer {}.{}.{}", pct(rng, 30), pct(rng, 60), pct(rng, 40)).into_bytes(),
            ),
            1 => ("cookie".into(), format!("sse_bridge_token={}; a=b", pct(rng, 200)).into_bytes()),
            2 => ("last-event-id".into(), junk(rng, 2000).into_iter().filter(|b| *b != b'\r' && *b != b'\n').collect()),
            3 => ("x-pad".into(), vec![b'p'; rng.random_range(0..40_000)]),
            4 => ("origin".into(), pct(rng, 50).into_bytes()),
            5 => ("content-length".into(), rng.random_range(0..2_000_000u32).to_string().into_bytes()),
            _ => (pct(rng, 20), junk(rng, 100)),
        };
        r.extend_from_slice(k.as_bytes());
        r.extend_from_slice(b": ");
        r.extend_from_slice(&v);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"\r\n");
    if method == "POST" {
        r.extend_from_slice(&junk(rng, 4096));
    }
    if rng.random_ratio(1, 10) {
        let cut = rng.random_range(0..=r.len());
        r.truncate(cut);
    }
    r
}

async fn fire(addr: SocketAddr, n: usize, seed: u64) -> [usize; 6] {
    let sem = Arc::new(Semaphore::new(64));
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let req = garbage(&mut rng);
        let permit = sem.clone().acquire_owned().await.unwrap();
        tasks.spawn(async move {
            // Streams that open are read briefly (a few hundred bytes), then dropped.
            let (status, _) = raw(addr, &req, true).await;
            drop(permit);
            status
        });
    }
    let mut by_class = [0usize; 6];
    for status in tasks.join_all().await {
        by_class[(status / 100) as usize] += 1;
    }
    by_class
}

#[test]
fn ten_thousand_garbage_requests_leave_the_daemon_serving_with_flat_memory() {
    let extra = format!(
        "[publish]\ntoken = \"{TOKEN}\"\n\n[limits]\nconnect_rate_per_ip = 0\nmax_streams_per_ip = 0\n\n\
         [auth]\nsecret = \"{SECRET}\"\n\n[[auth.rules]]\ntopics = \"pub.>\"\naccess = \"public\"\n"
    );
    // Streams whose client vanished are noticed at the next heartbeat: make that prompt.
    let bridge = BridgeProcess::start(&extra, &[("SSE_BRIDGE_SERVER__HEARTBEAT_INTERVAL", "1s")]);
    let seed: u64 = std::env::var("HOSTILE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("garbage seed: {seed} (HOSTILE_SEED={seed} to replay)");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Warm up: the allocator, hyper's buffers, the runtime's threads reach their working size.
        fire(bridge.addr, 2_000, seed ^ 1).await;
        let before = bridge.rss_bytes();
        let classes = fire(bridge.addr, 10_000, seed).await;
        eprintln!("answers by class (none, 1xx, 2xx, 3xx, 4xx, 5xx): {classes:?}");
        assert!(classes[4] > 5_000, "most garbage is refused with a 4xx: {classes:?}");
        assert_eq!(classes[5], 0, "no 5xx: {classes:?}");
        // Every stream that opened has ended (its client went away).
        wait_until("no stream left open (sse_bridge_open_streams 0)", async || {
            bridge.metrics().await.lines().any(|l| l == "sse_bridge_open_streams 0")
        })
        .await;
        let after = bridge.rss_bytes();
        eprintln!("RSS before {} KiB, after {} KiB", before / 1024, after / 1024);
        assert!(after < before + 8 * 1024 * 1024, "RSS grew from {before} to {after} bytes");
        // Still serving: a stream opens and receives a publish.
        let mut s = common::sse_client::connect(&bridge.url("/events?topic=pub.alive"), &[]).await.unwrap();
        s.wait_for_comments(1, EVENT_TIMEOUT).await;
        bridge.publish("pub.alive", "still here").await;
        assert_eq!(s.next_event(EVENT_TIMEOUT).await.unwrap().data, "still here");
        let r = test_client().get(bridge.admin_url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    });
    bridge.stop();
}

/// Reads `resp`'s body until it holds `needle`; panics after [`EVENT_TIMEOUT`].
async fn read_until(resp: &mut reqwest::Response, text: &mut String, needle: &str) {
    tokio::time::timeout(EVENT_TIMEOUT, async {
        while !text.contains(needle) {
            let chunk = resp.chunk().await.expect("body chunk").expect("stream still open");
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{needle:?} did not arrive; got {text:?}"));
}

/// Issue 14, item 7: two HTTP/2 streams on one h2c connection; one is never read (a small
/// per-stream window, so the bridge cannot write to it) until its queue overflows under the
/// `disconnect` policy. That stream alone is reset; its sibling keeps receiving.
#[tokio::test]
async fn an_h2_stream_that_overflows_ends_alone_its_sibling_keeps_receiving() {
    let mut cfg = test_config();
    cfg.server.queue_capacity = 8;
    let app = start_app(cfg).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .http2_initial_stream_window_size(4096)
        .http2_initial_connection_window_size(16 * 1024 * 1024)
        .http2_adaptive_window(false)
        .build()
        .unwrap();
    let mut live = h2.get(app.url("/events?topic=live")).send().await.unwrap();
    assert_eq!(live.version(), reqwest::Version::HTTP_2);
    let mut live_text = String::new();
    read_until(&mut live, &mut live_text, "\n\n").await; // the opening comment
    let stalled = h2.get(app.url("/events?topic=stall")).send().await.unwrap();
    assert_eq!(stalled.status(), 200);
    let metrics = admin_metrics(&app).await;
    assert_eq!(common::sample(&metrics, "sse_bridge_open_connections"), Some(1.0), "one h2 connection:\n{metrics}");

    // Fill the stalled stream's window, then its queue, until the policy ends it.
    let payload = "x".repeat(16 * 1024);
    let slow = "sse_bridge_disconnects_total{reason=\"slow_consumer\"}";
    let mut published = 0;
    loop {
        app.publish("stall", None, payload.clone()).await;
        published += 1;
        if common::sample(&admin_metrics(&app).await, slow) == Some(1.0) {
            break;
        }
        assert!(published < 200, "the stalled stream never overflowed");
    }

    // Its sibling on the same connection is still open and receiving.
    app.publish("live", None, "still-flowing").await;
    read_until(&mut live, &mut live_text, "data: still-flowing\n").await;
    let metrics = admin_metrics(&app).await;
    assert_eq!(common::sample(&metrics, "sse_bridge_open_streams"), Some(1.0), "{metrics}");
    assert_eq!(common::sample(&metrics, "sse_bridge_open_connections"), Some(1.0), "{metrics}");
    drop(stalled);
}

/// The `i`-th distinct pattern an idle stream holds: never matches `hot.1`, but shares tokens
/// with it where it can, so the subject index has to look past its first level.
fn idle_pattern(i: usize) -> String {
    match i % 4 {
        0 => format!("idle.{i}.>"),
        1 => format!("*.idle{i}"),
        2 => format!("hot.*.x{i}"),
        _ => format!("hot.{i}.*"),
    }
}

/// Issue 14, item 1, at test scale: 200 streams each holding 8 distinct patterns that match
/// nothing (1,600 distinct patterns in the subject index) do not stop events on an exact topic
/// and on a pattern from reaching their streams, in order and complete; the pattern count
/// (`sse_bridge_distinct_patterns`) follows the streams and is back to 0 when they close.
#[tokio::test]
async fn idle_pattern_streams_do_not_stop_delivery() {
    let nats = NatsServer::start().await;
    let mut cfg = test_config();
    cfg.nats = Some(nats_config(&nats.url(), &["hot.>", "idle.>"]));
    cfg.limits.max_patterns_per_ip = 0; // all 200 streams come from 127.0.0.1
    let app = start_app(cfg).await;
    let client = nats_client(&nats.url()).await;
    let mut idle = Vec::new();
    for s in 0..200 {
        let patterns: Vec<String> = (s * 8..s * 8 + 8).map(idle_pattern).collect();
        let refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
        idle.push(app.subscribe(&refs).await);
    }
    let mut exact = app.subscribe(&["hot.1"]).await;
    let mut wildcard = app.subscribe(&["hot.*"]).await;
    assert_eq!(app.state.limits.distinct_patterns(), 1601);
    let metrics = admin_metrics(&app).await;
    assert!(metrics.contains("sse_bridge_distinct_patterns 1601"), "{metrics}");
    sync_on_probe(&mut exact, || async {
        client.publish("hot.1", Bytes::from_static(b"probe")).await.unwrap();
        client.flush().await.unwrap();
    })
    .await;
    for i in 0..500 {
        client.publish("hot.1", Bytes::from(format!("e{i}"))).await.unwrap();
    }
    client.flush().await.unwrap();
    let want: Vec<String> = (0..500).map(|i| format!("e{i}")).collect();
    assert_eq!(data_after_probes(&mut exact, 500).await, want, "every event, in order, on the exact topic");
    assert_eq!(data_after_probes(&mut wildcard, 500).await, want, "every event, in order, on the pattern");
    drop(idle);
    drop((exact, wildcard));
    wait_until("every pattern released", async || app.state.limits.distinct_patterns() == 0).await;
    wait_until("no stream left", async || app.state.registry.subscriber_count() == 0).await;
    assert_eq!(app.state.registry.filter_count(), 0, "the subject index is empty again");
}

/// The data of the next `n` events of `s` that are not probes (`sync_on_probe` may have sent
/// several; they come first).
async fn data_after_probes(s: &mut common::sse_client::SseStream, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let e = s.next_event(EVENT_TIMEOUT).await.expect("an event");
        if e.data != "probe" {
            out.push(e.data);
        }
    }
    out
}

/// `GET /events` with these topics, read to the end of the body (a refusal ends at once):
/// status, the `sse-bridge-refusal` header, the body.
async fn refused(app: &common::TestApp, topics: &[String]) -> (u16, Option<String>, String) {
    let q: Vec<String> = topics.iter().map(|t| format!("topic={t}")).collect();
    let r = test_client().get(app.url(&format!("/events?{}", q.join("&")))).send().await.expect("an answer");
    let status = r.status().as_u16();
    let reason = r.headers().get("sse-bridge-refusal").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let body = tokio::time::timeout(Duration::from_secs(5), r.text()).await.expect("the refusal ends").expect("body");
    if status == 200 {
        assert_eq!(ct, "text/event-stream", "{body}");
    }
    (status, reason, body)
}

/// Issue 14, item 1: one address may hold `limits.max_patterns_per_ip` distinct patterns. The
/// stream that would add one more gets the refusal an EventSource survives (`200`, a
/// `retry:`, reason `ip_pattern_limit`, counted), or `429` in `status` mode; a stream on
/// patterns the address already holds is admitted; closing streams gives the count back.
#[tokio::test]
async fn the_per_address_pattern_cap_refuses_with_a_retry_and_closing_releases_it() {
    for mode in [sse_bridge::config::RefusalMode::Retry, sse_bridge::config::RefusalMode::Status] {
        let mut cfg = test_config();
        cfg.limits.max_patterns_per_ip = 64;
        cfg.server.refusal = mode;
        let app = start_app(cfg).await;
        let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let batch = |b: usize| -> Vec<String> { (b * 16..b * 16 + 16).map(|i| format!("cap.{i}.*")).collect() };
        let mut held = Vec::new();
        for b in 0..4 {
            let topics = batch(b);
            let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
            held.push(app.subscribe(&refs).await);
        }
        assert_eq!(app.state.limits.patterns_held_by(ip), 64);
        let (status, reason, body) = refused(&app, &batch(4)).await;
        assert_eq!(reason.as_deref(), Some("ip_pattern_limit"), "{body}");
        match mode {
            sse_bridge::config::RefusalMode::Retry => {
                assert_eq!(status, 200, "{body}");
                assert!(body.starts_with(": refused (ip_pattern_limit): too many distinct patterns"), "{body:?}");
                assert!(body.lines().any(|l| l.strip_prefix("retry: ").is_some_and(|v| v.parse::<u64>().is_ok())));
            }
            sse_bridge::config::RefusalMode::Status => assert_eq!(status, 429, "{body}"),
        }
        assert_eq!(rejected_count(&app, "ip_pattern_limit").await, 1.0);
        // Patterns the address holds already cost nothing: this stream is admitted.
        let shared = batch(0)[..4].to_vec();
        let refs: Vec<&str> = shared.iter().map(String::as_str).collect();
        let again = app.subscribe(&refs).await;
        assert_eq!(app.state.limits.patterns_held_by(ip), 64);
        drop(held.pop());
        wait_until("a closed stream's patterns released", async || app.state.limits.patterns_held_by(ip) == 48).await;
        let topics = batch(4);
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        let admitted = app.subscribe(&refs).await;
        assert_eq!(app.state.limits.patterns_held_by(ip), 64);
        drop((held, again, admitted));
        wait_until("back to baseline", async || {
            app.state.limits.patterns_held_by(ip) == 0 && app.state.limits.distinct_patterns() == 0
        })
        .await;
        let metrics = admin_metrics(&app).await;
        assert!(metrics.contains("sse_bridge_distinct_patterns 0"), "{metrics}");
    }
}
