//! Active subscriptions (Mercure specification, "Active Subscriptions"),
//! with [`MercureConfig::subscriptions`](super::MercureConfig::subscriptions)
//! (`--mercure-subscriptions`).
//!
//! - **Subscription events.** Each selector of a Mercure subscriber is one
//!   subscription. When the stream opens, and again when it ends, a
//!   private update is published to the topic
//!   `/.well-known/mercure/subscriptions/{matchType}/{match}/{subscriber}`
//!   (each variable percent-encoded once, RFC 6570 `{var}` expansion):
//!   a JSON-LD document `{"@context": "https://mercure.rocks/", "id",
//!   "type": "Subscription", "matchType", "match", "topic", "subscriber",
//!   "active", "payload"?}`. `matchType` is `Exact` (for `match`, `topic`
//!   without a template, and `*`), `URLPattern`, or `URITemplate` (for a
//!   `topic` template, a form the current draft no longer names); `topic`
//!   repeats `match` for clients of earlier drafts. `subscriber` is the
//!   token's `sub`, else a `urn:uuid:` made for the connection; `payload`
//!   is the token's payload for that selector. One subscriber on one
//!   selector is one subscription however many streams it opens: active
//!   from the first, ended with the last.
//! - **The API**: `GET /.well-known/mercure/subscriptions`,
//!   `…/subscriptions/{matchType}`, `…/{matchType}/{match}` and
//!   `…/{matchType}/{match}/{subscriber}` answer `application/ld+json`:
//!   collections `{"@context", "id", "type": "Subscriptions",
//!   "lastEventID", "subscriptions": [...]}`, one subscription as its event
//!   document plus `lastEventID` (404 when it is not active). The caller
//!   needs a subscriber token whose `subscribe` selectors match the
//!   request's path (the same relative form as the events' topics): 401
//!   without one, 403 otherwise.
//! - **Every node.** Active subscriptions are kept as presence members of
//!   the topic [`PRESENCE_TOPIC`] (the server gives it a presence policy
//!   when the flag is on), so the API lists those of every node on the
//!   Redis engine, and a dead node's subscriptions leave when its presence
//!   entries expire (without an `active: false` event: nobody is left to
//!   send it).

use std::borrow::Cow;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use herald_core::{Hub, Member, PresenceGuard, Topic, Transport};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Value};

use super::subscribe::{match_type, Reader};
use super::{grant, link_header, log_topic, new_id, update, MercureError, Record};
use crate::error::ApiError;
use crate::AppState;

/// The Herald topic whose presence members are the active subscriptions.
pub const PRESENCE_TOPIC: &str = ".well-known/mercure/subscriptions";

/// RFC 3986 unreserved characters stay; everything else is encoded
/// (RFC 6570, 3.2.2: simple string expansion).
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The subscription events' topic for one selector.
pub fn event_topic(match_type: &str, matcher: &str, subscriber: &str) -> String {
    format!(
        "/.well-known/mercure/subscriptions/{}/{}/{}",
        match_type,
        utf8_percent_encode(matcher, COMPONENT),
        utf8_percent_encode(subscriber, COMPONENT)
    )
}

/// How many streams of this node hold each active subscription (by its
/// id), so that the first announces it and the last ends it, at the cost of
/// a map update per selector (never a read of the whole list).
#[derive(Default)]
pub struct Streams {
    held: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

impl Streams {
    /// Counts one more stream on `id`; true when it is the first.
    fn open(&self, id: &str) -> bool {
        let Ok(mut g) = self.held.lock() else {
            return true;
        };
        let n = g.entry(id.to_owned()).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// Counts one stream less on `id`; true when it was the last.
    fn close(&self, id: &str) -> bool {
        let Ok(mut g) = self.held.lock() else {
            return true;
        };
        match g.get_mut(id) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                g.remove(id);
                true
            }
        }
    }
}

/// What a live stream holds: its presence entries, and the documents to
/// publish again with `active: false` when it ends.
struct Held {
    hub: Hub,
    streams: std::sync::Arc<Streams>,
    ended: Vec<Value>,
    presence: Vec<PresenceGuard>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let docs: Vec<Value> = std::mem::take(&mut self.ended)
            .into_iter()
            .filter(|d| self.streams.close(d["id"].as_str().unwrap_or_default()))
            .collect();
        let presence = std::mem::take(&mut self.presence);
        let hub = self.hub.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                drop(presence);
                publish_docs(&hub, docs).await;
            });
        }
    }
}

/// Announces the subscriptions of a stream that opens (one per selector)
/// and enters them as presence members; the value returned, dropped when
/// the stream ends, announces their end. One subscriber (one `sub`) on one
/// selector is one subscription however many streams it opens on a node
/// (spec: the same `{subscriber}` for requests the hub can correlate; hubs
/// "MAY deduplicate subscriptions"): announced active by the first stream,
/// ended by the last (streams of one subscriber on several nodes announce
/// it once per node).
pub(crate) async fn open(
    app: &AppState,
    reader: &Reader,
    client: &str,
) -> Option<Box<dyn std::any::Any + Send>> {
    let subscriber = reader
        .grant
        .as_ref()
        .and_then(|g| g.subject.clone())
        .unwrap_or_else(new_id);
    let topic = Topic::new(PRESENCE_TOPIC).ok()?;
    let mut docs = Vec::new();
    let mut fresh = Vec::new();
    let mut presence = Vec::new();
    for (i, s) in reader.selectors.iter().enumerate() {
        let kind = match_type(s.kind());
        let id = event_topic(kind, s.as_str(), &subscriber);
        let mut doc = json!({
            "@context": "https://mercure.rocks/",
            "id": id,
            "type": "Subscription",
            "matchType": kind,
            "match": s.as_str(),
            "topic": s.as_str(),
            "subscriber": subscriber,
            "active": true,
        });
        if let Some(p) = reader
            .grant
            .as_ref()
            .and_then(|g| g.payload_for(s.as_str()))
        {
            doc["payload"] = p.clone();
        }
        let member_client = format!("{client}.{i}");
        let member = Member {
            client: member_client.as_str().into(),
            user: subscriber.as_str().into(),
            info: doc.clone(),
            transport: Transport::Sse,
        };
        presence.push(app.hub.enter(&topic, member, Duration::ZERO).await);
        if app.mercure_streams.open(&id) {
            fresh.push(doc.clone());
        }
        docs.push(doc);
    }
    publish_docs(&app.hub, fresh).await;
    for d in &mut docs {
        d["active"] = Value::Bool(false);
    }
    Some(Box::new(Held {
        hub: app.hub.clone(),
        streams: app.mercure_streams.clone(),
        ended: docs,
        presence,
    }))
}

/// Publishes each document as a private update of its own topic (its `id`).
async fn publish_docs(hub: &Hub, docs: Vec<Value>) {
    if docs.is_empty() {
        return;
    }
    let log = log_topic();
    let events = docs
        .iter()
        .map(|d| {
            let data = d.to_string();
            Record {
                id: Cow::Owned(new_id()),
                topics: vec![Cow::Borrowed(d["id"].as_str().unwrap_or_default())],
                private: true,
                kind: None,
                retry: None,
                data: Cow::Owned(data),
            }
            .to_event(&log)
        })
        .collect();
    if let Err(e) = hub.publish_verbatim(events).await {
        tracing::warn!(error = %e, "could not publish Mercure subscription events");
    }
}

pub(crate) async fn handler(State(app): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    let mut r = match list(&app, &headers, &uri).await {
        Ok(body) => {
            let mut r = (StatusCode::OK, body.to_string()).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/ld+json"),
            );
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("must-revalidate"),
            );
            r
        }
        Err(Ok(e)) => e.into_response(),
        Err(Err(e)) => e.into_response(),
    };
    r.headers_mut().insert(header::LINK, link_header());
    r
}

async fn list(
    app: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Value, Result<MercureError, ApiError>> {
    let Some(cfg) = app.config.mercure.clone() else {
        return Err(Err(ApiError::not_found()));
    };
    let path = uri.path();
    let (grant, _) = grant(headers, uri.query(), &cfg.subscriber)
        .map_err(Ok)?
        .ok_or_else(|| {
            Ok(MercureError::no_token(
                "the subscriptions API needs a subscriber token",
            ))
        })?;
    if !grant.may_subscribe(path) {
        return Err(Ok(MercureError::insufficient_scope(format!(
            "the token does not grant subscribing to `{path}`"
        ))));
    }
    let rest = path
        .strip_prefix("/.well-known/mercure/subscriptions")
        .unwrap_or("")
        .trim_start_matches('/');
    let parts: Vec<String> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('/')
            .map(|p| percent_decode_str(p).decode_utf8_lossy().into_owned())
            .collect()
    };
    if parts.len() > 3 {
        return Err(Err(ApiError::not_found()));
    }
    let members = app
        .hub
        .presence(&Topic::new(PRESENCE_TOPIC).map_err(|e| Err(e.into()))?)
        .await
        .map_err(|e| Err(e.into()))?;
    let wanted = |doc: &Value| {
        let fields = ["matchType", "match", "subscriber"];
        parts
            .iter()
            .zip(fields)
            .all(|(p, f)| doc[f].as_str() == Some(p.as_str()))
    };
    let mut subs: Vec<Value> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for m in members {
        let id = m.info["id"].as_str().unwrap_or_default().to_owned();
        if wanted(&m.info) && seen.insert(id) {
            let mut doc = m.info;
            if let Some(o) = doc.as_object_mut() {
                o.remove("@context");
            }
            subs.push(doc);
        }
    }
    subs.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    let last = last_event_id(&app.hub, &grant)
        .await
        .map_err(|e| Err(e.into()))?;
    if parts.len() == 3 {
        let Some(mut one) = subs.into_iter().next() else {
            return Err(Err(ApiError::no_such("no such active subscription")));
        };
        one["@context"] = json!("https://mercure.rocks/");
        one["lastEventID"] = json!(last);
        return Ok(one);
    }
    Ok(json!({
        "@context": "https://mercure.rocks/",
        "id": path,
        "type": "Subscriptions",
        "lastEventID": last,
        "subscriptions": subs,
    }))
}

/// Updates looked at, newest first, for the newest one the caller may see.
const LAST_EVENT_SCAN: usize = 32;

/// The id of the newest update in the log the caller may see (a private
/// update's id is never disclosed to a token that does not grant one of
/// its topics), among the newest [`LAST_EVENT_SCAN`]; else `earliest`.
async fn last_event_id(
    hub: &Hub,
    grant: &herald_auth::mercure::claims::MercureGrant,
) -> Result<String, herald_core::EngineError> {
    let page = hub
        .engine()
        .read_back(&log_topic(), None, LAST_EVENT_SCAN)
        .await?;
    Ok(page
        .events
        .iter()
        .rev()
        .filter_map(|e| update(e))
        .find(|u| !u.private || u.topics.iter().any(|t| grant.may_subscribe(t)))
        .map(|u| u.id.to_string())
        .unwrap_or_else(|| "earliest".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::event_topic;

    #[test]
    fn variables_are_encoded_once() {
        assert_eq!(
            event_topic("URLPattern", "https://example.com/:selector", "urn:uuid:bb3d"),
            "/.well-known/mercure/subscriptions/URLPattern/https%3A%2F%2Fexample.com%2F%3Aselector/urn%3Auuid%3Abb3d"
        );
        assert_eq!(
            event_topic("Exact", "a%20b", "s"),
            "/.well-known/mercure/subscriptions/Exact/a%2520b/s"
        );
    }
}
