//! Topic policies (`[[topics]]` in `herald serve --config`) against the real
//! binary: refusals at start that name the table and key, a resume on an
//! ephemeral topic (live only, no `herald.gap`) on SSE, WebSocket and long
//! poll, and `client_publish` and `publish_rate` on WebSocket and HTTP.

mod process;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use herald_auth::jwt;
use process::{ServeProcess, TempDir, BIN};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "policies-test-secret-0123456789abcdef";
const KEY: &str = "policies-test-publisher-key-0123";
const WAIT: Duration = Duration::from_secs(5);

const POLICIES: &str = r#"
[[topics]]
pattern = "live/**"
history = 0

[[topics]]
pattern = "announce/**"
client_publish = false

[[topics]]
pattern = "game/**"
publish_rate = 3
"#;

/// `herald serve` with `config` as its file, a JWT secret, a publisher key
/// and every topic public to read.
fn start(dir: &TempDir, config: &str) -> ServeProcess {
    let file = dir.path().join("herald.toml");
    std::fs::write(&file, config).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--engine", "memory", "--listen", "127.0.0.1:0"])
        .args(["--jwt-secret", SECRET, "--publish-key", KEY])
        .args(["--public", "**", "--config"])
        .arg(&file)
        .env("HERALD_LOG", "warn");
    ServeProcess::spawn(cmd)
}

/// A client token that may publish anywhere.
fn client_token() -> String {
    let now = herald_auth::now();
    let claims = jwt::Claims {
        sub: Some("alice".into()),
        exp: now + 300,
        iat: Some(now),
        nbf: None,
        herald: jwt::HeraldClaim {
            subscribe: vec!["**".into()],
            publish: vec!["**".into()],
            llm: false,
            admin: false,
        },
        info: None,
    };
    jwt::sign(&claims, SECRET.as_bytes(), false, None).unwrap()
}

fn host(base: &str) -> &str {
    base.trim_start_matches("http://")
}

/// One HTTP/1.1 exchange: (status, head, body).
fn request(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(host(base)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\ncontent-length: {}\r\n",
        host(base),
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

/// `POST /v1/publish` with `auth` as the bearer credential.
fn publish(base: &str, auth: &str, topic: &str, data: &str) -> (u16, String, String) {
    let body = json!({"topic": topic, "data": data}).to_string();
    let bearer = format!("Bearer {auth}");
    request(
        base,
        "POST",
        "/v1/publish",
        &[
            ("authorization", &bearer),
            ("content-type", "application/json"),
        ],
        &body,
    )
}

/// The id a successful publish answers.
fn published_id(answer: (u16, String, String)) -> String {
    assert_eq!(answer.0, 200, "{answer:?}");
    let v: Value = serde_json::from_str(&answer.2).unwrap();
    v["id"].as_str().unwrap().to_owned()
}

/// An SSE stream read in the background into a shared buffer.
struct Sse {
    text: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Sse {
    fn open(base: &str, path: &str, last_event_id: &str) -> Sse {
        let mut s = TcpStream::connect(host(base)).unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nhost: {}\r\nlast-event-id: {last_event_id}\r\n\r\n",
            host(base)
        );
        s.write_all(req.as_bytes()).unwrap();
        let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = text.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Sse { text }
    }

    fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.text.lock().unwrap().clone();
            if text.contains(needle) {
                return text;
            }
            assert!(Instant::now() < deadline, "no {needle:?} in {text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn invalid_policies_refuse_to_start_naming_table_and_key() {
    let dir = TempDir::new("policies-refusals");
    let file = dir.path().join("herald.toml");
    let cases = [
        (
            "[[topics]]\npattern = \"a/**/b\"\n",
            "[[topics]] #1 (pattern \"a/**/b\"): `pattern`",
        ),
        (
            "[[topics]]\npattern = \"a\"\n[[topics]]\npattern = \"b\"\nhistroy = 1\n",
            "[[topics]] #2 (pattern \"b\"): unknown key `histroy`",
        ),
        (
            "[[topics]]\npattern = \"a\"\nhistory = -1\n",
            "`history` must not be negative",
        ),
        (
            "[[topics]]\npattern = \"a\"\nhistory = 5000\n",
            "above the server's --history 1000",
        ),
        (
            "[[topics]]\npattern = \"a\"\nhistory_max_age = \"soon\"\n",
            "`history_max_age`",
        ),
        (
            "[[topics]]\npattern = \"a\"\npublish_rate = 99999999999\n",
            "`publish_rate`",
        ),
        (
            "[[topics]]\npattern = \"a\"\npresence = \"yes\"\n",
            "`presence` must be true or false",
        ),
        (
            "[[topics]]\npattern = \"a\"\npresence = false\njoin_leave = true\n",
            "`join_leave = true` needs presence",
        ),
    ];
    for (config, want) in cases {
        std::fs::write(&file, config).unwrap();
        let out = Command::new(BIN)
            .args([
                "serve",
                "--engine",
                "memory",
                "--listen",
                "127.0.0.1:0",
                "--config",
            ])
            .arg(&file)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{config:?} started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{config:?}: {err}");
    }
}

#[test]
fn ephemeral_resume_is_live_only_on_sse_and_poll() {
    let dir = TempDir::new("policies-ephemeral");
    let s = start(&dir, POLICIES);
    let first = published_id(publish(&s.base, KEY, "live/a", "one"));
    published_id(publish(&s.base, KEY, "live/a", "two"));
    // A stored topic, for contrast: its resume replays what was missed.
    let kept = published_id(publish(&s.base, KEY, "kept/a", "one"));
    published_id(publish(&s.base, KEY, "kept/a", "two"));

    let live = Sse::open(&s.base, "/v1/sse?topic=live/a", &first);
    let stored = Sse::open(&s.base, "/v1/sse?topic=kept/a", &kept);
    stored.wait_for("data: two");
    // Subscribed once the stream's opening block is out; then a live event.
    live.wait_for("id:");
    let deadline = Instant::now() + WAIT;
    let text = loop {
        published_id(publish(&s.base, KEY, "live/a", "three"));
        let text = live.text.lock().unwrap().clone();
        if text.contains("data: three") {
            break text;
        }
        assert!(Instant::now() < deadline, "no live event: {text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!text.contains("herald.gap"), "{text}");
    assert!(
        !text.contains("data: two"),
        "an ephemeral topic replayed: {text}"
    );

    // Long poll with the old cursor: held (nothing stored), then the next
    // live event, no gap.
    let base = s.base.clone();
    let cursor = first.clone();
    let poll = std::thread::spawn(move || {
        request(
            &base,
            "GET",
            &format!("/v1/poll?topic=live/a&cursor={cursor}&timeout=10"),
            &[],
            "",
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    let deadline = Instant::now() + WAIT;
    while !poll.is_finished() {
        published_id(publish(&s.base, KEY, "live/a", "four"));
        assert!(Instant::now() < deadline, "the poll was not answered");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, _, body) = poll.join().unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"four\""), "{body}");
    assert!(
        !body.contains("herald.gap") && !body.contains("\"two\""),
        "{body}"
    );
}

async fn ws_connect(
    base: &str,
    token: Option<&str>,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = match token {
        Some(t) => format!("ws://{}/v1/ws?token={t}", host(base)),
        None => format!("ws://{}/v1/ws", host(base)),
    };
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The next JSON message that is not a keepalive.
async fn recv(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time");
        match m.expect("open").expect("a frame") {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn ephemeral_resume_is_live_only_on_websocket() {
    let dir = TempDir::new("policies-ws-ephemeral");
    let s = start(&dir, POLICIES);
    let base = s.base.clone();
    let first =
        tokio::task::spawn_blocking(move || published_id(publish(&base, KEY, "live/w", "one")))
            .await
            .unwrap();
    let mut ws = ws_connect(&s.base, None).await;
    send(
        &mut ws,
        json!({"type": "subscribe", "topic": "live/w", "since": first}),
    )
    .await;
    let m = recv(&mut ws).await;
    assert_eq!(m["type"], "subscribed", "{m}");
    let base = s.base.clone();
    tokio::task::spawn_blocking(move || published_id(publish(&base, KEY, "live/w", "two")))
        .await
        .unwrap();
    loop {
        let m = recv(&mut ws).await;
        assert_ne!(m["event"], "herald.gap", "{m}");
        assert_ne!(m["type"], "gap", "{m}");
        if m["type"] == "event" {
            assert_eq!(m["data"], "two", "{m}");
            break;
        }
    }
}

#[tokio::test]
async fn client_publish_false_refuses_clients_on_http_and_websocket() {
    let dir = TempDir::new("policies-client-publish");
    let s = start(&dir, POLICIES);
    let token = client_token();
    let (base, t) = (s.base.clone(), token.clone());
    let (refused, allowed, other) = tokio::task::spawn_blocking(move || {
        (
            publish(&base, &t, "announce/a", "x"),
            publish(&base, KEY, "announce/a", "x"),
            publish(&base, &t, "free/a", "x"),
        )
    })
    .await
    .unwrap();
    assert_eq!(refused.0, 403, "{refused:?}");
    assert!(
        refused.2.contains("\"forbidden\"") && refused.2.contains("client_publish"),
        "{refused:?}"
    );
    published_id(allowed);
    published_id(other);

    let mut ws = ws_connect(&s.base, Some(&token)).await;
    send(
        &mut ws,
        json!({"type": "publish", "topic": "announce/a", "data": "x", "ref": 1}),
    )
    .await;
    let m = recv(&mut ws).await;
    assert_eq!(
        (m["type"].as_str(), m["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{m}"
    );
    assert!(
        m["message"].as_str().unwrap().contains("client_publish"),
        "{m}"
    );
    send(
        &mut ws,
        json!({"type": "publish", "topic": "free/a", "data": "x", "ref": 2}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "published");
}

#[tokio::test]
async fn publish_rate_limits_each_websocket_and_http_caller() {
    let dir = TempDir::new("policies-rate");
    let s = start(&dir, POLICIES);
    let token = client_token();

    // WebSocket: 3 per second per connection; a second connection has its own.
    let mut ws = ws_connect(&s.base, Some(&token)).await;
    let mut codes = Vec::new();
    // Eight in a row span at most two one-second windows: at most six pass.
    for i in 0..8 {
        send(
            &mut ws,
            json!({"type": "publish", "topic": "game/1", "data": i, "ref": i}),
        )
        .await;
        let m = recv(&mut ws).await;
        codes.push(
            m["code"]
                .as_str()
                .unwrap_or(m["type"].as_str().unwrap())
                .to_owned(),
        );
    }
    let passed = codes.iter().filter(|c| *c == "published").count();
    assert!((3..=6).contains(&passed), "{codes:?}");
    assert!(codes.iter().any(|c| c == "rate_limited"), "{codes:?}");
    let mut other = ws_connect(&s.base, Some(&token)).await;
    send(
        &mut other,
        json!({"type": "publish", "topic": "game/1", "data": 0}),
    )
    .await;
    let m = recv(&mut other).await;
    // The same second may have passed: either way, not refused for the
    // first connection's publishes.
    assert_eq!(m["type"], "published", "{m}");

    // HTTP: per credential subject, with Retry-After; the publisher key is
    // not counted.
    let base = s.base.clone();
    let answers = tokio::task::spawn_blocking(move || {
        let mut v: Vec<_> = (0..8)
            .map(|_| publish(&base, &token, "game/2", "x"))
            .collect();
        v.extend((0..8).map(|_| publish(&base, KEY, "game/2", "x")));
        v
    })
    .await
    .unwrap();
    let (client, publisher) = answers.split_at(8);
    let limited: Vec<_> = client.iter().filter(|a| a.0 == 429).collect();
    assert!(!limited.is_empty(), "{client:?}");
    assert!(
        client.iter().filter(|a| a.0 == 200).count() >= 3,
        "{client:?}"
    );
    for a in &limited {
        assert!(a.2.contains("\"rate_limited\""), "{a:?}");
        assert!(a.1.to_ascii_lowercase().contains("retry-after: 1"), "{a:?}");
    }
    assert!(publisher.iter().all(|a| a.0 == 200), "{publisher:?}");
}
