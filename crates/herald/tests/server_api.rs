//! The server API against the real `herald serve` binary (DESIGN.md, "Your
//! backend in the loop", "Server API"): who may call it, `POST
//! /v1/disconnect` closing a user's connections on every transport (and on
//! every node of a Redis-backed cluster), `GET /v1/topics`, `GET
//! /v1/connections`, and the matching `herald` subcommands.

mod process;

use std::process::{Command, Stdio};
use std::time::Duration;

use herald_auth::jwt;
use herald_client::{Client, ClientError};
use herald_engine_redis::test_server::RedisServer;
use process::ServeProcess;
use serde_json::{json, Value};

const SECRET: &str = "server-api-secret-0123456789abcdef012345";
const KEY: &str = "server-api-publisher-key-0123456789";
const WAIT: Duration = Duration::from_secs(5);

fn token(sub: &str, admin: bool) -> String {
    let now = herald_auth::now();
    let claims = jwt::Claims {
        sub: Some(sub.into()),
        exp: now + 300,
        iat: Some(now),
        nbf: None,
        herald: jwt::HeraldClaim {
            subscribe: vec!["users/{sub}/**".into(), "rooms/**".into()],
            admin,
            ..Default::default()
        },
        info: None,
    };
    jwt::sign(&claims, SECRET.as_bytes(), false, None).unwrap()
}

fn serve(extra: &[&str]) -> ServeProcess {
    let mut cmd = Command::new(process::BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .args(["--jwt-secret", SECRET, "--publish-key", KEY])
        .args(extra)
        .env("HERALD_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    ServeProcess::spawn(cmd)
}

fn status_of(e: ClientError) -> u16 {
    match e {
        ClientError::Status { status, .. } => status.as_u16(),
        other => panic!("expected an error status, got {other}"),
    }
}

/// An SSE stream, a WebSocket and a held poll of `user` on `node`, each on
/// its own topic; returns them once the server has them.
struct Connections {
    sse: herald_client::SseStream,
    ws: herald_client::WsClient,
    poll: tokio::task::JoinHandle<Result<herald_client::PollResponse, ClientError>>,
}

async fn connect(node: &Client, user: &str) -> Connections {
    let c = node.clone().with_token(token(user, false));
    let sse = c
        .sse(&[&format!("users/{user}/a")], None)
        .await
        .expect("sse");
    let mut ws = c.ws().await.expect("ws");
    ws.subscribe(&format!("users/{user}/b"), None)
        .await
        .expect("ws subscribe");
    let pc = c.clone();
    let topic = format!("users/{user}/c");
    let poll = tokio::spawn(async move { pc.poll(&[&topic], None, Duration::from_secs(20)).await });
    Connections { sse, ws, poll }
}

/// Waits until `node` lists `n` connections of `user`.
async fn wait_connections(admin: &Client, user: &str, n: usize) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = admin.connections(user).await.expect("connections");
        if v["connections"].as_array().unwrap().len() == n {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{user}: wanted {n} connections, have {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The connections end the way the contract says: SSE with
/// `herald.disconnect {"reason":"disconnected"}`, the WebSocket with close
/// 4009, the held poll answered.
async fn expect_disconnected(mut c: Connections) {
    let e = tokio::time::timeout(WAIT, c.sse.next_event())
        .await
        .expect("the stream ends in time")
        .expect("sse")
        .expect("a last event");
    assert_eq!(e.event, "herald.disconnect");
    assert_eq!(
        serde_json::from_str::<Value>(&e.data).unwrap(),
        json!({"reason":"disconnected"})
    );
    let closed = tokio::time::timeout(WAIT, c.ws.next_of_type("close"))
        .await
        .expect("the socket closes in time")
        .expect("ws")
        .expect("a close");
    assert_eq!(closed["code"], 4009, "{closed}");
    let answer = tokio::time::timeout(WAIT, c.poll)
        .await
        .expect("the poll is answered at once, not after its 20 s")
        .unwrap()
        .expect("poll");
    // The answer ends with the same herald.disconnect, without an id.
    assert_eq!(answer.events.len(), 1, "{:?}", answer.events);
    let last = &answer.events[0];
    assert_eq!(last["event"], "herald.disconnect");
    assert_eq!(last["data"], json!({"reason":"disconnected"}));
    assert!(last.get("id").is_none(), "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_publisher_key_and_admin_tokens_may_call_it() {
    let s = serve(&["--engine", "memory"]);
    let anonymous = s.client.clone();
    let user = s.client.clone().with_token(token("ada", false));
    let admin = s.client.clone().with_token(token("root", true));
    let key = s.client.clone().with_token(KEY);
    for (who, want) in [(&anonymous, 401), (&user, 403)] {
        assert_eq!(status_of(who.topics(None).await.unwrap_err()), want);
        assert_eq!(status_of(who.connections("ada").await.unwrap_err()), want);
        assert_eq!(
            status_of(who.disconnect_user("ada").await.unwrap_err()),
            want
        );
    }
    // The `admin` claim at the top level of the token works like
    // `herald.admin` (DESIGN.md: "a token with the `admin` claim").
    let now = herald_auth::now();
    let top_level = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "ops", "exp": now + 300, "iat": now, "admin": true}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let top_level = s.client.clone().with_token(top_level);
    let not_true = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "ops", "exp": now + 300, "iat": now, "admin": "true"}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let not_true = s.client.clone().with_token(not_true);
    assert_eq!(status_of(not_true.topics(None).await.unwrap_err()), 403);
    for who in [&admin, &key, &top_level] {
        assert_eq!(who.topics(None).await.unwrap()["total"], 0);
        assert_eq!(
            who.connections("ada").await.unwrap(),
            json!({"user":"ada","connections":[]})
        );
        assert_eq!(
            who.disconnect_user("ada").await.unwrap(),
            json!({"user":"ada"})
        );
    }
    // Only the Authorization header counts: an admin token in the cookie
    // (what a cross-site form would carry) or in the URL is no credential.
    let admin_token = token("root", true);
    for (headers, query) in [
        (
            vec![("cookie", format!("herald_token={admin_token}"))],
            String::new(),
        ),
        (vec![], format!("?token={admin_token}")),
    ] {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut h2 = h.clone();
        h2.push(("content-type", "application/json"));
        let r = anonymous
            .request(
                http::Method::POST,
                &format!("/v1/disconnect{query}"),
                &h2,
                bytes::Bytes::from(r#"{"user":"ada"}"#),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{headers:?} {query}");
        let r = anonymous
            .request(
                http::Method::GET,
                &format!("/v1/topics{query}"),
                &h,
                bytes::Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{headers:?} {query}");
    }
    // A form's content type is refused even with the right credential.
    let r = key
        .request(
            http::Method::POST,
            "/v1/disconnect",
            &[("content-type", "text/plain")],
            bytes::Bytes::from(r#"{"user":"ada"}"#),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    // Without a credential, a large body is refused before it is sent.
    for path in ["/v1/disconnect", "/v1/publish"] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{{"
        );
        c.write_all(head.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 512];
        let n = tokio::time::timeout(WAIT, c.read(&mut buf))
            .await
            .expect("answered before the body")
            .unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(answer.starts_with("HTTP/1.1 401"), "{path}: {answer}");
    }

    // Bad input is a 400 that says what is wrong.
    for path in [
        "/v1/connections",
        "/v1/connections?user=",
        "/v1/topics?limit=0",
        "/v1/topics?limit=10001",
        "/v1/topics?limit=x",
    ] {
        let e = key
            .server_api(http::Method::GET, path, None)
            .await
            .unwrap_err();
        assert_eq!(status_of(e), 400, "{path}");
    }
    for body in [json!({}), json!({"user": ""}), json!({"user": 7})] {
        let e = key
            .server_api(http::Method::POST, "/v1/disconnect", Some(body.clone()))
            .await
            .unwrap_err();
        assert_eq!(status_of(e), 400, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_closes_every_transport_of_one_user_only() {
    let s = serve(&["--engine", "memory"]);
    let admin = s.client.clone().with_token(KEY);
    let ada = connect(&s.client, "ada").await;
    let mut bob = connect(&s.client, "bob").await;
    let listed = wait_connections(&admin, "ada", 3).await;
    let list = listed["connections"].as_array().unwrap();
    let mut transports: Vec<&str> = list
        .iter()
        .map(|c| c["transport"].as_str().unwrap())
        .collect();
    transports.sort();
    assert_eq!(transports, ["poll", "sse", "ws"], "{listed}");
    for c in list {
        assert_eq!(c["user"], "ada");
        assert!(c["client"].as_str().is_some_and(|id| !id.is_empty()));
        assert!(c["connected_at"].as_u64().unwrap() > 1_700_000_000_000);
        assert_eq!(c["topics"].as_array().unwrap().len(), 1, "{c}");
    }
    wait_connections(&admin, "bob", 3).await;
    let topics = admin.topics(None).await.unwrap();
    assert_eq!(topics["total"], 6, "{topics}");
    let limited = admin.topics(Some(2)).await.unwrap();
    assert_eq!(limited["topics"].as_array().unwrap().len(), 2);
    assert_eq!(limited["total"], 6);

    admin.disconnect_user("ada").await.unwrap();
    expect_disconnected(ada).await;
    wait_connections(&admin, "ada", 0).await;
    // Bob is untouched: his stream still gets events.
    admin
        .publish("users/bob/a", json!("still here"), None)
        .await
        .unwrap();
    let e = tokio::time::timeout(WAIT, bob.sse.next_event())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(e.data, "still here");
    assert_eq!(
        admin.connections("bob").await.unwrap()["connections"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

/// Three `herald serve --engine redis`: a disconnect sent to one node
/// closes the user's connections on all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_reaches_every_node_of_a_cluster() {
    let redis = RedisServer::start();
    let url = redis.url();
    let nodes: Vec<ServeProcess> = (0..3)
        .map(|_| {
            serve(&[
                "--engine",
                "redis",
                "--redis-url",
                &url,
                "--redis-prefix",
                "api:",
            ])
        })
        .collect();
    let mut held = Vec::new();
    for n in &nodes {
        held.push(connect(&n.client, "ada").await);
        let admin = n.client.clone().with_token(KEY);
        wait_connections(&admin, "ada", 3).await;
    }
    let mut bob = connect(&nodes[2].client, "bob").await;
    // Asked of node 0: every node closes its own.
    let admin0 = nodes[0].client.clone().with_token(KEY);
    admin0.disconnect_user("ada").await.unwrap();
    for c in held {
        expect_disconnected(c).await;
    }
    for n in &nodes {
        wait_connections(&n.client.clone().with_token(KEY), "ada", 0).await;
    }
    admin0
        .publish("users/bob/a", json!("bob stays"), None)
        .await
        .unwrap();
    let e = tokio::time::timeout(WAIT, bob.sse.next_event())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(e.data, "bob stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subcommands_call_the_server_api() {
    let s = serve(&["--engine", "memory"]);
    let admin = s.client.clone().with_token(KEY);
    let ada = connect(&s.client, "ada").await;
    wait_connections(&admin, "ada", 3).await;
    let run = |args: &[&str], token: &str| {
        let out = Command::new(process::BIN)
            .args(args)
            .args(["--server", &s.base, "--token", token])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = run(&["connections", "ada"], KEY);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["connections"].as_array().unwrap().len(), 3, "{v}");
    let (ok, out, err) = run(&["topics", "--limit", "5"], KEY);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["total"], 3, "{v}");
    // A user token may not: the error names the status, and the exit
    // code says it failed.
    let (ok, _, err) = run(&["disconnect", "ada"], &token("ada", false));
    assert!(!ok);
    assert!(err.contains("403"), "{err}");
    let (ok, out, err) = run(&["disconnect", "ada"], &token("root", true));
    assert!(ok, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(out.trim()).unwrap(),
        json!({"user":"ada"})
    );
    expect_disconnected(ada).await;
}
