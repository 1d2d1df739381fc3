//! Admission limits over real connections, with `server.refusal = "status"`: the per-IP
//! connect rate (`429` + `Retry-After`),
//! the keyed limiter's memory staying bounded under many distinct client addresses
//! (127.0.x.y source addresses), the global and per-IP stream caps (`503`/`429` with a
//! one-line reason, never a hang), and that malformed requests never consume admission.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use common::sse_client::{SseError, SseStream, test_client};
use common::{EVENT_TIMEOUT, TestApp, admin_metrics, rejected_series, sample, start_app, test_config, wait_until};
use sse_bridge::Config;
use sse_bridge::config::RefusalMode;

// ---------------------------------------------------------------------------------------------
// Helpers.

/// Opens a stream that must be refused; returns the refusal.
async fn refused(app: &TestApp, topic: &str) -> SseError {
    match common::sse_client::connect(&app.url(&format!("/events?topic={topic}")), &[]).await {
        Ok(_) => panic!("stream on {topic} was admitted, expected a refusal"),
        Err(e) => e,
    }
}

/// Opens a stream that must be admitted and waits for its opening comment.
async fn admitted(app: &TestApp, topic: &str) -> SseStream {
    match common::sse_client::connect(&app.url(&format!("/events?topic={topic}")), &[]).await {
        Ok(mut s) => {
            s.wait_for_comments(1, EVENT_TIMEOUT).await;
            s
        }
        Err(e) => panic!("stream on {topic} refused: {e}"),
    }
}

/// A refusal's body is one line: the reason.
fn assert_one_line(e: &SseError) -> &str {
    let body = e.body().expect("an HTTP answer");
    assert!(body.ends_with('\n') && body.matches('\n').count() == 1 && body.len() > 1, "not one line: {body:?}");
    body.trim_end()
}

/// `GET path` from source address `from` (any 127.0.0.0/8 address works on Linux loopback) on
/// a raw socket; returns the status code and the socket, left open.
async fn raw_get(addr: SocketAddr, from: Ipv4Addr, path: &str) -> (u16, TcpStream) {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind((from, 0).into()).unwrap_or_else(|e| panic!("bind {from}: {e}"));
    let mut s = sock.connect(addr).await.unwrap_or_else(|e| panic!("connect from {from}: {e}"));
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    tokio::time::timeout(EVENT_TIMEOUT, async {
        while !head.windows(2).any(|w| w == b"\r\n") {
            let n = s.read(&mut buf).await.expect("read status line");
            assert!(n > 0, "closed before the status line");
            head.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("status line within timeout");
    let line = String::from_utf8_lossy(&head);
    let status = line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {line:?}"));
    (status, s)
}

/// A test config whose time-fixable refusals are plain statuses (`server.refusal = "status"`),
/// which these tests check; the default EventSource-friendly answer is tested in refusals.rs.
fn limits_config(f: impl FnOnce(&mut Config)) -> Config {
    let mut c = test_config();
    c.server.refusal = RefusalMode::Status;
    f(&mut c);
    c
}

// ---------------------------------------------------------------------------------------------
// 1. Per-IP connect rate.

#[tokio::test]
async fn connect_rate_per_ip_refuses_with_429_and_retry_after() {
    let app = start_app(limits_config(|c| {
        c.limits.connect_rate_per_ip = 2;
        c.limits.connect_burst_per_ip = 3;
    }))
    .await;
    // The burst: three streams at once. (A new token takes 500 ms; these take milliseconds.)
    let mut open = Vec::new();
    for i in 0..3 {
        open.push(admitted(&app, &format!("t{i}")).await);
    }
    let e = refused(&app, "t3").await;
    assert_eq!(e.status(), Some(reqwest::StatusCode::TOO_MANY_REQUESTS), "{e}");
    let SseError::Status { headers, .. } = &e else { unreachable!() };
    let retry_after: u64 = headers
        .get("retry-after")
        .expect("Retry-After header")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in whole seconds");
    assert_eq!(retry_after, 1, "at 2/s the next token is at most 500 ms away, rounded up to 1 s");
    let reason = assert_one_line(&e);
    assert!(reason.contains("too fast"), "{reason}");

    let metrics = admin_metrics(&app).await;
    assert_eq!(sample(&metrics, &rejected_series("ip_connect_rate")), Some(1.0), "{metrics}");
    assert_eq!(sample(&metrics, "sse_bridge_open_streams"), Some(3.0), "{metrics}");
    assert_eq!(app.state.registry.subscriber_count(), 3, "the refused request left nothing registered");
}

// ---------------------------------------------------------------------------------------------
// 2. The keyed limiter forgets idle addresses.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_rate_keys_stay_bounded_with_many_client_addresses() {
    const ADDRESSES: usize = 500;
    const CONCURRENCY: usize = 50;
    let app = start_app(limits_config(|c| {
        c.limits.connect_rate_per_ip = 1000;
        c.limits.connect_burst_per_ip = 1;
        // Housekeeping (which prunes the limiter) ticks every min(heartbeat_interval, 1s).
        c.server.heartbeat_interval = Duration::from_millis(200);
    }))
    .await;
    let addr = app.addr;
    let state = app.state.clone();
    let max_keys = std::sync::atomic::AtomicUsize::new(0);
    let started = std::time::Instant::now();
    futures_util::stream::iter(0..ADDRESSES)
        .for_each_concurrent(CONCURRENCY, |i| {
            let (state, max_keys) = (&state, &max_keys);
            async move {
                let from = Ipv4Addr::new(127, 0, 1 + (i / 250) as u8, 1 + (i % 250) as u8);
                let (status, sock) = raw_get(addr, from, &format!("/events?topic=k.{i}")).await;
                assert_eq!(status, 200, "stream from {from}");
                // Admission ran before the answer, so this address's key exists (until a sweep).
                max_keys.fetch_max(state.limits.rate_keys(), std::sync::atomic::Ordering::Relaxed);
                drop(sock);
            }
        })
        .await;
    let took = started.elapsed();
    let max_keys = max_keys.into_inner();
    assert!(max_keys > 10, "the limiter never held more than {max_keys} keys: the test did not exercise it");
    let metrics = admin_metrics(&app).await;
    assert_eq!(sample(&metrics, "sse_bridge_streams_opened_total"), Some(ADDRESSES as f64), "{metrics}");

    wait_until("the limiter forgets idle addresses", async || app.state.limits.rate_keys() <= 10).await;
    wait_until("every stream closed", async || app.state.registry.subscriber_count() == 0).await;
    assert_eq!(app.state.limits.open_streams(), 0);
    eprintln!(
        "{ADDRESSES} addresses in {took:?}; the limiter held up to {max_keys} keys, then {}",
        app.state.limits.rate_keys()
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Stream caps.

#[tokio::test]
async fn global_stream_cap_answers_503_until_a_stream_closes() {
    let app = start_app(limits_config(|c| c.limits.max_streams = 3)).await;
    let mut open: Vec<SseStream> = Vec::new();
    for i in 0..3 {
        open.push(admitted(&app, &format!("t{i}")).await);
    }
    let e = refused(&app, "t3").await;
    assert_eq!(e.status(), Some(reqwest::StatusCode::SERVICE_UNAVAILABLE), "{e}");
    let reason = assert_one_line(&e);
    assert!(reason.contains("capacity") && reason.contains('3'), "{reason}");
    let SseError::Status { headers, .. } = &e else { unreachable!() };
    assert!(headers.contains_key("retry-after"), "{headers:?}");

    // Closing one frees its slot.
    drop(open.pop());
    wait_until("the closed stream releases its slot", async || app.state.limits.open_streams() == 2).await;
    open.push(admitted(&app, "t4").await);
    assert_eq!(refused(&app, "t5").await.status(), Some(reqwest::StatusCode::SERVICE_UNAVAILABLE));

    let metrics = admin_metrics(&app).await;
    assert_eq!(sample(&metrics, &rejected_series("at_capacity")), Some(2.0), "{metrics}");
    assert_eq!(sample(&metrics, "sse_bridge_open_streams"), Some(3.0), "{metrics}");
}

#[tokio::test]
async fn per_ip_stream_cap_answers_429_and_admits_other_addresses() {
    let app = start_app(limits_config(|c| c.limits.max_streams_per_ip = 2)).await;
    let local = Ipv4Addr::LOCALHOST;
    let (s1, a) = raw_get(app.addr, local, "/events?topic=a").await;
    let (s2, b) = raw_get(app.addr, local, "/events?topic=b").await;
    assert_eq!((s1, s2), (200, 200));
    let e = refused(&app, "c").await;
    assert_eq!(e.status(), Some(reqwest::StatusCode::TOO_MANY_REQUESTS), "{e}");
    let reason = assert_one_line(&e);
    assert!(reason.contains("this address") && reason.contains('2'), "{reason}");

    // Another client address is admitted, up to its own cap.
    let other = Ipv4Addr::new(127, 0, 0, 2);
    let (s3, c) = raw_get(app.addr, other, "/events?topic=c").await;
    let (s4, d) = raw_get(app.addr, other, "/events?topic=d").await;
    let (s5, _e) = raw_get(app.addr, other, "/events?topic=e").await;
    assert_eq!((s3, s4, s5), (200, 200, 429));

    // Closing one of the first address's streams lets it open another.
    drop(a);
    wait_until("the closed stream releases its slot", async || app.state.limits.open_streams() == 3).await;
    let _f = admitted(&app, "f").await;

    let metrics = admin_metrics(&app).await;
    assert_eq!(sample(&metrics, &rejected_series("ip_stream_limit")), Some(2.0), "{metrics}");
    assert_eq!(sample(&metrics, "sse_bridge_open_streams"), Some(4.0), "{metrics}");
    drop((b, c, d));
}

// ---------------------------------------------------------------------------------------------
// 4. Malformed requests consume no admission.

#[tokio::test]
async fn malformed_requests_do_not_consume_connect_tokens() {
    let app = start_app(limits_config(|c| {
        c.limits.connect_rate_per_ip = 1;
        c.limits.connect_burst_per_ip = 1;
        c.server.max_topics_per_connection = 2;
    }))
    .await;
    let long = "x".repeat(app.state.config.server.max_topic_length + 1);
    let bad = [
        "/events".to_string(),
        "/events?".into(),
        "/events?lastEventId=1".into(),
        "/events?topic=".into(),
        "/events?topic=a%09b".into(),
        "/events?topic=a.>.b".into(),
        format!("/events?topic={long}"),
        "/events?topic=a&topic=b&topic=c".into(),
        "/events?foo=bar".into(),
        "/events?topic=%20".into(),
    ];
    for path in &bad {
        let r = test_client().get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let body = r.text().await.unwrap();
        assert!(body.ends_with('\n') && body.matches('\n').count() == 1, "{path}: not one line: {body:?}");
    }
    let metrics = admin_metrics(&app).await;
    assert_eq!(sample(&metrics, &rejected_series("ip_connect_rate")), None, "{metrics}");

    // The one token is still there...
    let _s = admitted(&app, "good").await;
    // ...and it was the only one: the limiter is on.
    let e = refused(&app, "again").await;
    assert_eq!(e.status(), Some(reqwest::StatusCode::TOO_MANY_REQUESTS), "{e}");
    let metrics = admin_metrics(&app).await;
    assert_eq!(sample(&metrics, &rejected_series("ip_connect_rate")), Some(1.0), "{metrics}");
    assert_eq!(sample(&metrics, "sse_bridge_streams_opened_total"), Some(1.0), "{metrics}");
}

// ---------------------------------------------------------------------------------------------
// Behind a proxy: X-Forwarded-For is believed only from trusted proxies.

#[tokio::test]
async fn per_ip_limits_see_clients_behind_trusted_proxies() {
    let mut cfg = limits_config(|_| {});
    cfg.limits.max_streams_per_ip = 1;
    cfg.server.trusted_proxies = vec!["127.0.0.0/8".into()];
    let app = start_app(cfg).await;
    // Two clients behind the same proxy address are two clients.
    let _a = app.subscribe_with(&["t"], &[("x-forwarded-for", "198.51.100.1")]).await;
    let _b = app.subscribe_with(&["t"], &[("x-forwarded-for", "198.51.100.2")]).await;
    // The same client twice is over its limit, whatever it writes to the left of the chain.
    let url = app.url("/events?topic=t");
    let e = common::sse_client::connect(&url, &[("x-forwarded-for", "6.6.6.6, 198.51.100.1")])
        .await
        .err()
        .expect("refused");
    assert_eq!(e.status().map(|s| s.as_u16()), Some(429));

    // Without trusted proxies the header is ignored: the peer (127.0.0.1) is the client.
    let mut cfg = limits_config(|_| {});
    cfg.limits.max_streams_per_ip = 1;
    let app = start_app(cfg).await;
    let _a = app.subscribe_with(&["t"], &[("x-forwarded-for", "198.51.100.1")]).await;
    let url = app.url("/events?topic=t");
    let e = common::sse_client::connect(&url, &[("x-forwarded-for", "198.51.100.2")]).await.err().expect("refused");
    assert_eq!(e.status().map(|s| s.as_u16()), Some(429));
}

// ---------------------------------------------------------------------------------------------
// 5. Connections still sending their request head count against the caps (issue 14, item 6).

/// Opens a connection from `from` and sends the first half of a request head, never the rest.
async fn half_head(addr: SocketAddr, from: Ipv4Addr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind((from, 0).into()).unwrap_or_else(|e| panic!("bind {from}: {e}"));
    let mut s = sock.connect(addr).await.unwrap_or_else(|e| panic!("connect from {from}: {e}"));
    s.write_all(b"GET /events?topic=slow HTTP/1.1\r\nHost: x\r\nX-Pad: ").await.unwrap();
    s
}

#[tokio::test]
async fn connections_in_their_head_are_capped_per_address_counted_and_released() {
    const CAP: usize = 5;
    const OPENED: usize = 40;
    let app = start_app(limits_config(|c| {
        c.limits.max_streams_per_ip = CAP;
        // Long enough that no head times out during the test: only the cap may close them.
        c.server.header_read_timeout = Duration::from_secs(60);
    }))
    .await;
    let local = Ipv4Addr::LOCALHOST;
    let in_head = async || sample(&admin_metrics(&app).await, "sse_bridge_connections_in_head");
    assert_eq!(in_head().await, Some(0.0), "baseline");

    let mut held = Vec::new();
    for _ in 0..OPENED {
        held.push(half_head(app.addr, local).await);
    }
    // The cap holds: CAP heads counted, the rest closed before anything was read.
    wait_until("the cap's worth of heads counted, the rest refused", async || {
        let m = admin_metrics(&app).await;
        sample(&m, "sse_bridge_connections_in_head") == Some(CAP as f64)
            && sample(&m, &rejected_series("ip_head_limit")) == Some((OPENED - CAP) as f64)
    })
    .await;
    assert_eq!(app.state.limits.heads_of(local.into()), CAP);
    let mut closed = 0;
    for s in &mut held {
        let mut b = [0u8; 64];
        // A refused connection was closed by the bridge: EOF or reset at once. A counted one
        // is still waiting for the rest of its head: nothing to read.
        match tokio::time::timeout(Duration::from_millis(50), s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
            Ok(Ok(n)) => panic!("a half-sent head got an answer: {:?}", String::from_utf8_lossy(&b[..n])),
            Err(_) => {}
        }
    }
    assert_eq!(closed, OPENED - CAP, "every connection over the cap was closed");

    // Another address has its own share, and a full request from it is served.
    let (status, other) = raw_get(app.addr, Ipv4Addr::new(127, 0, 0, 2), "/events?topic=ok").await;
    assert_eq!(status, 200);

    // A head that completes leaves the head count and becomes a stream.
    let mut done = Vec::new();
    for mut s in held.drain(..) {
        let mut b = [0u8; 1];
        if tokio::time::timeout(Duration::from_millis(1), s.read(&mut b)).await.is_err() {
            done.push(s);
        }
    }
    assert_eq!(done.len(), CAP);
    let mut finished = done.pop().unwrap();
    finished.write_all(b"1\r\n\r\n").await.unwrap();
    let mut b = [0u8; 12];
    finished.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"HTTP/1.1 200");
    wait_until("the completed head left the count", async || in_head().await == Some((CAP - 1) as f64)).await;
    assert_eq!(app.state.limits.open_streams(), 2);

    // Closing the rest returns the count to its baseline.
    drop(done);
    wait_until("every head slot given back", async || in_head().await == Some(0.0)).await;
    assert_eq!(app.state.limits.heads_open(), 0);
    assert_eq!(app.state.limits.heads_of(local.into()), 0);
    drop((finished, other));
}
