//! [`Hooks`] against a throw-away backend on a loopback port.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;

use super::*;

const SECRET: &str = "unit-test-hook-secret-0123456789";

/// What the backend saw.
#[derive(Default)]
struct Seen {
    requests: AtomicUsize,
    bad_signatures: AtomicUsize,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

/// Serves `answer` for every request after `delay`, checking signatures.
async fn backend(
    delay: Duration,
    answer: fn(&serde_json::Value) -> Response,
) -> (String, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let s = s.clone();
            async move {
                s.requests.fetch_add(1, Ordering::SeqCst);
                let now_in = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                s.most_in_flight.fetch_max(now_in, Ordering::SeqCst);
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
                }
                tokio::time::sleep(delay).await;
                s.in_flight.fetch_sub(1, Ordering::SeqCst);
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                answer(&v)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), seen)
}

fn hooks(url: &str, timeout: Duration, in_flight: usize) -> Hooks {
    let mut c = HooksConfig::new(url, SECRET);
    c.timeout = timeout;
    c.max_in_flight = in_flight;
    c.max_answer_bytes = 1024;
    Hooks::new(c).unwrap()
}

fn by_type(v: &serde_json::Value) -> Response {
    match v["type"].as_str() {
        Some("connect") if v["headers"]["cookie"] == "session=abc" => {
            axum::Json(serde_json::json!({
                "user": "alice",
                "grants": {"subscribe": ["users/{sub}/**"]},
            }))
            .into_response()
        }
        Some("connect") => StatusCode::UNAUTHORIZED.into_response(),
        Some("subscribe") if v["user"] == "alice" => StatusCode::OK.into_response(),
        Some("subscribe") => (
            StatusCode::FORBIDDEN,
            axum::Json(serde_json::json!({"reason": "members only"})),
        )
            .into_response(),
        Some("publish") => axum::Json(serde_json::json!({"data": "rewritten"})).into_response(),
        _ => StatusCode::BAD_REQUEST.into_response(),
    }
}

#[tokio::test]
async fn every_hook_is_signed_and_answered() {
    let (url, seen) = backend(Duration::ZERO, by_type).await;
    let h = hooks(&url, Duration::from_secs(5), 8);
    let topic = Topic::new("rooms/1").unwrap();
    let request = ConnectRequest {
        transport: "sse",
        remote_addr: Some("127.0.0.1".into()),
        headers: vec![("cookie", "session=abc".into())],
    };
    let ConnectVerdict::Granted(g) = h.connect(&request).await.unwrap() else {
        panic!("alice")
    };
    assert_eq!(g.user, "alice");
    let anonymous = ConnectRequest {
        transport: "ws",
        ..ConnectRequest::default()
    };
    assert_eq!(
        h.connect(&anonymous).await.unwrap(),
        ConnectVerdict::Unidentified
    );
    assert_eq!(
        h.subscribe(Some("alice"), &topic).await.unwrap(),
        SubscribeVerdict::Allow
    );
    assert_eq!(
        h.subscribe(Some("bob"), &topic).await.unwrap(),
        SubscribeVerdict::Refuse(Some("members only".into()))
    );
    assert_eq!(
        h.publish(Some("alice"), &topic, None, &Data::Text("x".into()))
            .await
            .unwrap(),
        PublishVerdict::Replace(Data::Text("rewritten".into()))
    );
    assert_eq!(seen.requests.load(Ordering::SeqCst), 5);
    assert_eq!(seen.bad_signatures.load(Ordering::SeqCst), 0);
    let m = h.metrics();
    assert_eq!(m.get(Hook::Connect, Outcome::Allowed), 1);
    assert_eq!(m.get(Hook::Connect, Outcome::Refused), 1);
    assert_eq!(m.get(Hook::Subscribe, Outcome::Refused), 1);
    assert_eq!(m.get(Hook::Publish, Outcome::Allowed), 1);
}

#[tokio::test]
async fn a_slow_backend_times_out() {
    let (url, _) = backend(Duration::from_secs(3), by_type).await;
    let h = hooks(&url, Duration::from_millis(200), 8);
    let started = tokio::time::Instant::now();
    let e = h
        .subscribe(Some("alice"), &Topic::new("t").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(e, HookError::Timeout { .. }), "{e}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(h.metrics().get(Hook::Subscribe, Outcome::Timeout), 1);
}

#[tokio::test]
async fn failures_refuse() {
    // Nothing listens there.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let h = hooks(&format!("http://{addr}/hook"), Duration::from_secs(5), 8);
    let e = h
        .subscribe(None, &Topic::new("t").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(e, HookError::Unavailable { .. }), "{e}");
    assert_eq!(h.metrics().get(Hook::Subscribe, Outcome::Error), 1);

    // A 5xx, and an answer over the size limit.
    let (url, _) = backend(Duration::ZERO, |_| StatusCode::BAD_GATEWAY.into_response()).await;
    let h = hooks(&url, Duration::from_secs(5), 8);
    assert!(h.subscribe(None, &Topic::new("t").unwrap()).await.is_err());
    let (url, _) = backend(Duration::ZERO, |_| {
        axum::Json(serde_json::json!({"data": "x".repeat(4096)})).into_response()
    })
    .await;
    let h = hooks(&url, Duration::from_secs(5), 8);
    let e = h
        .publish(
            None,
            &Topic::new("t").unwrap(),
            None,
            &Data::Text("y".into()),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("larger than 1024 bytes"), "{e}");
}

#[tokio::test]
async fn requests_in_flight_are_bounded() {
    let (url, seen) = backend(Duration::from_millis(300), by_type).await;
    let h = Arc::new(hooks(&url, Duration::from_secs(10), 4));
    let topic = Topic::new("t").unwrap();
    let asks: Vec<_> = (0..20)
        .map(|_| {
            let h = h.clone();
            let topic = topic.clone();
            tokio::spawn(async move { h.subscribe(Some("alice"), &topic).await })
        })
        .collect();
    for a in asks {
        assert_eq!(a.await.unwrap().unwrap(), SubscribeVerdict::Allow);
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 20);
    assert!(seen.most_in_flight.load(Ordering::SeqCst) <= 4);
}

#[test]
fn configurations_are_checked() {
    let ok = HooksConfig::new("https://app.example/hook", SECRET);
    assert!(Hooks::new(ok.clone()).is_ok());
    let with = |f: fn(&mut HooksConfig)| {
        let mut c = ok.clone();
        f(&mut c);
        Hooks::new(c).unwrap_err()
    };
    assert_eq!(
        with(|c| c.secret = b"short".to_vec()),
        HooksConfigError::ShortSecret(5)
    );
    assert!(matches!(
        with(|c| c.url = "ftp://x/hook".into()),
        HooksConfigError::Url(_)
    ));
    assert!(matches!(
        with(|c| c.url = "/hook".into()),
        HooksConfigError::Url(_)
    ));
    let e = with(|c| c.url = "https://user:hunter2@app.example/hook".into());
    assert!(!e.to_string().contains("hunter2"), "{e}");
    assert_eq!(
        with(|c| c.timeout = Duration::ZERO),
        HooksConfigError::Zero("timeout")
    );
    // The secret never shows in Debug.
    assert!(!format!("{ok:?}").contains(SECRET));
    assert!(!format!("{:?}", Hooks::new(ok).unwrap()).contains(SECRET));
}
