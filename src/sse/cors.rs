//! CORS for the public listener: an allowlist of origins, empty by default (no cross-origin
//! reads until configured). A listed origin is echoed back exactly, with
//! `Access-Control-Allow-Credentials: true`, so `new EventSource(url, {withCredentials: true})`
//! from that origin can send the token cookie. `*` allows any origin but never with
//! credentials (browsers refuse the combination, and a token cookie must not be readable by
//! every site). An arbitrary Origin is never reflected.

use http::HeaderMap;
use http::header::{self, HeaderValue};

/// The configured CORS policy, parsed once at startup.
#[derive(Debug, Clone, Default)]
pub struct Cors {
    any: bool,
    origins: Vec<HeaderValue>,
}

impl Cors {
    /// Builds the policy from `server.cors_origins` (already validated).
    pub fn new(origins: &[String]) -> Self {
        Cors {
            any: origins.iter().any(|o| o == "*"),
            origins: origins.iter().filter(|o| *o != "*").filter_map(|o| HeaderValue::from_str(o).ok()).collect(),
        }
    }

    /// Adds the CORS response headers for a request from `origin`, if it is allowed.
    pub fn apply(&self, origin: Option<&HeaderValue>, preflight: bool, headers: &mut HeaderMap) {
        if !self.any && self.origins.is_empty() {
            return;
        }
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
        let Some(origin) = origin else { return };
        let listed = self.origins.iter().any(|o| o.as_bytes().eq_ignore_ascii_case(origin.as_bytes()));
        let allow = if listed {
            origin.clone()
        } else if self.any {
            HeaderValue::from_static("*")
        } else {
            return;
        };
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        if listed {
            // Only for an origin the operator named: withCredentials (cookies) from there.
            headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        if preflight {
            headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("Last-Event-ID, Authorization, Content-Type, traceparent, tracestate"),
            );
            headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cors: &Cors, origin: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        cors.apply(Some(&HeaderValue::from_str(origin).unwrap()), false, &mut h);
        h
    }

    #[test]
    fn only_listed_origins_are_echoed() {
        let c = Cors::new(&["https://app.example".into()]);
        assert_eq!(run(&c, "https://app.example")[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example");
        assert!(run(&c, "https://evil.example").get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        assert!(run(&Cors::new(&[]), "https://app.example").is_empty());
    }

    #[test]
    fn star_never_reflects() {
        let c = Cors::new(&["*".into()]);
        assert_eq!(run(&c, "https://any.example")[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    }

    #[test]
    fn credentials_only_for_listed_origins() {
        let c = Cors::new(&["https://app.example".into(), "*".into()]);
        let listed = run(&c, "https://app.example");
        assert_eq!(listed[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(listed[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example");
        let other = run(&c, "https://evil.example");
        assert_eq!(other[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(other.get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none(), "never with *");
        let only = Cors::new(&["https://app.example".into()]);
        assert!(run(&only, "https://evil.example").get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());
    }
}
