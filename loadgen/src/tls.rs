//! The client side of `https://` targets: rustls trusting one CA file (the benchmark's own test
//! CA), ALPN `http/1.1`, and a stream type that is a plain socket or a TLS one.
//!
//! The load generator speaks HTTP/1.1 on raw sockets; over TLS it speaks the same bytes inside
//! the TLS stream, so a server's cost of TLS (handshakes, record encryption) shows in its CPU
//! per delivery next to the plain run. Shared with `sse-churn` (included by path).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

/// A connection to the target: plain TCP, or TLS over it.
pub type Stream = Either<TcpStream, TlsStream<TcpStream>>;

/// How to reach a target: plain, or TLS with the name to verify.
#[derive(Clone)]
pub struct Tls {
    connector: TlsConnector,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

impl Tls {
    /// A client trusting the certificates in the PEM file `ca_file` (and nothing else),
    /// offering `http/1.1` by ALPN, TLS 1.2 or 1.3.
    pub fn new(ca_file: &Path) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca_file).map_err(|e| format!("{}: {e}", ca_file.display()))?;
        for c in certs {
            let c = c.map_err(|e| format!("{}: {e}", ca_file.display()))?;
            roots.add(c).map_err(|e| format!("{}: {e}", ca_file.display()))?;
        }
        if roots.is_empty() {
            return Err(format!("{}: no CERTIFICATE in the file", ca_file.display()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls { connector: TlsConnector::from(Arc::new(cfg)) })
    }

    /// The TLS handshake on `tcp`, verifying the server's certificate for `host` (a DNS name
    /// or an IP address, as written in the URL).
    pub async fn connect(&self, host: &str, tcp: TcpStream) -> Result<Stream, String> {
        let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_owned())
            .map_err(|e| format!("TLS name {host:?}: {e}"))?;
        let s = self.connector.connect(name, tcp).await.map_err(|e| format!("TLS handshake: {e}"))?;
        Ok(Either::Right(s))
    }
}

/// `tcp` as it is, or after a TLS handshake when `tls` is set.
pub async fn wrap(tls: Option<&Tls>, host: &str, tcp: TcpStream) -> Result<Stream, String> {
    match tls {
        Some(t) => t.connect(host, tcp).await,
        None => Ok(Either::Left(tcp)),
    }
}
