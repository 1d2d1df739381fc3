//! `Last-Event-ID` resume: replay from the rings, no gap and no duplicate at the seam, and the
//! `sse-bridge.gap` signal exactly when completeness cannot be proven.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use common::brokers::{NatsServer, nats_client};
use common::events::{event_id, gap_data};
use common::sse_client::{self, SseStream};
use common::{EVENT_TIMEOUT, TestApp, nats_config, start_app, sync_on_probe, test_config};
use sse_bridge::Config;
use sse_bridge::event::EventId;

fn big_rings() -> Config {
    let mut c = test_config();
    c.replay.max_events_per_topic = 100_000;
    c.replay.max_bytes_per_topic = 256 << 20;
    c.replay.max_total_bytes = 512 << 20;
    c
}

#[tokio::test]
async fn resume_replays_what_was_missed_then_goes_live() {
    let app = start_app(test_config()).await;
    let a = app.publish("t", None, "a").await;
    app.publish("other", None, "not mine").await;
    app.publish("u.1", Some("kind"), "b").await;
    app.publish("t", None, "c").await;

    let mut s = app.resume(&["t", "u.*"], &a).await;
    let got = s.take_events(2, EVENT_TIMEOUT).await;
    assert_eq!(got.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(), ["b", "c"]);
    assert_eq!(got[0].event.as_deref(), Some("kind"), "replayed frames are the original frames");
    app.publish("t", None, "live").await;
    assert_eq!(s.next_event(EVENT_TIMEOUT).await.unwrap().data, "live");

    // The query parameter works for clients that cannot set headers; the header wins over it
    // because browsers update the header on every reconnect while the URL keeps the first id.
    let mut q = sse_client::connect(&app.url(&format!("/events?topic=t&lastEventId={a}")), &[]).await.unwrap();
    assert_eq!(q.next_event(EVENT_TIMEOUT).await.unwrap().data, "c");
    let newest = app.publish("t", None, "d").await;
    let url = app.url(&format!("/events?topic=t&lastEventId={a}"));
    let mut h = sse_client::connect(&url, &[("last-event-id", &newest)]).await.unwrap();
    h.wait_for_comments(1, EVENT_TIMEOUT).await;
    app.publish("t", None, "e").await;
    assert_eq!(h.next_event(EVENT_TIMEOUT).await.unwrap().data, "e", "nothing replayed: the header's id is newest");
}

#[tokio::test]
async fn garbage_and_foreign_ids_get_gap_then_live_only() {
    let app = start_app(test_config()).await;
    app.publish("t", None, "before").await;
    let other_run = EventId { run: 0x123456789abc, seq: 1 }.to_string();
    let ahead = EventId { run: app.state.run_id, seq: 999 }.to_string();
    for (id, reason) in
        [("garbage", "malformed-id"), (other_run.as_str(), "unknown-run"), (ahead.as_str(), "malformed-id")]
    {
        let mut s = app.resume(&["t", "u.*"], id).await;
        let v = gap_data(&s.next_event(EVENT_TIMEOUT).await.unwrap());
        assert_eq!(v["reason"], reason, "{id}");
        assert_eq!(v["topics"], serde_json::json!(["t", "u.*"]));
        assert_eq!(v["last_event_id"], id);
        app.publish("t", None, "after").await;
        assert_eq!(s.next_event(EVENT_TIMEOUT).await.unwrap().data, "after", "live follows the gap; nothing replayed");
    }
}

#[tokio::test]
async fn ids_from_a_restarted_bridge_get_gap() {
    let first = start_app(test_config()).await;
    let old_id = first.publish("t", None, "from the old process").await;
    first.stop().await;
    let second = start_app(test_config()).await;
    second.publish("t", None, "published after the restart").await;
    let mut s = second.resume(&["t"], &old_id).await;
    assert_eq!(gap_data(&s.next_event(EVENT_TIMEOUT).await.unwrap())["reason"], "unknown-run");
}

#[tokio::test]
async fn eviction_by_count_and_by_bytes_is_signalled() {
    let mut cfg = test_config();
    cfg.replay.max_events_per_topic = 5;
    let app = start_app(cfg).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(app.publish("t", None, format!("{i}")).await);
    }
    app.publish("quiet", None, "q").await;
    let mut s = app.resume(&["t", "quiet"], &ids[1]).await;
    let v = gap_data(&s.next_event(EVENT_TIMEOUT).await.unwrap());
    assert_eq!(
        (v["reason"].as_str(), &v["topics"]),
        (Some("evicted"), &serde_json::json!(["t"])),
        "only the topic that lost events"
    );
    let rest = s.take_events(6, EVENT_TIMEOUT).await;
    assert_eq!(
        rest.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
        ["5", "6", "7", "8", "9", "q"],
        "then what it has"
    );
    // From the eviction point on, the resume is complete again: no gap.
    let mut s = app.resume(&["t"], &ids[4]).await;
    assert_eq!(s.next_event(EVENT_TIMEOUT).await.unwrap().data, "5");

    let mut cfg = test_config();
    cfg.replay.max_bytes_per_topic = 3 * 1024;
    let app = start_app(cfg).await;
    let first = app.publish("b", None, "x".repeat(1024)).await;
    for _ in 0..5 {
        app.publish("b", None, "x".repeat(1024)).await;
    }
    let stats = app.state.replay.stats();
    assert!(stats.events < 6 && stats.bytes <= 3 * 1024, "{stats:?}");
    let mut s = app.resume(&["b"], &first).await;
    assert_eq!(gap_data(&s.next_event(EVENT_TIMEOUT).await.unwrap())["reason"], "evicted");
}

/// Publishes `per_topic` numbered events on each topic, one sequential publisher per topic,
/// as fast as the bridge accepts them.
fn spawn_publishers(app: &TestApp, topics: &[&str], per_topic: usize) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    for t in topics {
        let (t, url) = (t.to_string(), app.url(&format!("/publish?topic={t}")));
        set.spawn(async move {
            let http = sse_client::test_client();
            for i in 0..per_topic {
                let r = http.post(&url).bearer_auth(common::TOKEN).body(format!("{t}:{i}")).send().await.unwrap();
                assert_eq!(r.status(), 200);
            }
        });
    }
    set
}

/// Reads until `want` events per topic arrived, dropping the connection after every
/// `disconnect_after` events (plus whenever the server ends it) and resuming with the last id.
/// Checks every event: ids strictly increase across reconnects, per-topic numbering is exactly
/// 0, 1, 2, … (no gap, no duplicate, order kept), and no gap signal was sent.
async fn follow_with_resumes(
    app: &TestApp,
    first: SseStream,
    topics: &[&str],
    published: &[&str],
    want: usize,
    disconnect_after: usize,
) -> usize {
    let mut first = Some(first);
    let mut next_n: HashMap<String, usize> = published.iter().map(|t| (t.to_string(), 0)).collect();
    let mut last_id: Option<String> = None;
    let mut last_seq = 0;
    let mut reconnects = 0;
    while next_n.values().any(|&n| n < want) {
        let mut s = match (first.take(), &last_id) {
            (Some(s), _) => s,
            (None, Some(id)) => app.resume(topics, id).await,
            (None, None) => app.subscribe(topics).await,
        };
        reconnects += 1;
        let mut taken = 0;
        while taken < disconnect_after && next_n.values().any(|&n| n < want) {
            let Some(e) = s.next_event(EVENT_TIMEOUT).await else { break };
            assert_ne!(e.event.as_deref(), Some("sse-bridge.gap"), "no gap expected: {}", e.data);
            let (topic, n) = e.data.split_once(':').unwrap();
            let n: usize = n.parse().unwrap();
            let seq = event_id(&e).seq;
            assert!(seq > last_seq, "ids increase: {seq} after {last_seq}");
            last_seq = seq;
            let expected = next_n.get_mut(topic).unwrap_or_else(|| panic!("unexpected topic {topic}"));
            assert_eq!(n, *expected, "topic {topic}: got #{n}, expected #{expected} (gap or duplicate)");
            *expected += 1;
            last_id = e.id.clone();
            taken += 1;
        }
    }
    reconnects
}

async fn resume_under_load(topics: &[&str], published: &[&str]) {
    let app = start_app(big_rings()).await;
    let per_topic = 400;
    // Subscribe before the publishers start, so the first connection sees #0 of every topic.
    let first = app.subscribe(topics).await;
    let mut pubs = spawn_publishers(&app, published, per_topic);
    let reconnects = follow_with_resumes(&app, first, topics, published, per_topic, 37).await;
    while let Some(r) = pubs.join_next().await {
        r.unwrap();
    }
    assert!(reconnects >= (per_topic * published.len()) / 37, "the reader really disconnected ({reconnects})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_one_topic_under_load() {
    resume_under_load(&["one"], &["one"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_three_topics_under_load() {
    resume_under_load(&["a", "b", "c"], &["a", "b", "c"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_pattern_topics_under_load() {
    resume_under_load(&["p.*", "q.>"], &["p.1", "p.2", "q.x.y"]).await;
}

/// Many clients, random disconnect points, one publisher flood: every client sees every event
/// of its topics exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_random_reconnects_see_everything_exactly_once() {
    let app = Arc::new(start_app(big_rings()).await);
    let published = ["s.a", "s.b", "s.c", "s.d"];
    let per_topic = 250;
    let subsets: Vec<Vec<&'static str>> =
        vec![vec!["s.a"], vec!["s.*"], vec!["s.b", "s.d"], vec!["s.a", "s.*"], vec!["s.>"], vec!["s.c", "s.a", "s.b"]];
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..12usize {
        let topics = subsets[i % subsets.len()].clone();
        let first = app.subscribe(&topics).await;
        let app = app.clone();
        clients.spawn(async move {
            let expected: Vec<&str> =
                published.iter().copied().filter(|p| topics.iter().any(|t| topic_matches(t, p))).collect();
            // A different disconnect rhythm per client: 7, 18, 29, … events per connection.
            follow_with_resumes(&app, first, &topics, &expected, per_topic, 7 + 11 * i).await
        });
    }
    let mut pubs = spawn_publishers(&app, &published, per_topic);
    while let Some(r) = pubs.join_next().await {
        r.unwrap();
    }
    while let Some(r) = clients.join_next().await {
        r.unwrap();
    }
}

fn topic_matches(filter: &str, topic: &str) -> bool {
    sse_bridge::topic::TopicFilter::parse(filter, 256).unwrap().matches(topic)
}

/// A bridge on a private nats-server bridging `subjects` (and `probe`), with its NATS
/// subscription proven live; returns the bridge, the publisher and the server (kept alive).
async fn bridge_on_nats(mut cfg: Config, subjects: &[&str]) -> (TestApp, async_nats::Client, NatsServer) {
    let nats = NatsServer::start().await;
    let mut subjects = subjects.to_vec();
    subjects.push("probe");
    cfg.nats = Some(nats_config(&nats.url(), &subjects));
    let app = start_app(cfg).await;
    let client = nats_client(&nats.url()).await;
    let mut probe = app.subscribe(&["probe"]).await;
    sync_on_probe(&mut probe, || async {
        client.publish("probe", Bytes::from_static(b"p")).await.unwrap();
        client.flush().await.unwrap();
    })
    .await;
    (app, client, nats)
}

/// Publishes `payload` on `subject` and returns the id the bridge gave it, read from `live`
/// (a stream subscribed to the subject).
async fn publish_nats(client: &async_nats::Client, live: &mut SseStream, subject: &str, payload: &str) -> String {
    client.publish(subject.to_owned(), Bytes::from(payload.to_owned())).await.unwrap();
    client.flush().await.unwrap();
    let e = live.next_event(EVENT_TIMEOUT).await.expect("the live stream gets the event");
    assert_eq!(e.data, payload);
    e.id.expect("events carry an id")
}

/// Issue 16, item 2: with replay turned off (either way), a resume from an id of this run
/// older than the newest event gets an `evicted` gap for all its filters, never a silent skip.
#[tokio::test]
async fn replay_off_resume_gets_an_evicted_gap() {
    for (events, bytes) in [(0, 64 << 20), (1000, 0)] {
        let mut cfg = test_config();
        cfg.replay.max_events_per_topic = events;
        cfg.replay.max_total_bytes = bytes;
        let (app, client, _nats) = bridge_on_nats(cfg, &["off.>"]).await;
        let mut live = app.subscribe(&["off.>"]).await;
        let first = publish_nats(&client, &mut live, "off.a", "1").await;
        publish_nats(&client, &mut live, "off.a", "2").await;
        publish_nats(&client, &mut live, "off.b", "3").await;
        assert_eq!(app.state.replay.stats().events, 0, "replay is off: nothing retained");

        let mut s = app.resume(&["off.a", "off.*"], &first).await;
        let v = gap_data(&s.next_event(EVENT_TIMEOUT).await.unwrap());
        assert_eq!(v["reason"], "evicted", "max_events_per_topic = {events}, max_total_bytes = {bytes}");
        assert_eq!(v["topics"], serde_json::json!(["off.*", "off.a"]));
        assert_eq!(v["last_event_id"], first.as_str());
        let newest = publish_nats(&client, &mut live, "off.a", "4").await;
        assert_eq!(s.next_event(EVENT_TIMEOUT).await.unwrap().data, "4", "then live");

        // From the newest id nothing was missed: no gap.
        let mut s = app.resume(&["off.a"], &newest).await;
        publish_nats(&client, &mut live, "off.a", "5").await;
        assert_eq!(s.next_event(EVENT_TIMEOUT).await.unwrap().data, "5", "no gap from the newest id");
    }
}

/// Issue 16, item 3: a ring forgotten at `replay.max_topics` that comes back (a new event on
/// its topic) still knows that events were lost: an old id gets an `evicted` gap, then what the
/// new ring holds.
#[tokio::test]
async fn a_forgotten_ring_that_comes_back_reports_the_loss() {
    let mut cfg = test_config();
    cfg.replay.max_topics = 3;
    let (app, client, _nats) = bridge_on_nats(cfg, &["fg.>"]).await;
    let mut live = app.subscribe(&["fg.>"]).await;
    // Rings: probe, fg.a → + fg.b → + fg.c forgets probe → + fg.d forgets fg.a.
    let a1 = publish_nats(&client, &mut live, "fg.a", "a1").await;
    publish_nats(&client, &mut live, "fg.a", "a2").await;
    for t in ["fg.b", "fg.c", "fg.d"] {
        publish_nats(&client, &mut live, t, t).await;
    }
    publish_nats(&client, &mut live, "fg.a", "a3").await; // fg.a comes back, forgets fg.b
    assert_eq!(app.state.replay.stats().topics, 3);

    let mut s = app.resume(&["fg.a"], &a1).await;
    let v = gap_data(&s.next_event(EVENT_TIMEOUT).await.unwrap());
    assert_eq!((v["reason"].as_str(), &v["topics"]), (Some("evicted"), &serde_json::json!(["fg.a"])), "a2 was lost");
    assert_eq!(s.next_event(EVENT_TIMEOUT).await.unwrap().data, "a3", "then what the ring holds");
    // The same for a pattern resume.
    let mut s = app.resume(&["fg.*"], &a1).await;
    assert_eq!(gap_data(&s.next_event(EVENT_TIMEOUT).await.unwrap())["reason"], "evicted");
}
