//! The three transports. Each reads events through a
//! [`herald_core::Subscription`] (the one resume path) and writes the shared
//! encodings of [`herald_core::wire`]; none of them knows which engine runs.

pub mod poll;
pub mod sse;
pub mod ws;

use herald_core::subscription::Start;
use herald_core::{Cursor, Subscription, Topic};

use crate::error::ApiError;

/// The most long-lived `GET`s over HTTP/2 whose HEADERS did not end their
/// stream that wait at once for the stream's end, to learn it has no content:
/// mainstream clients end a `GET`'s stream with its HEADERS, so this is
/// room for unusual ones, not a pool an attacker can grow.
pub const MAX_GETS_AWAITING_END: usize = 1024;

/// Refuses content on a long-lived `GET` (an event stream, a long poll, a
/// Mercure subscription): 400 `invalid_request`. Content in a `GET` has no
/// meaning here (RFC 9110, section 9.3.1), and a request whose body is
/// still arriving while it is held would keep the server from reading its
/// connection, so a client that left would hold its stream, its poll and
/// its presence until the next keepalive or the poll's timeout.
///
/// - `Transfer-Encoding`, or a `Content-Length` other than zero (`0`,
///   `00`, ...), is refused at once, before a byte of content is read.
/// - Over HTTP/2 a request may carry DATA frames without a
///   `content-length` (RFC 9113, section 8.1): when its HEADERS did not end
///   the stream, the request is answered once the stream ends, and refused
///   at the first byte of content; empty DATA frames are no content. A
///   stream not ended within `within` (the body timeout) is answered 408
///   `request_timeout`; a stream reset before it ended, 400 `invalid_body`.
///   The refusal resets the stream, so no more content is taken. At most
///   [`MAX_GETS_AWAITING_END`] such requests wait at once in the process;
///   beyond, 503 `server_full` (with `Retry-After`).
pub(crate) async fn refuse_content(
    headers: &axum::http::HeaderMap,
    mut body: axum::body::Body,
    within: std::time::Duration,
) -> Result<(), ApiError> {
    use axum::http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
    use http_body::Body as _;
    use http_body_util::BodyExt;
    let refused = || ApiError::bad_request("invalid_request", "this GET takes no request body");
    let is_zero = |v: &[u8]| !v.is_empty() && v.iter().all(|b| *b == b'0');
    let has_content = headers.contains_key(TRANSFER_ENCODING)
        || headers
            .get_all(CONTENT_LENGTH)
            .iter()
            .any(|v| !is_zero(v.as_bytes()));
    if has_content {
        return Err(refused());
    }
    if body.is_end_stream() {
        return Ok(());
    }
    static AWAITING_END: tokio::sync::Semaphore =
        tokio::sync::Semaphore::const_new(MAX_GETS_AWAITING_END);
    let _waiting = AWAITING_END.try_acquire().map_err(|_| {
        ApiError::server_full("too many requests are waiting for their stream to end")
    })?;
    let ended = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::bad_request("invalid_body", format!("could not read the request: {e}"))
            })?;
            if frame.data_ref().is_some_and(|d| !d.is_empty()) {
                return Err(refused());
            }
        }
        Ok(())
    };
    match tokio::time::timeout(within, ended).await {
        Ok(r) => r,
        Err(_) => Err(ApiError::request_timeout(format!(
            "the request did not end within {} s",
            within.as_secs_f64()
        ))),
    }
}

/// The query string as decoded pairs, in order. Lenient (bytes that are not
/// UTF-8 become U+FFFD): for reading credentials only. Transports decode
/// their parameters with [`crate::input::Query`], which refuses such bytes.
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The `topic` parameters, validated, without repeats.
pub(crate) fn topics_param(pairs: &[(String, String)], max: usize) -> Result<Vec<Topic>, ApiError> {
    let mut topics: Vec<Topic> = Vec::new();
    for (k, v) in pairs {
        if k == "topic" {
            let t = Topic::new(v)?;
            if !topics.contains(&t) {
                topics.push(t);
            }
        }
    }
    if topics.is_empty() {
        return Err(ApiError::bad_request(
            "missing_topic",
            "name at least one topic: ?topic=NAME (repeatable)",
        ));
    }
    if topics.len() > max {
        return Err(ApiError::bad_request(
            "too_many_topics",
            format!("at most {max} topics per subscription"),
        ));
    }
    Ok(topics)
}

/// The value of a parameter; when it is repeated, the last one wins
/// (DESIGN.md, "Cursor and name input").
pub(crate) fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A subscription to `topics`, each resuming from its position in `cursor`
/// (a cursor wins), or else from `start` (the request's starting point).
pub(crate) async fn subscribe_all(
    mut sub: Subscription,
    topics: &[Topic],
    cursor: &Cursor,
    start: Start,
) -> Result<Subscription, ApiError> {
    for t in topics {
        let from = cursor.get(t).map_or(start, Start::After);
        sub.add_from(t.clone(), from).await?;
    }
    Ok(sub)
}
