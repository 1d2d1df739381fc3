//! Slow consumers and per-connection delivery, over real connections: the `drop-oldest` and
//! `latest` policies (with the gap signal), one stalled reader among a hundred healthy ones,
//! the socket write timeout (and that a quiet stream never trips it), the maximum stream age
//! with a gapless resume, and the per-connection delivery rate.
//!
//! A stalled client is a raw TCP socket with a 4 KiB receive buffer that stops reading after
//! the opening comment; when a test finally reads it, the HTTP/1.1 chunked body is decoded and
//! parsed with the same [`SseParser`] as the real client.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Notify;

use common::chunked::Dechunker;
use common::events::{GAP_EVENT, gap_data};
use common::sse_client::{SseEvent, SseParser, SseStream};
use common::{EVENT_TIMEOUT, TestApp, admin_metrics, sample, start_app, test_config, wait_until};
use sse_bridge::Config;
use sse_bridge::config::{DeliveryRule, SlowConsumerPolicy};
use sse_bridge::metrics::ReasonLabel;

// ---------------------------------------------------------------------------------------------
// Helpers.

/// A counter sample that may be absent (never incremented) as a number.
fn counter(metrics: &str, series: &str) -> f64 {
    sample(metrics, series).unwrap_or(0.0)
}

fn drops(app: &TestApp, reason: &'static str) -> u64 {
    app.state.metrics.drops.get_or_create(&ReasonLabel { reason }).get()
}

fn disconnects(app: &TestApp, reason: &'static str) -> u64 {
    app.state.metrics.disconnects.get_or_create(&ReasonLabel { reason }).get()
}

fn rule(topics: &str, policy: Option<SlowConsumerPolicy>, max_rate: Option<u32>, burst: Option<u32>) -> DeliveryRule {
    DeliveryRule { topics: topics.into(), slow_consumer: policy, max_rate, burst }
}

fn config(queue_capacity: usize, rules: Vec<DeliveryRule>) -> Config {
    let mut c = test_config();
    c.server.queue_capacity = queue_capacity;
    c.delivery = rules;
    c
}

/// An SSE stream on a raw socket: the test decides when (and whether) it reads.
struct RawSse {
    sock: TcpStream,
    head: Option<String>,
    pre_body: Vec<u8>,
    body: Dechunker,
    parser: SseParser,
    events: Vec<SseEvent>,
    bytes_read: usize,
}

impl RawSse {
    /// Opens `GET /events?{query}` with a small receive buffer (set before connect, so the
    /// advertised window is small from the start) and reads until the opening comment, so the
    /// subscription is registered. After that, nothing is read until the test says so.
    async fn open(addr: SocketAddr, query: &str, rcvbuf: u32) -> RawSse {
        let sock = TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(rcvbuf).unwrap();
        let mut sock = sock.connect(addr).await.expect("connect");
        let req = format!("GET /events?{query} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
        sock.write_all(req.as_bytes()).await.unwrap();
        let mut s = RawSse {
            sock,
            head: None,
            pre_body: Vec::new(),
            body: Dechunker::default(),
            parser: SseParser::new(),
            events: Vec::new(),
            bytes_read: 0,
        };
        tokio::time::timeout(EVENT_TIMEOUT, async {
            while s.parser.comments().is_empty() {
                assert!(s.read_some().await.is_none(), "server closed before the opening comment");
            }
        })
        .await
        .expect("opening comment within timeout");
        let head = s.head.as_deref().unwrap();
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert!(head.to_lowercase().contains("transfer-encoding: chunked"), "{head}");
        s
    }

    /// Reads once; returns how the socket ended if it did ("eof" or the error).
    async fn read_some(&mut self) -> Option<String> {
        let mut buf = vec![0u8; 256 * 1024];
        match self.sock.read(&mut buf).await {
            Ok(0) => Some("eof".into()),
            Ok(n) => {
                self.bytes_read += n;
                self.feed(&buf[..n]);
                None
            }
            Err(e) => Some(format!("error: {e}")),
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        let payload = if self.head.is_none() {
            self.pre_body.extend_from_slice(bytes);
            let Some(end) = self.pre_body.windows(4).position(|w| w == b"\r\n\r\n") else { return };
            self.head = Some(String::from_utf8_lossy(&self.pre_body[..end]).into_owned());
            let rest = self.pre_body.split_off(end + 4);
            self.body.feed(&rest)
        } else {
            self.body.feed(bytes)
        };
        let evs = self.parser.feed(&payload);
        self.events.extend(evs);
    }

    /// Reads until an event with id `id` has arrived; panics if the socket ends first.
    async fn read_until_id(&mut self, id: &str) {
        tokio::time::timeout(EVENT_TIMEOUT, async {
            while !self.events.iter().any(|e| e.id.as_deref() == Some(id)) {
                if let Some(end) = self.read_some().await {
                    panic!("raw stream ended ({end}) before event {id}; got {} events", self.events.len());
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("event {id} did not arrive within {EVENT_TIMEOUT:?}"));
    }

    /// Reads what the kernel still holds, then the end; returns how it ended.
    async fn read_to_end(&mut self) -> String {
        tokio::time::timeout(EVENT_TIMEOUT, async {
            loop {
                if let Some(end) = self.read_some().await {
                    return end;
                }
            }
        })
        .await
        .expect("socket reaches EOF or reset within timeout")
    }
}

/// Checks a stream's events against what was published, accounting for every event: each one
/// is either received (ids strictly increasing, data intact) or counted by the `dropped` gap
/// event that immediately precedes the next received event. Returns the gaps' dropped counts.
fn check_dropped_accounting(got: &[SseEvent], published: &[(String, String)], topics: &[&str]) -> Vec<u64> {
    let index: HashMap<&str, usize> = published.iter().enumerate().map(|(i, (id, _))| (id.as_str(), i)).collect();
    let mut next = 0;
    let mut pending_gap: Option<u64> = None;
    let mut gaps = Vec::new();
    for (k, e) in got.iter().enumerate() {
        if e.event.as_deref() == Some(GAP_EVENT) {
            let v = gap_data(e);
            assert_eq!(v["reason"], "dropped", "gap {k}: {v}");
            assert_eq!(v["topics"], serde_json::json!(topics), "gap {k}: {v}");
            let n = v["dropped"].as_u64().expect("dropped count");
            assert!(n > 0, "gap {k} reports nothing dropped: {v}");
            assert!(pending_gap.is_none(), "two gap events in a row at {k}");
            pending_gap = Some(n);
            gaps.push(n);
            continue;
        }
        let id = e.id.as_deref().unwrap_or_else(|| panic!("event {k} has no id: {e:?}"));
        let i = *index.get(id).unwrap_or_else(|| panic!("event {k} has an id that was not published: {id}"));
        assert!(i >= next, "event {k} ({id}) goes backwards or repeats");
        assert!(e.data == published[i].1, "event {k} ({id}) has the wrong data");
        assert_eq!(
            (i - next) as u64,
            pending_gap.unwrap_or(0),
            "event {k} ({id}): the events skipped before it must be exactly those the gap reported"
        );
        pending_gap = None;
        next = i + 1;
    }
    assert!(pending_gap.is_none(), "a gap event with no event after it");
    assert_eq!(next, published.len(), "the newest event arrives last");
    gaps
}

// ---------------------------------------------------------------------------------------------
// 1. drop-oldest.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_keeps_a_stalled_client_connected_and_signals_the_gap() {
    const PAYLOAD: usize = 64 * 1024;
    const MAX_EVENTS: usize = 2000;
    const AFTER: usize = 12;
    let app = start_app(config(8, vec![rule(">", Some(SlowConsumerPolicy::DropOldest), None, None)])).await;

    let mut healthy = app.subscribe(&["t"]).await;
    let mut stalled = RawSse::open(app.addr, "topic=t", 4096).await;
    assert_eq!(app.state.registry.subscriber_count(), 2);

    let filler = "x".repeat(PAYLOAD);
    let mut published: Vec<(String, String)> = Vec::new();
    // Lock-step with the healthy client, so its queue never holds more than one event and only
    // the stalled client's queue can overflow.
    let publish_one = async |published: &mut Vec<(String, String)>, healthy: &mut SseStream| {
        let i = published.len();
        let body = format!("{i}:{filler}");
        let id = app.publish("t", None, body.clone()).await;
        let ev = healthy.next_event(EVENT_TIMEOUT).await.unwrap_or_else(|| panic!("healthy stream ended at {i}"));
        assert_eq!(ev.id.as_deref(), Some(id.as_str()), "healthy event {i}");
        assert!(ev.data == body, "healthy event {i} has the wrong data");
        published.push((id, body));
    };
    while drops(&app, "drop_oldest") == 0 {
        assert!(published.len() < MAX_EVENTS, "no drop after {MAX_EVENTS} events of {PAYLOAD} bytes");
        publish_one(&mut published, &mut healthy).await;
    }
    let first_drop_at = published.len();
    for _ in 0..AFTER {
        publish_one(&mut published, &mut healthy).await;
    }
    assert_eq!(app.state.registry.subscriber_count(), 2, "drop-oldest never disconnects");

    let metrics = admin_metrics(&app).await;
    let dropped_metric = counter(&metrics, "sse_bridge_dropped_events_total{reason=\"drop_oldest\"}");
    assert!(dropped_metric > 0.0, "{metrics}");
    assert_eq!(counter(&metrics, "sse_bridge_disconnects_total{reason=\"slow_consumer\"}"), 0.0, "{metrics}");
    assert_eq!(sample(&metrics, "sse_bridge_open_streams"), Some(2.0), "{metrics}");

    // Now the stalled client reads everything.
    let last = published.last().unwrap().0.clone();
    stalled.read_until_id(&last).await;
    let gaps = check_dropped_accounting(&stalled.events, &published, &["t"]);
    assert!(!gaps.is_empty(), "the stalled client was told about the drop");
    let lost: u64 = gaps.iter().sum();
    assert_eq!(lost as f64, dropped_metric, "every dropped event is counted once, and only the stalled client dropped");
    let received = stalled.events.iter().filter(|e| e.id.is_some()).count();
    assert_eq!(received as u64 + lost, published.len() as u64);
    // After the (last) gap come the newest events, in order, at least a full queue of them.
    let tail = stalled.events.iter().rev().take_while(|e| e.event.as_deref() != Some(GAP_EVENT)).count();
    assert!(tail >= 8, "after the gap: {tail} events");

    // It caught up and stays subscribed: the next event arrives live, with no gap.
    let (id, body) = (app.publish("t", None, "live").await, "live".to_string());
    published.push((id.clone(), body));
    stalled.read_until_id(&id).await;
    assert_eq!(stalled.events.last().unwrap().data, "live");
    assert_eq!(stalled.events.iter().filter(|e| e.event.as_deref() == Some(GAP_EVENT)).count(), gaps.len());
    assert_eq!(healthy.next_event(EVENT_TIMEOUT).await.unwrap().data, "live");
    eprintln!(
        "drop-oldest: first drop after {first_drop_at} events of {PAYLOAD} bytes; {} published, stalled \
         client received {received}, gaps {gaps:?}",
        published.len()
    );
}

// ---------------------------------------------------------------------------------------------
// 2. latest.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_conflates_per_topic_and_keeps_the_newest_value() {
    const PAYLOAD: usize = 64 * 1024;
    const MAX_EVENTS: usize = 2000;
    const AFTER: usize = 12;
    let app = start_app(config(8, vec![rule("ticker.>", Some(SlowConsumerPolicy::Latest), None, None)])).await;
    let mut stalled = RawSse::open(app.addr, "topic=ticker.a&topic=ticker.b", 4096).await;

    let filler = "x".repeat(PAYLOAD);
    let mut published: Vec<(String, String)> = Vec::new();
    let mut topic_of: HashMap<String, &str> = HashMap::new();
    let mut publish_one = async |published: &mut Vec<(String, String)>| {
        let i = published.len();
        let topic = if i.is_multiple_of(2) { "ticker.a" } else { "ticker.b" };
        let body = format!("{topic}={i}:{filler}");
        let id = app.publish(topic, None, body.clone()).await;
        topic_of.insert(id.clone(), topic);
        published.push((id, body));
    };
    while drops(&app, "conflated") == 0 {
        assert!(published.len() < MAX_EVENTS, "no conflation after {MAX_EVENTS} events of {PAYLOAD} bytes");
        publish_one(&mut published).await;
    }
    for _ in 0..AFTER {
        publish_one(&mut published).await;
    }
    assert_eq!(app.state.registry.subscriber_count(), 1, "latest never disconnects");

    let metrics = admin_metrics(&app).await;
    let conflated = counter(&metrics, "sse_bridge_dropped_events_total{reason=\"conflated\"}");
    assert!(conflated > 0.0, "{metrics}");
    assert_eq!(
        counter(&metrics, "sse_bridge_dropped_events_total{reason=\"drop_oldest\"}"),
        0.0,
        "with a same-topic event always queued, nothing is dropped without replacement: {metrics}"
    );

    stalled.read_until_id(&published.last().unwrap().0).await;
    let got = &stalled.events;
    assert!(got.iter().all(|e| e.event.as_deref() != Some(GAP_EVENT)), "conflation sends no gap event");
    let index: HashMap<&str, usize> = published.iter().enumerate().map(|(i, (id, _))| (id.as_str(), i)).collect();
    let mut prev = None;
    let mut last_of: HashMap<&str, usize> = HashMap::new();
    for (k, e) in got.iter().enumerate() {
        let id = e.id.as_deref().unwrap_or_else(|| panic!("event {k} without id"));
        let i = index[id];
        assert!(prev.is_none_or(|p| i > p), "ids strictly increase (event {k})");
        assert!(e.data == published[i].1, "event {k} has the wrong data");
        last_of.insert(topic_of[id], i);
        prev = Some(i);
    }
    for topic in ["ticker.a", "ticker.b"] {
        let newest = published.iter().rposition(|(id, _)| topic_of[id] == topic).unwrap();
        assert_eq!(last_of.get(topic), Some(&newest), "the last {topic} event received is the last one published");
    }
    assert_eq!(
        (published.len() - got.len()) as f64,
        conflated,
        "every event not received was replaced by a newer one of its topic"
    );
    eprintln!("latest: {} published, {} received, {conflated} conflated", published.len(), got.len());
}

// ---------------------------------------------------------------------------------------------
// 3. A hundred readers and one stalled reader.

/// The stalled reader listens to `t` like the others, plus a `bulk` topic that only it
/// receives: large `bulk` events fill its socket and hyper's buffer first (a loopback socket
/// absorbs megabytes), so the `t` events that then overflow its queue can stay small and a
/// hundred readers parse them quickly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_healthy_readers_get_everything_while_a_stalled_one_is_disconnected() {
    const READERS: usize = 100;
    const BULK_PAYLOAD: usize = 64 * 1024;
    const MAX_BULK: usize = 1000;
    const PAYLOAD: usize = 4 * 1024;
    const EVENTS: usize = 200;
    /// Events the publisher may be ahead of the slowest healthy reader: well under the queue
    /// capacity, so no healthy reader can overflow whatever the scheduling.
    const WINDOW: usize = 4;
    let started = Instant::now();
    let app = start_app(config(16, Vec::new())).await;

    let received: Arc<Vec<AtomicUsize>> = Arc::new((0..READERS).map(|_| AtomicUsize::new(0)).collect());
    let progress = Arc::new(Notify::new());
    let mut readers = tokio::task::JoinSet::new();
    for r in 0..READERS {
        let mut s = app.subscribe(&["t"]).await;
        let (received, progress) = (received.clone(), progress.clone());
        readers.spawn(async move {
            let mut ids = Vec::new();
            loop {
                let ev = s.next_event(EVENT_TIMEOUT).await.unwrap_or_else(|| {
                    panic!("healthy reader {r} ended after {} events (error: {:?})", ids.len(), s.error())
                });
                if ev.data == "end" {
                    // The stream goes back with the ids, so it stays open for the checks below.
                    return (r, ids, s);
                }
                let i = ids.len();
                let (n, rest) = ev.data.split_once(':').expect("numbered event");
                assert_eq!(n.parse::<usize>().unwrap(), i, "reader {r}: event {i} out of order");
                assert_eq!(rest.len(), PAYLOAD, "reader {r}: event {i} truncated");
                ids.push(ev.id.expect("id"));
                received[r].store(ids.len(), Ordering::Release);
                progress.notify_waiters();
            }
        });
    }
    let mut stalled = RawSse::open(app.addr, "topic=t&topic=bulk", 4096).await;
    assert_eq!(app.state.registry.subscriber_count(), READERS + 1);
    let opened = started.elapsed();

    // Every event the stalled reader was sent, in order.
    let mut stalled_published = Vec::new();
    let bulk = "b".repeat(BULK_PAYLOAD);
    // Until its queue holds a few events, i.e. hyper stopped taking frames because the socket
    // refuses writes (no other queue holds anything: nobody else listens to `bulk`).
    while app.state.registry.queued_frames() < 4 {
        assert!(stalled_published.len() < MAX_BULK, "stalled socket still writable after {MAX_BULK} bulk events");
        stalled_published.push(app.publish("bulk", None, bulk.clone()).await);
    }
    let bulk_events = stalled_published.len();

    let min_received = || received.iter().map(|c| c.load(Ordering::Acquire)).min().unwrap();
    let filler = "y".repeat(PAYLOAD);
    let mut published = Vec::new();
    let mut stalled_cut_at = None;
    for i in 0..EVENTS {
        // Wait (on the readers' progress signal) until every healthy reader is within WINDOW.
        tokio::time::timeout(EVENT_TIMEOUT, async {
            loop {
                let notified = progress.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if min_received() + WINDOW >= i {
                    return;
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("healthy readers stuck at {} events before event {i}", min_received()));
        let id = app.publish("t", None, format!("{i}:{filler}")).await;
        published.push(id.clone());
        if stalled_cut_at.is_none() {
            stalled_published.push(id);
            if app.state.registry.subscriber_count() == READERS {
                stalled_cut_at = Some(published.len());
            }
        }
    }
    let stalled_cut_at = stalled_cut_at.expect("the stalled reader was disconnected");
    app.publish("t", None, "end").await;
    let mut streams = Vec::new();
    while let Some(r) = readers.join_next().await {
        let (r, ids, s) = r.expect("reader task");
        assert!(ids == published, "reader {r} got {} events, not exactly the {} published", ids.len(), published.len());
        streams.push(s);
    }
    assert_eq!(app.state.registry.subscriber_count(), READERS, "every healthy reader is still connected");

    let metrics = admin_metrics(&app).await;
    assert_eq!(sample(&metrics, "sse_bridge_disconnects_total{reason=\"slow_consumer\"}"), Some(1.0), "{metrics}");
    assert_eq!(sample(&metrics, "sse_bridge_open_streams"), Some(READERS as f64), "{metrics}");
    // The stalled socket gets what the kernel held, then the end: a gapless prefix of what it
    // was sent, never a silent skip.
    let end = stalled.read_to_end().await;
    assert!(end == "eof" || end.contains("reset"), "stalled socket ended with {end}");
    let got: Vec<&str> = stalled.events.iter().map(|e| e.id.as_deref().expect("id")).collect();
    assert!(
        got.len() < stalled_published.len() && got[..] == stalled_published[..got.len()],
        "the stalled reader got a prefix"
    );
    drop(streams);
    eprintln!(
        "{READERS} readers + 1 stalled: streams open after {opened:?}; {bulk_events} bulk events of {BULK_PAYLOAD} \
         bytes, then the stalled reader was cut at `t` event {stalled_cut_at} of {EVENTS} ({PAYLOAD} bytes); it had \
         read {} events; total {:?}",
        got.len(),
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Write timeout.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_write_is_cut_after_write_timeout_but_a_quiet_stream_lives_on() {
    const PAYLOAD: usize = 64 * 1024;
    const MAX_EVENTS: usize = 2000;
    const QUIET_FOR: Duration = Duration::from_millis(3200);
    let mut cfg = config(8, vec![rule(">", Some(SlowConsumerPolicy::DropOldest), None, None)]);
    cfg.server.write_timeout = Duration::from_secs(1);
    cfg.server.heartbeat_interval = Duration::from_millis(200);
    let app = start_app(cfg).await;

    let mut quiet = app.subscribe(&["quiet"]).await;
    let quiet_since = Instant::now();
    let mut stalled = RawSse::open(app.addr, "topic=t", 4096).await;
    assert_eq!(app.state.registry.subscriber_count(), 2);

    // Fill the stalled client's socket, hyper's buffer and its queue: once its queue drops
    // events, hyper has stopped taking frames because the socket refuses writes.
    let filler = "z".repeat(PAYLOAD);
    let first_publish = Instant::now();
    let mut n = 0;
    while drops(&app, "drop_oldest") == 0 && app.state.registry.subscriber_count() == 2 {
        assert!(n < MAX_EVENTS, "no blocked write after {MAX_EVENTS} events of {PAYLOAD} bytes");
        app.publish("t", None, format!("{n}:{filler}")).await;
        n += 1;
    }
    wait_until("the stalled connection is cut", async || app.state.registry.subscriber_count() == 1).await;
    let cut_after = first_publish.elapsed();
    // Writes cannot have been blocked before the first event was published.
    assert!(cut_after >= Duration::from_millis(900), "cut {cut_after:?} after the first write: before the timeout");
    assert_eq!(disconnects(&app, "write_timeout"), 1);

    let end = stalled.read_to_end().await;
    assert!(end == "eof" || end.contains("reset"), "stalled socket ended with {end}");
    assert!(!stalled.events.is_empty(), "the stalled client had received something before the cut");

    // The quiet stream: nothing to write but heartbeats, which the socket always takes.
    match quiet.next_event_or_end(QUIET_FOR.saturating_sub(quiet_since.elapsed())).await {
        Err(_) => {} // nothing but comments until QUIET_FOR after it opened
        Ok(Some(e)) => panic!("quiet stream got an event: {e:?}"),
        Ok(None) => panic!("quiet stream ended after {:?} (error: {:?})", quiet_since.elapsed(), quiet.error()),
    }
    let heartbeats = quiet.comments_seen() - 1;
    assert!(heartbeats >= 10, "{heartbeats} heartbeats in {QUIET_FOR:?} at a 200ms interval");
    assert!(!quiet.is_ended());
    assert_eq!(app.state.registry.subscriber_count(), 1);

    let metrics = admin_metrics(&app).await;
    assert_eq!(sample(&metrics, "sse_bridge_disconnects_total{reason=\"write_timeout\"}"), Some(1.0), "{metrics}");
    assert_eq!(counter(&metrics, "sse_bridge_disconnects_total{reason=\"slow_consumer\"}"), 0.0, "{metrics}");
    eprintln!(
        "write timeout: {n} events published; stalled connection cut {cut_after:?} after the first; quiet stream \
         saw {heartbeats} heartbeats in {:?}",
        quiet_since.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Maximum stream age.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_ends_cleanly_at_max_age_and_resumes_without_a_gap() {
    let mut cfg = test_config();
    cfg.server.max_stream_age = Duration::from_secs(1);
    // Housekeeping ticks every min(heartbeat_interval, 1s).
    cfg.server.heartbeat_interval = Duration::from_millis(200);
    let app = start_app(cfg).await;

    let mut s = app.subscribe(&["t"]).await;
    // Measured from after the stream opened: a lower bound of its real age.
    let opened = Instant::now();
    let mut last_id = None;
    for i in 0..3 {
        let id = app.publish("t", None, format!("before {i}")).await;
        let e = s.next_event(EVENT_TIMEOUT).await.expect("stream open");
        assert_eq!((e.id.as_deref(), e.data.as_str()), (Some(id.as_str()), format!("before {i}").as_str()));
        last_id = Some(id);
    }
    let end = s.next_event(EVENT_TIMEOUT).await;
    let age = opened.elapsed();
    assert_eq!(end, None, "no more events, then the end");
    assert_eq!(s.error(), None, "the stream ends cleanly (complete chunked body), not by a reset");
    assert!(age >= Duration::from_millis(800), "stream ended after {age:?}, before max_stream_age (1s ±10%)");
    assert!(age < Duration::from_secs(5), "stream ended only after {age:?}");
    wait_until("max_age disconnect counted", async || disconnects(&app, "max_age") == 1).await;

    // Events published while the client is away are replayed on resume, with no gap event.
    let mut missed = Vec::new();
    for i in 0..3 {
        missed.push(app.publish("t", None, format!("meanwhile {i}")).await);
    }
    let last_id = last_id.unwrap();
    let mut r = app.subscribe_with(&["t"], &[("last-event-id", &last_id)]).await;
    for (i, id) in missed.iter().enumerate() {
        let e = r.next_event(EVENT_TIMEOUT).await.expect("resumed stream open");
        assert_ne!(e.event.as_deref(), Some(GAP_EVENT), "resume after max age is complete: {e:?}");
        assert_eq!((e.id.as_deref(), e.data.as_str()), (Some(id.as_str()), format!("meanwhile {i}").as_str()));
    }
    let live = app.publish("t", None, "live").await;
    let e = r.next_event(EVENT_TIMEOUT).await.expect("resumed stream open");
    assert_eq!((e.id.as_deref(), e.data.as_str()), (Some(live.as_str()), "live"));

    let metrics = admin_metrics(&app).await;
    assert_eq!(sample(&metrics, "sse_bridge_disconnects_total{reason=\"max_age\"}"), Some(1.0), "{metrics}");
    assert!(!metrics.contains("sse_bridge_gap_events_total{"), "no gap event was sent: {metrics}");
    assert_eq!(sample(&metrics, "sse_bridge_replayed_events_total"), Some(3.0), "{metrics}");
    eprintln!("max age: first stream ended after {age:?}");
}

// ---------------------------------------------------------------------------------------------
// 6. Per-connection delivery rate.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_rate_throttles_one_connection_and_not_the_others() {
    const N: usize = 30;
    const RATE: u32 = 5;
    let app =
        start_app(config(4, vec![rule("slow.>", Some(SlowConsumerPolicy::DropOldest), Some(RATE), Some(1))])).await;
    let mut slow = app.subscribe(&["slow.x"]).await;
    let mut fast = app.subscribe(&["fast.x"]).await;

    let slow_reader = tokio::spawn(async move {
        let mut got = Vec::new();
        loop {
            let e = slow.next_event(EVENT_TIMEOUT).await.expect("slow stream open");
            let done = e.data == format!("slow-{}", N - 1);
            got.push((Instant::now(), e));
            if done {
                return got;
            }
        }
    });
    let fast_reader = tokio::spawn(async move {
        let mut got = Vec::new();
        for _ in 0..N {
            let e = fast.next_event(EVENT_TIMEOUT).await.expect("fast stream open");
            got.push((Instant::now(), e));
        }
        got
    });

    let publish_started = Instant::now();
    let mut slow_published = Vec::new();
    let mut fast_published = Vec::new();
    for i in 0..N {
        let body = format!("slow-{i}");
        slow_published.push((app.publish("slow.x", None, body.clone()).await, body));
        let body = format!("fast-{i}");
        fast_published.push((app.publish("fast.x", None, body.clone()).await, body));
    }
    let publish_took = publish_started.elapsed();
    let publish_done = Instant::now();

    // The unrestricted client gets every event, promptly.
    let fast_got = fast_reader.await.unwrap();
    for (k, ((_, e), (id, body))) in fast_got.iter().zip(&fast_published).enumerate() {
        assert_eq!((e.id.as_deref(), &e.data), (Some(id.as_str()), body), "fast event {k}");
    }
    let fast_lag = fast_got.last().unwrap().0.saturating_duration_since(publish_done);
    assert!(fast_lag < Duration::from_secs(5), "the unrestricted client got its last event {fast_lag:?} late");

    // The throttled client: its queue overflowed, it got a gap and the newest events.
    let slow_got = slow_reader.await.unwrap();
    let events: Vec<SseEvent> = slow_got.iter().map(|(_, e)| e.clone()).collect();
    let gaps = check_dropped_accounting(&events, &slow_published, &["slow.x"]);
    assert!(!gaps.is_empty(), "the throttled client got a dropped gap");
    let received: Vec<Instant> = slow_got.iter().filter(|(_, e)| e.id.is_some()).map(|(t, _)| *t).collect();
    assert!(received.len() < N, "throttled client received all {N} events");
    let spread = received.last().unwrap().duration_since(received[0]);
    let min_spread = Duration::from_secs_f64((received.len() - 1) as f64 / RATE as f64 * 0.8);
    assert!(
        spread >= min_spread,
        "{} events after the first arrived within {spread:?}: faster than {RATE}/s",
        received.len() - 1
    );
    assert_eq!(drops(&app, "drop_oldest"), gaps.iter().sum::<u64>());
    eprintln!(
        "rate: published {N}+{N} in {publish_took:?}; throttled client received {} events over {spread:?} with gaps \
         {gaps:?}; unrestricted client's last event {fast_lag:?} after the last publish",
        received.len()
    );
}
