//! Resuming from the in-memory rings alone: the path for every id when no durable stream is
//! configured, and for ids the durable plan leaves to the ring.
//!
//! Under the registry lock only the cheap part runs ([`resume`]): a cursor that cannot be
//! placed gets its gap event at once; an id of this run holds the stream ([`ClientQueue::hold`])
//! and returns a [`RingResume`], which the stream body runs: it reads the rings in bounded
//! steps, yielding between them, and then puts the gap event and the replay in front of the
//! live events the fan-out queued meanwhile. The sequencer and the other streams' fan-out
//! never wait on the read.

use std::sync::Arc;

use bytes::Bytes;

use super::context::ResumeContext;
use super::gap::gap_frame;
use crate::client::ClientQueue;
use crate::metrics::Metrics;
use crate::outages::SourceGap;
use crate::replay::collect::Collection;
use crate::replay::{Cursor, GapReason, MAX_CURSOR_LEN, ReplayStore};
use crate::telemetry::StreamSpan;
use crate::topic::{TopicFilter, truncate};

/// Work units per step of the ring read ([`ReplayStore::collect_step`]): about 512 rings,
/// some tens of microseconds under the replay store's lock.
const STEP: usize = 512;

/// What a finished resume reports to the stream's span: events replayed and the gap reason.
pub type Resumed = (usize, Option<&'static str>);

/// The ring read of a resume from an id of this run, run by the stream body before it goes
/// live; the stream is held until it ends.
pub struct RingResume {
    replay: Arc<ReplayStore>,
    metrics: Arc<Metrics>,
    queue: Arc<ClientQueue>,
    collection: Collection,
    last_event_id: String,
    /// Losses of live sources since the cursor (`source-outage`, `source-dropped`), by topics.
    source_gaps: Vec<(SourceGap, Vec<String>)>,
}

impl std::fmt::Debug for RingResume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingResume").field("collection", &self.collection).finish_non_exhaustive()
    }
}

/// Starts a ring resume from `id` covering sequences up to `upto`. A cursor that cannot be
/// placed queues its gap event now (and records it in the metrics and the span); an id of this
/// run with something after it holds the queue and returns the read for the stream body.
pub(super) fn resume(
    cx: &ResumeContext<'_>,
    filters: &[TopicFilter],
    queue: &Arc<ClientQueue>,
    id: &str,
    upto: u64,
    span: Option<&mut StreamSpan>,
) -> Option<RingResume> {
    // Without durable streams the id is `<run>-<seq>`; with them, that is its first part.
    let base = id.split_once('_').map_or(id, |(b, _)| b);
    let last_event_id = truncate(id, MAX_CURSOR_LEN);
    let reason = match Cursor::parse(base, cx.run_id, upto) {
        Cursor::Ours(after) if after >= upto => None,
        Cursor::Ours(after) => {
            queue.hold();
            return Some(RingResume {
                replay: cx.replay.clone(),
                metrics: cx.metrics.clone(),
                queue: queue.clone(),
                collection: Collection::new(filters, after, upto),
                last_event_id: last_event_id.to_owned(),
                // The last outages are few (a bounded log): read under the lock, sent first.
                source_gaps: cx.replay.outages.gaps_since(filters, after),
            });
        }
        Cursor::OtherRun => Some(GapReason::UnknownRun),
        Cursor::Malformed => Some(GapReason::MalformedId),
    };
    if let Some(reason) = reason {
        let topics: Vec<String> = filters.iter().map(|f| f.as_str().to_owned()).collect();
        queue.push_backlog(gap_frame(reason.as_str(), &topics, last_event_id));
        cx.metrics.count_gap(reason.as_str());
    }
    if let Some(s) = span {
        s.resumed(0, reason.map(GapReason::as_str));
    }
    None
}

impl RingResume {
    /// Reads the rings step by step, then releases the held stream with the gap event (when
    /// completeness cannot be proven) and the replay, in id order.
    pub async fn run(mut self) -> Resumed {
        while !self.replay.collect_step(&mut self.collection, STEP) {
            tokio::task::yield_now().await;
        }
        let replay = self.collection.finish();
        let gap = (!replay.incomplete.is_empty()).then_some(GapReason::Evicted.as_str());
        let mut frames: Vec<Bytes> = Vec::with_capacity(replay.events.len() + 1 + self.source_gaps.len());
        if let Some(reason) = gap {
            frames.push(gap_frame(reason, &replay.incomplete, &self.last_event_id));
            self.metrics.count_gap(reason);
        }
        for (lost, topics) in &self.source_gaps {
            frames.push(gap_frame(lost.as_str(), topics, &self.last_event_id));
            self.metrics.count_gap(lost.as_str());
        }
        // A durable cursor ahead of the ring's events (see `durable::plan`'s fast path): what it
        // already places is not replayed.
        let queue = &self.queue;
        let fresh: Vec<_> =
            replay.events.iter().filter(|e| !e.durable.is_some_and(|(s, p)| queue.already_has(s, p))).collect();
        self.metrics.replayed_events.inc_by(fresh.len() as u64);
        frames.extend(fresh.iter().map(|e| e.frame.clone()));
        let n = fresh.len();
        self.queue.release(frames);
        (n, gap)
    }
}
