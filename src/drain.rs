//! The paced drain ("lame duck") after SIGTERM: open streams end in small batches spread over
//! `server.drain_spread` × `server.drain_timeout`, each with its own jittered `retry:`, so the
//! reconnects of a replica's clients reach the other replicas spread out instead of as one herd.
//!
//! Ending everything at once (as `drain_spread = 0` still does) sends every client back within
//! the same few milliseconds, two seconds later: onto replicas whose listen backlog and per-IP
//! limits then see thousands of connects at once. Spread over the window, the herd arrives at
//! `streams / window` per second. Streams waiting for their turn keep receiving events (the
//! sources run until the last stream has ended), and a stream that ends never loses an event:
//! its client resumes elsewhere from its `Last-Event-ID` (durable topics from the broker,
//! ring-only topics with a gap event).

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::registry::Registry;

/// Shortest pause between two batches: below it the batches would be too small to matter.
const MIN_BATCH_INTERVAL: Duration = Duration::from_millis(10);

/// Ends every stream open now, in batches spread evenly over `window`; `retry` gives each
/// stream's jittered reconnect hint. Returns when the last batch has been told to end (the
/// streams then write what they have queued and close). `drain_streams_left` shows the
/// streams not yet told.
pub async fn end_streams_paced(registry: &Registry, window: Duration, retry: impl Fn() -> Duration, metrics: &Metrics) {
    let queues = registry.queues();
    let left = &metrics.drain_streams_left;
    left.set(queues.len() as i64);
    let batches = batch_count(queues.len(), window);
    let interval = if batches > 1 { window / (batches as u32 - 1).max(1) } else { Duration::ZERO };
    let start = Instant::now();
    let mut ended = 0;
    for (i, batch) in split_evenly(&queues, batches).enumerate() {
        tokio::time::sleep_until(start + interval * i as u32).await;
        for q in batch {
            q.end_with(retry_frame(retry()));
        }
        ended += batch.len();
        left.set((queues.len() - ended) as i64);
    }
    left.set(0);
}

/// How many batches: one per [`MIN_BATCH_INTERVAL`] of the window, never more than streams.
fn batch_count(streams: usize, window: Duration) -> usize {
    let slots = (window.as_millis() / MIN_BATCH_INTERVAL.as_millis()) as usize + 1;
    streams.min(slots).max(1)
}

/// `items` in `n` consecutive batches whose sizes differ by at most one, the larger ones spread
/// evenly (batch `i` ends at `(i + 1) * len / n`), so the rate of ends is even over the window.
fn split_evenly<T>(items: &[T], n: usize) -> impl Iterator<Item = &[T]> {
    let len = items.len();
    (0..n).map(move |i| &items[i * len / n..(i + 1) * len / n])
}

/// The last frame of a drained stream: its reconnect delay.
fn retry_frame(retry: Duration) -> Bytes {
    Bytes::from(format!("retry: {}\n\n", retry.as_millis().max(1)))
}

/// Every queue of `registry` ended at once, each with its own hint (`drain_spread = 0`).
pub fn end_streams_now(registry: &Registry, retry: impl Fn() -> Duration) {
    for q in registry.queues() {
        q.end_with(retry_frame(retry()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_even_and_cover_everything() {
        let items: Vec<usize> = (0..1000).collect();
        let batches: Vec<&[usize]> = split_evenly(&items, 7).collect();
        assert_eq!(batches.len(), 7);
        assert_eq!(batches.iter().map(|b| b.len()).sum::<usize>(), 1000);
        assert!(batches.iter().all(|b| b.len() == 142 || b.len() == 143));
        assert_eq!(batches.concat(), items);
    }

    #[test]
    fn batch_count_follows_the_window() {
        assert_eq!(batch_count(1000, Duration::from_secs(5)), 501);
        assert_eq!(batch_count(3, Duration::from_secs(5)), 3);
        assert_eq!(batch_count(1000, Duration::ZERO), 1);
        assert_eq!(batch_count(0, Duration::from_secs(1)), 1);
    }

    #[test]
    fn the_last_frame_is_a_retry_hint() {
        assert_eq!(&retry_frame(Duration::from_millis(1234))[..], b"retry: 1234\n\n");
    }
}
