//! The real `sse-bridge` binary serving a temporary config on free loopback ports, with its
//! logs captured: for tests about what the process logs, how it holds up (its own RSS) and how
//! it ends (signals).

use std::net::SocketAddr;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::app::publish_at;
use super::brokers;
use super::daemon::{self, Daemon};
use super::metrics::metrics_at;

/// A running bridge process.
pub struct BridgeProcess {
    pub daemon: Daemon,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl BridgeProcess {
    /// Starts `sse-bridge --config <temp>/bridge.toml` with `[server] listen`, `[admin] listen`
    /// and then `extra` (more TOML: sections of the test's choosing), with `env` set. Returns
    /// once the public listener accepts connections.
    pub fn start(extra: &str, env: &[(&str, &str)]) -> BridgeProcess {
        let dir = tempfile::Builder::new().prefix("sse-bridge-proc-").tempdir().unwrap();
        // Free ports are reserved by bind-and-release, which is racy; retry on a lost race.
        for attempt in 1..=3 {
            let addr: SocketAddr = ([127, 0, 0, 1], brokers::free_port()).into();
            let admin: SocketAddr = ([127, 0, 0, 1], brokers::free_port()).into();
            let config = dir.path().join("bridge.toml");
            let text = format!(
                "[server]\nlisten = \"{addr}\"\ndrain_timeout = \"3s\"\n\n[admin]\nlisten = \"{admin}\"\n\n{extra}"
            );
            std::fs::write(&config, text).unwrap();
            let mut cmd = daemon::bridge_command(dir.path());
            cmd.arg("--config").arg(&config);
            for (k, v) in env {
                cmd.env(k, v);
            }
            let mut daemon = Daemon::spawn(&mut cmd);
            match daemon.wait_listening(addr, Duration::from_secs(15)) {
                Ok(()) => return BridgeProcess { daemon, addr, admin, dir },
                Err(status) => {
                    let err = daemon.stderr();
                    if err.contains("Cannot bind") && attempt < 3 {
                        continue;
                    }
                    panic!("sse-bridge exited with {status} before listening:\n{err}");
                }
            }
        }
        unreachable!()
    }

    /// `http://addr/path` on its public listener.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    /// `http://admin/path` on its admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// Its admin listener's `/metrics`.
    pub async fn metrics(&self) -> String {
        metrics_at(&self.admin_url("/metrics")).await
    }

    /// Publishes `body` on `topic` (the config must set `[publish] token` to
    /// [`TOKEN`](super::TOKEN)); returns the assigned id.
    pub async fn publish(&self, topic: &str, body: impl Into<reqwest::Body>) -> String {
        publish_at(&self.url(&format!("/publish?topic={}", super::urlencode(topic))), body).await
    }

    /// Resident set size of the process.
    pub fn rss_bytes(&self) -> u64 {
        rss_of(self.daemon.pid().as_raw()).expect("VmRSS of a live process")
    }

    /// SIGTERM, wait for the exit (panics after 15 s), and return everything it logged.
    pub fn stop(mut self) -> String {
        self.daemon.signal(Signal::SIGTERM);
        let status = self
            .daemon
            .wait_exit(Duration::from_secs(15))
            .unwrap_or_else(|| panic!("sse-bridge did not exit after SIGTERM:\n{}", self.daemon.stderr()));
        let out = self.daemon.output(status);
        assert_eq!(out.code(), 0, "sse-bridge exited with {status}:\n{}", out.stderr);
        out.stderr
    }
}

/// The highest resident set size of a process, sampled on a thread of its own (so a busy test
/// runtime does not skew it) until [`RssPeak::stop`].
pub struct RssPeak {
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl RssPeak {
    /// Samples the RSS of `pid` every `every`.
    pub fn start(pid: i32, every: std::time::Duration) -> RssPeak {
        use std::sync::atomic::Ordering;
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (peak, done) = (peak.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_of(pid).unwrap_or(0), Ordering::Relaxed);
                    std::thread::sleep(every); // sampling interval, not synchronisation
                }
            })
        };
        RssPeak { peak, done, thread }
    }

    /// Stops sampling; the highest RSS seen, in bytes.
    pub fn stop(self) -> u64 {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap();
        self.peak.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Resident set size of process `pid`, from `/proc/<pid>/status`; `None` once it is gone.
pub fn rss_of(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    Some(kb * 1024)
}
