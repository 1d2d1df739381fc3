//! TLS on the public listener (`[server.tls]`): rustls, TLS 1.2 and 1.3, ALPN `h2` then
//! `http/1.1`, optional client-certificate verification, and a certificate that follows its
//! files on disk.
//!
//! Browsers speak HTTP/2 only over TLS; without it a page gets six HTTP/1.1 connections per
//! origin, so a seventh `EventSource` waits. Served here, every stream of a page shares one
//! connection.
//!
//! The certificate is re-read when its files change, as cert-manager, certbot and Kubernetes
//! Secret volumes replace them (atomic rename, or a symlink swap): [`ReloadingCert`] looks at
//! the files' identity (device, inode, size, mtime) at most once per second, during a
//! handshake, and loads a changed pair; the next connection gets it, open ones keep theirs. A
//! pair that does not load (a key that does not match yet, while the two files are replaced
//! one after the other) is logged once per change, and the previous certificate stays in use.
//!
//! The client CA (`client_ca_file`, mutual TLS) follows its file the same way: when its
//! identity changed (looked at once a second at most, when a connection is accepted), the
//! server configuration is rebuilt with a verifier for the new CA bundle (and the same
//! certificate resolver); the next handshake uses it, open connections are not re-verified. A
//! bundle that does not load is logged once per change and the previous CA stays in use. The
//! whole configuration is swapped rather than the verifier alone, because rustls asks a
//! verifier for the CA names to offer clients by reference.
//!
//! After the handshake a connection is served as a plain one would be: HTTP/2 (ALPN `h2`) by
//! hyper; HTTP/1.1 (ALPN `http/1.1`, or a client that names no protocol) by the lean HTTP/1.1
//! path of [`super::h1`] when it is a plain `GET /events`, by hyper otherwise.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{info, warn};

use crate::config::ServerTlsConfig;
use crate::tls_files::{self, TlsFileError};

/// How often, at most, the certificate files are looked at.
const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The public listener's TLS: the acceptor (rebuilt when the client CA changes) and how long a
/// handshake may take.
#[derive(Clone)]
pub struct TlsListener {
    inner: Arc<Acceptors>,
    handshake_timeout: Duration,
}

/// The acceptor in use and what it is rebuilt from.
struct Acceptors {
    resolver: Arc<ReloadingCert>,
    client_ca_file: Option<PathBuf>,
    current: Mutex<CurrentAcceptor>,
}

/// The acceptor for the client CA file as it was when last looked at.
struct CurrentAcceptor {
    acceptor: TlsAcceptor,
    /// The client CA file's stamp when last loaded or last tried.
    ca_stamp: Option<Stamp>,
    checked_at: Instant,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener").field("handshake_timeout", &self.handshake_timeout).finish_non_exhaustive()
    }
}

impl TlsListener {
    /// Loads the certificate, its key and the client CA (when set); fails naming the key and the
    /// file. `handshake_timeout` is `server.header_read_timeout`: a client that opens a socket
    /// and stalls is closed as one that stalls in its request head.
    pub fn new(cfg: &ServerTlsConfig, handshake_timeout: Duration) -> Result<Self, TlsFileError> {
        let resolver = Arc::new(ReloadingCert::load(&cfg.cert_file, &cfg.key_file)?);
        let ca_stamp = cfg.client_ca_file.as_deref().and_then(stamp);
        let acceptor = acceptor(cfg.client_ca_file.as_deref(), &resolver)?;
        let current = Mutex::new(CurrentAcceptor { acceptor, ca_stamp, checked_at: Instant::now() });
        let inner = Arc::new(Acceptors { resolver, client_ca_file: cfg.client_ca_file.clone(), current });
        Ok(TlsListener { inner, handshake_timeout })
    }

    /// The acceptor to use now, rebuilt first if the client CA file changed (looked at once a
    /// second at most).
    fn acceptor(&self) -> TlsAcceptor {
        let mut cur = self.inner.current.lock();
        let Some(ca) = &self.inner.client_ca_file else { return cur.acceptor.clone() };
        if cur.checked_at.elapsed() < RELOAD_CHECK_INTERVAL {
            return cur.acceptor.clone();
        }
        cur.checked_at = Instant::now();
        let now = stamp(ca);
        if now == cur.ca_stamp {
            return cur.acceptor.clone();
        }
        // Remembered whether or not it loads: a broken bundle is reported once, and tried again
        // when the file changes again.
        cur.ca_stamp = now;
        match acceptor(Some(ca), &self.inner.resolver) {
            Ok(a) => {
                cur.acceptor = a;
                info!(client_ca_file = %ca.display(), "TLS client CA changed on disk; new connections are verified against it.");
            }
            Err(e) => {
                warn!(error = %e, "TLS client CA file changed but cannot be used; still verifying against the previous one.");
            }
        }
        cur.acceptor.clone()
    }

    /// The server side of the handshake on an accepted socket, bounded by the handshake
    /// timeout (a timeout is `io::ErrorKind::TimedOut`).
    pub async fn accept(&self, stream: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        match tokio::time::timeout(self.handshake_timeout, self.acceptor().accept(stream)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")),
        }
    }
}

/// A server configuration: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`, client certificates
/// verified against `client_ca` when set, the certificate from `resolver`.
fn acceptor(client_ca: Option<&Path>, resolver: &Arc<ReloadingCert>) -> Result<TlsAcceptor, TlsFileError> {
    let provider = tls_files::provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3");
    let builder = match client_ca {
        Some(ca) => {
            let key = "server.tls.client_ca_file";
            let roots = tls_files::roots(key, ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsFileError { key: key.into(), path: ca.to_owned(), reason: e.to_string() })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// What identifies a file's content without reading it: an atomic rename or a symlink swap
/// changes the inode, an in-place write the size or mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    // `metadata` follows symlinks: a Secret volume's `..data` swap shows as a new inode.
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp { dev: m.dev(), ino: m.ino(), size: m.size(), mtime: m.mtime(), mtime_nsec: m.mtime_nsec() })
}

/// The certificate in use and the files it came from.
struct Current {
    key: Arc<CertifiedKey>,
    /// The files' stamps when last loaded or last tried.
    stamps: (Option<Stamp>, Option<Stamp>),
    checked_at: Instant,
}

/// A certificate resolver that follows its files (see the module docs).
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: Mutex<Current>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert").field("cert_path", &self.cert_path).field("key_path", &self.key_path).finish()
    }
}

impl ReloadingCert {
    /// Loads the pair now; fails if it cannot be used.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsFileError> {
        let stamps = (stamp(cert_path), stamp(key_path));
        let key = Arc::new(tls_files::certified_key("server.tls", cert_path, key_path)?);
        Ok(ReloadingCert {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: Mutex::new(Current { key, stamps, checked_at: Instant::now() }),
        })
    }

    /// The certificate to serve, reloaded first if the files changed (looked at once a second
    /// at most; a stat of two files, a read only when they changed).
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut cur = self.current.lock();
        if cur.checked_at.elapsed() < RELOAD_CHECK_INTERVAL {
            return cur.key.clone();
        }
        cur.checked_at = Instant::now();
        let stamps = (stamp(&self.cert_path), stamp(&self.key_path));
        if stamps == cur.stamps {
            return cur.key.clone();
        }
        // Remembered whether or not the pair loads: a broken pair is reported once, and tried
        // again when either file changes again.
        cur.stamps = stamps;
        match tls_files::certified_key("server.tls", &self.cert_path, &self.key_path) {
            Ok(k) => {
                cur.key = Arc::new(k);
                info!(cert_file = %self.cert_path.display(), "TLS certificate changed on disk; new connections get the new one.");
            }
            Err(e) => {
                warn!(error = %e, "TLS certificate files changed but cannot be used; still serving the previous certificate.");
            }
        }
        cur.key.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}
