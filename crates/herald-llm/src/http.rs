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
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use herald_http::publish::{is_json, read_limited_within};
use herald_http::{ApiError, HttpConfig};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};

use crate::relay::{Relay, Share, GENERATION_RETRY_AFTER_SECS};

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
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
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

/// A 429 for too many generations waits [`GENERATION_RETRY_AFTER_SECS`].
fn with_retry_after(mut r: Response) -> Response {
    if r.status() == StatusCode::TOO_MANY_REQUESTS {
        r.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(GENERATION_RETRY_AFTER_SECS),
        );
    }
    r
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
            .start(
                &who,
                client_of(&st, &conn, &headers),
                req,
                share,
                None,
                None,
            )
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
        Err(e) => with_retry_after(e.into_response()),
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

/// An error in OpenAI's shape, so SDKs raise it properly (429 and 503 with
/// `Retry-After`, which the SDKs honour).
fn openai_error(status: StatusCode, message: &str, kind: &str) -> Response {
    let r = (
        status,
        Json(json!({"error": {"message": message, "type": kind, "code": null}})),
    )
        .into_response();
    let mut r = with_retry_after(r);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
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
    let (who, mut req) = match async {
        let (who, _) = herald_http::auth::principal(&st.http, &headers, uri.query()).await?;
        Ok::<_, ApiError>((who, body_object(&st, &headers, body).await?))
    }
    .await
    {
        Ok(x) => x,
        Err(e) => return openai_error(e.status, &e.message, e.code),
    };
    let stream = req.get("stream") == Some(&Value::Bool(true));
    let share = match share_of(req.remove("share")) {
        Ok(s) => s,
        Err(e) => return openai_error(e.status, &e.message, e.code),
    };
    let (raw_tx, mut raw_rx) = mpsc::channel::<Bytes>(256);
    let (head_tx, head_rx) = oneshot::channel();
    let started = match st
        .relay
        .start(
            &who,
            client_of(&st, &conn, &headers),
            req,
            share,
            Some(raw_tx),
            Some(head_tx),
        )
        .await
    {
        Ok(s) => s,
        Err(e) => return openai_error(e.status, &e.message, e.code),
    };
    // Answer with the upstream's status: an SDK expects errors as HTTP errors.
    match tokio::time::timeout(st.relay.config().idle_timeout, head_rx).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err((status, msg)))) => return openai_error(status, &msg, "upstream_error"),
        _ => {
            return openai_error(
                StatusCode::GATEWAY_TIMEOUT,
                "the upstream did not answer",
                "upstream_error",
            )
        }
    }
    let mut resp = if stream {
        let body = futures_util::stream::unfold(raw_rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
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
    } else {
        // Collect the stream into one chat.completion.
        let mut content = String::new();
        let mut finish = Value::Null;
        let mut usage = Value::Null;
        let mut model = Value::Null;
        let mut id = Value::Null;
        let mut parser = herald_client::SseParser::new();
        while let Ok(Some(chunk)) =
            tokio::time::timeout(Duration::from_secs(600), raw_rx.recv()).await
        {
            for item in parser.feed(&chunk) {
                let herald_client::SseItem::Event(e) = item else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<Value>(&e.data) else {
                    continue;
                };
                if let Some(err) = v.get("error") {
                    let msg = err["message"]
                        .as_str()
                        .unwrap_or("upstream error")
                        .to_owned();
                    return openai_error(StatusCode::BAD_GATEWAY, &msg, "upstream_error");
                }
                if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
                    content.push_str(t);
                }
                if !v["choices"][0]["finish_reason"].is_null() {
                    finish = v["choices"][0]["finish_reason"].clone();
                }
                if !v["usage"].is_null() {
                    usage = v["usage"].clone();
                }
                if model.is_null() {
                    model = v["model"].clone();
                    id = v["id"].clone();
                }
            }
        }
        Json(json!({
            "id": id, "object": "chat.completion", "model": model,
            "created": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": null, "finish_reason": finish}],
            "usage": usage,
        }))
        .into_response()
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
    resp
}
