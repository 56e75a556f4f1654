//! SSE wire details and the publish API, against a real server over TCP.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use herald_client::SseItem;
use herald_core::{HubConfig, Transport};
use herald_http::HttpConfig;
use serde_json::json;
use support::{eventually, quick_http, TestServer};

const WAIT: Duration = Duration::from_secs(5);

async fn next_event(s: &mut herald_client::SseStream) -> herald_client::SseEvent {
    tokio::time::timeout(WAIT, s.next_event())
        .await
        .expect("timeout")
        .unwrap()
        .expect("ended")
}

#[tokio::test]
async fn stream_starts_with_retry_and_a_cursor_and_has_the_headers() {
    let s = TestServer::start().await;
    let mut stream = s.client.sse(&["t"], None).await.unwrap();
    assert_eq!(stream.headers["content-type"], "text/event-stream");
    assert_eq!(stream.headers["cache-control"], "no-cache");
    assert_eq!(stream.headers["x-accel-buffering"], "no");
    // 2000 ms, with per-connection jitter of ±25 %.
    match stream.next_item().await.unwrap() {
        Some(SseItem::Retry(ms)) => assert!((1500..=2500).contains(&ms), "{ms}"),
        other => panic!("retry first, got {other:?}"),
    }
    let Some(SseItem::Id(start)) = stream.next_item().await.unwrap() else {
        panic!("no start id")
    };
    assert!(!start.is_empty());
    s.publish("t", json!({"a": 1}), Some("order-update")).await;
    let e = next_event(&mut stream).await;
    assert_eq!(
        (e.event.as_str(), e.data.as_str()),
        ("order-update", r#"{"a":1}"#)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_wire_format() {
    let s = TestServer::start().await;
    // A raw socket: check the bytes themselves, not a parser's reading of them.
    let mut sock = std::net::TcpStream::connect(s.addr).unwrap();
    sock.write_all(b"GET /v1/sse?topic=raw HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = sock.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.publish("raw", json!("one\ntwo"), Some("multi")).await;
    let mut text = head;
    while !text.contains("data: two") {
        let n = sock.read(&mut buf).unwrap();
        assert!(n > 0);
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let body = &text[text.find("retry:").expect("retry first")..];
    // `retry:` first: 2000 ms with per-connection jitter of ±25 %.
    let retry: u64 = body["retry: ".len()..body.find('\n').unwrap()]
        .parse()
        .unwrap();
    assert!((1500..=2500).contains(&retry), "{body:?}");
    let body = &body[body.find('\n').unwrap() + 1..];
    assert!(body.starts_with("id: "), "{body:?}");
    // The id-only preamble block ends with a blank line (chunk framing aside).
    let preamble_end = body.find("\n\n").expect("preamble block");
    assert!(!body[..preamble_end].contains("data:"), "{body:?}");
    assert!(
        body.contains("\nevent: multi\ndata: one\ndata: two\n\n"),
        "{body:?}"
    );
}

#[tokio::test]
async fn resume_with_header_and_with_query_parameter() {
    let s = TestServer::start().await;
    let mut stream = s.client.sse(&["r"], None).await.unwrap();
    s.publish("r", json!(1), None).await;
    let first = next_event(&mut stream).await;
    drop(stream);
    s.publish("r", json!(2), None).await;
    s.publish("r", json!(3), None).await;
    // Header.
    let mut h = s.client.sse(&["r"], Some(&first.id)).await.unwrap();
    assert_eq!(next_event(&mut h).await.data, "2");
    assert_eq!(next_event(&mut h).await.data, "3");
    // Query parameter, as a first connection with no header would send it.
    let resp = s
        .client
        .request(
            http::Method::GET,
            &format!("/v1/sse?topic=r&last_event_id={}", first.id),
            &[],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut parser = herald_client::SseParser::new();
    let mut body = resp.into_body();
    let mut datas = Vec::new();
    while datas.len() < 2 {
        use http_body_util::BodyExt;
        let frame = tokio::time::timeout(WAIT, body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        for item in parser.feed(&frame.into_data().unwrap()) {
            if let SseItem::Event(e) = item {
                datas.push(e.data);
            }
        }
    }
    assert_eq!(datas, ["2", "3"]);
    // The header wins over the query parameter (EventSource keeps the URL on reconnect).
    let second_id = {
        let mut t = s.client.sse(&["r"], Some(&first.id)).await.unwrap();
        next_event(&mut t).await.id
    };
    let resp = s
        .client
        .request(
            http::Method::GET,
            &format!("/v1/sse?topic=r&last_event_id={}", first.id),
            &[("last-event-id", second_id.as_str())],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    let mut parser = herald_client::SseParser::new();
    let mut body = resp.into_body();
    loop {
        use http_body_util::BodyExt;
        let frame = tokio::time::timeout(WAIT, body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(e) = parser
            .feed(&frame.into_data().unwrap())
            .into_iter()
            .find_map(|i| match i {
                SseItem::Event(e) => Some(e),
                _ => None,
            })
        {
            assert_eq!(e.data, "3");
            break;
        }
    }
}

#[tokio::test]
async fn keepalive_comments_while_idle() {
    let http = HttpConfig {
        keepalive: Duration::from_millis(200),
        ..quick_http()
    };
    let s = TestServer::start_with(HubConfig::default(), http).await;
    let mut stream = s.client.sse(&["quiet"], None).await.unwrap();
    let mut comments = 0;
    let started = std::time::Instant::now();
    while comments < 3 {
        match tokio::time::timeout(WAIT, stream.next_item())
            .await
            .unwrap()
            .unwrap()
        {
            Some(SseItem::Comment(c)) => {
                assert_eq!(c, "keepalive");
                comments += 1;
            }
            Some(_) => {}
            None => panic!("stream ended"),
        }
    }
    assert!(started.elapsed() >= Duration::from_millis(500));
}

/// The keepalive counts from the last write: a stream that carries events
/// gets no comment, and one comes `keepalive` after the events stop.
#[tokio::test]
async fn keepalive_counts_from_the_last_event() {
    let keepalive = Duration::from_millis(400);
    let http = HttpConfig {
        keepalive,
        ..quick_http()
    };
    let s = TestServer::start_with(HubConfig::default(), http).await;
    let mut stream = s.client.sse(&["busy"], None).await.unwrap();
    // 12 events 100 ms apart: 1.2 s, three keepalive intervals, no comment.
    for i in 0..12 {
        s.publish("busy", json!(i), None).await;
        loop {
            match tokio::time::timeout(WAIT, stream.next_item())
                .await
                .unwrap()
                .unwrap()
            {
                Some(SseItem::Event(e)) => {
                    assert_eq!(e.data, i.to_string());
                    break;
                }
                Some(SseItem::Comment(c)) => panic!("comment {c:?} on a busy stream"),
                Some(_) => {}
                None => panic!("stream ended"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let quiet = std::time::Instant::now();
    loop {
        match tokio::time::timeout(WAIT, stream.next_item())
            .await
            .unwrap()
            .unwrap()
        {
            Some(SseItem::Comment(c)) => {
                assert_eq!(c, "keepalive");
                break;
            }
            Some(SseItem::Event(e)) => panic!("unexpected event {e:?}"),
            Some(_) => {}
            None => panic!("stream ended"),
        }
    }
    // The last event went out about 100 ms before `quiet`.
    let waited = quiet.elapsed();
    assert!(
        waited >= keepalive - Duration::from_millis(150) && waited < keepalive * 3,
        "keepalive after {waited:?}"
    );
}

#[tokio::test]
async fn idempotent_publish() {
    let s = TestServer::start().await;
    let mut stream = s.client.sse(&["idem"], None).await.unwrap();
    let body = json!({"topic": "idem", "data": "once", "id": "order-7-shipped"}).to_string();
    let (st1, a) = s
        .client
        .publish_raw(body.clone(), "application/json")
        .await
        .unwrap();
    let (st2, b) = s
        .client
        .publish_raw(body.clone(), "application/json")
        .await
        .unwrap();
    assert_eq!((st1.as_u16(), st2.as_u16()), (200, 200));
    assert_eq!(a["id"], b["id"]);
    // Concurrent retries with the same id store one event.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let c = s.client.clone();
            tokio::spawn(async move {
                let body = json!({"topic": "idem", "data": "burst", "id": "burst-1"}).to_string();
                c.publish_raw(body, "application/json").await.unwrap().1["id"].clone()
            })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    // A batch repeating a known id stores only the new event.
    let batch = json!({"events": [
        {"topic": "idem", "data": "once", "id": "order-7-shipped"},
        {"topic": "idem", "data": "new"}
    ]});
    let (st, v) = s
        .client
        .publish_raw(batch.to_string(), "application/json")
        .await
        .unwrap();
    assert_eq!(st.as_u16(), 200);
    assert_eq!(v["ids"][0], a["id"]);
    let got: Vec<String> = vec![
        next_event(&mut stream).await.data,
        next_event(&mut stream).await.data,
        next_event(&mut stream).await.data,
    ];
    assert_eq!(got, ["once", "burst", "new"]);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.next_event())
            .await
            .is_err()
    );
    // The same id on another topic is another event.
    let other = json!({"topic": "idem2", "data": "x", "id": "order-7-shipped"}).to_string();
    let (_, c) = s
        .client
        .publish_raw(other, "application/json")
        .await
        .unwrap();
    assert_ne!(c["id"], a["id"]);
}

#[tokio::test]
async fn batch_publish() {
    let s = TestServer::start().await;
    let mut stream = s.client.sse(&["b1", "b2"], None).await.unwrap();
    let batch = json!({"events": [
        {"topic": "b1", "data": 1},
        {"topic": "b2", "data": 2, "event": "n"},
        {"topic": "b1", "data": 3}
    ]});
    let (st, v) = s
        .client
        .publish_raw(batch.to_string(), "application/json")
        .await
        .unwrap();
    assert_eq!(st.as_u16(), 200);
    assert_eq!(v["ids"].as_array().unwrap().len(), 3);
    let got: Vec<String> = vec![
        next_event(&mut stream).await.data,
        next_event(&mut stream).await.data,
        next_event(&mut stream).await.data,
    ];
    assert_eq!(got, ["1", "2", "3"]);
}

#[tokio::test]
async fn every_error_status() {
    let hub = HubConfig {
        max_data_bytes: 100,
        max_batch: 3,
        ..HubConfig::default()
    };
    let http = HttpConfig {
        max_body_bytes: 1000,
        ..quick_http()
    };
    let s = TestServer::start_with(hub, http).await;
    let c = &s.client;
    let json_ct = "application/json";
    let cases: Vec<(&str, String, &str, u16, &str)> = vec![
        ("not json", "{".into(), json_ct, 400, "invalid_json"),
        (
            "no topic",
            r#"{"data":1}"#.into(),
            json_ct,
            400,
            "invalid_request",
        ),
        (
            "no data",
            r#"{"topic":"a"}"#.into(),
            json_ct,
            400,
            "invalid_request",
        ),
        (
            "empty topic",
            r#"{"topic":"","data":1}"#.into(),
            json_ct,
            400,
            "invalid_topic",
        ),
        (
            "control char",
            "{\"topic\":\"a\\u0007\",\"data\":1}".into(),
            json_ct,
            400,
            "invalid_topic",
        ),
        (
            "long topic",
            format!(r#"{{"topic":"{}","data":1}}"#, "x".repeat(1025)),
            json_ct,
            413,
            "too_large",
        ),
        (
            "reserved name",
            r#"{"topic":"a","data":1,"event":"herald.gap"}"#.into(),
            json_ct,
            400,
            "invalid_event",
        ),
        (
            "newline name",
            r#"{"topic":"a","data":1,"event":"a\nb"}"#.into(),
            json_ct,
            400,
            "invalid_event",
        ),
        (
            "unknown field",
            r#"{"topic":"a","data":1,"evnet":"x"}"#.into(),
            json_ct,
            400,
            "invalid_request",
        ),
        (
            "empty batch",
            r#"{"events":[]}"#.into(),
            json_ct,
            400,
            "invalid_batch",
        ),
        (
            "big batch",
            format!(
                r#"{{"events":[{}]}}"#,
                [r#"{"topic":"a","data":1}"#; 4].join(",")
            ),
            json_ct,
            400,
            "invalid_batch",
        ),
        (
            "data too large",
            format!(r#"{{"topic":"a","data":"{}"}}"#, "x".repeat(200)),
            json_ct,
            413,
            "too_large",
        ),
        (
            "body too large",
            format!(r#"{{"topic":"a","data":"{}"}}"#, "x".repeat(2000)),
            json_ct,
            413,
            "too_large",
        ),
        (
            "wrong type",
            r#"{"topic":"a","data":1}"#.into(),
            "text/plain",
            415,
            "unsupported_media_type",
        ),
    ];
    for (what, body, ct, status, code) in cases {
        let (st, v) = c.publish_raw(body, ct).await.unwrap();
        assert_eq!(st.as_u16(), status, "{what}: {v}");
        assert_eq!(v["error"]["code"], code, "{what}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}"
        );
    }
    // Nothing of the refused publishes was stored.
    assert_eq!(
        s.hub
            .metrics()
            .events_published
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    // Routes and methods.
    let get = |path: &'static str| async move {
        let r = c
            .request(http::Method::GET, path, &[], bytes::Bytes::new())
            .await
            .unwrap();
        let st = r.status().as_u16();
        use http_body_util::BodyExt;
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (
            st,
            serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default(),
        )
    };
    assert_eq!(get("/nope").await.0, 404);
    assert_eq!(get("/nope").await.1["error"]["code"], "not_found");
    assert_eq!(get("/v1/publish").await.0, 405);
    assert_eq!(get("/v1/sse").await.0, 400);
    assert_eq!(get("/v1/sse?topic=").await.0, 400);
    assert_eq!(
        get("/v1/sse?topic=a&last_event_id=garbage").await.1["error"]["code"],
        "invalid_cursor"
    );
    assert_eq!(get("/v1/poll?topic=a&cursor=zz").await.0, 400);
    assert_eq!(get("/v1/poll?topic=a&timeout=soon").await.0, 400);
}

#[tokio::test]
async fn long_topic_is_refused_as_invalid_topic_when_body_allows() {
    let s = TestServer::start().await;
    let body = format!(r#"{{"topic":"{}","data":1}}"#, "x".repeat(1025));
    let (st, v) = s
        .client
        .publish_raw(body, "application/json")
        .await
        .unwrap();
    assert_eq!(st.as_u16(), 400);
    assert_eq!(v["error"]["code"], "invalid_topic");
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let s = TestServer::start().await;
    let c = &s.client;
    for (path, want) in [("/healthz", 200), ("/readyz", 200), ("/metrics", 200)] {
        let r = c
            .request(http::Method::GET, path, &[], bytes::Bytes::new())
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), want, "{path}");
    }
    let _stream = c.sse(&["m"], None).await.unwrap();
    s.publish("m", json!(1), None).await;
    eventually("a delivery", || {
        s.hub
            .metrics()
            .events_delivered
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    })
    .await;
    let r = c
        .request(http::Method::GET, "/metrics", &[], bytes::Bytes::new())
        .await
        .unwrap();
    use http_body_util::BodyExt;
    let text =
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    for needle in [
        "herald_events_published_total 1",
        "herald_events_delivered_total 1",
        "herald_connections{transport=\"sse\"} 1",
        "herald_slow_consumer_disconnects_total 0",
        "herald_publish_duration_seconds_count 1",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

#[tokio::test]
async fn a_client_that_leaves_frees_what_it_held() {
    let s = TestServer::start().await;
    let topic = herald_core::Topic::new("leave").unwrap();
    let a = s.client.sse(&["leave", "leave/2"], None).await.unwrap();
    let b = s.client.sse(&["leave"], None).await.unwrap();
    assert_eq!(s.hub.subscribers(&topic), 2);
    assert_eq!(s.hub.metrics().open(Transport::Sse), 2);
    drop(a);
    eventually("the first subscription to go", || {
        s.hub.subscribers(&topic) == 1
    })
    .await;
    drop(b);
    eventually("every subscription to go", || {
        s.hub.subscribers(&topic) == 0 && s.hub.metrics().open(Transport::Sse) == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_cut_off_without_delaying_others() {
    let hub = HubConfig {
        queue_capacity: 32,
        ..HubConfig::default()
    };
    let s = TestServer::start_with(hub, quick_http()).await;
    // A raw client that sends its request and never reads a byte.
    let mut stuck = std::net::TcpStream::connect(s.addr).unwrap();
    stuck
        .write_all(b"GET /v1/sse?topic=flood HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let topic = herald_core::Topic::new("flood").unwrap();
    eventually("the stuck subscriber", || s.hub.subscribers(&topic) == 1).await;
    let mut good = s.client.sse(&["flood"], None).await.unwrap();
    let payload = "z".repeat(16 * 1024);
    let client = s.client.clone();
    const N: usize = 1000;
    let publisher = tokio::spawn(async move {
        for i in 0..N {
            client
                .publish("flood", json!(format!("{i} {payload}")), None)
                .await
                .unwrap();
        }
    });
    for i in 0..N {
        let e = next_event(&mut good).await;
        assert!(e.data.starts_with(&format!("{i} ")));
    }
    publisher.await.unwrap();
    eventually("the stuck subscriber to be dropped", || {
        s.hub.subscribers(&topic) == 1
    })
    .await;
    eventually("its connection gauge", || {
        s.hub.metrics().open(Transport::Sse) == 1
    })
    .await;
    assert!(
        s.hub
            .metrics()
            .slow_consumer_disconnects
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    // The server closed the socket: reading drains what was buffered, then EOF.
    stuck.set_read_timeout(Some(WAIT)).unwrap();
    let mut sink = vec![0u8; 1 << 20];
    let mut total = 0usize;
    loop {
        match stuck.read(&mut sink) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) => panic!("expected EOF after {total} bytes: {e}"),
        }
    }
    assert!(
        total < N * 16 * 1024,
        "the stuck client should not receive everything"
    );
}

/// Reads one whole HTTP/1.1 response (content-length framed) from `buf`,
/// reading more from `sock` as needed; returns its head and body.
async fn read_response(sock: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> (String, String) {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buf[..end].to_vec()).unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let l = l.to_ascii_lowercase();
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("content-length");
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8(buf[end + 4..end + 4 + len].to_vec()).unwrap();
                buf.drain(..end + 4 + len);
                return (head, body);
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, sock.read(&mut chunk))
            .await
            .expect("response in time")
            .unwrap();
        assert!(n > 0, "connection closed before a whole response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn poll_request(query: &str, extra: &str) -> String {
    format!("GET /v1/poll?{query} HTTP/1.1\r\nHost: x\r\n{extra}\r\n")
}

/// Long polls over HTTP/1.1 are answered by the accept loop itself (no
/// hyper buffers held while a poll waits): several polls on one keep-alive
/// connection, pipelined polls, a held poll answered by a publish, another
/// kind of request afterwards on the same connection, `Connection: close`,
/// and a client that leaves a held poll, which frees it at once.
#[tokio::test]
async fn long_polls_on_one_http1_connection() {
    use tokio::io::AsyncWriteExt;
    let s = TestServer::start().await;
    let mut sock = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let mut buf = Vec::new();
    let cursor_of = |body: &str| -> String {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        v["cursor"].as_str().unwrap().to_owned()
    };

    // From now: an empty batch and where to continue.
    sock.write_all(poll_request("topic=kp&timeout=0", "").as_bytes())
        .await
        .unwrap();
    let (head, body) = read_response(&mut sock, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("\r\ndate: "), "{head}");
    let mut cursor = cursor_of(&body);

    // The same connection, again: the event published in between.
    s.publish("kp", json!("a"), None).await;
    sock.write_all(poll_request(&format!("topic=kp&cursor={cursor}&timeout=5"), "").as_bytes())
        .await
        .unwrap();
    let (_, body) = read_response(&mut sock, &mut buf).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["events"][0]["data"], "a");
    cursor = cursor_of(&body);

    // Two pipelined polls in one write: two answers, in order.
    let q = format!("topic=kp&cursor={cursor}&timeout=0");
    let two = poll_request(&q, "") + &poll_request(&q, "");
    sock.write_all(two.as_bytes()).await.unwrap();
    for _ in 0..2 {
        let (head, body) = read_response(&mut sock, &mut buf).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(cursor_of(&body), cursor);
    }

    // A held poll, answered by a publish.
    sock.write_all(poll_request(&format!("topic=kp&cursor={cursor}&timeout=10"), "").as_bytes())
        .await
        .unwrap();
    eventually("the poll held", || {
        s.hub.metrics().open(Transport::Poll) == 1
    })
    .await;
    s.publish("kp", json!("b"), None).await;
    let (_, body) = read_response(&mut sock, &mut buf).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["events"][0]["data"], "b");

    // Another kind of request on the same connection (hyper takes it over),
    // then a poll again.
    let publish = json!({"topic": "kp", "data": "c"}).to_string();
    sock.write_all(
        format!(
            "POST /v1/publish HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{publish}",
            publish.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (head, _) = read_response(&mut sock, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    sock.write_all(poll_request("topic=kp&timeout=0", "").as_bytes())
        .await
        .unwrap();
    let (head, _) = read_response(&mut sock, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // `Connection: close`: the answer says so and the server closes.
    let mut sock = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let mut buf = Vec::new();
    sock.write_all(poll_request("topic=kp&timeout=0", "Connection: close\r\n").as_bytes())
        .await
        .unwrap();
    let (head, _) = read_response(&mut sock, &mut buf).await;
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    let mut rest = [0u8; 16];
    let n = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut sock, &mut rest))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "the connection stays open");

    // A client that leaves while its poll is held frees it at once.
    let mut sock = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    sock.write_all(poll_request("topic=kp&timeout=30", "").as_bytes())
        .await
        .unwrap();
    eventually("the poll held", || {
        s.hub.metrics().open(Transport::Poll) == 1
    })
    .await;
    drop(sock);
    eventually("the poll freed", || {
        s.hub.metrics().open(Transport::Poll) == 0
    })
    .await;
}
