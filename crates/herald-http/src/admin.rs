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
//! Errors: 401 without a credential, 403 for a credential that is neither
//! the publisher key nor an admin token, 400 for a missing or invalid
//! `user`/`limit`, 503 when the engine cannot tell the other nodes.

use axum::body::Bytes;
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

/// Lets the publisher key, an admin token, or anyone on a server without
/// authentication through.
fn admit(who: &Principal) -> Result<(), ApiError> {
    match who {
        Principal::Open | Principal::Publisher => Ok(()),
        Principal::User(g) if g.admin => Ok(()),
        Principal::User(_) => Err(ApiError::forbidden(
            "forbidden",
            "the server API needs the publisher key or a token with the admin claim",
        )),
        Principal::Anonymous => Err(ApiError::unauthorized(
            "the server API needs the publisher key or a token with the admin claim",
        )),
    }
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

/// `POST /v1/disconnect`.
pub(crate) async fn disconnect(
    State(app): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Result<Response, ApiError> {
    let query = Query::parse(uri.query())?;
    let (who, _) = authenticate(&app, &headers, query.pairs()).await?;
    admit(&who)?;
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
    let (who, _) = authenticate(&app, &headers, query.pairs()).await?;
    admit(&who)?;
    let limit = match query.last("limit") {
        None => DEFAULT_TOPICS,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_TOPICS).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_limit",
                    format!("limit is a number of topics from 1 to {MAX_TOPICS}"),
                )
            })?,
    };
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
    let (who, _) = authenticate(&app, &headers, query.pairs()).await?;
    admit(&who)?;
    let user = user_of(query.last("user"))?;
    let list = app.hub.connections_of(&user);
    Ok(Json(json!({ "user": user, "connections": list })).into_response())
}
