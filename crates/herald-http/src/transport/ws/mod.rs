//! `GET /v1/ws`: WebSocket, JSON text messages both ways.
//!
//! Built on tokio-tungstenite (a complete, Autobahn-tested RFC 6455
//! implementation that validates UTF-8, reassembles fragments and runs the
//! close handshake): it reads every client message and writes every ping,
//! pong and close. axum's `WebSocketUpgrade` checks the handshake (its
//! refusals are the answers); the upgrade itself is completed here, so that
//! the session owns the socket. Events skip tungstenite: each event is
//! framed once ([`herald_core::Event::ws_frame`]) and every subscriber writes
//! those same bytes to its socket, several queued events in one vectored
//! write, as SSE does with its shared frames. Replies are framed here too
//! (`session`), and reads go through a stack chunk (`read_ahead`): an idle
//! connection keeps neither a write nor a large read buffer.
//!
//! The messages are typed values of [`herald_core::wire::ws`]: client →
//! server `subscribe {topic, since?, history?}`, `unsubscribe {topic}`,
//! `publish {topic, event?, data, id?}`, `auth {token}`; any may carry a
//! `ref` that the answer echoes. Server → client: `event`, `subscribed`,
//! `unsubscribed`, `published`, `authenticated`, `error`. A malformed
//! message gets an `error` and the connection stays usable. This module only
//! translates between the socket and those values:
//!
//! - here: the handshake (credential, origin, connection slot, buffer sizes)
//!   and the upgrade;
//! - `session`: the connection's loop (reads, deliveries, pings, the
//!   credential's deadline) and the close handshake;
//! - `actions`: what each client message does.
//!
//! Every action goes through the same checks as over HTTP: a `subscribe` is
//! authorized like `GET /v1/sse`, a `publish` takes the one publish path of
//! `POST /v1/publish` (`publish::publish_as`), both against the
//! credential in force at that moment.
//!
//! Credentials over time (DESIGN.md): the connection's credential has a
//! deadline, its `exp`. At the deadline the socket is closed with 4001
//! `token_expired`, unless the client sent a fresh `{"type":"auth"}` for the
//! same `sub` before it, which moves the deadline (answered `authenticated`
//! with `expires_at`).
//!
//! Abuse: every client message counts against a per-connection rate
//! ([`HttpConfig::ws_message_rate`](crate::HttpConfig)); malformed, refused
//! and rate-limited messages count against an error allowance, and a
//! connection that exhausts it is closed with 1008.
//!
//! Close codes and reasons are those of the one table,
//! [`herald_core::wire::disconnect`]: 1000 shutdown (reconnect), 1008 slow
//! consumer or too many errors, 1009 message too large, 1011 peer stopped
//! answering pings, 1013 engine unavailable, 4001 missing/invalid/expired
//! credential, 4003 forbidden topic.

mod actions;
mod read_ahead;
mod session;

use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, State};
use axum::http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, Version};
use axum::response::Response;
use herald_auth::Source;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

use crate::auth::origin_allowed;
use crate::connection::ConnectionHandle;
use crate::error::ApiError;
use crate::transport::query_pairs;
use crate::AppState;

/// A connection's socket after the upgrade.
type Socket = WebSocketStream<read_ahead::ReadAhead<TokioIo<Upgraded>>>;

/// A WebSocket handshake that axum's [`WebSocketUpgrade`] found valid, with
/// the connection's upgrade, which [`handler`] completes itself.
pub(crate) struct Handshake {
    /// `Sec-WebSocket-Key` over HTTP/1.1; `None` over HTTP/2 (RFC 8441's
    /// extended CONNECT has no key).
    key: Option<HeaderValue>,
    /// Resolves to the connection once the answer has been sent.
    upgrade: OnUpgrade,
}

impl<S: Send + Sync> FromRequestParts<S> for Handshake {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        // axum's extractor takes the upgrade out of the request: keep a
        // handle to it first. axum's value only validates and is dropped
        // (its `on_upgrade` is never called), so the upgrade is ours.
        let upgrade = parts.extensions.get::<OnUpgrade>().cloned();
        let validated = WebSocketUpgrade::from_request_parts(parts, state).await?;
        drop(validated);
        // axum accepts no handshake without an upgrade, nor an HTTP/1.1 one
        // without a key; this answer is only a guard.
        let not_upgradable = || {
            ApiError::new(
                StatusCode::UPGRADE_REQUIRED,
                "upgrade_required",
                "this request cannot be upgraded to a WebSocket",
            )
        };
        let key = if parts.version <= Version::HTTP_11 {
            let key = parts.headers.get(SEC_WEBSOCKET_KEY).cloned();
            Some(key.ok_or_else(not_upgradable)?)
        } else {
            None
        };
        Ok(Handshake {
            key,
            upgrade: upgrade.ok_or_else(not_upgradable)?,
        })
    }
}

impl Handshake {
    /// The answer that accepts the handshake, as axum writes it: over
    /// HTTP/1.1, 101 with the key's `Sec-WebSocket-Accept` (RFC 6455,
    /// section 4.2.2); over HTTP/2, 200 with an empty body (RFC 8441 and
    /// RFC 9113, section 8.5).
    fn accept(&self) -> Response {
        let mut response = Response::new(Body::empty());
        if let Some(key) = &self.key {
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let accept = derive_accept_key(key.as_bytes());
            let headers = response.headers_mut();
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(
                SEC_WEBSOCKET_ACCEPT,
                HeaderValue::try_from(accept).expect("base64 is a valid header value"),
            );
        }
        response
    }
}

pub(crate) async fn handler(
    State(app): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    conn: Option<axum::Extension<ConnectionHandle>>,
    ws: Result<Handshake, ApiError>,
) -> Result<Response, ApiError> {
    let ws = ws?;
    if app.hub.is_shutting_down() {
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    let pairs = query_pairs(uri.query());
    let credential = crate::auth::credential(&headers, &pairs, &app.config.auth_cookie)?;
    // Cross-site WebSocket hijacking: a cookie rides along with any page's
    // upgrade, so a cookie credential is only honoured from allowed origins.
    if credential
        .as_ref()
        .is_some_and(|c| c.source == Source::Cookie)
        && !origin_allowed(&headers, &app.config.ws_allowed_origins)
    {
        return Err(ApiError::forbidden(
            "forbidden_origin",
            "this origin may not open a WebSocket with the cookie credential",
        ));
    }
    // Refusals of the credential are sent as close 4001 after the upgrade,
    // where browsers can see them. Without a credential, the connect hook
    // (when configured) says who this is, from the handshake's headers.
    let who = crate::auth::upgrade_principal(&app, &headers, credential).await?;
    // Over HTTP/2 only (no key): an HTTP/1.1 connection's switch does
    // nothing once the socket is upgraded, and closing the socket is enough.
    let kill = match ws.key {
        None => conn.as_ref().and_then(|c| c.0.kill.clone()),
        Some(_) => None,
    };
    let slot = app.connection_slot(conn.map(|c| c.0.peer.ip()), &headers)?;
    let max = app.config.ws_max_message_bytes;
    let config = WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
        // Small buffers: an idle connection should cost little memory
        // (subscribers send little; reads of the socket go through a stack
        // chunk, see `read_ahead`; events do not pass through the write
        // buffer).
        .read_buffer_size(read_ahead::TUNGSTENITE_READ)
        .write_buffer_size(16 * 1024);
    // The connection's span: a trace of its own, holding the publish spans
    // of its publishes and linked to the publish of each traced event it
    // sends; `topics` follows its subscriptions.
    let span = tracing::debug_span!(
        parent: None,
        "ws",
        transport = "ws",
        topics = 0usize,
    );
    let response = ws.accept();
    let start = Box::new(session::Start {
        app,
        upgrade: ws.upgrade,
        config,
        who,
        slot,
        kill,
    });
    tokio::spawn(tracing::Instrument::instrument(session::start(start), span));
    Ok(response)
}
