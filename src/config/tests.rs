//! Loading end to end through figment: files, the environment, and the errors that name key
//! and source.

use std::time::Duration;

use figment::providers::Env;

use super::*;

fn load_str(toml: &str) -> Result<Config, String> {
    let dir = std::env::temp_dir().join(format!("sse-bridge-cfg-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("bridge.toml");
    std::fs::write(&p, toml).unwrap();
    let r =
        Config::load_with_env(&ConfigFile::Explicit(p), &Overrides::default(), Env::prefixed("SSE_BRIDGE_TEST_NONE_"))
            .map(|l| l.config)
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
        let c = Config::load(&ConfigFile::Default, &Overrides::default()).unwrap().config;
        assert_eq!(c.server.listen, "0.0.0.0:8081".parse().unwrap());
        assert_eq!(c.redis.unwrap().patterns, vec!["chat:*".to_string()]);
        jail.set_env("SSE_BRIDGE_SERVER__BOGUS", "1");
        let e = Config::load(&ConfigFile::Default, &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("`server.bogus`"), "{e}");
        Ok(())
    });
}

/// Loads with no file from the process environment (inside a `figment::Jail`).
fn load_env() -> Result<Config, String> {
    Config::load(&ConfigFile::Default, &Overrides::default()).map(|l| l.config).map_err(|e| e.to_string())
}

#[test]
#[allow(clippy::result_large_err)] // figment::Jail's signature
fn kubernetes_service_links_are_not_read_as_keys() {
    figment::Jail::expect_with(|jail| {
        // What the kubelet injects for the Services `sse-bridge` (ports http 8080, admin 9090)
        // and `sse-bridge-admin` of the same namespace.
        for (svc, ip) in [("SSE_BRIDGE", "10.0.0.1"), ("SSE_BRIDGE_ADMIN", "10.0.0.2")] {
            jail.set_env(format!("{svc}_SERVICE_HOST"), ip);
            jail.set_env(format!("{svc}_SERVICE_PORT"), 8080);
            jail.set_env(format!("{svc}_SERVICE_PORT_HTTP"), 8080);
            jail.set_env(format!("{svc}_SERVICE_PORT_ADMIN"), 9090);
            jail.set_env(format!("{svc}_PORT"), format!("tcp://{ip}:8080"));
            for port in [8080, 9090] {
                jail.set_env(format!("{svc}_PORT_{port}_TCP"), format!("tcp://{ip}:{port}"));
                jail.set_env(format!("{svc}_PORT_{port}_TCP_PROTO"), "tcp");
                jail.set_env(format!("{svc}_PORT_{port}_TCP_PORT"), port);
                jail.set_env(format!("{svc}_PORT_{port}_TCP_ADDR"), ip);
            }
        }
        assert_eq!(load_env()?, Config::default());
        // Real keys beside them are still read.
        jail.set_env("SSE_BRIDGE_SERVER__LISTEN", "0.0.0.0:8081");
        assert_eq!(load_env()?.server.listen, "0.0.0.0:8081".parse().unwrap());
        Ok(())
    });
}

#[test]
#[allow(clippy::result_large_err)] // figment::Jail's signature
fn unknown_keys_beside_service_links_are_still_named() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("SSE_BRIDGE_SERVICE_HOST", "10.0.0.1");
        jail.set_env("SSE_BRIDGE_NOT_A_KEY", "1");
        let e = load_env().unwrap_err();
        assert!(e.contains("`not_a_key`") && e.contains("unknown field"), "{e}");
        assert!(!e.contains("service_host"), "{e}");
        // A service-link name with a value the kubelet never writes is a (wrong) key.
        jail.clear_env();
        jail.set_env("SSE_BRIDGE_PORT", "8080");
        let e = load_env().unwrap_err();
        assert!(e.contains("`port`") && e.contains("unknown field"), "{e}");
        Ok(())
    });
}

#[test]
fn checks_name_the_key_of_every_section() {
    let cases = [
        ("[server]\ncors_origins = [\"app.example.com\"]\n", "`server.cors_origins[0]`"),
        ("[[delivery]]\ntopics = \"a\"\nmax_rate = 0\n", "`delivery[0]`"),
        ("[publish]\ntoken = \"short\"\n", "`publish.token`"),
        ("[fanout]\nshards = 0\n", "`fanout.shards`"),
        ("[replay]\nmax_topics = 0\n", "`replay.max_topics`"),
        ("[limits]\nconnect_burst_per_ip = 0\n", "`limits.connect_burst_per_ip`"),
        ("[limits]\nmax_patterns_per_ip = 10\n", "`limits.max_patterns_per_ip`"),
        ("[limits]\nmax_patterns = 500\nmax_patterns_per_ip = 1000\n", "`limits.max_patterns_per_ip`"),
        ("[limits]\nmax_patterns = 8\nmax_patterns_per_ip = 0\n", "`limits.max_patterns`"),
        ("[telemetry]\nsampling_ratio = 2.0\n", "`telemetry.sampling_ratio`"),
        ("[redis]\nchannels = [\"\"]\n", "`redis.channels[0]`"),
        ("[redis_streams]\nkeys = [\"k\"]\nblock = \"1ms\"\n", "`redis_streams.block`"),
        ("[jetstream]\nstreams = [\"S\"]\nsubjects = [\"a.>.b\"]\n", "`jetstream.subjects[0]`"),
    ];
    for (toml, key) in cases {
        let e = load_str(toml).unwrap_err();
        assert!(e.contains(key) && e.contains("bridge.toml"), "{toml:?}: {e}");
    }
}
