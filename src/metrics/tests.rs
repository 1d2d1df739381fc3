//! The exposition's shape (names, types, units, help texts, label names) is a contract with
//! dashboards and alerts; the latency histogram's exposition matches `prometheus_client`'s.

use std::time::Duration;

use super::*;

/// Every `# HELP`, `# TYPE` and `# UNIT` line of a fresh registry, sorted, as captured before
/// `Metrics::new` was split by concern, plus the standard `process_*` families and jemalloc's
/// figures; a change here breaks dashboards.
const EXPECTED_META: &str = r#"
# HELP process_cpu_seconds Total user and system CPU time spent in seconds.
# HELP process_max_fds Maximum number of open file descriptors.
# HELP process_open_fds Number of open file descriptors.
# HELP process_resident_memory_bytes Resident memory size in bytes.
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# HELP process_threads Number of OS threads in the process.
# HELP process_virtual_memory_bytes Virtual memory size in bytes.
# HELP sse_bridge_allocator_purges Times freed allocator pages were given back to the OS because resident memory was far above the live heap.
# HELP sse_bridge_broker_reconnects Broker reconnections after the first connection.
# HELP sse_bridge_broker_up 1 while the source's broker connection is up.
# HELP sse_bridge_connections_in_head Connections on the public listener still sending their request head.
# HELP sse_bridge_deliveries Events placed in a subscriber queue.
# HELP sse_bridge_delivery_latency_seconds From the broker message's arrival at the bridge to its hand-off to the socket.
# HELP sse_bridge_disconnects SSE streams ended, by reason.
# HELP sse_bridge_distinct_patterns Distinct patterns held by open streams (capped by limits.max_patterns and, per address, limits.max_patterns_per_ip).
# HELP sse_bridge_drain_streams_left Streams still to be ended by the paced drain after SIGTERM (0 when not draining).
# HELP sse_bridge_dropped_events Queued events dropped by drop-oldest or replaced by latest, by reason.
# HELP sse_bridge_event_types_dropped Event types left out because they were unusable or reserved.
# HELP sse_bridge_events_duplicate_dropped Core NATS messages dropped because a JetStream stream captures their subject and delivers them.
# HELP sse_bridge_events_malformed Broker messages dropped: not a valid envelope, or larger than the source's max_message_bytes.
# HELP sse_bridge_events_non_utf8 Payloads that were not UTF-8 and were sent with U+FFFD replacements.
# HELP sse_bridge_events_received Messages received from each source and sequenced.
# HELP sse_bridge_gap_events sse-bridge.gap signals sent, by reason.
# HELP sse_bridge_heap_allocated_bytes Live heap (jemalloc stats.allocated).
# HELP sse_bridge_ingest_queue_bytes Bytes of the messages waiting between the sources and the sequencer.
# HELP sse_bridge_ingest_queue_depth Messages waiting between the sources and the sequencer.
# HELP sse_bridge_jemalloc_active_bytes Bytes in pages holding live allocations (jemalloc stats.active).
# HELP sse_bridge_jemalloc_dirty_bytes Freed pages jemalloc has not yet returned to the OS (purged on decay).
# HELP sse_bridge_jemalloc_mapped_bytes Bytes in extents mapped by jemalloc (jemalloc stats.mapped).
# HELP sse_bridge_jemalloc_metadata_bytes Bytes of jemalloc's own metadata (jemalloc stats.metadata).
# HELP sse_bridge_jemalloc_resident_bytes Bytes in resident pages mapped by jemalloc: active, dirty, metadata.
# HELP sse_bridge_jemalloc_retained_bytes Virtual memory jemalloc returned to the OS but keeps mapped for reuse.
# HELP sse_bridge_memory_limit_bytes The memory budget (0: none).
# HELP sse_bridge_memory_shed_ring_bytes Replay bytes evicted because the memory budget was reached.
# HELP sse_bridge_memory_shed_streams Streams closed because the memory budget was reached.
# HELP sse_bridge_open_connections TCP connections open on the public listener.
# HELP sse_bridge_open_streams SSE streams open now.
# HELP sse_bridge_process_cpu_seconds CPU time of the process (user + system).
# HELP sse_bridge_publish_latency_seconds From the publisher's timestamp (Sse-Published-At, envelope published_at) to the hand-off to the socket.
# HELP sse_bridge_queue_depth_streams Streams by live events queued, cumulative (le).
# HELP sse_bridge_queued_frames Frames waiting in subscriber queues.
# HELP sse_bridge_replay_inflight_bytes Frames queued ahead of live events (replays, gap signals) and not yet written, all streams.
# HELP sse_bridge_replay_retained_bytes Bytes held in the replay store (frames and bookkeeping).
# HELP sse_bridge_replay_retained_events Events held in the replay store.
# HELP sse_bridge_replay_topics Topics with a replay ring.
# HELP sse_bridge_replayed_events Events sent from the replay store to resuming streams.
# HELP sse_bridge_replayed_from_broker_events Events replayed to resuming clients from durable broker history.
# HELP sse_bridge_requests_rejected Requests refused before a stream started, by reason.
# HELP sse_bridge_resident_memory_bytes Resident set size of the process.
# HELP sse_bridge_resume_broker_reads Reads of durable history from a broker for resumes older than the ring, by outcome.
# HELP sse_bridge_resume_broker_reads_active Broker reads for resumes running now (bounded by resume.max_concurrent_reads).
# HELP sse_bridge_resume_broker_reads_coalesced Resume reads served by joining an identical read already running.
# HELP sse_bridge_resume_broker_reads_peak Most broker reads for resumes that ran at once since start.
# HELP sse_bridge_resume_frames_shared Broker resumes served from replay frames another identical resume (same id, filters and range) was building.
# HELP sse_bridge_resume_pages Full pages of resume.max_events read from a broker by in-place resumes, each written before the next is read.
# HELP sse_bridge_resume_spills Resuming streams whose full queue spilled and that resumed in place (policy spill-reread) instead of being cut.
# HELP sse_bridge_source_gaps Losses a live source told its streams about (source-outage, source-dropped), by source and reason.
# HELP sse_bridge_source_lost_messages Messages a live source's client or buffer dropped when full, by source (NATS: exact once the client is quiet).
# HELP sse_bridge_streams_opened SSE streams opened.
# HELP sse_bridge_subscription_filters Distinct topics and patterns with subscribers, summed over registry shards.
# HELP sse_bridge_tokio_alive_tasks Tasks alive in the runtime.
# TYPE process_cpu_seconds counter
# TYPE process_max_fds gauge
# TYPE process_open_fds gauge
# TYPE process_resident_memory_bytes gauge
# TYPE process_start_time_seconds gauge
# TYPE process_threads gauge
# TYPE process_virtual_memory_bytes gauge
# TYPE sse_bridge_allocator_purges counter
# TYPE sse_bridge_broker_reconnects counter
# TYPE sse_bridge_broker_up gauge
# TYPE sse_bridge_connections_in_head gauge
# TYPE sse_bridge_deliveries counter
# TYPE sse_bridge_delivery_latency_seconds histogram
# TYPE sse_bridge_disconnects counter
# TYPE sse_bridge_distinct_patterns gauge
# TYPE sse_bridge_drain_streams_left gauge
# TYPE sse_bridge_dropped_events counter
# TYPE sse_bridge_event_types_dropped counter
# TYPE sse_bridge_events_duplicate_dropped counter
# TYPE sse_bridge_events_malformed counter
# TYPE sse_bridge_events_non_utf8 counter
# TYPE sse_bridge_events_received counter
# TYPE sse_bridge_gap_events counter
# TYPE sse_bridge_heap_allocated_bytes gauge
# TYPE sse_bridge_ingest_queue_bytes gauge
# TYPE sse_bridge_ingest_queue_depth gauge
# TYPE sse_bridge_jemalloc_active_bytes gauge
# TYPE sse_bridge_jemalloc_dirty_bytes gauge
# TYPE sse_bridge_jemalloc_mapped_bytes gauge
# TYPE sse_bridge_jemalloc_metadata_bytes gauge
# TYPE sse_bridge_jemalloc_resident_bytes gauge
# TYPE sse_bridge_jemalloc_retained_bytes gauge
# TYPE sse_bridge_memory_limit_bytes gauge
# TYPE sse_bridge_memory_shed_ring_bytes counter
# TYPE sse_bridge_memory_shed_streams counter
# TYPE sse_bridge_open_connections gauge
# TYPE sse_bridge_open_streams gauge
# TYPE sse_bridge_process_cpu_seconds counter
# TYPE sse_bridge_publish_latency_seconds histogram
# TYPE sse_bridge_queue_depth_streams gauge
# TYPE sse_bridge_queued_frames gauge
# TYPE sse_bridge_replay_inflight_bytes gauge
# TYPE sse_bridge_replay_retained_bytes gauge
# TYPE sse_bridge_replay_retained_events gauge
# TYPE sse_bridge_replay_topics gauge
# TYPE sse_bridge_replayed_events counter
# TYPE sse_bridge_replayed_from_broker_events counter
# TYPE sse_bridge_requests_rejected counter
# TYPE sse_bridge_resident_memory_bytes gauge
# TYPE sse_bridge_resume_broker_reads counter
# TYPE sse_bridge_resume_broker_reads_active gauge
# TYPE sse_bridge_resume_broker_reads_coalesced counter
# TYPE sse_bridge_resume_broker_reads_peak gauge
# TYPE sse_bridge_resume_frames_shared counter
# TYPE sse_bridge_resume_pages counter
# TYPE sse_bridge_resume_spills counter
# TYPE sse_bridge_source_gaps counter
# TYPE sse_bridge_source_lost_messages counter
# TYPE sse_bridge_streams_opened counter
# TYPE sse_bridge_subscription_filters gauge
# TYPE sse_bridge_tokio_alive_tasks gauge
# UNIT process_cpu_seconds seconds
# UNIT process_resident_memory_bytes bytes
# UNIT process_start_time_seconds seconds
# UNIT process_virtual_memory_bytes bytes
# UNIT sse_bridge_delivery_latency_seconds seconds
# UNIT sse_bridge_heap_allocated_bytes bytes
# UNIT sse_bridge_ingest_queue_bytes bytes
# UNIT sse_bridge_jemalloc_active_bytes bytes
# UNIT sse_bridge_jemalloc_dirty_bytes bytes
# UNIT sse_bridge_jemalloc_mapped_bytes bytes
# UNIT sse_bridge_jemalloc_metadata_bytes bytes
# UNIT sse_bridge_jemalloc_resident_bytes bytes
# UNIT sse_bridge_jemalloc_retained_bytes bytes
# UNIT sse_bridge_memory_limit_bytes bytes
# UNIT sse_bridge_memory_shed_ring_bytes bytes
# UNIT sse_bridge_process_cpu_seconds seconds
# UNIT sse_bridge_publish_latency_seconds seconds
# UNIT sse_bridge_replay_inflight_bytes bytes
# UNIT sse_bridge_replay_retained_bytes bytes
# UNIT sse_bridge_resident_memory_bytes bytes
"#;

/// One series of every labelled family, with its label names.
const EXPECTED_LABELLED: &str = r#"
sse_bridge_broker_reconnects_total{source="nats"}
sse_bridge_broker_up{source="nats"}
sse_bridge_disconnects_total{reason="x"}
sse_bridge_dropped_events_total{reason="x"}
sse_bridge_events_malformed_total{source="nats"}
sse_bridge_events_received_total{source="nats"}
sse_bridge_gap_events_total{reason="x"}
sse_bridge_queue_depth_streams{le="0"}
sse_bridge_requests_rejected_total{reason="x"}
sse_bridge_resume_broker_reads_total{kind="jetstream",outcome="ok"}
sse_bridge_source_gaps_total{source="nats",reason="source-dropped"}
sse_bridge_source_lost_messages_total{source="nats"}
"#;

#[test]
fn exposition_names_types_and_help_are_unchanged() {
    let m = Metrics::new();
    // Families appear once they have a series.
    let nats = SourceLabel { source: "nats" };
    m.events_received.get_or_create(&nats).inc();
    m.events_malformed.get_or_create(&nats).inc();
    m.queue_depth.get_or_create(&LeLabel { le: "0" }).set(1);
    m.count_drops("x", 1);
    m.count_disconnect("x");
    m.count_rejected("x");
    m.count_gap("x");
    m.broker_up.get_or_create(&nats).set(1);
    m.broker_reconnects.get_or_create(&nats).inc();
    m.count_resume_read("jetstream", "ok");
    m.count_source_gap("nats", "source-dropped", 1);
    let text = m.encode();
    let mut meta: Vec<&str> = text.lines().filter(|l| l.starts_with("# ") && *l != "# EOF").collect();
    meta.sort_unstable();
    assert_eq!(meta, EXPECTED_META.trim().lines().collect::<Vec<_>>());
    let mut labelled: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('{') && !l.contains("_bucket{"))
        .filter_map(|l| l.rsplit_once(' ').map(|(series, _)| series))
        .collect();
    labelled.sort_unstable();
    assert_eq!(labelled, EXPECTED_LABELLED.trim().lines().collect::<Vec<_>>());
}

#[test]
fn latency_histogram_exposition() {
    let m = Metrics::new();
    m.delivery_latency.observe(Duration::from_micros(50)); // le 0.00005: bounds are inclusive
    m.delivery_latency.observe(Duration::from_millis(3));
    std::thread::scope(|s| {
        s.spawn(|| m.delivery_latency.observe(Duration::from_secs(9))); // another shard; +Inf
    });
    assert_eq!(m.delivery_latency.count(), 3);
    let text = m.encode();
    let line = |prefix: &str| {
        text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} in {text}")).to_string()
    };
    assert!(text.contains("# TYPE sse_bridge_delivery_latency_seconds histogram"), "{text}");
    assert_eq!(line("sse_bridge_delivery_latency_seconds_count"), "sse_bridge_delivery_latency_seconds_count 3");
    assert_eq!(line("sse_bridge_delivery_latency_seconds_sum"), "sse_bridge_delivery_latency_seconds_sum 9.00305");
    assert!(line("sse_bridge_delivery_latency_seconds_bucket{le=\"0.00005\"}").ends_with(" 1"), "{text}");
    assert!(line("sse_bridge_delivery_latency_seconds_bucket{le=\"0.0025\"}").ends_with(" 1"), "{text}");
    assert!(line("sse_bridge_delivery_latency_seconds_bucket{le=\"0.005\"}").ends_with(" 2"), "{text}");
    assert!(line("sse_bridge_delivery_latency_seconds_bucket{le=\"5.0\"}").ends_with(" 2"), "{text}");
    assert!(line("sse_bridge_delivery_latency_seconds_bucket{le=\"+Inf\"}").ends_with(" 3"), "{text}");
    assert_eq!(line("sse_bridge_publish_latency_seconds_count"), "sse_bridge_publish_latency_seconds_count 0");
}
