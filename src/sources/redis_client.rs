//! Redis client setup, shared by the pub/sub source, the Streams source and the resume reader:
//! the settings become a client (or a Sentinel client) once, and every connection gets the
//! timeouts its use needs.
//!
//! The redis crate gives async connections a 500 ms response timeout by default, which a
//! blocking `XREAD` or a long resume read outlives; [`RedisEndpoint::connect`] sets the
//! response timeout from the longest reply the caller waits for, plus the connect timeout.

use std::time::Duration;

use redis::aio::{MultiplexedConnection, PubSub};
use tracing::warn;

use super::redis_connect::{RedisConnect, RedisSetupError, RedisTarget};
use super::session::{BrokerError, SessionEnd};

/// A Redis server as configured (one server, or a Sentinel group's master; TLS and ACL user
/// applied by [`RedisConnect`]) and how long a connection may take.
#[derive(Debug, Clone)]
pub struct RedisEndpoint {
    target: RedisTarget,
    connect_timeout: Duration,
}

impl RedisEndpoint {
    /// A client for `url` alone (no TLS files, user or Sentinel); nothing connects yet.
    pub fn open(url: &str, connect_timeout: Duration) -> redis::RedisResult<Self> {
        Ok(RedisEndpoint { target: RedisTarget::Single(Box::new(redis::Client::open(url)?)), connect_timeout })
    }

    /// A client for the settings of a section; nothing connects yet. Fails on a URL the client
    /// cannot use or a file that cannot be read.
    pub fn with(connect: &RedisConnect, connect_timeout: Duration) -> Result<Self, RedisSetupError> {
        Ok(RedisEndpoint { target: connect.target()?, connect_timeout })
    }

    /// A source's client; unusable settings are logged (naming the source) and end the source.
    pub fn for_source(
        source: &'static str,
        connect: &RedisConnect,
        connect_timeout: Duration,
    ) -> Result<Self, SessionEnd> {
        Self::with(connect, connect_timeout).map_err(|e| {
            warn!(source, error = %e, "Cannot create Redis client.");
            BrokerError::Setup(e.into()).into()
        })
    }

    /// A multiplexed connection whose response timeout allows a reply that takes up to
    /// `longest_reply` (a blocking read's `BLOCK`, a resume's read timeout).
    pub async fn connect(&self, longest_reply: Duration) -> redis::RedisResult<MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(longest_reply + self.connect_timeout));
        self.target.client().await?.get_multiplexed_async_connection_with_config(&config).await
    }

    /// A dedicated pub/sub connection (the caller bounds it with [`Self::connect_timeout`]).
    pub async fn pubsub(&self) -> redis::RedisResult<PubSub> {
        self.target.client().await?.get_async_pubsub().await
    }

    /// How long connecting may take.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }
}

/// The URL without its password, for logs.
pub(crate) fn redacted(u: &str) -> String {
    match url::Url::parse(u) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => u.to_string(),
    }
}
