//! The catalog of durable streams: which streams are configured, which topics each holds, and
//! the vector cursor (the `_tag:pos` part of an event id) read and written against them.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;

use super::redis_glob::RedisGlob;
use crate::config::Config;
use crate::event::Pos;
use crate::topic::{Pattern, TopicFilter};

/// Which broker keeps a durable stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DurableKind {
    JetStream,
    RedisStream,
}

impl DurableKind {
    /// Stable name for logs and metric labels (the source's name for it).
    pub fn as_str(self) -> &'static str {
        match self {
            DurableKind::JetStream => "jetstream",
            DurableKind::RedisStream => "redis_streams",
        }
    }

    fn tag_char(self) -> char {
        match self {
            DurableKind::JetStream => 'j',
            DurableKind::RedisStream => 'r',
        }
    }

    /// Writes `pos` as the broker writes it: `48211` or `1732550000000-3`.
    pub fn write_pos(self, pos: Pos, out: &mut String) {
        let _ = match self {
            DurableKind::JetStream => write!(out, "{}", pos.a),
            DurableKind::RedisStream => write!(out, "{}-{}", pos.a, pos.b),
        };
    }

    /// Reads a position written by [`DurableKind::write_pos`].
    pub fn parse_pos(self, s: &str) -> Option<Pos> {
        fn num(t: &str) -> Option<u64> {
            (!t.is_empty() && t.len() <= 20 && t.bytes().all(|c| c.is_ascii_digit())).then(|| t.parse().ok())?
        }
        match self {
            DurableKind::JetStream => Some(Pos { a: num(s)?, b: 0 }),
            DurableKind::RedisStream => {
                let (a, b) = s.split_once('-')?;
                Some(Pos { a: num(a)?, b: num(b)? })
            }
        }
    }
}

/// One configured durable stream.
#[derive(Debug)]
pub struct DurableStream {
    pub kind: DurableKind,
    /// JetStream stream name or Redis stream key.
    pub name: String,
    /// Short, stable id part: kind letter and 16 bits of a hash of the name.
    pub tag: String,
    /// The topics the stream holds: a Redis key is its own topic; a JetStream stream's subjects
    /// are learned when the source connects (None until then).
    spaces: RwLock<Option<Vec<Pattern>>>,
    /// `jetstream.subjects`: only these of the stream's subjects are bridged (empty: all).
    filters: Vec<Pattern>,
}

impl DurableStream {
    fn new(kind: DurableKind, name: &str, filters: Vec<Pattern>) -> Self {
        // FNV-1a: stable across processes and versions (std's hasher is not).
        let mut h: u32 = 0x811c_9dc5;
        for b in name.bytes() {
            h = (h ^ b as u32).wrapping_mul(0x0100_0193);
        }
        let spaces = match kind {
            DurableKind::RedisStream => Pattern::parse(name, usize::MAX).ok().map(|p| vec![p]),
            DurableKind::JetStream => None,
        };
        DurableStream {
            kind,
            name: name.to_owned(),
            tag: format!("{}{:04x}", kind.tag_char(), (h ^ (h >> 16)) & 0xffff),
            spaces: RwLock::new(spaces),
            filters,
        }
    }

    /// The configured subject filters that select some of this stream's subjects: what the live
    /// consumer asks for (empty: the whole stream).
    pub fn consumer_filters(&self) -> Vec<String> {
        let spaces = self.spaces.read();
        let spaces = spaces.as_deref().unwrap_or_default();
        self.filters
            .iter()
            .filter(|f| spaces.iter().any(|s| TopicFilter::Pattern((*f).clone()).overlaps(s)))
            .map(|f| f.as_str().to_owned())
            .collect()
    }

    /// The stream's subjects as last learned from the server (empty while unknown): what a
    /// resume read may ask the server to filter on.
    pub fn spaces(&self) -> Vec<Pattern> {
        self.spaces.read().clone().unwrap_or_default()
    }

    /// Whether `jetstream.subjects` bridges only some of the stream's subjects.
    pub fn narrowed(&self) -> bool {
        !self.filters.is_empty()
    }

    fn filtered_in(&self, f: impl Fn(&Pattern) -> bool) -> bool {
        self.filters.is_empty() || self.filters.iter().any(f)
    }

    /// Whether `topic` belongs to this stream (false while a JetStream stream's subjects are
    /// not yet known).
    pub fn holds(&self, topic: &str) -> bool {
        match self.kind {
            DurableKind::RedisStream => self.name == topic,
            DurableKind::JetStream => {
                self.spaces.read().as_ref().is_some_and(|s| s.iter().any(|p| p.matches(topic)))
                    && self.filtered_in(|p| p.matches(topic))
            }
        }
    }

    /// Whether a filter may select events of this stream (true while unknown).
    pub fn may_serve(&self, f: &TopicFilter) -> bool {
        match self.kind {
            DurableKind::RedisStream => f.matches(&self.name),
            DurableKind::JetStream => {
                self.spaces.read().as_ref().is_none_or(|s| s.iter().any(|p| f.overlaps(p)))
                    && self.filtered_in(|p| f.overlaps(p))
            }
        }
    }

    /// Whether every topic a filter selects belongs to this stream.
    fn contains(&self, f: &TopicFilter) -> bool {
        match self.kind {
            DurableKind::RedisStream => matches!(f, TopicFilter::Exact(t) if **t == *self.name),
            DurableKind::JetStream => {
                self.spaces.read().as_ref().is_some_and(|s| s.iter().any(|p| f.within(p)))
                    && self.filtered_in(|p| f.within(p))
            }
        }
    }
}

/// Every configured durable stream, in a fixed order (their index is what messages carry).
#[derive(Debug, Default)]
pub struct Catalog {
    streams: Vec<DurableStream>,
    /// Subjects and channels of the non-durable sources, for [`Catalog::durable_only`].
    nats_subjects: Vec<Pattern>,
    redis_channels: Vec<String>,
    /// `redis.patterns`: a filter is durable-only only if none of them can match its topics.
    redis_patterns: Vec<RedisGlob>,
    /// Set once a JetStream stream's subjects, learned from the server, overlap `nats.subjects`:
    /// from then on core NATS copies of the stream's subjects are dropped ([`Catalog::shadowed`]).
    shadowing: AtomicBool,
}

impl Catalog {
    /// The durable streams a configuration names.
    pub fn from_config(c: &Config) -> Catalog {
        let mut streams = Vec::new();
        if let Some(j) = &c.jetstream {
            let filters: Vec<Pattern> = j.subjects.iter().filter_map(|s| Pattern::parse(s, usize::MAX).ok()).collect();
            streams.extend(j.streams.iter().map(|n| DurableStream::new(DurableKind::JetStream, n, filters.clone())));
        }
        if let Some(r) = &c.redis_streams {
            streams.extend(r.keys.iter().map(|k| DurableStream::new(DurableKind::RedisStream, k, Vec::new())));
        }
        Catalog {
            streams,
            nats_subjects: c
                .nats
                .iter()
                .flat_map(|n| &n.subjects)
                .filter_map(|s| Pattern::parse(s, usize::MAX).ok())
                .collect(),
            redis_channels: c.redis.iter().flat_map(|r| r.channels.clone()).collect(),
            redis_patterns: c.redis.iter().flat_map(|r| &r.patterns).map(|p| RedisGlob::new(p)).collect(),
            shadowing: AtomicBool::new(false),
        }
    }

    /// Number of durable streams.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// Whether no durable stream is configured (ids then stay `<run>-<seq>`).
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// The stream at `idx`.
    pub fn get(&self, idx: usize) -> &DurableStream {
        &self.streams[idx]
    }

    /// Streams with their index.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &DurableStream)> {
        self.streams.iter().enumerate()
    }

    /// Two stream names whose tags collide, if any (refused at config time).
    pub fn tag_collision(&self) -> Option<(String, String)> {
        for (i, a) in self.streams.iter().enumerate() {
            for b in &self.streams[i + 1..] {
                if a.tag == b.tag {
                    return Some((a.name.clone(), b.name.clone()));
                }
            }
        }
        None
    }

    /// Records a JetStream stream's subjects, learned from the server.
    pub fn set_subjects(&self, idx: usize, subjects: &[String]) {
        let parsed = subjects.iter().filter_map(|s| Pattern::parse(s, usize::MAX).ok()).collect();
        *self.streams[idx].spaces.write() = Some(parsed);
    }

    /// The `nats.subjects` entries (as `nats.subjects[i] = "…"`) that overlap what JetStream
    /// stream `idx` bridges, as its subjects were last learned from the server: core NATS and
    /// the stream would both deliver those messages. When there are any, core NATS copies of the
    /// stream's subjects are dropped from then on ([`Catalog::shadowed`]); the caller logs it.
    /// (With `jetstream.subjects` set, such an overlap is refused at startup instead:
    /// [`source_overlap`].)
    pub fn nats_overlap(&self, idx: usize) -> Vec<String> {
        let stream = &self.streams[idx];
        let found: Vec<String> = self
            .nats_subjects
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                stream.kind == DurableKind::JetStream && stream.may_serve(&TopicFilter::Pattern((*p).clone()))
            })
            .map(|(i, p)| format!("nats.subjects[{i}] = {:?}", p.as_str()))
            .collect();
        if !found.is_empty() {
            self.shadowing.store(true, Ordering::Relaxed);
        }
        found
    }

    /// Whether a core NATS message on `topic` is a copy of one a JetStream stream captures
    /// (only after [`Catalog::nats_overlap`] found an overlap): the sequencer drops it, so a
    /// client gets the stream's copy, with its durable position, once.
    pub fn shadowed(&self, topic: &str) -> bool {
        self.shadowing.load(Ordering::Relaxed)
            && self.streams.iter().any(|s| s.kind == DurableKind::JetStream && s.holds(topic))
    }

    /// The durable stream `topic` belongs to, if any.
    pub fn owner_of(&self, topic: &str) -> Option<&DurableStream> {
        self.streams.iter().find(|s| s.holds(topic))
    }

    /// Whether every event a filter can select comes from a durable stream: it lies inside one
    /// stream's topics and no non-durable source (core NATS, Redis pub/sub) can deliver to it.
    /// (`/publish` refuses durable topics, so it cannot either.) For such a filter a resume
    /// needs no in-memory history at all. A Redis pattern counts only if it can match one of
    /// the filter's topics (the exact test of [`RedisGlob::overlaps`]): `redis.patterns =
    /// ["demo.*"]` leaves `orders.*` durable-only.
    pub fn durable_only(&self, f: &TopicFilter) -> bool {
        self.streams.iter().any(|s| s.contains(f))
            && !self.nats_subjects.iter().any(|p| f.overlaps(p))
            && !self.redis_channels.iter().any(|c| f.matches(c))
            && !self.redis_patterns.iter().any(|g| g.overlaps(f))
    }

    /// Appends `_tag:pos` for every stream with a known position: the vector part of an id.
    pub fn write_vector(&self, positions: &[Option<Pos>], out: &mut String) {
        for (s, p) in self.streams.iter().zip(positions) {
            if let Some(p) = p {
                out.push('_');
                out.push_str(&s.tag);
                out.push(':');
                s.kind.write_pos(*p, out);
            }
        }
    }

    /// Splits a client's id into its run-local part and the durable positions it carries.
    /// Unknown tags (a stream since removed from the configuration) are ignored; a malformed
    /// part makes the whole vector unusable (None).
    pub fn parse_cursor<'a>(&self, id: &'a str) -> (&'a str, Option<Vec<Option<Pos>>>) {
        let Some((base, rest)) = id.split_once('_') else {
            return (id, Some(vec![None; self.streams.len()]));
        };
        let mut positions = vec![None; self.streams.len()];
        for part in rest.split('_') {
            let Some((tag, pos)) = part.split_once(':') else { return (base, None) };
            if let Some(i) = self.streams.iter().position(|s| s.tag == tag) {
                match self.streams[i].kind.parse_pos(pos) {
                    Some(p) => positions[i] = Some(p),
                    None => return (base, None),
                }
            }
        }
        (base, Some(positions))
    }
}

/// Two configured sources that would deliver the same messages, each under its own id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceOverlap {
    /// The first key (`nats.subjects[0]`) and its value.
    pub key: String,
    pub value: String,
    /// The other key and its value.
    pub other_key: String,
    pub other_value: String,
    /// What the two would do, for the operator.
    pub why: &'static str,
}

/// The first pair of configured sources on one broker that overlap, if any (refused at
/// startup): a `nats.subjects` pattern that overlaps a `jetstream.subjects` pattern (core NATS
/// and the JetStream stream would both deliver each message), a `redis.channels` entry equal to,
/// or a `redis.patterns` glob matching, a `redis_streams.keys` entry (one topic fed by pub/sub
/// and by the stream: its resume could no longer come from the stream alone). A JetStream
/// stream whose subjects are only known from the server is checked when they are learned
/// ([`Catalog::nats_overlap`]).
pub fn source_overlap(c: &Config) -> Option<SourceOverlap> {
    let pair = |key: String, value: &str, other_key: String, other_value: &str, why| SourceOverlap {
        key,
        value: value.to_owned(),
        other_key,
        other_value: other_value.to_owned(),
        why,
    };
    if let (Some(n), Some(j)) = (&c.nats, &c.jetstream) {
        for (i, a) in n.subjects.iter().enumerate() {
            let Ok(pa) = Pattern::parse(a, usize::MAX) else { continue };
            for (k, b) in j.subjects.iter().enumerate() {
                let Ok(pb) = Pattern::parse(b, usize::MAX) else { continue };
                if TopicFilter::Pattern(pa.clone()).overlaps(&pb) {
                    return Some(pair(
                        format!("nats.subjects[{i}]"),
                        a,
                        format!("jetstream.subjects[{k}]"),
                        b,
                        "core NATS and the JetStream stream would both deliver each message on those subjects, under two ids",
                    ));
                }
            }
        }
    }
    if let (Some(r), Some(rs)) = (&c.redis, &c.redis_streams) {
        for (k, key) in rs.keys.iter().enumerate() {
            if let Some(i) = r.channels.iter().position(|ch| ch == key) {
                return Some(pair(
                    format!("redis.channels[{i}]"),
                    &r.channels[i],
                    format!("redis_streams.keys[{k}]"),
                    key,
                    "the topic would be fed both by pub/sub and by the stream",
                ));
            }
            if let Some(i) = r.patterns.iter().position(|p| RedisGlob::new(p).matches(key)) {
                return Some(pair(
                    format!("redis.patterns[{i}]"),
                    &r.patterns[i],
                    format!("redis_streams.keys[{k}]"),
                    key,
                    "the topic would be fed both by pub/sub and by the stream",
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        let c = Config {
            jetstream: Some(crate::config::JetStreamConfig { streams: vec!["ORDERS".into()], ..Default::default() }),
            redis_streams: Some(crate::config::RedisStreamsConfig { keys: vec!["audit".into()], ..Default::default() }),
            ..Default::default()
        };
        Catalog::from_config(&c)
    }

    #[test]
    fn vector_round_trips() {
        let c = catalog();
        let v = [Some(Pos { a: 48211, b: 0 }), Some(Pos { a: 1732550000000, b: 3 })];
        let mut s = String::from("00000000000a-7");
        c.write_vector(&v, &mut s);
        assert!(s.starts_with("00000000000a-7_j"), "{s}");
        let (base, parsed) = c.parse_cursor(&s);
        assert_eq!(base, "00000000000a-7");
        assert_eq!(parsed.unwrap(), v);
        assert_eq!(c.parse_cursor("00000000000a-7").1.unwrap(), [None, None]);
        assert!(c.parse_cursor("00000000000a-7_j0000").1.is_none());
        let (_, p) = c.parse_cursor("x_zzzzz:1");
        assert_eq!(p.unwrap(), [None, None], "unknown tags are ignored");
        assert!(c.tag_collision().is_none());
    }

    #[test]
    fn worst_case_id_fits_the_header_limit() {
        let names: Vec<String> = (0..crate::config::MAX_DURABLE_STREAMS).map(|i| format!("key{i}")).collect();
        let c = Config {
            redis_streams: Some(crate::config::RedisStreamsConfig { keys: names, ..Default::default() }),
            ..Default::default()
        };
        let cat = Catalog::from_config(&c);
        let v = vec![Some(Pos { a: u64::MAX, b: u64::MAX }); cat.len()];
        let mut s = crate::event::EventId { run: 0xffff_ffff_ffff, seq: u64::MAX }.to_string();
        cat.write_vector(&v, &mut s);
        assert!(s.len() <= crate::sse::input::MAX_LAST_EVENT_ID_BYTES, "{} bytes", s.len());
    }

    #[test]
    fn durable_only_filters() {
        let c = catalog();
        let f = |s: &str| TopicFilter::parse(s, 256).unwrap();
        assert!(!c.durable_only(&f("orders.1")), "subjects unknown yet");
        c.set_subjects(0, &["orders.>".into()]);
        assert!(c.durable_only(&f("orders.1")));
        assert!(c.durable_only(&f("orders.*")));
        assert!(!c.durable_only(&f(">")));
        assert!(c.durable_only(&f("audit")));
        assert_eq!(c.owner_of("orders.9").map(|s| s.name.as_str()), Some("ORDERS"));
    }

    /// A Redis pattern takes durable-only away only from the filters it can match.
    #[test]
    fn redis_patterns_only_count_where_they_can_match() {
        let c = Config {
            jetstream: Some(crate::config::JetStreamConfig { streams: vec!["ORDERS".into()], ..Default::default() }),
            redis_streams: Some(crate::config::RedisStreamsConfig { keys: vec!["audit".into()], ..Default::default() }),
            redis: Some(crate::config::RedisConfig {
                patterns: vec!["bench.core.*".into(), "orders.eu.[0-9]".into(), "aud?t-old".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let c = Catalog::from_config(&c);
        c.set_subjects(0, &["orders.>".into()]);
        let f = |s: &str| TopicFilter::parse(s, 256).unwrap();
        assert!(c.durable_only(&f("audit")), "aud?t-old cannot match audit");
        assert!(c.durable_only(&f("orders.us.1")));
        assert!(!c.durable_only(&f("orders.eu.1")), "orders.eu.[0-9] matches it");
        assert!(c.durable_only(&f("orders.eu.x")));
        assert!(c.durable_only(&f("orders.us.*")));
        assert!(!c.durable_only(&f("orders.eu.*")), "orders.eu.[0-9] can match one of its topics");
        assert!(!c.durable_only(&f("orders.>")));
    }

    #[test]
    fn overlapping_sources_are_named() {
        let mut c = Config {
            nats: Some(crate::config::NatsConfig {
                subjects: vec!["demo.>".into(), "bench.>".into()],
                ..Default::default()
            }),
            jetstream: Some(crate::config::JetStreamConfig {
                streams: vec!["BENCH".into()],
                subjects: vec!["orders.>".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(source_overlap(&c), None);
        c.jetstream.as_mut().unwrap().subjects.push("bench.js.>".into());
        let o = source_overlap(&c).unwrap();
        assert_eq!((o.key.as_str(), o.value.as_str()), ("nats.subjects[1]", "bench.>"));
        assert_eq!((o.other_key.as_str(), o.other_value.as_str()), ("jetstream.subjects[1]", "bench.js.>"));

        let mut c = Config {
            redis: Some(crate::config::RedisConfig {
                channels: vec!["demo".into()],
                patterns: vec!["demo.*".into()],
                ..Default::default()
            }),
            redis_streams: Some(crate::config::RedisStreamsConfig { keys: vec!["audit".into()], ..Default::default() }),
            ..Default::default()
        };
        assert_eq!(source_overlap(&c), None);
        c.redis_streams.as_mut().unwrap().keys.push("demo".into());
        assert_eq!(source_overlap(&c).unwrap().key, "redis.channels[0]");
        c.redis_streams.as_mut().unwrap().keys[1] = "demo.audit".into();
        let o = source_overlap(&c).unwrap();
        assert_eq!((o.key.as_str(), o.other_key.as_str()), ("redis.patterns[0]", "redis_streams.keys[1]"));
    }

    /// Subjects learned from the server that overlap `nats.subjects`: named, then deduplicated.
    #[test]
    fn runtime_overlap_turns_shadowing_on() {
        let c = Config {
            nats: Some(crate::config::NatsConfig {
                subjects: vec!["demo.>".into(), "bench.>".into()],
                ..Default::default()
            }),
            jetstream: Some(crate::config::JetStreamConfig { streams: vec!["BENCH".into()], ..Default::default() }),
            ..Default::default()
        };
        let c = Catalog::from_config(&c);
        assert!(!c.shadowed("bench.js.1"));
        c.set_subjects(0, &["bench.js.>".into()]);
        assert_eq!(c.nats_overlap(0), ["nats.subjects[1] = \"bench.>\""]);
        assert!(c.shadowed("bench.js.1"));
        assert!(!c.shadowed("bench.core.1"));
    }
}
