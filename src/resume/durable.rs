//! Resuming from durable history: what a stream replays when its `Last-Event-ID` is older than
//! the ring, comes from before a restart, or from another replica.
//!
//! The plan is made atomically with the registration (inside `Registry::subscribe_from`):
//! it reads where the sequencer stands in every durable stream (the [`Snapshot`]) and the last
//! published sequence. Then, per durable stream, the broker supplies `(cursor, snapshot]`; the
//! ring supplies whatever was sequenced after the snapshot (durable topics) and, for an id of
//! this run, non-durable events after the cursor; the live fan-out supplies the rest. The
//! stream is held ([`ClientQueue::hold`]) while the broker is read, then the replay is put in
//! front of what the ring and the fan-out queued meanwhile: in order, no gap, no duplicate.
//!
//! A stream is read from the rings instead of the broker, even for an id of another run, when
//! the rings provably hold every event the client missed on it: this run started reading the
//! stream at or before the client's position, and no ring the filters select evicted or forgot
//! an event of it after that position (`ReplayStore::kept_durable_after`). After a rollout
//! every client comes back with the old replica's id within seconds; the new replica's rings
//! serve them all without a broker read each.
//!
//! Every such stream gets an id floor ([`Floor`]): its ids never go below its cursor, nor below
//! any id it got before, on any durable stream.

use std::sync::Arc;

use bytes::Bytes;

use super::context::ResumeContext;
use super::floor::Floor;
use super::gap::{dedup, gap_frame};
use super::reader::ShareKey;
use super::reader::{BrokerReader, ReadLimit};
use crate::client::ClientQueue;
use crate::durable::{Catalog, Pos, Snapshot};
use crate::event::{Event, FrameChunks};
use crate::metrics::Metrics;
use crate::replay::{Cursor, MAX_CURSOR_LEN};
use crate::topic::{TopicFilter, truncate};

/// Gap signals still to send: (reason, topics), in the order they are sent.
type Gaps = Vec<(&'static str, Vec<String>)>;

/// A broker range to read: (stream index, after, up to and including).
type Read = (usize, Pos, Pos);

/// The broker part of a resume, run by the stream body before it goes live.
pub struct BrokerResume {
    reader: Arc<BrokerReader>,
    catalog: Arc<Catalog>,
    metrics: Arc<Metrics>,
    queue: Arc<ClientQueue>,
    filters: Vec<TopicFilter>,
    /// The run-local part of the client's id, kept in replayed ids.
    base: String,
    vector: Vec<Option<Pos>>,
    reads: Vec<Read>,
    gaps: Gaps,
    last_event_id: String,
    /// Which events of a range longer than `resume.max_events` are read (see `ReadLimit`).
    limit: ReadLimit,
}

impl std::fmt::Debug for BrokerResume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerResume").field("reads", &self.reads).finish_non_exhaustive()
    }
}

/// Plans a resume from `id` when durable streams are configured and the ring alone cannot
/// serve it; `upto` and `snap` were read under the registry lock. Returns the sequence the
/// subscription covers and, if the broker must be read, the work for the stream body; None
/// leaves the resume to the ring (an id of this run the ring still covers, or an id that
/// carries no durable positions).
pub(super) fn plan(
    cx: &ResumeContext<'_>,
    upto: u64,
    snap: Snapshot,
    filters: &[TopicFilter],
    queue: &Arc<ClientQueue>,
    id: &str,
) -> Option<(u64, Option<BrokerResume>)> {
    let (base, vector) = cx.catalog.parse_cursor(id);
    let mut vector = vector?;
    let cursor = Cursor::parse(base, cx.run_id, upto);
    let ours = match cursor {
        Cursor::Ours(seq) => {
            // The ring has all of it: the fast path (a bounded check; the ring path reads later).
            if cx.replay.covers(filters, seq, upto) {
                // The vector may be ahead of the ring's events (broker frames, ids raised by a
                // floor): live and replayed durable events it already places are skipped, and
                // ids stay at or above it.
                queue.set_have(vector.clone());
                queue.set_floor(Box::new(Floor::new(cx.catalog.clone(), vector)));
                return None;
            }
            Some(seq)
        }
        Cursor::OtherRun => None,
        Cursor::Malformed if vector.iter().all(Option::is_none) => return None,
        Cursor::Malformed => None,
    };
    let covered = upto.max(snap.seq);
    let (mut reads, ring_served, mut gaps) = broker_reads(cx, filters, &mut vector, &snap, ours);
    // The in-place resume of a spilled stream, while every broker read slot is taken: its read
    // would wait behind a herd's reads while its queue spills again, and return the newest
    // `max_events` anyway. The rings hold the newest events: it takes them, behind a
    // `replay-limit` gap, at once.
    let newest_from_ring: Vec<(usize, Pos)> = if cx.in_place && !reads.is_empty() && cx.reader.is_contended() {
        reads.drain(..).map(|(idx, after, _)| (idx, after)).collect()
    } else {
        Vec::new()
    };
    let from_rings: Vec<(usize, Pos)> = ring_served.iter().chain(&newest_from_ring).copied().collect();
    let mut events = from_ring(cx, filters, &vector, snap.seq, ours, covered, &from_rings, &mut gaps);
    if !newest_from_ring.is_empty() {
        let topics = newest_from_ring
            .iter()
            .flat_map(|&(idx, _)| {
                let stream = cx.catalog.get(idx);
                filters.iter().filter(|f| stream.may_serve(f)).map(|f| f.as_str().to_owned())
            })
            .collect();
        gaps.push(("replay-limit", dedup(topics)));
    }
    // The sequencer appends to the rings without the registry lock, so a ring may have evicted
    // an event of a ring-served stream between the check and the read. Evictions only go
    // forward: still kept now means it was kept when read; if not, the broker serves it.
    for &(idx, after) in &ring_served {
        if !cx.replay.kept_durable_after(filters, idx as u16, after) {
            events.retain(|e| !(e.id.seq <= snap.seq && e.durable.is_some_and(|(s, _)| s as usize == idx)));
            if let Some(now) = snap.positions.get(idx).copied().flatten() {
                reads.push((idx, after, now));
            }
        }
    }
    queue.set_have(vector.clone());
    queue.set_floor(Box::new(Floor::new(cx.catalog.clone(), vector.clone())));
    cx.metrics.replayed_events.inc_by(events.len() as u64);

    let last_event_id = truncate(id, MAX_CURSOR_LEN).to_owned();
    if reads.is_empty() {
        for (reason, topics) in &gaps {
            queue.push_backlog(gap_frame(reason, topics, &last_event_id));
            cx.metrics.count_gap(reason);
        }
        if !events.is_empty() {
            queue.mark_resuming();
        }
        for e in events {
            queue.push_backlog(e.frame.clone());
        }
        return Some((covered, None));
    }
    queue.hold();
    for e in events {
        queue.push_backlog(e.frame.clone());
    }
    let resume = BrokerResume {
        reader: cx.reader.clone(),
        catalog: cx.catalog.clone(),
        metrics: cx.metrics.clone(),
        queue: queue.clone(),
        filters: filters.to_vec(),
        base: base.to_owned(),
        vector,
        reads,
        gaps,
        last_event_id,
        limit: if cx.in_place { ReadLimit::Oldest } else { ReadLimit::Newest },
    };
    Some((covered, Some(resume)))
}

/// Per durable stream the filters may select: the range the broker must supply, the streams
/// the rings provably hold from the client's position on (with that position), or why neither
/// can (the id does not place the stream, or the sequencer has no position for it yet). A
/// position from before the stream started over (see [`Snapshot::crossed_reset`]) gets a
/// `stream-reset` gap and the new stream from its start; `vector` then says so.
fn broker_reads(
    cx: &ResumeContext<'_>,
    filters: &[TopicFilter],
    vector: &mut [Option<Pos>],
    snap: &Snapshot,
    ours: Option<u64>,
) -> (Vec<Read>, Vec<(usize, Pos)>, Gaps) {
    let catalog = cx.catalog;
    let mut reads = Vec::new();
    let mut ring_served = Vec::new();
    let mut unavailable = Vec::new();
    let mut unplaced = Vec::new();
    let mut reset = Vec::new();
    for (idx, stream) in catalog.iter() {
        let topics: Vec<String> =
            filters.iter().filter(|f| stream.may_serve(f)).map(|f| f.as_str().to_owned()).collect();
        if topics.is_empty() {
            continue;
        }
        match (vector[idx], snap.positions.get(idx).copied().flatten()) {
            (Some(after), now) if snap.crossed_reset(idx, after, ours) => {
                reset.extend(topics);
                vector[idx] = Some(Pos::default());
                reads.extend(now.filter(|n| *n > Pos::default()).map(|n| (idx, Pos::default(), n)));
            }
            (None, _) => unplaced.extend(topics),
            (Some(_), None) => unavailable.extend(topics),
            (Some(after), Some(now)) if after < now => {
                let since = snap.since.get(idx).copied().flatten();
                if since.is_some_and(|s| s <= after) && cx.replay.kept_durable_after(filters, idx as u16, after) {
                    ring_served.push((idx, after));
                } else {
                    reads.push((idx, after, now));
                }
            }
            // Nothing new, or this process is behind the client on the stream: live events it
            // already has are skipped, and the floor keeps its ids from going back.
            (Some(_), Some(_)) => {}
        }
    }
    let mut gaps = Gaps::new();
    if !unplaced.is_empty() {
        gaps.push(("unknown-position", dedup(unplaced)));
    }
    if !unavailable.is_empty() {
        gaps.push(("broker-unavailable", dedup(unavailable)));
    }
    if !reset.is_empty() {
        gaps.push(("stream-reset", dedup(reset)));
    }
    (reads, ring_served, gaps)
}

/// The ring's part, in id order: durable events sequenced after the snapshot (`snap_seq`) that
/// the client has not seen, events of the `ring_served` streams after the client's position
/// in them, and non-durable events after an id of this run (`ours`). Adds the `evicted` gap
/// first and the `unknown-run` gap last when they apply.
#[allow(clippy::too_many_arguments)]
fn from_ring(
    cx: &ResumeContext<'_>,
    filters: &[TopicFilter],
    vector: &[Option<Pos>],
    snap_seq: u64,
    ours: Option<u64>,
    covered: u64,
    ring_served: &[(usize, Pos)],
    gaps: &mut Gaps,
) -> Vec<Arc<Event>> {
    let catalog = cx.catalog;
    let is_durable = |t: &str| catalog.owner_of(t).is_some();
    let after_snap = cx.replay.collect(filters, snap_seq, covered);
    let mut events: Vec<_> = after_snap
        .events
        .into_iter()
        .filter(|e| e.durable.is_some_and(|(s, p)| vector[s as usize].is_none_or(|have| p > have)))
        .collect();
    if !ring_served.is_empty() {
        let served = |s: u16, p: Pos| ring_served.iter().any(|&(i, after)| i == s as usize && p > after);
        let kept = cx.replay.collect(filters, 0, snap_seq);
        events.extend(kept.events.into_iter().filter(|e| e.durable.is_some_and(|(s, p)| served(s, p))));
    }
    let mut evicted: Vec<String> = after_snap.incomplete.into_iter().filter(|t| is_durable(t)).collect();
    let nondurable: Vec<&TopicFilter> = filters.iter().filter(|f| !catalog.durable_only(f)).collect();
    match ours {
        Some(seq) => {
            let r = cx.replay.collect(filters, seq, covered);
            events.extend(r.events.into_iter().filter(|e| e.durable.is_none()));
            evicted.extend(r.incomplete.into_iter().filter(|t| !is_durable(t)));
            gaps.extend(cx.replay.outages.gaps_since(filters, seq).into_iter().map(|(g, t)| (g.as_str(), t)));
        }
        None if !nondurable.is_empty() => {
            gaps.push(("unknown-run", nondurable.iter().map(|f| f.as_str().to_owned()).collect()));
        }
        None => {}
    }
    if !evicted.is_empty() {
        gaps.insert(0, ("evicted", dedup(evicted)));
    }
    events.sort_unstable_by_key(|e| e.id.seq);
    events.dedup_by_key(|e| e.id.seq);
    events
}

impl BrokerResume {
    /// Reads the broker, then puts the gap signals and the replay in front of the stream. Each
    /// frame is counted against the stream's bytes as it is built (up to `resume.max_events` ×
    /// the message size per stream read), so the memory budget can shed this stream before its
    /// replay is queued; a stream that ended meanwhile stops building.
    ///
    /// Read in pages (an in-place resume, [`ReadLimit::Oldest`]), each full page is put in
    /// front of the stream as soon as it is built, with the stream still held behind it, and
    /// the next page is read once the client has written it: one page in memory at a time.
    ///
    /// Read newest-first (a reconnect), the frames are built once for every stream resuming
    /// the same ranges from the same id with the same filters ([`BrokerResume::run_shared`]).
    pub async fn run(mut self) {
        if self.limit == ReadLimit::Newest {
            return self.run_shared().await;
        }
        let mut frames: Vec<Bytes> = Vec::new();
        let mut suffix = String::new();
        let mut chunks = FrameChunks::default();
        for (idx, mut after, upto) in std::mem::take(&mut self.reads) {
            let read_filters = self.reader.read_filters(idx, &self.filters);
            loop {
                // Pages only while the reader has a free slot: under a resume herd every page
                // would wait behind everyone's reads and the stream would fall further behind
                // the more it read; it then takes the newest events, like any resume.
                let limit = match self.limit {
                    ReadLimit::Oldest if self.reader.is_contended() => ReadLimit::Newest,
                    l => l,
                };
                let out = self.reader.read(idx, after, upto, read_filters.clone(), limit).await;
                if let Some(g) = out.gap {
                    let stream = self.catalog.get(idx);
                    let topics =
                        self.filters.iter().filter(|f| stream.may_serve(f)).map(|f| f.as_str().to_owned()).collect();
                    self.gaps.push((g.as_str(), topics));
                }
                for e in &out.events {
                    if !self.filters.iter().any(|f| f.matches(&e.topic)) {
                        continue;
                    }
                    self.vector[idx] = Some(e.pos);
                    suffix.clear();
                    self.catalog.write_vector(&self.vector, &mut suffix);
                    let frame = chunks.frame_event_with(&self.base, &suffix, e.event_type.as_deref(), &e.payload).0;
                    if !self.queue.reserve_backlog(frame.len()) {
                        self.queue.release(Vec::new());
                        return;
                    }
                    frames.push(frame);
                }
                let Some(next) = out.more.filter(|next| *next > after) else { break };
                after = next;
                // A full page: out in front of the stream, then the next one once it is written.
                let page = self.with_gaps(std::mem::take(&mut frames));
                if !self.queue.release_part(page) {
                    return;
                }
                self.metrics.resume_pages.inc();
                std::future::poll_fn(|cx| self.queue.poll_part_written(cx)).await;
            }
        }
        let out = self.with_gaps(frames);
        self.queue.release(out);
    }

    /// The newest-first resume: its frames come from the build shared by every resume with the
    /// same key (`share.rs`), counted once in the in-flight gauge as they are built; its gap
    /// signals are its own. A stream cut while the frames are built stops waiting for them (the
    /// build is dropped once no stream waits for it).
    async fn run_shared(mut self) {
        let mut filters = self.filters.clone();
        filters.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        filters.dedup();
        let key = ShareKey {
            base: self.base.clone(),
            vector: self.vector.clone(),
            reads: std::mem::take(&mut self.reads),
            filters,
        };
        let (replay, joined) = self.reader.replay_frames(key).await;
        if joined {
            self.metrics.resume_frames_shared.inc();
        }
        for &(idx, g) in &replay.gaps {
            let stream = self.catalog.get(idx);
            let topics = self.filters.iter().filter(|f| stream.may_serve(f)).map(|f| f.as_str().to_owned()).collect();
            self.gaps.push((g.as_str(), topics));
        }
        let own = self.with_gaps(Vec::new());
        self.metrics.replayed_from_broker.inc_by(replay.frames.len() as u64);
        self.queue.release_shared(own, &replay.frames);
    }

    /// `frames` behind the gap signals not yet sent; counts both.
    fn with_gaps(&mut self, frames: Vec<Bytes>) -> Vec<Bytes> {
        self.metrics.replayed_from_broker.inc_by(frames.len() as u64);
        let mut out: Vec<Bytes> = Vec::with_capacity(self.gaps.len() + frames.len());
        for (reason, topics) in self.gaps.drain(..) {
            out.push(gap_frame(reason, &topics, &self.last_event_id));
            self.metrics.count_gap(reason);
        }
        out.extend(frames);
        out
    }
}
