//! Topic authorization: which topics a request may read, and which it may publish to.
//!
//! Without an `[auth]` section every topic is public (the behaviour before authorization
//! existed). With one, each subscribed filter is looked up in `auth.rules` (first rule that
//! decides wins, see [`Auth::is_public`]); a filter that is not public needs a JWT whose grants
//! cover it. A subscription is allowed or refused as a whole, never narrowed.
//!
//! Tokens are verified with [`jsonwebtoken`] against exactly one configured algorithm
//! (`HS256` with a secret, `RS256`/`ES256` with a PEM public key or a JWKS document on disk
//! that is re-read when it changes). The header is looked at before anything else so that
//! `alg: none` and algorithm confusion (an RSA public key used as an HMAC secret) are refused
//! by name; keys embedded in the token (`jwk`, `jku`, `x5u`) are never used. `exp` is required,
//! `nbf` is honoured, both with `auth.leeway`; `aud`/`iss` are checked when configured.
//!
//! The grants live in one claim (default `sse_bridge`):
//! `{"subscribe": ["orders.*", "user.42.>"], "publish": ["orders.>"]}`. A grant covers a
//! subscribed filter when every topic the filter can match is matched by the grant, so
//! `orders.>` covers `orders.*` and `orders.1`, while `orders.*` does not cover `orders.>`.
//!
//! This module knows nothing of HTTP: `sse::guard` reads the token from the request and turns
//! refusals into responses. Nothing here logs or returns a token.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use parking_lot::Mutex;
use serde_json::{Map, Value};
use tracing::{info, warn};

use crate::config::{AuthConfig, JwtAlgorithm, TopicAccess};
use crate::topic::TopicFilter;

/// Largest key file read (PEM or JWKS).
const MAX_KEY_FILE_BYTES: u64 = 1024 * 1024;
/// A key file is checked for changes at most this often (one `stat` per interval, not per
/// request).
pub const KEY_FILE_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Keys of a JWKS that are used; more are ignored (with a warning).
const MAX_JWKS_KEYS: usize = 64;
/// Grants (subscribe plus publish) one token may carry.
const MAX_GRANTS: usize = 1024;
/// Longest base64url header segment looked at (a JWT header is a few dozen bytes).
const MAX_HEADER_SEGMENT: usize = 2048;
/// Longest `kid` accepted.
const MAX_KID_LEN: usize = 256;
/// Longest leeway accepted in the configuration: clock skew, not a grace period.
const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// Why a presented token was not accepted. The text is sent to the client (one line, in the
/// `401` body and `WWW-Authenticate`) and never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("token algorithm {found:?} is not accepted: tokens must be signed with {expected}")]
    WrongAlgorithm { found: String, expected: &'static str },
    #[error("the token signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token audience (aud) is not accepted")]
    WrongAudience,
    #[error("the token issuer (iss) is not accepted")]
    WrongIssuer,
    #[error("the token has no {0} claim")]
    MissingClaim(String),
    #[error("the token's {0} claim is malformed")]
    BadClaim(String),
    #[error("no configured key matches the token's kid")]
    UnknownKey,
    #[error("the token has no kid and the key set holds several keys")]
    AmbiguousKey,
    #[error("no token verification key is configured")]
    NoKey,
    #[error("the token's grants are malformed: {0}")]
    BadGrants(String),
}

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

/// The authorization policy of one bridge, built once from the configuration.
#[derive(Debug, Default)]
pub struct Auth {
    policy: Option<Policy>,
}

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
    /// The policy for `cfg` (`None`: no `[auth]` section, every topic public). The
    /// configuration is expected to be validated ([`validate_config`]); a key that cannot be
    /// loaded here leaves the bridge with no key, so every token is refused (fail closed).
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
            Err((key, reason)) => {
                warn!(key = %key, %reason, "Cannot load the token key; every token will be refused.");
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

    /// Whether an `[auth]` section is configured.
    pub fn is_enabled(&self) -> bool {
        self.policy.is_some()
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

fn algorithm_of(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::ES256 => Algorithm::ES256,
    }
}

fn family_of(a: JwtAlgorithm) -> AlgorithmFamily {
    match a {
        JwtAlgorithm::HS256 => AlgorithmFamily::Hmac,
        JwtAlgorithm::RS256 => AlgorithmFamily::Rsa,
        JwtAlgorithm::ES256 => AlgorithmFamily::Ec,
    }
}

fn alg_name(a: JwtAlgorithm) -> &'static str {
    match a {
        JwtAlgorithm::HS256 => "HS256",
        JwtAlgorithm::RS256 => "RS256",
        JwtAlgorithm::ES256 => "ES256",
    }
}

fn validation(cfg: &AuthConfig, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = cfg.leeway.as_secs();
    v.validate_exp = true;
    v.validate_nbf = true;
    let mut required = vec!["exp"];
    if !cfg.audience.is_empty() {
        v.set_audience(&cfg.audience);
        required.push("aud");
    }
    // With no audience configured, jsonwebtoken refuses tokens that carry one (RFC 7519
    // §4.1.3: a recipient not named in `aud` must reject the token).
    if !cfg.issuer.is_empty() {
        v.set_issuer(&cfg.issuer);
        required.push("iss");
    }
    v.set_required_spec_claims(&required);
    v
}

fn token_error(kind: &ErrorKind, expected: JwtAlgorithm) -> TokenError {
    match kind {
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(c.clone()),
        ErrorKind::InvalidClaimFormat(c) => TokenError::BadClaim(c.clone()),
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::Provider(_) => TokenError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => {
            TokenError::WrongAlgorithm { found: "?".into(), expected: alg_name(expected) }
        }
        _ => TokenError::Malformed,
    }
}

/// Checks the token's shape and its header's `alg` before any key is touched; returns `kid`.
fn peek_header(token: &str, expected: JwtAlgorithm) -> Result<Option<String>, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let b64 = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !b64(header) || !b64(payload) || header.len() > MAX_HEADER_SEGMENT {
        return Err(TokenError::Malformed);
    }
    let raw = URL_SAFE_NO_PAD.decode(header).map_err(|_| TokenError::Malformed)?;
    let Ok(Value::Object(h)) = serde_json::from_slice::<Value>(&raw) else {
        return Err(TokenError::Malformed);
    };
    let found = match h.get("alg") {
        Some(Value::String(a)) => a.as_str(),
        _ => return Err(TokenError::Malformed),
    };
    if found != alg_name(expected) {
        // Echoed to the client: keep it short and printable.
        let found: String = found.chars().filter(char::is_ascii_alphanumeric).take(16).collect();
        return Err(TokenError::WrongAlgorithm { found, expected: alg_name(expected) });
    }
    // An unsigned token with the right alg name is still not signed.
    if !b64(signature) {
        return Err(TokenError::BadSignature);
    }
    match h.get("kid") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(k)) if k.len() <= MAX_KID_LEN => Ok(Some(k.clone())),
        Some(_) => Err(TokenError::Malformed),
    }
}

/// Verification keys, with the `kid` each was published under.
struct KeySet {
    keys: Vec<(Option<String>, DecodingKey)>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet").field("keys", &self.keys.len()).finish()
    }
}

impl KeySet {
    fn select(&self, kid: Option<&str>) -> Result<&DecodingKey, TokenError> {
        match kid {
            // A single key (secret, PEM, or a one-key JWKS) verifies any kid: the signature
            // decides. Several keys: the kid must name one.
            _ if self.keys.len() == 1 => Ok(&self.keys[0].1),
            Some(kid) => {
                self.keys.iter().find(|(k, _)| k.as_deref() == Some(kid)).map(|(_, d)| d).ok_or(TokenError::UnknownKey)
            }
            None => Err(TokenError::AmbiguousKey),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileFormat {
    Pem,
    Jwks,
}

/// `(mtime, length)`: what "the file changed" means.
type Stamp = (Option<SystemTime>, u64);

#[derive(Debug)]
enum Keys {
    Secret(Arc<KeySet>),
    File(FileKeys),
}

#[derive(Debug)]
struct FileKeys {
    path: PathBuf,
    format: FileFormat,
    algorithm: JwtAlgorithm,
    state: Mutex<FileState>,
}

#[derive(Debug)]
struct FileState {
    keys: Arc<KeySet>,
    /// Stamp of the file the keys came from.
    loaded: Option<Stamp>,
    /// Stamp of the last version that could not be loaded (warned about once).
    failed: Option<Stamp>,
    checked: Instant,
}

impl Keys {
    fn from_config(cfg: &AuthConfig) -> Result<Option<Keys>, (String, String)> {
        if let Some(secret) = &cfg.secret {
            let key = DecodingKey::from_secret(secret.as_bytes());
            return Ok(Some(Keys::Secret(Arc::new(KeySet { keys: vec![(None, key)] }))));
        }
        let (path, format, key) = match (&cfg.public_key_file, &cfg.jwks_file) {
            (Some(p), _) => (p, FileFormat::Pem, "auth.public_key_file"),
            (None, Some(p)) => (p, FileFormat::Jwks, "auth.jwks_file"),
            (None, None) => return Ok(None),
        };
        let (keys, stamp) = load_key_file(path, format, cfg.algorithm).map_err(|r| (key.to_string(), r))?;
        Ok(Some(Keys::File(FileKeys {
            path: path.clone(),
            format,
            algorithm: cfg.algorithm,
            state: Mutex::new(FileState {
                keys: Arc::new(keys),
                loaded: Some(stamp),
                failed: None,
                checked: Instant::now(),
            }),
        })))
    }

    fn describe(&self) -> &'static str {
        match self {
            Keys::Secret(_) => "secret",
            Keys::File(f) if f.format == FileFormat::Pem => "public_key_file",
            Keys::File(_) => "jwks_file",
        }
    }

    /// The keys to verify with now, re-reading the file if it changed (checked at most once
    /// per [`KEY_FILE_CHECK_INTERVAL`]). A file that no longer loads keeps the previous keys.
    fn current(&self) -> Arc<KeySet> {
        let f = match self {
            Keys::Secret(k) => return k.clone(),
            Keys::File(f) => f,
        };
        let mut st = f.state.lock();
        if st.checked.elapsed() < KEY_FILE_CHECK_INTERVAL {
            return st.keys.clone();
        }
        st.checked = Instant::now();
        let stamp = std::fs::metadata(&f.path).ok().map(|m| (m.modified().ok(), m.len()));
        if stamp.is_none() || stamp == st.loaded || stamp == st.failed {
            if stamp.is_none() && st.failed != Some((None, u64::MAX)) {
                warn!(path = %f.path.display(), "Key file is gone; keeping the keys loaded before.");
                st.failed = Some((None, u64::MAX));
            }
            return st.keys.clone();
        }
        match load_key_file(&f.path, f.format, f.algorithm) {
            Ok((keys, stamp)) => {
                info!(path = %f.path.display(), keys = keys.keys.len(), "Key file changed; keys reloaded.");
                st.keys = Arc::new(keys);
                st.loaded = Some(stamp);
                st.failed = None;
            }
            Err(reason) => {
                warn!(path = %f.path.display(), %reason, "Key file changed but cannot be used; keeping the keys loaded before.");
                st.failed = stamp;
            }
        }
        st.keys.clone()
    }
}

fn load_key_file(path: &Path, format: FileFormat, alg: JwtAlgorithm) -> Result<(KeySet, Stamp), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > MAX_KEY_FILE_BYTES {
        return Err(format!("{}: larger than {MAX_KEY_FILE_BYTES} bytes", path.display()));
    }
    let stamp = (meta.modified().ok(), meta.len());
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let keys = match format {
        FileFormat::Pem => {
            let key = match alg {
                JwtAlgorithm::RS256 => DecodingKey::from_rsa_pem(&bytes),
                JwtAlgorithm::ES256 => DecodingKey::from_ec_pem(&bytes),
                JwtAlgorithm::HS256 => return Err("HS256 verifies with auth.secret, not a key file".into()),
            }
            .map_err(|e| format!("{}: not a PEM public key for {} ({e})", path.display(), alg_name(alg)))?;
            vec![(None, key)]
        }
        FileFormat::Jwks => parse_jwks(&bytes, alg).map_err(|e| format!("{}: {e}", path.display()))?,
    };
    Ok((KeySet { keys }, stamp))
}

/// The usable keys of a JWKS document: signature keys of the configured algorithm's family
/// (and, when a key names its `alg`, that algorithm). Keys that do not parse are skipped.
fn parse_jwks(bytes: &[u8], alg: JwtAlgorithm) -> Result<Vec<(Option<String>, DecodingKey)>, String> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON ({e})"))?;
    let Some(Value::Array(list)) = doc.get("keys") else {
        return Err("not a JWKS document (no \"keys\" array)".into());
    };
    let mut keys = Vec::new();
    let mut skipped = 0usize;
    for v in list {
        let Ok(jwk) = serde_json::from_value::<Jwk>(v.clone()) else {
            skipped += 1;
            continue;
        };
        let usable = !matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature)
            && jwk.common.key_algorithm.is_none_or(|a| a == KeyAlgorithm::from(algorithm_of(alg)));
        match DecodingKey::from_jwk(&jwk) {
            Ok(k) if usable && k.family() == family_of(alg) => keys.push((jwk.common.key_id.clone(), k)),
            _ => skipped += 1,
        }
    }
    if keys.len() > MAX_JWKS_KEYS {
        warn!(keys = keys.len(), used = MAX_JWKS_KEYS, "JWKS holds more keys than are used.");
        keys.truncate(MAX_JWKS_KEYS);
    }
    if keys.is_empty() {
        return Err(format!("no usable {} signature key among {} keys", alg_name(alg), list.len()));
    }
    if skipped > 0 {
        info!(used = keys.len(), skipped, "JWKS keys of other algorithms or uses are ignored.");
    }
    Ok(keys)
}

/// Checks an `[auth]` section; `Err((key, reason))` names the offending key. Key files are
/// loaded, so `--check-config` reports an unreadable or wrong key before anything starts.
pub fn validate_config(a: &AuthConfig, max_topic_len: usize) -> Result<(), (String, String)> {
    let err = |k: &str, r: String| Err((k.to_string(), r));
    let sources = [a.secret.is_some(), a.public_key_file.is_some(), a.jwks_file.is_some()];
    if sources.iter().filter(|s| **s).count() > 1 {
        return err("auth", "set only one of secret, public_key_file and jwks_file".into());
    }
    match (a.algorithm, &a.secret) {
        (JwtAlgorithm::HS256, Some(s)) if s.len() < 32 => {
            return err("auth.secret", "must be at least 32 bytes (256 bits) for HS256".into());
        }
        (JwtAlgorithm::RS256 | JwtAlgorithm::ES256, Some(_)) => {
            return err(
                "auth.secret",
                format!("is for algorithm HS256; {} verifies with public_key_file or jwks_file", alg_name(a.algorithm)),
            );
        }
        _ => {}
    }
    if a.algorithm == JwtAlgorithm::HS256 && a.public_key_file.is_some() {
        return err("auth.public_key_file", "needs algorithm RS256 or ES256 (HS256 verifies with auth.secret)".into());
    }
    if let Err((key, reason)) = Keys::from_config(a) {
        return err(&key, reason);
    }
    if a.leeway > MAX_LEEWAY {
        return err("auth.leeway", format!("must be at most {}s (it absorbs clock skew only)", MAX_LEEWAY.as_secs()));
    }
    if a.claim.is_empty() {
        return err("auth.claim", "must not be empty".into());
    }
    if !a.cookie.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)) {
        return err("auth.cookie", format!("{:?}: not a valid cookie name", a.cookie));
    }
    if !(256..=65536).contains(&a.max_token_bytes) {
        return err("auth.max_token_bytes", "must be between 256 and 65536".into());
    }
    for (key, list) in [("auth.audience", &a.audience), ("auth.issuer", &a.issuer)] {
        if let Some(i) = list.iter().position(String::is_empty) {
            return err(&format!("{key}[{i}]"), "must not be empty".into());
        }
    }
    for (i, r) in a.rules.iter().enumerate() {
        if let Err(e) = TopicFilter::parse(&r.topics, max_topic_len) {
            return err(&format!("auth.rules[{i}].topics"), format!("{:?}: {e}", r.topics));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthRule;

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

    #[test]
    fn header_is_checked_first() {
        let h = |json: &str| URL_SAFE_NO_PAD.encode(json);
        let none = format!("{}.{}.", h(r#"{"alg":"none"}"#), h("{}"));
        assert!(matches!(peek_header(&none, JwtAlgorithm::HS256), Err(TokenError::WrongAlgorithm { .. })));
        let hs = format!("{}.{}.c2ln", h(r#"{"alg":"HS256"}"#), h("{}"));
        assert!(matches!(peek_header(&hs, JwtAlgorithm::RS256), Err(TokenError::WrongAlgorithm { .. })));
        assert_eq!(peek_header(&hs, JwtAlgorithm::HS256), Ok(None));
        let unsigned = format!("{}.{}.", h(r#"{"alg":"HS256"}"#), h("{}"));
        assert_eq!(peek_header(&unsigned, JwtAlgorithm::HS256), Err(TokenError::BadSignature));
        assert_eq!(peek_header("a.b", JwtAlgorithm::HS256), Err(TokenError::Malformed));
    }

    #[test]
    fn config_is_checked() {
        let ok = AuthConfig { secret: Some("x".repeat(32)), ..AuthConfig::default() };
        assert!(validate_config(&ok, 256).is_ok());
        let short = AuthConfig { secret: Some("short".into()), ..AuthConfig::default() };
        assert_eq!(validate_config(&short, 256).unwrap_err().0, "auth.secret");
        let confused = AuthConfig { algorithm: JwtAlgorithm::RS256, ..ok.clone() };
        assert_eq!(validate_config(&confused, 256).unwrap_err().0, "auth.secret");
        let missing = AuthConfig {
            algorithm: JwtAlgorithm::RS256,
            public_key_file: Some("/nonexistent.pem".into()),
            ..AuthConfig::default()
        };
        assert_eq!(validate_config(&missing, 256).unwrap_err().0, "auth.public_key_file");
    }
}
