//! One subscriber's bounded queue: where fan-out leaves frames and the stream body takes them.
//!
//! The queue holds refcounted frames (`Bytes` clones of the one frame built at ingest), so a
//! full queue costs pointers, not copies. It is bounded by `server.queue_capacity`; when a push
//! finds it full, the [`SlowConsumerPolicy`] decides: today `Disconnect`, which empties the
//! queue, marks it closed and fires the connection's kill switch, so a stalled socket is
//! dropped even if hyper is blocked writing to it and never polls the body again.

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::config::SlowConsumerPolicy;

/// Why a stream ended, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The bridge is shutting down; the client should reconnect (elsewhere).
    Shutdown,
    /// The client fell `queue_capacity` events behind and was disconnected.
    SlowConsumer,
}

impl CloseReason {
    /// Stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Shutdown => "shutdown",
            CloseReason::SlowConsumer => "slow_consumer",
        }
    }
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// The frame is queued.
    Queued,
    /// The queue is (now) closed; the frame was not queued.
    Closed,
    /// This push found the queue full and closed it under the slow-consumer policy.
    Overflowed,
}

/// What the stream body gets from [`ClientQueue::poll_next`].
#[derive(Debug)]
pub enum Next {
    /// A frame to write.
    Frame(Bytes),
    /// The stream is over.
    Closed(CloseReason),
}

/// A bounded frame queue shared by the fan-out (producer) and one stream body (consumer).
#[derive(Debug)]
pub struct ClientQueue {
    state: Mutex<State>,
    capacity: usize,
    policy: SlowConsumerPolicy,
    /// Cancelling drops the client's connection; see the module docs.
    kill: CancellationToken,
}

#[derive(Debug)]
struct State {
    frames: VecDeque<Bytes>,
    closed: Option<CloseReason>,
    waker: Option<Waker>,
    /// Something was queued since the last heartbeat tick, so the stream is not idle.
    active: bool,
    /// Frames at the front queued by [`ClientQueue::push_backlog`] (opening, gap, replay); they
    /// do not count against the capacity, which bounds only live frames.
    backlog: usize,
}

/// Frames buffered beyond this are given back to the allocator once the queue drains, so a
/// burst does not leave every connection holding its high-water mark forever.
const SHRINK_ABOVE: usize = 64;

impl ClientQueue {
    /// A new, open, empty queue; allocates no frame storage until the first push.
    pub fn new(capacity: usize, policy: SlowConsumerPolicy, kill: CancellationToken) -> Self {
        ClientQueue {
            state: Mutex::new(State { frames: VecDeque::new(), closed: None, waker: None, active: false, backlog: 0 }),
            capacity,
            policy,
            kill,
        }
    }

    /// Queues a frame for the client, applying the slow-consumer policy when full.
    pub fn push(&self, frame: Bytes) -> PushOutcome {
        self.push_inner(frame, true)
    }

    fn push_inner(&self, frame: Bytes, mark_active: bool) -> PushOutcome {
        let waker;
        {
            let mut st = self.state.lock();
            if st.closed.is_some() {
                return PushOutcome::Closed;
            }
            if st.frames.len() - st.backlog >= self.capacity {
                match self.policy {
                    SlowConsumerPolicy::Disconnect => {
                        st.closed = Some(CloseReason::SlowConsumer);
                        st.frames = VecDeque::new();
                        waker = st.waker.take();
                        drop(st);
                        self.kill.cancel();
                        if let Some(w) = waker {
                            w.wake();
                        }
                        return PushOutcome::Overflowed;
                    }
                }
            }
            st.frames.push_back(frame);
            st.active |= mark_active;
            waker = st.waker.take();
        }
        if let Some(w) = waker {
            w.wake();
        }
        PushOutcome::Queued
    }

    /// Queues a frame that precedes all live frames (the opening comment, the gap signal,
    /// replayed events), outside the capacity: its size is bounded by the replay store.
    /// Must be called before the queue is registered for fan-out or under the registry lock.
    pub fn push_backlog(&self, frame: Bytes) {
        let mut st = self.state.lock();
        if st.closed.is_none() {
            st.frames.push_back(frame);
            st.backlog += 1;
        }
    }

    /// Queues `frame` only if nothing was queued since the previous call; used by the global
    /// heartbeat so busy streams carry no heartbeats and idle ones get one per interval.
    pub fn push_heartbeat(&self, frame: &Bytes) {
        let idle = {
            let mut st = self.state.lock();
            let idle = !st.active && st.frames.is_empty();
            st.active = false;
            idle
        };
        if idle {
            self.push_inner(frame.clone(), false);
        }
    }

    /// Ends the stream once the queued frames are written (a clean end, e.g. on shutdown).
    pub fn close(&self, reason: CloseReason) {
        let waker = {
            let mut st = self.state.lock();
            if st.closed.is_some() {
                return;
            }
            st.closed = Some(reason);
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Takes the next frame, or registers the task to be woken by the next push or close.
    ///
    /// A clean close still delivers what was queued before it; an overflow already dropped it.
    pub fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Next> {
        let mut st = self.state.lock();
        if let Some(f) = st.frames.pop_front() {
            st.backlog = st.backlog.saturating_sub(1);
            if st.frames.is_empty() && st.frames.capacity() > SHRINK_ABOVE {
                st.frames = VecDeque::new();
            }
            return Poll::Ready(Next::Frame(f));
        }
        if let Some(reason) = st.closed {
            return Poll::Ready(Next::Closed(reason));
        }
        match &st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Why the queue was closed, if it was.
    pub fn closed_reason(&self) -> Option<CloseReason> {
        self.state.lock().closed
    }

    /// Frames waiting to be written.
    pub fn len(&self) -> usize {
        self.state.lock().frames.len()
    }

    /// Whether no frame is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn poll(q: &ClientQueue) -> Poll<Next> {
        q.poll_next(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn overflow_disconnects_and_frees() {
        let kill = CancellationToken::new();
        let q = ClientQueue::new(2, SlowConsumerPolicy::Disconnect, kill.clone());
        assert_eq!(q.push(Bytes::from_static(b"a")), PushOutcome::Queued);
        assert_eq!(q.push(Bytes::from_static(b"b")), PushOutcome::Queued);
        assert_eq!(q.push(Bytes::from_static(b"c")), PushOutcome::Overflowed);
        assert!(kill.is_cancelled());
        assert_eq!(q.len(), 0);
        assert!(matches!(poll(&q), Poll::Ready(Next::Closed(CloseReason::SlowConsumer))));
        assert_eq!(q.push(Bytes::from_static(b"d")), PushOutcome::Closed);
    }

    #[test]
    fn backlog_does_not_count_against_capacity() {
        let q = ClientQueue::new(1, SlowConsumerPolicy::Disconnect, CancellationToken::new());
        for _ in 0..5 {
            q.push_backlog(Bytes::from_static(b"r"));
        }
        assert_eq!(q.push(Bytes::from_static(b"live")), PushOutcome::Queued);
        assert_eq!(q.push(Bytes::from_static(b"live2")), PushOutcome::Overflowed);
    }

    #[test]
    fn clean_close_drains_first() {
        let q = ClientQueue::new(4, SlowConsumerPolicy::Disconnect, CancellationToken::new());
        q.push(Bytes::from_static(b"a"));
        q.close(CloseReason::Shutdown);
        assert!(matches!(poll(&q), Poll::Ready(Next::Frame(_))));
        assert!(matches!(poll(&q), Poll::Ready(Next::Closed(CloseReason::Shutdown))));
    }

    #[test]
    fn heartbeat_only_when_idle() {
        let q = ClientQueue::new(4, SlowConsumerPolicy::Disconnect, CancellationToken::new());
        let hb = Bytes::from_static(b":\n\n");
        q.push(Bytes::from_static(b"a"));
        let _ = poll(&q);
        q.push_heartbeat(&hb); // active since last tick: skipped
        assert_eq!(q.len(), 0);
        q.push_heartbeat(&hb); // idle for a whole tick: sent
        assert_eq!(q.len(), 1);
        let _ = poll(&q);
        q.push_heartbeat(&hb); // a heartbeat does not count as activity
        assert_eq!(q.len(), 1);
    }
}
