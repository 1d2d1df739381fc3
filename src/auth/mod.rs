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
//!
//! Files, in the order a request meets them: `policy` ([`Auth`]: public or not, verify),
//! `token` (header check, [`TokenError`]), `keys` (secret or watched key file), `grants`
//! ([`Grants`] and the pattern algebra); `check` is what `--check-config` runs on `[auth]`.

mod check;
mod grants;
mod keys;
mod policy;
mod token;

pub use check::check;
pub use grants::{Grants, covers, overlaps};
pub use keys::KEY_FILE_CHECK_INTERVAL;
pub use policy::Auth;
pub use token::TokenError;
