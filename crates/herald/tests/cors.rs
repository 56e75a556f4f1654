//! CORS against a real `herald serve`: `*` never lends the user's cookie to
//! another site, credentials only for origins listed by name, `Origin: null`
//! never reflected, and a preflight that allows what `EventSource` polyfills
//! send.

mod process;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;

use process::{ServeProcess, BIN};

const SECRET: &str = "cors-test-secret-that-is-long-enough";
const APP: &str = "https://app.example";
const EVIL: &str = "https://evil.example";

/// A `herald serve` child (killed on drop) and the requests the tests send.
struct Server(ServeProcess);

impl Server {
    /// Starts `herald serve` on a loopback port with JWT auth and `cors`
    /// as `--cors-origin` flags.
    fn start(cors: &[&str]) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--engine",
            "memory",
            "--jwt-secret",
            SECRET,
        ])
        .env("HERALD_LOG", "warn")
        .stderr(Stdio::null());
        for origin in cors {
            cmd.args(["--cors-origin", origin]);
        }
        Server(ServeProcess::spawn(cmd))
    }

    /// Sends a request with `headers` and returns its status and headers
    /// (the body read to the end).
    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (StatusCode, HeaderMap) {
        let r = self
            .0
            .client
            .request(method, path, headers, bytes::Bytes::from(body.to_owned()))
            .await
            .unwrap();
        let (parts, body) = r.into_parts();
        let _ = tokio::time::timeout(Duration::from_secs(5), body.collect()).await;
        (parts.status, parts.headers)
    }

    /// `POST /v1/tokens` from `origin` with the user's cookie, as a page on
    /// that origin would send it with `credentials: "include"`.
    async fn token_with_cookie(&self, origin: &str) -> (StatusCode, HeaderMap) {
        let cookie = format!("herald_token={}", user_token());
        self.send(
            Method::POST,
            "/v1/tokens",
            &[
                ("origin", origin),
                ("cookie", &cookie),
                ("content-type", "application/json"),
            ],
            r#"{"topics":["users/alice/inbox"]}"#,
        )
        .await
    }

    /// The preflight a browser sends before a cross-origin JSON publish.
    async fn publish_preflight(&self, origin: &str) -> (StatusCode, HeaderMap) {
        let cookie = format!("herald_token={}", user_token());
        self.send(
            Method::OPTIONS,
            "/v1/publish",
            &[
                ("origin", origin),
                ("cookie", &cookie),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "authorization, content-type",
                ),
            ],
            "",
        )
        .await
    }

    /// The preflight an `EventSource` polyfill causes on `GET /v1/sse`.
    async fn sse_preflight(&self, origin: &str) -> (StatusCode, HeaderMap) {
        self.send(
            Method::OPTIONS,
            "/v1/sse?topic=news",
            &[
                ("origin", origin),
                ("access-control-request-method", "GET"),
                (
                    "access-control-request-headers",
                    "cache-control, last-event-id, x-requested-with",
                ),
            ],
            "",
        )
        .await
    }
}

/// A JWT for alice, as the app's login would put in her cookie.
fn user_token() -> String {
    let out = Command::new(BIN)
        .args([
            "token",
            "--jwt-secret",
            SECRET,
            "--sub",
            "alice",
            "--subscribe",
            "users/{sub}/**",
            "--publish",
            "users/{sub}/**",
            "--ttl",
            "5m",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.to_str().unwrap())
}

/// Every value of a comma-separated header, lowercased.
fn list(h: &HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

#[tokio::test]
async fn star_answers_star_and_never_allows_credentials() {
    let s = Server::start(&["*"]);

    // The page on evil.example may make the request (the cookie goes along,
    // as browsers send it), but it cannot read the one-time token: the
    // answer does not allow credentials and does not name its origin.
    let (_, h) = s.token_with_cookie(EVIL).await;
    assert_eq!(header(&h, "access-control-allow-origin"), Some("*"));
    assert_eq!(header(&h, "access-control-allow-credentials"), None);

    let (status, h) = s.publish_preflight(EVIL).await;
    assert!(status.is_success(), "{status}");
    assert_eq!(header(&h, "access-control-allow-origin"), Some("*"));
    assert_eq!(header(&h, "access-control-allow-credentials"), None);
    let methods = list(&h, "access-control-allow-methods");
    for m in ["get", "post", "options"] {
        assert!(methods.contains(&m.to_owned()), "{methods:?}");
    }

    // `Origin: null` (a sandboxed frame) is never echoed back.
    let (_, h) = s.token_with_cookie("null").await;
    assert_eq!(header(&h, "access-control-allow-origin"), Some("*"));
    assert_eq!(header(&h, "access-control-allow-credentials"), None);
}

#[tokio::test]
async fn listed_origins_get_credentials_and_others_nothing() {
    let s = Server::start(&[APP, "http://localhost:5173"]);

    let (status, h) = s.token_with_cookie(APP).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&h, "access-control-allow-origin"), Some(APP));
    assert_eq!(header(&h, "access-control-allow-credentials"), Some("true"));
    assert!(list(&h, "vary").contains(&"origin".to_owned()), "{h:?}");

    let (status, h) = s.publish_preflight(APP).await;
    assert!(status.is_success(), "{status}");
    assert_eq!(header(&h, "access-control-allow-origin"), Some(APP));
    assert_eq!(header(&h, "access-control-allow-credentials"), Some("true"));
    assert!(list(&h, "vary").contains(&"origin".to_owned()), "{h:?}");

    let (_, h) = s.token_with_cookie("http://localhost:5173").await;
    assert_eq!(
        header(&h, "access-control-allow-origin"),
        Some("http://localhost:5173")
    );

    // Unlisted origins, including the listed host on another scheme or
    // port, and `null`, get no grant at all.
    for origin in [
        EVIL,
        "null",
        "http://app.example",
        "https://app.example:8443",
        "https://app.example.evil.example",
        "http://localhost:5174",
    ] {
        let (_, h) = s.token_with_cookie(origin).await;
        assert_eq!(header(&h, "access-control-allow-origin"), None, "{origin}");
        assert_eq!(
            header(&h, "access-control-allow-credentials"),
            None,
            "{origin}"
        );
        let (_, h) = s.publish_preflight(origin).await;
        assert_eq!(header(&h, "access-control-allow-origin"), None, "{origin}");
        assert_eq!(
            header(&h, "access-control-allow-credentials"),
            None,
            "{origin}"
        );
    }
}

#[tokio::test]
async fn star_beside_listed_origins_lends_credentials_to_the_listed_only() {
    let s = Server::start(&["*", APP]);

    let (_, h) = s.token_with_cookie(APP).await;
    assert_eq!(header(&h, "access-control-allow-origin"), Some(APP));
    assert_eq!(header(&h, "access-control-allow-credentials"), Some("true"));

    let (_, h) = s.token_with_cookie(EVIL).await;
    assert!(header(&h, "access-control-allow-origin").is_some(), "{h:?}");
    assert_eq!(header(&h, "access-control-allow-credentials"), None);

    let (_, h) = s.token_with_cookie("null").await;
    assert_eq!(header(&h, "access-control-allow-origin"), None);
    assert_eq!(header(&h, "access-control-allow-credentials"), None);
}

#[tokio::test]
async fn preflight_allows_what_eventsource_polyfills_send() {
    for (cors, origin) in [("*", EVIL), (APP, APP)] {
        let s = Server::start(&[cors]);
        let (status, h) = s.sse_preflight(origin).await;
        assert!(status.is_success(), "{status}");
        let allowed = list(&h, "access-control-allow-headers");
        for name in [
            "authorization",
            "content-type",
            "last-event-id",
            "cache-control",
            "x-requested-with",
        ] {
            assert!(allowed.contains(&name.to_owned()), "{name}: {allowed:?}");
        }
        let max_age: u64 = header(&h, "access-control-max-age")
            .expect("a max-age")
            .parse()
            .unwrap();
        assert!(max_age > 0);
        assert!(list(&h, "vary").contains(&"origin".to_owned()), "{h:?}");
        assert!(header(&h, "access-control-allow-origin").is_some());

        // The stream itself carries the grant too.
        let bearer = format!("Bearer {}", user_token());
        let r =
            s.0.client
                .request(
                    Method::GET,
                    "/v1/sse?topic=users/alice/inbox",
                    &[("origin", origin), ("authorization", &bearer)],
                    bytes::Bytes::new(),
                )
                .await
                .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        assert!(r.headers().contains_key("access-control-allow-origin"));
    }
}

#[tokio::test]
async fn cors_is_off_without_configured_origins() {
    let s = Server::start(&[]);
    let (_, h) = s.token_with_cookie(APP).await;
    assert_eq!(header(&h, "access-control-allow-origin"), None);
    assert_eq!(header(&h, "access-control-allow-credentials"), None);
    let (status, h) = s.publish_preflight(APP).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(header(&h, "access-control-allow-origin"), None);
}

#[test]
fn null_and_malformed_origins_are_refused_at_start() {
    for (origin, says) in [
        ("null", "null"),
        ("NULL", "null"),
        ("https://app.example/path", "scheme://host"),
        ("app.example", "scheme://host"),
    ] {
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--engine",
                "memory",
                "--cors-origin",
                origin,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("herald started with --cors-origin {origin}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(!status.success(), "{origin}");
        assert!(err.contains("--cors-origin"), "{origin}: {err}");
        assert!(err.contains(says), "{origin}: {err}");
    }
}
