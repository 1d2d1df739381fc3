//! TLS on the public listener (`[server.tls]`): HTTP/2 over TLS for curl and a real browser,
//! HTTP/1.1 over TLS on the lean path, certificates re-read when replaced on disk, client
//! certificates, and the offline checks of `--check-config`. Certificates come from a private CA the test makes (rcgen).

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::browser_tooling::{crate_root, require_browser_tooling};
use common::certs::TestCa;
use common::chunked::Dechunker;
use common::logs::CapturedLogs;
use common::{EVENT_TIMEOUT, TOKEN, TestApp, brokers, start_app, test_config, wait_until};
use rustls::pki_types::{CertificateDer, ServerName};
use sse_bridge::config::{ConfigFile, Overrides, ServerTlsConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// A bridge serving TLS with a certificate for 127.0.0.1 and localhost from `ca`.
async fn tls_app(
    dir: &Path,
    ca: &TestCa,
    client_ca: Option<PathBuf>,
    tweak: impl FnOnce(&mut sse_bridge::Config),
) -> TestApp {
    let (cert_file, key_file) = ca.issue("bridge", &["127.0.0.1", "localhost"]).write(dir, "server");
    let mut c = test_config();
    c.server.tls = Some(ServerTlsConfig { cert_file, key_file, client_ca_file: client_ca });
    tweak(&mut c);
    start_app(c).await
}

fn https(app: &TestApp, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", app.addr.port())
}

/// `POST /publish` over TLS, with curl.
async fn publish(app: &TestApp, ca: &Path, topic: &str, body: &str) {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--cacert"])
        .arg(ca)
        .args(["-H", &format!("Authorization: Bearer {TOKEN}"), "--data-binary", body])
        .arg(https(app, &format!("/publish?topic={topic}")))
        .output()
        .await
        .expect("running curl");
    assert!(out.status.success(), "publish failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A rustls client trusting `ca`; with a client certificate when `client` is given.
fn client_config(ca: &Path, client: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in sse_bridge::tls_files::certificates("test", ca).unwrap() {
        roots.add(c).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match client {
        Some((cert, key)) => b
            .with_client_auth_cert(
                sse_bridge::tls_files::certificates("test", cert).unwrap(),
                sse_bridge::tls_files::private_key("test", key).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// Connects over TLS; returns the server's leaf certificate and the stream.
async fn handshake(
    app: &TestApp,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<(CertificateDer<'static>, tokio_rustls::client::TlsStream<tokio::net::TcpStream>)> {
    let tcp = tokio::net::TcpStream::connect(app.addr).await?;
    let conn = tokio_rustls::TlsConnector::from(cfg);
    let s = conn.connect(ServerName::try_from("localhost").unwrap(), tcp).await?;
    let leaf = s.get_ref().1.peer_certificates().expect("server sent certificates")[0].clone().into_owned();
    Ok((leaf, s))
}

/// `GET /healthz`-like request on the public listener over an established TLS stream: the
/// status line of `GET /events?topic=t` (a stream starts, or the connection fails).
async fn first_line(s: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> std::io::Result<String> {
    s.write_all(b"GET /events?topic=t HTTP/1.1\r\nHost: localhost\r\n\r\n").await?;
    let mut buf = vec![0u8; 64];
    let n = s.read(&mut buf).await?;
    Ok(String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn ten_streams_share_one_http2_connection_with_curl() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let app = tls_app(dir.path(), &ca, None, |_| {}).await;
    // One curl, ten URLs: with --parallel it multiplexes them over one HTTP/2 connection.
    let url = https(&app, "/events?topic=news");
    let mut cmd = Command::new("curl");
    cmd.args(["-sSN", "--http2", "--parallel", "--parallel-max", "10", "--cacert"]).arg(&ca_file);
    for _ in 0..10 {
        cmd.arg(&url);
    }
    let mut curl = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true).spawn().expect("curl");
    wait_until("10 streams open", async || app.state.registry.subscriber_count() == 10).await;
    assert_eq!(app.state.metrics.open_connections.get(), 1, "10 streams over HTTP/2 are one connection");
    publish(&app, &ca_file, "news", "over-h2").await;
    let mut lines = BufReader::new(curl.stdout.take().unwrap()).lines();
    let mut seen = 0;
    while seen < 10 {
        let line = tokio::time::timeout(EVENT_TIMEOUT, lines.next_line()).await.expect("events in time").unwrap();
        let line = line.expect("curl output ended");
        if line == "data: over-h2" {
            seen += 1;
        }
    }
    app.stop().await;
}

type TlsClient = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Reads a response head off `s` (lowercased, so header names compare as written by either
/// path); what was read past it stays in `buf`.
async fn read_head(s: &mut TlsClient, buf: &mut Vec<u8>) -> String {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            buf.drain(..end + 4);
            return head;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(EVENT_TIMEOUT, s.read(&mut chunk)).await.expect("answer in time").unwrap();
        assert!(n > 0, "closed before the response head: {:?}", String::from_utf8_lossy(buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A whole `Content-Length` response: its head (lowercased) and body.
async fn response(s: &mut TlsClient) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let head = read_head(s, &mut buf).await;
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no content-length: {head}"));
    while buf.len() < len {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(EVENT_TIMEOUT, s.read(&mut chunk)).await.expect("body in time").unwrap();
        assert!(n > 0, "closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(buf.len(), len, "nothing after the body");
    (head, buf)
}

/// Whether the server ends the connection (a clean close or a reset) in time.
async fn closed(s: &mut TlsClient) -> bool {
    let mut b = [0u8; 64];
    matches!(tokio::time::timeout(EVENT_TIMEOUT, s.read(&mut b)).await, Ok(Ok(0) | Err(_)))
}

#[tokio::test]
async fn http1_over_tls_takes_the_lean_path_and_h2_still_goes_to_hyper() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let app = tls_app(dir.path(), &ca, None, |_| {}).await;
    let h1 = client_config(&ca_file, None);
    let mut no_alpn = (*h1).clone();
    no_alpn.alpn_protocols.clear();

    // What only the lean path does: a refused stream request is answered with
    // `connection: close` and the connection closes, keep-alive or not. Over TLS it does so
    // for a client that picked http/1.1 and for one that named no protocol.
    for (cfg, alpn) in [(h1.clone(), Some(&b"http/1.1"[..])), (Arc::new(no_alpn), None)] {
        let (_, mut s) = handshake(&app, cfg).await.unwrap();
        assert_eq!(s.get_ref().1.alpn_protocol(), alpn);
        s.write_all(b"GET /events HTTP/1.1\r\nhost: localhost\r\nconnection: keep-alive\r\n\r\n").await.unwrap();
        let (head, body) = response(&mut s).await;
        assert!(head.starts_with("http/1.1 400"), "{head}");
        assert!(head.contains("\r\nconnection: close"), "ALPN {alpn:?}: not the lean path's refusal: {head}");
        assert!(String::from_utf8_lossy(&body).starts_with("no topic"));
        assert!(closed(&mut s).await, "ALPN {alpn:?}: the lean path closes after a refusal");
    }
    // The same refusal from hyper (a request with a body is not for the lean path) keeps the
    // connection open: the mark above is the lean path's.
    let (_, mut s) = handshake(&app, h1.clone()).await.unwrap();
    let with_body = b"GET /events HTTP/1.1\r\nhost: localhost\r\ncontent-length: 2\r\n\r\nab";
    s.write_all(with_body).await.unwrap();
    let (head, _) = response(&mut s).await;
    assert!(head.starts_with("http/1.1 400") && !head.contains("connection: close"), "{head}");
    s.write_all(with_body).await.unwrap();
    assert!(response(&mut s).await.0.starts_with("http/1.1 400"), "hyper keeps the connection");

    // A stream on the lean path over TLS: chunked, and events arrive.
    let (_, mut s) = handshake(&app, h1).await.unwrap();
    s.write_all(b"GET /events?topic=tls.lean HTTP/1.1\r\nhost: localhost\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let head = read_head(&mut s, &mut buf).await;
    assert!(head.starts_with("http/1.1 200") && head.contains("transfer-encoding: chunked"), "{head}");
    wait_until("the stream is registered", async || app.state.registry.subscriber_count() == 1).await;
    publish(&app, &ca_file, "tls.lean", "over-tls-h1").await;
    let mut dechunk = Dechunker::default();
    let mut text = String::from_utf8(dechunk.feed(&buf)).unwrap();
    while !text.contains("data: over-tls-h1\n\n") {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(EVENT_TIMEOUT, s.read(&mut chunk)).await.expect("event in time").unwrap();
        assert!(n > 0, "stream ended: {text:?}");
        text.push_str(std::str::from_utf8(&dechunk.feed(&chunk[..n])).unwrap());
    }

    // HTTP/2 over TLS is hyper's, stream requests included (the lean path would answer in
    // HTTP/1.1 bytes, which no h2 client reads).
    let out = Command::new("curl")
        .args(["-sS", "--http2", "-o", "/dev/null", "-w", "%{http_version} %{response_code}", "--cacert"])
        .arg(&ca_file)
        .arg(https(&app, "/events"))
        .output()
        .await
        .expect("running curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 400", "{}", String::from_utf8_lossy(&out.stderr));
    app.stop().await;
}

#[tokio::test]
async fn a_certificate_replaced_on_disk_is_served_to_the_next_connection() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let app = tls_app(dir.path(), &ca, None, |_| {}).await;
    let cfg = client_config(&ca_file, None);
    let (first, _) = handshake(&app, cfg.clone()).await.unwrap();

    // As cert-manager and certbot do: write new files beside the old ones, rename over them
    // (the key first: between the two renames the pair does not match and is not used).
    let next = ca.issue("bridge-renewed", &["127.0.0.1", "localhost"]);
    let (c, k) = next.write(dir.path(), "renewed");
    std::fs::rename(&k, dir.path().join("server.key")).unwrap();
    std::fs::rename(&c, dir.path().join("server.crt")).unwrap();
    wait_until("the next connection gets the new certificate", async || {
        handshake(&app, cfg.clone()).await.map(|(leaf, _)| leaf.as_ref() == next.cert_der.as_slice()).unwrap_or(false)
    })
    .await;
    assert_ne!(first.as_ref(), next.cert_der.as_slice());
    // Streams keep working over the new certificate.
    let (_, mut s) = handshake(&app, cfg).await.unwrap();
    assert_eq!(first_line(&mut s).await.unwrap(), "HTTP/1.1 200 OK");
    app.stop().await;
}

#[tokio::test]
async fn client_certificates_are_required_with_a_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let (cc, ck) = ca.issue("a client", &["client.local"]).write(dir.path(), "client");
    let app = tls_app(dir.path(), &ca, Some(ca_file.clone()), |_| {}).await;

    let (_, mut s) = handshake(&app, client_config(&ca_file, Some((&cc, &ck)))).await.unwrap();
    assert_eq!(first_line(&mut s).await.unwrap(), "HTTP/1.1 200 OK");

    // Without a certificate the server refuses (TLS 1.3 reports it on the first read).
    let refused = match handshake(&app, client_config(&ca_file, None)).await {
        Err(_) => true,
        Ok((_, mut s)) => first_line(&mut s).await.map(|l| l.is_empty()).unwrap_or(true),
    };
    assert!(refused, "a client without a certificate must be refused");
    // A certificate from another CA is refused too.
    let other = TestCa::new("other CA");
    let (oc, ok) = other.issue("intruder", &["client.local"]).write(dir.path(), "intruder");
    let refused = match handshake(&app, client_config(&ca_file, Some((&oc, &ok)))).await {
        Err(_) => true,
        Ok((_, mut s)) => first_line(&mut s).await.map(|l| l.is_empty()).unwrap_or(true),
    };
    assert!(refused, "a client certificate from another CA must be refused");
    app.stop().await;
}

/// Whether a client with `client` (cert, key) gets a stream over TLS.
async fn admitted(app: &TestApp, ca_file: &Path, client: (&Path, &Path)) -> bool {
    match handshake(app, client_config(ca_file, Some(client))).await {
        Err(_) => false,
        Ok((_, mut s)) => first_line(&mut s).await.map(|l| l == "HTTP/1.1 200 OK").unwrap_or(false),
    }
}

#[tokio::test]
async fn a_client_ca_replaced_on_disk_verifies_the_next_connection() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let old_clients = TestCa::new("old client CA");
    let new_clients = TestCa::new("new client CA");
    let client_ca = old_clients.write(dir.path(), "clients.pem");
    let (oc, ok) = old_clients.issue("old client", &["client.local"]).write(dir.path(), "old-client");
    let (nc, nk) = new_clients.issue("new client", &["client.local"]).write(dir.path(), "new-client");
    let app = tls_app(dir.path(), &ca, Some(client_ca.clone()), |_| {}).await;
    assert!(admitted(&app, &ca_file, (&oc, &ok)).await, "a client of the configured CA is admitted");
    assert!(!admitted(&app, &ca_file, (&nc, &nk)).await, "a client of another CA is refused");

    // A bundle that does not parse is logged and the previous CA stays in use.
    let broken = dir.path().join("broken.pem");
    std::fs::write(&broken, "not a certificate").unwrap();
    let (logs, _guard) = CapturedLogs::start();
    std::fs::rename(&broken, &client_ca).unwrap();
    wait_until("the broken CA file is reported", async || {
        assert!(admitted(&app, &ca_file, (&oc, &ok)).await, "a broken CA file keeps the previous CA");
        logs.has_line(&["client CA file changed but cannot be used", "server.tls.client_ca_file"])
    })
    .await;

    // Rotated as a Secret volume or cert-manager does: a new file renamed over the old one.
    let next = new_clients.write(dir.path(), "clients.next.pem");
    std::fs::rename(&next, &client_ca).unwrap();
    wait_until("the next connection is verified against the new client CA", async || {
        admitted(&app, &ca_file, (&nc, &nk)).await
    })
    .await;
    assert!(!admitted(&app, &ca_file, (&oc, &ok)).await, "the old CA's clients are refused after the change");
    app.stop().await;
}

/// `--check-config`'s checks (the same as at startup): the key, the file and the reason.
fn check(dir: &Path, toml: &str) -> Result<(), String> {
    let p = dir.join("bridge.toml");
    std::fs::write(&p, toml).unwrap();
    sse_bridge::startup::load_config(&ConfigFile::Explicit(p), &Overrides::default())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn check_config_names_the_key_the_file_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::new("test CA");
    let (cert, key) = ca.issue("bridge", &["localhost"]).write(d, "server");
    let (_, other_key) = ca.issue("other", &["localhost"]).write(d, "other");
    let section = |c: &Path, k: &Path| format!("[server.tls]\ncert_file = {:?}\nkey_file = {:?}\n", c, k);

    check(d, &section(&cert, &key)).expect("a good pair passes");

    let e = check(d, &section(&d.join("missing.crt"), &key)).unwrap_err();
    assert!(e.contains("`server.tls.cert_file`") && e.contains("missing.crt") && e.contains("cannot read"), "{e}");

    let e = check(d, &section(&key, &key)).unwrap_err();
    assert!(e.contains("`server.tls.cert_file`") && e.contains("no CERTIFICATE"), "{e}");

    let e = check(d, &section(&cert, &other_key)).unwrap_err();
    assert!(e.contains("`server.tls.key_file`") && e.contains("does not match"), "{e}");

    let expired = ca.issue_with("old", &["localhost"], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let (ec, ek) = expired.write(d, "expired");
    let e = check(d, &section(&ec, &ek)).unwrap_err();
    assert!(e.contains("`server.tls.cert_file`") && e.contains("expired on") && e.contains("2021"), "{e}");

    let e = check(d, &format!("{}client_ca_file = {:?}\n", section(&cert, &key), d.join("nope.pem"))).unwrap_err();
    assert!(e.contains("`server.tls.client_ca_file`") && e.contains("nope.pem"), "{e}");
    // The configuration file is named too.
    assert!(e.contains("bridge.toml"), "{e}");
}

#[tokio::test]
async fn ten_event_sources_in_chromium_over_tls() {
    require_browser_tooling();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let page_port = brokers::free_port();
    let app = tls_app(dir.path(), &ca, None, |c| {
        c.server.cors_origins = vec![format!("http://127.0.0.1:{page_port}")];
    })
    .await;
    let url = https(&app, "/events?topic=tabs");
    // Chromium does not know the test CA: this test alone ignores certificate errors.
    let mut child = Command::new("node")
        .current_dir(crate_root())
        .arg("tests/browser/eventsource.mjs")
        .args(["--url", &url, "--page-port", &page_port.to_string(), "--count", "10", "--sources", "10"])
        .args(["--timeout-ms", "25000", "--ignore-certificate-errors"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut opened = std::collections::BTreeSet::new();
    let mut events = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut published = false;
    while events.len() < 10 {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("browser: opened {opened:?}, events from {events:?}"))
            .unwrap()
            .expect("harness ended early");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        match v["type"].as_str() {
            Some("open") => {
                opened.insert(v["source"].as_u64().unwrap());
            }
            Some("event") => {
                assert_eq!(v["data"], "to-every-tab");
                events.insert(v["source"].as_u64().unwrap());
            }
            other => panic!("unexpected {other:?}: {v}"),
        }
        // All ten open at once: over HTTP/1.1 the seventh would wait for a free connection.
        if opened.len() == 10 && !published {
            wait_until("10 streams registered", async || app.state.registry.subscriber_count() == 10).await;
            assert_eq!(app.state.metrics.open_connections.get(), 1, "the page's streams share one HTTP/2 connection");
            publish(&app, &ca_file, "tabs", "to-every-tab").await;
            published = true;
        }
    }
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "harness exit {status}");
    app.stop().await;
}
