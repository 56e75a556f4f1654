//! `/metrics` against the real binary (README.md, "Metrics reference"):
//!
//! - publishes and subscriber connections move the counters and the
//!   publish, store and fan-out histograms by exactly what the test did;
//! - a subscriber that stops reading raises the subscriber queue gauges,
//!   until it falls a whole queue behind and is disconnected;
//! - a publish refused by the publish hook of a real local backend, by
//!   `client_publish = false` and by `publish_rate` is counted per hook
//!   outcome and per policy pattern; webhook deliveries are counted as the
//!   backend took them;
//! - every PromQL expression of `deploy/grafana-dashboard.json` names only
//!   metrics the server exports, and the README's table lists every family
//!   it exports.

mod backend;
mod process;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use herald_auth::jwt;
use process::{eventually, ServeProcess, TempDir, BIN};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "metrics-test-publisher-key-01234";
const SECRET: &str = "metrics-test-hook-secret-0123456789ab";
const JWT_SECRET: &str = "metrics-test-jwt-secret-0123456789abc";
/// Any one wait of these tests.
const WAIT: Duration = Duration::from_secs(15);

const POLICIES: &str = r#"
[[topics]]
pattern = "rooms/**"
publish_hook = true

[[topics]]
pattern = "announce/**"
client_publish = false

[[topics]]
pattern = "game/**"
publish_rate = 2
"#;

// ---------------------------------------------------------------------------
// Scrapes.

/// One `/metrics` answer: sample (name and labels, as printed) → value,
/// and the families of its `# TYPE` lines.
struct Scrape {
    text: String,
    samples: HashMap<String, f64>,
    families: BTreeSet<String>,
}

impl Scrape {
    /// The value of `sample` (0 when absent: a counter not yet shown).
    fn get(&self, sample: &str) -> f64 {
        self.samples.get(sample).copied().unwrap_or(0.0)
    }

    /// The names sample lines carry (a histogram's `_bucket`, `_sum`,
    /// `_count` included).
    fn sample_names(&self) -> BTreeSet<String> {
        self.samples
            .keys()
            .map(|k| k.split('{').next().unwrap_or(k).to_owned())
            .collect()
    }

    /// The label names of the samples of the metric `name`.
    fn labels_of(&self, name: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for key in self.samples.keys() {
            let Some(rest) = key.strip_prefix(name) else {
                continue;
            };
            let Some(labels) = rest.strip_prefix('{') else {
                continue;
            };
            out.extend(label_names(labels));
        }
        out
    }
}

/// The label names of `a="x",b="y\"z"}`.
fn label_names(labels: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = labels;
    while let Some((name, after)) = rest.split_once("=\"") {
        names.push(name.trim_start_matches(',').to_owned());
        let mut escaped = false;
        let end = after
            .char_indices()
            .find(|(_, c)| {
                let close = *c == '"' && !escaped;
                escaped = *c == '\\' && !escaped;
                close
            })
            .map_or(after.len(), |(i, _)| i + 1);
        rest = &after[end..];
    }
    names
}

/// `GET /metrics`, parsed.
async fn scrape(s: &ServeProcess) -> Scrape {
    let (status, _, text) = http(s, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200, "{text}");
    let mut samples = HashMap::new();
    let mut families = BTreeSet::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            families.insert(t.split(' ').next().unwrap().to_owned());
        } else if !line.starts_with('#') && !line.is_empty() {
            let (sample, value) = line.rsplit_once(' ').expect("a sample line");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
            samples.insert(sample.to_owned(), value);
        }
    }
    Scrape {
        text,
        samples,
        families,
    }
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

/// Writes a request on `sock` (a new connection).
async fn send_request(
    sock: &mut TcpStream,
    s: &ServeProcess,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) {
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
    send_request(&mut sock, s, method, path, headers, body).await;
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

/// An SSE stream of `topic`, its head read.
async fn sse(s: &ServeProcess, topic: &str) -> TcpStream {
    let mut sock = open(s, "GET", &format!("/v1/sse?topic={topic}"), &[], "").await;
    let head = read_until(&mut sock, "\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    sock
}

/// `POST /v1/publish` of `data` to `topic` with `bearer` (the publisher
/// key or a client token): (status, body).
async fn publish(s: &ServeProcess, bearer: &str, topic: &str, data: &str) -> (u16, String) {
    let auth = format!("Bearer {bearer}");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let body = json!({"topic": topic, "data": data}).to_string();
    let (status, _, body) = http(s, "POST", "/v1/publish", &headers, &body).await;
    (status, body)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket subscribed to `topic`.
async fn ws(s: &ServeProcess, topic: &str) -> Ws {
    let (mut w, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", s.addr))
        .await
        .unwrap();
    let subscribe = json!({"type": "subscribe", "topic": topic}).to_string();
    w.send(Message::Text(subscribe.into())).await.unwrap();
    let m = recv(&mut w).await;
    assert_eq!(m["type"], "subscribed", "{m}");
    w
}

/// The next JSON text message.
async fn recv(w: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(WAIT, w.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(&t).unwrap(),
            Ok(Some(Ok(_))) => {}
            other => panic!("no message in time: {other:?}"),
        }
    }
}

/// A client token that may publish and subscribe anywhere.
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
    jwt::sign(&claims, JWT_SECRET.as_bytes(), false, None).unwrap()
}

// ---------------------------------------------------------------------------
// The backend: hooks and webhooks, checking every signature.

/// What the backend saw.
#[derive(Default)]
struct Backend {
    /// Webhook events accepted (answered 204).
    webhook_events: AtomicUsize,
    /// Webhook batches accepted.
    webhook_batches: AtomicUsize,
    /// Requests whose signature did not check out.
    bad_signatures: AtomicUsize,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn signed(b: &Backend, headers: &HeaderMap, body: &[u8]) -> bool {
    let header = headers
        .get("x-herald-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let ok = backend::signature_ok(SECRET.as_bytes(), header, body, now());
    if !ok {
        b.bad_signatures.fetch_add(1, Ordering::SeqCst);
    }
    ok
}

/// The publish hook: refuses data that says "refuse", takes the rest.
async fn hook(State(b): State<Arc<Backend>>, headers: HeaderMap, body: Bytes) -> Response {
    if !signed(&b, &headers, &body) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
    match v["type"].as_str() {
        Some("publish") if v["data"].to_string().contains("refuse") => (
            StatusCode::FORBIDDEN,
            axum::Json(json!({"reason": "not here"})),
        )
            .into_response(),
        Some("publish") => axum::Json(json!({})).into_response(),
        _ => StatusCode::BAD_REQUEST.into_response(),
    }
}

/// The webhooks: every signed batch is taken.
async fn webhook(State(b): State<Arc<Backend>>, headers: HeaderMap, body: Bytes) -> Response {
    if !signed(&b, &headers, &body) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
    let n = v["events"].as_array().map_or(0, Vec::len);
    b.webhook_events.fetch_add(n, Ordering::SeqCst);
    b.webhook_batches.fetch_add(1, Ordering::SeqCst);
    StatusCode::NO_CONTENT.into_response()
}

/// The backend on a loopback port: its base URL and what it saw.
async fn start_backend() -> (String, Arc<Backend>) {
    let seen = Arc::new(Backend::default());
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .route("/webhook", axum::routing::post(webhook))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

/// `herald serve` with every source of metrics: a JWT secret, a publisher
/// key, every topic public to read, the policies above, the publish hook
/// and the webhooks at `backend` (no connect hook: clients carry tokens).
fn full_server(dir: &TempDir, backend: &str) -> ServeProcess {
    let file = dir.path().join("herald.toml");
    std::fs::write(&file, POLICIES).unwrap();
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["serve", "--engine", "memory", "--listen", "127.0.0.1:0"])
        .args(["--jwt-secret", JWT_SECRET, "--publish-key", KEY])
        .args(["--public", "**"])
        .args(["--hook-url", &format!("{backend}/hook")])
        .args(["--hook-secret", SECRET, "--hook-connect=false"])
        .args(["--webhook-url", &format!("{backend}/webhook")])
        .arg("--config")
        .arg(&file)
        .env("HERALD_LOG", "error")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    ServeProcess::spawn(cmd)
}

// ---------------------------------------------------------------------------
// Tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publishes_and_connections_move_the_counters_by_what_the_test_did() {
    const N: usize = 20; // events published to the watched topic
    const M: usize = 5; // events published to a topic nobody watches
    const SSE: usize = 3;
    const WS: usize = 2;
    let s = ServeProcess::memory(&["--publish-key", KEY, "--public", "**"]);
    let before = scrape(&s).await;

    let mut streams = Vec::new();
    for _ in 0..SSE {
        streams.push(sse(&s, "m/1").await);
    }
    let mut sockets = Vec::new();
    for _ in 0..WS {
        sockets.push(ws(&s, "m/1").await);
    }
    let now = scrape(&s).await;
    assert_eq!(now.get("herald_connections{transport=\"sse\"}"), SSE as f64);
    assert_eq!(now.get("herald_connections{transport=\"ws\"}"), WS as f64);
    assert_eq!(now.get("herald_connections{transport=\"poll\"}"), 0.0);
    assert_eq!(
        now.get("herald_connections_total") - before.get("herald_connections_total"),
        (SSE + WS) as f64
    );

    for i in 0..N {
        let (status, body) = publish(&s, KEY, "m/1", &format!("e{i}")).await;
        assert_eq!(status, 200, "{body}");
    }
    for i in 0..M {
        let (status, body) = publish(&s, KEY, "nobody/1", &format!("n{i}")).await;
        assert_eq!(status, 200, "{body}");
    }
    let last = format!("e{}", N - 1);
    for sock in &mut streams {
        read_until(sock, &format!("data: {last}\n")).await;
    }
    for w in &mut sockets {
        while recv(w).await["data"] != json!(last) {}
    }

    let after = scrape(&s).await;
    let delta = |name: &str| after.get(name) - before.get(name);
    let published = (N + M) as f64;
    assert_eq!(delta("herald_events_published_total"), published);
    assert_eq!(delta("herald_publish_errors_total"), 0.0);
    // One publish call per event: one observation each of the hub's
    // publish-to-ack and the engine's store.
    for h in [
        "herald_publish_duration_seconds",
        "herald_store_duration_seconds",
    ] {
        assert_eq!(delta(&format!("{h}_count")), published, "{h}");
        assert_eq!(
            delta(&format!("{h}_bucket{{le=\"+Inf\"}}")),
            published,
            "{h}"
        );
        assert!(delta(&format!("{h}_sum")) > 0.0, "{h}");
    }
    // A hand-off is timed only where the topic has local subscribers.
    assert_eq!(delta("herald_fanout_duration_seconds_count"), N as f64);
    assert_eq!(
        delta("herald_fanout_duration_seconds_bucket{le=\"+Inf\"}"),
        N as f64
    );
    // Every subscriber got every event, and nothing waits any more.
    assert_eq!(
        delta("herald_events_delivered_total"),
        (N * (SSE + WS)) as f64
    );
    assert_eq!(after.get("herald_subscriber_queued_events"), 0.0);
    assert_eq!(after.get("herald_subscriber_queue_max_events"), 0.0);
    assert_eq!(after.get("herald_subscriber_queue_capacity_events"), 1024.0);
    assert_eq!(delta("herald_slow_consumer_disconnects_total"), 0.0);
    // Buckets are cumulative.
    let buckets: Vec<f64> = after
        .text
        .lines()
        .filter(|l| l.starts_with("herald_store_duration_seconds_bucket"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");

    // Closed connections leave the gauges.
    drop(streams);
    for mut w in sockets {
        let _ = w.close(None).await;
    }
    eventually("the gauges back to 0", WAIT, || async {
        let now = scrape(&s).await;
        now.get("herald_connections{transport=\"sse\"}") == 0.0
            && now.get("herald_connections{transport=\"ws\"}") == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_that_stops_reading_raises_the_queue_depth_until_it_is_dropped() {
    const CAPACITY: usize = 32;
    let s = ServeProcess::memory(&[
        "--publish-key",
        KEY,
        "--public",
        "**",
        "--queue-capacity",
        &CAPACITY.to_string(),
    ]);
    // A reader with a small receive window that reads its head, then nothing.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(s.addr).await.unwrap();
    send_request(&mut slow, &s, "GET", "/v1/sse?topic=slow/1", &[], "").await;
    read_until(&mut slow, "\r\n\r\n").await;
    eventually("the stream counted", WAIT, || async {
        scrape(&s)
            .await
            .get("herald_connections{transport=\"sse\"}")
            == 1.0
    })
    .await;

    // Events of 64 KiB until the socket is full, the queue fills behind it,
    // and the subscriber is dropped as slow.
    let data = "x".repeat(64 * 1024);
    let mut deepest_seen = 0.0;
    let mut dropped = false;
    for _ in 0..2000 {
        let (status, body) = publish(&s, KEY, "slow/1", &data).await;
        assert_eq!(status, 200, "{body}");
        let now = scrape(&s).await;
        if now.get("herald_slow_consumer_disconnects_total") == 1.0 {
            dropped = true;
            break;
        }
        let queued = now.get("herald_subscriber_queued_events");
        // One subscriber: the deepest queue is the only one. The two gauges
        // are read a moment apart (the sum kept as events move, the deepest
        // by a scan), so the stream may have taken events between them.
        let deepest = now.get("herald_subscriber_queue_max_events");
        assert!(deepest <= CAPACITY as f64, "{deepest}");
        assert!(queued <= CAPACITY as f64, "{queued}");
        if queued > deepest_seen {
            deepest_seen = queued;
        }
    }
    assert!(dropped, "the slow subscriber was never dropped");
    assert!(
        deepest_seen >= (CAPACITY / 2) as f64,
        "the queue gauge rose only to {deepest_seen}"
    );
    // Its queue went with it.
    let now = scrape(&s).await;
    assert_eq!(now.get("herald_subscriber_queued_events"), 0.0);
    assert_eq!(now.get("herald_subscriber_queue_max_events"), 0.0);
    drop(slow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hook_and_policy_refusals_and_webhook_deliveries_are_counted() {
    let (url, seen) = start_backend().await;
    let dir = TempDir::new("metrics-refusals");
    let s = full_server(&dir, &url);
    let client = client_token();
    let before = scrape(&s).await;

    // The publish hook: one allowed, one refused.
    let (status, body) = publish(&s, &client, "rooms/1", "hello").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = publish(&s, &client, "rooms/1", "refuse this").await;
    assert_eq!(
        (status, body.contains("hook_refused")),
        (403, true),
        "{body}"
    );
    // client_publish = false: the client is refused, the publisher key is not.
    let (status, body) = publish(&s, &client, "announce/1", "news").await;
    assert_eq!(
        (status, body.contains("client_publish")),
        (403, true),
        "{body}"
    );
    let (status, body) = publish(&s, KEY, "announce/1", "news").await;
    assert_eq!(status, 200, "{body}");
    // publish_rate = 2: publish until refused (two seconds' worth at most).
    let (mut accepted, mut limited) = (0, 0);
    for _ in 0..6 {
        match publish(&s, &client, "game/1", "move").await {
            (200, _) => accepted += 1,
            (429, body) => {
                assert!(body.contains("rate_limited"), "{body}");
                limited += 1;
            }
            (status, body) => panic!("{status} {body}"),
        }
    }
    assert!(limited >= 1, "{accepted} accepted, none limited");

    let after = scrape(&s).await;
    let delta = |name: &str| after.get(name) - before.get(name);
    let hook = |outcome: &str| {
        delta(&format!(
            "herald_hook_requests_total{{hook=\"publish\",outcome=\"{outcome}\"}}"
        ))
    };
    assert_eq!(
        (
            hook("allowed"),
            hook("refused"),
            hook("timeout"),
            hook("error")
        ),
        (1.0, 1.0, 0.0, 0.0)
    );
    for h in ["connect", "subscribe"] {
        for o in ["allowed", "refused", "timeout", "error"] {
            let sample = format!("herald_hook_requests_total{{hook=\"{h}\",outcome=\"{o}\"}}");
            assert_eq!(delta(&sample), 0.0, "{sample}");
        }
    }
    let policy = |pattern: &str, reason: &str| {
        after.get(&format!(
            "herald_policy_publish_refusals_total{{policy=\"{pattern}\",reason=\"{reason}\"}}"
        ))
    };
    assert_eq!(policy("rooms/**", "publish_hook"), 1.0);
    assert_eq!(policy("announce/**", "client_publish"), 1.0);
    assert_eq!(policy("game/**", "rate_limited"), limited as f64);
    // Only the reasons each rule can cause are listed.
    let listed = after
        .text
        .lines()
        .filter(|l| l.starts_with("herald_policy_publish_refusals_total{"))
        .count();
    assert_eq!(listed, 3, "{}", after.text);
    // Refused before the hub: not publish errors.
    assert_eq!(delta("herald_publish_errors_total"), 0.0);
    assert_eq!(
        delta("herald_events_published_total"),
        (2 + accepted) as f64
    );

    // A subscriber occupies a topic: the webhooks tell the backend, and
    // count what it took.
    let stream = sse(&s, "rooms/2").await;
    eventually("a webhook delivery", WAIT, || async {
        let now = scrape(&s).await;
        let events = seen.webhook_events.load(Ordering::SeqCst) as f64;
        let batches = seen.webhook_batches.load(Ordering::SeqCst) as f64;
        events >= 1.0
            && now.get("herald_webhook_events_delivered_total") == events
            && now.get("herald_webhook_batches_total{outcome=\"delivered\"}") == batches
            && now.get("herald_webhook_queued_events") == 0.0
    })
    .await;
    let now = scrape(&s).await;
    for sample in [
        "herald_webhook_batches_total{outcome=\"failed\"}",
        "herald_webhook_batches_total{outcome=\"rejected\"}",
        "herald_webhook_events_dropped_total{reason=\"overflow\"}",
        "herald_webhook_events_dropped_total{reason=\"rejected\"}",
    ] {
        assert_eq!(now.get(sample), 0.0, "{sample}");
    }
    assert_eq!(seen.bad_signatures.load(Ordering::SeqCst), 0);
    drop(stream);
}

/// Every identifier of `expr` that names a Herald metric.
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("herald_"))
        .map(str::to_owned)
        .collect()
}

/// The label names of every `by (...)` clause of `expr`.
fn grouping_labels(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("by (") {
        let after = &rest[i + 4..];
        let end = after.find(')').expect("a closed by (...)");
        out.extend(after[..end].split(',').map(|l| l.trim().to_owned()));
        rest = &after[end..];
    }
    out
}

/// Every PromQL expression of the dashboard: the panels' targets and the
/// query variables.
fn expressions(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    ("query" | "definition", Value::String(e)) if e.contains('(') => {
                        out.push(e.clone())
                    }
                    _ => expressions(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| expressions(v, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_and_the_readme_match_what_metrics_exports() {
    let (url, _seen) = start_backend().await;
    let dir = TempDir::new("metrics-dashboard");
    let s = full_server(&dir, &url);
    // The engine reports its usage once it stored something.
    let (status, body) = publish(&s, KEY, "m/1", "x").await;
    assert_eq!(status, 200, "{body}");
    let exported = scrape(&s).await;
    let sample_names = exported.sample_names();

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(root.join("deploy/grafana-dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");

    // A standard dashboard with a Prometheus data source variable that
    // every panel uses.
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string());
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables
            .iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
        "no Prometheus data source variable"
    );
    let panels = dashboard["panels"].as_array().unwrap();
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        assert!(
            !p["targets"].as_array().unwrap().is_empty(),
            "{}",
            p["title"]
        );
    }

    // Every expression names only what /metrics exports, groups only by
    // labels those metrics carry, and the dashboard covers what the
    // issue asks for.
    let mut exprs = Vec::new();
    expressions(&dashboard, &mut exprs);
    let mut used = BTreeSet::new();
    for e in &exprs {
        let names = metric_names(e);
        assert!(!names.is_empty(), "no Herald metric in {e}");
        for n in &names {
            assert!(
                sample_names.contains(n),
                "{n} (in {e}) is not exported; /metrics has {sample_names:?}"
            );
        }
        for label in grouping_labels(e) {
            if label == "le" || label == "instance" {
                continue;
            }
            assert!(
                names.iter().any(|n| exported.labels_of(n).contains(&label)),
                "{e} groups by {label:?}, which none of {names:?} carries"
            );
        }
        used.extend(names);
    }
    for wanted in [
        "herald_connections",
        "herald_events_published_total",
        "herald_events_delivered_total",
        "herald_publish_duration_seconds_bucket",
        "herald_store_duration_seconds_bucket",
        "herald_fanout_duration_seconds_bucket",
        "herald_subscriber_queued_events",
        "herald_subscriber_queue_max_events",
        "herald_webhook_queued_events",
        "herald_slow_consumer_disconnects_total",
        "herald_hook_requests_total",
        "herald_webhook_batches_total",
        "herald_budget_refusals_total",
        "herald_policy_publish_refusals_total",
    ] {
        assert!(used.contains(wanted), "no panel shows {wanted}");
    }

    // README.md, "Metrics reference": one row per family exported.
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = readme
        .split("\n## Metrics reference\n")
        .nth(1)
        .expect("a Metrics reference section");
    let section = section.split("\n## ").next().unwrap();
    let documented: BTreeSet<String> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `herald_"))
        .map(|l| format!("herald_{}", l.split('`').next().unwrap()))
        .collect();
    assert_eq!(
        documented, exported.families,
        "README rows vs /metrics families"
    );
}
