//! Raw wire helpers for the accept-loop tests: HTTP/1.1 answers read off a
//! socket, and HTTP/2 connections (h2c by prior knowledge, or h2 by ALPN
//! over TLS) with hyper's client.
//!
//! Shared by this crate's tests and the HTTP/1.1 tests against the binary
//! (crates/herald/tests/http1.rs).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio_rustls::rustls;

/// The longest wait for one answer.
pub const WAIT: Duration = Duration::from_secs(10);

/// One HTTP/1.1 answer as read off the socket.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (panics with the body otherwise).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// Reads one answer (content-length or chunked framing); `None` at the end
/// of input before a status line. An event stream's body is not read.
pub async fn read_answer<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> Option<Answer> {
    let mut line = String::new();
    if r.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let status = line.split(' ').nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).await.ok()?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':')?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let mut a = Answer {
        status,
        headers,
        body: Vec::new(),
    };
    if a.header("content-type")
        .is_some_and(|t| t.starts_with("text/event-stream"))
    {
        return Some(a);
    }
    if let Some(len) = a.header("content-length") {
        let mut body = vec![0u8; len.parse().ok()?];
        r.read_exact(&mut body).await.ok()?;
        a.body = body;
    } else if a.header("transfer-encoding") == Some("chunked") {
        loop {
            line.clear();
            r.read_line(&mut line).await.ok()?;
            let n = usize::from_str_radix(line.trim(), 16).ok()?;
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk).await.ok()?;
            if n == 0 {
                break;
            }
            a.body.extend_from_slice(&chunk[..n]);
        }
    }
    Some(a)
}

/// [`read_answer`] within [`WAIT`]; panics naming `what` otherwise.
pub async fn answer_in_time<R: AsyncRead + Unpin>(r: &mut BufReader<R>, what: &str) -> Answer {
    tokio::time::timeout(WAIT, read_answer(r))
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {WAIT:?}"))
        .unwrap_or_else(|| panic!("{what}: the connection closed without an answer"))
}

/// Reads until the end of input; true if it came within `wait`.
pub async fn closes_within<R: AsyncRead + Unpin>(r: &mut R, wait: Duration) -> bool {
    let mut sink = [0u8; 4096];
    tokio::time::timeout(wait, async {
        loop {
            match r.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Percent-encodes everything but unreserved characters.
pub fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One HTTP/2 connection's request handle (bodiless requests).
pub type Sender = SendRequest<Empty<Bytes>>;

/// Flow-control windows of a client connection, in bytes.
#[derive(Clone, Copy, Debug)]
pub struct Windows {
    pub stream: u32,
    pub connection: Option<u32>,
}

/// The HTTP/2 handshake over `io` (any byte stream), the connection driven
/// on a task of its own; requests carry bodies of type `B`.
pub async fn h2_over<IO, B>(io: IO, windows: Windows) -> SendRequest<B>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder.initial_stream_window_size(windows.stream);
    if let Some(c) = windows.connection {
        builder.initial_connection_window_size(c);
    }
    let (sender, conn) = builder.handshake(TokioIo::new(io)).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// A WebSocket over HTTP/2, on the stream of an upgraded extended CONNECT.
pub type H2WebSocket = tokio_tungstenite::WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Opens a WebSocket over HTTP/2 (RFC 8441: extended CONNECT with
/// `:protocol websocket`) on `sender` to `uri`, with `headers` added: the
/// answer's status, and the WebSocket when it is 200.
pub async fn ws_over_h2(
    sender: &mut Sender,
    uri: String,
    headers: &[(&str, &str)],
) -> (hyper::StatusCode, Option<H2WebSocket>) {
    sender.ready().await.unwrap();
    let mut req = hyper::Request::builder()
        .method(hyper::Method::CONNECT)
        .uri(uri)
        .header("sec-websocket-version", "13");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let mut req = req.body(Empty::new()).unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    if status != hyper::StatusCode::OK {
        return (status, None);
    }
    let upgraded = hyper::upgrade::on(resp).await.unwrap();
    let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    (status, Some(ws))
}

/// A rustls client trusting only the certificates in `pem`, offering
/// `alpn` (ring provider, safe default versions).
pub fn tls_client(pem: &str, alpn: &[&[u8]]) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// `GET uri` on `sender`; asserts the answer came over HTTP/2.
pub async fn get_h2(sender: &mut Sender, uri: String) -> hyper::Response<hyper::body::Incoming> {
    sender.ready().await.unwrap();
    let req = hyper::Request::get(uri).body(Empty::new()).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    resp
}
