//! Which address a request comes from, for the per-IP limits.
//!
//! Behind a load balancer or ingress every connection comes from the proxy, and per-IP limits
//! would throttle all clients as one. When the TCP peer is a configured trusted proxy, the client
//! is the rightmost `X-Forwarded-For` address that is not itself a trusted proxy (addresses to
//! its left were written by the client and can be forged). Otherwise the peer is the client.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// The parsed `server.trusted_proxies`.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// From validated config entries (CIDRs or single addresses).
    pub fn new(entries: &[String]) -> Self {
        TrustedProxies(
            entries
                .iter()
                .filter_map(|e| e.parse::<IpNet>().ok().or_else(|| e.parse::<IpAddr>().ok().map(IpNet::from)))
                .collect(),
        )
    }

    /// Whether `ip` is a trusted proxy (its connections carry many clients).
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client address of a request that arrived from `peer`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        for hop in hops.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(ip) if self.trusts(ip) => continue,
                Ok(ip) => return ip,
                // Garbage in the chain: stop believing it at that point.
                Err(_) => return peer,
            }
        }
        peer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(xff: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert("x-forwarded-for", xff.parse().unwrap());
        m
    }

    #[test]
    fn only_trusted_peers_are_believed() {
        let t = TrustedProxies::new(&["10.0.0.0/8".into()]);
        let ingress: IpAddr = "10.1.2.3".parse().unwrap();
        let outsider: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(t.client_ip(outsider, &h("1.2.3.4")), outsider, "an untrusted peer cannot claim an address");
        assert_eq!(t.client_ip(ingress, &h("1.2.3.4")), "1.2.3.4".parse::<IpAddr>().unwrap());
        assert_eq!(
            t.client_ip(ingress, &h("6.6.6.6, 1.2.3.4, 10.9.9.9")),
            "1.2.3.4".parse::<IpAddr>().unwrap(),
            "rightmost untrusted hop"
        );
        assert_eq!(t.client_ip(ingress, &HeaderMap::new()), ingress);
        assert_eq!(t.client_ip(ingress, &h("junk")), ingress);
        assert_eq!(TrustedProxies::default().client_ip(ingress, &h("1.2.3.4")), ingress);
    }
}
