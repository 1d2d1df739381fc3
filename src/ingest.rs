//! The one sequencer: every message from every source passes here, one at a time.
//!
//! For each message it assigns the next id of this run, builds the SSE frame once, retains the
//! event in the replay store, publishes the new "last sequence" and then fans the event out.
//! A live source's loss signal (an outage, a drop in its client) takes its place in the same
//! order: recorded for resumes, then an `sse-bridge.gap` to the streams the source serves.
//! Because one task does all of this in order, every subscriber queue receives events in
//! strictly increasing id order, and a single id is a complete resume cursor for any set of
//! topics (see `docs/architecture.md`).
//!
//! [`Pipeline`] is everything the sequencer writes to; it is built here from the
//! configuration and shared with the request handlers through the application state.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace};

use crate::client::{GAP_EVENT, PushOutcome};
use crate::config::{Config, SlowConsumerPolicy};
use crate::durable::{Catalog, Pos, Positions};
use crate::event::{Event, EventId, FanoutStats, frame_control, frame_event_with, new_run_id};
use crate::memory::{CHECK_EVERY, MemoryBudget};
use crate::metrics::{Metrics, SourceLabel};
use crate::outages::served;
use crate::policy::DeliveryRules;
use crate::registry::Registry;
use crate::replay::ReplayStore;
use crate::sources::{Ingest, IngestReceiver, SourceKind, SourceMessage, SourceSignal};
use crate::telemetry::{Receive, Telemetry};

/// The highest sequence number assigned so far in this run, published by the sequencer
/// *before* it fans an event out (the ordering the resume check relies on).
#[derive(Debug, Default)]
pub struct LastSeq(AtomicU64);

impl LastSeq {
    /// The last assigned sequence (0 before the first event).
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// The sequencer's shared parts: everything it writes to, which the request handlers, the
/// resume path and the admin side read. Built once from the configuration and shared (as an
/// `Arc<Pipeline>`) by the sequencer and the application state, so there is one owner of each.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// This process's run id: the first half of every event id it assigns.
    pub run_id: u64,
    /// The last sequence assigned, published before each fan-out (the resume check reads it).
    pub last_seq: Arc<LastSeq>,
    /// Who listens to what; the sequencer fans each event out through it.
    pub registry: Arc<Registry>,
    /// Recent events per topic, retained before the fan-out, for resumes.
    pub replay: Arc<ReplayStore>,
    /// Per-topic slow-consumer policy, looked up once per event.
    pub rules: DeliveryRules,
    /// Checked every `CHECK_EVERY` events; sheds rings and slow streams when over.
    pub memory: Arc<MemoryBudget>,
    /// Traces; `Telemetry::off()` unless `telemetry.traces` is on.
    pub telemetry: Arc<Telemetry>,
    /// The daemon's metrics, shared with everything that counts.
    pub metrics: Arc<Metrics>,
    /// Durable streams (JetStream, Redis Streams): the id suffix of each event names them.
    pub catalog: Arc<Catalog>,
    /// Where the sequencer stands in each durable stream, as of the last sequence published.
    pub positions: Arc<Positions>,
}

impl Pipeline {
    /// The pipeline a validated configuration describes, for a new run: a fresh run id, empty
    /// registry and rings (their budget capped by the memory budget), fresh metrics.
    pub fn new(config: &Config, telemetry: Telemetry) -> Self {
        let memory = MemoryBudget::from_config(&config.memory).with_retry(config.server.retry);
        Pipeline {
            run_id: new_run_id(),
            last_seq: Arc::default(),
            registry: Registry::new(config.fanout.shards),
            replay: Arc::new(ReplayStore::new(memory.ring_config(&config.replay))),
            rules: DeliveryRules::new(&config.delivery, config.server.slow_consumer),
            memory: Arc::new(memory),
            telemetry: Arc::new(telemetry),
            metrics: Arc::new(Metrics::new()),
            catalog: Arc::new(Catalog::from_config(config)),
            positions: Arc::default(),
        }
    }
}

/// Assigns ids, frames events and hands them to the registry's fan-out.
#[derive(Debug)]
pub struct Sequencer {
    next_seq: u64,
    p: Arc<Pipeline>,
    received: [Counter; 5],
    /// Position of every durable stream as of the last sequenced event.
    vector: Vec<Option<Pos>>,
    /// `vector` rendered as the id suffix (`_j1a2b:48211…`); rebuilt when it changes.
    suffix: String,
}

impl Sequencer {
    /// A sequencer for the pipeline's run, starting at sequence 1.
    pub fn new(pipeline: Arc<Pipeline>) -> Self {
        let received =
            [SourceKind::Nats, SourceKind::Redis, SourceKind::Publish, SourceKind::JetStream, SourceKind::RedisStreams]
                .map(|k| pipeline.metrics.received_counter(k.as_str()));
        let vector = vec![None; pipeline.catalog.len()];
        Sequencer { next_seq: 1, p: pipeline, received, vector, suffix: String::new() }
    }

    /// Consumes messages and signals until every sender is gone or `shutdown` fires; gives
    /// each message's bytes back to the channel once it has taken the message in.
    pub async fn run(mut self, mut rx: IngestReceiver, shutdown: CancellationToken) {
        loop {
            let item = tokio::select! {
                biased;
                m = rx.recv() => m,
                _ = shutdown.cancelled() => None,
            };
            match item {
                Some(Ingest::Message(msg, bytes)) => {
                    let _ = self.ingest(msg);
                    rx.release(bytes);
                }
                Some(Ingest::Signal(signal)) => self.signal(&signal),
                None => break,
            }
        }
        debug!(last_seq = self.next_seq - 1, "Sequencer stopped.");
    }

    /// A live source may have lost messages (an outage, or its client's buffer dropped):
    /// records the loss for resumes (before telling anyone, as events are retained before they
    /// are published), then queues an `sse-bridge.gap` for every stream whose filters the
    /// source's concerned subscriptions may serve, in order: after every event sequenced before
    /// and ahead of every event after. Each distinct gap frame is built once.
    pub fn signal(&mut self, signal: &SourceSignal) {
        let p = &self.p;
        let reason = signal.gap.as_str();
        let source = signal.source.as_str();
        p.metrics.count_source_gap(source, reason, signal.lost);
        p.replay.outages.record(self.next_seq - 1, signal.gap, signal.spaces.clone());
        let mut frames: HashMap<Vec<String>, Arc<Event>> = HashMap::new();
        let mut told = 0u64;
        p.registry.for_each_subscriber(|filters, queue| {
            let mut topics = served(filters, &signal.spaces);
            topics.sort();
            topics.dedup();
            if topics.is_empty() {
                return;
            }
            let event = frames.entry(topics).or_insert_with_key(|topics| source_gap_event(signal, topics)).clone();
            if matches!(queue.push(&event), PushOutcome::Queued | PushOutcome::DroppedOldest | PushOutcome::Conflated) {
                told += 1;
                p.metrics.count_gap(reason);
            }
        });
        debug!(source, reason, lost = signal.lost, streams = told, "Source loss told to the streams it serves.");
    }

    /// Sequences, frames and fans out one message; returns the event (None for a durable
    /// stream's baseline, which moves the position vector without an event, and for a core
    /// NATS copy of a message a JetStream stream delivers: `Catalog::shadowed`).
    pub fn ingest(&mut self, msg: SourceMessage) -> Option<Arc<Event>> {
        if msg.source == SourceKind::Nats && self.p.catalog.shadowed(&msg.topic) {
            // A JetStream stream captures this subject too: its copy is the one delivered.
            self.p.metrics.events_duplicate_dropped.inc();
            return None;
        }
        if let Some(mark) = msg.durable {
            self.vector[mark.stream as usize] = Some(mark.pos);
            self.suffix.clear();
            self.p.catalog.write_vector(&self.vector, &mut self.suffix);
            if mark.baseline {
                self.p.positions.publish(self.next_seq - 1, &self.vector);
                if let Some(reply) = msg.reply {
                    let _ = reply.send(String::new());
                }
                return None;
            }
        }
        let id = EventId { run: self.p.run_id, seq: self.next_seq };
        self.next_seq += 1;
        // Tracing off: `receive` is None after one branch; nothing below allocates for it.
        let receive = self.p.telemetry.receive(&msg.trace, msg.source.as_str(), &msg.topic, msg.received_at);
        let frame = self.frame(id, &msg);
        let p = &self.p;
        let event = Arc::new(Event {
            id,
            policy: p.rules.policy_for(&msg.topic),
            topic: Arc::from(msg.topic),
            frame,
            received_at: msg.received_at,
            trace: receive.as_ref().map(|r| r.sequenced(id)),
            published_at_ms: msg.trace.published_at_ms,
            durable: msg.durable.map(|m| (m.stream, m.pos)),
        });
        let stats = self.publish_and_fan_out(&event, receive);
        if stats.delivered + stats.overflowed == 0 {
            // What `interest = "on-demand"` saves: a message no open stream wanted.
            p.metrics.events_unwanted.get_or_create(&SourceLabel { source: msg.source.as_str() }).inc();
        }
        if let Some(reply) = msg.reply {
            let _ = reply.send(format!("{id}{}", self.suffix));
        }
        Some(event)
    }

    /// Builds the SSE frame of `msg` as event `id`, counting the message and what framing had
    /// to change; every [`CHECK_EVERY`] events, checks the memory budget too.
    fn frame(&self, id: EventId, msg: &SourceMessage) -> Bytes {
        let p = &self.p;
        let (frame, notes) = frame_event_with(id, &self.suffix, msg.event_type.as_deref(), &msg.payload);
        if notes.replaced_invalid_utf8 {
            p.metrics.events_non_utf8.inc();
        }
        if notes.dropped_event_type {
            p.metrics.event_types_dropped.inc();
        }
        self.received[msg.source as usize].inc();
        if id.seq.is_multiple_of(CHECK_EVERY)
            && p.memory.limit().is_some()
            && let Some(shed) = p.memory.check(&p.replay, &p.registry)
        {
            p.metrics.count_shed(shed.ring_bytes, shed.streams_closed);
        }
        frame
    }

    /// Retains `event`, publishes its sequence, then fans it out and counts what that did.
    fn publish_and_fan_out(&self, event: &Arc<Event>, receive: Option<Receive>) -> FanoutStats {
        let p = &self.p;
        // Retain, then publish, then fan out: a subscriber that registers after the store sees
        // the sequence and finds the event in the replay store (see docs/architecture.md).
        p.replay.append(event);
        if event.durable.is_some() {
            p.positions.publish(event.id.seq, &self.vector);
        }
        p.last_seq.0.store(event.id.seq, Ordering::Release);
        let fan_out_started = receive.as_ref().map(|_| std::time::SystemTime::now());
        let stats = p.registry.fan_out(event);
        if let (Some(r), Some(t), Some(started)) = (receive, &event.trace, fan_out_started) {
            r.fanned_out(started, &event.topic, stats.span_counts(), t);
        }
        p.metrics.deliveries.inc_by(stats.delivered as u64);
        if stats.dropped > 0 {
            p.metrics.count_drops("drop_oldest", stats.dropped as u64);
        }
        if stats.conflated > 0 {
            p.metrics.count_drops("conflated", stats.conflated as u64);
        }
        trace!(topic = %event.topic, id = %event.id, delivered = stats.delivered, overflowed = stats.overflowed, "Event fanned out.");
        stats
    }
}

/// The live gap event of `signal` for a stream whose concerned filters are `topics`: the same
/// `sse-bridge.gap` as a resume's (no `id:`, JSON data with `reason` and `topics`), plus the
/// `source` and, when known, how many messages were `lost`. It goes through the queue as an
/// event (so it keeps its place among live events) on no topic (so `latest` never conflates
/// it), under the `disconnect` policy: a stream too full to take it ends, and its resume from
/// before the loss gets the same gap from the outage record.
fn source_gap_event(signal: &SourceSignal, topics: &[String]) -> Arc<Event> {
    let mut data =
        serde_json::json!({ "reason": signal.gap.as_str(), "topics": topics, "source": signal.source.as_str() });
    if signal.lost > 0 {
        data["lost"] = signal.lost.into();
    }
    Arc::new(Event {
        id: EventId { run: 0, seq: 0 },
        topic: Arc::from(""),
        frame: frame_control(GAP_EVENT, &data.to_string()),
        received_at: std::time::Instant::now(),
        policy: SlowConsumerPolicy::Disconnect,
        trace: None,
        published_at_ms: None,
        durable: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipeline_stands_on_its_configuration_alone() {
        let config = Config::default();
        let p = Arc::new(Pipeline::new(&config, Telemetry::off()));
        assert!(p.run_id < 1 << 48);
        assert_eq!(p.last_seq.get(), 0);
        let mut seq = Sequencer::new(p.clone());
        let msg = SourceMessage::new(SourceKind::Publish, "t".into(), bytes::Bytes::from_static(b"x"));
        let event = seq.ingest(msg).expect("an event");
        assert_eq!(event.id, EventId { run: p.run_id, seq: 1 });
        assert_eq!(p.last_seq.get(), 1);
        assert_eq!(p.replay.stats().events, 1);
    }
}
