//! The `sse-bridge` binary's command line and configuration loading, end to end: the real
//! executable, real files, real environment variables, real sockets.
//!
//! Every run gets a fresh temporary working directory (so no `./bridge.toml` is picked up by
//! accident) and an environment without `SSE_BRIDGE_*` variables, except where a test sets
//! them or deliberately runs in the repository root.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::brokers;
use common::daemon::{self, Daemon, Output, bridge_command};
use nix::sys::signal::Signal;

/// A config error is reported before anything starts; this is generous for a loaded machine.
const RUN_TIMEOUT: Duration = Duration::from_secs(20);
/// Exit code for an invalid configuration (`--help`: "0 valid, 2 invalid").
const INVALID: i32 = 2;

/// A temporary working directory and a separate directory for config files, so error messages
/// must name the file by the path given, not by a name that happens to be in the cwd.
struct Sandbox {
    cwd: tempfile::TempDir,
    files: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        Sandbox {
            cwd: tempfile::Builder::new().prefix("sse-bridge-cli-cwd-").tempdir().unwrap(),
            files: tempfile::Builder::new().prefix("sse-bridge-cli-cfg-").tempdir().unwrap(),
        }
    }

    /// Writes `contents` to a file named `name` (outside the cwd) and returns its absolute path.
    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.files.path().join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }

    fn cmd(&self) -> std::process::Command {
        bridge_command(self.cwd.path())
    }

    /// `sse-bridge --config FILE --check-config`, run to completion.
    fn check(&self, file: &Path) -> Output {
        daemon::run(self.cmd().arg("--config").arg(file).arg("--check-config"), RUN_TIMEOUT)
    }
}

fn assert_contains(out: &Output, needles: &[&str]) {
    for n in needles {
        assert!(out.stderr.contains(n), "stderr does not contain {n:?}:\n{}\n(stdout: {})", out.stderr, out.stdout);
    }
}

fn assert_invalid(out: &Output) {
    assert_eq!(out.code(), INVALID, "expected exit code {INVALID}; stderr:\n{}", out.stderr);
    assert!(!out.stdout.contains("configuration OK"), "stdout claims OK: {}", out.stdout);
}

#[test]
fn check_config_accepts_the_repository_bridge_toml() {
    let root = env!("CARGO_MANIFEST_DIR");
    // Picked up by default from the working directory…
    let out = daemon::run(bridge_command(Path::new(root)).arg("--check-config"), RUN_TIMEOUT);
    assert_eq!(out.code(), 0, "stderr:\n{}", out.stderr);
    assert!(out.stdout.contains("configuration OK (bridge.toml)"), "the default file was not used: {}", out.stdout);
    // …and named explicitly, as the file's own header comment suggests.
    let out =
        daemon::run(bridge_command(Path::new(root)).args(["--config", "bridge.toml", "--check-config"]), RUN_TIMEOUT);
    assert_eq!(out.code(), 0, "stderr:\n{}", out.stderr);
    assert!(out.stdout.contains("configuration OK"), "{}", out.stdout);
}

#[test]
fn unknown_key_names_key_and_file() {
    let sb = Sandbox::new();
    let file = sb.file("typo.toml", "[server]\nlisne = \"x\"\n");
    let path = file.display().to_string();
    let out = sb.check(&file);
    assert_invalid(&out);
    assert_contains(&out, &["`server.lisne`", &path, "unknown field"]);

    // A normal start (no --check-config) refuses the same file before binding anything.
    let out = daemon::run(sb.cmd().arg("--config").arg(&file), RUN_TIMEOUT);
    assert_invalid(&out);
    assert_contains(&out, &["`server.lisne`", &path]);
}

#[test]
fn bad_nats_url_names_key_file_and_reason() {
    let sb = Sandbox::new();
    let file = sb.file("bad-url.toml", "[nats]\nurl = \"http://x\"\nsubjects=[\"a\"]\n");
    let out = sb.check(&file);
    assert_invalid(&out);
    assert_contains(
        &out,
        &["`nats.url`", &file.display().to_string(), "\"http://x\"", "scheme must be one of nats, tls, ws, wss"],
    );
}

#[test]
fn bad_subject_pattern_names_its_index() {
    let sb = Sandbox::new();
    let file =
        sb.file("bad-subject.toml", "[nats]\nurl = \"nats://127.0.0.1:4222\"\nsubjects = [\"a.>.b\", \"ok.*\"]\n");
    let out = sb.check(&file);
    assert_invalid(&out);
    assert_contains(&out, &["`nats.subjects[0]`", &file.display().to_string(), "\"a.>.b\"", "last token"]);
}

#[test]
fn missing_config_file_is_named() {
    let sb = Sandbox::new();
    let out = daemon::run(sb.cmd().args(["--config", "/nonexistent.toml", "--check-config"]), RUN_TIMEOUT);
    assert_invalid(&out);
    assert_contains(&out, &["/nonexistent.toml", "no such file"]);
}

#[test]
fn unknown_env_key_is_named() {
    let sb = Sandbox::new();
    let out = daemon::run(sb.cmd().env("SSE_BRIDGE_SERVER__BOGUS", "1").arg("--check-config"), RUN_TIMEOUT);
    assert_invalid(&out);
    assert_contains(&out, &["`server.bogus`", "SSE_BRIDGE_", "environment variable"]);
}

#[test]
fn bad_env_value_is_named_with_its_source() {
    let sb = Sandbox::new();
    let file = sb.file("ok.toml", "[nats]\nsubjects = [\"a.>\"]\n");
    let out = daemon::run(
        sb.cmd().env("SSE_BRIDGE_NATS__URL", "http://x").arg("--config").arg(&file).arg("--check-config"),
        RUN_TIMEOUT,
    );
    assert_invalid(&out);
    // The environment set the bad value, so the environment is blamed, not the file.
    assert_contains(&out, &["`nats.url`", "environment variable", "scheme must be one of"]);
    assert!(
        !out.stderr.contains(&file.display().to_string()),
        "the file is blamed for an environment value:\n{}",
        out.stderr
    );
}

/// What the kubelet injects into every pod of a namespace holding the Services `sse-bridge`
/// (ports `http` 8080 and `admin` 9090) and `sse-bridge-admin` (port `admin` 9090), as
/// `helm install sse-bridge` with service links on would produce.
fn service_link_env() -> Vec<(String, String)> {
    let mut env = Vec::new();
    for (svc, ip, ports) in [
        ("SSE_BRIDGE", "10.0.0.1", &[("HTTP", 8080), ("ADMIN", 9090)][..]),
        ("SSE_BRIDGE_ADMIN", "10.0.0.2", &[("ADMIN", 9090)][..]),
    ] {
        env.push((format!("{svc}_SERVICE_HOST"), ip.to_string()));
        env.push((format!("{svc}_SERVICE_PORT"), ports[0].1.to_string()));
        env.push((format!("{svc}_PORT"), format!("tcp://{ip}:{}", ports[0].1)));
        for (name, port) in ports {
            env.push((format!("{svc}_SERVICE_PORT_{name}"), port.to_string()));
            let p = format!("{svc}_PORT_{port}_TCP");
            env.push((p.clone(), format!("tcp://{ip}:{port}")));
            env.push((format!("{p}_PROTO"), "tcp".into()));
            env.push((format!("{p}_PORT"), port.to_string()));
            env.push((format!("{p}_ADDR"), ip.to_string()));
        }
    }
    env
}

#[test]
fn kubernetes_service_links_pass_check_config() {
    let sb = Sandbox::new();
    let file = sb.file("ok.toml", "[nats]\nsubjects = [\"a.>\"]\n");
    let mut cmd = sb.cmd();
    cmd.envs(service_link_env()).env("SSE_BRIDGE_SERVER__LISTEN", "0.0.0.0:8080");
    let out = daemon::run(cmd.arg("--config").arg(&file).arg("--check-config"), RUN_TIMEOUT);
    assert_eq!(out.code(), 0, "stderr:\n{}", out.stderr);
    assert!(out.stdout.contains("configuration OK"), "{}", out.stdout);
}

#[test]
fn unknown_env_key_beside_service_links_is_named() {
    let sb = Sandbox::new();
    let mut cmd = sb.cmd();
    cmd.envs(service_link_env()).env("SSE_BRIDGE_NOT_A_KEY", "1");
    let out = daemon::run(cmd.arg("--check-config"), RUN_TIMEOUT);
    assert_invalid(&out);
    assert_contains(&out, &["`not_a_key`", "SSE_BRIDGE_", "unknown field"]);
    assert!(!out.stderr.contains("service"), "a service link was read as a key:\n{}", out.stderr);

    // A service-link name with a value Kubernetes never writes is a key, so it is refused.
    let out = daemon::run(sb.cmd().env("SSE_BRIDGE_PORT", "8080").arg("--check-config"), RUN_TIMEOUT);
    assert_invalid(&out);
    assert_contains(&out, &["`port`", "unknown field"]);
}

#[test]
fn auth_and_durable_checks_run_before_start() {
    let sb = Sandbox::new();
    let missing_key = sb.file("auth.toml", "[auth]\nalgorithm = \"ES256\"\npublic_key_file = \"/nonexistent.pem\"\n");
    for out in [sb.check(&missing_key), daemon::run(sb.cmd().arg("--config").arg(&missing_key), RUN_TIMEOUT)] {
        assert_invalid(&out);
        assert_contains(&out, &["`auth.public_key_file`", &missing_key.display().to_string(), "/nonexistent.pem"]);
    }
    let out = daemon::run(sb.cmd().env("SSE_BRIDGE_AUTH__SECRET", "short").arg("--check-config"), RUN_TIMEOUT);
    assert_invalid(&out);
    assert_contains(&out, &["`auth.secret`", "environment variable", "at least 32 bytes"]);
    // Two Redis stream keys whose id tags collide (FNV-1a of the name, 16 bits).
    let collide = sb.file("tags.toml", "[redis_streams]\nkeys = [\"k21\", \"k301\"]\n");
    let out = sb.check(&collide);
    assert_invalid(&out);
    assert_contains(&out, &["`jetstream.streams`", "\"k21\" and \"k301\" share the short id tag"]);
}

#[test]
fn env_listen_override_is_honoured() {
    let sb = Sandbox::new();
    // Free ports are reserved by bind-and-release, which is racy; retry on a lost race.
    for attempt in 1..=3 {
        let listen: SocketAddr = ([127, 0, 0, 1], brokers::free_port()).into();
        let admin: SocketAddr = ([127, 0, 0, 1], brokers::free_port()).into();
        let mut d = Daemon::spawn(
            sb.cmd()
                .env("SSE_BRIDGE_SERVER__LISTEN", listen.to_string())
                // The built-in admin port (9090) may be taken on a developer machine.
                .env("SSE_BRIDGE_ADMIN__LISTEN", admin.to_string()),
        );
        match d.wait_listening(listen, Duration::from_secs(15)) {
            Ok(()) => {}
            Err(status) => {
                let err = d.stderr();
                if err.contains("Cannot bind") && attempt < 3 {
                    continue;
                }
                panic!("sse-bridge exited with {status} before listening on {listen}:\n{err}");
            }
        }
        // The listener is ours (not another process that grabbed the port): it answers like
        // the bridge's public listener.
        let reply = http_get(listen, "/nope");
        assert!(
            reply.starts_with("HTTP/1.1 404") && reply.contains("no such endpoint"),
            "unexpected reply from {listen}: {reply}"
        );
        d.signal(Signal::SIGTERM);
        let status = d
            .wait_exit(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no exit within 10s of SIGTERM:\n{}", d.stderr()));
        let out = d.output(status);
        assert_eq!(out.code(), 0, "stderr:\n{}", out.stderr);
        assert_contains(&out, &[&format!("listen={listen}"), "built-in defaults"]);
        // stderr is a pipe here, as under journald or `docker logs`: plain text, no colours.
        assert!(!out.stderr.contains('\x1b'), "ANSI escapes in logs written to a pipe:\n{}", out.stderr);
        return;
    }
}

/// One plain HTTP/1.1 GET; returns the whole response as text.
fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    buf
}

/// Two sources on one broker that would deliver the same messages are refused before anything
/// starts, by `--check-config` and by a normal start alike, naming both keys and values.
#[test]
fn overlapping_sources_are_refused_naming_both() {
    let sb = Sandbox::new();
    let nats_js = sb.file(
        "overlap-nats.toml",
        "[nats]\nsubjects = [\"demo.>\", \"bench.>\"]\n\n[jetstream]\nstreams = [\"BENCH\"]\nsubjects = [\"bench.js.>\"]\n",
    );
    for out in [sb.check(&nats_js), daemon::run(sb.cmd().arg("--config").arg(&nats_js), RUN_TIMEOUT)] {
        assert_invalid(&out);
        assert_contains(
            &out,
            &[
                "`nats.subjects[1]`",
                "\"bench.>\"",
                "`jetstream.subjects[0]` = \"bench.js.>\"",
                &nats_js.display().to_string(),
                "both deliver",
            ],
        );
    }
    let channel = sb.file(
        "overlap-redis.toml",
        "[redis]\nchannels = [\"audit\"]\n\n[redis_streams]\nkeys = [\"orders\", \"audit\"]\n",
    );
    let out = sb.check(&channel);
    assert_invalid(&out);
    assert_contains(&out, &["`redis.channels[0]`", "\"audit\"", "`redis_streams.keys[1]` = \"audit\""]);
    let pattern =
        sb.file("overlap-glob.toml", "[redis]\npatterns = [\"demo.*\"]\n\n[redis_streams]\nkeys = [\"demo.audit\"]\n");
    let out = sb.check(&pattern);
    assert_invalid(&out);
    assert_contains(&out, &["`redis.patterns[0]`", "\"demo.*\"", "`redis_streams.keys[0]` = \"demo.audit\""]);
    // The shipped demo sources beside durable sources that cannot overlap them are fine.
    let fine = sb.file(
        "no-overlap.toml",
        "[nats]\nsubjects = [\"demo.>\"]\n\n[redis]\nchannels = [\"demo\"]\npatterns = [\"demo.*\"]\n\n\
         [jetstream]\nstreams = [\"BENCH\"]\nsubjects = [\"bench.js.>\"]\n\n[redis_streams]\nkeys = [\"audit\"]\n",
    );
    let out = sb.check(&fine);
    assert_eq!(out.code(), 0, "stderr:\n{}", out.stderr);
}
