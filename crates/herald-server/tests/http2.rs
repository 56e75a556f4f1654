//! HTTP/2: many SSE streams and long polls on one connection (TLS with ALPN
//! and cleartext h2c), WebSockets over HTTP/2 (RFC 8441), a stalled stream
//! that does not hold the others back, GOAWAY on shutdown, long-lived GETs
//! that carry DATA frames refused.

mod wire;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_client::{SseItem, SseParser};
use herald_core::{Hub, HubConfig, Transport};
use herald_http::HttpConfig;
use herald_server::tls::{CertSource, Tls};
use herald_server::{ServeOptions, ServerMetrics};
use http_body_util::{BodyExt, Empty};
use serde_json::json;
use tokio_rustls::rustls;
use wire::{get_h2, h2_over, tls_client, Sender, Windows};

const WAIT: Duration = Duration::from_secs(10);

struct Server {
    addr: std::net::SocketAddr,
    hub: Hub,
    tls: Option<Arc<Tls>>,
    /// The accept loop's TCP counters.
    tcp: Arc<ServerMetrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(tls: bool, hub_config: HubConfig) -> Server {
    start_with(tls, hub_config, HttpConfig::default()).await
}

async fn start_with(tls: bool, hub_config: HubConfig, http: HttpConfig) -> Server {
    let hub = Hub::memory(hub_config);
    let tls = tls.then(|| Arc::new(Tls::new(CertSource::SelfSigned).unwrap()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = herald_http::router(hub.clone(), http);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let options = ServeOptions {
        tls: tls.clone(),
        ..Default::default()
    };
    let tcp = options.metrics.clone();
    let h = hub.clone();
    let task = tokio::spawn(async move {
        herald_server::serve_with(listener, router, h, options, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Server {
        addr,
        hub,
        tls,
        tcp,
        stop: Some(tx),
        task,
    }
}

/// One HTTP/2 connection (h2 by ALPN over TLS, or h2c by prior knowledge).
async fn h2_connection(s: &Server) -> Sender {
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let windows = Windows {
        stream: 256 * 1024,
        connection: Some(4 * 1024 * 1024),
    };
    match &s.tls {
        None => h2_over(tcp, windows).await,
        Some(tls) => {
            let pem = tls.self_signed_pem.as_ref().unwrap();
            let config = tls_client(pem, &[b"h2"]);
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let stream = connector.connect(name, tcp).await.unwrap();
            assert_eq!(
                stream.get_ref().1.alpn_protocol(),
                Some(&b"h2"[..]),
                "ALPN must pick h2"
            );
            h2_over(stream, windows).await
        }
    }
}

fn uri(s: &Server, path: &str) -> String {
    let scheme = if s.tls.is_some() { "https" } else { "http" };
    format!("{scheme}://localhost:{}{path}", s.addr.port())
}

async fn get(
    sender: &mut Sender,
    s: &Server,
    path: &str,
) -> hyper::Response<hyper::body::Incoming> {
    get_h2(sender, uri(s, path)).await
}

async fn publish(s: &Server, topic: &str, data: serde_json::Value) {
    let e = herald_core::NewEvent::new(
        herald_core::Topic::new(topic).unwrap(),
        herald_core::Data::from_json(&data),
    );
    s.hub.publish(e).await.unwrap();
}

/// Reads SSE events from a body until one carries `want`.
async fn read_until(body: &mut hyper::body::Incoming, parser: &mut SseParser, want: &str) {
    loop {
        let frame = tokio::time::timeout(WAIT, body.frame())
            .await
            .expect("event in time")
            .unwrap()
            .unwrap();
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if parser
            .feed(&data)
            .iter()
            .any(|i| matches!(i, SseItem::Event(e) if e.data.contains(want)))
        {
            return;
        }
    }
}

async fn many_streams_on_one_connection(tls: bool) {
    let s = start(tls, HubConfig::default()).await;
    let mut sender = h2_connection(&s).await;
    // 90 SSE streams and 10 held long polls, on ten topics, one TCP connection.
    let mut streams = Vec::new();
    for i in 0..90 {
        let resp = get(&mut sender, &s, &format!("/v1/sse?topic=t/{}", i % 10)).await;
        assert_eq!(resp.status(), 200);
        streams.push((i % 10, resp.into_body(), SseParser::new()));
    }
    let mut polls = Vec::new();
    for i in 0..10 {
        let mut sender = sender.clone();
        let req = hyper::Request::get(uri(&s, &format!("/v1/poll?topic=t/{i}&timeout=20")))
            .body(Empty::new())
            .unwrap();
        polls.push(tokio::spawn(async move {
            sender.ready().await.unwrap();
            let resp = sender.send_request(req).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice::<serde_json::Value>(&body).unwrap()
        }));
    }
    let m = s.hub.metrics();
    for _ in 0..500 {
        if m.open(Transport::Sse) == 90 && m.open(Transport::Poll) == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(m.open(Transport::Sse), 90);
    assert_eq!(m.open(Transport::Poll), 10);
    assert_eq!(
        s.tcp.tcp_connections_total.load(Ordering::Relaxed),
        1,
        "all streams share one TCP connection"
    );
    for t in 0..10 {
        publish(&s, &format!("t/{t}"), json!(format!("event for t/{t}"))).await;
    }
    for (t, body, parser) in &mut streams {
        read_until(body, parser, &format!("event for t/{t}")).await;
    }
    for (i, p) in polls.into_iter().enumerate() {
        let v = tokio::time::timeout(WAIT, p).await.unwrap().unwrap();
        assert_eq!(v["events"][0]["data"], format!("event for t/{i}"));
    }
    assert_eq!(s.tcp.tcp_connections_total.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_streams_over_one_h2c_connection() {
    many_streams_on_one_connection(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_streams_over_one_tls_h2_connection() {
    many_streams_on_one_connection(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_http2_extended_connect() {
    for tls in [false, true] {
        let s = start(tls, HubConfig::default()).await;
        let mut sender = h2_connection(&s).await;
        let (status, ws) = wire::ws_over_h2(&mut sender, uri(&s, "/v1/ws"), &[]).await;
        assert_eq!(status, 200, "extended CONNECT accepted");
        let mut ws = ws.unwrap();
        use tokio_tungstenite::tungstenite::Message;
        ws.send(Message::Text(
            json!({"type": "subscribe", "topic": "h2/chat"})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
        ws.send(Message::Text(
            json!({"type": "publish", "topic": "h2/chat", "data": {"text": "over h2"}})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let m = tokio::time::timeout(WAIT, ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if let Message::Text(t) = m {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                seen.push(v["type"].as_str().unwrap().to_owned());
                if v["type"] == "event" {
                    assert_eq!(v["data"]["text"], "over h2");
                }
            }
        }
        seen.sort();
        assert_eq!(seen, ["event", "published", "subscribed"], "tls={tls}");
        // The same connection still serves plain requests beside the WebSocket.
        let r = get(&mut sender, &s, "/healthz").await;
        assert_eq!(r.status(), 200);
        assert_eq!(s.tcp.tcp_connections_total.load(Ordering::Relaxed), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_does_not_delay_the_others() {
    let s = start(false, HubConfig::default()).await;
    let mut sender = h2_connection(&s).await;
    // Stream A is never read; B is read throughout.
    let stalled = get(&mut sender, &s, "/v1/sse?topic=busy").await;
    let mut reader = get(&mut sender, &s, "/v1/sse?topic=busy").await.into_body();
    const N: usize = 1500;
    let payload = "p".repeat(4096);
    let hub = s.hub.clone();
    let publisher = tokio::spawn(async move {
        for i in 0..N {
            let e = herald_core::NewEvent::new(
                herald_core::Topic::new("busy").unwrap(),
                herald_core::Data::Text(format!("{i} {payload}").into()),
            );
            hub.publish(e).await.unwrap();
            // A steady publisher a reading client can follow (an in-process
            // publish is far faster than any network delivery).
            if i % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    let mut parser = SseParser::new();
    let mut next = 0usize;
    let started = std::time::Instant::now();
    while next < N {
        let frame = tokio::time::timeout(WAIT, reader.frame())
            .await
            .expect("the reading stream stalled")
            .unwrap()
            .unwrap();
        let Ok(data) = frame.into_data() else {
            continue;
        };
        for item in parser.feed(&data) {
            if let SseItem::Event(e) = item {
                assert!(e.data.starts_with(&format!("{next} ")), "gap at {next}");
                next += 1;
            }
        }
    }
    publisher.await.unwrap();
    assert!(started.elapsed() < WAIT);
    // The stalled stream fell behind its queue and was cut loose on its own;
    // the connection itself is still up and serving.
    assert!(
        s.hub
            .metrics()
            .slow_consumer_disconnects
            .load(Ordering::Relaxed)
            >= 1
    );
    let r = get(&mut sender, &s, "/healthz").await;
    assert_eq!(r.status(), 200);
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_ends_h2_streams() {
    let mut s = start(true, HubConfig::default()).await;
    let mut sender = h2_connection(&s).await;
    let mut body = get(&mut sender, &s, "/v1/sse?topic=bye").await.into_body();
    let mut parser = SseParser::new();
    let _ = s.stop.take().unwrap().send(());
    let mut text = Vec::new();
    while let Some(Ok(f)) = tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("stream ended in time")
    {
        if let Ok(d) = f.into_data() {
            text.extend(parser.feed(&d));
        }
    }
    assert!(
        text.iter()
            .any(|i| matches!(i, SseItem::Event(e) if e.event == "herald.disconnect")),
        "{text:?}"
    );
    tokio::time::timeout(WAIT, &mut s.task)
        .await
        .unwrap()
        .unwrap();
}

/// Held by the tests that make GETs wait for their stream's end: the bound
/// on such GETs is the process's, shared by every server in this binary.
static AWAITING_END: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A GET whose HEADERS do not end its stream, on a connection of its own:
/// the answer (when it comes within `wait`) and the sender of its DATA.
async fn open_get_with_body(
    s: &Server,
    path: &str,
    wait: Duration,
) -> (
    Option<hyper::Response<hyper::body::Incoming>>,
    http_body_util::channel::Sender<bytes::Bytes>,
    tokio::task::JoinHandle<hyper::Response<hyper::body::Incoming>>,
) {
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let windows = Windows {
        stream: 256 * 1024,
        connection: None,
    };
    let mut sender: hyper::client::conn::http2::SendRequest<
        http_body_util::channel::Channel<bytes::Bytes>,
    > = h2_over(tcp, windows).await;
    let (tx, body) = http_body_util::channel::Channel::new(4);
    let req = hyper::Request::get(uri(s, path)).body(body).unwrap();
    sender.ready().await.unwrap();
    let mut answer = tokio::spawn(async move { sender.send_request(req).await.unwrap() });
    let early = tokio::time::timeout(wait, &mut answer)
        .await
        .ok()
        .map(|r| r.unwrap());
    (early, tx, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lived_gets_carrying_data_frames_are_refused() {
    let _alone = AWAITING_END.lock().await;
    let http = HttpConfig {
        body_timeout: Duration::from_secs(1),
        ..HttpConfig::default()
    };
    let s = start_with(false, HubConfig::default(), http).await;
    for path in ["/v1/sse?topic=a", "/v1/poll?topic=a&timeout=5"] {
        // Content in DATA frames, no content-length (RFC 9113, section
        // 8.1): refused at its first byte, and the stream reset, so the
        // client cannot go on sending.
        let (early, mut tx, answer) =
            open_get_with_body(&s, path, Duration::from_millis(200)).await;
        assert!(early.is_none(), "{path}: answered before its stream ended");
        tx.send_data(bytes::Bytes::from_static(b"x")).await.unwrap();
        let resp = tokio::time::timeout(WAIT, answer).await.unwrap().unwrap();
        assert_eq!(resp.status(), 400, "{path}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "invalid_request", "{path}: {v}");
        let chunk = bytes::Bytes::from(vec![b'y'; 16 * 1024]);
        let mut refused = false;
        for _ in 0..1_000 {
            let sent = tokio::time::timeout(WAIT, tx.send_data(chunk.clone())).await;
            if !matches!(sent, Ok(Ok(()))) {
                refused = true;
                break;
            }
        }
        assert!(
            refused,
            "{path}: 16 MB more content was taken after the refusal"
        );

        // HEADERS, then an empty DATA frame that ends the stream: no
        // content, so the request is served.
        let (early, mut tx, answer) =
            open_get_with_body(&s, path, Duration::from_millis(200)).await;
        assert!(early.is_none(), "{path}: answered before its stream ended");
        tx.send_data(bytes::Bytes::new()).await.unwrap();
        drop(tx);
        let resp = tokio::time::timeout(WAIT, answer).await.unwrap().unwrap();
        assert_eq!(resp.status(), 200, "{path}");

        // A stream that never ends: 408 after the body timeout.
        let (early, tx, answer) = open_get_with_body(&s, path, Duration::from_millis(200)).await;
        assert!(early.is_none(), "{path}: answered before its stream ended");
        let resp = tokio::time::timeout(WAIT, answer).await.unwrap().unwrap();
        assert_eq!(resp.status(), 408, "{path}");
        drop(tx);
    }
    // A bodiless GET is served at once, as before.
    let mut sender = h2_connection(&s).await;
    let resp = get(&mut sender, &s, "/v1/sse?topic=a").await;
    assert_eq!(resp.status(), 200);
}

/// Long-lived GETs waiting for their stream to end are bounded in the
/// process: past the bound the next is refused 503 `server_full` at once,
/// and the room comes back when the waiters leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_waiting_for_their_stream_to_end_are_bounded() {
    let _alone = AWAITING_END.lock().await;
    let http = HttpConfig {
        body_timeout: Duration::from_secs(60),
        ..HttpConfig::default()
    };
    let s = start_with(false, HubConfig::default(), http).await;
    let max = herald_http::transport::MAX_GETS_AWAITING_END;
    let mut held = Vec::new();
    for chunk in 0..2 {
        let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        let windows = Windows {
            stream: 64 * 1024,
            connection: None,
        };
        let sender: hyper::client::conn::http2::SendRequest<
            http_body_util::channel::Channel<bytes::Bytes>,
        > = h2_over(tcp, windows).await;
        let n = if chunk == 0 { max / 2 } else { max - max / 2 };
        for _ in 0..n {
            let (tx, body) = http_body_util::channel::Channel::new(1);
            let req = hyper::Request::get(uri(&s, "/v1/sse?topic=w"))
                .body(body)
                .unwrap();
            let mut sender = sender.clone();
            let task = tokio::spawn(async move {
                sender.ready().await.unwrap();
                sender.send_request(req).await
            });
            held.push((tx, task));
        }
    }
    // Every one of them waits: the next is refused once they have arrived.
    let mut refused = None;
    for _ in 0..100 {
        let (early, tx, answer) =
            open_get_with_body(&s, "/v1/sse?topic=w", Duration::from_millis(200)).await;
        if let Some(resp) = early {
            refused = Some(resp);
            break;
        }
        held.push((tx, tokio::spawn(async move { Ok(answer.await.unwrap()) })));
    }
    let resp = refused.expect("a GET past the bound is answered at once");
    // An event stream learns it as a temporary refusal it understands.
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("server_full"), "{text}");
    assert!(held.len() <= max + 100);
    // The waiters leave (their streams end without content and are served,
    // or are dropped): a new one waits again instead of being refused.
    for (tx, task) in held {
        drop(tx);
        task.abort();
    }
    for _ in 0..100 {
        let (early, _tx, _answer) =
            open_get_with_body(&s, "/v1/sse?topic=w", Duration::from_millis(200)).await;
        if early.is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the bound's room did not come back");
}
