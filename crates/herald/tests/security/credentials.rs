//! Credentials over time: streams end at their token's `exp`, WebSockets
//! refresh in band, URL tokens count their remaining lifetime, and a refresh
//! with narrower grants ends what it no longer allows.

use super::*;

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
    // The token lives no longer than the credential it was exchanged for.
    assert!(v["expires_in"].as_u64().is_some_and(|s| s <= 3), "{v}");
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
    // Past the old token's `exp` (the wait is the scenario): the refreshed
    // connection still gets events.
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
