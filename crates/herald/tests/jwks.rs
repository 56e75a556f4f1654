//! Identity providers' key sets (`--jwt-jwks-url`, RFC 7517) and the
//! `--jwt-issuer` / `--jwt-audience` checks (RFC 7519), against the real
//! `herald serve` binary and a key set server started by each test on
//! 127.0.0.1, which counts the fetches it answers.
//!
//! Keys: the RS256 and ES256 test keys of herald-auth (`tests/keys`), served
//! as JWKs with `kid` `a` (RSA) and `b` (EC P-256). Credentials are sent as
//! `Authorization: Bearer` on `GET /v1/sse`: 200 means accepted, 401 refused.

#[path = "process/mod.rs"]
mod process;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::IntoResponse;
use bytes::Bytes;
use http_body_util::BodyExt;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use process::{eventually, ServeProcess as Server, StderrLog};

const RSA_PRIVATE: &[u8] = include_bytes!("../../herald-auth/tests/keys/rsa_private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("../../herald-auth/tests/keys/rsa_public.pem");
const EC_PRIVATE: &[u8] = include_bytes!("../../herald-auth/tests/keys/ec_private.pem");
const SECRET: &str = "jwks-test-static-secret-0123456789abcdef";
/// Herald fetches a URL at most once within this time.
const REFETCH: Duration = Duration::from_secs(10);

/// The public JWK of key `a` (RSA, RS256) or `b` (EC P-256, ES256).
fn jwk(kid: &str) -> Value {
    let (enc, alg) = match kid {
        "a" => (
            EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
            Algorithm::RS256,
        ),
        _ => (
            EncodingKey::from_ec_pem(EC_PRIVATE).unwrap(),
            Algorithm::ES256,
        ),
    };
    let mut jwk = Jwk::from_encoding_key(&enc, alg).unwrap();
    jwk.common.key_id = Some(kid.into());
    serde_json::to_value(jwk).unwrap()
}

/// A token for alice (subscribe `users/{sub}/**`), with `extra` claims,
/// signed with `alg` by `key` (a PEM private key, or an HS256 secret).
fn token(alg: Algorithm, key: &[u8], kid: Option<&str>, extra: Value) -> String {
    let now = herald_auth::now();
    let mut claims = json!({
        "sub": "alice", "exp": now + 300, "iat": now,
        "herald": {"subscribe": ["users/{sub}/**"]},
    });
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    let enc = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(key).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(key).unwrap(),
        _ => EncodingKey::from_secret(key),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, &enc).unwrap()
}

/// Key `a`'s token, or key `b`'s, with `extra` claims.
fn by_key(kid: &str, extra: Value) -> String {
    match kid {
        "a" => token(Algorithm::RS256, RSA_PRIVATE, Some("a"), extra),
        _ => token(Algorithm::ES256, EC_PRIVATE, Some("b"), extra),
    }
}

/// A key set server: `GET /jwks.json` answers the current set, counted.
#[derive(Clone, Default)]
struct Jwks {
    keys: Arc<Mutex<Vec<Value>>>,
    /// When each fetch came.
    fetches: Arc<Mutex<Vec<Instant>>>,
    served: Arc<AtomicUsize>,
}

impl Jwks {
    /// Serves `keys` on `listener` from now on.
    fn start(listener: std::net::TcpListener, keys: Vec<Value>) -> Jwks {
        let jwks = Jwks::default();
        jwks.rotate(keys);
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let app = axum::Router::new()
            .route("/jwks.json", axum::routing::get(answer))
            .with_state(jwks.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        jwks
    }

    /// Serves `keys` on a free port; returns it with its URL.
    fn bind(keys: Vec<Value>) -> (Jwks, String) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        (Jwks::start(listener, keys), url)
    }

    fn rotate(&self, keys: Vec<Value>) {
        *self.keys.lock().unwrap() = keys;
    }

    fn count(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    fn last_fetch(&self) -> Instant {
        *self.fetches.lock().unwrap().last().expect("a fetch")
    }

    /// Waits until at least `n` fetches came.
    async fn wait_fetches(&self, n: usize) {
        eventually(
            &format!("{n} key set fetches"),
            Duration::from_secs(20),
            || async { self.count() >= n },
        )
        .await;
    }

    /// Waits until the next fetch may come (10 s after the last one).
    async fn wait_refetch_allowed(&self) {
        let at = self.last_fetch() + REFETCH + Duration::from_millis(200);
        tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
    }
}

async fn answer(State(jwks): State<Jwks>) -> impl IntoResponse {
    jwks.fetches.lock().unwrap().push(Instant::now());
    jwks.served.fetch_add(1, Ordering::SeqCst);
    let body = json!({ "keys": *jwks.keys.lock().unwrap() }).to_string();
    (
        [
            ("content-type", "application/jwk-set+json"),
            ("cache-control", "public, max-age=3600"),
        ],
        body,
    )
}

/// `herald serve` on a free port with `--jwt-jwks-url URL` and `extra`,
/// its stderr captured.
fn herald(url: &str, extra: &[&str]) -> (Server, StderrLog) {
    let mut cmd = Command::new(process::BIN);
    cmd.args(["serve", "--engine", "memory", "--listen", "127.0.0.1:0"])
        .args(["--jwt-jwks-url", url])
        .args(extra)
        .env("HERALD_LOG", "warn,herald_auth=info")
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    let mut server = Server::spawn(cmd);
    let log = server.capture_stderr();
    (server, log)
}

/// The status of `GET /v1/sse` with `token`, and the error message of a refusal.
async fn subscribe(s: &Server, token: &str) -> (u16, String) {
    let r = s
        .client
        .request(
            http::Method::GET,
            "/v1/sse?topic=users/alice/inbox",
            &[("authorization", &format!("Bearer {token}"))],
            Bytes::new(),
        )
        .await
        .unwrap();
    let status = r.status().as_u16();
    if status == 200 {
        return (status, String::new());
    }
    let body = r.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
    (
        status,
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

async fn status(s: &Server, token: &str) -> u16 {
    subscribe(s, token).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_fetched_on_demand_and_the_old_one_refused() {
    let (jwks, url) = Jwks::bind(vec![jwk("a")]);
    let (s, log) = herald(&url, &[]);
    // The first fetch happens at start.
    jwks.wait_fetches(1).await;
    let a = by_key("a", json!({}));
    assert_eq!(status(&s, &a).await, 200);
    assert_eq!(jwks.count(), 1, "a held key needs no fetch");
    // The provider rotates to b. Once 10 s have passed since the last
    // fetch, b's first token fetches the set again and is accepted.
    jwks.rotate(vec![jwk("b")]);
    jwks.wait_refetch_allowed().await;
    let b = by_key("b", json!({}));
    assert_eq!(status(&s, &b).await, 200);
    assert_eq!(jwks.count(), 2);
    // a left the set with that fetch: unknown, no fetch within 10 s, 401.
    let (code, message) = subscribe(&s, &a).await;
    assert_eq!((code, message.as_str()), (401, "unknown key id (kid)"));
    assert_eq!(jwks.count(), 2);
    // Tokens never reach the log.
    let text = log.text();
    assert!(text.contains("key set fetched"), "{text}");
    for t in [&a, &b] {
        assert!(!text.contains(t.rsplit('.').next().unwrap()), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_kids_fetches_at_most_once_per_ten_seconds() {
    let (jwks, url) = Jwks::bind(vec![jwk("a")]);
    let (s, _log) = herald(&url, &[]);
    jwks.wait_fetches(1).await;
    jwks.wait_refetch_allowed().await;
    // 50 tokens with random kids, all at once: one fetch between them. The
    // tokens are signed first (RSA signing in a debug build is slow on a
    // busy machine, and is not what is being timed).
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let signed: Vec<Vec<String>> = (0..2u32)
        .map(|round| {
            (0..50)
                .map(|i| {
                    token(
                        Algorithm::RS256,
                        RSA_PRIVATE,
                        Some(&format!("random-{round}-{i}-{nanos:x}")),
                        json!({}),
                    )
                })
                .collect()
        })
        .collect();
    let flood = |round: usize| {
        let tasks: Vec<_> = signed[round]
            .iter()
            .cloned()
            .map(|t| {
                let client = s.client.clone();
                tokio::spawn(async move {
                    client
                        .request(
                            http::Method::GET,
                            "/v1/sse?topic=users/alice/inbox",
                            &[("authorization", &format!("Bearer {t}"))],
                            Bytes::new(),
                        )
                        .await
                        .unwrap()
                        .status()
                        .as_u16()
                })
            })
            .collect();
        async move {
            for t in tasks {
                assert_eq!(t.await.unwrap(), 401);
            }
        }
    };
    let started = Instant::now();
    flood(0).await;
    flood(1).await;
    assert!(
        started.elapsed() < REFETCH,
        "the floods took {:?}",
        started.elapsed()
    );
    assert_eq!(jwks.count(), 2, "100 unknown kids in under 10 s: one fetch");
    // The held key still works, without a fetch.
    assert_eq!(status(&s, &by_key("a", json!({}))).await, 200);
    assert_eq!(jwks.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_and_audience_are_checked_for_key_set_and_static_keys() {
    let (jwks, url) = Jwks::bind(vec![jwk("a")]);
    let iss = "https://idp.example/";
    let (s, _log) = herald(
        &url,
        &[
            "--jwt-issuer",
            iss,
            "--jwt-audience",
            "herald",
            "--jwt-secret",
            SECRET,
        ],
    );
    jwks.wait_fetches(1).await;
    let cases = [
        (json!({"iss": iss, "aud": "herald"}), 200, ""),
        (json!({"iss": iss, "aud": ["web", "herald"]}), 200, ""),
        (
            json!({"iss": "https://evil.example/", "aud": "herald"}),
            401,
            "issuer (iss)",
        ),
        (json!({"aud": "herald"}), 401, "no issuer (iss)"),
        (json!({"iss": iss, "aud": "other"}), 401, "audience (aud)"),
        (
            json!({"iss": iss, "aud": ["web", "api"]}),
            401,
            "audience (aud)",
        ),
        (json!({"iss": iss}), 401, "no audience (aud)"),
    ];
    for (claims, want, says) in cases {
        for (how, t) in [
            ("key set", by_key("a", claims.clone())),
            (
                "secret",
                token(Algorithm::HS256, SECRET.as_bytes(), None, claims.clone()),
            ),
        ] {
            let (code, message) = subscribe(&s, &t).await;
            assert_eq!(code, want, "{how}, {claims}: {message}");
            assert!(message.contains(says), "{how}, {claims}: {message}");
        }
    }
    assert_eq!(jwks.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_algorithm_comes_from_the_key_never_from_the_token() {
    let (jwks, url) = Jwks::bind(vec![jwk("a"), jwk("b")]);
    let (s, _log) = herald(&url, &[]);
    jwks.wait_fetches(1).await;
    assert_eq!(status(&s, &by_key("a", json!({}))).await, 200);
    assert_eq!(status(&s, &by_key("b", json!({}))).await, 200);
    // RS256 in the header, naming the EC key b.
    let rs_on_ec = token(Algorithm::RS256, RSA_PRIVATE, Some("b"), json!({}));
    let (code, message) = subscribe(&s, &rs_on_ec).await;
    assert_eq!(code, 401, "{message}");
    assert!(message.contains("algorithm"), "{message}");
    // alg none, naming a held key.
    let unsigned = {
        let enc = |v: Value| b64(v.to_string().as_bytes());
        let now = herald_auth::now();
        format!(
            "{}.{}.",
            enc(json!({"alg": "none", "typ": "JWT", "kid": "a"})),
            enc(
                json!({"sub": "alice", "exp": now + 300, "herald": {"subscribe": ["users/{sub}/**"]}})
            )
        )
    };
    let (code, message) = subscribe(&s, &unsigned).await;
    assert_eq!(
        (code, message.as_str()),
        (401, "unsigned tokens (alg none) are refused")
    );
    // Key confusion: HS256 keyed with key a's public material, naming a.
    let n = jwk("a")["n"].as_str().unwrap().to_owned();
    for secret in [n.as_bytes(), RSA_PUBLIC] {
        let confused = token(Algorithm::HS256, secret, Some("a"), json!({}));
        let (code, message) = subscribe(&s, &confused).await;
        assert_eq!(code, 401, "{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_down_at_start_is_used_once_it_answers() {
    // A port with nothing behind it yet.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/jwks.json");
    let (s, log) = herald(&url, &[]);
    // Herald serves, and says why the key set is missing.
    assert!(
        log.wait_for("cannot fetch the key set", Duration::from_secs(10)),
        "{}",
        log.text()
    );
    let ready = s
        .client
        .request(http::Method::GET, "/readyz", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        200,
        "readiness does not wait for the key set"
    );
    let a = by_key("a", json!({}));
    let (code, message) = subscribe(&s, &a).await;
    assert_eq!(code, 401);
    assert!(message.contains("could not be fetched yet"), "{message}");
    // The provider comes up: within the retry time a's tokens pass.
    let jwks = Jwks::start(
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("the reserved port"),
        vec![jwk("a")],
    );
    eventually("key a accepted", Duration::from_secs(30), || async {
        status(&s, &a).await == 200
    })
    .await;
    assert_eq!(jwks.count(), 1, "one fetch once it answered");
    let text = log.text();
    assert!(!text.contains(a.rsplit('.').next().unwrap()), "{text}");
}

/// Unpadded base64url (RFC 4648, 5), as JWTs are written.
fn b64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}
