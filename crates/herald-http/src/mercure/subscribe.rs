//! `GET /.well-known/mercure`: a Mercure subscriber's SSE stream (Mercure
//! specification, "Subscription", "Matcher Types" and "Reconnection, State
//! Reconciliation, and Event Sourcing").
//!
//! - **Selectors**: `topic` (exact topic, `*`, or RFC 6570 URI template, as
//!   earlier drafts and Symfony use it), `match` / `matchExact` (exact),
//!   `match_exact` (exact), `match_urlpattern` / `matchURLPattern` (WHATWG URL Pattern; relative
//!   patterns and topics resolved against the hub's URL). At least one, at
//!   most the hub's topics-per-subscription limit; any other parameter
//!   whose name starts with `match` (in any case) is refused (400), as the
//!   specification reserves that prefix.
//! - **Who**: a token verified with the subscriber key (header, query
//!   `authorization`, cookie); without one, 401 unless
//!   anonymous subscribers are allowed. A private update reaches the
//!   stream only when the token's `subscribe` selectors match one of its
//!   topics; the stream ends at the token's `exp`.
//! - **Resume**: the `Last-Event-ID` header, else `lastEventID`, else
//!   `last_event_id`. `earliest` replays every retained update; an id is
//!   looked up in the [`Index`] of the newest ids (of several updates with
//!   one id, the newest this subscriber would have received), else, while
//!   the index is still reading the history at start, among the newest
//!   [`SCAN_PAGE`] updates (a Herald cursor of the log is read too); found,
//!   the stream replays what follows it; not found, it starts live. The
//!   answer then carries a `Last-Event-ID` header (and the same as
//!   `Mercure-Last-Event-Id`): the requested id when
//!   it was found and the subscriber may see it, else `earliest` ("a
//!   different value indicates that loss may have occurred").
//! - **Frames**: `[retry:]`, `id:` (the update's id, verbatim), `[event:]`,
//!   `data:` lines; `: keepalive` comments when idle; temporary refusals
//!   (limits, engine down, shutdown) as Herald's SSE gives them.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herald_auth::mercure::claims::MercureGrant;
use herald_auth::mercure::selector::{Selector, SelectorKind};
use herald_core::engine::EngineError;
use herald_core::subscription::Start;
use herald_core::{Cursor, Event, Hub, Position, Topic, Transport};

use super::index::Index;
use super::{grant, link_header, log_topic, update, MercureError, Refusal};
use crate::connection::ConnectionHandle;
use crate::error::ApiError;
use crate::transport::sse::{self, Opened, View};
use crate::AppState;

/// How long a lookup waits for the index to reach the log's head.
const INDEX_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The newest updates a `Last-Event-ID` the [`Index`] does not hold is
/// looked for among, while the index is still reading the history.
pub const SCAN_PAGE: usize = 50;

/// The most URL pattern selectors in one subscription: each costs
/// milliseconds of CPU to compile (several regular expressions).
pub const MAX_URL_PATTERNS: usize = 8;

/// The query's pairs, percent-decoded; a name or value that is not UTF-8
/// once decoded is refused (400), never replaced by U+FFFD.
fn strict_pairs(query: Option<&str>) -> Result<Vec<(String, String)>, MercureError> {
    let decode = |b: &str| {
        let plus = b.replace('+', " ");
        percent_encoding::percent_decode_str(&plus)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| MercureError::invalid_request("a query parameter is not UTF-8"))
    };
    let mut out = Vec::new();
    for part in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        out.push((decode(k)?, decode(v)?));
    }
    Ok(out)
}

/// What one subscriber sees: the updates matching one of its selectors,
/// private ones only where its token allows.
pub(crate) struct Reader {
    pub(crate) selectors: Vec<Selector>,
    pub(crate) grant: Option<MercureGrant>,
}

impl Reader {
    /// Whether the subscriber may receive an update of `topics`
    /// (`private` or not), whatever its selectors.
    fn may_see(&self, topics: &[Box<str>], private: bool) -> bool {
        !private
            || self
                .grant
                .as_ref()
                .is_some_and(|g| topics.iter().any(|t| g.may_subscribe(t)))
    }
}

impl View for Reader {
    fn frame(&self, event: &Event) -> Option<Bytes> {
        let u = update(event)?;
        let selected = u
            .topics
            .iter()
            .any(|t| self.selectors.iter().any(|s| s.matches(t)));
        (selected && self.may_see(&u.topics, u.private)).then(|| u.frame.clone())
    }
}

pub(crate) async fn handler(
    State(app): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    conn: Option<axum::Extension<ConnectionHandle>>,
    body: Body,
) -> Response {
    let shutting_down = app.hub.is_shutting_down();
    let retry_ms = app.config.sse_retry_ms;
    let mut r = match open(app, headers, uri, conn.map(|c| c.0), body).await {
        Ok(r) => r,
        Err(Refusal::Mercure(e)) => e.into_response(),
        Err(Refusal::Api(e)) => match e.disconnect(shutting_down) {
            Some(reason) => sse::refusal(reason, sse::retry_after_ms(&e, retry_ms)),
            None => e.into_response(),
        },
    };
    r.headers_mut().insert(header::LINK, link_header());
    r
}

/// The selectors of a subscription request, in order, without repeats.
///
/// Errors (400): none at all, more than `max`, one that does not parse, a
/// parameter in the reserved `match` namespace that names no matcher type.
pub fn selectors(pairs: &[(String, String)], max: usize) -> Result<Vec<Selector>, MercureError> {
    let is_selector =
        |k: &str| k == "topic" || (k.len() >= 5 && k[..5].eq_ignore_ascii_case("match"));
    // Counted before any is compiled.
    let given = pairs.iter().filter(|(k, _)| is_selector(k)).count();
    if given > max {
        return Err(MercureError::invalid_request(format!(
            "at most {max} topic selectors per subscription"
        )));
    }
    let patterns = pairs
        .iter()
        .filter(|(k, _)| k == "matchURLPattern" || k == "match_urlpattern")
        .count();
    if patterns > MAX_URL_PATTERNS {
        return Err(MercureError::invalid_request(format!(
            "at most {MAX_URL_PATTERNS} URL pattern selectors per subscription"
        )));
    }
    let mut out: Vec<Selector> = Vec::new();
    for (k, v) in pairs {
        let parsed = match k.as_str() {
            "topic" => Selector::parse(v),
            "match" | "matchExact" | "match_exact" => Selector::exact(v),
            "match_urlpattern" | "matchURLPattern" => Selector::url_pattern(v),
            other if other.len() >= 5 && other[..5].eq_ignore_ascii_case("match") => {
                return Err(MercureError::invalid_request(format!(
                    "unknown matcher parameter `{other}`: use topic, match, matchExact, \
                     matchURLPattern or match_urlpattern"
                )))
            }
            _ => continue,
        };
        let s = parsed.map_err(|e| MercureError::invalid_request(e.to_string()))?;
        if !out
            .iter()
            .any(|o| o.kind() == s.kind() && o.as_str() == s.as_str())
        {
            out.push(s);
        }
        if out.len() > max {
            return Err(MercureError::invalid_request(format!(
                "at most {max} topic selectors per subscription"
            )));
        }
    }
    if out.is_empty() {
        return Err(MercureError::invalid_request(
            "name at least one topic selector: ?topic=… (or match=…, matchURLPattern=…)",
        ));
    }
    Ok(out)
}

/// The matcher type name of a selector, as subscription events spell it.
pub(crate) fn match_type(kind: SelectorKind) -> &'static str {
    match kind {
        SelectorKind::Wildcard | SelectorKind::Exact => "Exact",
        SelectorKind::UriTemplate => "URITemplate",
        SelectorKind::UrlPattern => "URLPattern",
    }
}

async fn open(
    app: AppState,
    headers: HeaderMap,
    uri: Uri,
    conn: Option<ConnectionHandle>,
    body: Body,
) -> Result<Response, Refusal> {
    if app.hub.is_shutting_down() {
        return Err(ApiError::unavailable("the server is shutting down").into());
    }
    let Some(cfg) = app.config.mercure.clone() else {
        return Err(ApiError::not_found().into());
    };
    crate::transport::refuse_content(&headers, body, app.config.body_timeout).await?;
    let pairs = strict_pairs(uri.query())?;
    let mut from_query = false;
    let grant = match grant(&headers, uri.query(), &cfg.subscriber)? {
        Some((g, source)) => {
            from_query = source == herald_auth::mercure::claims::TokenSource::Query;
            Some(g)
        }
        None if cfg.anonymous => None,
        None => {
            return Err(MercureError::no_token(
                "this hub needs a subscriber token (anonymous subscribers are not allowed)",
            )
            .into())
        }
    };
    // Who first, then the selectors: compiling URL patterns costs CPU that
    // a caller without a token must not be able to spend.
    let selectors = selectors(&pairs, app.hub.config().max_topics_per_subscription)?;
    let requested = last_event_id(&headers, &pairs)?;
    let slot = app.connection_slot(conn.as_ref().map(|c| c.peer.ip()), &headers)?;
    let deadline = grant.as_ref().and_then(|g| g.expires_at).map(deadline_at);
    let reader = Reader { selectors, grant };
    let log = log_topic();
    let (start, answered) = match requested.as_deref() {
        None => (Start::Now, None),
        Some("earliest") => (Start::Earliest, Some("earliest".to_owned())),
        Some(id) => match locate(&app.hub, &app.mercure_index, &reader, &log, id).await? {
            Some(found) => {
                let visible = found
                    .topics
                    .as_ref()
                    .is_some_and(|(topics, private)| reader.may_see(topics, *private));
                let answered = if visible {
                    id.to_owned()
                } else {
                    "earliest".to_owned()
                };
                (Start::After(found.position), Some(answered))
            }
            None => (Start::Now, Some("earliest".to_owned())),
        },
    };
    let mut sub = app
        .hub
        .subscribe_with(conn.as_ref().and_then(|c| c.kill.clone()));
    sub.add_from(log, start).await.map_err(ApiError::from)?;
    let subject = reader.grant.as_ref().and_then(|g| g.subject.clone());
    let client = app.hub.new_client_id();
    if let Some(user) = &subject {
        sub.identify(user, &client, Transport::Sse);
    }
    let held = if cfg.subscriptions {
        super::subscriptions::open(&app, &reader, &client).await
    } else {
        None
    };
    let preamble = Bytes::from(format!(
        "retry: {}\n\n",
        sse::jittered(app.config.sse_retry_ms)
    ));
    let mut r = sse::respond(
        &app,
        Opened {
            sub,
            presence: Vec::new(),
            slot,
            deadline,
            conn,
            preamble,
            view: Some(Arc::new(reader)),
            held,
        },
    );
    if let Some(v) = answered.and_then(|a| HeaderValue::from_str(&a).ok()) {
        // The specification's name, and the one the hub 1.0 sends.
        r.headers_mut().insert("mercure-last-event-id", v.clone());
        r.headers_mut().insert("last-event-id", v);
    }
    if from_query {
        // A token in the URL (spec, "URI Query Parameter"): no shared cache.
        r.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, no-cache"),
        );
    }
    Ok(r)
}

/// The id a subscriber resumes after: `Last-Event-ID`, else `lastEventID`,
/// else `last_event_id` (an empty value counts as absent).
fn last_event_id(
    headers: &HeaderMap,
    pairs: &[(String, String)],
) -> Result<Option<String>, MercureError> {
    if let Some(v) = headers.get("last-event-id") {
        // UTF-8, as EventSource sends a non-ASCII id (WHATWG HTML, 9.2.4).
        let v = std::str::from_utf8(v.as_bytes())
            .map_err(|_| MercureError::invalid_request("Last-Event-ID is not UTF-8"))?;
        if !v.is_empty() {
            return Ok(Some(v.to_owned()));
        }
    }
    for name in ["lastEventID", "last_event_id"] {
        if let Some(v) = crate::transport::param(pairs, name).filter(|v| !v.is_empty()) {
            return Ok(Some(v.to_owned()));
        }
    }
    Ok(None)
}

/// A place found in the log.
pub(crate) struct Found {
    /// Resume after this position.
    pub(crate) position: Position,
    /// The update's topics and privacy (`None` for a Herald cursor).
    pub(crate) topics: Option<(Vec<Box<str>>, bool)>,
}

/// Where the update `id` sits in the log, for `reader`: of the indexed
/// updates with that id (newest first), the newest `reader` would have
/// received, else the newest; else, while the [`Index`] is still reading
/// the history, among the newest [`SCAN_PAGE`] updates; else a Herald
/// cursor naming the log. `None`: none of them.
pub(crate) async fn locate(
    hub: &Hub,
    index: &Index,
    reader: &Reader,
    log: &Topic,
    id: &str,
) -> Result<Option<Found>, EngineError> {
    let mut places = index.get(id);
    if places.is_empty() && index.is_ready() {
        // Published just now, perhaps: wait for the index to reach the head.
        let head = hub.engine().read(log, None, 1).await?;
        if index
            .caught_up_to(Position::new(head.epoch, head.head), INDEX_WAIT)
            .await
        {
            places = index.get(id);
        }
    }
    let mut newest: Option<Found> = None;
    for p in places {
        // That one update, for who may see it (gone from the history: no one).
        let before = Position::new(p.epoch, p.seq.saturating_sub(1));
        let read = hub.engine().read(log, Some(before), 1).await?;
        let event = read.events.first().filter(|e| e.position == p);
        let found = Found {
            position: p,
            topics: event
                .and_then(|e| update(e))
                .map(|u| (u.topics.clone(), u.private)),
        };
        if event.is_some_and(|e| reader.frame(e).is_some()) {
            return Ok(Some(found));
        }
        newest.get_or_insert(found);
    }
    if newest.is_some() {
        return Ok(newest);
    }
    if !index.is_ready() {
        let page = hub.engine().read_back(log, None, SCAN_PAGE).await?;
        for e in page.events.iter().rev() {
            if let Some(u) = update(e).filter(|u| &*u.id == id) {
                return Ok(Some(Found {
                    position: e.position,
                    topics: Some((u.topics.clone(), u.private)),
                }));
            }
        }
    }
    Ok(Cursor::decode(id)
        .ok()
        .and_then(|c| c.get(log))
        .map(|position| Found {
            position,
            topics: None,
        }))
}

/// The instant of `exp` (seconds since the Unix epoch).
fn deadline_at(exp: u64) -> tokio::time::Instant {
    let now = herald_core::event::now_ms() / 1000;
    let left = std::time::Duration::from_secs(exp.saturating_sub(now));
    tokio::time::Instant::now() + left
}
