//! Broker outages: the bridge keeps its SSE streams open and serving while NATS or Redis is
//! killed (SIGKILL, no goodbye), reconnects when the broker returns on the same port, and the
//! already-open streams carry the broker's messages again, in order, with increasing ids.
//! Also: the bridge starts and serves with both brokers down and picks them up later.
//!
//! Real brokers (private `nats-server` / `redis-server` per test), real HTTP over TCP. Nothing
//! waits a fixed time: every step waits for a signal (an event or heartbeat arrived, a source
//! status changed).

mod common;

use std::future::Future;
use std::time::Duration;

use common::brokers::{self, NatsServer, RedisServer};
use common::events::{GAP_EVENT, event_id, gap_data};
use common::sse_client::{SseEvent, SseStream, test_client};
use common::{EVENT_TIMEOUT, TestApp, nats_config, redis_config, start_app, test_config, wait_until};
use sse_bridge::config::InterestMode;
use sse_bridge::event::EventId;

/// Numbered events published after the broker came back.
const N: usize = 50;
/// Time between probe publishes while waiting for a (re)subscription to become live.
const PROBE_EVERY: Duration = Duration::from_millis(200);
/// Overall budget for a probe to get through.
const PROBE_DEADLINE: Duration = Duration::from_secs(20);

/// Whether `ev` is a probe (possibly a late duplicate from an earlier sync).
fn is_probe(ev: &SseEvent) -> bool {
    ev.data.ends_with("probe")
}

/// Publishes `want` with `publish` every 200 ms until an event with data `want` arrives on
/// `stream`; proves the broker → bridge path is live end to end. Late duplicates of earlier
/// probes are skipped; anything else is a failure. Returns the probe event.
async fn await_probe<F, Fut>(stream: &mut SseStream, want: &str, mut publish: F) -> SseEvent
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let deadline = tokio::time::Instant::now() + PROBE_DEADLINE;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "no {want:?} arrived within {PROBE_DEADLINE:?}");
        publish().await;
        // Read until this round's wait is over; several stale probes may be queued.
        let round_end = tokio::time::Instant::now() + PROBE_EVERY;
        loop {
            let left = round_end.saturating_duration_since(tokio::time::Instant::now());
            match stream.next_event_or_end(left).await {
                Ok(Some(ev)) if ev.data == want => return ev,
                Ok(Some(ev)) if is_probe(&ev) => continue,
                Ok(Some(ev)) => panic!("unexpected event while waiting for {want:?}: {ev:?}"),
                Ok(None) => panic!("stream ended while waiting for {want:?} (error: {:?})", stream.error()),
                Err(_) => break,
            }
        }
    }
}

/// Reads `n` events `"{prefix}-0"` … `"{prefix}-{n-1}"` from `stream`, skipping late probes
/// before the first one, and checks order and ids: same run as `after`, strictly increasing
/// sequence, nothing else in between.
async fn expect_numbered(stream: &mut SseStream, prefix: &str, n: usize, after: EventId) {
    let mut last = after;
    let mut got = 0;
    while got < n {
        let ev = stream
            .next_event(EVENT_TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("stream ended after {got} of {n} numbered events (error: {:?})", stream.error()));
        let id = event_id(&ev);
        assert_eq!(id.run, last.run, "event from another run: {ev:?}");
        assert!(id.seq > last.seq, "ids not strictly increasing: {last} then {id}");
        last = id;
        if got == 0 && is_probe(&ev) {
            continue;
        }
        assert_eq!(ev.data, format!("{prefix}-{got}"), "event {got} of {n} is wrong or out of order");
        got += 1;
    }
}

async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let r = test_client().get(url).send().await.expect("GET");
    let status = r.status().as_u16();
    (status, r.json().await.expect("JSON body"))
}

/// While a broker is down: the open stream keeps getting heartbeats, `/publish` still reaches
/// it, and `/readyz` stays 200 while naming the broker disconnected.
async fn assert_serving_during_outage(app: &TestApp, stream: &mut SseStream, topic: &str, source: &str) -> EventId {
    let seen = stream.comments_seen();
    stream.wait_for_comments(seen + 2, EVENT_TIMEOUT).await;
    assert!(!stream.is_ended(), "stream ended during the outage");

    let id = app.publish(topic, None, "during-outage").await;
    let ev = loop {
        let ev = stream.next_event(EVENT_TIMEOUT).await.expect("stream open during the outage");
        if !is_probe(&ev) {
            break ev;
        }
    };
    assert_eq!(ev.data, "during-outage");
    assert_eq!(ev.id.as_deref(), Some(id.as_str()));

    let (status, body) = get_json(&app.admin_url("/readyz")).await;
    assert_eq!(status, 200, "/readyz during a broker outage: {body}");
    assert_eq!(body["sources"][source], "disconnected", "{body}");
    event_id(&ev)
}

/// The next event on `stream` is the `source-outage` gap of `source`, naming `topics`.
async fn expect_outage_gap(stream: &mut SseStream, source: &str, topics: &[&str]) {
    let ev = loop {
        let ev = stream.next_event(EVENT_TIMEOUT).await.expect("stream open after the broker came back");
        if !is_probe(&ev) {
            break ev; // late duplicates of probes sent before the outage are skipped
        }
    };
    let gap = gap_data(&ev);
    assert_eq!(gap["reason"], "source-outage", "{gap}");
    assert_eq!(gap["source"], source, "{gap}");
    assert_eq!(gap["topics"], serde_json::json!(topics), "{gap}");
}

fn outage_config() -> sse_bridge::Config {
    let mut cfg = test_config();
    // Heartbeats are the "stream is alive" signal during the outage.
    cfg.server.heartbeat_interval = Duration::from_millis(100);
    cfg
}

#[tokio::test]
async fn nats_kill9_and_restart_resumes_on_the_open_stream() {
    let mut nats = NatsServer::start().await;
    let mut cfg = outage_config();
    cfg.nats = Some(nats_config(&nats.url(), &["t.>"]));
    let app = start_app(cfg).await;
    app.wait_sources_connected().await;
    let mut stream = app.subscribe(&["t.a"]).await;

    {
        let client = brokers::nats_client(&nats.url()).await;
        let before = await_probe(&mut stream, "nats-probe", || {
            let c = client.clone();
            async move {
                c.publish("t.a", "nats-probe".into()).await.unwrap();
                c.flush().await.unwrap();
            }
        })
        .await;
        event_id(&before);
        // The client goes before the crash so nothing it buffered can be replayed later.
    }

    nats.kill9();
    wait_until("NATS source reports disconnected", async || !app.state.sources[0].is_connected()).await;
    let during = assert_serving_during_outage(&app, &mut stream, "t.a", "nats").await;

    nats.restart().await;
    expect_outage_gap(&mut stream, "nats", &["t.a"]).await;
    let client = brokers::nats_client(&nats.url()).await;
    let probe = await_probe(&mut stream, "nats-probe", || {
        let c = client.clone();
        async move {
            c.publish("t.a", "nats-probe".into()).await.unwrap();
            c.flush().await.unwrap();
        }
    })
    .await;
    let probe_id = event_id(&probe);
    assert_eq!(probe_id.run, during.run);
    assert!(probe_id.seq > during.seq);
    assert!(app.state.sources[0].is_connected());
    assert_eq!(app.state.sources[0].reconnects(), 1);

    for i in 0..N {
        client.publish("t.a", format!("nats-{i}").into()).await.unwrap();
    }
    client.flush().await.unwrap();
    expect_numbered(&mut stream, "nats", N, probe_id).await;

    // The same HTTP stream carried everything: it never ended and was never replaced.
    assert!(!stream.is_ended(), "error: {:?}", stream.error());
    assert_eq!(app.state.metrics.streams_opened.get(), 1);
    assert_eq!(app.state.registry.subscriber_count(), 1);
}

#[tokio::test]
async fn redis_kill9_and_restart_resumes_on_the_open_stream() {
    let mut redis = RedisServer::start().await;
    let mut cfg = outage_config();
    cfg.redis = Some(redis_config(&redis.url(), &["t.a"], &[]));
    let app = start_app(cfg).await;
    app.wait_sources_connected().await;
    let mut stream = app.subscribe(&["t.a"]).await;

    {
        let conn = brokers::redis_conn(&redis.url()).await;
        await_probe(&mut stream, "redis-probe", || {
            let mut c = conn.clone();
            async move {
                brokers::redis_publish(&mut c, "t.a", "redis-probe").await;
            }
        })
        .await;
    }

    redis.kill9();
    wait_until("Redis source reports disconnected", async || !app.state.sources[0].is_connected()).await;
    let during = assert_serving_during_outage(&app, &mut stream, "t.a", "redis").await;

    // Redis pub/sub keeps nothing for absent subscribers: probes sent before the bridge has
    // re-subscribed are lost, so probe until one gets through.
    redis.restart().await;
    expect_outage_gap(&mut stream, "redis", &["t.a"]).await;
    let mut conn = brokers::redis_conn(&redis.url()).await;
    let probe = await_probe(&mut stream, "redis-probe", || {
        let mut c = conn.clone();
        async move {
            brokers::redis_publish(&mut c, "t.a", "redis-probe").await;
        }
    })
    .await;
    let probe_id = event_id(&probe);
    assert_eq!(probe_id.run, during.run);
    assert!(probe_id.seq > during.seq);
    assert!(app.state.sources[0].is_connected());
    assert_eq!(app.state.sources[0].reconnects(), 1);

    for i in 0..N {
        let receivers = brokers::redis_publish(&mut conn, "t.a", format!("redis-{i}")).await;
        assert_eq!(receivers, 1, "the bridge is the one subscriber of t.a");
    }
    expect_numbered(&mut stream, "redis", N, probe_id).await;

    assert!(!stream.is_ended(), "error: {:?}", stream.error());
    assert_eq!(app.state.metrics.streams_opened.get(), 1);
    assert_eq!(app.state.registry.subscriber_count(), 1);
}

#[tokio::test]
async fn starts_and_serves_with_brokers_down_then_picks_them_up() {
    // Ports that are certainly ours and certainly closed: start each fixture, then kill it.
    // `restart()` later brings the broker up on exactly that port.
    let mut nats = NatsServer::start().await;
    nats.kill9();
    let mut redis = RedisServer::start().await;
    redis.kill9();
    for port in [nats.port(), redis.port()] {
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err(),
            "port {port} should have no listener"
        );
    }

    let mut cfg = test_config();
    cfg.nats = Some(nats_config(&nats.url(), &["n.>"]));
    cfg.redis = Some(redis_config(&redis.url(), &[], &["r.*"]));
    let app = start_app(cfg).await;

    // Serves at once: /readyz, a stream, /publish — with both brokers unreachable.
    let (status, body) = get_json(&app.admin_url("/readyz")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ready"], true);
    assert_eq!(body["sources"]["nats"], "disconnected", "{body}");
    assert_eq!(body["sources"]["redis"], "disconnected", "{body}");

    let mut stream = app.subscribe(&["n.a", "r.a", "p.a"]).await;
    assert_eq!(stream.status(), 200);
    let id = app.publish("p.a", None, "via-publish").await;
    let ev = stream.next_event(EVENT_TIMEOUT).await.expect("stream open");
    assert_eq!(ev.data, "via-publish");
    assert_eq!(ev.id.as_deref(), Some(id.as_str()));
    assert!(app.state.sources.iter().all(|s| !s.is_connected()));

    // The brokers come up on the configured ports; the bridge finds them by itself.
    nats.restart().await;
    redis.restart().await;
    app.wait_sources_connected().await;

    let client = brokers::nats_client(&nats.url()).await;
    let n = await_probe(&mut stream, "nats-probe", || {
        let c = client.clone();
        async move {
            c.publish("n.a", "nats-probe".into()).await.unwrap();
            c.flush().await.unwrap();
        }
    })
    .await;
    let conn = brokers::redis_conn(&redis.url()).await;
    let r = await_probe(&mut stream, "redis-probe", || {
        let mut c = conn.clone();
        async move {
            brokers::redis_publish(&mut c, "r.a", "redis-probe").await;
        }
    })
    .await;
    let (first, n, r) = (event_id(&ev), event_id(&n), event_id(&r));
    assert!(first.seq < n.seq && n.seq < r.seq, "{first} {n} {r}");
    assert!(first.run == n.run && n.run == r.run);

    let (status, body) = get_json(&app.admin_url("/readyz")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sources"]["nats"], "connected", "{body}");
    assert_eq!(body["sources"]["redis"], "connected", "{body}");
    // First connections, not reconnections.
    assert!(app.state.sources.iter().all(|s| s.reconnects() == 0));
    assert!(!stream.is_ended());
}

// ---- Issue 16, item 8: an outage is told, live and to resumes across it ----------------------

/// The first event of a stream resumed after `last_id` that is not a probe.
async fn first_event_of_resume(app: &TestApp, topics: &[&str], last_id: &str) -> SseEvent {
    let mut s = app.resume(topics, last_id).await;
    loop {
        let ev = s.next_event(EVENT_TIMEOUT).await.expect("resumed stream open");
        if !is_probe(&ev) {
            return ev;
        }
    }
}

/// A stream on a core NATS topic is told of the outage (`source-outage`, naming its topic)
/// before the first event after NATS is back; a stream on a topic NATS does not serve is not;
/// a resume from an id before the outage gets the gap, one from after it does not.
#[tokio::test]
async fn nats_outage_gap_reaches_open_streams_and_resumes_across_it() {
    let mut nats = NatsServer::start().await;
    let mut cfg = outage_config();
    cfg.nats = Some(nats_config(&nats.url(), &["t.>"]));
    let app = start_app(cfg).await;
    app.wait_sources_connected().await;
    let mut served = app.subscribe(&["t.a", "t.*"]).await;
    let mut other = app.subscribe(&["u.a"]).await;

    let before = {
        let client = brokers::nats_client(&nats.url()).await;
        let probe = await_probe(&mut served, "nats-probe", || {
            let c = client.clone();
            async move {
                c.publish("t.a", "nats-probe".into()).await.unwrap();
                c.flush().await.unwrap();
            }
        })
        .await;
        probe.id.clone().expect("probe id")
    };

    nats.kill9();
    wait_until("NATS source reports disconnected", async || !app.state.sources[0].is_connected()).await;
    nats.restart().await;
    // Told at once, before any new message: a quiet topic learns too.
    expect_outage_gap(&mut served, "nats", &["t.*", "t.a"]).await;

    let client = brokers::nats_client(&nats.url()).await;
    let probe = await_probe(&mut served, "after-probe", || {
        let c = client.clone();
        async move {
            c.publish("t.a", "after-probe".into()).await.unwrap();
            c.flush().await.unwrap();
        }
    })
    .await;

    // A topic NATS does not serve: no gap, its next event is its own.
    app.publish("u.a", None, "other-after").await;
    let ev = other.next_event(EVENT_TIMEOUT).await.expect("other stream open");
    assert_eq!((ev.event.as_deref(), ev.data.as_str()), (None, "other-after"), "no gap for u.a: {ev:?}");

    // A resume across the outage is told too; from after it, or on another topic, it is not.
    let gap = gap_data(&first_event_of_resume(&app, &["t.a"], &before).await);
    assert_eq!((gap["reason"].as_str(), gap["topics"].clone()), (Some("source-outage"), serde_json::json!(["t.a"])));
    assert_eq!(gap["last_event_id"], before.as_str());
    let after = probe.id.clone().expect("probe id");
    app.publish("t.a", None, "tail").await;
    let ev = first_event_of_resume(&app, &["t.a"], &after).await;
    assert_eq!((ev.event.as_deref(), ev.data.as_str()), (None, "tail"), "{ev:?}");
    let ev = first_event_of_resume(&app, &["u.a"], &before).await;
    assert_eq!(ev.data, "other-after", "{ev:?}");

    let metrics = common::metrics::admin_metrics(&app).await;
    let told =
        common::metrics::sample(&metrics, "sse_bridge_source_gaps_total{source=\"nats\",reason=\"source-outage\"}");
    assert_eq!(told, Some(1.0), "one outage, told once");
}

/// The same for Redis pub/sub, a channel and a pattern: the stream on a channel and the stream
/// on a topic the pattern serves are told; a resume across the outage is told too.
#[tokio::test]
async fn redis_outage_gap_reaches_open_streams_and_resumes_across_it() {
    let mut redis = RedisServer::start().await;
    let mut cfg = outage_config();
    cfg.redis = Some(redis_config(&redis.url(), &["t.a"], &["r.*"]));
    let app = start_app(cfg).await;
    app.wait_sources_connected().await;
    let mut channel = app.subscribe(&["t.a"]).await;
    let mut pattern = app.subscribe(&["r.x"]).await;
    let mut other = app.subscribe(&["u.a"]).await;

    let before = {
        let conn = brokers::redis_conn(&redis.url()).await;
        let probe = await_probe(&mut channel, "redis-probe", || {
            let mut c = conn.clone();
            async move {
                brokers::redis_publish(&mut c, "t.a", "redis-probe").await;
            }
        })
        .await;
        probe.id.clone().expect("probe id")
    };

    redis.kill9();
    wait_until("Redis source reports disconnected", async || !app.state.sources[0].is_connected()).await;
    redis.restart().await;
    expect_outage_gap(&mut channel, "redis", &["t.a"]).await;
    expect_outage_gap(&mut pattern, "redis", &["r.x"]).await;

    let mut conn = brokers::redis_conn(&redis.url()).await;
    await_probe(&mut channel, "after-probe", || {
        let mut c = conn.clone();
        async move {
            brokers::redis_publish(&mut c, "t.a", "after-probe").await;
        }
    })
    .await;
    brokers::redis_publish(&mut conn, "r.x", "pattern-after").await;
    let ev = pattern.next_event(EVENT_TIMEOUT).await.expect("pattern stream open");
    assert_eq!(ev.data, "pattern-after");

    app.publish("u.a", None, "other-after").await;
    let ev = other.next_event(EVENT_TIMEOUT).await.expect("other stream open");
    assert_eq!((ev.event.as_deref(), ev.data.as_str()), (None, "other-after"), "no gap for u.a: {ev:?}");

    let gap = gap_data(&first_event_of_resume(&app, &["t.a", "r.*", "u.a"], &before).await);
    assert_eq!(gap["reason"], "source-outage", "{gap}");
    assert_eq!(gap["topics"], serde_json::json!(["r.*", "t.a"]), "the filters Redis serves: {gap}");
}

// ---- Issue 14, item 8: a client-side drop is told -------------------------------------------

/// Payload size of the flood.
const FLOOD_BYTES: usize = 16 * 1024;

/// Reads `stream` until it falls quiet for 2 s (the burst is over); returns the gaps and events
/// in arrival order.
async fn read_flood(stream: &mut SseStream) -> Vec<SseEvent> {
    let mut out = Vec::new();
    while let Ok(Some(ev)) = stream.next_event_or_end(Duration::from_secs(2)).await {
        out.push(ev);
    }
    out
}

/// Every numbered event that is missing lies behind a gap: between two received events `a`
/// and `b > a + 1` there is an `sse-bridge.gap` from the source (`source-dropped`, or
/// `source-outage` if the broker cut the bridge off as a slow consumer). Returns how many
/// were missing.
fn assert_every_skip_is_told(events: &[SseEvent], topic: &str) -> usize {
    let mut last: Option<usize> = None;
    let mut told = false;
    let mut missing = 0;
    for ev in events {
        if ev.event.as_deref() == Some(GAP_EVENT) {
            let gap = gap_data(ev);
            assert!(gap["reason"] == "source-dropped" || gap["reason"] == "source-outage", "{gap}");
            assert!(gap["topics"].as_array().unwrap().iter().any(|t| t == topic), "{gap}");
            told = true;
            continue;
        }
        let n: usize = ev.data[..ev.data.find(' ').unwrap_or(ev.data.len())].parse().expect("numbered event");
        if let Some(a) = last {
            assert!(n > a, "out of order: {a} then {n}");
            if n > a + 1 {
                assert!(told, "events {}..{} were skipped without a gap event", a + 1, n - 1);
                missing += n - a - 1;
            }
        }
        last = Some(n);
        told = false;
    }
    missing
}

/// A burst of 16 KiB messages that the bridge cannot take in as fast as NATS delivers them:
/// the NATS client's buffer (sized in bytes) drops, and the stream is told with a
/// `source-dropped` gap before the first event after the drop; the drop is counted.
#[tokio::test]
async fn nats_client_drops_under_a_flood_are_told() {
    let nats = NatsServer::start().await;
    let mut cfg = test_config();
    let mut n = nats_config(&nats.url(), &["flood.>"]);
    n.max_message_bytes = FLOOD_BYTES + 64;
    n.buffer_bytes = 4 * (FLOOD_BYTES + 64); // 3 messages here
    cfg.nats = Some(n);
    cfg.fanout.ingest_queue = 1;
    cfg.fanout.ingest_queue_bytes = FLOOD_BYTES;
    cfg.server.queue_capacity = 1 << 16;
    let app = start_app(cfg).await;
    app.wait_sources_connected().await;
    let mut stream = app.subscribe(&["flood.a"]).await;
    let client = brokers::nats_client(&nats.url()).await;
    await_probe(&mut stream, "0 flood-probe", || {
        let c = client.clone();
        async move {
            c.publish("flood.a", "0 flood-probe".into()).await.unwrap();
            c.flush().await.unwrap();
        }
    })
    .await;

    let pad = "x".repeat(FLOOD_BYTES - 16);
    let mut next = 1usize;
    let mut events = Vec::new();
    for _burst in 0..20 {
        for _ in 0..2000 {
            client.publish("flood.a", format!("{next} {pad}").into()).await.unwrap();
            next += 1;
        }
        client.flush().await.unwrap();
        events.extend(read_flood(&mut stream).await);
        if events.iter().any(|e| e.event.as_deref() == Some(GAP_EVENT)) {
            break;
        }
    }
    let missing = assert_every_skip_is_told(&events, "flood.a");
    assert!(missing > 0, "the flood dropped nothing: {} events of {} arrived", events.len(), next - 1);
    let metrics = common::metrics::admin_metrics(&app).await;
    let lost = common::metrics::sample(&metrics, "sse_bridge_source_lost_messages_total{source=\"nats\"}");
    assert!(lost.is_some_and(|l| l > 0.0), "drops counted: {lost:?}");
}

/// The same for Redis pub/sub: the redis client buffers without bound, so the source bounds
/// what waits in bytes (`redis.buffer_bytes`), drops past it and tells the streams.
#[tokio::test]
async fn redis_buffer_drops_under_a_flood_are_told() {
    redis_flood_is_bounded_and_told(InterestMode::All).await;
}

/// The same with `redis.interest = "on-demand"` (one `SUBSCRIBE` per filter held): the same
/// byte-bounded buffer, drop policy, gap and metric.
#[tokio::test]
async fn redis_on_demand_buffer_drops_under_a_flood_are_told() {
    redis_flood_is_bounded_and_told(InterestMode::OnDemand).await;
}

async fn redis_flood_is_bounded_and_told(interest: InterestMode) {
    let redis = RedisServer::start().await;
    let mut cfg = test_config();
    let mut r = redis_config(&redis.url(), &["flood.a"], &[]);
    r.interest = interest;
    r.max_message_bytes = FLOOD_BYTES + 64;
    r.buffer_bytes = 4 * (FLOOD_BYTES + 64);
    cfg.redis = Some(r);
    cfg.fanout.ingest_queue = 1;
    cfg.fanout.ingest_queue_bytes = FLOOD_BYTES;
    cfg.server.queue_capacity = 1 << 16;
    let app = start_app(cfg).await;
    app.wait_sources_connected().await;
    let mut stream = app.subscribe(&["flood.a"]).await;
    let conn = brokers::redis_conn(&redis.url()).await;
    await_probe(&mut stream, "0 flood-probe", || {
        let mut c = conn.clone();
        async move {
            brokers::redis_publish(&mut c, "flood.a", "0 flood-probe").await;
        }
    })
    .await;

    let pad = "x".repeat(FLOOD_BYTES - 16);
    let mut next = 1usize;
    let mut events = Vec::new();
    for _burst in 0..20 {
        // Pipelines of 100: Redis writes the messages to the bridge as fast as it can.
        for _ in 0..20 {
            let mut pipe = redis::pipe();
            for _ in 0..100 {
                pipe.cmd("PUBLISH").arg("flood.a").arg(format!("{next} {pad}")).ignore();
                next += 1;
            }
            let mut c = conn.clone();
            let _: () = pipe.query_async(&mut c).await.expect("pipelined publish");
        }
        events.extend(read_flood(&mut stream).await);
        if events.iter().any(|e| e.event.as_deref() == Some(GAP_EVENT)) {
            break;
        }
    }
    let missing = assert_every_skip_is_told(&events, "flood.a");
    assert!(missing > 0, "the flood dropped nothing: {} events of {} arrived", events.len(), next - 1);
    let metrics = common::metrics::admin_metrics(&app).await;
    let lost = common::metrics::sample(&metrics, "sse_bridge_source_lost_messages_total{source=\"redis\"}");
    assert!(lost.is_some_and(|l| l > 0.0), "drops counted: {lost:?}");
}
