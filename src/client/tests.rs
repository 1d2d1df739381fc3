//! The slow-consumer policies, the backlog, heartbeats and deadlines of one queue.

use super::*;
use crate::event::{EventId, frame_event};
use std::task::Waker;

fn poll(q: &ClientQueue) -> Poll<Next> {
    q.poll_next(&mut Context::from_waker(Waker::noop()))
}

fn frame(q: &ClientQueue) -> String {
    match poll(q) {
        Poll::Ready(Next::Frame { frame, .. }) => String::from_utf8(frame.to_vec()).unwrap(),
        other => panic!("expected a frame, got {other:?}"),
    }
}

fn ev(seq: u64, topic: &str, policy: SlowConsumerPolicy) -> Arc<Event> {
    let id = EventId { run: 1, seq };
    let frame = frame_event(id, None, seq.to_string().as_bytes()).0;
    Arc::new(Event {
        id,
        topic: topic.into(),
        frame,
        received_at: Instant::now(),
        policy,
        trace: None,
        published_at_ms: None,
        durable: None,
    })
}

fn q(cap: usize) -> (ClientQueue, ConnHandle) {
    let conn = ConnHandle::default();
    (ClientQueue::new(cap, conn.clone(), None), conn)
}

#[test]
fn overflow_disconnects_and_frees() {
    let (q, conn) = q(2);
    let p = SlowConsumerPolicy::Disconnect;
    assert_eq!(q.push(&ev(1, "t", p)), PushOutcome::Queued);
    assert_eq!(q.push(&ev(2, "t", p)), PushOutcome::Queued);
    assert_eq!(q.push(&ev(3, "t", p)), PushOutcome::Overflowed);
    assert!(conn.kill.is_cancelled());
    assert_eq!(q.len(), 0);
    assert!(matches!(poll(&q), Poll::Ready(Next::Closed(CloseReason::SlowConsumer))));
    assert_eq!(q.push(&ev(4, "t", p)), PushOutcome::Closed);
}

#[test]
fn drop_oldest_reports_a_gap_before_the_next_event() {
    let (q, conn) = q(2);
    let p = SlowConsumerPolicy::DropOldest;
    q.push(&ev(1, "a", p));
    q.push(&ev(2, "b", p));
    assert_eq!(q.push(&ev(3, "b", p)), PushOutcome::DroppedOldest);
    assert!(!conn.kill.is_cancelled());
    let gap = frame(&q);
    assert!(gap.starts_with("event: sse-bridge.gap\n"), "{gap}");
    assert!(gap.contains(r#""reason":"dropped""#) && gap.contains(r#""topics":["a"]"#), "{gap}");
    assert!(frame(&q).contains("data: 2"));
    assert!(frame(&q).contains("data: 3"));
}

#[test]
fn latest_replaces_the_same_topic_and_keeps_order() {
    let (q, _) = q(2);
    let p = SlowConsumerPolicy::Latest;
    q.push(&ev(1, "price", p));
    q.push(&ev(2, "volume", p));
    assert_eq!(q.push(&ev(3, "price", p)), PushOutcome::Conflated);
    assert!(frame(&q).contains("data: 2"));
    assert!(frame(&q).contains("data: 3"), "no gap event: conflation is the point");
}

#[test]
fn backlog_does_not_count_against_capacity() {
    let (q, _) = q(1);
    for _ in 0..5 {
        q.push_backlog(Bytes::from_static(b"r"));
    }
    assert_eq!(q.push(&ev(1, "t", SlowConsumerPolicy::Disconnect)), PushOutcome::Queued);
    assert_eq!(q.push(&ev(2, "t", SlowConsumerPolicy::Disconnect)), PushOutcome::Overflowed);
}

#[test]
fn clean_close_drains_first() {
    let (q, conn) = q(4);
    q.push(&ev(1, "t", SlowConsumerPolicy::Disconnect));
    q.close(CloseReason::Shutdown);
    assert!(!conn.kill.is_cancelled());
    assert!(matches!(poll(&q), Poll::Ready(Next::Frame { event: Some(_), .. })));
    assert!(matches!(poll(&q), Poll::Ready(Next::Closed(CloseReason::Shutdown))));
}

#[test]
fn heartbeat_only_when_idle() {
    let (q, _) = q(4);
    let hb = Bytes::from_static(b":\n\n");
    q.push(&ev(1, "t", SlowConsumerPolicy::Disconnect));
    let _ = poll(&q);
    q.offer_heartbeat(&hb); // active since last offer: skipped
    assert_eq!(q.len(), 0);
    q.offer_heartbeat(&hb); // idle for a whole interval: sent
    assert_eq!(q.len(), 1);
    let _ = poll(&q);
    q.offer_heartbeat(&hb); // a heartbeat does not count as activity
    assert_eq!(q.len(), 1);
}

#[test]
fn deadlines() {
    let conn = ConnHandle::default();
    let q = ClientQueue::new(4, conn.clone(), Some(Duration::from_millis(50)));
    let now = now_ms();
    assert_eq!(q.enforce_deadlines(now, Duration::from_secs(1)), None);
    assert_eq!(q.enforce_deadlines(now + 60, Duration::from_secs(1)), Some(CloseReason::MaxAge));
    assert!(!conn.kill.is_cancelled(), "max age ends the stream cleanly");

    let conn = ConnHandle::default();
    let q = ClientQueue::new(4, conn.clone(), None);
    conn.write.blocked();
    let now = now_ms();
    assert_eq!(q.enforce_deadlines(now + 500, Duration::from_secs(1)), None);
    assert_eq!(q.enforce_deadlines(now + 1500, Duration::from_secs(1)), Some(CloseReason::WriteTimeout));
    assert!(conn.kill.is_cancelled());
    conn.write.progressed();
    assert_eq!(conn.write.blocked_for(now + 2000), None);

    // A stream that ended cleanly but cannot write its end is still cut.
    let conn = ConnHandle::default();
    let q = ClientQueue::new(4, conn.clone(), None);
    q.close(CloseReason::MaxAge);
    conn.write.blocked();
    let now = now_ms();
    assert_eq!(q.enforce_deadlines(now + 1500, Duration::from_secs(1)), Some(CloseReason::WriteTimeout));
    assert!(conn.kill.is_cancelled());
}

fn big(seq: u64, len: usize, policy: SlowConsumerPolicy) -> Arc<Event> {
    let id = EventId { run: 1, seq };
    let frame = frame_event(id, None, &vec![b'x'; len]).0;
    Arc::new(Event {
        id,
        topic: "t".into(),
        frame,
        received_at: Instant::now(),
        policy,
        trace: None,
        published_at_ms: None,
        durable: None,
    })
}

#[test]
fn queue_bytes_bound_live_events_with_the_policy_and_backlog_is_metered() {
    let inflight = Gauge::default();
    // Room for 100 events by count, but only about three of 1 KiB by bytes.
    let q = ClientQueue::new(100, ConnHandle::default(), None).with_bytes(3500, inflight.clone());
    q.push_backlog(Bytes::from_static(b": hello\n\n"));
    assert_eq!(inflight.get(), 9);
    for i in 0..3 {
        assert_eq!(q.push(&big(i, 1000, SlowConsumerPolicy::DropOldest)), PushOutcome::Queued);
    }
    // The fourth does not fit in bytes: the oldest goes.
    assert_eq!(q.push(&big(3, 1000, SlowConsumerPolicy::DropOldest)), PushOutcome::DroppedOldest);
    assert_eq!(q.live_len(), 3);
    assert!(q.queued_bytes() <= 3500 + 9, "{}", q.queued_bytes());
    // One larger than the whole bound still fits alone, after everything live went.
    assert_eq!(q.push(&big(4, 5000, SlowConsumerPolicy::DropOldest)), PushOutcome::DroppedOldest);
    assert_eq!(q.live_len(), 1);
    // Under `disconnect`, full in bytes closes the stream and the meter goes back to zero.
    assert_eq!(q.push(&big(5, 10, SlowConsumerPolicy::Disconnect)), PushOutcome::Overflowed);
    assert_eq!((q.queued_bytes(), inflight.get()), (0, 0));

    let q = ClientQueue::new(100, ConnHandle::default(), None).with_bytes(0, inflight.clone());
    q.push_backlog(Bytes::from_static(b"replayed\n\n"));
    q.release(vec![Bytes::from_static(b"more\n\n")]);
    assert_eq!((q.backlog_bytes(), inflight.get()), (16, 16));
    frame(&q);
    assert_eq!(inflight.get(), 10, "release without a hold inserts in front: \"more\" left first");
    drop(q);
    assert_eq!(inflight.get(), 0, "a dropped queue gives its backlog bytes back");
}

#[test]
fn a_held_queue_spills_instead_of_cutting_and_asks_to_reread_from_its_last_id() {
    let (q, conn) = q(2);
    let p = SlowConsumerPolicy::Disconnect;
    q.push_backlog(Bytes::from_static(b": ok\n\n"));
    q.hold();
    assert_eq!(q.push(&ev(1, "t", p)), PushOutcome::Queued);
    assert_eq!(q.push(&ev(2, "t", p)), PushOutcome::Queued);
    // Full while held: not cut, the event is left for the re-read, and so is every later one.
    assert_eq!(q.push(&ev(3, "t", p)), PushOutcome::Spilled);
    assert_eq!(q.push(&ev(4, "t", SlowConsumerPolicy::DropOldest)), PushOutcome::Spilled);
    assert!(!conn.kill.is_cancelled());
    assert!(q.is_spilled());
    assert_eq!(frame(&q), ": ok\n\n");
    assert!(poll(&q).is_pending(), "held: nothing after the hold point leaves");
    q.release(vec![Bytes::from_static(b"id: 000000000001-0\ndata: replayed\n\n")]);
    assert!(frame(&q).contains("replayed"));
    assert!(frame(&q).starts_with("id: 000000000001-1\n"));
    assert!(frame(&q).starts_with("id: 000000000001-2\n"));
    match poll(&q) {
        Poll::Ready(Next::Reread { last_id }) => assert_eq!(last_id.as_deref(), Some(&b"000000000001-2"[..])),
        other => panic!("expected a re-read, got {other:?}"),
    }
    assert_eq!(q.unspill(), 2);
    assert_eq!(q.push(&ev(5, "t", p)), PushOutcome::Queued);
    assert!(frame(&q).starts_with("id: 000000000001-5\n"));
    // No longer resuming: a full queue is a slow consumer again.
    q.push(&ev(6, "t", p));
    q.push(&ev(7, "t", p));
    assert_eq!(q.push(&ev(8, "t", p)), PushOutcome::Overflowed);
}

#[test]
fn a_resumed_stream_still_catching_up_spills_instead_of_cutting() {
    let (q, conn) = q(2);
    let p = SlowConsumerPolicy::Disconnect;
    q.mark_resuming();
    q.push_backlog(Bytes::from_static(b"id: 000000000001-0\ndata: replayed\n\n"));
    assert_eq!(q.push(&ev(1, "t", p)), PushOutcome::Queued);
    assert!(frame(&q).contains("replayed"));
    // The replay is out but the live events queued during it are not: still catching up.
    assert_eq!(q.push(&ev(2, "t", p)), PushOutcome::Queued);
    assert_eq!(q.push(&ev(3, "t", p)), PushOutcome::Spilled);
    assert!(!conn.kill.is_cancelled());
    assert!(frame(&q).starts_with("id: 000000000001-1\n"));
    assert!(frame(&q).starts_with("id: 000000000001-2\n"));
    match poll(&q) {
        Poll::Ready(Next::Reread { last_id }) => assert_eq!(last_id.as_deref(), Some(&b"000000000001-2"[..])),
        other => panic!("expected a re-read, got {other:?}"),
    }
    assert_eq!(q.unspill(), 1);
    // Caught up (the queue was empty once): a full queue is a slow consumer again.
    assert_eq!(q.push(&ev(4, "t", p)), PushOutcome::Queued);
    assert!(frame(&q).starts_with("id: 000000000001-4\n"));
    q.push(&ev(5, "t", p));
    q.push(&ev(6, "t", p));
    assert_eq!(q.push(&ev(7, "t", p)), PushOutcome::Overflowed);
}

#[test]
fn replay_frames_being_built_are_metered_once() {
    let inflight = Gauge::default();
    let q = ClientQueue::new(100, ConnHandle::default(), None).with_bytes(0, inflight.clone());
    q.hold();
    assert!(q.reserve_backlog(100));
    assert!(q.reserve_backlog(50));
    assert_eq!((q.queued_bytes(), inflight.get()), (150, 150), "seen by the budget before they are queued");
    q.release(vec![Bytes::from(vec![b'x'; 100]), Bytes::from(vec![b'y'; 50])]);
    assert_eq!((q.backlog_bytes(), inflight.get()), (150, 150), "queued: counted once");
    drop(q);
    assert_eq!(inflight.get(), 0);

    // Shed while building: the count goes back at once, and the builder is told to stop.
    let q = ClientQueue::new(100, ConnHandle::default(), None).with_bytes(0, inflight.clone());
    q.hold();
    assert!(q.reserve_backlog(1000));
    q.close(CloseReason::SlowConsumer);
    assert_eq!((q.queued_bytes(), inflight.get()), (0, 0));
    assert!(!q.reserve_backlog(10));
    q.release(vec![Bytes::from(vec![b'x'; 1000])]);
    assert_eq!((q.queued_bytes(), inflight.get()), (0, 0), "nothing queued on an ended stream");
}

#[test]
fn a_shared_replay_frame_is_metered_once_and_each_queue_counts_its_share() {
    let inflight = Gauge::default();
    let a = ClientQueue::new(100, ConnHandle::default(), None).with_bytes(0, inflight.clone());
    let b = ClientQueue::new(100, ConnHandle::default(), None).with_bytes(0, inflight.clone());
    let shared = vec![SharedFrame::new(Bytes::from(vec![b'x'; 1000]), Some(inflight.clone()))];
    a.hold();
    b.hold();
    a.release_shared(vec![Bytes::from_static(b": gap\n\n")], &shared);
    b.release_shared(Vec::new(), &shared);
    assert_eq!(inflight.get(), 1000 + 7, "one allocation, one count; the gap frame is a's own");
    // Held by the builder's list and both queues: each queue's share is a third.
    assert_eq!((a.queued_bytes(), b.queued_bytes()), (7 + 333, 333));
    drop(shared);
    assert_eq!((a.queued_bytes(), b.queued_bytes()), (7 + 500, 500));
    assert_eq!(frame(&a), ": gap\n\n");
    assert_eq!(frame(&a), "x".repeat(1000));
    assert_eq!((a.queued_bytes(), b.queued_bytes(), inflight.get()), (0, 1000, 1000), "b alone holds it now");
    drop(b);
    assert_eq!(inflight.get(), 0);
}

#[test]
fn a_stream_shed_for_memory_drops_its_queue_and_ends_with_its_hint() {
    let inflight = Gauge::default();
    let q = ClientQueue::new(100, ConnHandle::default(), None).with_bytes(0, inflight.clone());
    q.push_backlog(Bytes::from(vec![b'r'; 500]));
    q.hold();
    assert!(q.reserve_backlog(1000));
    assert!(q.shed(Bytes::from_static(b"retry: 3000\n\n")));
    assert_eq!(inflight.get(), 13, "only the hint is left");
    assert!(!q.reserve_backlog(10), "the resume still building stops");
    q.release(vec![Bytes::from(vec![b'x'; 1000])]);
    assert_eq!(frame(&q), "retry: 3000\n\n");
    assert!(matches!(poll(&q), Poll::Ready(Next::Closed(CloseReason::MemoryBudget))));
    assert!(!q.shed(Bytes::from_static(b"retry: 1\n\n")), "already ended");
    assert_eq!(inflight.get(), 0);
}

#[test]
fn a_resuming_stream_reading_its_replay_is_told_apart_from_a_stalled_one() {
    let conn = ConnHandle::default();
    let q = ClientQueue::new(100, conn.clone(), None);
    let stall = Duration::from_secs(1);
    q.hold();
    assert!(q.reserve_backlog(10));
    assert!(!q.reads_its_replay(now_ms(), stall), "still building: the budget may shed it");
    q.release(vec![Bytes::from_static(b"data: a\n\n"), Bytes::from_static(b"data: b\n\n")]);
    assert!(q.reads_its_replay(now_ms(), stall));
    conn.write.blocked();
    assert!(q.reads_its_replay(now_ms(), stall), "blocked for less than the stall");
    assert!(!q.reads_its_replay(now_ms() + 2000, stall), "stalled");
    conn.write.progressed();
    let _ = frame(&q);
    let _ = frame(&q);
    assert!(!q.reads_its_replay(now_ms(), stall), "caught up: nothing left to read");
}
