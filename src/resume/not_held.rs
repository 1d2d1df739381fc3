//! The `not-held` gap: with `interest = "on-demand"` a replica receives a filter's messages only
//! while some local stream holds it (plus its linger). A resume from a cursor older than the
//! moment the filter was last subscribed without a break cannot be proven complete by the
//! ring, so the stream is told, before its replay, with a gap event of reason `not-held`.
//! Filters only durable streams deliver are left to the durable resume (the broker is the
//! history); cursors of another run already get `unknown-run`.

use super::context::ResumeContext;
use super::gap::{dedup, gap_frame};
use crate::client::ClientQueue;
use crate::interest::Interest;
use crate::replay::{Cursor, MAX_CURSOR_LEN};
use crate::topic::{TopicFilter, truncate};

/// Queues the `not-held` gap for the filters an on-demand source did not hold continuously
/// since `last_event_id`; call it under the registry lock, before the resume proper.
pub fn not_held(
    cx: &ResumeContext<'_>,
    interest: &Interest,
    filters: &[TopicFilter],
    queue: &ClientQueue,
    last_event_id: Option<&str>,
) {
    let Some(id) = last_event_id else { return };
    if !interest.is_on() {
        return;
    }
    let base = id.split_once('_').map_or(id, |(b, _)| b);
    let Cursor::Ours(seq) = Cursor::parse(base, cx.run_id, cx.last_seq.get()) else { return };
    let topics: Vec<String> = filters
        .iter()
        .filter(|f| !cx.catalog.durable_only(f) && interest.held_since(f, seq) == Some(false))
        .map(|f| f.as_str().to_owned())
        .collect();
    if topics.is_empty() {
        return;
    }
    queue.push_backlog(gap_frame("not-held", &dedup(topics), truncate(id, MAX_CURSOR_LEN)));
    cx.metrics.count_gap("not-held");
}
