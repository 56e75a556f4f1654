//! Bounded state, measured on a real `herald serve`: idempotency records
//! that do not pin payloads, idle topics forgotten on a timer, the global
//! budget (`--max-topics`, `--max-retained-bytes`) answering 503
//! `server_full`, and topic keys that expire in Redis.
//!
//! Memory is read from the server's `/proc/<pid>/status` (`VmRSS`), before
//! and after, against a stated bound. Every loop is bounded in count and in
//! time; all traffic stays on loopback.

mod process;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_engine_redis::test_server::RedisServer;
use http_body_util::BodyExt;
use process::{ServeProcess, BIN};
use serde_json::{json, Value};

const MIB: i64 = 1024 * 1024;
/// Longest wait for any one answer: a server that stops answering fails the
/// test instead of holding it.
const ANSWER: Duration = Duration::from_secs(30);

/// A `herald serve` (killed on drop) and what the tests ask it.
struct Server(ServeProcess);

impl Server {
    /// `herald serve` on a free loopback port with the memory engine unless
    /// `args` names one.
    fn start(args: &[&str]) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve").args(["--listen", "127.0.0.1:0"]);
        if !args.contains(&"--engine") {
            cmd.args(["--engine", "memory"]);
        }
        cmd.args(args)
            .env("HERALD_LOG", "warn")
            .stderr(Stdio::null());
        Server(ServeProcess::spawn(cmd))
    }

    /// The server's resident memory, in bytes.
    fn rss(&self) -> i64 {
        self.0.rss_bytes() as i64
    }

    /// POSTs `body` to `/v1/publish`: status, `Retry-After`, JSON answer.
    async fn publish(&self, body: Value) -> (u16, Option<String>, Value) {
        let request = self.0.client.request(
            http::Method::POST,
            "/v1/publish",
            &[("content-type", "application/json")],
            Bytes::from(body.to_string()),
        );
        let resp = tokio::time::timeout(ANSWER, request)
            .await
            .expect("a publish answer in time")
            .expect("publish request");
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, retry_after, v)
    }

    /// One sample of `/metrics` by name (without labels).
    async fn metric(&self, name: &str) -> Option<f64> {
        let request = self
            .0
            .client
            .request(http::Method::GET, "/metrics", &[], Bytes::new());
        let resp = tokio::time::timeout(ANSWER, request)
            .await
            .expect("a metrics answer in time")
            .expect("metrics request");
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    /// Waits (at most `limit`) until `/metrics` shows `name` at `value`.
    async fn wait_metric(&self, name: &str, value: f64, limit: Duration) -> Option<f64> {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.metric(name).await;
            if v == Some(value) || Instant::now() > deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// 5,000 publishes of 100 kB, each with its own idempotency id, on four
/// topics keeping 4 events each: the server keeps the ids (a few dozen bytes
/// each), not the events. Before, each record held its 100 kB event for
/// 10 minutes (+480 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_ids_do_not_pin_payloads() {
    const PUBLISHES: usize = 5_000;
    const TOPICS: usize = 4;
    let server = Server::start(&["--history", "4"]);
    let data = "x".repeat(100_000);
    let body = |i: usize| json!({"topic": format!("bulk/{}", i % TOPICS), "data": data, "id": format!("id-{i}")});
    // Warm up (allocator arenas, connection pool), then measure.
    let mut first_ids = Vec::new();
    for i in 0..40 {
        let (status, _, v) = server.publish(body(i)).await;
        assert_eq!(status, 200, "{v}");
        first_ids.push(v["id"].as_str().expect("id").to_owned());
    }
    let before = server.rss();
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut next = 40;
    while next < PUBLISHES {
        assert!(Instant::now() < deadline, "publishing took too long");
        let batch: Vec<usize> = (next..(next + 8).min(PUBLISHES)).collect();
        next += batch.len();
        let answers =
            futures_util::future::join_all(batch.iter().map(|&i| server.publish(body(i)))).await;
        for (status, _, v) in answers {
            assert_eq!(status, 200, "{v}");
        }
    }
    let after = server.rss();
    let growth = after - before;
    // Retained history: 4 topics x 4 events x 100 kB = 1.6 MB, plus room
    // for the allocator and buffers. Holding the events would be ~480 MiB.
    let bound = 2 * MIB + 32 * MIB;
    eprintln!(
        "RSS before {} MiB, after {} MiB, growth {:.1} MiB (bound {} MiB)",
        before / MIB,
        after / MIB,
        growth as f64 / MIB as f64,
        bound / MIB
    );
    assert!(
        growth < bound,
        "RSS grew {growth} bytes over {PUBLISHES} publishes"
    );
    // A retry of an early id, long evicted from history, still gets the
    // original id: the record lives while the payload is gone.
    let (status, _, v) = server.publish(body(3)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["id"], first_ids[3]);
}

/// A batch publish of one event on each of `names`; returns their ids.
async fn publish_each(server: &Server, names: &[String]) -> Vec<String> {
    let mut ids = Vec::with_capacity(names.len());
    for chunk in names.chunks(500) {
        let events: Vec<Value> = chunk
            .iter()
            .map(|t| json!({"topic": t, "data": "x"}))
            .collect();
        let (status, _, v) = server.publish(json!({ "events": events })).await;
        assert_eq!(status, 200, "{v}");
        let got = v["ids"].as_array().expect("ids");
        ids.extend(
            got.iter()
                .map(|i| i.as_str().unwrap_or_default().to_owned()),
        );
    }
    ids
}

/// 20,000 one-event topics with 1 KiB names and `--history-max-age 2s`:
/// with nobody subscribed, the timer forgets them all (nothing touches them
/// again), the topics gauge returns to 0, a second round of 20,000 does not
/// grow memory further, and a cursor of a forgotten topic gets `herald.gap`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_topics_are_forgotten_on_a_timer() {
    const TOPICS: usize = 20_000;
    let server = Server::start(&["--history-max-age", "2s"]);
    let names = |round: usize| -> Vec<String> {
        (0..TOPICS)
            .map(|i| {
                let head = format!("round{round}/t{i}/");
                format!("{head}{}", "n".repeat(1000 - head.len()))
            })
            .collect()
    };
    let before = server.rss();
    let first = names(1);
    let ids = publish_each(&server, &first).await;
    assert_eq!(ids.len(), TOPICS);
    let held = server.metric("herald_topics").await.expect("herald_topics");
    assert!(held > 0.0, "{held}");
    // Age limit (2 s) + timer period (1 s) + slack.
    let limit = Duration::from_secs(15);
    assert_eq!(
        server.wait_metric("herald_topics", 0.0, limit).await,
        Some(0.0)
    );
    assert_eq!(server.metric("herald_retained_bytes").await, Some(0.0));
    assert_eq!(
        server.metric("herald_topics_dropped_total").await,
        Some(TOPICS as f64)
    );
    let after_first = server.rss();
    // A second round of new topics reuses the memory the first freed.
    let ids2 = publish_each(&server, &names(2)).await;
    assert_eq!(ids2.len(), TOPICS);
    assert_eq!(
        server.wait_metric("herald_topics", 0.0, limit).await,
        Some(0.0)
    );
    let after_second = server.rss();
    eprintln!(
        "RSS before {} MiB, after round 1 {} MiB, after round 2 {} MiB",
        before / MIB,
        after_first / MIB,
        after_second / MIB
    );
    // Kept topics would add ~20,000 x 1.2 KiB = 23 MiB per round.
    assert!(
        after_second - after_first < 8 * MIB,
        "RSS grew {} bytes over a second round of forgotten topics",
        after_second - after_first
    );
    // Resuming a forgotten topic: told it missed events, never silence.
    let mut sse = server
        .0
        .client
        .sse(&[first[7].as_str()], Some(ids[7].as_str()))
        .await
        .expect("sse");
    let gap = tokio::time::timeout(Duration::from_secs(5), sse.next_event())
        .await
        .expect("an event in time")
        .expect("stream open")
        .expect("an event");
    assert_eq!(gap.event, "herald.gap");
    let data: Value = serde_json::from_str(&gap.data).expect("gap JSON");
    assert_eq!(data["topic"], first[7].as_str());
    assert_eq!(data["reason"], "epoch_changed");
}

/// `--max-topics 100`: the 101st new topic gets 503 `server_full` with
/// `Retry-After`, existing topics keep working, and once idle topics expire
/// new ones are accepted again.
#[tokio::test]
async fn max_topics_refuses_new_topics_until_some_expire() {
    let server = Server::start(&["--max-topics", "100", "--history-max-age", "2s"]);
    for i in 0..100 {
        let (status, _, v) = server
            .publish(json!({"topic": format!("room/{i}"), "data": i}))
            .await;
        assert_eq!(status, 200, "{v}");
    }
    let (status, retry_after, v) = server
        .publish(json!({"topic": "room/100", "data": "one too many"}))
        .await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "server_full", "{v}");
    assert!(v["error"]["message"].as_str().unwrap_or("").contains("100"));
    assert!(retry_after.is_some(), "Retry-After");
    // A batch that would create a topic is refused whole.
    let (status, _, v) = server
        .publish(json!({"events": [
            {"topic": "room/1", "data": "kept?"},
            {"topic": "room/101", "data": "new"}
        ]}))
        .await;
    assert_eq!(status, 503, "{v}");
    let (status, _, v) = server
        .publish(json!({"topic": "room/5", "data": "still works"}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        server.metric("herald_budget_refusals_total").await,
        Some(2.0)
    );
    // The 100 topics are idle: after the age limit they go, and room/100
    // gets in.
    assert_eq!(
        server
            .wait_metric("herald_topics", 0.0, Duration::from_secs(15))
            .await,
        Some(0.0)
    );
    let (status, _, v) = server
        .publish(json!({"topic": "room/100", "data": "now"}))
        .await;
    assert_eq!(status, 200, "{v}");
    // room/1 got nothing from the refused batch: only its first event.
    let poll = server
        .0
        .client
        .poll(&["room/1"], None, Duration::ZERO)
        .await
        .expect("poll");
    assert!(poll.events.is_empty(), "{:?}", poll.events);
}

/// `--max-retained-bytes`: a publish that would retain more is refused with
/// 503 `server_full`; events that replace older ones of a full history fit.
#[tokio::test]
async fn max_retained_bytes_refuses_what_would_not_fit() {
    // Two 100 kB events fit (each counts data + 128 bytes), a third not.
    let server = Server::start(&["--max-retained-bytes", "250000", "--history", "2"]);
    let data = "y".repeat(100_000);
    for topic in ["a", "a"] {
        let (status, _, v) = server.publish(json!({"topic": topic, "data": data})).await;
        assert_eq!(status, 200, "{v}");
    }
    let (status, retry_after, v) = server.publish(json!({"topic": "b", "data": data})).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "server_full");
    assert!(retry_after.is_some());
    // `a` keeps two events: a third replaces its oldest, so it fits.
    let (status, _, v) = server.publish(json!({"topic": "a", "data": data})).await;
    assert_eq!(status, 200, "{v}");
    let bytes = server.metric("herald_retained_bytes").await.expect("gauge");
    assert!(bytes <= 250_000.0, "{bytes}");
}

#[test]
fn zero_budgets_are_refused_with_a_clear_message() {
    let run = |args: &[&str], envs: &[(&str, &str)]| {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--engine", "memory"])
            .args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run herald");
        assert!(!out.status.success(), "{args:?} {envs:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&["--max-topics", "0"], &[]);
    assert!(err.contains("--max-topics must be at least 1"), "{err}");
    let err = run(&[], &[("HERALD_MAX_RETAINED_BYTES", "0")]);
    assert!(
        err.contains("--max-retained-bytes must be at least 1"),
        "{err}"
    );
    let dir = std::env::temp_dir().join(format!("herald-budgets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp folder");
    let file = dir.join("herald.toml");
    std::fs::write(&file, "max_topics = 0\n").expect("write config");
    let err = run(&["--config", file.to_str().expect("utf-8 path")], &[]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(err.contains("--max-topics must be at least 1"), "{err}");
}

/// With the Redis engine a topic's keys expire after `--history-max-age`
/// (refreshed by each publish), so nothing lives forever in Redis.
#[tokio::test]
async fn redis_topic_keys_expire() {
    let redis = RedisServer::start();
    let server = Server::start(&[
        "--engine",
        "redis",
        "--redis-url",
        &redis.url(),
        "--redis-prefix",
        "bt:",
        "--history-max-age",
        "2s",
    ]);
    let (status, _, v) = server.publish(json!({"topic": "keys/1", "data": 1})).await;
    assert_eq!(status, 200, "{v}");
    for key in ["bt:{keys/1}:m", "bt:{keys/1}:s"] {
        let reply = redis.command(&["TTL", key]);
        let ttl: i64 = reply
            .trim()
            .strip_prefix(':')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("TTL {key}: {reply:?}"));
        assert!(ttl > 0 && ttl <= 2, "TTL {key} = {ttl}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !redis
        .command(&["EXISTS", "bt:{keys/1}:m", "bt:{keys/1}:s"])
        .starts_with(":0")
    {
        assert!(Instant::now() < deadline, "keys still there");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
