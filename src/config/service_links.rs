//! Kubernetes service links: the variables the kubelet puts into every container for every
//! Service of the pod's namespace (unless the pod spec sets `enableServiceLinks: false`).
//!
//! A Service named `sse-bridge` (what `helm install sse-bridge` creates) or `sse-bridge-<x>`
//! gets variables under the bridge's own prefix `SSE_BRIDGE_`, which the environment layer
//! would read as configuration keys and refuse (``key `port` … unknown field``): the pods
//! would crash-loop. The loader leaves out exactly what the kubelet writes, name *and* value:
//!
//! | variable | value |
//! |---|---|
//! | `<SVC>_SERVICE_HOST` | the ClusterIP |
//! | `<SVC>_SERVICE_PORT` | the first port |
//! | `<SVC>_SERVICE_PORT_<PORT_NAME>` | a named port |
//! | `<SVC>_PORT` | `tcp://<ip>:<port>` of the first port |
//! | `<SVC>_PORT_<port>_<PROTO>` | `<proto>://<ip>:<port>` |
//! | `<SVC>_PORT_<port>_<PROTO>_PROTO` | `tcp`, `udp` or `sctp` |
//! | `<SVC>_PORT_<port>_<PROTO>_PORT` | the port |
//! | `<SVC>_PORT_<port>_<PROTO>_ADDR` | the ClusterIP |
//!
//! `<SVC>` is the Service name in capitals with `-` as `_` (`SSE_BRIDGE`, `SSE_BRIDGE_ADMIN`).
//! A configuration key has `__` between section and field, which no name here contains, and a
//! variable with a service-link name but a value of another shape (`SSE_BRIDGE_PORT=8080`) is
//! not one: it is still read, so it is still refused, naming it.

use std::net::{IpAddr, SocketAddr};

/// Protocols a Service port may have, as they appear in variable names.
const PROTOCOLS: [&str; 3] = ["TCP", "UDP", "SCTP"];
/// Longest Service name (a DNS-1035 label).
const MAX_SERVICE_NAME: usize = 63;
/// Longest port name (an IANA service name).
const MAX_PORT_NAME: usize = 15;

/// Whether `name=value` is a variable the kubelet injects for a Service whose name, written as
/// a variable, starts with `prefix` less its final `_` (`SSE_BRIDGE_` covers the Services
/// `sse-bridge` and `sse-bridge-*`).
pub fn is_service_link(prefix: &str, name: &str, value: &str) -> bool {
    let Some(rest) = prefix.strip_suffix('_').and_then(|service| name.strip_prefix(service)) else {
        return false;
    };
    // `rest` is `[_<tail>]_<suffix>`: try each `_` as the end of the Service's part.
    rest.match_indices('_').any(|(i, _)| {
        let (tail, suffix) = (&rest[..i], &rest[i + 1..]);
        is_service_tail(tail, prefix.len()) && is_link_suffix(suffix, value)
    })
}

/// `""` (the Service is the prefix itself) or `_<X>` for a Service `<prefix>-<x>`.
fn is_service_tail(tail: &str, prefix_len: usize) -> bool {
    let Some(x) = tail.strip_prefix('_') else { return tail.is_empty() };
    is_upper_name(x) && prefix_len + x.len() <= MAX_SERVICE_NAME
}

/// A DNS label or port name as the kubelet writes it: capitals, digits and single `_` inside.
fn is_upper_name(x: &str) -> bool {
    !x.is_empty()
        && !x.starts_with('_')
        && !x.ends_with('_')
        && !x.contains("__")
        && x.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// What follows `<SVC>_`, with the value that name must have.
fn is_link_suffix(suffix: &str, value: &str) -> bool {
    match suffix {
        "SERVICE_HOST" => value.parse::<IpAddr>().is_ok(),
        "SERVICE_PORT" => port(value).is_some(),
        "PORT" => link_url(value).is_some(),
        _ => {
            if let Some(name) = suffix.strip_prefix("SERVICE_PORT_") {
                return is_port_name(name) && port(value).is_some();
            }
            suffix.strip_prefix("PORT_").is_some_and(|p| is_port_variable(p, value))
        }
    }
}

/// `<port>_<PROTO>` with an optional `_PROTO`, `_PORT` or `_ADDR`, after `<SVC>_PORT_`.
fn is_port_variable(s: &str, value: &str) -> bool {
    let mut parts = s.splitn(3, '_');
    let (Some(number), Some(proto)) = (parts.next(), parts.next()) else { return false };
    let Some(number) = port(number) else { return false };
    if !PROTOCOLS.contains(&proto) {
        return false;
    }
    let proto = proto.to_ascii_lowercase();
    match parts.next() {
        None => link_url(value).is_some_and(|(p, n)| p == proto && n == number),
        Some("PROTO") => value == proto,
        Some("PORT") => port(value) == Some(number),
        Some("ADDR") => value.parse::<IpAddr>().is_ok(),
        Some(_) => false,
    }
}

/// An IANA port name in capitals: at most 15 characters, at least one letter.
fn is_port_name(name: &str) -> bool {
    is_upper_name(name) && name.len() <= MAX_PORT_NAME && name.bytes().any(|b| b.is_ascii_uppercase())
}

/// A port as the kubelet writes it: 1 to 65535, no sign, no leading zero.
fn port(s: &str) -> Option<u16> {
    if s.is_empty() || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|p| *p != 0)
}

/// `<proto>://<ip>:<port>` (`[v6]:port` for IPv6): the protocol and the port.
fn link_url(value: &str) -> Option<(&str, u16)> {
    let (proto, addr) = value.split_once("://")?;
    if !PROTOCOLS.iter().any(|p| p.eq_ignore_ascii_case(proto)) || proto.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let addr: SocketAddr = addr.parse().ok()?;
    Some((proto, addr.port())).filter(|(_, p)| *p != 0)
}

#[cfg(test)]
mod tests {
    use super::is_service_link;

    const P: &str = "SSE_BRIDGE_";

    /// What the kubelet injects for a Service `name` with ClusterIP 10.0.0.1 and ports
    /// `http` 8080/TCP and `admin` 9090/TCP, as `envvars.FromServices` builds it.
    fn kubelet_env(service: &str) -> Vec<(String, String)> {
        let s = service.to_uppercase().replace('-', "_");
        let mut v = vec![
            (format!("{s}_SERVICE_HOST"), "10.0.0.1".into()),
            (format!("{s}_SERVICE_PORT"), "8080".into()),
            (format!("{s}_SERVICE_PORT_HTTP"), "8080".into()),
            (format!("{s}_SERVICE_PORT_ADMIN"), "9090".into()),
            (format!("{s}_PORT"), "tcp://10.0.0.1:8080".into()),
        ];
        for port in [8080, 9090] {
            let p = format!("{s}_PORT_{port}_TCP");
            v.push((p.clone(), format!("tcp://10.0.0.1:{port}")));
            v.push((format!("{p}_PROTO"), "tcp".into()));
            v.push((format!("{p}_PORT"), port.to_string()));
            v.push((format!("{p}_ADDR"), "10.0.0.1".into()));
        }
        v
    }

    #[test]
    fn every_kubelet_variable_of_a_bridge_service_is_a_link() {
        for service in ["sse-bridge", "sse-bridge-admin", "sse-bridge-canary-2", "sse-bridge-service"] {
            for (k, v) in kubelet_env(service) {
                assert!(is_service_link(P, &k, &v), "{k}={v} (service {service})");
            }
        }
    }

    #[test]
    fn other_protocols_ipv6_and_port_names() {
        for (k, v) in [
            ("SSE_BRIDGE_PORT", "udp://[fd00::1]:53"),
            ("SSE_BRIDGE_PORT_53_UDP", "udp://[fd00::1]:53"),
            ("SSE_BRIDGE_PORT_53_UDP_PROTO", "udp"),
            ("SSE_BRIDGE_PORT_3868_SCTP", "sctp://10.0.0.1:3868"),
            ("SSE_BRIDGE_SERVICE_HOST", "fd00::1"),
            ("SSE_BRIDGE_SERVICE_PORT_METRICS_2", "9100"),
        ] {
            assert!(is_service_link(P, k, v), "{k}={v}");
        }
    }

    #[test]
    fn configuration_keys_and_other_shapes_are_not_links() {
        for (k, v) in [
            // Real keys, set or mistyped: the loader must read them.
            ("SSE_BRIDGE_SERVER__LISTEN", "0.0.0.0:8080"),
            ("SSE_BRIDGE_SERVER__PORT", "8080"),
            ("SSE_BRIDGE_NOT_A_KEY", "1"),
            ("SSE_BRIDGE_DELIVERY", "[]"),
            // The right name, not the kubelet's value.
            ("SSE_BRIDGE_PORT", "8080"),
            ("SSE_BRIDGE_PORT", "http://10.0.0.1:8080"),
            ("SSE_BRIDGE_PORT", "TCP://10.0.0.1:8080"),
            ("SSE_BRIDGE_SERVICE_HOST", "bridge.example"),
            ("SSE_BRIDGE_SERVICE_PORT", "08080"),
            ("SSE_BRIDGE_SERVICE_PORT", "0"),
            ("SSE_BRIDGE_SERVICE_PORT", "+80"),
            ("SSE_BRIDGE_PORT_8080_TCP", "tcp://10.0.0.1:9090"),
            ("SSE_BRIDGE_PORT_8080_TCP", "udp://10.0.0.1:8080"),
            ("SSE_BRIDGE_PORT_8080_TCP_PORT", "9090"),
            ("SSE_BRIDGE_PORT_8080_TCP_PROTO", "TCP"),
            // Names the kubelet never writes.
            ("SSE_BRIDGE_PORT_8080_HTTP", "tcp://10.0.0.1:8080"),
            ("SSE_BRIDGE_PORT_8080_TCP_HOST", "10.0.0.1"),
            ("SSE_BRIDGE_PORT_70000_TCP_PORT", "70000"),
            ("SSE_BRIDGE_SERVICE_PORT_8080", "8080"),
            ("SSE_BRIDGE_SERVICE_PORT_A_VERY_LONG_PORT_NAME", "8080"),
            ("SSE_BRIDGE__X_SERVICE_HOST", "10.0.0.1"),
            ("SSE_BRIDGE_X__Y_SERVICE_HOST", "10.0.0.1"),
            ("SSE_BRIDGE_admin_SERVICE_HOST", "10.0.0.1"),
            ("SSE_BRIDGEX_SERVICE_HOST", "10.0.0.1"),
            ("OTHER_SERVICE_HOST", "10.0.0.1"),
        ] {
            assert!(!is_service_link(P, k, v), "{k}={v}");
        }
    }
}
