//! The bridge in this test's runtime: `start_app()` runs it on `127.0.0.1:0` listeners, with a
//! config whose publish credential is [`TOKEN`] and whose per-IP limits are off.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sse_bridge::config::{NatsConfig, RedisConfig};
use sse_bridge::{App, AppState, Config, RunOutcome};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::sse_client::{self, SseStream};
use super::wait::wait_until;

/// Publish credential used by every test config.
pub const TOKEN: &str = "test-token-0123456789";
/// HS256 secret of the tests' `[auth]` sections (at least 32 bytes, as the bridge requires).
pub const SECRET: &str = "test-secret-0123456789-0123456789-abcdef";
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

    /// Like [`TestApp::subscribe`], resuming after `last_id` (sent as `Last-Event-ID`).
    pub async fn resume(&self, topics: &[&str], last_id: &str) -> SseStream {
        self.subscribe_with(topics, &[("last-event-id", last_id)]).await
    }

    /// Publishes through `POST /publish`; returns the assigned id.
    pub async fn publish(&self, topic: &str, event: Option<&str>, body: impl Into<reqwest::Body>) -> String {
        let mut url = format!("/publish?topic={}", urlencode(topic));
        if let Some(e) = event {
            url.push_str(&format!("&event={}", urlencode(e)));
        }
        publish_at(&self.url(&url), body).await
    }

    /// Waits until every configured broker source reports connected.
    pub async fn wait_sources_connected(&self) {
        wait_until("sources connected", async || self.state.sources.iter().all(|s| s.is_connected())).await;
    }

    /// Stops the bridge like a signal would and returns how the drain went.
    pub async fn stop(mut self) -> RunOutcome {
        self.signal_stop();
        self.handle.take().unwrap().await.unwrap()
    }

    /// Sends the shutdown signal without waiting: the app starts draining (as on SIGTERM)
    /// while the test goes on; [`TestApp::stop`] then waits for the end.
    pub fn signal_stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// `POST url` (a `/publish?topic=…` URL of any bridge, in process or not) with [`TOKEN`];
/// asserts it was accepted and returns the assigned id.
pub async fn publish_at(url: &str, body: impl Into<reqwest::Body>) -> String {
    let r = sse_client::test_client().post(url).bearer_auth(TOKEN).body(body).send().await.expect("publish request");
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "publish answered {status}: {text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["id"].as_str().expect("publish returns an id").to_owned()
}

/// Percent-encodes a query value.
pub fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
