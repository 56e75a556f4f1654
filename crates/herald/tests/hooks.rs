//! Hooks (`--hook-url`) against the real binary and a real backend: a small
//! HTTP server in this process that checks every request's signature with
//! its own HMAC code (not Herald's) and answers connect, subscribe and
//! publish as an application with session cookies would.
//!
//! - a cookie session identifies a connection on SSE, WebSocket and long
//!   poll; no session is 401, an unknown one the backend's 403;
//! - `expires_at` ends the connection with `token_expired`;
//! - the subscribe hook allows and refuses; the publish hook refuses with a
//!   reason the client sees, and rewrites data subscribers then receive;
//! - a hook slower than `--hook-timeout` refuses and is counted in /metrics;
//! - a tampered body or a wrong secret fails the backend's check;
//! - requests in flight toward the backend are bounded.

mod backend;
mod process;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use process::{ServeProcess, TempDir, BIN};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "hooks-test-secret-0123456789abcdef";
const KEY: &str = "hooks-test-publisher-key-0123456";
const WAIT: Duration = Duration::from_secs(10);
/// How long the backend holds a connect for the `hold` session.
const HOLD: Duration = Duration::from_millis(1000);
/// How long the backend takes on `slow/` topics: past the 300 ms timeout.
const SLOW: Duration = Duration::from_millis(1000);

const POLICIES: &str = r#"
[[topics]]
pattern = "rooms/**"
subscribe_hook = true
publish_hook = true

[[topics]]
pattern = "slow/**"
subscribe_hook = true
publish_hook = true
"#;

// ---------------------------------------------------------------------------
// The backend.

/// What the backend saw.
#[derive(Default)]
struct Backend {
    /// Every request whose signature checked out, as JSON.
    requests: Mutex<Vec<Value>>,
    /// Requests whose signature did not check out.
    bad_signatures: AtomicUsize,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    /// The last signed request as it arrived: (signature header, body).
    last: Mutex<Option<(String, Vec<u8>)>>,
}

impl Backend {
    fn count(&self, kind: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r["type"] == kind)
            .count()
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn hook(State(b): State<Arc<Backend>>, headers: HeaderMap, body: Bytes) -> Response {
    let header = headers
        .get("x-herald-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if !backend::signature_ok(SECRET.as_bytes(), &header, &body, now()) {
        b.bad_signatures.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED.into_response();
    }
    *b.last.lock().unwrap() = Some((header, body.to_vec()));
    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
    b.requests.lock().unwrap().push(v.clone());
    let n = b.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    b.most_in_flight.fetch_max(n, Ordering::SeqCst);
    let r = answer(&v).await;
    b.in_flight.fetch_sub(1, Ordering::SeqCst);
    r
}

/// The application: `session=abc` is alice; `short` is alice for 3 s;
/// `hold` is alice after [`HOLD`]; any other session is refused.
async fn answer(v: &Value) -> Response {
    let topic = v["topic"].as_str().unwrap_or("");
    let refuse = |reason: &str| {
        (StatusCode::FORBIDDEN, axum::Json(json!({"reason": reason}))).into_response()
    };
    match v["type"].as_str().unwrap_or("") {
        "connect" => {
            let cookie = v["headers"]["cookie"].as_str().unwrap_or("");
            let session = cookie
                .split(';')
                .find_map(|c| c.trim().strip_prefix("session="));
            let grant = |expires_at: Option<u64>| {
                let patterns = json!(["users/{sub}/**", "rooms/**", "slow/**"]);
                axum::Json(json!({
                    "user": "alice",
                    "grants": {"subscribe": patterns, "publish": patterns},
                    "expires_at": expires_at,
                }))
                .into_response()
            };
            match session {
                None => StatusCode::UNAUTHORIZED.into_response(),
                Some("abc") => grant(None),
                Some("short") => grant(Some(now() + 3)),
                Some("hold") => {
                    tokio::time::sleep(HOLD).await;
                    grant(None)
                }
                Some(_) => refuse("unknown session"),
            }
        }
        "subscribe" if topic.starts_with("slow/") => {
            tokio::time::sleep(SLOW).await;
            StatusCode::OK.into_response()
        }
        "subscribe" if topic == "rooms/closed" => refuse("members only"),
        "subscribe" => StatusCode::OK.into_response(),
        "publish" if topic.starts_with("slow/") => {
            tokio::time::sleep(SLOW).await;
            axum::Json(json!({})).into_response()
        }
        "publish" if v["data"].to_string().contains("spam") => refuse("no spam here"),
        "publish" if v["data"] == "rewrite-me" => {
            axum::Json(json!({"data": {"text": "rewritten"}})).into_response()
        }
        "publish" => axum::Json(json!({})).into_response(),
        _ => StatusCode::BAD_REQUEST.into_response(),
    }
}

/// The backend on a loopback port: its hook URL and what it saw.
async fn backend() -> (String, Arc<Backend>) {
    let seen = Arc::new(Backend::default());
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), seen)
}

/// `herald serve` with the hooks at `hook_url`, the policies above and a
/// publisher key.
fn herald(dir: &TempDir, hook_url: &str, timeout: &str) -> ServeProcess {
    let file = dir.path().join("herald.toml");
    std::fs::write(&file, POLICIES).unwrap();
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["serve", "--engine", "memory", "--listen", "127.0.0.1:0"])
        .args(["--publish-key", KEY, "--hook-url", hook_url])
        .args(["--hook-secret", SECRET, "--hook-timeout", timeout])
        .arg("--config")
        .arg(&file)
        .env("HERALD_LOG", "error")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    ServeProcess::spawn(cmd)
}

// ---------------------------------------------------------------------------
// Clients.

/// One HTTP/1.1 exchange read to the end (at most [`WAIT`]): (status, head, body).
async fn http(
    s: &ServeProcess,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut sock = open(s, method, path, headers, body).await;
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, sock.read_to_end(&mut out))
        .await
        .expect("an answer in time")
        .unwrap();
    let out = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

/// Sends a request and returns the socket, to read the answer as it comes.
async fn open(
    s: &ServeProcess,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> TcpStream {
    let mut sock = TcpStream::connect(s.addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\ncontent-length: {}\r\n",
        s.addr,
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(body.as_bytes()).await.unwrap();
    sock
}

/// Reads `sock` until its text contains `needle` (at most [`WAIT`]).
async fn read_until(sock: &mut TcpStream, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    while !text.contains(needle) {
        let n = tokio::time::timeout_at(deadline, sock.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} in time; got {text:?}"))
            .unwrap();
        assert!(n > 0, "closed before {needle:?}; got {text:?}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    text
}

fn publish_body(topic: &str, data: Value) -> String {
    json!({"topic": topic, "data": data}).to_string()
}

/// `POST /v1/publish` with the publisher key.
async fn publish_as_backend(s: &ServeProcess, topic: &str, data: Value) -> (u16, String) {
    let auth = format!("Bearer {KEY}");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let (status, _, body) = http(
        s,
        "POST",
        "/v1/publish",
        &headers,
        &publish_body(topic, data),
    )
    .await;
    (status, body)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws(
    s: &ServeProcess,
    cookie: Option<&str>,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut req = format!("ws://{}/v1/ws", s.addr)
        .into_client_request()
        .unwrap();
    if let Some(c) = cookie {
        req.headers_mut().insert("cookie", c.parse().unwrap());
    }
    Ok(tokio_tungstenite::connect_async(req).await?.0)
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The next JSON message; a close as `{"type":"close","code","reason"}`.
async fn recv(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time");
        match m {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
            Some(Ok(Message::Close(c))) => {
                return json!({"type": "close", "code": c.as_ref().map(|c| u16::from(c.code)), "reason": c.as_ref().map(|c| c.reason.to_string())})
            }
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return json!({"type": "close"}),
        }
    }
}

fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(sample)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------
// Tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cookie_sessions_connect_on_sse_websocket_and_poll() {
    let (url, seen) = backend().await;
    let dir = TempDir::new("hooks-connect");
    let s = herald(&dir, &url, "2s");
    let alice = [("cookie", "theme=dark; session=abc")];

    // SSE: alice's stream gets what the backend publishes to her.
    let mut sse = open(&s, "GET", "/v1/sse?topic=users/alice/inbox", &alice, "").await;
    let head = read_until(&mut sse, "\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (status, body) = publish_as_backend(&s, "users/alice/inbox", json!("hello alice")).await;
    assert_eq!(status, 200, "{body}");
    read_until(&mut sse, "data: hello alice").await;

    // No session: the backend answers 401, Herald 401. An unknown session:
    // the backend's 403, with its reason. Alice's grants stop at her topics.
    for (transport, path) in [
        ("sse", "/v1/sse?topic=users/alice/inbox"),
        ("poll", "/v1/poll?topic=users/alice/inbox&timeout=0"),
    ] {
        let (status, _, body) = http(&s, "GET", path, &[], "").await;
        assert_eq!(status, 401, "{transport}: {body}");
        let bad = [("cookie", "session=forged")];
        let (status, _, body) = http(&s, "GET", path, &bad, "").await;
        assert_eq!(status, 403, "{transport}: {body}");
        assert!(body.contains("unknown session"), "{transport}: {body}");
        let bob = path.replace("alice", "bob");
        let (status, _, body) = http(&s, "GET", &bob, &alice, "").await;
        assert_eq!(status, 403, "{transport}: {body}");
    }

    // Long poll: alice reads her topic.
    let (status, _, body) = http(
        &s,
        "GET",
        "/v1/poll?topic=users/alice/inbox&timeout=0",
        &alice,
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"events\""), "{body}");

    // WebSocket, identified at the upgrade from its headers.
    let mut w = ws(&s, Some("session=abc")).await.unwrap();
    send(
        &mut w,
        json!({"type": "subscribe", "topic": "users/alice/inbox"}),
    )
    .await;
    assert_eq!(recv(&mut w).await["type"], "subscribed");
    publish_as_backend(&s, "users/alice/inbox", json!({"n": 2})).await;
    let m = recv(&mut w).await;
    assert_eq!(
        (m["type"].as_str(), &m["data"]),
        (Some("event"), &json!({"n": 2})),
        "{m}"
    );
    // Without a session the socket has no credential: a private topic closes it with 4001.
    let mut anonymous = ws(&s, None).await.unwrap();
    send(
        &mut anonymous,
        json!({"type": "subscribe", "topic": "users/alice/inbox"}),
    )
    .await;
    let m = recv(&mut anonymous).await;
    assert_eq!(
        (m["type"].as_str(), m["code"].as_u64()),
        (Some("close"), Some(4001)),
        "{m}"
    );
    // A session cookie from another site's page is refused before the hook is asked.
    let mut req = format!("ws://{}/v1/ws", s.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("cookie", "session=abc".parse().unwrap());
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        Err(e) => panic!("expected 403, got {e}"),
        Ok(_) => panic!("expected 403, got an open socket"),
    }
    // The backend's refusal refuses the upgrade itself.
    match ws(&s, Some("session=forged")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        Err(e) => panic!("expected 403, got {e}"),
        Ok(_) => panic!("expected 403, got an open socket"),
    }

    // The backend saw each transport and the client's address, every
    // request signed.
    let connects: Vec<Value> = seen
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r["type"] == "connect")
        .cloned()
        .collect();
    for t in ["sse", "poll", "ws"] {
        assert!(
            connects.iter().any(|c| c["transport"] == t),
            "{t}: {connects:?}"
        );
    }
    assert!(
        connects.iter().all(|c| c["remote_addr"] == "127.0.0.1"),
        "{connects:?}"
    );
    assert!(connects
        .iter()
        .any(|c| c["headers"]["cookie"] == "theme=dark; session=abc"));
    assert_eq!(seen.bad_signatures.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expires_at_ends_connections_with_token_expired() {
    let (url, _) = backend().await;
    let dir = TempDir::new("hooks-expiry");
    let s = herald(&dir, &url, "2s");
    let started = Instant::now();
    let short = [("cookie", "session=short")];
    let (status, _, body) = http(&s, "GET", "/v1/sse?topic=users/alice/inbox", &short, "").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("event: herald.disconnect\ndata: {\"reason\":\"token_expired\"}"),
        "{body}"
    );
    assert!(
        started.elapsed() <= Duration::from_secs(3 + 5),
        "{:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let mut w = ws(&s, Some("session=short")).await.unwrap();
    send(
        &mut w,
        json!({"type": "subscribe", "topic": "users/alice/inbox"}),
    )
    .await;
    assert_eq!(recv(&mut w).await["type"], "subscribed");
    let m = recv(&mut w).await;
    assert_eq!(
        (m["code"].as_u64(), m["reason"].as_str()),
        (Some(4001), Some("token_expired")),
        "{m}"
    );
    assert!(started.elapsed() <= Duration::from_secs(3 + 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_subscribe_hook_allows_and_refuses() {
    let (url, seen) = backend().await;
    let dir = TempDir::new("hooks-subscribe");
    let s = herald(&dir, &url, "2s");
    let alice = [("cookie", "session=abc")];

    let (status, _, body) =
        http(&s, "GET", "/v1/poll?topic=rooms/open&timeout=0", &alice, "").await;
    assert_eq!(status, 200, "{body}");
    for path in [
        "/v1/sse?topic=rooms/closed",
        "/v1/poll?topic=rooms/closed&timeout=0",
        "/v1/sse?topic=rooms/open&topic=rooms/closed",
        "/v1/history?topic=rooms/closed",
    ] {
        let (status, _, body) = http(&s, "GET", path, &alice, "").await;
        assert_eq!(status, 403, "{path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "forbidden", "{path}: {body}");
        assert_eq!(v["error"]["message"], "members only", "{path}: {body}");
    }
    let mut sse = open(&s, "GET", "/v1/sse?topic=rooms/open", &alice, "").await;
    assert!(read_until(&mut sse, "\r\n\r\n")
        .await
        .starts_with("HTTP/1.1 200"));

    // WebSocket: an `error` with the reason, and the socket stays usable.
    let mut w = ws(&s, Some("session=abc")).await.unwrap();
    send(
        &mut w,
        json!({"type": "subscribe", "topic": "rooms/closed", "ref": 1}),
    )
    .await;
    let m = recv(&mut w).await;
    assert_eq!(
        (
            m["type"].as_str(),
            m["code"].as_str(),
            m["message"].as_str()
        ),
        (Some("error"), Some("forbidden"), Some("members only")),
        "{m}"
    );
    send(&mut w, json!({"type": "subscribe", "topic": "rooms/open"})).await;
    assert_eq!(recv(&mut w).await["type"], "subscribed");

    // Topics without subscribe_hook, and the grants' refusals, never reach it.
    let asked: Vec<String> = seen
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r["type"] == "subscribe")
        .map(|r| r["topic"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(asked.iter().all(|t| t.starts_with("rooms/")), "{asked:?}");
    assert!(seen
        .requests
        .lock()
        .unwrap()
        .iter()
        .all(|r| r["type"] != "subscribe" || r["user"] == "alice"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_publish_hook_refuses_with_a_reason_and_rewrites_data() {
    let (url, seen) = backend().await;
    let dir = TempDir::new("hooks-publish");
    let s = herald(&dir, &url, "2s");
    let json_type = ("content-type", "application/json");
    let alice = [("cookie", "session=abc"), json_type];
    let mut sse = open(&s, "GET", "/v1/sse?topic=rooms/open", &alice[..1], "").await;
    read_until(&mut sse, "\r\n\r\n").await;

    // HTTP: refused with the backend's reason.
    let (status, _, body) = http(
        &s,
        "POST",
        "/v1/publish",
        &alice,
        &publish_body("rooms/open", json!("buy spam")),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"error": {"code": "hook_refused", "message": "no spam here"}})
    );
    // HTTP: rewritten, and subscribers receive the replaced data.
    let (status, _, body) = http(
        &s,
        "POST",
        "/v1/publish",
        &alice,
        &publish_body("rooms/open", json!("rewrite-me")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    read_until(&mut sse, "data: {\"text\":\"rewritten\"}").await;

    // WebSocket: the same path.
    let mut w = ws(&s, Some("session=abc")).await.unwrap();
    send(&mut w, json!({"type": "subscribe", "topic": "rooms/open"})).await;
    assert_eq!(recv(&mut w).await["type"], "subscribed");
    send(
        &mut w,
        json!({"type": "publish", "topic": "rooms/open", "data": {"t": "spam!"}}),
    )
    .await;
    let m = recv(&mut w).await;
    assert_eq!(
        (
            m["type"].as_str(),
            m["code"].as_str(),
            m["message"].as_str()
        ),
        (Some("error"), Some("hook_refused"), Some("no spam here")),
        "{m}"
    );
    send(
        &mut w,
        json!({"type": "publish", "topic": "rooms/open", "data": "rewrite-me"}),
    )
    .await;
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(recv(&mut w).await);
    }
    let event = got
        .iter()
        .find(|m| m["type"] == "event")
        .expect("the event");
    assert_eq!(event["data"], json!({"text": "rewritten"}), "{got:?}");
    assert!(got.iter().any(|m| m["type"] == "published"), "{got:?}");

    // The publisher key bypasses the hook: stored as sent.
    let before = seen.count("publish");
    let (status, body) = publish_as_backend(&s, "rooms/open", json!("spam from the backend")).await;
    assert_eq!(status, 200, "{body}");
    read_until(&mut sse, "data: spam from the backend").await;
    assert_eq!(seen.count("publish"), before);
    assert_eq!(seen.bad_signatures.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hook_slower_than_the_timeout_refuses_and_is_counted() {
    let (url, _) = backend().await;
    let dir = TempDir::new("hooks-timeout");
    let s = herald(&dir, &url, "300ms");
    let alice = [
        ("cookie", "session=abc"),
        ("content-type", "application/json"),
    ];

    // SSE: the EventSource way (200, retry:, herald.disconnect, end).
    let started = Instant::now();
    let (status, _, body) = http(&s, "GET", "/v1/sse?topic=slow/a", &alice[..1], "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("retry: "), "{body}");
    assert!(
        body.contains("{\"reason\":\"engine_unavailable\"}"),
        "{body}"
    );
    assert!(
        started.elapsed() < SLOW,
        "refused at the timeout, not after the hook"
    );
    // Poll and publish: 503 hook_unavailable with Retry-After.
    let (status, head, body) = http(
        &s,
        "GET",
        "/v1/poll?topic=slow/a&timeout=0",
        &alice[..1],
        "",
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    assert!(body.contains("hook_unavailable"), "{body}");
    let (status, _, body) = http(
        &s,
        "POST",
        "/v1/publish",
        &alice,
        &publish_body("slow/a", json!("x")),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    // WebSocket: an `error` with the same code.
    let mut w = ws(&s, Some("session=abc")).await.unwrap();
    send(&mut w, json!({"type": "subscribe", "topic": "slow/b"})).await;
    let m = recv(&mut w).await;
    assert_eq!(
        (m["type"].as_str(), m["code"].as_str()),
        (Some("error"), Some("hook_unavailable")),
        "{m}"
    );

    let (_, _, text) = http(&s, "GET", "/metrics", &[], "").await;
    assert!(
        metric(
            &text,
            "herald_hook_requests_total{hook=\"subscribe\",outcome=\"timeout\"}"
        ) >= 3.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "herald_hook_requests_total{hook=\"publish\",outcome=\"timeout\"}"
        ) >= 1.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "herald_hook_requests_total{hook=\"connect\",outcome=\"allowed\"}"
        ) >= 4.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tampered_body_or_a_wrong_secret_fails_the_backends_check() {
    let (url, seen) = backend().await;
    let dir = TempDir::new("hooks-signature");
    let s = herald(&dir, &url, "2s");
    let (status, _, body) = http(
        &s,
        "GET",
        "/v1/poll?topic=users/alice/inbox&timeout=0",
        &[("cookie", "session=abc")],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (header, body) = seen.last.lock().unwrap().clone().expect("a signed request");
    let t = now();
    assert!(backend::signature_ok(SECRET.as_bytes(), &header, &body, t));
    let text = String::from_utf8(body.clone()).unwrap();
    assert!(text.contains("session=abc"), "{text}");
    let tampered = text.replace("session=abc", "session=xyz");
    assert!(!backend::signature_ok(
        SECRET.as_bytes(),
        &header,
        tampered.as_bytes(),
        t
    ));
    assert!(!backend::signature_ok(
        b"not-the-hook-secret-0123456789",
        &header,
        &body,
        t
    ));
    assert!(
        !backend::signature_ok(SECRET.as_bytes(), &header, &body, t + 3600),
        "a replay an hour later"
    );

    // A forged request sent to the backend directly is turned away.
    let forged = post_to_backend(&url, &tampered, &header).await;
    assert_eq!(forged, 401);
    assert_eq!(seen.bad_signatures.load(Ordering::SeqCst), 1);
}

/// POSTs `body` with `signature` to the backend at `url`; its status.
async fn post_to_backend(url: &str, body: &str, signature: &str) -> u16 {
    let addr = url.trim_start_matches("http://").split('/').next().unwrap();
    let mut sock = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /hook HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-type: application/json\r\nx-herald-signature: {signature}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, sock.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out)
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_in_flight_toward_the_backend_are_bounded() {
    const CLIENTS: usize = 400;
    const LIMIT: usize = herald_hooks::DEFAULT_MAX_IN_FLIGHT;
    let (url, seen) = backend().await;
    let dir = TempDir::new("hooks-bound");
    let s = Arc::new(herald(&dir, &url, "5s"));
    let started = Instant::now();
    let polls: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move {
                let path = "/v1/poll?topic=users/alice/inbox&timeout=0";
                http(&s, "GET", path, &[("cookie", "session=hold")], "")
                    .await
                    .0
            })
        })
        .collect();
    let mut statuses = Vec::with_capacity(CLIENTS);
    for p in polls {
        statuses.push(
            tokio::time::timeout(Duration::from_secs(30), p)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let most = seen.most_in_flight.load(Ordering::SeqCst);
    assert!(most <= LIMIT, "{most} requests held at the backend at once");
    assert!(most >= 64, "the hooks ran one by one ({most} at most)");
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 503).count();
    assert_eq!(ok + refused, CLIENTS, "{statuses:?}");
    assert!(
        ok >= LIMIT,
        "{ok} answered; the rest waited within the timeout or were refused"
    );
    assert!(seen.count("connect") <= CLIENTS);
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(seen.bad_signatures.load(Ordering::SeqCst), 0);
}

#[test]
fn hook_settings_are_checked_at_start() {
    let dir = TempDir::new("hooks-settings");
    let file = dir.path().join("herald.toml");
    std::fs::write(&file, POLICIES).unwrap();
    let config = file.to_str().unwrap();
    for (args, want) in [
        (
            &["--hook-url", "http://127.0.0.1:9/hook"][..],
            "--hook-url needs --hook-secret",
        ),
        (
            &[
                "--hook-url",
                "http://127.0.0.1:9/hook",
                "--hook-secret",
                "short",
            ],
            "at least 16 bytes",
        ),
        (&["--hook-secret", SECRET], "--hook-secret needs --hook-url"),
        (&["--config", config], "no --hook-url"),
        (
            &["--hook-url", "ftp://x/hook", "--hook-secret", SECRET],
            "--hook-url",
        ),
        (
            &[
                "--hook-url",
                "http://127.0.0.1:9/hook",
                "--hook-secret",
                SECRET,
                "--hook-timeout",
                "0s",
            ],
            "--hook-timeout",
        ),
    ] {
        let out = std::process::Command::new(BIN)
            .args(["serve", "--engine", "memory", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("HERALD_LOG", "error")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("short\"") && !stderr.contains(SECRET),
            "the secret is never repeated: {stderr}"
        );
    }
}
