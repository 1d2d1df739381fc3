//! The one entry point of a resume: durable plan first, then the ring.

use std::sync::Arc;

use super::context::ResumeContext;
use super::durable::{BrokerResume, plan};
use super::ring;
use crate::client::ClientQueue;
use crate::telemetry::StreamSpan;
use crate::topic::TopicFilter;

/// Starts a stream's resume from `last_event_id`; call it inside `Registry::subscribe_from`,
/// which runs it atomically with the registration. Queues the replay (or holds the queue for a
/// broker read) and returns the sequence the subscription covers and, if the broker must be
/// read, the work for the stream body. Without an id nothing is queued.
pub fn start(
    cx: ResumeContext<'_>,
    filters: &[TopicFilter],
    queue: &Arc<ClientQueue>,
    last_event_id: Option<&str>,
    span: Option<&mut StreamSpan>,
) -> (u64, Option<BrokerResume>) {
    // Positions first, then the sequence: the sequencer publishes them in the other order.
    let snapshot = (!cx.catalog.is_empty()).then(|| cx.positions.snapshot());
    let upto = cx.last_seq.get();
    let Some(id) = last_event_id else { return (upto, None) };
    if let Some(snapshot) = snapshot
        && let Some(planned) = plan(&cx, upto, snapshot, filters, queue, id)
    {
        return planned;
    }
    ring::resume(&cx, filters, queue, id, upto, span);
    (upto, None)
}
