//! # herald-server
//!
//! Herald's server: it accepts TCP connections and serves a Herald router
//! (or any axum [`Router`](axum::Router) that nests one) over HTTP/1.1,
//! h2c and HTTP/2 over TLS, writes HTTP/1.1 event streams and long polls
//! straight to the socket, reloads its certificate without a restart, and
//! shuts down gracefully. The router itself lives in `herald-http`, so an
//! application that nests it in its own axum server compiles none of this.
//!
//! # Layout
//!
//! - [`accept`]: the accept loop ([`serve`], [`serve_with`]): HTTP/1.1 and
//!   HTTP/2 on one port, WebSocket upgrades over both, per-connection kill
//!   switches, graceful shutdown.
//! - `http1_push`: HTTP/1.1 `GET /v1/sse` and `GET /v1/poll` written on
//!   the socket without hyper's buffers, and `POST /v1/publish` when its
//!   body comes with its head; its request-head reading and
//!   response encoding are pure functions apart from the socket loop.
//! - `shutdown`: the drain channel that graceful shutdown waits on.
//! - `socket`: the accepted socket, reset (not closed) when dropped while
//!   a write is blocked.
//! - `stream_end`: ending one HTTP/2 event stream of a slow consumer.
//! - [`tls`]: rustls, ALPN, certificate reload, self-signed certificates.
//! - [`metrics`]: TCP and TLS counters, shown by `/metrics`.
//!
//! # Example: serve Herald on a port
//!
//! ```no_run
//! use herald_core::{Hub, HubConfig};
//! use herald_http::HttpConfig;
//!
//! # async fn run() -> std::io::Result<()> {
//! let hub = Hub::memory(HubConfig::default());
//! let router = herald_http::router(hub.clone(), HttpConfig::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! herald_server::serve(listener, router, hub, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await
//! # }
//! ```

#![warn(missing_docs)]

pub mod accept;
mod http1_push;
pub mod metrics;
mod shutdown;
mod socket;
mod stream_end;
pub mod tls;

pub use accept::{serve, serve_with, ServeOptions, DRAIN_TIMEOUT, HANDSHAKE_TIMEOUT};
pub use http1_push::{MAX_HEAD, MAX_HEADERS, MAX_URI};
pub use metrics::ServerMetrics;
pub use tls::{CertSource, Tls, TlsError};
