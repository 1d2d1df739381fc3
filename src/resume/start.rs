//! The one entry point of a resume: durable plan first, then the ring.

use std::sync::Arc;

use super::context::ResumeContext;
use super::durable::{BrokerResume, plan};
use super::ring::{self, Resumed, RingResume};
use crate::client::ClientQueue;
use crate::telemetry::StreamSpan;
use crate::topic::TopicFilter;

/// The part of a resume that runs in the stream body, after the registration: a broker read
/// or a ring read. The stream is held until it ends.
#[derive(Debug)]
pub enum PendingResume {
    /// Durable streams read back from their brokers (see `durable.rs`).
    Broker(BrokerResume),
    /// The rings read in bounded steps (see `ring.rs`).
    Ring(RingResume),
}

impl PendingResume {
    /// Runs the read and releases the stream; returns what the stream's span records (the
    /// ring path's replay count and gap; the broker path records nothing there).
    pub async fn run(self) -> Option<Resumed> {
        match self {
            PendingResume::Broker(b) => {
                b.run().await;
                None
            }
            PendingResume::Ring(r) => Some(r.run().await),
        }
    }
}

/// Starts a stream's resume from `last_event_id`; call it inside `Registry::subscribe_from`,
/// which runs it atomically with the registration. Takes the snapshot position, queues what is
/// cheap to know (a gap for an id that cannot be placed) and holds the queue for the rest,
/// which the returned work reads outside every lock. Returns the sequence the subscription
/// covers and that work. Without an id nothing is queued.
pub fn start(
    cx: ResumeContext<'_>,
    filters: &[TopicFilter],
    queue: &Arc<ClientQueue>,
    last_event_id: Option<&str>,
    span: Option<&mut StreamSpan>,
) -> (u64, Option<PendingResume>) {
    // Positions first, then the sequence: the sequencer publishes them in the other order.
    let snapshot = (!cx.catalog.is_empty()).then(|| cx.positions.snapshot());
    let upto = cx.last_seq.get();
    let Some(id) = last_event_id else { return (upto, None) };
    if let Some(snapshot) = snapshot
        && let Some((covered, broker)) = plan(&cx, upto, snapshot, filters, queue, id)
    {
        return (covered, broker.map(PendingResume::Broker));
    }
    let ring = ring::resume(&cx, filters, queue, id, upto, span);
    (upto, ring.map(PendingResume::Ring))
}
