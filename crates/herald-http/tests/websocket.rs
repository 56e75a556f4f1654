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

/// A WebSocket on a plain TCP socket, past the HTTP/1.1 handshake, for
/// frames no client library sends.
async fn raw_ws(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET /v1/ws HTTP/1.1\r\nHost: localhost:{}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        addr.port()
    );
    c.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(
            c.read(&mut b).await.unwrap(),
            1,
            "the handshake's answer ended"
        );
        answer.push(b[0]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 101"), "{answer:?}");
    c
}

/// A client frame (masked with a zero key, so the payload is as given).
fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut f = vec![
        (if fin { 0x80 } else { 0 }) | opcode,
        0x80 | payload.len() as u8,
    ];
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

/// Reads server frames until the close: its code and reason.
async fn read_close(c: &mut tokio::net::TcpStream) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let read = async {
        loop {
            let mut head = [0u8; 2];
            c.read_exact(&mut head).await.expect("a close frame");
            let len = match head[1] & 0x7F {
                126 => c.read_u16().await.unwrap() as usize,
                127 => c.read_u64().await.unwrap() as usize,
                n => n as usize,
            };
            let mut payload = vec![0u8; len];
            c.read_exact(&mut payload).await.unwrap();
            if head[0] & 0x0F == 0x8 {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                return (code, String::from_utf8(payload[2..].to_vec()).unwrap());
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("closed in time")
}

/// RFC 6455 where the server must answer or bound what a client sends: a
/// client's close is answered with a close (section 5.5.1); a message whose
/// frames are still coming `body_timeout` after its first byte is closed
/// 1008 `message not completed in time` (whether the client keeps the
/// connection alive meanwhile or sends nothing more); an unmasked frame is closed 1002, a text message that
/// is not UTF-8 1007; the server keeps serving.
#[tokio::test]
async fn close_handshake_slow_messages_and_protocol_errors() {
    use tokio::io::AsyncWriteExt;
    let http = HttpConfig {
        body_timeout: Duration::from_millis(500),
        ..quick_http()
    };
    let s = TestServer::start_with(HubConfig::default(), http).await;

    let mut c = raw_ws(s.addr).await;
    c.write_all(&client_frame(true, 0x8, &1000u16.to_be_bytes()))
        .await
        .unwrap();
    assert_eq!(read_close(&mut c).await, (1000, String::new()));

    let mut c = raw_ws(s.addr).await;
    c.write_all(&client_frame(false, 0x1, br#"{"type":"#))
        .await
        .unwrap();
    // Pongs keep the connection alive, not the message.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        c.write_all(&client_frame(true, 0xA, b"")).await.unwrap();
    }
    assert_eq!(
        read_close(&mut c).await,
        (1008, "message not completed in time".to_owned())
    );

    // A message that stops coming is closed at its deadline, not at the
    // pong timeout; nothing else arrives meanwhile.
    let mut c = raw_ws(s.addr).await;
    c.write_all(&client_frame(false, 0x1, b"{")).await.unwrap();
    let started = std::time::Instant::now();
    assert_eq!(
        read_close(&mut c).await,
        (1008, "message not completed in time".to_owned())
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    let mut c = raw_ws(s.addr).await;
    c.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    assert_eq!(
        read_close(&mut c).await,
        (1002, "protocol error".to_owned())
    );

    let mut c = raw_ws(s.addr).await;
    c.write_all(&client_frame(true, 0x1, &[0xFF, 0xFE]))
        .await
        .unwrap();
    assert_eq!(read_close(&mut c).await, (1007, "invalid utf-8".to_owned()));

    // The server keeps serving.
    let mut ws = s.client.ws().await.unwrap();
    subscribed(&mut ws, "still-served").await;
}
