//! Topic authorization over real HTTP: public and protected topics, JWT verification (and the
//! tokens it must refuse), the three places a token may come from, publish grants next to the
//! legacy `publish.token`, key files re-read when they change, CORS with credentials, and that a
//! token sent in a query string never reaches the logs.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, get_current_timestamp};
use reqwest::StatusCode;
use serde_json::{Value, json};

use common::bridge_process::BridgeProcess;
use common::logs::CapturedLogs;
use common::sse_client::{self, SseError, SseStream, test_client};
use common::{EVENT_TIMEOUT, SECRET, TOKEN, TestApp, rejected_count, start_app, test_config, urlencode, wait_until};
use sse_bridge::Config;
use sse_bridge::config::{AuthConfig, AuthRule, JwtAlgorithm, TopicAccess};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/auth").join(name)
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

/// `[auth]` with `pub` and `pub.>` public, everything else behind a token.
fn auth_config() -> AuthConfig {
    AuthConfig {
        secret: Some(SECRET.into()),
        leeway: Duration::from_secs(5),
        rules: vec![
            AuthRule { topics: "pub".into(), access: TopicAccess::Public },
            AuthRule { topics: "pub.>".into(), access: TopicAccess::Public },
        ],
        ..AuthConfig::default()
    }
}

fn config_with(auth: AuthConfig) -> Config {
    let mut c = test_config();
    c.auth = Some(auth);
    c
}

/// Claims with `subscribe`/`publish` grants, expiring in an hour.
fn claims(subscribe: &[&str], publish: &[&str]) -> Value {
    json!({
        "sub": "user-42",
        "exp": get_current_timestamp() + 3600,
        "sse_bridge": { "subscribe": subscribe, "publish": publish },
    })
}

fn hs256(claims: &Value) -> String {
    sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET.as_bytes()), None, claims)
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    encode(&h, claims, key).expect("signing a test token")
}

fn rsa_key(name: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(&fixture_bytes(name)).unwrap()
}

/// `GET /events` for `topics` with `headers` (and an optional extra query).
async fn open(
    app: &TestApp,
    topics: &[&str],
    extra_query: &str,
    headers: &[(&str, &str)],
) -> Result<SseStream, SseError> {
    let mut q: Vec<String> = topics.iter().map(|t| format!("topic={}", urlencode(t))).collect();
    if !extra_query.is_empty() {
        q.push(extra_query.to_owned());
    }
    let mut s = sse_client::connect(&app.url(&format!("/events?{}", q.join("&"))), headers).await?;
    s.wait_for_comments(1, EVENT_TIMEOUT).await;
    Ok(s)
}

async fn admitted(app: &TestApp, topics: &[&str], extra_query: &str, headers: &[(&str, &str)]) -> SseStream {
    open(app, topics, extra_query, headers).await.unwrap_or_else(|e| panic!("{topics:?} refused: {e}"))
}

/// Opens a stream that must be refused with `status`; returns the one-line reason and the
/// `WWW-Authenticate` header.
async fn refused(
    app: &TestApp,
    topics: &[&str],
    extra_query: &str,
    headers: &[(&str, &str)],
    status: StatusCode,
) -> (String, String) {
    match open(app, topics, extra_query, headers).await {
        Ok(_) => panic!("{topics:?} was admitted, expected {status}"),
        Err(SseError::Status { status: got, headers, body }) => {
            assert_eq!(got, status, "{topics:?}: {body}");
            assert_eq!(body.trim_end().lines().count(), 1, "one-line reason: {body:?}");
            let challenge = headers.get("www-authenticate").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
            (body.trim_end().to_owned(), challenge)
        }
        Err(e) => panic!("{topics:?}: {e}"),
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn without_an_auth_section_every_topic_is_public() {
    let app = start_app(test_config()).await;
    admitted(&app, &["orders.1", "anything.>"], "", &[]).await;
}

#[tokio::test]
async fn protected_topics_need_a_token_and_mixed_requests_are_refused_whole() {
    let app = start_app(config_with(auth_config())).await;
    admitted(&app, &["pub", "pub.x", "pub.*", "pub.>"], "", &[]).await;

    let (body, challenge) = refused(&app, &["orders.1"], "", &[], StatusCode::UNAUTHORIZED).await;
    assert!(body.contains("\"orders.1\"") && body.contains("needs a token"), "{body}");
    assert_eq!(challenge, "Bearer realm=\"sse-bridge\"");
    // Public first, protected second: refused as a whole, naming the protected one.
    let (body, _) = refused(&app, &["pub.x", "orders.2", "orders.3"], "", &[], StatusCode::UNAUTHORIZED).await;
    assert!(body.contains("\"orders.2\""), "{body}");
    // `>` can match protected topics: not public, even though `pub.>` is.
    refused(&app, &[">"], "", &[], StatusCode::UNAUTHORIZED).await;
    assert_eq!(rejected_count(&app, "unauthenticated").await, 3.0);
}

#[tokio::test]
async fn a_valid_token_reaches_exactly_its_topics() {
    let app = start_app(config_with(auth_config())).await;
    let token = hs256(&claims(&["orders.>", "user.42"], &[]));
    let auth = bearer(&token);
    let h = [("authorization", auth.as_str())];

    // Covered: exact topics, narrower patterns, and public topics alongside.
    admitted(&app, &["orders.1"], "", &h).await;
    admitted(&app, &["orders.*", "orders.>", "orders.1.2"], "", &h).await;
    admitted(&app, &["user.42", "pub.x"], "", &h).await;
    // Not covered: 403 naming the first forbidden filter; the allowed ones do not rescue it.
    for (topics, named) in [
        (&["user.43"][..], "user.43"),
        (&["orders.*", "user.43", "user.44"][..], "user.43"),
        (&["orders"][..], "orders"),
        (&["user.*"][..], "user.*"),
        (&[">"][..], ">"),
    ] {
        let (body, challenge) = refused(&app, topics, "", &h, StatusCode::FORBIDDEN).await;
        assert_eq!(body, format!("topic {named:?} is not granted by the token"));
        assert!(challenge.contains("insufficient_scope"), "{challenge}");
    }
    assert_eq!(rejected_count(&app, "forbidden_topic").await, 5.0);

    // And the admitted stream carries its topics' events, nothing else.
    let mut s = admitted(&app, &["orders.*", "user.42"], "", &h).await;
    for t in ["user.43", "orders.1", "secret", "user.42", "orders.1.deep"] {
        app.publish(t, None, t.to_owned()).await;
    }
    let got: Vec<String> = s.take_events(2, EVENT_TIMEOUT).await.into_iter().map(|e| e.data).collect();
    assert_eq!(got, ["orders.1", "user.42"]);
    assert!(s.next_event_or_end(Duration::from_millis(300)).await.is_err(), "nothing else arrives");
}

#[tokio::test]
async fn token_from_header_cookie_or_query_parameter() {
    let app = start_app(config_with(auth_config())).await;
    let token = hs256(&claims(&["orders.>"], &[]));
    let auth = bearer(&token);
    admitted(&app, &["orders.1"], "", &[("authorization", auth.as_str())]).await;
    admitted(&app, &["orders.1"], "", &[("authorization", &format!("bearer {token}"))]).await;
    let cookie = format!("theme=dark; sse_bridge_token={token}; other=1");
    admitted(&app, &["orders.1"], "", &[("cookie", cookie.as_str())]).await;
    admitted(&app, &["orders.1"], &format!("access_token={token}"), &[]).await;
    // The header wins over the others: a bad header is not rescued by a good query token.
    let (body, _) = refused(
        &app,
        &["orders.1"],
        &format!("access_token={token}"),
        &[("authorization", "Bearer not.a.token")],
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert!(body.starts_with("invalid token"), "{body}");

    // Sources can be turned off.
    let app = start_app(config_with(AuthConfig { cookie: "".into(), query_token: false, ..auth_config() })).await;
    refused(&app, &["orders.1"], &format!("access_token={token}"), &[], StatusCode::UNAUTHORIZED).await;
    refused(&app, &["orders.1"], "", &[("cookie", cookie.as_str())], StatusCode::UNAUTHORIZED).await;
    admitted(&app, &["orders.1"], "", &[("authorization", auth.as_str())]).await;
}

/// Expect a 401 with `error="invalid_token"` whose reason contains `why`.
async fn invalid(app: &TestApp, token: &str, why: &str) {
    let auth = bearer(token);
    let (body, challenge) =
        refused(app, &["orders.1"], "", &[("authorization", &auth)], StatusCode::UNAUTHORIZED).await;
    assert!(body.starts_with("invalid token: ") && body.contains(why), "expected {why:?}: {body}");
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    assert!(!body.contains(token) && !challenge.contains(token), "the token is never echoed");
}

fn unsigned(header: &Value, claims: &Value) -> String {
    format!("{}.{}.", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()))
}

#[tokio::test]
async fn hs256_refuses_bad_tokens() {
    let app = start_app(config_with(auth_config())).await;
    let now = get_current_timestamp();
    let grant = json!({ "subscribe": ["orders.>"] });

    invalid(&app, &hs256(&json!({ "exp": now - 60, "sse_bridge": grant })), "expired").await;
    // Within the leeway (5 s in this config) a just-expired token still passes.
    admitted(
        &app,
        &["orders.1"],
        "",
        &[("authorization", &bearer(&hs256(&json!({ "exp": now - 2, "sse_bridge": grant }))))],
    )
    .await;
    invalid(&app, &hs256(&json!({ "exp": now + 600, "nbf": now + 300, "sse_bridge": grant })), "not valid yet").await;
    invalid(&app, &hs256(&json!({ "sse_bridge": grant })), "no exp claim").await;
    let other = EncodingKey::from_secret(b"another-secret-0123456789-0123456789");
    invalid(&app, &sign(Algorithm::HS256, &other, None, &claims(&["orders.>"], &[])), "signature").await;
    // A token for someone else: it names an audience and this bridge configured none.
    invalid(&app, &hs256(&json!({ "exp": now + 600, "aud": "other-service", "sse_bridge": grant })), "audience").await;
    // alg none, with and without a signature segment, and a stripped signature.
    invalid(&app, &unsigned(&json!({ "alg": "none", "typ": "JWT" }), &claims(&["orders.>"], &[])), "\"none\"").await;
    let none_sig = format!("{}c2ln", unsigned(&json!({ "alg": "none" }), &claims(&["orders.>"], &[])));
    invalid(&app, &none_sig, "\"none\"").await;
    let good = hs256(&claims(&["orders.>"], &[]));
    let stripped = &good[..good.rfind('.').unwrap() + 1];
    invalid(&app, stripped, "signature").await;
    // Tampered claims under the original signature.
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged = URL_SAFE_NO_PAD.encode(claims(&[">"], &[]).to_string());
    parts[1] = &forged;
    invalid(&app, &parts.join("."), "signature").await;
    invalid(&app, "garbage", "not a well-formed JWT").await;
    // Malformed grants are refused, not ignored.
    invalid(&app, &hs256(&json!({ "exp": now + 600, "sse_bridge": { "subscribe": ["a.>.b"] } })), "grants").await;
    assert_eq!(rejected_count(&app, "invalid_token").await, 11.0);
}

#[tokio::test]
async fn audience_and_issuer_are_checked_when_configured() {
    let cfg = AuthConfig {
        audience: vec!["sse-bridge".into()],
        issuer: vec!["https://auth.example".into()],
        ..auth_config()
    };
    let app = start_app(config_with(cfg)).await;
    let now = get_current_timestamp();
    let grant = json!({ "subscribe": ["orders.>"] });
    let ok = json!({ "exp": now + 600, "aud": "sse-bridge", "iss": "https://auth.example", "sse_bridge": grant });
    admitted(&app, &["orders.1"], "", &[("authorization", &bearer(&hs256(&ok)))]).await;
    let list_aud =
        json!({ "exp": now + 600, "aud": ["x", "sse-bridge"], "iss": "https://auth.example", "sse_bridge": grant });
    admitted(&app, &["orders.1"], "", &[("authorization", &bearer(&hs256(&list_aud)))]).await;

    let wrong_aud = json!({ "exp": now + 600, "aud": "other", "iss": "https://auth.example", "sse_bridge": grant });
    invalid(&app, &hs256(&wrong_aud), "audience").await;
    let no_aud = json!({ "exp": now + 600, "iss": "https://auth.example", "sse_bridge": grant });
    invalid(&app, &hs256(&no_aud), "no aud claim").await;
    let wrong_iss =
        json!({ "exp": now + 600, "aud": "sse-bridge", "iss": "https://evil.example", "sse_bridge": grant });
    invalid(&app, &hs256(&wrong_iss), "issuer").await;
}

#[tokio::test]
async fn rs256_with_a_pem_key_refuses_algorithm_confusion() {
    let cfg = AuthConfig {
        algorithm: JwtAlgorithm::RS256,
        secret: None,
        public_key_file: Some(fixture("rsa-public.pem")),
        ..auth_config()
    };
    let app = start_app(config_with(cfg)).await;
    let c = claims(&["orders.>"], &[]);
    admitted(
        &app,
        &["orders.1"],
        "",
        &[("authorization", &bearer(&sign(Algorithm::RS256, &rsa_key("rsa-private.pem"), None, &c)))],
    )
    .await;
    // The classic confusion: HS256 "signed" with the RSA public key as the HMAC secret.
    let confused = sign(Algorithm::HS256, &EncodingKey::from_secret(&fixture_bytes("rsa-public.pem")), None, &c);
    invalid(&app, &confused, "\"HS256\" is not accepted").await;
    // Another RSA key: the signature does not verify.
    invalid(&app, &sign(Algorithm::RS256, &rsa_key("rsa2-private.pem"), None, &c), "signature").await;
    // Another RSA algorithm is still another algorithm.
    invalid(&app, &sign(Algorithm::RS384, &rsa_key("rsa-private.pem"), None, &c), "\"RS384\"").await;
    invalid(&app, &sign(Algorithm::PS256, &rsa_key("rsa-private.pem"), None, &c), "\"PS256\"").await;
    invalid(&app, &unsigned(&json!({ "alg": "none" }), &c), "\"none\"").await;
}

#[tokio::test]
async fn es256_with_a_pem_key() {
    let cfg = AuthConfig {
        algorithm: JwtAlgorithm::ES256,
        secret: None,
        public_key_file: Some(fixture("ec-public.pem")),
        ..auth_config()
    };
    let app = start_app(config_with(cfg)).await;
    let c = claims(&["orders.>"], &[]);
    let key = EncodingKey::from_ec_pem(&fixture_bytes("ec-private.pem")).unwrap();
    admitted(&app, &["orders.1"], "", &[("authorization", &bearer(&sign(Algorithm::ES256, &key, None, &c)))]).await;
    invalid(&app, &sign(Algorithm::RS256, &rsa_key("rsa-private.pem"), None, &c), "\"RS256\"").await;
    invalid(
        &app,
        &sign(Algorithm::HS256, &EncodingKey::from_secret(&fixture_bytes("ec-public.pem")), None, &c),
        "\"HS256\"",
    )
    .await;
}

fn jwk(private_pem: &str, kid: &str) -> Jwk {
    let mut k = Jwk::from_encoding_key(&rsa_key(private_pem), Algorithm::RS256).unwrap();
    k.common.key_id = Some(kid.into());
    k.common.public_key_use = Some(PublicKeyUse::Signature);
    k
}

fn write_jwks(path: &Path, keys: Vec<Jwk>) {
    // Write then rename, as a key-rotation job would: readers never see half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&JwkSet { keys }).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn jwks_file_is_reread_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    write_jwks(&jwks, vec![jwk("rsa-private.pem", "k1")]);
    let cfg =
        AuthConfig { algorithm: JwtAlgorithm::RS256, secret: None, jwks_file: Some(jwks.clone()), ..auth_config() };
    // The bridge checks the file when a token is verified; its logs tell when it looked.
    let (logs, _capture) = CapturedLogs::start();
    let app = start_app(config_with(cfg)).await;
    let c = claims(&["orders.>"], &[]);
    let t1 = sign(Algorithm::RS256, &rsa_key("rsa-private.pem"), Some("k1"), &c);
    let t2 = sign(Algorithm::RS256, &rsa_key("rsa2-private.pem"), Some("k2"), &c);
    admitted(&app, &["orders.1"], "", &[("authorization", &bearer(&t1))]).await;
    invalid(&app, &t2, "signature").await;

    // Rotation: k2 joins the set. Within the check interval the bridge picks it up.
    write_jwks(&jwks, vec![jwk("rsa-private.pem", "k1"), jwk("rsa2-private.pem", "k2")]);
    let a2 = bearer(&t2);
    wait_until("the new key to be picked up", async || {
        open(&app, &["orders.1"], "", &[("authorization", &a2)]).await.is_ok()
    })
    .await;
    admitted(&app, &["orders.1"], "", &[("authorization", &bearer(&t1))]).await;
    // With several keys the kid must name one.
    invalid(&app, &sign(Algorithm::RS256, &rsa_key("rsa2-private.pem"), None, &c), "no kid").await;
    invalid(&app, &sign(Algorithm::RS256, &rsa_key("rsa2-private.pem"), Some("k9"), &c), "kid").await;

    // A broken file keeps the keys that were loaded.
    std::fs::write(&jwks, b"{ not json").unwrap();
    let path = jwks.display().to_string();
    wait_until("the bridge to read the broken key file", async || {
        // A verification is what makes the bridge look at the file again.
        let _ = open(&app, &["orders.1"], "", &[("authorization", &a2)]).await;
        logs.has_line(&["WARN", &path])
    })
    .await;
    admitted(&app, &["orders.1"], "", &[("authorization", &a2)]).await;
    // k1 retired.
    write_jwks(&jwks, vec![jwk("rsa2-private.pem", "k2")]);
    let a1 = bearer(&t1);
    wait_until("the retired key to stop verifying", async || {
        open(&app, &["orders.1"], "", &[("authorization", &a1)]).await.is_err()
    })
    .await;
}

async fn publish_status(app: &TestApp, topic: &str, headers: &[(&str, &str)]) -> (StatusCode, String) {
    let mut r = test_client().post(app.url(&format!("/publish?topic={}", urlencode(topic)))).body("x");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().await.unwrap();
    (r.status(), r.text().await.unwrap())
}

#[tokio::test]
async fn publish_takes_the_legacy_token_or_a_jwt_with_publish_grants() {
    let app = start_app(config_with(auth_config())).await;
    let legacy = bearer(TOKEN);
    assert_eq!(publish_status(&app, "anything.at.all", &[("authorization", &legacy)]).await.0, StatusCode::OK);

    let jwt = bearer(&hs256(&claims(&["orders.>"], &["orders.>"])));
    assert_eq!(publish_status(&app, "orders.1", &[("authorization", &jwt)]).await.0, StatusCode::OK);
    let (status, body) = publish_status(&app, "user.1", &[("authorization", &jwt)]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("\"user.1\""), "{body}");
    // Subscribe grants are not publish grants.
    let reader = bearer(&hs256(&claims(&["orders.>"], &[])));
    assert_eq!(publish_status(&app, "orders.1", &[("authorization", &reader)]).await.0, StatusCode::FORBIDDEN);
    // Expired: 401. Neither credential: 401 as before.
    let expired = bearer(&hs256(&json!({ "exp": get_current_timestamp() - 60, "sse_bridge": { "publish": [">"] } })));
    assert_eq!(publish_status(&app, "orders.1", &[("authorization", &expired)]).await.0, StatusCode::UNAUTHORIZED);
    let (status, body) = publish_status(&app, "orders.1", &[("authorization", "Bearer wrong-token")]).await;
    assert_eq!((status, body.trim()), (StatusCode::UNAUTHORIZED, "missing or wrong bearer token"));
    // The cookie and the query parameter do not work for publishing (no cross-site forms).
    let token = hs256(&claims(&[], &[">"]));
    let cookie = format!("sse_bridge_token={token}");
    assert_eq!(publish_status(&app, "orders.1", &[("cookie", &cookie)]).await.0, StatusCode::UNAUTHORIZED);
    let r = test_client()
        .post(app.url(&format!("/publish?topic=orders.1&access_token={token}")))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Without publish.token, JWTs alone work; with neither, publishing is off.
    let mut c = config_with(auth_config());
    c.publish.token = None;
    let app = start_app(c).await;
    assert_eq!(publish_status(&app, "orders.1", &[("authorization", &jwt)]).await.0, StatusCode::OK);
    assert_eq!(publish_status(&app, "orders.1", &[("authorization", &legacy)]).await.0, StatusCode::UNAUTHORIZED);
    let mut c = test_config();
    c.publish.token = None;
    let app = start_app(c).await;
    assert_eq!(publish_status(&app, "orders.1", &[("authorization", &jwt)]).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn cors_credentials_only_for_listed_origins() {
    let mut c = config_with(auth_config());
    c.server.cors_origins = vec!["https://app.example".into()];
    let app = start_app(c).await;
    let token = hs256(&claims(&["orders.>"], &[]));
    let cookie = format!("sse_bridge_token={token}");
    let s = admitted(&app, &["orders.1"], "", &[("origin", "https://app.example"), ("cookie", &cookie)]).await;
    assert_eq!(s.headers()["access-control-allow-origin"], "https://app.example");
    assert_eq!(s.headers()["access-control-allow-credentials"], "true");
    let s = admitted(&app, &["pub"], "", &[("origin", "https://evil.example")]).await;
    assert!(s.headers().get("access-control-allow-origin").is_none());
    assert!(s.headers().get("access-control-allow-credentials").is_none());
    let pre = test_client()
        .request(reqwest::Method::OPTIONS, app.url("/events?topic=orders.1"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(pre.headers()["access-control-allow-credentials"], "true");
    // Refusals carry CORS headers too, so the page can read why.
    match open(&app, &["orders.1"], "", &[("origin", "https://app.example")]).await {
        Err(SseError::Status { status, headers, .. }) => {
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert_eq!(headers["access-control-allow-origin"], "https://app.example");
        }
        other => panic!("expected 401, got {:?}", other.map(|_| ()).err()),
    }

    // `*` never comes with credentials.
    let mut c = config_with(auth_config());
    c.server.cors_origins = vec!["*".into()];
    let app = start_app(c).await;
    let s = admitted(&app, &["pub"], "", &[("origin", "https://any.example")]).await;
    assert_eq!(s.headers()["access-control-allow-origin"], "*");
    assert!(s.headers().get("access-control-allow-credentials").is_none());
}

#[test]
fn the_token_in_a_query_string_never_reaches_the_logs() {
    let extra = format!(
        "[publish]\ntoken = \"{TOKEN}\"\n\n[auth]\nsecret = \"{SECRET}\"\n\n[[auth.rules]]\ntopics = \"pub.>\"\naccess = \"public\"\n"
    );
    let bridge = BridgeProcess::start(&extra, &[("RUST_LOG", "debug")]);
    let good = hs256(&claims(&["orders.>"], &[">"]));
    let expired = hs256(&json!({ "exp": get_current_timestamp() - 600, "sse_bridge": { "subscribe": [">"] } }));
    let forged = format!("{}.{}", &good[..good.rfind('.').unwrap()], "Zm9yZ2VkLXNpZ25hdHVyZS1tYXJrZXI");
    let marker = "NOT-A-JWT-secret-marker-7f3c9a";
    let too_long = format!("x{}", "A".repeat(9000));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = test_client();
        let url = |q: String| bridge.url(&q);
        // Admitted, then read a little and dropped.
        let mut s =
            sse_client::connect(&url(format!("/events?topic=orders.1&access_token={good}")), &[]).await.unwrap();
        s.wait_for_comments(1, EVENT_TIMEOUT).await;
        drop(s);
        for (q, want) in [
            (format!("/events?topic=orders.1&access_token={expired}"), 401),
            (format!("/events?topic=orders.1&access_token={forged}"), 401),
            (format!("/events?topic=orders.1&access_token={marker}"), 401),
            (format!("/events?topic=orders.1&access_token={too_long}"), 400),
            (format!("/events?topic=orders.1&access_token={good}&access_token={marker}"), 400),
            (format!("/events?topic=a..>&access_token={marker}"), 400),
            (format!("/events?topic=user.1&access_token={good}"), 403),
            (format!("/nowhere?access_token={marker}"), 404),
            (format!("/publish?topic=orders.1&access_token={marker}"), 401),
        ] {
            let req = if q.starts_with("/publish") { c.post(url(q.clone())).body("x") } else { c.get(url(q.clone())) };
            let status = req.send().await.unwrap().status().as_u16();
            assert_eq!(status, want, "{}", &q[..q.len().min(80)]);
        }
        // Bearer and cookie tokens are not logged either.
        let r = c
            .get(url("/events?topic=orders.2".into()))
            .header("authorization", format!("Bearer {marker}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = c
            .get(url("/events?topic=orders.2".into()))
            .header("cookie", format!("sse_bridge_token={marker}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        // A publish with the JWT, so the stream path and the publish path both ran.
        let r = c.post(url("/publish?topic=orders.1".into())).bearer_auth(&good).body("x").send().await.unwrap();
        assert_eq!(r.status(), 200);
        wait_until("debug logs flushed", async || bridge.daemon.stderr().contains("Token refused")).await;
    });
    let logs = bridge.stop();
    if std::env::var("SHOW_LOGS").is_ok() {
        eprintln!("{logs}");
    }
    assert!(logs.contains("DEBUG"), "debug logging was on:\n{logs}");
    assert!(logs.contains("Stream opened"), "the admitted stream was logged:\n{logs}");
    for secret in [good.as_str(), expired.as_str(), forged.as_str(), marker, &too_long[..64]] {
        for part in secret.split('.').filter(|p| p.len() >= 16) {
            assert!(!logs.contains(part), "a token (part) reached the logs: {part}\n{logs}");
        }
    }
    assert!(!logs.contains("access_token"), "a query string reached the logs:\n{logs}");
    assert!(!logs.contains(SECRET), "the secret reached the logs");
}
