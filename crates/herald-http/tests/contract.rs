//! The contract suite: every behaviour of DESIGN.md's contract, written once
//! and run against SSE, WebSocket and long polling through the adapters in
//! `support/transport.rs`. A transport cannot drift from the others quietly.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use herald_core::HubConfig;
use herald_http::HttpConfig;
use serde_json::json;
use support::transport::{Got, Kind, Refused, Sub};
use support::{quick_http, with_engine, EngineChoice, TestServer};

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(300);

fn history(n: usize) -> HubConfig {
    let mut c = HubConfig::default();
    c.history.max_events = n;
    c
}

async fn open(s: &TestServer, kind: Kind, topics: &[&str], resume: Option<&str>) -> Sub {
    Sub::open(&s.client, kind, topics, resume)
        .await
        .expect("subscribe")
}

async fn expect_quiet(sub: &mut Sub) {
    if let Some(g) = sub.next(QUIET).await {
        panic!("{:?}: unexpected extra event {g:?}", sub.kind);
    }
}

/// Events publish → arrive, in order, with their data.
async fn deliver(kind: Kind) {
    let s = TestServer::start().await;
    let mut sub = open(&s, kind, &["orders/1"], None).await;
    for i in 0..3 {
        s.publish("orders/1", json!({"n": i}), None).await;
    }
    for i in 0..3 {
        let g = sub.next(WAIT).await.expect("event");
        assert_eq!(g.data, json!({"n": i}).to_string());
        assert_eq!(g.event, "message");
        assert!(!g.id.is_empty());
    }
    expect_quiet(&mut sub).await;
}

/// Named events keep their name; unnamed ones are `message`.
async fn named_events(kind: Kind) {
    let s = TestServer::start().await;
    let mut sub = open(&s, kind, &["orders/2"], None).await;
    s.publish(
        "orders/2",
        json!({"status": "shipped"}),
        Some("order-update"),
    )
    .await;
    s.publish("orders/2", json!("plain"), None).await;
    let a = sub.next(WAIT).await.unwrap();
    assert_eq!(a.event, "order-update");
    assert_eq!(a.data, r#"{"status":"shipped"}"#);
    let b = sub.next(WAIT).await.unwrap();
    assert_eq!((b.event.as_str(), b.data.as_str()), ("message", "plain"));
}

/// Multi-line and unicode data arrive intact (SSE folds CRLF and CR to LF,
/// as the event-stream format requires).
async fn multiline_and_unicode(kind: Kind) {
    let s = TestServer::start().await;
    let mut sub = open(&s, kind, &["text"], None).await;
    let samples = [
        "line one\nline two\nline three",
        "crlf\r\nand cr\rend",
        "ünïcødé ✓ 🚀 \u{2028} 日本語",
        " leading space",
        "",
        "trailing newline\n",
        "data: looks like a field\n\nid: 999",
    ];
    for d in samples {
        s.publish("text", json!(d), None).await;
    }
    s.publish("text", json!({"msg": "héllo\nwörld", "emoji": "🎉"}), None)
        .await;
    for d in samples {
        let g = sub.next(WAIT).await.unwrap();
        let want = if kind == Kind::Sse {
            d.replace("\r\n", "\n").replace('\r', "\n")
        } else {
            d.to_owned()
        };
        assert_eq!(g.data, want, "{kind:?}");
    }
    let g = sub.next(WAIT).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&g.data).unwrap();
    assert_eq!(v, json!({"msg": "héllo\nwörld", "emoji": "🎉"}));
}

/// Takes `n` events and groups their data by topic (order is guaranteed per
/// topic; a resume back-fills topic by topic).
async fn take_by_topic(
    sub: &mut Sub,
    n: usize,
    topic_of: impl Fn(&str) -> String,
) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for _ in 0..n {
        let g = sub.next(WAIT).await.expect("event");
        out.entry(topic_of(&g.data)).or_default().push(g.data);
    }
    out
}

/// One subscription, several topics.
async fn several_topics(kind: Kind) {
    let s = TestServer::start().await;
    let mut sub = open(&s, kind, &["room/a", "room/b", "room/c"], None).await;
    let order = ["room/a", "room/b", "room/a", "room/c", "room/b"];
    for (i, t) in order.iter().enumerate() {
        s.publish(t, json!({"t": t, "i": i}), None).await;
    }
    s.publish("room/other", json!("not subscribed"), None).await;
    let got = take_by_topic(&mut sub, order.len(), |d| {
        serde_json::from_str::<serde_json::Value>(d).unwrap()["t"]
            .as_str()
            .unwrap()
            .to_owned()
    })
    .await;
    for t in ["room/a", "room/b", "room/c"] {
        let want: Vec<String> = order
            .iter()
            .enumerate()
            .filter(|(_, ot)| **ot == t)
            .map(|(i, ot)| json!({"t": ot, "i": i}).to_string())
            .collect();
        assert_eq!(got[t], want, "{kind:?} {t}");
    }
    expect_quiet(&mut sub).await;
}

/// Resume from a cursor: exactly the events after it, on every topic.
async fn resume_from_cursor(kind: Kind) {
    let s = TestServer::start().await;
    let mut sub = open(&s, kind, &["a", "b"], None).await;
    s.publish("a", json!("a1"), None).await;
    s.publish("b", json!("b1"), None).await;
    assert_eq!(sub.next(WAIT).await.unwrap().data, "a1");
    assert_eq!(sub.next(WAIT).await.unwrap().data, "b1");
    let token = sub.resume_token();
    drop(sub);
    for d in ["a2", "b2", "a3"] {
        s.publish(&d[..1], json!(d), None).await;
    }
    let mut sub = open(&s, kind, &["a", "b"], Some(&token)).await;
    let got = take_by_topic(&mut sub, 3, |d| d[..1].to_owned()).await;
    assert_eq!(got["a"], ["a2", "a3"]);
    assert_eq!(got["b"], ["b2"]);
    expect_quiet(&mut sub).await;
    // A topic that had no event when the cursor was issued resumes exactly too.
    let mut sub = open(&s, kind, &["a", "quiet"], None).await;
    s.publish("a", json!("a4"), None).await;
    assert_eq!(sub.next(WAIT).await.unwrap().data, "a4");
    let token = sub.resume_token();
    drop(sub);
    s.publish("quiet", json!("q1"), None).await;
    let mut sub = open(&s, kind, &["a", "quiet"], Some(&token)).await;
    assert_eq!(sub.next(WAIT).await.unwrap().data, "q1");
    expect_quiet(&mut sub).await;
}

/// Resume while publishes race it: every event exactly once, in order per topic.
async fn resume_races_publishes(kind: Kind) {
    let s = TestServer::start().await;
    let topics = ["race/a", "race/b"];
    let mut sub = open(&s, kind, &topics, None).await;
    const N: usize = 300;
    let client = s.client.clone();
    let publisher = tokio::spawn(async move {
        for i in 0..N {
            let t = topics[i % 2];
            client
                .publish(t, json!({"t": t, "i": i}), None)
                .await
                .unwrap();
        }
    });
    let mut got: Vec<(String, usize)> = Vec::new();
    let mut reconnects = 0;
    while got.len() < N {
        match sub.next(WAIT).await {
            Some(g) => {
                let v: serde_json::Value = serde_json::from_str(&g.data).unwrap();
                got.push((
                    v["t"].as_str().unwrap().to_owned(),
                    v["i"].as_u64().unwrap() as usize,
                ));
                // Drop the connection every 37 events, mid-stream.
                if got.len().is_multiple_of(37) {
                    let token = sub.resume_token();
                    drop(sub);
                    reconnects += 1;
                    sub = open(&s, kind, &topics, Some(&token)).await;
                }
            }
            None => panic!(
                "{kind:?}: stalled after {} events; last {:?}; token {}",
                got.len(),
                &got[got.len().saturating_sub(5)..],
                sub.resume_token()
            ),
        }
    }
    publisher.await.unwrap();
    expect_quiet(&mut sub).await;
    assert!(reconnects >= 8);
    for t in topics {
        let seq: Vec<usize> = got
            .iter()
            .filter(|(gt, _)| gt == t)
            .map(|(_, i)| *i)
            .collect();
        let want: Vec<usize> = (0..N).filter(|i| topics[i % 2] == t).collect();
        assert_eq!(seq, want, "{kind:?} {t}");
    }
}

/// A cursor older than the retained history gets `herald.gap`, then what remains.
async fn gap_signal(kind: Kind) {
    let s = TestServer::start_with(history(5), quick_http()).await;
    let mut sub = open(&s, kind, &["g"], None).await;
    s.publish("g", json!(0), None).await;
    assert_eq!(sub.next(WAIT).await.unwrap().data, "0");
    let token = sub.resume_token();
    drop(sub);
    for i in 1..=20 {
        s.publish("g", json!(i), None).await;
    }
    let mut sub = open(&s, kind, &["g"], Some(&token)).await;
    let gap = sub.next(WAIT).await.unwrap();
    assert!(gap.is_gap(), "{kind:?}: {gap:?}");
    let v: serde_json::Value = serde_json::from_str(&gap.data).unwrap();
    assert_eq!(v["reason"], "history_truncated");
    assert_eq!(v["topic"], "g");
    for i in 16..=20 {
        assert_eq!(sub.next(WAIT).await.unwrap().data, i.to_string());
    }
    expect_quiet(&mut sub).await;
    // A cursor from another epoch (a lost history) is a gap too.
    let foreign = "af63dc4c8601ec8c-1-1".replace(
        "af63dc4c8601ec8c",
        &format!("{:x}", herald_core::TopicKey::of("g").0),
    );
    let mut sub = open(&s, kind, &["g"], Some(&foreign)).await;
    let gap = sub.next(WAIT).await.unwrap();
    assert!(gap.is_gap());
    assert!(gap.data.contains("epoch_changed"), "{}", gap.data);
}

/// Invalid topics are refused clearly; unknown (never published) ones are fine.
async fn unknown_and_invalid_topics(kind: Kind) {
    let s = TestServer::start().await;
    let long = "x".repeat(1025);
    for bad in ["", "a\u{1}b", "line\nbreak", long.as_str()] {
        match Sub::open(&s.client, kind, &[bad], None).await {
            Err(Refused::Status(400)) if kind != Kind::Ws => {}
            Err(Refused::Code(c)) if kind == Kind::Ws && c == "invalid_topic" => {}
            Err(other) => panic!("{kind:?} {bad:?}: {other:?}"),
            Ok(_) => panic!("{kind:?} {bad:?}: accepted"),
        }
    }
    let mut sub = open(&s, kind, &["never/published/before"], None).await;
    expect_quiet(&mut sub).await;
    s.publish("never/published/before", json!("first"), None)
        .await;
    assert_eq!(sub.next(WAIT).await.unwrap().data, "first");
}

/// An oversized publish is refused and delivers nothing; the connection stays usable.
async fn oversized_publish(kind: Kind) {
    let hub = HubConfig {
        max_data_bytes: 1024,
        ..HubConfig::default()
    };
    let http = HttpConfig {
        max_body_bytes: 4096,
        ..quick_http()
    };
    let s = TestServer::start_with(hub, http).await;
    let mut sub = open(&s, kind, &["big"], None).await;
    let err = sub
        .publish(&s.client, "big", json!("x".repeat(2000)), None)
        .await;
    assert_eq!(err, Err("too_large".to_owned()), "{kind:?}");
    let err = sub
        .publish(&s.client, "big", json!("x".repeat(8000)), None)
        .await;
    assert!(err.is_err(), "{kind:?}: {err:?}");
    if kind != Kind::Ws {
        assert_eq!(err.unwrap_err(), "too_large");
    }
    if kind == Kind::Ws {
        // The socket was closed with 1009 (message too large): reconnect.
        sub = open(&s, kind, &["big"], None).await;
    }
    sub.publish(&s.client, "big", json!("small"), None)
        .await
        .unwrap();
    assert_eq!(sub.next(WAIT).await.unwrap().data, "small");
    expect_quiet(&mut sub).await;
}

/// A subscriber that stops reading is dropped (streams) without slowing
/// anyone else; with its cursor it later gets everything, exactly once.
async fn slow_consumer(kind: Kind) {
    let mut hub = history(100_000);
    // Small enough that the reader that never reads overflows at once (1500
    // events of 8 KiB), large enough that the one that reads is not cut off
    // when a busy machine delays it for a moment.
    hub.queue_capacity = 64;
    let s = TestServer::start_with(hub, quick_http()).await;
    let mut slow = open(&s, kind, &["firehose"], None).await;
    let mut fast = open(&s, kind, &["firehose"], None).await;
    const N: usize = 1500;
    let payload = "y".repeat(8 * 1024);
    let client = s.client.clone();
    let publisher = tokio::spawn(async move {
        for i in 0..N {
            client
                .publish("firehose", json!(format!("{i}:{payload}")), None)
                .await
                .unwrap();
        }
    });
    let mut fast_got = 0;
    while fast_got < N {
        // Generous per event: the point is that the fast one is never cut
        // off or stalled, not how fast a busy machine delivers.
        let g = fast
            .next(WAIT * 3)
            .await
            .expect("the fast subscriber was delayed");
        assert!(g.data.starts_with(&format!("{fast_got}:")));
        fast_got += 1;
    }
    publisher.await.unwrap();
    // Now read the slow one: it was cut off (streams), then resumes exactly.
    let mut next_i = 0;
    loop {
        match slow.next(Duration::from_secs(2)).await {
            Some(g) => {
                assert!(
                    g.data.starts_with(&format!("{next_i}:")),
                    "{kind:?} duplicate or gap"
                );
                next_i += 1;
                if next_i == N {
                    break;
                }
            }
            None => {
                if kind != Kind::Poll {
                    assert!(
                        slow.ended.is_some(),
                        "{kind:?}: slow subscriber was not disconnected"
                    );
                }
                let token = slow.resume_token();
                slow = open(&s, kind, &["firehose"], Some(&token)).await;
            }
        }
    }
    if kind != Kind::Poll {
        let disconnects = s
            .hub
            .metrics()
            .slow_consumer_disconnects
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(disconnects >= 1, "{kind:?}: no slow-consumer disconnect");
    }
    expect_quiet(&mut slow).await;
}

/// Graceful shutdown tells clients to go; after a restart they resume exactly.
async fn shutdown_then_resume(kind: Kind) {
    let s = TestServer::start().await;
    let mut sub = open(&s, kind, &["orders/9"], None).await;
    s.publish("orders/9", json!("before"), None).await;
    assert_eq!(sub.next(WAIT).await.unwrap().data, "before");
    let token = sub.resume_token();
    // A held long poll is answered at once on shutdown.
    let topic = herald_core::Topic::new("orders/9").unwrap();
    let before = s.hub.subscribers(&topic);
    let held = {
        let client = s.client.clone();
        let cursor = token.clone();
        tokio::spawn(async move {
            let t = std::time::Instant::now();
            let r = client
                .poll(&["orders/9"], Some(&cursor), Duration::from_secs(20))
                .await;
            (t.elapsed(), r.map(|r| r.events.len()))
        })
    };
    support::eventually("the held poll", || s.hub.subscribers(&topic) > before).await;
    let s = s.restart().await;
    let (took, r) = held.await.unwrap();
    assert!(took < Duration::from_secs(5), "held poll lingered {took:?}");
    assert_eq!(r.unwrap(), 0);
    if kind != Kind::Poll {
        assert!(sub.next(WAIT).await.is_none());
        let ended = sub.ended.clone().unwrap_or_default();
        match kind {
            Kind::Sse => assert!(ended.contains("shutdown"), "{ended}"),
            Kind::Ws => assert_eq!(ended, "close 1000"),
            Kind::Poll => {}
        }
    }
    s.publish("orders/9", json!("after 1"), None).await;
    s.publish("orders/9", json!("after 2"), None).await;
    let mut sub = open(&s, kind, &["orders/9"], Some(&token)).await;
    let got: Vec<Got> = vec![sub.next(WAIT).await.unwrap(), sub.next(WAIT).await.unwrap()];
    assert_eq!(got[0].data, "after 1");
    assert_eq!(got[1].data, "after 2");
    expect_quiet(&mut sub).await;
}

/// Starting points (`since=earliest`, `since=latest`, `history=N`): the
/// retained events they name, then live; a cursor wins over them; a
/// `history` out of range is refused.
async fn starting_points(kind: Kind) {
    let s = TestServer::start_with(history(5), quick_http()).await;
    for i in 0..7 {
        s.publish("news", json!(i), None).await;
    }
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: [Case; 5] = [
        (&[("since", "earliest")], &["2", "3", "4", "5", "6"]),
        (&[("since", "latest")], &["6"]),
        (&[("history", "3")], &["4", "5", "6"]),
        (&[("history", "0")], &[]),
        (&[], &[]),
    ];
    let mut subs = Vec::new();
    for (start, want) in cases {
        let mut sub = Sub::open_from(&s.client, kind, &["news"], None, start)
            .await
            .expect("subscribe");
        for w in want {
            let g = sub.next(WAIT).await.expect("retained event");
            assert_eq!(&g.data, w, "{kind:?} {start:?}");
        }
        expect_quiet(&mut sub).await;
        subs.push(sub);
    }
    s.publish("news", json!("live"), None).await;
    for sub in &mut subs {
        assert_eq!(sub.next(WAIT).await.expect("live").data, "live");
    }
    // A cursor wins: nothing before it is replayed.
    let token = subs[0].resume_token();
    let mut again = Sub::open_from(
        &s.client,
        kind,
        &["news"],
        Some(&token),
        &[("history", "3")],
    )
    .await
    .expect("resume");
    expect_quiet(&mut again).await;
    match Sub::open_from(&s.client, kind, &["news"], None, &[("history", "1001")]).await {
        Err(Refused::Status(400)) if kind != Kind::Ws => {}
        Err(Refused::Code(c)) if kind == Kind::Ws && c == "invalid_history" => {}
        Err(other) => panic!("{kind:?}: {other:?}"),
        Ok(_) => panic!("{kind:?}: history=1001 accepted"),
    }
}

/// A server whose `room/**` topics track presence with join/leave events;
/// a long poll stays present for 2 s after it ends.
async fn presence_server() -> TestServer {
    use herald_core::policy::{PolicyRule, TopicPolicies, TopicPolicy};
    let rule = PolicyRule {
        pattern: herald_core::topic_pattern::TopicPattern::parse("room/**").unwrap(),
        policy: TopicPolicy {
            presence: true,
            join_leave: true,
            ..TopicPolicy::DEFAULT
        },
    };
    let hub = HubConfig {
        policies: std::sync::Arc::new(TopicPolicies::new(vec![rule])),
        ..HubConfig::default()
    };
    let http = HttpConfig {
        poll_presence_grace: Duration::from_secs(2),
        ..quick_http()
    };
    TestServer::start_with(hub, http).await
}

async fn presence_list(s: &TestServer, topic: &str) -> (u16, serde_json::Value) {
    let r = s
        .client
        .request(
            http::Method::GET,
            &format!("/v1/presence?topic={topic}"),
            &[],
            bytes::Bytes::new(),
        )
        .await
        .expect("request");
    let status = r.status().as_u16();
    let body = http_body_util::BodyExt::collect(r.into_body())
        .await
        .expect("body")
        .to_bytes();
    (status, serde_json::from_slice(&body).expect("JSON"))
}

/// Presence: a client of this transport is listed by `GET /v1/presence`
/// (with its transport) while subscribed; a watcher gets `herald.join`
/// before the events published after it and `herald.leave` once the client
/// is gone (a long poll: its held poll ended and its grace period passed;
/// a zero-timeout poll is a read, never a presence), neither moving the
/// watcher's cursor; the WebSocket `presence` message gives the same list;
/// a topic without presence is 400 `presence_disabled`.
async fn presence(kind: Kind) {
    let s = presence_server().await;
    let topic = "room/1";
    let mut watcher = open(&s, Kind::Sse, &[topic], None).await;
    // The watcher's own join comes first.
    let own = watcher.next(WAIT).await.expect("own join");
    assert_eq!(own.event, "herald.join", "{own:?}");
    let before = watcher.resume_token();

    if kind == Kind::Poll {
        // A zero-timeout poll is a read: nobody joins.
        s.client.poll(&[topic], None, Duration::ZERO).await.unwrap();
        let (_, list) = presence_list(&s, topic).await;
        assert_eq!(list["clients"].as_array().unwrap().len(), 1, "{list}");
    }
    // A long-polling client is present while a poll is held (and for the
    // grace period after): a held poll of 1 s, not a zero-timeout read.
    let subject: Box<dyn std::any::Any + Send> = match kind {
        Kind::Poll => {
            let c = s.client.clone();
            Box::new(tokio::spawn(async move {
                c.poll(&[topic], None, Duration::from_secs(1)).await
            }))
        }
        _ => Box::new(open(&s, kind, &[topic], None).await),
    };
    let join = watcher.next(WAIT).await.expect("join");
    assert_eq!(join.event, "herald.join", "{kind:?}: {join:?}");
    let data: serde_json::Value = serde_json::from_str(&join.data).unwrap();
    assert_eq!(data["topic"], topic);
    assert_eq!(data["user"], "", "no credential, no user");
    assert_eq!(data["info"], serde_json::Value::Null);
    let client = data["client"].as_str().unwrap().to_owned();
    assert_eq!(watcher.resume_token(), before, "a join moves no cursor");

    let (status, list) = presence_list(&s, topic).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["topic"], topic);
    let clients = list["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 2, "{list}");
    let entry = clients.iter().find(|c| c["client"] == client.as_str());
    let entry = entry.unwrap_or_else(|| panic!("{client} not in {list}"));
    let wire = match kind {
        Kind::Sse => "sse",
        Kind::Ws => "ws",
        Kind::Poll => "poll",
    };
    assert_eq!(entry["transport"], wire);
    assert_eq!(entry["user"], "");

    // An event published after the join comes after it.
    s.publish(topic, json!("after join"), None).await;
    let g = watcher.next(WAIT).await.expect("event");
    assert_eq!(g.data, "after join");
    let cursor = watcher.resume_token();

    // The same list over a WebSocket `presence` message; a topic without
    // presence refused on both.
    let mut ws = s.client.ws().await.expect("ws");
    ws.send_json(&json!({"type":"presence","topic":topic,"ref":7}))
        .await
        .unwrap();
    let answer = ws.next_json().await.unwrap().unwrap();
    assert_eq!(answer["type"], "presence", "{answer}");
    assert_eq!(answer["ref"], 7);
    assert_eq!(answer["clients"], list["clients"]);
    ws.send_json(&json!({"type":"presence","topic":"plain/1"}))
        .await
        .unwrap();
    let answer = ws.next_json().await.unwrap().unwrap();
    assert_eq!(
        (answer["type"].as_str(), answer["code"].as_str()),
        (Some("error"), Some("presence_disabled")),
        "{answer}"
    );
    let (status, body) = presence_list(&s, "plain/1").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("presence_disabled")),
        "{body}"
    );
    drop(ws);

    // The client goes: one leave, after the event published before it.
    s.publish(topic, json!("before leave"), None).await;
    drop(subject);
    assert_eq!(
        watcher.next(WAIT).await.expect("event").data,
        "before leave"
    );
    let cursor_after = watcher.resume_token();
    assert_ne!(cursor_after, cursor);
    let leave = watcher
        .next(WAIT + Duration::from_secs(3))
        .await
        .expect("leave");
    assert_eq!(leave.event, "herald.leave", "{kind:?}: {leave:?}");
    let left: serde_json::Value = serde_json::from_str(&leave.data).unwrap();
    assert_eq!(left, data);
    assert_eq!(
        watcher.resume_token(),
        cursor_after,
        "a leave moves no cursor"
    );
    let (_, list) = presence_list(&s, topic).await;
    assert_eq!(list["clients"].as_array().unwrap().len(), 1, "{list}");
    expect_quiet(&mut watcher).await;
}

/// A WebSocket learns its own presence id from `subscribed` (`client`, on
/// topics that track presence only): the id its join and the presence list
/// carry, the same on every presence topic of the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_subscribed_names_its_presence_client() {
    let s = presence_server().await;
    let mut watcher = open(&s, Kind::Sse, &["room/2"], None).await;
    let own = watcher.next(WAIT).await.expect("own join");
    assert_eq!(own.event, "herald.join", "{own:?}");
    let mut ws = s.client.ws().await.expect("ws");
    // The connection's own join may come before the answer.
    async fn subscribed(ws: &mut herald_client::WsClient) -> serde_json::Value {
        for _ in 0..4 {
            let m = ws.next_json().await.unwrap().unwrap();
            if m["type"] != "event" {
                return m;
            }
        }
        panic!("no answer to subscribe")
    }
    ws.send_json(&json!({"type":"subscribe","topic":"room/2"}))
        .await
        .unwrap();
    let answer = subscribed(&mut ws).await;
    assert_eq!(answer["type"], "subscribed", "{answer}");
    let client = answer["client"].as_str().expect("client").to_owned();
    let join = watcher.next(WAIT).await.expect("join");
    let data: serde_json::Value = serde_json::from_str(&join.data).unwrap();
    assert_eq!(data["client"], client.as_str(), "{data}");
    let (_, list) = presence_list(&s, "room/2").await;
    assert!(
        list["clients"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["client"] == client.as_str()),
        "{list}"
    );
    for (topic, expected) in [("room/3", Some(client.as_str())), ("plain/1", None)] {
        ws.send_json(&json!({"type":"subscribe","topic":topic}))
            .await
            .unwrap();
        let answer = subscribed(&mut ws).await;
        assert_eq!(answer["type"], "subscribed", "{answer}");
        assert_eq!(answer["client"].as_str(), expected, "{topic}: {answer}");
    }
}

/// Each scenario on each transport, on the memory engine, in `mod redis`
/// on the Redis engine (a `redis-server` per test) and, in `mod
/// redis_cluster`, on the Redis engine over a Redis Cluster (one for the
/// binary, a key prefix per test).
macro_rules! contract {
    ($engine:expr; $($scenario:ident),* $(,)?) => {
        $(
            mod $scenario {
                use super::*;
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sse() { with_engine($engine, $scenario(Kind::Sse)).await }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn ws() { with_engine($engine, $scenario(Kind::Ws)).await }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn poll() { with_engine($engine, $scenario(Kind::Poll)).await }
            }
        )*
    };
}

macro_rules! scenarios {
    ($engine:expr) => {
        contract!($engine;
            deliver,
            named_events,
            multiline_and_unicode,
            several_topics,
            resume_from_cursor,
            resume_races_publishes,
            gap_signal,
            unknown_and_invalid_topics,
            oversized_publish,
            slow_consumer,
            shutdown_then_resume,
            starting_points,
            presence,
        );
    };
}

scenarios!(EngineChoice::Memory);

mod redis {
    use super::*;
    scenarios!(EngineChoice::Redis);
}

mod redis_cluster {
    use super::*;
    scenarios!(EngineChoice::RedisCluster);
}

#[allow(dead_code)]
fn unused(_: HashMap<(), ()>) {}
