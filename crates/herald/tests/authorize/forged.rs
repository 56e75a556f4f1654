//! Writes that must never land: relay topics written by anyone but the
//! relay, and an anonymous WebSocket publishing into a user's inbox.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_topics_are_written_only_by_the_relay() {
    let s = start(&[]);
    let now = herald_auth::now();
    let wide = jwt::sign(
        &jwt::Claims {
            sub: Some("mallory".into()),
            exp: now + 120,
            iat: Some(now),
            nbf: None,
            herald: jwt::HeraldClaim {
                subscribe: vec!["**".into()],
                publish: vec!["**".into(), "llm/*".into()],
                llm: true,
                admin: false,
            },
            info: None,
        },
        SECRET.as_bytes(),
        false,
        None,
    )
    .unwrap();
    // Another user's generation, and a watcher on it.
    let mut watcher = s
        .client
        .clone()
        .with_token(KEY)
        .sse(&["llm/victim"], None)
        .await
        .unwrap();
    let forged = json!({"topic": "llm/victim", "event": "token", "data": "forged"});
    for who in [wide.as_str(), KEY] {
        let r = send(
            &s,
            false,
            http::Method::POST,
            "/v1/publish",
            &[("authorization".into(), format!("Bearer {who}"))],
            Some(forged.clone()),
        )
        .await;
        assert_eq!(r.status(), 403);
    }
    let mut ws = s
        .client
        .ws_with(&[("authorization", &format!("Bearer {wide}"))], "")
        .await
        .unwrap();
    ws.send_json(
        &json!({"type": "publish", "topic": "llm/victim", "event": "done", "data": "x", "ref": 1}),
    )
    .await
    .unwrap();
    let v = tokio::time::timeout(WAIT, ws.next_json())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str(), v["ref"].as_u64()),
        (Some("error"), Some("forbidden"), Some(1)),
        "{v}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), watcher.next_event())
            .await
            .is_err(),
        "a forged event reached the generation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_websocket_publish_is_refused() {
    // The hole this table was extended for: an anonymous WebSocket on a
    // server with --jwt-secret publishing into a user's inbox.
    let s = start(&[]);
    let mut inbox = s
        .client
        .clone()
        .with_token(KEY)
        .sse(&[MINE], None)
        .await
        .unwrap();
    let mut ws = s.client.ws().await.unwrap();
    ws.send_json(&json!({"type": "publish", "topic": MINE, "data": "x"}))
        .await
        .unwrap();
    let v = tokio::time::timeout(WAIT, ws.next_json())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str()),
        (Some("error"), Some("unauthorized")),
        "{v}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), inbox.next_event())
            .await
            .is_err()
    );
}
