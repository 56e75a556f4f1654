//! HTTP/2 streams under the resource rules: a stream dropped as a slow
//! consumer frees its queue and connection slot at once and is reset, and a
//! same-origin cookie WebSocket is accepted although HTTP/2 sends
//! `:authority` instead of `Host`, and a connection whose client stops
//! reading its socket, or a stream's window, is dropped at the write
//! deadline.

mod stall;
#[path = "../../herald-http/tests/support/mod.rs"]
mod support;
mod wire;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_auth::{jwt, Auth, AuthConfig};
use herald_core::{Data, HubConfig, NewEvent, Topic, Transport};
use herald_http::HttpConfig;
use http_body_util::{BodyExt, Empty};
use serde_json::json;
use support::{quick_http, TestServer};
use wire::{get_h2, h2_over, pct, ws_over_h2, Sender, Windows};

const WAIT: Duration = Duration::from_secs(10);
const SECRET: &[u8] = b"http2-streams-secret-0123456789abcdef";

/// One h2c connection (prior knowledge) with a stream window of `window` bytes.
async fn h2(addr: SocketAddr, window: u32) -> Sender {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let windows = Windows {
        stream: window,
        connection: None,
    };
    h2_over(tcp, windows).await
}

async fn get(
    sender: &mut Sender,
    addr: SocketAddr,
    path: &str,
) -> hyper::Response<hyper::body::Incoming> {
    get_h2(sender, format!("http://localhost:{}{path}", addr.port())).await
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_stream_frees_its_slot_and_is_reset() {
    let hub = HubConfig {
        queue_capacity: 8,
        ..HubConfig::default()
    };
    let http = HttpConfig {
        max_connections_per_ip: 1,
        ..quick_http()
    };
    let s = TestServer::start_with(hub, http).await;
    let m = s.hub.metrics().clone();
    // A client that reads nothing: its 1 KiB stream window fills at once.
    let mut slow = h2(s.addr, 1024).await;
    let resp = get(&mut slow, s.addr, "/v1/sse?topic=slow").await;
    assert_eq!(resp.status(), 200);
    let mut stalled = resp.into_body();
    wait_until("the stream opened", || m.open(Transport::Sse) == 1).await;
    // The one slot per address is taken.
    let mut other = h2(s.addr, 1024 * 1024).await;
    let refused = get(&mut other, s.addr, "/v1/poll?topic=x&timeout=0").await;
    assert_eq!(refused.status(), 429, "the stalled stream holds the slot");

    let topic = Topic::new("slow").unwrap();
    let data = Data::from_json(&json!("e".repeat(8 * 1024)));
    for _ in 0..400 {
        s.hub
            .publish(NewEvent::new(topic.clone(), data.clone()))
            .await
            .unwrap();
        if m.slow_consumer_disconnects.load(Ordering::Relaxed) > 0 {
            break;
        }
    }
    assert!(
        m.slow_consumer_disconnects.load(Ordering::Relaxed) > 0,
        "the stalled stream overflowed its queue"
    );
    // Freed at once, while the client still reads nothing.
    wait_until("the stream's slot freed", || m.open(Transport::Sse) == 0).await;
    let resp = get(&mut other, s.addr, "/v1/sse?topic=slow").await;
    assert_eq!(resp.status(), 200, "the slot is free again");
    // The stalled stream ends once its client reads again: reset (its body
    // was dropped), or, when hyper happened to poll it before the drop, with
    // the `herald.disconnect` event and a clean end.
    let mut seen = Vec::new();
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match stalled.frame().await {
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        seen.extend_from_slice(&d);
                    }
                }
                Some(Err(_)) => return "reset",
                None => return "ended",
            }
        }
    })
    .await
    .expect("the dropped stream ends");
    if ended == "ended" {
        let text = String::from_utf8_lossy(&seen);
        assert!(
            text.contains("herald.disconnect") && text.contains("slow_consumer"),
            "a clean end says why"
        );
    }
}

fn token() -> String {
    let now = herald_auth::now();
    let claims = jwt::Claims {
        sub: Some("alice".into()),
        exp: now + 120,
        iat: Some(now),
        nbf: None,
        herald: jwt::HeraldClaim {
            subscribe: vec!["users/{sub}/**".into()],
            publish: vec!["users/{sub}/**".into()],
            ..Default::default()
        },
        info: None,
    };
    jwt::sign(&claims, SECRET, false, None).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_same_origin_cookie_websocket_over_http2_is_accepted() {
    let http = HttpConfig {
        auth: Arc::new(
            Auth::new(AuthConfig {
                hs256_secret: Some(SECRET.to_vec()),
                ..AuthConfig::default()
            })
            .unwrap(),
        ),
        ..quick_http()
    };
    let s = TestServer::start_with(HubConfig::default(), http).await;
    let cookie = format!("herald_token={}", token());
    let authority = format!("localhost:{}", s.addr.port());
    for (origin, status) in [
        (format!("http://{authority}"), 200),
        ("https://evil.example".to_owned(), 403),
    ] {
        let mut sender = h2(s.addr, 1024 * 1024).await;
        let headers = [("cookie", cookie.as_str()), ("origin", origin.as_str())];
        let (got, ws) =
            ws_over_h2(&mut sender, format!("http://{authority}/v1/ws"), &headers).await;
        assert_eq!(got, status, "origin {origin}");
        let Some(mut ws) = ws else {
            continue;
        };
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        ws.send(Message::Text(
            json!({"type": "subscribe", "topic": "users/alice/inbox"})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
        assert_eq!(v["type"], "subscribed", "{v}");
    }
}

/// A socket that stops being read after its first `left` bytes: a client
/// that stops reading mid-answer, its kernel buffer as small as it goes.
struct StopsReading {
    inner: tokio::net::TcpStream,
    left: usize,
}

impl tokio::io::AsyncRead for StopsReading {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.left == 0 {
            // Never woken: nothing is read from this socket again.
            return std::task::Poll::Pending;
        }
        let mut chunk = vec![0u8; self.left.min(buf.remaining()).min(8192)];
        let mut part = tokio::io::ReadBuf::new(&mut chunk);
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, &mut part);
        if let std::task::Poll::Ready(Ok(())) = polled {
            let n = part.filled().len();
            buf.put_slice(part.filled());
            self.left -= n;
        }
        polled
    }
}

impl tokio::io::AsyncWrite for StopsReading {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        b: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, b)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// HTTP/2 has flow control per stream, but a client that stops reading its
/// socket stalls the whole connection (its PINGs and a GOAWAY queue behind
/// the data): hyper has no write timeout, and the stream under it drops
/// the connection once a write has made no progress for the deadline, as
/// over HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_client_stops_reading_is_dropped_at_the_write_deadline() {
    let (s, start) = stall::stalling_server("big-h2").await;
    let m = s.server_metrics.clone();
    let open_now = || m.tcp_connections_open.load(Ordering::Relaxed);
    let base = open_now();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let tcp = sock.connect(s.addr).await.unwrap();
    // Windows as large as HTTP/2 allows: flow control never holds the
    // answer back, only the stalled socket does.
    let max = (1u32 << 31) - 1;
    let windows = Windows {
        stream: max,
        connection: Some(max),
    };
    let io = StopsReading {
        inner: tcp,
        left: 64 * 1024,
    };
    let mut sender = h2_over(io, windows).await;
    let path = format!("/v1/poll?topic=big-h2&cursor={}&timeout=0", pct(&start));
    let resp = get(&mut sender, s.addr, &path).await;
    assert_eq!(resp.status(), 200);
    let started = Instant::now();
    wait_until("the stalled HTTP/2 connection was dropped", || {
        open_now() < base + 1
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "dropped at the deadline, not before: {:?}",
        started.elapsed()
    );
    drop(resp);
}

/// A stream whose client keeps its window closed while it reads the
/// connection (the connection's writes progress, its PINGs are answered)
/// is dropped once it has made no progress for the write deadline, with
/// its connection (the HTTP/2 layer keeps the frame it was handed until
/// the stream is reset; here a back-fill of megabytes); a stream read on
/// another connection stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_window_stays_closed_is_dropped_at_the_write_deadline() {
    let (s, _) = stall::stalling_server("big-window").await;
    let m = s.hub.metrics().clone();
    let tcp = s.server_metrics.clone();
    let mut conn = h2(s.addr, 64 * 1024).await;
    let stalled = get(&mut conn, s.addr, "/v1/sse?topic=big-window&since=earliest").await;
    assert_eq!(stalled.status(), 200);
    let mut other = h2(s.addr, 64 * 1024).await;
    let read = get(&mut other, s.addr, "/v1/sse?topic=quiet").await;
    assert_eq!(read.status(), 200);
    let reader = tokio::spawn(async move {
        let mut body = read.into_body();
        while let Some(Ok(_)) = body.frame().await {}
    });
    wait_until("both streams open", || m.open(Transport::Sse) == 2).await;
    let connections = tcp.tcp_connections_open.load(Ordering::Relaxed);
    let started = Instant::now();
    wait_until("the stalled stream dropped", || m.open(Transport::Sse) == 1).await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "dropped at the deadline, not before: {:?}",
        started.elapsed()
    );
    wait_until("its connection closed", || {
        tcp.tcp_connections_open.load(Ordering::Relaxed) < connections
    })
    .await;
    // The stream that is read stays through several deadlines.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(m.open(Transport::Sse), 1, "the read stream stays");
    assert!(!reader.is_finished());
    drop(stalled);
    reader.abort();
}

/// A WebSocket over HTTP/2 (RFC 8441) whose client keeps the stream's
/// window closed while it keeps the connection (hyper answers its PINGs)
/// ends at the write deadline with its connection: hyper resets an
/// upgraded stream only when it can write to it, so the stream and the
/// back-fill it was handed would otherwise stay as long as the client
/// keeps the connection. A WebSocket on another connection stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_whose_window_stays_closed_is_dropped_with_its_connection() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let (s, _) = stall::stalling_server("ws-window").await;
    let m = s.hub.metrics().clone();
    let tcp = s.server_metrics.clone();
    let authority = format!("localhost:{}", s.addr.port());
    let mut open = Vec::new();
    for topic in ["ws-window", "ws-quiet"] {
        let mut sender = h2(s.addr, 64 * 1024).await;
        let (status, ws) = ws_over_h2(&mut sender, format!("http://{authority}/v1/ws"), &[]).await;
        assert_eq!(status, 200);
        let mut ws = ws.unwrap();
        // Subscribed with the topic's 12 MB back-fill, then never read:
        // the stream's 64 KiB window closes at once.
        ws.send(Message::Text(
            json!({"type": "subscribe", "topic": topic, "since": "earliest"})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
        open.push((sender, ws));
    }
    wait_until("both WebSockets open", || m.open(Transport::WebSocket) == 2).await;
    let connections = tcp.tcp_connections_open.load(Ordering::Relaxed);
    let started = Instant::now();
    wait_until("the stalled WebSocket ended", || {
        m.open(Transport::WebSocket) == 1
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "ended at the deadline, not before: {:?}",
        started.elapsed()
    );
    wait_until("its connection closed", || {
        tcp.tcp_connections_open.load(Ordering::Relaxed) < connections
    })
    .await;
    // The quiet WebSocket (its connection) stays through several deadlines.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(m.open(Transport::WebSocket), 1, "the quiet WebSocket stays");
    drop(open);
}

/// RFC 9113, section 8.3.1: an HTTP/2 request whose `Host` differs from its
/// `:authority` is refused with 400; the same `Host` is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_differs_from_the_authority_is_refused() {
    let s = TestServer::start().await;
    let mut conn = h2(s.addr, 64 * 1024).await;
    let authority = format!("localhost:{}", s.addr.port());
    for (host, status) in [("elsewhere.example", 400), (authority.as_str(), 200)] {
        conn.ready().await.unwrap();
        let req = hyper::Request::get(format!("http://{authority}/healthz"))
            .header(http::header::HOST, host)
            .body(Empty::new())
            .unwrap();
        let resp = conn.send_request(req).await.unwrap();
        assert_eq!(resp.status(), status, "Host {host}");
        if status == 400 {
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["error"]["code"], "invalid_request");
        }
    }
}
