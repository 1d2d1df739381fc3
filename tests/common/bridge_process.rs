//! The real `sse-bridge` binary serving a temporary config on free loopback ports, with its
//! logs captured: for tests about what the process logs and how it holds up (its own RSS).
//!
//! Included with `#[path = "common/bridge_process.rs"] mod bridge_process;` next to
//! `mod common;` and `#[path = "common/daemon.rs"] mod daemon;`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::common::brokers;
use crate::daemon::{self, Daemon};

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

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// Resident set size of the process, from `/proc/<pid>/status`.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.daemon.pid())).expect("process is alive");
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc/<pid>/status");
        kb * 1024
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
