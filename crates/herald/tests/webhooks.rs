//! Webhooks (`--webhook-url`) against the real binary and a real backend:
//! a small HTTP server in this process that checks every request's
//! signature with its own HMAC code (not Herald's), records the batches it
//! accepts, and can be told to answer 500 for a while.
//!
//! - an SSE client that comes and goes makes its topic occupied, then
//!   vacated;
//! - on a presence topic, joins and leaves carry the user and the client
//!   (the connection id `GET /v1/presence` lists);
//! - a backend failing the first three attempts still gets every event,
//!   in order per topic;
//! - a full queue drops events, counts them in /metrics and logs once;
//! - a graceful shutdown delivers the vacancies it caused;
//! - two Redis-backed nodes report one occupied and one vacated for a topic
//!   with subscribers on both, and a killed node's topic vacates once its
//!   entry expires.

mod backend;
mod process;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use herald_engine_redis::test_server::RedisServer;
use process::{eventually, ServeProcess, TempDir, BIN};
use serde_json::{json, Value};

const SECRET: &str = "webhooks-test-secret-0123456789abcdef";
const JWT_SECRET: &str = "webhooks-test-jwt-secret-0123456789";
/// How long any one expected delivery may take (a 1 s batch window, the
/// vacate grace, and retries).
const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// The backend.

/// What the backend saw.
#[derive(Default)]
struct Backend {
    /// Every event of every accepted batch, in arrival order.
    events: Mutex<Vec<Value>>,
    /// The ids of accepted batches (`x-herald-webhook-id`).
    batches: Mutex<Vec<String>>,
    /// Requests so far, accepted or not.
    requests: AtomicUsize,
    /// Requests whose signature did not check out.
    bad_signatures: AtomicUsize,
    /// Answer 500 to this many requests first.
    fail_first: AtomicUsize,
}

impl Backend {
    /// The kinds of `topic`'s events, in arrival order.
    fn kinds(&self, topic: &str) -> Vec<String> {
        self.of(topic)
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_owned())
            .collect()
    }

    /// `topic`'s events, in arrival order.
    fn of(&self, topic: &str) -> Vec<Value> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["topic"] == topic)
            .cloned()
            .collect()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn webhook(State(b): State<Arc<Backend>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let n = b.requests.fetch_add(1, Ordering::SeqCst);
    let header = headers
        .get("x-herald-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !backend::signature_ok(SECRET.as_bytes(), header, &body, now_secs()) {
        b.bad_signatures.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED;
    }
    if n < b.fail_first.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
    if v["type"] != "events" {
        return StatusCode::BAD_REQUEST;
    }
    let id = headers
        .get("x-herald-webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    b.batches.lock().unwrap().push(id);
    b.events
        .lock()
        .unwrap()
        .extend(v["events"].as_array().cloned().unwrap_or_default());
    StatusCode::OK
}

/// The backend on a loopback port, failing its first `fail_first`
/// requests: its URL and what it saw.
async fn backend(fail_first: usize) -> (String, Arc<Backend>) {
    let seen = Arc::new(Backend {
        fail_first: AtomicUsize::new(fail_first),
        ..Default::default()
    });
    let app = axum::Router::new()
        .route("/webhook", axum::routing::post(webhook))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/webhook"), seen)
}

// ---------------------------------------------------------------------------
// Herald.

/// `herald serve --engine memory` with the webhooks at `url`, a short
/// vacate grace, and `extra` flags.
fn herald(url: &str, extra: &[&str]) -> ServeProcess {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["serve", "--engine", "memory", "--listen", "127.0.0.1:0"])
        .args(["--webhook-url", url, "--webhook-secret", SECRET])
        .args(["--webhook-vacate-grace", "200ms"])
        .args(extra)
        .env("HERALD_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    ServeProcess::spawn(cmd)
}

/// A token for `sub` that may read `rooms/**`.
fn token(sub: &str) -> String {
    let claims = json!({
        "sub": sub,
        "exp": now_secs() + 600,
        "iat": now_secs(),
        "herald": {"subscribe": ["rooms/**"]},
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

async fn sse(client: &herald_client::Client, topics: &[&str]) -> herald_client::SseStream {
    client.sse(topics, None).await.expect("an SSE stream")
}

/// Waits until `topic`'s event kinds are `want`, then a little longer to
/// see that nothing else comes.
async fn expect_kinds(b: &Backend, topic: &str, want: &[&str]) {
    eventually(&format!("{topic}: {want:?}"), WAIT, || async {
        b.kinds(topic).len() >= want.len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(b.kinds(topic), want, "{topic}: {:?}", b.of(topic));
}

// ---------------------------------------------------------------------------
// Tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_makes_its_topic_occupied_then_vacated() {
    let (url, b) = backend(0).await;
    let s = herald(&url, &[]);
    let before = now_ms();
    let stream = sse(&s.client, &["rooms/1"]).await;
    eventually("occupied", WAIT, || async {
        b.kinds("rooms/1") == ["occupied"]
    })
    .await;
    drop(stream);
    expect_kinds(&b, "rooms/1", &["occupied", "vacated"]).await;
    let events = b.of("rooms/1");
    for e in &events {
        let at = e["at"].as_u64().unwrap();
        assert!(at >= before.saturating_sub(1000) && at <= now_ms(), "{e}");
        // Occupancy names no member.
        assert!(e.get("user").is_none() && e.get("client").is_none(), "{e}");
    }
    assert!(events[0]["at"].as_u64() <= events[1]["at"].as_u64());
    assert_eq!(b.bad_signatures.load(Ordering::SeqCst), 0);
    // Nothing else was reported at all.
    assert_eq!(b.events.lock().unwrap().len(), 2);
    eventually("the delivered batches counted", WAIT, || async {
        s.metric("herald_webhook_batches_total{outcome=\"delivered\"}") >= Some(1.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_and_leaves_on_a_presence_topic_name_user_and_client() {
    let (url, b) = backend(0).await;
    let dir = TempDir::new("webhooks-presence");
    let config = dir.path().join("herald.toml");
    // Presence without join_leave: the webhooks hear of joins anyway.
    std::fs::write(
        &config,
        "[[topics]]\npattern = \"rooms/**\"\npresence = true\n",
    )
    .unwrap();
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["serve", "--engine", "memory", "--listen", "127.0.0.1:0"])
        .args(["--jwt-secret", JWT_SECRET])
        // The webhooks sign with the hooks' secret when they have none of their own.
        .args(["--webhook-url", &url, "--hook-secret", SECRET])
        .args(["--webhook-vacate-grace", "200ms"])
        .arg(format!("--config={}", config.display()))
        .env("HERALD_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let s = ServeProcess::spawn(cmd);
    let alice = s.client.clone().with_token(token("alice"));
    let stream = sse(&alice, &["rooms/p"]).await;
    eventually("occupied and join", WAIT, || async {
        b.kinds("rooms/p").len() >= 2
    })
    .await;
    // The connection id is the one presence lists.
    let listed = alice
        .request(
            http::Method::GET,
            "/v1/presence?topic=rooms/p",
            &[],
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    let listed = http_body_util::BodyExt::collect(listed.into_body())
        .await
        .unwrap()
        .to_bytes();
    let listed: Value = serde_json::from_slice(&listed).unwrap();
    let client = listed["clients"][0]["client"].as_str().unwrap().to_owned();
    drop(stream);
    eventually("leave and vacated", WAIT, || async {
        b.kinds("rooms/p").len() >= 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let events = b.of("rooms/p");
    assert_eq!(events.len(), 4, "{events:?}");
    let find = |kind: &str| {
        events
            .iter()
            .find(|e| e["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in {events:?}"))
            .clone()
    };
    for kind in ["join", "leave"] {
        let e = find(kind);
        assert_eq!(e["user"], "alice", "{e}");
        assert_eq!(e["client"], client.as_str(), "{e}");
        assert!(e["at"].as_u64().is_some(), "{e}");
    }
    let position = |kind: &str| events.iter().position(|e| e["kind"] == kind).unwrap();
    assert!(position("occupied") < position("vacated"), "{events:?}");
    assert!(position("join") < position("leave"), "{events:?}");
    assert_eq!(b.bad_signatures.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_failing_three_times_still_gets_every_event_in_order() {
    let (url, b) = backend(3).await;
    let s = herald(&url, &[]);
    // Three comings and goings on one topic, one on two others.
    for _ in 0..3 {
        let stream = sse(&s.client, &["rooms/busy"]).await;
        let other = sse(&s.client, &["rooms/a", "rooms/b"]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(stream);
        drop(other);
        // Past the 200 ms grace: each departure is a vacancy.
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let cycles = ["occupied", "vacated"].repeat(3);
    for topic in ["rooms/busy", "rooms/a", "rooms/b"] {
        eventually(&format!("every event of {topic}"), WAIT, || async {
            b.kinds(topic).len() >= 6
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for topic in ["rooms/busy", "rooms/a", "rooms/b"] {
        let kinds = b.kinds(topic);
        // At least once: a batch may come twice, never out of order.
        let mut deduped: Vec<String> = Vec::new();
        let mut seen = HashSet::new();
        for e in b.of(topic) {
            if seen.insert(e.to_string()) {
                deduped.push(e["kind"].as_str().unwrap().to_owned());
            }
        }
        assert_eq!(deduped, cycles, "{topic}: {kinds:?}");
        let ats: Vec<u64> = b
            .of(topic)
            .iter()
            .map(|e| e["at"].as_u64().unwrap())
            .collect();
        assert!(ats.windows(2).all(|w| w[0] <= w[1]), "{topic}: {ats:?}");
    }
    assert!(b.requests.load(Ordering::SeqCst) >= 4);
    assert_eq!(b.bad_signatures.load(Ordering::SeqCst), 0);
    assert_eq!(
        s.metric("herald_webhook_batches_total{outcome=\"failed\"}"),
        Some(3.0)
    );
    assert_eq!(
        s.metric("herald_webhook_events_dropped_total{reason=\"overflow\"}"),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_counts_its_drops_in_metrics_and_logs_once() {
    // A backend that is down for good: nothing leaves the queue.
    let (url, b) = backend(usize::MAX).await;
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["serve", "--engine", "memory", "--listen", "127.0.0.1:0"])
        .args(["--webhook-url", &url, "--webhook-secret", SECRET])
        .args(["--webhook-queue", "2", "--webhook-vacate-grace", "200ms"])
        .env("HERALD_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut s = ServeProcess::spawn(cmd);
    let log = s.capture_stderr();
    let topics = ["q/1", "q/2", "q/3", "q/4", "q/5", "q/6"];
    let stream = sse(&s.client, &topics).await;
    // Six occupied: two fit, four are dropped.
    eventually("four drops counted", WAIT, || async {
        s.metric("herald_webhook_events_dropped_total{reason=\"overflow\"}") == Some(4.0)
    })
    .await;
    assert_eq!(s.metric("herald_webhook_queued_events"), Some(2.0));
    drop(stream);
    // Six vacated, all dropped.
    eventually("ten drops counted", WAIT, || async {
        s.metric("herald_webhook_events_dropped_total{reason=\"overflow\"}") == Some(10.0)
    })
    .await;
    assert!(
        log.wait_for("webhook queue full", Duration::from_secs(5)),
        "{}",
        log.text()
    );
    // Logged once for the burst (at most every 10 s), not once per event.
    assert_eq!(
        log.text().matches("webhook queue full").count(),
        1,
        "{}",
        log.text()
    );
    assert!(b.events.lock().unwrap().is_empty());
    eventually("a failed attempt counted", WAIT, || async {
        s.metric("herald_webhook_batches_total{outcome=\"failed\"}") >= Some(1.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_delivers_its_vacancies() {
    let (url, b) = backend(0).await;
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["serve", "--engine", "memory", "--listen", "127.0.0.1:0"])
        .args(["--webhook-url", &url, "--webhook-secret", SECRET])
        // Far longer than the test: only the shutdown skips it.
        .args(["--webhook-vacate-grace", "1h"])
        .env("HERALD_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut s = ServeProcess::spawn(cmd);
    let stream = sse(&s.client, &["rooms/s"]).await;
    eventually("occupied", WAIT, || async {
        b.kinds("rooms/s") == ["occupied"]
    })
    .await;
    let status = tokio::task::block_in_place(|| s.sigterm(WAIT));
    assert!(status.success(), "{status:?}");
    drop(stream);
    assert_eq!(b.kinds("rooms/s"), ["occupied", "vacated"]);
}

#[test]
fn bad_webhook_settings_refuse_to_start() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(["serve", "--engine", "memory", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("HERALD_LOG", "error")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(&[
        "--webhook-url",
        "ftp://example/x",
        "--webhook-secret",
        SECRET,
    ]);
    assert!(e.contains("--webhook-url"), "{e}");
    let e = run(&["--webhook-url", "http://127.0.0.1:9/x"]);
    assert!(e.contains("--webhook-secret"), "{e}");
    let e = run(&[
        "--webhook-url",
        "http://127.0.0.1:9/x",
        "--webhook-secret",
        "short",
    ]);
    assert!(
        e.contains("--webhook-secret") && e.contains("16 bytes"),
        "{e}"
    );
    assert!(!e.contains("short"), "the secret is not repeated: {e}");
    let e = run(&["--webhook-queue", "5"]);
    assert!(e.contains("--webhook-url"), "{e}");
    let e = run(&[
        "--webhook-url",
        "http://127.0.0.1:9/x",
        "--webhook-secret",
        SECRET,
        "--webhook-queue",
        "0",
    ]);
    assert!(e.contains("--webhook-queue"), "{e}");
}

// ---------------------------------------------------------------------------
// Two Redis-backed nodes.

/// `herald serve --engine redis` on `redis` with the webhooks at `url`.
fn redis_node(redis: &RedisServer, url: &str) -> ServeProcess {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--engine", "redis"])
        .args(["--redis-url", &redis.url(), "--redis-prefix", "wh:"])
        .args(["--webhook-url", url, "--webhook-secret", SECRET])
        .args(["--webhook-vacate-grace", "200ms"])
        .env("HERALD_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    ServeProcess::spawn(cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_redis_nodes_report_one_occupied_and_one_vacated() {
    let redis = RedisServer::start();
    let (url, b) = backend(0).await;
    let a = redis_node(&redis, &url);
    let c = redis_node(&redis, &url);
    let on_a = sse(&a.client, &["shared/1"]).await;
    eventually("occupied", WAIT, || async {
        b.kinds("shared/1") == ["occupied"]
    })
    .await;
    // A subscriber on the other node changes nothing...
    let on_c = sse(&c.client, &["shared/1"]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // ...nor does the first one leaving while the other stays.
    drop(on_a);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(b.kinds("shared/1"), ["occupied"]);
    // The last one leaves: one vacancy, reported by the node it left.
    drop(on_c);
    expect_kinds(&b, "shared/1", &["occupied", "vacated"]).await;
    // Again, now leaving in the other order.
    let on_c = sse(&c.client, &["shared/1"]).await;
    let on_a = sse(&a.client, &["shared/1"]).await;
    eventually("occupied again", WAIT, || async {
        b.kinds("shared/1").len() == 3
    })
    .await;
    drop(on_c);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(on_a);
    expect_kinds(
        &b,
        "shared/1",
        &["occupied", "vacated", "occupied", "vacated"],
    )
    .await;
    assert_eq!(b.bad_signatures.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_nodes_topic_vacates_once_its_entry_expires() {
    let redis = RedisServer::start();
    let (url, b) = backend(0).await;
    let _survivor = redis_node(&redis, &url);
    let mut doomed = redis_node(&redis, &url);
    let stream = sse(&doomed.client, &["lonely/1"]).await;
    eventually("occupied", WAIT, || async {
        b.kinds("lonely/1") == ["occupied"]
    })
    .await;
    // SIGKILL: no goodbye. The survivor's sweep finds the entry expired
    // (20 s of time-to-live, a sweep every 4 s) and reports the vacancy.
    doomed.child.kill().unwrap();
    doomed.child.wait().unwrap();
    drop(stream);
    eventually(
        "vacated by the survivor",
        Duration::from_secs(40),
        || async { b.kinds("lonely/1").len() >= 2 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(b.kinds("lonely/1"), ["occupied", "vacated"]);
}
