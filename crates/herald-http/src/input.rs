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
//! - A starting point (`since=earliest`, `since=latest`, `history=N`;
//!   DESIGN.md, "History") applies to every topic the cursor does not
//!   name: a cursor, when given, wins ([`starting_point`]).

use std::borrow::Cow;

use axum::http::HeaderMap;
use herald_core::subscription::Start;
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

    /// The one `topic` an endpoint reads (history, presence), validated;
    /// 400 `invalid_topic` naming `what` when it is missing.
    pub fn one_topic(&self, what: &str) -> Result<herald_core::Topic, ApiError> {
        match self.last("topic") {
            Some(t) => Ok(herald_core::Topic::new(t)?),
            None => Err(ApiError::bad_request(
                "invalid_topic",
                format!("{what} reads one topic: pass topic="),
            )),
        }
    }

    /// The `limit` a listing takes (history, topics): `default` when absent,
    /// else an integer from 1 to `max`; the last value wins.
    ///
    /// Errors: 400 `invalid_limit`, saying the range in `what` ("events",
    /// "topics").
    pub fn limit(&self, default: usize, max: usize, what: &str) -> Result<usize, ApiError> {
        match self.last("limit") {
            None => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_limit",
                        format!("limit is a number of {what} from 1 to {max}"),
                    )
                }),
        }
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
    // An empty (or blank) cursor names no place: refused, never "from now"
    // (DESIGN.md, "Cursor and name input"). Leave the parameter out instead.
    if value.trim().is_empty() {
        return Err(ApiError::bad_request(
            "invalid_cursor",
            format!("{source} is empty: give a cursor, or leave {source} out to start from now"),
        ));
    }
    Cursor::decode(value)
        .map_err(|e| ApiError::bad_request("invalid_cursor", format!("{source}: {e}")))
}

/// Where a request may carry the cursor it resumes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CursorSource {
    /// The `Last-Event-ID` header (WHATWG HTML, server-sent events: a
    /// browser's EventSource sends it on every reconnect).
    LastEventIdHeader,
    /// The `last_event_id` query parameter.
    LastEventId,
    /// The `cursor` query parameter (long polling).
    Cursor,
    /// The `since` query parameter: a cursor, unless it names a starting
    /// point (`earliest`, `latest`; see [`starting_point`]).
    Since,
}

impl CursorSource {
    fn name(self) -> &'static str {
        match self {
            CursorSource::LastEventIdHeader => "Last-Event-ID",
            CursorSource::LastEventId => "last_event_id",
            CursorSource::Cursor => "cursor",
            CursorSource::Since => "since",
        }
    }

    /// The value this source carries, if any.
    fn value<'a>(
        self,
        headers: &'a HeaderMap,
        query: &'a Query,
    ) -> Result<Option<&'a str>, ApiError> {
        match self {
            CursorSource::LastEventIdHeader => {
                let mut all = headers.get_all("last-event-id").iter();
                let Some(v) = all.next() else {
                    return Ok(None);
                };
                if all.next().is_some() {
                    return Err(ApiError::bad_request(
                        "invalid_cursor",
                        "Last-Event-ID: send the header once",
                    ));
                }
                // An empty header is no header: a browser never sends one
                // (WHATWG HTML, server-sent events: only a non-empty last
                // event ID is sent), a proxy might.
                if v.is_empty() {
                    return Ok(None);
                }
                v.to_str().map(Some).map_err(|_| {
                    ApiError::bad_request(
                        "invalid_cursor",
                        "Last-Event-ID: not a cursor (non-ASCII bytes)",
                    )
                })
            }
            CursorSource::LastEventId => Ok(query.last("last_event_id")),
            CursorSource::Cursor => Ok(query.last("cursor")),
            CursorSource::Since => match query.last("since") {
                Some(EARLIEST | LATEST) => Ok(None),
                other => Ok(other),
            },
        }
    }
}

/// The cursor a request resumes `topics` from. Every source in `sources`
/// that the request carries must decode (a garbage value is refused even
/// where another source wins); the first non-empty one, in the order given,
/// is used; none: the empty cursor (the request's [`starting_point`]).
///
/// Errors: 400 `invalid_cursor` when a source does not decode, is not
/// visible ASCII, or names none of `topics` (a cursor of another
/// subscription must not silently mean "from now").
pub fn resume_cursor(
    headers: &HeaderMap,
    query: &Query,
    sources: &[CursorSource],
    topics: &[herald_core::Topic],
) -> Result<Cursor, ApiError> {
    let mut chosen: Option<Cursor> = None;
    for &source in sources {
        let Some(v) = source.value(headers, query)? else {
            continue;
        };
        let c = cursor(v, source.name())?;
        if chosen.is_none() && !c.is_empty() {
            chosen = Some(c);
        }
    }
    let chosen = chosen.unwrap_or_default();
    if !chosen.is_empty() && topics.iter().all(|t| chosen.get(t).is_none()) {
        return Err(ApiError::bad_request(
            "invalid_cursor",
            "the cursor names none of the requested topics",
        ));
    }
    Ok(chosen)
}

/// `since=earliest`: every retained event, then live.
pub const EARLIEST: &str = "earliest";
/// `since=latest`: the newest event, then live.
pub const LATEST: &str = "latest";
/// The most events `history=N` (and `GET /v1/history`'s `limit`) asks for.
pub const MAX_HISTORY: usize = 1000;

/// The starting point a request names for the topics its cursor does not:
/// `since=earliest` ([`Start::Earliest`]), `since=latest` (`Last(1)`),
/// `history=N` (`Last(N)`, `0..=`[`MAX_HISTORY`]), none: [`Start::Now`].
/// The last repeated value wins, as for cursors.
///
/// Errors: 400 `invalid_history` when `history` is not an integer in range,
/// or is given with a named `since`.
pub fn starting_point(query: &Query) -> Result<Start, ApiError> {
    let named = match query.last("since") {
        Some(EARLIEST) => Some(Start::Earliest),
        Some(LATEST) => Some(Start::Last(1)),
        _ => None,
    };
    let Some(h) = query.last("history") else {
        return Ok(named.unwrap_or(Start::Now));
    };
    if named.is_some() {
        return Err(ApiError::bad_request(
            "invalid_history",
            "give one starting point: since=earliest, since=latest or history=N",
        ));
    }
    history_count(h).map(Start::Last)
}

/// Parses `history=N`: an integer in `0..=`[`MAX_HISTORY`].
///
/// Errors: 400 `invalid_history`.
pub fn history_count(value: &str) -> Result<usize, ApiError> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| *n <= MAX_HISTORY)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_history",
                format!("history is a number of events from 0 to {MAX_HISTORY}"),
            )
        })
}

/// The sources of `GET /v1/sse`, in order: the header wins (a browser sends
/// it on every reconnect, while the URL keeps the parameter of the first
/// connection), then `last_event_id`, then `since`.
pub const SSE_SOURCES: &[CursorSource] = &[
    CursorSource::LastEventIdHeader,
    CursorSource::LastEventId,
    CursorSource::Since,
];

/// The sources of `GET /v1/poll`, in order.
pub const POLL_SOURCES: &[CursorSource] = &[
    CursorSource::Cursor,
    CursorSource::LastEventId,
    CursorSource::LastEventIdHeader,
    CursorSource::Since,
];

/// The cursor an SSE request resumes from; see [`resume_cursor`] and [`SSE_SOURCES`].
pub fn sse_cursor(
    headers: &HeaderMap,
    query: &Query,
    topics: &[herald_core::Topic],
) -> Result<Cursor, ApiError> {
    resume_cursor(headers, query, SSE_SOURCES, topics)
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
        let topics = [Topic::new("t").unwrap()];
        let q = Query::parse(Some(&format!("last_event_id={old}&last_event_id={new}"))).unwrap();
        let mut h = HeaderMap::new();
        // Last repeated parameter.
        assert_eq!(sse_cursor(&h, &q, &topics).unwrap().encode(), new);
        // The header wins over the URL.
        h.insert("last-event-id", HeaderValue::from_str(&old).unwrap());
        assert_eq!(sse_cursor(&h, &q, &topics).unwrap().encode(), old);
        // A valid cursor followed by a non-ASCII byte is refused, not ignored.
        let mut bad = old.clone().into_bytes();
        bad.push(0xe9);
        h.insert("last-event-id", HeaderValue::from_bytes(&bad).unwrap());
        let e = sse_cursor(&h, &q, &topics).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, "invalid_cursor"));
        // Garbage is refused too.
        h.insert("last-event-id", HeaderValue::from_static("zz"));
        assert_eq!(
            sse_cursor(&h, &q, &topics).unwrap_err().code,
            "invalid_cursor"
        );
        // An empty header is no header.
        h.insert("last-event-id", HeaderValue::from_static(""));
        assert_eq!(sse_cursor(&h, &q, &topics).unwrap().encode(), new);
        // Nothing at all: the empty cursor.
        let none = Query::parse(None).unwrap();
        assert!(sse_cursor(&HeaderMap::new(), &none, &topics)
            .unwrap()
            .is_empty());
        let e = sse_cursor(
            &HeaderMap::new(),
            &Query::parse(Some("last_event_id=%21")).unwrap(),
            &topics,
        )
        .unwrap_err();
        assert_eq!(e.code, "invalid_cursor");
        // A valid header does not hide a garbage parameter.
        h.insert("last-event-id", HeaderValue::from_str(&old).unwrap());
        let garbage = Query::parse(Some("last_event_id=zzz")).unwrap();
        assert_eq!(
            sse_cursor(&h, &garbage, &topics).unwrap_err().code,
            "invalid_cursor"
        );
        // `since` is a cursor source too; named starting points are not cursors.
        let since = Query::parse(Some(&format!("since={new}"))).unwrap();
        assert_eq!(
            sse_cursor(&HeaderMap::new(), &since, &topics)
                .unwrap()
                .encode(),
            new
        );
        let q = Query::parse(Some("since=zzz")).unwrap();
        assert_eq!(
            sse_cursor(&HeaderMap::new(), &q, &topics).unwrap_err().code,
            "invalid_cursor"
        );
        for q in ["since=earliest", "since=latest", "history=5"] {
            let q = Query::parse(Some(q)).unwrap();
            assert!(sse_cursor(&HeaderMap::new(), &q, &topics)
                .unwrap()
                .is_empty());
        }
        // A cursor of another topic names none of these: refused, not "from now".
        let other = Query::parse(Some(&format!("last_event_id={}", c("u", 3)))).unwrap();
        let e = sse_cursor(&HeaderMap::new(), &other, &topics).unwrap_err();
        assert!(
            e.message.contains("none of the requested topics"),
            "{}",
            e.message
        );
    }

    #[test]
    fn starting_points() {
        let start = |q: &str| starting_point(&Query::parse(Some(q)).unwrap());
        assert_eq!(start("").unwrap(), Start::Now);
        assert_eq!(start("since=earliest").unwrap(), Start::Earliest);
        assert_eq!(start("since=latest").unwrap(), Start::Last(1));
        assert_eq!(start("history=7").unwrap(), Start::Last(7));
        assert_eq!(start("history=1&history=0").unwrap(), Start::Last(0));
        assert_eq!(start(&format!("since={}", c("t", 1))).unwrap(), Start::Now);
        for bad in [
            "history=-1",
            "history=x",
            "history=1001",
            "since=latest&history=2",
        ] {
            assert_eq!(start(bad).unwrap_err().code, "invalid_history", "{bad}");
        }
    }

    #[test]
    fn poll_sources() {
        let topics = [Topic::new("t").unwrap()];
        let (a, b) = (c("t", 1), c("t", 2));
        let q = Query::parse(Some(&format!("cursor={a}&last_event_id={b}"))).unwrap();
        let got = resume_cursor(&HeaderMap::new(), &q, POLL_SOURCES, &topics).unwrap();
        assert_eq!(got.encode(), a);
        let q = Query::parse(Some(&format!("cursor={a}&last_event_id=zzz"))).unwrap();
        assert!(resume_cursor(&HeaderMap::new(), &q, POLL_SOURCES, &topics).is_err());
    }
}
