//! TLS and broker credentials as configured: `[server.tls]` (the public listener), the client
//! side of a broker connection (`[nats.tls]`, `[jetstream.tls]`, `[redis.tls]`,
//! `[redis_streams.tls]`), and where a secret comes from (a file or an environment variable,
//! never the configuration file itself).
//!
//! Plain data and the checks that need no file: which settings go together. Reading the files
//! (readable, PEM parses, key matches certificate) is `crate::tls_files`, run by
//! `--check-config` and at startup.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::check::{Checked, Invalid};

/// TLS on the public listener. Absent: plain HTTP (HTTP/1.1 and h2c), as behind an ingress.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM certificate chain (leaf first). Re-read when it changes on disk (cert-manager and
    /// certbot replace it by an atomic rename); the next connection gets the new one.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the leaf certificate.
    pub key_file: PathBuf,
    /// PEM CA certificates that client certificates must chain to. Set: every client must
    /// present one (mutual TLS). Unset: no client certificate is asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
}

impl ServerTlsConfig {
    /// Both files are named (serde requires them; an empty string is caught here).
    pub fn check(&self) -> Checked {
        if self.cert_file.as_os_str().is_empty() {
            return Err(Invalid::new("server.tls.cert_file", "must name a file"));
        }
        if self.key_file.as_os_str().is_empty() {
            return Err(Invalid::new("server.tls.key_file", "must name a file"));
        }
        Ok(())
    }
}

/// TLS from the bridge to a broker. For NATS, TLS is used when the server asks for it, the URL
/// is `tls://`, or `required`; for Redis, when the URL is `rediss://`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ClientTlsConfig {
    /// PEM CA certificates the broker's certificate must chain to (a private CA). Unset: the
    /// system's trusted roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for brokers that verify clients (mutual TLS); with
    /// `key_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Refuse to talk to a broker without TLS (NATS; for Redis, use a `rediss://` URL).
    pub required: bool,
}

impl ClientTlsConfig {
    /// A client certificate comes with its key. `section` is `nats.tls`, `redis.tls`, ….
    pub fn check(&self, section: &str) -> Checked {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => Err(Invalid::new(format!("{section}.key_file"), "is required with cert_file")),
            (None, Some(_)) => Err(Invalid::new(format!("{section}.cert_file"), "is required with key_file")),
            _ => Ok(()),
        }
    }

    /// Whether anything beyond the defaults is set.
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.required
    }
}

/// Where a secret comes from: a file (a mounted Kubernetes Secret) or an environment variable
/// (its name, not its value). Checked so that at most one is given.
pub fn check_secret_source(key: &str, file: Option<&PathBuf>, env: Option<&String>) -> Checked {
    if file.is_some() && env.is_some() {
        return Err(Invalid::new(format!("{key}_file"), format!("and {key}_env are both set: use one")));
    }
    if let Some(name) = env
        && (name.is_empty() || name.contains('='))
    {
        return Err(Invalid::new(format!("{key}_env"), format!("{name:?}: not an environment variable name")));
    }
    Ok(())
}
