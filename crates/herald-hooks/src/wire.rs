//! The JSON of each hook request and answer (DESIGN.md, "Your backend in
//! the loop"), as pure functions over values and bytes.
//!
//! Requests (Herald → backend), each a `POST` of one JSON object:
//!
//! - `{"type":"connect","transport":"sse"|"ws"|"poll"|"http","remote_addr":"<ip>"|null,"headers":{"cookie":...,"authorization":...}}`
//! - `{"type":"subscribe","user":"<user>"|null,"topic":"<topic>"}`
//! - `{"type":"publish","user":"<user>"|null,"topic":"<topic>","event":"<name>"|null,"data":<the published JSON value>}`
//!
//! Answers (backend → Herald), decided by status:
//!
//! | hook | 200 | 401 | 403 | anything else |
//! |---|---|---|---|---|
//! | connect | `{"user","grants":{"subscribe":[...],"publish":[...]},"expires_at"?,"info"?}`: a credential | not identified | refused, `{"reason"}` optional | unavailable |
//! | subscribe | allowed (body ignored) | refused | refused, `{"reason"}` optional | unavailable |
//! | publish | `{}` (or empty) accepts, `{"data":...}` accepts with that data | refused | refused, `{"reason"}` optional | unavailable |
//!
//! An answer that does not parse as its hook expects is "unavailable" too:
//! every failure refuses (the hooks fail closed).

use std::sync::Arc;

use herald_auth::{Grant, Principal, TopicPattern};
use herald_core::Data;
use serde::Deserialize;
use serde_json::{json, Value};

/// Longest `user` a connect answer may name, in bytes.
pub const MAX_USER_BYTES: usize = 1024;

/// Largest `info` a connect answer may carry, in bytes of JSON (as a
/// token's `info` claim).
pub const MAX_INFO_BYTES: usize = 1024;

/// Longest refusal `reason` passed on to the client, in bytes; a longer
/// one is cut at a character boundary.
pub const MAX_REASON_BYTES: usize = 512;

/// The three hooks, for metrics and messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// Who a connection without a Herald credential is.
    Connect,
    /// Whether a subscribe (or another read) of a `subscribe_hook` topic may proceed.
    Subscribe,
    /// Whether a client publish to a `publish_hook` topic may proceed, and with what data.
    Publish,
}

impl Hook {
    /// Every hook, in the order metrics list them.
    pub const ALL: [Hook; 3] = [Hook::Connect, Hook::Subscribe, Hook::Publish];

    /// `connect`, `subscribe` or `publish`: the request's `type` and the
    /// metrics' `hook` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Connect => "connect",
            Hook::Subscribe => "subscribe",
            Hook::Publish => "publish",
        }
    }
}

/// What the connect hook is told about a connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectRequest {
    /// `sse`, `ws`, `poll`, or `http` for other endpoints.
    pub transport: &'static str,
    /// The client's address (behind a trusted proxy, the one its header
    /// names), without a port; `None` when the server did not say.
    pub remote_addr: Option<String>,
    /// Headers that identify the caller, by lowercase name: `cookie`,
    /// `authorization`, `origin`, `user-agent` (those present).
    pub headers: Vec<(&'static str, String)>,
}

/// The body of a connect request.
pub fn connect_request(r: &ConnectRequest) -> Vec<u8> {
    let headers: serde_json::Map<String, Value> = r
        .headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::String(v.clone())))
        .collect();
    json!({
        "type": "connect",
        "transport": r.transport,
        "remote_addr": r.remote_addr,
        "headers": headers,
    })
    .to_string()
    .into_bytes()
}

/// The body of a subscribe request; `user` is `None` for a caller without
/// one (a public topic read anonymously).
pub fn subscribe_request(user: Option<&str>, topic: &str) -> Vec<u8> {
    json!({"type": "subscribe", "user": user, "topic": topic})
        .to_string()
        .into_bytes()
}

/// The body of a publish request: `data` as the JSON value it was
/// published as (a string stays a string).
pub fn publish_request(
    user: Option<&str>,
    topic: &str,
    event: Option<&str>,
    data: &Data,
) -> Vec<u8> {
    let data = match data {
        Data::Text(s) => Value::String(s.to_string()),
        // Held as compact JSON the hub parsed once; it parses again.
        Data::Json(s) => serde_json::from_str(s).unwrap_or(Value::Null),
    };
    json!({"type": "publish", "user": user, "topic": topic, "event": event, "data": data})
        .to_string()
        .into_bytes()
}

/// A connect hook's verdict.
#[derive(Clone, Debug, PartialEq)]
pub enum ConnectVerdict {
    /// 200: who the caller is and what they may do.
    Granted(ConnectGrant),
    /// 401: the backend does not know the caller (no session). Herald
    /// treats them as having no credential: public topics only.
    Unidentified,
    /// 403: the backend refuses the caller, with its reason if it gave one.
    Refused(Option<String>),
}

/// A connect hook's grant, with its patterns checked: acts exactly like a
/// token's claims (see [`ConnectGrant::into_principal`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectGrant {
    /// The user: the `{sub}` of patterns, presence's `user`, the publish
    /// and subscribe hooks' `user`.
    pub user: String,
    /// Patterns the caller may subscribe to (and read history and presence of).
    pub subscribe: Vec<TopicPattern>,
    /// Patterns the caller may publish to.
    pub publish: Vec<TopicPattern>,
    /// The credential's deadline, Unix seconds: connections opened with it
    /// end there with `token_expired`, like at a token's `exp`.
    pub expires_at: Option<u64>,
    /// Shown in presence entries, like a token's `info` claim.
    pub info: Option<Value>,
}

impl ConnectGrant {
    /// The principal this grant makes, the same as a verified token with
    /// `sub = user`, these patterns and `exp = expires_at` would.
    pub fn into_principal(self) -> Principal {
        Principal::User(Arc::new(Grant {
            subject: Some(self.user),
            subscribe: self.subscribe,
            publish: self.publish,
            llm: false,
            admin: false,
            expires_at: self.expires_at,
            info: self.info,
        }))
    }
}

#[derive(Deserialize)]
struct ConnectAnswer {
    user: String,
    #[serde(default)]
    grants: Grants,
    #[serde(default)]
    expires_at: Option<u64>,
    #[serde(default)]
    info: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Grants {
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
}

/// Reads a connect answer of `status` with `body`.
///
/// Errors: why the answer cannot be used (a status other than 200, 401 and
/// 403; a 200 body that is not the grant, with an empty or too long `user`,
/// an invalid pattern or a too large `info`).
pub fn connect_answer(status: u16, body: &[u8]) -> Result<ConnectVerdict, String> {
    match status {
        200 => {}
        401 => return Ok(ConnectVerdict::Unidentified),
        403 => return Ok(ConnectVerdict::Refused(reason(body))),
        other => return Err(format!("the connect hook answered status {other}")),
    }
    let a: ConnectAnswer = serde_json::from_slice(body)
        .map_err(|e| format!("the connect hook's answer is not the grant JSON: {e}"))?;
    if a.user.is_empty() || a.user.len() > MAX_USER_BYTES {
        return Err(format!(
            "the connect hook's `user` must be 1 to {MAX_USER_BYTES} bytes"
        ));
    }
    let parse = |patterns: &[String]| {
        patterns
            .iter()
            .map(|p| {
                TopicPattern::parse(p)
                    .map_err(|e| format!("the connect hook granted an invalid pattern {p:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let info = match a.info {
        None | Some(Value::Null) => None,
        Some(v) if v.to_string().len() > MAX_INFO_BYTES => {
            return Err(format!(
                "the connect hook's `info` is larger than {MAX_INFO_BYTES} bytes of JSON"
            ))
        }
        Some(v) => Some(v),
    };
    Ok(ConnectVerdict::Granted(ConnectGrant {
        subscribe: parse(&a.grants.subscribe)?,
        publish: parse(&a.grants.publish)?,
        user: a.user,
        expires_at: a.expires_at,
        info,
    }))
}

/// A subscribe hook's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubscribeVerdict {
    /// 200.
    Allow,
    /// 401 or 403, with the backend's reason if it gave one.
    Refuse(Option<String>),
}

/// Reads a subscribe answer.
///
/// Errors: a status other than 200, 401 and 403.
pub fn subscribe_answer(status: u16, body: &[u8]) -> Result<SubscribeVerdict, String> {
    match status {
        200 => Ok(SubscribeVerdict::Allow),
        401 | 403 => Ok(SubscribeVerdict::Refuse(reason(body))),
        other => Err(format!("the subscribe hook answered status {other}")),
    }
}

/// A publish hook's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublishVerdict {
    /// 200 `{}`: publish as sent.
    Accept,
    /// 200 `{"data": ...}`: publish this data instead; it is what is stored
    /// and delivered.
    Replace(Data),
    /// 401 or 403, with the backend's reason if it gave one.
    Refuse(Option<String>),
}

/// Reads a publish answer.
///
/// Errors: a status other than 200, 401 and 403, or a 200 body that is
/// neither empty nor a JSON object.
pub fn publish_answer(status: u16, body: &[u8]) -> Result<PublishVerdict, String> {
    match status {
        200 => {}
        401 | 403 => return Ok(PublishVerdict::Refuse(reason(body))),
        other => return Err(format!("the publish hook answered status {other}")),
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(PublishVerdict::Accept);
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| format!("the publish hook's answer is not JSON: {e}"))?;
    let Value::Object(mut object) = value else {
        return Err("the publish hook's answer is not a JSON object".into());
    };
    // `{"data": null}` replaces the data with JSON null; no `data` keeps it.
    Ok(match object.remove("data") {
        Some(data) => PublishVerdict::Replace(Data::from_json(&data)),
        None => PublishVerdict::Accept,
    })
}

/// The `reason` of a refusal body `{"reason": "..."}`, if it has one,
/// trimmed to [`MAX_REASON_BYTES`].
fn reason(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let r = v.get("reason")?.as_str()?.trim();
    if r.is_empty() {
        return None;
    }
    let mut end = r.len().min(MAX_REASON_BYTES);
    while !r.is_char_boundary(end) {
        end -= 1;
    }
    Some(r[..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &[u8]) -> Value {
        serde_json::from_slice(body).unwrap()
    }

    #[test]
    fn requests_have_the_documented_shapes() {
        let r = ConnectRequest {
            transport: "sse",
            remote_addr: Some("10.0.0.7".into()),
            headers: vec![("cookie", "session=abc".into())],
        };
        assert_eq!(
            parse(&connect_request(&r)),
            json!({"type":"connect","transport":"sse","remote_addr":"10.0.0.7","headers":{"cookie":"session=abc"}})
        );
        assert_eq!(
            parse(&subscribe_request(None, "news")),
            json!({"type":"subscribe","user":null,"topic":"news"})
        );
        assert_eq!(
            parse(&publish_request(
                Some("alice"),
                "chat",
                Some("msg"),
                &Data::Json("{\"a\":[1]}".into())
            )),
            json!({"type":"publish","user":"alice","topic":"chat","event":"msg","data":{"a":[1]}})
        );
        assert_eq!(
            parse(&publish_request(
                None,
                "chat",
                None,
                &Data::Text("hi".into())
            ))["data"],
            json!("hi")
        );
    }

    #[test]
    fn connect_answers() {
        let body = br#"{"user":"alice","grants":{"subscribe":["users/{sub}/**"],"publish":["chat"]},"expires_at":1700000000,"extra":1}"#;
        let ConnectVerdict::Granted(g) = connect_answer(200, body).unwrap() else {
            panic!("granted")
        };
        assert_eq!(g.user, "alice");
        assert_eq!(g.expires_at, Some(1_700_000_000));
        let who = g.into_principal();
        assert_eq!(who.subject(), Some("alice"));
        assert_eq!(who.expires_at(), Some(1_700_000_000));
        let t = herald_core::Topic::new("users/alice/inbox").unwrap();
        let Principal::User(grant) = &who else {
            panic!()
        };
        assert!(grant.subscribe[0].matches(&t, who.subject()));
        assert_eq!(
            connect_answer(401, b"").unwrap(),
            ConnectVerdict::Unidentified
        );
        assert_eq!(
            connect_answer(403, br#"{"reason":"banned"}"#).unwrap(),
            ConnectVerdict::Refused(Some("banned".into()))
        );
        assert_eq!(
            connect_answer(403, b"nope").unwrap(),
            ConnectVerdict::Refused(None)
        );
        for (status, body) in [
            (500, &b"{}"[..]),
            (302, b""),
            (200, b"not json"),
            (200, br#"{"grants":{}}"#),
            (200, br#"{"user":""}"#),
            (200, br#"{"user":"a","grants":{"subscribe":["a/**/b"]}}"#),
            (200, br#"{"user":"a","grants":{"subscrbe":["a"]}}"#),
            (200, br#"{"user":"a","expires_at":-1}"#),
        ] {
            assert!(
                connect_answer(status, body).is_err(),
                "{status} {}",
                String::from_utf8_lossy(body)
            );
        }
        let big = format!(r#"{{"user":"a","info":"{}"}}"#, "x".repeat(MAX_INFO_BYTES));
        assert!(connect_answer(200, big.as_bytes()).is_err());
    }

    #[test]
    fn subscribe_and_publish_answers() {
        assert_eq!(
            subscribe_answer(200, b"whatever").unwrap(),
            SubscribeVerdict::Allow
        );
        assert_eq!(
            subscribe_answer(403, br#"{"reason":"members only"}"#).unwrap(),
            SubscribeVerdict::Refuse(Some("members only".into()))
        );
        assert!(subscribe_answer(404, b"").is_err());
        assert!(subscribe_answer(503, b"").is_err());

        assert_eq!(publish_answer(200, b"").unwrap(), PublishVerdict::Accept);
        assert_eq!(publish_answer(200, b"{}").unwrap(), PublishVerdict::Accept);
        assert_eq!(
            publish_answer(200, br#"{"data":{"text":"***"}}"#).unwrap(),
            PublishVerdict::Replace(Data::Json("{\"text\":\"***\"}".into()))
        );
        assert_eq!(
            publish_answer(200, br#"{"data":"plain"}"#).unwrap(),
            PublishVerdict::Replace(Data::Text("plain".into()))
        );
        assert_eq!(
            publish_answer(403, br#"{"reason":"no links"}"#).unwrap(),
            PublishVerdict::Refuse(Some("no links".into()))
        );
        assert!(publish_answer(200, b"[1]").is_err());
        assert!(publish_answer(200, b"{").is_err());
        assert!(publish_answer(500, b"{}").is_err());
    }

    #[test]
    fn reasons_are_bounded_at_a_character_boundary() {
        let long = format!(r#"{{"reason":"{}"}}"#, "é".repeat(MAX_REASON_BYTES));
        let r = reason(long.as_bytes()).unwrap();
        assert!(r.len() <= MAX_REASON_BYTES && r.chars().all(|c| c == 'é'));
        assert_eq!(reason(br#"{"reason":"  "}"#), None);
        assert_eq!(reason(br#"{"reason":5}"#), None);
    }
}
