//! One subscriber's bounded queue: where fan-out leaves events and the stream body takes them.
//!
//! The queue holds `Arc<Event>`s (the one event built at ingest, shared by every queue and the
//! replay ring), so a full queue costs pointers, not copies. It is bounded by
//! `server.queue_capacity` live events; what happens when a push finds it full is the event's
//! [`SlowConsumerPolicy`] (per topic, from the `[[delivery]]` rules):
//!
//! - `disconnect`: empty the queue, mark it closed and fire the connection's kill switch, so a
//!   stalled socket is dropped even while hyper is blocked writing to it. The client reconnects
//!   and resumes from the replay ring, losing nothing if it catches up within the ring.
//! - `drop-oldest`: drop the oldest queued event and keep going; before the next event the
//!   client gets an `sse-bridge.gap` event (reason `dropped`) naming the topics that lost events.
//! - `latest`: conflate: drop the oldest queued event *of the same topic* (tickers and
//!   dashboards only need the newest value); if there is none, behave like `drop-oldest`.
//!
//! Frames queued with [`ClientQueue::push_backlog`] (opening comment, gap, replay) precede live
//! events and do not count against the capacity; the replay store bounds them.
//!
//! **Resuming streams spill instead of being cut** (policy `spill-reread`). While a stream is
//! resuming (held for its resume read, [`ClientQueue::hold`], or not yet caught up: replayed
//! frames, or live events queued since the resume began, still waiting to be written), a live
//! event of a `disconnect` topic that finds the queue full does not cut it: the queue *spills*: it keeps what it has (at most the capacity) and
//! takes no more live events. The replay and the live events kept go out; then the stream body
//! gets [`Next::Reread`] with the id of the last event written and resumes in place from it, as
//! the client would after a reconnect (rings, or the broker for durable streams), atomically with
//! the fan-out again (`Subscription::restart`). Nothing is lost and the queue stays bounded by
//! its capacity; a socket that stops taking bytes is still cut by `server.write_timeout`.
//! A stream stays resuming until its queue is empty once: a client that comes back after a
//! rollout, onto a replica as busy as the one it left, may read slower than the live rate for a
//! while, and cutting it then would only send it back to resume again (and, further behind,
//! past `resume.max_events`). Once it has caught up, a full queue is a slow consumer again.
//!
//! Bytes are counted too ([`ClientQueue::with_bytes`]): live events against `server.queue_bytes`
//! (a full queue in bytes is full, with the same policy, so 1,024 frames of 16 KiB cannot pin
//! 16 MiB per stalled client), and backlog frames in the `sse_bridge_replay_inflight_bytes`
//! gauge shared by every queue, which caps resumes at admission (`resume.max_inflight_bytes`);
//! a broker resume's frames count there as they are built ([`ClientQueue::reserve_backlog`]),
//! before they are queued.
//! The memory budget sheds the streams that hold the most bytes, backlog included.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;

use crate::config::SlowConsumerPolicy;
use crate::event::{Event, frame_control};

/// The event type of the in-band gap signal (SPEC.md).
pub const GAP_EVENT: &str = "sse-bridge.gap";

/// Why a stream ended, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The bridge is shutting down; the client should reconnect (elsewhere).
    Shutdown,
    /// The client fell `queue_capacity` events behind under the `disconnect` policy.
    SlowConsumer,
    /// A socket write stayed blocked longer than `server.write_timeout`.
    WriteTimeout,
    /// The stream reached `server.max_stream_age`; the client reconnects and resumes.
    MaxAge,
    /// The memory budget shed the stream: what it had queued was dropped, and it ends with a
    /// `retry:` hint and the reason, so the client resumes from the last event it got.
    MemoryBudget,
}

impl CloseReason {
    /// Stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Shutdown => "shutdown",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::WriteTimeout => "write_timeout",
            CloseReason::MaxAge => "max_age",
            CloseReason::MemoryBudget => "memory_budget",
        }
    }

    /// Whether the stream ends cleanly (queued frames first, then the end of the body) rather
    /// than by dropping the connection.
    pub fn is_clean(self) -> bool {
        matches!(self, CloseReason::Shutdown | CloseReason::MaxAge | CloseReason::MemoryBudget)
    }

    /// Whether a replay still being built is queued and written before the end (a clean end
    /// that is not a shed: the memory budget dropped the stream's frames to free them).
    fn keeps_replay(self) -> bool {
        matches!(self, CloseReason::Shutdown | CloseReason::MaxAge)
    }
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// The event is queued.
    Queued,
    /// The queue is (now) closed; the event was not queued.
    Closed,
    /// This push found the queue full and closed it (`disconnect`).
    Overflowed,
    /// The event is queued; an older one was dropped (`drop-oldest`, or `latest` without a
    /// same-topic event to replace) and the client will get a gap event.
    DroppedOldest,
    /// The event is queued; an older event of its topic was replaced (`latest`).
    Conflated,
    /// The queue of a resuming stream is full (or already spilled): the event is not queued
    /// and will be read again from the rings or the broker (see the module doc, `spill-reread`).
    Spilled,
}

/// What the stream body gets from [`ClientQueue::poll_next`].
#[derive(Debug)]
pub enum Next {
    /// A frame to write, with its event when it is a live event (not a backlog frame such as
    /// the opening comment, a gap signal, a heartbeat or a replayed event).
    Frame { frame: Bytes, event: Option<Arc<Event>> },
    /// The stream is over.
    Closed(CloseReason),
    /// The queue spilled (see the module doc) and everything it kept has been taken: the stream
    /// must resume in place from `last_id`, the id of the last frame taken (None if no frame
    /// with an id left since the spill; then the stream can only end and let the client resume).
    Reread { last_id: Option<Bytes> },
}

/// Milliseconds on a process-wide monotonic clock; 0 is reserved for "never".
pub fn now_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Tracks whether a connection's socket writes are blocked, and since when. Updated by the
/// connection's I/O wrapper; read by the housekeeping sweep that enforces the write timeout.
#[derive(Debug, Default)]
pub struct WriteWatch {
    blocked_since_ms: AtomicU64,
}

impl WriteWatch {
    /// The socket refused more bytes (the kernel buffer is full).
    pub fn blocked(&self) {
        if self.blocked_since_ms.load(Ordering::Relaxed) == 0 {
            self.blocked_since_ms.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// The socket accepted bytes.
    pub fn progressed(&self) {
        if self.blocked_since_ms.load(Ordering::Relaxed) != 0 {
            self.blocked_since_ms.store(0, Ordering::Relaxed);
        }
    }

    /// How long writes have been blocked, if they are.
    pub fn blocked_for(&self, now_ms: u64) -> Option<Duration> {
        match self.blocked_since_ms.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_millis(now_ms.saturating_sub(since))),
        }
    }
}

/// The connection a stream runs on: its kill switch and its write watch.
#[derive(Debug, Clone, Default)]
pub struct ConnHandle {
    /// Cancelling drops the connection at once.
    pub kill: CancellationToken,
    /// Whether the socket's writes are blocked, for the write timeout.
    pub write: Arc<WriteWatch>,
}

/// A bounded event queue shared by the fan-out (producer) and one stream body (consumer).
#[derive(Debug)]
pub struct ClientQueue {
    state: Mutex<State>,
    capacity: usize,
    conn: ConnHandle,
    /// When the stream should end cleanly (max stream age), in [`now_ms`] time; 0: never.
    expires_ms: u64,
    /// Durable-stream positions the client already has (from its resume cursor): live events
    /// at or below them are skipped, so a replica that lags the one the client came from sends
    /// no duplicates. Empty unless the stream resumed with a durable cursor.
    have: std::sync::OnceLock<Box<[Option<crate::event::Pos>]>>,
    /// Live bytes beyond which the queue is full (0: only the count bounds it).
    max_bytes: usize,
    /// Where backlog bytes are counted across all queues (replay in flight), if anywhere.
    inflight: Option<Gauge>,
    /// The ids this client must not go below (see [`IdFloor`]); only the stream body takes it.
    /// Unset for every stream that did not resume with a durable cursor.
    floor: Mutex<Option<Box<dyn IdFloor>>>,
    /// Whether `floor` is set: one relaxed load per frame for every other stream.
    floor_set: std::sync::atomic::AtomicBool,
}

/// Keeps a resumed client's ids from going back on any durable stream.
///
/// The sequencer stamps each event once, with its own vector of durable positions, and every
/// queue shares that frame. A client that resumed with a vector ahead of this process on some
/// stream (it came from a replica that had read further, or it got broker frames up to a
/// position the ring's older events predate) would see its id move back if it got those
/// frames as they are, and its next resume would read that stream again. The resume installs
/// a floor (the client's vector, implemented in `crate::resume`, which knows the catalog);
/// the stream body passes every frame with an id through it, and it rewrites the id to the
/// component-wise max of everything the client has had. Once a live event's own vector is at
/// or above the floor everywhere, every later live event's is too (the sequencer's vector only
/// grows), so the floor retires and frames go out shared again.
pub trait IdFloor: Send + Sync + std::fmt::Debug {
    /// `frame` (one that starts with `id:`) as this client must get it: `Some` with a copy
    /// carrying a raised id, or `None` to send it as it is. `live` says the frame is a live
    /// event's; returning `retire = true` then removes the floor.
    fn stamp(&mut self, frame: &Bytes, live: bool) -> Stamped;
}

/// What [`IdFloor::stamp`] made of one frame.
#[derive(Debug)]
pub struct Stamped {
    /// The frame with its id raised to the floor, if it was below it anywhere.
    pub frame: Option<Bytes>,
    /// The floor is no longer needed.
    pub retire: bool,
}

#[derive(Debug)]
enum Item {
    Event(Arc<Event>),
    Control(Bytes),
    /// A replay frame built once for several streams ([`SharedFrame`]).
    Shared(Arc<SharedFrame>),
}

/// A broker resume's replay frame built once and queued for every stream that resumed the same
/// range with the same id and filters (`crate::resume`). It counts its bytes once in the replay
/// in-flight gauge (`sse_bridge_replay_inflight_bytes`) from when it is built until the last
/// stream holding it has written it (or let it go): one allocation, one count, however many
/// queues hold it. Each queue counts it in its own bytes only as its share, the frame's bytes
/// divided by the holders (see [`ClientQueue::queued_bytes`]).
#[derive(Debug)]
pub struct SharedFrame {
    frame: Bytes,
    inflight: Option<Gauge>,
}

impl SharedFrame {
    /// `frame`, counted in `inflight` until it is dropped.
    pub fn new(frame: Bytes, inflight: Option<Gauge>) -> Arc<Self> {
        if let Some(g) = &inflight {
            g.inc_by(frame.len() as i64);
        }
        Arc::new(SharedFrame { frame, inflight })
    }

    /// The frame's bytes.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }
}

impl Drop for SharedFrame {
    fn drop(&mut self) {
        if let Some(g) = &self.inflight {
            g.dec_by(self.frame.len() as i64);
        }
    }
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Item>,
    closed: Option<CloseReason>,
    waker: Option<Waker>,
    /// Something was queued since the last heartbeat offer, so the stream is not idle.
    active: bool,
    /// Items at the front queued by [`ClientQueue::push_backlog`]; not counted by the capacity.
    backlog: usize,
    /// Events dropped by `drop-oldest`/`latest` and not yet reported in a gap event.
    dropped: Option<Dropped>,
    /// While a resume reads from a broker: how many queued items may still leave before the
    /// replay is inserted (see [`ClientQueue::hold`]).
    held: Option<usize>,
    /// Frame bytes of the queued live events.
    live_bytes: usize,
    /// Frame bytes of the queued control frames (backlog: opening, gaps, replay, heartbeats),
    /// and of the replay frames a held stream's resume is building (`reserved`).
    backlog_bytes: usize,
    /// The stream is resuming: held, or not yet caught up with the live events since (set by
    /// `hold`, `release` and `mark_resuming`; cleared once the queue is empty). A full queue
    /// then spills instead of cutting (see the module doc).
    resuming: bool,
    /// Set when the queue spilled while resuming (see the module doc); cleared by
    /// [`ClientQueue::unspill`] when the stream resumes in place.
    spill: Option<Spill>,
    /// Of `backlog_bytes`, those of frames built for [`ClientQueue::release`] and not yet
    /// queued (see [`ClientQueue::reserve_backlog`]).
    reserved: usize,
    /// Frame bytes of the queued [`SharedFrame`]s, in full (not in `backlog_bytes`: each
    /// shared frame counts itself once in the in-flight gauge).
    shared_bytes: usize,
}

/// A spilled queue's account: live events it did not take, and the id of the last frame taken
/// since it spilled (where the in-place resume continues from).
#[derive(Debug, Default)]
struct Spill {
    events: u64,
    last_id: Option<Bytes>,
}

#[derive(Debug, Default)]
struct Dropped {
    count: u64,
    /// Topics that lost events (at most [`MAX_GAP_TOPICS`] named).
    topics: Vec<Arc<str>>,
}

/// Topics named in one `dropped` gap event; more are summarised by the count.
const MAX_GAP_TOPICS: usize = 16;

/// Queue storage beyond this is given back to the allocator once the queue drains, so a burst
/// does not leave every connection holding its high-water mark forever.
const SHRINK_ABOVE: usize = 64;

impl ClientQueue {
    /// A new, open, empty queue; allocates no storage until the first push.
    pub fn new(capacity: usize, conn: ConnHandle, max_age: Option<Duration>) -> Self {
        ClientQueue {
            state: Mutex::new(State::default()),
            capacity,
            conn,
            expires_ms: max_age.map_or(0, |a| now_ms() + a.as_millis() as u64),
            have: std::sync::OnceLock::new(),
            floor: Mutex::new(None),
            floor_set: std::sync::atomic::AtomicBool::new(false),
            max_bytes: 0,
            inflight: None,
        }
    }

    /// Installs the floor this client's ids must not go below (a durable resume does, before
    /// the stream body first polls).
    pub fn set_floor(&self, floor: Box<dyn IdFloor>) {
        *self.floor.lock() = Some(floor);
        self.floor_set.store(true, Ordering::Release);
    }

    /// Passes a frame with an id through the floor, if one is set.
    fn stamp(&self, frame: Bytes, live: bool) -> Bytes {
        if !self.floor_set.load(Ordering::Acquire) || !frame.starts_with(b"id:") {
            return frame;
        }
        let mut g = self.floor.lock();
        let Some(floor) = g.as_mut() else { return frame };
        let out = floor.stamp(&frame, live);
        if out.retire {
            *g = None;
            self.floor_set.store(false, Ordering::Release);
        }
        out.frame.unwrap_or(frame)
    }

    /// Bounds the live events also in bytes (`server.queue_bytes`; 0: by count only) and counts
    /// backlog bytes in `inflight` (`sse_bridge_replay_inflight_bytes`). Call before anything is
    /// queued.
    pub fn with_bytes(mut self, max_bytes: usize, inflight: Gauge) -> Self {
        self.max_bytes = max_bytes;
        self.inflight = Some(inflight);
        self
    }

    /// Whether a live event of `len` bytes finds the queue full: `capacity` events, or
    /// `max_bytes` (one event always fits in an empty queue).
    fn is_full(&self, st: &State, len: usize) -> bool {
        let live = st.items.len() - st.backlog;
        live >= self.capacity || (self.max_bytes > 0 && live > 0 && st.live_bytes + len > self.max_bytes)
    }

    /// Accounts for a control frame of `n` bytes queued (`add`) or gone.
    fn control_bytes(&self, st: &mut State, n: usize, add: bool) {
        if add {
            st.backlog_bytes += n;
        } else {
            st.backlog_bytes -= n;
        }
        if let Some(g) = &self.inflight {
            if add {
                g.inc_by(n as i64);
            } else {
                g.dec_by(n as i64);
            }
        }
    }

    /// Accounts for `item` leaving the queue (written, dropped or discarded).
    fn gone(&self, st: &mut State, item: &Item) {
        match item {
            Item::Event(e) => st.live_bytes -= e.frame.len(),
            Item::Control(b) => self.control_bytes(st, b.len(), false),
            Item::Shared(f) => st.shared_bytes -= f.frame.len(),
        }
    }

    /// Queues a live event, applying its slow-consumer policy when the queue is full.
    pub fn push(&self, event: &Arc<Event>) -> PushOutcome {
        if let Some((stream, pos)) = event.durable
            && self.already_has(stream, pos)
        {
            return PushOutcome::Queued;
        }
        let mut st = self.state.lock();
        if st.closed.is_some() {
            return PushOutcome::Closed;
        }
        let mut outcome = PushOutcome::Queued;
        let len = event.frame.len();
        if let Some(spill) = &mut st.spill {
            spill.events += 1;
            drop(st);
            discard(Item::Event(event.clone()));
            return PushOutcome::Spilled;
        }
        if self.is_full(&st, len) {
            if event.policy == SlowConsumerPolicy::Disconnect && st.resuming {
                // Resuming: spill rather than cut (module doc, `spill-reread`).
                // Until a frame leaves, the newest queued event is where the re-read starts.
                let last_id = st.items.iter().rev().find_map(|i| match i {
                    Item::Event(e) => id_of(&e.frame),
                    Item::Control(_) | Item::Shared(_) => None,
                });
                st.spill = Some(Spill { events: 1, last_id });
                drop(st);
                discard(Item::Event(event.clone()));
                return PushOutcome::Spilled;
            }
            outcome = match event.policy {
                SlowConsumerPolicy::Disconnect => {
                    self.overflow(st);
                    return PushOutcome::Overflowed;
                }
                SlowConsumerPolicy::Latest => self.conflate(&mut st, &event.topic),
                SlowConsumerPolicy::DropOldest => {
                    self.drop_oldest_live(&mut st);
                    PushOutcome::DroppedOldest
                }
            };
            // Full in bytes: one event out may not make room for a larger one.
            while self.is_full(&st, len) && st.items.len() > st.backlog {
                self.drop_oldest_live(&mut st);
                outcome = PushOutcome::DroppedOldest;
            }
        }
        st.live_bytes += len;
        st.items.push_back(Item::Event(event.clone()));
        st.active = true;
        let waker = st.waker.take();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
        outcome
    }

    /// The `disconnect` policy: a push found the queue full. Empties and closes it, then (with
    /// the lock released) fires the kill switch and wakes the body to end the stream.
    fn overflow(&self, mut st: MutexGuard<'_, State>) {
        st.closed = Some(CloseReason::SlowConsumer);
        self.discard_all(&mut st);
        let waker = st.waker.take();
        drop(st);
        self.conn.kill.cancel();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Queues a frame that precedes all live events (the opening comment, the gap signal,
    /// replayed events), outside the capacity: the replay store bounds it. Call it before the
    /// queue is registered for fan-out, or from `Registry::subscribe_from`'s `start`.
    pub fn push_backlog(&self, frame: Bytes) {
        let mut st = self.state.lock();
        if st.closed.is_none() {
            self.control_bytes(&mut st, frame.len(), true);
            st.items.push_back(Item::Control(frame));
            st.backlog += 1;
        }
    }

    /// Ends the stream cleanly after what is queued and then `last` (the drain's jittered
    /// `retry:`), outside the capacity; nothing if the stream has already ended.
    pub fn end_with(&self, last: Bytes) {
        {
            let mut st = self.state.lock();
            if st.closed.is_some() {
                return;
            }
            self.control_bytes(&mut st, last.len(), true);
            st.items.push_back(Item::Control(last));
        }
        self.close(CloseReason::Shutdown);
    }

    /// Sheds the stream for the memory budget: drops everything queued (live events, replay,
    /// and any hold: the resume still building stops, see [`ClientQueue::reserve_backlog`])
    /// and ends it cleanly after `last` (a `retry:` hint with the reason), so the client
    /// resumes from the last event it got instead of seeing its connection cut. A socket that
    /// takes no bytes is still ended by `server.write_timeout`; what it held is freed now.
    /// False if the stream had already ended.
    pub fn shed(&self, last: Bytes) -> bool {
        let waker = {
            let mut st = self.state.lock();
            if st.closed.is_some() {
                return false;
            }
            self.discard_all(&mut st);
            st.held = None;
            st.spill = None;
            st.dropped = None;
            st.closed = Some(CloseReason::MemoryBudget);
            self.control_bytes(&mut st, last.len(), true);
            st.items.push_back(Item::Control(last));
            st.backlog = 1;
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Records the durable positions the client already has (see the `have` field).
    pub fn set_have(&self, positions: Vec<Option<crate::event::Pos>>) {
        let _ = self.have.set(positions.into_boxed_slice());
    }

    /// Whether the client already has position `pos` of durable stream `stream`.
    pub fn already_has(&self, stream: u16, pos: crate::event::Pos) -> bool {
        self.have.get().and_then(|h| h.get(stream as usize).copied().flatten()).is_some_and(|h| pos <= h)
    }

    /// Holds the stream after the frames queued so far: live events keep arriving (under the
    /// capacity and its policy) but nothing more leaves until [`ClientQueue::release`] puts the
    /// broker's replay in front of them. Used while a resume reads from JetStream or Redis.
    pub fn hold(&self) {
        let mut st = self.state.lock();
        st.held = Some(st.items.len());
        st.resuming = true;
    }

    /// Marks the stream as resuming while the replay queued so far (with
    /// [`ClientQueue::push_backlog`]) is written: a full queue spills rather than cuts until
    /// then (see the module doc). `hold` and `release` do it themselves.
    pub fn mark_resuming(&self) {
        self.state.lock().resuming = true;
    }

    /// Counts `n` bytes of replay frames being built for this held stream (a broker resume's
    /// frames, before [`ClientQueue::release`] queues them) in its backlog bytes and the
    /// in-flight gauge, so the memory budget sees them and sheds this stream by them, and the
    /// resume cap counts them. False once the stream was cut (shed, overflowed, gone): the
    /// builder stops and drops what it built; the count was already given back. A stream ending
    /// cleanly (drain, maximum age) still gets its replay written first, as with `release`.
    pub fn reserve_backlog(&self, n: usize) -> bool {
        let mut st = self.state.lock();
        if st.closed.is_some_and(|c| !c.keeps_replay()) {
            return false;
        }
        st.reserved += n;
        self.control_bytes(&mut st, n, true);
        true
    }

    /// Inserts `frames` right after what the hold let through (before every frame queued
    /// since) and lifts the hold. Bytes reserved for them are counted once, as queued frames.
    pub fn release(&self, frames: Vec<Bytes>) {
        self.release_items(frames.into_iter().map(Item::Control).collect());
    }

    /// [`ClientQueue::release`] for a replay built once for several streams: `own` (this
    /// stream's gap signals) first, then the `shared` frames, which count once in the in-flight
    /// gauge whatever the number of queues holding them (see [`SharedFrame`]).
    pub fn release_shared(&self, own: Vec<Bytes>, shared: &[Arc<SharedFrame>]) {
        let items = own.into_iter().map(Item::Control).chain(shared.iter().cloned().map(Item::Shared)).collect();
        self.release_items(items);
    }

    fn release_items(&self, items: Vec<Item>) {
        let waker = {
            let mut st = self.state.lock();
            let reserved = std::mem::take(&mut st.reserved);
            self.control_bytes(&mut st, reserved, false);
            let at = st.held.take().unwrap_or(0).min(st.items.len());
            st.resuming = true;
            if st.closed.is_none_or(CloseReason::keeps_replay) {
                let n = items.len();
                for (i, item) in items.into_iter().enumerate() {
                    match &item {
                        Item::Control(f) => self.control_bytes(&mut st, f.len(), true),
                        Item::Shared(f) => st.shared_bytes += f.frame.len(),
                        Item::Event(_) => unreachable!("a replay holds frames"),
                    }
                    st.items.insert(at + i, item);
                }
                st.backlog += n;
            }
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Inserts `frames` right after what the hold lets through, like [`ClientQueue::release`],
    /// but keeps the stream held behind them: one page of an in-place resume read in pages
    /// (`crate::resume`), the rest of which follows once these are written
    /// ([`ClientQueue::poll_part_written`]). False once the stream was cut: the read stops.
    pub fn release_part(&self, frames: Vec<Bytes>) -> bool {
        let waker = {
            let mut st = self.state.lock();
            let reserved = std::mem::take(&mut st.reserved);
            self.control_bytes(&mut st, reserved, false);
            if st.closed.is_some_and(|c| !c.keeps_replay()) {
                return false;
            }
            let at = st.held.unwrap_or(0).min(st.items.len());
            let n = frames.len();
            for (i, f) in frames.into_iter().enumerate() {
                self.control_bytes(&mut st, f.len(), true);
                st.items.insert(at + i, Item::Control(f));
            }
            st.backlog += n;
            st.held = Some(at + n);
            st.resuming = true;
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Ready once everything a hold lets through has been written (the page of
    /// [`ClientQueue::release_part`]), or the stream ended. Polled by the stream body's own task,
    /// which takes the frames: the waker it leaves is the one `poll_next` leaves.
    pub fn poll_part_written(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.state.lock();
        if st.held.is_none_or(|n| n == 0) || st.closed.is_some() {
            return Poll::Ready(());
        }
        st.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Ends a spill (see the module doc): live events are queued again from now on. Call it
    /// under the registry lock, with the in-place resume that re-reads what the spill left out
    /// (`Subscription::restart`). Returns the live events the spill did not take.
    pub fn unspill(&self) -> u64 {
        self.state.lock().spill.take().map_or(0, |s| s.events)
    }

    /// Whether the queue has spilled and not yet resumed in place.
    pub fn is_spilled(&self) -> bool {
        self.state.lock().spill.is_some()
    }

    /// Queues `frame` if nothing was queued since the previous offer (busy streams carry no
    /// heartbeats; idle ones get one per interval). A heartbeat does not count as activity.
    pub fn offer_heartbeat(&self, frame: &Bytes) {
        let waker = {
            let mut st = self.state.lock();
            let idle = !st.active && st.items.is_empty() && st.closed.is_none() && st.held.is_none();
            st.active = false;
            if !idle {
                return;
            }
            self.control_bytes(&mut st, frame.len(), true);
            st.items.push_back(Item::Control(frame.clone()));
            st.backlog += 1;
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Ends the stream: cleanly (queued frames first) for `Shutdown`/`MaxAge`, at once (the
    /// connection is dropped) otherwise.
    pub fn close(&self, reason: CloseReason) {
        let waker = {
            let mut st = self.state.lock();
            match st.closed {
                None => {}
                // A clean end that cannot be written (the socket is blocked) may still be cut.
                Some(prev) if prev.is_clean() && !reason.is_clean() => {}
                Some(_) => return,
            }
            st.closed = Some(reason);
            if !reason.is_clean() {
                self.discard_all(&mut st);
            }
            st.waker.take()
        };
        if !reason.is_clean() {
            self.conn.kill.cancel();
        }
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Ends the stream if its write has been blocked longer than `timeout` or its age is over;
    /// called by the housekeeping sweep. Returns the reason if it closed the stream.
    pub fn enforce_deadlines(&self, now_ms: u64, write_timeout: Duration) -> Option<CloseReason> {
        if self.conn.write.blocked_for(now_ms).is_some_and(|b| b > write_timeout) {
            self.close(CloseReason::WriteTimeout);
            return Some(CloseReason::WriteTimeout);
        }
        if self.expires_ms != 0 && now_ms >= self.expires_ms && self.closed_reason().is_none() {
            self.close(CloseReason::MaxAge);
            return Some(CloseReason::MaxAge);
        }
        None
    }

    /// Takes the next frame, or registers the task to be woken by the next push or close.
    ///
    /// A clean close still delivers what was queued before it; other closes dropped it.
    pub fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Next> {
        let mut st = self.state.lock();
        if st.held == Some(0) {
            // Nothing after the hold point has been written, so even a clean end (shutdown) can
            // stop here: the client resumes elsewhere from the same id.
            if let Some(reason) = st.closed {
                return Poll::Ready(Next::Closed(reason));
            }
            st.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if st.backlog == 0
            && !st.items.is_empty()
            && let Some(d) = st.dropped.take()
        {
            return Poll::Ready(Next::Frame { frame: dropped_gap(&d), event: None });
        }
        if let Some(item) = st.items.pop_front() {
            self.gone(&mut st, &item);
            st.backlog = st.backlog.saturating_sub(1);
            if let Some(n) = &mut st.held {
                *n -= 1;
            }
            if st.items.is_empty() && st.items.capacity() > SHRINK_ABOVE {
                st.items = VecDeque::new();
            }
            // A resumed stream has caught up once its queue is empty: until then it is still
            // reading what it missed, and a full queue spills rather than cuts.
            if st.items.is_empty() && st.held.is_none() {
                st.resuming = false;
            }
            let spilled = st.spill.is_some();
            drop(st);
            // Outside the state lock: the fan-out never waits for a rewrite.
            let next = match item {
                Item::Event(e) => Next::Frame { frame: self.stamp(e.frame.clone(), true), event: Some(e) },
                Item::Control(frame) => Next::Frame { frame: self.stamp(frame, false), event: None },
                Item::Shared(f) => Next::Frame { frame: self.stamp(f.frame.clone(), false), event: None },
            };
            if spilled
                && let Next::Frame { frame, .. } = &next
                && let Some(id) = id_of(frame)
                && let Some(spill) = &mut self.state.lock().spill
            {
                spill.last_id = Some(id);
            }
            return Poll::Ready(next);
        }
        if let Some(reason) = st.closed {
            return Poll::Ready(Next::Closed(reason));
        }
        if st.held.is_none()
            && let Some(spill) = &st.spill
        {
            // Everything kept has been taken: the stream resumes in place (the spill stays set,
            // so nothing is queued, until `unspill` under the registry lock).
            return Poll::Ready(Next::Reread { last_id: spill.last_id.clone() });
        }
        match &st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Live events waiting (backlog not counted): what the capacity bounds.
    pub fn live_len(&self) -> usize {
        let st = self.state.lock();
        st.items.len() - st.backlog
    }

    /// The queue's capacity in live events.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Items waiting to be written.
    pub fn len(&self) -> usize {
        self.state.lock().items.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes waiting to be written: live events and backlog frames (what the memory budget
    /// sheds by). A replay frame shared with other streams ([`SharedFrame`]) counts as this
    /// stream's share of it, its bytes divided by the queues (and builders) holding it: ending
    /// this stream frees that much of it on average, and all of it once this is the last
    /// holder. (A live event shared by many queues counts in full in each: see
    /// `crate::memory`.)
    pub fn queued_bytes(&self) -> usize {
        let st = self.state.lock();
        let mut shared = 0;
        if st.shared_bytes > 0 {
            for item in &st.items {
                if let Item::Shared(f) = item {
                    shared += f.frame.len() / Arc::strong_count(f).max(1);
                }
            }
        }
        st.live_bytes + st.backlog_bytes + shared
    }

    /// Whether the stream is reading a replay it holds: resuming, with frames queued and none
    /// being built for it, and its socket took bytes within `stall` (its writes are not
    /// blocked, or not for that long). The memory budget does not shed such a stream: what it
    /// holds only shrinks as it reads, while shedding it would have it resume and read (and
    /// build) that replay again.
    pub fn reads_its_replay(&self, now_ms: u64, stall: Duration) -> bool {
        let reading = {
            let st = self.state.lock();
            st.resuming && st.reserved == 0 && st.backlog > 0 && st.closed.is_none()
        };
        reading && self.conn.write.blocked_for(now_ms).is_none_or(|b| b < stall)
    }

    /// Bytes of the replay frames shared with other streams waiting here, in full.
    pub fn shared_bytes(&self) -> usize {
        self.state.lock().shared_bytes
    }

    /// Bytes of the backlog frames waiting (replay, gap signals, opening comment, heartbeats).
    pub fn backlog_bytes(&self) -> usize {
        self.state.lock().backlog_bytes
    }

    /// Why the queue was closed, if it was. Lets the stream body name the reason of a stream
    /// that was cut while hyper was blocked writing (and so never saw the close).
    pub fn closed_reason(&self) -> Option<CloseReason> {
        self.state.lock().closed
    }
}

impl Drop for ClientQueue {
    fn drop(&mut self) {
        // The client is gone: copies still queued were never written.
        let mut st = std::mem::take(self.state.get_mut());
        self.discard_all(&mut st);
    }
}

impl ClientQueue {
    fn discard_all(&self, st: &mut State) {
        st.backlog = 0;
        st.live_bytes = 0;
        st.reserved = 0;
        st.shared_bytes = 0;
        let backlog_bytes = std::mem::take(&mut st.backlog_bytes);
        if let Some(g) = &self.inflight {
            g.dec_by(backlog_bytes as i64);
        }
        for item in std::mem::take(&mut st.items) {
            discard(item);
        }
    }

    /// The `latest` policy: makes room by replacing the oldest queued event of `topic`, or else
    /// like `drop-oldest`.
    fn conflate(&self, st: &mut State, topic: &Arc<str>) -> PushOutcome {
        let first_live = st.backlog;
        let same = st.items.iter().skip(first_live).position(|i| matches!(i, Item::Event(e) if e.topic == *topic));
        match same {
            Some(pos) => {
                if let Some(old) = st.items.remove(first_live + pos) {
                    self.gone(st, &old);
                    discard(old);
                }
                PushOutcome::Conflated
            }
            None => {
                self.drop_oldest_live(st);
                PushOutcome::DroppedOldest
            }
        }
    }

    fn drop_oldest_live(&self, st: &mut State) {
        let first_live = st.backlog;
        let Some(item) = st.items.remove(first_live) else { return };
        self.gone(st, &item);
        if let Item::Event(e) = &item {
            let d = st.dropped.get_or_insert_with(Dropped::default);
            d.count += 1;
            if d.topics.len() < MAX_GAP_TOPICS && !d.topics.contains(&e.topic) {
                d.topics.push(e.topic.clone());
            }
        }
        discard(item);
    }
}

/// Accounts for an event copy that will never be written (for its delivery span).
fn discard(item: Item) {
    if let Item::Event(e) = item
        && let Some(t) = &e.trace
    {
        t.discarded();
    }
}

/// The id of a frame that starts with an `id:` line (as the client will read it), if any.
fn id_of(frame: &Bytes) -> Option<Bytes> {
    let rest = frame.strip_prefix(b"id:")?;
    let end = rest.iter().position(|&b| b == b'\n')?;
    let start = usize::from(rest.first() == Some(&b' '));
    let at = frame.len() - rest.len();
    Some(frame.slice(at + start..at + end))
}

fn dropped_gap(d: &Dropped) -> Bytes {
    let topics: Vec<&str> = d.topics.iter().map(|t| &**t).collect();
    let data = serde_json::json!({ "reason": "dropped", "topics": topics, "dropped": d.count });
    frame_control(GAP_EVENT, &data.to_string())
}

#[cfg(test)]
mod tests;
