//! Cursor and name input, decided once for every transport (DESIGN.md,
//! "Cursor and name input").
//!
//! - A query string is decoded strictly: `application/x-www-form-urlencoded`
//!   (WHATWG URL, "application/x-www-form-urlencoded parsing"), except that a
//!   value whose percent-decoding is not valid UTF-8 is refused with 400
//!   instead of being replaced with U+FFFD (`topic=a%ff` must not become a
//!   different topic).
//! - When a parameter is repeated, the last value wins (an EventSource
//!   polyfill that appends the newest `last_event_id` must not replay).
//! - A cursor from any source (`Last-Event-ID`, `last_event_id`, `cursor`,
//!   `since`) either decodes or is refused with 400 `invalid_cursor`; it never
//!   silently means "from now".

use std::borrow::Cow;

use axum::http::HeaderMap;
use herald_core::Cursor;

use crate::error::ApiError;

/// A decoded query string: its pairs in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Decodes `query` (the part after `?`, without it).
    ///
    /// Errors: 400 `invalid_topic` when a `topic` value is not UTF-8 once
    /// percent-decoded, 400 `invalid_query` for any other parameter.
    pub fn parse(query: Option<&str>) -> Result<Query, ApiError> {
        let mut pairs = Vec::new();
        for part in query.unwrap_or("").split('&') {
            if part.is_empty() {
                continue;
            }
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            let k = decode(k).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    "a query parameter name is not UTF-8 once percent-decoded",
                )
            })?;
            let v = decode(v).ok_or_else(|| {
                if k == "topic" {
                    ApiError::bad_request(
                        "invalid_topic",
                        "a topic is not UTF-8 once percent-decoded",
                    )
                } else {
                    ApiError::bad_request(
                        "invalid_query",
                        format!("the value of {k:?} is not UTF-8 once percent-decoded"),
                    )
                }
            })?;
            pairs.push((k, v));
        }
        Ok(Query { pairs })
    }

    /// Every pair, in order.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    /// The last value of `name` (the last one wins when it is repeated).
    pub fn last(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Percent-decodes one component (`+` is a space); `None` when the bytes are not UTF-8.
fn decode(s: &str) -> Option<String> {
    let plus: Cow<'_, str> = if s.contains('+') {
        Cow::Owned(s.replace('+', " "))
    } else {
        Cow::Borrowed(s)
    };
    percent_encoding::percent_decode_str(&plus)
        .decode_utf8()
        .ok()
        .map(Cow::into_owned)
}

/// Decodes a cursor from a named source; the empty string is the empty
/// cursor ("from now"), which a client asks for by sending nothing.
///
/// Errors: 400 `invalid_cursor`, naming the source.
pub fn cursor(value: &str, source: &str) -> Result<Cursor, ApiError> {
    Cursor::decode(value)
        .map_err(|e| ApiError::bad_request("invalid_cursor", format!("{source}: {e}")))
}

/// The cursor an SSE request resumes from: the `Last-Event-ID` header when
/// present (a browser's EventSource sends it on every reconnect, while the
/// URL keeps the parameter of the first connection), else the last
/// `last_event_id` parameter, else the empty cursor.
///
/// Errors: 400 `invalid_cursor` when the chosen source does not decode,
/// including a header that is not visible ASCII.
pub fn sse_cursor(headers: &HeaderMap, query: &Query) -> Result<Cursor, ApiError> {
    let mut header = headers.get_all("last-event-id").iter();
    if let Some(v) = header.next() {
        if header.next().is_some() {
            return Err(ApiError::bad_request(
                "invalid_cursor",
                "Last-Event-ID: send the header once",
            ));
        }
        let v = v.to_str().map_err(|_| {
            ApiError::bad_request(
                "invalid_cursor",
                "Last-Event-ID: not a cursor (non-ASCII bytes)",
            )
        })?;
        if !v.is_empty() {
            return cursor(v, "Last-Event-ID");
        }
    }
    cursor(query.last("last_event_id").unwrap_or(""), "last_event_id")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use herald_core::{Position, Topic};

    fn c(topic: &str, seq: u64) -> String {
        Cursor::single(&Topic::new(topic).unwrap(), Position { epoch: 7, seq }).encode()
    }

    #[test]
    fn strict_utf8() {
        let e = Query::parse(Some("topic=a%ff")).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, "invalid_topic"));
        let e = Query::parse(Some("topic=a&x=%c3")).unwrap_err();
        assert_eq!(e.code, "invalid_query");
        let q = Query::parse(Some("topic=caf%C3%A9&topic=a+b&empty=&flag")).unwrap();
        assert_eq!(q.all("topic").collect::<Vec<_>>(), ["café", "a b"]);
        assert_eq!(q.last("empty"), Some(""));
        assert_eq!(q.last("flag"), Some(""));
        assert_eq!(q.last("none"), None);
    }

    #[test]
    fn the_last_repeated_value_wins() {
        let q = Query::parse(Some("cursor=a&cursor=b&cursor=c")).unwrap();
        assert_eq!(q.last("cursor"), Some("c"));
    }

    #[test]
    fn sse_cursor_sources() {
        let (old, new) = (c("t", 1), c("t", 5));
        let q = Query::parse(Some(&format!("last_event_id={old}&last_event_id={new}"))).unwrap();
        let mut h = HeaderMap::new();
        // Last repeated parameter.
        assert_eq!(sse_cursor(&h, &q).unwrap().encode(), new);
        // The header wins over the URL.
        h.insert("last-event-id", HeaderValue::from_str(&old).unwrap());
        assert_eq!(sse_cursor(&h, &q).unwrap().encode(), old);
        // A valid cursor followed by a non-ASCII byte is refused, not ignored.
        let mut bad = old.clone().into_bytes();
        bad.push(0xe9);
        h.insert("last-event-id", HeaderValue::from_bytes(&bad).unwrap());
        let e = sse_cursor(&h, &q).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, "invalid_cursor"));
        // Garbage is refused too.
        h.insert("last-event-id", HeaderValue::from_static("zz"));
        assert_eq!(sse_cursor(&h, &q).unwrap_err().code, "invalid_cursor");
        // An empty header is no header.
        h.insert("last-event-id", HeaderValue::from_static(""));
        assert_eq!(sse_cursor(&h, &q).unwrap().encode(), new);
        // Nothing at all: the empty cursor.
        let none = Query::parse(None).unwrap();
        assert!(sse_cursor(&HeaderMap::new(), &none).unwrap().is_empty());
        let e = sse_cursor(
            &HeaderMap::new(),
            &Query::parse(Some("last_event_id=%21")).unwrap(),
        )
        .unwrap_err();
        assert_eq!(e.code, "invalid_cursor");
    }
}
