//! WebSocket specifics with a real WebSocket client: cross-transport
//! delivery, unsubscribe, malformed messages, limits, heartbeats.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_core::HubConfig;
use herald_http::HttpConfig;
use serde_json::json;
use support::{quick_http, TestServer};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(5);

async fn next(ws: &mut herald_client::WsClient) -> serde_json::Value {
    tokio::time::timeout(WAIT, ws.next_json())
        .await
        .expect("timeout")
        .unwrap()
        .expect("closed")
}

async fn subscribed(ws: &mut herald_client::WsClient, topic: &str) {
    ws.subscribe(topic, None).await.unwrap();
    let v = next(ws).await;
    assert_eq!(v["type"], "subscribed", "{v}");
    assert_eq!(v["topic"], topic);
}

#[tokio::test]
async fn publish_on_websocket_reaches_sse_and_http_publish_reaches_websocket() {
    let s = TestServer::start().await;
    let mut sse = s.client.sse(&["chat/1"], None).await.unwrap();
    let mut ws = s.client.ws().await.unwrap();
    subscribed(&mut ws, "chat/1").await;
    ws.send_json(&json!({"type": "publish", "topic": "chat/1", "event": "message", "data": {"text": "hi"}, "ref": "r1"}))
        .await
        .unwrap();
    // The publisher's own socket gets the acknowledgement and the event.
    let mut ack = None;
    let mut echoed = None;
    while ack.is_none() || echoed.is_none() {
        let v = next(&mut ws).await;
        match v["type"].as_str() {
            Some("published") => ack = Some(v),
            Some("event") => echoed = Some(v),
            _ => panic!("{v}"),
        }
    }
    let ack = ack.unwrap();
    assert_eq!(ack["ref"], "r1");
    let e = tokio::time::timeout(WAIT, sse.next_event())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(e.data, r#"{"text":"hi"}"#);
    assert_eq!(e.id, ack["id"].as_str().unwrap());
    assert_eq!(echoed.unwrap()["data"], json!({"text": "hi"}));

    s.publish("chat/1", json!({"text": "from backend"}), Some("message"))
        .await;
    let v = next(&mut ws).await;
    assert_eq!(v["type"], "event");
    assert_eq!(v["topic"], "chat/1");
    assert_eq!(v["event"], "message");
    assert_eq!(v["data"], json!({"text": "from backend"}));
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let s = TestServer::start().await;
    let mut ws = s.client.ws().await.unwrap();
    subscribed(&mut ws, "u/a").await;
    subscribed(&mut ws, "u/b").await;
    ws.send_json(&json!({"type": "unsubscribe", "topic": "u/a"}))
        .await
        .unwrap();
    let v = next(&mut ws).await;
    assert_eq!(
        (v["type"].as_str(), v["was_subscribed"].as_bool()),
        (Some("unsubscribed"), Some(true))
    );
    s.publish("u/a", json!("gone"), None).await;
    s.publish("u/b", json!("kept"), None).await;
    let v = next(&mut ws).await;
    assert_eq!(v["data"], "kept");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), ws.next_json())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn malformed_messages_get_errors_and_the_connection_keeps_working() {
    let s = TestServer::start().await;
    let mut ws = s.client.ws().await.unwrap();
    for (bad, code) in [
        ("{not json", "invalid_json"),
        (r#"{"type":"dance"}"#, "invalid_message"),
        (r#"{"no":"type"}"#, "invalid_message"),
        (r#"{"type":"subscribe"}"#, "invalid_message"),
        (r#"{"type":"subscribe","topic":""}"#, "invalid_topic"),
        (
            r#"{"type":"subscribe","topic":"a","since":"bogus"}"#,
            "invalid_cursor",
        ),
        // An empty cursor names no place: refused, never "from now".
        (
            r#"{"type":"subscribe","topic":"a","since":""}"#,
            "invalid_cursor",
        ),
        (
            r#"{"type":"subscribe","topic":"a","since":" "}"#,
            "invalid_cursor",
        ),
        (r#"{"type":"publish","topic":"a"}"#, "invalid_message"),
        (
            r#"{"type":"publish","topic":"a","data":1,"event":"herald.x"}"#,
            "invalid_event",
        ),
        ("[]", "invalid_message"),
    ] {
        ws.socket.send(Message::Text(bad.into())).await.unwrap();
        let v = next(&mut ws).await;
        assert_eq!(v["type"], "error", "{bad}");
        assert_eq!(v["code"], code, "{bad}: {v}");
    }
    ws.socket
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await["type"], "error");
    // Still usable.
    subscribed(&mut ws, "still/here").await;
    s.publish("still/here", json!(1), None).await;
    assert_eq!(next(&mut ws).await["data"], 1);
}

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let http = HttpConfig {
        ws_max_message_bytes: 1024,
        ..quick_http()
    };
    let s = TestServer::start_with(HubConfig::default(), http).await;
    let mut ws = s.client.ws().await.unwrap();
    let big = json!({"type": "publish", "topic": "a", "data": "x".repeat(4096)});
    ws.send_json(&big).await.unwrap();
    let v = next(&mut ws).await;
    assert_eq!(v["type"], "close");
    assert_eq!(v["code"], 1009);
}

#[tokio::test]
async fn a_peer_that_never_answers_pings_is_closed() {
    let http = HttpConfig {
        keepalive: Duration::from_millis(100),
        ws_pong_timeout: Duration::from_millis(400),
        ..quick_http()
    };
    let s = TestServer::start_with(HubConfig::default(), http).await;
    let mut ws = s.client.ws().await.unwrap();
    // Read nothing (so no pong is sent) for well past the timeout: the
    // silence is the scenario.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut saw_ping = false;
    loop {
        match tokio::time::timeout(WAIT, ws.socket.next())
            .await
            .expect("still open")
        {
            Some(Ok(Message::Ping(_))) => saw_ping = true,
            Some(Ok(Message::Close(f))) => {
                assert_eq!(u16::from(f.unwrap().code), 1011);
                break;
            }
            Some(Ok(other)) => panic!("{other:?}"),
            Some(Err(_)) | None => break,
        }
    }
    assert!(saw_ping);
    // A peer that does answer stays open: tungstenite answers pings while we read.
    let mut ws = s.client.ws().await.unwrap();
    subscribed(&mut ws, "alive").await;
    let reader = tokio::spawn(async move {
        let mut events = 0;
        while let Ok(Some(v)) = ws.next_json().await {
            if v["type"] == "event" {
                events += 1;
                if events == 1 {
                    return true;
                }
            }
            if v["type"] == "close" {
                return false;
            }
        }
        false
    });
    // Well past the pong timeout (the scenario): still open.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    s.publish("alive", json!("still"), None).await;
    assert!(reader.await.unwrap(), "a responsive peer was closed");
}

#[tokio::test]
async fn many_topics_on_one_connection() {
    let s = TestServer::start().await;
    let mut ws = s.client.ws().await.unwrap();
    for i in 0..50 {
        subscribed(&mut ws, &format!("many/{i}")).await;
    }
    for i in 0..50 {
        s.publish(&format!("many/{i}"), json!(i), None).await;
    }
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 50 {
        let v = next(&mut ws).await;
        assert_eq!(v["topic"], format!("many/{}", v["data"]));
        seen.insert(v["data"].as_u64().unwrap());
    }
    // The per-connection topic limit (64 by default) is enforced.
    for i in 50..64 {
        subscribed(&mut ws, &format!("many/{i}")).await;
    }
    ws.subscribe("many/64", None).await.unwrap();
    let v = next(&mut ws).await;
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str()),
        (Some("error"), Some("too_many_topics"))
    );
}

#[tokio::test]
async fn publish_rate_limit_and_idempotency_on_the_socket() {
    let http = HttpConfig {
        ws_publish_rate: 1.0,
        ws_publish_burst: 3.0,
        ..quick_http()
    };
    let s = TestServer::start_with(HubConfig::default(), http).await;
    let mut ws = s.client.ws().await.unwrap();
    let mut outcomes = Vec::new();
    for i in 0..5 {
        ws.send_json(&json!({"type": "publish", "topic": "rl", "data": i, "id": "same"}))
            .await
            .unwrap();
        let v = next(&mut ws).await;
        outcomes.push(v);
    }
    let ok: Vec<_> = outcomes
        .iter()
        .filter(|v| v["type"] == "published")
        .collect();
    assert_eq!(ok.len(), 3, "{outcomes:?}");
    assert!(
        ok.windows(2).all(|w| w[0]["id"] == w[1]["id"]),
        "same id, one event"
    );
    assert_eq!(outcomes[3]["code"], "rate_limited");
    // The HTTP path shares the idempotency memory.
    let (_, v) = s
        .client
        .publish_raw(
            json!({"topic": "rl", "data": 0, "id": "same"}).to_string(),
            "application/json",
        )
        .await
        .unwrap();
    assert_eq!(v["id"], ok[0]["id"]);
}

#[tokio::test]
async fn shutdown_closes_with_1000() {
    let mut s = TestServer::start().await;
    let mut ws = s.client.ws().await.unwrap();
    subscribed(&mut ws, "bye").await;
    s.stop().await;
    let v = next(&mut ws).await;
    assert_eq!(
        (v["type"].as_str(), v["code"].as_u64()),
        (Some("close"), Some(1000))
    );
}

/// A request to `/v1/ws` that is not a WebSocket handshake gets the JSON
/// error body every other refusal has (RFC 6455, section 4.2.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_is_not_a_handshake_gets_a_json_error() {
    use http_body_util::BodyExt;
    let s = TestServer::start().await;
    let r = s
        .client
        .request(http::Method::GET, "/v1/ws", &[], bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers().get("content-type").unwrap(), "application/json");
    let v: serde_json::Value =
        serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["error"]["code"], "invalid_upgrade", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
}
