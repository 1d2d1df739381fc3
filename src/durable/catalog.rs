//! The catalog of durable streams: which streams are configured, which topics each holds, and
//! the vector cursor (the `_tag:pos` part of an event id) read and written against them.

use std::fmt::Write as _;

use parking_lot::RwLock;

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
    redis_patterns: bool,
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
            redis_patterns: c.redis.as_ref().is_some_and(|r| !r.patterns.is_empty()),
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

    /// The durable stream `topic` belongs to, if any.
    pub fn owner_of(&self, topic: &str) -> Option<&DurableStream> {
        self.streams.iter().find(|s| s.holds(topic))
    }

    /// Whether every event a filter can select comes from a durable stream: it lies inside one
    /// stream's topics and no non-durable source (core NATS, Redis pub/sub) can deliver to it.
    /// (`/publish` refuses durable topics, so it cannot either.) For such a filter a resume
    /// needs no in-memory history at all.
    pub fn durable_only(&self, f: &TopicFilter) -> bool {
        self.streams.iter().any(|s| s.contains(f))
            && !self.nats_subjects.iter().any(|p| f.overlaps(p))
            && !self.redis_channels.iter().any(|c| f.matches(c))
            && !(self.redis_patterns)
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
}
