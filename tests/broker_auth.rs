//! The brokers people actually run: private nats-server and redis-server instances secured the
//! way production ones are (TLS with a private CA, client certificates, NKey users, tokens,
//! operator mode with `.creds`, Redis ACL users, Sentinel, Cluster), each made by the test on
//! free ports with certificates from a CA the test makes. Events must flow through the bridge
//! in each; wrong settings must fail with a clear log line while the source keeps retrying.

mod common;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use common::brokers::{NatsServer, RedisServer, free_port, redis_conn, redis_publish};
use common::certs::TestCa;
use common::logs::CapturedLogs;
use common::{EVENT_TIMEOUT, TestApp, nats_config, start_app, sync_on_probe, test_config, wait_until};
use sse_bridge::config::{ClientTlsConfig, NatsConfig, RedisConfig, RedisStreamsConfig};

// ---------------------------------------------------------------------------------------------
// NATS

/// A `tls { }` block for nats-server with a certificate for 127.0.0.1 from `ca`.
fn nats_tls_block(dir: &Path, ca: &TestCa, verify: bool) -> String {
    let ca_file = ca.write(dir, "nats-ca.pem");
    let (cert, key) = ca.issue("nats", &["127.0.0.1", "localhost"]).write(dir, "nats-server");
    format!("tls {{\n  cert_file: {cert:?}\n  key_file: {key:?}\n  ca_file: {ca_file:?}\n  verify: {verify}\n}}\n")
}

/// A bridge reading `events.>` from `url` with `edit` applied to its `[nats]` section.
async fn nats_bridge(url: &str, edit: impl FnOnce(&mut NatsConfig)) -> TestApp {
    let mut c = test_config();
    let mut n = nats_config(url, &["events.>"]);
    edit(&mut n);
    c.nats = Some(n);
    start_app(c).await
}

/// Events published with `client` reach a browser through the bridge.
async fn nats_events_flow(app: &TestApp, client: &async_nats::Client) {
    app.wait_sources_connected().await;
    let mut s = app.subscribe(&["events.a"]).await;
    sync_on_probe(&mut s, || async {
        client.publish("events.a", Bytes::from_static(b"probe")).await.unwrap();
        client.flush().await.unwrap();
    })
    .await;
    client.publish("events.a", Bytes::from_static(b"secured")).await.unwrap();
    client.flush().await.unwrap();
    loop {
        let ev = s.next_event(EVENT_TIMEOUT).await.expect("an event");
        if ev.data == "secured" {
            break;
        }
    }
}

fn client_tls(ca: &Path, cert: Option<(PathBuf, PathBuf)>) -> ClientTlsConfig {
    let (cert_file, key_file) = cert.map_or((None, None), |(c, k)| (Some(c), Some(k)));
    ClientTlsConfig { ca_file: Some(ca.to_owned()), cert_file, key_file, required: true }
}

#[tokio::test]
async fn nats_over_tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("nats CA");
    let nats = NatsServer::start_with_config(&nats_tls_block(dir.path(), &ca, false)).await;
    let ca_file = dir.path().join("nats-ca.pem");
    let app = nats_bridge(&nats.url(), |n| n.tls = client_tls(&ca_file, None)).await;
    let client = async_nats::ConnectOptions::new()
        .add_root_certificates(ca_file.clone())
        .require_tls(true)
        .connect(nats.url())
        .await
        .unwrap();
    nats_events_flow(&app, &client).await;
    app.stop().await;
}

#[tokio::test]
async fn nats_mutual_tls_and_a_wrong_ca_is_named_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("nats CA");
    let nats = NatsServer::start_with_config(&nats_tls_block(dir.path(), &ca, true)).await;
    let ca_file = dir.path().join("nats-ca.pem");
    let client_cert = ca.issue("bridge", &["bridge.local"]).write(dir.path(), "bridge");
    let app = nats_bridge(&nats.url(), |n| n.tls = client_tls(&ca_file, Some(client_cert.clone()))).await;
    let client = async_nats::ConnectOptions::new()
        .add_root_certificates(ca_file.clone())
        .add_client_certificate(client_cert.0.clone(), client_cert.1.clone())
        .connect(nats.url())
        .await
        .unwrap();
    nats_events_flow(&app, &client).await;
    app.stop().await;

    // A CA that did not sign the server: one clear line, and the source stays down, retrying.
    let (logs, _guard) = CapturedLogs::start();
    let other = TestCa::new("some other CA");
    let other_file = other.write(dir.path(), "other-ca.pem");
    let app = nats_bridge(&nats.url(), |n| n.tls = client_tls(&other_file, Some(client_cert))).await;
    common::wait_for(
        "a log line naming the source and the TLS failure",
        async || logs.text(),
        |t| t.lines().any(|l| l.contains("source=\"nats\"") && l.contains("TLS") && l.contains("tls.ca_file")),
    )
    .await;
    assert!(!app.state.sources[0].is_connected());
    app.stop().await;
}

#[tokio::test]
async fn nats_nkey_user() {
    let dir = tempfile::tempdir().unwrap();
    let user = nkeys::KeyPair::new_user();
    let nats = NatsServer::start_with_config(&format!(
        "authorization {{ users = [ {{ nkey: {:?} }} ] }}\n",
        user.public_key()
    ))
    .await;
    let seed_file = dir.path().join("user.nk");
    std::fs::write(&seed_file, format!("{}\n", user.seed().unwrap())).unwrap();
    let app = nats_bridge(&nats.url(), |n| n.nkey_seed_file = Some(seed_file)).await;
    let client = async_nats::ConnectOptions::with_nkey(user.seed().unwrap()).connect(nats.url()).await.unwrap();
    nats_events_flow(&app, &client).await;
    app.stop().await;
}

#[tokio::test]
async fn nats_token_from_a_file_or_the_environment_and_a_wrong_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let token = "s3cr3t-token-for-the-test";
    let nats = NatsServer::start_with_config(&format!("authorization {{ token: {token:?} }}\n")).await;
    let client = async_nats::ConnectOptions::with_token(token.into()).connect(nats.url()).await.unwrap();

    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let app = nats_bridge(&nats.url(), |n| n.token_file = Some(token_file.clone())).await;
    nats_events_flow(&app, &client).await;
    app.stop().await;

    // SAFETY: this test's own variable; nothing else reads or writes it.
    unsafe { std::env::set_var("SSE_BRIDGE_TEST_NATS_TOKEN", token) };
    let app = nats_bridge(&nats.url(), |n| n.token_env = Some("SSE_BRIDGE_TEST_NATS_TOKEN".into())).await;
    nats_events_flow(&app, &client).await;
    app.stop().await;

    let (logs, _guard) = CapturedLogs::start();
    std::fs::write(&token_file, "not-the-token").unwrap();
    let app = nats_bridge(&nats.url(), |n| n.token_file = Some(token_file.clone())).await;
    wait_until("a log line naming the refused credentials", async || {
        logs.has_line(&["source=\"nats\"", "authorization violation", "token_file"])
    })
    .await;
    assert!(!logs.text().contains(token), "the token must never be logged");
    assert!(!app.state.sources[0].is_connected());
    app.stop().await;
}

/// NATS decentralized auth: operator, account and user NKeys and JWTs, signed by the test
/// (nkeys, the crate async-nats signs with; the JWT claims follow nats-io/jwt v2).
struct Operator {
    operator_jwt: String,
    account_pub: String,
    account_jwt: String,
    account: nkeys::KeyPair,
    sys_pub: String,
    sys_jwt: String,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A NATS JWT: `claims` (with `iss`, `sub`, `iat`, `jti` added) signed by `issuer`.
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": format!("{:X}{}", now(), rand::random::<u64>()),
        "iat": now(),
        "iss": issuer.public_key(),
        "sub": subject,
        "name": name,
        "nats": nats,
    });
    let payload = b64.encode(claims.to_string());
    let signed = format!("{header}.{payload}");
    let sig = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", b64.encode(sig))
}

impl Operator {
    fn new() -> Operator {
        let op = nkeys::KeyPair::new_operator();
        let account = nkeys::KeyPair::new_account();
        let operator_jwt =
            nats_jwt(&op, &op.public_key(), "test-operator", serde_json::json!({"type": "operator", "version": 2}));
        let unlimited = serde_json::json!({"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
            "wildcards": true, "conn": -1, "leaf": -1});
        let account_jwt = nats_jwt(
            &op,
            &account.public_key(),
            "test-account",
            serde_json::json!({"type": "account", "version": 2, "limits": unlimited}),
        );
        // JetStream (the fixture turns it on) needs a system account in operator mode.
        let sys = nkeys::KeyPair::new_account();
        let sys_jwt = nats_jwt(&op, &sys.public_key(), "SYS", serde_json::json!({"type": "account", "version": 2}));
        Operator {
            operator_jwt,
            account_pub: account.public_key(),
            account_jwt,
            account,
            sys_pub: sys.public_key(),
            sys_jwt,
        }
    }

    /// The server configuration: operator mode with the account preloaded.
    fn server_config(&self) -> String {
        format!(
            "operator: {:?}\nsystem_account: {}\nresolver: MEMORY\n\
             resolver_preload: {{\n  {}: {:?}\n  {}: {:?}\n}}\n",
            self.operator_jwt, self.sys_pub, self.account_pub, self.account_jwt, self.sys_pub, self.sys_jwt
        )
    }

    /// A `.creds` file for a new user of the account, as `nsc generate creds` writes it.
    fn user_creds(&self, name: &str) -> String {
        let user = nkeys::KeyPair::new_user();
        let jwt = nats_jwt(
            &self.account,
            &user.public_key(),
            name,
            serde_json::json!({"type": "user", "version": 2, "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}),
        );
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        )
    }
}

#[tokio::test]
async fn nats_operator_mode_with_a_creds_file_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let op = Operator::new();
    let mut nats = NatsServer::start_with_config(&op.server_config()).await;
    let creds = dir.path().join("bridge.creds");
    std::fs::write(&creds, op.user_creds("bridge")).unwrap();
    let app = nats_bridge(&nats.url(), |n| n.credentials_file = Some(creds.clone())).await;
    let client = async_nats::ConnectOptions::with_credentials(&op.user_creds("publisher"))
        .unwrap()
        .retry_on_initial_connect()
        .connect(nats.url())
        .await
        .unwrap();
    nats_events_flow(&app, &client).await;

    // A crash and a restart: the bridge reconnects with the same credentials.
    let reconnects = app.state.sources[0].reconnects();
    nats.kill9();
    wait_until("the source notices", async || !app.state.sources[0].is_connected()).await;
    nats.restart().await;
    wait_until("the source reconnects", async || app.state.sources[0].reconnects() > reconnects).await;
    nats_events_flow(&app, &client).await;
    app.stop().await;

    // A user of an account the server does not know is refused, with one clear line.
    let (logs, _guard) = CapturedLogs::start();
    let stranger = Operator::new();
    std::fs::write(&creds, stranger.user_creds("stranger")).unwrap();
    let app = nats_bridge(&nats.url(), |n| n.credentials_file = Some(creds.clone())).await;
    wait_until("a log line naming the refused credentials", async || {
        logs.has_line(&["source=\"nats\"", "authorization violation", "credentials_file"])
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn jetstream_over_tls_with_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("nats CA");
    let token = "jetstream-token-0123";
    let conf = format!("{}authorization {{ token: {token:?} }}\n", nats_tls_block(dir.path(), &ca, false));
    let nats = NatsServer::start_with_config(&conf).await;
    let ca_file = dir.path().join("nats-ca.pem");
    let client = async_nats::ConnectOptions::with_token(token.into())
        .add_root_certificates(ca_file.clone())
        .connect(nats.url())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "SECURE".into(),
        subjects: vec!["secure.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    let mut c = test_config();
    c.jetstream = Some(sse_bridge::config::JetStreamConfig {
        url: nats.url(),
        streams: vec!["SECURE".into()],
        token_file: Some(token_file),
        tls: client_tls(&ca_file, None),
        reconnect_max_delay: std::time::Duration::from_millis(500),
        ..Default::default()
    });
    let app = start_app(c).await;
    app.wait_sources_connected().await;
    let mut s = app.subscribe(&["secure.a"]).await;
    js.publish("secure.a", "durable-and-secured".into()).await.unwrap().await.unwrap();
    let ev = s.next_event(EVENT_TIMEOUT).await.expect("an event");
    assert_eq!(ev.data, "durable-and-secured");
    app.stop().await;
}

/// `--check-config`'s checks of the broker files (the same as at startup).
fn check(dir: &Path, toml: &str) -> Result<(), String> {
    let p = dir.join("bridge.toml");
    std::fs::write(&p, toml).unwrap();
    let overrides = sse_bridge::config::Overrides::default();
    sse_bridge::startup::load_config(&sse_bridge::config::ConfigFile::Explicit(p), &overrides)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn check_config_reads_the_broker_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let nats = |extra: &str| format!("[nats]\nsubjects = [\"a\"]\n{extra}");
    let seed = d.join("user.nk");
    std::fs::write(&seed, nkeys::KeyPair::new_user().seed().unwrap()).unwrap();
    check(d, &nats(&format!("nkey_seed_file = {seed:?}\n"))).expect("a seed passes");

    std::fs::write(&seed, "SUNOTASEED").unwrap();
    let e = check(d, &nats(&format!("nkey_seed_file = {seed:?}\n"))).unwrap_err();
    assert!(e.contains("`nats.nkey_seed_file`") && e.contains("user.nk") && e.contains("not an NKey seed"), "{e}");

    let creds = d.join("user.creds");
    std::fs::write(&creds, "garbage").unwrap();
    let e = check(d, &nats(&format!("credentials_file = {creds:?}\n"))).unwrap_err();
    assert!(e.contains("`nats.credentials_file`") && e.contains("user.creds"), "{e}");

    let e = check(d, &nats("token_env = \"SSE_BRIDGE_TEST_UNSET_TOKEN\"\n")).unwrap_err();
    assert!(e.contains("`nats.token_env`") && e.contains("unset or empty"), "{e}");

    let e = check(d, &nats(&format!("token_file = {:?}\ncredentials_file = {creds:?}\n", d.join("t")))).unwrap_err();
    assert!(e.contains("exclusive"), "{e}");

    let ca = TestCa::new("CA");
    let (cert, _) = ca.issue("c", &["c"]).write(d, "client");
    let (_, other_key) = ca.issue("o", &["o"]).write(d, "other");
    let e = check(d, &nats(&format!("[nats.tls]\ncert_file = {cert:?}\nkey_file = {other_key:?}\n"))).unwrap_err();
    assert!(e.contains("`nats.tls.key_file`") && e.contains("does not match"), "{e}");
    let e = check(d, &nats(&format!("[nats.tls]\nca_file = {:?}\n", d.join("none.pem")))).unwrap_err();
    assert!(e.contains("`nats.tls.ca_file`") && e.contains("none.pem"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Redis

/// A bridge reading the `secured` channel with `edit` applied to its `[redis]` section.
async fn redis_bridge(url: &str, edit: impl FnOnce(&mut RedisConfig)) -> TestApp {
    let mut c = test_config();
    let mut r = common::redis_config(url, &["secured"], &[]);
    edit(&mut r);
    c.redis = Some(r);
    start_app(c).await
}

/// Messages published (on `publisher`'s server) reach a browser through the bridge.
async fn redis_events_flow(app: &TestApp, publisher: &redis::aio::MultiplexedConnection) {
    app.wait_sources_connected().await;
    let mut s = app.subscribe(&["secured"]).await;
    sync_on_probe(&mut s, || {
        let mut c = publisher.clone();
        async move {
            redis_publish(&mut c, "secured", "probe").await;
        }
    })
    .await;
    redis_publish(&mut publisher.clone(), "secured", "over-redis").await;
    loop {
        let ev = s.next_event(EVENT_TIMEOUT).await.expect("an event");
        if ev.data == "over-redis" {
            break;
        }
    }
}

/// A redis-server with TLS on a second port (the plain one stays for the fixture's probe and
/// the test's publisher); `auth_clients`: client certificates required.
async fn tls_redis(dir: &Path, ca: &TestCa, auth_clients: bool) -> (RedisServer, u16) {
    let ca_file = ca.write(dir, "redis-ca.pem");
    let (cert, key) = ca.issue("redis", &["127.0.0.1", "localhost"]).write(dir, "redis-server");
    let tls_port = free_port().to_string();
    let (cert, key, ca_file) = (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
        ca_file.to_string_lossy().into_owned(),
    );
    let args = [
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca_file,
        "--tls-auth-clients",
        if auth_clients { "yes" } else { "no" },
    ];
    let redis = RedisServer::start_with(None, &args).await;
    (redis, tls_port.parse().unwrap())
}

#[tokio::test]
async fn redis_pubsub_and_streams_over_tls_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("redis CA");
    let (redis, tls_port) = tls_redis(dir.path(), &ca, true).await;
    let ca_file = dir.path().join("redis-ca.pem");
    let client_cert = ca.issue("bridge", &["bridge.local"]).write(dir.path(), "bridge");
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let tls = ClientTlsConfig {
        ca_file: Some(ca_file),
        cert_file: Some(client_cert.0.clone()),
        key_file: Some(client_cert.1.clone()),
        required: false,
    };
    let mut c = test_config();
    c.redis = Some(RedisConfig { tls: tls.clone(), ..common::redis_config(&url, &["secured"], &[]) });
    c.redis_streams = Some(RedisStreamsConfig {
        url: url.clone(),
        keys: vec!["audit".into()],
        block: std::time::Duration::from_millis(200),
        reconnect_max_delay: std::time::Duration::from_millis(500),
        tls,
        ..Default::default()
    });
    let app = start_app(c).await;
    let mut publisher = redis_conn(&redis.url()).await;
    redis_events_flow(&app, &publisher).await;
    let mut s = app.subscribe(&["audit"]).await;
    let _: String =
        redis::cmd("XADD").arg("audit").arg("*").arg("data").arg("streamed").query_async(&mut publisher).await.unwrap();
    let ev = s.next_event(EVENT_TIMEOUT).await.expect("an entry");
    assert_eq!(ev.data, "streamed");
    app.stop().await;

    // Another CA: one clear line naming the source and the certificate problem.
    let (logs, _guard) = CapturedLogs::start();
    let other = TestCa::new("other CA");
    let other_file = other.write(dir.path(), "other.pem");
    let app = redis_bridge(&url, |r| r.tls = ClientTlsConfig { ca_file: Some(other_file), ..Default::default() }).await;
    wait_until("a log line naming the TLS failure", async || {
        logs.has_line(&["source=\"redis\"", "invalid peer certificate"])
    })
    .await;
    assert!(!app.state.sources[0].is_connected());
    app.stop().await;
}

#[tokio::test]
async fn redis_acl_user_with_a_password_file() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start_with(Some("user bridge on >acl-s3cret ~* &* +@all\n"), &[]).await;
    let pw = dir.path().join("password");
    std::fs::write(&pw, "acl-s3cret\n").unwrap();
    let publisher = redis_conn(&redis.url()).await;
    let app = redis_bridge(&redis.url(), |r| {
        r.username = Some("bridge".into());
        r.password_file = Some(pw.clone());
    })
    .await;
    redis_events_flow(&app, &publisher).await;
    app.stop().await;

    let (logs, _guard) = CapturedLogs::start();
    std::fs::write(&pw, "wrong").unwrap();
    let app = redis_bridge(&redis.url(), |r| {
        r.username = Some("bridge".into());
        r.password_file = Some(pw.clone());
    })
    .await;
    wait_until("a log line naming the refused credentials", async || {
        logs.has_line(&["source=\"redis\"", "Password authentication failed"])
    })
    .await;
    assert!(!logs.text().contains("acl-s3cret"), "the password must never be logged");
    app.stop().await;
}

/// `SENTINEL` sub-command answer as strings.
async fn sentinel(conn: &mut redis::aio::MultiplexedConnection, args: &[&str]) -> redis::Value {
    let mut cmd = redis::cmd("SENTINEL");
    for a in args {
        cmd.arg(*a);
    }
    cmd.query_async(conn).await.unwrap()
}

#[tokio::test]
async fn redis_sentinel_failover_is_followed() {
    let mut master = RedisServer::start().await;
    let replica = RedisServer::start_with(None, &["--replicaof", "127.0.0.1", &master.port().to_string()]).await;
    let mut replica_conn = redis_conn(&replica.url()).await;
    wait_until("the replica is in sync", async || {
        let info: String = redis::cmd("INFO").arg("replication").query_async(&mut replica_conn).await.unwrap();
        info.contains("master_link_status:up")
    })
    .await;
    let conf = format!(
        "sentinel monitor m 127.0.0.1 {} 1\nsentinel down-after-milliseconds m 500\nsentinel failover-timeout m 5000\n",
        master.port()
    );
    let sentinel_server = RedisServer::start_with(Some(&conf), &["--sentinel"]).await;
    let mut s_conn = redis_conn(&sentinel_server.url()).await;
    wait_until(
        "the Sentinel knows the replica",
        async || matches!(sentinel(&mut s_conn, &["REPLICAS", "m"]).await, redis::Value::Array(a) if !a.is_empty()),
    )
    .await;

    let app = redis_bridge("redis://127.0.0.1", |r| {
        r.sentinels = vec![format!("127.0.0.1:{}", sentinel_server.port())];
        r.master_name = Some("m".into());
    })
    .await;
    let master_conn = redis_conn(&master.url()).await;
    redis_events_flow(&app, &master_conn).await;

    // The master dies; the Sentinel promotes the replica; the bridge follows and re-subscribes.
    master.kill9();
    let replica_port = replica.port().to_string();
    wait_until("the Sentinel promoted the replica", async || {
        let addr = sentinel(&mut s_conn, &["GET-MASTER-ADDR-BY-NAME", "m"]).await;
        format!("{addr:?}").contains(&replica_port)
    })
    .await;
    // A promoted replica drops its clients (CLIENT KILL): publish on a new connection.
    wait_until("the replica is the master", async || {
        let info: Result<String, _> = redis::cmd("INFO").arg("replication").query_async(&mut replica_conn).await;
        match info {
            Ok(i) => i.contains("role:master"),
            Err(_) => {
                replica_conn = redis_conn(&replica.url()).await;
                false
            }
        }
    })
    .await;
    let new_master = redis_conn(&replica.url()).await;
    redis_events_flow(&app, &new_master).await;
    app.stop().await;
}

#[tokio::test]
async fn redis_sentinel_with_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let master = RedisServer::start().await;
    let conf = format!("sentinel monitor m 127.0.0.1 {} 1\n", master.port());
    let sentinel_server = RedisServer::start_with(Some(&conf), &["--sentinel"]).await;
    // `requirepass` is the default user's password (Sentinel's config file sets it that way,
    // too); set once the fixture has seen the Sentinel answer PING without one.
    let secret = "sentinel-s3cret";
    let mut s_conn = redis_conn(&sentinel_server.url()).await;
    let _: String = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg("resetpass")
        .arg(format!(">{secret}"))
        .query_async(&mut s_conn)
        .await
        .unwrap();
    let pw = dir.path().join("sentinel-password");
    std::fs::write(&pw, format!("{secret}\n")).unwrap();
    let sentinels = vec![format!("127.0.0.1:{}", sentinel_server.port())];
    let master_conn = redis_conn(&master.url()).await;
    let app = redis_bridge("redis://127.0.0.1", |r| {
        r.sentinels = sentinels.clone();
        r.master_name = Some("m".into());
        r.sentinel_password_file = Some(pw.clone());
    })
    .await;
    redis_events_flow(&app, &master_conn).await;
    app.stop().await;

    // Without it the Sentinel refuses: one line naming the source, and the secret never logged.
    let (logs, _guard) = CapturedLogs::start();
    let app = redis_bridge("redis://127.0.0.1", |r| {
        r.sentinels = sentinels.clone();
        r.master_name = Some("m".into());
    })
    .await;
    wait_until("a log line naming the refused Sentinel", async || {
        logs.has_line(&["source=\"redis\"", "NOAUTH"]) || logs.has_line(&["source=\"redis\"", "uthentication"])
    })
    .await;
    assert!(!app.state.sources[0].is_connected());
    assert!(!logs.text().contains(secret), "the password must never be logged");
    app.stop().await;
}

/// A Redis Cluster made by `redis-cli --cluster create`: `masters` masters with `replicas`
/// replicas each, on free ports, every node reporting `cluster_state:ok`.
async fn redis_cluster(masters: usize, replicas: usize) -> Vec<RedisServer> {
    #[rustfmt::skip]
    let args = [
        "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "1000",
        // A replica syncs at once (not after the default 5 s wait for more replicas).
        "--repl-diskless-sync-delay", "0",
    ];
    let mut nodes = Vec::new();
    for _ in 0..masters * (1 + replicas) {
        nodes.push(RedisServer::start_with(None, &args).await);
    }
    let out = tokio::process::Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(cluster_addrs(&nodes))
        .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
        .output()
        .await
        .expect("redis-cli (redis-tools) is installed");
    assert!(out.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&out.stdout));
    for n in &nodes {
        let mut c = redis_conn(&n.url()).await;
        wait_until("the cluster is up", async || {
            let info: String = redis::cmd("CLUSTER").arg("INFO").query_async(&mut c).await.unwrap();
            // Every node knows every other (a replica's view of the slots may lag its join).
            let known: String = redis::cmd("CLUSTER").arg("NODES").query_async(&mut c).await.unwrap();
            info.contains("cluster_state:ok") && known.lines().count() == masters * (1 + replicas)
        })
        .await;
        // A replica that never finished its first sync cannot take over.
        wait_until("the replica is in sync", async || {
            let info: String = redis::cmd("INFO").arg("replication").query_async(&mut c).await.unwrap();
            info.contains("role:master") || info.contains("master_link_status:up")
        })
        .await;
    }
    nodes
}

/// `host:port` of each node.
fn cluster_addrs(nodes: &[RedisServer]) -> Vec<String> {
    nodes.iter().filter(|n| n.pid().is_some()).map(|n| format!("127.0.0.1:{}", n.port())).collect()
}

/// A cluster connection for the test's own commands (`SPUBLISH`, `XADD` to the key's node).
async fn cluster_conn(nodes: &[RedisServer]) -> redis::cluster_async::ClusterConnection {
    let urls: Vec<String> = cluster_addrs(nodes).iter().map(|a| format!("redis://{a}")).collect();
    redis::cluster::ClusterClient::new(urls).unwrap().get_async_connection().await.unwrap()
}

/// The port of the master serving `key`'s slot, as node `via` sees it.
async fn master_of(via: &RedisServer, key: &str) -> u16 {
    let mut c = redis_conn(&via.url()).await;
    let slot: i64 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query_async(&mut c).await.unwrap();
    // [[start, end, [host, port, id], replicas…], …]
    let ranges: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut c).await.unwrap();
    let int = |v: &redis::Value| match v {
        redis::Value::Int(i) => *i,
        other => panic!("CLUSTER SLOTS: {other:?}"),
    };
    for r in ranges {
        let redis::Value::Array(r) = r else { panic!("CLUSTER SLOTS: {r:?}") };
        let redis::Value::Array(master) = &r[2] else { panic!("CLUSTER SLOTS: {r:?}") };
        if (int(&r[0])..=int(&r[1])).contains(&slot) {
            return int(&master[1]) as u16;
        }
    }
    panic!("slot {slot} of {key:?} is not served")
}

/// `cmd channel payload` (`PUBLISH` or `SPUBLISH`) through the cluster connection.
async fn cluster_publish(conn: &mut redis::cluster_async::ClusterConnection, cmd: &str, channel: &str, payload: &str) {
    let _: i64 = redis::cmd(cmd).arg(channel).arg(payload).query_async(conn).await.unwrap();
}

/// `XADD key * data payload` through the cluster connection.
async fn cluster_xadd(conn: &mut redis::cluster_async::ClusterConnection, key: &str, payload: &str) {
    let _: String = redis::cmd("XADD").arg(key).arg("*").arg("data").arg(payload).query_async(conn).await.unwrap();
}

/// Waits on `s` for an event with `data` (skipping gap signals and earlier probes); returns it.
async fn event_with(s: &mut common::sse_client::SseStream, data: &str) -> common::sse_client::SseEvent {
    loop {
        let ev = s.next_event(EVENT_TIMEOUT).await.unwrap_or_else(|| panic!("an event {data:?}"));
        if ev.data == data {
            return ev;
        }
    }
}

/// `cmd` (`PUBLISH`/`SPUBLISH`) on `channel` reaches a browser through the bridge.
async fn cluster_pubsub_flows(
    app: &TestApp,
    conn: &redis::cluster_async::ClusterConnection,
    cmd: &str,
    channel: &str,
    payload: &str,
) {
    let mut s = app.subscribe(&[channel]).await;
    sync_on_probe(&mut s, || {
        let mut c = conn.clone();
        async move { cluster_publish(&mut c, cmd, channel, "probe").await }
    })
    .await;
    cluster_publish(&mut conn.clone(), cmd, channel, payload).await;
    event_with(&mut s, payload).await;
}

/// A `[redis]` section reading `channels` through the cluster `nodes`.
fn cluster_redis(nodes: &[RedisServer], channels: &[&str], sharded: bool) -> RedisConfig {
    RedisConfig {
        cluster_nodes: cluster_addrs(nodes),
        sharded,
        ping_interval: std::time::Duration::from_millis(200),
        ..common::redis_config("redis://127.0.0.1", channels, &[])
    }
}

/// A `[redis_streams]` section reading `keys` through the cluster `nodes`.
fn cluster_streams(nodes: &[RedisServer], keys: &[&str]) -> RedisStreamsConfig {
    RedisStreamsConfig {
        cluster_nodes: cluster_addrs(nodes),
        keys: keys.iter().map(|k| k.to_string()).collect(),
        block: std::time::Duration::from_millis(200),
        reconnect_max_delay: std::time::Duration::from_millis(500),
        ..Default::default()
    }
}

#[tokio::test]
async fn redis_cluster_pubsub_reaches_the_bridge_from_any_node() {
    let nodes = redis_cluster(3, 0).await;
    // PUBLISH in a cluster goes to every node's subscribers: the bridge on the first node gets
    // what is published on the last (a `url` alone, no cluster_nodes).
    let app = redis_bridge(&nodes[0].url(), |_| {}).await;
    let publisher = redis_conn(&nodes[2].url()).await;
    redis_events_flow(&app, &publisher).await;
    app.stop().await;
}

#[tokio::test]
async fn redis_cluster_pubsub_and_streams_on_every_node() {
    let nodes = redis_cluster(3, 0).await;
    // Stream keys whose slots lie on different masters: each read from its own node.
    let keys = ["audit", "orders", "ledger", "billing"];
    let mut owners = std::collections::HashSet::new();
    for k in keys {
        owners.insert(master_of(&nodes[0], k).await);
    }
    assert!(owners.len() >= 2, "the keys lie on several masters: {owners:?}");
    let mut c = test_config();
    c.redis = Some(cluster_redis(&nodes, &["secured"], false));
    c.redis_streams = Some(cluster_streams(&nodes, &keys));
    let app = start_app(c).await;
    app.wait_sources_connected().await;
    let mut conn = cluster_conn(&nodes).await;
    cluster_pubsub_flows(&app, &conn, "PUBLISH", "secured", "through-the-cluster").await;
    let mut s = app.subscribe(&keys).await;
    let mut last = String::new();
    for k in keys {
        let payload = format!("entry-of-{k}");
        cluster_xadd(&mut conn, k, &payload).await;
        last = event_with(&mut s, &payload).await.id.expect("a durable id");
    }
    drop(s);
    app.stop().await;

    // What was added while no bridge ran is read back from each key's node on resume.
    for k in keys {
        cluster_xadd(&mut conn, k, &format!("missed-{k}")).await;
    }
    let mut c = test_config();
    c.redis_streams = Some(cluster_streams(&nodes, &keys));
    let app = start_app(c).await;
    app.wait_sources_connected().await;
    let mut r = app.resume(&keys, &last).await;
    let mut seen = Vec::new();
    while seen.len() < keys.len() {
        let ev = r.next_event(EVENT_TIMEOUT).await.expect("a replayed entry");
        assert_ne!(ev.event.as_deref(), Some("sse-bridge.gap"), "no gap: {ev:?}");
        seen.push(ev.data);
    }
    seen.sort();
    let mut want: Vec<String> = keys.iter().map(|k| format!("missed-{k}")).collect();
    want.sort();
    assert_eq!(seen, want);
    app.stop().await;
}

#[tokio::test]
async fn redis_cluster_sharded_pubsub() {
    let nodes = redis_cluster(3, 0).await;
    let channels = ["news", "sports", "weather", "markets"];
    let mut owners = std::collections::HashSet::new();
    for ch in channels {
        owners.insert(master_of(&nodes[0], ch).await);
    }
    assert!(owners.len() >= 2, "the channels lie on several masters: {owners:?}");
    let mut c = test_config();
    c.redis = Some(cluster_redis(&nodes, &channels, true));
    let app = start_app(c).await;
    app.wait_sources_connected().await;
    let conn = cluster_conn(&nodes).await;
    for ch in channels {
        cluster_pubsub_flows(&app, &conn, "SPUBLISH", ch, &format!("sharded-{ch}")).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn redis_cluster_failover_is_followed() {
    let mut nodes = redis_cluster(3, 1).await;
    let channel = "news";
    let owner = master_of(&nodes[0], channel).await;
    // A stream key on the same master, so both sources go through the failover.
    let mut key = String::new();
    for i in 0.. {
        let k = format!("audit-{i}");
        if master_of(&nodes[0], &k).await == owner {
            key = k;
            break;
        }
    }
    let mut c = test_config();
    c.redis = Some(cluster_redis(&nodes, &[channel], true));
    c.redis_streams = Some(cluster_streams(&nodes, &[&key]));
    let app = start_app(c).await;
    app.wait_sources_connected().await;
    let mut conn = cluster_conn(&nodes).await;
    cluster_pubsub_flows(&app, &conn, "SPUBLISH", channel, "before-failover").await;
    let mut s = app.subscribe(&[&key]).await;
    cluster_xadd(&mut conn, &key, "entry-before").await;
    event_with(&mut s, "entry-before").await;

    // The master dies; its replica takes over its slots; the bridge follows.
    let dead = nodes.iter().position(|n| n.port() == owner).expect("the owner is a node");
    nodes[dead].kill9();
    let survivor = nodes.iter().position(|n| n.pid().is_some()).unwrap();
    wait_until("the replica took over the slot", async || {
        let mut c = redis_conn(&nodes[survivor].url()).await;
        let info: String = redis::cmd("CLUSTER").arg("INFO").query_async(&mut c).await.unwrap();
        info.contains("cluster_state:ok") && master_of(&nodes[survivor], channel).await != owner
    })
    .await;
    let mut conn = cluster_conn(&nodes).await;
    cluster_pubsub_flows(&app, &conn, "SPUBLISH", channel, "after-failover").await;
    cluster_xadd(&mut conn, &key, "entry-after").await;
    event_with(&mut s, "entry-after").await;
    app.stop().await;
}

#[tokio::test]
async fn redis_cluster_slot_move_is_followed() {
    let nodes = redis_cluster(3, 0).await;
    let channel = "news";
    let owner = master_of(&nodes[0], channel).await;
    let from = nodes.iter().find(|n| n.port() == owner).unwrap();
    let to = nodes.iter().find(|n| n.port() != owner).unwrap();
    let mut c = test_config();
    c.redis = Some(cluster_redis(&nodes, &[channel], true));
    let app = start_app(c).await;
    app.wait_sources_connected().await;
    let conn = cluster_conn(&nodes).await;
    cluster_pubsub_flows(&app, &conn, "SPUBLISH", channel, "before-move").await;

    // Resharding moves the channel's (empty) slot to another master; the old owner drops its
    // sharded subscribers. The bridge sees the new slot map and subscribes on the new owner.
    let mut from_conn = redis_conn(&from.url()).await;
    let mut to_conn = redis_conn(&to.url()).await;
    let slot: i64 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(channel).query_async(&mut from_conn).await.unwrap();
    let id = async |c: &mut redis::aio::MultiplexedConnection| -> String {
        redis::cmd("CLUSTER").arg("MYID").query_async(c).await.unwrap()
    };
    let (from_id, to_id) = (id(&mut from_conn).await, id(&mut to_conn).await);
    let setslot = async |c: &mut redis::aio::MultiplexedConnection, how: &str, node: &str| {
        let _: () = redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg(how).arg(node).query_async(c).await.unwrap();
    };
    setslot(&mut to_conn, "IMPORTING", &from_id).await;
    setslot(&mut from_conn, "MIGRATING", &to_id).await;
    setslot(&mut to_conn, "NODE", &to_id).await;
    setslot(&mut from_conn, "NODE", &to_id).await;
    for n in &nodes {
        let mut c = redis_conn(&n.url()).await;
        setslot(&mut c, "NODE", &to_id).await;
    }
    for n in &nodes {
        wait_until("every node knows the new owner", async || master_of(n, channel).await == to.port()).await;
    }
    cluster_pubsub_flows(&app, &cluster_conn(&nodes).await, "SPUBLISH", channel, "after-move").await;
    app.stop().await;
}

#[test]
fn check_config_refuses_redis_settings_that_do_not_go_together() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let redis = |extra: &str| format!("[redis]\nchannels = [\"a\"]\n{extra}");
    let e = check(d, &redis(&format!("[redis.tls]\nca_file = {:?}\n", d.join("ca.pem")))).unwrap_err();
    assert!(e.contains("`redis.url`") && e.contains("rediss://"), "{e}");
    let e = check(d, &redis("sentinels = [\"127.0.0.1:26379\"]\n")).unwrap_err();
    assert!(e.contains("`redis.master_name`") && e.contains("required with sentinels"), "{e}");
    let e = check(d, &redis("sentinels = [\"no-port\"]\nmaster_name = \"m\"\n")).unwrap_err();
    assert!(e.contains("`redis.sentinels[0]`") && e.contains("host:port"), "{e}");
    let e = check(d, &redis(&format!("password_file = {:?}\n", d.join("missing")))).unwrap_err();
    assert!(e.contains("`redis.password_file`") && e.contains("cannot read"), "{e}");
    let e = check(d, &redis("password_file = \"/x\"\npassword_env = \"X\"\n")).unwrap_err();
    assert!(e.contains("`redis.password_file`") && e.contains("both set"), "{e}");
    let pw = d.join("pw");
    std::fs::write(&pw, "s3cret\n").unwrap();
    check(d, &redis(&format!("username = \"bridge\"\npassword_file = {pw:?}\n")))
        .expect("a readable password file passes");

    // Cluster and sharded pub/sub.
    let e = check(d, &redis("sharded = true\n")).unwrap_err();
    assert!(e.contains("`redis.sharded`") && e.contains("cluster_nodes"), "{e}");
    let e =
        check(d, "[redis]\npatterns = [\"a*\"]\nsharded = true\ncluster_nodes = [\"127.0.0.1:7000\"]\n").unwrap_err();
    assert!(e.contains("`redis.patterns`") && e.contains("sharded pub/sub (SSUBSCRIBE) has no patterns"), "{e}");
    let e = check(d, &redis("cluster_nodes = [\"no-port\"]\n")).unwrap_err();
    assert!(e.contains("`redis.cluster_nodes[0]`") && e.contains("host:port"), "{e}");
    let e = check(d, &redis("cluster_nodes = [\"a:1\"]\nsentinels = [\"b:2\"]\nmaster_name = \"m\"\n")).unwrap_err();
    assert!(e.contains("`redis.cluster_nodes`") && e.contains("sentinels"), "{e}");
    check(d, &redis("cluster_nodes = [\"127.0.0.1:7000\"]\nsharded = true\n")).expect("sharded exact channels pass");

    // The Sentinels' own password.
    let e = check(d, &redis(&format!("sentinel_password_file = {pw:?}\n"))).unwrap_err();
    assert!(e.contains("`redis.sentinel_password_file`") && e.contains("sentinels is empty"), "{e}");
    let sentinel = "sentinels = [\"127.0.0.1:26379\"]\nmaster_name = \"m\"\n";
    let e = check(d, &redis(&format!("{sentinel}sentinel_password_file = {:?}\n", d.join("missing")))).unwrap_err();
    assert!(e.contains("`redis.sentinel_password_file`") && e.contains("cannot read"), "{e}");
    check(d, &redis(&format!("{sentinel}sentinel_password_file = {pw:?}\n"))).expect("a readable file passes");
}
