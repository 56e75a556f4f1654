//! The relay's HTTP endpoints:
//! - `POST /v1/llm/chat` starts a generation and answers at once with its id,
//!   topic and starting cursor;
//! - `POST /v1/llm/chat/{id}/cancel` stops it;
//! - `POST /v1/chat/completions` is OpenAI-compatible (SDKs use Herald as
//!   their base URL) and records the stream for resume too.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use herald_core::wire::sse::encode_event;
use herald_http::publish::{is_json, read_limited_within};
use herald_http::{ApiError, HttpConfig};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};

use crate::openai::Completion;
use crate::relay::{Forward, Relay, Relayed, Share};

/// A non-streaming answer waits this long at most for each chunk.
const COLLECT_CHUNK_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Clone)]
struct LlmState {
    relay: Arc<Relay>,
    http: Arc<HttpConfig>,
}

/// The relay's routes, to merge into Herald's router.
pub fn router(relay: Arc<Relay>, http: Arc<HttpConfig>) -> Router {
    Router::new()
        .route("/v1/llm/chat", post(start))
        .route("/v1/llm/chat/{id}/cancel", post(cancel))
        .route("/v1/chat/completions", post(completions))
        .with_state(LlmState { relay, http })
}

async fn body_object(
    st: &LlmState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Map<String, Value>, ApiError> {
    if !is_json(headers) {
        return Err(ApiError::unsupported_media_type(
            "send the request body as application/json",
        ));
    }
    let bytes =
        read_limited_within(headers, body, st.http.max_body_bytes, st.http.body_timeout).await?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_request(
            "invalid_request",
            "the body must be a JSON object",
        )),
        Err(e) => Err(ApiError::bad_request(
            "invalid_json",
            format!("body is not valid JSON: {e}"),
        )),
    }
}

fn share_of(v: Option<Value>) -> Result<Share, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(Share::Creator),
        Some(Value::String(s)) if s == "everyone" => Ok(Share::Everyone),
        Some(Value::Array(a)) => a
            .into_iter()
            .map(|x| match x {
                Value::String(s) if !s.is_empty() => Ok(s),
                _ => Err(ApiError::bad_request(
                    "invalid_request",
                    "`share` lists subjects as strings",
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Share::Subjects),
        Some(_) => Err(ApiError::bad_request(
            "invalid_request",
            "`share` is \"everyone\" or a list of subjects",
        )),
    }
}

/// The caller's connection (its peer address).
type Conn = Option<axum::Extension<herald_http::ConnectionHandle>>;

/// The caller's address: the peer, or behind a trusted proxy the client its
/// headers name. Counts the generation share of callers without a subject.
fn client_of(st: &LlmState, conn: &Conn, headers: &HeaderMap) -> Option<IpAddr> {
    conn.as_ref()
        .map(|c| st.http.client_addr(c.peer.ip(), headers))
}

async fn start(
    State(st): State<LlmState>,
    headers: HeaderMap,
    uri: Uri,
    conn: Conn,
    body: Body,
) -> Response {
    let r = async {
        let (who, _) = herald_http::auth::principal(&st.http, &headers, uri.query()).await?;
        let mut req = body_object(&st, &headers, body).await?;
        let share = share_of(req.remove("share"))?;
        let started = st
            .relay
            .start(&who, client_of(&st, &conn, &headers), req, share, None)
            .await?;
        let topic = started.topic.as_str().to_owned();
        Ok::<_, ApiError>(Json(json!({
            "id": started.id,
            "topic": topic,
            "cursor": started.cursor,
            "sse": format!("/v1/sse?topic={topic}&last_event_id={}", started.cursor),
        })))
    }
    .await;
    match r {
        Ok(j) => j.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn cancel(
    State(st): State<LlmState>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
) -> Response {
    let r = async {
        let (who, _) = herald_http::auth::principal(&st.http, &headers, uri.query()).await?;
        st.relay.cancel(&id, &who)
    }
    .await;
    match r {
        Ok(()) => Json(json!({"cancelled": true, "id": id})).into_response(),
        Err(e) => e.into_response(),
    }
}

/// An error in OpenAI's shape (`{"error": {"message", "type", "code":
/// null}}`, `type` being Herald's code), so SDKs raise it properly; the
/// status and `Retry-After` (429, 503), which the SDKs honour, are the
/// error's own.
fn openai_error(e: ApiError) -> Response {
    let retry = e.retry_after_secs();
    let body = json!({"error": {"message": e.message, "type": e.code, "code": null}});
    let mut r = (e.status, Json(body)).into_response();
    if let Some(secs) = retry {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

async fn completions(
    State(st): State<LlmState>,
    headers: HeaderMap,
    uri: Uri,
    conn: Conn,
    body: Body,
) -> Response {
    let r = async {
        let (who, _) = herald_http::auth::principal(&st.http, &headers, uri.query()).await?;
        let mut req = body_object(&st, &headers, body).await?;
        let stream = req.get("stream") == Some(&Value::Bool(true));
        let share = share_of(req.remove("share"))?;
        let (chunks_tx, chunks) = mpsc::channel::<Relayed>(256);
        let (head_tx, head) = oneshot::channel();
        let forward = Forward {
            head: head_tx,
            chunks: chunks_tx,
        };
        let client = client_of(&st, &conn, &headers);
        let started = st
            .relay
            .start(&who, client, req, share, Some(forward))
            .await?;
        // Answer with the upstream's status: an SDK expects errors as HTTP errors.
        match tokio::time::timeout(st.relay.config().idle_timeout, head).await {
            Ok(Ok(answer)) => answer?,
            _ => {
                return Err(ApiError::gateway_timeout(
                    "upstream_error",
                    "the upstream did not answer",
                ))
            }
        }
        let mut resp = if stream {
            event_stream(chunks)
        } else {
            Json(collect(chunks).await?).into_response()
        };
        let h = resp.headers_mut();
        for (k, v) in [
            ("x-herald-stream-id", started.id.as_str()),
            ("x-herald-topic", started.topic.as_str()),
            ("x-herald-cursor", started.cursor.as_str()),
        ] {
            if let Ok(v) = HeaderValue::from_str(v) {
                h.insert(k, v);
            }
        }
        Ok::<_, ApiError>(resp)
    }
    .await;
    r.unwrap_or_else(openai_error)
}

/// The generation as OpenAI's event stream: each chunk as the upstream sent
/// it, framed by the shared SSE encoder (data with line breaks becomes one
/// `data:` line per line), then `data: [DONE]` or an error payload.
fn event_stream(chunks: mpsc::Receiver<Relayed>) -> Response {
    let body = futures_util::stream::unfold(chunks, |mut rx| async move {
        let r = rx.recv().await?;
        let frame = encode_event(None, None, r.data()).0.freeze();
        Some((Ok::<_, std::convert::Infallible>(frame), rx))
    });
    let mut r = Body::from_stream(body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// The generation as one `chat.completion` (a non-streaming request).
///
/// Errors: 502 `upstream_error` when the stream failed midway.
async fn collect(mut chunks: mpsc::Receiver<Relayed>) -> Result<Value, ApiError> {
    let mut completion = Completion::default();
    while let Ok(Some(r)) = tokio::time::timeout(COLLECT_CHUNK_TIMEOUT, chunks.recv()).await {
        match r {
            Relayed::Chunk { delta, .. } => completion.add(delta),
            Relayed::Done => break,
            Relayed::Failed { message, .. } => {
                return Err(ApiError::bad_gateway("upstream_error", message))
            }
        }
    }
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(completion.to_json(created))
}
