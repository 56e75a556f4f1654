//! `herald serve` over HTTPS: certificate files, reload on SIGHUP and on file
//! change without a restart, the self-signed development mode, clear errors,
//! WebSocket events over TLS.

mod process;
#[path = "../../herald-server/tests/wire/mod.rs"]
mod wire;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use process::{ServeProcess, StderrLog, BIN};

use tokio_rustls::rustls;

fn cert(name: &str) -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into(), name.into()]).unwrap();
    (c.cert.pem(), c.signing_key.serialize_pem())
}

/// `herald serve` with `args` over TLS: the process, its `host:port`, and
/// its log (warnings and errors).
fn serve(args: &[&str]) -> (ServeProcess, String, StderrLog) {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--engine", "memory"])
        .args(args)
        .env("HERALD_LOG", "warn")
        .stderr(Stdio::piped());
    let mut s = ServeProcess::spawn(cmd);
    assert!(s.base.starts_with("https://"), "{}", s.base);
    let log = s.capture_stderr();
    let addr = s.addr.to_string();
    (s, addr, log)
}

/// Marks `path` as modified `ahead` in the future: a change a watcher
/// comparing modification times sees whatever their resolution.
fn touch_ahead(path: &std::path::Path, ahead: Duration) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() + ahead).unwrap();
}

/// Connects trusting only `pem`; returns the negotiated ALPN protocol, or the error.
async fn handshake(addr: &str, pem: &str) -> Result<Option<Vec<u8>>, String> {
    let config = wire::tls_client(pem, &[b"h2", b"http/1.1"]);
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    Ok(stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
}

#[tokio::test]
async fn certificate_files_reload_on_sighup_and_on_change() {
    let dir = std::env::temp_dir().join(format!("herald-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    let (a_cert, a_key) = cert("a.test");
    let (b_cert, b_key) = cert("b.test");
    let (c_cert, c_key) = cert("c.test");
    std::fs::write(&cert_path, &a_cert).unwrap();
    std::fs::write(&key_path, &a_key).unwrap();
    let (s, addr, log) = serve(&[
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
    ]);
    assert_eq!(
        handshake(&addr, &a_cert).await.unwrap(),
        Some(b"h2".to_vec()),
        "ALPN offers h2 first"
    );
    assert!(handshake(&addr, &b_cert).await.is_err());

    // SIGHUP.
    std::fs::write(&cert_path, &b_cert).unwrap();
    std::fs::write(&key_path, &b_key).unwrap();
    s.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while handshake(&addr, &b_cert).await.is_err() {
        assert!(Instant::now() < deadline, "not reloaded after SIGHUP");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(handshake(&addr, &a_cert).await.is_err());

    // A file change alone, with a visibly newer mtime.
    std::fs::write(&key_path, &c_key).unwrap();
    std::fs::write(&cert_path, &c_cert).unwrap();
    touch_ahead(&key_path, Duration::from_secs(2));
    touch_ahead(&cert_path, Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(10);
    while handshake(&addr, &c_cert).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "not reloaded after the files changed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A broken file keeps the current certificate. The check waits for the
    // reload attempt to fail (a failure logged earlier, if the watcher saw a
    // half-written pair, does not count).
    let failed = || log.text().matches("TLS certificate reload failed").count();
    let failed_before = failed();
    std::fs::write(&cert_path, "not a certificate").unwrap();
    s.signal("HUP");
    process::wait_until("a failed reload", Duration::from_secs(10), || {
        failed() > failed_before
    });
    assert!(handshake(&addr, &c_cert).await.is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A WebSocket over TLS (HTTP/1.1) to `addr`, trusting only `pem`.
async fn wss(
    addr: &str,
    pem: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let config = wire::tls_client(pem, &[b"http/1.1"]);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    tokio_tungstenite::client_async("wss://localhost/v1/ws", tls)
        .await
        .unwrap()
        .0
}

/// The next text message's JSON, skipping pings.
async fn next_json<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> serde_json::Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("the socket is open")
            .unwrap();
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// Events are written to a WebSocket as shared frames, past tungstenite:
/// over TLS they arrive whole, in order, at every header length (7-bit,
/// 16-bit, 64-bit), one at a time and in a burst.
#[tokio::test]
async fn websocket_events_arrive_whole_over_tls() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let dir = std::env::temp_dir().join(format!("herald-tls-ws-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    let (pem, key) = cert("ws.test");
    std::fs::write(&cert_path, &pem).unwrap();
    std::fs::write(&key_path, &key).unwrap();
    let (_s, addr, _log) = serve(&[
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
    ]);
    let mut sub = wss(&addr, &pem).await;
    sub.send(Message::text(r#"{"type":"subscribe","topic":"t"}"#))
        .await
        .unwrap();
    assert_eq!(next_json(&mut sub).await["type"], "subscribed");
    let mut publisher = wss(&addr, &pem).await;
    let sizes = [0, 100, 125, 126, 1000, 65535, 65536, 200_000];
    let publish = |n: usize| {
        let data = "x".repeat(n);
        Message::text(serde_json::json!({"type":"publish","topic":"t","data":data}).to_string())
    };
    // One at a time: each event its own write.
    for n in sizes {
        publisher.send(publish(n)).await.unwrap();
        assert_eq!(next_json(&mut publisher).await["type"], "published");
        let e = next_json(&mut sub).await;
        assert_eq!(e["data"].as_str().unwrap().len(), n, "{e:.100}");
    }
    // A burst: queued events go out in vectored writes.
    for _ in 0..3 {
        for n in sizes {
            publisher.feed(publish(n)).await.unwrap();
        }
    }
    publisher.flush().await.unwrap();
    for _ in 0..3 {
        for n in sizes {
            let e = next_json(&mut sub).await;
            assert_eq!(e["type"], "event");
            assert_eq!(e["data"].as_str().unwrap().len(), n);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn self_signed_development_mode_serves_https() {
    let (_s, addr, _log) = serve(&["--tls-self-signed"]);
    // Trust nothing we know: the handshake fails on the certificate, which proves TLS is up.
    let (other, _) = cert("other.test");
    let err = handshake(&addr, &other).await.unwrap_err();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

#[test]
fn clear_errors() {
    for (args, needle) in [
        (
            vec![
                "--tls-cert",
                "/nonexistent/cert.pem",
                "--tls-key",
                "/nonexistent/key.pem",
            ],
            "cannot read",
        ),
        (vec!["--tls-cert", "/nonexistent/cert.pem"], "go together"),
        (vec!["--tls-self-signed", "--tls-key", "/x"], "exclude"),
    ] {
        let out = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--engine", "memory"])
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
