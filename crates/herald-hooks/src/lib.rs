//! # herald-hooks
//!
//! Your backend in the loop (DESIGN.md, "Hooks"): Herald asks an HTTP
//! endpoint of the application (`--hook-url`) who a connection without a
//! Herald credential is, whether a read of a `subscribe_hook` topic may
//! proceed, and whether (and with what data) a client publish to a
//! `publish_hook` topic may. An application with session cookies can so
//! authorize without minting tokens, and keep moderation in its own code.
//!
//! Every request is a signed `POST` of one JSON object; every failure (no
//! answer within the timeout, a connection error, a 5xx, an answer that
//! does not parse or is too large) refuses: the hooks fail closed.
//!
//! # Layout
//!
//! - [`signature`] signs the `x-herald-signature` header (HMAC-SHA256),
//!   and checks it for backends written in Rust.
//! - [`wire`] holds each request's and answer's JSON, as pure functions.
//! - `client.rs` builds the outbound HTTP(S) client.
//! - [`metrics`] counts requests as `herald_hook_requests_total{hook,outcome}`.
//! - [`webhooks`] tells the backend, after the fact, what happened to
//!   topics (occupied, vacated, joins, leaves): batched, signed the same
//!   way, retried with backoff, from a bounded queue.
//! - [`Hooks`] (here) asks one question per call, bounded in time
//!   ([`HooksConfig::timeout`]), in concurrency ([`HooksConfig::max_in_flight`])
//!   and in answer size ([`HooksConfig::max_answer_bytes`]).
//!
//! # Example
//!
//! ```no_run
//! use herald_hooks::{Hooks, HooksConfig, SubscribeVerdict};
//! use herald_core::Topic;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let hooks = Hooks::new(HooksConfig::new("https://app.example/herald-hook", "a-secret-of-16-bytes-or-more"))?;
//! let topic = Topic::new("rooms/42")?;
//! match hooks.subscribe(Some("alice"), &topic).await? {
//!     SubscribeVerdict::Allow => println!("alice may read rooms/42"),
//!     SubscribeVerdict::Refuse(reason) => println!("refused: {reason:?}"),
//! }
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod client;
pub mod metrics;
pub mod signature;
pub mod webhooks;
pub mod wire;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use herald_core::{Data, Topic};
use http::{header, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use tokio::sync::Semaphore;

pub use metrics::{HookMetrics, Outcome};
pub use webhooks::{WebhookMetrics, Webhooks, WebhooksConfig, WebhooksConfigError};
pub use wire::{
    ConnectGrant, ConnectRequest, ConnectVerdict, Hook, PublishVerdict, SubscribeVerdict,
};

/// The default of [`HooksConfig::timeout`] (`--hook-timeout`): 2 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// The default of [`HooksConfig::max_in_flight`]: 256 requests.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;

/// The default of [`HooksConfig::max_answer_bytes`]: 64 KiB.
pub const DEFAULT_MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The shortest hook secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

/// How to reach the backend.
#[derive(Clone)]
pub struct HooksConfig {
    /// The URL every hook request is POSTed to (`http://` or `https://`).
    pub url: String,
    /// The HMAC key of [`signature`]: at least [`MIN_SECRET_BYTES`] bytes.
    pub secret: Vec<u8>,
    /// The most a request may take, waiting for a free slot, connecting,
    /// and reading the whole answer included; past it the request refuses.
    pub timeout: Duration,
    /// Whether requests without a Herald credential go to the connect hook
    /// (`--hook-connect`).
    pub connect: bool,
    /// Requests in flight to the backend at most; further ones wait for a
    /// slot (the wait counts in [`HooksConfig::timeout`]).
    pub max_in_flight: usize,
    /// The largest answer body read, in bytes; a larger one is an error.
    pub max_answer_bytes: usize,
}

impl std::fmt::Debug for HooksConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HooksConfig")
            .field("url", &self.url)
            .field("secret", &"[redacted]")
            .field("timeout", &self.timeout)
            .field("connect", &self.connect)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_answer_bytes", &self.max_answer_bytes)
            .finish()
    }
}

impl HooksConfig {
    /// `url` and `secret` with the defaults: [`DEFAULT_TIMEOUT`], the
    /// connect hook on, [`DEFAULT_MAX_IN_FLIGHT`], [`DEFAULT_MAX_ANSWER_BYTES`].
    pub fn new(url: impl Into<String>, secret: impl Into<Vec<u8>>) -> HooksConfig {
        HooksConfig {
            url: url.into(),
            secret: secret.into(),
            timeout: DEFAULT_TIMEOUT,
            connect: true,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_answer_bytes: DEFAULT_MAX_ANSWER_BYTES,
        }
    }
}

/// A configuration [`Hooks::new`] refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HooksConfigError {
    /// The URL is not `http://` or `https://` with a host, or holds
    /// credentials (the message never repeats them).
    #[error("invalid hook URL: {0}")]
    Url(String),
    /// The secret is shorter than [`MIN_SECRET_BYTES`].
    #[error("the hook secret must be at least {MIN_SECRET_BYTES} bytes, not {0}")]
    ShortSecret(usize),
    /// A zero timeout, in-flight limit or answer size.
    #[error("the hook {0} must be more than 0")]
    Zero(&'static str),
    /// The HTTPS client could not be built.
    #[error("cannot build the hook client: {0}")]
    Client(String),
}

/// Why a hook gave no verdict. Either way the action is refused (fail
/// closed); both are temporary, so the client may retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// No complete answer within the timeout (waiting for a free slot
    /// included).
    #[error("the {hook} hook did not answer within {timeout:?}")]
    Timeout {
        /// Which hook.
        hook: &'static str,
        /// The configured timeout.
        timeout: Duration,
    },
    /// No usable answer: the connection failed, the backend answered a
    /// status the hook does not take (5xx, 404, a redirect), or an answer
    /// that does not parse or exceeds the size limit. The detail is for
    /// logs, not for clients.
    #[error("the {hook} hook failed: {detail}")]
    Unavailable {
        /// Which hook.
        hook: &'static str,
        /// What went wrong.
        detail: String,
    },
}

/// The backend's hooks: a signed HTTP client bounded in time, concurrency
/// and answer size. Cheap to share behind an `Arc`.
pub struct Hooks {
    url: Uri,
    secret: Vec<u8>,
    timeout: Duration,
    connect: bool,
    max_answer_bytes: usize,
    slots: Semaphore,
    client: client::HookClient,
    metrics: Arc<HookMetrics>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("url", &redacted_url(&self.url))
            .field("timeout", &self.timeout)
            .field("connect", &self.connect)
            .finish_non_exhaustive()
    }
}

impl Hooks {
    /// Hooks as `config` says. Needs no runtime; requests do.
    ///
    /// Errors: see [`HooksConfigError`].
    pub fn new(config: HooksConfig) -> Result<Hooks, HooksConfigError> {
        let url = parse_url(&config.url).map_err(HooksConfigError::Url)?;
        if config.secret.len() < MIN_SECRET_BYTES {
            return Err(HooksConfigError::ShortSecret(config.secret.len()));
        }
        if config.timeout.is_zero() {
            return Err(HooksConfigError::Zero("timeout"));
        }
        if config.max_in_flight == 0 {
            return Err(HooksConfigError::Zero("in-flight limit"));
        }
        if config.max_answer_bytes == 0 {
            return Err(HooksConfigError::Zero("answer size limit"));
        }
        let client = client::build(config.timeout, config.max_in_flight)
            .map_err(HooksConfigError::Client)?;
        Ok(Hooks {
            url,
            secret: config.secret,
            timeout: config.timeout,
            connect: config.connect,
            max_answer_bytes: config.max_answer_bytes,
            slots: Semaphore::new(config.max_in_flight),
            client,
            metrics: Arc::default(),
        })
    }

    /// Whether requests without a Herald credential go to the connect hook.
    pub fn asks_connect(&self) -> bool {
        self.connect
    }

    /// The timeout of every request.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The request counters, for `/metrics`.
    pub fn metrics(&self) -> &Arc<HookMetrics> {
        &self.metrics
    }

    /// Asks the connect hook who `request`'s caller is.
    ///
    /// Errors: [`HookError`] when the backend gave no usable answer in time.
    pub async fn connect(&self, request: &ConnectRequest) -> Result<ConnectVerdict, HookError> {
        let body = wire::connect_request(request);
        let verdict = self.ask(Hook::Connect, body, wire::connect_answer).await;
        self.record(Hook::Connect, &verdict, |v| {
            matches!(v, ConnectVerdict::Granted(_))
        });
        verdict
    }

    /// Asks the subscribe hook whether `user` (`None`: a caller without
    /// one) may read `topic`.
    ///
    /// Errors: [`HookError`] when the backend gave no usable answer in time.
    pub async fn subscribe(
        &self,
        user: Option<&str>,
        topic: &Topic,
    ) -> Result<SubscribeVerdict, HookError> {
        let body = wire::subscribe_request(user, topic.as_str());
        let verdict = self
            .ask(Hook::Subscribe, body, wire::subscribe_answer)
            .await;
        self.record(Hook::Subscribe, &verdict, |v| *v == SubscribeVerdict::Allow);
        verdict
    }

    /// Asks the publish hook whether `user` may publish `data` (named
    /// `event`) to `topic`, and with which data.
    ///
    /// Errors: [`HookError`] when the backend gave no usable answer in time.
    pub async fn publish(
        &self,
        user: Option<&str>,
        topic: &Topic,
        event: Option<&str>,
        data: &Data,
    ) -> Result<PublishVerdict, HookError> {
        let body = wire::publish_request(user, topic.as_str(), event, data);
        let verdict = self.ask(Hook::Publish, body, wire::publish_answer).await;
        self.record(Hook::Publish, &verdict, |v| {
            !matches!(v, PublishVerdict::Refuse(_))
        });
        verdict
    }

    fn record<V>(&self, hook: Hook, verdict: &Result<V, HookError>, allowed: impl Fn(&V) -> bool) {
        let outcome = match verdict {
            Ok(v) if allowed(v) => Outcome::Allowed,
            Ok(_) => Outcome::Refused,
            Err(HookError::Timeout { .. }) => Outcome::Timeout,
            Err(HookError::Unavailable { .. }) => Outcome::Error,
        };
        self.metrics.count(hook, outcome);
        if let Err(e) = verdict {
            // The URL, the secret and the request's headers stay out of logs.
            tracing::warn!(hook = hook.as_str(), error = %e, "hook refused for want of an answer");
        }
    }

    /// Sends `body` to the backend as `hook`'s request and reads its answer
    /// with `read`, all within the timeout.
    async fn ask<V>(
        &self,
        hook: Hook,
        body: Vec<u8>,
        read: fn(u16, &[u8]) -> Result<V, String>,
    ) -> Result<V, HookError> {
        let unavailable = |detail: String| HookError::Unavailable {
            hook: hook.as_str(),
            detail,
        };
        let exchange = async {
            // Held until the answer is read: the slot bounds the requests
            // the backend holds at once.
            let _slot = self
                .slots
                .acquire()
                .await
                .map_err(|_| unavailable("the hook client is closed".into()))?;
            let (status, answer) = self.exchange(body).await.map_err(unavailable)?;
            read(status, &answer).map_err(unavailable)
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(HookError::Timeout {
                hook: hook.as_str(),
                timeout: self.timeout,
            }),
        }
    }

    /// One signed POST of `body`; the answer's status and body (at most
    /// `max_answer_bytes`).
    async fn exchange(&self, body: Vec<u8>) -> Result<(u16, Bytes), String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signature = signature::sign(&self.secret, now, &body);
        let request = Request::post(self.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("herald/", env!("CARGO_PKG_VERSION")),
            )
            .header(signature::HEADER, signature)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("request failed: {}", client::causes(&e)))?;
        let status = response.status().as_u16();
        let max = self.max_answer_bytes;
        let too_large = || format!("the answer is larger than {max} bytes");
        if response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > max as u64)
        {
            return Err(too_large());
        }
        match Limited::new(response.into_body(), max).collect().await {
            Ok(c) => Ok((status, c.to_bytes())),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
            Err(e) => Err(format!("reading the answer failed: {e}")),
        }
    }
}

/// `url` checked for the backend: `http://` or `https://` with a host, and
/// no credentials in it (the signature authenticates Herald).
///
/// Errors: why not, without repeating the URL.
pub(crate) fn parse_url(url: &str) -> Result<Uri, String> {
    let url: Uri = url.parse().map_err(|e| format!("not a URL ({e})"))?;
    if url.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(
            "the URL holds credentials (user:password@); the signature authenticates Herald".into(),
        );
    }
    if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
        return Err("use http://HOST/... or https://HOST/...".into());
    }
    Ok(url)
}

/// The URL for logs: scheme, host, port and path, never a query (which may
/// hold a key).
fn redacted_url(url: &Uri) -> String {
    format!(
        "{}://{}{}",
        url.scheme_str().unwrap_or(""),
        url.authority().map_or("", |a| a.as_str()),
        url.path()
    )
}

#[cfg(test)]
mod tests;
