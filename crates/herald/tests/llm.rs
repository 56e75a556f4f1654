//! LLM streams through the relay, against a real local OpenAI-compatible
//! server (the offline model: exact wire format, awkward chunking, error,
//! drop, stall and slow cases): resume on every transport, two viewers,
//! cancel, upstream errors, the OpenAI-compatible endpoint, auth.

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
        herald_http::serve(listener, router, hub, async {
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
    let token = |sub: &str, publish: &[&str]| {
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
                },
            },
            secret,
            false,
            None,
        )
        .unwrap()
    };
    let alice = s.client.clone().with_token(token("alice", &["llm/*"]));
    let bob = s.client.clone().with_token(token("bob", &["llm/*"]));
    let carol = s.client.clone().with_token(token("carol", &[]));
    let body = json!({"messages": [{"role": "user", "content": "secret plans [tokens:5]"}]});
    // Starting needs publish rights on llm/*.
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
    let prompt = "python sdk [tokens:45]";
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
    assert_eq!(text, tokens_for(prompt, 45).concat());
    let mut lines = rest.lines();
    assert_eq!(lines.next(), Some("stop"));
    assert!(lines.next().is_some_and(|id| id.len() > 10), "{rest}");
}
