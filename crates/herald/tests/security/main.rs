//! The kinds of weakness found by trying Herald as an attacker would, one
//! test each, with the examples that found them as cases (DESIGN.md,
//! "Credentials over time", "Refusals an EventSource understands", "Cursor
//! and name input"; trusted proxies): against the real `herald serve` binary.

#[path = "../process/mod.rs"]
mod process;

mod abuse;
mod credentials;
mod input_and_refusals;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use herald_auth::jwt;
use serde_json::json;

const SECRET: &str = "security-suite-secret-0123456789abcdef";
const KEY: &str = "security-suite-publisher-key-0123";
const WAIT: Duration = Duration::from_secs(10);

use process::ServeProcess as Server;

fn start(extra: &[&str]) -> Server {
    let mut cmd = Command::new(process::BIN);
    cmd.args([
        "serve",
        "--engine",
        "memory",
        "--listen",
        "127.0.0.1:0",
        "--jwt-secret",
        SECRET,
        "--publish-key",
        KEY,
        "--public",
        "news/**",
    ])
    .args(extra);
    Server::spawn(cmd)
}

/// A token for `sub` granting `users/{sub}/**` (or `topics`), valid for `ttl` seconds from `iat`.
fn token_for(sub: &str, topics: &[&str], iat: u64, ttl: u64) -> String {
    let topics: Vec<String> = if topics.is_empty() {
        vec!["users/{sub}/**".into()]
    } else {
        topics.iter().map(|t| t.to_string()).collect()
    };
    jwt::sign(
        &jwt::Claims {
            sub: Some(sub.into()),
            exp: iat + ttl,
            iat: Some(iat),
            nbf: None,
            herald: jwt::HeraldClaim {
                subscribe: topics.clone(),
                publish: topics,
                llm: false,
                admin: false,
            },
            info: None,
        },
        SECRET.as_bytes(),
        false,
        None,
    )
    .unwrap()
}

async fn publish(s: &Server, topic: &str, data: serde_json::Value) -> String {
    let (st, v) = s
        .client
        .clone()
        .with_token(KEY)
        .publish_raw(
            json!({"topic": topic, "data": data}).to_string(),
            "application/json",
        )
        .await
        .unwrap();
    assert_eq!(st, 200, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

/// `GET path` over a raw socket with extra head lines; the status and the
/// whole answer, read until the server closes or `limit` passes.
fn raw_get(addr: std::net::SocketAddr, path: &str, extra: &[u8], limit: Duration) -> (u16, String) {
    let mut sock = TcpStream::connect(addr).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n").into_bytes();
    req.extend_from_slice(extra);
    req.extend_from_slice(b"Connection: close\r\n\r\n");
    sock.write_all(&req).unwrap();
    sock.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}
