//! Resume from durable broker history (JetStream, Redis Streams): across a restart, across
//! replicas, older than the ring, older than the broker's retention, and a resume storm whose
//! broker reads stay under the configured bound. Real nats-server (JetStream) and redis-server.

mod common;

use std::time::Duration;

use async_nats::jetstream;
use common::bridge_process::BridgeProcess;
use common::brokers::{NatsServer, RedisServer, nats_client, redis_conn};
use common::sse_client::{self, SseEvent, SseStream};
use common::{EVENT_TIMEOUT, TestApp, start_app, test_config, wait_until};
use sse_bridge::Config;
use sse_bridge::config::{JetStreamConfig, RedisStreamsConfig};

const STREAM: &str = "ORDERS";

async fn js_stream(nats: &NatsServer, max_messages: i64) -> jetstream::Context {
    let js = jetstream::new(nats_client(&nats.url()).await);
    js.create_stream(jetstream::stream::Config {
        name: STREAM.into(),
        subjects: vec!["orders.>".into()],
        max_messages,
        ..Default::default()
    })
    .await
    .expect("create stream");
    js
}

async fn js_publish(js: &jetstream::Context, subject: &str, payload: &str) {
    js.publish(subject.to_owned(), payload.to_owned().into()).await.unwrap().await.expect("JetStream ack");
}

/// Publishes many messages quickly: acks are awaited in batches (the client bounds the acks in
/// flight, so a publish waits for a permit that only awaiting earlier acks gives back).
async fn js_publish_many(js: &jetstream::Context, subject: &str, payloads: impl Iterator<Item = String>) {
    let mut acks = Vec::with_capacity(256);
    for p in payloads {
        acks.push(js.publish(subject.to_owned(), p.into()).await.unwrap());
        if acks.len() == 256 {
            for ack in acks.drain(..) {
                ack.await.expect("JetStream ack");
            }
        }
    }
    for ack in acks {
        ack.await.expect("JetStream ack");
    }
}

fn js_config(nats: &NatsServer) -> Config {
    let mut c = test_config();
    c.jetstream = Some(JetStreamConfig {
        url: nats.url(),
        streams: vec![STREAM.into()],
        reconnect_max_delay: Duration::from_millis(500),
        ..Default::default()
    });
    c
}

fn rs_config(redis: &RedisServer, keys: &[&str]) -> Config {
    let mut c = test_config();
    c.redis_streams = Some(RedisStreamsConfig {
        url: redis.url(),
        keys: keys.iter().map(|k| k.to_string()).collect(),
        block: Duration::from_millis(500),
        reconnect_max_delay: Duration::from_millis(500),
        ..Default::default()
    });
    c
}

async fn xadd(conn: &mut redis::aio::MultiplexedConnection, key: &str, data: &str) -> String {
    redis::cmd("XADD").arg(key).arg("*").arg("data").arg(data).query_async(conn).await.expect("XADD")
}

async fn started(config: Config) -> TestApp {
    let app = start_app(config).await;
    app.wait_sources_connected().await;
    app
}

fn data(events: &[SseEvent]) -> Vec<&str> {
    events.iter().map(|e| e.data.as_str()).collect()
}

fn gap_of(e: &SseEvent) -> serde_json::Value {
    assert_eq!(e.event.as_deref(), Some("sse-bridge.gap"), "expected a gap event, got {e:?}");
    serde_json::from_str(&e.data).unwrap()
}

/// Takes `n` events and asserts none of them is a gap.
async fn take_no_gap(s: &mut SseStream, n: usize) -> Vec<SseEvent> {
    let got = s.take_events(n, EVENT_TIMEOUT).await;
    assert_eq!(got.len(), n, "got {got:?}");
    for e in &got {
        assert_ne!(e.event.as_deref(), Some("sse-bridge.gap"), "unexpected gap: {e:?}");
    }
    got
}

#[tokio::test]
async fn jetstream_resume_across_a_restart_has_no_gap_and_no_duplicate() {
    let nats = NatsServer::start().await;
    let js = js_stream(&nats, -1).await;
    let first = started(js_config(&nats)).await;
    let mut s = first.subscribe(&["orders.*"]).await;
    for i in 1..=3 {
        js_publish(&js, "orders.a", &format!("m{i}")).await;
    }
    let got = take_no_gap(&mut s, 3).await;
    assert_eq!(data(&got), ["m1", "m2", "m3"]);
    let last = got[2].id.clone().unwrap();
    assert!(last.contains("_j"), "ids carry the stream position: {last}");
    drop(s);
    first.stop().await;

    // Published while no bridge runs: only the broker has them.
    for i in 4..=6 {
        js_publish(&js, if i % 2 == 0 { "orders.b" } else { "orders.a" }, &format!("m{i}")).await;
    }
    let second = started(js_config(&nats)).await;
    let mut r = second.resume(&["orders.*"], &last).await;
    let got = take_no_gap(&mut r, 3).await;
    assert_eq!(data(&got), ["m4", "m5", "m6"]);
    js_publish(&js, "orders.a", "m7").await;
    let live = take_no_gap(&mut r, 1).await;
    assert_eq!(data(&live), ["m7"], "then live, with nothing repeated");

    // Resuming from the replayed ids works too (they are complete cursors).
    let mid = got[0].id.clone().unwrap();
    let mut again = second.resume(&["orders.*"], &mid).await;
    assert_eq!(data(&take_no_gap(&mut again, 3).await), ["m5", "m6", "m7"]);
}

#[tokio::test]
async fn redis_streams_resume_across_a_restart_has_no_gap_and_no_duplicate() {
    let redis = RedisServer::start().await;
    let mut conn = redis_conn(&redis.url()).await;
    xadd(&mut conn, "audit", "before").await; // history before the bridge: not replayed live
    let first = started(rs_config(&redis, &["audit", "chat"])).await;
    let mut s = first.subscribe(&["audit", "chat"]).await;
    xadd(&mut conn, "audit", "a1").await;
    xadd(&mut conn, "chat", "c1").await;
    let got = take_no_gap(&mut s, 2).await;
    assert_eq!(data(&got), ["a1", "c1"]);
    let last = got[1].id.clone().unwrap();
    drop(s);
    first.stop().await;

    xadd(&mut conn, "audit", "a2").await;
    xadd(&mut conn, "chat", "c2").await;
    xadd(&mut conn, "audit", "a3").await;
    let second = started(rs_config(&redis, &["audit", "chat"])).await;
    let mut r = second.resume(&["audit", "chat"], &last).await;
    let got = take_no_gap(&mut r, 3).await;
    let mut seen = data(&got);
    seen.sort();
    assert_eq!(seen, ["a2", "a3", "c2"]);
    assert!(data(&got).iter().position(|d| *d == "a2") < data(&got).iter().position(|d| *d == "a3"));
    xadd(&mut conn, "chat", "c3").await;
    assert_eq!(data(&take_no_gap(&mut r, 1).await), ["c3"]);
}

#[tokio::test]
async fn resume_on_another_replica_has_no_gap_and_no_duplicate() {
    let nats = NatsServer::start().await;
    let js = js_stream(&nats, -1).await;
    let a = started(js_config(&nats)).await;
    let b = started(js_config(&nats)).await;
    let mut on_a = a.subscribe(&["orders.>"]).await;
    let mut on_b = b.subscribe(&["orders.>"]).await;
    for i in 1..=6 {
        js_publish(&js, "orders.x", &format!("m{i}")).await;
    }
    let seen_a = take_no_gap(&mut on_a, 6).await;
    take_no_gap(&mut on_b, 6).await; // B has sequenced them too
    let cursor = seen_a[2].id.clone().unwrap();
    let mut moved = b.resume(&["orders.>"], &cursor).await;
    assert_eq!(data(&take_no_gap(&mut moved, 3).await), ["m4", "m5", "m6"]);
    js_publish(&js, "orders.x", "m7").await;
    assert_eq!(data(&take_no_gap(&mut moved, 1).await), ["m7"]);

    // An id from A that is newer than anything B has sequenced is not replayed twice: B's live
    // events up to it are skipped.
    let newest_a = take_no_gap(&mut on_a, 1).await[0].id.clone().unwrap();
    let mut up_to_date = b.resume(&["orders.>"], &newest_a).await;
    js_publish(&js, "orders.x", "m8").await;
    assert_eq!(data(&take_no_gap(&mut up_to_date, 1).await), ["m8"]);
}

/// Waits until a bridge process reports `source` connected on its admin listener.
async fn process_connected(p: &BridgeProcess, source: &str) {
    let series = format!("sse_bridge_broker_up{{source=\"{source}\"}}");
    wait_until(&format!("{source} connected"), async || common::sample(&p.metrics().await, &series) == Some(1.0)).await;
}

#[tokio::test]
async fn two_bridge_processes_share_one_history() {
    let redis = RedisServer::start().await;
    let mut conn = redis_conn(&redis.url()).await;
    let section =
        format!("[redis_streams]\nurl = \"{}\"\nkeys = [\"audit\", \"chat\"]\nblock = \"500ms\"\n", redis.url());
    let a = BridgeProcess::start(&section, &[]);
    let b = BridgeProcess::start(&section, &[]);
    process_connected(&a, "redis_streams").await;
    process_connected(&b, "redis_streams").await;
    let mut on_a = sse_client::connect(&a.url("/events?topic=audit&topic=chat"), &[]).await.unwrap();
    on_a.wait_for_comments(1, EVENT_TIMEOUT).await;
    for i in 1..=4 {
        xadd(&mut conn, if i % 2 == 0 { "chat" } else { "audit" }, &format!("m{i}")).await;
    }
    let seen = take_no_gap(&mut on_a, 4).await;
    drop(on_a);
    for i in 5..=6 {
        xadd(&mut conn, "audit", &format!("m{i}")).await;
    }
    let cursor = seen[1].id.clone().unwrap();
    let mut on_b =
        sse_client::connect(&b.url("/events?topic=audit&topic=chat"), &[("last-event-id", &cursor)]).await.unwrap();
    let got = take_no_gap(&mut on_b, 4).await;
    let mut d = data(&got);
    d.sort();
    // One XREAD may return both keys at once, so A's order across keys is its own: the client
    // is owed whatever came after its cursor in that order, plus what A never saw.
    let mut owed: Vec<&str> = data(&seen[2..]);
    owed.extend(["m5", "m6"]);
    owed.sort();
    assert_eq!(d, owed, "consumed on one process, resumed on the other");
    xadd(&mut conn, "chat", "m7").await;
    assert_eq!(data(&take_no_gap(&mut on_b, 1).await), ["m7"]);
    drop(on_b);
    a.stop();
    b.stop();
}

#[tokio::test]
async fn publish_refuses_durable_topics() {
    let redis = RedisServer::start().await;
    let app = started(rs_config(&redis, &["audit"])).await;
    let r = sse_client::test_client()
        .post(app.url("/publish?topic=audit"))
        .bearer_auth(common::TOKEN)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("durable stream"));
    // Other topics still publish, and their ids carry the durable positions too.
    let id = app.publish("news", None, "hello").await;
    assert!(id.contains("_r"), "{id}");
}

#[tokio::test]
async fn resume_older_than_the_ring_comes_from_the_broker() {
    let nats = NatsServer::start().await;
    let js = js_stream(&nats, -1).await;
    let mut c = js_config(&nats);
    c.replay.max_events_per_topic = 2;
    let app = started(c).await;
    let mut s = app.subscribe(&["orders.*"]).await;
    for i in 1..=10 {
        js_publish(&js, "orders.a", &format!("m{i}")).await;
    }
    let got = take_no_gap(&mut s, 10).await;
    let mut r = app.resume(&["orders.*"], got[1].id.as_deref().unwrap()).await;
    let replayed = take_no_gap(&mut r, 8).await;
    assert_eq!(data(&replayed), ["m3", "m4", "m5", "m6", "m7", "m8", "m9", "m10"]);
    js_publish(&js, "orders.a", "m11").await;
    assert_eq!(data(&take_no_gap(&mut r, 1).await), ["m11"]);
    let m = common::admin_metrics(&app).await;
    assert!(common::sample(&m, "sse_bridge_replayed_from_broker_events_total").unwrap() >= 6.0, "{m}");
}

#[tokio::test]
async fn resume_older_than_retention_gets_a_gap_then_the_rest() {
    let nats = NatsServer::start().await;
    let js = js_stream(&nats, 5).await;
    let first = started(js_config(&nats)).await;
    let mut s = first.subscribe(&["orders.*"]).await;
    js_publish(&js, "orders.a", "m1").await;
    let last = take_no_gap(&mut s, 1).await[0].id.clone().unwrap();
    drop(s);
    first.stop().await;
    for i in 2..=10 {
        js_publish(&js, "orders.a", &format!("m{i}")).await; // the stream keeps m6..m10
    }
    let second = started(js_config(&nats)).await;
    let mut r = second.resume(&["orders.*"], &last).await;
    let gap = gap_of(&r.next_event(EVENT_TIMEOUT).await.unwrap());
    assert_eq!(gap["reason"], "retention");
    assert_eq!(gap["topics"], serde_json::json!(["orders.*"]));
    assert_eq!(data(&take_no_gap(&mut r, 5).await), ["m6", "m7", "m8", "m9", "m10"]);

    // Redis: MAXLEN trimming is retention too.
    let redis = RedisServer::start().await;
    let mut conn = redis_conn(&redis.url()).await;
    let app = started(rs_config(&redis, &["audit"])).await;
    let mut s = app.subscribe(&["audit"]).await;
    xadd(&mut conn, "audit", "a1").await;
    let last = take_no_gap(&mut s, 1).await[0].id.clone().unwrap();
    drop(s);
    app.stop().await;
    for i in 2..=6 {
        let _: String = redis::cmd("XADD")
            .arg("audit")
            .arg("MAXLEN")
            .arg(3)
            .arg("*")
            .arg("data")
            .arg(format!("a{i}"))
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let app = started(rs_config(&redis, &["audit"])).await;
    let mut r = app.resume(&["audit"], &last).await;
    assert_eq!(gap_of(&r.next_event(EVENT_TIMEOUT).await.unwrap())["reason"], "retention");
    assert_eq!(data(&take_no_gap(&mut r, 3).await), ["a4", "a5", "a6"]);
}

#[tokio::test]
async fn resume_storm_is_correct_and_bounded() {
    const CLIENTS: usize = 2_000;
    const EVENTS: usize = 40;
    const BOUND: usize = 4;
    let nats = NatsServer::start().await;
    let js = js_stream(&nats, -1).await;
    let first = started(js_config(&nats)).await;
    let mut s = first.subscribe(&["orders.*"]).await;
    for i in 1..=EVENTS {
        js_publish(&js, "orders.a", &format!("m{i}")).await;
    }
    let ids: Vec<String> = take_no_gap(&mut s, EVENTS).await.into_iter().map(|e| e.id.unwrap()).collect();
    drop(s);
    first.stop().await;

    let mut c = js_config(&nats);
    c.resume.max_concurrent_reads = BOUND;
    let app = started(c).await;
    let url = app.url("/events?topic=orders.*");
    let started_at = std::time::Instant::now();
    let mut clients = Vec::with_capacity(CLIENTS);
    for k in 0..CLIENTS {
        let from = k % EVENTS; // resumes after event `from + 1`
        let (url, id) = (url.clone(), ids[from].clone());
        clients.push(tokio::spawn(async move {
            let mut s = sse_client::connect(&url, &[("last-event-id", &id)]).await.expect("stream opens");
            let want = EVENTS - from - 1;
            let got = s.take_events(want, Duration::from_secs(60)).await;
            let expected: Vec<String> = (from + 2..=EVENTS).map(|i| format!("m{i}")).collect();
            assert_eq!(data(&got), expected.iter().map(String::as_str).collect::<Vec<_>>(), "client {k}");
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let elapsed = started_at.elapsed();
    let peak = app.state.broker_reader.peak_concurrency();
    let m = common::admin_metrics(&app).await;
    let reads =
        common::sample(&m, "sse_bridge_resume_broker_reads_total{kind=\"jetstream\",outcome=\"ok\"}").unwrap_or(0.0);
    let coalesced = common::sample(&m, "sse_bridge_resume_broker_reads_coalesced_total").unwrap_or(0.0);
    println!(
        "resume storm: {CLIENTS} clients, {EVENTS} positions, bound {BOUND}: peak {peak} concurrent broker reads, {reads} reads, {coalesced} coalesced, all complete in {elapsed:?}"
    );
    assert!(peak <= BOUND, "peak {peak} concurrent broker reads exceeds the bound {BOUND}");
    assert!(peak >= 1);
}

#[tokio::test]
async fn jetstream_outage_loses_nothing_the_stream_keeps() {
    let mut nats = NatsServer::start().await;
    let js = js_stream(&nats, -1).await;
    let app = started(js_config(&nats)).await;
    let mut s = app.subscribe(&["orders.*"]).await;
    js_publish(&js, "orders.a", "m1").await;
    assert_eq!(data(&take_no_gap(&mut s, 1).await), ["m1"]);
    nats.kill9();
    wait_until("the source sees the outage", async || !app.state.sources[0].is_connected()).await;
    nats.restart().await;
    // Published as soon as the server is back, before the bridge has reconnected.
    let js = jetstream::new(nats_client(&nats.url()).await);
    for i in 2..=4 {
        js_publish(&js, "orders.a", &format!("m{i}")).await;
    }
    assert_eq!(data(&take_no_gap(&mut s, 3).await), ["m2", "m3", "m4"], "the stream stayed open and missed nothing");
    let m = common::admin_metrics(&app).await;
    assert!(common::sample(&m, "sse_bridge_broker_reconnects_total{source=\"jetstream\"}").unwrap() >= 1.0);
}

#[tokio::test]
async fn redis_streams_outage_keeps_streams_open_and_reads_on() {
    let mut redis = RedisServer::start().await;
    let app = started(rs_config(&redis, &["audit"])).await;
    let mut s = app.subscribe(&["audit"]).await;
    let mut conn = redis_conn(&redis.url()).await;
    xadd(&mut conn, "audit", "a1").await;
    assert_eq!(data(&take_no_gap(&mut s, 1).await), ["a1"]);
    redis.kill9();
    wait_until("the source sees the outage", async || !app.state.sources[0].is_connected()).await;
    redis.restart().await; // this test server keeps nothing on disk: the stream starts empty
    let mut conn = redis_conn(&redis.url()).await;
    for i in 2..=3 {
        xadd(&mut conn, "audit", &format!("a{i}")).await;
    }
    assert_eq!(data(&take_no_gap(&mut s, 2).await), ["a2", "a3"], "the stream stayed open and missed nothing");
}

#[tokio::test]
async fn jetstream_subject_filters_apply_live_and_in_replays() {
    let nats = NatsServer::start().await;
    let js = js_stream(&nats, -1).await;
    let config = || {
        let mut c = js_config(&nats);
        c.jetstream.as_mut().unwrap().subjects = vec!["orders.eu.>".into()];
        c
    };
    let first = started(config()).await;
    let mut all = first.subscribe(&["orders.>"]).await;
    let mut s = first.subscribe(&["orders.eu.>"]).await;
    js_publish(&js, "orders.us.1", "us1").await;
    js_publish(&js, "orders.eu.1", "eu1").await;
    assert_eq!(data(&take_no_gap(&mut all, 1).await), ["eu1"], "only the configured subjects are bridged");
    let got = take_no_gap(&mut s, 1).await;
    let last = got[0].id.clone().unwrap();
    drop((s, all));
    first.stop().await;
    js_publish(&js, "orders.us.2", "us2").await;
    js_publish(&js, "orders.eu.2", "eu2").await;
    let second = started(config()).await;
    // `orders.eu.>` lies inside the bridged subjects, so only the stream can deliver to it (a
    // wider filter could also get `/publish` events, which no broker keeps: an `unknown-run` gap).
    let mut r = second.resume(&["orders.eu.>"], &last).await;
    assert_eq!(data(&take_no_gap(&mut r, 1).await), ["eu2"], "replays bridge the same subjects");
    js_publish(&js, "orders.eu.3", "eu3").await;
    assert_eq!(data(&take_no_gap(&mut r, 1).await), ["eu3"]);
}

#[tokio::test]
async fn resume_beyond_the_replay_limit_gets_a_gap_then_the_newest() {
    let redis = RedisServer::start().await;
    let mut conn = redis_conn(&redis.url()).await;
    let config = || {
        let mut c = rs_config(&redis, &["audit"]);
        c.resume.max_events = 3;
        c
    };
    let first = started(config()).await;
    let mut s = first.subscribe(&["audit"]).await;
    xadd(&mut conn, "audit", "a0").await;
    let last = take_no_gap(&mut s, 1).await[0].id.clone().unwrap();
    drop(s);
    first.stop().await;
    for i in 1..=6 {
        xadd(&mut conn, "audit", &format!("a{i}")).await;
    }
    let second = started(config()).await;
    let mut r = second.resume(&["audit"], &last).await;
    assert_eq!(gap_of(&r.next_event(EVENT_TIMEOUT).await.unwrap())["reason"], "replay-limit");
    assert_eq!(data(&take_no_gap(&mut r, 3).await), ["a4", "a5", "a6"]);
}

#[tokio::test]
async fn one_id_resumes_topics_from_jetstream_and_redis_streams_together() {
    let nats = NatsServer::start().await;
    let js = js_stream(&nats, -1).await;
    let redis = RedisServer::start().await;
    let mut conn = redis_conn(&redis.url()).await;
    let config = || {
        let mut c = js_config(&nats);
        c.redis_streams = rs_config(&redis, &["audit"]).redis_streams;
        c
    };
    let first = started(config()).await;
    let mut s = first.subscribe(&["orders.*", "audit"]).await;
    js_publish(&js, "orders.a", "j1").await;
    assert_eq!(data(&take_no_gap(&mut s, 1).await), ["j1"]);
    xadd(&mut conn, "audit", "r1").await;
    let last = take_no_gap(&mut s, 1).await[0].id.clone().unwrap();
    assert!(last.contains("_j") && last.contains("_r"), "one id, both positions: {last}");
    drop(s);
    // The stream's client has left; shutdown must not wait the drain time for it.
    assert_eq!(first.stop().await, sse_bridge::RunOutcome::Drained);
    js_publish(&js, "orders.a", "j2").await;
    xadd(&mut conn, "audit", "r2").await;
    js_publish(&js, "orders.b", "j3").await;
    let second = started(config()).await;
    let mut r = second.resume(&["orders.*", "audit"], &last).await;
    let got = take_no_gap(&mut r, 3).await;
    let d = data(&got);
    assert!(d.iter().position(|x| *x == "j2") < d.iter().position(|x| *x == "j3"), "stream order kept: {d:?}");
    let mut sorted = d.clone();
    sorted.sort();
    assert_eq!(sorted, ["j2", "j3", "r2"]);
    xadd(&mut conn, "audit", "r3").await;
    assert_eq!(data(&take_no_gap(&mut r, 1).await), ["r3"]);
}

/// #16 item 7: a Redis pattern that cannot match the durable topics leaves their resume
/// durable. The shipped sources (`nats.subjects = ["demo.>"]`, `redis.channels = ["demo"]`)
/// plus `redis.patterns = ["bench.core.*"]`, a JetStream stream and a Redis Stream key; a client
/// of one process resumes on the other: every missed event comes from the brokers, with no
/// `unknown-run` gap (before: a gap for both topics and no replay).
#[tokio::test]
async fn redis_pattern_that_cannot_match_keeps_resume_durable_across_processes() {
    let nats = NatsServer::start().await;
    let redis = RedisServer::start().await;
    let js = jetstream::new(nats_client(&nats.url()).await);
    js.create_stream(jetstream::stream::Config {
        name: "BENCH".into(),
        subjects: vec!["bench.js.>".into()],
        ..Default::default()
    })
    .await
    .expect("create stream");
    let mut conn = redis_conn(&redis.url()).await;
    let (n, r) = (nats.url(), redis.url());
    let sections = format!(
        "[nats]\nurl = \"{n}\"\nsubjects = [\"demo.>\"]\n\n\
         [redis]\nurl = \"{r}\"\nchannels = [\"demo\"]\npatterns = [\"bench.core.*\"]\n\n\
         [jetstream]\nurl = \"{n}\"\nstreams = [\"BENCH\"]\n\n\
         [redis_streams]\nurl = \"{r}\"\nkeys = [\"bench.audit\"]\nblock = \"500ms\"\n"
    );
    let a = BridgeProcess::start(&sections, &[]);
    let b = BridgeProcess::start(&sections, &[]);
    for p in [&a, &b] {
        for source in ["nats", "redis", "jetstream", "redis_streams"] {
            process_connected(p, source).await;
        }
    }
    let path = "/events?topic=bench.js.>&topic=bench.audit";
    let mut on_a = sse_client::connect(&a.url(path), &[]).await.unwrap();
    on_a.wait_for_comments(1, EVENT_TIMEOUT).await;
    js_publish(&js, "bench.js.1", "j1").await;
    let _ = take_no_gap(&mut on_a, 1).await;
    xadd(&mut conn, "bench.audit", "r1").await;
    let cursor = take_no_gap(&mut on_a, 1).await[0].id.clone().unwrap();
    drop(on_a);
    js_publish(&js, "bench.js.2", "j2").await;
    xadd(&mut conn, "bench.audit", "r2").await;
    js_publish(&js, "bench.js.3", "j3").await;

    let mut on_b = sse_client::connect(&b.url(path), &[("last-event-id", &cursor)]).await.unwrap();
    let got = take_no_gap(&mut on_b, 3).await;
    let d = data(&got);
    assert!(d.iter().position(|x| *x == "j2") < d.iter().position(|x| *x == "j3"), "stream order kept: {d:?}");
    let mut sorted = d.clone();
    sorted.sort();
    assert_eq!(sorted, ["j2", "j3", "r2"], "replayed from the brokers on the other process");
    xadd(&mut conn, "bench.audit", "r3").await;
    assert_eq!(data(&take_no_gap(&mut on_b, 1).await), ["r3"], "then live, nothing repeated");
    drop(on_b);
    a.stop();
    b.stop();
}

/// #16 item 5: a JetStream stream deleted and recreated starts again at sequence 1. The source
/// stays connected and reads the new stream from its start (live streams get its events), and
/// a resume with an id from before the reset gets a `stream-reset` gap naming its topics, then
/// the new stream's events: on another process (the id's position is beyond the new stream)
/// and on the same one once its ring no longer covers the id.
#[tokio::test]
async fn jetstream_stream_recreated_is_read_from_its_start_and_resumes_across_it_get_a_gap() {
    let nats = NatsServer::start().await;
    let js = js_stream(&nats, -1).await;
    let mut small_ring = js_config(&nats);
    small_ring.replay.max_events_per_topic = 1;
    let a = started(small_ring).await;
    let b = started(js_config(&nats)).await;
    let mut live = a.subscribe(&["orders.>"]).await;
    let mut on_b = b.subscribe(&["orders.>"]).await;
    for i in 1..=3 {
        js_publish(&js, "orders.a", &format!("m{i}")).await;
    }
    let before = take_no_gap(&mut live, 3).await[2].id.clone().unwrap();
    take_no_gap(&mut on_b, 3).await;

    js.delete_stream(STREAM).await.expect("delete stream");
    js.create_stream(jetstream::stream::Config {
        name: STREAM.into(),
        subjects: vec!["orders.>".into()],
        ..Default::default()
    })
    .await
    .expect("recreate stream");
    js_publish(&js, "orders.a", "n1").await; // sequence 1 again
    js_publish(&js, "orders.a", "n2").await;
    assert_eq!(data(&take_no_gap(&mut live, 2).await), ["n1", "n2"], "the new stream is read from its start");
    assert_eq!(data(&take_no_gap(&mut on_b, 2).await), ["n1", "n2"]);
    assert!(a.state.sources[0].is_connected(), "the source stayed connected");
    let m = common::admin_metrics(&a).await;
    assert_eq!(common::sample(&m, "sse_bridge_broker_reconnects_total{source=\"jetstream\"}").unwrap_or(0.0), 0.0);

    let mut new_stream = vec!["n1".to_owned(), "n2".to_owned()];
    for (app, name) in [(&b, "another process"), (&a, "the same process, past its ring")] {
        let mut r = app.resume(&["orders.>"], &before).await;
        let gap = gap_of(&r.next_event(EVENT_TIMEOUT).await.unwrap());
        assert_eq!(gap["reason"], "stream-reset", "{name}");
        assert_eq!(gap["topics"], serde_json::json!(["orders.>"]), "{name}");
        let replayed = take_no_gap(&mut r, new_stream.len()).await;
        assert_eq!(data(&replayed), new_stream, "{name}: the new stream from its start");
        let next = format!("live-{}", new_stream.len());
        js_publish(&js, "orders.a", &next).await;
        assert_eq!(data(&take_no_gap(&mut r, 1).await), [next.as_str()], "{name}: then live");
        new_stream.push(next);
        take_no_gap(&mut live, 1).await;
        take_no_gap(&mut on_b, 1).await;
    }
}

/// #16 item 6: core NATS bridging `orders.>` beside a JetStream stream that captures
/// `orders.>`, with the stream's subjects learned from the server (no `jetstream.subjects`, so
/// nothing to refuse at startup): each message is delivered once, the stream's copy (with its
/// durable position), and the dropped core NATS copies are counted.
#[tokio::test]
async fn core_nats_and_a_jetstream_stream_on_the_same_subjects_deliver_once() {
    let nats = NatsServer::start().await;
    let js = js_stream(&nats, -1).await;
    let mut c = js_config(&nats);
    c.nats = Some(common::nats_config(&nats.url(), &["orders.>", "demo.>"]));
    let app = started(c).await;
    let mut s = app.subscribe(&["orders.>"]).await;
    for i in 1..=3 {
        js_publish(&js, "orders.a", &format!("m{i}")).await;
    }
    let got = take_no_gap(&mut s, 3).await;
    assert_eq!(data(&got), ["m1", "m2", "m3"], "each once, in order");
    assert!(got.iter().all(|e| e.id.as_deref().unwrap().contains("_j")), "the stream's copies: {got:?}");
    wait_until("the core NATS copies are counted", async || {
        common::sample(&common::admin_metrics(&app).await, "sse_bridge_events_duplicate_dropped_total") == Some(3.0)
    })
    .await;
    // Subjects the stream does not capture still come from core NATS.
    let mut demo = app.subscribe(&["demo.x"]).await;
    let core = nats_client(&nats.url()).await;
    core.publish("demo.x", "d1".into()).await.unwrap();
    core.flush().await.unwrap();
    assert_eq!(data(&take_no_gap(&mut demo, 1).await), ["d1"]);
    js_publish(&js, "orders.a", "m4").await;
    assert_eq!(data(&take_no_gap(&mut s, 1).await), ["m4"], "nothing twice");
}

#[tokio::test]
async fn jetstream_replay_limit_counts_the_clients_events_not_the_streams() {
    let nats = NatsServer::start().await;
    let js = js_stream(&nats, -1).await;
    let config = || {
        let mut c = js_config(&nats);
        c.resume.max_events = 3;
        c
    };
    let first = started(config()).await;
    let mut s = first.subscribe(&["orders.quiet"]).await;
    js_publish(&js, "orders.quiet", "q0").await;
    let last = take_no_gap(&mut s, 1).await[0].id.clone().unwrap();
    drop(s);
    first.stop().await;
    // A busy stream: 20 events on another subject around 2 of the client's.
    for i in 1..=20 {
        js_publish(&js, "orders.busy", &format!("b{i}")).await;
        if i % 10 == 5 {
            js_publish(&js, "orders.quiet", &format!("q{}", i / 10 + 1)).await;
        }
    }
    let second = started(config()).await;
    let mut r = second.resume(&["orders.quiet"], &last).await;
    assert_eq!(data(&take_no_gap(&mut r, 2).await), ["q1", "q2"], "2 missed events are under the limit of 3");
    js_publish(&js, "orders.quiet", "q3").await;
    assert_eq!(data(&take_no_gap(&mut r, 1).await), ["q3"]);
    drop(r);

    // Over the limit in the client's own events (q1..q5 missed on `orders.quiet` and
    // `orders.calm`, two filters read from one range): a gap, then the newest 3 of them.
    let mut s = second.subscribe(&["orders.quiet", "orders.calm"]).await;
    js_publish(&js, "orders.calm", "c0").await;
    let last = take_no_gap(&mut s, 1).await[0].id.clone().unwrap();
    drop(s);
    second.stop().await;
    for i in 1..=5 {
        js_publish(&js, if i % 2 == 0 { "orders.calm" } else { "orders.quiet" }, &format!("x{i}")).await;
        js_publish(&js, "orders.busy", "b").await;
    }
    let third = started(config()).await;
    let mut r = third.resume(&["orders.quiet", "orders.calm"], &last).await;
    let gap = gap_of(&r.next_event(EVENT_TIMEOUT).await.unwrap());
    assert_eq!(gap["reason"], "replay-limit");
    assert_eq!(data(&take_no_gap(&mut r, 3).await), ["x3", "x4", "x5"]);
}

#[tokio::test]
async fn another_replicas_id_is_served_from_the_rings_when_they_hold_the_range() {
    let nats = NatsServer::start().await;
    let js = js_stream(&nats, -1).await;
    let a = started(js_config(&nats)).await;
    let b = started(js_config(&nats)).await;
    let mut on_a = a.subscribe(&["orders.>"]).await;
    let mut on_b = b.subscribe(&["orders.>"]).await;
    for i in 1..=6 {
        js_publish(&js, "orders.x", &format!("m{i}")).await;
    }
    let seen_a = take_no_gap(&mut on_a, 6).await;
    take_no_gap(&mut on_b, 6).await;
    // B has read ORDERS since before the client's position and its ring evicted nothing.
    let mut moved = b.resume(&["orders.>"], seen_a[1].id.as_deref().unwrap()).await;
    assert_eq!(data(&take_no_gap(&mut moved, 4).await), ["m3", "m4", "m5", "m6"]);
    js_publish(&js, "orders.x", "m7").await;
    assert_eq!(data(&take_no_gap(&mut moved, 1).await), ["m7"]);
    let m = common::admin_metrics(&b).await;
    assert_eq!(common::sample(&m, "sse_bridge_replayed_from_broker_events_total").unwrap_or(0.0), 0.0, "{m}");

    // A replica whose ring evicted part of the range reads the broker instead.
    let mut c = js_config(&nats);
    c.replay.max_events_per_topic = 2;
    let small = started(c).await;
    let mut on_small = small.subscribe(&["orders.>"]).await;
    let mut on_a = a.subscribe(&["orders.>"]).await;
    for i in 8..=11 {
        js_publish(&js, "orders.x", &format!("m{i}")).await;
    }
    let seen_a = take_no_gap(&mut on_a, 4).await;
    take_no_gap(&mut on_small, 4).await;
    let mut moved = small.resume(&["orders.>"], seen_a[0].id.as_deref().unwrap()).await;
    assert_eq!(data(&take_no_gap(&mut moved, 3).await), ["m9", "m10", "m11"]);
    let m = common::admin_metrics(&small).await;
    assert_eq!(common::sample(&m, "sse_bridge_replayed_from_broker_events_total"), Some(3.0), "{m}");
}

/// A client's position taken on a first replica (one event, `h0`, on `orders.hist`), then
/// `history` events `h1 … hN` (padded with `pad` bytes) published to ORDERS while no replica
/// serves it: what a resume from the returned id must replay.
async fn js_cursor_then_history(nats: &NatsServer, js: &jetstream::Context, history: usize, pad: usize) -> String {
    let a = started(js_config(nats)).await;
    let mut on_a = a.subscribe(&["orders.>"]).await;
    js_publish(js, "orders.hist", "h0").await;
    let cursor = take_no_gap(&mut on_a, 1).await[0].id.clone().unwrap();
    drop(on_a);
    a.stop().await;
    let payload = "x".repeat(pad);
    js_publish_many(js, "orders.hist", (1..=history).map(|i| format!("h{i} {payload}"))).await;
    cursor
}

/// The settings of the in-place resume tests: a stream queue of 8 events, so a client that
/// does not read spills at once; a write timeout that never cuts it meanwhile; broker replays
/// of at most 50 events, and rings of 20.
fn spilling(mut c: Config) -> Config {
    c.server.queue_capacity = 8;
    c.server.write_timeout = Duration::from_secs(120);
    c.resume.max_events = 50;
    c.replay.max_events_per_topic = 20;
    c
}

/// Waits until `b` has read and queued a broker replay of `history` events, then has
/// `publish` send live events and waits until `b` sequenced `live` more: the resumed stream,
/// not read meanwhile, is still catching up when its queue fills.
async fn live_behind_a_queued_replay(b: &TestApp, history: usize, live: usize, publish: impl AsyncFnOnce()) {
    let state = b.state.clone();
    common::wait_until("the replay is read and queued", async || {
        state.metrics.replayed_from_broker.get() == history as u64
    })
    .await;
    let before = state.last_seq.get();
    publish().await;
    common::wait_until("the live events are sequenced", async || state.last_seq.get() >= before + live as u64).await;
}

/// Takes `history + live` events and checks they are `h1 … hN` then `l1 … lM` (by the first
/// word of their data), once each and in order.
async fn assert_history_then_live(s: &mut SseStream, history: usize, live: usize) {
    let got = s.take_events(history + live, EVENT_TIMEOUT).await;
    let got = first_words(&got);
    let want: Vec<String> = (1..=history).map(|i| format!("h{i}")).chain((1..=live).map(|i| format!("l{i}"))).collect();
    assert_eq!(got.len(), want.len(), "the stream ended or stalled after {} events", got.len());
    assert!(got == want, "events out of order, missing or repeated (a gap event shows as its data)");
}

/// The first word of each event's data (the numbered part of a padded payload).
fn first_words(events: &[SseEvent]) -> Vec<String> {
    events.iter().map(|e| e.data.split(' ').next().unwrap().to_owned()).collect()
}

/// A metric of `app` by its full series name, 0 when absent.
async fn metric(app: &TestApp, series: &str) -> f64 {
    common::sample(&common::admin_metrics(app).await, series).unwrap_or(0.0)
}

/// A resume whose broker read is long (20,000 events) while the live topic floods far beyond
/// `server.queue_capacity`: the held stream spills (policy `spill-reread`) instead of being cut
/// as a slow consumer, and resumes in place from the last event it wrote. The client gets every
/// event once, in order, on the same connection.
#[tokio::test]
async fn held_stream_flooded_beyond_its_queue_spills_and_loses_nothing() {
    const HISTORY: usize = 20_000;
    const LIVE: usize = 200;
    let nats = NatsServer::start().await;
    let js = js_stream(&nats, -1).await;
    // The client's position comes from another replica, before the history.
    let cursor = js_cursor_then_history(&nats, &js, HISTORY, 512).await;

    let mut c = js_config(&nats);
    c.server.queue_capacity = 8;
    c.resume.max_events = 100_000;
    c.resume.max_concurrent_reads = 1;
    let b = started(c).await;
    let mut moved = b.resume(&["orders.>"], &cursor).await;
    let metrics = b.state.metrics.clone();
    common::wait_until("the resume's broker read runs", async || metrics.resume_reads_active.get() == 1).await;
    // While the stream is held for that read: far more live events than its queue holds.
    js_publish_many(&js, "orders.live", (1..=LIVE).map(|i| format!("l{i}"))).await;
    assert_history_then_live(&mut moved, HISTORY, LIVE).await;
    // Still the same stream, and live.
    js_publish(&js, "orders.live", "after").await;
    assert_eq!(data(&take_no_gap(&mut moved, 1).await), ["after"]);
    assert_eq!(metric(&b, "sse_bridge_disconnects_total{reason=\"slow_consumer\"}").await, 0.0);
    assert!(metric(&b, "sse_bridge_resume_spills_total").await >= 1.0, "the hold spilled");
}

/// An in-place resume (a stream that spilled while it was still catching up) that finds itself
/// further behind than `resume.max_events` reads the broker in pages, each written before the
/// next is read, instead of sending the newest events behind a `replay-limit` gap: a stream
/// that never left loses nothing however far behind it fell, and holds one page at a time.
#[tokio::test]
async fn in_place_resume_reads_the_broker_in_pages_and_loses_nothing() {
    const HISTORY: usize = 40;
    const LIVE: usize = 2_000;
    let nats = NatsServer::start().await;
    let js = js_stream(&nats, -1).await;
    // 40 × 256 KiB: more than the socket buffers hold, so the replay cannot all be written
    // while the client does not read.
    let cursor = js_cursor_then_history(&nats, &js, HISTORY, 256 * 1024).await;
    let b = started(spilling(js_config(&nats))).await;
    let mut moved = b.resume(&["orders.>"], &cursor).await;
    live_behind_a_queued_replay(&b, HISTORY, LIVE, async || {
        js_publish_many(&js, "orders.live", (1..=LIVE).map(|i| format!("l{i}"))).await;
    })
    .await;
    assert_history_then_live(&mut moved, HISTORY, LIVE).await;
    js_publish(&js, "orders.live", "after").await;
    assert_eq!(data(&take_no_gap(&mut moved, 1).await), ["after"]);
    assert_eq!(metric(&b, "sse_bridge_disconnects_total{reason=\"slow_consumer\"}").await, 0.0);
    assert!(metric(&b, "sse_bridge_resume_spills_total").await >= 1.0, "the queue spilled");
    assert!(metric(&b, "sse_bridge_resume_pages_total").await >= 1.0, "read in pages");
    assert_eq!(metric(&b, "sse_bridge_gap_events_total{reason=\"replay-limit\"}").await, 0.0);
}

/// The same for Redis Streams: the in-place resume pages with `XRANGE` from its position.
#[tokio::test]
async fn in_place_resume_reads_redis_streams_in_pages_and_loses_nothing() {
    const HISTORY: usize = 40;
    const LIVE: usize = 2_000;
    let redis = RedisServer::start().await;
    let mut conn = redis_conn(&redis.url()).await;
    let a = started(rs_config(&redis, &["audit"])).await;
    let mut on_a = a.subscribe(&["audit"]).await;
    xadd(&mut conn, "audit", "h0").await;
    let cursor = take_no_gap(&mut on_a, 1).await[0].id.clone().unwrap();
    drop(on_a);
    a.stop().await;
    let payload = "x".repeat(256 * 1024);
    for i in 1..=HISTORY {
        xadd(&mut conn, "audit", &format!("h{i} {payload}")).await;
    }
    let b = started(spilling(rs_config(&redis, &["audit"]))).await;
    let mut moved = b.resume(&["audit"], &cursor).await;
    live_behind_a_queued_replay(&b, HISTORY, LIVE, async || {
        let mut pipe = redis::pipe();
        for i in 1..=LIVE {
            pipe.cmd("XADD").arg("audit").arg("*").arg("data").arg(format!("l{i}")).ignore();
        }
        let () = pipe.query_async(&mut conn).await.unwrap();
    })
    .await;
    assert_history_then_live(&mut moved, HISTORY, LIVE).await;
    assert_eq!(metric(&b, "sse_bridge_disconnects_total{reason=\"slow_consumer\"}").await, 0.0);
    assert!(metric(&b, "sse_bridge_resume_pages_total").await >= 1.0, "read in pages");
}

/// While every broker read slot is taken (a resume herd), the in-place resume of a spilled
/// stream does not queue behind them: it takes the newest events the rings hold, behind a
/// `replay-limit` gap, at once, and the stream goes on live. (A read slot is held here by a
/// resume whose broker is stopped.)
#[tokio::test]
async fn in_place_resume_under_a_read_herd_takes_the_newest_from_the_rings() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    const HISTORY: usize = 40;
    const LIVE: usize = 2_000;
    let nats = NatsServer::start().await;
    let js = js_stream(&nats, -1).await;
    let cursor = js_cursor_then_history(&nats, &js, HISTORY, 256 * 1024).await;
    let mut c = spilling(js_config(&nats));
    c.resume.max_concurrent_reads = 1;
    c.resume.read_timeout = Duration::from_secs(60);
    let b = started(c).await;
    let mut moved = b.resume(&["orders.>"], &cursor).await;
    live_behind_a_queued_replay(&b, HISTORY, LIVE, async || {
        js_publish_many(&js, "orders.live", (1..=LIVE).map(|i| format!("l{i}"))).await;
    })
    .await;
    // The one read slot: taken by another resume whose broker read cannot finish.
    let pid = Pid::from_raw(nats.pid().expect("nats-server runs") as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    let blocker = sse_client::connect(&b.url("/events?topic=orders.hist"), &[("last-event-id", &cursor)]).await;
    let metrics = b.state.metrics.clone();
    common::wait_until("the slot is taken", async || metrics.resume_reads_active.get() == 1).await;
    let got = moved.take_events(HISTORY + 8 + 1 + 20, EVENT_TIMEOUT).await;
    kill(pid, Signal::SIGCONT).unwrap();
    drop(blocker);
    let seen = first_words(&got);
    let head: Vec<String> = (1..=HISTORY).map(|i| format!("h{i}")).chain((1..=8).map(|i| format!("l{i}"))).collect();
    assert_eq!(seen[..HISTORY + 8], head[..], "the replay, then the live events the queue kept");
    assert_eq!(got[HISTORY + 8].event.as_deref(), Some("sse-bridge.gap"), "{:?}", got[HISTORY + 8]);
    assert_eq!(gap_of(&got[HISTORY + 8])["reason"], "replay-limit");
    let tail: Vec<String> = (LIVE - 19..=LIVE).map(|i| format!("l{i}")).collect();
    assert_eq!(seen[HISTORY + 9..], tail[..], "the newest events the ring holds");
    js_publish(&js, "orders.live", "after").await;
    assert_eq!(data(&take_no_gap(&mut moved, 1).await), ["after"]);
    assert_eq!(metric(&b, "sse_bridge_disconnects_total{reason=\"slow_consumer\"}").await, 0.0);
}
