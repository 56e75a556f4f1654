//! `GET /v1/presence?topic=T`: who is subscribed to a topic (DESIGN.md,
//! "Presence"), and the presence entries every transport makes.
//!
//! The answer is `{"topic": T, "clients": [{"client","user","info",
//! "transport"}]}`, ordered by client id, on every node the engine spans.
//! Needs subscribe rights on `T`, checked by the one authorize function as
//! [`Action::Presence`]. A topic whose policy does not track presence is
//! 400 `presence_disabled` (the list would always be empty, which would
//! read as "nobody is here").
//!
//! Each connection is present on each presence topic it receives: an SSE
//! stream and a WebSocket from the moment the topic is subscribed until
//! the connection ends or unsubscribes; a long poll while it is held and
//! for `--poll-presence-grace` after (see [`poll_client_id`] for the id it
//! keeps across polls).

use std::hash::{Hash, Hasher};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_auth::{Action, Principal};
use herald_core::presence::Member;
use herald_core::{PresenceGuard, Topic, Transport};

use crate::auth::{authenticate, authorize_all};
use crate::error::ApiError;
use crate::input::Query;
use crate::AppState;

/// `GET /v1/presence`.
///
/// Errors: 400 `invalid_topic` (missing or invalid), 400
/// `presence_disabled`, 401, 403, 503 when the engine's presence store
/// cannot be read.
pub(crate) async fn handler(
    State(app): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let query = Query::parse(uri.query())?;
    let topic = match query.last("topic") {
        Some(t) => Topic::new(t)?,
        None => {
            return Err(ApiError::bad_request(
                "invalid_topic",
                "presence reads one topic: pass topic=",
            ))
        }
    };
    let (who, _) = authenticate(&app, &headers, query.pairs()).await?;
    authorize_all(&app, &who, Action::Presence, std::slice::from_ref(&topic))?;
    let clients = members(&app, &topic).await?;
    Ok(Json(serde_json::json!({ "topic": topic.as_str(), "clients": clients })).into_response())
}

/// The members of `topic`, or 400 `presence_disabled` when its policy does
/// not track presence. The caller has authorized [`Action::Presence`].
pub(crate) async fn members(app: &AppState, topic: &Topic) -> Result<Vec<Member>, ApiError> {
    if !app.hub.policy(topic).tracks_presence() {
        return Err(ApiError::bad_request(
            "presence_disabled",
            format!(
                "{} has no presence: set presence = true in a [[topics]] policy matching it",
                topic.as_str()
            ),
        ));
    }
    Ok(app.hub.presence(topic).await?)
}

/// The presence entry of a connection of `who`: `user` is the credential's
/// `sub` (empty without one), `info` its `info` claim (or `null`).
pub(crate) fn member(who: &Principal, client: &str, transport: Transport) -> Member {
    Member {
        client: client.into(),
        user: who.subject().unwrap_or("").into(),
        info: who.info().cloned().unwrap_or(serde_json::Value::Null),
        transport,
    }
}

/// Enters `client` on each of `topics` that tracks presence; the guards
/// keep it there (dropping them leaves after `linger`). Topics without
/// presence cost a policy lookup and nothing else.
pub(crate) async fn enter_all(
    app: &AppState,
    who: &Principal,
    topics: &[Topic],
    client: &str,
    transport: Transport,
    linger: Duration,
) -> Vec<PresenceGuard> {
    let mut guards = Vec::new();
    for t in topics {
        if app.hub.policy(t).tracks_presence() {
            guards.push(
                app.hub
                    .enter(t, member(who, client, transport), linger)
                    .await,
            );
        }
    }
    guards
}

/// The id a long-polling client keeps across its polls, so that its
/// presence lasts from one poll to the next: `p-` and 16 hex digits of a
/// hash of who polls (the credential's `sub`, else the peer address) and
/// the request's `client` parameter (the browser client sends a random id
/// per page; without it, the `User-Agent`). Two polls of the same user
/// with the same `client` are one presence entry; a client cannot take
/// another user's entry. The hash is the same on every node (fixed keys),
/// so a client moving between nodes keeps its id.
pub(crate) fn poll_client_id(
    who: &Principal,
    peer: Option<std::net::IpAddr>,
    client: Option<&str>,
    headers: &HeaderMap,
) -> String {
    #[allow(deprecated)] // SipHash with fixed keys: stable across nodes and runs.
    let mut h = std::hash::SipHasher::new_with_keys(0x6865_7261_6c64, 0x706f_6c6c);
    match who.subject() {
        Some(sub) => ("sub", sub).hash(&mut h),
        None => ("addr", peer).hash(&mut h),
    }
    match client {
        Some(c) => ("client", c).hash(&mut h),
        None => (
            "agent",
            headers
                .get(axum::http::header::USER_AGENT)
                .map(|v| v.as_bytes()),
        )
            .hash(&mut h),
    }
    format!("p-{:016x}", h.finish())
}
