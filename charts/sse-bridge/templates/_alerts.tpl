{{/*
The alerts of docs/observability.md, as Prometheus rules (a YAML list). Called with a dict:
  sel      PromQL label matchers of this release's series
  doc      the runbook document's URL (docs/observability.md, with runbookBaseUrl in front)
  capacity the capacity document's URL (docs/capacity.md)
  root     the chart's top-level context
Thresholds that depend on the release (memory limit, limits.max_streams, fanout.ingest_queue,
resume.max_concurrent_reads, the CPU limit) are taken from its values; an alert whose bound is
off (0, or no CPU limit) is left out. {{`{{ $labels.x }}`}} is Prometheus's templating, kept as is.
*/}}
{{- define "sse-bridge.alertRules" -}}
{{- $sel := .sel -}}
{{- $doc := .doc -}}
{{- $v := .root.Values -}}
{{- $cfg := default dict $v.config -}}
{{- $limitBytes := include "sse-bridge.quantityBytes" $v.resources.limits.memory | int64 -}}
{{- $maxStreams := 100000 -}}
{{- with $cfg.limits }}{{ if hasKey . "max_streams" }}{{ $maxStreams = int64 .max_streams }}{{ end }}{{ end -}}
{{- $ingest := 4096 -}}
{{- with $cfg.fanout }}{{ with .ingest_queue }}{{ $ingest = int64 . }}{{ end }}{{ end -}}
{{- $reads := 16 -}}
{{- $ingestBytes := 33554432 -}}
{{- with $cfg.fanout }}{{ with .ingest_queue_bytes }}{{ $ingestBytes = int64 . }}{{ end }}{{ end -}}
{{- $inflight := 268435456 -}}
{{- $maxPatterns := 100000 -}}
{{- with $cfg.limits }}{{ if hasKey . "max_patterns" }}{{ $maxPatterns = int64 .max_patterns }}{{ end }}{{ end -}}
{{- with $cfg.resume }}{{ with .max_inflight_bytes }}{{ $inflight = int64 . }}{{ end }}{{ end -}}
{{- $drain := "10s" -}}
{{- with $cfg.server }}{{ with .drain_timeout }}{{ $drain = . }}{{ end }}{{ end -}}
{{- with $cfg.resume }}{{ with .max_concurrent_reads }}{{ $reads = int64 . }}{{ end }}{{ end -}}
{{- $pod := "{{ $labels.namespace }}/{{ $labels.pod }}" -}}
# Sources
- alert: SseBridgeBrokerDown
  expr: max by (namespace, pod, source) (sse_bridge_broker_up{ {{- $sel -}} }) == 0
  for: 1m
  labels: {severity: critical}
  annotations:
    summary: {{ printf "%s: the %s broker is unreachable" $pod "{{ $labels.source }}" | quote }}
    description: Streams stay open and heartbeats flow, but no events arrive from this source; it retries with backoff. Events published to Redis pub/sub or core NATS meanwhile are lost by design.
    runbook_url: {{ printf "%s#runbook-broker-down" $doc }}
- alert: SseBridgeBrokerFlapping
  expr: increase(sse_bridge_broker_reconnects_total{ {{- $sel -}} }[1h]) > 3
  labels: {severity: warning}
  annotations:
    summary: {{ printf "%s: the %s broker connection dropped {{ $value | humanize }} times in an hour" $pod "{{ $labels.source }}" | quote }}
    description: Each reconnection may lose the events a non-durable broker published meanwhile.
    runbook_url: {{ printf "%s#runbook-broker-down" $doc }}
- alert: SseBridgeNoEvents
  expr: sum by (namespace, pod) (rate(sse_bridge_events_received_total{ {{- $sel -}} }[15m])) == 0 and sum by (namespace, pod) (rate(sse_bridge_events_received_total{ {{- $sel -}} }[1h] offset 1h)) > 0
  for: 15m
  labels: {severity: warning}
  annotations:
    summary: {{ printf "%s receives no events, and did an hour ago" $pod | quote }}
    description: The rate of events from every source dropped to 0. If publishers still publish, a source is down or no longer subscribed. Disable this alert (prometheusRule.disabledAlerts) where topics are quiet for hours.
    runbook_url: {{ printf "%s#runbook-broker-down" $doc }}
# Memory
- alert: SseBridgeRssNearLimit
  expr: max by (namespace, pod) (sse_bridge_resident_memory_bytes{ {{- $sel -}} }) > {{ $limitBytes }} * 0.9
  for: 10m
  labels: {severity: critical}
  annotations:
    summary: {{ printf "%s: RSS {{ $value | humanize1024 }}B is above 90%% of the %s memory limit" $pod (toString $v.resources.limits.memory) | quote }}
    description: The kernel OOM-kills the pod at the limit, dropping every stream. Compare heap and RSS (runbook); lower memoryBudgetPercent if socket buffers take the rest.
    runbook_url: {{ printf "%s#runbook-rss-climbing" $doc }}
- alert: SseBridgeRssClimbing
  expr: predict_linear(sse_bridge_resident_memory_bytes{ {{- $sel -}} }[1h], 4 * 3600) > {{ $limitBytes }}
  for: 30m
  labels: {severity: warning}
  annotations:
    summary: {{ printf "%s: RSS reaches the %s memory limit within 4 h at the last hour's trend" $pod (toString $v.resources.limits.memory) | quote }}
    description: Heap flat and RSS climbing is allocator retention; heap climbing means rings, queues or streams (runbook).
    runbook_url: {{ printf "%s#runbook-rss-climbing" $doc }}
- alert: SseBridgeHeapNearBudget
  expr: sse_bridge_heap_allocated_bytes{ {{- $sel -}} } > 0.9 * sse_bridge_memory_limit_bytes{ {{- $sel -}} } and sse_bridge_memory_limit_bytes{ {{- $sel -}} } > 0
  for: 5m
  labels: {severity: warning}
  annotations:
    summary: {{ printf "%s: live heap above 90%% of the memory budget" $pod | quote }}
    description: At the budget the bridge sheds replay entries, then closes the slowest streams, and refuses new ones. The pod is too small for its load (docs/capacity.md).
    runbook_url: {{ printf "%s#runbook-rss-climbing" $doc }}
- alert: SseBridgeAllocatorRetention
  expr: sse_bridge_jemalloc_dirty_bytes{ {{- $sel -}} } > 64 * 1024 * 1024 and sse_bridge_jemalloc_dirty_bytes{ {{- $sel -}} } > 0.25 * sse_bridge_jemalloc_resident_bytes{ {{- $sel -}} }
  for: 15m
  labels: {severity: info}
  annotations:
    summary: {{ printf "%s: jemalloc holds {{ $value | humanize1024 }}B of freed pages not yet returned to the OS" $pod | quote }}
    description: RSS above the live heap because the allocator keeps freed pages (normal for a few seconds after a burst, not for minutes). Runbook, case "heap flat, RSS up"; dirty_decay_ms can be shortened.
    runbook_url: {{ printf "%s#runbook-rss-climbing" $doc }}
- alert: SseBridgeMemoryShed
  expr: increase(sse_bridge_memory_shed_streams_total{ {{- $sel -}} }[10m]) > 0 or increase(sse_bridge_memory_shed_ring_bytes_total{ {{- $sel -}} }[10m]) > 0
  labels: {severity: warning}
  annotations:
    summary: {{ printf "%s shed replay entries or streams to stay within its memory budget" $pod | quote }}
    description: The budget is a safety net; if it moves in normal operation the pod is too small (docs/capacity.md).
    runbook_url: {{ printf "%s#replay-memory-brokers" $doc }}
{{- with $v.resources.limits.cpu }}
{{- $cpu := toString . }}
{{- $cores := 0.0 }}
{{- if hasSuffix "m" $cpu }}{{ $cores = divf (float64 (trimSuffix "m" $cpu)) 1000.0 }}{{ else }}{{ $cores = float64 $cpu }}{{ end }}
# CPU (only with a CPU limit: without one there is no ceiling to be near)
- alert: SseBridgeCpuSaturated
  expr: rate(sse_bridge_process_cpu_seconds_total{ {{- $sel -}} }[5m]) > {{ mulf $cores 0.9 }}
  for: 15m
  labels: {severity: warning}
  annotations:
    summary: {{ printf "%s uses {{ $value | humanize }} cores, near its CPU limit of %s" $pod $cpu | quote }}
    description: Throttling stalls every stream at once; delivery latency follows. Raise the limit or add replicas.
    runbook_url: {{ printf "%s#process-health-the-four-numbers-every-runbook-asks-for" $doc }}
{{- end }}
# Tasks and streams
- alert: SseBridgeTasksLeaking
  expr: sse_bridge_tokio_alive_tasks{ {{- $sel -}} } - sse_bridge_open_connections{ {{- $sel -}} } > 100
  for: 30m
  labels: {severity: warning}
  annotations:
    summary: {{ printf "%s has {{ $value }} more tasks than connections" $pod | quote }}
    description: Tasks should track open connections plus about five. Connections that do not end, or tasks that outlive them.
    runbook_url: {{ printf "%s#runbook-tasks-climbing" $doc }}
{{- if gt $maxStreams 0 }}
- alert: SseBridgeNearStreamCap
  expr: sse_bridge_open_connections{ {{- $sel -}} } > {{ $maxStreams }} * 0.9
  for: 5m
  labels: {severity: warning}
  annotations:
    summary: {{ printf "%s holds {{ $value }} connections, near limits.max_streams (%d)" $pod $maxStreams | quote }}
    description: Past the cap new streams are refused (at_capacity). Add replicas or raise the cap with the memory to match (docs/capacity.md).
    runbook_url: {{ printf "%s#connections-and-streams" $doc }}
{{- end }}
{{- if gt $maxPatterns 0 }}
- alert: SseBridgeNearPatternCap
  expr: sse_bridge_distinct_patterns{ {{- $sel -}} } > {{ $maxPatterns }} * 0.8
  for: 10m
  labels: {severity: warning}
  annotations:
    summary: {{ printf "%s: open streams hold over 80%% of limits.max_patterns (%d) distinct patterns" $pod $maxPatterns | quote }}
    description: At the cap new streams with new patterns are refused (pattern_cap, with a retry). Many per-user wildcard filters, or one client holding many; see docs/security.md.
    runbook_url: {{ printf "%s#connections-and-streams" $doc }}
{{- end }}
- alert: SseBridgeReconnectStorm
  expr: sum by (namespace, pod) (rate(sse_bridge_streams_opened_total{ {{- $sel -}} }[5m])) > 10 and sum by (namespace, pod) (rate(sse_bridge_streams_opened_total{ {{- $sel -}} }[5m])) > 3 * sum by (namespace, pod) (rate(sse_bridge_streams_opened_total{ {{- $sel -}} }[1h] offset 5m))
  for: 10m
  labels: {severity: warning}
  annotations:
    summary: {{ printf "%s opens streams at {{ $value | humanize }}/s, over 3 times its usual rate, for 10 minutes" $pod | quote }}
    description: A deploy makes a short spike; a lasting one means clients are being cut and reconnect (disconnects by reason; a proxy timing out quiet streams; max_stream_age too low).
    runbook_url: {{ printf "%s#connections-and-streams" $doc }}
- alert: SseBridgeRefusingAtCapacity
  expr: sum by (namespace, pod, reason) (rate(sse_bridge_requests_rejected_total{ {{- $sel -}}, reason=~"at_capacity|memory_budget"}[5m])) > 0
  for: 5m
  labels: {severity: warning}
  annotations:
    summary: {{ printf "%s refuses new streams: %s" $pod "{{ $labels.reason }}" | quote }}
    description: The stream cap or the memory budget is reached; clients retry after the hint, but the pod is full.
    runbook_url: {{ printf "%s#connections-and-streams" $doc }}
- alert: SseBridgePerIpRefusals
  expr: sum by (namespace, pod, reason) (rate(sse_bridge_requests_rejected_total{ {{- $sel -}}, reason=~"ip_connect_rate|ip_stream_limit"}[5m])) > 1
  for: 15m
  labels: {severity: info}
  annotations:
    summary: {{ printf "%s refuses {{ $value | humanize }} streams/s by per-IP limit (%s)" $pod "{{ $labels.reason }}" | quote }}
    description: Behind a proxy that the bridge does not trust, every client shares the proxy's address (ingress.trustedProxies, docs/deploy.md).
    runbook_url: {{ printf "%s#connections-and-streams" $doc }}
- alert: SseBridgeDrainOverrun
  expr: sse_bridge_drain_streams_left{ {{- $sel -}} } > 0
  for: {{ printf "%ds" (add 60 (include "sse-bridge.durationSeconds" $drain | int64)) }}
  labels: {severity: warning}
  annotations:
    summary: {{ printf "%s: a drain still has {{ $value }} streams to end, a minute past server.drain_timeout (%s)" $pod $drain | quote }}
    description: A paced drain ends every stream within server.drain_timeout; streams still open after it are cut, and a pod still draining a minute later has not exited.
    runbook_url: {{ printf "%s#connections-and-streams" $doc }}
# Delivery
- alert: SseBridgeSlowConsumers
  expr: sum by (namespace, pod) (rate(sse_bridge_disconnects_total{ {{- $sel -}}, reason="slow_consumer"}[5m])) > 0
  for: 10m
  labels: {severity: warning}
  annotations:
    summary: {{ printf "%s keeps disconnecting clients that cannot keep up" $pod | quote }}
    description: Their queues filled (server.queue_capacity) under the disconnect policy.
    runbook_url: {{ printf "%s#runbook-drops-climbing" $doc }}
- alert: SseBridgeEventsDropped
  expr: sum by (namespace, pod, reason) (rate(sse_bridge_dropped_events_total{ {{- $sel -}}, reason!="conflated"}[5m])) > 0
  for: 15m
  labels: {severity: warning}
  annotations:
    summary: {{ printf "%s drops queued events (%s)" $pod "{{ $labels.reason }}" | quote }}
    description: Clients read slower than their topics publish (drop-oldest policy). Conflation by the latest policy is by design and not counted here.
    runbook_url: {{ printf "%s#runbook-drops-climbing" $doc }}
- alert: SseBridgeStreamsBacklogged
  expr: (sum by (namespace, pod) (sse_bridge_queue_depth_streams{ {{- $sel -}}, le="+Inf"}) - sum by (namespace, pod) (sse_bridge_queue_depth_streams{ {{- $sel -}}, le="64"})) > 10 and (sum by (namespace, pod) (sse_bridge_queue_depth_streams{ {{- $sel -}}, le="+Inf"}) - sum by (namespace, pod) (sse_bridge_queue_depth_streams{ {{- $sel -}}, le="64"})) > 0.05 * sum by (namespace, pod) (sse_bridge_queue_depth_streams{ {{- $sel -}}, le="+Inf"})
  for: 10m
  labels: {severity: warning}
  annotations:
    summary: {{ printf "%s: {{ $value }} streams have more than 64 events queued" $pod | quote }}
    description: Many slow clients at once, or the bridge itself cannot write fast enough (check CPU and delivery latency).
    runbook_url: {{ printf "%s#runbook-drops-climbing" $doc }}
- alert: SseBridgeQueuedFramesClimbing
  expr: sse_bridge_queued_frames{ {{- $sel -}} } > 1000 and deriv(sse_bridge_queued_frames{ {{- $sel -}} }[30m]) > 0 and on (namespace, pod) sum by (namespace, pod) (rate(sse_bridge_events_received_total{ {{- $sel -}} }[30m])) <= 1.2 * sum by (namespace, pod) (rate(sse_bridge_events_received_total{ {{- $sel -}} }[30m] offset 30m))
  for: 30m
  labels: {severity: warning}
  annotations:
    summary: {{ printf "%s: {{ $value }} frames queued and climbing while traffic is flat" $pod | quote }}
    description: Stream queues grow without more events coming in; clients read ever slower, or the bridge writes slower than it should.
    runbook_url: {{ printf "%s#runbook-drops-climbing" $doc }}
- alert: SseBridgeDeliveryLatencyHigh
  expr: histogram_quantile(0.99, sum by (namespace, pod, le) (rate(sse_bridge_delivery_latency_seconds_bucket{ {{- $sel -}} }[5m]))) > 0.1
  for: 10m
  labels: {severity: warning}
  annotations:
    summary: {{ printf "%s: p99 delivery latency {{ $value | humanizeDuration }}" $pod | quote }}
    description: From a broker message's arrival to its hand-off to the socket. All clients slow means the bridge is saturated; a few means slow clients.
    runbook_url: {{ printf "%s#runbook-drops-climbing" $doc }}
- alert: SseBridgePublishLatencyHigh
  expr: histogram_quantile(0.99, sum by (namespace, pod, le) (rate(sse_bridge_publish_latency_seconds_bucket{ {{- $sel -}} }[5m]))) > 1
  for: 10m
  labels: {severity: info}
  annotations:
    summary: {{ printf "%s: p99 publisher-to-socket latency {{ $value | humanizeDuration }}" $pod | quote }}
    description: Measured from the publisher's Sse-Published-At stamp, so clock skew between hosts is included.
    runbook_url: {{ printf "%s#events" $doc }}
- alert: SseBridgeIngestSaturated
  expr: sse_bridge_ingest_queue_depth{ {{- $sel -}} } > {{ $ingest }} * 0.8
  for: 5m
  labels: {severity: warning}
  annotations:
    summary: {{ printf "%s: the ingest queue is over 80%% of fanout.ingest_queue (%d)" $pod $ingest | quote }}
    description: The sequencer cannot keep up with the sources; brokers' client buffers absorb the rest until they overflow.
    runbook_url: {{ printf "%s#events" $doc }}
- alert: SseBridgeIngestBytesSaturated
  expr: sse_bridge_ingest_queue_bytes{ {{- $sel -}} } > {{ $ingestBytes }} * 0.8
  for: 5m
  labels: {severity: warning}
  annotations:
    summary: {{ printf "%s: the ingest queue holds over 80%% of fanout.ingest_queue_bytes (%d)" $pod $ingestBytes | quote }}
    description: Large messages arrive faster than the sequencer takes them; the sources' own buffers (nats.buffer_bytes, redis.buffer_bytes) fill next and then drop with a source-dropped gap.
    runbook_url: {{ printf "%s#events" $doc }}
- alert: SseBridgeSourceDropping
  expr: sum by (namespace, pod) (increase(sse_bridge_gap_events_total{ {{- $sel -}}, reason="source-dropped"}[10m])) > 0
  labels: {severity: warning}
  annotations:
    summary: {{ printf "%s: a live source dropped messages (its buffer was full); streams were told with a source-dropped gap" $pod | quote }}
    description: The bridge cannot keep up with the broker. sse_bridge_source_lost_messages_total says how many, by source; add CPU or replicas, or lower the message rate or size.
    runbook_url: {{ printf "%s#events" $doc }}
- alert: SseBridgeDuplicateSources
  expr: increase(sse_bridge_events_duplicate_dropped_total{ {{- $sel -}} }[10m]) > 0
  labels: {severity: info}
  annotations:
    summary: {{ printf "%s drops core NATS copies of messages a JetStream stream also captures" $pod | quote }}
    description: nats.subjects overlaps a stream's subjects as the server reports them; the stream's copy is delivered. Narrow nats.subjects or set jetstream.subjects.
    runbook_url: {{ printf "%s#events" $doc }}
# Event quality
- alert: SseBridgeRingTooShort
  expr: sum by (namespace, pod) (rate(sse_bridge_gap_events_total{ {{- $sel -}}, reason="evicted"}[15m])) > 0
  for: 30m
  labels: {severity: info}
  annotations:
    summary: {{ printf "%s: resuming clients keep finding their events evicted from the replay ring" $pod | quote }}
    description: Clients are away longer than the ring holds; they get an evicted gap event. Size replay.max_total_bytes with docs/capacity.md ("The ring you need").
    runbook_url: {{ printf "%s#events" $doc }}
- alert: SseBridgeMalformedEvents
  expr: sum by (namespace, pod, source) (increase(sse_bridge_events_malformed_total{ {{- $sel -}} }[10m])) > 0
  labels: {severity: warning}
  annotations:
    summary: {{ printf "%s dropped malformed messages from %s" $pod "{{ $labels.source }}" | quote }}
    description: A publisher sends messages the bridge cannot use (e.g. an invalid Redis envelope).
    runbook_url: {{ printf "%s#events" $doc }}
- alert: SseBridgeNonUtf8Payloads
  expr: increase(sse_bridge_events_non_utf8_total{ {{- $sel -}} }[10m]) > 0
  labels: {severity: info}
  annotations:
    summary: {{ printf "%s sent payloads with U+FFFD replacements" $pod | quote }}
    description: Binary payloads on an SSE topic; SSE carries text only.
    runbook_url: {{ printf "%s#events" $doc }}
- alert: SseBridgeEventTypesDropped
  expr: increase(sse_bridge_event_types_dropped_total{ {{- $sel -}} }[10m]) > 0
  labels: {severity: info}
  annotations:
    summary: {{ printf "%s left out unusable or reserved event types" $pod | quote }}
    description: Publishers set an event type the bridge cannot send (line breaks, or the reserved sse-bridge. prefix).
    runbook_url: {{ printf "%s#events" $doc }}
# Durable resume
- alert: SseBridgeResumeBrokerUnavailable
  expr: sum by (namespace, pod, kind) (rate(sse_bridge_resume_broker_reads_total{ {{- $sel -}}, outcome="broker-unavailable"}[5m])) > 0
  for: 10m
  labels: {severity: warning}
  annotations:
    summary: {{ printf "%s cannot read %s history for resuming clients" $pod "{{ $labels.kind }}" | quote }}
    description: Resumes fall back to live with a broker-unavailable gap event.
    runbook_url: {{ printf "%s#replay-memory-brokers" $doc }}
- alert: SseBridgeResumeReadsPinned
  expr: sse_bridge_resume_broker_reads_active{ {{- $sel -}} } >= {{ $reads }}
  for: 5m
  labels: {severity: warning}
  annotations:
    summary: {{ printf "%s: resume reads pinned at resume.max_concurrent_reads (%d)" $pod $reads | quote }}
    description: Resuming clients wait for the broker. Raise the bound or check the broker.
    runbook_url: {{ printf "%s#replay-memory-brokers" $doc }}
- alert: SseBridgeReplayInFlightPinned
  expr: sse_bridge_replay_inflight_bytes{ {{- $sel -}} } >= {{ $inflight }} * 0.9
  for: 5m
  labels: {severity: warning}
  annotations:
    summary: {{ printf "%s: replayed bytes waiting to be written are at resume.max_inflight_bytes (%d)" $pod $inflight | quote }}
    description: Resuming clients do not read their replay; new resumes are refused with replay_budget (they retry).
    runbook_url: {{ printf "%s#replay-memory-brokers" $doc }}
- alert: SseBridgeAllocatorPurgingOften
  expr: rate(sse_bridge_allocator_purges_total{ {{- $sel -}} }[15m]) > 0.5
  for: 30m
  labels: {severity: info}
  annotations:
    summary: {{ printf "%s gives freed memory back to the OS more than every 2 s" $pod | quote }}
    description: Memory churns under steady load (floods, large replays); a few purges after a flood are expected.
    runbook_url: {{ printf "%s#replay-memory-brokers" $doc }}
- alert: SseBridgeUpstreamCapRefusals
  expr: sum by (namespace, pod) (increase(sse_bridge_requests_rejected_total{ {{- $sel -}}, reason=~"upstream_capacity|ip_upstream_limit"}[10m])) > 0
  labels: {severity: warning}
  annotations:
    summary: {{ printf "%s refuses streams: on-demand upstream subscriptions at interest.max_subscriptions (or an address at its share)" $pod | quote }}
    description: Clients retry after the hint. Raise interest.max_subscriptions, or spread clients over more replicas.
    runbook_url: {{ printf "%s#replay-memory-brokers" $doc }}
# Kernel
- alert: SseBridgeConnectionsStuckInHead
  expr: sse_bridge_connections_in_head{ {{- $sel -}} } > {{ $maxStreams }} * 0.5
  for: 5m
  labels: {severity: warning}
  annotations:
    summary: {{ printf "%s: over half of limits.max_streams (%d) connections are still sending their request head" $pod $maxStreams | quote }}
    description: Slow or idle connections that never finish a request (a slowloris pattern, or a proxy holding connections). They are capped per address and closed after server.header_read_timeout.
    runbook_url: {{ printf "%s#connections-and-streams" $doc }}
- alert: SseBridgeFileDescriptorsNearLimit
  expr: process_open_fds{ {{- $sel -}} } > 0.8 * process_max_fds{ {{- $sel -}} }
  for: 5m
  labels: {severity: warning}
  annotations:
    summary: {{ printf "%s uses over 80%% of its file descriptors" $pod | quote }}
    description: Every stream is one descriptor; at the limit accepts fail (EMFILE). Raise the runtime's RLIMIT_NOFILE or add replicas.
    runbook_url: {{ printf "%s#file-descriptors" .capacity }}
{{- end }}
