//! LLM streams through the relay, against a real local OpenAI-compatible
//! server (the offline model: exact wire format, awkward chunking, error,
//! drop, stall and slow cases): resume on every transport, two viewers,
//! cancel, upstream errors, the OpenAI-compatible endpoint, auth, per-user
//! generation limits, and an upstream that echoes the API key (a fake on a
//! loopback port: the real upstream costs money) which must reach no client,
//! topic or log.

mod spawn;
mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use herald_auth::{jwt, Auth, AuthConfig};
use herald_core::{Hub, HubConfig};
use herald_http::HttpConfig;
use herald_llm::offline::{tokens_for, OfflineModel};
use herald_llm::{LlmConfig, Relay, Upstream};
use serde_json::{json, Value};
use support::transport::{Got, Kind, Sub};

const KEY: &str = "sk-test-upstream-key-do-not-leak-0123";
const WAIT: Duration = Duration::from_secs(10);

struct Llm {
    client: herald_client::Client,
    model: OfflineModel,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start_with(
    http: HttpConfig,
    llm: LlmConfig,
    model_key: Option<&str>,
    relay_key: Option<&str>,
) -> Llm {
    let model = OfflineModel {
        token_delay: Duration::from_millis(15),
        api_key: model_key.map(str::to_owned),
        ..Default::default()
    };
    let base = herald_llm::offline::spawn(model.clone()).await.unwrap();
    let hub = Hub::memory(HubConfig::default());
    let relay = Relay::new(
        hub.clone(),
        http.auth.clone(),
        Upstream::new(&base, relay_key.map(str::to_owned)).unwrap(),
        llm,
    );
    let routes = herald_llm::http::router(relay, Arc::new(http.clone()));
    let router = herald_http::router_with(hub.clone(), http, routes);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        herald_server::serve(listener, router, hub, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Llm {
        client: herald_client::Client::new(&format!("http://{addr}")).unwrap(),
        model,
        _stop: tx,
    }
}

async fn start() -> Llm {
    start_with(
        HttpConfig::default(),
        LlmConfig::default(),
        Some(KEY),
        Some(KEY),
    )
    .await
}

async fn post(
    client: &herald_client::Client,
    path: &str,
    body: Value,
) -> (u16, Value, http::HeaderMap) {
    let r = client
        .request(
            http::Method::POST,
            path,
            &[("content-type", "application/json")],
            body.to_string().into(),
        )
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    use http_body_util::BodyExt;
    let bytes = r.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        headers,
    )
}

/// A token for `sub` on `secret`, publishing to `publish`, with or without the `llm` claim.
fn signed(secret: &[u8], sub: &str, publish: &[&str], llm: bool) -> String {
    let now = herald_auth::now();
    jwt::sign(
        &jwt::Claims {
            sub: Some(sub.into()),
            exp: now + 120,
            iat: Some(now),
            nbf: None,
            herald: jwt::HeraldClaim {
                subscribe: vec![],
                publish: publish.iter().map(|s| s.to_string()).collect(),
                llm,
            },
        },
        secret,
        false,
        None,
    )
    .unwrap()
}

fn jwt_http(secret: &[u8]) -> HttpConfig {
    HttpConfig {
        auth: Arc::new(
            Auth::new(AuthConfig {
                hs256_secret: Some(secret.to_vec()),
                ..AuthConfig::default()
            })
            .unwrap(),
        ),
        ..HttpConfig::default()
    }
}

async fn generate(client: &herald_client::Client, prompt: &str) -> Value {
    let (st, v, _) = post(
        client,
        "/v1/llm/chat",
        json!({"messages": [{"role": "user", "content": prompt}]}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    v
}

/// Reads a generation's events until `done` or `error`; returns the text and the final event.
async fn read_to_end(sub: &mut Sub) -> (String, Got) {
    let mut text = String::new();
    loop {
        let g = sub.next(WAIT).await.expect("the stream stalled");
        match g.event.as_str() {
            "token" => text.push_str(
                serde_json::from_str::<Value>(&g.data).unwrap()["content"]
                    .as_str()
                    .unwrap(),
            ),
            "done" | "error" => return (text, g),
            other => panic!("unexpected event {other}: {g:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_mid_generation_on_every_transport() {
    let s = start().await;
    for kind in [Kind::Sse, Kind::Ws, Kind::Poll] {
        let prompt = format!("Tell me about {kind:?} [tokens:80]");
        let started = generate(&s.client, &prompt).await;
        let topic = started["topic"].as_str().unwrap();
        let mut sub = Sub::open(
            &s.client,
            kind,
            &[topic],
            Some(started["cursor"].as_str().unwrap()),
        )
        .await
        .unwrap();
        let mut text = String::new();
        for _ in 0..4 {
            let g = sub.next(WAIT).await.unwrap();
            assert_eq!(g.event, "token");
            text.push_str(
                serde_json::from_str::<Value>(&g.data).unwrap()["content"]
                    .as_str()
                    .unwrap(),
            );
        }
        // "Reload": drop the connection mid-generation, come back with the cursor.
        let token = sub.resume_token();
        drop(sub);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut sub = Sub::open(&s.client, kind, &[topic], Some(&token))
            .await
            .unwrap();
        let (rest, end) = read_to_end(&mut sub).await;
        text.push_str(&rest);
        assert_eq!(
            text,
            tokens_for(&prompt, 80).concat(),
            "{kind:?}: lost or duplicated tokens"
        );
        assert_eq!(end.event, "done");
        let done: Value = serde_json::from_str(&end.data).unwrap();
        assert_eq!(done["finish_reason"], "stop");
        assert_eq!(done["usage"]["completion_tokens"], 80);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_viewers_and_a_late_one_see_the_same_answer() {
    let s = start().await;
    let prompt = "shared answer [tokens:50]";
    let started = generate(&s.client, prompt).await;
    let topic = started["topic"].as_str().unwrap().to_owned();
    let cursor = started["cursor"].as_str().unwrap().to_owned();
    let mut a = Sub::open(&s.client, Kind::Sse, &[&topic], Some(&cursor))
        .await
        .unwrap();
    let mut b = Sub::open(&s.client, Kind::Ws, &[&topic], Some(&cursor))
        .await
        .unwrap();
    let (ta, _) = read_to_end(&mut a).await;
    let (tb, _) = read_to_end(&mut b).await;
    // Nobody watching is fine too: a viewer arriving after the end reads it all.
    let mut late = Sub::open(&s.client, Kind::Poll, &[&topic], Some(&cursor))
        .await
        .unwrap();
    let (tl, _) = read_to_end(&mut late).await;
    let want = tokens_for(prompt, 50).concat();
    assert_eq!(
        (ta.as_str(), tb.as_str(), tl.as_str()),
        (want.as_str(), want.as_str(), want.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_upstream_request() {
    let s = start().await;
    let started = generate(&s.client, "a long one [tokens:500] [slow:100]").await;
    let (topic, id) = (
        started["topic"].as_str().unwrap(),
        started["id"].as_str().unwrap(),
    );
    let mut sub = Sub::open(
        &s.client,
        Kind::Sse,
        &[topic],
        Some(started["cursor"].as_str().unwrap()),
    )
    .await
    .unwrap();
    sub.next(WAIT).await.unwrap();
    assert_eq!(s.model.active.load(Ordering::Acquire), 1);
    let (st, v, _) = post(&s.client, &format!("/v1/llm/chat/{id}/cancel"), json!({})).await;
    assert_eq!((st, v["cancelled"].as_bool()), (200, Some(true)));
    let (_, end) = read_to_end(&mut sub).await;
    assert_eq!(end.event, "done");
    assert!(end.data.contains("cancelled"), "{}", end.data);
    for _ in 0..100 {
        if s.model.active.load(Ordering::Acquire) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        s.model.active.load(Ordering::Acquire),
        0,
        "the upstream request is still running"
    );
    let (st, _, _) = post(&s.client, "/v1/llm/chat/unknown/cancel", json!({})).await;
    assert_eq!(st, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_become_error_events() {
    let llm = LlmConfig {
        idle_timeout: Duration::from_millis(600),
        ..LlmConfig::default()
    };
    let s = start_with(HttpConfig::default(), llm, Some(KEY), Some(KEY)).await;
    for (prompt, needle) in [
        ("[error-after:5] [tokens:20]", "failed mid-stream"),
        ("[drop-after:5] [tokens:20]", "upstream"),
        ("[stall-after:3] [tokens:20]", "idle timeout"),
    ] {
        let started = generate(&s.client, prompt).await;
        let mut sub = Sub::open(
            &s.client,
            Kind::Sse,
            &[started["topic"].as_str().unwrap()],
            Some(started["cursor"].as_str().unwrap()),
        )
        .await
        .unwrap();
        let (text, end) = read_to_end(&mut sub).await;
        assert_eq!(end.event, "error", "{prompt}");
        assert!(end.data.contains(needle), "{prompt}: {}", end.data);
        assert!(text.len() < tokens_for(prompt, 20).concat().len());
    }
    // A wrong key: the upstream's 401 is surfaced, the key itself never.
    let s = start_with(
        HttpConfig::default(),
        LlmConfig::default(),
        Some(KEY),
        Some("sk-wrong-key-0000"),
    )
    .await;
    let started = generate(&s.client, "hello").await;
    let mut sub = Sub::open(
        &s.client,
        Kind::Poll,
        &[started["topic"].as_str().unwrap()],
        Some(started["cursor"].as_str().unwrap()),
    )
    .await
    .unwrap();
    let (_, end) = read_to_end(&mut sub).await;
    assert_eq!(end.event, "error");
    assert!(end.data.contains("401"), "{}", end.data);
    assert!(!end.data.contains("sk-wrong-key"));
    let (st, v, _) = post(
        &s.client,
        "/v1/chat/completions",
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(st, 401);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Incorrect API key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_compatible_endpoint_streams_chunks_and_records_the_stream() {
    let s = start().await;
    let prompt = "compat [tokens:30]";
    let r = s
        .client
        .request(
            http::Method::POST,
            "/v1/chat/completions",
            &[("content-type", "application/json")],
            json!({"model": "herald-offline", "stream": true, "messages": [{"role": "user", "content": prompt}]}).to_string().into(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let topic = r.headers()["x-herald-topic"].to_str().unwrap().to_owned();
    let cursor = r.headers()["x-herald-cursor"].to_str().unwrap().to_owned();
    assert!(topic.ends_with(r.headers()["x-herald-stream-id"].to_str().unwrap()));
    use http_body_util::BodyExt;
    let raw = r.into_body().collect().await.unwrap().to_bytes();
    let raw = String::from_utf8(raw.to_vec()).unwrap();
    // Exactly the OpenAI framing: `data: {chunk}` blocks, then `data: [DONE]`.
    let blocks: Vec<&str> = raw.split("\n\n").filter(|b| !b.is_empty()).collect();
    assert_eq!(*blocks.last().unwrap(), "data: [DONE]");
    let mut text = String::new();
    for b in &blocks[..blocks.len() - 1] {
        let payload = b.strip_prefix("data: ").unwrap_or_else(|| panic!("{b:?}"));
        let v: Value = serde_json::from_str(payload).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    let want = tokens_for(prompt, 30).concat();
    assert_eq!(text, want);
    // The same answer, resumable from the topic.
    let mut sub = Sub::open(&s.client, Kind::Ws, &[&topic], Some(&cursor))
        .await
        .unwrap();
    assert_eq!(read_to_end(&mut sub).await.0, want);
    // Non-streaming requests get one chat.completion.
    let (st, v, _) = post(
        &s.client,
        "/v1/chat/completions",
        json!({"stream": false, "messages": [{"role": "user", "content": prompt}]}),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], want);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // Bad requests are refused with OpenAI-shaped errors.
    let (st, v, _) = post(&s.client, "/v1/chat/completions", json!({"model": "m"})).await;
    assert_eq!(st, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("messages"));
}

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

/// The official `openai` Python SDK (installed by scripts/test.sh) streams
/// through Herald's OpenAI-compatible endpoint and reassembles the text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_python_sdk_streams_through_herald() {
    let s = start().await;
    // Chunks spread over several `data:` lines, and CRLF in the answer.
    let prompt = "python sdk [tokens:45] [multiline] [crlf]";
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/openai_stream.py");
    let base = format!("{}/v1", s.client.base());
    let out = tokio::process::Command::new("python3")
        .args([script, &base, prompt])
        .output()
        .await
        .expect("python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the openai SDK run failed (scripts/test.sh installs it with pip):\n{stderr}"
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let (text, rest) = stdout.split_once("\n---\n").unwrap();
    let want = tokens_for(prompt, 45).concat().replace('\n', "\r\n");
    assert!(want.contains("\r\n"));
    assert_eq!(text, want);
    let mut lines = rest.lines();
    assert_eq!(lines.next(), Some("stop"));
    assert!(lines.next().is_some_and(|id| id.len() > 10), "{rest}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_line_data_and_crlf_survive_the_openai_compatible_stream() {
    let s = start().await;
    // The upstream spreads each chunk's JSON over several `data:` lines,
    // and the answer holds CRLF line breaks.
    let prompt = "lines [tokens:40] [multiline] [crlf]";
    let want = tokens_for(prompt, 40).concat().replace('\n', "\r\n");
    assert!(want.contains("\r\n"));
    let r = s
        .client
        .request(
            http::Method::POST,
            "/v1/chat/completions",
            &[("content-type", "application/json")],
            json!({"stream": true, "messages": [{"role": "user", "content": prompt}]})
                .to_string()
                .into(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let topic = r.headers()["x-herald-topic"].to_str().unwrap().to_owned();
    let cursor = r.headers()["x-herald-cursor"].to_str().unwrap().to_owned();
    use http_body_util::BodyExt;
    let raw = r.into_body().collect().await.unwrap().to_bytes();
    // Every line is a `data:` field, a comment or the blank line ending an event.
    let body = std::str::from_utf8(&raw).unwrap();
    for line in body.split('\n') {
        assert!(
            line.is_empty() || line.starts_with("data: ") || line.starts_with(':'),
            "not an event-stream line: {line:?}"
        );
    }
    // The WHATWG parser joins each event's lines back into the chunk's JSON.
    let mut parser = herald_client::SseParser::new();
    let (mut text, mut multi_line, mut done) = (String::new(), 0, false);
    for item in parser.feed(&raw) {
        let herald_client::SseItem::Event(e) = item else {
            continue;
        };
        if e.data == "[DONE]" {
            done = true;
            continue;
        }
        multi_line += usize::from(e.data.contains('\n'));
        let v: Value = serde_json::from_str(&e.data).unwrap_or_else(|e2| panic!("{e2}: {e:?}"));
        text.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
    }
    assert!(done);
    assert!(multi_line >= 40, "{multi_line} multi-line events");
    assert_eq!(text, want);
    // The recorded stream holds the same text, CRLF included, on every transport.
    for kind in [Kind::Sse, Kind::Ws, Kind::Poll] {
        let mut sub = Sub::open(&s.client, kind, &[&topic], Some(&cursor))
            .await
            .unwrap();
        assert_eq!(read_to_end(&mut sub).await.0, want, "{kind:?}");
    }
}

/// The upstream API key of the leak test: what must appear nowhere.
const LEAK_KEY: &str = "sk-leaktest-Key_0123456789abcdefXYZ";

fn leaks(text: &str) -> bool {
    text.contains(LEAK_KEY) || text.contains("Key_0123456789abcdef")
}

/// A fake OpenAI-compatible upstream (exact wire format) that echoes the
/// request's credentials back, as misconfigured gateways do: `[echo-status]`
/// in a 401 JSON error, `[echo-text]` in a 502 text body, `[echo-stream]`
/// in an error event after a first chunk. Counts requests that carried the
/// key, to show the relay did send it. Returns its base URL.
async fn echoing_upstream(with_key: Arc<std::sync::atomic::AtomicUsize>) -> String {
    use axum::response::IntoResponse;
    async fn chat(
        axum::extract::State(with_key): axum::extract::State<Arc<std::sync::atomic::AtomicUsize>>,
        headers: http::HeaderMap,
        body: bytes::Bytes,
    ) -> axum::response::Response {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if auth == format!("Bearer {LEAK_KEY}") {
            with_key.fetch_add(1, Ordering::AcqRel);
        }
        let req: Value = serde_json::from_slice(&body).unwrap_or_default();
        let prompt = req["messages"][0]["content"].as_str().unwrap_or("");
        if prompt.contains("[echo-status]") {
            let err = json!({"error": {
                "message": format!("Invalid Authorization header: {auth}"),
                "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}});
            return (http::StatusCode::UNAUTHORIZED, axum::Json(err)).into_response();
        }
        if prompt.contains("[echo-text]") {
            let text = format!(
                "proxy error; the request was:\r\nauthorization: {auth}\r\nx-api-key: {LEAK_KEY}\r\napi-key={LEAK_KEY}\r\n"
            );
            return (http::StatusCode::BAD_GATEWAY, text).into_response();
        }
        let chunk = json!({"id": "chatcmpl-echo", "object": "chat.completion.chunk", "created": 1,
            "model": "echo", "system_fingerprint": null,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": "partial"},
                         "logprobs": null, "finish_reason": null}]});
        let err = json!({"error": {
            "message": format!("backend refused the request with headers {{\"Authorization\": \"{auth}\", \"api-key\": \"{LEAK_KEY}\"}}"),
            "type": "server_error", "param": null, "code": null}});
        (
            [("content-type", "text/event-stream")],
            format!("data: {chunk}\n\ndata: {err}\n\n"),
        )
            .into_response()
    }
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(chat))
        .with_state(with_key);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/v1")
}

/// An upstream echoing the API key: the key reaches no HTTP answer, no event
/// of the generation on any transport, and no line of the server's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_echoing_the_api_key_leaks_it_nowhere() {
    use std::io::Read;
    let with_key = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let base = echoing_upstream(with_key.clone()).await;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--engine",
        "memory",
        "--llm-upstream",
        &base,
    ])
    .env("HERALD_LLM_API_KEY", LEAK_KEY)
    .env("HERALD_LOG", "debug")
    .stderr(std::process::Stdio::piped());
    let (mut child, url) = spawn::listening(cmd);
    let mut stderr = child.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let client = herald_client::Client::new(&url).unwrap();
    for (prompt, status) in [
        ("[echo-status]", 401),
        ("[echo-text]", 502),
        ("[echo-stream]", 200),
    ] {
        let messages = json!([{"role": "user", "content": prompt}]);
        // The OpenAI-compatible endpoint, streaming and not.
        for stream in [true, false] {
            let r = client
                .request(
                    http::Method::POST,
                    "/v1/chat/completions",
                    &[("content-type", "application/json")],
                    json!({"stream": stream, "messages": messages})
                        .to_string()
                        .into(),
                )
                .await
                .unwrap();
            let got = r.status().as_u16();
            let headers = format!("{:?}", r.headers());
            use http_body_util::BodyExt;
            let body = r.into_body().collect().await.unwrap().to_bytes();
            let body = String::from_utf8_lossy(&body).into_owned();
            assert!(!leaks(&body) && !leaks(&headers), "{prompt}: {body}");
            if stream || status != 200 {
                assert_eq!(got, status, "{prompt} stream={stream}: {body}");
            } else {
                // The error came mid-stream: a non-streaming answer is a 502.
                assert_eq!(got, 502, "{prompt}: {body}");
            }
            assert!(body.contains("[redacted]"), "{prompt}: {body}");
        }
        // The relay endpoint: the generation's events on every transport.
        let started = generate(&client, prompt).await;
        let topic = started["topic"].as_str().unwrap();
        let cursor = started["cursor"].as_str().unwrap();
        for kind in [Kind::Sse, Kind::Ws, Kind::Poll] {
            let mut sub = Sub::open(&client, kind, &[topic], Some(cursor))
                .await
                .unwrap();
            let (text, end) = read_to_end(&mut sub).await;
            assert_eq!(end.event, "error", "{prompt} {kind:?}");
            assert!(
                !leaks(&text) && !leaks(&end.data),
                "{prompt} {kind:?}: {}",
                end.data
            );
            assert!(end.data.contains("[redacted]"), "{}", end.data);
        }
    }
    assert!(
        with_key.load(Ordering::Acquire) >= 9,
        "the relay did not send its key upstream"
    );
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let _ = child.wait();
    let logs = logs.join().unwrap();
    assert!(logs.contains("LLM relay"), "no logs captured: {logs}");
    assert!(!leaks(&logs), "the key reached the log:\n{logs}");
}

/// `--llm-public`: anyone may start generations, with no credential; without
/// it, the same request is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_public_lets_anyone_start_generations() {
    for public in [false, true] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_herald"));
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
        let (mut child, url) = spawn::listening(cmd);
        let anonymous = herald_client::Client::new(&url).unwrap();
        let (st, v, _) = post(
            &anonymous,
            "/v1/llm/chat",
            json!({"messages": [{"role": "user", "content": "hi [tokens:3]"}], "share": "everyone"}),
        )
        .await;
        let _ = child.kill();
        let _ = child.wait();
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
