//! Redis Streams source: reads the configured stream keys with `XREAD BLOCK` on a dedicated
//! connection and tags every entry with its id, which becomes part of the event id (see
//! `crate::durable`).
//!
//! In a Redis Cluster (`cluster_nodes`) every command goes to the node owning its key's slot
//! (the redis crate's cluster client, which follows `MOVED`/`ASK` and a failover's new slot
//! map). Redis refuses an `XREAD` over keys of different slots, so the keys are read in groups
//! of one slot each, every group on its own connection: a blocking `XREAD` holds its
//! connection until it returns, and the crate multiplexes one connection per node, so two
//! groups sharing one would wait for each other. Keys with a common hash tag (`{orders}.eu`,
//! `{orders}.us`) share a slot and are read together.
//!
//! The connection's response timeout is `block` plus the connect timeout (see
//! `sources::redis_client`: the crate's default of 500 ms is shorter than a blocking read). Each
//! session starts after the last entry id forwarded per key (on the first session: the key's
//! newest entry, the baseline), so a Redis outage loses nothing the stream still holds.
//!
//! A key deleted and recreated with lower ids (ids given by the publisher) would be read as
//! "nothing new" until its ids pass the old ones. So at every session start and whenever an
//! `XREAD` comes back empty, the newest entry of each key is compared with the last one
//! forwarded: below it, the key started over. That is logged, announced to the sequencer (a
//! baseline below the old position: `durable::Reset`, which gives resumes from before it a
//! `stream-reset` gap) and the key is read from its start. (A key recreated with `*` ids gets
//! ids above the old ones: it reads on as usual.)
//!
//! Entries map like the pub/sub envelope: field `data` is the payload, `event` the SSE type,
//! `traceparent`/`tracestate`/`published_at` the trace context. An entry without `data` is
//! counted and skipped.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use redis::cluster_routing::Slot;
use redis::{RedisResult, Value};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::bounds::BrokerInput;
use super::message::{IngestSender, SourceKind, SourceMessage};
use super::redis_client::{RedisConn, RedisEndpoint, redacted};
use super::redis_connect::RedisConnect;
use super::session::{BrokerError, Session, SessionEnd, forward, send_baseline, supervise};
use super::status::SourceStatus;
use crate::config::RedisStreamsConfig;
use crate::durable::{Catalog, DurableKind, DurableMark, Pos};
use crate::telemetry::TraceContext;

/// Entries asked for per `XREAD`.
const READ_COUNT: usize = 512;

/// One stream entry, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub pos: Pos,
    pub payload: Option<Bytes>,
    pub event_type: Option<String>,
    pub trace: TraceContext,
}

/// Runs the Redis Streams source until `shutdown`.
pub async fn run(
    cfg: RedisStreamsConfig,
    catalog: Arc<Catalog>,
    tx: IngestSender,
    status: Arc<SourceStatus>,
    shutdown: CancellationToken,
) -> SessionEnd {
    let endpoint =
        match RedisEndpoint::for_source("redis_streams", &RedisConnect::of_streams(&cfg), cfg.connect_timeout) {
            Ok(e) => e,
            Err(end) => return end,
        };
    let keys: Vec<(usize, String)> =
        catalog.iter().filter(|(_, s)| s.kind == DurableKind::RedisStream).map(|(i, s)| (i, s.name.clone())).collect();
    let input = BrokerInput::new(SourceKind::RedisStreams, cfg.max_message_bytes, status.clone());
    let url = redacted(&cfg.url);
    let max_delay = cfg.reconnect_max_delay;
    let last = vec![None; keys.len()];
    let mut session = RedisStreamsSession {
        endpoint,
        cfg,
        keys,
        last,
        tx,
        status: status.clone(),
        shutdown: shutdown.clone(),
        input,
    };
    supervise("redis_streams", &url, max_delay, &status, &shutdown, &mut session).await
}

/// The Redis Streams source's state across sessions.
struct RedisStreamsSession {
    endpoint: RedisEndpoint,
    cfg: RedisStreamsConfig,
    /// (catalog index, key) of every stream key.
    keys: Vec<(usize, String)>,
    /// Last entry forwarded per key; None until the first session's baseline.
    last: Vec<Option<Pos>>,
    tx: IngestSender,
    status: Arc<SourceStatus>,
    shutdown: CancellationToken,
    input: BrokerInput,
}

impl Session for RedisStreamsSession {
    async fn run(&mut self) -> SessionEnd {
        let groups = self.groups();
        let mut conns = Vec::with_capacity(groups.len());
        for _ in &groups {
            conns.push(tokio::select! {
                _ = self.shutdown.cancelled() => return SessionEnd::Shutdown,
                r = self.endpoint.connect(self.cfg.block) => match r {
                    Ok(c) => c,
                    Err(e) => return BrokerError::Connect(e.into()).into(),
                },
            });
        }
        let all: Vec<usize> = (0..self.keys.len()).collect();
        if let Err(end) = self.baselines(&mut conns[0], &all).await {
            return end;
        }
        let reconnect = self.status.set_connected();
        info!(
            source = "redis_streams",
            reconnect,
            keys = self.keys.len(),
            groups = groups.len(),
            "Broker connected; reading streams."
        );
        let mut reads: FuturesUnordered<_> =
            conns.into_iter().enumerate().map(|(g, conn)| read(g, conn, self.xread(&groups[g]))).collect();
        loop {
            let (g, mut conn, reply) = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return SessionEnd::Shutdown,
                Some(r) = reads.next() => r,
            };
            let reply = match reply {
                Ok(v) => v,
                Err(e) => return BrokerError::broker("XREAD", e).into(),
            };
            if reply == Value::Nil
                && let Err(end) = self.check_resets(&mut conn, &groups[g]).await
            {
                return end;
            }
            if let Err(end) = self.forward_reply(&reply).await {
                return end;
            }
            reads.push(read(g, conn, self.xread(&groups[g])));
        }
    }
}

/// One `XREAD` on its own connection, handed back with the reply.
async fn read(g: usize, mut conn: RedisConn, xread: redis::Cmd) -> (usize, RedisConn, RedisResult<Value>) {
    let reply = xread.query_async(&mut conn).await;
    (g, conn, reply)
}

impl RedisStreamsSession {
    /// The keys (indices into `keys`) read by one `XREAD`: all of them on one server; in a
    /// cluster, those of one slot.
    fn groups(&self) -> Vec<Vec<usize>> {
        if !self.endpoint.is_cluster() {
            return vec![(0..self.keys.len()).collect()];
        }
        let mut groups: Vec<(Slot, Vec<usize>)> = Vec::new();
        for (k, (_, key)) in self.keys.iter().enumerate() {
            let slot = Slot::for_key(key);
            match groups.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, g)) => g.push(k),
                None => groups.push((slot, vec![k])),
            }
        }
        groups.into_iter().map(|(_, g)| g).collect()
    }

    /// Announces the newest entry of each key not read before as its baseline, and finds the
    /// keys read before that started over.
    async fn baselines(&mut self, conn: &mut RedisConn, keys: &[usize]) -> Result<(), SessionEnd> {
        for &k in keys {
            let (idx, key) = &self.keys[k];
            if self.last[k].is_some() {
                continue;
            }
            let pos = newest(conn, key).await?.unwrap_or_default();
            send_baseline(&self.tx, SourceKind::RedisStreams, *idx, pos).await?;
            self.last[k] = Some(pos);
        }
        self.check_resets(conn, keys).await
    }

    /// Every key whose newest entry is below the last one forwarded was deleted and recreated
    /// with lower ids: it is read again from its start.
    async fn check_resets(&mut self, conn: &mut RedisConn, keys: &[usize]) -> Result<(), SessionEnd> {
        for &k in keys {
            let (idx, key) = &self.keys[k];
            let Some(last) = self.last[k] else { continue };
            let Some(now) = newest(conn, key).await? else { continue };
            if now >= last {
                continue;
            }
            let (mut old, mut new) = (String::new(), String::new());
            DurableKind::RedisStream.write_pos(last, &mut old);
            DurableKind::RedisStream.write_pos(now, &mut new);
            warn!(
                source = "redis_streams",
                key = %key,
                old_position = %old,
                new_position = %new,
                "Stream key was deleted and recreated with lower ids; reading it from its start. Resumes from before it get a stream-reset gap."
            );
            send_baseline(&self.tx, SourceKind::RedisStreams, *idx, Pos::default()).await?;
            self.last[k] = Some(Pos::default());
        }
        Ok(())
    }

    /// `XREAD` of the group's keys after the last entry forwarded, blocking up to `block`.
    fn xread(&self, group: &[usize]) -> redis::Cmd {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(READ_COUNT).arg("BLOCK").arg(self.cfg.block.as_millis() as u64).arg("STREAMS");
        for &k in group {
            cmd.arg(&self.keys[k].1);
        }
        for &k in group {
            let p = self.last[k].unwrap_or_default();
            cmd.arg(format!("{}-{}", p.a, p.b));
        }
        cmd
    }

    /// Forwards the new, admitted entries of one `XREAD` reply.
    async fn forward_reply(&mut self, reply: &Value) -> Result<(), SessionEnd> {
        let RedisStreamsSession { keys, last, tx, status, shutdown, input, .. } = self;
        for (key, entries) in parse_xread(reply) {
            let Some(k) = keys.iter().position(|(_, n)| *n == key) else { continue };
            let idx = keys[k].0;
            for e in entries {
                if last[k].is_some_and(|l| e.pos <= l) {
                    continue;
                }
                last[k] = Some(e.pos);
                let Some(payload) = e.payload else {
                    status.count_malformed();
                    debug!(source = "redis_streams", key = %e.key, "Entry without a data field; skipped.");
                    continue;
                };
                if !input.admit(&e.key, &payload, true) {
                    continue;
                }
                let out = SourceMessage {
                    source: SourceKind::RedisStreams,
                    topic: e.key,
                    payload,
                    event_type: e.event_type,
                    trace: e.trace,
                    received_at: Instant::now(),
                    reply: None,
                    durable: Some(DurableMark { stream: idx as u16, pos: e.pos, baseline: false }),
                };
                forward(tx, shutdown, out).await?;
            }
        }
        Ok(())
    }
}

/// The id of `key`'s newest entry (None: no entries).
async fn newest(conn: &mut RedisConn, key: &str) -> Result<Option<Pos>, SessionEnd> {
    let reply: Value = redis::cmd("XREVRANGE")
        .arg(key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await
        .map_err(|e| BrokerError::broker("XREVRANGE", e))?;
    Ok(parse_entries(key, &reply).first().map(|e| e.pos))
}

fn as_bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn as_list(v: &Value) -> Option<Vec<&Value>> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a.iter().collect()),
        Value::Map(m) => Some(m.iter().flat_map(|(k, v)| [k, v]).collect()),
        _ => None,
    }
}

/// Reads an `XREAD` reply: `[[key, [[id, [field, value, …]], …]], …]` (or a RESP3 map).
pub fn parse_xread(v: &Value) -> Vec<(String, Vec<Entry>)> {
    let mut out = Vec::new();
    match v {
        Value::Map(m) => {
            for (k, entries) in m {
                if let Some(key) = as_bytes(k).map(|b| String::from_utf8_lossy(b).into_owned()) {
                    let e = parse_entries(&key, entries);
                    out.push((key, e));
                }
            }
        }
        Value::Array(streams) => {
            for s in streams {
                let Some(pair) = as_list(s) else { continue };
                if pair.len() != 2 {
                    continue;
                }
                let Some(key) = as_bytes(pair[0]).map(|b| String::from_utf8_lossy(b).into_owned()) else { continue };
                let e = parse_entries(&key, pair[1]);
                out.push((key, e));
            }
        }
        _ => {}
    }
    out
}

/// Reads the entries of an `XRANGE`/`XREVRANGE` reply (or of one key of `XREAD`).
pub fn parse_entries(key: &str, v: &Value) -> Vec<Entry> {
    let Some(list) = as_list(v) else { return Vec::new() };
    let mut out = Vec::with_capacity(list.len());
    for item in list {
        let Some(pair) = as_list(item) else { continue };
        if pair.len() != 2 {
            continue;
        }
        let Some(pos) = as_bytes(pair[0])
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| DurableKind::RedisStream.parse_pos(s))
        else {
            continue;
        };
        let mut e = Entry { key: key.to_owned(), pos, payload: None, event_type: None, trace: TraceContext::default() };
        let fields = as_list(pair[1]).unwrap_or_default();
        for kv in fields.chunks(2) {
            let [k, v] = kv else { continue };
            let (Some(k), Some(v)) = (as_bytes(k), as_bytes(v)) else { continue };
            let text = || String::from_utf8_lossy(v).into_owned();
            match k {
                b"data" => e.payload = Some(Bytes::copy_from_slice(v)),
                b"event" => e.event_type = Some(text()),
                b"traceparent" => e.trace.traceparent = Some(text()),
                b"tracestate" => e.trace.tracestate = Some(text()),
                b"published_at" => e.trace.published_at_ms = text().trim().parse().ok(),
                _ => {}
            }
        }
        out.push(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn reads_xread_replies() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("audit"),
            Value::Array(vec![
                Value::Array(vec![bulk("5-1"), Value::Array(vec![bulk("data"), bulk("hi"), bulk("event"), bulk("t")])]),
                Value::Array(vec![bulk("6-0"), Value::Array(vec![bulk("other"), bulk("x")])]),
            ]),
        ])]);
        let r = parse_xread(&reply);
        assert_eq!(r.len(), 1);
        let (key, entries) = &r[0];
        assert_eq!(key, "audit");
        assert_eq!(entries[0].pos, Pos { a: 5, b: 1 });
        assert_eq!(entries[0].payload.as_deref(), Some(&b"hi"[..]));
        assert_eq!(entries[0].event_type.as_deref(), Some("t"));
        assert_eq!(entries[1].payload, None, "no data field");
    }
}
