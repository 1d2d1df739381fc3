//! The lean HTTP/1.x path for `GET /events` (src/sse/h1.rs), over real sockets with a raw
//! client: the wire format of streams and refusals, heads that arrive in pieces or too big,
//! the client leaving, shutdown; and everything that is not a plain `GET /events` still
//! answered by hyper on the same port (keep-alive, `/publish`, h2c, malformed heads).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;

use common::sse_client::{SseEvent, SseParser, connect_with, test_client, test_client_h2};
use common::{EVENT_TIMEOUT, TOKEN, TestApp, start_app, test_config, wait_until};
use sse_bridge::RunOutcome;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw HTTP/1.x client: the response head, then chunks or bytes as they arrive.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

/// A response head: the status line and the headers (names lowercased).
#[derive(Debug)]
struct Head {
    status_line: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn status(&self) -> u16 {
        self.status_line.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).await.expect("connect");
        s.set_nodelay(true).unwrap();
        Raw { s, buf: Vec::new() }
    }

    /// Connects and sends `request` in one write.
    async fn send(addr: SocketAddr, request: &[u8]) -> Raw {
        let mut r = Raw::connect(addr).await;
        r.s.write_all(request).await.unwrap();
        r
    }

    /// Reads more; `false` at the end of the connection.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(EVENT_TIMEOUT, self.s.read(&mut chunk)).await.expect("server answers in time") {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    async fn head(&mut self) -> Head {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            assert!(self.fill().await, "connection closed before the response head: {:?}", self.text());
        };
        let text = String::from_utf8(self.buf[..end].to_vec()).unwrap();
        self.buf.drain(..end + 4);
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap().to_owned();
        let headers = lines
            .map(|l| {
                let (k, v) = l.split_once(':').expect("header line");
                (k.to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        Head { status_line, headers }
    }

    /// The next chunk's data; `None` for the last chunk.
    async fn chunk(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(eol) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let size = std::str::from_utf8(&self.buf[..eol]).unwrap();
                let len = usize::from_str_radix(size, 16).unwrap_or_else(|_| panic!("chunk size line {size:?}"));
                if self.buf.len() >= eol + 2 + len + 2 {
                    assert_eq!(&self.buf[eol + 2 + len..eol + 4 + len], b"\r\n", "chunk ends with CRLF");
                    let data = self.buf[eol + 2..eol + 2 + len].to_vec();
                    self.buf.drain(..eol + 4 + len);
                    return (len > 0).then_some(data);
                }
            }
            assert!(self.fill().await, "connection closed mid-chunk: {:?}", self.text());
        }
    }

    /// Everything until the server closes.
    async fn rest(&mut self) -> Vec<u8> {
        while self.fill().await {}
        std::mem::take(&mut self.buf)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }
}

fn get_events(query: &str, extra: &str) -> Vec<u8> {
    format!("GET /events?{query} HTTP/1.1\r\nhost: bridge\r\naccept: text/event-stream\r\n{extra}\r\n").into_bytes()
}

/// Opens a stream on the lean path and reads its head and opening comment.
async fn subscribe_raw(app: &TestApp, topic: &str) -> (Raw, Head) {
    let mut r = Raw::send(app.addr, &get_events(&format!("topic={topic}"), "")).await;
    let head = r.head().await;
    assert_eq!(head.status(), 200, "{head:?}");
    let first = r.chunk().await.expect("opening comment");
    assert!(first.starts_with(b": ok\n"), "{:?}", String::from_utf8_lossy(&first));
    (r, head)
}

/// Reads chunks until `n` events are in.
async fn events(r: &mut Raw, parser: &mut SseParser, n: usize) -> Vec<SseEvent> {
    let mut got = Vec::new();
    while got.len() < n {
        let chunk = r.chunk().await.expect("stream open");
        got.extend(parser.feed(&chunk));
    }
    got
}

#[tokio::test]
async fn a_raw_client_gets_a_well_formed_chunked_stream() {
    let mut cfg = test_config();
    cfg.server.cors_origins = vec!["https://app.example".into()];
    let app = start_app(cfg).await;
    let mut r = Raw::send(app.addr, &get_events("topic=lean.a", "origin: https://app.example\r\n")).await;
    let head = r.head().await;
    assert_eq!(head.status_line, "HTTP/1.1 200 OK");
    assert_eq!(head.get("content-type"), Some("text/event-stream"), "{head:?}");
    assert_eq!(head.get("cache-control"), Some("no-cache"), "{head:?}");
    assert_eq!(head.get("x-accel-buffering"), Some("no"), "{head:?}");
    assert_eq!(head.get("transfer-encoding"), Some("chunked"), "{head:?}");
    assert_eq!(head.get("access-control-allow-origin"), Some("https://app.example"), "{head:?}");
    assert!(head.get("date").is_some(), "{head:?}");
    assert_eq!(head.get("content-length"), None, "{head:?}");
    assert_eq!(head.get("connection"), None, "{head:?}");
    let first = r.chunk().await.expect("opening comment");
    assert_eq!(first, format!(": ok\nretry: {}\n\n", app.state.config.server.retry.as_millis()).as_bytes());

    let id = app.publish("lean.a", None, "hello").await;
    let frame = r.chunk().await.expect("stream open");
    assert_eq!(String::from_utf8(frame).unwrap(), format!("id: {id}\ndata: hello\n\n"));

    // An origin not on the list gets no CORS headers.
    let mut r = Raw::send(app.addr, &get_events("topic=lean.a", "origin: https://evil.example\r\n")).await;
    let head = r.head().await;
    assert_eq!(head.status(), 200);
    assert_eq!(head.get("access-control-allow-origin"), None, "{head:?}");
}

#[tokio::test]
async fn a_burst_arrives_complete_and_in_order() {
    let app = start_app(test_config()).await;
    let (mut r, _) = subscribe_raw(&app, "lean.burst").await;
    // 300 publishes at once over 30 connections: the sequencer fans out faster than one
    // connection task writes, so frames pile up and leave in batches.
    let client = test_client();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..30 {
        let (client, url) = (client.clone(), app.url("/publish?topic=lean.burst"));
        tasks.spawn(async move {
            let mut sent = Vec::new();
            for i in 0..10 {
                let body = format!("event {w}-{i}");
                let resp = client.post(&url).bearer_auth(TOKEN).body(body.clone()).send().await.unwrap();
                let v: serde_json::Value = resp.json().await.unwrap();
                sent.push((v["id"].as_str().unwrap().to_owned(), body));
            }
            sent
        });
    }
    let sent: HashMap<String, String> = tasks.join_all().await.into_iter().flatten().collect();
    assert_eq!(sent.len(), 300);
    let got = events(&mut r, &mut SseParser::new(), 300).await;
    assert_eq!(got.len(), 300, "nothing extra");
    let seqs: Vec<u64> =
        got.iter().map(|e| e.id.as_deref().unwrap().rsplit('-').next().unwrap().parse().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "ids increase: {seqs:?}");
    for e in &got {
        assert_eq!(sent.get(e.id.as_deref().unwrap()), Some(&e.data), "event {:?} as published", e.id);
    }
}

#[tokio::test]
async fn a_head_sent_in_small_pieces_is_parsed() {
    let app = start_app(test_config()).await;
    let request = get_events("topic=lean.split&lastEventId=", "x-pad: abcdefghijklmnopqrstuvwxyz\r\n");
    let mut open = Vec::new();
    for piece in [1, 2, 3, 7] {
        let mut r = Raw::connect(app.addr).await;
        for p in request.chunks(piece) {
            r.s.write_all(p).await.unwrap();
            r.s.flush().await.unwrap();
            tokio::task::yield_now().await;
        }
        let head = r.head().await;
        assert_eq!(head.status(), 200, "pieces of {piece}: {head:?}");
        assert!(r.chunk().await.expect("opening comment").starts_with(b": ok\n"));
        open.push(r);
    }
    wait_until("four streams", async || app.state.registry.subscriber_count() == 4).await;
}

#[tokio::test]
async fn oversized_heads_are_refused_as_before() {
    let app = start_app(test_config()).await;
    // Beyond the head buffer: hyper's own 431, as before the lean path.
    let huge = format!("x-huge: {}\r\n", "v".repeat(70 * 1024));
    let mut r = Raw::send(app.addr, &get_events("topic=lean.a", &huge)).await;
    let head = r.head().await;
    assert_eq!(head.status(), 431, "{head:?}");
    r.rest().await;
    // Within the buffer but over the header budget: the handler's 400 with its reason.
    let big = format!(
        "x-a: {}\r\nx-b: {}\r\nx-c: {}\r\n",
        "v".repeat(12 * 1024),
        "v".repeat(12 * 1024),
        "v".repeat(12 * 1024)
    );
    let mut r = Raw::send(app.addr, &get_events("topic=lean.a", &big)).await;
    let head = r.head().await;
    assert_eq!(head.status(), 400, "{head:?}");
    let body = String::from_utf8(r.rest().await).unwrap();
    assert!(body.contains("request headers exceed"), "{body}");
    assert_eq!(app.state.registry.subscriber_count(), 0);
}

#[tokio::test]
async fn refusals_have_a_length_and_close_the_connection() {
    let app = start_app(test_config()).await;
    // Keep-alive asked for, but a refused stream request closes its connection.
    let mut r = Raw::send(app.addr, b"GET /events HTTP/1.1\r\nhost: bridge\r\nconnection: keep-alive\r\n\r\n").await;
    let head = r.head().await;
    assert_eq!(head.status_line, "HTTP/1.1 400 Bad Request");
    assert_eq!(head.get("connection"), Some("close"), "{head:?}");
    assert_eq!(head.get("content-type"), Some("text/plain; charset=utf-8"), "{head:?}");
    let body = r.rest().await;
    assert_eq!(head.get("content-length"), Some(body.len().to_string().as_str()), "{head:?}");
    assert!(String::from_utf8(body).unwrap().starts_with("no topic"));
    // A 503 keeps its Retry-After.
    let mut cfg = test_config();
    cfg.server.refusal = sse_bridge::config::RefusalMode::Status;
    cfg.limits.max_streams = 1;
    let app = start_app(cfg).await;
    let (_open, _) = subscribe_raw(&app, "lean.a").await;
    let mut r = Raw::send(app.addr, &get_events("topic=lean.a", "")).await;
    let head = r.head().await;
    assert_eq!(head.status(), 503, "{head:?}");
    assert!(head.get("retry-after").is_some(), "{head:?}");
    r.rest().await;
}

#[tokio::test]
async fn http10_streams_end_with_the_connection() {
    let app = start_app(test_config()).await;
    let mut r = Raw::send(app.addr, b"GET /events?topic=lean.ten HTTP/1.0\r\n\r\n").await;
    let head = r.head().await;
    assert_eq!(head.status(), 200, "{head:?}");
    assert_eq!(head.get("transfer-encoding"), None, "{head:?}");
    while !r.buf.starts_with(b": ok\n") || !r.buf.ends_with(b"\n\n") {
        assert!(r.fill().await);
    }
    r.buf.clear();
    let id = app.publish("lean.ten", None, "plain").await;
    let want = format!("id: {id}\ndata: plain\n\n");
    while r.buf.len() < want.len() {
        assert!(r.fill().await);
    }
    assert_eq!(r.text(), want);
}

#[tokio::test]
async fn everything_else_still_goes_to_hyper_on_the_same_port() {
    let app = start_app(test_config()).await;
    let (mut stream, _) = subscribe_raw(&app, "lean.x").await;
    // POST /publish (reqwest, keep-alive).
    let id = app.publish("lean.x", None, "via hyper").await;
    assert_eq!(String::from_utf8(stream.chunk().await.unwrap()).unwrap(), format!("id: {id}\ndata: via hyper\n\n"));
    // Two requests on one keep-alive connection: hyper answers both.
    let mut r =
        Raw::send(app.addr, b"GET /nope HTTP/1.1\r\nhost: b\r\n\r\nGET /nope HTTP/1.1\r\nhost: b\r\n\r\n").await;
    let h = r.head().await;
    assert_eq!(h.status(), 404, "{h:?}");
    let len: usize = h.get("content-length").unwrap().parse().unwrap();
    while r.buf.len() < len {
        assert!(r.fill().await);
    }
    r.buf.drain(..len);
    assert_eq!(r.head().await.status(), 404);
    // Other methods and near-miss paths.
    for (request, status) in [
        (&b"OPTIONS /events HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n"[..], 204),
        (b"HEAD /events?topic=a HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n", 405),
        (b"POST /events HTTP/1.1\r\nhost: b\r\ncontent-length: 0\r\nconnection: close\r\n\r\n", 405),
        (b"GET /events/x HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n", 404),
        (b"GET /eventsx HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n", 404),
        // Malformed heads get hyper's 400.
        (b"GET /events?topic=a HTTP/1.1\r\nbad header\r\n\r\n", 400),
        (b"GARBAGE\r\n\r\n", 400),
    ] {
        let mut r = Raw::send(app.addr, request).await;
        let h = r.head().await;
        assert_eq!(h.status(), status, "{}: {h:?}", String::from_utf8_lossy(request));
    }
    // A GET /events with a body is not for the lean path; hyper serves the stream.
    let mut r =
        Raw::send(app.addr, b"GET /events?topic=lean.x HTTP/1.1\r\nhost: b\r\ncontent-length: 2\r\n\r\nab").await;
    let h = r.head().await;
    assert_eq!((h.status(), h.get("transfer-encoding")), (200, Some("chunked")), "{h:?}");
    // The lean stream saw none of that.
    wait_until("two streams", async || app.state.registry.subscriber_count() == 2).await;
}

#[tokio::test]
async fn http2_prior_knowledge_still_works() {
    let app = start_app(test_config()).await;
    let client = test_client_h2();
    let mut s = connect_with(&client, &app.url("/events?topic=lean.h2"), &[]).await.expect("h2c stream opens");
    s.wait_for_comments(1, EVENT_TIMEOUT).await;
    let r = client.post(app.url("/publish?topic=lean.h2")).bearer_auth(TOKEN).body("two").send().await.unwrap();
    assert_eq!((r.version(), r.status().as_u16()), (reqwest::Version::HTTP_2, 200));
    let ev = s.next_event(EVENT_TIMEOUT).await.expect("stream open");
    assert_eq!(ev.data, "two");
}

#[tokio::test]
async fn a_client_that_closes_releases_its_subscription() {
    let app = start_app(test_config()).await;
    let (r, _) = subscribe_raw(&app, "lean.bye").await;
    assert_eq!(app.state.registry.subscriber_count(), 1);
    assert_eq!(app.state.limits.open_streams(), 1);
    drop(r);
    wait_until("subscription released", async || app.state.registry.subscriber_count() == 0).await;
    wait_until("stream slot released", async || app.state.limits.open_streams() == 0).await;
    wait_until("connection gauge back to 0", async || app.state.metrics.open_connections.get() == 0).await;
    let m = common::admin_metrics(&app).await;
    assert_eq!(common::sample(&m, "sse_bridge_open_streams"), Some(0.0), "{m}");
}

#[tokio::test]
async fn shutdown_ends_a_lean_stream_with_its_last_chunk() {
    let app = start_app(test_config()).await;
    let (mut r, _) = subscribe_raw(&app, "lean.end").await;
    let stop = tokio::spawn(app.stop());
    // A paced drain ends each stream with its own jittered `retry:` hint, then the last chunk.
    let hint = r.chunk().await.expect("the drain's retry: hint before the last chunk");
    let hint = String::from_utf8(hint).unwrap();
    assert!(hint.starts_with("retry: ") && hint.ends_with("\n\n"), "{hint:?}");
    assert_eq!(r.chunk().await, None, "the last chunk: {:?}", r.text());
    assert!(r.rest().await.is_empty(), "nothing after the last chunk, then the connection closes");
    assert_eq!(stop.await.unwrap(), RunOutcome::Drained);
}
