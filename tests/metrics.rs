//! `/metrics` moves with real traffic: connect 10, publish 100, disconnect.

mod common;

use common::{EVENT_TIMEOUT, TOKEN, sample, start_app, test_config, wait_until};

async fn scrape(app: &common::TestApp) -> String {
    let r = reqwest::get(app.admin_url("/metrics")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    r.text().await.unwrap()
}

/// The value of a sample line `name{labels} value` (exact series name with labels).
fn value(metrics: &str, series: &str) -> f64 {
    sample(metrics, series).unwrap_or_else(|| panic!("no series {series} in:\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_connect_publish_disconnect() {
    let app = start_app(test_config()).await;
    let before = scrape(&app).await;
    assert_eq!(value(&before, "sse_bridge_open_streams"), 0.0);
    for name in [
        "sse_bridge_resident_memory_bytes",
        "sse_bridge_heap_allocated_bytes",
        "sse_bridge_process_cpu_seconds_total",
        "sse_bridge_tokio_alive_tasks",
    ] {
        assert!(value(&before, name) >= 0.0, "{name}");
    }
    assert!(value(&before, "sse_bridge_resident_memory_bytes") > 0.0);

    let mut streams = Vec::new();
    for _ in 0..10 {
        streams.push(app.subscribe(&["m"]).await);
    }
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let http = common::sse_client::test_client();
    for i in 0..100 {
        let r = http
            .post(app.url("/publish?topic=m"))
            .bearer_auth(TOKEN)
            .header("sse-published-at", now_ms.to_string())
            .body(format!("{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    for s in &mut streams {
        let got = s.take_events(100, EVENT_TIMEOUT).await;
        assert_eq!(got.last().unwrap().data, "99");
    }
    let during = scrape(&app).await;
    assert_eq!(value(&during, "sse_bridge_open_streams"), 10.0);
    // The 10 streams, plus any keep-alive connections the publishing client pools.
    assert!(value(&during, "sse_bridge_open_connections") >= 10.0);
    assert_eq!(value(&during, "sse_bridge_streams_opened_total"), 10.0);
    assert_eq!(value(&during, "sse_bridge_events_received_total{source=\"publish\"}"), 100.0);
    assert_eq!(value(&during, "sse_bridge_deliveries_total"), 1000.0);
    assert_eq!(value(&during, "sse_bridge_replay_retained_events"), 100.0);
    assert!(value(&during, "sse_bridge_replay_retained_bytes") > 0.0);
    // Streams are spread round-robin over 16 shards; each shard indexes "m" once.
    assert_eq!(value(&during, "sse_bridge_subscription_filters"), 10.0);
    // Every write was timed (before the clients could read it), from arrival and from the
    // publisher's own timestamp.
    assert_eq!(value(&during, "sse_bridge_delivery_latency_seconds_count"), 1000.0);
    assert_eq!(value(&during, "sse_bridge_publish_latency_seconds_count"), 1000.0);
    assert_eq!(value(&during, "sse_bridge_queue_depth_streams{le=\"+Inf\"}"), 10.0);

    drop(streams);
    wait_until("streams released", async || app.state.registry.subscriber_count() == 0).await;
    let after = scrape(&app).await;
    assert_eq!(value(&after, "sse_bridge_open_streams"), 0.0);
    assert_eq!(value(&after, "sse_bridge_disconnects_total{reason=\"client_closed\"}"), 10.0);
    assert_eq!(value(&after, "sse_bridge_subscription_filters"), 0.0);
}
