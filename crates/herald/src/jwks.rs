//! Fetches identity providers' key sets (`--jwt-jwks-url`, RFC 7517) for
//! `herald_auth`, which decides what to fetch and when (`herald_auth::jwks`).
//!
//! The client is Herald's one outbound stack (`herald_hooks::client`, as
//! the hooks and the LLM relay use it): hyper-util's legacy client over
//! hyper-rustls with the ring provider and the webpki roots, HTTP/1.1,
//! `http://` or `https://`. Redirects are not
//! followed (a 3xx is a failed fetch): the URL configured is the one trusted.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use bytes::Bytes;
use herald_auth::jwks::{FetchError, FetchFuture, Fetched, JwksFetcher};
use http::{header, Request, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The TCP connect may take this long (the whole fetch is bounded by
/// `herald_auth::jwks::FETCH_TIMEOUT`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks that `url` can be fetched: an `http://` or `https://` URI with a
/// host and no credentials.
///
/// Errors: a message naming `--jwt-jwks-url` (without the URL when it
/// holds credentials).
pub fn check_url(url: &str) -> anyhow::Result<()> {
    let uri: Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => bail!("--jwt-jwks-url {url:?} is not a URL ({e})"),
    };
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        bail!("--jwt-jwks-url: a URL holds credentials (user:password@); they would be logged");
    }
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        bail!("--jwt-jwks-url {url:?}: use an http:// or https:// URL with a host");
    }
    Ok(())
}

/// The HTTP(S) client that fetches key sets.
#[derive(Clone)]
pub struct HttpFetcher {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl HttpFetcher {
    /// A client with the webpki roots.
    ///
    /// Errors: the TLS configuration cannot be built.
    pub fn new() -> anyhow::Result<Arc<HttpFetcher>> {
        let https = herald_hooks::client::connector(CONNECT_TIMEOUT).map_err(anyhow::Error::msg)?;
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        Ok(Arc::new(HttpFetcher { client }))
    }

    async fn get(&self, url: &str, max_bytes: usize) -> Result<Fetched, FetchError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| FetchError(format!("not a URL: {e}")))?;
        let req = Request::get(uri)
            .header(header::ACCEPT, "application/jwk-set+json, application/json")
            .header(header::USER_AGENT, "herald")
            .body(Empty::new())
            .map_err(|e| FetchError(e.to_string()))?;
        let response = self
            .client
            .request(req)
            .await
            .map_err(|e| FetchError(herald_hooks::client::causes(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError(format!("answered {status}")));
        }
        if let Some(len) = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        {
            if len > max_bytes as u64 {
                return Err(FetchError(format!(
                    "the key set is {len} bytes; at most {max_bytes} are accepted"
                )));
            }
        }
        let cache_control = response
            .headers()
            .get(header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = Limited::new(response.into_body(), max_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    FetchError(format!("the key set is larger than {max_bytes} bytes"))
                } else {
                    FetchError(format!("reading the key set failed: {e}"))
                }
            })?
            .to_bytes();
        Ok(Fetched {
            body: body.to_vec(),
            cache_control,
        })
    }
}

impl JwksFetcher for HttpFetcher {
    fn fetch<'a>(&'a self, url: &'a str, max_bytes: usize) -> FetchFuture<'a> {
        Box::pin(self.get(url, max_bytes))
    }
}
