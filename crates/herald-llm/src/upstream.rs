//! The HTTP client to an OpenAI-compatible upstream: one connection per
//! generation (a generation is one long streaming response), HTTP/1.1 over
//! TCP or TLS (webpki roots), connect timeout, and the API key sent only to
//! the upstream.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_rustls::rustls;

/// Why the upstream could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream URL cannot be used (the message never holds its credentials).
    #[error("invalid upstream URL: {0}")]
    Url(String),
    #[error("cannot connect to the upstream: {0}")]
    Connect(String),
    #[error("upstream request failed: {0}")]
    Request(String),
}

/// An OpenAI-compatible server: `base` is e.g. `https://api.openai.com/v1`
/// or `http://127.0.0.1:11434/v1`; requests go to `{base}/chat/completions`.
#[derive(Clone)]
pub struct Upstream {
    base: String,
    api_key: Option<String>,
    connect_timeout: Duration,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("base", &self.base)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl Upstream {
    /// An upstream at `base` (`http://` or `https://`, a host, no
    /// credentials in the URL), sending `api_key` as `Authorization: Bearer`.
    ///
    /// Errors: [`UpstreamError::Url`] for a URL that is not such a base.
    pub fn new(base: &str, api_key: Option<String>) -> Result<Upstream, UpstreamError> {
        let base = base.trim_end_matches('/').to_owned();
        let uri: Uri = base
            .parse()
            .map_err(|e| UpstreamError::Url(format!("not a URL ({e})")))?;
        // Credentials in the URL would be logged with it and are never sent.
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(UpstreamError::Url(
                "the URL holds credentials (user:password@); pass the key with --llm-api-key"
                    .into(),
            ));
        }
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => {
                return Err(UpstreamError::Url(format!(
                    "{base}: use http:// or https://"
                )))
            }
        }
        if uri.host().is_none() {
            return Err(UpstreamError::Url(format!("{base}: no host")));
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamError::Url(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Upstream {
            base,
            api_key: api_key.filter(|k| !k.is_empty()),
            connect_timeout: Duration::from_secs(10),
            tls: Arc::new(tls),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `text` from the upstream (an error body, an error event, a transport
    /// error) with this upstream's API key and any other credential taken
    /// out ([`crate::redact`]): run it over anything the upstream said
    /// before it reaches a client, a topic or a log.
    pub fn redact(&self, text: &str) -> String {
        crate::redact::redact(text, self.api_key.as_deref())
    }

    /// Only the configured API key taken out: for model output (ordinary
    /// chunks), where prose such as "the bearer of" must stay as it is.
    pub fn redact_key(&self, text: &str) -> String {
        match self.api_key.as_deref() {
            Some(k) if text.contains(k) => text.replace(k, crate::redact::REDACTED),
            _ => text.to_owned(),
        }
    }

    /// POSTs `body` to `{base}/chat/completions`; returns the response with its body unread.
    pub async fn chat_completions(
        &self,
        body: Bytes,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let url = format!("{}/chat/completions", self.base);
        let uri: Uri = url
            .parse()
            .map_err(|e| UpstreamError::Url(format!("{e}")))?;
        let host = uri.host().unwrap_or_default().to_owned();
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_else(|| host.clone());
        let host_for_connect = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect((host_for_connect.as_str(), port)),
        )
        .await
        .map_err(|_| UpstreamError::Connect("timed out".into()))?
        .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        let mut req = Request::post(path)
            .header(http::header::HOST, authority)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "text/event-stream, application/json");
        if let Some(k) = &self.api_key {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {k}"));
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| UpstreamError::Request(e.to_string()))?;
        if https {
            let name = rustls::pki_types::ServerName::try_from(host_for_connect)
                .map_err(|e| UpstreamError::Url(e.to_string()))?;
            let stream = tokio::time::timeout(
                self.connect_timeout,
                tokio_rustls::TlsConnector::from(self.tls.clone()).connect(name, tcp),
            )
            .await
            .map_err(|_| UpstreamError::Connect("TLS handshake timed out".into()))?
            .map_err(|e| UpstreamError::Connect(e.to_string()))?;
            send(TokioIo::new(stream), req).await
        } else {
            send(TokioIo::new(tcp), req).await
        }
    }
}

async fn send<I>(
    io: I,
    req: Request<Full<Bytes>>,
) -> Result<http::Response<Incoming>, UpstreamError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| UpstreamError::Connect(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
        .send_request(req)
        .await
        .map_err(|e| UpstreamError::Request(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_credentials_are_refused_without_echoing_them() {
        let e = Upstream::new("https://user:hunter2@example.com/v1", None)
            .expect_err("credentials in the URL");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(Upstream::new("ftp://example.com/v1", None).is_err());
        assert!(Upstream::new("http://[::1", None).is_err());
        let up = Upstream::new(
            "http://127.0.0.1:9/v1/",
            Some("sk-configured-0123456789".into()),
        )
        .unwrap();
        assert_eq!(up.base(), "http://127.0.0.1:9/v1");
        assert!(!format!("{up:?}").contains("sk-configured"));
        assert_eq!(
            up.redact("echo: sk-configured-0123456789 and Bearer abc"),
            "echo: [redacted] and Bearer [redacted]"
        );
        assert_eq!(
            up.redact_key("the bearer of sk-configured-0123456789"),
            "the bearer of [redacted]"
        );
    }
}
