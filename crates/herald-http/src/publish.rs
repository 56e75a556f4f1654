//! `POST /v1/publish`, and the request parsing that WebSocket publishes share.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_auth::Action;
use herald_core::event::TraceParent;
use herald_core::{Data, NewEvent, Topic};
use http_body_util::BodyExt;
use serde::Deserialize;

use crate::auth::authenticate;
use crate::error::ApiError;
use crate::AppState;

/// One event as a publisher sends it.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct PublishItem {
    /// The topic name (validated by [`PublishItem::into_new_event`]).
    pub topic: String,
    /// The event name (validated by the hub).
    #[serde(default)]
    pub event: Option<String>,
    /// The data, any JSON value.
    pub data: serde_json::Value,
    /// A client id that makes retries idempotent.
    #[serde(default)]
    pub id: Option<String>,
}

impl PublishItem {
    /// Validates the topic and makes the event. Event name, size and id are
    /// checked by the hub, on every transport alike.
    pub fn into_new_event(self) -> Result<NewEvent, ApiError> {
        let topic = Topic::new(&self.topic)?;
        Ok(NewEvent {
            topic,
            name: self.event.map(Into::into),
            data: Data::from_json(&self.data),
            idempotency_key: self.id.map(Into::into),
            trace: None,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    events: Vec<PublishItem>,
}

/// Parses a publish body: one event, or `{"events": [...]}`. Returns the
/// events and whether it was a batch.
pub fn parse_publish_body(body: &[u8]) -> Result<(Vec<NewEvent>, bool), ApiError> {
    // The common case in one pass: a single event with known fields, each
    // once. Anything else (a batch, an error, a repeated field, which the
    // generic path below accepts with its last value) takes the generic
    // path, whose answers are the same as ever.
    if let Ok(item) = serde_json::from_slice::<PublishItem>(body) {
        return Ok((vec![item.into_new_event()?], false));
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("body is not valid JSON: {e}"))
    })?;
    let is_batch = value.as_object().is_some_and(|o| o.contains_key("events"));
    let items = if is_batch {
        serde_json::from_value::<Batch>(value)
            .map_err(|e| ApiError::bad_request("invalid_request", e.to_string()))?
            .events
    } else {
        vec![serde_json::from_value::<PublishItem>(value)
            .map_err(|e| ApiError::bad_request("invalid_request", e.to_string()))?]
    };
    let events = items
        .into_iter()
        .map(PublishItem::into_new_event)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((events, is_batch))
}

/// Whether a `content-type` names JSON (`application/json`, with or without parameters).
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            let m = m.trim();
            m.eq_ignore_ascii_case("application/json")
                || (m.len() > 17
                    && m[..12].eq_ignore_ascii_case("application/")
                    && m.ends_with("+json"))
        })
}

/// How long [`read_limited`] waits for a whole body (the default of
/// [`crate::HttpConfig::body_timeout`]).
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads a body of at most `max` bytes within [`BODY_TIMEOUT`]; see
/// [`read_limited_within`].
pub async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    max: usize,
) -> Result<bytes::Bytes, ApiError> {
    read_limited_within(headers, body, max, BODY_TIMEOUT).await
}

/// The most bytes of request bodies (publishes, LLM requests, server API
/// calls) this process receives at once: 64 MiB. Beyond it a request is
/// answered 503 with `Retry-After` before its body is read.
pub const MAX_BODY_BYTES_IN_FLIGHT: usize = 64 * 1024 * 1024;

/// The budget's unit, in bytes.
const BODY_BUDGET_UNIT: usize = 1024;

fn body_budget() -> &'static tokio::sync::Semaphore {
    static BUDGET: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    BUDGET.get_or_init(|| tokio::sync::Semaphore::new(MAX_BODY_BYTES_IN_FLIGHT / BODY_BUDGET_UNIT))
}

/// Reads a body of at most `max` bytes, all of it within `timeout` (counted
/// from this call). Errors: 413 `too_large` above `max` (at once when
/// `Content-Length` says so), 408 `request_timeout` when the body is not
/// complete in time (a slow or stalled sender), 400 `invalid_body` when the
/// connection fails mid-body. On an error the body is dropped unread, and
/// the HTTP/1.1 connection is closed after the answer (its remaining bytes
/// are not drained). 503 `server_full` when the bodies being received
/// already hold [`MAX_BODY_BYTES_IN_FLIGHT`].
pub async fn read_limited_within(
    headers: &HeaderMap,
    body: Body,
    max: usize,
    timeout: std::time::Duration,
) -> Result<bytes::Bytes, ApiError> {
    let too_large = || ApiError::too_large(format!("the body exceeds {max} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared {
        if len > max as u64 {
            return Err(too_large());
        }
    }
    // The bytes every request body being read may hold together are
    // bounded: a body takes its declared length (else the most it may be)
    // from the budget while it is read.
    let wanted = declared.map_or(max, |l| l as usize).min(max);
    let permits = wanted.div_ceil(BODY_BUDGET_UNIT).max(1) as u32;
    let _held = body_budget().try_acquire_many(permits).map_err(|_| {
        ApiError::server_full(
            "too many request bodies are being received at once; retry in a moment",
        )
    })?;
    let read = http_body_util::Limited::new(body, max).collect();
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::bad_request(
            "invalid_body",
            format!("could not read the body: {e}"),
        )),
        Err(_) => Err(ApiError::request_timeout(format!(
            "the body did not arrive within {} s",
            timeout.as_secs_f64()
        ))),
    }
}

pub(crate) async fn publish(
    State(app): State<AppState>,
    req: axum::extract::Request,
) -> Result<Response, ApiError> {
    // The request taken apart rather than extracted piece by piece: the
    // header map and URI extractors would copy them.
    let (parts, body) = req.into_parts();
    let headers = &parts.headers;
    let conn = parts
        .extensions
        .get::<crate::connection::ConnectionHandle>();
    // Who first: an unauthenticated caller learns nothing about the body.
    let pairs = crate::transport::query_pairs(parts.uri.query());
    let (who, _) = authenticate(&app, headers, &pairs).await?;
    // No credential may publish nothing on a server with authentication:
    // refused before a byte of the body is read.
    if who == herald_auth::Principal::Anonymous {
        return Err(ApiError::unauthorized(
            "a credential is required to publish",
        ));
    }
    // Behind a trusted proxy, the address its headers name.
    let client = conn.map(|c| app.config.client_addr(c.peer.ip(), headers));
    let caller = Caller::Http(herald_auth::quota_key(&who, client));
    if !is_json(headers) {
        return Err(ApiError::unsupported_media_type(
            "send the publish body as application/json",
        ));
    }
    let bytes = read_limited_within(
        headers,
        body,
        app.config.max_body_bytes,
        app.config.body_timeout,
    )
    .await?;
    let (mut events, is_batch) = parse_publish_body(&bytes)?;
    // The publisher's trace context: the parent of the `publish` span.
    let trace = traceparent(headers);
    for e in &mut events {
        e.trace = trace;
    }
    let published = publish_as(&app, &who, &caller, events).await?;
    Ok(published_answer(&published, is_batch))
}

/// The answer to a publish: `{"id": ID}`, or for a batch `{"ids": [ID, ...]}`
/// (DESIGN.md, "HTTP surface"), serialized straight from the ids.
fn published_answer(published: &[std::sync::Arc<herald_core::Event>], is_batch: bool) -> Response {
    #[derive(serde::Serialize)]
    struct One {
        id: Option<String>,
    }
    #[derive(serde::Serialize)]
    struct Many {
        ids: Vec<String>,
    }
    if is_batch {
        Json(Many {
            ids: published.iter().map(|e| e.id()).collect(),
        })
        .into_response()
    } else {
        Json(One {
            id: published.first().map(|e| e.id()),
        })
        .into_response()
    }
}

/// The request's W3C trace context: its one `traceparent` header, when it
/// is well formed ([`TraceParent::parse`]); `None` for none, several, or a
/// malformed one (ignored, as W3C Trace Context asks: the publish then
/// starts a trace of its own).
pub fn traceparent(headers: &HeaderMap) -> Option<TraceParent> {
    let mut values = headers.get_all("traceparent").iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    TraceParent::parse(value.to_str().ok()?)
}

/// Who a publish comes from, for the topic policies' `publish_rate`.
pub(crate) enum Caller {
    /// A WebSocket connection (its subscription's id): the rate counts per
    /// connection.
    Connection(u64),
    /// An HTTP request: the rate counts per caller, named as
    /// [`herald_auth::quota_key`] names it (the token's `sub`, else the
    /// client address; behind a trusted proxy the one its headers name), so
    /// that opening new requests does not reset it.
    Http(String),
}

impl Caller {
    fn key(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Caller::Connection(id) => format!("ws:{id}").into(),
            Caller::Http(key) => key.as_str().into(),
        }
    }
}

/// The one path of every publish, whatever carried it (`POST /v1/publish`,
/// a WebSocket `publish`): each event is authorized for `who` with
/// [`Action::Publish`] and checked against its topic's policy
/// ([`herald_core::policy`]), then the batch is published (validated,
/// stored and fanned out by the hub). Nothing is published unless every
/// event is allowed.
///
/// The policies govern clients: a topic with `client_publish = false`
/// refuses every credential but the publisher key (and a server without
/// authentication, where every caller is trusted alike), and a topic's
/// `publish_rate` counts the publishes of `caller`; the publisher key is
/// never counted.
///
/// Events to topics whose policy has `publish_hook = true` are then put to
/// the application's publish hook (a client's only: never the publisher
/// key's, nor on a server without authentication), all before any is
/// published: it may refuse one, which refuses the batch, or replace an
/// event's data, which is then what is stored and delivered.
///
/// Errors: 401/403 from authorization, 403 `forbidden` naming the policy,
/// 429 `rate_limited` with `Retry-After: 1`, 403 `hook_refused` with the
/// hook's reason, 503 `hook_unavailable`, then the hub's validation and
/// engine errors (400, 413, 503).
pub(crate) async fn publish_as(
    app: &AppState,
    who: &herald_auth::Principal,
    caller: &Caller,
    mut events: Vec<NewEvent>,
) -> Result<Vec<std::sync::Arc<herald_core::Event>>, ApiError> {
    use herald_auth::Principal;
    for e in &events {
        app.config.auth.authorize(who, Action::Publish, &e.topic)?;
    }
    let policies = &app.hub.config().policies;
    if !policies.is_empty() && *who != Principal::Publisher {
        if !matches!(who, Principal::Open) {
            if let Some(e) = events
                .iter()
                .find(|e| !policies.resolve(&e.topic).allows_client_publish())
            {
                let refusal = herald_core::metrics::PolicyRefusal::ClientPublish;
                policies.count_refusal(&e.topic, refusal);
                return Err(ApiError::forbidden(
                    "forbidden",
                    format!(
                        "clients may not publish to {}: its topic policy sets client_publish = false \
                         (only the publisher key may)",
                        e.topic
                    ),
                ));
            }
        }
        let topics: Vec<&herald_core::Topic> = events.iter().map(|e| &e.topic).collect();
        policies
            .admit_publish(&caller.key(), &topics)
            .map_err(|r| {
                ApiError::too_many_requests("rate_limited", r.to_string()).retry_after(1)
            })?;
        if let Some(hooks) = &app.config.hooks {
            if !matches!(who, Principal::Open) {
                publish_hooks(app, hooks, who, &mut events).await?;
            }
        }
    }
    Ok(app.hub.publish_batch(events).await?)
}

/// Asks the publish hook about every event of `events` whose topic's
/// policy has `publish_hook = true` (at once, each within the hook
/// timeout), and puts replaced data in place.
///
/// Errors: 403 `hook_refused` for the first refused event, 503
/// `hook_unavailable` when an answer could not be had.
async fn publish_hooks(
    app: &AppState,
    hooks: &herald_hooks::Hooks,
    who: &herald_auth::Principal,
    events: &mut [NewEvent],
) -> Result<(), ApiError> {
    use herald_hooks::{Hook, PublishVerdict};
    let asked: Vec<&mut NewEvent> = events
        .iter_mut()
        .filter(|e| app.hub.policy(&e.topic).publish_hook)
        .collect();
    if asked.is_empty() {
        return Ok(());
    }
    let verdicts = futures_util::future::join_all(
        asked
            .iter()
            .map(|e| hooks.publish(who.subject(), &e.topic, e.name.as_deref(), &e.data)),
    )
    .await;
    for (event, verdict) in asked.into_iter().zip(verdicts) {
        match verdict? {
            PublishVerdict::Accept => {}
            PublishVerdict::Replace(data) => event.data = data,
            PublishVerdict::Refuse(reason) => {
                let refusal = herald_core::metrics::PolicyRefusal::PublishHook;
                let policies = &app.hub.config().policies;
                policies.count_refusal(&event.topic, refusal);
                return Err(ApiError::hook_refused(Hook::Publish, reason));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn parses_single_and_batch() {
        let (e, batch) =
            parse_publish_body(br#"{"topic":"a","data":{"x":1},"event":"n","id":"k"}"#).unwrap();
        assert!(!batch);
        assert_eq!(e[0].topic.as_str(), "a");
        assert_eq!(e[0].data, Data::Json("{\"x\":1}".into()));
        let (e, batch) = parse_publish_body(
            br#"{"events":[{"topic":"a","data":"x"},{"topic":"b","data":null}]}"#,
        )
        .unwrap();
        assert!(batch);
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].data, Data::Json("null".into()));
    }

    #[test]
    fn refuses_bad_bodies() {
        for b in [
            &b"not json"[..],
            br#"{"data":1}"#,
            br#"{"topic":"a"}"#,
            br#"{"topic":"","data":1}"#,
            br#"{"topic":"a","data":1,"extra":2}"#,
            br#"{"topic":5,"data":1}"#,
            br#"[1,2]"#,
            br#"{"events":{"topic":"a"}}"#,
        ] {
            let err = parse_publish_body(b).unwrap_err();
            assert_eq!(
                err.status,
                StatusCode::BAD_REQUEST,
                "{}",
                String::from_utf8_lossy(b)
            );
        }
    }

    #[test]
    fn reads_one_traceparent_header() {
        const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut h = HeaderMap::new();
        assert_eq!(traceparent(&h), None);
        h.insert("traceparent", TP.parse().unwrap());
        assert_eq!(traceparent(&h).map(|t| t.to_string()).as_deref(), Some(TP));
        h.append("traceparent", TP.parse().unwrap());
        assert_eq!(traceparent(&h), None, "two headers");
        h.insert("traceparent", "00-nonsense".parse().unwrap());
        assert_eq!(traceparent(&h), None);
    }

    #[test]
    fn content_types() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        for (v, ok) in [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("Application/JSON", true),
            ("application/cloudevents+json", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
        ] {
            h.insert(header::CONTENT_TYPE, v.parse().unwrap());
            assert_eq!(is_json(&h), ok, "{v}");
        }
    }
}
