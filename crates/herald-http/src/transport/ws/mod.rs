//! `GET /v1/ws`: WebSocket, JSON text messages both ways.
//!
//! Built on axum's WebSocket (tokio-tungstenite underneath: a complete,
//! Autobahn-tested RFC 6455 implementation that validates UTF-8, reassembles
//! fragments and runs the close handshake). Event frames are the JSON bytes
//! each event encodes once; every subscriber sends the same bytes.
//!
//! The messages are typed values of [`herald_core::wire::ws`]: client →
//! server `subscribe {topic, since?, history?}`, `unsubscribe {topic}`,
//! `publish {topic, event?, data, id?}`, `auth {token}`; any may carry a
//! `ref` that the answer echoes. Server → client: `event`, `subscribed`,
//! `unsubscribed`, `published`, `authenticated`, `error`. A malformed
//! message gets an `error` and the connection stays usable. This module only
//! translates between the socket and those values:
//!
//! - here: the handshake (credential, origin, connection slot, buffer sizes);
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
mod session;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use herald_auth::Source;

use crate::auth::origin_allowed;
use crate::connection::ConnectionHandle;
use crate::error::ApiError;
use crate::transport::query_pairs;
use crate::AppState;

pub(crate) async fn handler(
    State(app): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    conn: Option<axum::Extension<ConnectionHandle>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
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
    let slot = app.connection_slot(conn.map(|c| c.0.peer.ip()), &headers)?;
    let max = app.config.ws_max_message_bytes;
    // The connection's span: a trace of its own, holding the publish spans
    // of its publishes and linked to the publish of each traced event it
    // sends; `topics` follows its subscriptions.
    let span = tracing::debug_span!(
        parent: None,
        "ws",
        transport = "ws",
        topics = 0usize,
    );
    Ok(ws
        .max_message_size(max)
        .max_frame_size(max)
        // Small buffers: an idle connection should cost little memory
        // (subscribers send little; a bigger message just takes more reads).
        .read_buffer_size(1024)
        .write_buffer_size(16 * 1024)
        .on_upgrade(move |socket| {
            tracing::Instrument::instrument(session::run(app, socket, who, slot), span)
        }))
}
