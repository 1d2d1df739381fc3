//! OpenTelemetry: the publisher's span is the parent of the bridge's spans, attributes say what
//! happened, and spans reach a real OTLP/HTTP receiver.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use common::brokers::{NatsServer, RedisServer, nats_client, redis_conn, redis_publish};
use common::{
    EVENT_TIMEOUT, TOKEN, nats_config, redis_config, start_app, start_app_traced, sync_on_probe, test_config,
    wait_until,
};
use http_body_util::BodyExt;
use opentelemetry::Value;
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use sse_bridge::telemetry::Telemetry;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PUBLISHER_SPAN: &str = "00f067aa0ba902b7";

fn traceparent() -> String {
    format!("00-{TRACE_ID}-{PUBLISHER_SPAN}-01")
}

fn memory_tracer() -> (Telemetry, InMemorySpanExporter) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    (Telemetry::with_provider(provider), exporter)
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| &kv.value)
}

fn spans_named(exporter: &InMemorySpanExporter, name: &str) -> Vec<SpanData> {
    exporter.get_finished_spans().unwrap().into_iter().filter(|s| s.name == name).collect()
}

/// The receive span whose parent is the publisher's span, and its children.
fn check_event_trace(exporter: &InMemorySpanExporter, topic: &str, system: &str) {
    let trace_id = TraceId::from_hex(TRACE_ID).unwrap();
    let receive = spans_named(exporter, "sse_bridge.receive")
        .into_iter()
        .find(|s| s.span_context.trace_id() == trace_id)
        .expect("a receive span in the publisher's trace");
    assert_eq!(receive.parent_span_id, SpanId::from_hex(PUBLISHER_SPAN).unwrap(), "child of the publisher's span");
    assert_eq!(attr(&receive, "messaging.destination.name"), Some(&Value::from(topic.to_string())));
    assert_eq!(attr(&receive, "messaging.system"), Some(&Value::from(system.to_string())));
    let rid = receive.span_context.span_id();
    let fan_out = spans_named(exporter, "sse_bridge.fan_out")
        .into_iter()
        .find(|s| s.parent_span_id == rid)
        .expect("fan-out span");
    assert_eq!(attr(&fan_out, "sse_bridge.subscribers"), Some(&Value::I64(1)));
    let deliver = spans_named(exporter, "sse_bridge.deliver")
        .into_iter()
        .find(|s| s.parent_span_id == rid)
        .expect("deliver span");
    assert_eq!(deliver.span_context.trace_id(), trace_id);
    assert_eq!(attr(&deliver, "sse_bridge.delivered"), Some(&Value::I64(1)));
    assert_eq!(attr(&deliver, "sse_bridge.dropped"), Some(&Value::I64(0)));
    assert!(attr(&deliver, "sse_bridge.slowest_write_ms").is_some());
}

/// Prints one trace as text (`cargo test --test tracing -- --nocapture`), for the docs.
fn print_trace(exporter: &InMemorySpanExporter, trace_id: TraceId) {
    let spans: Vec<SpanData> =
        exporter.get_finished_spans().unwrap().into_iter().filter(|s| s.span_context.trace_id() == trace_id).collect();
    let t0 = spans.iter().map(|s| s.start_time).min().unwrap();
    let ms = |t: std::time::SystemTime| t.duration_since(t0).unwrap_or_default().as_secs_f64() * 1000.0;
    println!("trace {trace_id}");
    for s in &spans {
        let attrs: Vec<String> = s.attributes.iter().map(|kv| format!("{}={}", kv.key, kv.value)).collect();
        println!(
            "  {} span={} parent={} +{:.3} ms … +{:.3} ms  {}",
            s.name,
            s.span_context.span_id(),
            s.parent_span_id,
            ms(s.start_time),
            ms(s.end_time),
            attrs.join("  ")
        );
    }
}

#[tokio::test]
async fn nats_traceparent_parents_the_bridge_spans() {
    let nats = NatsServer::start().await;
    let (telemetry, exporter) = memory_tracer();
    let mut cfg = test_config();
    cfg.nats = Some(nats_config(&nats.url(), &["traced.>"]));
    let app = start_app_traced(cfg, telemetry).await;
    let client = nats_client(&nats.url()).await;
    let mut probe = app.subscribe(&["traced.probe"]).await;
    sync_on_probe(&mut probe, || async {
        client.publish("traced.probe", Bytes::from_static(b"p")).await.unwrap();
        client.flush().await.unwrap();
    })
    .await;

    let mut s = app.subscribe(&["traced.order"]).await;
    let mut headers = async_nats::HeaderMap::new();
    // Go publishers canonicalise header names; the bridge reads them case-insensitively.
    headers.insert("Traceparent", traceparent().as_str());
    client.publish_with_headers("traced.order", headers, Bytes::from_static(b"hello")).await.unwrap();
    client.flush().await.unwrap();
    assert_eq!(s.next_event(EVENT_TIMEOUT).await.unwrap().data, "hello");
    // The deliver span ends when the last subscriber's write completed: wait for that signal.
    wait_until("deliver span exported", async || {
        spans_named(&exporter, "sse_bridge.deliver")
            .iter()
            .any(|d| d.span_context.trace_id() == TraceId::from_hex(TRACE_ID).unwrap())
    })
    .await;
    check_event_trace(&exporter, "traced.order", "nats");
    print_trace(&exporter, TraceId::from_hex(TRACE_ID).unwrap());

    // The stream has its own span, ended with its reason and event count.
    drop(s);
    wait_until("stream span exported", async || {
        spans_named(&exporter, "sse_bridge.stream")
            .iter()
            .any(|s| attr(s, "sse_bridge.topics") == Some(&Value::from("traced.order".to_string())))
    })
    .await;
    let stream = spans_named(&exporter, "sse_bridge.stream")
        .into_iter()
        .find(|s| attr(s, "sse_bridge.topics") == Some(&Value::from("traced.order".to_string())))
        .unwrap();
    assert_eq!(attr(&stream, "sse_bridge.events"), Some(&Value::I64(1)));
    assert_eq!(attr(&stream, "sse_bridge.end_reason"), Some(&Value::from("client_closed")));
}

#[tokio::test]
async fn redis_envelope_and_publish_header_carry_trace_context() {
    let redis = RedisServer::start().await;
    let (telemetry, exporter) = memory_tracer();
    let mut cfg = test_config();
    let mut rc = redis_config(&redis.url(), &["env"], &[]);
    rc.envelope = true;
    cfg.redis = Some(rc);
    let app = start_app_traced(cfg, telemetry).await;
    app.wait_sources_connected().await;
    let mut s = app.subscribe(&["env", "pub"]).await;
    let mut conn = redis_conn(&redis.url()).await;
    let envelope = serde_json::json!({ "event": "e", "data": "x", "traceparent": traceparent() }).to_string();
    redis_publish(&mut conn, "env", envelope).await;
    assert_eq!(s.next_event(EVENT_TIMEOUT).await.unwrap().data, "x");
    wait_until("redis deliver span", async || !spans_named(&exporter, "sse_bridge.deliver").is_empty()).await;
    check_event_trace(&exporter, "env", "redis");
    exporter.reset();

    let r = common::sse_client::test_client()
        .post(app.url("/publish?topic=pub"))
        .bearer_auth(TOKEN)
        .header("traceparent", traceparent())
        .body("y")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.next_event(EVENT_TIMEOUT).await.unwrap().data, "y");
    wait_until("publish deliver span", async || !spans_named(&exporter, "sse_bridge.deliver").is_empty()).await;
    check_event_trace(&exporter, "pub", "publish");
}

#[tokio::test]
async fn replay_and_gap_are_visible_on_the_stream_span() {
    let (telemetry, exporter) = memory_tracer();
    let app = start_app_traced(test_config(), telemetry).await;
    let first = app.publish("r", None, "a").await;
    app.publish("r", None, "b").await;
    let mut s = app.subscribe_with(&["r"], &[("last-event-id", &first)]).await;
    assert_eq!(s.next_event(EVENT_TIMEOUT).await.unwrap().data, "b");
    drop(s);
    let mut g = app.subscribe_with(&["r"], &[("last-event-id", "garbage")]).await;
    assert_eq!(g.next_event(EVENT_TIMEOUT).await.unwrap().event.as_deref(), Some("sse-bridge.gap"));
    drop(g);
    wait_until("two stream spans", async || spans_named(&exporter, "sse_bridge.stream").len() == 2).await;
    let spans = spans_named(&exporter, "sse_bridge.stream");
    let events: Vec<Vec<String>> =
        spans.iter().map(|s| s.events.iter().map(|e| e.name.to_string()).collect()).collect();
    assert!(events.contains(&vec!["replay".to_string()]), "{events:?}");
    assert!(events.contains(&vec!["gap".to_string(), "replay".to_string()]), "{events:?}");
}

/// A minimal OTLP/HTTP receiver: answers every POST with an empty success and hands the
/// request path, content type and body to the test.
async fn otlp_receiver() -> (std::net::SocketAddr, tokio::sync::mpsc::UnboundedReceiver<(String, String, Bytes)>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let ctype = req
                            .headers()
                            .get("content-type")
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let _ = tx.send((path, ctype, body));
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "application/x-protobuf")
                                .body(http_body_util::Full::new(Bytes::new()))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_http_receiver() {
    let (addr, mut rx) = otlp_receiver().await;
    let mut cfg = test_config();
    cfg.telemetry.traces = true;
    cfg.telemetry.otlp_endpoint = Some(format!("http://{addr}/v1/traces"));
    let app = start_app(cfg).await;
    let mut s = app.subscribe(&["otlp"]).await;
    app.publish("otlp", None, "exported").await;
    assert_eq!(s.next_event(EVENT_TIMEOUT).await.unwrap().data, "exported");
    drop(s);
    // Shutdown flushes the batch exporter.
    app.stop().await;
    let mut names = Vec::new();
    while let Ok(Some((path, ctype, body))) = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
        assert_eq!(path, "/v1/traces");
        assert_eq!(ctype, "application/x-protobuf");
        for name in ["sse_bridge.receive", "sse_bridge.fan_out", "sse_bridge.deliver", "sse_bridge.stream"] {
            if body.windows(name.len()).any(|w| w == name.as_bytes()) {
                names.push(name);
            }
        }
        if names.len() >= 4 {
            break;
        }
    }
    names.sort();
    names.dedup();
    assert_eq!(names, ["sse_bridge.deliver", "sse_bridge.fan_out", "sse_bridge.receive", "sse_bridge.stream"]);
}
