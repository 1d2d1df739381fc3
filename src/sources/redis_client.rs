//! Redis client setup, shared by the pub/sub source, the Streams source and the resume reader:
//! a URL becomes a client once, and every connection gets the timeouts its use needs.
//!
//! The redis crate gives async connections a 500 ms response timeout by default, which a
//! blocking `XREAD` or a long resume read outlives; [`RedisEndpoint::connect`] sets the
//! response timeout from the longest reply the caller waits for, plus the connect timeout.

use std::time::Duration;

use redis::aio::{MultiplexedConnection, PubSub};
use tracing::warn;

use super::session::{BrokerError, SessionEnd};

/// A Redis server as configured: its client and how long a connection may take.
#[derive(Debug, Clone)]
pub struct RedisEndpoint {
    client: redis::Client,
    connect_timeout: Duration,
}

impl RedisEndpoint {
    /// A client for `url`; nothing connects yet. Fails only on a URL the client cannot use.
    pub fn open(url: &str, connect_timeout: Duration) -> redis::RedisResult<Self> {
        Ok(RedisEndpoint { client: redis::Client::open(url)?, connect_timeout })
    }

    /// A source's client; an unusable URL is logged (naming the source) and ends the source.
    pub fn for_source(source: &'static str, url: &str, connect_timeout: Duration) -> Result<Self, SessionEnd> {
        Self::open(url, connect_timeout).map_err(|e| {
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
        self.client.get_multiplexed_async_connection_with_config(&config).await
    }

    /// A dedicated pub/sub connection (the caller bounds it with [`Self::connect_timeout`]).
    pub async fn pubsub(&self) -> redis::RedisResult<PubSub> {
        self.client.get_async_pubsub().await
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
