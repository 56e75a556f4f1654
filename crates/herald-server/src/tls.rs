//! TLS with rustls: PEM certificate and key, ALPN `h2` then `http/1.1`,
//! reload without restart, and a self-signed certificate for development.
//!
//! The certificate lives behind a resolver, so [`Tls::reload`] swaps it for
//! new handshakes while established connections keep theirs;
//! [`reload_certificates`] does so on `SIGHUP` and when the files change.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio_rustls::rustls::crypto::ring as provider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// What went wrong setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("{path}: no certificate in PEM")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no usable private key.
    #[error("{path}: {message}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// rustls refused the configuration, or the self-signed certificate
    /// could not be made.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Where the certificate comes from.
#[derive(Clone, Debug)]
pub enum CertSource {
    /// PEM files: the certificate chain, leaf first, and its private key.
    Files {
        /// The certificate chain (PEM).
        cert: PathBuf,
        /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
    /// A certificate made at start for `localhost` and `127.0.0.1` (development only).
    SelfSigned,
}

#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// A TLS acceptor whose certificate can be reloaded.
pub struct Tls {
    source: CertSource,
    resolver: Arc<Resolver>,
    acceptor: TlsAcceptor,
    loaded_mtimes: RwLock<Option<(SystemTime, SystemTime)>>,
    /// The self-signed certificate, PEM, for clients to trust in development.
    pub self_signed_pem: Option<String>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

fn load_files(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    certified(&cert_pem, &key_pem, cert, key)
}

fn certified(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert: &Path,
    key: &Path,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::BadKey {
        path: key.to_owned(),
        message: format!("no private key in PEM ({e})"),
    })?;
    let signing = provider::sign::any_supported_type(&key_der).map_err(|e| TlsError::BadKey {
        path: key.to_owned(),
        message: e.to_string(),
    })?;
    Ok(Arc::new(CertifiedKey::new(certs, signing)))
}

fn mtimes(cert: &Path, key: &Path) -> Option<(SystemTime, SystemTime)> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((m(cert)?, m(key)?))
}

impl Tls {
    /// Loads the certificate and builds the acceptor.
    pub fn new(source: CertSource) -> Result<Tls, TlsError> {
        let (key, self_signed_pem) = match &source {
            CertSource::Files { cert, key } => (load_files(cert, key)?, None),
            CertSource::SelfSigned => {
                let made = rcgen::generate_simple_self_signed(vec![
                    "localhost".into(),
                    "127.0.0.1".into(),
                    "::1".into(),
                ])
                .map_err(|e| TlsError::Config(e.to_string()))?;
                let cert_pem = made.cert.pem();
                let key_pem = made.signing_key.serialize_pem();
                let k = certified(
                    cert_pem.as_bytes(),
                    key_pem.as_bytes(),
                    Path::new("self-signed"),
                    Path::new("self-signed"),
                )?;
                (k, Some(cert_pem))
            }
        };
        let resolver = Arc::new(Resolver {
            current: RwLock::new(key),
        });
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError::Config(e.to_string()))?
                .with_no_client_auth()
                .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let loaded_mtimes = match &source {
            CertSource::Files { cert, key } => mtimes(cert, key),
            CertSource::SelfSigned => None,
        };
        Ok(Tls {
            source,
            resolver,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            loaded_mtimes: RwLock::new(loaded_mtimes),
            self_signed_pem,
        })
    }

    /// The acceptor the accept loop runs handshakes with.
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Re-reads the certificate files; new handshakes use the new certificate.
    /// On error the current certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let CertSource::Files { cert, key } = &self.source else {
            return Ok(());
        };
        let k = load_files(cert, key)?;
        *self
            .resolver
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = k;
        *self
            .loaded_mtimes
            .write()
            .unwrap_or_else(|e| e.into_inner()) = mtimes(cert, key);
        Ok(())
    }

    /// Reloads if the files changed since the last load. Returns whether it reloaded.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let CertSource::Files { cert, key } = &self.source else {
            return Ok(false);
        };
        let now = mtimes(cert, key);
        if now.is_none() || now == *self.loaded_mtimes.read().unwrap_or_else(|e| e.into_inner()) {
            return Ok(false);
        }
        self.reload()?;
        Ok(true)
    }
}

/// Reloads `tls`'s certificate on `SIGHUP` (Unix), and when its files
/// change (checked every 2 s); runs until dropped. A failed reload is
/// logged and the current certificate stays.
pub async fn reload_certificates(tls: Arc<Tls>) {
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<()>();
        let result = tokio::select! {
            _ = hangup => tls.reload().map(|()| true),
            _ = tick.tick() => tls.reload_if_changed(),
        };
        match result {
            Ok(true) => tracing::info!("TLS certificate reloaded"),
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate reload failed; keeping the current one")
            }
        }
    }
}
