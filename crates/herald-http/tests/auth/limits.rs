//! CORS off by default and on for configured origins, and connection limits
//! answering 429 and 503 with `Retry-After`.

use super::*;

#[tokio::test]
async fn cors_is_off_by_default_and_answers_configured_origins() {
    let s = TestServer::start().await;
    let r = s
        .client
        .request(
            http::Method::OPTIONS,
            "/v1/publish",
            &[("origin", "https://app.example")],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let http = HttpConfig {
        cors_origins: vec!["https://app.example".into()],
        ..quick_http()
    };
    let s = TestServer::start_with(HubConfig::default(), http).await;
    let r = s
        .client
        .request(
            http::Method::OPTIONS,
            "/v1/publish",
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "POST"),
            ],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(r.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("authorization"));
    let r = s
        .client
        .request(
            http::Method::GET,
            "/v1/poll?topic=a&timeout=0",
            &[("origin", "https://other.example")],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_answer_429_and_503_with_retry_after() {
    let http = HttpConfig {
        max_connections: 3,
        max_connections_per_ip: 2,
        ..quick_http()
    };
    let s = TestServer::start_with(HubConfig::default(), http).await;
    let _a = s.client.sse(&["l"], None).await.unwrap();
    let _b = s.client.sse(&["l"], None).await.unwrap();
    // A long poll over the per-address limit: 429 with Retry-After.
    let r = s
        .client
        .request(
            http::Method::GET,
            "/v1/poll?topic=l&timeout=0",
            &[],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    // An SSE stream over it: a refusal an EventSource understands (200,
    // retry:, herald.disconnect rate_limited, end), so the browser retries.
    let r = s
        .client
        .request(
            http::Method::GET,
            "/v1/sse?topic=l",
            &[],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    use http_body_util::BodyExt;
    let body =
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(body.starts_with("retry: "), "{body:?}");
    assert!(
        body.ends_with("event: herald.disconnect\ndata: {\"reason\":\"rate_limited\"}\n\n"),
        "{body:?}"
    );
    // Another loopback address is another client; the server-wide limit
    // then refuses SSE as `server_full`.
    let other = bind_from("127.0.0.2", s.addr).await;
    let _c = other;
    let other2 = raw_status_from("127.0.0.3", s.addr).await;
    assert_eq!(other2.0, 200);
    assert!(other2.1.contains("herald.disconnect"), "{}", other2.1);
    assert!(other2.1.contains("server_full"), "{}", other2.1);
    // Publishing is not a streaming connection: never limited.
    s.publish("l", json!(1), None).await;
}

/// Opens an SSE connection from `src` and keeps it open.
async fn bind_from(src: &str, to: std::net::SocketAddr) -> tokio::net::TcpStream {
    let (stream, status, _) = sse_from(src, to).await;
    assert_eq!(status, 200);
    stream
}

/// The status and the whole answer (read to its end) of `GET /v1/sse` from `src`.
async fn raw_status_from(src: &str, to: std::net::SocketAddr) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let (mut stream, status, mut text) = sse_from(src, to).await;
    let mut buf = [0u8; 1024];
    while let Ok(Ok(n)) = tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    (status, text)
}

/// Opens `GET /v1/sse` from the loopback address `src`; returns the open
/// stream, the status and the first bytes of the answer.
async fn sse_from(src: &str, to: std::net::SocketAddr) -> (tokio::net::TcpStream, u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    let mut stream = sock.connect(to).await.unwrap();
    stream
        .write_all(b"GET /v1/sse?topic=l HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    let status = text[9..12].parse().unwrap();
    (stream, status, text)
}
