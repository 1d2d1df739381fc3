//! Replay frames built once for every stream that resumes the same broker range the same way.
//!
//! After a rollout thousands of clients come back with the same `Last-Event-ID` and the same
//! filters. Their broker reads already coalesce (`reader.rs`), and the frames built from them
//! are byte for byte the same too: the same run-local base, the same vector suffix after each
//! event, the same payloads. So a broker resume (newest-first, [`ReadLimit::Newest`]) keys its
//! frame building by what decides those bytes (the id's base, the vector it resumes from, the
//! ranges to read and the client's filters, sorted), and a resume with the same key while one
//! is being built joins it and queues the same frames ([`SharedFrame`]: `Bytes` clones). The
//! map holds weak references only, like the reader's: a build whose streams all left is
//! dropped. What differs per client stays per client: its gap signals (their topics name its
//! own filters, in its order), its id floor, its hold and release. The in-place resume read in
//! pages ([`ReadLimit::Oldest`]) is not shared: each page waits for that stream's writes.

use std::sync::Arc;

use super::reader::{BrokerEvent, BrokerReader, ReadLimit, ShareKey, SharedReplay};
use crate::client::SharedFrame;
use crate::event::FrameChunks;

/// Payload bytes freed by a build between two purges of the allocator's freed pages.
const PURGE_EVERY: usize = 8 * 1024 * 1024;

impl BrokerReader {
    /// The frames of the broker resume `key`, built once for every resume with the same key
    /// while it is built; true when this resume joined a build already running.
    pub(super) async fn replay_frames(self: &Arc<Self>, key: ShareKey) -> (Arc<SharedReplay>, bool) {
        let me = self.clone();
        let k = key.clone();
        let (build, joined) = self.share.join_or_start(key, || async move { me.build_frames(&k).await });
        (build.await, joined)
    }

    /// Reads `key`'s ranges and builds their frames, each counted once in the replay in-flight
    /// gauge as it is built. When this build is the only holder of a read's events (no other
    /// resume coalesced into the read), each event's payload is freed as its frame is built.
    async fn build_frames(self: &Arc<Self>, key: &ShareKey) -> SharedReplay {
        let mut out = SharedReplay::default();
        let mut vector = key.vector.clone();
        let mut suffix = String::new();
        let mut chunks = FrameChunks::default();
        let inflight = Some(self.metrics.replay_inflight_bytes.clone());
        for &(idx, after, upto) in &key.reads {
            let read_filters = self.read_filters(idx, &key.filters);
            let read = self.read(idx, after, upto, read_filters, ReadLimit::Newest).await;
            if let Some(g) = read.gap {
                out.gaps.push((idx, g));
            }
            let mut frame_of = |e: &BrokerEvent| {
                if !key.filters.iter().any(|f| f.matches(&e.topic)) {
                    return;
                }
                vector[idx] = Some(e.pos);
                suffix.clear();
                self.catalog.write_vector(&vector, &mut suffix);
                let frame = chunks.frame_event_with(&key.base, &suffix, e.event_type.as_deref(), &e.payload).0;
                out.frames.push(SharedFrame::new(frame, inflight.clone()));
            };
            match Arc::try_unwrap(read) {
                Ok(read) => {
                    // The events' pages go back to the OS as their frames replace them, not
                    // at the next housekeeping tick: the frames of a large replay would
                    // otherwise sit on top of the freed events in RSS (a replay twice over).
                    let mut freed = 0;
                    for e in read.events {
                        frame_of(&e);
                        freed += e.payload.len();
                        drop(e);
                        if freed >= PURGE_EVERY {
                            crate::allocator::purge();
                            freed = 0;
                        }
                    }
                    if freed > 0 {
                        crate::allocator::purge();
                    }
                }
                Err(read) => read.events.iter().for_each(frame_of),
            }
        }
        out
    }
}
