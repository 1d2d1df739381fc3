//! Redis client setup, shared by the pub/sub source, the Streams source and the resume reader:
//! the settings become a client (a Sentinel client, a cluster client) once, and every
//! connection gets the timeouts its use needs.
//!
//! The redis crate gives async connections a 500 ms response timeout by default, which a
//! blocking `XREAD` or a long resume read outlives; [`RedisEndpoint::connect`] sets the
//! response timeout from the longest reply the caller waits for, plus the connect timeout.

use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterConfig;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tracing::warn;

use super::redis_connect::{RedisConnect, RedisSetupError, RedisTarget};
use super::redis_pubsub::Subscriber;
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

    /// A connection whose response timeout allows a reply that takes up to `longest_reply` (a
    /// blocking read's `BLOCK`, a resume's read timeout): multiplexed to one server, or a
    /// cluster connection that sends each command to the node owning its key.
    pub async fn connect(&self, longest_reply: Duration) -> redis::RedisResult<RedisConn> {
        let response_timeout = longest_reply + self.connect_timeout;
        let Some(client) = self.target.client().await else {
            let cluster = self.target.cluster().expect("not a single server: a cluster");
            let config = ClusterConfig::new()
                .set_connection_timeout(self.connect_timeout)
                .set_response_timeout(response_timeout);
            return Ok(RedisConn::Cluster(cluster.get_async_connection_with_config(config).await?));
        };
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(response_timeout));
        Ok(RedisConn::Single(client?.get_multiplexed_async_connection_with_config(&config).await?))
    }

    /// A dedicated pub/sub connection (the caller bounds it with [`Self::connect_timeout`]);
    /// `sharded`: `SSUBSCRIBE` instead of `SUBSCRIBE` (a cluster only).
    pub async fn pubsub(&self, sharded: bool) -> redis::RedisResult<Subscriber> {
        match self.target.client().await {
            Some(client) => Ok(Subscriber::single(client?.get_async_pubsub().await?)),
            None => {
                let cluster = self.target.cluster().expect("not a single server: a cluster");
                Subscriber::cluster(cluster, self.connect_timeout, sharded).await
            }
        }
    }

    /// Whether this is a Redis Cluster (commands on several keys must stay within one slot).
    pub fn is_cluster(&self) -> bool {
        self.target.cluster().is_some()
    }

    /// How long connecting may take.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }
}

/// A connection to one Redis server or through a Redis Cluster; commands are sent the same way
/// (`query_async`), the cluster one to the node owning the command's key.
#[derive(Clone)]
pub enum RedisConn {
    /// One server (or the master a Sentinel group named).
    Single(MultiplexedConnection),
    /// A Redis Cluster, through the redis crate's cluster client.
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
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
