//! Issue 14, item 4: the sequencer never waits on a resume. One bridge delivers a steady rate
//! of events to many streams while clients resume with a pattern filter over many rings; the
//! delivery latency of the steady streams is printed without and with the resumes (no timing
//! assert: figures come from the release run, see docs/benchmarks.md).
//!
//! Defaults are small enough for a debug build on a shared machine. The issue's figure:
//! `SSE_BRIDGE_LOAD_STREAMS=1000 SSE_BRIDGE_LOAD_RATE=1000 SSE_BRIDGE_LOAD_RINGS=100000
//! SSE_BRIDGE_LOAD_RESUMES=200 cargo test --release --test resume_load -- --nocapture`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::brokers::{NatsServer, nats_client};
use common::sse_client;
use common::{EVENT_TIMEOUT, nats_config, start_app, sync_on_probe, test_config, wait_until};
use parking_lot::Mutex;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// Steady topics the streams are spread over.
const STEADY_TOPICS: usize = 10;

/// Phases of the run: latencies are recorded per phase.
const WARMUP: usize = 0;
const QUIET: usize = 1;
const RESUMING: usize = 2;
const DONE: usize = 3;

fn percentile(sorted: &[u64], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    Duration::from_nanos(sorted[i])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_delivery_latency_with_and_without_pattern_resumes() {
    let streams = env_or("SSE_BRIDGE_LOAD_STREAMS", 100);
    let rate = env_or("SSE_BRIDGE_LOAD_RATE", 100).max(1);
    let rings = env_or("SSE_BRIDGE_LOAD_RINGS", 10_000);
    let resumes = env_or("SSE_BRIDGE_LOAD_RESUMES", 20).max(1);
    let secs = env_or("SSE_BRIDGE_LOAD_SECS", 4) as u64;

    let nats = NatsServer::start().await;
    let mut cfg = test_config();
    cfg.nats = Some(nats_config(&nats.url(), &["steady.>", "load.>", "probe"]));
    cfg.replay.max_topics = rings + STEADY_TOPICS + 16;
    cfg.replay.max_total_bytes = 512 << 20;
    let app = Arc::new(start_app(cfg).await);
    let client = nats_client(&nats.url()).await;
    let mut probe = app.subscribe(&["probe"]).await;
    sync_on_probe(&mut probe, || async {
        client.publish("probe", Bytes::from_static(b"p")).await.unwrap();
        client.flush().await.unwrap();
    })
    .await;

    // The rings the resumes scan: one event on each of `rings` topics.
    let per_group = rings.div_ceil(100).max(1);
    let mut made = 0;
    while made < rings {
        let upto = (made + 1000).min(rings);
        for i in made..upto {
            client
                .publish(format!("load.{}.{}", i / per_group, i % per_group), Bytes::from_static(b"r"))
                .await
                .unwrap();
        }
        client.flush().await.unwrap();
        made = upto;
        wait_until("the rings exist", async || app.state.replay.stats().topics > made).await;
    }

    // The steady streams: each records the latency of every event it gets, per phase.
    let phase = Arc::new(AtomicUsize::new(WARMUP));
    let latencies: Arc<[Mutex<Vec<u64>>; 3]> = Arc::new(Default::default());
    let latest_id = Arc::new(Mutex::new(String::new()));
    let mut readers = tokio::task::JoinSet::new();
    for i in 0..streams {
        let mut s = app.subscribe(&[&format!("steady.{}", i % STEADY_TOPICS)]).await;
        let (phase, latencies, latest_id) = (phase.clone(), latencies.clone(), latest_id.clone());
        readers.spawn(async move {
            while let Some(e) = s.next_event(EVENT_TIMEOUT).await {
                let sent: u64 = e.data.parse().unwrap();
                let p = phase.load(Ordering::Relaxed);
                if p == DONE {
                    break;
                }
                latencies[p].lock().push(now_ns().saturating_sub(sent));
                if i == 0 {
                    *latest_id.lock() = e.id.unwrap();
                }
            }
        });
    }

    // The steady publisher: `rate` events/s over the steady topics, in 10 ms ticks.
    let publisher = {
        let (client, phase) = (client.clone(), phase.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut n = 0usize;
            let started = tokio::time::Instant::now();
            while phase.load(Ordering::Relaxed) != DONE {
                tick.tick().await;
                let due = (started.elapsed().as_secs_f64() * rate as f64) as usize;
                while n < due {
                    let topic = format!("steady.{}", n % STEADY_TOPICS);
                    client.publish(topic, Bytes::from(now_ns().to_string())).await.unwrap();
                    n += 1;
                }
                client.flush().await.unwrap();
            }
        })
    };

    tokio::time::sleep(Duration::from_secs(1)).await;
    phase.store(QUIET, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    phase.store(RESUMING, Ordering::Relaxed);

    // The resumes: `resumes`/s, each a pattern over every ring plus one steady topic, from the
    // newest id; done when its first live event arrives (the ring read is over by then).
    let done_resumes = Arc::new(AtomicUsize::new(0));
    let resume_ns = Arc::new(AtomicU64::new(0));
    let resumers = {
        let (app, latest_id, done_resumes, resume_ns) =
            (app.clone(), latest_id.clone(), done_resumes.clone(), resume_ns.clone());
        tokio::spawn(async move {
            let mut clients = tokio::task::JoinSet::new();
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / resumes as f64));
            let end = tokio::time::Instant::now() + Duration::from_secs(secs);
            while tokio::time::Instant::now() < end {
                tick.tick().await;
                let id = latest_id.lock().clone();
                let url = app.url("/events?topic=load.%3E&topic=steady.0");
                let (done_resumes, resume_ns) = (done_resumes.clone(), resume_ns.clone());
                clients.spawn(async move {
                    let t = now_ns();
                    let mut s = sse_client::connect(&url, &[("last-event-id", &id)]).await.expect("resume opens");
                    let e = s.next_event(EVENT_TIMEOUT).await.expect("an event after the resume");
                    assert_ne!(e.event.as_deref(), Some("sse-bridge.gap"), "nothing was evicted: {}", e.data);
                    resume_ns.fetch_add(now_ns() - t, Ordering::Relaxed);
                    done_resumes.fetch_add(1, Ordering::Relaxed);
                });
                while let Some(r) = clients.try_join_next() {
                    r.unwrap();
                }
            }
            while let Some(r) = clients.join_next().await {
                r.unwrap();
            }
        })
    };
    resumers.await.unwrap();
    phase.store(DONE, Ordering::Relaxed);
    publisher.await.unwrap();
    readers.abort_all();

    let resumed = done_resumes.load(Ordering::Relaxed);
    println!(
        "steady delivery under resumes: {streams} streams, {rate} events/s over {STEADY_TOPICS} topics, \
         {rings} rings, {resumes} resumes/s (pattern load.> + steady.0, from the newest id), {secs} s per phase"
    );
    let mut p99s = [Duration::ZERO; 2];
    for (i, name) in [(QUIET, "without resumes"), (RESUMING, "with resumes")] {
        let mut v = std::mem::take(&mut *latencies[i].lock());
        v.sort_unstable();
        p99s[i - QUIET] = percentile(&v, 0.99);
        println!(
            "  {name:<16} deliveries {:>8}  p50 {:>10.3?}  p99 {:>10.3?}  max {:>10.3?}",
            v.len(),
            percentile(&v, 0.50),
            percentile(&v, 0.99),
            v.last().map_or(Duration::ZERO, |&m| Duration::from_nanos(m)),
        );
    }
    println!(
        "  resumes completed {resumed} ({:.1}/s), mean time to first live event {:.3?}; p99 ratio with/without {:.2}",
        resumed as f64 / secs as f64,
        Duration::from_nanos(resume_ns.load(Ordering::Relaxed) / resumed.max(1) as u64),
        p99s[1].as_secs_f64() / p99s[0].as_secs_f64().max(1e-9),
    );
    assert!(resumed > 0, "resumes ran");
}
