//! The accept loop's HTTP/1.1 path in process, over raw sockets: a poll
//! whose client stalls is dropped at the write deadline, and valid requests
//! cut anywhere get the answer they get whole. (Hostile clients against the
//! binary: crates/herald/tests/http1.rs.)

mod stall;
#[path = "../../herald-http/tests/support/mod.rs"]
mod support;
mod wire;

use std::time::{Duration, Instant};

use herald_core::{Data, HubConfig, NewEvent, Topic};
use serde_json::json;
use stall::{read_to_end, stalling_server};
use support::{quick_http, TestServer};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use wire::{answer_in_time, pct, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_poll_is_dropped_at_the_write_deadline() {
    let (s, start) = stalling_server("big").await;
    let m = s.server_metrics.clone();
    // The client's own pooled connection stays open.
    let base = m
        .tcp_connections_open
        .load(std::sync::atomic::Ordering::Relaxed);
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let mut c = sock.connect(s.addr).await.unwrap();
        c.write_all(
            format!(
                "GET /v1/poll?topic=big&cursor={}&timeout=0 HTTP/1.1\r\nHost: x\r\n\r\n",
                pct(&start)
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        stalled.push(c);
    }
    // Opened, then dropped once a write has not progressed for 1 s.
    let open_now = || {
        m.tcp_connections_open
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let deadline = Instant::now() + WAIT;
    while open_now() < base + 3 {
        assert!(
            Instant::now() < deadline,
            "the stalled connections were not accepted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    loop {
        let open = open_now();
        if open <= base {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} stalled connections still open",
            open - base
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Reset, not closed: the unsent answer is not left in the kernel.
    for mut c in stalled {
        let end = read_to_end(&mut c, WAIT).await;
        assert_eq!(
            end.as_ref().map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionReset),
            "{end:?}"
        );
    }
}

/// The same on a connection hyper serves (its first request is one the
/// direct path does not take): hyper has no write timeout of its own, the
/// stream under it gives the answer's write deadline, and a request that
/// asks for an upgrade it does not get does not turn that off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_answer_on_a_connection_hyper_serves_is_dropped_at_the_write_deadline() {
    let (s, start) = stalling_server("big-hyper").await;
    let m = s.server_metrics.clone();
    let open_now = || {
        m.tcp_connections_open
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let base = open_now();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let c = sock.connect(s.addr).await.unwrap();
    let mut r = BufReader::new(c);
    // `GET /healthz` is hyper's: the connection is hyper's from then on.
    // Asking for an upgrade that is not granted leaves the deadline on.
    r.get_mut()
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(answer_in_time(&mut r, "healthz").await.status, 200);
    r.get_mut()
        .write_all(
            format!(
                "GET /v1/poll?topic=big-hyper&cursor={}&timeout=0 HTTP/1.1\r\nHost: x\r\n\r\n",
                pct(&start)
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // Not read from now on: dropped once a write has not progressed for 1 s.
    let started = Instant::now();
    let deadline = started + WAIT;
    while open_now() > base {
        assert!(
            Instant::now() < deadline,
            "the stalled connection is still open after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "dropped at the deadline, not before: {:?}",
        started.elapsed()
    );
    let end = read_to_end(r.get_mut(), WAIT).await;
    assert_eq!(
        end.as_ref().map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "{end:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_requests_split_anywhere_are_answered_the_same() {
    // The accept loop's head reader and its hand-over to hyper, over a real
    // socket: each request sent whole, then cut at random points with a
    // pause between pieces, must get the same answer.
    use rand::Rng;
    let s = TestServer::start().await;
    s.client.publish("split", json!("one"), None).await.unwrap();
    let body = r#"{"topic":"split2","data":1}"#;
    let requests = [
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
        "GET /v1/poll?topic=split&timeout=0 HTTP/1.1\nHost: x\n\n".to_owned(),
        format!(
            "POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
        "GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
    ];
    let mut rng = rand::rng();
    for req in &requests {
        let mut whole = TcpStream::connect(s.addr).await.unwrap();
        whole.write_all(req.as_bytes()).await.unwrap();
        let expected = answer_in_time(&mut BufReader::new(&mut whole), "whole").await;
        for _ in 0..8 {
            let mut c = TcpStream::connect(s.addr).await.unwrap();
            c.set_nodelay(true).unwrap();
            let bytes = req.as_bytes();
            let mut at = 0;
            while at < bytes.len() {
                let n = rng.random_range(1..=(bytes.len() - at).min(16));
                c.write_all(&bytes[at..at + n]).await.unwrap();
                at += n;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let got = answer_in_time(&mut BufReader::new(&mut c), "split").await;
            assert_eq!(got.status, expected.status, "{req:?}");
            assert_eq!(
                got.header("content-type"),
                expected.header("content-type"),
                "{req:?}"
            );
            if req.contains("poll") || req.contains("nowhere") {
                assert_eq!(got.body, expected.body, "{req:?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_head_says_the_connection_closes_with_it() {
    // The connection ends when the stream does; a client that pooled it
    // for its next request would race that close (RFC 9112, section 9.6).
    let s = TestServer::start().await;
    let mut c = BufReader::new(TcpStream::connect(s.addr).await.unwrap());
    c.get_mut()
        .write_all(b"GET /v1/sse?topic=heads HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = String::new();
    tokio::time::timeout(WAIT, async {
        use tokio::io::AsyncBufReadExt;
        loop {
            let mut line = String::new();
            assert!(c.read_line(&mut line).await.unwrap() > 0, "{head}");
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
    })
    .await
    .expect("a response head");
    let lower = head.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 200"), "{head}");
    assert!(lower.contains("content-type: text/event-stream"), "{head}");
    assert!(lower.contains("connection: close\r\n"), "{head}");
}

/// A stream served by hyper (a later request on a keep-alive connection,
/// as a browser sends after a token exchange) ends as soon as its client
/// closes the connection, as on the direct path: its subscription, and
/// with it the client's presence, goes at once, not at the next failed
/// keepalive write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_after_another_request_ends_when_the_client_closes() {
    let s = TestServer::start_with(HubConfig::default(), quick_http()).await;
    let topic = Topic::new("closing/1").unwrap();
    let mut c = BufReader::new(TcpStream::connect(s.addr).await.unwrap());
    c.get_mut()
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    answer_in_time(&mut c, "healthz").await;
    c.get_mut()
        .write_all(b"GET /v1/sse?topic=closing/1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while s.hub.subscribers(&topic) == 0 {
        assert!(Instant::now() < deadline, "the stream never subscribed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(c);
    let closed = Instant::now();
    while s.hub.subscribers(&topic) > 0 {
        assert!(
            closed.elapsed() < Duration::from_secs(2),
            "still subscribed {:?} after the client closed (keepalive is {:?})",
            closed.elapsed(),
            quick_http().keepalive
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The state (`/proc/net/tcp`'s `st`, hex) of the server's side of the
/// loopback connection between `server` and `client` ports, if it exists.
fn server_side_state(server: u16, client: u16) -> Option<String> {
    let port = |a: &str| u16::from_str_radix(a.rsplit(':').next()?, 16).ok();
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (port(f[1]) == Some(server) && port(f[2]) == Some(client)).then(|| f[3].to_owned())
        })
}

/// An answer that fits in the server's send buffer completes its write,
/// and the connection closes (`Connection: close`) with it unsent to a
/// client that reads nothing. The kernel keeps such an orphan in
/// FIN-WAIT-1, with its buffer, for as long as the client acknowledges its
/// probes; the close timeout (here the 1 s write deadline) gives up on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_left_unsent_at_close_is_given_up_after_the_close_timeout() {
    let (s, _) = stalling_server("unused").await;
    let fits = Topic::new("fits").unwrap();
    let data = Data::from_json(&json!("x".repeat(1_000_000)));
    s.hub.publish(NewEvent::new(fits, data)).await.unwrap();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut c = sock.connect(s.addr).await.unwrap();
    c.write_all(
        b"GET /v1/poll?topic=fits&since=earliest&timeout=0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let (server, client) = (s.addr.port(), c.local_addr().unwrap().port());
    const FIN_WAIT1: &str = "04";
    let deadline = Instant::now() + WAIT;
    while server_side_state(server, client).as_deref() != Some(FIN_WAIT1) {
        assert!(
            Instant::now() < deadline,
            "the answer was not left unsent at close: {:?}",
            server_side_state(server, client)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let orphaned = Instant::now();
    while let Some(state) = server_side_state(server, client) {
        assert!(
            orphaned.elapsed() < WAIT,
            "the orphan is still there ({state}) after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(c);
}

/// A WebSocket upgraded from HTTP/1.1 counts as an open TCP connection for
/// as long as its socket is open: hyper's connection ends at the upgrade,
/// the socket does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_websocket_counts_as_an_open_connection_until_it_closes() {
    use tokio::io::AsyncReadExt;
    let s = TestServer::start().await;
    let m = s.server_metrics.clone();
    let open_now = || {
        m.tcp_connections_open
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let base = open_now();
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(
        b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, c.read(&mut byte))
            .await
            .expect("the upgrade's answer in time")
            .unwrap();
        assert_eq!(n, 1, "closed before the answer's end: {head:?}");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    // Past the upgrade (hyper's connection has ended by now), still open.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(open_now(), base + 1, "the upgraded socket is not counted");
    drop(c);
    let deadline = Instant::now() + WAIT;
    while open_now() > base {
        assert!(Instant::now() < deadline, "still counted after its close");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(open_now(), base);
}
