//! Topic filters and patterns: parsing and matching never panic, and the authorization
//! relations built on them are sound. Input: up to five NUL-separated strings
//! `a \0 b \0 filter \0 topic \0 token`.
//!
//! Properties, for any parsed filters `x`, `y` and any topic `t`:
//! - `covers(x, y)` and `y` matches `t` ⇒ `x` matches `t` (a grant never lets through a topic
//!   it does not match);
//! - `x` and `y` both match `t` ⇒ `overlaps(x, y)`, and `overlaps` is symmetric;
//! - with rules `[a: public, b: token]` (both orders), a filter the policy calls public only
//!   matches topics whose first matching rule is public.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sse_bridge::auth::{Auth, covers, overlaps};
use sse_bridge::config::{AuthConfig, AuthRule, TopicAccess};
use sse_bridge::topic::{Pattern, TopicFilter};
use sse_bridge_fuzz::instantiate;

const MAX: usize = 256;

fn first_rule_public(rules: &[(TopicFilter, TopicAccess)], topic: &str) -> bool {
    rules.iter().find(|(f, _)| f.matches(topic)).is_some_and(|(_, a)| *a == TopicAccess::Public)
}

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let mut it = s.split('\0');
    let mut next = || it.next().unwrap_or("");
    let (a, b, c, t, tok) = (next(), next(), next(), next(), next());

    // Parsing and matching never panic; a pattern that parses matches like its filter.
    for x in [a, b, c] {
        if let Ok(p) = Pattern::parse(x, MAX) {
            let m = p.matches(t);
            if let Ok(TopicFilter::Pattern(q)) = TopicFilter::parse(x, MAX) {
                assert_eq!(q.matches(t), m);
            }
        }
    }
    let (Ok(x), Ok(y), Ok(f)) = (TopicFilter::parse(a, MAX), TopicFilter::parse(b, MAX), TopicFilter::parse(c, MAX))
    else {
        return;
    };
    assert!(covers(&x, &x) && covers(&y, &y));
    assert_eq!(overlaps(&x, &y), overlaps(&y, &x));
    let tok = if tok.is_empty() { "w" } else { tok };
    let topics = [t.to_owned(), instantiate(b, tok, t), instantiate(b, t, tok), instantiate(c, tok, t)];
    for t in &topics {
        if covers(&x, &y) && y.matches(t) {
            assert!(x.matches(t), "{x} covers {y} but misses {t:?}");
        }
        if x.matches(t) && y.matches(t) {
            assert!(overlaps(&x, &y), "{x} and {y} both match {t:?}");
        }
    }
    for rules in [
        vec![(x.clone(), TopicAccess::Public), (y.clone(), TopicAccess::Token)],
        vec![(y.clone(), TopicAccess::Token), (x.clone(), TopicAccess::Public)],
    ] {
        let cfg = AuthConfig {
            rules: rules.iter().map(|(f, a)| AuthRule { topics: f.to_string(), access: *a }).collect(),
            ..AuthConfig::default()
        };
        let auth = Auth::new(Some(&cfg), MAX);
        if auth.is_public(&f) {
            for t in &topics {
                if f.matches(t) {
                    assert!(first_rule_public(&rules, t), "{f} called public, but {t:?} is not ({rules:?})");
                }
            }
        }
    }
});
