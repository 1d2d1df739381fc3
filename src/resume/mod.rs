//! Resuming a stream from its `Last-Event-ID`: what it replays before it goes live, and from
//! where.
//!
//! [`start`] runs atomically with the registration (inside `Registry::subscribe_from`): it
//! takes the snapshot position and leaves the reading to a [`PendingResume`] that the stream
//! body runs, the stream held meanwhile. With durable streams configured and an id the ring
//! alone cannot serve, the durable plan (`durable.rs`) takes the events from the ring and the
//! broker (through the bounded, coalescing [`BrokerReader`], `reader.rs`); otherwise the ring
//! resume (`ring.rs`) reads the rings in bounded steps and signals a gap when it cannot prove
//! completeness. Either way the stream gets its replay in id order, then live events, with no
//! gap and no duplicate at the seam.

mod coalesce;
mod context;
mod durable;
mod floor;
mod gap;
mod not_held;
mod reader;
mod ring;
mod share;
mod start;

pub use context::ResumeContext;
pub use durable::BrokerResume;
pub use not_held::not_held;
pub use reader::{BrokerEvent, BrokerReader, ReadGap, ReadLimit, ReadOutcome};
pub use ring::{Resumed, RingResume};
pub use start::{PendingResume, start};
