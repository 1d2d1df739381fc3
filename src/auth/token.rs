//! One presented token, before and after its signature: [`TokenError`] (what the client is
//! told), the header check made before any key is touched ([`peek_header`]), and the
//! `jsonwebtoken` settings and error mapping for the one configured algorithm.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, Validation};
use serde_json::Value;

use crate::config::{AuthConfig, JwtAlgorithm};

/// Longest base64url header segment looked at (a JWT header is a few dozen bytes).
const MAX_HEADER_SEGMENT: usize = 2048;
/// Longest `kid` accepted.
const MAX_KID_LEN: usize = 256;

/// Why a presented token was not accepted. The text is sent to the client (one line, in the
/// `401` body and `WWW-Authenticate`) and never contains the token; each variant's message
/// is its documentation.
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

/// The `jsonwebtoken` algorithm of the configured one.
pub(super) fn algorithm_of(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::ES256 => Algorithm::ES256,
    }
}

/// The key family a JWKS key must belong to for the configured algorithm.
pub(super) fn family_of(a: JwtAlgorithm) -> AlgorithmFamily {
    match a {
        JwtAlgorithm::HS256 => AlgorithmFamily::Hmac,
        JwtAlgorithm::RS256 => AlgorithmFamily::Rsa,
        JwtAlgorithm::ES256 => AlgorithmFamily::Ec,
    }
}

/// The algorithm's name as a token header and the operator write it.
pub(super) fn alg_name(a: JwtAlgorithm) -> &'static str {
    match a {
        JwtAlgorithm::HS256 => "HS256",
        JwtAlgorithm::RS256 => "RS256",
        JwtAlgorithm::ES256 => "ES256",
    }
}

/// What `jsonwebtoken` checks besides the signature: `exp` (required), `nbf`, and `aud`/`iss`
/// when configured, all with the configured leeway.
pub(super) fn validation(cfg: &AuthConfig, alg: Algorithm) -> Validation {
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

/// A `jsonwebtoken` failure as the client is told it.
pub(super) fn token_error(kind: &ErrorKind, expected: JwtAlgorithm) -> TokenError {
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
pub(super) fn peek_header(token: &str, expected: JwtAlgorithm) -> Result<Option<String>, TokenError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
