//! Runs the real `sse-bridge` binary as a child process, for CLI and signal tests.
//!
//! Every command starts from a clean slate: `SSE_BRIDGE_*` and `RUST_LOG` are removed from the
//! child's environment (tests add back exactly what they mean to test) and the working
//! directory is the caller's choice, so a `./bridge.toml` is only picked up on purpose.
//!
//! Nothing here sleeps to synchronise: exits are reported by a waiter thread over a channel
//! (with the instant the process was reaped), output is collected by reader threads, and
//! "listening" means a TCP connect succeeded.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_sse-bridge");

/// A `sse-bridge` command run in `cwd`, with no `SSE_BRIDGE_*` or `RUST_LOG` variables
/// inherited from the test's own environment.
pub fn bridge_command(cwd: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(cwd).stdin(Stdio::null());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SSE_BRIDGE_") {
            c.env_remove(&k);
        }
    }
    c.env_remove("RUST_LOG");
    c
}

/// What a finished run printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Exit code; panics (with the output) if the process died from a signal.
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or_else(|| panic!("sse-bridge was killed by a signal: {self:#?}"))
    }
}

/// Runs `cmd` to completion; SIGKILLs it and panics if it takes longer than `timeout`
/// (a config error must fail fast, never start serving).
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let mut d = Daemon::spawn(cmd);
    match d.wait_exit(timeout) {
        Some(status) => d.output(status),
        None => panic!("sse-bridge did not exit within {timeout:?}; stderr so far:\n{}", d.stderr()),
    }
}

/// A running `sse-bridge` child. Dropping it SIGKILLs the process if it is still running.
pub struct Daemon {
    pid: Pid,
    exit_rx: mpsc::Receiver<(ExitStatus, Instant)>,
    exited: Option<(ExitStatus, Instant)>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<thread::JoinHandle<()>>,
}

impl Daemon {
    /// Spawns `cmd` with stdout and stderr captured.
    pub fn spawn(cmd: &mut Command) -> Daemon {
        let mut child: Child =
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("spawning {BIN}: {e}"));
        let pid = Pid::from_raw(child.id() as i32);
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().expect("piped stdout"), stdout.clone()),
            collect(child.stderr.take().expect("piped stderr"), stderr.clone()),
        ];
        let (tx, exit_rx) = mpsc::channel();
        thread::spawn(move || {
            let status = child.wait().expect("waiting for sse-bridge");
            let _ = tx.send((status, Instant::now()));
        });
        Daemon { pid, exit_rx, exited: None, stdout, stderr, readers }
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The exit status, if the process has exited (non-blocking).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.exit_rx.try_recv().ok();
        }
        self.exited.map(|(s, _)| s)
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.exit_rx.recv_timeout(timeout).ok();
        }
        self.exited.map(|(s, _)| s)
    }

    /// When the waiter thread reaped the process (after [`wait_exit`](Self::wait_exit)).
    pub fn exited_at(&self) -> Option<Instant> {
        self.exited.map(|(_, at)| at)
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: Signal) {
        kill(self.pid, sig).unwrap_or_else(|e| panic!("kill({}, {sig}): {e}", self.pid));
    }

    /// Polls `addr` with TCP connects until one succeeds. Returns `Err(status)` if the process
    /// exited first; panics if neither happens within `timeout`.
    pub fn wait_listening(&mut self, addr: SocketAddr, timeout: Duration) -> Result<(), ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return Err(status);
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "sse-bridge did not listen on {addr} within {timeout:?}; stderr:\n{}",
                self.stderr()
            );
            // Poll interval while the listener comes up (not a synchronisation sleep).
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// stderr so far (the logs).
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    /// Everything the finished process printed. Call after it exited: waits for the readers
    /// to reach end of file so no trailing output is lost.
    pub fn output(&mut self, status: ExitStatus) -> Output {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Output { status, stdout: self.stdout(), stderr: self.stderr() }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = kill(self.pid, Signal::SIGKILL);
            let _ = self.exit_rx.recv_timeout(Duration::from_secs(5));
        }
    }
}

fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => into.lock().unwrap().extend_from_slice(&buf[..n]),
            }
        }
    })
}
