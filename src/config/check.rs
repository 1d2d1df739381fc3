//! What every section's validation shares: the [`Invalid`] error that names the offending key,
//! and the checks several sections make (URLs, subject patterns, "at least one").
//!
//! A check knows the key and the reason; only the loader knows which file or variable set the
//! value, so it adds that when it turns an [`Invalid`] into a `ConfigError`.

use crate::topic::{Pattern, TopicError};

/// A value the configuration cannot run with: the key (`nats.subjects[2]`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key `{key}`: {reason}")]
pub struct Invalid {
    /// Dotted key path, with `[i]` for list elements, as an operator writes it in the file.
    pub key: String,
    /// One line for the operator; quotes the offending value where that helps.
    pub reason: String,
}

impl Invalid {
    /// An error about `key`.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Invalid { key: key.into(), reason: reason.into() }
    }
}

/// The result of checking one section.
pub type Checked = Result<(), Invalid>;

/// `key` must be at least 1: sizes and counts where 0 would stall or disable silently.
pub(super) fn at_least_one(key: &str, value: usize) -> Checked {
    if value == 0 {
        return Err(Invalid::new(key, "must be at least 1"));
    }
    Ok(())
}

/// Checks a broker or collector URL: parsable, one of `schemes`, and a host unless it is a
/// Unix socket.
pub(super) fn check_url(u: &str, schemes: &[&str]) -> Result<(), String> {
    let parsed = url::Url::parse(u).map_err(|e| format!("not a URL ({e})"))?;
    if !schemes.contains(&parsed.scheme()) {
        return Err(format!("scheme must be one of {}", schemes.join(", ")));
    }
    if parsed.scheme() != "unix" && parsed.scheme() != "redis+unix" && parsed.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    Ok(())
}

/// URL schemes a NATS client (core or JetStream) connects with.
pub(super) const NATS_SCHEMES: &[&str] = &["nats", "tls", "ws", "wss"];
/// URL schemes a Redis client (pub/sub or Streams) connects with.
pub(super) const REDIS_SCHEMES: &[&str] = &["redis", "rediss", "unix", "redis+unix"];

/// Checks a comma-separated list of server URLs (`nats://a:4222,nats://b:4222`).
pub(super) fn check_url_list(key: &str, urls: &str, schemes: &[&str]) -> Checked {
    for u in urls.split(',') {
        check_url(u.trim(), schemes).map_err(|r| Invalid::new(key, format!("{u:?}: {r}")))?;
    }
    Ok(())
}

/// Checks broker subjects as NATS-style patterns; the error names the element (`key[i]`).
pub(super) fn check_subjects(key: &str, subjects: &[String], max_topic_len: usize) -> Checked {
    for (i, subj) in subjects.iter().enumerate() {
        if let Err(e) = Pattern::parse(subj, max_topic_len) {
            return Err(Invalid::new(format!("{key}[{i}]"), format!("{subj:?}: {}", subject_reason(e))));
        }
    }
    Ok(())
}

/// A topic error worded for a broker subject.
fn subject_reason(e: TopicError) -> String {
    e.to_string().replacen("topic", "subject", 1)
}
