//! Who may start, read and write generations: the creator unless shared,
//! publish rights on `llm/` topics, per-user generation slots,
//! `--llm-public`.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_is_readable_by_its_creator_unless_shared() {
    let secret = b"llm-auth-secret-0123456789abcdef0123";
    let http = HttpConfig {
        auth: Arc::new(
            Auth::new(AuthConfig {
                hs256_secret: Some(secret.to_vec()),
                ..AuthConfig::default()
            })
            .unwrap(),
        ),
        ..HttpConfig::default()
    };
    let s = start_with(http, LlmConfig::default(), None, None).await;
    let token = |sub: &str, publish: &[&str], llm: bool| signed(secret, sub, publish, llm);
    let alice = s.client.clone().with_token(token("alice", &[], true));
    let bob = s.client.clone().with_token(token("bob", &[], true));
    let carol = s.client.clone().with_token(token("carol", &[], false));
    let body = json!({"messages": [{"role": "user", "content": "secret plans [tokens:5]"}]});
    // Starting needs the `llm` claim.
    assert_eq!(post(&carol, "/v1/llm/chat", body.clone()).await.0, 403);
    assert_eq!(post(&s.client, "/v1/llm/chat", body.clone()).await.0, 401);
    let (st, mine, _) = post(&alice, "/v1/llm/chat", body.clone()).await;
    assert_eq!(st, 200);
    let topic = mine["topic"].as_str().unwrap();
    let cursor = mine["cursor"].as_str().unwrap();
    assert!(Sub::open(&alice, Kind::Sse, &[topic], Some(cursor))
        .await
        .is_ok());
    assert!(Sub::open(&bob, Kind::Sse, &[topic], Some(cursor))
        .await
        .is_err());
    assert!(Sub::open(&s.client, Kind::Poll, &[topic], Some(cursor))
        .await
        .is_err());
    // Only the creator cancels.
    let id = mine["id"].as_str().unwrap();
    assert_eq!(
        post(&bob, &format!("/v1/llm/chat/{id}/cancel"), json!({}))
            .await
            .0,
        403
    );
    // Shared with bob; shared with everyone.
    let mut shared = body.clone();
    shared["share"] = json!(["bob"]);
    let (_, v, _) = post(&alice, "/v1/llm/chat", shared).await;
    assert!(Sub::open(
        &bob,
        Kind::Ws,
        &[v["topic"].as_str().unwrap()],
        Some(v["cursor"].as_str().unwrap())
    )
    .await
    .is_ok());
    let mut public = body.clone();
    public["share"] = json!("everyone");
    let (_, v, _) = post(&alice, "/v1/llm/chat", public).await;
    let mut anon = Sub::open(
        &s.client,
        Kind::Sse,
        &[v["topic"].as_str().unwrap()],
        Some(v["cursor"].as_str().unwrap()),
    )
    .await
    .unwrap();
    assert_eq!(
        read_to_end(&mut anon).await.0,
        tokens_for("secret plans [tokens:5]", 5).concat()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_rights_on_llm_topics_neither_start_nor_forge_generations() {
    let secret = b"llm-forge-secret-0123456789abcdef0123";
    let s = start_with(jwt_http(secret), LlmConfig::default(), None, None).await;
    let alice = s
        .client
        .clone()
        .with_token(signed(secret, "alice", &[], true));
    let mallory =
        s.client
            .clone()
            .with_token(signed(secret, "mallory", &["llm/*", "llm/**"], false));
    let prompt = "alice's answer [tokens:30] [slow:30]";
    let body = json!({"messages": [{"role": "user", "content": prompt}]});
    // A publish grant on llm/* is not the right to start a generation.
    let (st, v, _) = post(&mallory, "/v1/llm/chat", body.clone()).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{v}"
    );
    let mut compat = body.clone();
    compat["stream"] = json!(true);
    assert_eq!(post(&mallory, "/v1/chat/completions", compat).await.0, 403);

    let (st, started, _) = post(&alice, "/v1/llm/chat", body).await;
    assert_eq!(st, 200, "{started}");
    let topic = started["topic"].as_str().unwrap();
    let cursor = started["cursor"].as_str().unwrap();
    let mut viewer = Sub::open(&alice, Kind::Sse, &[topic], Some(cursor))
        .await
        .unwrap();
    let mut ws = mallory.ws().await.unwrap();
    // Forged `token` and `done` events into alice's running generation:
    // refused over HTTP and over WebSocket.
    for (event, data) in [
        ("token", json!({"content": " FORGED"})),
        ("done", json!({"finish_reason": "stop", "usage": null})),
    ] {
        let forged = json!({"topic": topic, "event": event, "data": data});
        let (st, v) = mallory
            .publish_raw(forged.to_string(), "application/json")
            .await
            .unwrap();
        assert_eq!(
            (st.as_u16(), v["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "{v}"
        );
        let mut m = forged.clone();
        m["type"] = json!("publish");
        ws.send_json(&m).await.unwrap();
        let answer = tokio::time::timeout(WAIT, ws.next_json())
            .await
            .expect("no answer to a WebSocket publish")
            .unwrap()
            .expect("the WebSocket closed");
        assert_eq!(
            (answer["type"].as_str(), answer["code"].as_str()),
            (Some("error"), Some("forbidden")),
            "{answer}"
        );
    }
    // The viewer sees alice's answer, whole, and nothing else.
    let (text, end) = read_to_end(&mut viewer).await;
    assert_eq!(text, tokens_for(prompt, 30).concat());
    assert_eq!(end.event, "done");
    let done: Value = serde_json::from_str(&end.data).unwrap();
    assert_eq!(done["usage"]["completion_tokens"], 30, "{done}");
    assert!(viewer.next(Duration::from_millis(500)).await.is_none());
    let mut late = Sub::open(&alice, Kind::Poll, &[topic], Some(cursor))
        .await
        .unwrap();
    assert_eq!(
        read_to_end(&mut late).await.0,
        tokens_for(prompt, 30).concat()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_cannot_hold_every_generation_slot() {
    let secret = b"llm-share-secret-0123456789abcdef0123";
    let llm = LlmConfig {
        max_generations_per_user: 2,
        ..LlmConfig::default()
    };
    let s = start_with(jwt_http(secret), llm, None, None).await;
    let alice = s
        .client
        .clone()
        .with_token(signed(secret, "alice", &[], true));
    let bob = s
        .client
        .clone()
        .with_token(signed(secret, "bob", &[], true));
    let slow = json!({"messages": [{"role": "user", "content": "long [tokens:400] [slow:50]"}]});
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (st, v, _) = post(&alice, "/v1/llm/chat", slow.clone()).await;
        assert_eq!(st, 200, "{v}");
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    let retry_after = |h: &http::HeaderMap| {
        h.get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let (st, v, h) = post(&alice, "/v1/llm/chat", slow.clone()).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (429, Some("too_many_generations")),
        "{v}"
    );
    assert!(retry_after(&h).is_some_and(|s| s >= 1), "{h:?}");
    // The OpenAI-compatible endpoint counts the same share.
    let mut compat = slow.clone();
    compat["stream"] = json!(true);
    let (st, v, h) = post(&alice, "/v1/chat/completions", compat).await;
    assert_eq!(st, 429, "{v}");
    assert!(retry_after(&h).is_some_and(|s| s >= 1), "{h:?}");
    // Another user still starts generations.
    let (st, v, _) = post(
        &bob,
        "/v1/llm/chat",
        json!({"messages": [{"role": "user", "content": "bob [tokens:3]"}]}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    // Once one of alice's generations ends, she may start another.
    let (st, _, _) = post(
        &alice,
        &format!("/v1/llm/chat/{}/cancel", ids[0]),
        json!({}),
    )
    .await;
    assert_eq!(st, 200);
    let mut again = 0;
    for _ in 0..50 {
        again = post(&alice, "/v1/llm/chat", slow.clone()).await.0;
        if again == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(again, 200);
}

/// `--llm-public`: anyone may start generations, with no credential; without
/// it, the same request is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_public_lets_anyone_start_generations() {
    for public in [false, true] {
        let mut cmd = std::process::Command::new(process::BIN);
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--engine",
            "memory",
            "--jwt-secret",
            "llm-public-secret-0123456789abcdef",
            "--llm-offline-delay",
            "1ms",
        ])
        .env("HERALD_LOG", "warn");
        if public {
            cmd.arg("--llm-public");
        }
        let server = process::ServeProcess::spawn(cmd);
        let anonymous = server.client.clone();
        let (st, v, _) = post(
            &anonymous,
            "/v1/llm/chat",
            json!({"messages": [{"role": "user", "content": "hi [tokens:3]"}], "share": "everyone"}),
        )
        .await;
        drop(server);
        if public {
            assert_eq!(st, 200, "{v}");
            assert!(v["topic"].as_str().unwrap().starts_with("llm/"));
        } else {
            assert_eq!(
                (st, v["error"]["code"].as_str()),
                (401, Some("unauthorized")),
                "{v}"
            );
        }
    }
}
