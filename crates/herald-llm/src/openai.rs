//! The OpenAI chat-completions streaming wire format, as pure functions:
//! what one `data:` payload of the upstream's event stream means, the
//! non-streaming answer collected from those, and the error payload the
//! relay ends a failed stream with.

use serde_json::{json, Value};

/// What one `data:` payload carried.
#[derive(Debug, Clone, PartialEq)]
pub enum Chunk {
    /// `[DONE]`: the stream is complete.
    Done,
    /// A `chat.completion.chunk`.
    Delta(Delta),
    /// An error object sent in the stream (`{"error": {...}}`): its message.
    Error(String),
    /// Something that is not JSON.
    Malformed,
}

/// What the relay reads from a `chat.completion.chunk`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    /// The text of `choices[0].delta.content` (empty when there is none).
    pub content: String,
    /// `choices[0].finish_reason`, once the model has stopped.
    pub finish_reason: Option<String>,
    /// `usage`, usually on the last chunk only.
    pub usage: Option<Value>,
    /// The completion's `id` (`null` when absent).
    pub id: Value,
    /// The `model` that answers (`null` when absent).
    pub model: Value,
}

/// Interprets one `data:` payload.
pub fn parse_data(data: &str) -> Chunk {
    let data = data.trim();
    if data == "[DONE]" {
        return Chunk::Done;
    }
    let Ok(mut v) = serde_json::from_str::<Value>(data) else {
        return Chunk::Malformed;
    };
    if let Some(err) = v.get("error") {
        let msg = err
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| err.to_string());
        return Chunk::Error(msg);
    }
    let choice = v.get("choices").and_then(|c| c.get(0));
    let content = choice
        .and_then(|c| c.get("delta"))
        .and_then(|d| d.get("content"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let finish_reason = choice
        .and_then(|c| c.get("finish_reason"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let usage = v.get("usage").filter(|u| !u.is_null()).cloned();
    Chunk::Delta(Delta {
        content,
        finish_reason,
        usage,
        id: v.get_mut("id").map(Value::take).unwrap_or_default(),
        model: v.get_mut("model").map(Value::take).unwrap_or_default(),
    })
}

/// A non-streaming `chat.completion`, collected from a stream's deltas.
#[derive(Debug, Default)]
pub struct Completion {
    content: String,
    finish_reason: Option<String>,
    usage: Option<Value>,
    id: Value,
    model: Value,
}

impl Completion {
    /// Adds one chunk: its text, and the latest finish reason and usage;
    /// `id` and `model` come from the first chunk that names a model.
    pub fn add(&mut self, d: Delta) {
        self.content.push_str(&d.content);
        if d.finish_reason.is_some() {
            self.finish_reason = d.finish_reason;
        }
        if d.usage.is_some() {
            self.usage = d.usage;
        }
        if self.model.is_null() {
            self.model = d.model;
            self.id = d.id;
        }
    }

    /// The `chat.completion` object, `created` at that Unix time (seconds).
    pub fn to_json(&self, created: u64) -> Value {
        json!({
            "id": self.id, "object": "chat.completion", "model": self.model,
            "created": created,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": self.content},
                         "logprobs": null, "finish_reason": self.finish_reason}],
            "usage": self.usage,
        })
    }
}

/// The `data:` payload of an error the relay itself ends a stream with
/// (`{"error": {"message", "type": "upstream_error"}}`), in OpenAI's shape
/// so SDKs raise it.
pub fn error_data(message: &str) -> String {
    json!({"error": {"message": message, "type": "upstream_error"}}).to_string()
}

/// The message an upstream error body carries (OpenAI's `{"error":{"message"}}`
/// or any text), passed through `redact` (which must take credentials out:
/// an upstream may echo request headers) and then cut to a readable length.
pub fn error_message(status: u16, body: &[u8], redact: impl Fn(&str) -> String) -> String {
    let text = String::from_utf8_lossy(body);
    let msg = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| {
            v.get("error").map(|e| {
                e.get("message")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| e.to_string())
            })
        })
        .unwrap_or_else(|| text.trim().to_owned());
    // Redact the whole text before cutting it: a cut could split a key.
    let msg = redact(&msg);
    let mut msg: String = msg.chars().take(500).collect();
    if msg.is_empty() {
        msg = "no details".into();
    }
    format!("upstream answered {status}: {msg}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks() {
        assert_eq!(parse_data("[DONE]"), Chunk::Done);
        assert_eq!(parse_data(" [DONE] "), Chunk::Done);
        assert_eq!(
            parse_data(
                r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#
            ),
            Chunk::Delta(Delta {
                content: "Hel".into(),
                finish_reason: None,
                usage: None,
                id: json!("c"),
                model: Value::Null,
            })
        );
        assert_eq!(
            parse_data(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#),
            Chunk::Delta(Delta {
                content: String::new(),
                finish_reason: Some("stop".into()),
                usage: None,
                id: Value::Null,
                model: Value::Null,
            })
        );
        let Chunk::Delta(Delta { usage, .. }) =
            parse_data(r#"{"choices":[],"usage":{"total_tokens":3}}"#)
        else {
            panic!()
        };
        assert_eq!(usage.unwrap()["total_tokens"], 3);
        assert_eq!(
            parse_data(r#"{"error":{"message":"overloaded"}}"#),
            Chunk::Error("overloaded".into())
        );
        assert_eq!(parse_data("nope"), Chunk::Malformed);
    }

    #[test]
    fn a_completion_collects_the_deltas() {
        let mut c = Completion::default();
        for data in [
            r#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"},"finish_reason":null}]}"#,
            r#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":null}]}"#,
            r#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            r#"{"id":"c1","model":"m","choices":[],"usage":{"total_tokens":3}}"#,
        ] {
            let Chunk::Delta(d) = parse_data(data) else {
                panic!("{data}")
            };
            c.add(d);
        }
        let v = c.to_json(7);
        assert_eq!(
            (&v["id"], &v["model"], &v["object"], &v["created"]),
            (
                &json!("c1"),
                &json!("m"),
                &json!("chat.completion"),
                &json!(7)
            )
        );
        assert_eq!(v["choices"][0]["message"]["content"], "Hello");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["total_tokens"], 3);
        let empty = Completion::default().to_json(0);
        assert!(empty["usage"].is_null() && empty["choices"][0]["finish_reason"].is_null());
    }

    #[test]
    fn error_messages() {
        let r = |t: &str| crate::redact::redact(t, Some("sk-the-key-1234567890"));
        assert_eq!(
            error_message(401, br#"{"error":{"message":"bad key"}}"#, r),
            "upstream answered 401: bad key"
        );
        assert_eq!(
            error_message(502, b"Bad Gateway", r),
            "upstream answered 502: Bad Gateway"
        );
        assert_eq!(
            error_message(500, b"", r),
            "upstream answered 500: no details"
        );
        // An echo of the request's headers, cut after the key began: still redacted.
        let mut long = "x".repeat(480);
        long.push_str(" Authorization: Bearer sk-the-key-1234567890");
        let m = error_message(400, long.as_bytes(), r);
        assert!(!m.contains("sk-the"), "{m}");
    }
}
