//! Long polls on one HTTP/1.1 connection, answered by the accept loop.

use super::*;

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
