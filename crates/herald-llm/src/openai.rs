//! The OpenAI chat-completions streaming wire format, as pure functions:
//! what one `data:` payload of the upstream's event stream means.

use serde_json::Value;

/// What one `data:` line carried.
#[derive(Debug, Clone, PartialEq)]
pub enum Chunk {
    /// `[DONE]`: the stream is complete.
    Done,
    /// A `chat.completion.chunk`: text (possibly empty), a finish reason, usage.
    Delta {
        content: String,
        finish_reason: Option<String>,
        usage: Option<Value>,
    },
    /// An error object sent in the stream (`{"error": {...}}`).
    Error(String),
    /// Something that is not JSON.
    Malformed,
}

/// Interprets one `data:` payload.
pub fn parse_data(data: &str) -> Chunk {
    let data = data.trim();
    if data == "[DONE]" {
        return Chunk::Done;
    }
    let Ok(v) = serde_json::from_str::<Value>(data) else {
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
    Chunk::Delta {
        content,
        finish_reason,
        usage,
    }
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
            Chunk::Delta {
                content: "Hel".into(),
                finish_reason: None,
                usage: None
            }
        );
        assert_eq!(
            parse_data(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#),
            Chunk::Delta {
                content: String::new(),
                finish_reason: Some("stop".into()),
                usage: None
            }
        );
        let Chunk::Delta { usage, .. } = parse_data(r#"{"choices":[],"usage":{"total_tokens":3}}"#)
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
