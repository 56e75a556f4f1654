//! `herald serve` over HTTPS: certificate files, reload on SIGHUP and on file
//! change without a restart, the self-signed development mode, clear errors.

mod spawn;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_rustls::rustls;

const BIN: &str = env!("CARGO_BIN_EXE_herald");

fn cert(name: &str) -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into(), name.into()]).unwrap();
    (c.cert.pem(), c.signing_key.serialize_pem())
}

struct Server(Child, String);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(args: &[&str]) -> Server {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--engine", "memory"])
        .args(args)
        .env("HERALD_LOG", "warn")
        .stderr(Stdio::null());
    let (child, url) = spawn::listening(cmd);
    let addr = url
        .strip_prefix("https://")
        .unwrap_or_else(|| panic!("{url}"))
        .to_owned();
    Server(child, addr)
}

/// Connects trusting only `pem`; returns the negotiated ALPN protocol, or the error.
async fn handshake(addr: &str, pem: &str) -> Result<Option<Vec<u8>>, String> {
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
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
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
    let s = serve(&[
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
    ]);
    assert_eq!(
        handshake(&s.1, &a_cert).await.unwrap(),
        Some(b"h2".to_vec()),
        "ALPN offers h2 first"
    );
    assert!(handshake(&s.1, &b_cert).await.is_err());

    // SIGHUP.
    std::fs::write(&cert_path, &b_cert).unwrap();
    std::fs::write(&key_path, &b_key).unwrap();
    Command::new("kill")
        .args(["-HUP", &s.0.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while handshake(&s.1, &b_cert).await.is_err() {
        assert!(Instant::now() < deadline, "not reloaded after SIGHUP");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(handshake(&s.1, &a_cert).await.is_err());

    // A file change alone.
    tokio::time::sleep(Duration::from_millis(1100)).await; // a visibly newer mtime
    std::fs::write(&key_path, &c_key).unwrap();
    std::fs::write(&cert_path, &c_cert).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while handshake(&s.1, &c_cert).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "not reloaded after the files changed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A broken file keeps the current certificate.
    std::fs::write(&cert_path, "not a certificate").unwrap();
    Command::new("kill")
        .args(["-HUP", &s.0.id().to_string()])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(handshake(&s.1, &c_cert).await.is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn self_signed_development_mode_serves_https() {
    let s = serve(&["--tls-self-signed"]);
    // Trust nothing we know: the handshake fails on the certificate, which proves TLS is up.
    let (other, _) = cert("other.test");
    let err = handshake(&s.1, &other).await.unwrap_err();
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
