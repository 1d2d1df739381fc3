//! Sources: where messages come from. Each source turns its broker's messages into
//! [`SourceMessage`]s and hands them to the one ingest path through a bounded channel.
//!
//! The contract every source keeps:
//! - it never blocks another source (each runs in its own task; the ingest channel is shared,
//!   bounded in messages and in bytes, and when it is full every sender waits its turn, which
//!   pushes back into the broker client's own bounded buffer);
//! - it copies the payload out of the broker client's read buffer before handing it on, so a
//!   queued message never pins a large buffer;
//! - a session with the broker ends in a named [`SessionEnd`], then the source reconnects with
//!   capped exponential [`Backoff`] until shutdown; the bridge serves while a broker is down;
//! - it reports its state in a [`SourceStatus`] for `/readyz` and `/metrics`;
//! - it drops what breaks the broker message bounds ([`BrokerInput`]) and says so in the logs,
//!   at most once per interval;
//! - a live source (core NATS, Redis pub/sub) that may have lost messages (it reconnected after
//!   an outage, or its client's bounded buffer dropped) sends a [`SourceSignal`] before any
//!   message that came after the loss, so the streams it serves are told.
//!
//! [`configured`] lists the sources a configuration names; `app` spawns each with
//! [`ConfiguredSource::run`]. With `interest = "on-demand"`, NATS and Redis pub/sub run as
//! `nats_interest` and `redis_interest`: they subscribe what the streams hold (see
//! `crate::interest`) instead of the whole configuration.

mod backoff;
mod bounds;
mod buffer;
mod configured;
mod files;
mod message;
pub mod nats_connect;
mod nats_interest;
mod redis_client;
pub mod redis_connect;
mod redis_interest;
mod redis_pubsub;
mod session;
mod status;

pub mod jetstream;
pub mod nats;
pub mod publish;
pub mod redis;
pub mod redis_streams;

pub use backoff::{Backoff, backoff_delay};
pub use bounds::{BrokerInput, LOG_INTERVAL};
pub use configured::{ConfiguredSource, configured};
pub use files::check_files;
pub use message::{
    Ingest, IngestClosed, IngestPermit, IngestReceiver, IngestSender, PUBLISHED_AT_HEADER, SourceKind, SourceMessage,
    SourceSignal, ingest_channel,
};
pub use redis_client::{RedisConn, RedisEndpoint};
pub use session::{BrokerError, ClientError, Session, SessionEnd, supervise};
pub use status::SourceStatus;
