//! Where the load goes: `http://` or `https://host:port/path?query` templates, loopback only.
//!
//! The load generator refuses every address outside 127.0.0.0/8 and ::1: it is a tool for
//! measuring servers on this machine, never for loading anyone else's.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// A parsed `http://` or `https://` URL template; `{topic}` in the path or query is replaced
/// per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlTemplate {
    pub addr: SocketAddr,
    /// `https://`: TLS, verifying the certificate for [`UrlTemplate::host`].
    pub tls: bool,
    /// The host as written in the URL (the name TLS verifies).
    pub host: String,
    /// The `Host` header value as written in the URL.
    pub host_header: String,
    /// Path and query, still with `{topic}` in it.
    pub path_query: String,
}

impl UrlTemplate {
    pub fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(r), _) => (false, r),
            (_, Some(r)) => (true, r),
            _ => return Err(format!("{url}: only http:// and https:// URLs are supported")),
        };
        let (authority, path_query) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = if let Some(h) = authority.strip_prefix('[') {
            let (h, p) = h.split_once(']').ok_or_else(|| format!("{url}: bad IPv6 literal"))?;
            (h, p.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port: u16 = match port {
            Some(p) => p.parse().map_err(|_| format!("{url}: bad port {p:?}"))?,
            None if tls => 443,
            None => 80,
        };
        let ip = loopback_ip(host).ok_or_else(|| {
            format!("{url}: refusing a non-loopback host {host:?} (only 127.0.0.0/8, ::1 and localhost may be loaded)")
        })?;
        Ok(UrlTemplate {
            addr: SocketAddr::new(ip, port),
            tls,
            host: host.to_string(),
            host_header: authority.to_string(),
            path_query: path_query.to_string(),
        })
    }

    /// The path and query for `topic` (percent-encoded where needed).
    pub fn path_for(&self, topic: &str) -> String {
        self.path_query.replace("{topic}", &encode(topic))
    }
}

/// Parses `host` as a loopback address (`localhost` is 127.0.0.1); `None` for anything else.
pub fn loopback_ip(host: &str) -> Option<IpAddr> {
    let ip: IpAddr =
        if host.eq_ignore_ascii_case("localhost") { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { host.parse().ok()? };
    ip.is_loopback().then_some(ip)
}

/// Parses `host:port`, loopback only.
pub fn loopback_addr(s: &str) -> Result<SocketAddr, String> {
    let (h, p) = s.rsplit_once(':').ok_or_else(|| format!("{s}: expected host:port"))?;
    let h = h.trim_start_matches('[').trim_end_matches(']');
    let ip = loopback_ip(h).ok_or_else(|| format!("{s}: refusing a non-loopback address"))?;
    let port = p.parse().map_err(|_| format!("{s}: bad port"))?;
    Ok(SocketAddr::new(ip, port))
}

/// Percent-encodes `s` for a query value (topic patterns keep `*` and `>` readable).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'*' | b'>' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_loopback_and_refuses_others() {
        let u = UrlTemplate::parse("http://127.0.0.1:8080/events?topic={topic}").unwrap();
        assert_eq!(u.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(u.path_for("a.b c"), "/events?topic=a.b%20c");
        assert_eq!(UrlTemplate::parse("http://localhost/x").unwrap().addr.port(), 80);
        assert!(UrlTemplate::parse("http://[::1]:9/x").is_ok());
        assert!(UrlTemplate::parse("http://127.5.6.7:9/x").is_ok());
        let t = UrlTemplate::parse("https://localhost/events").unwrap();
        assert!(t.tls && !u.tls);
        assert_eq!((t.addr.port(), t.host.as_str()), (443, "localhost"));
        for bad in [
            "http://10.0.0.1/x",
            "http://example.com/x",
            "https://10.1.2.3/x",
            "ftp://127.0.0.1/",
            "http://192.168.1.1:80/",
        ] {
            assert!(UrlTemplate::parse(bad).is_err(), "{bad}");
        }
        assert!(loopback_addr("127.0.0.1:4222").is_ok());
        assert!(loopback_addr("8.8.8.8:53").is_err());
    }
}
