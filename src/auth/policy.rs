//! [`Auth`]: the authorization policy of one bridge, built once from `[auth]`: which filters
//! are public, and what a presented token grants.

use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};
use tracing::{info, warn};

use super::grants::{Grants, covers, overlaps};
use super::keys::Keys;
use super::token::{TokenError, algorithm_of, peek_header, token_error, validation};
use crate::config::{AuthConfig, TopicAccess};
use crate::topic::TopicFilter;

/// The authorization policy of one bridge, built once from the configuration.
#[derive(Debug, Default)]
pub struct Auth {
    policy: Option<Policy>,
}

/// A configured `[auth]` section, ready to decide.
#[derive(Debug)]
struct Policy {
    cfg: AuthConfig,
    rules: Vec<(TopicFilter, TopicAccess)>,
    keys: Option<Keys>,
    algorithm: Algorithm,
    validation: Validation,
    max_topic_len: usize,
}

impl Auth {
    /// The policy for `cfg` (`None`: no `[auth]` section, every topic public). The section is
    /// expected to have passed [`super::check`] (the binary runs it before starting); a key
    /// that cannot be loaded here leaves the bridge with no key, so every token is refused
    /// (fail closed), and a rule that does not parse is left out.
    pub fn new(cfg: Option<&AuthConfig>, max_topic_len: usize) -> Auth {
        let Some(cfg) = cfg else {
            warn!("No [auth] section: every topic is public. See docs/security.md.");
            return Auth { policy: None };
        };
        let rules = cfg
            .rules
            .iter()
            .filter_map(|r| TopicFilter::parse(&r.topics, max_topic_len).ok().map(|f| (f, r.access)))
            .collect::<Vec<_>>();
        let keys = match Keys::from_config(cfg) {
            Ok(k) => k,
            Err(e) => {
                warn!(key = %e.key, reason = %e.reason, "Cannot load the token key; every token will be refused.");
                None
            }
        };
        let public: Vec<&str> =
            rules.iter().filter(|(_, a)| *a == TopicAccess::Public).map(|(f, _)| f.as_str()).collect();
        info!(
            algorithm = ?cfg.algorithm,
            keys = keys.as_ref().map_or("none", Keys::describe),
            public_topics = ?public,
            rules = rules.len(),
            "Topic authorization on: topics no rule makes public need a token."
        );
        let algorithm = algorithm_of(cfg.algorithm);
        Auth {
            policy: Some(Policy {
                validation: validation(cfg, algorithm),
                cfg: cfg.clone(),
                rules,
                keys,
                algorithm,
                max_topic_len,
            }),
        }
    }

    /// Whether tokens can be verified at all (a key is configured).
    pub fn has_keys(&self) -> bool {
        self.policy.as_ref().is_some_and(|p| p.keys.is_some())
    }

    /// The `[auth]` section, when configured.
    pub fn config(&self) -> Option<&AuthConfig> {
        self.policy.as_ref().map(|p| &p.cfg)
    }

    /// Whether anyone may subscribe to `filter` without a token.
    ///
    /// Rules are read in order. A rule that covers the whole filter decides. A `token` rule
    /// that overlaps the filter without covering it makes it not public (part of what it can
    /// match is protected). A `public` rule that only overlaps decides nothing. No decision:
    /// not public. So a filter is public only if every topic it can match is public.
    pub fn is_public(&self, filter: &TopicFilter) -> bool {
        let Some(p) = &self.policy else { return true };
        for (rule, access) in &p.rules {
            if covers(rule, filter) {
                return *access == TopicAccess::Public;
            }
            if *access == TopicAccess::Token && overlaps(rule, filter) {
                return false;
            }
        }
        false
    }

    /// The first filter (in request order) that needs a token, if any.
    pub fn first_protected<'a>(&self, filters: &'a [TopicFilter]) -> Option<&'a TopicFilter> {
        filters.iter().find(|f| !self.is_public(f))
    }

    /// Verifies `token` and returns its grants.
    pub fn verify(&self, token: &str) -> Result<Grants, TokenError> {
        let p = self.policy.as_ref().ok_or(TokenError::NoKey)?;
        let keys = p.keys.as_ref().ok_or(TokenError::NoKey)?;
        let kid = peek_header(token, p.cfg.algorithm)?;
        let set = keys.current();
        let key = set.select(kid.as_deref())?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &p.validation)
            .map_err(|e| token_error(e.kind(), p.cfg.algorithm))?;
        debug_assert_eq!(data.header.alg, p.algorithm);
        Grants::from_claims(&data.claims, &p.cfg.claim, p.max_topic_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthRule;

    fn f(s: &str) -> TopicFilter {
        TopicFilter::parse(s, 256).unwrap()
    }

    fn auth(rules: &[(&str, TopicAccess)]) -> Auth {
        let cfg = AuthConfig {
            rules: rules.iter().map(|(t, a)| AuthRule { topics: t.to_string(), access: *a }).collect(),
            ..AuthConfig::default()
        };
        Auth::new(Some(&cfg), 256)
    }

    #[test]
    fn rules_decide_whole_filters() {
        use TopicAccess::*;
        let a = auth(&[("demo.secret.>", Token), ("demo", Public), ("demo.>", Public)]);
        assert!(a.is_public(&f("demo")));
        assert!(a.is_public(&f("demo.x")));
        assert!(a.is_public(&f("demo.*")), "demo.* cannot match demo.secret.<x>");
        assert!(!a.is_public(&f("demo.>")), "demo.> includes demo.secret.x");
        assert!(!a.is_public(&f("demo.secret.x")));
        assert!(!a.is_public(&f("orders")));
        assert!(!a.is_public(&f(">")));
        assert!(Auth::default().is_public(&f("anything")));
    }
}
