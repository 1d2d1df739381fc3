//! The one sequencer: every message from every source passes here, one at a time.
//!
//! For each message it assigns the next id of this run, builds the SSE frame once, retains the
//! event in the replay store, publishes the new "last sequence" and then fans the event out. Because one task does all of this in
//! order, every subscriber queue receives events in strictly increasing id order, and a single
//! id is a complete resume cursor for any set of topics (see `docs/architecture.md`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace};

use crate::event::{Event, EventId, frame_event};
use crate::memory::{CHECK_EVERY, MemoryBudget};
use crate::metrics::Metrics;
use crate::policy::DeliveryRules;
use crate::registry::Registry;
use crate::replay::ReplayStore;
use crate::sources::{SourceKind, SourceMessage};

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

/// Assigns ids, frames events and hands them to the registry's fan-out.
#[derive(Debug)]
pub struct Sequencer {
    run: u64,
    next_seq: u64,
    last_seq: Arc<LastSeq>,
    registry: Arc<Registry>,
    replay: Arc<ReplayStore>,
    rules: DeliveryRules,
    memory: Arc<MemoryBudget>,
    metrics: Arc<Metrics>,
    received: [Counter; 3],
}

impl Sequencer {
    /// A sequencer for run `run`, starting at sequence 1.
    pub fn new(
        run: u64,
        last_seq: Arc<LastSeq>,
        registry: Arc<Registry>,
        replay: Arc<ReplayStore>,
        rules: DeliveryRules,
        memory: Arc<MemoryBudget>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let received = [SourceKind::Nats, SourceKind::Redis, SourceKind::Publish].map(|k| metrics.received_counter(k));
        Sequencer { run, next_seq: 1, last_seq, registry, replay, rules, memory, metrics, received }
    }

    /// Consumes messages until every sender is gone or `shutdown` fires.
    pub async fn run(mut self, mut rx: mpsc::Receiver<SourceMessage>, shutdown: CancellationToken) {
        loop {
            let msg = tokio::select! {
                biased;
                m = rx.recv() => m,
                _ = shutdown.cancelled() => None,
            };
            let Some(msg) = msg else { break };
            self.ingest(msg);
        }
        debug!(last_seq = self.next_seq - 1, "Sequencer stopped.");
    }

    /// Sequences, frames and fans out one message; returns the event.
    pub fn ingest(&mut self, msg: SourceMessage) -> Arc<Event> {
        let id = EventId { run: self.run, seq: self.next_seq };
        self.next_seq += 1;
        let (frame, notes) = frame_event(id, msg.event_type.as_deref(), &msg.payload);
        if notes.replaced_invalid_utf8 {
            self.metrics.events_non_utf8.inc();
        }
        if notes.dropped_event_type {
            self.metrics.event_types_dropped.inc();
        }
        self.received[msg.source as usize].inc();
        if id.seq % CHECK_EVERY == 0 && self.memory.limit().is_some() {
            if let Some(shed) = self.memory.check(&self.replay, &self.registry) {
                self.metrics.count_shed(shed);
            }
        }
        let policy = self.rules.policy_for(&msg.topic);
        let event = Arc::new(Event { id, topic: Arc::from(msg.topic), frame, received_at: msg.received_at, policy });
        // Retain, then publish, then fan out: a subscriber that registers after the store sees
        // the sequence and finds the event in the replay store (see docs/architecture.md).
        self.replay.append(&event);
        self.last_seq.0.store(id.seq, Ordering::Release);
        let stats = self.registry.fan_out(&event);
        self.metrics.deliveries.inc_by(stats.delivered as u64);
        if stats.dropped > 0 {
            self.metrics.count_drops("drop_oldest", stats.dropped as u64);
        }
        if stats.conflated > 0 {
            self.metrics.count_drops("conflated", stats.conflated as u64);
        }
        trace!(topic = %event.topic, %id, delivered = stats.delivered, overflowed = stats.overflowed, "Event fanned out.");
        if let Some(reply) = msg.reply {
            let _ = reply.send(id);
        }
        event
    }
}
