//! `herald serve` over HTTPS: certificate files, reload on SIGHUP and on file
//! change without a restart, the self-signed development mode, clear errors.

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
