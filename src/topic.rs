//! Topic names and NATS-style topic patterns.
//!
//! A topic is the broker's own name for a stream (a NATS subject or a Redis channel), verbatim.
//! Subscribers may name exact topics or patterns whose `.`-separated tokens may be `*` (exactly
//! one token) or, last, `>` (one or more tokens). This module knows nothing of HTTP or brokers,
//! so the same rules serve the request parser, the config validator and the fan-out matcher.

use std::fmt;
use std::sync::Arc;

/// Why a topic or pattern was refused; shown to clients in a `400` and to operators in config
/// errors, so each variant reads as a one-line reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic is longer than {max} bytes")]
    TooLong { max: usize },
    #[error("topic contains a control or whitespace character")]
    BadCharacter,
    #[error("topic has an empty token (leading, trailing or doubled '.')")]
    EmptyToken,
    #[error("wildcard '{0}' must be a whole token")]
    PartialWildcard(char),
    #[error("wildcard '>' must be the last token")]
    TailNotLast,
}

/// Default upper bound on a topic's length in bytes; long enough for any realistic subject,
/// short enough that a hostile query cannot make us hash megabytes.
pub const DEFAULT_MAX_TOPIC_LEN: usize = 256;

/// A subscription filter as a client (or the config) wrote it: an exact topic or a pattern.
///
/// Exact filters are looked up by hash; patterns are matched token by token, so the registry
/// keeps the two apart.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TopicFilter {
    /// Matches exactly one topic, byte for byte.
    Exact(Arc<str>),
    /// Matches every topic whose tokens fit the pattern.
    Pattern(Pattern),
}

impl TopicFilter {
    /// Parses a filter, deciding from its tokens whether it is a pattern.
    ///
    /// Topics that contain no `.`-separated wildcard token are exact; that keeps Redis channel
    /// names such as `chat:room-1` or `a..b` valid exact topics while `orders.*` is a pattern.
    pub fn parse(s: &str, max_len: usize) -> Result<Self, TopicError> {
        validate_chars(s, max_len)?;
        let has_wildcard = s.split('.').any(|t| t == "*" || t == ">");
        if has_wildcard {
            Pattern::parse(s, max_len).map(TopicFilter::Pattern)
        } else {
            // `*`/`>` inside a token are literal characters in NATS subjects and Redis channels
            // alike; only whole tokens are wildcards.
            Ok(TopicFilter::Exact(Arc::from(s)))
        }
    }

    /// The filter as written.
    pub fn as_str(&self) -> &str {
        match self {
            TopicFilter::Exact(t) => t,
            TopicFilter::Pattern(p) => p.as_str(),
        }
    }

    /// Whether `topic` is selected by this filter.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            TopicFilter::Exact(t) => &**t == topic,
            TopicFilter::Pattern(p) => p.matches(topic),
        }
    }
}

impl TopicFilter {
    /// Whether every topic this filter selects is also selected by `space` (a NATS subject
    /// pattern such as a JetStream stream's subject): the filter lies inside the space.
    pub fn within(&self, space: &Pattern) -> bool {
        let mut f = self.as_str().split('.');
        let mut s = space.as_str().split('.');
        loop {
            match (f.next(), s.next()) {
                (Some(_), Some(">")) => return true,
                (Some(">"), Some(_)) => return false,
                (Some(_), Some("*")) => {}
                (Some(a), Some(b)) if a == b && a != "*" => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    /// Whether some topic could be selected both by this filter and by `space`.
    pub fn overlaps(&self, space: &Pattern) -> bool {
        let mut f = self.as_str().split('.');
        let mut s = space.as_str().split('.');
        loop {
            match (f.next(), s.next()) {
                (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
                (Some("*"), Some(_)) | (Some(_), Some("*")) => {}
                (Some(a), Some(b)) if a == b => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A NATS-style pattern: `.`-separated tokens where `*` matches one token and a final `>`
/// matches one or more tokens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    text: Arc<str>,
}

impl Pattern {
    /// Parses and validates a pattern (a pattern without wildcards is allowed and matches
    /// itself only, which is what a NATS subject in the config means).
    pub fn parse(s: &str, max_len: usize) -> Result<Self, TopicError> {
        validate_chars(s, max_len)?;
        let mut tokens = s.split('.').peekable();
        while let Some(tok) = tokens.next() {
            if tok.is_empty() {
                return Err(TopicError::EmptyToken);
            }
            if tok == ">" {
                if tokens.peek().is_some() {
                    return Err(TopicError::TailNotLast);
                }
            } else if tok != "*" {
                if tok.contains('*') {
                    return Err(TopicError::PartialWildcard('*'));
                }
                if tok.contains('>') {
                    return Err(TopicError::PartialWildcard('>'));
                }
            }
        }
        Ok(Pattern { text: Arc::from(s) })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `topic` is selected by this pattern. Allocation-free: it runs once per event per
    /// distinct pattern on the fan-out path.
    pub fn matches(&self, topic: &str) -> bool {
        let mut pat = self.text.split('.');
        let mut top = topic.split('.');
        loop {
            match (pat.next(), top.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(p), Some(t)) if p == t => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn validate_chars(s: &str, max_len: usize) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > max_len {
        return Err(TopicError::TooLong { max: max_len });
    }
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(TopicError::BadCharacter);
    }
    Ok(())
}

/// `s` cut to at most `max` bytes on a character boundary: how a topic (or any client or
/// publisher input) is echoed back in a refusal, a gap event or a log line without letting its
/// length through. Here, at the bottom, so every layer that echoes input can use it.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s, 256).unwrap()
    }

    #[test]
    fn star_matches_one_token() {
        assert!(p("orders.*").matches("orders.1"));
        assert!(!p("orders.*").matches("orders.1.x"));
        assert!(!p("orders.*").matches("orders"));
        assert!(p("*.created").matches("orders.created"));
    }

    #[test]
    fn tail_matches_one_or_more_tokens() {
        assert!(p("orders.>").matches("orders.1"));
        assert!(p("orders.>").matches("orders.1.2.3"));
        assert!(!p("orders.>").matches("orders"));
        assert!(p(">").matches("anything.at.all"));
    }

    #[test]
    fn literal_pattern_matches_itself() {
        assert!(p("a.b").matches("a.b"));
        assert!(!p("a.b").matches("a.b.c"));
        assert!(!p("a.b.c").matches("a.b"));
    }

    #[test]
    fn rejects_bad_patterns() {
        assert_eq!(Pattern::parse("a.>.b", 256), Err(TopicError::TailNotLast));
        assert_eq!(Pattern::parse("a.b*", 256), Err(TopicError::PartialWildcard('*')));
        assert_eq!(Pattern::parse("a..b", 256), Err(TopicError::EmptyToken));
        assert_eq!(Pattern::parse("", 256), Err(TopicError::Empty));
        assert_eq!(Pattern::parse("a b", 256), Err(TopicError::BadCharacter));
        assert_eq!(Pattern::parse("abc", 2), Err(TopicError::TooLong { max: 2 }));
    }

    #[test]
    fn subset_and_overlap() {
        let f = |s: &str| TopicFilter::parse(s, 256).unwrap();
        assert!(f("orders.1").within(&p("orders.*")));
        assert!(f("orders.*").within(&p("orders.>")));
        assert!(f("orders.>").within(&p("orders.>")));
        assert!(!f("orders.>").within(&p("orders.*")));
        assert!(!f("orders").within(&p("orders.>")));
        assert!(!f("*.1").within(&p("orders.*")));
        assert!(f("*.1").overlaps(&p("orders.*")));
        assert!(f("orders.>").overlaps(&p("orders.1.x")));
        assert!(!f("orders.1").overlaps(&p("users.>")));
        assert!(!f("a.b").overlaps(&p("a")));
    }

    #[test]
    fn filter_kind_follows_wildcard_tokens() {
        assert!(matches!(TopicFilter::parse("chat:room-1", 256), Ok(TopicFilter::Exact(_))));
        assert!(matches!(TopicFilter::parse("a..b", 256), Ok(TopicFilter::Exact(_))));
        assert!(matches!(TopicFilter::parse("a.*", 256), Ok(TopicFilter::Pattern(_))));
        assert!(TopicFilter::parse("a.>.b", 256).is_err());
    }
}
