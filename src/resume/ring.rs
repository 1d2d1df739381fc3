//! Resuming from the in-memory rings alone: the path for every id when no durable stream is
//! configured, and for ids the durable plan leaves to the ring.

use super::context::ResumeContext;
use super::gap::gap_frame;
use crate::client::ClientQueue;
use crate::replay::{Cursor, MAX_CURSOR_LEN};
use crate::telemetry::StreamSpan;
use crate::topic::{TopicFilter, truncate};

/// Queues what the rings hold after `id` up to `upto` on `queue`, behind a gap event when
/// completeness cannot be proven (evicted, another run, not our id), and records it in the
/// metrics and the stream's span.
pub(super) fn resume(
    cx: &ResumeContext<'_>,
    filters: &[TopicFilter],
    queue: &ClientQueue,
    id: &str,
    upto: u64,
    span: Option<&mut StreamSpan>,
) {
    // Without durable streams the id is `<run>-<seq>`; with them, that is its first part.
    let base = id.split_once('_').map_or(id, |(b, _)| b);
    let plan = cx.replay.resume(filters, Cursor::parse(base, cx.run_id, upto), upto);
    if let Some((reason, gap_topics)) = &plan.gap {
        queue.push_backlog(gap_frame(reason.as_str(), gap_topics, truncate(id, MAX_CURSOR_LEN)));
        cx.metrics.count_gap(reason.as_str());
    }
    cx.metrics.replayed_events.inc_by(plan.events.len() as u64);
    if let Some(s) = span {
        s.resumed(plan.events.len(), plan.gap.as_ref().map(|(r, _)| r.as_str()));
    }
    // A durable cursor ahead of the ring's events (see `durable::plan`'s fast path): what it
    // already places is not replayed.
    for e in plan.events {
        if e.durable.is_some_and(|(s, p)| queue.already_has(s, p)) {
            continue;
        }
        queue.push_backlog(e.frame.clone());
    }
}
