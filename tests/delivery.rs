//! Messages from every source reach SSE clients over real HTTP, framed per SPEC.md.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::brokers::{NatsServer, RedisServer, nats_client, redis_conn, redis_publish};
use common::events::event_id;
use common::sse_client::{self, SseStream};
use common::{EVENT_TIMEOUT, TOKEN, nats_config, redis_config, start_app, sync_on_probe, test_config};

async fn next(s: &mut SseStream) -> common::sse_client::SseEvent {
    s.next_event(EVENT_TIMEOUT).await.expect("stream open")
}

#[tokio::test]
async fn nats_messages_with_and_without_event_header() {
    let nats = NatsServer::start().await;
    let mut cfg = test_config();
    cfg.nats = Some(nats_config(&nats.url(), &["orders.>", "probe"]));
    let app = start_app(cfg).await;
    let client = nats_client(&nats.url()).await;

    let mut probe = app.subscribe(&["probe"]).await;
    sync_on_probe(&mut probe, || async {
        client.publish("probe", Bytes::from_static(b"p")).await.unwrap();
        client.flush().await.unwrap();
    })
    .await;

    let mut exact = app.subscribe(&["orders.1"]).await;
    let mut star = app.subscribe(&["orders.*"]).await;
    let mut tail = app.subscribe(&["orders.>"]).await;

    client.publish("orders.1", Bytes::from_static(b"plain")).await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Sse-Event", "order.created");
    client
        .publish_with_headers("orders.1", headers, Bytes::from_static(b"line1\nline2\r\nline3\rline4"))
        .await
        .unwrap();
    // Go clients send canonicalised header names; the bridge must not care.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("SSE-EVENT", "shouty");
    client.publish_with_headers("orders.2.deep", headers, Bytes::from_static(b"deep")).await.unwrap();
    client.flush().await.unwrap();

    let a = next(&mut exact).await;
    assert_eq!((a.event.as_deref(), a.data.as_str()), (None, "plain"));
    let b = next(&mut exact).await;
    assert_eq!(b.event.as_deref(), Some("order.created"));
    assert_eq!(b.data, "line1\nline2\nline3\nline4");
    assert!(event_id(&b).seq > event_id(&a).seq);

    let s1 = next(&mut star).await;
    let s2 = next(&mut star).await;
    assert_eq!((s1.data.as_str(), s2.data.as_str()), ("plain", "line1\nline2\nline3\nline4"));
    assert_eq!((s1.id.clone(), s2.id.clone()), (a.id.clone(), b.id.clone()), "one id per event, whoever receives it");

    let t: Vec<_> = tail.take_events(3, EVENT_TIMEOUT).await;
    assert_eq!(t.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(), ["plain", "line1\nline2\nline3\nline4", "deep"]);
    assert_eq!(t[2].event.as_deref(), Some("shouty"));
}

#[tokio::test]
async fn redis_channels_patterns_and_envelopes() {
    let redis = RedisServer::start().await;
    let mut cfg = test_config();
    cfg.redis = Some(redis_config(&redis.url(), &["chat:lobby", "probe"], &["room.*"]));
    let app = start_app(cfg).await;
    let mut conn = redis_conn(&redis.url()).await;

    let mut probe = app.subscribe(&["probe"]).await;
    let c2 = conn.clone();
    sync_on_probe(&mut probe, || {
        let mut c = c2.clone();
        async move {
            redis_publish(&mut c, "probe", "p").await;
        }
    })
    .await;

    let mut lobby = app.subscribe(&["chat:lobby"]).await;
    let mut rooms = app.subscribe(&["room.*"]).await;
    assert_eq!(redis_publish(&mut conn, "chat:lobby", "hello\r\nworld").await, 1);
    redis_publish(&mut conn, "room.42", "in room 42").await;
    redis_publish(&mut conn, "room.42.sub", "not matched by room.*").await;
    redis_publish(&mut conn, "room.43", "in room 43").await;

    let e = next(&mut lobby).await;
    assert_eq!(e.data, "hello\nworld");
    assert_eq!(e.event, None);
    let r1 = next(&mut rooms).await;
    let r2 = next(&mut rooms).await;
    assert_eq!((r1.data.as_str(), r2.data.as_str()), ("in room 42", "in room 43"));
    assert!(event_id(&r2).seq > event_id(&r1).seq);
}

#[tokio::test]
async fn redis_envelope_names_event_types_and_drops_garbage() {
    let redis = RedisServer::start().await;
    let mut cfg = test_config();
    let mut rc = redis_config(&redis.url(), &["env"], &[]);
    rc.envelope = true;
    cfg.redis = Some(rc);
    let app = start_app(cfg).await;
    let mut conn = redis_conn(&redis.url()).await;
    let mut s = app.subscribe(&["env"]).await;
    let c2 = conn.clone();
    sync_on_probe(&mut s, || {
        let mut c = c2.clone();
        async move {
            redis_publish(&mut c, "env", r#"{"event":"probe","data":"p"}"#).await;
        }
    })
    .await;
    // Drain probes that may still be in flight.
    let marker = format!("{}", rand_u64());
    redis_publish(&mut conn, "env", format!(r#"{{"event":"marker","data":"{marker}"}}"#)).await;
    loop {
        if next(&mut s).await.data == marker {
            break;
        }
    }

    redis_publish(&mut conn, "env", "not json at all").await;
    redis_publish(&mut conn, "env", r#"{"event":"price","data":"101.5"}"#).await;
    redis_publish(&mut conn, "env", r#"{"data":{"a":[1,2]}}"#).await;
    let a = next(&mut s).await;
    assert_eq!((a.event.as_deref(), a.data.as_str()), (Some("price"), "101.5"));
    let b = next(&mut s).await;
    assert_eq!((b.event.as_deref(), b.data.as_str()), (None, r#"{"a":[1,2]}"#));
    assert_eq!(app.state.sources[0].malformed(), 1, "the non-envelope message is counted");
}

fn rand_u64() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

#[tokio::test]
async fn publish_endpoint_frames_byte_for_byte() {
    let app = start_app(test_config()).await;
    let mut s = app.subscribe(&["news", "sport.*"]).await;
    assert_eq!(s.headers()["content-type"], "text/event-stream");
    assert_eq!(s.headers()["cache-control"], "no-cache");
    assert_eq!(s.headers()["x-accel-buffering"], "no");
    assert_eq!(s.retry(), Some(2000), "retry: announced in the opening frame");

    let payloads: [&[u8]; 6] =
        [b"one", b"multi\nline\n", b"crlf\r\nline", b"cr\ronly", b"  leading spaces", "unicode é☃".as_bytes()];
    let mut ids = Vec::new();
    for p in payloads {
        ids.push(app.publish("news", None, p.to_vec()).await);
    }
    ids.push(app.publish("sport.tennis", Some("score"), "15-0").await);
    app.publish("weather", None, "not subscribed").await;
    let got = s.take_events(7, EVENT_TIMEOUT).await;
    let want = ["one", "multi\nline\n", "crlf\nline", "cr\nonly", "  leading spaces", "unicode é☃", "15-0"];
    assert_eq!(got.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(), want);
    assert_eq!(got.iter().map(|e| e.id.clone().unwrap()).collect::<Vec<_>>(), ids, "ids as returned by /publish");
    assert_eq!(got[6].event.as_deref(), Some("score"));
    assert!(got.windows(2).all(|w| event_id(&w[0]).seq < event_id(&w[1]).seq), "ids increase");
}

#[tokio::test]
async fn non_utf8_payload_is_replaced_and_counted() {
    let app = start_app(test_config()).await;
    let mut s = app.subscribe(&["bin"]).await;
    app.publish("bin", None, vec![b'o', b'k', 0xff, 0xfe]).await;
    app.publish("bin", None, "after").await;
    assert_eq!(next(&mut s).await.data, "ok\u{fffd}\u{fffd}");
    assert_eq!(next(&mut s).await.data, "after", "the stream survives");
    let metrics = reqwest::get(app.admin_url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("sse_bridge_events_non_utf8_total 1"), "{metrics}");
}

#[tokio::test]
async fn publish_is_refused_without_configured_token() {
    let mut cfg = test_config();
    cfg.publish.token = None;
    let app = start_app(cfg).await;
    let r =
        sse_client::test_client().post(app.url("/publish?topic=a")).bearer_auth(TOKEN).body("x").send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("publish.token"));
}

#[tokio::test]
async fn bad_requests_get_one_line_reasons() {
    let mut cfg = test_config();
    cfg.server.max_topics_per_connection = 3;
    cfg.publish.max_body_bytes = 16;
    let app = start_app(cfg).await;
    let http = sse_client::test_client();
    let cases: &[(&str, &str, u16, &str)] = &[
        ("GET", "/events", 400, "no topic"),
        ("GET", "/events?topic=a.%3E.b", 400, "must be the last token"),
        ("GET", "/events?topic=a%20b", 400, "whitespace"),
        ("GET", "/events?topic=a&topic=b&topic=c&topic=d", 400, "too many topics"),
        ("POST", "/events?topic=a", 405, "method not allowed"),
        ("GET", "/nope", 404, "no such endpoint"),
        ("POST", "/publish?topic=a.*", 400, "pattern"),
        ("POST", "/publish", 400, "no topic"),
        ("POST", "/publish?topic=a&event=sse-bridge.gap", 400, "event type"),
    ];
    for (method, path, status, reason) in cases {
        let r = http.request(method.parse().unwrap(), app.url(path)).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(r.status().as_u16(), *status, "{method} {path}");
        let body = r.text().await.unwrap();
        assert!(body.contains(reason), "{method} {path}: {body:?} lacks {reason:?}");
        assert_eq!(body.trim_end().lines().count(), 1, "one line: {body:?}");
    }
    let r = http.post(app.url("/publish?topic=a")).body("x").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let r = http.post(app.url("/publish?topic=a")).bearer_auth("wrong-token-xxxx").body("x").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http.post(app.url("/publish?topic=a")).bearer_auth(TOKEN).body(vec![b'x'; 17]).send().await.unwrap();
    assert_eq!(r.status(), 413);
}

#[tokio::test]
async fn cors_allowlist_is_exact() {
    let mut cfg = test_config();
    cfg.server.cors_origins = vec!["https://app.example".into()];
    let app = start_app(cfg).await;
    let ok = app.subscribe_with(&["t"], &[("origin", "https://app.example")]).await;
    assert_eq!(ok.headers()["access-control-allow-origin"], "https://app.example");
    let other = app.subscribe_with(&["t"], &[("origin", "https://evil.example")]).await;
    assert!(other.headers().get("access-control-allow-origin").is_none(), "an unlisted origin is never reflected");
    let pre = sse_client::test_client()
        .request(reqwest::Method::OPTIONS, app.url("/events?topic=t"))
        .header("origin", "https://app.example")
        .header("access-control-request-headers", "last-event-id")
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), 204);
    assert!(pre.headers()["access-control-allow-headers"].to_str().unwrap().contains("Last-Event-ID"));

    let app2 = start_app(test_config()).await;
    let none = app2.subscribe_with(&["t"], &[("origin", "https://app.example")]).await;
    assert!(none.headers().get("access-control-allow-origin").is_none(), "no cross-origin access by default");
}

#[tokio::test]
async fn quiet_streams_get_heartbeats() {
    let mut cfg = test_config();
    cfg.server.heartbeat_interval = Duration::from_millis(200);
    let app = start_app(cfg).await;
    let mut s = app.subscribe(&["quiet"]).await;
    let before = s.comments_seen();
    s.wait_for_comments(before + 2, Duration::from_secs(5)).await;
}
