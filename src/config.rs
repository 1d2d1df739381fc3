//! Configuration: documented structs, layered loading with figment, and validation.
//!
//! Layers, later wins: built-in defaults → the TOML file (`bridge.toml`, or `--config PATH`) →
//! `SSE_BRIDGE_*` environment variables (`__` between nested keys) → command-line flags.
//! Everything is checked before anything starts: unknown keys, unparsable values, bad broker
//! URLs and bad subject patterns each fail with the key, the file (or variable) that set it,
//! and the reason.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::topic::{DEFAULT_MAX_TOPIC_LEN, Pattern, TopicError, TopicFilter};

/// The whole daemon configuration. Every field has a default, so an empty file is valid.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
#[derive(Default)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub publish: PublishConfig,
    /// NATS source; absent means NATS is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsConfig>,
    /// Redis pub/sub source; absent means Redis is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisConfig>,
    /// NATS JetStream streams as durable sources; absent means off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jetstream: Option<JetStreamConfig>,
    /// Redis Streams as durable sources; absent means off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_streams: Option<RedisStreamsConfig>,
    /// Resume from durable broker history (JetStream, Redis Streams).
    pub resume: ResumeConfig,
    pub log: LogConfig,
    pub fanout: FanoutConfig,
    pub replay: ReplayConfig,
    pub limits: LimitsConfig,
    pub memory: MemoryConfig,
    pub telemetry: TelemetryConfig,
    /// Per-topic delivery rules, first match wins: slow-consumer policy and delivery rate.
    pub delivery: Vec<DeliveryRule>,
    /// Topic authorization (JWT). Absent: every topic is public, as before `[auth]` existed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
}

/// The SSE and `/publish` listener and per-stream behaviour.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the SSE and `/publish` listener.
    pub listen: SocketAddr,
    /// Origins allowed to read streams cross-origin (exact `scheme://host[:port]`, or `*` for
    /// any origin without credentials). Empty: no cross-origin access.
    pub cors_origins: Vec<String>,
    /// Interval between heartbeat comments on an idle stream; keeps proxies from cutting quiet
    /// streams and notices dead peers.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Reconnect delay announced to clients with `retry:`.
    #[serde(with = "humantime_serde")]
    pub retry: Duration,
    /// Events that may wait for one slow client before the slow-consumer policy applies.
    pub queue_capacity: usize,
    /// What happens to a client whose queue is full.
    pub slow_consumer: SlowConsumerPolicy,
    /// Topics (and patterns) one connection may ask for.
    pub max_topics_per_connection: usize,
    /// Longest accepted topic name, in bytes.
    pub max_topic_length: usize,
    /// Time a client has to send its request headers.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Proxies (CIDRs such as `10.0.0.0/8`) whose `X-Forwarded-For` is believed: behind an
    /// ingress, the per-IP limits then apply to the real client, not to the ingress pod. Empty:
    /// the TCP peer is the client.
    pub trusted_proxies: Vec<String>,
    /// Time open streams get to end after SIGTERM/SIGINT before they are cut.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// A socket write blocked this long ends the connection (a quiet, healthy stream is never
    /// affected: only a client that stopped reading while data waits for it).
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Streams are closed cleanly after this age (±10 % jitter, so reconnects spread out); the
    /// client reconnects and resumes without loss. `0s`: never.
    #[serde(with = "humantime_serde")]
    pub max_stream_age: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: ([127, 0, 0, 1], 8080).into(),
            cors_origins: Vec::new(),
            heartbeat_interval: Duration::from_secs(15),
            retry: Duration::from_secs(2),
            queue_capacity: 1024,
            slow_consumer: SlowConsumerPolicy::Disconnect,
            max_topics_per_connection: 64,
            max_topic_length: DEFAULT_MAX_TOPIC_LEN,
            header_read_timeout: Duration::from_secs(10),
            trusted_proxies: Vec::new(),
            drain_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            max_stream_age: Duration::from_secs(3600),
        }
    }
}

/// What happens to a client whose bounded queue is full.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SlowConsumerPolicy {
    /// Close the connection at once and free its queue; the client reconnects and resumes with
    /// `Last-Event-ID`. Nobody else waits for it, and its memory is bounded by the queue.
    Disconnect,
    /// Drop the oldest queued event and keep going; the client gets an `sse-bridge.gap` event
    /// (reason `dropped`) before the next event.
    DropOldest,
    /// Keep only the newest event per topic (conflation), for tickers and dashboards.
    Latest,
}

/// Delivery settings for the topics a pattern matches.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeliveryRule {
    /// NATS-style pattern of the topics this rule covers (`ticker.>`, `orders.*`).
    pub topics: String,
    /// Slow-consumer policy for events on these topics (default: `server.slow_consumer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_consumer: Option<SlowConsumerPolicy>,
    /// Events per second delivered to one connection subscribed to these topics; events over
    /// the rate wait in the queue, then the slow-consumer policy applies. A connection covered
    /// by several rules gets the lowest rate. Absent: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<u32>,
    /// Events that may be delivered at once above the rate (default: `max_rate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// OpenTelemetry trace export.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Export traces over OTLP (HTTP/protobuf). Off by default; off costs nothing per event.
    pub traces: bool,
    /// OTLP traces endpoint, e.g. `http://collector:4318/v1/traces`. Unset: the standard
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`, else
    /// `http://localhost:4318/v1/traces`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// Share of traces sampled when the publisher sent no sampling decision (0.0 to 1.0);
    /// a publisher's sampled flag is always followed.
    pub sampling_ratio: f64,
    /// `service.name` of the spans.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig { traces: false, otlp_endpoint: None, sampling_ratio: 1.0, service_name: "sse-bridge".into() }
    }
}

/// Topic authorization with JWTs: which topics are public, and how tokens are verified and
/// read. See `docs/security.md` (and `crate::auth`, which enforces it).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The one algorithm tokens must be signed with; any other `alg` (`none` included) is
    /// refused, so a public key can never be used as an HMAC secret.
    pub algorithm: JwtAlgorithm,
    /// HS256 shared secret, at least 32 bytes. Prefer `SSE_BRIDGE_AUTH__SECRET`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// RS256/ES256: PEM file with the issuer's public key; re-read when it changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<PathBuf>,
    /// A JWKS document on disk (`{"keys": [...]}`), re-read when it changes; a token names its
    /// key with `kid` (optional when the set holds one usable key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// Accepted `aud` values: tokens must carry one. Empty: tokens must carry no `aud`.
    pub audience: Vec<String>,
    /// Accepted `iss` values: tokens must carry one. Empty: `iss` is not checked.
    pub issuer: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Claim holding the grants: `{"subscribe": [patterns], "publish": [patterns]}`.
    pub claim: String,
    /// Cookie that may carry the token for `GET /events`; empty: cookies are not read.
    pub cookie: String,
    /// Accept the token from the `access_token` query parameter of `GET /events` (never
    /// logged; the least preferred way, for clients that can set neither headers nor cookies).
    pub query_token: bool,
    /// Longest token accepted, in bytes (longer gets 400).
    pub max_token_bytes: usize,
    /// Per-topic rules, first match wins. Topics no rule covers need a token granting them.
    pub rules: Vec<AuthRule>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            algorithm: JwtAlgorithm::HS256,
            secret: None,
            public_key_file: None,
            jwks_file: None,
            audience: Vec::new(),
            issuer: Vec::new(),
            leeway: Duration::from_secs(30),
            claim: "sse_bridge".into(),
            cookie: "sse_bridge_token".into(),
            query_token: true,
            max_token_bytes: 8192,
            rules: Vec::new(),
        }
    }
}

// By hand, so the secret never reaches a log line through `{:?}`.
impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("algorithm", &self.algorithm)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("public_key_file", &self.public_key_file)
            .field("jwks_file", &self.jwks_file)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("leeway", &self.leeway)
            .field("claim", &self.claim)
            .field("cookie", &self.cookie)
            .field("query_token", &self.query_token)
            .field("max_token_bytes", &self.max_token_bytes)
            .field("rules", &self.rules)
            .finish()
    }
}

/// JWT signature algorithms the bridge verifies.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with `auth.secret`.
    HS256,
    /// RSA PKCS#1 v1.5 with SHA-256, public key from `public_key_file` or `jwks_file`.
    RS256,
    /// ECDSA P-256 with SHA-256, public key from `public_key_file` or `jwks_file`.
    ES256,
}

/// Who may read the topics a pattern covers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthRule {
    /// NATS-style pattern (`demo`, `demo.>`, `news.*`).
    pub topics: String,
    /// `public` (no token needed) or `token` (a valid token whose claims grant the topic).
    pub access: TopicAccess,
}

/// Access level of an [`AuthRule`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TopicAccess {
    /// Anyone who can reach the port may subscribe; no token is read.
    Public,
    /// A valid token whose `subscribe` grants cover the topic.
    Token,
}

/// The process memory budget.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Bytes of live heap the bridge may use before it sheds (oldest replay entries first,
    /// then the slowest streams). 0: 75 % of the cgroup memory limit if there is one, else none.
    pub limit: usize,
}

/// Admission limits: how many streams, how fast they may be opened.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Open streams across all clients; beyond it new streams get `503`. 0: unlimited.
    pub max_streams: usize,
    /// Open streams per client IP; beyond it new streams get `429`. 0: unlimited.
    pub max_streams_per_ip: usize,
    /// New streams per second per client IP (token bucket; survives reconnect storms after a
    /// deploy by spreading them). 0: unlimited.
    pub connect_rate_per_ip: u32,
    /// New streams a client IP may open at once above the rate.
    pub connect_burst_per_ip: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_streams: 100_000,
            max_streams_per_ip: 1_000,
            connect_rate_per_ip: 20,
            connect_burst_per_ip: 100,
        }
    }
}

/// The health and metrics listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address for `/healthz`, `/readyz` and `/metrics`; loopback so it is not public by accident.
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { listen: ([127, 0, 0, 1], 9090).into() }
    }
}

/// `POST /publish`: publishing through the bridge itself, with no broker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PublishConfig {
    /// Bearer token a publisher must send. None: `/publish` answers 403 (never open by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig { token: None, max_body_bytes: 1024 * 1024 }
    }
}

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
        }
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
        }
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
        }
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
        }
    }
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
    pub max_events: usize,
    /// Time one broker read may take before the resume gives up with a gap event.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
}

impl Default for ResumeConfig {
    fn default() -> Self {
        ResumeConfig { max_concurrent_reads: 16, max_events: 1000, read_timeout: Duration::from_secs(10) }
    }
}

/// Durable streams a bridge may read at most: every one adds a part to every event id.
pub const MAX_DURABLE_STREAMS: usize = 16;

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter (`info`, `sse_bridge=debug`); `RUST_LOG` overrides it.
    pub level: String,
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into(), format: LogFormat::Text }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Ingest and fan-out sizing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FanoutConfig {
    /// Registry shards; connects and disconnects lock one shard, so more shards mean less
    /// contention with the fan-out.
    pub shards: usize,
    /// Messages that may wait between the sources and the sequencer. When full, sources wait
    /// (backpressure reaches the broker client, whose own buffer then applies).
    pub ingest_queue: usize,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        FanoutConfig { shards: 16, ingest_queue: 4096 }
    }
}

/// The replay store: recent events of every bridged topic, for `Last-Event-ID` resume.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayConfig {
    /// Events kept per topic (0 turns replay off).
    pub max_events_per_topic: usize,
    /// Bytes kept per topic (frames plus bookkeeping); the newest event is always kept.
    pub max_bytes_per_topic: usize,
    /// Bytes kept across all topics; beyond it the globally oldest events go first.
    pub max_total_bytes: usize,
    /// Topics with a ring; beyond it the topic whose newest event is oldest is forgotten.
    pub max_topics: usize,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            max_events_per_topic: 1000,
            max_bytes_per_topic: 1024 * 1024,
            max_total_bytes: 64 * 1024 * 1024,
            max_topics: 100_000,
        }
    }
}

/// A configuration error, formatted for an operator: key, where it came from, reason.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl ConfigError {
    fn at(key: &str, source: &str, reason: impl std::fmt::Display) -> Self {
        ConfigError(format!("invalid configuration: key `{key}` ({source}): {reason}"))
    }
}

/// Command-line overrides, applied after the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`
    pub listen: Option<SocketAddr>,
    /// `--admin-listen`
    pub admin_listen: Option<SocketAddr>,
    /// `--log-level`
    pub log_level: Option<String>,
}

/// Where the configuration file comes from.
#[derive(Debug, Clone)]
pub enum ConfigFile {
    /// `--config PATH`: must exist.
    Explicit(PathBuf),
    /// No flag: `bridge.toml` in the working directory if it exists, else built-in defaults.
    Default,
}

/// The default configuration file name.
pub const DEFAULT_FILE: &str = "bridge.toml";
/// Prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "SSE_BRIDGE_";

impl Config {
    /// Loads and validates the configuration from all layers.
    pub fn load(file: &ConfigFile, overrides: &Overrides) -> Result<(Config, Option<PathBuf>), ConfigError> {
        Self::load_with_env(file, overrides, Env::prefixed(ENV_PREFIX).split("__"))
    }

    fn load_with_env(
        file: &ConfigFile,
        overrides: &Overrides,
        env: Env,
    ) -> Result<(Config, Option<PathBuf>), ConfigError> {
        let path = match file {
            ConfigFile::Explicit(p) => {
                if !p.is_file() {
                    return Err(ConfigError(format!(
                        "invalid configuration: file {} given with --config: {}",
                        p.display(),
                        if p.exists() { "not a regular file" } else { "no such file" }
                    )));
                }
                Some(p.clone())
            }
            ConfigFile::Default => Path::new(DEFAULT_FILE).is_file().then(|| PathBuf::from(DEFAULT_FILE)),
        };
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(p) = &path {
            // `file_exact`: `Toml::file` would search parent folders for the name.
            fig = fig.merge(Toml::file_exact(p));
        }
        fig = fig.merge(env);
        if let Some(a) = overrides.listen {
            fig = fig.merge(Serialized::default("server.listen", a));
        }
        if let Some(a) = overrides.admin_listen {
            fig = fig.merge(Serialized::default("admin.listen", a));
        }
        if let Some(l) = &overrides.log_level {
            fig = fig.merge(Serialized::default("log.level", l));
        }
        let config: Config = fig.extract().map_err(|e| figment_error(&fig, e))?;
        config.validate().map_err(|(key, reason)| ConfigError::at(&key, &describe_source(&fig, &key), reason))?;
        Ok((config, path))
    }

    /// Checks what serde cannot: URLs, patterns, ranges. Returns the offending key and reason.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, r: String| Err((k.to_string(), r));
        let s = &self.server;
        if s.queue_capacity == 0 {
            return err("server.queue_capacity", "must be at least 1".into());
        }
        if s.max_topics_per_connection == 0 {
            return err("server.max_topics_per_connection", "must be at least 1".into());
        }
        if s.max_topic_length == 0 {
            return err("server.max_topic_length", "must be at least 1".into());
        }
        if s.heartbeat_interval < Duration::from_millis(100) {
            return err("server.heartbeat_interval", "must be at least 100ms".into());
        }
        for (i, p) in s.trusted_proxies.iter().enumerate() {
            if p.parse::<ipnet::IpNet>().is_err() && p.parse::<std::net::IpAddr>().is_err() {
                return err(&format!("server.trusted_proxies[{i}]"), format!("{p:?}: not an IP address or CIDR"));
            }
        }
        for (i, o) in s.cors_origins.iter().enumerate() {
            if let Err(r) = validate_origin(o) {
                return err(&format!("server.cors_origins[{i}]"), format!("{o:?}: {r}"));
            }
        }
        if self.fanout.shards == 0 || self.fanout.shards > 1024 {
            return err("fanout.shards", "must be between 1 and 1024".into());
        }
        for (i, r) in self.delivery.iter().enumerate() {
            if let Err(e) = Pattern::parse(&r.topics, s.max_topic_length) {
                return err(&format!("delivery[{i}].topics"), format!("{:?}: {e}", r.topics));
            }
            if r.max_rate == Some(0) || r.burst == Some(0) {
                return err(&format!("delivery[{i}]"), "max_rate and burst must be at least 1".into());
            }
        }
        if self.limits.connect_rate_per_ip > 0 && self.limits.connect_burst_per_ip == 0 {
            return err("limits.connect_burst_per_ip", "must be at least 1 when connect_rate_per_ip is set".into());
        }
        if !(0.0..=1.0).contains(&self.telemetry.sampling_ratio) {
            return err("telemetry.sampling_ratio", "must be between 0.0 and 1.0".into());
        }
        if let Some(e) = &self.telemetry.otlp_endpoint
            && let Err(r) = validate_url(e, &["http", "https"])
        {
            return err("telemetry.otlp_endpoint", format!("{e:?}: {r}"));
        }
        if self.replay.max_topics == 0 {
            return err("replay.max_topics", "must be at least 1".into());
        }
        if self.fanout.ingest_queue == 0 {
            return err("fanout.ingest_queue", "must be at least 1".into());
        }
        if let Some(a) = &self.auth {
            crate::auth::validate_config(a, s.max_topic_length)?;
        }
        if let Some(t) = &self.publish.token
            && t.len() < 8
        {
            return err("publish.token", "must be at least 8 characters".into());
        }
        if let Some(n) = &self.nats {
            for u in n.url.split(',') {
                if let Err(r) = validate_url(u.trim(), &["nats", "tls", "ws", "wss"]) {
                    return err("nats.url", format!("{u:?}: {r}"));
                }
            }
            if n.subjects.is_empty() {
                return err("nats.subjects", "is empty: name at least one subject (e.g. \"events.>\")".into());
            }
            for (i, subj) in n.subjects.iter().enumerate() {
                if let Err(r) = Pattern::parse(subj, s.max_topic_length) {
                    return err(&format!("nats.subjects[{i}]"), format!("{subj:?}: {}", topic_reason(r)));
                }
            }
            if n.event_header.is_empty() {
                return err("nats.event_header", "must not be empty".into());
            }
            if n.max_message_bytes == 0 {
                return err("nats.max_message_bytes", "must be at least 1".into());
            }
        }
        if let Some(r) = &self.redis {
            if let Err(reason) = validate_url(&r.url, &["redis", "rediss", "unix", "redis+unix"]) {
                return err("redis.url", format!("{:?}: {reason}", r.url));
            }
            if r.max_message_bytes == 0 {
                return err("redis.max_message_bytes", "must be at least 1".into());
            }
            if r.channels.is_empty() && r.patterns.is_empty() {
                return err("redis.channels", "and redis.patterns are both empty: name at least one".into());
            }
            for (key, list) in [("redis.channels", &r.channels), ("redis.patterns", &r.patterns)] {
                for (i, c) in list.iter().enumerate() {
                    if c.is_empty() || c.len() > s.max_topic_length {
                        return err(
                            &format!("{key}[{i}]"),
                            format!("{c:?}: must be 1 to {} bytes", s.max_topic_length),
                        );
                    }
                }
            }
        }
        self.validate_durable()
    }

    fn validate_durable(&self) -> Result<(), (String, String)> {
        let err = |k: &str, r: String| Err((k.to_string(), r));
        let max_len = self.server.max_topic_length;
        if let Some(j) = &self.jetstream {
            for u in j.url.split(',') {
                if let Err(r) = validate_url(u.trim(), &["nats", "tls", "ws", "wss"]) {
                    return err("jetstream.url", format!("{u:?}: {r}"));
                }
            }
            if j.streams.is_empty() {
                return err("jetstream.streams", "is empty: name at least one stream".into());
            }
            for (i, n) in j.streams.iter().enumerate() {
                if n.is_empty() || n.len() > 255 || n.contains(['.', '*', '>', ' ', '/', '\\']) {
                    return err(&format!("jetstream.streams[{i}]"), format!("{n:?}: not a JetStream stream name"));
                }
            }
            for (i, subj) in j.subjects.iter().enumerate() {
                if let Err(r) = Pattern::parse(subj, max_len) {
                    return err(&format!("jetstream.subjects[{i}]"), format!("{subj:?}: {}", topic_reason(r)));
                }
            }
            if j.event_header.is_empty() {
                return err("jetstream.event_header", "must not be empty".into());
            }
            if j.max_message_bytes == 0 {
                return err("jetstream.max_message_bytes", "must be at least 1".into());
            }
        }
        if let Some(r) = &self.redis_streams {
            if let Err(reason) = validate_url(&r.url, &["redis", "rediss", "unix", "redis+unix"]) {
                return err("redis_streams.url", format!("{:?}: {reason}", r.url));
            }
            if r.keys.is_empty() {
                return err("redis_streams.keys", "is empty: name at least one stream key".into());
            }
            for (i, k) in r.keys.iter().enumerate() {
                if let Err(e) = TopicFilter::parse(k, max_len).map_err(|e| e.to_string()).and_then(|f| {
                    if matches!(f, TopicFilter::Exact(_)) { Ok(()) } else { Err("a key, not a pattern".into()) }
                }) {
                    return err(&format!("redis_streams.keys[{i}]"), format!("{k:?}: {e}"));
                }
            }
            if r.block < Duration::from_millis(10) {
                return err("redis_streams.block", "must be at least 10ms".into());
            }
            if r.max_message_bytes == 0 {
                return err("redis_streams.max_message_bytes", "must be at least 1".into());
            }
        }
        let names = crate::durable::Catalog::from_config(self);
        if names.len() > MAX_DURABLE_STREAMS {
            return err(
                "jetstream.streams",
                format!("with redis_streams.keys names {} durable streams; at most {MAX_DURABLE_STREAMS}", names.len()),
            );
        }
        if let Some((a, b)) = names.tag_collision() {
            return err("jetstream.streams", format!("{a:?} and {b:?} share the short id tag; rename one"));
        }
        if self.resume.max_concurrent_reads == 0 {
            return err("resume.max_concurrent_reads", "must be at least 1".into());
        }
        if self.resume.max_events == 0 {
            return err("resume.max_events", "must be at least 1".into());
        }
        Ok(())
    }
}

fn topic_reason(e: TopicError) -> String {
    e.to_string().replacen("topic", "subject", 1)
}

fn validate_url(u: &str, schemes: &[&str]) -> Result<(), String> {
    let parsed = url::Url::parse(u).map_err(|e| format!("not a URL ({e})"))?;
    if !schemes.contains(&parsed.scheme()) {
        return Err(format!("scheme must be one of {}", schemes.join(", ")));
    }
    if parsed.scheme() != "unix" && parsed.scheme() != "redis+unix" && parsed.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    Ok(())
}

fn validate_origin(o: &str) -> Result<(), String> {
    if o == "*" {
        return Ok(());
    }
    let u = url::Url::parse(o).map_err(|e| format!("not an origin ({e})"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err("must be http(s)://host[:port]".into());
    }
    if u.path() != "/" || o.ends_with('/') || u.query().is_some() {
        return Err("an origin has no path (write https://app.example.com)".into());
    }
    Ok(())
}

/// `from <provider> <source>`. A file is named by the path as given (`--config PATH` or
/// `bridge.toml`): figment's own `Display` rewrites it relative to the working directory, which
/// under a service manager (cwd `/`) turns `/etc/sse-bridge/bridge.toml` into
/// `etc/sse-bridge/bridge.toml`.
fn source_of(md: &figment::Metadata) -> String {
    match &md.source {
        Some(figment::Source::File(p)) => format!("from {} {}", md.name, p.display()),
        Some(src) => format!("from {} {}", md.name, src),
        None => format!("from {}", md.name),
    }
}

/// Names where the value of `key` (or its nearest configured parent) came from.
fn describe_source(fig: &Figment, key: &str) -> String {
    let mut k = key.split('[').next().unwrap_or(key).to_string();
    loop {
        if let Some(md) = fig.find_metadata(&k) {
            return source_of(md);
        }
        match k.rfind('.') {
            Some(i) => k.truncate(i),
            None => return "from defaults".into(),
        }
    }
}

fn figment_error(fig: &Figment, e: figment::Error) -> ConfigError {
    let lines: Vec<String> = e
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = match (&e.metadata, e.path.is_empty()) {
                (Some(md), _) => source_of(md),
                (None, false) => describe_source(fig, &key),
                (None, true) => "configuration".into(),
            };
            // For unknown fields figment's path already ends with the field itself.
            let key = match &e.kind {
                figment::error::Kind::UnknownField(f, _) if key.is_empty() => f.clone(),
                _ if key.is_empty() => "(root)".into(),
                _ => key,
            };
            format!("invalid configuration: key `{key}` ({source}): {}", e.kind)
        })
        .collect();
    ConfigError(lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(toml: &str) -> Result<Config, String> {
        let dir = std::env::temp_dir().join(format!("sse-bridge-cfg-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bridge.toml");
        std::fs::write(&p, toml).unwrap();
        let r = Config::load_with_env(
            &ConfigFile::Explicit(p),
            &Overrides::default(),
            Env::prefixed("SSE_BRIDGE_TEST_NONE_"),
        )
        .map(|(c, _)| c)
        .map_err(|e| e.to_string());
        std::fs::remove_dir_all(&dir).ok();
        r
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(load_str("").unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_is_named_with_file() {
        let e = load_str("[server]\nlisten = \"127.0.0.1:1\"\nlisne = 3\n").unwrap_err();
        assert!(e.contains("`server.lisne`"), "{e}");
        assert!(e.contains("bridge.toml"), "{e}");
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn bad_url_is_named() {
        let e = load_str("[nats]\nurl = \"http://x\"\nsubjects = [\"a\"]\n").unwrap_err();
        assert!(e.contains("`nats.url`") && e.contains("bridge.toml") && e.contains("scheme"), "{e}");
    }

    #[test]
    fn bad_pattern_is_named() {
        let e = load_str("[nats]\nsubjects = [\"a.>.b\"]\n").unwrap_err();
        assert!(e.contains("`nats.subjects[0]`") && e.contains("last token"), "{e}");
    }

    #[test]
    fn durable_source_errors_are_named() {
        let e = load_str("[jetstream]\nstreams = []\n").unwrap_err();
        assert!(e.contains("`jetstream.streams`") && e.contains("is empty"), "{e}");
        let e = load_str("[jetstream]\nstreams = [\"A.B\"]\n").unwrap_err();
        assert!(e.contains("`jetstream.streams[0]`") && e.contains("not a JetStream stream name"), "{e}");
        let e = load_str("[redis_streams]\nkeys = [\"a.*\"]\n").unwrap_err();
        assert!(e.contains("`redis_streams.keys[0]`") && e.contains("not a pattern"), "{e}");
        let keys: Vec<String> = (0..=MAX_DURABLE_STREAMS).map(|i| format!("\"k{i}\"")).collect();
        let e = load_str(&format!("[redis_streams]\nkeys = [{}]\n", keys.join(","))).unwrap_err();
        assert!(e.contains("at most 16"), "{e}");
        let e = load_str("[resume]\nmax_concurrent_reads = 0\n").unwrap_err();
        assert!(e.contains("`resume.max_concurrent_reads`"), "{e}");
    }

    #[test]
    fn bad_type_is_named() {
        let e = load_str("[server]\nqueue_capacity = \"many\"\n").unwrap_err();
        assert!(e.contains("`server.queue_capacity`") && e.contains("bridge.toml"), "{e}");
    }

    #[test]
    fn durations_are_human() {
        let c = load_str("[server]\nheartbeat_interval = \"30s\"\n").unwrap();
        assert_eq!(c.server.heartbeat_interval, Duration::from_secs(30));
    }

    #[test]
    fn missing_explicit_file_fails() {
        let e = Config::load(&ConfigFile::Explicit("/nonexistent/x.toml".into()), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x.toml") && e.to_string().contains("no such file"));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's signature
    fn env_overrides_nested_keys() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SSE_BRIDGE_SERVER__LISTEN", "0.0.0.0:8081");
            jail.set_env("SSE_BRIDGE_REDIS__PATTERNS", "[\"chat:*\"]");
            let (c, _) = Config::load(&ConfigFile::Default, &Overrides::default()).unwrap();
            assert_eq!(c.server.listen, "0.0.0.0:8081".parse().unwrap());
            assert_eq!(c.redis.unwrap().patterns, vec!["chat:*".to_string()]);
            jail.set_env("SSE_BRIDGE_SERVER__BOGUS", "1");
            let e = Config::load(&ConfigFile::Default, &Overrides::default()).unwrap_err().to_string();
            assert!(e.contains("`server.bogus`"), "{e}");
            Ok(())
        });
    }
}
