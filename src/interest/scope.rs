//! What a live source can deliver, as configured: NATS subjects (patterns) or Redis channels
//! and glob patterns. For an on-demand source it is the allowlist a client filter must lie
//! within; for an `"all"` source it says whether a filter can receive anything from it.
//!
//! Client filters are NATS-style (`user.*`, `user.>`). For Redis an exact filter is a channel
//! (`SUBSCRIBE`) and a pattern becomes a glob (`PSUBSCRIBE`, [`redis_glob`]): `*` and `>`
//! tokens become `*`, literal tokens are escaped. A glob's `*` also matches dots, so a glob may
//! select more than its filter; the registry delivers only what the filter matches.

use crate::topic::{Pattern, TopicFilter};

/// One source's configured subjects, channels or patterns.
#[derive(Debug, Clone)]
pub enum Scope {
    /// `nats.subjects`.
    Nats(Vec<Pattern>),
    /// `redis.channels` and `redis.patterns` (Redis globs).
    Redis { channels: Vec<String>, patterns: Vec<String> },
}

impl Scope {
    /// NATS subjects as configured (already validated); unparsable ones are left out.
    pub fn nats(subjects: &[String]) -> Scope {
        Scope::Nats(subjects.iter().filter_map(|s| Pattern::parse(s, usize::MAX).ok()).collect())
    }

    /// Whether every topic `f` selects is one the configuration allows: the on-demand allowlist.
    ///
    /// For Redis an exact filter must be a channel or match a pattern; a pattern filter must be
    /// a pattern itself, or lie under a pattern of the form `prefix*` (its literal tokens up to
    /// the first wildcard start with `prefix`), the one glob shape whose subsets are easy to
    /// prove.
    pub fn admits(&self, f: &TopicFilter) -> bool {
        match (self, f) {
            (Scope::Nats(subjects), _) => subjects.iter().any(|s| f.within(s)),
            (Scope::Redis { channels, patterns }, TopicFilter::Exact(t)) => {
                channels.iter().any(|c| c == &**t) || patterns.iter().any(|p| glob_match(p.as_bytes(), t.as_bytes()))
            }
            (Scope::Redis { patterns, .. }, TopicFilter::Pattern(p)) => {
                let glob = redis_glob(p);
                let prefix = literal_prefix(p);
                patterns.iter().any(|g| *g == glob || simple_prefix(g).is_some_and(|gp| prefix.starts_with(gp)))
            }
        }
    }

    /// Whether some topic `f` selects can come from this source (an `"all"` source: the filter
    /// is served, if not necessarily in full). Redis patterns are not compared: a pattern
    /// filter is taken to reach a Redis source that has patterns.
    pub fn reaches(&self, f: &TopicFilter) -> bool {
        match (self, f) {
            (Scope::Nats(subjects), _) => subjects.iter().any(|s| f.overlaps(s)),
            (Scope::Redis { .. }, TopicFilter::Exact(_)) => self.admits(f),
            (Scope::Redis { channels, patterns }, TopicFilter::Pattern(_)) => {
                !patterns.is_empty() || channels.iter().any(|c| f.matches(c))
            }
        }
    }
}

/// The Redis glob a NATS-style pattern is `PSUBSCRIBE`d as.
pub fn redis_glob(p: &Pattern) -> String {
    let mut out = String::with_capacity(p.as_str().len() + 4);
    for (i, tok) in p.as_str().split('.').enumerate() {
        if i > 0 {
            out.push('.');
        }
        match tok {
            "*" | ">" => out.push('*'),
            lit => {
                for c in lit.chars() {
                    if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                        out.push('\\');
                    }
                    out.push(c);
                }
            }
        }
    }
    out
}

/// The literal text of a pattern before its first wildcard token (`user.` for `user.*.x`).
fn literal_prefix(p: &Pattern) -> String {
    let mut out = String::new();
    for tok in p.as_str().split('.') {
        if tok == "*" || tok == ">" {
            break;
        }
        out.push_str(tok);
        out.push('.');
    }
    out
}

/// `prefix` of a glob `prefix*` whose prefix holds no glob syntax.
fn simple_prefix(glob: &str) -> Option<&str> {
    let prefix = glob.strip_suffix('*')?;
    (!prefix.contains(['*', '?', '[', ']', '\\'])).then_some(prefix)
}

/// Redis glob matching (`*`, `?`, `[abc]`, `[^a-z]`, `\x`), as `PSUBSCRIBE` does it.
pub fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        let step = if p < pat.len() {
            match pat[p] {
                b'*' => {
                    star = Some((p, i));
                    p += 1;
                    continue;
                }
                b'?' => Some(p + 1),
                b'[' => class(pat, p, s[i]),
                b'\\' if p + 1 < pat.len() => (pat[p + 1] == s[i]).then_some(p + 2),
                c => (c == s[i]).then_some(p + 1),
            }
        } else {
            None
        };
        match (step, star) {
            (Some(next), _) => {
                p = next;
                i += 1;
            }
            (None, Some((sp, si))) => {
                p = sp + 1;
                i = si + 1;
                star = Some((sp, si + 1));
            }
            (None, None) => return false,
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class starting at `pat[p] == b'['`; the index after it if it does.
fn class(pat: &[u8], p: usize, c: u8) -> Option<usize> {
    let mut j = p + 1;
    let negate = pat.get(j) == Some(&b'^');
    if negate {
        j += 1;
    }
    let mut hit = false;
    while j < pat.len() && pat[j] != b']' {
        if pat[j] == b'\\' && j + 1 < pat.len() {
            hit |= pat[j + 1] == c;
            j += 2;
        } else if j + 2 < pat.len() && pat[j + 1] == b'-' && pat[j + 2] != b']' {
            let (lo, hi) = (pat[j].min(pat[j + 2]), pat[j].max(pat[j + 2]));
            hit |= (lo..=hi).contains(&c);
            j += 3;
        } else {
            hit |= pat[j] == c;
            j += 1;
        }
    }
    (hit != negate).then_some(j + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> TopicFilter {
        TopicFilter::parse(s, 256).unwrap()
    }

    #[test]
    fn nats_allowlist_is_within() {
        let s = Scope::nats(&["user.>".into(), "doc.*.changes".into()]);
        assert!(s.admits(&f("user.1")) && s.admits(&f("user.*")) && s.admits(&f("doc.7.changes")));
        assert!(!s.admits(&f("admin.1")) && !s.admits(&f(">")) && !s.admits(&f("doc.>")));
        assert!(s.reaches(&f("doc.>")) && !s.reaches(&f("admin.>")));
    }

    #[test]
    fn redis_allowlist() {
        let s = Scope::Redis { channels: vec!["news".into()], patterns: vec!["user.*".into(), "ro?m".into()] };
        assert!(s.admits(&f("news")) && s.admits(&f("user.1")) && s.admits(&f("room")));
        assert!(s.admits(&f("user.*")) && s.admits(&f("user.>")) && s.admits(&f("user.1.*")));
        assert!(!s.admits(&f("admin")) && !s.admits(&f("*.x")));
    }

    #[test]
    fn globs() {
        assert_eq!(redis_glob(&Pattern::parse("a?.*.>", 256).unwrap()), "a\\?.*.*");
        assert!(glob_match(b"a\\?.*", b"a?.x.y"));
        assert!(!glob_match(b"a\\?.*", b"ab.x"));
        assert!(glob_match(b"h[ae]llo", b"hello") && !glob_match(b"h[^e]llo", b"hello"));
        assert!(glob_match(b"*", b"") && glob_match(b"a*b*c", b"axxbyyc") && !glob_match(b"a*b", b"ac"));
    }
}
