//! [`Webhooks`] against a throw-away backend on a loopback port.

use std::sync::atomic::AtomicUsize;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use herald_core::{OccurrenceKind, Topic};

use super::*;

const SECRET: &str = "unit-test-webhook-secret-0123456789";
const WAIT: Duration = Duration::from_secs(5);

/// What the backend saw: every batch (its id and events) whose signature
/// checked out, and how many did not.
#[derive(Default)]
struct Seen {
    batches: Mutex<Vec<(String, serde_json::Value)>>,
    bad_signatures: AtomicUsize,
    requests: AtomicUsize,
}

/// Answers `status(n)` to the n-th request (0 first).
async fn backend(status: fn(usize) -> u16) -> (String, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    let app = Router::new().route(
        "/webhook",
        post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let s = s.clone();
            async move {
                let n = s.requests.fetch_add(1, Ordering::SeqCst);
                let header = headers
                    .get(signature::HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                if signature::verify(SECRET.as_bytes(), header, &body, now, 60).is_err() {
                    s.bad_signatures.fetch_add(1, Ordering::SeqCst);
                    return StatusCode::UNAUTHORIZED;
                }
                let id = headers
                    .get(BATCH_ID_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let code = status(n);
                if code == 200 {
                    let v = serde_json::from_slice(&body).unwrap();
                    s.batches.lock().unwrap().push((id, v));
                }
                StatusCode::from_u16(code).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/webhook"), seen)
}

fn config(url: &str) -> WebhooksConfig {
    let mut c = WebhooksConfig::new(url, SECRET);
    c.batch_wait = Duration::from_millis(50);
    c.batch_events = 3;
    c.retry_min = Duration::from_millis(20);
    c.retry_max = Duration::from_millis(100);
    c.timeout = Duration::from_secs(2);
    c
}

fn occupied(topic: &str) -> Occurrence {
    Occurrence::topic(OccurrenceKind::Occupied, &Topic::new(topic).unwrap())
}

async fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The topics of every delivered event, in order.
fn delivered(seen: &Seen) -> Vec<String> {
    seen.batches
        .lock()
        .unwrap()
        .iter()
        .flat_map(|(_, v)| v["events"].as_array().unwrap().clone())
        .map(|e| e["topic"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn event_and_batch_json() {
    let t = Topic::new("rooms/1").unwrap();
    let mut o = Occurrence::member(OccurrenceKind::Join, &t, "alice", "c-1");
    o.at = 1_700_000_000_000;
    let join = Bytes::from(event_json(&o));
    assert_eq!(
        std::str::from_utf8(&join).unwrap(),
        r#"{"kind":"join","topic":"rooms/1","user":"alice","client":"c-1","at":1700000000000}"#
    );
    let mut o = Occurrence::topic(OccurrenceKind::Vacated, &t);
    o.at = 5;
    let vacated = Bytes::from(event_json(&o));
    let body: serde_json::Value = serde_json::from_slice(&batch_body(&[join, vacated])).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"type": "events", "events": [
            {"kind": "join", "topic": "rooms/1", "user": "alice", "client": "c-1", "at": 1_700_000_000_000u64},
            {"kind": "vacated", "topic": "rooms/1", "at": 5},
        ]})
    );
}

#[test]
fn bad_configurations_are_refused() {
    let short = WebhooksConfig::new("http://127.0.0.1:1/x", "short");
    assert_eq!(
        Webhooks::new(short).unwrap_err(),
        WebhooksConfigError::ShortSecret(5)
    );
    for url in [
        "ftp://host/x",
        "not a url",
        "http://user:pw@host/x",
        "/path",
    ] {
        let err = Webhooks::new(WebhooksConfig::new(url, SECRET)).unwrap_err();
        assert!(matches!(err, WebhooksConfigError::Url(_)), "{url}: {err}");
        assert!(!err.to_string().contains("pw@"), "{err}");
    }
    let mut c = WebhooksConfig::new("http://127.0.0.1:1/x", SECRET);
    c.queue_events = 0;
    assert!(matches!(
        Webhooks::new(c).unwrap_err(),
        WebhooksConfigError::Zero(_)
    ));
}

#[tokio::test]
async fn batches_are_signed_and_in_order() {
    let (url, seen) = backend(|_| 200).await;
    let hooks = Arc::new(Webhooks::new(config(&url)).unwrap());
    tokio::spawn(hooks.clone().run());
    for i in 0..7 {
        hooks.occurred(occupied(&format!("t/{i}")));
    }
    until("7 events", || delivered(&seen).len() == 7).await;
    until("7 counted", || hooks.metrics().delivered() == 7).await;
    let want: Vec<String> = (0..7).map(|i| format!("t/{i}")).collect();
    assert_eq!(delivered(&seen), want);
    let batches = seen.batches.lock().unwrap();
    assert!(batches.iter().all(|(_, b)| b["type"] == "events"));
    assert!(batches
        .iter()
        .all(|(_, b)| b["events"].as_array().unwrap().len() <= 3));
    drop(batches);
    assert_eq!(seen.bad_signatures.load(Ordering::SeqCst), 0);
    assert_eq!(hooks.metrics().batches(BatchOutcome::Delivered), 3);
    assert_eq!(hooks.metrics().queued(), 0);
}

#[tokio::test]
async fn failures_are_retried_with_the_same_batch_id_and_4xx_drops() {
    // 500, 503, then 200; later a 400 for one batch.
    let (url, seen) = backend(|n| match n {
        0 => 500,
        1 => 503,
        3 => 400,
        _ => 200,
    })
    .await;
    let hooks = Arc::new(Webhooks::new(config(&url)).unwrap());
    tokio::spawn(hooks.clone().run());
    hooks.occurred(occupied("a/1"));
    until("the first batch", || delivered(&seen).len() == 1).await;
    assert_eq!(seen.requests.load(Ordering::SeqCst), 3);
    assert_eq!(hooks.metrics().batches(BatchOutcome::Failed), 2);
    hooks.occurred(occupied("b/1"));
    until("the refused batch", || {
        hooks.metrics().batches(BatchOutcome::Rejected) == 1
    })
    .await;
    assert_eq!(hooks.metrics().dropped(DropReason::Rejected), 1);
    hooks.occurred(occupied("c/1"));
    until("the third batch", || delivered(&seen).len() == 2).await;
    assert_eq!(delivered(&seen), ["a/1", "c/1"]);
    // Every attempt of a batch carries its id; batches differ.
    let ids: Vec<String> = seen
        .batches
        .lock()
        .unwrap()
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    assert_ne!(ids[0], ids[1]);
}

#[tokio::test]
async fn a_full_queue_drops_and_counts() {
    // A backend that fails every time: nothing leaves the queue.
    let (url, _seen) = backend(|_| 503).await;
    let mut c = config(&url);
    c.queue_events = 4;
    let hooks = Arc::new(Webhooks::new(c).unwrap());
    tokio::spawn(hooks.clone().run());
    for i in 0..10 {
        hooks.occurred(occupied(&format!("t/{i}")));
    }
    assert_eq!(hooks.metrics().dropped(DropReason::Overflow), 6);
    assert_eq!(hooks.metrics().queued(), 4);
    let mut text = String::new();
    herald_core::metrics::write_families(&mut text, &hooks.metrics().families());
    assert!(
        text.contains("herald_webhook_events_dropped_total{reason=\"overflow\"} 6\n"),
        "{text}"
    );
    assert!(text.contains("herald_webhook_queued_events 4\n"), "{text}");
    // Bytes bound too.
    let mut c = config(&url);
    c.queue_bytes = 60; // one event of about 50 bytes
    let small = Webhooks::new(c).unwrap();
    small.occurred(occupied("x"));
    small.occurred(occupied("y"));
    assert_eq!(small.metrics().queued(), 1);
    assert_eq!(small.metrics().dropped(DropReason::Overflow), 1);
}

#[tokio::test]
async fn flush_sends_without_waiting_for_a_full_batch() {
    let (url, seen) = backend(|_| 200).await;
    let mut c = config(&url);
    c.batch_wait = Duration::from_secs(60);
    let hooks = Arc::new(Webhooks::new(c).unwrap());
    tokio::spawn(hooks.clone().run());
    hooks.occurred(occupied("z/1"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(delivered(&seen).is_empty(), "waits for the batch to fill");
    assert_eq!(hooks.flush(WAIT).await, 0);
    assert_eq!(delivered(&seen), ["z/1"]);
}
