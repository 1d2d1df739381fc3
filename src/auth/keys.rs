//! Verification keys: the HS256 secret, or a PEM public key or JWKS document on disk that is
//! re-read when it changes (a rotated Secret reaches the bridge without a restart). A file
//! that no longer loads keeps the keys loaded before.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{Jwk, KeyAlgorithm, PublicKeyUse};
use parking_lot::Mutex;
use serde_json::Value;
use tracing::{info, warn};

use super::token::{TokenError, alg_name, algorithm_of, family_of};
use crate::config::{AuthConfig, Invalid, JwtAlgorithm};

/// Largest key file read (PEM or JWKS).
const MAX_KEY_FILE_BYTES: u64 = 1024 * 1024;
/// A key file is checked for changes at most this often (one `stat` per interval, not per
/// request).
pub const KEY_FILE_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Keys of a JWKS that are used; more are ignored (with a warning).
const MAX_JWKS_KEYS: usize = 64;

/// Verification keys, with the `kid` each was published under.
pub(super) struct KeySet {
    keys: Vec<(Option<String>, DecodingKey)>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet").field("keys", &self.keys.len()).finish()
    }
}

impl KeySet {
    /// The key to verify a token naming `kid` with.
    pub(super) fn select(&self, kid: Option<&str>) -> Result<&DecodingKey, TokenError> {
        match kid {
            // A single key (secret, PEM, or a one-key JWKS) verifies any kid: the signature
            // decides. Several keys: the kid must name one.
            _ if self.keys.len() == 1 => Ok(&self.keys[0].1),
            Some(kid) => {
                self.keys.iter().find(|(k, _)| k.as_deref() == Some(kid)).map(|(_, d)| d).ok_or(TokenError::UnknownKey)
            }
            None => Err(TokenError::AmbiguousKey),
        }
    }
}

/// How a key file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileFormat {
    Pem,
    Jwks,
}

/// `(mtime, length)`: what "the file changed" means.
type Stamp = (Option<SystemTime>, u64);

/// Where the keys come from: fixed (a secret) or a watched file.
#[derive(Debug)]
pub(super) enum Keys {
    Secret(Arc<KeySet>),
    File(FileKeys),
}

/// A key file and what was last loaded from it.
#[derive(Debug)]
pub(super) struct FileKeys {
    path: PathBuf,
    format: FileFormat,
    algorithm: JwtAlgorithm,
    state: Mutex<FileState>,
}

/// The keys in use and the file versions seen.
#[derive(Debug)]
struct FileState {
    keys: Arc<KeySet>,
    /// Stamp of the file the keys came from.
    loaded: Option<Stamp>,
    /// Stamp of the last version that could not be loaded (warned about once).
    failed: Option<Stamp>,
    checked: Instant,
}

impl Keys {
    /// Loads the configured key (None: none configured); the error names the key of the
    /// file that cannot be used.
    pub(super) fn from_config(cfg: &AuthConfig) -> Result<Option<Keys>, Invalid> {
        if let Some(secret) = &cfg.secret {
            let key = DecodingKey::from_secret(secret.as_bytes());
            return Ok(Some(Keys::Secret(Arc::new(KeySet { keys: vec![(None, key)] }))));
        }
        let (path, format, key) = match (&cfg.public_key_file, &cfg.jwks_file) {
            (Some(p), _) => (p, FileFormat::Pem, "auth.public_key_file"),
            (None, Some(p)) => (p, FileFormat::Jwks, "auth.jwks_file"),
            (None, None) => return Ok(None),
        };
        let (keys, stamp) = load_key_file(path, format, cfg.algorithm).map_err(|r| Invalid::new(key, r))?;
        Ok(Some(Keys::File(FileKeys {
            path: path.clone(),
            format,
            algorithm: cfg.algorithm,
            state: Mutex::new(FileState {
                keys: Arc::new(keys),
                loaded: Some(stamp),
                failed: None,
                checked: Instant::now(),
            }),
        })))
    }

    /// Which kind of key is configured, for the startup log line.
    pub(super) fn describe(&self) -> &'static str {
        match self {
            Keys::Secret(_) => "secret",
            Keys::File(f) if f.format == FileFormat::Pem => "public_key_file",
            Keys::File(_) => "jwks_file",
        }
    }

    /// The keys to verify with now, re-reading the file if it changed (checked at most once
    /// per [`KEY_FILE_CHECK_INTERVAL`]). A file that no longer loads keeps the previous keys.
    pub(super) fn current(&self) -> Arc<KeySet> {
        let f = match self {
            Keys::Secret(k) => return k.clone(),
            Keys::File(f) => f,
        };
        let mut st = f.state.lock();
        if st.checked.elapsed() < KEY_FILE_CHECK_INTERVAL {
            return st.keys.clone();
        }
        st.checked = Instant::now();
        let stamp = std::fs::metadata(&f.path).ok().map(|m| (m.modified().ok(), m.len()));
        if stamp.is_none() || stamp == st.loaded || stamp == st.failed {
            if stamp.is_none() && st.failed != Some((None, u64::MAX)) {
                warn!(path = %f.path.display(), "Key file is gone; keeping the keys loaded before.");
                st.failed = Some((None, u64::MAX));
            }
            return st.keys.clone();
        }
        match load_key_file(&f.path, f.format, f.algorithm) {
            Ok((keys, stamp)) => {
                info!(path = %f.path.display(), keys = keys.keys.len(), "Key file changed; keys reloaded.");
                st.keys = Arc::new(keys);
                st.loaded = Some(stamp);
                st.failed = None;
            }
            Err(reason) => {
                warn!(path = %f.path.display(), %reason, "Key file changed but cannot be used; keeping the keys loaded before.");
                st.failed = stamp;
            }
        }
        st.keys.clone()
    }
}

/// Reads and parses a key file, with the stamp it had.
fn load_key_file(path: &Path, format: FileFormat, alg: JwtAlgorithm) -> Result<(KeySet, Stamp), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > MAX_KEY_FILE_BYTES {
        return Err(format!("{}: larger than {MAX_KEY_FILE_BYTES} bytes", path.display()));
    }
    let stamp = (meta.modified().ok(), meta.len());
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let keys = match format {
        FileFormat::Pem => {
            let key = match alg {
                JwtAlgorithm::RS256 => DecodingKey::from_rsa_pem(&bytes),
                JwtAlgorithm::ES256 => DecodingKey::from_ec_pem(&bytes),
                JwtAlgorithm::HS256 => return Err("HS256 verifies with auth.secret, not a key file".into()),
            }
            .map_err(|e| format!("{}: not a PEM public key for {} ({e})", path.display(), alg_name(alg)))?;
            vec![(None, key)]
        }
        FileFormat::Jwks => parse_jwks(&bytes, alg).map_err(|e| format!("{}: {e}", path.display()))?,
    };
    Ok((KeySet { keys }, stamp))
}

/// The usable keys of a JWKS document: signature keys of the configured algorithm's family
/// (and, when a key names its `alg`, that algorithm). Keys that do not parse are skipped.
fn parse_jwks(bytes: &[u8], alg: JwtAlgorithm) -> Result<Vec<(Option<String>, DecodingKey)>, String> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON ({e})"))?;
    let Some(Value::Array(list)) = doc.get("keys") else {
        return Err("not a JWKS document (no \"keys\" array)".into());
    };
    let mut keys = Vec::new();
    let mut skipped = 0usize;
    for v in list {
        let Ok(jwk) = serde_json::from_value::<Jwk>(v.clone()) else {
            skipped += 1;
            continue;
        };
        let usable = !matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature)
            && jwk.common.key_algorithm.is_none_or(|a| a == KeyAlgorithm::from(algorithm_of(alg)));
        match DecodingKey::from_jwk(&jwk) {
            Ok(k) if usable && k.family() == family_of(alg) => keys.push((jwk.common.key_id.clone(), k)),
            _ => skipped += 1,
        }
    }
    if keys.len() > MAX_JWKS_KEYS {
        warn!(keys = keys.len(), used = MAX_JWKS_KEYS, "JWKS holds more keys than are used.");
        keys.truncate(MAX_JWKS_KEYS);
    }
    if keys.is_empty() {
        return Err(format!("no usable {} signature key among {} keys", alg_name(alg), list.len()));
    }
    if skipped > 0 {
        info!(used = keys.len(), skipped, "JWKS keys of other algorithms or uses are ignored.");
    }
    Ok(keys)
}
