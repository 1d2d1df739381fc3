//! Durable streams: JetStream streams and Redis Streams, whose broker keeps the history that
//! the in-memory ring cannot keep across restarts and replicas.
//!
//! # The id is a vector cursor
//!
//! A frame is built once and shared by every subscriber, and a browser sends back only the last
//! id it saw, so each event's id must by itself be a complete resume cursor for any set of
//! topics, on any replica. When durable streams are configured every event id carries, after the
//! run-local `<run>-<seq>`, the position of every durable stream as the sequencer stood at that
//! event: `5f3a9c01b2d7-42_j1a2b:48211_r9c3d:1732550000000-3`. The sequencer is the single
//! order and every stream receives its events in it, so a client that received event *e* has
//! received every event of every durable stream up to `e`'s position for that stream that its
//! filters match. Any process can therefore resume it from the broker: per stream, from the next
//! position. The tag (`j1a2b`) is the stream's kind and a hash of its name, the same on every
//! replica whatever the configuration order.
//!
//! An event's own stream position is the broker's (JetStream stream sequence, Redis entry id),
//! so every replica puts the same position in the same event's id; the other streams' positions
//! are where this process stood, which is exactly what makes the id a cursor.
//!
//! This is the low layer: what the streams are and where the sequencer stands in them. The
//! sources that read them live in `crate::sources`; reading them back for a resume lives in
//! `crate::resume`.

mod catalog;
mod positions;
pub mod redis_glob;

pub use catalog::{Catalog, DurableKind, DurableStream, SourceOverlap, source_overlap};
pub use positions::{DurableMark, Positions, Reset, Snapshot};

pub use crate::event::Pos;
