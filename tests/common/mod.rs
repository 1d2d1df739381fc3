//! Shared test support: private brokers, an SSE client, and `start_app()`, which runs the
//! bridge in process on `127.0.0.1:0` listeners.

#![allow(dead_code)]

pub mod brokers;
pub mod sse_client;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sse_bridge::config::{NatsConfig, RedisConfig};
use sse_bridge::{App, AppState, Config, RunOutcome};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use sse_client::{SseEvent, SseStream};

/// Publish credential used by every test config.
pub const TOKEN: &str = "test-token-0123456789";
/// Generous per-event wait: long enough for a loaded CI machine, short enough to fail fast.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A bridge running in this test's runtime.
pub struct TestApp {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<RunOutcome>>,
}

/// A config for tests: publish enabled with [`TOKEN`], listeners chosen by `start_app`.
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.publish.token = Some(TOKEN.into());
    c.server.drain_timeout = Duration::from_secs(5);
    // Tests open hundreds of streams from 127.0.0.1 in a burst; the limits have their own tests.
    c.limits.connect_rate_per_ip = 0;
    c.limits.max_streams_per_ip = 0;
    c
}

/// A NATS source section for a private server.
pub fn nats_config(url: &str, subjects: &[&str]) -> NatsConfig {
    NatsConfig {
        url: url.into(),
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
        reconnect_max_delay: Duration::from_millis(500),
        ..NatsConfig::default()
    }
}

/// A Redis source section for a private server.
pub fn redis_config(url: &str, channels: &[&str], patterns: &[&str]) -> RedisConfig {
    RedisConfig {
        url: url.into(),
        channels: channels.iter().map(|s| s.to_string()).collect(),
        patterns: patterns.iter().map(|s| s.to_string()).collect(),
        reconnect_max_delay: Duration::from_millis(500),
        ..RedisConfig::default()
    }
}

/// Starts the bridge on fresh loopback ports and returns once it accepts connections.
pub async fn start_app(config: Config) -> TestApp {
    config.validate().expect("test config is valid");
    start(App::new(config)).await
}

/// Like [`start_app`] with a given tracer (e.g. one exporting to memory).
pub async fn start_app_traced(config: Config, telemetry: sse_bridge::telemetry::Telemetry) -> TestApp {
    config.validate().expect("test config is valid");
    start(App::with_telemetry(config, telemetry)).await
}

/// Like [`start_app`] on a given public listener (a restarted bridge on the same port).
pub async fn start_app_on(config: Config, listener: TcpListener) -> TestApp {
    config.validate().expect("test config is valid");
    start_with(App::new(config), listener).await
}

async fn start(app: App) -> TestApp {
    start_with(app, TcpListener::bind("127.0.0.1:0").await.unwrap()).await
}

async fn start_with(app: App, listener: TcpListener) -> TestApp {
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, admin_addr) = (listener.local_addr().unwrap(), admin.local_addr().unwrap());
    let state = app.state();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(app.run(listener, admin, async move {
        let _ = rx.await;
    }));
    TestApp { addr, admin: admin_addr, state, stop: Some(tx), handle: Some(handle) }
}

impl TestApp {
    /// `http://addr/path`.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    /// `http://admin/path`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// Opens `/events` for `topics` and waits for the opening comment, so the subscription is
    /// registered when this returns.
    pub async fn subscribe(&self, topics: &[&str]) -> SseStream {
        self.subscribe_with(topics, &[]).await
    }

    /// Like [`TestApp::subscribe`] with extra request headers.
    pub async fn subscribe_with(&self, topics: &[&str], headers: &[(&str, &str)]) -> SseStream {
        let q: Vec<String> = topics.iter().map(|t| format!("topic={}", urlencode(t))).collect();
        let mut s =
            sse_client::connect(&self.url(&format!("/events?{}", q.join("&"))), headers).await.expect("stream opens");
        s.wait_for_comments(1, EVENT_TIMEOUT).await;
        s
    }

    /// Publishes through `POST /publish`; returns the assigned id.
    pub async fn publish(&self, topic: &str, event: Option<&str>, body: impl Into<reqwest::Body>) -> String {
        let mut url = format!("/publish?topic={}", urlencode(topic));
        if let Some(e) = event {
            url.push_str(&format!("&event={}", urlencode(e)));
        }
        let r = sse_client::test_client()
            .post(self.url(&url))
            .bearer_auth(TOKEN)
            .body(body)
            .send()
            .await
            .expect("publish request");
        assert_eq!(r.status(), 200, "publish answered {}", r.status());
        let v: serde_json::Value = r.json().await.unwrap();
        v["id"].as_str().unwrap().to_owned()
    }

    /// Waits until every configured broker source reports connected.
    pub async fn wait_sources_connected(&self) {
        wait_until("sources connected", || self.state.sources.iter().all(|s| s.is_connected())).await;
    }

    /// Stops the bridge like a signal would and returns how the drain went.
    pub async fn stop(mut self) -> RunOutcome {
        let _ = self.stop.take().unwrap().send(());
        self.handle.take().unwrap().await.unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Polls a condition every 10 ms until it holds (a signal, not a fixed sleep); panics after 15 s.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Publishes probes with `publish` until one arrives on `stream`; proves the broker
/// subscription is live end to end. Returns the probe events consumed.
pub async fn sync_on_probe<F, Fut>(stream: &mut SseStream, mut publish: F) -> Vec<SseEvent>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        publish().await;
        match stream.next_event_or_end(Duration::from_millis(200)).await {
            Ok(Some(ev)) => return vec![ev],
            Ok(None) => panic!("stream ended while waiting for a probe"),
            Err(_) => assert!(tokio::time::Instant::now() < deadline, "no probe arrived within 20s"),
        }
    }
}

/// Scrapes the admin listener's `/metrics`.
pub async fn admin_metrics(app: &TestApp) -> String {
    let r = sse_client::test_client().get(app.admin_url("/metrics")).send().await.expect("GET /metrics");
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// The value of the sample named exactly `series` (name plus labels) in a metrics text.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Percent-encodes a query value.
pub fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
