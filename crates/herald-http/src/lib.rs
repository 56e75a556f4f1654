//! # herald-http
//!
//! Herald's HTTP layer: the SSE, WebSocket and long-poll transports, the
//! publish API and the operational endpoints, as an axum [`Router`] that
//! `herald-server` serves (in the `herald` binary) and that any axum
//! application can nest. It holds no accept loop, TLS or certificate
//! code: nesting it compiles none.
//!
//! # Layout
//!
//! - [`transport`]: `sse`, `ws` and `poll`, each over the core's one
//!   [`Subscription`](herald_core::Subscription).
//! - [`publish`]: `POST /v1/publish` and the parsing WebSocket publishes share.
//! - [`admin`]: the server API (`POST /v1/disconnect`, `GET /v1/topics`,
//!   `GET /v1/connections`), behind the publisher key or an admin token.
//! - [`history`]: `GET /v1/history`, a page of a topic's retained events.
//! - [`presence`]: `GET /v1/presence`, who is subscribed to a topic, and
//!   the presence entries of each transport's connections.
//! - [`input`]: query strings, cursors and starting points, decided once.
//! - [`error`]: every error's status and JSON body, in one place.
//! - [`ops`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`admin_page`]: the admin page at `/admin/` and its stats topic, with
//!   [`HttpConfig::admin`].
//! - [`mercure`]: the Mercure protocol at `/.well-known/mercure`, when a
//!   Mercure key is configured.
//! - [`connection`]: what a server tells the router of each connection
//!   ([`ConnectionHandle`]: peer, kill switch, its own counters) and the
//!   [`WriteDeadline`] a transport asks of it. The accept loop, TLS and the
//!   HTTP/1.1 push path live in `herald-server`.
//! - [`config`]: keepalives, limits and timeouts.
//! - `assets`: the browser client (`/client/herald.js`, `.d.ts`) and the demo page at `/`.
//!
//! # Example: nest Herald in your axum app
//!
//! ```no_run
//! use herald_core::{Data, Hub, HubConfig, NewEvent, Topic};
//! use herald_http::HttpConfig;
//!
//! # async fn run() -> std::io::Result<()> {
//! let hub = Hub::memory(HubConfig::default());
//! let app = axum::Router::new().nest("/realtime", herald_http::router(hub.clone(), HttpConfig::default()));
//! // From your own code, e.g. after an order ships:
//! let topic = Topic::new("orders/123").unwrap();
//! hub.publish(NewEvent::new(topic, Data::Text("shipped".into()))).await.unwrap();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await
//! # }
//! ```

#![warn(missing_docs)]

pub mod admin;
pub mod admin_page;
mod assets;
pub mod auth;
pub mod config;
pub mod connection;
pub mod error;
pub mod forwarded;
pub mod history;
pub mod input;
mod layers;
pub mod limits;
pub mod mercure;
pub mod ops;
pub mod presence;
pub mod publish;
pub mod transport;

use std::sync::Arc;

use axum::routing::{get, on, post, MethodFilter};
use axum::Router;
pub use config::HttpConfig;
pub use connection::{ConnectionHandle, ReadClosed, ReadClosedSender, WriteDeadline};
pub use error::ApiError;
pub use herald_core::{Hub, HubConfig};
pub use transport::query_pairs;

/// What every handler gets: one pointer to the router's state. Every open
/// connection keeps a clone, so it is one pointer, not six.
#[derive(Clone)]
pub(crate) struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The router's state, shared by every handler and connection.
pub(crate) struct Shared {
    pub(crate) hub: Hub,
    pub(crate) config: Arc<HttpConfig>,
    pub(crate) limiter: Arc<limits::ConnectionLimiter>,
    /// Who holds long-poll presence entries, to bound them.
    pub(crate) poll_presence: Arc<presence::PollPresence>,
    /// Mercure update ids and their places in the log (empty without Mercure).
    pub(crate) mercure_index: Arc<mercure::index::Index>,
    /// Streams holding each active Mercure subscription on this node.
    pub(crate) mercure_streams: Arc<mercure::subscriptions::Streams>,
}

impl Shared {
    /// A slot for one more streaming connection from the client at `peer`
    /// (behind a trusted proxy: the address its headers name, see
    /// [`forwarded`]).
    pub(crate) fn connection_slot(
        &self,
        peer: Option<std::net::IpAddr>,
        headers: &axum::http::HeaderMap,
    ) -> Result<limits::Slot, ApiError> {
        let client = peer.map(|p| self.config.client_addr(p, headers));
        self.limiter.acquire(
            client,
            self.config.max_connections,
            self.config.max_connections_per_ip,
        )
    }
}

/// The Herald routes (see DESIGN.md, "HTTP surface"), ready to serve or to nest.
pub fn router(hub: Hub, config: HttpConfig) -> Router {
    router_with(hub, config, Router::new())
}

/// The Herald routes plus `extra` routes (such as the LLM relay's), under
/// the same layers (access log, CORS) and the same JSON 404/405.
pub fn router_with(hub: Hub, config: HttpConfig, extra: Router) -> Router {
    let state = AppState(Arc::new(Shared {
        hub,
        config: Arc::new(config),
        limiter: Arc::default(),
        poll_presence: Arc::default(),
        mercure_index: Arc::default(),
        mercure_streams: Arc::default(),
    }));
    Router::new()
        .route("/v1/publish", post(publish::publish))
        .route("/v1/tokens", post(auth::tokens))
        .route("/v1/sse", get(transport::sse::handler))
        // GET for the HTTP/1.1 upgrade, CONNECT for HTTP/2 (RFC 8441).
        .route(
            "/v1/ws",
            on(
                MethodFilter::GET.or(MethodFilter::CONNECT),
                transport::ws::handler,
            ),
        )
        .route("/v1/poll", get(transport::poll::handler))
        .route("/v1/history", get(history::handler))
        .route("/v1/presence", get(presence::handler))
        .route("/v1/disconnect", post(admin::disconnect))
        .route("/v1/topics", get(admin::topics))
        .route("/v1/connections", get(admin::connections))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/", get(assets::demo))
        .route("/client/herald.js", get(assets::client))
        .route("/client/herald.d.ts", get(assets::types))
        .merge(mercure::routes(&state))
        .merge(admin_page::routes(&state))
        .with_state(state.clone())
        .merge(extra)
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        // The transport and client address the connect hook is told.
        .layer(tower::util::option_layer(state.config.hooks.as_ref().map(
            |_| axum::middleware::from_fn_with_state(state.clone(), auth::hook_context),
        )))
        .layer(tower::util::option_layer(layers::cors(
            &state.config.cors_origins,
        )))
        .layer(axum::middleware::from_fn(layers::access_log))
}
