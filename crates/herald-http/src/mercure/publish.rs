//! `POST /.well-known/mercure`: a Mercure publish (Mercure specification,
//! "Publication" and "Authorization").
//!
//! The body is `application/x-www-form-urlencoded` (at most the server's
//! `--max-body`, else 413): `topic` (repeatable, at least one; the first
//! is the canonical topic, the others alternates, as in earlier drafts),
//! `data` (optional; at most the hub's largest event, else 413), `private`
//! (present = private, whatever its value), `id` (used verbatim: not
//! starting with `#`, without CR, LF or NUL, else 400; a `urn:uuid:` is
//! made when absent), `type` (no CR or LF), `retry` (ASCII digits).
//! Unknown fields are ignored, as the hub does.
//!
//! The publisher presents a token verified with the publisher key
//! (header, query, cookie; a cookie only from an allowed `Origin`, against
//! cross-site requests) whose `publish` selectors match every topic of the
//! update: none is 401 with a bare `Bearer` challenge, an invalid one 401
//! `invalid_token`, one that does not grant 403 `insufficient_scope`. A
//! topic in the hub's reserved namespace (`/.well-known/mercure…`) is 403.
//!
//! The answer is `200 text/plain` holding the update's id, once the engine
//! holds it (durably, on a durable engine). An update that is not private
//! is published to the Herald topic of each of its topics in the same
//! engine call (see the [module](super) documentation).

use std::borrow::Cow;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use herald_auth::mercure::claims::TokenSource;
use herald_auth::mercure::is_reserved;
use herald_auth::{Action, Principal};
use herald_core::hub::validate_event_name;
use herald_core::{Data, NewEvent, Topic};

use super::{grant, link_header, log_topic, new_id, MercureError, Record, Refusal};
use crate::error::ApiError;
use crate::AppState;

/// Longest `id`, `type` or `retry` field, in bytes.
pub const MAX_FIELD_BYTES: usize = 1024;

pub(crate) async fn handler(
    State(app): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Response {
    let mut r = match publish(app, &headers, &uri, body).await {
        Ok(id) => {
            let mut r = (StatusCode::OK, id).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            r
        }
        Err(Refusal::Mercure(e)) => e.into_response(),
        Err(Refusal::Api(e)) => e.into_response(),
    };
    r.headers_mut().insert(header::LINK, link_header());
    r
}

/// An update as the form gives it, checked.
#[derive(Debug, Default)]
pub struct Form {
    /// The topics, in order, without repeats.
    pub topics: Vec<String>,
    /// `data`, or empty.
    pub data: String,
    /// Whether `private` was present.
    pub private: bool,
    /// `id`, when given.
    pub id: Option<String>,
    /// `type`, when given and not empty.
    pub kind: Option<String>,
    /// `retry`, when given.
    pub retry: Option<u64>,
}

/// Reads a publish form. Errors (400): bytes that are not UTF-8, no
/// `topic`, a topic Herald refuses (empty, over 1 KiB, a control
/// character), an `id` starting with `#` or holding CR, LF or NUL, a `type`
/// holding CR or LF, a `retry` that is not ASCII digits, a field given
/// twice where one is expected; 413: an `id`, `type` or `retry` over
/// [`MAX_FIELD_BYTES`].
pub fn parse_form(body: &[u8]) -> Result<Form, MercureError> {
    let mut f = Form::default();
    let mut seen = (false, false, false, false);
    for (k, v) in decode_form(body)? {
        let (k, v) = (Cow::<str>::Owned(k), Cow::<str>::Owned(v));
        let once = |seen: &mut bool| {
            if std::mem::replace(seen, true) {
                Err(MercureError::invalid_request(format!(
                    "field `{k}` is given twice"
                )))
            } else {
                Ok(())
            }
        };
        let short = |v: &Cow<'_, str>| {
            if v.len() > MAX_FIELD_BYTES {
                Err(MercureError::too_large(format!(
                    "field `{k}` is over {MAX_FIELD_BYTES} bytes"
                )))
            } else {
                Ok(())
            }
        };
        match &*k {
            "topic" => {
                Topic::new(&v).map_err(|e| MercureError::invalid_request(e.to_string()))?;
                if !f.topics.iter().any(|t| *t == v) {
                    f.topics.push(v.into_owned());
                }
            }
            "data" => {
                once(&mut seen.0)?;
                f.data = v.into_owned();
            }
            "private" => f.private = true,
            "id" => {
                once(&mut seen.1)?;
                short(&v)?;
                if v.starts_with('#') || v.contains(['\r', '\n', '\0']) {
                    return Err(MercureError::invalid_request(
                        "an id may not start with `#` nor hold CR, LF or NUL",
                    ));
                }
                // A `Last-Event-ID` header loses leading and trailing
                // spaces and tabs (RFC 9110, 5.5), so such an id could not
                // come back as sent (and ` earliest` would come back as
                // `earliest`, the reserved value).
                if v.starts_with([' ', '\t']) || v.ends_with([' ', '\t']) {
                    return Err(MercureError::invalid_request(
                        "an id may not start or end with a space or a tab",
                    ));
                }
                if v == "earliest" {
                    return Err(MercureError::invalid_request(
                        "`earliest` is reserved (it asks for every retained update)",
                    ));
                }
                if !v.is_empty() {
                    f.id = Some(v.into_owned());
                }
            }
            "type" => {
                once(&mut seen.2)?;
                short(&v)?;
                if v.contains(['\r', '\n']) {
                    return Err(MercureError::invalid_request(
                        "a type may not hold CR or LF",
                    ));
                }
                if !v.is_empty() {
                    f.kind = Some(v.into_owned());
                }
            }
            "retry" => {
                once(&mut seen.3)?;
                short(&v)?;
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(MercureError::invalid_request(
                        "retry must be ASCII digits (milliseconds)",
                    ));
                }
                f.retry = Some(v.parse().map_err(|_| {
                    MercureError::invalid_request("retry is too large (milliseconds, a u64)")
                })?);
            }
            _ => {}
        }
    }
    if f.topics.is_empty() {
        return Err(MercureError::invalid_request(
            "the update needs a `topic` field",
        ));
    }
    Ok(f)
}

/// The pairs of an `application/x-www-form-urlencoded` body (WHATWG URL,
/// "application/x-www-form-urlencoded parsing"), refusing (400) names and
/// values that are not UTF-8 once percent-decoded, where the lenient parser
/// would put U+FFFD in their place.
fn decode_form(body: &[u8]) -> Result<Vec<(String, String)>, MercureError> {
    let decode = |b: &[u8]| {
        let plus: Vec<u8> = b
            .iter()
            .map(|&c| if c == b'+' { b' ' } else { c })
            .collect();
        let bytes: Vec<u8> = percent_encoding::percent_decode(&plus).collect();
        String::from_utf8(bytes)
            .map_err(|_| MercureError::invalid_request("a form field is not UTF-8"))
    };
    let mut out = Vec::new();
    for part in body.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let (k, v) = match part.iter().position(|&b| b == b'=') {
            Some(i) => (&part[..i], &part[i + 1..]),
            None => (part, &b""[..]),
        };
        out.push((decode(k)?, decode(v)?));
    }
    Ok(out)
}

async fn publish(
    app: AppState,
    headers: &HeaderMap,
    uri: &Uri,
    body: Body,
) -> Result<String, Refusal> {
    if app.hub.is_shutting_down() {
        return Err(ApiError::unavailable("the server is shutting down").into());
    }
    let Some(cfg) = app.config.mercure.clone() else {
        return Err(ApiError::not_found().into());
    };
    // Who first: an anonymous or refused publisher's body is never read.
    let (grant, source) = grant(headers, uri.query(), &cfg.publisher)?
        .ok_or_else(|| MercureError::no_token("publishing needs a publisher token"))?;
    if let TokenSource::Cookie { .. } = source {
        check_origin(&app, headers)?;
    }
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    if form_type.as_deref() != Some("application/x-www-form-urlencoded") {
        return Err(MercureError::invalid_request(
            "the body must be application/x-www-form-urlencoded",
        )
        .into());
    }
    let body = crate::publish::read_limited_within(
        headers,
        body,
        app.config.max_body_bytes,
        app.config.body_timeout,
    )
    .await?;
    let form = parse_form(&body)?;
    // Each topic is bridged to Herald's topic of that name: at most as many
    // copies as a subscription has topics, and their bytes bounded.
    let max_topics = app
        .hub
        .config()
        .max_topics_per_subscription
        .min(app.hub.config().max_batch.saturating_sub(1))
        .max(1);
    if form.topics.len() > max_topics {
        return Err(MercureError::invalid_request(format!(
            "at most {max_topics} topics per update"
        ))
        .into());
    }
    if form.data.len() > app.hub.config().max_data_bytes {
        return Err(MercureError::too_large(format!(
            "data is over {} bytes",
            app.hub.config().max_data_bytes
        ))
        .into());
    }
    let copies_bytes = form.data.len().saturating_mul(form.topics.len() + 1);
    let max_copies_bytes = app.config.max_body_bytes.saturating_mul(4);
    if copies_bytes > max_copies_bytes {
        return Err(MercureError::too_large(format!(
            "data × (topics + 1) is over {max_copies_bytes} bytes"
        ))
        .into());
    }
    for t in &form.topics {
        // Topics Herald keeps for itself (LLM streams, the admin stats, the
        // hub's namespace): no one publishes there, the publisher key
        // included, so neither does a Mercure publisher.
        let herald_topic = Topic::new(t).map_err(ApiError::from)?;
        if is_reserved(t)
            || app
                .config
                .auth
                .authorize(&Principal::Publisher, Action::Publish, &herald_topic)
                .is_err()
        {
            return Err(MercureError::reserved(format!(
                "`{t}` is reserved: the hub's namespace /.well-known/mercure, or a topic only Herald itself writes (LLM streams, admin stats)"
            ))
            .into());
        }
        if !grant.may_publish(t) {
            return Err(MercureError::insufficient_scope(format!(
                "the token does not grant publishing to `{t}`"
            ))
            .into());
        }
    }
    let id = form.id.clone().unwrap_or_else(new_id);
    let log = log_topic();
    let record = Record {
        id: Cow::Borrowed(&id),
        topics: form
            .topics
            .iter()
            .map(|t| Cow::Borrowed(t.as_str()))
            .collect(),
        private: form.private,
        kind: form.kind.as_deref().map(Cow::Borrowed),
        retry: form.retry,
        data: Cow::Borrowed(&form.data),
    };
    let mut events = vec![record.to_event(&log)];
    if !form.private {
        let name = form
            .kind
            .as_deref()
            .filter(|k| validate_event_name(k).is_ok());
        for t in &form.topics {
            let topic = Topic::new(t).map_err(ApiError::from)?;
            let mut e = NewEvent::new(topic, Data::Text(form.data.as_str().into()));
            if let Some(n) = name {
                e = e.named(n);
            }
            events.push(e);
        }
    }
    app.hub
        .publish_verbatim(events)
        .await
        .map_err(ApiError::from)?;
    Ok(id)
}

/// A cookie-authorized publish must come from an allowed origin
/// (`--cors-origin`): its `Origin`, else the origin of its `Referer`
/// (Mercure specification, "Cookie"; the hub's CSRF rule). Error: 400
/// `invalid_request`.
fn check_origin(app: &AppState, headers: &HeaderMap) -> Result<(), MercureError> {
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            let r = headers.get(header::REFERER)?.to_str().ok()?;
            let u = url_origin(r)?;
            Some(u)
        });
    // As the CORS layer allows credentials: listed origins only, compared
    // in the form browsers send them; `*` never allows a cookie publish.
    let allowed = origin
        .as_deref()
        .and_then(crate::layers::normalize_origin)
        .is_some_and(|o| {
            app.config
                .cors_origins
                .iter()
                .filter_map(|a| crate::layers::normalize_origin(a))
                .any(|a| a == o)
        });
    if allowed {
        Ok(())
    } else {
        Err(MercureError::invalid_request(
            "a publish authorized by a cookie must come from an origin given with --cors-origin",
        ))
    }
}

/// `scheme://host[:port]` of an absolute URL.
fn url_origin(u: &str) -> Option<String> {
    let (scheme, rest) = u.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    (!authority.is_empty()).then(|| format!("{scheme}://{authority}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_is_read_as_the_specification_says() {
        let f = parse_form(b"topic=https%3A%2F%2Fex.com%2Fa&topic=b&topic=b&data=x%0Ay&private=&id=%5B%22q%22%5D&type=t&retry=10")
            .unwrap();
        assert_eq!(f.topics, ["https://ex.com/a", "b"]);
        assert_eq!(f.data, "x\ny");
        assert!(f.private);
        assert_eq!(f.id.as_deref(), Some("[\"q\"]"));
        assert_eq!(f.kind.as_deref(), Some("t"));
        assert_eq!(f.retry, Some(10));
        let f = parse_form(b"topic=a").unwrap();
        assert!(!f.private && f.id.is_none() && f.data.is_empty());
    }

    #[test]
    fn bad_fields_are_refused() {
        for body in [
            &b"data=x"[..],
            b"topic=a&id=%23x",
            b"topic=a&id=a%0Ab",
            b"topic=a&id=a%00b",
            b"topic=a&id=earliest",
            b"topic=a&id=%20earliest",
            b"topic=a&id=earliest%09",
            b"topic=a&type=a%0Db",
            b"topic=a&retry=1x",
            b"topic=a&retry=",
            b"topic=a&data=1&data=2",
            b"topic=a%01",
            b"topic=a&data=%FF",
            b"topic=\xff",
        ] {
            assert!(
                parse_form(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn origins_of_referers() {
        assert_eq!(
            url_origin("https://a.example:8443/x?y").as_deref(),
            Some("https://a.example:8443")
        );
        assert_eq!(url_origin("nonsense"), None);
    }
}
