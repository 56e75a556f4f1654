//! The SSE stream: its preamble and headers, the raw wire format, resume by
//! header and by query, keepalive comments, and clients that leave or stop
//! reading.

use super::*;

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
        // Events 100 ms apart, well within the keepalive (the scenario).
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
    // The server ended the connection: dropped while its write was
    // blocked, it is reset (so the unsent bytes do not linger in the
    // server's kernel); reading drains what had arrived, then the reset
    // (or an EOF, had the write not been blocked).
    stuck.set_read_timeout(Some(WAIT)).unwrap();
    let mut sink = vec![0u8; 1 << 20];
    let mut total = 0usize;
    loop {
        match stuck.read(&mut sink) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("expected the end after {total} bytes: {e}"),
        }
    }
    assert!(
        total < N * 16 * 1024,
        "the stuck client should not receive everything"
    );
}
