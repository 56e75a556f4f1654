//! Several Herald nodes on one Redis: in-process servers (and, at the end,
//! real `herald serve --engine redis` processes) on loopback ports, each
//! Redis a throw-away `redis-server` that the test starts and stops itself.

mod process;
#[path = "../../herald-http/tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_auth::{Auth, AuthConfig};
use herald_client::Client;
use herald_core::HubConfig;
use herald_engine_redis::test_server::RedisServer;
use herald_http::HttpConfig;
use serde_json::json;
use support::transport::{Kind, Sub, ALL};
use support::{quick_http, redis_engine, TestServer};

const WAIT: Duration = Duration::from_secs(5);

/// `n` nodes, each with its own Redis engine, all on `redis`.
async fn nodes(
    redis: &Arc<RedisServer>,
    n: usize,
    http: impl Fn() -> HttpConfig,
) -> Vec<TestServer> {
    let mut out = Vec::new();
    for _ in 0..n {
        let hub = HubConfig::default();
        let engine = redis_engine(redis, &hub).await;
        let mut s = TestServer::start_on("127.0.0.1:0".parse().unwrap(), engine, hub, http()).await;
        s.redis = Some(redis.clone());
        out.push(s);
    }
    out
}

async fn open(s: &TestServer, kind: Kind, topics: &[&str], resume: Option<&str>) -> Sub {
    Sub::open(&s.client, kind, topics, resume)
        .await
        .expect("subscribe")
}

async fn expect_quiet(sub: &mut Sub) {
    if let Some(g) = sub.next(Duration::from_millis(300)).await {
        panic!("{:?}: unexpected extra event {g:?}", sub.kind);
    }
}

async fn status(client: &Client, path: &str) -> u16 {
    client
        .request(http::Method::GET, path, &[], Default::default())
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_every_transport_every_event_once_in_order() {
    let redis = Arc::new(RedisServer::start());
    let nodes = nodes(&redis, 3, quick_http).await;
    let topics = ["room/a", "room/b"];
    let mut subs = Vec::new();
    for node in &nodes {
        for kind in ALL {
            subs.push(open(node, kind, &topics, None).await);
        }
    }
    let per_topic = 15;
    for n in 0..per_topic {
        for (i, t) in topics.iter().enumerate() {
            // Publishes come from every node.
            nodes[(n + i) % 3]
                .publish(t, json!({"t": t, "n": n}), None)
                .await;
        }
    }
    for sub in &mut subs {
        let mut seen: Vec<Vec<u64>> = vec![Vec::new(); topics.len()];
        for _ in 0..per_topic * topics.len() {
            let g = sub
                .next(WAIT)
                .await
                .unwrap_or_else(|| panic!("{:?}: missing events {seen:?}", sub.kind));
            let v: serde_json::Value = serde_json::from_str(&g.data).unwrap();
            let t = topics.iter().position(|t| v["t"] == *t).unwrap();
            seen[t].push(v["n"].as_u64().unwrap());
        }
        let want: Vec<u64> = (0..per_topic as u64).collect();
        assert_eq!(seen, vec![want.clone(), want], "{:?}", sub.kind);
        expect_quiet(sub).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_a_stopped_node_resumes_on_another_exactly() {
    let redis = Arc::new(RedisServer::start());
    let mut nodes = nodes(&redis, 3, quick_http).await;
    for kind in ALL {
        let topic = format!("moves/{kind:?}");
        let mut sub = open(&nodes[0], kind, &[&topic], None).await;
        for i in 0..3 {
            nodes[1].publish(&topic, json!(i), None).await;
        }
        for i in 0..3 {
            assert_eq!(sub.next(WAIT).await.unwrap().data, i.to_string());
        }
        let token = sub.resume_token();
        drop(sub);
        // Published while the client is between nodes.
        nodes[2].publish(&topic, json!(3), None).await;
        let mut moved = open(&nodes[1], kind, &[&topic], Some(&token)).await;
        nodes[2].publish(&topic, json!(4), None).await;
        for i in 3..5 {
            assert_eq!(
                moved.next(WAIT).await.unwrap().data,
                i.to_string(),
                "{kind:?}"
            );
        }
        expect_quiet(&mut moved).await;
    }
    // A node goes away for good: its clients resume elsewhere.
    let mut sub = open(&nodes[0], Kind::Sse, &["orders/1"], None).await;
    nodes[0].publish("orders/1", json!("a"), None).await;
    assert_eq!(sub.next(WAIT).await.unwrap().data, "a");
    let token = sub.resume_token();
    nodes[0].stop().await;
    assert!(
        sub.next(WAIT).await.is_none(),
        "the stream ends with the node"
    );
    nodes[1].publish("orders/1", json!("b"), None).await;
    let mut sub = open(&nodes[2], Kind::Sse, &["orders/1"], Some(&token)).await;
    assert_eq!(sub.next(WAIT).await.unwrap().data, "b");
    expect_quiet(&mut sub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_is_a_fast_503_and_clients_stay_and_catch_up() {
    let redis = Arc::new(RedisServer::start_persistent());
    let nodes = nodes(&redis, 2, quick_http).await;
    let mut subs = Vec::new();
    for kind in [Kind::Sse, Kind::Ws] {
        subs.push(open(&nodes[1], kind, &["live"], None).await);
    }
    nodes[0].publish("live", json!("before"), None).await;
    for s in &mut subs {
        assert_eq!(s.next(WAIT).await.unwrap().data, "before");
    }

    redis.stop();
    let started = Instant::now();
    let err = nodes[0]
        .client
        .publish("live", json!("lost?"), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    for n in &nodes {
        assert_eq!(status(&n.client, "/readyz").await, 503);
        assert_eq!(status(&n.client, "/healthz").await, 200);
    }
    // Live connections stay open: nothing arrives, nothing ends.
    for s in &mut subs {
        assert!(s.next(Duration::from_millis(300)).await.is_none());
        assert_eq!(s.ended, None, "{:?}", s.kind);
    }

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    for n in &nodes {
        while status(&n.client, "/readyz").await != 200 {
            assert!(Instant::now() < deadline, "never ready again");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    nodes[0].publish("live", json!("after 1"), None).await;
    nodes[1].publish("live", json!("after 2"), None).await;
    for s in &mut subs {
        assert_eq!(s.next(WAIT).await.unwrap().data, "after 1");
        assert_eq!(s.next(WAIT).await.unwrap().data, "after 2");
        expect_quiet(s).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_stream_is_a_gap_not_silence() {
    let redis = Arc::new(RedisServer::start());
    let nodes = nodes(&redis, 2, quick_http).await;
    let first = nodes[0].publish("news", json!(1), None).await;
    nodes[0].publish("news", json!(2), None).await;
    // Redis restarted without persistence.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&nodes[1].client, "/readyz").await != 200 {
        assert!(Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for kind in ALL {
        let mut sub = open(&nodes[1], kind, &["news"], Some(&first)).await;
        let g = sub.next(WAIT).await.expect("a gap");
        assert!(g.is_gap(), "{kind:?}: {g:?}");
        assert!(g.data.contains("epoch_changed"), "{}", g.data);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_ids_and_one_time_tokens_hold_across_nodes() {
    let redis = Arc::new(RedisServer::start());
    let key = "backend-key-0123456789";
    let secret = b"redis-suite-secret-0123456789abcdef";
    let hub = HubConfig::default();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let engine = redis_engine(&redis, &hub).await;
        let mut auth = Auth::new(AuthConfig {
            api_keys: vec![key.into()],
            hs256_secret: Some(secret.to_vec()),
            ..AuthConfig::default()
        })
        .unwrap();
        auth.set_one_time_store(Arc::new(engine.one_time_tokens()));
        let http = HttpConfig {
            auth: Arc::new(auth),
            ..quick_http()
        };
        let mut s =
            TestServer::start_on("127.0.0.1:0".parse().unwrap(), engine, hub.clone(), http).await;
        s.redis = Some(redis.clone());
        s.client = s.client.clone().with_token(key);
        nodes.push(s);
    }
    let body = json!({"topic": "pay/1", "data": "charge", "id": "op-1"}).to_string();
    let mut ids = Vec::new();
    for n in &nodes {
        let (st, v) = n
            .client
            .publish_raw(body.clone(), "application/json")
            .await
            .unwrap();
        assert_eq!(st, 200, "{v}");
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    // One event stored, whichever node the retries reached.
    assert!(redis
        .command(&["XLEN", "herald:{pay/1}:s"])
        .starts_with(":1"));

    // A one-time token from node 0 is good once, on any node. (A user's
    // token is exchanged: a publisher key never becomes a URL credential.)
    let now = herald_auth::now();
    let user = herald_auth::jwt::sign(
        &herald_auth::jwt::Claims {
            sub: Some("alice".into()),
            exp: now + 60,
            iat: Some(now),
            nbf: None,
            herald: herald_auth::jwt::HeraldClaim {
                subscribe: vec!["pay/*".into()],
                ..Default::default()
            },
            info: None,
        },
        secret,
        false,
        None,
    )
    .unwrap();
    let resp = nodes[0]
        .client
        .clone()
        .with_token(user)
        .request(http::Method::POST, "/v1/tokens", &[], Default::default())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let token = serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let anonymous = |n: &TestServer| Client::new(&n.base).unwrap();
    let path = format!("/v1/poll?topic=pay/1&timeout=0&token={token}");
    assert_eq!(status(&anonymous(&nodes[1]), &path).await, 200);
    assert_eq!(status(&anonymous(&nodes[2]), &path).await, 401);
    assert_eq!(status(&anonymous(&nodes[0]), &path).await, 401);
}

/// The binary as operators run it: three `herald serve --engine redis`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_herald_processes_share_one_redis() {
    use process::ServeProcess;
    use std::process::{Command, Stdio};

    let bin = process::BIN;
    let redis = RedisServer::start();
    let url = redis.url();
    let start = || {
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--engine", "redis"])
            .args(["--redis-url", &url, "--redis-prefix", "it:"])
            .env("HERALD_LOG", "warn")
            .stderr(Stdio::null());
        ServeProcess::spawn(cmd)
    };
    let procs: Vec<ServeProcess> = (0..3).map(|_| start()).collect();
    let clients: Vec<Client> = procs.iter().map(|p| p.client.clone()).collect();
    let mut subs = Vec::new();
    for (c, kind) in clients.iter().zip(ALL) {
        subs.push(Sub::open(c, kind, &["ops"], None).await.expect("subscribe"));
    }
    for i in 0..9 {
        clients[i % 3].publish("ops", json!(i), None).await.unwrap();
    }
    for s in &mut subs {
        for i in 0..9 {
            assert_eq!(
                s.next(WAIT).await.unwrap().data,
                i.to_string(),
                "{:?}",
                s.kind
            );
        }
    }
    assert!(redis.command(&["EXISTS", "it:{ops}:s"]).starts_with(":1"));

    // Killing one node (SIGKILL): its client reconnects to another node and
    // resumes from its cursor with nothing lost and nothing repeated.
    let mut procs = procs;
    let token = subs[0].resume_token();
    let moved_kind = subs[0].kind;
    procs[0].child.kill().unwrap();
    procs[0].child.wait().unwrap();
    for i in 9..15 {
        clients[1 + i % 2]
            .publish("ops", json!(i), None)
            .await
            .unwrap();
    }
    assert!(
        subs[0].next(WAIT).await.is_none(),
        "the dead node's stream ended"
    );
    let mut moved = Sub::open(&clients[1], moved_kind, &["ops"], Some(&token))
        .await
        .expect("resume on another node");
    for i in 9..15 {
        assert_eq!(moved.next(WAIT).await.unwrap().data, i.to_string());
    }
    assert!(moved.next(Duration::from_millis(300)).await.is_none());
    for s in &mut subs[1..] {
        for i in 9..15 {
            assert_eq!(
                s.next(WAIT).await.unwrap().data,
                i.to_string(),
                "{:?}",
                s.kind
            );
        }
    }

    // Misconfiguration is refused with a message that says what to do.
    let out = Command::new(bin)
        .args(["serve", "--engine", "redis"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--redis-url"));
}

/// Presence across three `herald serve --engine redis` processes: every
/// node lists every node's clients, joins reach a watcher on another node,
/// and when a node is killed (SIGKILL, no goodbye) its clients leave the
/// list, with one `herald.leave` each, within 30 s (DESIGN.md, "Presence").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_spans_processes_and_a_killed_nodes_clients_leave() {
    use process::ServeProcess;
    use std::process::{Command, Stdio};

    let redis = RedisServer::start();
    let url = redis.url();
    let dir = process::TempDir::new("presence-nodes");
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        "[[topics]]\npattern = \"room/**\"\npresence = true\njoin_leave = true\n",
    )
    .unwrap();
    let start = || {
        let mut cmd = Command::new(process::BIN);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--engine", "redis"])
            .args(["--redis-url", &url, "--redis-prefix", "pr:"])
            .arg(format!("--config={}", config.display()))
            .env("HERALD_LOG", "warn")
            .stderr(Stdio::null());
        ServeProcess::spawn(cmd)
    };
    let mut procs: Vec<ServeProcess> = (0..3).map(|_| start()).collect();
    let clients: Vec<Client> = procs.iter().map(|p| p.client.clone()).collect();
    let list = |c: &Client| {
        let c = c.clone();
        async move {
            let r = c
                .request(
                    http::Method::GET,
                    "/v1/presence?topic=room/1",
                    &[],
                    Default::default(),
                )
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let body = http_body_util::BodyExt::collect(r.into_body())
                .await
                .unwrap()
                .to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let mut ids: Vec<(String, String)> = v["clients"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    (
                        c["client"].as_str().unwrap().to_owned(),
                        c["transport"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            ids.sort();
            ids
        }
    };
    let mut watcher = Sub::open(&clients[0], Kind::Sse, &["room/1"], None)
        .await
        .expect("watcher");
    let own = watcher.next(WAIT).await.expect("own join");
    assert_eq!(own.event, "herald.join");
    let doomed = Sub::open(&clients[1], Kind::Ws, &["room/1"], None)
        .await
        .expect("ws on node 1");
    let _stays = Sub::open(&clients[2], Kind::Sse, &["room/1"], None)
        .await
        .expect("sse on node 2");
    let mut joined = Vec::new();
    for _ in 0..2 {
        let g = watcher.next(WAIT).await.expect("join");
        assert_eq!(g.event, "herald.join", "{g:?}");
        let v: serde_json::Value = serde_json::from_str(&g.data).unwrap();
        joined.push(v["client"].as_str().unwrap().to_owned());
    }
    // Every node lists all three, with their transports.
    let everyone = list(&clients[0]).await;
    assert_eq!(everyone.len(), 3, "{everyone:?}");
    for c in &clients[1..] {
        assert_eq!(list(c).await, everyone);
    }
    let transports: Vec<&str> = everyone.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(
        transports.iter().filter(|t| **t == "sse").count(),
        2,
        "{everyone:?}"
    );
    let ws_client = everyone
        .iter()
        .find(|(_, t)| t == "ws")
        .map(|(c, _)| c.clone())
        .unwrap();
    assert!(joined.contains(&ws_client));

    // Node 1 dies without a word: its WebSocket client leaves within 30 s.
    let killed = Instant::now();
    procs[1].child.kill().unwrap();
    procs[1].child.wait().unwrap();
    drop(doomed);
    let leave = watcher
        .next(Duration::from_secs(35))
        .await
        .expect("a leave for the dead node's client");
    let took = killed.elapsed();
    assert_eq!(leave.event, "herald.leave", "{leave:?}");
    let v: serde_json::Value = serde_json::from_str(&leave.data).unwrap();
    assert_eq!(v["client"], ws_client.as_str());
    // 20 s of time-to-live and a 4 s sweep: within 24 s; the contract says 30.
    assert!(took <= Duration::from_secs(30), "left after {took:?}");
    let remaining = list(&clients[0]).await;
    assert_eq!(remaining.len(), 2, "{remaining:?}");
    assert!(remaining.iter().all(|(c, _)| *c != ws_client));
    assert_eq!(list(&clients[2]).await, remaining);
    // Exactly one leave: nothing else arrives.
    expect_quiet(&mut watcher).await;
}
