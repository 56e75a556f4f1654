//! Client identity behind a proxy, WebSocket abuse, and what a second attack
//! found.

use super::*;

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
    let out = Command::new(process::BIN)
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
            info: None,
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
    // Cursors: `since` decodes (or names a starting point: `earliest`,
    // `latest`) or is refused; a cursor of another topic is refused.
    let other = publish(&s, "news/other", json!(1)).await;
    for path in [
        "/v1/poll?topic=news/a&timeout=0&since=zzz".to_string(),
        "/v1/sse?topic=news/a&since=zzz".to_string(),
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
