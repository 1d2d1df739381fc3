//! What runs before a request is admitted: input bounds (header bytes, `Last-Event-ID`,
//! token size; the query's own bounds are checked where it is parsed, in [`super::request`])
//! and authorization (`crate::auth`). Every refusal is a plain response with a one-line
//! reason, counted in `sse_bridge_requests_rejected_total{reason}`:
//!
//! | status | reason label | when |
//! |---|---|---|
//! | 400 | `headers_too_large`, `bad_last_event_id`, `token_too_long`, `bad_token`, `query_too_long`, `bad_event` | input out of bounds |
//! | 401 | `unauthenticated` | a topic needs a token and none was sent (`WWW-Authenticate: Bearer`) |
//! | 401 | `invalid_token` | the token does not verify (`error="invalid_token"` with the reason) |
//! | 401 | `unauthorized` | `/publish` without a usable bearer credential (as before `[auth]`) |
//! | 403 | `forbidden_topic` | a valid token that does not grant a requested topic (named) |
//! | 403 | `publish_disabled` | no publish credential is configured at all |
//!
//! The token may come from `Authorization: Bearer`, from the `auth.cookie` cookie, or from the
//! `access_token` query parameter, in that order of preference. `POST /publish` reads the
//! header only, so a cross-site form cannot publish with a browser's cookie. No token is ever
//! logged or repeated in a response.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use subtle::ConstantTimeEq;
use tracing::debug;

use super::body::ResponseBody;
use super::input::{MAX_HEADER_BYTES, check_last_event_id, header_bytes};
use super::request::{EventsRequest, PublishQuery};
use super::response::{Refused, bad_request, text};
use crate::auth::TokenError;
use crate::config::AuthConfig;
use crate::state::AppState;
use crate::topic::TopicFilter;

/// The `WWW-Authenticate` challenge without an error.
const CHALLENGE: &str = "Bearer realm=\"sse-bridge\"";

/// Checks a parsed `GET /events` request: input bounds, then whether every filter is public
/// or granted by the request's token. The subscription is refused as a whole, naming the
/// first filter that is not allowed.
pub fn events<B>(state: &AppState, req: &Request<B>, request: &EventsRequest) -> Result<(), Refused> {
    check_headers(state, req.headers())?;
    for v in req.headers().get_all("last-event-id") {
        check_last_event_id(v.as_bytes()).map_err(|r| bad_request(&state.metrics, "bad_last_event_id", &r))?;
    }
    if let Some(bad) = &request.deferred {
        return Err(bad.refuse(&state.metrics));
    }
    let auth = &state.auth;
    let filters = &request.filters;
    let (Some(first), Some(cfg)) = (auth.first_protected(filters), auth.config()) else {
        return Ok(());
    };
    let token = match bearer(req.headers()) {
        Some(t) => Some(t.to_owned()),
        None => cookie(req.headers(), &cfg.cookie).or_else(|| request.access_token.clone().filter(|_| cfg.query_token)),
    };
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        state.metrics.count_rejected("unauthenticated");
        let msg = format!("topic {:?} needs a token: send {}", first.as_str(), token_sources(cfg));
        return Err(with_challenge(text(StatusCode::UNAUTHORIZED, &msg), CHALLENGE.into()));
    };
    check_token_size(state, cfg, &token)?;
    let grants = auth.verify(&token).map_err(|e| invalid_token(state, &e))?;
    if let Some(f) = filters.iter().find(|f| !auth.is_public(f) && !grants.may_subscribe(f)) {
        return Err(forbidden(state, &format!("topic {:?} is not granted by the token", f.as_str())));
    }
    Ok(())
}

/// Checks the credential of a `POST /publish` request whose headers and query are within
/// bounds. The configured `publish.token` allows every topic (as before `[auth]`); a JWT
/// allows the topics its `publish` grants cover. The topic itself is validated by the handler
/// afterwards.
pub fn publish<B>(state: &AppState, req: &Request<B>, query: &PublishQuery) -> Result<(), Refused> {
    let legacy = state.config.publish.token.as_deref();
    if legacy.is_none() && !state.auth.has_keys() {
        state.metrics.count_rejected("publish_disabled");
        return Err(Box::new(text(
            StatusCode::FORBIDDEN,
            "publishing is disabled: set publish.token (or an [auth] key) in the configuration",
        )));
    }
    let given = bearer(req.headers());
    if let (Some(g), Some(t)) = (given, legacy)
        && bool::from(g.as_bytes().ct_eq(t.as_bytes()))
    {
        return Ok(());
    }
    let (Some(given), Some(cfg)) =
        (given.filter(|g| g.contains('.')), state.auth.config().filter(|_| state.auth.has_keys()))
    else {
        state.metrics.count_rejected("unauthorized");
        return Err(with_challenge(text(StatusCode::UNAUTHORIZED, "missing or wrong bearer token"), CHALLENGE.into()));
    };
    check_token_size(state, cfg, given)?;
    let grants = state.auth.verify(given).map_err(|e| invalid_token(state, &e))?;
    let max = state.config.server.max_topic_length;
    if let Some(t) = &query.topic
        && matches!(TopicFilter::parse(t, max), Ok(TopicFilter::Exact(_)))
        && !grants.may_publish(t)
    {
        return Err(forbidden(state, &format!("topic {:?} is not granted for publishing by the token", t)));
    }
    Ok(())
}

/// Refuses request headers over [`MAX_HEADER_BYTES`] (names plus values); the first check
/// on every route that reads headers.
pub fn check_headers(state: &AppState, h: &HeaderMap) -> Result<(), Refused> {
    let n = header_bytes(h);
    if n > MAX_HEADER_BYTES {
        return Err(bad_request(
            &state.metrics,
            "headers_too_large",
            &format!("request headers exceed {MAX_HEADER_BYTES} bytes"),
        ));
    }
    Ok(())
}

fn check_token_size(state: &AppState, cfg: &AuthConfig, token: &str) -> Result<(), Refused> {
    if token.len() > cfg.max_token_bytes {
        return Err(bad_request(
            &state.metrics,
            "token_too_long",
            &format!("token is longer than auth.max_token_bytes ({})", cfg.max_token_bytes),
        ));
    }
    Ok(())
}

/// The token of an `Authorization: Bearer` header (scheme case-insensitive), if any.
fn bearer(h: &HeaderMap) -> Option<&str> {
    let v = h.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim_matches(' '))
}

/// The value of cookie `name`, from any `Cookie` header (HTTP/2 may split them).
fn cookie(h: &HeaderMap, name: &str) -> Option<String> {
    if name.is_empty() {
        return None;
    }
    h.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then(|| v.trim_matches('"').to_owned())
    })
}

fn token_sources(cfg: &AuthConfig) -> String {
    let mut s = "Authorization: Bearer <token>".to_string();
    if !cfg.cookie.is_empty() {
        s.push_str(&format!(", or the {} cookie", cfg.cookie));
    }
    if cfg.query_token {
        s.push_str(", or ?access_token=<token>");
    }
    s
}

fn invalid_token(state: &AppState, e: &TokenError) -> Refused {
    state.metrics.count_rejected("invalid_token");
    debug!(reason = %e, "Token refused.");
    // error_description is a quoted-string: no quotes or backslashes, printable ASCII only.
    let desc: String = e.to_string().chars().map(|c| if c == '"' || c == '\\' { '\'' } else { c }).collect();
    let desc: String = desc.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').collect();
    let challenge = format!("{CHALLENGE}, error=\"invalid_token\", error_description=\"{desc}\"");
    with_challenge(text(StatusCode::UNAUTHORIZED, &format!("invalid token: {e}")), challenge)
}

fn forbidden(state: &AppState, msg: &str) -> Refused {
    state.metrics.count_rejected("forbidden_topic");
    with_challenge(text(StatusCode::FORBIDDEN, msg), format!("{CHALLENGE}, error=\"insufficient_scope\""))
}

fn with_challenge(mut r: Response<ResponseBody>, challenge: String) -> Refused {
    let v = HeaderValue::from_str(&challenge).unwrap_or(HeaderValue::from_static(CHALLENGE));
    r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    Box::new(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn bearer_and_cookie() {
        assert_eq!(bearer(&headers(&[("authorization", "Bearer abc")])), Some("abc"));
        assert_eq!(bearer(&headers(&[("authorization", "bearer  abc ")])), Some("abc"));
        assert_eq!(bearer(&headers(&[("authorization", "Basic abc")])), None);
        let h = headers(&[("cookie", "a=1; sse_bridge_token=\"xyz\""), ("cookie", "b=2")]);
        assert_eq!(cookie(&h, "sse_bridge_token").as_deref(), Some("xyz"));
        assert_eq!(cookie(&h, "b").as_deref(), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
        assert_eq!(cookie(&h, ""), None);
    }
}
