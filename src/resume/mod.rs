//! Resuming a stream from its `Last-Event-ID`: what it replays before it goes live, and from
//! where.
//!
//! [`start`] runs atomically with the registration (inside `Registry::subscribe_from`). With
//! durable streams configured and an id the ring alone cannot serve, the durable plan
//! (`durable.rs`) takes the events from the ring and the broker (through the bounded,
//! coalescing [`BrokerReader`], `reader.rs`); otherwise the ring resume (`ring.rs`) replays
//! what the rings hold and signals a gap when it cannot prove completeness. Either way the
//! stream gets its replay in id order, then live events, with no gap and no duplicate at the
//! seam.

mod context;
mod durable;
mod floor;
mod gap;
mod reader;
mod ring;
mod start;

pub use context::ResumeContext;
pub use durable::BrokerResume;
pub use reader::{BrokerEvent, BrokerReader, ReadGap, ReadOutcome};
pub use start::start;
