//! Private broker fixtures for integration tests.
//!
//! Each fixture launches its *own* `nats-server` / `redis-server` on a free
//! loopback port with its state in a fixture-owned temporary directory. Tests
//! must never share the machine-wide brokers on 4222/6379: tests kill and
//! restart brokers to exercise reconnection, and parallel tests would see each
//! other's messages.
//!
//! Readiness is decided by actually talking to the server (NATS `INFO` line,
//! Redis `PING`/`+PONG`), polled on a short interval under an overall
//! deadline, so tests neither sleep for a fixed time nor hang forever. The
//! probe also checks that the process answering is *our* child (NATS
//! `server_name`, Redis `process_id`), because "free port" selection is racy:
//! another test could grab the same port between our probe bind and the
//! server's bind, and we must not mistake its server for ours.
//!
//! Binaries are looked up on `PATH`; `NATS_SERVER_BIN` / `REDIS_SERVER_BIN`
//! override that.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Overall budget for a server to become ready (per `start`/`restart`).
const STARTUP_DEADLINE: Duration = Duration::from_secs(10);
/// Delay between readiness probes; short so tests start fast.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Cap on a single probe, so a half-started server cannot eat the deadline.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause before relaunching after the server exited early (e.g. bind failed).
const RELAUNCH_BACKOFF: Duration = Duration::from_millis(100);
/// `start` gives up after this many launches that exit before ready.
const MAX_EARLY_EXITS_ON_START: usize = 5;
/// How much of each log file to include in a failure message.
const LOG_TAIL_BYTES: u64 = 4096;

/// A private `nats-server` with JetStream enabled (store in the fixture's
/// temp dir), listening on `127.0.0.1:port()`.
pub struct NatsServer {
    inner: ServerProcess,
}

impl NatsServer {
    /// Launches the server and waits until it answers with its `INFO` line.
    /// Panics (with the server's output) if it is not ready within 10s.
    pub async fn start() -> NatsServer {
        NatsServer { inner: ServerProcess::start(Kind::Nats).await }
    }

    /// Like [`start`](Self::start), with the HTTP monitoring endpoint on (`-m PORT`), so a test
    /// can see what the server holds ([`connz`](Self::connz)). The port is kept on restart.
    pub async fn start_monitored() -> NatsServer {
        NatsServer { inner: ServerProcess::start(Kind::NatsMonitored(free_port())).await }
    }

    /// `http://127.0.0.1:MPORT` of a server started with [`start_monitored`](Self::start_monitored).
    pub fn monitor_url(&self) -> String {
        match self.inner.kind {
            Kind::NatsMonitored(m) => format!("http://127.0.0.1:{m}"),
            _ => panic!("start the server with NatsServer::start_monitored to read its monitoring"),
        }
    }

    /// The subjects every client connection named `client_name` has subscribed, from
    /// `/connz?subs=1` (sorted; empty when no such connection is open).
    pub async fn subscriptions_of(&self, client_name: &str) -> Vec<String> {
        let url = format!("{}/connz?subs=1&limit=1024", self.monitor_url());
        let body: serde_json::Value = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("reqwest client")
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"));
        let mut subs: Vec<String> = body["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["name"] == client_name)
            .flat_map(|c| c["subscriptions_list"].as_array().cloned().unwrap_or_default())
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect();
        subs.sort();
        subs
    }

    /// Like [`start`](Self::start) with `conf` as the server's configuration file (`-c`, for
    /// TLS, users and operator mode); the port, store and name flags still apply.
    pub async fn start_with_config(conf: &str) -> NatsServer {
        NatsServer { inner: ServerProcess::start_with(Kind::Nats, Some(conf.to_owned()), Vec::new()).await }
    }

    /// `nats://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.inner.port)
    }

    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// PID of the running server, `None` after [`kill9`](Self::kill9).
    pub fn pid(&self) -> Option<u32> {
        self.inner.pid()
    }

    /// The fixture's temp dir (JetStream store lives in `<dir>/jetstream`;
    /// logs in `<dir>/server.stdout.log` / `server.stderr.log`).
    pub fn dir(&self) -> &Path {
        self.inner.dir.path()
    }

    /// SIGKILLs the server and reaps it. Simulates a crash: no graceful
    /// shutdown, no goodbye to connected clients. No-op if not running.
    pub fn kill9(&mut self) {
        self.inner.kill9();
    }

    /// Starts the server again on the *same* port (and same JetStream store),
    /// so clients configured with `url()` can reconnect. Kills the current
    /// process first if it is still running. Retries while the port cannot be
    /// bound yet; panics if not ready within 10s.
    pub async fn restart(&mut self) {
        self.inner.restart().await;
    }
}

/// A private, non-persistent `redis-server` listening on `127.0.0.1:port()`.
pub struct RedisServer {
    inner: ServerProcess,
}

impl RedisServer {
    /// Launches the server and waits until it answers `PING` with `+PONG`.
    /// Panics (with the server's output) if it is not ready within 10s.
    pub async fn start() -> RedisServer {
        RedisServer { inner: ServerProcess::start(Kind::Redis).await }
    }

    /// Like [`start`](Self::start) with a configuration file (`conf`, written to the fixture's
    /// directory and passed first, as redis-server wants it; a Sentinel's must be writable) and
    /// extra arguments (`--tls-port`, `--sentinel`, `--cluster-enabled yes`, …). The plain
    /// port stays on: the readiness probe uses it.
    pub async fn start_with(conf: Option<&str>, extra: &[&str]) -> RedisServer {
        let extra = extra.iter().map(|s| s.to_string()).collect();
        RedisServer { inner: ServerProcess::start_with(Kind::Redis, conf.map(str::to_owned), extra).await }
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.inner.port)
    }

    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// PID of the running server, `None` after [`kill9`](Self::kill9).
    pub fn pid(&self) -> Option<u32> {
        self.inner.pid()
    }

    /// The fixture's temp dir (Redis working dir and log files).
    pub fn dir(&self) -> &Path {
        self.inner.dir.path()
    }

    /// SIGKILLs the server and reaps it. No-op if not running.
    pub fn kill9(&mut self) {
        self.inner.kill9();
    }

    /// Starts the server again on the *same* port. Redis runs without
    /// persistence, so the restarted server is empty. Kills the current
    /// process first if still running; panics if not ready within 10s.
    pub async fn restart(&mut self) {
        self.inner.restart().await;
    }
}

/// Connects an `async_nats` client, panicking with the URL on failure.
pub async fn nats_client(url: &str) -> async_nats::Client {
    async_nats::connect(url).await.unwrap_or_else(|e| panic!("connecting to NATS at {url}: {e}"))
}

/// Opens a multiplexed Redis connection (the kind used for commands such as
/// `PUBLISH`), panicking with the URL on failure.
pub async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap_or_else(|e| panic!("invalid Redis URL {url}: {e}"))
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("connecting to Redis at {url}: {e}"))
}

/// Opens a dedicated RESP2 pub/sub connection (a multiplexed connection
/// cannot `SUBSCRIBE` under RESP2).
pub async fn redis_pubsub(url: &str) -> redis::aio::PubSub {
    redis::Client::open(url)
        .unwrap_or_else(|e| panic!("invalid Redis URL {url}: {e}"))
        .get_async_pubsub()
        .await
        .unwrap_or_else(|e| panic!("opening Redis pub/sub connection to {url}: {e}"))
}

/// `PUBLISH channel payload`; returns the number of clients that received
/// it (so a test can wait until the bridge has subscribed: poll until > 0).
pub async fn redis_publish(
    conn: &mut redis::aio::MultiplexedConnection,
    channel: &str,
    payload: impl AsRef<[u8]>,
) -> i64 {
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload.as_ref())
        .query_async::<i64>(conn)
        .await
        .unwrap_or_else(|e| panic!("PUBLISH to Redis channel {channel:?}: {e}"))
}

/// Reserves a currently free loopback port by binding port 0 and releasing
/// it. Racy by nature (see module docs); callers verify server identity.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind(("127.0.0.1", 0)).expect("binding 127.0.0.1:0");
    listener.local_addr().expect("local_addr of probe listener").port()
}

// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Kind {
    Nats,
    /// NATS with its monitoring endpoint on this port.
    NatsMonitored(u16),
    Redis,
}

impl Kind {
    fn binary(self) -> String {
        let (var, default) = match self {
            Kind::Nats | Kind::NatsMonitored(_) => ("NATS_SERVER_BIN", "nats-server"),
            Kind::Redis => ("REDIS_SERVER_BIN", "redis-server"),
        };
        std::env::var(var).unwrap_or_else(|_| default.to_owned())
    }

    #[rustfmt::skip] // keep flag/value pairs on one line
    fn args(self, port: u16, dir: &Path, name: &str) -> Vec<String> {
        let port = port.to_string();
        let dir = dir.to_string_lossy().into_owned();
        if let Kind::NatsMonitored(m) = self {
            let mut v = Kind::Nats.args(port.parse().expect("port"), dir.as_ref(), name);
            v.extend(["-m".to_owned(), m.to_string()]);
            return v;
        }
        let v: &[&str] = match self {
            // `-n` gives the server a unique name that the readiness probe
            // looks for in `INFO`, proving the port is served by our child.
            Kind::Nats => &["-a", "127.0.0.1", "-p", &port, "-js", "-sd", &dir, "-n", name],
            Kind::NatsMonitored(_) => unreachable!("handled above"),
            Kind::Redis => &[
                "--port", &port,
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", &dir,
            ],
        };
        v.iter().map(|s| s.to_string()).collect()
    }
}

/// The shared machinery behind both fixtures: one child process, its port,
/// and the temp dir holding its state and logs.
struct ServerProcess {
    kind: Kind,
    port: u16,
    /// Unique per fixture; used as NATS `server_name`.
    name: String,
    child: Option<Child>,
    launches: usize,
    /// A configuration file's content, written to `<dir>/server.conf` at each launch.
    config: Option<String>,
    /// Arguments after the fixture's own.
    extra: Vec<String>,
    /// Dropped after `Drop::drop` has killed the child, so the server never
    /// sees its directory vanish while running.
    dir: tempfile::TempDir,
}

impl ServerProcess {
    async fn start(kind: Kind) -> ServerProcess {
        Self::start_with(kind, None, Vec::new()).await
    }

    async fn start_with(kind: Kind, config: Option<String>, extra: Vec<String>) -> ServerProcess {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!("sse-bridge-test-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let dir = tempfile::Builder::new()
            .prefix(&format!("sse-bridge-{kind:?}-").to_lowercase())
            .tempdir()
            .expect("creating fixture temp dir");
        let mut p = ServerProcess { kind, port: free_port(), name, child: None, launches: 0, config, extra, dir };
        let deadline = Instant::now() + STARTUP_DEADLINE;
        let mut early_exits = 0;
        while let Err(status) = p.launch_and_wait(deadline).await {
            // Most likely someone took the port between free_port() and the
            // server's bind. The port is not published yet, so pick another.
            // A server that keeps dying is broken: fail fast, not at the
            // deadline.
            early_exits += 1;
            if early_exits >= MAX_EARLY_EXITS_ON_START {
                p.fail(&format!("exited with {status} on {early_exits} launches in a row"));
            }
            p.port = free_port();
            tokio::time::sleep(RELAUNCH_BACKOFF).await;
        }
        p
    }

    async fn restart(&mut self) {
        self.kill9();
        let deadline = Instant::now() + STARTUP_DEADLINE;
        // Same port on purpose: clients hold this URL. If the old socket is
        // still being torn down the bind fails and the server exits; retry.
        while self.launch_and_wait(deadline).await.is_err() {
            tokio::time::sleep(RELAUNCH_BACKOFF).await;
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Child::kill is SIGKILL on Unix. It may fail if the process has
            // already exited; wait() below reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_path(&self, stream: &str) -> PathBuf {
        self.dir.path().join(format!("server.{stream}.log"))
    }

    /// Opens a log file for appending, so every launch attempt's output is
    /// kept for the failure message; writes a header naming the attempt.
    fn open_log(&self, stream: &str, header: &str) -> File {
        let path = self.log_path(stream);
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        let _ = writeln!(f, "{header}");
        f
    }

    /// Spawns the server and polls until it is ready. `Err` means the
    /// process exited before becoming ready while time remains (the caller
    /// decides whether to retry); panics once `deadline` passes.
    async fn launch_and_wait(&mut self, deadline: Instant) -> Result<(), ExitStatus> {
        self.launches += 1;
        let binary = self.kind.binary();
        let mut args = self.kind.args(self.port, self.dir.path(), &self.name);
        if let Some(conf) = &self.config {
            let path = self.dir.path().join("server.conf");
            // A Sentinel rewrites its file: only the first launch writes it.
            if !path.exists() {
                std::fs::write(&path, conf).expect("writing the server's config file");
            }
            let path = path.to_string_lossy().into_owned();
            let first = match self.kind {
                Kind::Nats | Kind::NatsMonitored(_) => vec!["-c".to_owned(), path],
                Kind::Redis => vec![path],
            };
            args.splice(0..0, first);
        }
        args.extend(self.extra.iter().cloned());
        let header = format!("=== launch #{}: {binary} {}", self.launches, args.join(" "));
        let child = Command::new(&binary)
            .args(&args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(self.open_log("stdout", &header))
            .stderr(self.open_log("stderr", &header))
            .spawn()
            .unwrap_or_else(|e| panic!("failed to spawn `{binary}` (is it installed and on PATH?): {e}"));
        let pid = child.id();
        self.child = Some(child);

        loop {
            let child = self.child.as_mut().expect("child just spawned");
            if let Some(status) = child.try_wait().expect("try_wait on server child") {
                self.child = None;
                if Instant::now() >= deadline {
                    self.fail(&format!("exited with {status} before becoming ready"));
                }
                return Err(status);
            }
            let last_probe_err = match tokio::time::timeout(PROBE_TIMEOUT, self.probe(pid)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => e,
                Err(_) => format!("probe timed out after {PROBE_TIMEOUT:?}"),
            };
            if Instant::now() >= deadline {
                self.kill9();
                self.fail(&format!("not ready within {STARTUP_DEADLINE:?} (last probe: {last_probe_err})"));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn probe(&self, pid: u32) -> Result<(), String> {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).await.map_err(|e| format!("connect: {e}"))?;
        let mut stream = BufReader::new(stream);
        match self.kind {
            Kind::Nats | Kind::NatsMonitored(_) => {
                // The server speaks first: `INFO {json}\r\n`.
                let line = read_line(&mut stream).await?;
                if !line.starts_with("INFO ") {
                    return Err(format!("expected INFO line, got {line:?}"));
                }
                if !line.contains(&format!("\"server_name\":\"{}\"", self.name)) {
                    return Err(format!("port answered by another nats-server: {line}"));
                }
                Ok(())
            }
            Kind::Redis => {
                send(&mut stream, b"PING\r\n").await?;
                let line = read_line(&mut stream).await?;
                if line != "+PONG\r\n" {
                    // e.g. `-LOADING ...` while starting up
                    return Err(format!("PING answered {line:?}"));
                }
                send(&mut stream, b"INFO server\r\n").await?;
                let info = read_bulk(&mut stream).await?;
                if !info.contains(&format!("process_id:{pid}\r\n")) {
                    return Err("port answered by another redis-server".to_owned());
                }
                Ok(())
            }
        }
    }

    fn fail(&self, why: &str) -> ! {
        panic!(
            "{} on 127.0.0.1:{} {why}\n--- stdout (tail) ---\n{}\n--- stderr (tail) ---\n{}",
            self.kind.binary(),
            self.port,
            log_tail(&self.log_path("stdout")),
            log_tail(&self.log_path("stderr")),
        )
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

async fn send(stream: &mut BufReader<TcpStream>, bytes: &[u8]) -> Result<(), String> {
    stream.get_mut().write_all(bytes).await.map_err(|e| format!("write: {e}"))
}

async fn read_line(stream: &mut BufReader<TcpStream>) -> Result<String, String> {
    let mut line = Vec::new();
    let n = stream.read_until(b'\n', &mut line).await.map_err(|e| format!("read: {e}"))?;
    if n == 0 {
        return Err("connection closed before a reply".to_owned());
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Reads one RESP bulk string (`$LEN\r\n<LEN bytes>\r\n`).
async fn read_bulk(stream: &mut BufReader<TcpStream>) -> Result<String, String> {
    let header = read_line(stream).await?;
    let len: usize = header
        .strip_prefix('$')
        .and_then(|s| s.trim_end().parse().ok())
        .ok_or_else(|| format!("expected bulk string, got {header:?}"))?;
    let mut body = vec![0; len + 2];
    stream.read_exact(&mut body).await.map_err(|e| format!("read bulk: {e}"))?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

fn log_tail(path: &Path) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("<cannot open {}>", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}
