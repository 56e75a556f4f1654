//! Settings of the HTTP layer. Every field has a production default.

use std::sync::Arc;
use std::time::Duration;

use herald_auth::Auth;

/// HTTP-level settings: keepalives, size limits, poll timeouts, WebSocket limits.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// SSE keepalive comment and WebSocket ping interval.
    pub keepalive: Duration,
    /// The `retry:` reconnection delay sent first on SSE streams, in ms.
    pub sse_retry_ms: u64,
    /// Largest `POST /v1/publish` body, in bytes (413 above).
    pub max_body_bytes: usize,
    /// Long poll: timeout when the request names none.
    pub poll_default_timeout: Duration,
    /// Long poll: the most a request may ask to be held.
    pub poll_max_timeout: Duration,
    /// Long poll: how long a polling client stays present on presence
    /// topics after its poll ends (DESIGN.md, "Presence"), so that it does
    /// not leave and join again between two polls.
    pub poll_presence_grace: Duration,
    /// Long poll: most events in one answer.
    pub poll_batch: usize,
    /// Long poll: most bytes of event JSON in one answer. At least one event
    /// is always included, so a single larger event still gets through; the
    /// answer's cursor then points after the last included event.
    pub poll_max_bytes: usize,
    /// A request body (publish, LLM relay) not fully received this long after
    /// its reading began is refused with 408 `request_timeout`.
    pub body_timeout: Duration,
    /// WebSocket: largest incoming message, in bytes (close 1009 above).
    pub ws_max_message_bytes: usize,
    /// WebSocket: a peer silent (no pong, no message) this long is closed.
    pub ws_pong_timeout: Duration,
    /// WebSocket: publishes per second allowed per connection (sustained).
    pub ws_publish_rate: f64,
    /// WebSocket: publishes allowed in a burst.
    pub ws_publish_burst: f64,
    /// WebSocket: client messages of any kind (frames, pings included) per
    /// second allowed per connection, sustained; a burst of twice as many is
    /// allowed. Messages over the rate are refused with an `error`
    /// `rate_limited` and count as errors.
    pub ws_message_rate: f64,
    /// WebSocket: errors (malformed, refused or rate-limited messages) a
    /// connection may cause in a burst; the allowance refills at one per
    /// second. A connection over it is closed with 1008 `too many errors`.
    pub ws_error_burst: f64,
    /// Peers whose `Forwarded` / `X-Forwarded-For` headers name the client
    /// address that per-address limits count (see [`crate::forwarded`]).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The header those proxies write the client address into.
    pub trusted_proxy_header: crate::forwarded::ProxyHeader,
    /// Shutdown: streams (SSE, WebSocket) end at a random moment within this
    /// window, so that clients do not all come back in the same millisecond.
    pub shutdown_drain: Duration,
    /// A write to a subscriber that does not progress for this long ends the connection.
    pub write_timeout: Duration,
    /// Most events coalesced into one write when a subscriber has fallen behind.
    pub max_coalesce: usize,
    /// Authentication and authorization (open when nothing is configured).
    pub auth: Arc<Auth>,
    /// The cookie that may carry a token.
    pub auth_cookie: String,
    /// Origins whose WebSocket upgrades may use the cookie credential (empty:
    /// only the server's own host).
    pub ws_allowed_origins: Vec<String>,
    /// Origins allowed by CORS on SSE, poll, publish and tokens (`*` for any); empty: CORS off.
    pub cors_origins: Vec<String>,
    /// Open streaming connections (SSE, WebSocket, long poll) at most (503 above).
    pub max_connections: usize,
    /// Open streaming connections per client address at most (429 above).
    pub max_connections_per_ip: usize,
    /// The application's hooks (`--hook-url`): who a request without a
    /// Herald credential is, and the subscribe and publish checks of topics
    /// whose policy asks for them. `None`: no hooks.
    pub hooks: Option<Arc<herald_hooks::Hooks>>,
    /// More metric families `/metrics` renders after the hub's (the
    /// webhooks' counters, when `--webhook-url` is set). Empty by default.
    pub metrics: Vec<Arc<dyn herald_core::metrics::MetricsSource>>,
    /// The Mercure hub at `/.well-known/mercure` (`--mercure-*`); `None`:
    /// off, and those paths answer 404.
    pub mercure: Option<Arc<crate::mercure::MercureConfig>>,
    /// The admin page at `/admin/` (`--admin`); off: 404.
    pub admin: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            keepalive: Duration::from_secs(15),
            sse_retry_ms: 2000,
            max_body_bytes: 1024 * 1024,
            poll_default_timeout: Duration::from_secs(25),
            poll_max_timeout: Duration::from_secs(60),
            poll_presence_grace: Duration::from_secs(30),
            poll_batch: 100,
            poll_max_bytes: 1024 * 1024,
            body_timeout: Duration::from_secs(30),
            ws_max_message_bytes: 1024 * 1024,
            ws_pong_timeout: Duration::from_secs(45),
            ws_publish_rate: 50.0,
            ws_publish_burst: 100.0,
            ws_message_rate: 100.0,
            ws_error_burst: 20.0,
            trusted_proxies: Vec::new(),
            trusted_proxy_header: crate::forwarded::ProxyHeader::XForwardedFor,
            shutdown_drain: Duration::from_secs(2),
            write_timeout: Duration::from_secs(30),
            max_coalesce: 64,
            auth: Arc::new(Auth::open()),
            auth_cookie: "herald_token".into(),
            ws_allowed_origins: Vec::new(),
            cors_origins: Vec::new(),
            max_connections: 100_000,
            max_connections_per_ip: 10_000,
            hooks: None,
            metrics: Vec::new(),
            mercure: None,
            admin: false,
        }
    }
}

impl HttpConfig {
    /// The client address that per-address limits count for a request from
    /// `peer`: behind a trusted proxy the one its header names, normalised by
    /// [`crate::forwarded::counted`] (an IPv6 client counts as its /64).
    pub fn client_addr(
        &self,
        peer: std::net::IpAddr,
        headers: &axum::http::HeaderMap,
    ) -> std::net::IpAddr {
        crate::forwarded::counted(crate::forwarded::client_ip(
            peer,
            headers,
            &self.trusted_proxies,
            self.trusted_proxy_header,
        ))
    }
}
