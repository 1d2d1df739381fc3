//! A browser-like SSE client: what a page's `EventSource` does (WHATWG HTML, "Server-sent
//! events"), for the rollout benchmark ([`crate::rollout`]).
//!
//! The rules that decide whether a browser survives a rollout, and that this client keeps:
//! - the stream is parsed field by field: `id:` sets the last event id (kept across
//!   connections, sent back as `Last-Event-ID`), `retry:` sets the reconnection time,
//!   `event:` and `data:` build the event, a blank line dispatches it, comments are ignored;
//! - a `200 text/event-stream` answer opens the stream; when its body ends or the connection
//!   drops, the client waits the reconnection time and connects again;
//! - a connection that fails before any answer is a network error: wait, connect again;
//! - **any other answer** (another status, or a `200` of another type) **fails the
//!   connection for good**: the client is dead, as a browser's `EventSource` is `CLOSED`.
//!
//! A list of addresses stands in for a load balancer: every client starts on the first; a
//! reconnect goes to the next live one; a refused TCP connection, or sse-bridge's `draining`
//! refusal (the replica's `/readyz` fails at the same moment), takes that address out for
//! every client, as a balancer's health check would, and the next one is tried at once.
//!
//! Memory per client is its read buffer (`--read-buf`), a line buffer that is empty between
//! reads, the last event id and a few counters, so thousands of clients fit.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::sse::{BodyDecoder, LineSplitter, Refusal, Stamp, parse_head, parse_payload};

/// Most topics one client follows (each costs it a [`Sequence`] and a gap counter).
pub const MAX_TOPICS: usize = 4;

/// Width of one timeline bucket.
pub const BUCKET: Duration = Duration::from_millis(100);

/// Latency histograms (a client records into shard `client % LATENCY_SHARDS`).
const LATENCY_SHARDS: usize = 16;

/// Buckets kept (20 minutes); later moments fall into the last one.
const MAX_BUCKETS: usize = 12_000;

/// A connect that took this long probably waited for a SYN retransmission (the first comes
/// after 1 s: the server's listen queue dropped the first SYN); on a starved machine it may
/// also be the client's own runtime noticing late. `ListenOverflows` tells the two apart.
const SLOW_CONNECT: Duration = Duration::from_millis(900);

/// Longest wait for a TCP connect, and for the response head, before it counts as a network
/// error (then: wait the reconnection time, connect again).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// The event type of the event being built, as far as the benchmark tells them apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Kind {
    /// No `event:` field (or `event: message`): a message.
    #[default]
    Message,
    /// `event: sse-bridge.gap`: the bridge says events were missed.
    Gap,
    /// Any other type.
    Other,
}

/// The `reason`s of sse-bridge's gap events (docs/delivery.md), in the order of the counters;
/// anything else counts as the last, `other`.
pub const GAP_REASONS: [&str; 9] = [
    "evicted",
    "unknown-run",
    "malformed-id",
    "retention",
    "replay-limit",
    "broker-unavailable",
    "unknown-position",
    "dropped",
    "other",
];

/// The index in [`GAP_REASONS`] of the reason a gap event's data names.
fn gap_reason(data: &[u8]) -> u8 {
    let Some(at) = data.windows(10).position(|w| w == b"\"reason\":\"") else {
        return (GAP_REASONS.len() - 1) as u8;
    };
    let rest = &data[at + 10..];
    let value = &rest[..rest.iter().position(|&b| b == b'"').unwrap_or(rest.len())];
    GAP_REASONS.iter().position(|r| r.as_bytes() == value).unwrap_or(GAP_REASONS.len() - 1) as u8
}

/// One dispatched event, as the benchmark counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatched {
    /// A message whose data is one of the load generator's stamps.
    Stamp(Stamp),
    /// An `sse-bridge.gap` event: bit `i` of `named` set when its data names topic `i`;
    /// `reason` indexes [`GAP_REASONS`].
    Gap { named: u8, reason: u8 },
    /// Any other event.
    Other,
}

/// What an `EventSource` keeps across its connections.
#[derive(Debug)]
pub struct EsState {
    /// The last event ID string: sent as `Last-Event-ID` when it is not empty.
    pub last_event_id: String,
    /// The reconnection time in milliseconds (the last valid `retry:`).
    pub retry_ms: u64,
}

/// The names a gap event's data is searched for (JSON strings, quotes included).
#[derive(Debug)]
pub struct Topics {
    quoted: Vec<Vec<u8>>,
}

impl Topics {
    /// `names[i]` is topic `i` of the stamps.
    pub fn new(names: &[String]) -> Self {
        Topics { quoted: names.iter().map(|n| format!("\"{n}\"").into_bytes()).collect() }
    }

    /// Bit `i` set when `data` names topic `i`.
    fn named_in(&self, data: &[u8]) -> u8 {
        let mut mask = 0;
        for (i, q) in self.quoted.iter().enumerate() {
            if data.windows(q.len()).any(|w| w == q.as_slice()) {
                mask |= 1 << i;
            }
        }
        mask
    }
}

/// The event-stream interpretation of one connection's body: the buffers the WHATWG parser
/// keeps between lines.
#[derive(Debug, Default)]
pub struct EsParser {
    lines: LineSplitter,
    /// The first bytes were seen (a leading byte order mark is skipped once).
    started: bool,
    kind: Kind,
    /// At least one `data:` field in the event being built.
    has_data: bool,
    /// The stamp in the event's data (one `data:` line holding a stamp).
    stamp: Option<Stamp>,
    /// Topics named in the event's data (gap events).
    named: u8,
    /// The gap reason the event's data names (index in [`GAP_REASONS`]).
    reason: u8,
    /// The last event ID buffer: becomes the last event ID string at the next dispatch.
    id_buf: String,
}

impl EsParser {
    /// A parser for a new connection of an `EventSource` whose last event id is `last_id`.
    pub fn new(last_id: &str) -> Self {
        EsParser { id_buf: last_id.to_owned(), ..Default::default() }
    }

    /// Feeds body bytes; `on` gets every dispatched event.
    pub fn feed(&mut self, mut body: &[u8], topics: &Topics, es: &mut EsState, mut on: impl FnMut(Dispatched)) {
        if !self.started && !body.is_empty() {
            self.started = true;
            body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
        }
        let mut lines = std::mem::take(&mut self.lines);
        lines.feed(body, |line| self.line(line, topics, es, &mut on));
        self.lines = lines;
    }

    fn line(&mut self, line: &[u8], topics: &Topics, es: &mut EsState, on: &mut impl FnMut(Dispatched)) {
        if line.is_empty() {
            return self.dispatch(es, on);
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"event" => {
                self.kind = match value {
                    b"" | b"message" => Kind::Message,
                    b"sse-bridge.gap" => Kind::Gap,
                    _ => Kind::Other,
                }
            }
            b"data" => {
                let stamp = if self.has_data { None } else { parse_payload(value) };
                if stamp.is_none() {
                    self.named |= topics.named_in(value);
                    self.reason = gap_reason(value);
                }
                self.stamp = stamp;
                self.has_data = true;
            }
            b"id" if !value.contains(&0) => {
                self.id_buf.clear();
                self.id_buf.push_str(&String::from_utf8_lossy(value));
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                es.retry_ms = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()).unwrap_or(u64::MAX);
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, es: &mut EsState, on: &mut impl FnMut(Dispatched)) {
        if es.last_event_id != self.id_buf {
            es.last_event_id.clone_from(&self.id_buf);
        }
        if self.has_data {
            on(match (self.kind, self.stamp) {
                (Kind::Gap, _) => Dispatched::Gap { named: self.named, reason: self.reason },
                (Kind::Message, Some(s)) => Dispatched::Stamp(s),
                _ => Dispatched::Other,
            });
        }
        self.kind = Kind::Message;
        self.has_data = false;
        self.stamp = None;
        self.named = 0;
        self.reason = 0;
    }
}

/// One topic's sequence as one client saw it: every event exactly once and in order shows as
/// nothing skipped and nothing behind.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sequence {
    /// The next sequence expected (0 before the first event: sequences start at 1).
    pub next: u64,
    /// Sequences jumped over (never delivered, or delivered late: then also counted `behind`).
    pub skipped: u64,
    /// Events at or below one already delivered: duplicates (or late ones).
    pub behind: u64,
    pub received: u64,
}

impl Sequence {
    fn observe(&mut self, seq: u64) {
        self.received += 1;
        let next = self.next.max(1);
        if seq >= next {
            self.skipped += seq - next;
            self.next = seq + 1;
        } else {
            self.behind += 1;
        }
    }

    /// Events of the `published` ones that never arrived (skipped or after the last one seen).
    pub fn missing(&self, published: u64) -> u64 {
        self.skipped + self.undelivered(published)
    }

    /// Events the client's stream moved past without them: lost for good, since its last event
    /// id (what it resumes from) is beyond them.
    pub fn lost(&self) -> u64 {
        self.skipped
    }

    /// Events of the `published` ones after the last one seen: not delivered *yet* when the run
    /// stopped (the client was still resuming or catching up; its id is before them, so a
    /// resume would still bring them). Not a loss, but not a client caught up either.
    pub fn undelivered(&self, published: u64) -> u64 {
        published.saturating_sub(self.next.max(1) - 1)
    }
}

/// What happened to one client, collected at the end.
#[derive(Debug, Default)]
pub struct ClientResult {
    pub seq: [Sequence; MAX_TOPICS],
    /// Gap events naming topic `i`.
    pub gaps: [u32; MAX_TOPICS],
    /// The connection failed for good (non-`200`, or not an event stream).
    pub dead: bool,
    /// When the first stream admitted after the signal opened (ns on the fleet's clock).
    pub admitted_ns: Option<u64>,
    /// When the first event (a gap event, a replayed or a live one) arrived on a stream
    /// admitted after the signal: the client is back. A stream resuming from a broker sends
    /// its head at once but its first event only after the broker read.
    pub back_ns: Option<u64>,
    /// The target whose admitted stream was open at the end.
    pub open_at_end: Option<u8>,
    /// Streams the server ended before the signal (slow-consumer cuts, max age, …).
    pub ended_before_signal: u32,
}

/// What a target's timeline counts, per bucket.
#[derive(Debug, Clone, Copy)]
pub enum Tick {
    /// A TCP connect was started.
    Attempt = 0,
    /// A TCP connect completed: the connection reached the server's accept queue.
    Connected = 1,
    /// A stream was admitted (`200 text/event-stream`, no refusal header).
    Admitted = 2,
    /// A refusal that time can fix (`200` with a `retry:` and the `sse-bridge-refusal` header).
    Refused = 3,
    /// An admitted stream ended (drained, cut, or dropped).
    Ended = 4,
}

const TICKS: usize = 5;

/// Counts per target, kind and 100 ms bucket since the fleet's clock started.
#[derive(Debug)]
pub struct Timeline {
    counts: Vec<AtomicU32>,
}

impl Timeline {
    fn new(targets: usize) -> Self {
        Timeline { counts: (0..targets * TICKS * MAX_BUCKETS).map(|_| AtomicU32::new(0)).collect() }
    }

    fn count(&self, target: usize, tick: Tick, elapsed: Duration) {
        let b = ((elapsed.as_nanos() / BUCKET.as_nanos()) as usize).min(MAX_BUCKETS - 1);
        self.counts[(target * TICKS + tick as usize) * MAX_BUCKETS + b].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts of `tick` at `target` for buckets `from..to`.
    pub fn series(&self, target: usize, tick: Tick, from: usize, to: usize) -> Vec<u32> {
        let base = (target * TICKS + tick as usize) * MAX_BUCKETS;
        (from.min(MAX_BUCKETS)..to.min(MAX_BUCKETS)).map(|b| self.counts[base + b].load(Ordering::Relaxed)).collect()
    }

    /// The bucket of `ns` on the fleet's clock.
    pub fn bucket_of(ns: u64) -> usize {
        (ns / BUCKET.as_nanos() as u64) as usize
    }
}

/// One address behind the stand-in load balancer.
#[derive(Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// The request up to (not including) `Last-Event-ID` and the blank line.
    request: Vec<u8>,
    /// Out of rotation: it refused a connection or said it is draining.
    down: AtomicBool,
}

/// What every client shares: the targets, the clock, the counters the run watches.
#[derive(Debug)]
pub struct Fleet {
    pub targets: Vec<Target>,
    pub topics: Topics,
    pub clock: Instant,
    /// When the first target was signalled (ns on `clock`; 0: not yet).
    pub signal_ns: AtomicU64,
    pub stop: CancellationToken,
    pub timeline: Timeline,
    /// Admitted streams open now.
    pub open: AtomicU64,
    /// Clients that got an event on a stream admitted after the signal (see
    /// [`ClientResult::back_ns`]).
    pub back: AtomicU64,
    pub dead: AtomicU64,
    /// Stamped events received per topic, over all clients.
    pub received: [AtomicU64; MAX_TOPICS],
    /// Connects that took [`SLOW_CONNECT`] or more.
    pub slow_connects: AtomicU64,
    /// Connects refused (nothing listening): the client tried the next address.
    pub conn_refused: AtomicU64,
    /// Connections that failed before an answer, or timed out.
    pub net_errors: AtomicU64,
    /// Longest TCP connect, in microseconds.
    pub max_connect_us: AtomicU64,
    /// Gap events per topic and reason (index in [`GAP_REASONS`]).
    pub gap_reasons: [[AtomicU64; GAP_REASONS.len()]; MAX_TOPICS],
    /// Publish→receive latency of stamped events, microseconds: `[0]` before the signal (the
    /// steady state), `[1]` after; each sharded by client.
    pub latency: [Vec<Mutex<Histogram<u64>>>; 2],
    pub first_dead: Mutex<Option<String>>,
    read_buf: usize,
    reconnect_ms: u64,
}

impl Fleet {
    /// `path_query` is the stream's path with its `topic=` parameters.
    pub fn new(
        targets: &[SocketAddr],
        path_query: &str,
        topics: &[String],
        read_buf: usize,
        reconnect_ms: u64,
    ) -> Self {
        let targets = targets
            .iter()
            .map(|&addr| Target {
                addr,
                request: format!(
                    "GET {path_query} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\
                     Cache-Control: no-cache\r\nUser-Agent: sse-loadgen (eventsource)\r\n"
                )
                .into_bytes(),
                down: AtomicBool::new(false),
            })
            .collect::<Vec<_>>();
        Fleet {
            timeline: Timeline::new(targets.len()),
            targets,
            topics: Topics::new(topics),
            clock: Instant::now(),
            signal_ns: AtomicU64::new(0),
            stop: CancellationToken::new(),
            open: AtomicU64::new(0),
            back: AtomicU64::new(0),
            dead: AtomicU64::new(0),
            received: Default::default(),
            slow_connects: AtomicU64::new(0),
            conn_refused: AtomicU64::new(0),
            net_errors: AtomicU64::new(0),
            max_connect_us: AtomicU64::new(0),
            gap_reasons: Default::default(),
            latency: [(); 2].map(|_| {
                (0..LATENCY_SHARDS)
                    .map(|_| Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 2).expect("valid histogram bounds")))
                    .collect()
            }),
            first_dead: Mutex::new(None),
            read_buf,
            reconnect_ms,
        }
    }

    /// Nanoseconds on the fleet's clock.
    pub fn now_ns(&self) -> u64 {
        self.clock.elapsed().as_nanos() as u64
    }

    /// The address after `from` that is not out of rotation (if all are, simply the next).
    fn next_live(&self, from: usize) -> usize {
        let n = self.targets.len();
        (1..=n)
            .map(|k| (from + k) % n)
            .find(|&j| !self.targets[j].down.load(Ordering::Relaxed))
            .unwrap_or((from + 1) % n)
    }

    fn tick(&self, target: usize, tick: Tick) {
        self.timeline.count(target, tick, self.clock.elapsed());
    }
}

/// How one connection of a client ended.
enum Outcome {
    /// The run is over.
    Stopped,
    /// Failed for good.
    Dead(String),
    /// Reconnect after the reconnection time (stream ended, refusal, or network error).
    Reconnect,
}

/// One client's state across its connections.
struct Client {
    src: Option<IpAddr>,
    /// The address of the current (or last) connection.
    at: usize,
    es: EsState,
    buf: Box<[u8]>,
    res: ClientResult,
    /// The initial connect's share of `--connect-concurrency`, released at the first answer.
    permit: Option<OwnedSemaphorePermit>,
    /// Its latency histogram shard.
    shard: usize,
}

/// One browser-like client from its first connect to the end of the run. `permit` (the
/// initial connect's share of `--connect-concurrency`) is released once the first answer came.
pub async fn client(
    id: usize,
    src: Option<IpAddr>,
    fleet: std::sync::Arc<Fleet>,
    permit: OwnedSemaphorePermit,
) -> ClientResult {
    let mut c = Client {
        src,
        at: 0,
        es: EsState { last_event_id: String::new(), retry_ms: fleet.reconnect_ms },
        buf: vec![0u8; fleet.read_buf].into_boxed_slice(),
        res: ClientResult::default(),
        permit: Some(permit),
        shard: id % LATENCY_SHARDS,
    };
    loop {
        match connection(&fleet, &mut c).await {
            Outcome::Stopped => return c.res,
            Outcome::Dead(why) => {
                c.res.dead = true;
                fleet.dead.fetch_add(1, Ordering::Relaxed);
                fleet.first_dead.lock().unwrap().get_or_insert(why);
                return c.res;
            }
            Outcome::Reconnect => {}
        }
        let wait = Duration::from_millis(c.es.retry_ms.min(3_600_000));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = fleet.stop.cancelled() => return c.res,
        }
        c.at = fleet.next_live(c.at);
    }
}

/// Connects (to `c.at`, or past it when addresses refuse), asks for the stream, and reads it
/// to its end.
async fn connection(fleet: &Fleet, c: &mut Client) -> Outcome {
    let Client { src, at, es, buf, res, permit, shard } = c;
    let mut stream = tokio::select! {
        s = connect(fleet, at, *src) => match s {
            Some(s) => s,
            None => return Outcome::Reconnect,
        },
        _ = fleet.stop.cancelled() => return Outcome::Stopped,
    };
    let target = &fleet.targets[*at];
    let mut req = Vec::with_capacity(target.request.len() + es.last_event_id.len() + 20);
    req.extend_from_slice(&target.request);
    if !es.last_event_id.is_empty() {
        req.extend_from_slice(b"Last-Event-ID: ");
        req.extend_from_slice(es.last_event_id.as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    let head = async {
        stream.write_all(&req).await.ok()?;
        let mut filled = 0;
        loop {
            if filled == buf.len() {
                return None;
            }
            let n = stream.read(&mut buf[filled..]).await.ok()?;
            if n == 0 {
                return None;
            }
            filled += n;
            match parse_head(&buf[..filled]) {
                Ok(Some(h)) => return Some(Ok((h, filled))),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
        }
    };
    let (head, filled) = tokio::select! {
        h = tokio::time::timeout(HEAD_TIMEOUT, head) => match h {
            Ok(Some(Ok(h))) => h,
            Ok(Some(Err(e))) => return Outcome::Dead(format!("{}: {e}", target.addr)),
            Ok(None) | Err(_) => {
                fleet.net_errors.fetch_add(1, Ordering::Relaxed);
                return Outcome::Reconnect;
            }
        },
        _ = fleet.stop.cancelled() => return Outcome::Stopped,
    };
    drop(permit.take());
    if head.status != 200 {
        return Outcome::Dead(format!("HTTP {} from {}", head.status, target.addr));
    }
    if !head.event_stream {
        return Outcome::Dead(format!("200 without text/event-stream from {}", target.addr));
    }
    let admitted = match head.refusal {
        Some(r) => {
            if r == Refusal::Draining {
                target.down.store(true, Ordering::Relaxed);
            }
            fleet.tick(*at, Tick::Refused);
            false
        }
        None => {
            fleet.tick(*at, Tick::Admitted);
            fleet.open.fetch_add(1, Ordering::Relaxed);
            if fleet.signal_ns.load(Ordering::Relaxed) != 0 && res.admitted_ns.is_none() {
                res.admitted_ns = Some(fleet.now_ns());
            }
            true
        }
    };
    let mut decoder = BodyDecoder::for_head(&head);
    let mut parser = EsParser::new(&es.last_event_id);
    // Events on this stream bring the client back (the first one after the signal counts).
    let brings_back = admitted && res.admitted_ns.is_some() && res.back_ns.is_none();
    let mut on_body = |data: &[u8], es: &mut EsState, res: &mut ClientResult| -> bool {
        let ended = decoder.feed(data, |piece| {
            parser.feed(piece, &fleet.topics, es, |d| {
                if brings_back && res.back_ns.is_none() {
                    res.back_ns = Some(fleet.now_ns());
                    fleet.back.fetch_add(1, Ordering::Relaxed);
                }
                match d {
                    Dispatched::Stamp(s) if (s.topic as usize) < MAX_TOPICS => {
                        res.seq[s.topic as usize].observe(s.seq);
                        fleet.received[s.topic as usize].fetch_add(1, Ordering::Relaxed);
                        let now = fleet.now_ns();
                        let phase = usize::from(fleet.signal_ns.load(Ordering::Relaxed) != 0);
                        let us = now.saturating_sub(s.sent_ns) / 1000;
                        fleet.latency[phase][*shard].lock().unwrap().saturating_record(us.max(1));
                    }
                    Dispatched::Gap { named, reason } => {
                        for (i, g) in res.gaps.iter_mut().enumerate() {
                            if named >> i & 1 == 1 {
                                *g += 1;
                                fleet.gap_reasons[i][reason as usize].fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    _ => {}
                }
            })
        });
        !matches!(ended, Ok(false))
    };
    let mut done = on_body(&buf[head.len..filled], es, res);
    while !done {
        tokio::select! {
            r = stream.read(buf) => match r {
                Ok(0) | Err(_) => done = true,
                Ok(n) => done = on_body(&buf[..n], es, res),
            },
            _ = fleet.stop.cancelled() => {
                if admitted {
                    res.open_at_end = Some(*at as u8);
                }
                return Outcome::Stopped;
            }
        }
    }
    if admitted {
        fleet.open.fetch_sub(1, Ordering::Relaxed);
        fleet.tick(*at, Tick::Ended);
        if fleet.signal_ns.load(Ordering::Relaxed) == 0 {
            res.ended_before_signal += 1;
        }
    }
    Outcome::Reconnect
}

/// A TCP connection to `*at`, or to the next live address when one refuses (each refusal
/// takes that address out of rotation). `None`: a network error (or every address refused).
async fn connect(fleet: &Fleet, at: &mut usize, src: Option<IpAddr>) -> Option<TcpStream> {
    for _ in 0..fleet.targets.len() {
        let addr = fleet.targets[*at].addr;
        let sock = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.ok()?;
        if let Some(ip) = src {
            defer_port_choice(&sock);
            sock.bind((ip, 0).into()).ok()?;
        }
        fleet.tick(*at, Tick::Attempt);
        let t0 = Instant::now();
        match tokio::time::timeout(CONNECT_TIMEOUT, sock.connect(addr)).await {
            Ok(Ok(s)) => {
                let took = t0.elapsed();
                fleet.tick(*at, Tick::Connected);
                fleet.max_connect_us.fetch_max(took.as_micros() as u64, Ordering::Relaxed);
                if took >= SLOW_CONNECT {
                    fleet.slow_connects.fetch_add(1, Ordering::Relaxed);
                }
                return Some(s);
            }
            Ok(Err(e)) if e.kind() == ErrorKind::ConnectionRefused => {
                fleet.conn_refused.fetch_add(1, Ordering::Relaxed);
                fleet.targets[*at].down.store(true, Ordering::Relaxed);
                *at = fleet.next_live(*at);
            }
            Ok(Err(_)) | Err(_) => break,
        }
    }
    fleet.net_errors.fetch_add(1, Ordering::Relaxed);
    None
}

/// Lets `connect` choose the source port (`IP_BIND_ADDRESS_NO_PORT`) instead of `bind`: a
/// bind to port 0 searches for a port no other socket of that address holds, which grows slow
/// with thousands of sockets on one address (10,000 clients took 9.5 s to connect, their
/// reconnects stretched over 12 s), while `connect` only needs the 4-tuple to be unique.
fn defer_port_choice(sock: &TcpSocket) {
    use std::os::fd::AsRawFd as _;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on a socket we own, with a pointer to an int and its size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&[u8]], last_id: &str) -> (Vec<Dispatched>, EsState) {
        let topics = Topics::new(&["roll.js.x".into(), "roll.core.x".into()]);
        let mut es = EsState { last_event_id: last_id.into(), retry_ms: 3000 };
        let mut p = EsParser::new(last_id);
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &topics, &mut es, |d| out.push(d));
        }
        (out, es)
    }

    #[test]
    fn fields_follow_the_whatwg_rules() {
        let body: &[u8] = b"\xEF\xBB\xBF: ok\nretry: 2000\n\nid: a-1\ndata: 0:1:5:x\n\n\
            id: a-2\ndata:1:1:6:\n\nevent: other\ndata: 0:9:9:\n\n\
            event: sse-bridge.gap\ndata: {\"reason\":\"unknown-run\",\"topics\":[\"roll.core.x\"]}\n\n\
            retry: 12x\nretry:\nid\ndata: 0:2:7:\n\ndata: 0:3:8:\ndata: more\n\ndata: 0:4:9:";
        // Every split point gives the same events and state.
        for split in 0..body.len() {
            let (events, es) = parse(&[&body[..split], &body[split..]], "");
            assert_eq!(
                events,
                [
                    Dispatched::Stamp(Stamp { topic: 0, seq: 1, sent_ns: 5 }),
                    Dispatched::Stamp(Stamp { topic: 1, seq: 1, sent_ns: 6 }),
                    Dispatched::Other,
                    Dispatched::Gap { named: 0b10, reason: 1 },
                    Dispatched::Stamp(Stamp { topic: 0, seq: 2, sent_ns: 7 }),
                    Dispatched::Other,
                ],
                "split {split}"
            );
            // `retry: 12x` and an empty `retry:` are ignored; a bare `id` empties the id; the
            // unterminated last event is never dispatched.
            assert_eq!(es.retry_ms, 2000);
            assert_eq!(es.last_event_id, "");
        }
    }

    #[test]
    fn the_last_event_id_survives_events_without_id_and_reconnects() {
        let (_, es) = parse(&[b"id: x-7\ndata: 0:1:1:\n\nevent: sse-bridge.gap\ndata: {}\n\n: hi\n\n"], "");
        assert_eq!(es.last_event_id, "x-7");
        // A new connection starts from the id it resumed with; a retry-only frame keeps it.
        let (events, es) = parse(&[b"retry: 1234\n\n"], "x-7");
        assert!(events.is_empty());
        assert_eq!((es.last_event_id.as_str(), es.retry_ms), ("x-7", 1234));
    }

    #[test]
    fn sequences_count_missing_and_repeated_events() {
        let mut s = Sequence::default();
        for q in [1, 2, 4, 4, 3, 5] {
            s.observe(q);
        }
        assert_eq!((s.skipped, s.behind, s.received), (1, 2, 6));
        assert_eq!(s.missing(7), 1 + 2);
        assert_eq!((s.lost(), s.undelivered(7)), (1, 2));
        let mut exact = Sequence::default();
        (1..=10).for_each(|q| exact.observe(q));
        assert_eq!((exact.missing(10), exact.behind), (0, 0));
        assert_eq!(Sequence::default().missing(3), 3);
    }

    #[test]
    fn refusal_heads_are_recognised() {
        let refusal = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nsse-bridge-refusal: draining\r\n\
            content-length: 13\r\nconnection: close\r\n\r\nretry: 1500\n\nEXTRA";
        let h = parse_head(refusal).unwrap().unwrap();
        assert_eq!(
            (h.status, h.event_stream, h.refusal, h.content_length),
            (200, true, Some(Refusal::Draining), Some(13))
        );
        let mut d = BodyDecoder::for_head(&h);
        let mut body = Vec::new();
        assert_eq!(d.feed(&refusal[h.len..], |p| body.extend_from_slice(p)), Ok(true));
        assert_eq!(body, b"retry: 1500\n\n");
        let other = parse_head(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n").unwrap().unwrap();
        assert!(!other.event_stream && other.refusal.is_none());
        let rate = parse_head(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nsse-bridge-refusal: ip_connect_rate\r\n\r\n");
        assert_eq!(rate.unwrap().unwrap().refusal, Some(Refusal::Other));
    }

    #[test]
    fn the_balancer_skips_addresses_out_of_rotation() {
        let addrs: Vec<SocketAddr> = (1..=3).map(|p| SocketAddr::from(([127, 0, 0, 1], p))).collect();
        let f = Fleet::new(&addrs, "/events?topic=a", &["a".into()], 1024, 3000);
        assert_eq!(f.next_live(0), 1);
        assert_eq!(f.next_live(2), 0);
        f.targets[0].down.store(true, Ordering::Relaxed);
        assert_eq!(f.next_live(2), 1);
        f.targets[1].down.store(true, Ordering::Relaxed);
        f.targets[2].down.store(true, Ordering::Relaxed);
        assert_eq!(f.next_live(1), 2, "all out: simply the next");
    }
}
