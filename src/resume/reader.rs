//! Reads a range of a durable stream back from its broker, for resumes the ring cannot serve.
//!
//! Bounded cost: a resume storm after a deploy must not open thousands of broker consumers at
//! once. Every read holds a permit of one semaphore (`resume.max_concurrent_reads`) while it
//! talks to the broker; reads beyond it wait (that wait is the queue, bounded by the number of
//! resuming streams, each of which holds a stream slot). Reads of the same range for the same
//! filters coalesce: the first starts it, later ones share its result (the map holds only weak
//! references, so a read whose clients all left is dropped and releases its permit).
//!
//! `resume.max_events` counts the client's events, not the stream's: a JetStream read asks the
//! server for the client's subjects only (a filtered consumer, when one subject covers the
//! client's filters in the stream) and keeps the newest `max_events` events its filters match,
//! so a client on a quiet subject of a busy stream gets what it missed, not a `replay-limit`.
//!
//! A read in pages ([`ReadLimit::Oldest`]) keeps the *oldest* `max_events` instead and says
//! there is more: the in-place resume of a stream that never left (`spill-reread`) reads its
//! range page by page, each written before the next is read, so it loses nothing and holds one
//! page at a time.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use super::coalesce::Coalesce;
use crate::client::SharedFrame;
use crate::config::{Config, ResumeConfig};
use crate::durable::{Catalog, DurableKind, DurableStream, Pos};
use crate::metrics::Metrics;
use crate::sources::nats::read_headers;
use crate::sources::nats_connect::JetStreamConnect;
use crate::sources::redis_connect::RedisConnect;
use crate::sources::redis_streams;
use crate::sources::{RedisConn, RedisEndpoint};
use crate::topic::TopicFilter;

/// One event read back from a broker.
#[derive(Debug, Clone)]
pub struct BrokerEvent {
    pub topic: Arc<str>,
    pub pos: Pos,
    pub payload: Bytes,
    pub event_type: Option<String>,
}

/// Why a read could not return everything after the cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadGap {
    /// The broker no longer holds some of the events (retention limits, trimming).
    Retention,
    /// More than `resume.max_events` events: only the newest are replayed.
    ReplayLimit,
    /// The broker could not be read (down, stream missing, timeout).
    Unavailable,
}

impl ReadGap {
    /// The `reason` of the gap event.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadGap::Retention => "retention",
            ReadGap::ReplayLimit => "replay-limit",
            ReadGap::Unavailable => "broker-unavailable",
        }
    }
}

/// The events of one stream in `(after, upto]`, in stream order, and whether some are missing.
#[derive(Debug, Default)]
pub struct ReadOutcome {
    pub events: Vec<BrokerEvent>,
    pub gap: Option<ReadGap>,
    /// A read in pages stopped at `resume.max_events`: the range goes on after this position
    /// (the page's end, which may be past its last event: oversize messages are skipped).
    pub more: Option<Pos>,
}

impl ReadOutcome {
    fn failed(gap: ReadGap) -> Self {
        ReadOutcome { events: Vec::new(), gap: Some(gap), more: None }
    }
}

/// Which `resume.max_events` of a longer range a read keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReadLimit {
    /// The newest, behind a `replay-limit` gap: a reconnect from far behind.
    Newest,
    /// The oldest, and [`ReadOutcome::more`]: a stream read in pages.
    Oldest,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ReadKey {
    stream: usize,
    after: Pos,
    upto: Pos,
    /// The client's filters that may select events of the stream, sorted: the events a read
    /// returns and counts against `resume.max_events` (empty: every event of the stream).
    filters: Arc<[TopicFilter]>,
    limit: ReadLimit,
}

/// One read holding its permit, counted in `resume_broker_reads_active` until it ends. The
/// count is taken back on drop, not at the end of `read_now`: a read whose clients all left
/// (a stream cut while it waited) is dropped midway, and would otherwise stay counted forever.
struct ActiveRead<'a> {
    reader: &'a BrokerReader,
}

impl<'a> ActiveRead<'a> {
    fn start(reader: &'a BrokerReader) -> Self {
        let now = reader.active.fetch_add(1, Ordering::AcqRel) + 1;
        reader.peak.fetch_max(now, Ordering::AcqRel);
        reader.metrics.resume_reads_active.set(now as i64);
        reader.metrics.resume_reads_peak.set(reader.peak.load(Ordering::Relaxed) as i64);
        ActiveRead { reader }
    }
}

impl Drop for ActiveRead<'_> {
    fn drop(&mut self) {
        let now = self.reader.active.fetch_sub(1, Ordering::AcqRel) - 1;
        self.reader.metrics.resume_reads_active.set(now as i64);
    }
}

/// The bounded, coalescing reader shared by every resume.
pub struct BrokerReader {
    pub(super) catalog: Arc<Catalog>,
    cfg: ResumeConfig,
    js: Option<(String, String, usize)>,
    redis: Option<(RedisEndpoint, usize)>,
    permits: Arc<Semaphore>,
    /// Reads in flight, joined by identical reads.
    inflight: Coalesce<ReadKey, ReadOutcome>,
    js_ctx: tokio::sync::Mutex<Option<jetstream::Context>>,
    redis_conn: tokio::sync::Mutex<Option<RedisConn>>,
    /// `[jetstream]`'s URL, authentication, TLS and domain (shared with the JetStream source).
    js_connect: Option<JetStreamConnect>,
    pub(super) metrics: Arc<Metrics>,
    active: AtomicUsize,
    peak: AtomicUsize,
    /// Broker resumes' frames being built, shared by identical resumes (`share.rs`).
    pub(super) share: Coalesce<ShareKey, SharedReplay>,
}

impl std::fmt::Debug for BrokerReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerReader").field("active", &self.active).field("peak", &self.peak).finish_non_exhaustive()
    }
}

impl BrokerReader {
    /// A reader for the configured durable sources; connects lazily, on the first read.
    pub fn new(config: &Config, catalog: Arc<Catalog>, metrics: Arc<Metrics>) -> Self {
        BrokerReader {
            catalog,
            cfg: config.resume.clone(),
            js: config.jetstream.as_ref().map(|j| (j.url.clone(), j.event_header.clone(), j.max_message_bytes)),
            js_connect: config.jetstream.as_ref().map(JetStreamConnect::new),
            redis: config.redis_streams.as_ref().and_then(|r| {
                RedisEndpoint::with(&RedisConnect::of_streams(r), r.connect_timeout)
                    .ok()
                    .map(|e| (e, r.max_message_bytes))
            }),
            permits: Arc::new(Semaphore::new(config.resume.max_concurrent_reads)),
            inflight: Coalesce::default(),
            js_ctx: tokio::sync::Mutex::new(None),
            redis_conn: tokio::sync::Mutex::new(None),
            metrics,
            active: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            share: Default::default(),
        }
    }

    /// Whether every read slot (`resume.max_concurrent_reads`) is taken: reads now wait.
    pub fn is_contended(&self) -> bool {
        self.permits.available_permits() == 0
    }

    /// The most broker reads that ran at once since start.
    pub fn peak_concurrency(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Events of `stream` after `after` up to `upto` that `filters` select (see
    /// [`BrokerReader::read_filters`]), shared with concurrent identical reads.
    pub async fn read(
        self: &Arc<Self>,
        stream: usize,
        after: Pos,
        upto: Pos,
        filters: Arc<[TopicFilter]>,
        limit: ReadLimit,
    ) -> Arc<ReadOutcome> {
        let key = ReadKey { stream, after, upto, filters, limit };
        let me = self.clone();
        let k = key.clone();
        let (read, joined) = self.inflight.join_or_start(key, || async move { me.read_now(&k).await });
        if joined {
            self.metrics.resume_reads_coalesced.inc();
        }
        read.await
    }

    /// The filters a read of `stream` is keyed and counted by: those of `filters` that may
    /// select its events, sorted and without repeats; none for a Redis stream (one key, one
    /// topic: every filter that selects it selects all of it).
    pub fn read_filters(&self, stream: usize, filters: &[TopicFilter]) -> Arc<[TopicFilter]> {
        let durable = self.catalog.get(stream);
        if durable.kind == DurableKind::RedisStream {
            return Arc::from([]);
        }
        let mut v: Vec<TopicFilter> = filters.iter().filter(|f| durable.may_serve(f)).cloned().collect();
        v.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        v.dedup();
        Arc::from(v)
    }

    async fn read_now(&self, key: &ReadKey) -> ReadOutcome {
        let Ok(_permit) = self.permits.acquire().await else {
            return ReadOutcome::failed(ReadGap::Unavailable);
        };
        let _active = ActiveRead::start(self);
        let stream = self.catalog.get(key.stream);
        let read = async {
            match stream.kind {
                DurableKind::JetStream => self.read_jetstream(stream, key).await,
                DurableKind::RedisStream => self.read_redis(&stream.name, key).await,
            }
        };
        let out = match tokio::time::timeout(self.cfg.read_timeout, read).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => {
                warn!(stream = %stream.name, error = %e, "Resume read from the broker failed; the client gets a gap event.");
                self.reset(stream.kind).await;
                ReadOutcome::failed(ReadGap::Unavailable)
            }
            Err(_) => {
                warn!(stream = %stream.name, timeout = ?self.cfg.read_timeout, "Resume read timed out; the client gets a gap event.");
                ReadOutcome::failed(ReadGap::Unavailable)
            }
        };
        let outcome = out.gap.map_or("ok", ReadGap::as_str);
        self.metrics.count_resume_read(stream.kind.as_str(), outcome);
        debug!(stream = %stream.name, events = out.events.len(), outcome, "Resume read from the broker.");
        out
    }

    async fn reset(&self, kind: DurableKind) {
        match kind {
            DurableKind::JetStream => *self.js_ctx.lock().await = None,
            DurableKind::RedisStream => *self.redis_conn.lock().await = None,
        }
    }

    async fn jetstream(&self) -> Result<jetstream::Context, String> {
        let mut g = self.js_ctx.lock().await;
        if let Some(c) = &*g {
            return Ok(c.clone());
        }
        let connect = self.js_connect.as_ref().ok_or("JetStream is not configured")?;
        let opts =
            async_nats::ConnectOptions::new().name("sse-bridge-resume").connection_timeout(self.cfg.read_timeout);
        let (_, ctx) = connect.connect(opts).await.map_err(|e| e.to_string())?;
        *g = Some(ctx.clone());
        Ok(ctx)
    }

    async fn read_jetstream(&self, durable: &DurableStream, key: &ReadKey) -> Result<ReadOutcome, String> {
        let name = durable.name.as_str();
        let (_, event_header, max_bytes) = self.js.as_ref().ok_or("JetStream is not configured")?;
        let ctx = self.jetstream().await?;
        let mut stream = ctx.get_stream(name).await.map_err(|e| e.to_string())?;
        let info = stream.info().await.map_err(|e| e.to_string())?;
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let mut gap = None;
        let mut start = key.after.a + 1;
        let upto = key.upto.a.min(last);
        if first > start {
            gap = Some(ReadGap::Retention);
            start = first;
        }
        let mut upto = upto;
        let mut more = None;
        let max = self.cfg.max_events;
        let scope = Scope::of(durable, &key.filters);
        // Every event of the stream is the client's: the limit is plain arithmetic on sequences.
        if scope == Scope::Whole && upto >= start && upto - start + 1 > max as u64 {
            match key.limit {
                ReadLimit::Newest => {
                    gap = Some(ReadGap::ReplayLimit);
                    start = upto + 1 - max as u64;
                }
                ReadLimit::Oldest => {
                    upto = start + max as u64 - 1;
                    more = Some(Pos { a: upto, b: 0 });
                }
            }
        }
        if upto < start {
            return Ok(ReadOutcome { events: Vec::new(), gap, more });
        }
        let filter_subject = match &scope {
            Scope::Subject(s) => s.clone(),
            Scope::Whole | Scope::Matched => String::new(),
        };
        let consumer = stream
            .create_consumer(OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: start },
                filter_subject,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        // A filtered range may hold none of the client's events: nothing will be delivered.
        if consumer.cached_info().num_pending == 0 {
            return Ok(ReadOutcome { events: Vec::new(), gap, more });
        }
        let mut events = VecDeque::new();
        let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
        while let Some(m) = messages.next().await {
            let m = m.map_err(|e| e.to_string())?;
            let info = m.info().map_err(|e| e.to_string())?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            if seq > upto {
                break;
            }
            // Replays bridge exactly what live delivery bridges: `jetstream.subjects` applies.
            let selected = key.filters.is_empty() || key.filters.iter().any(|f| f.matches(&m.subject));
            if m.payload.len() <= *max_bytes && durable.holds(&m.subject) && selected {
                if events.len() == max {
                    if key.limit == ReadLimit::Oldest {
                        // A page is full: the next one starts after its last event.
                        more = events.back().map(|e: &BrokerEvent| e.pos);
                        break;
                    }
                    // Only the newest `max_events` of the client's events are replayed.
                    events.pop_front();
                    gap = Some(ReadGap::ReplayLimit);
                }
                let (event_type, _) = read_headers(m.headers.as_ref(), event_header);
                events.push_back(BrokerEvent {
                    topic: Arc::from(m.subject.as_str()),
                    pos: Pos { a: seq, b: 0 },
                    payload: Bytes::copy_from_slice(&m.payload),
                    event_type,
                });
            }
            if seq >= upto || pending == 0 {
                break;
            }
        }
        Ok(ReadOutcome { events: events.into(), gap, more })
    }

    async fn redis(&self) -> Result<RedisConn, String> {
        let mut g = self.redis_conn.lock().await;
        if let Some(c) = &*g {
            return Ok(c.clone());
        }
        let (endpoint, _) = self.redis.as_ref().ok_or("Redis Streams are not configured")?;
        let c = endpoint.connect(self.cfg.read_timeout).await.map_err(|e| e.to_string())?;
        *g = Some(c.clone());
        Ok(c)
    }

    async fn read_redis(&self, key_name: &str, key: &ReadKey) -> Result<ReadOutcome, String> {
        let max_bytes = self.redis.as_ref().map_or(usize::MAX, |r| r.1);
        let mut conn = self.redis().await?;
        let mut gap = None;
        // Redis 7 records the newest id ever deleted or trimmed: past the cursor means the
        // client missed entries the stream no longer has.
        let info: redis::Value =
            redis::cmd("XINFO").arg("STREAM").arg(key_name).query_async(&mut conn).await.map_err(|e| e.to_string())?;
        if let Some(deleted) =
            info_field(&info, "max-deleted-entry-id").and_then(|s| DurableKind::RedisStream.parse_pos(&s))
            && deleted > key.after
        {
            gap = Some(ReadGap::Retention);
        }
        // Trimming (MAXLEN/MINID) is not recorded there: if the oldest entry left is newer than
        // the cursor, the cursor's own entry was trimmed and completeness cannot be proven.
        let oldest: redis::Value = redis::cmd("XRANGE")
            .arg(key_name)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        if key.after != Pos::default()
            && redis_streams::parse_entries(key_name, &oldest).first().is_some_and(|e| e.pos > key.after)
        {
            gap = Some(ReadGap::Retention);
        }
        let (upto, after) = (format!("{}-{}", key.upto.a, key.upto.b), format!("({}-{}", key.after.a, key.after.b));
        let oldest_first = key.limit == ReadLimit::Oldest;
        let (cmd, from, to) = if oldest_first { ("XRANGE", after, upto) } else { ("XREVRANGE", upto, after) };
        let reply: redis::Value = redis::cmd(cmd)
            .arg(key_name)
            .arg(from)
            .arg(to)
            .arg("COUNT")
            .arg(self.cfg.max_events + 1)
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        let mut entries = redis_streams::parse_entries(key_name, &reply);
        let mut more = None;
        if entries.len() > self.cfg.max_events {
            entries.truncate(self.cfg.max_events);
            if oldest_first {
                more = entries.last().map(|e| e.pos);
            } else {
                gap = Some(ReadGap::ReplayLimit);
            }
        }
        if !oldest_first {
            entries.reverse();
        }
        let topic: Arc<str> = Arc::from(key_name);
        let events = entries
            .into_iter()
            .filter_map(|e| {
                let payload = e.payload.filter(|p| p.len() <= max_bytes)?;
                Some(BrokerEvent { topic: topic.clone(), pos: e.pos, payload, event_type: e.event_type })
            })
            .collect();
        Ok(ReadOutcome { events, gap, more })
    }
}

/// Which of a JetStream stream's events a read asks the server for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    /// Every event the stream holds is the client's (its filters cover the whole stream and no
    /// `jetstream.subjects` narrows it): no server filter, and the limit is on sequences.
    Whole,
    /// One subject covers every filter of the client in the stream: the server filters.
    Subject(String),
    /// Several subjects (a consumer with several filters needs nats-server 2.10): the whole
    /// range is read and the client's events are picked and counted here.
    Matched,
}

impl Scope {
    fn of(durable: &DurableStream, filters: &[TopicFilter]) -> Scope {
        let spaces = durable.spaces();
        let covers = |space: &crate::topic::Pattern| {
            filters.iter().any(|f| match f {
                TopicFilter::Pattern(p) => TopicFilter::Pattern(space.clone()).within(p),
                TopicFilter::Exact(t) => {
                    **t == *space.as_str() && !space.as_str().split('.').any(|t| t == "*" || t == ">")
                }
            })
        };
        if filters.is_empty() || (!durable.narrowed() && !spaces.is_empty() && spaces.iter().all(covers)) {
            return Scope::Whole;
        }
        // The one filter, if every other lies inside it and it lies inside the stream (a filter
        // wider than the stream's subjects is refused by older servers).
        let widest = filters.iter().find(|w| filters.iter().all(|f| contains(w, f)));
        match widest {
            Some(w) if spaces.iter().any(|s| w.within(s)) => Scope::Subject(w.as_str().to_owned()),
            _ => Scope::Matched,
        }
    }
}

/// Whether every topic `inner` selects is selected by `outer`.
fn contains(outer: &TopicFilter, inner: &TopicFilter) -> bool {
    match outer {
        TopicFilter::Exact(t) => inner.as_str() == &**t && matches!(inner, TopicFilter::Exact(_)),
        TopicFilter::Pattern(p) => inner.within(p),
    }
}

/// A string field of an `XINFO STREAM` reply (flat RESP2 list or RESP3 map).
fn info_field(v: &redis::Value, name: &str) -> Option<String> {
    use redis::Value;
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    match v {
        Value::Array(items) => items
            .chunks(2)
            .find(|kv| kv.len() == 2 && text(&kv[0]).as_deref() == Some(name))
            .and_then(|kv| text(&kv[1])),
        Value::Map(m) => m.iter().find(|(k, _)| text(k).as_deref() == Some(name)).and_then(|(_, v)| text(v)),
        _ => None,
    }
}

/// What decides a broker resume's frames byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct ShareKey {
    /// The run-local part of the client's id, kept in replayed ids.
    pub base: String,
    /// The durable positions the resume starts from (after the plan: a reset stream is at 0).
    pub vector: Vec<Option<Pos>>,
    /// The broker ranges to read: (stream index, after, up to and including).
    pub reads: Vec<(usize, Pos, Pos)>,
    /// The client's filters, sorted and without repeats.
    pub filters: Vec<TopicFilter>,
}

/// The frames of one broker resume, and the gaps its reads found (per stream index).
#[derive(Debug, Default)]
pub(super) struct SharedReplay {
    pub gaps: Vec<(usize, ReadGap)>,
    pub frames: Vec<Arc<SharedFrame>>,
}
