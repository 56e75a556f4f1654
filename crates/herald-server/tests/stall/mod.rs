//! A server whose answers are too large for the kernel's socket buffers,
//! for the tests of clients that stop reading (HTTP/1.1 and HTTP/2).
// Each test binary uses part of it.
#![allow(dead_code)]

use std::time::Duration;

use herald_core::{Data, HubConfig, NewEvent, Topic};
use herald_http::HttpConfig;
use serde_json::json;

use crate::support::{quick_http, TestServer};

/// A server with a 1 s write deadline whose `topic` holds 12 MB of events
/// after the returned cursor: a poll's answer larger than the kernel's
/// socket buffers (4 MiB at most here), so that its writes block.
pub async fn stalling_server(topic: &str) -> (TestServer, String) {
    let http = HttpConfig {
        write_timeout: Duration::from_secs(1),
        poll_max_bytes: 32 * 1024 * 1024,
        ..quick_http()
    };
    let s = TestServer::start_with(HubConfig::default(), http).await;
    let start = s
        .client
        .poll(&[topic], None, Duration::ZERO)
        .await
        .unwrap()
        .cursor;
    let t = Topic::new(topic).unwrap();
    let mb = "x".repeat(1_000_000);
    for _ in 0..12 {
        s.hub
            .publish(NewEvent::new(t.clone(), Data::from_json(&json!(mb))))
            .await
            .unwrap();
    }
    (s, start)
}

/// Reads `c` to its end (at most `wait`): how the server ended the
/// connection. A server that drops a connection whose writes are blocked
/// resets it (`ConnectionReset`) rather than leave its unsent bytes to
/// trickle out before a FIN (`Ok` with the bytes read).
pub async fn read_to_end(c: &mut tokio::net::TcpStream, wait: Duration) -> std::io::Result<usize> {
    use tokio::io::AsyncReadExt;
    let mut total = 0;
    let mut buf = vec![0u8; 64 * 1024];
    let read = tokio::time::timeout(wait, async {
        loop {
            match c.read(&mut buf).await? {
                0 => return Ok(total),
                n => total += n,
            }
        }
    });
    read.await.expect("the connection did not end in time")
}
