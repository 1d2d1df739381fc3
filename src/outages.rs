//! Where a live source lost messages: the topic spaces a live source serves ([`SourceSpace`]),
//! which of a stream's filters such a space may serve, the two reasons a source tells streams
//! about ([`SourceGap`]), and the small bounded record of those losses ([`OutageLog`]) that
//! lets a resume from before one learn of it.
//!
//! Core NATS and Redis pub/sub keep nothing for a subscriber that is away: what is published
//! while the bridge is reconnecting is gone, and so is what a broker client drops when its
//! buffer is full. The source knows when that happened; the sequencer turns it into an
//! `sse-bridge.gap` for the open streams and records it here for the resumes to come. Durable
//! sources never need it: they read on from their position.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::topic::{Pattern, TopicFilter};

/// Why a live source may have lost messages; the `reason` of the gap event streams get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceGap {
    /// The broker connection was down (and is back): what was published meanwhile is lost.
    Outage,
    /// The broker client's bounded buffer was full and dropped messages.
    Dropped,
}

impl SourceGap {
    /// The stable `reason` string clients see.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceGap::Outage => "source-outage",
            SourceGap::Dropped => "source-dropped",
        }
    }
}

/// One subscription of a live source: the topics it can deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpace {
    /// A NATS subject, possibly with `*`/`>` wildcards.
    Subject(Pattern),
    /// A Redis channel: exactly one topic.
    Channel(Arc<str>),
    /// A Redis `PSUBSCRIBE` glob (`*`, `?`, `[…]`, `\` escapes).
    Glob(Arc<str>),
}

impl SourceSpace {
    /// The space as configured (a subject, channel or glob), for logs.
    pub fn as_str(&self) -> &str {
        match self {
            SourceSpace::Subject(p) => p.as_str(),
            SourceSpace::Channel(c) | SourceSpace::Glob(c) => c,
        }
    }

    /// Whether `topic` comes through this space.
    pub fn serves(&self, topic: &str) -> bool {
        match self {
            SourceSpace::Subject(p) => p.matches(topic),
            SourceSpace::Channel(c) => **c == *topic,
            SourceSpace::Glob(g) => glob_match(g.as_bytes(), topic.as_bytes()),
        }
    }

    /// Whether some topic selected by `f` could have come through this space. Exact for
    /// subjects and channels; for a glob against a pattern filter it answers no only when their
    /// literal beginnings differ, and yes otherwise (a gap too many, never one too few).
    pub fn may_serve(&self, f: &TopicFilter) -> bool {
        match (self, f) {
            (SourceSpace::Subject(p), f) => f.overlaps(p),
            (SourceSpace::Channel(c), f) => f.matches(c),
            (SourceSpace::Glob(g), TopicFilter::Exact(t)) => glob_match(g.as_bytes(), t.as_bytes()),
            (SourceSpace::Glob(g), TopicFilter::Pattern(p)) => {
                let g = literal_prefix(g, &['*', '?', '[', '\\']);
                let p = literal_prefix(p.as_str(), &['*', '>']);
                g.starts_with(p) || p.starts_with(g)
            }
        }
    }
}

/// `s` up to its first special character.
fn literal_prefix<'a>(s: &'a str, special: &[char]) -> &'a str {
    s.find(special).map_or(s, |i| &s[..i])
}

/// The filters of `filters` that one of `spaces` may serve, as written; empty: none.
pub fn served(filters: &[TopicFilter], spaces: &[SourceSpace]) -> Vec<String> {
    filters.iter().filter(|f| spaces.iter().any(|s| s.may_serve(f))).map(|f| f.as_str().to_owned()).collect()
}

/// Redis glob matching as `PSUBSCRIBE` does it (`stringmatchlen`): `*` any run of bytes, `?`
/// one byte, `[abc]`, `[^a]`, `[a-z]` classes, `\x` a literal `x`. Iterative, with one
/// backtrack point for the last `*`, so a hostile glob costs at most `O(glob × topic)`.
pub fn glob_match(glob: &[u8], s: &[u8]) -> bool {
    let (mut g, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if g < glob.len() {
            match glob[g] {
                b'*' => {
                    star = Some((g, i));
                    g += 1;
                    continue;
                }
                b'?' => {
                    g += 1;
                    i += 1;
                    continue;
                }
                b'[' => {
                    let (matched, next) = class_match(glob, g, s[i]);
                    if matched {
                        g = next;
                        i += 1;
                        continue;
                    }
                }
                b'\\' if g + 1 < glob.len() && glob[g + 1] == s[i] => {
                    g += 2;
                    i += 1;
                    continue;
                }
                b'\\' if g + 1 < glob.len() => {}
                c if c == s[i] => {
                    g += 1;
                    i += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sg, si)) => {
                star = Some((sg, si + 1));
                g = sg + 1;
                i = si + 1;
            }
            None => return false,
        }
    }
    glob[g..].iter().all(|&c| c == b'*')
}

/// Matches byte `c` against the class starting at `glob[at] == b'['`: (matched, index after
/// the class). An unclosed class runs to the end of the glob, as in Redis.
fn class_match(glob: &[u8], at: usize, c: u8) -> (bool, usize) {
    let mut j = at + 1;
    let negate = glob.get(j) == Some(&b'^');
    if negate {
        j += 1;
    }
    let mut matched = false;
    while j < glob.len() && glob[j] != b']' {
        if glob[j] == b'\\' && j + 1 < glob.len() {
            matched |= glob[j + 1] == c;
            j += 2;
        } else if j + 2 < glob.len() && glob[j + 1] == b'-' && glob[j + 2] != b']' {
            let (lo, hi) = (glob[j].min(glob[j + 2]), glob[j].max(glob[j + 2]));
            matched |= (lo..=hi).contains(&c);
            j += 3;
        } else {
            matched |= glob[j] == c;
            j += 1;
        }
    }
    let next = (j + 1).min(glob.len());
    (matched != negate, next)
}

/// Losses remembered for resumes; older ones are summarised by [`OutageLog`]'s horizon.
pub const MAX_OUTAGES: usize = 64;

/// The last [`MAX_OUTAGES`] losses of the live sources, as (sequence, reason, spaces): every
/// event up to that sequence was sequenced before the loss, every later one after it. A resume
/// from an id at or before one of them gets a gap for the filters those spaces may serve. Older
/// losses leave a horizon: a resume from before it gets the gap for all its filters.
/// Consecutive drops on the same spaces (a sustained overload) share one entry.
#[derive(Debug, Default)]
pub struct OutageLog {
    inner: Mutex<LogInner>,
}

#[derive(Debug, Default)]
struct LogInner {
    entries: VecDeque<(u64, SourceGap, Arc<[SourceSpace]>)>,
    /// Sequence of the newest loss no longer in `entries` (0: none forgotten).
    forgotten_upto: u64,
}

impl OutageLog {
    /// Records that the sources serving `spaces` lost messages after sequence `seq`. Called by
    /// the sequencer before it tells the open streams (the order the resume check relies on).
    pub fn record(&self, seq: u64, gap: SourceGap, spaces: Arc<[SourceSpace]>) {
        let mut g = self.inner.lock();
        if let Some(last) = g.entries.back_mut()
            && gap == SourceGap::Dropped
            && last.1 == gap
            && last.2 == spaces
        {
            // A cursor before the earlier drop is also before this one: one entry covers both.
            last.0 = seq;
            return;
        }
        if g.entries.len() >= MAX_OUTAGES
            && let Some((old, _, _)) = g.entries.pop_front()
        {
            g.forgotten_upto = g.forgotten_upto.max(old);
        }
        g.entries.push_back((seq, gap, spaces));
    }

    /// Per reason (outage first), the filters of `filters` on which a client that has
    /// everything up to `after` may have missed messages a source lost since; empty: none. A
    /// loss recorded at `seq` concerns cursors `after <= seq` (a client at exactly `seq` may not
    /// have read the live gap yet).
    pub fn gaps_since(&self, filters: &[TopicFilter], after: u64) -> Vec<(SourceGap, Vec<String>)> {
        let g = self.inner.lock();
        let mut outage: Vec<String> = Vec::new();
        let mut dropped: Vec<String> = Vec::new();
        if g.forgotten_upto > 0 && after <= g.forgotten_upto {
            outage = filters.iter().map(|f| f.as_str().to_owned()).collect();
        }
        for (seq, gap, spaces) in g.entries.iter().rev() {
            if *seq < after {
                break;
            }
            let out = if *gap == SourceGap::Outage { &mut outage } else { &mut dropped };
            for f in filters {
                if spaces.iter().any(|s| s.may_serve(f)) && !out.iter().any(|o| o == f.as_str()) {
                    out.push(f.as_str().to_owned());
                }
            }
        }
        let mut result = Vec::new();
        for (gap, mut topics) in [(SourceGap::Outage, outage), (SourceGap::Dropped, dropped)] {
            if !topics.is_empty() {
                topics.sort();
                result.push((gap, topics));
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> TopicFilter {
        TopicFilter::parse(s, 256).unwrap()
    }

    fn subject(s: &str) -> SourceSpace {
        SourceSpace::Subject(Pattern::parse(s, 256).unwrap())
    }

    #[test]
    fn globs_match_as_redis_does() {
        for (g, s, want) in [
            ("demo.*", "demo.a.b", true),
            ("demo.*", "demo", false),
            ("d?mo", "demo", true),
            ("d[ae]mo", "demo", true),
            ("d[^e]mo", "demo", false),
            ("d[a-f]mo", "demo", true),
            ("a\\*", "a*", true),
            ("a\\*", "ab", false),
            ("*x*y", "axbxcy", true),
            ("*", "", true),
            ("a*", "b", false),
        ] {
            assert_eq!(glob_match(g.as_bytes(), s.as_bytes()), want, "{g} ~ {s}");
        }
    }

    #[test]
    fn spaces_serve_overlapping_filters() {
        assert!(subject("t.>").may_serve(&f("t.a")));
        assert!(subject("t.*").may_serve(&f("t.>")));
        assert!(!subject("t.>").may_serve(&f("u.a")));
        assert!(SourceSpace::Channel("t.a".into()).may_serve(&f("t.*")));
        assert!(!SourceSpace::Channel("t.a".into()).may_serve(&f("t.b")));
        let glob = SourceSpace::Glob("demo.*".into());
        assert!(glob.may_serve(&f("demo.x")));
        assert!(!glob.may_serve(&f("other")));
        assert!(glob.may_serve(&f("demo.>")), "may overlap: yes");
        assert!(!glob.may_serve(&f("orders.*")), "literal beginnings differ: no");
        assert_eq!(served(&[f("t.a"), f("u.a")], &[subject("t.>")]), ["t.a"]);
    }

    #[test]
    fn log_answers_resumes_from_before_a_loss() {
        let log = OutageLog::default();
        log.record(10, SourceGap::Outage, Arc::from(vec![subject("t.>")]));
        let outage = |t: &[&str]| vec![(SourceGap::Outage, t.iter().map(|s| s.to_string()).collect::<Vec<_>>())];
        assert_eq!(log.gaps_since(&[f("t.a"), f("u.a")], 5), outage(&["t.a"]));
        assert_eq!(log.gaps_since(&[f("t.a")], 10), outage(&["t.a"]), "at the loss: maybe not told yet");
        assert!(log.gaps_since(&[f("t.a")], 11).is_empty(), "after it: told live");
        assert!(log.gaps_since(&[f("u.a")], 0).is_empty(), "other topics: nothing lost");
        log.record(20, SourceGap::Dropped, Arc::from(vec![subject("t.>")]));
        log.record(30, SourceGap::Dropped, Arc::from(vec![subject("t.>")]));
        assert_eq!(log.inner.lock().entries.len(), 2, "consecutive drops share an entry");
        assert_eq!(log.gaps_since(&[f("t.a")], 25), vec![(SourceGap::Dropped, vec!["t.a".to_string()])]);
        assert_eq!(log.gaps_since(&[f("t.a")], 1).len(), 2, "both reasons, outage first");
    }

    #[test]
    fn log_is_bounded_and_remembers_its_horizon() {
        let log = OutageLog::default();
        for seq in 1..=(MAX_OUTAGES as u64 + 10) {
            log.record(seq * 10, SourceGap::Outage, Arc::from(vec![subject("t.>")]));
        }
        assert_eq!(log.inner.lock().entries.len(), MAX_OUTAGES);
        assert_eq!(
            log.gaps_since(&[f("u.a")], 5),
            vec![(SourceGap::Outage, vec!["u.a".to_string()])],
            "before the horizon: every filter"
        );
        assert!(log.gaps_since(&[f("u.a")], 200).is_empty());
    }
}
