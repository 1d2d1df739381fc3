//! Replay store at its topic cap: events on ever new topics, so every event past
//! `replay.max_topics` makes the store forget a ring (`ReplayStore::append`, inside the
//! sequencer). Through the library's public API only, so the same file runs against older
//! versions of the store for a before/after figure.
//!
//! Default: 1,000,000 distinct topics, one event each, cap 100,000 rings. Prints events/s for
//! the fill (no forgetting) and for the events past the cap (one ring forgotten per event).
//!
//! `cargo bench --bench replay_topics`; `SSE_BRIDGE_BENCH_TOPICS` and `SSE_BRIDGE_BENCH_CAP`
//! change the counts (see docs/benchmarks.md).

use std::sync::Arc;
use std::time::Instant;

use sse_bridge::config::{ReplayConfig, SlowConsumerPolicy};
use sse_bridge::event::{Event, EventId, frame_event};
use sse_bridge::replay::ReplayStore;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn event(seq: u64, topic: String) -> Arc<Event> {
    let id = EventId { run: 0x5eed_0000_0003, seq };
    Arc::new(Event {
        id,
        topic: Arc::from(topic),
        frame: frame_event(id, None, b"{\"n\":1}").0,
        received_at: Instant::now(),
        policy: SlowConsumerPolicy::Disconnect,
        trace: None,
        published_at_ms: None,
        durable: None,
    })
}

fn main() {
    // `cargo bench` passes --bench; under `cargo test --all-targets` (the suite) a reduced run
    // is a smoke test of the same path.
    let full = std::env::args().any(|a| a == "--bench");
    let topics = env_or("SSE_BRIDGE_BENCH_TOPICS", if full { 1_000_000 } else { 20_000 });
    let cap = env_or("SSE_BRIDGE_BENCH_CAP", if full { 100_000 } else { 2_000 }).min(topics);
    let store = ReplayStore::new(ReplayConfig {
        max_events_per_topic: 1000,
        max_bytes_per_topic: 1 << 20,
        max_total_bytes: 1 << 30,
        max_topics: cap,
    });
    // Built before the clock starts: the figure is the store's work, not framing.
    let events: Vec<Arc<Event>> = (0..topics).map(|i| event(i as u64 + 1, format!("bench.topic.{i}"))).collect();
    println!("replay store at its topic cap: {topics} distinct topics, one event each, max_topics = {cap}");

    let started = Instant::now();
    for e in &events[..cap] {
        store.append(e);
    }
    let fill = started.elapsed();
    let past_cap = Instant::now();
    let mut slowest = std::time::Duration::ZERO;
    for e in &events[cap..] {
        let t = Instant::now();
        store.append(e);
        slowest = slowest.max(t.elapsed());
    }
    let over = past_cap.elapsed();
    let total = started.elapsed();

    let rate = |n: usize, d: std::time::Duration| n as f64 / d.as_secs_f64().max(1e-9);
    println!(
        "  fill (no forgetting):     {cap:>9} events in {:>9.3} s = {:>12.0} events/s",
        fill.as_secs_f64(),
        rate(cap, fill)
    );
    println!(
        "  past the cap (1 forget/event): {:>9} events in {:>9.3} s = {:>12.0} events/s, slowest append {:?}",
        topics - cap,
        over.as_secs_f64(),
        rate(topics - cap, over),
        slowest
    );
    println!(
        "  all:                      {topics:>9} events in {:>9.3} s = {:>12.0} events/s",
        total.as_secs_f64(),
        rate(topics, total)
    );
    let stats = store.stats();
    assert_eq!(stats.topics, cap, "the store keeps max_topics rings");
}
