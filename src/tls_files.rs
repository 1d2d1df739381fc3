//! The files behind every TLS and credential setting: PEM certificates, private keys and CA
//! bundles, and secrets read from a file or the environment.
//!
//! One place reads them, so the public listener (`crate::sse::tls`), the broker connections
//! (`crate::sources`) and `--check-config` (`crate::startup`) accept and refuse the same files
//! in the same words: every error names the key, the file and the reason ("no certificate in
//! it", "key does not match the certificate", "expired on …"). Whatever can be checked offline
//! is checked before anything starts; what cannot (a wrong CA for this broker, credentials the
//! broker refuses) is the sources' one log line and their status.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ClientTlsConfig, Invalid, ServerTlsConfig};

/// A setting's file that cannot be used: the key that names it, the file, and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("key `{key}`: {}: {reason}", path.display())]
pub struct TlsFileError {
    /// The configuration key (`server.tls.cert_file`).
    pub key: String,
    /// The file it names.
    pub path: PathBuf,
    /// One line for the operator.
    pub reason: String,
}

impl TlsFileError {
    fn new(key: &str, path: &Path, reason: impl Into<String>) -> Self {
        TlsFileError { key: key.to_owned(), path: path.to_owned(), reason: reason.into() }
    }
}

impl From<TlsFileError> for Invalid {
    fn from(e: TlsFileError) -> Self {
        Invalid::new(e.key, format!("{}: {}", e.path.display(), e.reason))
    }
}

/// The one crypto provider the bridge uses (ring: the one async-nats builds), passed
/// explicitly so nothing depends on a process-wide default.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|e| TlsFileError::new(key, path, format!("cannot read: {e}")))
}

/// Every certificate in a PEM file, in order (a chain: leaf first). None is an error.
pub fn certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsFileError::new(key, path, format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsFileError::new(key, path, "no CERTIFICATE block in it"));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    let pem = read(key, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsFileError::new(key, path, format!("no usable private key: {e}")))
}

/// A certificate chain with its key, checked: the chain parses, the key parses and matches the
/// leaf, and the leaf has not expired. `prefix` is the table (`server.tls`, `nats.tls`).
pub fn certified_key(prefix: &str, cert: &Path, key: &Path) -> Result<CertifiedKey, TlsFileError> {
    let (cert_key, key_key) = (format!("{prefix}.cert_file"), format!("{prefix}.key_file"));
    let chain = certificates(&cert_key, cert)?;
    check_not_expired(&cert_key, cert, &chain[0])?;
    let der = private_key(&key_key, key)?;
    CertifiedKey::from_der(chain, der, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            TlsFileError::new(&key_key, key, format!("does not match the certificate in {}", cert.display()))
        }
        other => TlsFileError::new(&key_key, key, format!("unusable key: {other}")),
    })
}

/// The CA certificates of a PEM bundle as trust anchors.
pub fn roots(key: &str, path: &Path) -> Result<RootCertStore, TlsFileError> {
    let mut store = RootCertStore::empty();
    for (i, c) in certificates(key, path)?.into_iter().enumerate() {
        store
            .add(c)
            .map_err(|e| TlsFileError::new(key, path, format!("certificate #{} is not a usable CA: {e}", i + 1)))?;
    }
    Ok(store)
}

/// A secret from a file (trimmed: a trailing newline is not part of it) or from the
/// environment variable named by `env`; `None` when neither is set. `key` is the setting
/// without its `_file`/`_env` suffix (`nats.token`). The value is never logged.
pub fn secret(key: &str, file: Option<&PathBuf>, env: Option<&String>) -> Result<Option<String>, TlsFileError> {
    if let Some(path) = file {
        let k = format!("{key}_file");
        let bytes = read(&k, path)?;
        let s = String::from_utf8(bytes).map_err(|_| TlsFileError::new(&k, path, "not UTF-8 text"))?;
        let s = s.trim();
        if s.is_empty() {
            return Err(TlsFileError::new(&k, path, "is empty"));
        }
        return Ok(Some(s.to_owned()));
    }
    if let Some(name) = env {
        let k = format!("{key}_env");
        return match std::env::var(name) {
            Ok(v) if !v.trim().is_empty() => Ok(Some(v.trim().to_owned())),
            _ => {
                Err(TlsFileError::new(&k, Path::new(&format!("${name}")), "the environment variable is unset or empty"))
            }
        };
    }
    Ok(None)
}

/// Everything about `[server.tls]` that can be checked offline.
pub fn check_server(cfg: &ServerTlsConfig) -> Result<(), TlsFileError> {
    certified_key("server.tls", &cfg.cert_file, &cfg.key_file)?;
    if let Some(ca) = &cfg.client_ca_file {
        roots("server.tls.client_ca_file", ca)?;
    }
    Ok(())
}

/// Everything about a broker's `tls` table that can be checked offline; `prefix` is
/// `nats.tls`, `redis.tls`, ….
pub fn check_client(prefix: &str, cfg: &ClientTlsConfig) -> Result<(), TlsFileError> {
    if let Some(ca) = &cfg.ca_file {
        roots(&format!("{prefix}.ca_file"), ca)?;
    }
    if let (Some(cert), Some(key)) = (&cfg.cert_file, &cfg.key_file) {
        certified_key(prefix, cert, key)?;
    }
    Ok(())
}

/// Fails on a certificate whose validity ended: the broker or the browser would refuse it at
/// the first handshake, with a less helpful message. A certificate that cannot be read this
/// far is left to rustls, which says why.
fn check_not_expired(key: &str, path: &Path, cert: &CertificateDer<'_>) -> Result<(), TlsFileError> {
    let Some(not_after) = der::not_after(cert) else { return Ok(()) };
    if not_after < SystemTime::now() {
        let when = httpdate::fmt_http_date(not_after);
        return Err(TlsFileError::new(key, path, format!("the certificate expired on {when}")));
    }
    Ok(())
}

/// Just enough DER to find a certificate's `notAfter` (RFC 5280 §4.1: Certificate →
/// TBSCertificate → [version] serial signature issuer validity), without an X.509 crate.
mod der {
    use std::time::{Duration, SystemTime};

    /// One TLV: (tag, contents, rest).
    fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, b) = b.split_first()?;
        let (&first, mut b) = b.split_first()?;
        let len = if first < 0x80 {
            first as usize
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || b.len() < n {
                return None;
            }
            let len = b[..n].iter().fold(0usize, |acc, &x| (acc << 8) | x as usize);
            b = &b[n..];
            len
        };
        (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
    }

    /// The end of the certificate's validity period.
    pub fn not_after(cert: &[u8]) -> Option<SystemTime> {
        let (_, cert, _) = tlv(cert)?;
        let (_, tbs, _) = tlv(cert)?;
        let mut rest = tbs;
        let (tag, _, r) = tlv(rest)?;
        if tag == 0xa0 {
            rest = r; // explicit version
        }
        let (_, _, r) = tlv(rest)?; // serial
        let (_, _, r) = tlv(r)?; // signature algorithm
        let (_, _, r) = tlv(r)?; // issuer
        let (_, validity, _) = tlv(r)?;
        let (_, _, r) = tlv(validity)?; // notBefore
        let (tag, t, _) = tlv(r)?;
        parse_time(tag, std::str::from_utf8(t).ok()?)
    }

    /// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
    fn parse_time(tag: u8, s: &str) -> Option<SystemTime> {
        let s = s.strip_suffix('Z')?;
        let (year, s) = match tag {
            0x17 => {
                let y: i64 = s.get(..2)?.parse().ok()?;
                (if y < 50 { 2000 + y } else { 1900 + y }, &s[2..])
            }
            0x18 => (s.get(..4)?.parse().ok()?, &s[4..]),
            _ => return None,
        };
        let n = |i: usize| -> Option<i64> { s.get(i..i + 2)?.parse().ok() };
        let (month, day, h, m, sec) = (n(0)?, n(2)?, n(4)?, n(6)?, n(8)?);
        let days = days_from_civil(year, month, day);
        let secs = days * 86_400 + h * 3600 + m * 60 + sec;
        u64::try_from(secs).ok().map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn times_parse() {
            let t = parse_time(0x17, "700102000000Z").unwrap();
            assert_eq!(t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(), 86_400);
            let t = parse_time(0x18, "20000301000000Z").unwrap();
            assert_eq!(t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(), 951_868_800);
        }
    }
}

/// The last certificate-verification failure of a client connection, kept for the log line:
/// some clients (async-nats) report a failed handshake only as "IO error".
pub type LastTlsError = Arc<parking_lot::Mutex<Option<String>>>;

/// A rustls client configuration for a broker's `tls` table: its CA (or the system's roots),
/// its client certificate; verification failures are recorded in `last_error`.
pub fn client_config(
    prefix: &str,
    cfg: &ClientTlsConfig,
    last_error: LastTlsError,
) -> Result<rustls::ClientConfig, TlsFileError> {
    let provider = provider();
    let roots = match &cfg.ca_file {
        Some(ca) => roots(&format!("{prefix}.ca_file"), ca)?,
        None => {
            let mut store = RootCertStore::empty();
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = store.add(c);
            }
            store
        }
    };
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| {
            TlsFileError::new(
                &format!("{prefix}.ca_file"),
                cfg.ca_file.as_deref().unwrap_or(Path::new("")),
                e.to_string(),
            )
        })?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(RecordingVerifier { inner, last_error }));
    match (&cfg.cert_file, &cfg.key_file) {
        (Some(cert), Some(key)) => {
            let chain = certified_key(prefix, cert, key)?.cert;
            let der = private_key(&format!("{prefix}.key_file"), key)?;
            builder
                .with_client_auth_cert(chain, der)
                .map_err(|e| TlsFileError::new(&format!("{prefix}.key_file"), key, e.to_string()))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// The standard WebPKI verification, remembering why it failed.
#[derive(Debug)]
struct RecordingVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    last_error: LastTlsError,
}

impl rustls::client::danger::ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let r = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        if let Err(e) = &r {
            *self.last_error.lock() = Some(e.to_string());
        }
        r
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
