//! Whether an `[auth]` section can run: one key source that fits the algorithm and loads, sane
//! token limits, rules that parse. `--check-config` and startup run it before anything starts
//! (`crate::startup`); the errors name the key, like the configuration's own checks.

use std::time::Duration;

use super::keys::Keys;
use super::token::alg_name;
use crate::config::{AuthConfig, Checked, Invalid, JwtAlgorithm};
use crate::topic::TopicFilter;

/// Longest leeway accepted in the configuration: clock skew, not a grace period.
const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// Checks an `[auth]` section; the error names the offending key (`auth.secret`). Key files
/// are loaded, so an unreadable or wrong key is reported before anything starts.
pub fn check(a: &AuthConfig, max_topic_len: usize) -> Checked {
    check_key_source(a)?;
    if a.leeway > MAX_LEEWAY {
        let reason = format!("must be at most {}s (it absorbs clock skew only)", MAX_LEEWAY.as_secs());
        return Err(Invalid::new("auth.leeway", reason));
    }
    if a.claim.is_empty() {
        return Err(Invalid::new("auth.claim", "must not be empty"));
    }
    if !a.cookie.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)) {
        return Err(Invalid::new("auth.cookie", format!("{:?}: not a valid cookie name", a.cookie)));
    }
    if !(256..=65536).contains(&a.max_token_bytes) {
        return Err(Invalid::new("auth.max_token_bytes", "must be between 256 and 65536"));
    }
    for (key, list) in [("auth.audience", &a.audience), ("auth.issuer", &a.issuer)] {
        if let Some(i) = list.iter().position(String::is_empty) {
            return Err(Invalid::new(format!("{key}[{i}]"), "must not be empty"));
        }
    }
    for (i, r) in a.rules.iter().enumerate() {
        if let Err(e) = TopicFilter::parse(&r.topics, max_topic_len) {
            return Err(Invalid::new(format!("auth.rules[{i}].topics"), format!("{:?}: {e}", r.topics)));
        }
    }
    Ok(())
}

/// At most one of secret, PEM file and JWKS file; the one that fits the algorithm; and it loads.
fn check_key_source(a: &AuthConfig) -> Checked {
    let sources = [a.secret.is_some(), a.public_key_file.is_some(), a.jwks_file.is_some()];
    if sources.iter().filter(|s| **s).count() > 1 {
        return Err(Invalid::new("auth", "set only one of secret, public_key_file and jwks_file"));
    }
    match (a.algorithm, &a.secret) {
        (JwtAlgorithm::HS256, Some(s)) if s.len() < 32 => {
            return Err(Invalid::new("auth.secret", "must be at least 32 bytes (256 bits) for HS256"));
        }
        (JwtAlgorithm::RS256 | JwtAlgorithm::ES256, Some(_)) => {
            let reason =
                format!("is for algorithm HS256; {} verifies with public_key_file or jwks_file", alg_name(a.algorithm));
            return Err(Invalid::new("auth.secret", reason));
        }
        _ => {}
    }
    if a.algorithm == JwtAlgorithm::HS256 && a.public_key_file.is_some() {
        return Err(Invalid::new(
            "auth.public_key_file",
            "needs algorithm RS256 or ES256 (HS256 verifies with auth.secret)",
        ));
    }
    Keys::from_config(a).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_checked() {
        let ok = AuthConfig { secret: Some("x".repeat(32)), ..AuthConfig::default() };
        assert!(check(&ok, 256).is_ok());
        let short = AuthConfig { secret: Some("short".into()), ..AuthConfig::default() };
        assert_eq!(check(&short, 256).unwrap_err().key, "auth.secret");
        let confused = AuthConfig { algorithm: JwtAlgorithm::RS256, ..ok.clone() };
        assert_eq!(check(&confused, 256).unwrap_err().key, "auth.secret");
        let missing = AuthConfig {
            algorithm: JwtAlgorithm::RS256,
            public_key_file: Some("/nonexistent.pem".into()),
            ..AuthConfig::default()
        };
        assert_eq!(check(&missing, 256).unwrap_err().key, "auth.public_key_file");
        let rule = AuthConfig {
            rules: vec![crate::config::AuthRule { topics: "a.>.b".into(), access: crate::config::TopicAccess::Public }],
            ..ok
        };
        assert_eq!(check(&rule, 256).unwrap_err().key, "auth.rules[0].topics");
    }
}
