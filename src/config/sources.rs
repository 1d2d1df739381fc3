//! The brokers the bridge reads: `[nats]` and `[redis]` (live only), `[jetstream]` and
//! `[redis_streams]` (durable: resumes are replayed from the broker), and `[resume]`, the
//! bounds on those replays. Each section is optional; absent means that source is off.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check::{
    Checked, Invalid, NATS_SCHEMES, REDIS_SCHEMES, at_least_one, check_subjects, check_url, check_url_list,
};
use super::interest::InterestMode;
use super::tls::{ClientTlsConfig, check_secret_source};
use crate::topic::TopicFilter;

/// Durable streams a bridge may read at most: every one adds a part to every event id.
pub const MAX_DURABLE_STREAMS: usize = 16;

/// The NATS source.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URL, or several separated by commas (`nats://a:4222,nats://b:4222`).
    pub url: String,
    /// Subjects to bridge; `*` and `>` wildcards allowed.
    pub subjects: Vec<String>,
    /// Message header whose value becomes the SSE `event:` type (matched case-insensitively).
    pub event_header: String,
    /// Client name shown in the NATS server's monitoring.
    pub client_name: String,
    /// Longest wait between reconnect attempts (the backoff doubles up to this).
    #[serde(with = "humantime_serde")]
    pub reconnect_max_delay: Duration,
    /// Time one connection attempt may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Largest payload bridged; bigger messages are counted, logged (once per interval) and
    /// dropped. NATS servers cap payloads at 1 MiB by default too.
    pub max_message_bytes: usize,
    /// Bytes the NATS client may buffer for all subjects together while the ingest queue is
    /// full: each subject's buffer holds `buffer_bytes / subjects / max_message_bytes` messages
    /// (at least one). Past it the client drops, and the streams are told (`source-dropped`).
    pub buffer_bytes: usize,
    /// `"all"`: subscribe to every subject at start; `"on-demand"`: the subjects are the
    /// allowlist, and only the filters clients hold are subscribed (see `[interest]`).
    pub interest: InterestMode,
    /// NATS credentials file (`.creds`: a user JWT and its NKey seed, as `nsc` writes it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// File holding an NKey user seed (`SU…`), for servers with NKey users.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nkey_seed_file: Option<PathBuf>,
    /// File holding the authentication token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Name of the environment variable holding the authentication token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// TLS to the server: private CA, client certificate, TLS required.
    pub tls: ClientTlsConfig,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            subjects: Vec::new(),
            event_header: "Sse-Event".into(),
            client_name: "sse-bridge".into(),
            reconnect_max_delay: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            max_message_bytes: 1024 * 1024,
            buffer_bytes: 32 * 1024 * 1024,
            interest: InterestMode::All,
            credentials_file: None,
            nkey_seed_file: None,
            token_file: None,
            token_env: None,
            tls: ClientTlsConfig::default(),
        }
    }
}

impl NatsConfig {
    /// URLs, at least one valid subject, a header name, a message bound.
    pub fn check(&self, max_topic_len: usize) -> Checked {
        check_url_list("nats.url", &self.url, NATS_SCHEMES)?;
        if self.subjects.is_empty() {
            return Err(Invalid::new("nats.subjects", "is empty: name at least one subject (e.g. \"events.>\")"));
        }
        check_subjects("nats.subjects", &self.subjects, max_topic_len)?;
        if self.event_header.is_empty() {
            return Err(Invalid::new("nats.event_header", "must not be empty"));
        }
        check_nats_auth("nats", &self.credentials_file, &self.nkey_seed_file, &self.token_file, &self.token_env)?;
        self.tls.check("nats.tls")?;
        at_least_one("nats.max_message_bytes", self.max_message_bytes)?;
        at_least_one_message("nats.buffer_bytes", self.buffer_bytes, self.max_message_bytes)
    }
}

/// The Redis pub/sub source.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[user:pass@]host[:port][/db]` or `rediss://…`.
    pub url: String,
    /// Channels to `SUBSCRIBE`.
    pub channels: Vec<String>,
    /// Glob patterns to `PSUBSCRIBE` (Redis syntax: `chat:*`).
    pub patterns: Vec<String>,
    /// Read each message as a JSON envelope `{"event": "...", "data": ...}`, so Redis publishers
    /// can name event types. Messages that are not a valid envelope are counted and dropped.
    pub envelope: bool,
    /// Longest wait between reconnect attempts (the backoff doubles up to this).
    #[serde(with = "humantime_serde")]
    pub reconnect_max_delay: Duration,
    /// Time one connection attempt may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Interval of the `PING` that detects a dead pub/sub connection.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// Largest message bridged (the raw message, before envelope decoding); bigger messages
    /// are counted, logged (once per interval) and dropped.
    pub max_message_bytes: usize,
    /// Bytes of messages read from Redis that may wait for the ingest queue. The redis client's
    /// own buffer is unbounded, so the source keeps reading into this one; past it, messages
    /// are dropped and the streams are told (`source-dropped`).
    pub buffer_bytes: usize,
    /// `"all"`: subscribe to every channel and pattern at start; `"on-demand"`: they are the
    /// allowlist, and only the filters clients hold are subscribed (see `[interest]`).
    pub interest: InterestMode,
    /// ACL user to authenticate as (Redis 6+); with a password from `password_file` or
    /// `password_env`. A user and password in the URL work too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// File holding the password (of `username`, or the `default` user).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Name of the environment variable holding the password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// TLS to the server (with a `rediss://` URL): private CA, client certificate.
    pub tls: ClientTlsConfig,
    /// Sentinels (`host:port`) to ask for the master of `master_name`; empty: connect to `url`.
    /// With sentinels, `url` gives only the scheme (`rediss://` for TLS), user and database.
    pub sentinels: Vec<String>,
    /// The Sentinel service name of the master (required with `sentinels`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master_name: Option<String>,
    /// File holding the password of Sentinels that require one (`requirepass` in the
    /// Sentinel's own configuration); the master's password stays `password_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentinel_password_file: Option<PathBuf>,
    /// Name of the environment variable holding the Sentinels' password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentinel_password_env: Option<String>,
    /// Seed nodes (`host:port`) of a Redis Cluster; non-empty: cluster mode (the rest of the
    /// cluster is learned from them). `url` then gives only the scheme, user and database.
    pub cluster_nodes: Vec<String>,
    /// Sharded pub/sub (Redis 7 `SSUBSCRIBE`, each channel on the node owning its slot): needs
    /// `cluster_nodes`; exact channels only (sharded pub/sub has no patterns).
    pub sharded: bool,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            channels: Vec::new(),
            patterns: Vec::new(),
            envelope: false,
            reconnect_max_delay: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(15),
            max_message_bytes: 1024 * 1024,
            buffer_bytes: 32 * 1024 * 1024,
            interest: InterestMode::All,
            username: None,
            password_file: None,
            password_env: None,
            tls: ClientTlsConfig::default(),
            sentinels: Vec::new(),
            master_name: None,
            sentinel_password_file: None,
            sentinel_password_env: None,
            cluster_nodes: Vec::new(),
            sharded: false,
        }
    }
}

impl RedisConfig {
    /// The URL, a message bound, and at least one channel or pattern of a usable length.
    pub fn check(&self, max_topic_len: usize) -> Checked {
        check_url(&self.url, REDIS_SCHEMES).map_err(|r| Invalid::new("redis.url", format!("{:?}: {r}", self.url)))?;
        check_redis_connection(
            "redis",
            &self.url,
            (&self.password_file, &self.password_env),
            &self.tls,
            &self.sentinels,
            &self.master_name,
            (&self.sentinel_password_file, &self.sentinel_password_env),
            &self.cluster_nodes,
        )?;
        at_least_one("redis.max_message_bytes", self.max_message_bytes)?;
        at_least_one_message("redis.buffer_bytes", self.buffer_bytes, self.max_message_bytes)?;
        if self.channels.is_empty() && self.patterns.is_empty() {
            return Err(Invalid::new("redis.channels", "and redis.patterns are both empty: name at least one"));
        }
        if self.sharded && self.cluster_nodes.is_empty() {
            return Err(Invalid::new(
                "redis.sharded",
                "needs redis.cluster_nodes: sharded pub/sub (SSUBSCRIBE) is a Redis Cluster feature",
            ));
        }
        if self.sharded && !self.patterns.is_empty() {
            return Err(Invalid::new(
                "redis.patterns",
                "is set with redis.sharded = true: sharded pub/sub (SSUBSCRIBE) has no patterns; name exact channels",
            ));
        }
        for (key, list) in [("redis.channels", &self.channels), ("redis.patterns", &self.patterns)] {
            if let Some(i) = list.iter().position(|c| c.is_empty() || c.len() > max_topic_len) {
                return Err(Invalid::new(
                    format!("{key}[{i}]"),
                    format!("{:?}: must be 1 to {max_topic_len} bytes", list[i]),
                ));
            }
        }
        Ok(())
    }
}

/// JetStream streams read as durable sources: live through an ordered consumer, resumes
/// replayed from the stream itself, so a resume survives restarts and works on any replica.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JetStreamConfig {
    /// Server URL, or several separated by commas.
    pub url: String,
    /// Names of the streams to bridge (they must exist; their subjects are the topics).
    pub streams: Vec<String>,
    /// Only these subjects of the streams (patterns); empty: every subject of every stream.
    pub subjects: Vec<String>,
    /// Message header whose value becomes the SSE `event:` type (matched case-insensitively).
    pub event_header: String,
    /// Longest wait between reconnect attempts.
    #[serde(with = "humantime_serde")]
    pub reconnect_max_delay: Duration,
    /// Time one connection attempt may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Largest payload bridged; bigger messages are counted and skipped.
    pub max_message_bytes: usize,
    /// NATS credentials file (`.creds`: a user JWT and its NKey seed, as `nsc` writes it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// File holding an NKey user seed (`SU…`), for servers with NKey users.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nkey_seed_file: Option<PathBuf>,
    /// File holding the authentication token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Name of the environment variable holding the authentication token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// TLS to the server: private CA, client certificate, TLS required.
    pub tls: ClientTlsConfig,
    /// JetStream domain (a leaf node's, or a hub's seen from a leaf): the API is
    /// `$JS.<domain>.API`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// JetStream API prefix (an account that imports another's JetStream API); ignored when
    /// `domain` is set. Unset: `$JS.API`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_prefix: Option<String>,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        JetStreamConfig {
            url: "nats://127.0.0.1:4222".into(),
            streams: Vec::new(),
            subjects: Vec::new(),
            event_header: "Sse-Event".into(),
            reconnect_max_delay: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            max_message_bytes: 1024 * 1024,
            credentials_file: None,
            nkey_seed_file: None,
            token_file: None,
            token_env: None,
            tls: ClientTlsConfig::default(),
            domain: None,
            api_prefix: None,
        }
    }
}

impl JetStreamConfig {
    /// URLs, at least one stream with a valid JetStream name, valid subject filters.
    pub fn check(&self, max_topic_len: usize) -> Checked {
        check_url_list("jetstream.url", &self.url, NATS_SCHEMES)?;
        if self.streams.is_empty() {
            return Err(Invalid::new("jetstream.streams", "is empty: name at least one stream"));
        }
        for (i, n) in self.streams.iter().enumerate() {
            if n.is_empty() || n.len() > 255 || n.contains(['.', '*', '>', ' ', '/', '\\']) {
                return Err(Invalid::new(
                    format!("jetstream.streams[{i}]"),
                    format!("{n:?}: not a JetStream stream name"),
                ));
            }
        }
        check_subjects("jetstream.subjects", &self.subjects, max_topic_len)?;
        if self.event_header.is_empty() {
            return Err(Invalid::new("jetstream.event_header", "must not be empty"));
        }
        check_nats_auth("jetstream", &self.credentials_file, &self.nkey_seed_file, &self.token_file, &self.token_env)?;
        self.tls.check("jetstream.tls")?;
        for (key, v) in [("jetstream.domain", &self.domain), ("jetstream.api_prefix", &self.api_prefix)] {
            if let Some(v) = v
                && (v.is_empty() || v.contains([' ', '*', '>']))
            {
                return Err(Invalid::new(key, format!("{v:?}: must be a non-empty subject token without wildcards")));
            }
        }
        at_least_one("jetstream.max_message_bytes", self.max_message_bytes)
    }
}

/// Redis Streams read as durable sources (`XREAD BLOCK`), resumes replayed with `XRANGE`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisStreamsConfig {
    /// `redis://[user:pass@]host[:port][/db]`.
    pub url: String,
    /// Stream keys to bridge; the topic of an entry is its stream key.
    pub keys: Vec<String>,
    /// How long one `XREAD BLOCK` waits before asking again.
    #[serde(with = "humantime_serde")]
    pub block: Duration,
    /// Longest wait between reconnect attempts.
    #[serde(with = "humantime_serde")]
    pub reconnect_max_delay: Duration,
    /// Time one connection attempt may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Largest entry bridged (sum of field values); bigger entries are counted and skipped.
    pub max_message_bytes: usize,
    /// ACL user to authenticate as (Redis 6+); with a password from `password_file` or
    /// `password_env`. A user and password in the URL work too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// File holding the password (of `username`, or the `default` user).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Name of the environment variable holding the password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// TLS to the server (with a `rediss://` URL): private CA, client certificate.
    pub tls: ClientTlsConfig,
    /// Sentinels (`host:port`) to ask for the master of `master_name`; empty: connect to `url`.
    /// With sentinels, `url` gives only the scheme (`rediss://` for TLS), user and database.
    pub sentinels: Vec<String>,
    /// The Sentinel service name of the master (required with `sentinels`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master_name: Option<String>,
    /// File holding the password of Sentinels that require one (`requirepass` in the
    /// Sentinel's own configuration); the master's password stays `password_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentinel_password_file: Option<PathBuf>,
    /// Name of the environment variable holding the Sentinels' password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentinel_password_env: Option<String>,
    /// Seed nodes (`host:port`) of a Redis Cluster; non-empty: cluster mode (the rest of the
    /// cluster is learned from them). `url` then gives only the scheme, user and database.
    pub cluster_nodes: Vec<String>,
}

impl Default for RedisStreamsConfig {
    fn default() -> Self {
        RedisStreamsConfig {
            url: "redis://127.0.0.1:6379".into(),
            keys: Vec::new(),
            block: Duration::from_secs(5),
            reconnect_max_delay: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            max_message_bytes: 1024 * 1024,
            username: None,
            password_file: None,
            password_env: None,
            tls: ClientTlsConfig::default(),
            sentinels: Vec::new(),
            master_name: None,
            sentinel_password_file: None,
            sentinel_password_env: None,
            cluster_nodes: Vec::new(),
        }
    }
}

impl RedisStreamsConfig {
    /// The URL, at least one key that is a topic (not a pattern), a sane block time.
    pub fn check(&self, max_topic_len: usize) -> Checked {
        check_url(&self.url, REDIS_SCHEMES)
            .map_err(|r| Invalid::new("redis_streams.url", format!("{:?}: {r}", self.url)))?;
        check_redis_connection(
            "redis_streams",
            &self.url,
            (&self.password_file, &self.password_env),
            &self.tls,
            &self.sentinels,
            &self.master_name,
            (&self.sentinel_password_file, &self.sentinel_password_env),
            &self.cluster_nodes,
        )?;
        if self.keys.is_empty() {
            return Err(Invalid::new("redis_streams.keys", "is empty: name at least one stream key"));
        }
        for (i, k) in self.keys.iter().enumerate() {
            let reason = match TopicFilter::parse(k, max_topic_len) {
                Ok(TopicFilter::Exact(_)) => continue,
                Ok(TopicFilter::Pattern(_)) => "a key, not a pattern".to_string(),
                Err(e) => e.to_string(),
            };
            return Err(Invalid::new(format!("redis_streams.keys[{i}]"), format!("{k:?}: {reason}")));
        }
        if self.block < Duration::from_millis(10) {
            return Err(Invalid::new("redis_streams.block", "must be at least 10ms"));
        }
        at_least_one("redis_streams.max_message_bytes", self.max_message_bytes)
    }
}

/// A broker buffer must hold at least one message of the largest size bridged.
fn at_least_one_message(key: &str, buffer_bytes: usize, max_message_bytes: usize) -> Checked {
    if buffer_bytes < max_message_bytes {
        return Err(Invalid::new(
            key,
            format!("is {buffer_bytes}: must be at least max_message_bytes ({max_message_bytes})"),
        ));
    }
    Ok(())
}

/// At most one way to authenticate to NATS (a URL's `user:pass` aside), and the token from one
/// place.
fn check_nats_auth(
    section: &str,
    creds: &Option<PathBuf>,
    seed: &Option<PathBuf>,
    token_file: &Option<PathBuf>,
    token_env: &Option<String>,
) -> Checked {
    check_secret_source(&format!("{section}.token"), token_file.as_ref(), token_env.as_ref())?;
    let token = token_file.is_some() || token_env.is_some();
    let ways = [creds.is_some(), seed.is_some(), token].iter().filter(|b| **b).count();
    if ways > 1 {
        return Err(Invalid::new(
            format!("{section}.credentials_file"),
            "credentials_file, nkey_seed_file and token_file/token_env are exclusive: set one",
        ));
    }
    Ok(())
}

/// A Redis connection's settings that go together: TLS settings need a `rediss://` URL (else
/// they would be ignored), each password comes from one place, Sentinel needs a master name,
/// Sentinel and Cluster exclude each other, and addresses are `host:port`.
#[allow(clippy::too_many_arguments)]
fn check_redis_connection(
    section: &str,
    url: &str,
    (password_file, password_env): (&Option<PathBuf>, &Option<String>),
    tls: &ClientTlsConfig,
    sentinels: &[String],
    master_name: &Option<String>,
    (sentinel_password_file, sentinel_password_env): (&Option<PathBuf>, &Option<String>),
    cluster_nodes: &[String],
) -> Checked {
    check_secret_source(&format!("{section}.password"), password_file.as_ref(), password_env.as_ref())?;
    check_secret_source(
        &format!("{section}.sentinel_password"),
        sentinel_password_file.as_ref(),
        sentinel_password_env.as_ref(),
    )?;
    tls.check(&format!("{section}.tls"))?;
    if tls.is_set() && !url.starts_with("rediss://") {
        return Err(Invalid::new(
            format!("{section}.url"),
            format!("{url:?}: [{section}.tls] is set, so the URL must be rediss:// (TLS)"),
        ));
    }
    if !sentinels.is_empty() && master_name.as_deref().is_none_or(str::is_empty) {
        return Err(Invalid::new(format!("{section}.master_name"), "is required with sentinels"));
    }
    if sentinels.is_empty() && master_name.is_some() {
        return Err(Invalid::new(format!("{section}.sentinels"), "is empty: name the Sentinels that know master_name"));
    }
    if sentinels.is_empty() && (sentinel_password_file.is_some() || sentinel_password_env.is_some()) {
        let key = if sentinel_password_file.is_some() { "sentinel_password_file" } else { "sentinel_password_env" };
        return Err(Invalid::new(format!("{section}.{key}"), "is set but sentinels is empty"));
    }
    if !sentinels.is_empty() && !cluster_nodes.is_empty() {
        return Err(Invalid::new(
            format!("{section}.cluster_nodes"),
            "and sentinels are both set: a Redis Cluster has no Sentinels; use one",
        ));
    }
    for (key, list) in [("sentinels", sentinels), ("cluster_nodes", cluster_nodes)] {
        for (i, s) in list.iter().enumerate() {
            let port = s.rsplit_once(':').and_then(|(h, p)| (!h.is_empty()).then_some(p)).map(str::parse::<u16>);
            if !matches!(port, Some(Ok(_))) {
                return Err(Invalid::new(format!("{section}.{key}[{i}]"), format!("{s:?}: must be host:port")));
            }
        }
    }
    if !cluster_nodes.is_empty() && url.starts_with("unix:") {
        return Err(Invalid::new(
            format!("{section}.url"),
            format!("{url:?}: a Redis Cluster is reached over TCP (redis:// or rediss://), not a Unix socket"),
        ));
    }
    Ok(())
}

/// Every durable stream adds a part to every event id: their number is bounded. The runtime
/// catalog (`crate::durable`) holds exactly these names, in this order.
pub fn check_durable_count(jetstream: Option<&JetStreamConfig>, redis_streams: Option<&RedisStreamsConfig>) -> Checked {
    let n = jetstream.map_or(0, |j| j.streams.len()) + redis_streams.map_or(0, |r| r.keys.len());
    if n > MAX_DURABLE_STREAMS {
        return Err(Invalid::new(
            "jetstream.streams",
            format!("with redis_streams.keys names {n} durable streams; at most {MAX_DURABLE_STREAMS}"),
        ));
    }
    Ok(())
}

/// Bounds on replays read back from a broker when a resume is older than the in-memory ring.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ResumeConfig {
    /// Broker reads (JetStream consumers, `XRANGE`s) running at once, across all clients;
    /// resumes beyond it wait their turn (a deploy's resume storm queues here).
    pub max_concurrent_reads: usize,
    /// Most events replayed from one stream for one resume; a client further behind gets a
    /// gap event (reason `replay-limit`) and the newest events. Also the memory bound of a
    /// resume: its replayed frames (ids differ per client) are built before it goes live.
    /// The in-place resume of a stream that spilled reads in pages of this size instead, while
    /// a read slot is free.
    pub max_events: usize,
    /// Time one broker read may take before the resume gives up with a gap event.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    /// Bytes of replayed frames (and other frames queued ahead of live events) waiting to be
    /// written, across all streams, beyond which new resumes are refused (reason
    /// `replay_budget`, with a `retry:` an EventSource follows) until clients drain theirs.
    /// 0: no cap.
    pub max_inflight_bytes: usize,
}

impl Default for ResumeConfig {
    fn default() -> Self {
        ResumeConfig {
            max_concurrent_reads: 16,
            max_events: 1000,
            read_timeout: Duration::from_secs(10),
            max_inflight_bytes: 256 * 1024 * 1024,
        }
    }
}

impl ResumeConfig {
    /// Zero concurrent reads or zero events would make every durable resume fail.
    pub fn check(&self) -> Checked {
        at_least_one("resume.max_concurrent_reads", self.max_concurrent_reads)?;
        at_least_one("resume.max_events", self.max_events)
    }
}
