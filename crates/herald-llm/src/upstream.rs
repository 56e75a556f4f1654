//! The HTTP client to an OpenAI-compatible upstream: hyper-util's client
//! (the one Herald's Rust client uses too) over rustls with the webpki
//! roots and the ring provider, HTTP/1.1 (a generation is one long
//! streaming response, so each running generation holds its own
//! connection; idle ones are kept a while for the next), a bounded connect,
//! and the API key sent only to the upstream.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The TCP connect may take this long, and the TLS handshake after it as
/// long again.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An idle connection to the upstream is kept this long for the next generation.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the upstream could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream URL cannot be used (the message never holds its credentials).
    #[error("invalid upstream URL: {0}")]
    Url(String),
    /// No connection: DNS, TCP, TLS, or the connect timeout.
    #[error("cannot connect to the upstream: {0}")]
    Connect(String),
    /// Connected, but the request or the response head failed.
    #[error("upstream request failed: {0}")]
    Request(String),
}

type Connector = Bounded<HttpsConnector<HttpConnector>>;

/// An OpenAI-compatible server: `base` is e.g. `https://api.openai.com/v1`
/// or `http://127.0.0.1:11434/v1`; requests go to `{base}/chat/completions`.
#[derive(Clone)]
pub struct Upstream {
    base: String,
    /// `{base}/chat/completions`, checked once.
    chat_uri: Uri,
    api_key: Option<String>,
    client: Client<Connector, Full<Bytes>>,
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
        let chat_uri: Uri = format!("{base}/chat/completions")
            .parse()
            .map_err(|e| UpstreamError::Url(format!("{e}")))?;
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(Bounded {
                inner: https_connector()?,
                timeout: 2 * CONNECT_TIMEOUT,
            });
        Ok(Upstream {
            base,
            chat_uri,
            api_key: api_key.filter(|k| !k.is_empty()),
            client,
        })
    }

    /// The base URL, without a trailing `/`.
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

    /// POSTs `body` (a chat-completions request) to `{base}/chat/completions`;
    /// returns the response with its body unread. Dropping the body closes
    /// the connection, which stops the upstream's generation.
    ///
    /// Errors: [`UpstreamError::Connect`] when no connection could be made
    /// in time, [`UpstreamError::Request`] when the request or the
    /// response head failed. Messages may hold what the upstream said:
    /// pass them through [`Upstream::redact`].
    pub async fn chat_completions(
        &self,
        body: Bytes,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let mut req = Request::post(self.chat_uri.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "text/event-stream, application/json");
        if let Some(k) = &self.api_key {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {k}"));
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| UpstreamError::Request(e.to_string()))?;
        self.client.request(req).await.map_err(|e| {
            if e.is_connect() {
                UpstreamError::Connect(herald_hooks::client::causes(&e))
            } else {
                UpstreamError::Request(herald_hooks::client::causes(&e))
            }
        })
    }
}

/// The outbound connector of Herald (`herald_hooks::client::connector`),
/// its TCP connect bounded by [`CONNECT_TIMEOUT`].
fn https_connector() -> Result<HttpsConnector<HttpConnector>, UpstreamError> {
    herald_hooks::client::connector(CONNECT_TIMEOUT).map_err(UpstreamError::Url)
}

/// A connector whose whole connect (TCP and TLS handshake) ends in time:
/// the TCP connector bounds only its own step.
#[derive(Clone)]
struct Bounded<C> {
    inner: C,
    timeout: Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<C> tower_service::Service<Uri> for Bounded<C>
where
    C: tower_service::Service<Uri>,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connect = self.inner.call(uri);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connect).await {
                Ok(r) => r.map_err(Into::into),
                Err(_) => {
                    Err(format!("no connection within {timeout:?} (TCP and TLS handshake)").into())
                }
            }
        })
    }
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

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let up = Upstream::new(&format!("http://{addr}/v1"), None).unwrap();
        let e = up.chat_completions(Bytes::new()).await.unwrap_err();
        assert!(matches!(e, UpstreamError::Connect(_)), "{e}");
    }

    #[tokio::test]
    async fn a_tls_handshake_that_never_ends_is_cut_at_the_bound() {
        use tower_service::Service;
        // Accepts TCP, never answers the ClientHello.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let mut connector = Bounded {
            inner: https_connector().unwrap(),
            timeout: Duration::from_millis(200),
        };
        let uri: Uri = format!("https://localhost:{}/v1", addr.port())
            .parse()
            .unwrap();
        let Err(e) = tokio::time::timeout(Duration::from_secs(5), connector.call(uri))
            .await
            .expect("the bound did not hold")
        else {
            panic!("no TLS server there")
        };
        assert!(e.to_string().contains("no connection within"), "{e}");
    }
}
