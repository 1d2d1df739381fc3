//! Graceful shutdown of the real binary: SIGTERM/SIGINT end every open stream and the process
//! exits 0 within the drain time (SPEC.md, Operations).

mod common;

use std::time::{Duration, Instant};

use common::bridge_process::BridgeProcess;
use common::sse_client::{self, SseStream};
use common::{EVENT_TIMEOUT, TOKEN};
use nix::sys::signal::Signal;
use tokio::task::JoinSet;

/// `server.drain_timeout` in the test config.
const DRAIN: Duration = Duration::from_secs(5);
/// Slack on top of the drain time for process teardown on a loaded machine.
const MARGIN: Duration = Duration::from_secs(2);

/// Starts the binary on a temp config (no brokers, publish enabled, drain time [`DRAIN`]);
/// returns once its public listener accepts connections.
fn start_bridge() -> BridgeProcess {
    let extra = format!(
        "[publish]\ntoken = \"{TOKEN}\"\n\n\
         # 100 streams from 127.0.0.1 in one burst; the limits have their own tests.\n\
         [limits]\nconnect_rate_per_ip = 0\nmax_streams_per_ip = 0\n"
    );
    BridgeProcess::start(&extra, &[("SSE_BRIDGE_SERVER__DRAIN_TIMEOUT", &format!("{}s", DRAIN.as_secs()))])
}

/// Opens `n` streams on topic `t`, each on its own connection, all concurrently; returns once
/// every one has received its opening comment (so it is registered).
async fn open_streams(bridge: &BridgeProcess, n: usize) -> Vec<SseStream> {
    let mut set = JoinSet::new();
    for _ in 0..n {
        let url = bridge.url("/events?topic=t");
        set.spawn(async move {
            let mut s = sse_client::connect(&url, &[]).await.unwrap_or_else(|e| panic!("opening a stream: {e}"));
            s.wait_for_comments(1, EVENT_TIMEOUT).await;
            s
        });
    }
    let streams: Vec<SseStream> = set.join_all().await;
    assert_eq!(streams.len(), n);
    streams
}

/// Publishes one event and checks that every stream got exactly it.
async fn publish_and_check_all(bridge: &BridgeProcess, streams: &mut [SseStream]) {
    let id = bridge.publish("t", "before shutdown").await;
    for (i, s) in streams.iter_mut().enumerate() {
        let ev = s.next_event(EVENT_TIMEOUT).await.unwrap_or_else(|| panic!("stream {i} ended before the event"));
        assert_eq!(ev.data, "before shutdown", "stream {i}");
        assert_eq!(ev.id.as_deref(), Some(id.as_str()), "stream {i}");
    }
}

/// Sends `sig`, then checks that every stream ends cleanly and the process exits 0 within the
/// drain time. Returns (time from signal to exit, time from signal to the last stream's end).
async fn signal_and_check(bridge: BridgeProcess, streams: Vec<SseStream>, sig: Signal) -> (Duration, Duration, String) {
    let BridgeProcess { mut daemon, dir: _dir, .. } = bridge;
    let n = streams.len();
    let sent = Instant::now();
    daemon.signal(sig);

    // Read every stream to its end while the process shuts down.
    let mut ends = JoinSet::new();
    for (i, mut s) in streams.into_iter().enumerate() {
        ends.spawn(async move {
            match s.next_event_or_end(DRAIN + MARGIN).await {
                Ok(None) => {}
                Ok(Some(ev)) => panic!("stream {i}: unexpected event after {sig}: {ev:?}"),
                Err(_) => panic!("stream {i} still open {:?} after {sig}", DRAIN + MARGIN),
            }
            // A clean end of the body (the final chunk), not a reset or a cut connection.
            assert_eq!(s.error(), None, "stream {i} ended with a transport error");
            Instant::now()
        });
    }
    let exit = tokio::task::spawn_blocking(move || {
        let status = daemon.wait_exit(DRAIN + MARGIN);
        (status, daemon)
    });
    let last_end = ends.join_all().await.into_iter().max().expect("at least one stream");
    let (status, mut daemon) = exit.await.unwrap();
    let status = status
        .unwrap_or_else(|| panic!("sse-bridge still running {:?} after {sig}:\n{}", DRAIN + MARGIN, daemon.stderr()));
    let to_exit = daemon.exited_at().unwrap() - sent;
    let out = daemon.output(status);
    assert_eq!(out.code(), 0, "exit status after {sig}; stderr:\n{}", out.stderr);
    assert!(to_exit <= DRAIN + MARGIN, "exit took {to_exit:?} after {sig} (drain_timeout {DRAIN:?})");
    // Every stream ended on its own: nothing had to be cut when the drain time ran out.
    assert!(
        out.stderr.contains(&format!("open_streams={n}")) && out.stderr.contains("outcome=Drained"),
        "expected a full drain of {n} streams; stderr:\n{}",
        out.stderr
    );
    (to_exit, last_end - sent, out.stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_ends_100_streams_and_exits_zero_within_drain_time() {
    let bridge = start_bridge();
    let mut streams = open_streams(&bridge, 100).await;
    publish_and_check_all(&bridge, &mut streams).await;

    let (to_exit, to_last_end, stderr) = signal_and_check(bridge, streams, Signal::SIGTERM).await;
    assert!(stderr.contains("signal=\"SIGTERM\""), "stderr:\n{stderr}");
    println!(
        "SIGTERM with 100 open streams: last stream ended after {to_last_end:?}, \
         process exited after {to_exit:?} (drain_timeout {DRAIN:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigint_also_exits_zero() {
    let bridge = start_bridge();
    let mut streams = open_streams(&bridge, 3).await;
    publish_and_check_all(&bridge, &mut streams).await;

    let (to_exit, to_last_end, stderr) = signal_and_check(bridge, streams, Signal::SIGINT).await;
    assert!(stderr.contains("signal=\"SIGINT\""), "stderr:\n{stderr}");
    println!(
        "SIGINT with 3 open streams: last stream ended after {to_last_end:?}, \
         process exited after {to_exit:?}"
    );
}

/// A SIGTERM that arrives the moment the port accepts connections still drains and exits 0:
/// the handlers must be installed before the listener is bound, not when the app first polls
/// its shutdown future (a window that used to kill about one early SIGTERM in eight).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_right_after_the_port_opens_exits_zero() {
    for round in 0..25 {
        let BridgeProcess { mut daemon, dir: _dir, .. } = start_bridge();
        daemon.signal(Signal::SIGTERM);
        let status = daemon
            .wait_exit(DRAIN + MARGIN)
            .unwrap_or_else(|| panic!("round {round}: still running after SIGTERM:\n{}", daemon.stderr()));
        let out = daemon.output(status);
        assert_eq!(
            out.status.code(),
            Some(0),
            "round {round}: SIGTERM right after startup ended the process with {}; stderr:\n{}",
            out.status,
            out.stderr
        );
    }
}
