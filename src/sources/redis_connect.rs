//! Where a Redis connection goes and how it authenticates, shared by the pub/sub source, the
//! Streams source and the resume reader: one server (`url`), or the master of a Sentinel
//! group; TLS with a private CA and a client certificate (`rediss://`); an ACL user with a
//! password from a file or the environment. Each is the redis crate's own support
//! (`tls-rustls` with `TlsCertificates`, `sentinel`'s `SentinelClient`); this file maps the
//! configuration onto it.
//!
//! A Redis Cluster (`cluster_nodes`) is the redis crate's `cluster-async` client: commands go
//! to the node owning their key's slot and follow `MOVED`/`ASK`, and subscriptions are made on
//! the node owning the channel's slot and made again when a node's connection comes back or
//! the slot map changes. It speaks RESP3, which the crate's cluster pub/sub requires.
//!
//! With Sentinel, every new connection asks the Sentinels for the current master (the crate
//! also checks the answer with `ROLE`), so a session that ends because the master died
//! reconnects to the promoted replica and re-subscribes; until the Sentinels have promoted
//! one, attempts fail and back off like any other outage.

use std::path::PathBuf;
use std::sync::Arc;

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, IntoConnectionInfo, ProtocolVersion, TlsCertificates, TlsMode};

use crate::config::{ClientTlsConfig, RedisConfig, RedisStreamsConfig};
use crate::tls_files::{self, TlsFileError};

/// Why a Redis client could not be made from the settings.
#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    /// A configured file or secret cannot be used (names key and file).
    #[error("{0}")]
    Files(#[from] TlsFileError),
    /// The redis crate refused the settings (an unusable URL).
    #[error("{0}")]
    Client(#[from] redis::RedisError),
}

/// The connection settings of `[redis]` or `[redis_streams]`.
#[derive(Debug, Clone)]
pub struct RedisConnect {
    /// `redis` or `redis_streams`: the section, for error messages.
    section: &'static str,
    url: String,
    username: Option<String>,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
    tls: ClientTlsConfig,
    sentinels: Vec<String>,
    master_name: Option<String>,
    sentinel_password_file: Option<PathBuf>,
    sentinel_password_env: Option<String>,
    cluster_nodes: Vec<String>,
}

macro_rules! of_section {
    ($section:literal, $c:expr) => {
        RedisConnect {
            section: $section,
            url: $c.url.clone(),
            username: $c.username.clone(),
            password_file: $c.password_file.clone(),
            password_env: $c.password_env.clone(),
            tls: $c.tls.clone(),
            sentinels: $c.sentinels.clone(),
            master_name: $c.master_name.clone(),
            sentinel_password_file: $c.sentinel_password_file.clone(),
            sentinel_password_env: $c.sentinel_password_env.clone(),
            cluster_nodes: $c.cluster_nodes.clone(),
        }
    };
}

impl RedisConnect {
    /// The settings of `[redis]`.
    pub fn of_redis(c: &RedisConfig) -> Self {
        of_section!("redis", c)
    }

    /// The settings of `[redis_streams]`.
    pub fn of_streams(c: &RedisStreamsConfig) -> Self {
        of_section!("redis_streams", c)
    }

    /// Every file these settings name, read and parsed (for `--check-config`).
    pub fn check(&self) -> Result<(), TlsFileError> {
        self.password()?;
        self.sentinel_password()?;
        tls_files::check_client(&format!("{}.tls", self.section), &self.tls)
    }

    fn password(&self) -> Result<Option<String>, TlsFileError> {
        tls_files::secret(
            &format!("{}.password", self.section),
            self.password_file.as_ref(),
            self.password_env.as_ref(),
        )
    }

    fn sentinel_password(&self) -> Result<Option<String>, TlsFileError> {
        tls_files::secret(
            &format!("{}.sentinel_password", self.section),
            self.sentinel_password_file.as_ref(),
            self.sentinel_password_env.as_ref(),
        )
    }

    /// Whether these settings name a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        !self.cluster_nodes.is_empty()
    }

    /// The CA and client certificate as the redis crate takes them (PEM bytes); None without a
    /// `tls` table (a `rediss://` URL then trusts the system's roots).
    fn certificates(&self) -> Result<Option<TlsCertificates>, TlsFileError> {
        if self.tls.ca_file.is_none() && self.tls.cert_file.is_none() {
            return Ok(None);
        }
        let prefix = format!("{}.tls", self.section);
        let read = |key: &str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| TlsFileError {
                key: key.into(),
                path: path.clone(),
                reason: format!("cannot read: {e}"),
            })
        };
        // Parsed here first, so a bad file is named by key rather than by the redis crate.
        tls_files::check_client(&prefix, &self.tls)?;
        let root_cert = match &self.tls.ca_file {
            Some(ca) => Some(read(&format!("{prefix}.ca_file"), ca)?),
            None => None,
        };
        let client_tls = match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(c), Some(k)) => Some(redis::ClientTlsConfig {
                client_cert: read(&format!("{prefix}.cert_file"), c)?,
                client_key: read(&format!("{prefix}.key_file"), k)?,
            }),
            _ => None,
        };
        Ok(Some(TlsCertificates { client_tls, root_cert }))
    }

    /// The target these settings describe; nothing connects yet.
    pub fn target(&self) -> Result<RedisTarget, RedisSetupError> {
        let info = self.url.as_str().into_connection_info()?;
        let mut settings = info.redis_settings().clone();
        if let Some(u) = &self.username {
            settings = settings.set_username(u);
        }
        if let Some(p) = self.password()? {
            settings = settings.set_password(p);
        }
        let certificates = self.certificates()?;
        let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
        if self.is_cluster() {
            let scheme = if tls { "rediss" } else { "redis" };
            let mut nodes = Vec::with_capacity(self.cluster_nodes.len());
            for n in &self.cluster_nodes {
                let node = format!("{scheme}://{n}").as_str().into_connection_info()?;
                nodes.push(node.set_redis_settings(settings.clone().set_protocol(ProtocolVersion::RESP3)));
            }
            let mut b = ClusterClientBuilder::new(nodes).use_protocol(ProtocolVersion::RESP3);
            if let Some(certs) = certificates {
                b = b.certs(certs);
            }
            return Ok(RedisTarget::Cluster(Box::new(b.build()?)));
        }
        let Some(master) = &self.master_name else {
            let info = info.set_redis_settings(settings);
            let client = match certificates {
                Some(certs) => redis::Client::build_with_tls(info, certs)?,
                None => redis::Client::open(info)?,
            };
            return Ok(RedisTarget::Single(Box::new(client)));
        };
        let sentinels = self.sentinels.iter().map(|s| {
            let (host, port) = s.rsplit_once(':').unwrap_or((s.as_str(), "26379"));
            let port = port.parse().unwrap_or(26379);
            match tls {
                true => ConnectionAddr::TcpTls { host: host.into(), port, insecure: false, tls_params: None },
                false => ConnectionAddr::Tcp(host.into(), port),
            }
        });
        let mut b = SentinelClientBuilder::new(sentinels, master, SentinelServerType::Master)?
            .set_client_to_redis_db(settings.db());
        if let Some(u) = settings.username() {
            b = b.set_client_to_redis_username(u);
        }
        if let Some(p) = settings.password() {
            b = b.set_client_to_redis_password(p);
        }
        if let Some(p) = self.sentinel_password()? {
            b = b.set_client_to_sentinel_password(p);
        }
        if tls {
            b = b.set_client_to_redis_tls_mode(TlsMode::Secure).set_client_to_sentinel_tls_mode(TlsMode::Secure);
            if let Some(certs) = certificates {
                b = b.set_client_to_redis_certificates(certs.clone()).set_client_to_sentinel_certificates(certs);
            }
        }
        Ok(RedisTarget::Sentinel(Arc::new(tokio::sync::Mutex::new(b.build()?))))
    }
}

/// One Redis server, the master a Sentinel group names, or a Redis Cluster.
#[derive(Clone)]
pub enum RedisTarget {
    /// The server of `url` (boxed: a client is ~240 bytes, the Sentinel handle a pointer).
    Single(Box<redis::Client>),
    /// Asked of the Sentinels at every new connection.
    Sentinel(Arc<tokio::sync::Mutex<SentinelClient>>),
    /// The nodes of a Redis Cluster (RESP3); each connection learns the slot map from them.
    Cluster(Box<ClusterClient>),
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisTarget::Single(c) => f.debug_tuple("Single").field(c).finish(),
            RedisTarget::Sentinel(_) => f.write_str("Sentinel"),
            RedisTarget::Cluster(_) => f.write_str("Cluster"),
        }
    }
}

impl RedisTarget {
    /// A client for the server to connect to now: the configured one, or the master the
    /// Sentinels name at this moment. None for a cluster (see [`Self::cluster`]).
    pub async fn client(&self) -> Option<redis::RedisResult<redis::Client>> {
        match self {
            RedisTarget::Single(c) => Some(Ok((**c).clone())),
            RedisTarget::Sentinel(s) => Some(s.lock().await.async_get_client().await),
            RedisTarget::Cluster(_) => None,
        }
    }

    /// The cluster client, when these settings name a Redis Cluster.
    pub fn cluster(&self) -> Option<&ClusterClient> {
        match self {
            RedisTarget::Cluster(c) => Some(c),
            _ => None,
        }
    }
}
