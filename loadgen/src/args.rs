//! The command line: what to measure and the bounds every value must keep.

use clap::{Parser, ValueEnum};

use crate::target::{UrlTemplate, loopback_addr};

/// Most connections one run may open, so no invocation runs away.
pub const MAX_CONNECTIONS: usize = 200_000;
/// Longest run (and longest wait of any kind), in seconds, for the same reason.
pub const MAX_DURATION_S: f64 = 3600.0;
/// Highest publish rate, events per second, for the same reason.
pub const MAX_RATE: f64 = 1_000_000.0;
/// Most bridge addresses the rollout mode's stand-in load balancer takes.
pub const MAX_TARGETS: usize = 8;

/// What a run measures; each mode answers one question about a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Connect, publish at a fixed rate, measure delivery.
    Load,
    /// Connect, publish nothing, measure the server's memory per idle connection.
    Idle,
    /// Browser-like EventSource clients move from the first of --targets to the others when it
    /// gets SIGTERM (--sigterm-pid): who came back, what was lost, how the herd arrived.
    Rollout,
}

/// Where the events come from; the server's own endpoint or a broker it bridges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Publisher {
    /// POST to --pub-url (the server's own publish endpoint).
    Http,
    /// PUB on NATS (text protocol) at --nats.
    Nats,
    /// PUBLISH on Redis at --redis.
    Redis,
}

/// Load generator for SSE servers on this machine (loopback addresses only).
#[derive(Debug, Parser)]
#[command(name = "sse-loadgen", version)]
pub struct Args {
    /// What to measure.
    #[arg(long, value_enum, default_value = "load")]
    pub mode: Mode,
    /// Subscribe URL (`http://` or `https://`); {topic} is replaced by each connection's topic.
    #[arg(long, default_value = "http://127.0.0.1:8080/events?topic={topic}")]
    pub sub_url: String,
    /// SSE connections to open.
    #[arg(long, short = 'c', default_value_t = 100)]
    pub connections: usize,
    /// Topics; connection i subscribes to topic i % K, event i goes to topic i % K.
    #[arg(long, short = 'k', default_value_t = 10)]
    pub topics: usize,
    /// Topic names are PREFIX.0 … PREFIX.K-1 (default: bench.<random>, fresh per run).
    #[arg(long)]
    pub topic_prefix: Option<String>,
    /// First topic number: topics are PREFIX.OFFSET … PREFIX.(OFFSET+K-1), so several load
    /// generators (one per server, each under RLIMIT_NOFILE) can share one topic space.
    #[arg(long, default_value_t = 0)]
    pub topic_offset: u64,
    /// Publish no earlier than this Unix time in milliseconds (after connecting and --settle),
    /// so several load generators publish over the same window.
    #[arg(long)]
    pub start_at_ms: Option<u64>,
    /// Events per second, over all topics.
    #[arg(long, short = 'r', default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of publishing (load) or of waiting once connected (idle).
    #[arg(long, short = 'd', default_value_t = 10.0)]
    pub duration: f64,
    /// Payload size in bytes (the stamp is padded to it).
    #[arg(long, default_value_t = 256)]
    pub payload_bytes: usize,
    /// How events are published.
    #[arg(long, value_enum, default_value = "http")]
    pub publisher: Publisher,
    /// Publish URL for --publisher http (`http://` or `https://`); {topic} is replaced.
    #[arg(long, default_value = "http://127.0.0.1:8080/publish?topic={topic}")]
    pub pub_url: String,
    /// The CA certificate(s) (PEM) that `https://` URLs are verified against; required by them.
    #[arg(long)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Bearer token for the publish URL (sse-bridge's publish.token).
    #[arg(long, env = "SSE_LOADGEN_PUB_TOKEN")]
    pub pub_token: Option<String>,
    /// Concurrent HTTP publish connections (each topic always uses the same one).
    #[arg(long, default_value_t = 4)]
    pub pub_conns: usize,
    /// NATS address for --publisher nats.
    #[arg(long, default_value = "127.0.0.1:4222")]
    pub nats: String,
    /// Redis address for --publisher redis.
    #[arg(long, default_value = "127.0.0.1:6379")]
    pub redis: String,
    /// Server process ids (comma-separated; all of nginx's workers) for CPU and memory.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Source addresses 127.0.0.2 … 127.0.0.(1+S) the connections are spread over, so more
    /// connections fit than one address has ephemeral ports.
    #[arg(long, default_value_t = 8)]
    pub source_ips: u8,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Seconds to wait after everyone connected, before measuring (lets the server settle).
    #[arg(long, default_value_t = 1.0)]
    pub settle: f64,
    /// Seconds to wait for the last deliveries after publishing ends.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Read buffer per connection, bytes.
    #[arg(long, default_value_t = 2048)]
    pub read_buf: usize,
    /// Tokio worker threads of the load generator.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// A label copied into the JSON line (e.g. "bridge", "nchan").
    #[arg(long, default_value = "")]
    pub label: String,
    /// A scenario name copied into the JSON line (e.g. "1k-x-1000"), for scripts.
    #[arg(long, default_value = "")]
    pub scenario: String,
    /// Append the JSON line to this file too.
    #[arg(long)]
    pub json_out: Option<std::path::PathBuf>,
    /// Extra connections (spread over the topics) that subscribe and then never read, with a
    /// 4 KiB receive buffer: stalled clients, to measure whether they delay the others.
    #[arg(long, default_value_t = 0)]
    pub stalled: usize,
    /// The bridges (host:port, loopback), in the stand-in load balancer's order: every client
    /// starts on the first; each reconnect goes to the next live one.
    #[arg(long, value_delimiter = ',', help_heading = "Rollout mode")]
    pub targets: Vec<String>,
    /// Path of the stream; the topics are appended as `topic=` parameters.
    #[arg(long, default_value = "/events", help_heading = "Rollout mode")]
    pub path: String,
    /// Topics every event of which must arrive exactly once across the move (durable: a
    /// JetStream stream's subjects). Each client subscribes to all topics in one stream.
    #[arg(long, value_delimiter = ',', help_heading = "Rollout mode")]
    pub durable_topic: Vec<String>,
    /// Ring-only topics (core NATS): the move may cost events, announced by a gap event.
    #[arg(long, value_delimiter = ',', help_heading = "Rollout mode")]
    pub core_topic: Vec<String>,
    /// Process to SIGTERM (the first target) once every client is connected and --steady
    /// seconds of events went by.
    #[arg(long, help_heading = "Rollout mode")]
    pub sigterm_pid: Option<u32>,
    /// Seconds of publishing with every client connected, before the SIGTERM.
    #[arg(long, default_value_t = 3.0, help_heading = "Rollout mode")]
    pub steady: f64,
    /// Seconds to wait for every client to be back after the SIGTERM.
    #[arg(long, default_value_t = 120.0, help_heading = "Rollout mode")]
    pub back_timeout: f64,
    /// Seconds of publishing after every client is back (then --drain for the last events).
    #[arg(long, default_value_t = 3.0, help_heading = "Rollout mode")]
    pub after: f64,
    /// Reconnection time before the server sent any `retry:` (browsers use about 3 s).
    #[arg(long, default_value_t = 3000, help_heading = "Rollout mode")]
    pub reconnect_ms: u64,
    /// Write the connects per 100 ms at each target as CSV to this file (for plots).
    #[arg(long, help_heading = "Rollout mode")]
    pub timeline_out: Option<std::path::PathBuf>,
}

pub fn check(a: &Args) -> Result<(), String> {
    if a.connections == 0 || a.connections > MAX_CONNECTIONS {
        return Err(format!("--connections must be 1..={MAX_CONNECTIONS}"));
    }
    if !(a.duration > 0.0 && a.duration <= MAX_DURATION_S) {
        return Err(format!("--duration must be in (0, {MAX_DURATION_S}] seconds"));
    }
    if !(a.rate > 0.0 && a.rate <= MAX_RATE) {
        return Err(format!("--rate must be in (0, {MAX_RATE}]"));
    }
    if a.topics == 0 || a.topics > 100_000 {
        return Err("--topics must be 1..=100000".into());
    }
    if !(0.0..=600.0).contains(&a.drain) || !(0.0..=600.0).contains(&a.settle) {
        return Err("--drain and --settle must be 0..=600 seconds".into());
    }
    if a.read_buf < 512 {
        return Err("--read-buf must be at least 512".into());
    }
    if a.stalled > 10_000 {
        return Err("--stalled must be 0..=10000".into());
    }
    if a.topic_offset > 1_000_000_000 {
        return Err("--topic-offset must be 0..=1000000000".into());
    }
    if let Some(at) = a.start_at_ms {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        if at > now + (MAX_DURATION_S * 1000.0) as u64 {
            return Err(format!("--start-at-ms must be within {MAX_DURATION_S} s from now"));
        }
    }
    if a.source_ips == 0 || a.source_ips > 250 {
        return Err("--source-ips must be 1..=250".into());
    }
    if a.mode == Mode::Rollout {
        return check_rollout(a);
    }
    let mut tls = UrlTemplate::parse(&a.sub_url)?.tls;
    match a.publisher {
        Publisher::Http => tls |= UrlTemplate::parse(&a.pub_url)?.tls,
        Publisher::Nats => drop(loopback_addr(&a.nats)?),
        Publisher::Redis => drop(loopback_addr(&a.redis)?),
    }
    if tls && a.ca_file.is_none() {
        return Err("https:// URLs need --ca-file (the CA that signed the server's certificate)".into());
    }
    Ok(())
}

/// The rollout mode's own rules: it publishes through NATS, to at most
/// [`crate::eventsource::MAX_TOPICS`] topics, and must know whom to SIGTERM.
fn check_rollout(a: &Args) -> Result<(), String> {
    if a.targets.is_empty() || a.targets.len() > MAX_TARGETS {
        return Err(format!("--targets must list 1..={MAX_TARGETS} addresses"));
    }
    for t in &a.targets {
        loopback_addr(t)?;
    }
    loopback_addr(&a.nats)?;
    let k = a.durable_topic.len() + a.core_topic.len();
    if k == 0 || k > crate::eventsource::MAX_TOPICS {
        return Err(format!("--durable-topic and --core-topic: 1..={} topics in all", crate::eventsource::MAX_TOPICS));
    }
    if a.sigterm_pid.is_none_or(|p| p <= 1) {
        return Err("--sigterm-pid: the process id of the first target".into());
    }
    if !a.path.starts_with('/') || a.path.contains(['?', ' ', '\r', '\n']) {
        return Err("--path must be an absolute path without a query".into());
    }
    for v in [a.steady, a.back_timeout, a.after] {
        if !(0.0..=MAX_DURATION_S).contains(&v) {
            return Err(format!("--steady, --back-timeout and --after must be 0..={MAX_DURATION_S} seconds"));
        }
    }
    if !(100..=60_000).contains(&a.reconnect_ms) {
        return Err("--reconnect-ms must be 100..=60000".into());
    }
    Ok(())
}
