//! The memory budget: a publish flood far larger than `memory.limit` keeps the process under
//! the budget plus a fixed overhead, and it keeps serving (never an OOM kill).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::bridge_process::{BridgeProcess, rss_of};
use common::{EVENT_TIMEOUT, TOKEN, sample, sse_client};
use nix::sys::signal::Signal;
use tokio::io::AsyncWriteExt;

const MIB: u64 = 1024 * 1024;
/// `memory.limit` in the test config.
const BUDGET: u64 = 48 * MIB;
/// Code, thread stacks, allocator slack (jemalloc keeps freed pages for a while) and socket
/// buffers: what RSS may exceed the heap budget by.
const OVERHEAD: u64 = 64 * MIB;
const PAYLOAD: usize = 64 * 1024;
const EVENTS: usize = 4000; // 4000 × 64 KiB = 250 MiB, five times the budget

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_flood_stays_within_the_memory_budget() {
    let bridge = BridgeProcess::start(
        &format!(
            "[publish]\ntoken = \"{TOKEN}\"\n\n\
             [limits]\nconnect_rate_per_ip = 0\nmax_streams_per_ip = 0\n\n\
             [memory]\nlimit = {BUDGET}\n\n\
             # Rings that alone could hold the whole flood: the budget has to do the bounding.\n\
             [replay]\nmax_events_per_topic = 100000\nmax_bytes_per_topic = 1073741824\nmax_total_bytes = 1073741824\n"
        ),
        &[],
    );
    let addr = bridge.addr;
    let pid = bridge.daemon.pid().as_raw();
    let url = |p: &str| bridge.url(p);

    // Clients that never read: their queues would pin every event if nothing shed them.
    let mut stalled = Vec::new();
    for _ in 0..10 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /events?topic=flood.1&topic=flood.2 HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        stalled.push(s);
    }
    let mut healthy = sse_client::connect(&url("/events?topic=other"), &[]).await.unwrap();
    healthy.wait_for_comments(1, EVENT_TIMEOUT).await;

    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_of(pid).unwrap_or(0), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10)); // sampling interval, not synchronisation
            }
        })
    };

    let http = sse_client::test_client();
    let body = bytes::Bytes::from(vec![b'x'; PAYLOAD]);
    let mut accepted = 0;
    let mut refused = 0;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..4 {
        let (http, body, url) = (http.clone(), body.clone(), url(""));
        tasks.spawn(async move {
            let (mut ok, mut busy) = (0, 0);
            for i in (worker..EVENTS).step_by(4) {
                let r = http
                    .post(format!("{url}/publish?topic=flood.{}", 1 + i % 2))
                    .bearer_auth(TOKEN)
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                match r.status().as_u16() {
                    200 => ok += 1,
                    503 => busy += 1, // over budget: refused, never an OOM
                    s => panic!("unexpected status {s}"),
                }
            }
            (ok, busy)
        });
    }
    while let Some(r) = tasks.join_next().await {
        let (ok, busy) = r.unwrap();
        accepted += ok;
        refused += busy;
    }
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    println!(
        "published {accepted} × 64 KiB ({} MiB), refused {refused}; peak RSS {} MiB; budget {} MiB + overhead {} MiB",
        accepted as u64 * PAYLOAD as u64 / MIB,
        peak / MIB,
        BUDGET / MIB,
        OVERHEAD / MIB
    );
    assert!(accepted as u64 * PAYLOAD as u64 > 3 * BUDGET, "the flood was far larger than the budget");
    assert!(peak < BUDGET + OVERHEAD, "peak RSS {} MiB exceeds budget + overhead", peak / MIB);

    // Still serving: a healthy stream gets a new event, and the shedding is visible.
    bridge.publish("other", "still here").await;
    assert_eq!(healthy.next_event(EVENT_TIMEOUT).await.unwrap().data, "still here");
    let metrics = bridge.metrics().await;
    let shed = sample(&metrics, "sse_bridge_memory_shed_ring_bytes_total").expect("shed metric present");
    assert!(shed > 0.0, "the replay store was shed:\n{metrics}");
    drop(stalled);
    let mut daemon = bridge.daemon;
    daemon.signal(Signal::SIGTERM);
    assert!(daemon.wait_exit(Duration::from_secs(15)).is_some_and(|s| s.success()));
}
