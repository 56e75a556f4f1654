//! Per-user shares of the one-time token pool (`POST /v1/tokens`): one user
//! issuing in a loop is answered 429 with `Retry-After` while other users
//! still get tokens; a full pool answers 503 `server_full`, never 401; a
//! redeemed or expired token gives its place back. On a real `herald serve`
//! (its flags set the limits), and on two nodes sharing a real
//! `redis-server`, where the per-user cap holds across nodes.

mod process;
#[path = "../../herald-http/tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use herald_auth::{jwt, Auth, AuthConfig};
use herald_client::Client;
use herald_core::HubConfig;
use herald_engine_redis::test_server::RedisServer;
use serde_json::Value;
use support::{quick_http, redis_engine, TestServer};

const SECRET: &str = "shares-test-secret-0123456789abcdef";

fn token(sub: &str) -> String {
    let now = herald_auth::now();
    jwt::sign(
        &jwt::Claims {
            sub: Some(sub.into()),
            exp: now + 300,
            iat: Some(now),
            nbf: None,
            herald: jwt::HeraldClaim {
                subscribe: vec!["users/{sub}/**".into()],
                ..Default::default()
            },
            info: None,
        },
        SECRET.as_bytes(),
        false,
        None,
    )
    .unwrap()
}

/// What `POST /v1/tokens` answered.
#[derive(Debug)]
struct Issued {
    status: u16,
    body: Value,
    retry_after: Option<u64>,
}

impl Issued {
    fn token(&self) -> &str {
        self.body["token"].as_str().expect("a token")
    }

    fn code(&self) -> Option<&str> {
        self.body["error"]["code"].as_str()
    }
}

async fn issue(client: &Client) -> Issued {
    let r = client
        .request(http::Method::POST, "/v1/tokens", &[], bytes::Bytes::new())
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    use http_body_util::BodyExt;
    let body = r.into_body().collect().await.unwrap().to_bytes();
    Issued {
        status,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        retry_after,
    }
}

/// Redeems a one-time token of `sub` with a long poll; returns the status.
async fn redeem(base: &Client, sub: &str, one_time: &str) -> u16 {
    base.request(
        http::Method::GET,
        &format!("/v1/poll?topic=users/{sub}/inbox&timeout=0&token={one_time}"),
        &[],
        bytes::Bytes::new(),
    )
    .await
    .unwrap()
    .status()
    .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_cannot_take_the_one_time_token_pool() {
    let mut cmd = std::process::Command::new(process::BIN);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--engine",
        "memory",
        "--jwt-secret",
        SECRET,
        "--one-time-token-ttl",
        "3s",
        "--one-time-token-max",
        "6",
        "--one-time-token-max-per-user",
        "3",
    ])
    .env("HERALD_LOG", "warn");
    let server = process::ServeProcess::spawn(cmd);
    let anonymous = server.client.clone();
    let alice = anonymous.clone().with_token(token("alice"));
    let bob = anonymous.clone().with_token(token("bob"));
    let carol = anonymous.clone().with_token(token("carol"));

    // Alice issues in a loop: her share, then 429 with the oldest token's remaining life.
    let mut mine = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..20 {
        let r = issue(&alice).await;
        match r.status {
            200 => mine.push(r.token().to_owned()),
            _ => refused.push(r),
        }
    }
    assert_eq!(mine.len(), 3);
    assert_eq!(refused.len(), 17);
    for r in &refused {
        assert_eq!((r.status, r.code()), (429, Some("rate_limited")), "{r:?}");
        assert!(r.retry_after.is_some_and(|s| (1..=3).contains(&s)), "{r:?}");
        assert!(r.body["error"]["message"].as_str().is_some(), "{r:?}");
    }
    // Bob still gets his.
    for _ in 0..3 {
        assert_eq!(issue(&bob).await.status, 200);
    }
    // Now the pool (6) is full: 503 server_full with Retry-After, never 401.
    let r = issue(&carol).await;
    assert_eq!((r.status, r.code()), (503, Some("server_full")), "{r:?}");
    assert!(r.retry_after.is_some_and(|s| (1..=3).contains(&s)), "{r:?}");
    // A redeemed token gives its place back, to alice and to the pool.
    assert_eq!(redeem(&anonymous, "alice", &mine[0]).await, 200);
    assert_eq!(redeem(&anonymous, "alice", &mine[0]).await, 401);
    assert_eq!(issue(&alice).await.status, 200);
    assert_eq!(issue(&alice).await.status, 429);
    // Expired tokens give theirs back too: past their 3 s (the wait is the
    // scenario).
    tokio::time::sleep(Duration::from_millis(3300)).await;
    for who in [&alice, &carol] {
        for _ in 0..3 {
            let r = issue(who).await;
            assert_eq!(r.status, 200, "{r:?}");
        }
    }
    assert_eq!(issue(&carol).await.status, 429);
    drop(server);
}

/// Two nodes on one Redis: the per-user cap counts tokens issued on either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_cap_holds_across_nodes_sharing_redis() {
    let redis = RedisServer::start();
    let hub_config = HubConfig::default();
    let node = || async {
        let engine = redis_engine(&redis, &hub_config).await;
        let mut auth = Auth::new(AuthConfig {
            hs256_secret: Some(SECRET.as_bytes().to_vec()),
            one_time_max_per_user: 3,
            ..AuthConfig::default()
        })
        .unwrap();
        auth.set_one_time_store(Arc::new(engine.one_time_tokens()));
        let http = herald_http::HttpConfig {
            auth: Arc::new(auth),
            ..quick_http()
        };
        TestServer::start_on(
            "127.0.0.1:0".parse().unwrap(),
            engine,
            hub_config.clone(),
            http,
        )
        .await
    };
    let a = node().await;
    let b = node().await;
    let alice_a = a.client.clone().with_token(token("alice"));
    let alice_b = b.client.clone().with_token(token("alice"));
    let bob_b = b.client.clone().with_token(token("bob"));

    let first = issue(&alice_a).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(issue(&alice_b).await.status, 200);
    assert_eq!(issue(&alice_a).await.status, 200);
    for client in [&alice_a, &alice_b] {
        let r = issue(client).await;
        assert_eq!((r.status, r.code()), (429, Some("rate_limited")), "{r:?}");
        assert!(
            r.retry_after.is_some_and(|s| (1..=60).contains(&s)),
            "{r:?}"
        );
    }
    // Another user is not affected.
    for _ in 0..3 {
        assert_eq!(issue(&bob_b).await.status, 200);
    }
    // Redeemed on node B, issued on node A: the place came back.
    assert_eq!(redeem(&b.client, "alice", first.token()).await, 200);
    assert_eq!(redeem(&a.client, "alice", first.token()).await, 401);
    assert_eq!(issue(&alice_a).await.status, 200);
    assert_eq!(issue(&alice_b).await.status, 429);
}

/// A one-time token that cannot be checked because Redis is down is a
/// temporary refusal, never a 401 that would make a browser give up: 503
/// `unavailable` on a poll, `200` + `herald.disconnect` `engine_unavailable`
/// on SSE, close 1013 on a WebSocket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_time_tokens_are_refused_for_later_while_redis_is_down() {
    use futures_util::StreamExt;
    let redis = RedisServer::start();
    let hub_config = HubConfig::default();
    let engine = redis_engine(&redis, &hub_config).await;
    let mut auth = Auth::new(AuthConfig {
        hs256_secret: Some(SECRET.as_bytes().to_vec()),
        ..AuthConfig::default()
    })
    .unwrap();
    auth.set_one_time_store(Arc::new(engine.one_time_tokens()));
    let http = herald_http::HttpConfig {
        auth: Arc::new(auth),
        ..quick_http()
    };
    let s = TestServer::start_on("127.0.0.1:0".parse().unwrap(), engine, hub_config, http).await;
    let alice = s.client.clone().with_token(token("alice"));
    let tokens: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            let r = issue(&alice).await;
            assert_eq!(r.status, 200, "{r:?}");
            v.push(r.token().to_owned());
        }
        v
    };
    redis.stop();

    let poll = s
        .client
        .request(
            http::Method::GET,
            &format!(
                "/v1/poll?topic=users/alice/inbox&timeout=0&token={}",
                tokens[0]
            ),
            &[],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(poll.status(), 503);
    assert!(poll.headers().contains_key("retry-after"));

    let sse = s
        .client
        .request(
            http::Method::GET,
            &format!("/v1/sse?topic=users/alice/inbox&token={}", tokens[1]),
            &[],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    use http_body_util::BodyExt;
    let body = tokio::time::timeout(Duration::from_secs(30), sse.into_body().collect())
        .await
        .expect("the refusal stream ends")
        .unwrap()
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("event: herald.disconnect\ndata: {\"reason\":\"engine_unavailable\"}"),
        "{text}"
    );

    let url = format!("ws://{}/v1/ws?token={}", s.addr, tokens[2]);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let close = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match ws.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => break frame,
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("a close frame")
    .expect("a close code");
    assert_eq!(u16::from(close.code), 1013, "{close:?}");
}
