//! What a verified token allows ([`Grants`], read from one claim) and the pattern algebra that
//! decides it: whether one filter [`covers`] another, whether two [`overlaps`].

use serde_json::{Map, Value};

use super::token::TokenError;
use crate::topic::TopicFilter;

/// Grants (subscribe plus publish) one token may carry.
const MAX_GRANTS: usize = 1024;

/// What a verified token allows.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Grants {
    /// Filters the bearer may subscribe to (and anything they cover).
    pub subscribe: Vec<TopicFilter>,
    /// Topics the bearer may publish to through `POST /publish`.
    pub publish: Vec<TopicFilter>,
}

impl Grants {
    /// Reads the grants claim `name` from a token's claims. An absent claim grants nothing.
    pub fn from_claims(claims: &Map<String, Value>, name: &str, max_topic_len: usize) -> Result<Grants, TokenError> {
        let Some(claim) = claims.get(name) else {
            return Ok(Grants::default());
        };
        let Value::Object(obj) = claim else {
            return Err(TokenError::BadGrants(format!("{name} must be an object")));
        };
        let mut g = Grants::default();
        let mut total = 0;
        for (field, out) in [("subscribe", &mut g.subscribe), ("publish", &mut g.publish)] {
            let list: Vec<&Value> = match obj.get(field) {
                None | Some(Value::Null) => continue,
                Some(Value::Array(a)) => a.iter().collect(),
                Some(v @ Value::String(_)) => vec![v],
                Some(_) => return Err(TokenError::BadGrants(format!("{name}.{field} must be a list of topics"))),
            };
            total += list.len();
            if total > MAX_GRANTS {
                return Err(TokenError::BadGrants(format!("more than {MAX_GRANTS} topic patterns")));
            }
            for (i, v) in list.into_iter().enumerate() {
                let Value::String(s) = v else {
                    return Err(TokenError::BadGrants(format!("{name}.{field}[{i}] is not a string")));
                };
                let f = TopicFilter::parse(s, max_topic_len)
                    .map_err(|e| TokenError::BadGrants(format!("{name}.{field}[{i}]: {e}")))?;
                out.push(f);
            }
        }
        Ok(g)
    }

    /// Whether the grants allow subscribing to `filter` (some grant covers it).
    pub fn may_subscribe(&self, filter: &TopicFilter) -> bool {
        self.subscribe.iter().any(|g| covers(g, filter))
    }

    /// Whether the grants allow publishing to the exact topic `topic`.
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|g| g.matches(topic))
    }
}

/// Whether `outer` matches every topic `inner` can match.
///
/// Token by token: `>` covers one or more of anything; `*` covers exactly one token that is
/// not `>`; a literal covers only the same literal. An exact filter is covered when `outer`
/// matches it as a topic, exactly as the fan-out would.
pub fn covers(outer: &TopicFilter, inner: &TopicFilter) -> bool {
    match (outer, inner) {
        (TopicFilter::Exact(a), TopicFilter::Exact(b)) => a == b,
        (TopicFilter::Exact(_), TopicFilter::Pattern(_)) => false,
        (TopicFilter::Pattern(p), TopicFilter::Exact(t)) => p.matches(t),
        (TopicFilter::Pattern(p), TopicFilter::Pattern(q)) => {
            let (mut o, mut i) = (p.as_str().split('.'), q.as_str().split('.'));
            loop {
                match (o.next(), i.next()) {
                    (None, None) => return true,
                    (Some(">"), Some(_)) => return true,
                    (Some("*"), Some(t)) if t != ">" => {}
                    (Some(a), Some(b)) if a != "*" && a != ">" && a == b => {}
                    _ => return false,
                }
            }
        }
    }
}

/// Whether some topic is matched by both `a` and `b`.
pub fn overlaps(a: &TopicFilter, b: &TopicFilter) -> bool {
    match (a, b) {
        (TopicFilter::Exact(x), TopicFilter::Exact(y)) => x == y,
        (TopicFilter::Pattern(p), TopicFilter::Exact(t)) | (TopicFilter::Exact(t), TopicFilter::Pattern(p)) => {
            p.matches(t)
        }
        (TopicFilter::Pattern(p), TopicFilter::Pattern(q)) => {
            let (mut x, mut y) = (p.as_str().split('.'), q.as_str().split('.'));
            loop {
                match (x.next(), y.next()) {
                    (None, None) => return true,
                    (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
                    (Some("*"), Some(_)) | (Some(_), Some("*")) => {}
                    (Some(s), Some(t)) if s == t => {}
                    _ => return false,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> TopicFilter {
        TopicFilter::parse(s, 256).unwrap()
    }

    #[test]
    fn coverage() {
        assert!(covers(&f("orders.>"), &f("orders.*")));
        assert!(covers(&f("orders.>"), &f("orders.1")));
        assert!(covers(&f("orders.>"), &f("orders.*.x.>")));
        assert!(covers(&f(">"), &f("a.*")));
        assert!(covers(&f("orders.*"), &f("orders.1")));
        assert!(covers(&f("orders.*"), &f("orders.*")));
        assert!(!covers(&f("orders.*"), &f("orders.>")));
        assert!(!covers(&f("orders.>"), &f("orders")));
        assert!(!covers(&f("orders.1"), &f("orders.*")));
        assert!(!covers(&f("orders.*"), &f("orders.1.2")));
        assert!(!covers(&f("a.*.c"), &f("a.b.*")));
        assert!(covers(&f("*.*"), &f("a.*")));
    }

    #[test]
    fn overlap() {
        assert!(overlaps(&f("a.*"), &f("*.b")));
        assert!(overlaps(&f("a.>"), &f("*.b.c")));
        assert!(!overlaps(&f("a.*"), &f("a.b.c")));
        assert!(!overlaps(&f("a.*"), &f("b.*")));
        assert!(overlaps(&f("a.b"), &f("a.*")));
    }

    #[test]
    fn grants_from_claims() {
        let claims: Map<String, Value> =
            serde_json::from_str(r#"{"sse_bridge": {"subscribe": ["orders.>", "user.42"], "publish": "orders.new"}}"#)
                .unwrap();
        let g = Grants::from_claims(&claims, "sse_bridge", 256).unwrap();
        assert!(g.may_subscribe(&f("orders.*")) && g.may_subscribe(&f("user.42")));
        assert!(!g.may_subscribe(&f("user.43")) && !g.may_subscribe(&f(">")));
        assert!(g.may_publish("orders.new") && !g.may_publish("orders.old"));
        assert_eq!(Grants::from_claims(&Map::new(), "sse_bridge", 256), Ok(Grants::default()));
        let bad: Map<String, Value> = serde_json::from_str(r#"{"sse_bridge": {"subscribe": ["a.>.b"]}}"#).unwrap();
        assert!(matches!(Grants::from_claims(&bad, "sse_bridge", 256), Err(TokenError::BadGrants(_))));
    }
}
