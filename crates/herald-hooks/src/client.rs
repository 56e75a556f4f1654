//! Herald's one outbound HTTP client stack, used by the hooks and webhooks,
//! the LLM relay's upstream and the JWKS fetcher: hyper-util's client over
//! rustls with the ring provider and the webpki roots, `http://` and
//! `https://`, HTTP/1.1 with kept-alive connections, and a bounded TCP
//! connect. The hooks' exchange is bounded again by [`crate::Hooks`].

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// An idle connection to the backend is kept this long for the next request.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The client type: HTTPS or plain HTTP, request bodies in one piece.
pub(crate) type HookClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The connector every outbound client of Herald is built on: TCP with
/// `TCP_NODELAY` and a connect that gives up after `connect_timeout`, TLS
/// (rustls, ring, webpki roots, ALPN `http/1.1`) for `https://` URLs,
/// plain for `http://`.
///
/// Errors: the TLS provider could not be set up (the message says why).
pub fn connector(connect_timeout: Duration) -> Result<HttpsConnector<HttpConnector>, String> {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false); // the TLS layer above takes `https://` too
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(connect_timeout));
    Ok(HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .map_err(|e| e.to_string())?
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp))
}

/// A client whose TCP connect gives up after `connect_timeout`, keeping at
/// most `max_idle` idle connections.
///
/// Errors: the TLS provider could not be set up (the message says why).
pub(crate) fn build(connect_timeout: Duration, max_idle: usize) -> Result<HookClient, String> {
    let connector = connector(connect_timeout)?;
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(max_idle)
        .build(connector))
}

/// The causes of a client error (DNS, TCP, TLS, HTTP), outermost first,
/// without the client's own wrapper text: what a log line should say.
pub fn causes(e: &hyper_util::client::legacy::Error) -> String {
    let mut parts = Vec::new();
    let mut next = std::error::Error::source(e);
    while let Some(cause) = next {
        parts.push(cause.to_string());
        next = cause.source();
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}
