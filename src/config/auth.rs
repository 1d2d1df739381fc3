//! The `[auth]` section: which topics are public, and how tokens are verified and read.
//!
//! Plain data only. Whether the section can run (key files load, secrets are long enough,
//! rules parse) is checked by `crate::auth`, which builds the authorizer from it, so the
//! checks and the code that relies on them live together; `--check-config` runs them too.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Topic authorization with JWTs: which topics are public, and how tokens are verified and
/// read. See `docs/security.md` (and `crate::auth`, which enforces it).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The one algorithm tokens must be signed with; any other `alg` (`none` included) is
    /// refused, so a public key can never be used as an HMAC secret.
    pub algorithm: JwtAlgorithm,
    /// HS256 shared secret, at least 32 bytes. Prefer `SSE_BRIDGE_AUTH__SECRET`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// RS256/ES256: PEM file with the issuer's public key; re-read when it changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<PathBuf>,
    /// A JWKS document on disk (`{"keys": [...]}`), re-read when it changes; a token names its
    /// key with `kid` (optional when the set holds one usable key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// Accepted `aud` values: tokens must carry one. Empty: tokens must carry no `aud`.
    pub audience: Vec<String>,
    /// Accepted `iss` values: tokens must carry one. Empty: `iss` is not checked.
    pub issuer: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Claim holding the grants: `{"subscribe": [patterns], "publish": [patterns]}`.
    pub claim: String,
    /// Cookie that may carry the token for `GET /events`; empty: cookies are not read.
    pub cookie: String,
    /// Accept the token from the `access_token` query parameter of `GET /events` (never
    /// logged; the least preferred way, for clients that can set neither headers nor cookies).
    pub query_token: bool,
    /// Longest token accepted, in bytes (longer gets 400).
    pub max_token_bytes: usize,
    /// Per-topic rules, first match wins. Topics no rule covers need a token granting them.
    pub rules: Vec<AuthRule>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            algorithm: JwtAlgorithm::HS256,
            secret: None,
            public_key_file: None,
            jwks_file: None,
            audience: Vec::new(),
            issuer: Vec::new(),
            leeway: Duration::from_secs(30),
            claim: "sse_bridge".into(),
            cookie: "sse_bridge_token".into(),
            query_token: true,
            max_token_bytes: 8192,
            rules: Vec::new(),
        }
    }
}

// By hand, so the secret never reaches a log line through `{:?}`.
impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("algorithm", &self.algorithm)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("public_key_file", &self.public_key_file)
            .field("jwks_file", &self.jwks_file)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("leeway", &self.leeway)
            .field("claim", &self.claim)
            .field("cookie", &self.cookie)
            .field("query_token", &self.query_token)
            .field("max_token_bytes", &self.max_token_bytes)
            .field("rules", &self.rules)
            .finish()
    }
}

/// JWT signature algorithms the bridge verifies.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with `auth.secret`.
    HS256,
    /// RSA PKCS#1 v1.5 with SHA-256, public key from `public_key_file` or `jwks_file`.
    RS256,
    /// ECDSA P-256 with SHA-256, public key from `public_key_file` or `jwks_file`.
    ES256,
}

/// Who may read the topics a pattern covers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthRule {
    /// NATS-style pattern (`demo`, `demo.>`, `news.*`).
    pub topics: String,
    /// `public` (no token needed) or `token` (a valid token whose claims grant the topic).
    pub access: TopicAccess,
}

/// Access level of an [`AuthRule`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TopicAccess {
    /// Anyone who can reach the port may subscribe; no token is read.
    Public,
    /// A valid token whose `subscribe` grants cover the topic.
    Token,
}
