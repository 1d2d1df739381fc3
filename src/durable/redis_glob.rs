//! Redis `PSUBSCRIBE` glob patterns, read exactly as Redis reads them (`stringmatchlen` in
//! Redis's `util.c`): `*` any run of bytes, `?` one byte, `[...]` one byte of a set (`^`
//! negates, `a-z` ranges, `\` escapes, an unclosed `[` runs to the end), `\x` a literal `x`.
//!
//! Why here: a Redis pattern subscription can deliver any channel the glob matches, so a topic
//! counts as durable-only (resumable from a broker alone, see [`Catalog::durable_only`]) only
//! when no configured glob can match it. Answering "any pattern: nothing is durable-only" turned
//! durable resume off for every topic; answering per filter needs two things: whether a glob
//! matches one topic (exact filters), and whether a glob and a NATS-style pattern (`*`, `>`) can
//! match one same topic (pattern filters). Both are exact here: a glob and a pattern each
//! compile to a sequence of "one byte of a set" and "any run of bytes of a set" items, and two
//! such sequences share a string exactly when the end of both is reachable in their product.
//!
//! [`Catalog::durable_only`]: super::Catalog::durable_only

use crate::topic::TopicFilter;

/// A set of bytes (256 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ByteSet([u64; 4]);

impl ByteSet {
    const EMPTY: ByteSet = ByteSet([0; 4]);
    const ALL: ByteSet = ByteSet([u64::MAX; 4]);

    fn one(b: u8) -> ByteSet {
        let mut s = ByteSet::EMPTY;
        s.add(b);
        s
    }

    fn add(&mut self, b: u8) {
        self.0[(b >> 6) as usize] |= 1 << (b & 63);
    }

    fn invert(self) -> ByteSet {
        ByteSet(self.0.map(|w| !w))
    }

    fn meets(&self, other: &ByteSet) -> bool {
        self.0.iter().zip(&other.0).any(|(a, b)| a & b != 0)
    }
}

/// One step of a compiled pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    /// Exactly one byte of the set.
    One(ByteSet),
    /// Any number (zero or more) of bytes of the set.
    Many(ByteSet),
}

/// A Redis glob pattern, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisGlob {
    text: String,
    items: Vec<Item>,
}

impl RedisGlob {
    /// Compiles `pattern` as `PSUBSCRIBE` reads it. Every byte string is a valid Redis pattern,
    /// so this cannot fail.
    pub fn new(pattern: &str) -> RedisGlob {
        RedisGlob { text: pattern.to_owned(), items: compile(pattern.as_bytes()) }
    }

    /// The pattern as configured.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether a message on `channel` reaches a subscriber of this pattern.
    pub fn matches(&self, channel: &str) -> bool {
        // Redis compares nothing against an empty channel: only the empty pattern matches it.
        if channel.is_empty() {
            return self.text.is_empty();
        }
        let literal: Vec<Item> = channel.bytes().map(|b| Item::One(ByteSet::one(b))).collect();
        intersect(&self.items, &literal)
    }

    /// Whether some topic is both matched by this pattern and selected by `filter` (an exact
    /// topic or a NATS-style pattern, as [`TopicFilter::matches`] reads it).
    pub fn overlaps(&self, filter: &TopicFilter) -> bool {
        match filter {
            TopicFilter::Exact(t) => self.matches(t),
            TopicFilter::Pattern(p) => intersect(&self.items, &compile_filter(p.as_str())),
        }
    }
}

/// `stringmatchlen`'s reading of a pattern. Which bytes a `[...]` accepts and where it ends
/// depend on the pattern only, so the set and the length are fixed here; ranges compare bytes
/// as C `char`s (signed), as Redis does.
fn compile(p: &[u8]) -> Vec<Item> {
    let n = p.len();
    let mut items = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        match p[i] {
            b'*' => {
                if items.last() != Some(&Item::Many(ByteSet::ALL)) {
                    items.push(Item::Many(ByteSet::ALL));
                }
                i += 1;
            }
            b'?' => {
                items.push(Item::One(ByteSet::ALL));
                i += 1;
            }
            b'[' => {
                i += 1;
                let not = i < n && p[i] == b'^';
                if not {
                    i += 1;
                }
                let mut set = ByteSet::EMPTY;
                loop {
                    if i < n && p[i] == b'\\' && n - i >= 2 {
                        i += 1;
                        set.add(p[i]);
                    } else if i < n && p[i] == b']' {
                        break;
                    } else if i >= n {
                        break; // unclosed: the set runs to the end of the pattern
                    } else if n - i >= 3 && p[i + 1] == b'-' {
                        let (a, b) = (p[i] as i8, p[i + 2] as i8);
                        let (lo, hi) = (a.min(b), a.max(b));
                        for c in 0..=255u8 {
                            if (lo..=hi).contains(&(c as i8)) {
                                set.add(c);
                            }
                        }
                        i += 2;
                    } else {
                        set.add(p[i]);
                    }
                    i += 1;
                }
                i += 1; // past `]` (or past the end)
                items.push(Item::One(if not { set.invert() } else { set }));
            }
            b'\\' if n - i >= 2 => {
                items.push(Item::One(ByteSet::one(p[i + 1])));
                i += 2;
            }
            b => {
                items.push(Item::One(ByteSet::one(b)));
                i += 1;
            }
        }
    }
    items
}

/// A NATS-style pattern as [`crate::topic::Pattern::matches`] reads any string: tokens split on
/// `.`, a literal token is its bytes, `*` any run without a `.` (an empty token included), and a
/// final `>` anything at all.
fn compile_filter(pattern: &str) -> Vec<Item> {
    let not_dot = ByteSet::one(b'.').invert();
    let mut items = Vec::with_capacity(pattern.len());
    for (k, token) in pattern.split('.').enumerate() {
        if k > 0 {
            items.push(Item::One(ByteSet::one(b'.')));
        }
        match token {
            "*" => items.push(Item::Many(not_dot)),
            ">" => items.push(Item::Many(ByteSet::ALL)),
            t => items.extend(t.bytes().map(|b| Item::One(ByteSet::one(b)))),
        }
    }
    items
}

/// Whether some byte string matches both item sequences: a search of the product of their
/// positions, where a `Many` may be left without consuming and a byte may be consumed when the
/// two current sets share one. Which byte does not matter to what follows, so positions alone
/// are the state: at most `(a.len() + 1) * (b.len() + 1)` of them.
fn intersect(a: &[Item], b: &[Item]) -> bool {
    let width = b.len() + 1;
    let mut seen = vec![false; (a.len() + 1) * width];
    let mut todo = vec![(0usize, 0usize)];
    seen[0] = true;
    while let Some((i, j)) = todo.pop() {
        if i == a.len() && j == b.len() {
            return true;
        }
        let mut next = |i: usize, j: usize| {
            if !seen[i * width + j] {
                seen[i * width + j] = true;
                todo.push((i, j));
            }
        };
        if let Some(Item::Many(_)) = a.get(i) {
            next(i + 1, j);
        }
        if let Some(Item::Many(_)) = b.get(j) {
            next(i, j + 1);
        }
        if let (Some(x), Some(y)) = (a.get(i), b.get(j)) {
            let (sx, ni) = match x {
                Item::One(s) => (s, i + 1),
                Item::Many(s) => (s, i),
            };
            let (sy, nj) = match y {
                Item::One(s) => (s, j + 1),
                Item::Many(s) => (s, j),
            };
            if (ni, nj) != (i, j) && sx.meets(sy) {
                next(ni, nj);
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line-by-line port of Redis 7's `stringmatchlen` (no `nocase`), the reference the
    /// compiled form is checked against.
    fn reference(p: &[u8], s: &[u8]) -> bool {
        fn at(x: &[u8], i: usize) -> u8 {
            x.get(i).copied().unwrap_or(0) // the C strings are NUL-terminated
        }
        fn go(p: &[u8], mut pi: usize, s: &[u8], mut si: usize) -> bool {
            let (pn, sn) = (p.len(), s.len());
            while pi < pn && si < sn {
                match p[pi] {
                    b'*' => {
                        while pi < pn && at(p, pi + 1) == b'*' && pi + 1 < pn {
                            pi += 1;
                        }
                        if pn - pi == 1 {
                            return true;
                        }
                        while si < sn {
                            if go(p, pi + 1, s, si) {
                                return true;
                            }
                            si += 1;
                        }
                        return false;
                    }
                    b'?' => si += 1,
                    b'[' => {
                        pi += 1;
                        let not = at(p, pi) == b'^' && pi < pn;
                        if not {
                            pi += 1;
                        }
                        let mut matched = false;
                        loop {
                            if at(p, pi) == b'\\' && pn - pi >= 2 {
                                pi += 1;
                                if p[pi] == s[si] {
                                    matched = true;
                                }
                            } else if at(p, pi) == b']' && pi < pn {
                                break;
                            } else if pi == pn {
                                pi -= 1;
                                break;
                            } else if pn - pi >= 3 && p[pi + 1] == b'-' {
                                let (mut a, mut b) = (p[pi] as i8, p[pi + 2] as i8);
                                if a > b {
                                    std::mem::swap(&mut a, &mut b);
                                }
                                pi += 2;
                                if (a..=b).contains(&(s[si] as i8)) {
                                    matched = true;
                                }
                            } else if p[pi] == s[si] {
                                matched = true;
                            }
                            pi += 1;
                        }
                        if not {
                            matched = !matched;
                        }
                        if !matched {
                            return false;
                        }
                        si += 1;
                    }
                    c => {
                        let c = if c == b'\\' && pn - pi >= 2 {
                            pi += 1;
                            p[pi]
                        } else {
                            c
                        };
                        if c != s[si] {
                            return false;
                        }
                        si += 1;
                    }
                }
                pi += 1;
                if si == sn {
                    while pi < pn && p[pi] == b'*' {
                        pi += 1;
                    }
                    break;
                }
            }
            pi == pn && si == sn
        }
        go(p, 0, s, 0)
    }

    fn glob(p: &str) -> RedisGlob {
        RedisGlob::new(p)
    }

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::parse(s, 256).unwrap()
    }

    #[test]
    fn matches_like_redis() {
        let cases: &[(&str, &str, bool)] = &[
            ("demo.*", "demo.x", true),
            ("demo.*", "demo.x.y", true), // a glob's `*` crosses dots
            ("demo.*", "demo", false),
            ("bench.core.*", "bench.js.1", false),
            ("h?llo", "hallo", true),
            ("h?llo", "hllo", false),
            ("h[ae]llo", "hello", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h[b-a]llo", "hbllo", true), // reversed ranges are swapped
            ("h\\*llo", "h*llo", true),
            ("h\\*llo", "hello", false),
            ("a[\\]]b", "a]b", true),
            ("a[", "a", false),
            ("a[b", "ab", true), // an unclosed set runs to the end
            ("abc\\", "abc\\", true),
            ("*", "", false),
            ("", "", true),
        ];
        for (p, s, want) in cases {
            assert_eq!(glob(p).matches(s), *want, "{p:?} vs {s:?}");
            assert_eq!(reference(p.as_bytes(), s.as_bytes()), *want, "reference: {p:?} vs {s:?}");
        }
    }

    /// Every pattern and string over a small alphabet of the special characters: the compiled
    /// form answers as the port of Redis's matcher does.
    #[test]
    fn compiled_form_agrees_with_redis_matcher_exhaustively() {
        let pat_alpha = [b'a', b'*', b'?', b'[', b']', b'^', b'-', b'\\'];
        let str_alpha = [b'a', b'b', b']', b'-', b'\\', b'^'];
        let mut strings: Vec<Vec<u8>> = vec![Vec::new()];
        for len in 1..=3 {
            strings.extend(words(&str_alpha, len));
        }
        let mut checked = 0;
        for len in 1..=4 {
            for p in words(&pat_alpha, len) {
                let g = RedisGlob::new(std::str::from_utf8(&p).unwrap());
                for s in &strings {
                    let s = std::str::from_utf8(s).unwrap();
                    assert_eq!(g.matches(s), reference(&p, s.as_bytes()), "{:?} vs {s:?}", g.as_str());
                    checked += 1;
                }
            }
        }
        assert!(checked > 1_000_000, "{checked}");
    }

    fn words(alpha: &[u8], len: usize) -> Vec<Vec<u8>> {
        let mut out = vec![Vec::new()];
        for _ in 0..len {
            out = out.iter().flat_map(|w| alpha.iter().map(move |c| [w.as_slice(), &[*c]].concat())).collect();
        }
        out
    }

    #[test]
    fn overlap_with_nats_patterns() {
        let yes: &[(&str, &str)] = &[
            ("demo.*", "demo.>"),
            ("demo.*", "*.x"),
            ("*", "orders.*"),
            ("orders.?", "orders.*"),
            ("orders.[0-9]*", "orders.*.x"), // `*` of the glob covers "1.x"
            ("bench.*", "bench.js.>"),
            ("bench.js*", "*.*"),
            ("orders.?", "orders.*.*"), // "orders..": `*` also selects an empty token
        ];
        let no: &[(&str, &str)] = &[
            ("bench.core.*", "bench.js.>"),
            ("demo.*", "orders.>"),
            ("orders.[a-z]", "orders.1"),  // exact: matched against the topic
            ("orders.[^.]", "orders.*.x"), // the glob's one byte is not a dot
        ];
        for (g, f) in yes {
            assert!(glob(g).overlaps(&filter(f)), "{g:?} should overlap {f:?}");
        }
        for (g, f) in no {
            assert!(!glob(g).overlaps(&filter(f)), "{g:?} should not overlap {f:?}");
        }
        assert!(glob("a?c").overlaps(&filter("a.>")), "\"a.c\" is in both");
    }

    /// Overlap agrees with brute force: some string of a small alphabet matched by both.
    #[test]
    fn overlap_agrees_with_brute_force() {
        let globs = ["a*", "*.b", "a.?", "?.*", "[ab].a", "a[.]b", "*a*", "a.b", "[^.]*"];
        let filters = ["a.*", "*.b", "a.>", ">", "*.*", "a.b.*", "b", "*"];
        let mut strings: Vec<Vec<u8>> = Vec::new();
        for len in 1..=5 {
            strings.extend(words(b"ab.", len));
        }
        for g in globs {
            for f in filters {
                let (gl, fl) = (glob(g), filter(f));
                let brute =
                    strings.iter().map(|s| std::str::from_utf8(s).unwrap()).any(|s| gl.matches(s) && fl.matches(s));
                assert_eq!(gl.overlaps(&fl), brute, "{g:?} and {f:?}");
            }
        }
    }
}
