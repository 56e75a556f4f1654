//! The kinds of weakness found by trying Herald as an attacker would, one
//! test each, with the examples that found them as cases (DESIGN.md,
//! "Credentials over time", "Refusals an EventSource understands", "Cursor
//! and name input"; trusted proxies): against the real `herald serve` binary.

mod spawn;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use herald_auth::jwt;
use herald_client::Client;
use serde_json::json;

const SECRET: &str = "security-suite-secret-0123456789abcdef";
const KEY: &str = "security-suite-publisher-key-0123";
const WAIT: Duration = Duration::from_secs(10);

struct Server {
    child: Child,
    base: String,
    addr: std::net::SocketAddr,
    client: Client,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(extra: &[&str]) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args([
        "serve",
        "--engine",
        "memory",
        "--listen",
        "127.0.0.1:0",
        "--jwt-secret",
        SECRET,
        "--publish-key",
        KEY,
        "--public",
        "news/**",
    ])
    .args(extra);
    let (child, base) = spawn::listening(cmd);
    Server {
        child,
        addr: base["http://".len()..].parse().unwrap(),
        client: Client::new(&base).unwrap(),
        base,
    }
}

/// A token for `sub` granting `users/{sub}/**` (or `topics`), valid for `ttl` seconds from `iat`.
fn token_for(sub: &str, topics: &[&str], iat: u64, ttl: u64) -> String {
    let topics: Vec<String> = if topics.is_empty() {
        vec!["users/{sub}/**".into()]
    } else {
        topics.iter().map(|t| t.to_string()).collect()
    };
    jwt::sign(
        &jwt::Claims {
            sub: Some(sub.into()),
            exp: iat + ttl,
            iat: Some(iat),
            nbf: None,
            herald: jwt::HeraldClaim {
                subscribe: topics.clone(),
                publish: topics,
                llm: false,
            },
        },
        SECRET.as_bytes(),
        false,
        None,
    )
    .unwrap()
}

async fn publish(s: &Server, topic: &str, data: serde_json::Value) -> String {
    let (st, v) = s
        .client
        .clone()
        .with_token(KEY)
        .publish_raw(
            json!({"topic": topic, "data": data}).to_string(),
            "application/json",
        )
        .await
        .unwrap();
    assert_eq!(st, 200, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

/// `GET path` over a raw socket with extra head lines; the status and the
/// whole answer, read until the server closes or `limit` passes.
fn raw_get(addr: std::net::SocketAddr, path: &str, extra: &[u8], limit: Duration) -> (u16, String) {
    let mut sock = TcpStream::connect(addr).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n").into_bytes();
    req.extend_from_slice(extra);
    req.extend_from_slice(b"Connection: close\r\n\r\n");
    sock.write_all(&req).unwrap();
    sock.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

// ---- Credentials over time -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_stream_ends_at_its_tokens_exp() {
    let s = start(&[]);
    let now = herald_auth::now();
    let tok = token_for("alice", &[], now, 3);
    let started = Instant::now();
    let mut stream = s
        .client
        .clone()
        .with_token(tok.clone())
        .sse(&["users/alice/inbox"], None)
        .await
        .unwrap();
    publish(&s, "users/alice/inbox", json!("before")).await;
    assert_eq!(stream.next_event().await.unwrap().unwrap().data, "before");
    // Then nothing but the end, at exp (within 5 s).
    let e = tokio::time::timeout(WAIT, stream.next_event())
        .await
        .expect("the stream ends")
        .unwrap()
        .expect("a last event");
    assert_eq!(e.event, "herald.disconnect");
    assert_eq!(e.data, r#"{"reason":"token_expired"}"#);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took <= Duration::from_secs(3 + 5),
        "{took:?}"
    );
    assert!(tokio::time::timeout(WAIT, stream.next_event())
        .await
        .unwrap()
        .unwrap()
        .is_none());
    // A stream opened with a one-time token inherits the deadline.
    let r = s
        .client
        .request(
            http::Method::POST,
            "/v1/tokens",
            &[(
                "authorization",
                &format!("Bearer {}", token_for("alice", &[], herald_auth::now(), 3)),
            )],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    use http_body_util::BodyExt;
    let v: serde_json::Value =
        serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let ot = v["token"].as_str().unwrap();
    let (status, text) = tokio::task::spawn_blocking({
        let addr = s.addr;
        let path = format!("/v1/sse?topic=users/alice/inbox&token={ot}");
        move || raw_get(addr, &path, b"", Duration::from_secs(10))
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("event: herald.disconnect\ndata: {\"reason\":\"token_expired\"}"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_closes_at_exp_unless_refreshed_in_band() {
    let s = start(&[]);
    let now = herald_auth::now();
    let topic = "users/alice/inbox";
    // Not refreshed: closed with 4001 token_expired, within 5 s of exp.
    let started = Instant::now();
    let mut lapsed = s
        .client
        .ws_with(
            &[(
                "authorization",
                &format!("Bearer {}", token_for("alice", &[], now, 3)),
            )],
            "",
        )
        .await
        .unwrap();
    lapsed.subscribe(topic, None).await.unwrap();
    assert_eq!(
        lapsed.next_json().await.unwrap().unwrap()["type"],
        "subscribed"
    );
    let v = tokio::time::timeout(WAIT, lapsed.next_of_type("close"))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (v["code"].as_u64(), v["reason"].as_str()),
        (Some(4001), Some("token_expired")),
        "{v}"
    );
    assert!(started.elapsed() <= Duration::from_secs(3 + 5));

    // Refreshed before exp with the same sub: answered with the new
    // deadline, and the socket keeps delivering past the old one.
    let now = herald_auth::now();
    let mut kept = s
        .client
        .ws_with(
            &[(
                "authorization",
                &format!("Bearer {}", token_for("alice", &[], now, 3)),
            )],
            "",
        )
        .await
        .unwrap();
    kept.subscribe(topic, None).await.unwrap();
    assert_eq!(
        kept.next_json().await.unwrap().unwrap()["type"],
        "subscribed"
    );
    let fresh = token_for("alice", &[], now, 60);
    kept.send_json(&json!({"type": "auth", "token": fresh, "ref": 7}))
        .await
        .unwrap();
    let v = kept.next_json().await.unwrap().unwrap();
    assert_eq!(
        (v["type"].as_str(), v["sub"].as_str(), v["ref"].as_u64()),
        (Some("authenticated"), Some("alice"), Some(7)),
        "{v}"
    );
    assert_eq!(v["expires_at"].as_u64(), Some(now + 60));
    tokio::time::sleep(Duration::from_secs(5)).await;
    publish(&s, topic, json!("after the old exp")).await;
    let v = tokio::time::timeout(WAIT, kept.next_json())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (v["type"].as_str(), v["data"].as_str()),
        (Some("event"), Some("after the old exp")),
        "{v}"
    );

    // A refresh may not change who the connection is.
    let bob = token_for("bob", &[], herald_auth::now(), 60);
    kept.send_json(&json!({"type": "auth", "token": bob}))
        .await
        .unwrap();
    let v = kept.next_json().await.unwrap().unwrap();
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str()),
        (Some("error"), Some("subject_mismatch")),
        "{v}"
    );

    // Every later action is checked against the credential in force: after
    // a refresh with narrower grants, what only the old one allowed is refused.
    let narrow = token_for("alice", &["users/alice/other"], herald_auth::now(), 60);
    kept.send_json(&json!({"type": "auth", "token": narrow}))
        .await
        .unwrap();
    assert_eq!(
        kept.next_json().await.unwrap().unwrap()["type"],
        "authenticated"
    );
    kept.send_json(&json!({"type": "publish", "topic": topic, "data": "x"}))
        .await
        .unwrap();
    let v = kept.next_of_type("error").await.unwrap().unwrap();
    assert_eq!(v["code"], "forbidden", "{v}");
    kept.send_json(&json!({"type": "publish", "topic": "users/alice/other", "data": "x"}))
        .await
        .unwrap();
    assert_eq!(
        kept.next_of_type("published").await.unwrap().unwrap()["topic"],
        "users/alice/other"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_tokens_count_their_remaining_lifetime_and_refuse_a_future_iat() {
    let s = start(&[]);
    let now = herald_auth::now();
    let status = |tok: String| {
        let c = s.client.clone();
        async move {
            c.request(
                http::Method::GET,
                &format!("/v1/poll?topic=users/alice/inbox&timeout=0&token={tok}"),
                &[],
                bytes::Bytes::new(),
            )
            .await
            .unwrap()
            .status()
            .as_u16()
        }
    };
    // The example: iat ten years ahead, exp five minutes after it.
    let future = now + 10 * 365 * 86_400;
    assert_eq!(status(token_for("alice", &[], future, 300)).await, 401);
    // Issued an hour ago with five minutes left: fine (what is left counts).
    assert_eq!(
        status(token_for("alice", &[], now - 3600, 3600 + 240)).await,
        200
    );
    // Issued now with an hour to go: too long for a URL.
    assert_eq!(status(token_for("alice", &[], now, 3600)).await, 401);
    assert_eq!(status(token_for("alice", &[], now, 120)).await, 200);
}

// ---- Cursor and name input -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_never_silently_means_from_now() {
    let s = start(&["--public", "t/**"]);
    let first = publish(&s, "t/a", json!(1)).await;
    let second = publish(&s, "t/a", json!(2)).await;
    let _third = publish(&s, "t/a", json!(3)).await;
    let addr = s.addr;
    let get = move |path: String, extra: Vec<u8>| {
        tokio::task::spawn_blocking(move || raw_get(addr, &path, &extra, Duration::from_secs(2)))
    };
    // A valid cursor followed by a non-ASCII byte in Last-Event-ID: 400,
    // not "absent" (and not the URL's parameter instead).
    let mut extra = format!("Last-Event-ID: {first}").into_bytes();
    extra.push(0xe9);
    extra.extend_from_slice(b"\r\n");
    let (st, text) = get(format!("/v1/sse?topic=t/a&last_event_id={second}"), extra)
        .await
        .unwrap();
    assert_eq!(st, 400, "{text}");
    assert!(text.contains("invalid_cursor"), "{text}");
    // Garbage in any source: 400 invalid_cursor.
    for path in [
        "/v1/sse?topic=t/a&last_event_id=zzz".to_string(),
        "/v1/poll?topic=t/a&timeout=0&cursor=zzz".to_string(),
    ] {
        let (st, text) = get(path.clone(), vec![]).await.unwrap();
        assert_eq!(st, 400, "{path}: {text}");
        assert!(text.contains("invalid_cursor"), "{text}");
    }
    let mut ws = s.client.ws().await.unwrap();
    ws.send_json(&json!({"type": "subscribe", "topic": "t/a", "since": "zzz"}))
        .await
        .unwrap();
    let v = ws.next_json().await.unwrap().unwrap();
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str()),
        (Some("error"), Some("invalid_cursor")),
        "{v}"
    );
    // Repeated parameters: the last value wins (a polyfill that appends the
    // newest id must not replay): resuming after `second` gives 3 only.
    let (st, text) = get(
        format!("/v1/poll?topic=t/a&timeout=0&cursor={first}&cursor={second}"),
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(st, 200, "{text}");
    let body: serde_json::Value =
        serde_json::from_str(&text[text.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    let data: Vec<_> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"].clone())
        .collect();
    assert_eq!(data, vec![json!(3)]);
    // A topic whose percent-decoding is not UTF-8: 400, never U+FFFD.
    for path in ["/v1/sse?topic=t/a%ff", "/v1/poll?topic=t/a%ff&timeout=0"] {
        let (st, text) = get(path.to_string(), vec![]).await.unwrap();
        assert_eq!(st, 400, "{path}: {text}");
        assert!(text.contains("invalid_topic"), "{text}");
    }
}

// ---- Refusals an EventSource understands -----------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_refusals_of_sse_are_streams_that_say_why() {
    let s = start(&["--public", "t/**", "--max-connections-per-ip", "2"]);
    let _a = s.client.sse(&["t/a"], None).await.unwrap();
    let _b = s.client.sse(&["t/a"], None).await.unwrap();
    let addr = s.addr;
    let (st, text) = tokio::task::spawn_blocking(move || {
        raw_get(addr, "/v1/sse?topic=t/a", b"", Duration::from_secs(5))
    })
    .await
    .unwrap();
    assert_eq!(st, 200, "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{text}"
    );
    let retry: u64 = text[text.find("retry: ").unwrap() + 7..]
        .split('\n')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // The Retry-After (1 s) with ±25 % jitter, never below the usual 2 s.
    assert!((1500..=2500).contains(&retry), "{retry}");
    assert!(
        text.contains("event: herald.disconnect\ndata: {\"reason\":\"rate_limited\"}\n\n"),
        "{text}"
    );
    // 401 stays 401: retrying cannot help.
    let (st, _) = tokio::task::spawn_blocking(move || {
        raw_get(addr, "/v1/sse?topic=users/x", b"", Duration::from_secs(5))
    })
    .await
    .unwrap();
    assert_eq!(st, 401);
    // Other endpoints keep 429 with Retry-After.
    let (st, text) = tokio::task::spawn_blocking(move || {
        raw_get(
            addr,
            "/v1/poll?topic=t/a&timeout=0",
            b"",
            Duration::from_secs(5),
        )
    })
    .await
    .unwrap();
    assert_eq!(st, 429, "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_is_jittered_per_connection() {
    let s = start(&["--public", "t/**"]);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let mut stream = s.client.sse(&["t/j"], None).await.unwrap();
        loop {
            match stream.next_item().await.unwrap().unwrap() {
                herald_client::SseItem::Retry(ms) => {
                    assert!((1500..=2500).contains(&ms), "{ms}");
                    seen.insert(ms);
                    break;
                }
                _ => continue,
            }
        }
    }
    assert!(
        seen.len() >= 5,
        "20 streams share too few retry values: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_spreads_stream_ends_over_the_drain_window() {
    let s = start(&["--public", "t/**", "--shutdown-drain", "2s"]);
    let mut ends = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let mut stream = s.client.sse(&["t/d"], None).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut last = None;
            while let Ok(Ok(Some(e))) = tokio::time::timeout(WAIT, stream.next_event()).await {
                last = Some(e);
            }
            (Instant::now(), last)
        }));
    }
    let mut ws = s.client.ws().await.unwrap();
    ws.subscribe("t/d", None).await.unwrap();
    assert_eq!(ws.next_json().await.unwrap().unwrap()["type"], "subscribed");
    let stopped = Instant::now();
    let pid = s.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    for t in tasks {
        let (at, last) = t.await.unwrap();
        let last = last.expect("a disconnect event");
        assert_eq!(
            (last.event.as_str(), last.data.as_str()),
            ("herald.disconnect", r#"{"reason":"shutdown"}"#)
        );
        ends.push(at.duration_since(stopped));
    }
    let v = tokio::time::timeout(WAIT, ws.next_of_type("close"))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(v["code"], 1000);
    ends.sort();
    let spread = *ends.last().unwrap() - ends[0];
    assert!(
        spread >= Duration::from_millis(500),
        "30 streams ended within {spread:?}: {ends:?}"
    );
    assert!(*ends.last().unwrap() <= Duration::from_secs(5), "{ends:?}");
}

// ---- Client identity behind a proxy ----------------------------------------

/// Opens `GET /v1/sse?topic=TOPIC` over a raw socket with one extra head
/// line, and reads until the stream's preamble or a refusal has arrived.
fn hold_sse(addr: std::net::SocketAddr, topic: &str, extra: &str) -> (TcpStream, String) {
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.write_all(
        format!("GET /v1/sse?topic={topic} HTTP/1.1\r\nHost: x\r\n{extra}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 2048];
    while !text.contains("id: ") && !text.contains("herald.disconnect") {
        let n = sock.read(&mut buf).unwrap();
        assert!(n > 0, "{text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    (sock, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_limits_see_through_trusted_proxies_only() {
    let addr_of = |s: &Server| s.addr;
    // Behind a trusted proxy (loopback here), each forwarded client has its own allowance.
    let s = start(&[
        "--public",
        "t/**",
        "--max-connections-per-ip",
        "1",
        "--trusted-proxy",
        "127.0.0.0/8",
    ]);
    let addr = addr_of(&s);
    let hold = move |xff: &'static str| hold_sse(addr, "t/p", &format!("X-Forwarded-For: {xff}"));
    let (_a, a) = tokio::task::spawn_blocking(move || hold("203.0.113.1"))
        .await
        .unwrap();
    assert!(!a.contains("herald.disconnect"), "{a}");
    let (_b, b) = tokio::task::spawn_blocking(move || hold("203.0.113.2"))
        .await
        .unwrap();
    assert!(
        !b.contains("herald.disconnect"),
        "another client behind the proxy: {b}"
    );
    let (_c, c) = tokio::task::spawn_blocking(move || hold("203.0.113.1"))
        .await
        .unwrap();
    assert!(c.contains("rate_limited"), "the same client again: {c}");
    // A forged entry before the proxy's own does not buy a new allowance.
    let (_d, d) = tokio::task::spawn_blocking(move || hold("198.51.100.9, 203.0.113.2"))
        .await
        .unwrap();
    assert!(d.contains("rate_limited"), "{d}");
    drop(s);
    // From an untrusted peer the header is ignored: one allowance for the peer.
    let s = start(&["--public", "t/**", "--max-connections-per-ip", "1"]);
    let addr = addr_of(&s);
    let hold2 = move |xff: &'static str| hold_sse(addr, "t/p", &format!("X-Forwarded-For: {xff}"));
    let (_a, a) = tokio::task::spawn_blocking(move || hold2("203.0.113.1"))
        .await
        .unwrap();
    assert!(!a.contains("herald.disconnect"), "{a}");
    let (_b, b) = tokio::task::spawn_blocking(move || hold2("203.0.113.2"))
        .await
        .unwrap();
    assert!(b.contains("rate_limited"), "{b}");
    // A bad --trusted-proxy refuses to start, naming the value.
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "serve",
            "--engine",
            "memory",
            "--listen",
            "127.0.0.1:0",
            "--trusted-proxy",
            "10.0.0.0/33",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--trusted-proxy"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = &s.base;
}

// ---- WebSocket abuse -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_that_keeps_erring_is_closed_with_1008() {
    let s = start(&["--public", "t/**"]);
    // The example: a flood of malformed messages, each answered until now.
    let mut ws = s.client.ws().await.unwrap();
    for i in 0..2_000 {
        if ws
            .send_json(&json!(format!("not a message {i}")))
            .await
            .is_err()
        {
            break; // closed under us: what we want
        }
    }
    let mut errors = 0;
    let close = loop {
        let v = tokio::time::timeout(WAIT, ws.next_json())
            .await
            .expect("an answer")
            .unwrap()
            .expect("a close frame before the end");
        match v["type"].as_str() {
            Some("error") => errors += 1,
            Some("close") => break v,
            _ => panic!("{v}"),
        }
    };
    assert_eq!(
        (close["code"].as_u64(), close["reason"].as_str()),
        (Some(1008), Some("too many errors"))
    );
    assert!(errors <= 25, "{errors} errors answered before the close");
    // Valid messages over the rate are refused as well, and count as errors.
    let mut ws = s.client.ws().await.unwrap();
    for _ in 0..1_000 {
        if ws
            .send_json(&json!({"type": "unsubscribe", "topic": "t/x"}))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut answered = 0;
    let mut limited = 0;
    let close = loop {
        let v = tokio::time::timeout(WAIT, ws.next_json())
            .await
            .expect("an answer")
            .unwrap()
            .expect("open");
        match (v["type"].as_str(), v["code"].as_str()) {
            (Some("unsubscribed"), _) => answered += 1,
            (Some("error"), Some("rate_limited")) => limited += 1,
            (Some("close"), _) => break v,
            _ => panic!("{v}"),
        }
    };
    assert_eq!(close["code"], 1008);
    assert!(
        (100..=400).contains(&answered),
        "{answered} answered at 100/s with a burst of 200"
    );
    assert!(limited >= 1, "{limited}");
    // A client within the limits is not affected.
    let mut ok = s
        .client
        .ws_with(&[("authorization", &format!("Bearer {KEY}"))], "")
        .await
        .unwrap();
    for i in 0..50 {
        ok.send_json(&json!({"type": "publish", "topic": "t/ok", "data": i}))
            .await
            .unwrap();
        assert_eq!(ok.next_json().await.unwrap().unwrap()["type"], "published");
    }
}

// ---- What a second attack found ------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_attack_findings_stay_fixed() {
    let s = start(&[
        "--trusted-proxy",
        "127.0.0.1/32",
        "--max-connections-per-ip",
        "1",
    ]);
    let now = herald_auth::now();
    // A generation's stream is private to its creator, whatever wildcard a
    // token (or --public) holds.
    let alice = jwt::sign(
        &jwt::Claims {
            sub: Some("alice".into()),
            exp: now + 120,
            iat: Some(now),
            nbf: None,
            herald: jwt::HeraldClaim {
                llm: true,
                ..Default::default()
            },
        },
        SECRET.as_bytes(),
        false,
        None,
    )
    .unwrap();
    let r = s
        .client
        .clone()
        .with_token(alice.clone())
        .request(
            http::Method::POST,
            "/v1/llm/chat",
            &[("content-type", "application/json")],
            json!({"messages": [{"role": "user", "content": "private [tokens:3]"}]})
                .to_string()
                .into(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    use http_body_util::BodyExt;
    let v: serde_json::Value =
        serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let topic = v["topic"].as_str().unwrap().to_owned();
    for pattern in ["**", "*/*", "llm/*"] {
        let mallory = token_for("mallory", &[pattern], herald_auth::now(), 60);
        let st = s
            .client
            .clone()
            .with_token(mallory)
            .request(
                http::Method::GET,
                &format!("/v1/poll?topic={topic}&timeout=0"),
                &[],
                bytes::Bytes::new(),
            )
            .await
            .unwrap()
            .status();
        assert_eq!(st, 403, "a {pattern} grant read another user's generation");
    }
    let st = s
        .client
        .clone()
        .with_token(alice)
        .request(
            http::Method::GET,
            &format!("/v1/poll?topic={topic}&timeout=0"),
            &[],
            bytes::Bytes::new(),
        )
        .await
        .unwrap()
        .status();
    assert_eq!(st, 200, "its creator reads it");

    // Behind a trusted proxy only X-Forwarded-For (the default header) is
    // read: a Forwarded header the proxy passed through buys nothing.
    let addr = s.addr;
    let open_from = move |forwarded: &'static str| {
        hold_sse(
            addr,
            "news/p",
            &format!("Forwarded: for={forwarded}\r\nX-Forwarded-For: 7.7.7.8"),
        )
    };
    let (_a, a) = tokio::task::spawn_blocking(move || open_from("8.8.8.1"))
        .await
        .unwrap();
    assert!(!a.contains("herald.disconnect"), "{a}");
    let (_b, b) = tokio::task::spawn_blocking(move || open_from("8.8.8.2"))
        .await
        .unwrap();
    assert!(b.contains("rate_limited"), "{b}");

    // A cookie exchanged for a one-time token from another site's form: refused.
    let cookie = format!(
        "herald_token={}",
        token_for("alice", &[], herald_auth::now(), 60)
    );
    let r = s
        .client
        .request(
            http::Method::POST,
            "/v1/tokens",
            &[
                ("cookie", &cookie),
                ("origin", "https://evil.example"),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // From the page's own origin it works.
    let own = format!("http://{}", s.addr);
    let r = s
        .client
        .request(
            http::Method::POST,
            "/v1/tokens",
            &[
                ("cookie", &cookie),
                ("origin", &own),
                ("host", &s.addr.to_string()),
            ],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A publisher key never becomes a URL credential.
    let r = s
        .client
        .request(
            http::Method::POST,
            "/v1/tokens",
            &[("authorization", &format!("Bearer {KEY}"))],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Cursors: `since` decodes or is refused; a cursor of another topic is refused.
    let other = publish(&s, "news/other", json!(1)).await;
    for path in [
        "/v1/poll?topic=news/a&timeout=0&since=zzz".to_string(),
        "/v1/sse?topic=news/a&since=earliest".to_string(),
        format!("/v1/poll?topic=news/a&timeout=0&cursor={other}"),
        format!("/v1/sse?topic=news/a&last_event_id={other}"),
    ] {
        let (st, text) =
            tokio::task::spawn_blocking(move || raw_get(addr, &path, b"", Duration::from_secs(2)))
                .await
                .unwrap();
        assert_eq!(st, 400, "{text}");
        assert!(text.contains("invalid_cursor"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_with_narrower_grants_ends_the_subscriptions_it_no_longer_allows() {
    let s = start(&[]);
    let now = herald_auth::now();
    let mut ws = s
        .client
        .ws_with(
            &[(
                "authorization",
                &format!(
                    "Bearer {}",
                    token_for("alice", &["secret/**", "users/{sub}/**"], now, 60)
                ),
            )],
            "",
        )
        .await
        .unwrap();
    ws.subscribe("secret/plans", None).await.unwrap();
    assert_eq!(ws.next_json().await.unwrap().unwrap()["type"], "subscribed");
    ws.subscribe("users/alice/inbox", None).await.unwrap();
    assert_eq!(ws.next_json().await.unwrap().unwrap()["type"], "subscribed");
    let narrow = token_for("alice", &["users/{sub}/**"], now, 60);
    ws.send_json(&json!({"type": "auth", "token": narrow}))
        .await
        .unwrap();
    assert_eq!(
        ws.next_json().await.unwrap().unwrap()["type"],
        "authenticated"
    );
    let v = ws.next_json().await.unwrap().unwrap();
    assert_eq!(
        (
            v["type"].as_str(),
            v["topic"].as_str(),
            v["reason"].as_str()
        ),
        (
            Some("unsubscribed"),
            Some("secret/plans"),
            Some("forbidden")
        ),
        "{v}"
    );
    publish(&s, "secret/plans", json!("revoked")).await;
    publish(&s, "users/alice/inbox", json!("still mine")).await;
    let v = tokio::time::timeout(WAIT, ws.next_json())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (v["topic"].as_str(), v["data"].as_str()),
        (Some("users/alice/inbox"), Some("still mine")),
        "{v}"
    );
}
