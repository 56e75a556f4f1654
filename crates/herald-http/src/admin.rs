//! The server API (DESIGN.md, "Your backend in the loop", "Server API"):
//! what an operator or a backend does to the connections, behind the
//! publisher key or a token with the `admin` claim.
//!
//! - `POST /v1/disconnect {"user": U}` closes every connection of `U` on
//!   every node: SSE streams end with `herald.disconnect
//!   {"reason":"disconnected"}`, WebSockets close with 4009 `disconnected`,
//!   held polls are answered. Answer `200 {"user": U}`.
//! - `GET /v1/topics[?limit=N]` → `200 {"topics": [{"topic", "subscribers"}],
//!   "total": T}`: topics with subscribers on this node, the busiest first,
//!   at most `N` (default 100, 1 to 10,000); `total` counts them all.
//! - `GET /v1/connections?user=U` → `200 {"user": U, "connections":
//!   [{"client", "user", "transport", "connected_at", "topics"}]}`: the
//!   user's connections on this node, oldest first (`connected_at` in
//!   milliseconds since the Unix epoch).
//!
//! The credential must come in the `Authorization` header (a cookie or a
//! URL credential is ignored here), and a disconnect's body must be
//! `application/json`, read only once the caller is admitted.
//!
//! Errors: 401 without a credential, 403 for a credential that is neither
//! the publisher key nor an admin token, 400 for a missing or invalid
//! `user`/`limit`, 415 for a body that is not JSON, 413 over 16 KiB, 503
//! when the engine cannot tell the other nodes.

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_auth::Principal;
use serde_json::json;

use crate::auth::authenticate;
use crate::error::ApiError;
use crate::input::Query;
use crate::AppState;

/// Topics listed without `limit`.
pub const DEFAULT_TOPICS: usize = 100;
/// The most topics one answer lists.
pub const MAX_TOPICS: usize = 10_000;
/// The longest user name accepted, in bytes (a `sub` is no longer in
/// practice).
pub const MAX_USER_BYTES: usize = 1024;

/// Who calls the server API: the credential of the `Authorization`
/// header only. A cookie would let any site's page that an admin visits
/// call it with the admin's rights, and a URL credential (`?token=`, a
/// one-time token) ends up in logs and histories.
async fn caller(app: &AppState, headers: &HeaderMap, uri: &Uri) -> Result<Principal, ApiError> {
    Query::parse(uri.query())?;
    let mut only_header = HeaderMap::new();
    if let Some(v) = headers.get(axum::http::header::AUTHORIZATION) {
        only_header.insert(axum::http::header::AUTHORIZATION, v.clone());
    }
    let (who, _) = authenticate(app, &only_header, &[]).await?;
    Ok(who)
}

fn user_of(value: Option<&str>) -> Result<String, ApiError> {
    match value {
        Some(u) if !u.is_empty() && u.len() <= MAX_USER_BYTES => Ok(u.to_owned()),
        _ => Err(ApiError::bad_request(
            "invalid_user",
            format!("name the user (a token's sub), 1 to {MAX_USER_BYTES} bytes"),
        )),
    }
}

/// The largest `POST /v1/disconnect` body, in bytes.
pub const MAX_API_BODY: usize = 16 * 1024;

/// `POST /v1/disconnect`.
pub(crate) async fn disconnect(
    State(app): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let who = caller(&app, &headers, &uri).await?;
    app.config.auth.authorize_server_api(&who)?;
    // Read only once admitted, and as JSON: a cross-site form cannot send
    // `application/json` without the browser asking first.
    if !crate::publish::is_json(&headers) {
        return Err(ApiError::unsupported_media_type(
            "send the body as application/json",
        ));
    }
    let body =
        crate::publish::read_limited_within(&headers, body, MAX_API_BODY, app.config.body_timeout)
            .await?;
    let v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("the body is not JSON: {e}")))?;
    let user = user_of(v.get("user").and_then(|u| u.as_str()))?;
    app.hub.disconnect_user(&user).await?;
    tracing::info!(user = %user, "disconnected every connection of a user");
    Ok(Json(json!({ "user": user })).into_response())
}

/// `GET /v1/topics`.
pub(crate) async fn topics(
    State(app): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let query = Query::parse(uri.query())?;
    let who = caller(&app, &headers, &uri).await?;
    app.config.auth.authorize_server_api(&who)?;
    let limit = query.limit(DEFAULT_TOPICS, MAX_TOPICS, "topics")?;
    let (list, total) = app.hub.busiest_topics(limit);
    let topics: Vec<serde_json::Value> = list
        .iter()
        .map(|(t, n)| json!({"topic": t.as_str(), "subscribers": n}))
        .collect();
    Ok(Json(json!({ "topics": topics, "total": total })).into_response())
}

/// `GET /v1/connections`.
pub(crate) async fn connections(
    State(app): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let query = Query::parse(uri.query())?;
    let who = caller(&app, &headers, &uri).await?;
    app.config.auth.authorize_server_api(&who)?;
    let user = user_of(query.last("user"))?;
    let list = app.hub.connections_of(&user);
    Ok(Json(json!({ "user": user, "connections": list })).into_response())
}
