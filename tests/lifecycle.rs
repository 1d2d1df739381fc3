//! Connection lifecycle over real TCP: streams leave nothing behind when clients go away
//! (tasks, registry entries, gauges), a stalled client is cut by the slow-consumer policy
//! without costing a healthy client a single event, and streams work over h2c.

mod common;

use std::net::SocketAddr;

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use common::chunked::Dechunker;
use common::sse_client::{SseEvent, SseParser, connect_with, test_client_h2};
use common::{
    EVENT_TIMEOUT, TOKEN, TestApp, admin_metrics, sample, start_app, test_config, urlencode, wait_for, wait_until,
};

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current().metrics().num_alive_tasks()
}

// ---------------------------------------------------------------------------------------------
// Cleanup after many connects and disconnects.

const CYCLES: usize = 1000;
const CONCURRENCY: usize = 20;

/// One connect/disconnect cycle; `i` picks the flavour so all of them are exercised.
async fn cycle(app: &TestApp, i: usize) {
    let topic = format!("c.{i}");
    match i % 10 {
        // Receive an event, then go away.
        0 => {
            let mut s = app.subscribe(&[&topic]).await;
            let id = app.publish(&topic, None, format!("hello {i}")).await;
            let ev = s.next_event(EVENT_TIMEOUT).await.expect("stream open");
            assert_eq!(ev.data, format!("hello {i}"));
            assert_eq!(ev.id.as_deref(), Some(id.as_str()));
        }
        // Go away with events queued or in flight that were never read.
        1 => {
            let s = app.subscribe(&[&topic]).await;
            for k in 0..3 {
                app.publish(&topic, None, format!("unread {k}")).await;
            }
            drop(s);
        }
        // HTTP/2: the stream is cancelled with RST_STREAM, then the connection closes.
        2 => {
            let url = app.url(&format!("/events?topic={}", urlencode(&topic)));
            let mut s = connect_with(&test_client_h2(), &url, &[]).await.expect("h2c stream opens");
            s.wait_for_comments(1, EVENT_TIMEOUT).await;
        }
        // Raw socket closed with RST (SO_LINGER 0) right after the opening comment.
        3 => {
            let s = raw_stream(app.addr, &topic, None).await;
            s.set_zero_linger().unwrap();
        }
        // Plain open-and-drop.
        _ => {
            let _s = app.subscribe(&[&topic]).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_connect_disconnect_cycles_leave_nothing_behind() {
    let app = start_app(test_config()).await;
    // `ready` is set after every app task (sequencer, heartbeat, both accept loops) is spawned.
    wait_until("app ready", async || app.state.is_ready()).await;
    let baseline = alive_tasks();
    assert_eq!(app.state.registry.subscriber_count(), 0);

    let started = std::time::Instant::now();
    futures_util::stream::iter(0..CYCLES).for_each_concurrent(CONCURRENCY, |i| cycle(&app, i)).await;
    let cycles_took = started.elapsed();

    let registry = app.state.registry.clone();
    wait_for("subscribers to leave", async || registry.subscriber_count(), |n| *n == 0).await;
    assert_eq!(registry.filter_count(), 0, "topic index entries left");
    assert_eq!(registry.queued_frames(), 0);

    let metrics = admin_metrics(&app).await;
    assert_eq!(sample(&metrics, "sse_bridge_open_streams"), Some(0.0), "{metrics}");
    assert_eq!(sample(&metrics, "sse_bridge_streams_opened_total"), Some(CYCLES as f64));
    assert_eq!(
        sample(&metrics, "sse_bridge_disconnects_total{reason=\"client_closed\"}"),
        Some(CYCLES as f64),
        "{metrics}"
    );

    // Every connection task, hyper HTTP/2 stream task and client-side task is gone (the
    // /metrics request above included).
    wait_for("alive tasks back to the baseline", async || alive_tasks(), |n| *n == baseline).await;
    eprintln!("{CYCLES} cycles took {cycles_took:?}; baseline {baseline} tasks");
}

// ---------------------------------------------------------------------------------------------
// Slow consumer.

/// Opens `GET /events?topic=…` on a raw socket (with a small receive buffer if given) and
/// reads until the opening comment, so the subscription is registered; returns the socket and
/// the bytes read so far.
async fn raw_stream(addr: SocketAddr, topic: &str, rcvbuf: Option<u32>) -> TcpStream {
    raw_stream_with_head(addr, topic, rcvbuf).await.0
}

async fn raw_stream_with_head(addr: SocketAddr, topic: &str, rcvbuf: Option<u32>) -> (TcpStream, Vec<u8>) {
    let sock = TcpSocket::new_v4().unwrap();
    if let Some(n) = rcvbuf {
        // Set before connect so the advertised window is small from the start.
        sock.set_recv_buffer_size(n).unwrap();
    }
    let mut s = sock.connect(addr).await.expect("connect");
    let req =
        format!("GET /events?topic={} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n", urlencode(topic));
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(EVENT_TIMEOUT, async {
        while !contains(&head, b": ok\n") {
            let n = s.read(&mut buf).await.expect("read response head");
            assert!(n > 0, "server closed before the opening comment");
            head.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("opening comment within timeout");
    assert!(head.starts_with(b"HTTP/1.1 200 "), "{}", String::from_utf8_lossy(&head));
    (s, head)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_client_is_cut_and_healthy_client_misses_nothing() {
    const CAPACITY: usize = 16;
    const PAYLOAD: usize = 64 * 1024;
    // Far more than queue + socket buffers can absorb; only reached if the policy never fires.
    const MAX_EVENTS: usize = 2000;
    const AFTER: usize = 20;

    let mut cfg = test_config();
    cfg.server.queue_capacity = CAPACITY;
    let app = start_app(cfg).await;

    let mut healthy = app.subscribe(&["t"]).await;
    let (mut stalled, head) = raw_stream_with_head(app.addr, "t", Some(4096)).await;
    assert_eq!(app.state.registry.subscriber_count(), 2);

    let filler = "x".repeat(PAYLOAD);
    let mut published: Vec<(String, String)> = Vec::new();
    let publish_one = async |published: &mut Vec<(String, String)>, healthy: &mut common::sse_client::SseStream| {
        let i = published.len();
        let body = format!("{i}:{filler}");
        let id = app.publish("t", None, body.clone()).await;
        // Lock-step: the healthy client has this event before the next is published, so its
        // own queue never holds more than one and only the stalled one can overflow.
        let ev = healthy
            .next_event(EVENT_TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("healthy stream ended after {i} events (error: {:?})", healthy.error()));
        assert_eq!(ev.id.as_deref(), Some(id.as_str()), "event {i}");
        assert!(ev.data == body, "event {i} has the wrong data");
        published.push((id, body));
    };

    // Publish until the stalled client is gone from the registry.
    while app.state.registry.subscriber_count() == 2 {
        assert!(
            published.len() < MAX_EVENTS,
            "stalled client still subscribed after {MAX_EVENTS} events of {PAYLOAD} bytes"
        );
        publish_one(&mut published, &mut healthy).await;
    }
    let cut_after = published.len();
    assert_eq!(app.state.registry.subscriber_count(), 1);
    // The healthy client goes on receiving.
    for _ in 0..AFTER {
        publish_one(&mut published, &mut healthy).await;
    }
    assert!(!healthy.is_ended());

    let metrics = admin_metrics(&app).await;
    assert_eq!(sample(&metrics, "sse_bridge_disconnects_total{reason=\"slow_consumer\"}"), Some(1.0), "{metrics}");
    assert_eq!(sample(&metrics, "sse_bridge_open_streams"), Some(1.0));

    // The stalled socket now reads what the kernel still held, then EOF (or a reset): the
    // connection was closed by the server.
    let mut raw = head;
    let mut buf = vec![0u8; 256 * 1024];
    let end = tokio::time::timeout(EVENT_TIMEOUT, async {
        loop {
            match stalled.read(&mut buf).await {
                Ok(0) => return "eof".to_owned(),
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(e) => return format!("error: {e}"),
            }
        }
    })
    .await
    .expect("stalled socket reaches EOF or reset after the disconnect");
    assert!(end == "eof" || end.contains("reset"), "stalled socket ended with {end}");

    // What it did get is a gapless prefix of the published events, then the cut: the policy
    // disconnects, it never skips events silently.
    let body_start = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head_text = String::from_utf8_lossy(&raw[..body_start]).to_lowercase();
    assert!(head_text.contains("transfer-encoding: chunked"), "{head_text}");
    let mut parser = SseParser::new();
    let got: Vec<SseEvent> = parser.feed(&Dechunker::default().feed(&raw[body_start..]));
    assert!(got.len() < cut_after, "stalled client got {} of {cut_after} events before the cut", got.len());
    for (k, ev) in got.iter().enumerate() {
        assert_eq!(ev.id.as_deref(), Some(published[k].0.as_str()), "stalled event {k}");
        assert!(ev.data == published[k].1, "stalled event {k} has the wrong data");
    }
    eprintln!(
        "stalled client cut after {cut_after} events of {PAYLOAD} bytes; it had read {} \
         complete events ({} bytes) when the socket ended ({end})",
        got.len(),
        raw.len()
    );
}

// ---------------------------------------------------------------------------------------------
// h2c.

#[tokio::test]
async fn h2c_streams_receive_events() {
    let app = start_app(test_config()).await;
    let client = test_client_h2();
    let mut a = connect_with(&client, &app.url("/events?topic=h.a"), &[]).await.expect("h2c stream opens");
    let mut b = connect_with(&client, &app.url("/events?topic=h.b"), &[]).await.expect("second h2c stream opens");
    a.wait_for_comments(1, EVENT_TIMEOUT).await;
    b.wait_for_comments(1, EVENT_TIMEOUT).await;
    assert_eq!(a.headers()["content-type"], "text/event-stream", "{:?}", a.headers());

    // Publish over the same h2c client (and check it really is HTTP/2).
    let publish = async |topic: &str, body: String| -> String {
        let r = client
            .post(app.url(&format!("/publish?topic={topic}")))
            .bearer_auth(TOKEN)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        v["id"].as_str().unwrap().to_owned()
    };
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push((publish("h.a", format!("a-{i}")).await, publish("h.b", format!("b-{i}")).await));
    }
    for (i, (ida, idb)) in ids.iter().enumerate() {
        let ev = a.next_event(EVENT_TIMEOUT).await.expect("stream a open");
        assert_eq!((ev.data.as_str(), ev.id.as_deref()), (format!("a-{i}").as_str(), Some(ida.as_str())));
        let ev = b.next_event(EVENT_TIMEOUT).await.expect("stream b open");
        assert_eq!((ev.data.as_str(), ev.id.as_deref()), (format!("b-{i}").as_str(), Some(idb.as_str())));
    }

    // Cancelling one HTTP/2 stream ends its subscription; the other on the same connection
    // goes on.
    assert_eq!(app.state.registry.subscriber_count(), 2);
    drop(b);
    wait_until("cancelled h2 stream leaves the registry", async || app.state.registry.subscriber_count() == 1).await;
    let id = publish("h.a", "after".into()).await;
    let ev = a.next_event(EVENT_TIMEOUT).await.expect("stream a open");
    assert_eq!(ev.data, "after");
    assert_eq!(ev.id.as_deref(), Some(id.as_str()));
}
