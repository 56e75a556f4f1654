//! The Mercure protocol at `/.well-known/mercure` (DESIGN.md, "Mercure
//! compatibility"; the Mercure specification, dunglas/mercure
//! `spec/mercure.md`), on Herald's one core.
//!
//! - [`publish`]: `POST /.well-known/mercure`, form-encoded updates.
//! - [`subscribe`]: `GET /.well-known/mercure`, SSE with topic selectors,
//!   private updates, and resume by the publisher's own ids.
//! - [`index`]: where each update id sits in the log, for resuming.
//! - [`subscriptions`]: the active subscriptions API and subscription
//!   events (with [`MercureConfig::subscriptions`]).
//!
//! # One log, one order
//!
//! Every update is stored as one event of the reserved Herald topic
//! [`LOG_TOPIC`] (its data is the update as JSON, see [`Record`]), so that
//! Mercure subscribers, whatever their selectors, read one total order:
//! a `Last-Event-ID` names a place in it, found by reading the log's
//! retained history backward ([`subscribe`]). The log is history like any
//! topic's: bounded by the same limits and kept by the same engine
//! (durable on the embedded engine, shared by every node on Redis), so
//! several nodes form one Mercure hub.
//!
//! Bridging with Herald's own API:
//! - a Mercure update that is not private is also published to the Herald
//!   topic of each of its topics (data as text, `type` as the event name),
//!   in the same engine call: Herald's SSE, WebSocket and poll subscribers
//!   get it with Herald cursors. Private updates stay in the log.
//! - every Herald publish (any path: HTTP, WebSocket, the Rust API) is
//!   copied into the log by a [`Mirror`](herald_core::Mirror) set on the
//!   hub ([`LogMirror`]), in the same engine call: a public update when
//!   the topic may be read without a credential under Herald's own rules
//!   (no authentication configured, or a `--public` pattern), otherwise a
//!   private one, which only a Mercure token granting `subscribe` on the
//!   topic reads (and always private when the topic's policy has a
//!   subscribe hook, which may refuse anyone). LLM relay topics and
//!   ephemeral topics (history 0: live only) are not copied.
//!
//! Without a Mercure key none of this exists: no route, no mirror, nothing
//! spent on a publish.

pub mod index;
pub mod publish;
pub mod subscribe;
pub mod subscriptions;

use std::borrow::Cow;
use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::{BufMut, Bytes, BytesMut};
use herald_auth::mercure::claims::{MercureAuthError, MercureKeys};
use herald_auth::mercure::is_reserved;
pub use herald_auth::mercure::LOG_TOPIC;
use herald_auth::{Action, Auth, Principal, RELAY_TOPIC_PREFIX};
use herald_core::{Data, Event, Mirror, NewEvent, Topic};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::AppState;

/// The Mercure hub's settings (`--mercure-*` flags of `herald serve`).
///
/// Shape: the key publishers' tokens are verified with, the key
/// subscribers' tokens are verified with (the publisher's unless given),
/// whether subscribers without a token are accepted, and whether the
/// subscriptions API and subscription events are on.
#[derive(Clone, Debug)]
pub struct MercureConfig {
    /// Verifies publishers' tokens (`--mercure-publisher-jwt-key`).
    pub publisher: Arc<MercureKeys>,
    /// Verifies subscribers' tokens (`--mercure-subscriber-jwt-key`).
    pub subscriber: Arc<MercureKeys>,
    /// Subscribers without a token are accepted and get public updates
    /// only (`--mercure-anonymous`); otherwise they get 401.
    pub anonymous: bool,
    /// Subscription events and the subscriptions API
    /// (`--mercure-subscriptions`).
    pub subscriptions: bool,
}

impl MercureConfig {
    /// A hub verifying publishers with `publisher` and subscribers with
    /// `subscriber` (or `publisher` when `None`), refusing anonymous
    /// subscribers, without the subscriptions API.
    pub fn new(publisher: MercureKeys, subscriber: Option<MercureKeys>) -> MercureConfig {
        let publisher = Arc::new(publisher);
        MercureConfig {
            subscriber: subscriber.map_or_else(|| publisher.clone(), Arc::new),
            publisher,
            anonymous: false,
            subscriptions: false,
        }
    }
}

/// The Mercure routes, when `app` has a Mercure configuration; the mirror
/// of Herald publishes is set on the hub here.
pub(crate) fn routes(app: &AppState) -> Router<AppState> {
    let Some(cfg) = app.config.mercure.as_ref() else {
        return Router::new();
    };
    if let Ok(log) = Topic::new(LOG_TOPIC) {
        if app.hub.set_mirror(Arc::new(LogMirror {
            auth: app.config.auth.clone(),
            policies: app.hub.config().policies.clone(),
            log,
        })) {
            // Once per hub, like the mirror (a second router over the same
            // hub shares neither, and resumes through the bounded scan).
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(index::fill(app.hub.clone(), app.mercure_index.clone()));
            }
        }
    }
    let mut r = Router::new().route(
        "/.well-known/mercure",
        get(subscribe::handler).post(publish::handler),
    );
    if cfg.subscriptions {
        r = r
            .route(
                "/.well-known/mercure/subscriptions",
                get(subscriptions::handler),
            )
            .route(
                "/.well-known/mercure/subscriptions/{*rest}",
                get(subscriptions::handler),
            );
    }
    r
}

/// The log topic.
pub(crate) fn log_topic() -> Topic {
    Topic::new(LOG_TOPIC).expect("the log topic's name is valid")
}

/// One update as the log stores it (JSON in the data of a [`LOG_TOPIC`]
/// event): `{"id", "topics": [..], "private"?, "type"?, "retry"?, "data"}`.
#[derive(Serialize, Deserialize, Debug)]
pub struct Record<'a> {
    /// The update's id: the publisher's, verbatim, or `urn:uuid:…`.
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    /// Its topics, the first canonical (at least one).
    #[serde(borrow)]
    pub topics: Vec<Cow<'a, str>>,
    /// Only for subscribers whose token grants one of the topics.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub private: bool,
    /// The SSE `event:` name.
    #[serde(
        rename = "type",
        default,
        skip_serializing_if = "Option::is_none",
        borrow
    )]
    pub kind: Option<Cow<'a, str>>,
    /// The SSE `retry:` value, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<u64>,
    /// The SSE `data:` text.
    #[serde(borrow)]
    pub data: Cow<'a, str>,
}

impl Record<'_> {
    /// The log event holding this record.
    pub fn to_event(&self, log: &Topic) -> NewEvent {
        let json = serde_json::to_string(self).expect("a record serializes");
        NewEvent::new(log.clone(), Data::Json(json.into()))
    }
}

/// A log event read once per event (shared by every subscriber through
/// [`Event::extension`]): who may see it, and its SSE frame.
#[derive(Debug)]
pub(crate) struct Update {
    pub(crate) id: Box<str>,
    pub(crate) topics: Vec<Box<str>>,
    pub(crate) private: bool,
    pub(crate) frame: Bytes,
}

/// The update a log event holds (`None`: not a record, which the log never
/// holds unless written by something else).
pub(crate) fn update(e: &Event) -> Option<&Update> {
    e.extension(|e| {
        let text = e.data.as_sse_text();
        let r: Record<'_> = serde_json::from_str(text).ok()?;
        Some(Update {
            frame: frame(&r),
            id: r.id.into(),
            topics: r.topics.into_iter().map(Into::into).collect(),
            private: r.private,
        })
    })
    .and_then(Option::as_ref)
}

/// `[retry: n\n]id: …\n[event: …\n]data: …\n\n` (WHATWG HTML, "Server-sent
/// events", 9.2.6: each line of `data` its own `data:` field).
fn frame(r: &Record<'_>) -> Bytes {
    let (body, _) = herald_core::wire::sse::encode_event(
        Some(&r.id),
        r.kind.as_deref().filter(|k| !k.is_empty()),
        &r.data,
    );
    match r.retry {
        None => body.freeze(),
        Some(n) => {
            let mut b = BytesMut::with_capacity(body.len() + 28);
            b.put_slice(b"retry: ");
            b.put_slice(n.to_string().as_bytes());
            b.put_u8(b'\n');
            b.put_slice(&body);
            b.freeze()
        }
    }
}

/// A new update id: `urn:uuid:` and a random (version 4) UUID (RFC 9562).
pub(crate) fn new_id() -> String {
    let v = fastrand::u128(..);
    let v = (v & !(0xf << 76)) | (0x4 << 76);
    let v = (v & !(0x3 << 62)) | (0x2 << 62);
    let h = format!("{v:032x}");
    format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Copies every Herald publish into the log (see the module's
/// documentation): public when the topic may be read without a credential,
/// private otherwise; not the LLM relay's topics nor the hub's own.
pub struct LogMirror {
    auth: Arc<Auth>,
    policies: Arc<herald_core::TopicPolicies>,
    log: Topic,
}

impl Mirror for LogMirror {
    fn mirror(&self, event: &NewEvent) -> Option<NewEvent> {
        let topic = event.topic.as_str();
        if topic.starts_with(RELAY_TOPIC_PREFIX) || is_reserved(topic) {
            return None;
        }
        let policy = self.policies.resolve(&event.topic);
        // Live only on Herald's side: not kept in the Mercure log either.
        if policy.is_ephemeral() {
            return None;
        }
        // A subscribe hook may refuse anyone: never public.
        let public = !policy.subscribe_hook
            && (!self.auth.is_enabled()
                || self
                    .auth
                    .authorize(&Principal::Anonymous, Action::Subscribe, &event.topic)
                    .is_ok());
        let id = new_id();
        Some(
            Record {
                id: Cow::Owned(id),
                topics: vec![Cow::Borrowed(topic)],
                private: !public,
                kind: event.name.as_deref().map(Cow::Borrowed),
                retry: None,
                data: Cow::Borrowed(event.data.as_sse_text()),
            }
            .to_event(&self.log),
        )
    }
}

/// Why a Mercure request was refused: in the Mercure specification's
/// words ([`MercureError`]), or as any Herald endpoint answers (limits, an
/// engine that is down, shutdown: [`ApiError`], which an SSE stream turns
/// into a `herald.disconnect` the browser retries after).
pub(crate) enum Refusal {
    Mercure(MercureError),
    Api(ApiError),
}

impl From<MercureError> for Refusal {
    fn from(e: MercureError) -> Refusal {
        Refusal::Mercure(e)
    }
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Refusal {
        Refusal::Api(e)
    }
}

impl From<herald_core::EngineError> for Refusal {
    fn from(e: herald_core::EngineError) -> Refusal {
        Refusal::Api(e.into())
    }
}

/// A refusal as the Mercure specification words it ("Error Responses",
/// RFC 6750, 3): the status, a `WWW-Authenticate: Bearer` challenge for 401
/// and 403 (with `error="…"` unless no token was presented at all), and a
/// short `text/plain` body. Never holds the token.
#[derive(Debug)]
pub struct MercureError {
    status: StatusCode,
    bearer_error: Option<&'static str>,
    message: String,
}

impl MercureError {
    /// 401 with a bare `Bearer` challenge: a token is needed and none came.
    pub fn no_token(message: impl Into<String>) -> MercureError {
        MercureError {
            status: StatusCode::UNAUTHORIZED,
            bearer_error: None,
            message: message.into(),
        }
    }

    /// 403 `insufficient_scope`: the token does not grant this.
    pub fn insufficient_scope(message: impl Into<String>) -> MercureError {
        MercureError {
            status: StatusCode::FORBIDDEN,
            bearer_error: Some("insufficient_scope"),
            message: message.into(),
        }
    }

    /// 400 `invalid_request`: the request is malformed.
    pub fn invalid_request(message: impl Into<String>) -> MercureError {
        MercureError {
            status: StatusCode::BAD_REQUEST,
            bearer_error: Some("invalid_request"),
            message: message.into(),
        }
    }

    /// 403 without a challenge: the topic is the hub's own.
    pub fn reserved(message: impl Into<String>) -> MercureError {
        MercureError {
            status: StatusCode::FORBIDDEN,
            bearer_error: None,
            message: message.into(),
        }
    }

    /// 413: a field or the body is over the limit.
    pub fn too_large(message: impl Into<String>) -> MercureError {
        MercureError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            bearer_error: None,
            message: message.into(),
        }
    }
}

impl From<MercureAuthError> for MercureError {
    fn from(e: MercureAuthError) -> MercureError {
        MercureError {
            status: StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED),
            bearer_error: Some(e.bearer_error()),
            message: e.to_string(),
        }
    }
}

impl IntoResponse for MercureError {
    fn into_response(self) -> Response {
        let mut r = (self.status, format!("{}\n", self.message)).into_response();
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if matches!(
            self.status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ) || self.bearer_error == Some("invalid_request")
        {
            let challenge = match self.bearer_error {
                None if self.status == StatusCode::FORBIDDEN => None,
                None => Some("Bearer".to_owned()),
                Some(e) => Some(format!("Bearer error=\"{e}\"")),
            };
            if let Some(v) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
                h.insert(header::WWW_AUTHENTICATE, v);
            }
        }
        r
    }
}

/// The discovery header (spec, "Discovery"; RFC 8288):
/// `Link: </.well-known/mercure>; rel="mercure"`, a reference relative to
/// the request's own URL (RFC 8288, 3.2), so it holds behind any proxy and
/// on any host name.
pub(crate) fn link_header() -> HeaderValue {
    HeaderValue::from_static("</.well-known/mercure>; rel=\"mercure\"")
}

/// The token a request presents, verified with `keys`; `Ok(None)`: no
/// token. One token is selected, the others ignored (spec, "Presenting the
/// Access Token"): the `Authorization` header, else the `authorization`
/// query parameter, else a cookie: `__Secure-mercure_access_token`, else
/// `mercureAuthorization`, else `mercureAccessToken` (the name the current
/// draft recommends). The RFC 6750 `access_token` query parameter is not
/// read (see [`QUERY_PARAMETER`](herald_auth::mercure::claims::QUERY_PARAMETER)).
pub(crate) fn grant(
    headers: &HeaderMap,
    query: Option<&str>,
    keys: &MercureKeys,
) -> Result<
    Option<(
        herald_auth::mercure::claims::MercureGrant,
        herald_auth::mercure::claims::TokenSource,
    )>,
    MercureError,
> {
    use herald_auth::mercure::claims::{token_from_request, COOKIE_NAME, LEGACY_COOKIE_NAME};
    let cookies: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    let has = |name: &str| {
        cookies
            .iter()
            .flat_map(|c| c.split(';'))
            .any(|p| p.trim_start().starts_with(&format!("{name}=")))
    };
    // `mercureAccessToken` is read as the legacy name, only when neither of
    // the other two is sent (it comes last).
    let renamed: Vec<String> = if has(COOKIE_NAME) || has(LEGACY_COOKIE_NAME) {
        Vec::new()
    } else {
        cookies
            .iter()
            .map(|c| {
                c.split(';')
                    .filter_map(|p| {
                        let p = p.trim_start();
                        p.strip_prefix("mercureAccessToken=")
                            .map(|v| format!("{LEGACY_COOKIE_NAME}={v}"))
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .filter(|c| !c.is_empty())
            .collect()
    };
    let fields = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .chain(renamed.iter().map(|c| ("cookie", c.as_bytes())));
    match token_from_request(fields, query.unwrap_or(""))? {
        None => Ok(None),
        Some((token, source)) => Ok(Some((keys.verify(&token)?, source))),
    }
}
