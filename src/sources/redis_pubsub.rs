//! A Redis pub/sub connection, to one server or through a Redis Cluster, behind one interface
//! for the pub/sub sources (`redis`, `redis_interest`): subscribe, unsubscribe, a health check,
//! and the messages.
//!
//! One server: the redis crate's `PubSub` (RESP2), split into its sink and stream.
//!
//! A cluster: the crate's cluster connection (RESP3, the messages arrive on a push channel),
//! which sends each `SUBSCRIBE`/`SSUBSCRIBE`/`PSUBSCRIBE` to the node owning the name's slot and
//! follows `MOVED`/`ASK`. Two things are the source's own, and why:
//! - The crate re-subscribes by itself when a node's connection comes back, silently: messages
//!   published meanwhile are lost without the streams being told. So a node's disconnection
//!   (the crate forwards it as a `Disconnection` push) ends the session, and the next one
//!   starts with the `source-outage` signal every Redis reconnect gives.
//! - A connection that only listens sends no keyed command, so it never gets the `MOVED` that
//!   makes the crate refresh its slot map: after a failover it would retry the dead master's
//!   address forever. The health check (on `redis.ping_interval`) reads `CLUSTER SLOTS` and
//!   ends the session when the masters owning the slots changed (a failover, a slot moved);
//!   the next session subscribes on the new owners.
//!
//! Each name is subscribed with its own command in a cluster: a sharded channel must be
//! subscribed on its slot's node, and Redis refuses `SSUBSCRIBE` across slots.
//!
//! The crate's push channel is unbounded (as its single-server pub/sub buffer is): the sources
//! read it without pause into their own byte-bounded buffer.

use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{PubSub, PubSubSink, PubSubStream};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Msg, PushInfo, PushKind, RedisResult, Value};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use super::session::BrokerError;

/// The sending half: what to subscribe, and the health check.
pub enum SubscriberSink {
    /// One server's pub/sub connection.
    Single(PubSubSink),
    /// A cluster connection and the slot map it subscribed by.
    Cluster {
        conn: ClusterConnection,
        sharded: bool,
        /// Who owned which slots when the session started.
        masters: Vec<SlotOwner>,
    },
}

/// The receiving half: the messages.
pub enum SubscriberStream {
    /// One server's message stream (ends when the connection does).
    Single(PubSubStream),
    /// The cluster connection's pushes.
    Cluster(UnboundedReceiver<PushInfo>),
}

/// A pub/sub connection, before it is split into its halves.
pub struct Subscriber {
    sink: SubscriberSink,
    stream: SubscriberStream,
}

/// A slot range and the address of the master that serves it (from `CLUSTER SLOTS`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SlotOwner {
    start: i64,
    end: i64,
    master: String,
}

impl Subscriber {
    /// One server's pub/sub connection.
    pub fn single(pubsub: PubSub) -> Self {
        let (sink, stream) = pubsub.split();
        Subscriber { sink: SubscriberSink::Single(sink), stream: SubscriberStream::Single(stream) }
    }

    /// A cluster connection whose pushes come to this subscriber, and the slot map now.
    pub async fn cluster(client: &ClusterClient, connect_timeout: Duration, sharded: bool) -> RedisResult<Self> {
        let (tx, rx) = unbounded_channel();
        let config = ClusterConfig::new()
            .set_connection_timeout(connect_timeout)
            .set_response_timeout(connect_timeout)
            .set_push_sender(tx);
        let mut conn = client.get_async_connection_with_config(config).await?;
        let masters = slot_owners(&mut conn).await?;
        Ok(Subscriber {
            sink: SubscriberSink::Cluster { conn, sharded, masters },
            stream: SubscriberStream::Cluster(rx),
        })
    }

    /// The halves put back together.
    pub fn from_parts(sink: SubscriberSink, stream: SubscriberStream) -> Self {
        Subscriber { sink, stream }
    }

    /// The sending and the receiving half.
    pub fn split(self) -> (SubscriberSink, SubscriberStream) {
        (self.sink, self.stream)
    }
}

/// `CLUSTER SLOTS` as (range, master address), sorted (nodes list the ranges in any order).
async fn slot_owners(conn: &mut ClusterConnection) -> RedisResult<Vec<SlotOwner>> {
    let reply: Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await?;
    Ok(parse_slots(&reply))
}

fn parse_slots(reply: &Value) -> Vec<SlotOwner> {
    let int = |v: &Value| match v {
        Value::Int(i) => Some(*i),
        _ => None,
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let mut out = Vec::new();
    let Value::Array(ranges) = reply else { return out };
    for r in ranges {
        let Value::Array(r) = r else { continue };
        let (Some(start), Some(end), Some(Value::Array(master))) =
            (r.first().and_then(int), r.get(1).and_then(int), r.get(2))
        else {
            continue;
        };
        let host = master.first().and_then(text).unwrap_or_default();
        let port = master.get(1).and_then(int).unwrap_or_default();
        out.push(SlotOwner { start, end, master: format!("{host}:{port}") });
    }
    out.sort();
    out
}

impl SubscriberSink {
    /// `SUBSCRIBE` (`SSUBSCRIBE` when sharded) every channel, each confirmed.
    pub async fn subscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            SubscriberSink::Single(s) => s.subscribe(channels).await,
            SubscriberSink::Cluster { conn, sharded, .. } => {
                for c in channels {
                    match sharded {
                        true => conn.ssubscribe(c).await?,
                        false => conn.subscribe(c).await?,
                    }
                }
                Ok(())
            }
        }
    }

    /// `UNSUBSCRIBE` (`SUNSUBSCRIBE` when sharded) every channel.
    pub async fn unsubscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            SubscriberSink::Single(s) => s.unsubscribe(channels).await,
            SubscriberSink::Cluster { conn, sharded, .. } => {
                for c in channels {
                    match sharded {
                        true => conn.sunsubscribe(c).await?,
                        false => conn.unsubscribe(c).await?,
                    }
                }
                Ok(())
            }
        }
    }

    /// `PSUBSCRIBE` every glob (sharded pub/sub has none: the configuration refuses them).
    pub async fn psubscribe(&mut self, globs: &[String]) -> RedisResult<()> {
        match self {
            SubscriberSink::Single(s) => s.psubscribe(globs).await,
            SubscriberSink::Cluster { conn, .. } => {
                for g in globs {
                    conn.psubscribe(g).await?;
                }
                Ok(())
            }
        }
    }

    /// `PUNSUBSCRIBE` every glob.
    pub async fn punsubscribe(&mut self, globs: &[String]) -> RedisResult<()> {
        match self {
            SubscriberSink::Single(s) => s.punsubscribe(globs).await,
            SubscriberSink::Cluster { conn, .. } => {
                for g in globs {
                    conn.punsubscribe(g).await?;
                }
                Ok(())
            }
        }
    }

    /// The periodic check: a `PING` on one server; in a cluster, that the slots still have the
    /// masters this session subscribed by (else the session ends and the next one follows).
    pub async fn check(&mut self) -> Result<(), BrokerError> {
        match self {
            SubscriberSink::Single(s) => {
                s.ping::<String>().await.map_err(|e| BrokerError::broker("ping", e))?;
                Ok(())
            }
            SubscriberSink::Cluster { conn, masters, .. } => {
                let now = slot_owners(conn).await.map_err(|e| BrokerError::broker("CLUSTER SLOTS", e))?;
                if now != *masters {
                    return Err(BrokerError::Lost("the cluster's slot map changed (a failover or a slot move)"));
                }
                Ok(())
            }
        }
    }
}

impl SubscriberStream {
    /// The next message; None when the connection (in a cluster: any node's) was lost.
    pub async fn next(&mut self) -> Option<Msg> {
        match self {
            SubscriberStream::Single(s) => s.next().await,
            SubscriberStream::Cluster(rx) => loop {
                let push = rx.recv().await?;
                if push.kind == PushKind::Disconnection {
                    return None;
                }
                if let Some(m) = Msg::from_push_info(push) {
                    return Some(m);
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn slot_owners_ignore_order_and_replicas() {
        let range = |a: i64, b: i64, port: i64, replica: i64| {
            Value::Array(vec![
                Value::Int(a),
                Value::Int(b),
                Value::Array(vec![bulk("10.0.0.1"), Value::Int(port), bulk("id")]),
                Value::Array(vec![bulk("10.0.0.2"), Value::Int(replica), bulk("id2")]),
            ])
        };
        let one = parse_slots(&Value::Array(vec![range(0, 100, 7000, 7100), range(101, 16383, 7001, 7101)]));
        let other = parse_slots(&Value::Array(vec![range(101, 16383, 7001, 7102), range(0, 100, 7000, 7100)]));
        assert_eq!(one, other, "order and replicas do not matter");
        assert_eq!(one[0].master, "10.0.0.1:7000");
        let failed_over = parse_slots(&Value::Array(vec![range(0, 100, 7100, 7000), range(101, 16383, 7001, 7101)]));
        assert_ne!(one, failed_over, "a promoted replica is a change");
    }
}
