//! Waiting on a signal, never for a fixed time: [`wait_until`] polls a condition (a gauge, a
//! registry count, a metric scraped over HTTP, a log line) until it holds, and fails naming
//! what it waited for. Reading a stream until an event arrives needs no polling and is done by
//! the SSE client itself; [`sync_on_probe`] is the one wait that has to act (publish) to be
//! answered.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::sse_client::{SseEvent, SseStream};

/// How long [`wait_until`] and [`wait_for`] poll before failing: generous for a loaded CI
/// machine, short enough to fail fast.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(15);
/// Time between two polls.
const POLL_EVERY: Duration = Duration::from_millis(10);

/// Polls `cond` every 10 ms until it holds; panics naming `what` after [`WAIT_TIMEOUT`].
/// `cond` is async so it may ask over the network: `wait_until("x", async || …)`.
pub async fn wait_until(what: &str, cond: impl AsyncFnMut() -> bool) {
    if poll(cond, |held| *held).await.is_err() {
        panic!("timed out waiting for: {what}");
    }
}

/// Polls `probe` every 10 ms until `done` accepts what it returned, and returns that; panics
/// naming `what` and the last value seen after [`WAIT_TIMEOUT`].
pub async fn wait_for<T: Debug>(what: &str, probe: impl AsyncFnMut() -> T, done: impl FnMut(&T) -> bool) -> T {
    poll(probe, done).await.unwrap_or_else(|last| panic!("timed out waiting for {what}; last saw {last:?}"))
}

/// The polling loop behind both: `Err` with the last value when the time is up.
async fn poll<T>(mut probe: impl AsyncFnMut() -> T, mut done: impl FnMut(&T) -> bool) -> Result<T, T> {
    let deadline = Instant::now() + WAIT_TIMEOUT;
    loop {
        let value = probe().await;
        if done(&value) {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(value);
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Publishes probes with `publish` until one arrives on `stream`; proves the broker
/// subscription is live end to end. Returns the probe events consumed.
pub async fn sync_on_probe<F, Fut>(stream: &mut SseStream, mut publish: F) -> Vec<SseEvent>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        publish().await;
        match stream.next_event_or_end(Duration::from_millis(200)).await {
            Ok(Some(ev)) => return vec![ev],
            Ok(None) => panic!("stream ended while waiting for a probe"),
            Err(_) => assert!(Instant::now() < deadline, "no probe arrived within 20s"),
        }
    }
}
