//! Sources: where messages come from. Each source turns its broker's messages into
//! [`SourceMessage`]s and hands them to the one ingest path through a bounded channel.
//!
//! The contract every source keeps:
//! - it never blocks another source (each runs in its own task; the ingest channel is shared,
//!   and when it is full every sender waits its turn, which pushes back into the broker client);
//! - it copies the payload out of the broker client's read buffer before handing it on, so a
//!   queued message never pins a large buffer;
//! - a session with the broker ends in a named [`SessionEnd`], then the source reconnects with
//!   capped exponential [`Backoff`] until shutdown; the bridge serves while a broker is down;
//! - it reports its state in a [`SourceStatus`] for `/readyz` and `/metrics`;
//! - it drops what breaks the broker message bounds ([`BrokerInput`]) and says so in the logs,
//!   at most once per interval.
//!
//! [`configured`] lists the sources a configuration names; `app` spawns each with
//! [`ConfiguredSource::run`].

mod backoff;
mod bounds;
mod configured;
mod files;
mod message;
pub mod nats_connect;
mod redis_client;
pub mod redis_connect;
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
pub use message::{IngestSender, PUBLISHED_AT_HEADER, SourceKind, SourceMessage};
pub use redis_client::RedisEndpoint;
pub use session::{BrokerError, ClientError, Session, SessionEnd, supervise};
pub use status::SourceStatus;
