//! LLM streams through the relay, against a real local OpenAI-compatible
//! server (the offline model: exact wire format, awkward chunking, error,
//! drop, stall and slow cases): resume on every transport, two viewers,
//! cancel, upstream errors, the OpenAI-compatible endpoint, auth, per-user
//! generation limits, and an upstream that echoes the API key (a fake on a
//! loopback port: the real upstream costs money) which must reach no client,
//! topic or log.

#[path = "../process/mod.rs"]
mod process;
#[path = "../../../herald-http/tests/support/mod.rs"]
mod support;

mod access;
mod leaks;
mod openai;
mod relay;

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
                admin: false,
            },
            info: None,
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
