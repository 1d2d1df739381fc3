//! How the bridge authenticates to NATS and secures the connection, shared by the core NATS
//! source, the JetStream source and the resume reader: a credentials file (JWT + NKey, NATS
//! 2.x decentralized auth), an NKey seed, or a token (from a file or the environment), and TLS
//! with a private CA and a client certificate. async-nats does each itself; this file maps the
//! configuration onto its [`ConnectOptions`] in one place, so the three connections can never
//! disagree.
//!
//! Secrets are read when a client is built (each session of the JetStream source, once for the
//! core source, which reconnects with the same client): a rotated credentials file is picked up
//! by the next JetStream session and by a restart. They are never logged.
//!
//! async-nats reports a refused connection attempt only by its kind ("authorization violation",
//! "TLS error"); [`ConnectReport`] turns those into one warning per distinct reason naming the
//! source, with a hint at the settings that usually cause it.

use std::path::PathBuf;
use std::sync::Arc;

use async_nats::ConnectOptions;
use parking_lot::Mutex;
use tracing::warn;

use crate::config::{ClientTlsConfig, JetStreamConfig, NatsConfig};
use crate::tls_files::{self, LastTlsError, TlsFileError};

/// The authentication and TLS settings of one NATS section (`[nats]` or `[jetstream]`).
#[derive(Debug, Clone)]
pub struct NatsSecurity {
    /// `nats` or `jetstream`: the section, for error messages.
    section: &'static str,
    credentials_file: Option<PathBuf>,
    nkey_seed_file: Option<PathBuf>,
    token_file: Option<PathBuf>,
    token_env: Option<String>,
    tls: ClientTlsConfig,
    /// Why the last TLS handshake failed to verify the server (async-nats says "IO error").
    last_tls_error: LastTlsError,
}

impl NatsSecurity {
    /// The settings of `[nats]`.
    pub fn of_nats(c: &NatsConfig) -> Self {
        NatsSecurity {
            section: "nats",
            credentials_file: c.credentials_file.clone(),
            nkey_seed_file: c.nkey_seed_file.clone(),
            token_file: c.token_file.clone(),
            token_env: c.token_env.clone(),
            tls: c.tls.clone(),
            last_tls_error: LastTlsError::default(),
        }
    }

    /// The settings of `[jetstream]`.
    pub fn of_jetstream(c: &JetStreamConfig) -> Self {
        NatsSecurity {
            section: "jetstream",
            credentials_file: c.credentials_file.clone(),
            nkey_seed_file: c.nkey_seed_file.clone(),
            token_file: c.token_file.clone(),
            token_env: c.token_env.clone(),
            tls: c.tls.clone(),
            last_tls_error: LastTlsError::default(),
        }
    }

    /// Every file these settings name, read and parsed as a connection will (for
    /// `--check-config`): the credentials file has a JWT and a seed, the seed is a user seed,
    /// the token is there, the TLS files parse and match.
    pub fn check(&self) -> Result<(), TlsFileError> {
        let s = self.section;
        if let Some(path) = &self.credentials_file {
            let key = format!("{s}.credentials_file");
            let text = std::fs::read_to_string(path).map_err(|e| TlsFileError {
                key: key.clone(),
                path: path.clone(),
                reason: format!("cannot read: {e}"),
            })?;
            ConnectOptions::with_credentials(&text).map_err(|e| TlsFileError {
                key,
                path: path.clone(),
                reason: format!("not a NATS credentials file (a user JWT and an NKey seed): {e}"),
            })?;
        }
        if let Some(path) = &self.nkey_seed_file {
            self.nkey_seed(path)?;
        }
        tls_files::secret(&format!("{s}.token"), self.token_file.as_ref(), self.token_env.as_ref())?;
        tls_files::check_client(&format!("{s}.tls"), &self.tls)
    }

    fn nkey_seed(&self, path: &PathBuf) -> Result<String, TlsFileError> {
        let key = format!("{}.nkey_seed_file", self.section);
        let seed = tls_files::secret(&format!("{}.nkey_seed", self.section), Some(path), None)?.unwrap_or_default();
        nkeys::KeyPair::from_seed(&seed).map_err(|e| TlsFileError {
            key,
            path: path.clone(),
            reason: format!("not an NKey seed (\"SU…\"): {e}"),
        })?;
        Ok(seed)
    }

    /// A reporter of failed connection attempts that knows why the last TLS verification
    /// failed.
    pub fn report(&self) -> ConnectReport {
        ConnectReport { last: Default::default(), tls: self.last_tls_error.clone() }
    }

    /// `opts` with the authentication and TLS settings applied; fails naming the key and file
    /// when one cannot be read.
    pub async fn apply(&self, mut opts: ConnectOptions) -> Result<ConnectOptions, TlsFileError> {
        let s = self.section;
        if let Some(path) = &self.credentials_file {
            opts = opts.credentials_file(path).await.map_err(|e| TlsFileError {
                key: format!("{s}.credentials_file"),
                path: path.clone(),
                reason: e.to_string(),
            })?;
        }
        if let Some(path) = &self.nkey_seed_file {
            opts = opts.nkey(self.nkey_seed(path)?);
        }
        if let Some(token) =
            tls_files::secret(&format!("{s}.token"), self.token_file.as_ref(), self.token_env.as_ref())?
        {
            opts = opts.token(token);
        }
        if self.tls.ca_file.is_some() || self.tls.cert_file.is_some() {
            let tls = tls_files::client_config(&format!("{s}.tls"), &self.tls, self.last_tls_error.clone())?;
            opts = opts.tls_client_config(tls);
        }
        if self.tls.required {
            opts = opts.require_tls(true);
        }
        Ok(opts)
    }
}

/// A JetStream context on `client`: in a JetStream `domain` (a leaf node's), under an explicit
/// API `prefix` (an account import), or the default `$JS.API`.
pub fn jetstream_context(
    client: async_nats::Client,
    domain: Option<&str>,
    api_prefix: Option<&str>,
) -> async_nats::jetstream::Context {
    match (domain, api_prefix) {
        (Some(d), _) => async_nats::jetstream::with_domain(client, d),
        (None, Some(p)) => async_nats::jetstream::with_prefix(client, p),
        (None, None) => async_nats::jetstream::new(client),
    }
}

/// Reports why connection attempts fail, once per distinct reason until the next successful
/// connection (async-nats retries every few seconds; the log gets one line, not one per try).
#[derive(Debug, Clone, Default)]
pub struct ConnectReport {
    last: Arc<Mutex<Option<String>>>,
    tls: LastTlsError,
}

impl ConnectReport {
    /// A client event: a client or server error is logged once per reason; `Connected` resets.
    pub fn event(&self, source: &'static str, url: &str, event: &async_nats::Event) {
        use async_nats::Event;
        let reason = match event {
            Event::Connected => {
                *self.last.lock() = None;
                return;
            }
            Event::ClientError(e) => e.to_string(),
            Event::ServerError(e) => e.to_string(),
            _ => return,
        };
        // async-nats reports a refused certificate as an I/O error: say what was refused.
        let reason = match self.tls.lock().take() {
            Some(tls) => format!("TLS handshake failed: {tls} ({reason})"),
            None => reason,
        };
        let mut last = self.last.lock();
        if last.as_deref() == Some(reason.as_str()) {
            return;
        }
        warn!(source, url = %redacted(url), reason = %reason, hint = hint(&reason), "Broker refused or failed the connection; retrying with backoff.");
        *last = Some(reason);
    }
}

/// What to look at for a failure async-nats reports only by its kind.
fn hint(reason: &str) -> &'static str {
    let r = reason.to_ascii_lowercase();
    if r.contains("authorization") || r.contains("authentication") {
        "check credentials_file / nkey_seed_file / token_file / token_env and the server's users"
    } else if r.contains("tls") {
        "check tls.ca_file (the CA that signed the server), tls.cert_file/key_file (mutual TLS) and tls.required"
    } else {
        "check the URL and that the server is reachable"
    }
}

/// The URLs without passwords, for logs.
pub fn redacted(urls: &str) -> String {
    urls.split(',')
        .map(|u| match url::Url::parse(u.trim()) {
            Ok(mut p) if p.password().is_some() => {
                let _ = p.set_password(Some("***"));
                p.to_string()
            }
            _ => u.trim().to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Why a NATS client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NatsConnectError {
    /// A configured file or secret cannot be used (names key and file).
    #[error("{0}")]
    Files(#[from] TlsFileError),
    /// The server could not be reached, or refused the TLS handshake or the credentials.
    #[error("{0}")]
    Connect(#[from] async_nats::ConnectError),
    /// The server's certificate was refused (async-nats reports it as an I/O error).
    #[error("TLS handshake failed: {0} ({1})")]
    Tls(String, async_nats::ConnectError),
}

/// Everything a JetStream connection needs from `[jetstream]`: the URL, authentication and
/// TLS, and the domain or API prefix. Shared by the JetStream source and the resume reader.
#[derive(Debug, Clone)]
pub struct JetStreamConnect {
    url: String,
    security: NatsSecurity,
    domain: Option<String>,
    api_prefix: Option<String>,
}

impl JetStreamConnect {
    /// The connection settings of `[jetstream]`.
    pub fn new(cfg: &JetStreamConfig) -> Self {
        JetStreamConnect {
            url: cfg.url.clone(),
            security: NatsSecurity::of_jetstream(cfg),
            domain: cfg.domain.clone(),
            api_prefix: cfg.api_prefix.clone(),
        }
    }

    /// Connects with `opts` (the caller's name, timeouts, callbacks) plus the configured
    /// authentication and TLS; returns the client and its JetStream context.
    pub async fn connect(
        &self,
        opts: ConnectOptions,
    ) -> Result<(async_nats::Client, async_nats::jetstream::Context), NatsConnectError> {
        let connected = self.security.apply(opts).await?.connect(self.url.as_str()).await;
        let client = connected.map_err(|e| match self.security.last_tls_error.lock().take() {
            Some(tls) => NatsConnectError::Tls(tls, e),
            None => NatsConnectError::Connect(e),
        })?;
        let ctx = jetstream_context(client.clone(), self.domain.as_deref(), self.api_prefix.as_deref());
        Ok((client, ctx))
    }
}
