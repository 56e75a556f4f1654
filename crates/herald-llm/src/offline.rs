//! A built-in offline model: a deterministic token generator that speaks the
//! OpenAI chat-completions wire format on a local port, so `herald serve`
//! shows LLM streaming on a fresh machine and tests have a real upstream.
//!
//! It writes its event stream the way real servers are read, not the way
//! they are usually written: events split at awkward byte offsets, some
//! lines ended with CRLF, `: keep-alive` comments between events.
//!
//! Directives in the last user message steer it (for tests and demos):
//! `[tokens:N]` answer length, `[slow:MS]` delay per token, `[error-after:N]`
//! an error object after N tokens, `[drop-after:N]` cut the connection after
//! N tokens, `[stall-after:N]` go silent after N tokens, `[crlf]` line breaks
//! in the answer written as CRLF, `[multiline]` every chunk's JSON
//! pretty-printed over several `data:` lines (valid event-stream framing that
//! a reader must join with LF).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// Settings of the offline model.
#[derive(Clone, Debug)]
pub struct OfflineModel {
    /// Delay between tokens.
    pub token_delay: Duration,
    /// Require this API key (to check that the relay sends it and nothing leaks it).
    pub api_key: Option<String>,
    /// Streams being written right now (a cancelled generation's goes to zero).
    pub active: Arc<AtomicUsize>,
}

impl Default for OfflineModel {
    fn default() -> Self {
        OfflineModel {
            token_delay: Duration::from_millis(25),
            api_key: None,
            active: Arc::default(),
        }
    }
}

const WORDS: &[&str] = &[
    "Herald",
    "streams",
    "every",
    "token",
    "once",
    "and",
    "a",
    "reload",
    "resumes",
    "from",
    "the",
    "cursor",
    "so",
    "nothing",
    "is",
    "lost",
    "or",
    "paid",
    "for",
    "twice",
    "events",
    "reach",
    "each",
    "viewer",
    "over",
    "SSE",
    "WebSocket",
    "long",
    "polling",
    "in",
    "order",
    "ünïcødé",
    "✓",
    "while",
    "generation",
    "continues",
];

/// The answer's tokens for a prompt: deterministic, so tests can compare.
pub fn tokens_for(prompt: &str, n: usize) -> Vec<String> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in prompt.as_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    (0..n)
        .map(|i| {
            h = h
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let w = WORDS[((h >> 33) as usize) % WORDS.len()];
            if i == 0 {
                w.to_owned()
            } else if i % 17 == 16 {
                format!(".\n{w}")
            } else {
                format!(" {w}")
            }
        })
        .collect()
}

fn directive(text: &str, name: &str) -> Option<u64> {
    let start = text.find(&format!("[{name}:"))? + name.len() + 2;
    let end = text[start..].find(']')? + start;
    text[start..end].trim().parse().ok()
}

/// The router: `POST /v1/chat/completions`.
pub fn router(model: OfflineModel) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(model)
}

/// Serves the offline model on `127.0.0.1:0`; returns its base URL (`http://ADDR/v1`).
pub async fn spawn(model: OfflineModel) -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router(model)).await;
    });
    Ok(format!("http://{addr}/v1"))
}

async fn chat(State(model): State<OfflineModel>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(key) = &model.api_key {
        let ok = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == format!("Bearer {key}"));
        if !ok {
            return (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error", "code": "invalid_api_key"}})),
            )
                .into_response();
        }
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(
                json!({"error": {"message": "body is not JSON", "type": "invalid_request_error"}}),
            ),
        )
            .into_response();
    };
    let prompt = req["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    let model_name = req["model"].as_str().unwrap_or("herald-offline").to_owned();
    let n = directive(&prompt, "tokens")
        .or_else(|| req["max_tokens"].as_u64())
        .unwrap_or(40)
        .clamp(1, 5000) as usize;
    let delay = directive(&prompt, "slow").map_or(model.token_delay, Duration::from_millis);
    let mut tokens = tokens_for(&prompt, n);
    if prompt.contains("[crlf]") {
        for t in &mut tokens {
            *t = t.replace('\n', "\r\n");
        }
    }
    let multiline = prompt.contains("[multiline]");
    let usage = json!({"prompt_tokens": prompt.split_whitespace().count(), "completion_tokens": n, "total_tokens": prompt.split_whitespace().count() + n});
    let id = format!("chatcmpl-offline{:x}", prompt.len() * 7919 + n);
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if req["stream"] != Value::Bool(true) {
        return axum::Json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": tokens.concat()}, "logprobs": null, "finish_reason": "stop"}],
            "usage": usage,
        }))
        .into_response();
    }
    let include_usage = req["stream_options"]["include_usage"] == Value::Bool(true);
    let error_after = directive(&prompt, "error-after").map(|v| v as usize);
    let drop_after = directive(&prompt, "drop-after").map(|v| v as usize);
    let stall_after = directive(&prompt, "stall-after").map(|v| v as usize);
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let active = model.active.clone();
    active.fetch_add(1, Ordering::AcqRel);
    tokio::spawn(async move {
        // Counts this stream until the task ends (finished, or the reader left).
        struct Active(Arc<AtomicUsize>);
        impl Drop for Active {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _active = Active(active);
        let chunk = |delta: Value, finish: Value| {
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model_name,
                   "system_fingerprint": null,
                   "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
        };
        let mut k = 0usize;
        let send = |tx: mpsc::Sender<Result<Bytes, std::io::Error>>, payload: String, k: usize| async move {
            // Awkward framing: CRLF on odd events, a comment now and then,
            // and every event split in three pieces at uneven offsets.
            let eol = if k % 2 == 1 { "\r\n" } else { "\n" };
            let payload = match serde_json::from_str::<Value>(&payload) {
                Ok(v) if multiline => serde_json::to_string_pretty(&v).unwrap_or(payload),
                _ => payload,
            };
            let mut text = String::new();
            if k % 5 == 3 {
                text.push_str(&format!(": keep-alive{eol}"));
            }
            // The encoder ends lines with LF; JSON holds no raw line breaks,
            // so every LF in the frame is a line end.
            let frame = herald_core::wire::sse::encode_event(None, None, &payload).0;
            text.push_str(&String::from_utf8_lossy(&frame).replace('\n', eol));
            let bytes = text.into_bytes();
            let a = (k * 7 + 3) % bytes.len().max(1);
            let b = (a + (k * 13 + 5) % (bytes.len() - a).max(1)).min(bytes.len());
            for part in [&bytes[..a], &bytes[a..b], &bytes[b..]] {
                if !part.is_empty() && tx.send(Ok(Bytes::copy_from_slice(part))).await.is_err() {
                    return false;
                }
            }
            true
        };
        if !send(
            tx.clone(),
            chunk(json!({"role": "assistant", "content": ""}), Value::Null).to_string(),
            k,
        )
        .await
        {
            return;
        }
        for (i, t) in tokens.iter().enumerate() {
            if Some(i) == error_after {
                k += 1;
                let err = json!({"error": {"message": "The offline model failed mid-stream (as asked).", "type": "server_error"}});
                let _ = send(tx.clone(), err.to_string(), k).await;
                return;
            }
            if Some(i) == drop_after {
                let _ = tx
                    .send(Err(std::io::Error::other("connection cut (as asked)")))
                    .await;
                return;
            }
            if Some(i) == stall_after {
                // Silent, but the connection stays open until the client gives up.
                tx.closed().await;
                return;
            }
            tokio::time::sleep(delay).await;
            k += 1;
            if !send(
                tx.clone(),
                chunk(json!({"content": t}), Value::Null).to_string(),
                k,
            )
            .await
            {
                return;
            }
        }
        k += 1;
        let _ = send(tx.clone(), chunk(json!({}), json!("stop")).to_string(), k).await;
        if include_usage {
            k += 1;
            let u = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model_name, "choices": [], "usage": usage});
            let _ = send(tx.clone(), u.to_string(), k).await;
        }
        k += 1;
        let _ = send(tx, "[DONE]".into(), k).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut r = Body::from_stream(stream).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_tokens_and_directives() {
        assert_eq!(tokens_for("hi", 5), tokens_for("hi", 5));
        assert_ne!(tokens_for("hi", 5), tokens_for("ho", 5));
        assert_eq!(tokens_for("x", 30).len(), 30);
        assert_eq!(directive("please [tokens:12] now", "tokens"), Some(12));
        assert_eq!(directive("[slow: 200]", "slow"), Some(200));
        assert_eq!(directive("none", "slow"), None);
    }
}
