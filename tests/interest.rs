//! On-demand upstream interest (`nats.interest` / `redis.interest` = `"on-demand"`), against
//! real brokers: the bridge subscribes upstream only to what its streams hold (checked through
//! the broker's own view: NATS `/connz?subs=1`, Redis `PUBSUB CHANNELS` / `NUMPAT`), a stream
//! starts only once its subscription is confirmed, subscriptions are released a linger after
//! the last stream left, a resume across a release gets a `not-held` gap, a filter outside the
//! allowlist gets `403`, and a broker killed and restarted gets every held subscription back.

mod common;

use futures_util::StreamExt;
use std::time::Duration;

use common::brokers::{NatsServer, RedisServer, nats_client, redis_conn, redis_publish};
use common::events::gap_data;
use common::sse_client::{self, SseError, SseStream};
use common::{
    EVENT_TIMEOUT, TestApp, admin_metrics, nats_config, redis_config, sample, start_app, test_config, wait_until,
};
use sse_bridge::Config;
use sse_bridge::config::InterestMode;

/// The NATS client name the bridge connects with (`nats.client_name`).
const CLIENT: &str = "sse-bridge";

fn nats_on_demand(url: &str, linger: Duration) -> Config {
    let mut c = test_config();
    let mut n = nats_config(url, &["user.>", "doc.*.changes"]);
    n.interest = InterestMode::OnDemand;
    c.nats = Some(n);
    c.interest.linger = linger;
    c
}

fn redis_on_demand(url: &str, linger: Duration) -> Config {
    let mut c = test_config();
    let mut r = redis_config(url, &["news"], &["user.*"]);
    r.interest = InterestMode::OnDemand;
    c.redis = Some(r);
    c.interest.linger = linger;
    c
}

/// The bridge's NATS subscriptions, without the inbox its round trips use.
async fn nats_subs(nats: &NatsServer) -> Vec<String> {
    nats.subscriptions_of(CLIENT).await.into_iter().filter(|s| !s.starts_with("_INBOX.")).collect()
}

async fn redis_channels(conn: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    let mut v: Vec<String> = redis::cmd("PUBSUB").arg("CHANNELS").query_async(conn).await.expect("PUBSUB CHANNELS");
    v.sort();
    v
}

async fn redis_numpat(conn: &mut redis::aio::MultiplexedConnection) -> i64 {
    redis::cmd("PUBSUB").arg("NUMPAT").query_async(conn).await.expect("PUBSUB NUMPAT")
}

/// Returns once the server has processed everything `client` sent before: a message to the
/// client's own inbox comes back. (`flush` only empties the client's socket buffer.)
async fn processed(client: &async_nats::Client) {
    let inbox = client.new_inbox();
    let mut probe = client.subscribe(inbox.clone()).await.unwrap();
    client.publish(inbox, "probe".into()).await.unwrap();
    client.flush().await.unwrap();
    tokio::time::timeout(EVENT_TIMEOUT, probe.next()).await.expect("probe round trip").unwrap();
}

async fn metric(app: &TestApp, series: &str) -> f64 {
    sample(&admin_metrics(app).await, series).unwrap_or(0.0)
}

#[tokio::test]
async fn nats_subscribes_only_what_streams_hold_and_releases_after_linger() {
    let nats = NatsServer::start_monitored().await;
    let app = start_app(nats_on_demand(&nats.url(), Duration::from_millis(300))).await;
    app.wait_sources_connected().await;
    assert!(nats_subs(&nats).await.is_empty(), "nothing is subscribed before a stream holds it");

    // `subscribe` returns once `: ok` arrived: the subscription is in place by then.
    let mut s = app.subscribe(&["user.1"]).await;
    assert_eq!(nats_subs(&nats).await, ["user.1"], "only the held filter, not the allowlist");
    let publisher = nats_client(&nats.url()).await;
    publisher.publish("user.1", "right after ok".into()).await.unwrap();
    publisher.publish("user.2", "nobody holds it".into()).await.unwrap();
    publisher.flush().await.unwrap();
    assert_eq!(s.next_event(EVENT_TIMEOUT).await.expect("the event published after `: ok`").data, "right after ok");

    // A second stream on the same filter shares the subscription.
    let mut s2 = app.subscribe(&["user.1", "doc.*.changes"]).await;
    assert_eq!(nats_subs(&nats).await, ["doc.*.changes", "user.1"]);
    assert_eq!(metric(&app, "sse_bridge_upstream_subscriptions{source=\"nats\"}").await, 2.0);
    publisher.publish("doc.7.changes", "doc".into()).await.unwrap();
    publisher.flush().await.unwrap();
    assert_eq!(s2.next_event(EVENT_TIMEOUT).await.unwrap().data, "doc");

    drop(s);
    drop(s2);
    wait_until("the subscriptions are released after the linger", async || nats_subs(&nats).await.is_empty()).await;
    assert_eq!(metric(&app, "sse_bridge_upstream_subscriptions{source=\"nats\"}").await, 0.0);
    assert_eq!(metric(&app, "sse_bridge_upstream_unsubscribes_total{source=\"nats\"}").await, 2.0);
    assert_eq!(metric(&app, "sse_bridge_events_unwanted_total{source=\"nats\"}").await, 0.0, "user.2 never came");
}

#[tokio::test]
async fn a_resume_within_linger_is_exact_and_after_it_says_not_held() {
    let nats = NatsServer::start_monitored().await;
    let app = start_app(nats_on_demand(&nats.url(), Duration::from_secs(3))).await;
    app.wait_sources_connected().await;
    let publisher = nats_client(&nats.url()).await;
    let publish = async |payload: &'static str| {
        let before = app.state.last_seq.get();
        publisher.publish("user.7", payload.into()).await.unwrap();
        publisher.flush().await.unwrap();
        wait_until("the bridge sequenced it", async || app.state.last_seq.get() > before).await;
    };

    let mut s = app.subscribe(&["user.7"]).await;
    publish("one").await;
    let one = s.next_event(EVENT_TIMEOUT).await.unwrap();
    drop(s);
    // The stream is gone; the subscription lingers and the ring keeps what arrives.
    publish("two").await;
    let mut r = app.resume(&["user.7"], one.id.as_deref().unwrap()).await;
    let two = r.next_event(EVENT_TIMEOUT).await.unwrap();
    assert_eq!((two.event.as_deref(), two.data.as_str()), (None, "two"), "exact: no gap within the linger");
    drop(r);

    wait_until("released after the linger", async || nats_subs(&nats).await.is_empty()).await;
    // Published while nobody holds the filter: this replica never receives it.
    publisher.publish("user.7", "three".into()).await.unwrap();
    processed(&publisher).await;
    let mut late = app.resume(&["user.7"], two.id.as_deref().unwrap()).await;
    let gap = late.next_event(EVENT_TIMEOUT).await.unwrap();
    assert_eq!(gap.event.as_deref(), Some("sse-bridge.gap"));
    let data = gap_data(&gap);
    assert_eq!(data["reason"], "not-held");
    assert_eq!(data["topics"], serde_json::json!(["user.7"]));
    publish("four").await;
    assert_eq!(late.next_event(EVENT_TIMEOUT).await.unwrap().data, "four", "then live");
    assert_eq!(metric(&app, "sse_bridge_gap_events_total{reason=\"not-held\"}").await, 1.0);
}

#[tokio::test]
async fn a_filter_outside_the_allowlist_is_forbidden_with_a_reason() {
    let nats = NatsServer::start().await;
    let app = start_app(nats_on_demand(&nats.url(), Duration::from_secs(1))).await;
    for topic in ["admin.1", "user.1&topic=>", "doc.>"] {
        let url = app.url(&format!("/events?topic={topic}"));
        match sse_client::connect(&url, &[]).await {
            Err(SseError::Status { status, body, .. }) => {
                assert_eq!(status, 403, "{topic}");
                assert!(body.contains("is outside the subjects and channels"), "{topic}: {body}");
                assert_eq!(body.trim_end().lines().count(), 1, "one line: {body}");
            }
            Err(e) => panic!("{topic}: {e:?}"),
            Ok(_) => panic!("{topic}: a stream outside the allowlist opened"),
        }
    }
    assert_eq!(common::rejected_count(&app, "topic_not_allowed").await, 3.0);
    assert_eq!(app.state.interest.table("nats").unwrap().len(), 0, "a refused stream holds nothing");
}

#[tokio::test]
async fn redis_subscribes_channels_and_patterns_on_demand() {
    let redis = RedisServer::start().await;
    let app = start_app(redis_on_demand(&redis.url(), Duration::from_millis(300))).await;
    app.wait_sources_connected().await;
    let mut conn = redis_conn(&redis.url()).await;
    assert!(redis_channels(&mut conn).await.is_empty());
    assert_eq!(redis_numpat(&mut conn).await, 0);

    let mut s = app.subscribe(&["user.1"]).await;
    assert_eq!(redis_channels(&mut conn).await, ["user.1"], "an exact filter is a SUBSCRIBE");
    assert_eq!(redis_numpat(&mut conn).await, 0, "no PSUBSCRIBE for an exact filter");
    assert_eq!(redis_publish(&mut conn, "user.1", "right after ok").await, 1);
    assert_eq!(s.next_event(EVENT_TIMEOUT).await.unwrap().data, "right after ok");

    let mut p = app.subscribe(&["user.*"]).await;
    assert_eq!(redis_numpat(&mut conn).await, 1, "a pattern filter is a PSUBSCRIBE");
    redis_publish(&mut conn, "user.9", "nine").await;
    assert_eq!(p.next_event(EVENT_TIMEOUT).await.unwrap().data, "nine");

    drop(s);
    drop(p);
    wait_until("released after the linger", async || {
        redis_channels(&mut conn).await.is_empty() && redis_numpat(&mut conn).await == 0
    })
    .await;
    let forbidden = sse_client::connect(&app.url("/events?topic=admin"), &[]).await;
    assert!(matches!(forbidden, Err(SseError::Status { status, .. }) if status == 403));
}

/// Opens streams holding `user.0` … `user.{n-1}`, `per_stream` topics each.
async fn hold_many(app: &TestApp, n: usize, per_stream: usize) -> Vec<SseStream> {
    let topics: Vec<String> = (0..n).map(|i| format!("user.{i}")).collect();
    let mut streams = Vec::new();
    for chunk in topics.chunks(per_stream) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        streams.push(app.subscribe(&refs).await);
    }
    streams
}

/// After a broker outage: every stream is told first (`source-outage`, naming its topics),
/// then gets one event from each of its topics: `per_stream` from each.
async fn expect_outage_then_one_each(streams: &mut [SseStream], per_stream: usize) {
    for s in streams.iter_mut() {
        let gap = s.next_event(EVENT_TIMEOUT).await.expect("the outage gap");
        let data = gap_data(&gap);
        assert_eq!(data["reason"], "source-outage", "{data}");
        assert_eq!(data["topics"].as_array().map(Vec::len), Some(per_stream), "{data}");
        let got = s.take_events(per_stream, EVENT_TIMEOUT).await;
        assert!(got.iter().all(|e| e.event.is_none()), "no other gap or control event expected");
    }
}

const HELD: usize = 1000;
const PER_STREAM: usize = 50;

#[tokio::test]
async fn nats_kill9_and_restart_re_establishes_every_held_subscription() {
    let mut nats = NatsServer::start_monitored().await;
    let mut c = nats_on_demand(&nats.url(), Duration::from_secs(60));
    c.server.max_topics_per_connection = PER_STREAM;
    c.interest.batch = 100;
    let app = start_app(c).await;
    app.wait_sources_connected().await;
    let mut streams = hold_many(&app, HELD, PER_STREAM).await;
    assert_eq!(nats_subs(&nats).await.len(), HELD);

    nats.kill9();
    wait_until("the source reports the broker down", async || !app.state.sources[0].is_connected()).await;
    nats.restart().await;
    wait_until("the source reports the broker up again", async || app.state.sources[0].is_connected()).await;
    // Up means re-established: no waiting for the subscriptions after the source says healthy.
    assert_eq!(nats_subs(&nats).await.len(), HELD, "every held subscription, before healthy");

    let publisher = nats_client(&nats.url()).await;
    for i in 0..HELD {
        publisher.publish(format!("user.{i}"), "after".into()).await.unwrap();
    }
    publisher.flush().await.unwrap();
    expect_outage_then_one_each(&mut streams, PER_STREAM).await;
}

#[tokio::test]
async fn redis_kill9_and_restart_re_establishes_every_held_subscription() {
    let mut redis = RedisServer::start().await;
    let mut c = redis_on_demand(&redis.url(), Duration::from_secs(60));
    c.server.max_topics_per_connection = PER_STREAM;
    c.interest.batch = 100;
    let app = start_app(c).await;
    app.wait_sources_connected().await;
    let mut streams = hold_many(&app, HELD, PER_STREAM).await;
    let mut conn = redis_conn(&redis.url()).await;
    assert_eq!(redis_channels(&mut conn).await.len(), HELD);

    redis.kill9();
    wait_until("the source reports the broker down", async || !app.state.sources[0].is_connected()).await;
    redis.restart().await;
    wait_until("the source reports the broker up again", async || app.state.sources[0].is_connected()).await;
    let mut conn = redis_conn(&redis.url()).await;
    assert_eq!(redis_channels(&mut conn).await.len(), HELD, "every held subscription, before healthy");

    for i in 0..HELD {
        redis_publish(&mut conn, &format!("user.{i}"), "after").await;
    }
    expect_outage_then_one_each(&mut streams, PER_STREAM).await;
}

#[tokio::test]
async fn the_default_subscribes_the_whole_configuration_as_before() {
    let nats = NatsServer::start_monitored().await;
    let mut c = test_config();
    c.nats = Some(nats_config(&nats.url(), &["user.>"]));
    let app = start_app(c).await;
    app.wait_sources_connected().await;
    assert_eq!(nats_subs(&nats).await, ["user.>"]);
    // Any topic is admitted (no allowlist), as before.
    let _s = app.subscribe(&["elsewhere"]).await;
    let publisher = nats_client(&nats.url()).await;
    let before = app.state.last_seq.get();
    publisher.publish("user.3", "unwanted".into()).await.unwrap();
    publisher.flush().await.unwrap();
    wait_until("sequenced", async || app.state.last_seq.get() > before).await;
    assert_eq!(metric(&app, "sse_bridge_events_unwanted_total{source=\"nats\"}").await, 1.0);
}

#[tokio::test]
async fn the_caps_refuse_with_a_retry_an_event_source_survives() {
    let nats = NatsServer::start().await;
    let mut c = nats_on_demand(&nats.url(), Duration::from_secs(60));
    c.interest.max_subscriptions = 3;
    c.interest.max_subscriptions_per_ip = 2;
    let app = start_app(c).await;
    app.wait_sources_connected().await;
    let _two = app.subscribe(&["user.1", "user.2"]).await;
    // A third distinct filter from the same address is over its share.
    let mut refused = sse_client::connect(&app.url("/events?topic=user.3"), &[]).await.expect("a 200 refusal stream");
    assert_eq!(refused.headers()["sse-bridge-refusal"], "ip_upstream_limit");
    assert!(refused.next_event_or_end(EVENT_TIMEOUT).await.unwrap().is_none(), "the refusal ends at once");
    assert!(refused.retry().is_some(), "with a retry: hint");
    // Filters already held cost nothing.
    let _shared = app.subscribe(&["user.1"]).await;
    // The global cap (interest.max_subscriptions) is the same check across addresses; its
    // arithmetic is unit-tested in src/interest/caps.rs.
    let table = app.state.interest.table("nats").unwrap();
    assert_eq!(table.len(), 2);
    assert_eq!(common::rejected_count(&app, "ip_upstream_limit").await, 1.0);
}
