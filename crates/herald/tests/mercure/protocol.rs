//! The Mercure protocol as a Mercure client sees it (DESIGN.md, "Mercure
//! compatibility"; the Mercure specification, "Publication",
//! "Subscription", "Authorization", "Reconnection", "Active
//! Subscriptions", "Discovery"), against the real `herald serve` with
//! plain HTTP requests: publishing and its refusals, selectors, tokens and
//! where they come from, private updates, resuming by id, subscription
//! events and the subscriptions API, cookie publishes and their origin.
//!
//! Every test starts its own hub. Every read is bounded ([`WAIT`]); where a
//! test must show that something did *not* arrive, it publishes a public
//! marker afterwards and reads up to it: the hub has one order, so whatever
//! was to come before the marker has come by then.

use std::collections::VecDeque;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use herald_client::sse::{SseEvent, SseItem, SseParser};
use http::{HeaderMap, Method};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Value};

use crate::process::{self, ServeProcess as Server};

/// The publisher key (HS256), also the subscriber key unless a test sets one.
const PUBLISHER_KEY: &str = "mercure-protocol-publisher-key-0123456789";
/// A distinct subscriber key, for the tests that set one.
const SUBSCRIBER_KEY: &str = "mercure-protocol-subscriber-key-9876543210";
/// A key the hub does not know.
const STRANGER_KEY: &str = "mercure-protocol-stranger-key-abcdefghijkl";
const HUB: &str = "/.well-known/mercure";
/// The discovery header every answer of the hub carries.
const LINK: &str = "</.well-known/mercure>; rel=\"mercure\"";
/// How long any one answer or awaited event may take.
const WAIT: Duration = Duration::from_secs(5);
const MARKER: &str = "urn:test:marker";
const BOOK1: &str = "https://ex.com/books/1";
const BOOK2: &str = "https://ex.com/books/2";

// ---------------------------------------------------------------------------
// Hubs, tokens, requests

/// `herald serve --engine memory --mercure-publisher-jwt-key KEY EXTRA`.
fn hub(extra: &[&str]) -> Server {
    let mut args = vec!["--mercure-publisher-jwt-key", PUBLISHER_KEY];
    args.extend_from_slice(extra);
    Server::memory(&args)
}

/// An HS256 token with header `typ` and `claims`, signed with `key`.
fn sign(key: &str, typ: &str, claims: Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.typ = Some(typ.to_owned());
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(key.as_bytes())).unwrap()
}

/// A Symfony-style publisher token: `{"mercure": {"publish": topics}}`.
fn publisher(topics: &[&str]) -> String {
    sign(
        PUBLISHER_KEY,
        "JWT",
        json!({"mercure": {"publish": topics}}),
    )
}

/// A subscriber token signed with `key`: `{"mercure": {"subscribe": topics}}`.
fn subscriber_with(key: &str, topics: &[&str]) -> String {
    sign(key, "JWT", json!({"mercure": {"subscribe": topics}}))
}

/// A subscriber token signed with the publisher key (the default
/// subscriber key).
fn subscriber(topics: &[&str]) -> String {
    subscriber_with(PUBLISHER_KEY, topics)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Percent-encodes everything but ASCII letters and digits (a form value,
/// a query value or a path segment).
fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

/// An `application/x-www-form-urlencoded` body (or query string).
fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Form fields or header fields, as (name, value) pairs.
type Fields<'a> = &'a [(&'a str, &'a str)];

/// A complete answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `WWW-Authenticate` challenge.
    fn challenge(&self) -> Option<&str> {
        self.header("www-authenticate")
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// Whether `headers` hold the discovery `Link`.
fn has_link(headers: &HeaderMap) -> bool {
    headers
        .get_all("link")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim() == LINK)
}

/// Sends one request; the answer's head comes within [`WAIT`].
async fn send(
    s: &Server,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> http::Response<Incoming> {
    tokio::time::timeout(WAIT, s.client.request(method, path, headers, body.into()))
        .await
        .unwrap_or_else(|_| panic!("no answer to {path} within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Reads a whole answer (within [`WAIT`]).
async fn read(r: http::Response<Incoming>) -> Answer {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = tokio::time::timeout(WAIT, r.into_body().collect())
        .await
        .expect("the whole answer in time")
        .expect("the answer's body")
        .to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn get(s: &Server, path: &str, headers: &[(&str, &str)]) -> Answer {
    read(send(s, Method::GET, path, headers, Bytes::new()).await).await
}

/// `POST /.well-known/mercure` with `body`, as a form unless `headers`
/// name another content type.
async fn post(s: &Server, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut h = headers.to_vec();
    if !h
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        h.push(("content-type", "application/x-www-form-urlencoded"));
    }
    read(send(s, Method::POST, HUB, &h, body.to_owned()).await).await
}

/// Publishes the form `fields` with `token` in the `Authorization` header.
async fn publish(s: &Server, token: &str, fields: &[(&str, &str)]) -> Answer {
    post(s, &[("authorization", &bearer(token))], &form(fields)).await
}

/// [`publish`], which must be accepted; returns the id answered.
async fn publish_ok(s: &Server, token: &str, fields: &[(&str, &str)]) -> String {
    let a = publish(s, token, fields).await;
    assert_eq!(a.status, 200, "publish {fields:?}: {}", a.body);
    a.body
}

/// Publishes the public update `id` to [`MARKER`].
async fn marker(s: &Server, id: &str) {
    let got = publish_ok(
        s,
        &publisher(&["*"]),
        &[("topic", MARKER), ("id", id), ("data", "marker")],
    )
    .await;
    assert_eq!(got, id);
}

/// `urn:uuid:` and a version 4 UUID in its canonical lower-case form.
fn assert_uuid_urn(id: &str) {
    let u = id
        .strip_prefix("urn:uuid:")
        .unwrap_or_else(|| panic!("{id:?} is not a urn:uuid"));
    let lens: Vec<usize> = u.split('-').map(str::len).collect();
    assert_eq!(lens, [8, 4, 4, 4, 12], "{id:?}");
    assert!(
        u.bytes()
            .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{id:?}"
    );
    assert_eq!(&u[14..15], "4", "version 4: {id:?}");
    assert!(
        matches!(&u[19..20], "8" | "9" | "a" | "b"),
        "RFC 9562 variant: {id:?}"
    );
}

// ---------------------------------------------------------------------------
// Subscribers

/// An open subscription: its answer's headers and its events as they come.
struct Stream {
    headers: HeaderMap,
    body: Incoming,
    parser: SseParser,
    queue: VecDeque<SseItem>,
}

/// `GET /.well-known/mercure?QUERY` with `headers`: the stream when the
/// hub answers 200, else the whole answer.
async fn subscribe(s: &Server, query: &str, headers: &[(&str, &str)]) -> Result<Stream, Answer> {
    let path = if query.is_empty() {
        HUB.to_owned()
    } else {
        format!("{HUB}?{query}")
    };
    let mut h = headers.to_vec();
    h.push(("accept", "text/event-stream"));
    let r = send(s, Method::GET, &path, &h, Bytes::new()).await;
    if r.status() != 200 {
        return Err(read(r).await);
    }
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(ct.starts_with("text/event-stream"), "content type {ct:?}");
    Ok(Stream {
        headers: r.headers().clone(),
        body: r.into_body(),
        parser: SseParser::new(),
        queue: VecDeque::new(),
    })
}

/// [`subscribe`], which must be accepted.
async fn stream(s: &Server, query: &str, headers: &[(&str, &str)]) -> Stream {
    match subscribe(s, query, headers).await {
        Ok(st) => st,
        Err(a) => panic!("subscribe {query:?}: {} {}", a.status, a.body),
    }
}

/// [`stream`] presenting `token` in the `Authorization` header.
async fn stream_as(s: &Server, query: &str, token: &str) -> Stream {
    stream(s, query, &[("authorization", &bearer(token))]).await
}

/// What a wait for the next item gave.
#[derive(Debug)]
enum Next {
    Item(SseItem),
    /// The stream ended (cleanly or not).
    End,
    /// Nothing within the time given.
    Late,
}

impl Stream {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Where the hub says the stream resumed from: its `Last-Event-ID`
    /// header, which `Mercure-Last-Event-Id` repeats.
    fn resumed_from(&self) -> Option<&str> {
        let v = self.header("last-event-id");
        assert_eq!(
            self.header("mercure-last-event-id"),
            v,
            "Mercure-Last-Event-Id and Last-Event-ID differ"
        );
        v
    }

    async fn next_within(&mut self, limit: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(i) = self.queue.pop_front() {
                return Next::Item(i);
            }
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => return Next::Late,
                Ok(None) | Ok(Some(Err(_))) => return Next::End,
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.queue.extend(self.parser.feed(&data));
                    }
                }
            }
        }
    }

    /// Every item up to the event whose id is `id`, that event included
    /// (within [`WAIT`]).
    async fn items_until(&mut self, id: &str) -> Vec<SseItem> {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_within(left).await {
                Next::Item(i) => {
                    let done = matches!(&i, SseItem::Event(e) if e.id == id);
                    seen.push(i);
                    if done {
                        return seen;
                    }
                }
                Next::End => panic!("the stream ended before {id:?}; it gave {seen:?}"),
                Next::Late => panic!("no {id:?} within {WAIT:?}; the stream gave {seen:?}"),
            }
        }
    }

    /// The events up to the one whose id is `id`, that one included.
    async fn until(&mut self, id: &str) -> Vec<SseEvent> {
        events(self.items_until(id).await)
    }

    /// The ids of the events up to `id`, that one included.
    async fn ids_until(&mut self, id: &str) -> Vec<String> {
        self.until(id).await.into_iter().map(|e| e.id).collect()
    }

    /// The next event (within [`WAIT`]).
    async fn event(&mut self) -> SseEvent {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_within(left).await {
                Next::Item(SseItem::Event(e)) => return e,
                Next::Item(_) => {}
                Next::End => panic!("the stream ended before an event"),
                Next::Late => panic!("no event within {WAIT:?}"),
            }
        }
    }
}

fn events(items: Vec<SseItem>) -> Vec<SseEvent> {
    items
        .into_iter()
        .filter_map(|i| match i {
            SseItem::Event(e) => Some(e),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Publishing

/// A publish answers `200 text/plain` whose body is the update's id: the
/// publisher's when given, else a fresh `urn:uuid:` (the one subscribers
/// see).
#[tokio::test]
async fn a_publish_answers_200_text_plain_with_the_id() {
    let s = hub(&["--mercure-anonymous"]);
    let tok = publisher(&["*"]);
    let mut sub = stream(&s, &form(&[("topic", BOOK1)]), &[]).await;

    let a = publish(
        &s,
        &tok,
        &[("topic", BOOK1), ("id", "book-1-v1"), ("data", "a")],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let ct = a.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("text/plain"), "content type {ct:?}");
    assert_eq!(a.body, "book-1-v1");

    let generated = publish_ok(&s, &tok, &[("topic", BOOK1), ("data", "b")]).await;
    assert_uuid_urn(&generated);
    let again = publish_ok(&s, &tok, &[("topic", BOOK1), ("data", "c")]).await;
    assert_uuid_urn(&again);
    assert_ne!(generated, again, "each update gets its own id");

    let got: Vec<(String, String)> = sub
        .until(&again)
        .await
        .into_iter()
        .map(|e| (e.id, e.data))
        .collect();
    assert_eq!(
        got,
        [
            ("book-1-v1".to_owned(), "a".to_owned()),
            (generated, "b".to_owned()),
            (again, "c".to_owned())
        ]
    );
}

/// An update to two topics reaches a subscriber of either topic, and a
/// subscriber of both, exactly once.
#[tokio::test]
async fn an_update_to_two_topics_reaches_a_subscriber_of_either_once() {
    let s = hub(&["--mercure-anonymous"]);
    let queries = [
        form(&[("topic", "urn:t:1"), ("topic", MARKER)]),
        form(&[("topic", "urn:t:2"), ("topic", MARKER)]),
        form(&[
            ("topic", "urn:t:1"),
            ("topic", "urn:t:2"),
            ("topic", MARKER),
        ]),
        form(&[("topic", "*")]),
        form(&[("topic", "urn:t:3"), ("topic", MARKER)]),
    ];
    let mut subs = Vec::new();
    for q in &queries {
        subs.push(stream(&s, q, &[]).await);
    }
    publish_ok(
        &s,
        &publisher(&["*"]),
        &[
            ("topic", "urn:t:1"),
            ("topic", "urn:t:2"),
            ("id", "both"),
            ("data", "x"),
        ],
    )
    .await;
    marker(&s, "m").await;
    for (i, sub) in subs.iter_mut().enumerate() {
        let want: &[&str] = if i == 4 { &["m"] } else { &["both", "m"] };
        assert_eq!(sub.ids_until("m").await, want, "subscriber {}", queries[i]);
    }
}

/// `data` (several lines, an empty one among them), `id` (verbatim, quotes,
/// brackets, non-ASCII), `type` (the SSE `event:`) and `retry` (the SSE
/// `retry:`) reach the subscriber as given.
#[tokio::test]
async fn fields_reach_subscribers_as_given() {
    let s = hub(&["--mercure-anonymous"]);
    let tok = publisher(&["*"]);
    let mut sub = stream(&s, "topic=*", &[]).await;
    let multi = "line 1\nline 2\n\nline 4";
    // CR LF and a lone CR end lines too (WHATWG HTML, 9.2.6), and are
    // received as LF.
    let crlf = "a\r\nb\rc";
    let ids = ["[\"x\"]", "urn:a:\"b\"", "é✓😀 <a href='x'>&amp;</a> {id}"];
    publish_ok(
        &s,
        &tok,
        &[
            ("topic", BOOK1),
            ("id", ids[0]),
            ("data", multi),
            ("type", "book.updated"),
            ("retry", "98765"),
        ],
    )
    .await;
    publish_ok(&s, &tok, &[("topic", BOOK1), ("id", ids[1]), ("data", "x")]).await;
    publish_ok(
        &s,
        &tok,
        &[("topic", BOOK1), ("id", ids[2]), ("data", crlf)],
    )
    .await;
    let generated = publish_ok(&s, &tok, &[("topic", BOOK1), ("data", "z")]).await;
    assert_uuid_urn(&generated);

    let items = sub.items_until(&generated).await;
    let first = items
        .iter()
        .position(|i| matches!(i, SseItem::Event(e) if e.id == ids[0]))
        .expect("the first update");
    assert!(
        first > 0 && items[first - 1] == SseItem::Retry(98765),
        "`retry: 98765` comes with the update: {items:?}"
    );
    assert!(
        !items[first + 1..]
            .iter()
            .any(|i| matches!(i, SseItem::Retry(_))),
        "only the update with `retry` sets it: {items:?}"
    );
    let evs = events(items);
    let got: Vec<(&str, &str, &str)> = evs
        .iter()
        .map(|e| (e.id.as_str(), e.event.as_str(), e.data.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (ids[0], "book.updated", multi),
            (ids[1], "message", "x"),
            (ids[2], "message", "a\nb\nc"),
            (generated.as_str(), "message", "z"),
        ]
    );
}

/// Without any token: 401 with a bare `Bearer` challenge (no `error`).
#[tokio::test]
async fn a_publish_without_a_token_is_401_with_a_bare_bearer_challenge() {
    let s = hub(&[]);
    let a = post(&s, &[], "topic=urn%3Ax&data=1").await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert_eq!(a.challenge(), Some("Bearer"));
    assert!(has_link(&a.headers));
}

/// A token the hub cannot verify with the publisher key is 401
/// `invalid_token`: a foreign key's, the subscriber key's (when the keys
/// differ), an expired one, a malformed one. Nothing of them is published.
#[tokio::test]
async fn a_publish_with_an_invalid_token_is_401_invalid_token() {
    let s = hub(&["--mercure-subscriber-jwt-key", SUBSCRIBER_KEY]);
    let mut watcher = stream_as(&s, "topic=*", &subscriber_with(SUBSCRIBER_KEY, &["*"])).await;
    let grant = json!({"mercure": {"publish": ["*"]}});
    let expired = json!({"exp": now() - 600, "mercure": {"publish": ["*"]}});
    let cases = [
        ("a foreign key", sign(STRANGER_KEY, "JWT", grant.clone())),
        ("the subscriber key", sign(SUBSCRIBER_KEY, "JWT", grant)),
        ("expired", sign(PUBLISHER_KEY, "JWT", expired)),
        ("not a JWT", "abc.def.ghi".to_owned()),
    ];
    for (what, tok) in &cases {
        let a = publish(&s, tok, &[("topic", BOOK1), ("data", "refused")]).await;
        assert_eq!(a.status, 401, "{what}: {}", a.body);
        assert_eq!(
            a.challenge(),
            Some("Bearer error=\"invalid_token\""),
            "{what}"
        );
        assert!(has_link(&a.headers), "{what}");
    }
    marker(&s, "m").await;
    assert_eq!(watcher.ids_until("m").await, ["m"]);
}

/// A valid token whose `publish` selectors do not cover every topic of the
/// update is 403 `insufficient_scope`.
#[tokio::test]
async fn a_publish_the_token_does_not_grant_is_403_insufficient_scope() {
    let s = hub(&[]);
    let mut watcher = stream_as(&s, "topic=*", &subscriber(&["*"])).await;
    let books = publisher(&["https://ex.com/books/{id}"]);
    // What is refused, the token, the form.
    type Case<'a> = (&'a str, &'a str, Fields<'a>);
    let cases: [Case; 3] = [
        (
            "another topic",
            &books,
            &[("topic", "https://ex.com/authors/1")],
        ),
        (
            "one topic of two",
            &books,
            &[("topic", BOOK1), ("topic", "https://ex.com/authors/1")],
        ),
        (
            "no mercure claim",
            &sign(PUBLISHER_KEY, "JWT", json!({"sub": "x"})),
            &[("topic", BOOK1)],
        ),
    ];
    for (what, tok, fields) in cases {
        let a = publish(&s, tok, fields).await;
        assert_eq!(a.status, 403, "{what}: {}", a.body);
        assert_eq!(
            a.challenge(),
            Some("Bearer error=\"insufficient_scope\""),
            "{what}"
        );
    }
    let id = publish_ok(&s, &books, &[("topic", BOOK1), ("topic", BOOK2)]).await;
    assert_eq!(watcher.ids_until(&id).await, [id.as_str()]);
}

/// The hub's own namespace (`/.well-known/mercure…`, whatever the scheme
/// and host) is refused to publishers, even with `publish: ["*"]`: 403.
#[tokio::test]
async fn publishing_to_the_reserved_namespace_is_403() {
    let s = hub(&["--mercure-subscriptions"]);
    let mut watcher = stream_as(&s, "topic=*", &subscriber(&["*"])).await;
    let tok = publisher(&["*"]);
    let reserved: [&[&str]; 5] = [
        &["/.well-known/mercure/x"],
        &["https://h/.well-known/mercure/subscriptions/a"],
        &["/.well-known/mercure/subscriptions/Exact/x/y"],
        &["/.well-known/mercure"],
        &[BOOK1, "/.well-known/mercure/x"],
    ];
    for topics in reserved {
        let mut fields: Vec<(&str, &str)> = topics.iter().map(|t| ("topic", *t)).collect();
        fields.push(("data", "forged"));
        let a = publish(&s, &tok, &fields).await;
        assert_eq!(a.status, 403, "{topics:?}: {}", a.body);
    }
    marker(&s, "m").await;
    let got = watcher.until("m").await;
    assert!(
        got.iter().all(|e| e.data != "forged"),
        "a refused update was delivered: {got:?}"
    );
}

/// Malformed publishes are 400: an id starting with `#` or holding CR or
/// LF, a `retry` that is not digits, a `type` holding a line break, no
/// topic, a body that is not a form.
#[tokio::test]
async fn malformed_publishes_are_400() {
    let s = hub(&[]);
    let mut watcher = stream_as(&s, "topic=*", &subscriber(&["*"])).await;
    let auth = bearer(&publisher(&["*"]));
    let form_ct = "application/x-www-form-urlencoded";
    let cases: &[(&str, &str, String)] = &[
        (
            "id starts with #",
            form_ct,
            form(&[("topic", BOOK1), ("id", "#x")]),
        ),
        (
            "id holds CR",
            form_ct,
            form(&[("topic", BOOK1), ("id", "a\rb")]),
        ),
        (
            "id holds LF",
            form_ct,
            form(&[("topic", BOOK1), ("id", "a\nb")]),
        ),
        (
            "id holds NUL",
            form_ct,
            form(&[("topic", BOOK1), ("id", "a\0b")]),
        ),
        (
            "retry not digits",
            form_ct,
            form(&[("topic", BOOK1), ("retry", "12s")]),
        ),
        (
            "retry negative",
            form_ct,
            form(&[("topic", BOOK1), ("retry", "-1")]),
        ),
        (
            "type holds LF",
            form_ct,
            form(&[("topic", BOOK1), ("type", "a\nb")]),
        ),
        (
            "type holds CR",
            form_ct,
            form(&[("topic", BOOK1), ("type", "a\rb")]),
        ),
        ("no topic", form_ct, form(&[("data", "x"), ("id", "x")])),
        (
            "JSON",
            "application/json",
            json!({"topic": BOOK1}).to_string(),
        ),
        ("text", "text/plain", form(&[("topic", BOOK1)])),
        (
            "multipart",
            "multipart/form-data; boundary=x",
            form(&[("topic", BOOK1)]),
        ),
    ];
    for (what, ct, body) in cases {
        let a = post(&s, &[("authorization", &auth), ("content-type", ct)], body).await;
        assert_eq!(a.status, 400, "{what}: {}", a.body);
        assert!(has_link(&a.headers), "{what}");
    }
    marker(&s, "m").await;
    assert_eq!(watcher.ids_until("m").await, ["m"]);
}

/// A body over `--max-body` is 413; one under it is published.
#[tokio::test]
async fn data_over_the_body_limit_is_413() {
    let s = hub(&["--max-body", "1024"]);
    let tok = publisher(&["*"]);
    let big = "x".repeat(2000);
    let a = publish(&s, &tok, &[("topic", BOOK1), ("data", &big)]).await;
    assert_eq!(a.status, 413, "{}", a.body);
    let small = "x".repeat(500);
    publish_ok(&s, &tok, &[("topic", BOOK1), ("data", &small)]).await;
}

/// Every answer of the hub, streams, publishes and refusals alike, carries
/// `Link: </.well-known/mercure>; rel="mercure"`.
#[tokio::test]
async fn answers_carry_the_discovery_link() {
    let s = hub(&[]);
    let sub = stream_as(&s, "topic=*", &subscriber(&[])).await;
    assert!(has_link(&sub.headers), "GET 200");
    let refused = subscribe(&s, "topic=*", &[]).await.err().expect("401");
    assert_eq!(refused.status, 401);
    assert!(has_link(&refused.headers), "GET 401");
    let bad = subscribe(&s, "", &[("authorization", &bearer(&subscriber(&[])))])
        .await
        .err()
        .expect("400");
    assert_eq!(bad.status, 400);
    assert!(has_link(&bad.headers), "GET 400");
    let ok = publish(&s, &publisher(&["*"]), &[("topic", BOOK1)]).await;
    assert_eq!(ok.status, 200);
    assert!(has_link(&ok.headers), "POST 200");
    let forbidden = publish(&s, &publisher(&[BOOK2]), &[("topic", BOOK1)]).await;
    assert_eq!(forbidden.status, 403);
    assert!(has_link(&forbidden.headers), "POST 403");
}

// ---------------------------------------------------------------------------
// Subscribing

/// Each selector form selects what the specification says: an exact
/// `topic`, `*`, a URI template `topic`, `match` / `matchExact` (byte for
/// byte, braces included), `matchURLPattern` / `match_urlpattern`.
#[tokio::test]
async fn selectors_select_what_they_name() {
    let s = hub(&["--mercure-anonymous"]);
    let updates = [
        ("b1", BOOK1),
        ("b2", BOOK2),
        ("a1", "https://ex.com/authors/1"),
        ("r1", "https://ex.com/books/1/reviews"),
        ("rel1", "/books/1"),
    ];
    let cases: &[(&str, &str, &[&str])] = &[
        ("topic", BOOK1, &["b1"]),
        ("topic", "*", &["b1", "b2", "a1", "r1", "rel1"]),
        ("topic", "https://ex.com/books/{id}", &["b1", "b2"]),
        ("topic", "https://ex.com/books/{id}/reviews", &["r1"]),
        ("match", BOOK1, &["b1"]),
        ("match", "https://ex.com/books/{id}", &[]),
        ("matchExact", "https://ex.com/authors/1", &["a1"]),
        ("match_exact", "https://ex.com/authors/1", &["a1"]),
        ("matchURLPattern", "https://ex.com/books/:id", &["b1", "b2"]),
        (
            "match_urlpattern",
            "https://ex.com/books/:id",
            &["b1", "b2"],
        ),
        (
            "matchURLPattern",
            "https://ex.com/books/*",
            &["b1", "b2", "r1"],
        ),
        // Relative patterns and topics are resolved against the hub's URL.
        ("matchURLPattern", "/books/:id", &["rel1"]),
    ];
    let mut subs = Vec::new();
    for (param, value, _) in cases {
        let q = form(&[(param, value), ("topic", MARKER)]);
        subs.push(stream(&s, &q, &[]).await);
    }
    let tok = publisher(&["*"]);
    for (id, topic) in updates {
        publish_ok(&s, &tok, &[("topic", topic), ("id", id), ("data", id)]).await;
    }
    marker(&s, "m").await;
    for ((param, value, want), sub) in cases.iter().zip(&mut subs) {
        let mut want: Vec<&str> = want.to_vec();
        want.push("m");
        assert_eq!(sub.ids_until("m").await, want, "{param}={value}");
    }
}

/// A query without any selector is 400, and so is a parameter in the
/// reserved `match` namespace that names no matcher type.
#[tokio::test]
async fn a_subscription_without_selector_or_with_an_unknown_matcher_is_400() {
    let s = hub(&["--mercure-anonymous"]);
    for q in [
        "",
        "foo=bar",
        "lastEventID=earliest",
        "topic=urn%3Ax&matchFoo=urn%3Ax",
        "matchRegex=.%2A",
        "MATCHfoo=x&topic=urn%3Ax",
    ] {
        let a = subscribe(&s, q, &[])
            .await
            .err()
            .unwrap_or_else(|| panic!("{q:?} was accepted"));
        assert_eq!(a.status, 400, "{q:?}: {}", a.body);
    }
}

/// Without `--mercure-anonymous`, a subscriber without a token gets 401
/// with a bare `Bearer` challenge; any valid token is let in.
#[tokio::test]
async fn anonymous_subscribers_are_refused_by_default() {
    let s = hub(&[]);
    let a = subscribe(&s, "topic=*", &[]).await.err().expect("refused");
    assert_eq!(a.status, 401, "{}", a.body);
    assert_eq!(a.challenge(), Some("Bearer"));
    let bad = subscribe(
        &s,
        "topic=*",
        &[(
            "authorization",
            &bearer(&subscriber_with(STRANGER_KEY, &["*"])),
        )],
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(bad.status, 401);
    assert_eq!(bad.challenge(), Some("Bearer error=\"invalid_token\""));
    let mut sub = stream_as(&s, "topic=*", &subscriber(&[])).await;
    marker(&s, "m").await;
    assert_eq!(sub.ids_until("m").await, ["m"]);
}

/// With `--mercure-anonymous`, a subscriber without a token is accepted and
/// gets public updates only.
#[tokio::test]
async fn anonymous_subscribers_get_public_updates_with_the_flag() {
    let s = hub(&["--mercure-anonymous"]);
    let forged = bearer(&subscriber_with(STRANGER_KEY, &["*"]));
    let a = subscribe(&s, "topic=*", &[("authorization", &forged)])
        .await
        .err()
        .expect("an invalid token is refused, not taken for no token");
    assert_eq!(a.status, 401);
    assert_eq!(a.challenge(), Some("Bearer error=\"invalid_token\""));
    let mut sub = stream(&s, &form(&[("topic", BOOK1), ("topic", MARKER)]), &[]).await;
    let tok = publisher(&["*"]);
    publish_ok(
        &s,
        &tok,
        &[("topic", BOOK1), ("id", "public"), ("data", "p")],
    )
    .await;
    publish_ok(
        &s,
        &tok,
        &[("topic", BOOK1), ("id", "secret"), ("private", "on")],
    )
    .await;
    marker(&s, "m").await;
    assert_eq!(sub.ids_until("m").await, ["public", "m"]);
}

/// A private update reaches the subscribers whose token's `subscribe`
/// selectors match one of its topics (exact or template), and no other:
/// not an anonymous one, not one granted another topic, not one granted
/// nothing.
#[tokio::test]
async fn private_updates_reach_only_granted_subscribers() {
    let s = hub(&["--mercure-anonymous"]);
    let q = form(&[("topic", BOOK1), ("topic", MARKER)]);
    let who: &[(&str, Option<String>, bool)] = &[
        ("granted the topic", Some(subscriber(&[BOOK1])), true),
        (
            "granted a template",
            Some(subscriber(&["https://ex.com/books/{id}"])),
            true,
        ),
        ("granted *", Some(subscriber(&["*"])), true),
        ("granted another topic", Some(subscriber(&[BOOK2])), false),
        (
            "granted nothing",
            Some(sign(PUBLISHER_KEY, "JWT", json!({"sub": "x"}))),
            false,
        ),
        ("anonymous", None, false),
    ];
    let mut subs = Vec::new();
    for (_, tok, _) in who {
        subs.push(match tok {
            Some(t) => stream_as(&s, &q, t).await,
            None => stream(&s, &q, &[]).await,
        });
    }
    let pubtok = publisher(&["*"]);
    publish_ok(
        &s,
        &pubtok,
        &[
            ("topic", BOOK1),
            ("id", "p1"),
            ("private", ""),
            ("data", "s"),
        ],
    )
    .await;
    // Private to two topics, one of them granted: still seen.
    publish_ok(
        &s,
        &pubtok,
        &[
            ("topic", "https://ex.com/secret/9"),
            ("topic", BOOK1),
            ("id", "p2"),
            ("private", "1"),
        ],
    )
    .await;
    marker(&s, "m").await;
    for ((what, _, sees), sub) in who.iter().zip(&mut subs) {
        let want: &[&str] = if *sees { &["p1", "p2", "m"] } else { &["m"] };
        assert_eq!(sub.ids_until("m").await, want, "{what}");
    }
}

/// Private updates are not replayed to those who may not see them:
/// `earliest` and a resume by id give them only to a granted subscriber.
#[tokio::test]
async fn private_updates_are_not_replayed_to_others() {
    let s = hub(&["--mercure-anonymous"]);
    let tok = publisher(&["*"]);
    publish_ok(&s, &tok, &[("topic", BOOK1), ("id", "e1")]).await;
    publish_ok(&s, &tok, &[("topic", BOOK1), ("id", "e2"), ("private", "")]).await;
    publish_ok(&s, &tok, &[("topic", BOOK1), ("id", "e3")]).await;
    let granted = subscriber(&[BOOK1]);
    let other = subscriber(&[BOOK2]);
    let q = |from: &str| form(&[("topic", BOOK1), ("lastEventID", from)]);
    let cases: &[(&str, Option<&str>, &str, &[&str])] = &[
        ("anonymous", None, "earliest", &["e1", "e3"]),
        (
            "other topic",
            Some(other.as_str()),
            "earliest",
            &["e1", "e3"],
        ),
        (
            "granted",
            Some(granted.as_str()),
            "earliest",
            &["e1", "e2", "e3"],
        ),
        ("anonymous", None, "e1", &["e3"]),
        ("granted", Some(granted.as_str()), "e1", &["e2", "e3"]),
    ];
    for (what, tok, from, want) in cases {
        let mut sub = match tok {
            Some(t) => stream_as(&s, &q(from), t).await,
            None => stream(&s, &q(from), &[]).await,
        };
        assert_eq!(sub.ids_until("e3").await, *want, "{what} from {from}");
    }
}

/// An RFC 9068 access token (`typ: at+jwt`) with `authorization_details`
/// grants as the `mercure` claim does: `subscribe` details let private
/// updates through, `publish` details allow publishing their topics only.
#[tokio::test]
async fn authorization_details_tokens_work_like_the_mercure_claim() {
    let s = hub(&[]);
    let typed = |kind: &str, actions: &[&str], topics: Value| {
        sign(
            PUBLISHER_KEY,
            "at+jwt",
            json!({
                "sub": "alice",
                "authorization_details": [
                    {"type": "other", "actions": ["x"]},
                    {"type": kind, "actions": actions, "topics": topics}
                ]
            }),
        )
    };
    let detail = |actions: &[&str], topics: Value| typed("mercure", actions, topics);
    // The type the hub's own documentation mints.
    let long_type = typed(
        "https://mercure.rocks/authorization-detail",
        &["subscribe"],
        json!([{"match": BOOK1}]),
    );
    let exact = detail(
        &["subscribe"],
        json!([{"match": BOOK1, "matchType": "Exact"}]),
    );
    let pattern = detail(
        &["subscribe"],
        json!([{"match": "https://ex.com/books/:id", "matchType": "URLPattern"}]),
    );
    let elsewhere = detail(&["subscribe"], json!([{"match": BOOK2}]));
    let q = form(&[("topic", BOOK1), ("topic", MARKER)]);
    let mut subs = [
        stream_as(&s, &q, &exact).await,
        stream_as(&s, &q, &pattern).await,
        stream_as(&s, &q, &elsewhere).await,
        stream_as(&s, &q, &long_type).await,
    ];

    let can_publish = detail(&["publish"], json!([{"match": BOOK1}]));
    let only_subscribe = detail(&["subscribe"], json!([{"match": BOOK1}]));
    let a = publish(&s, &can_publish, &[("topic", BOOK2)]).await;
    assert_eq!(a.status, 403, "{}", a.body);
    let a = publish(&s, &only_subscribe, &[("topic", BOOK1)]).await;
    assert_eq!(a.status, 403, "{}", a.body);
    publish_ok(
        &s,
        &can_publish,
        &[("topic", BOOK1), ("id", "p1"), ("private", "")],
    )
    .await;
    marker(&s, "m").await;
    assert_eq!(subs[0].ids_until("m").await, ["p1", "m"], "Exact detail");
    assert_eq!(
        subs[1].ids_until("m").await,
        ["p1", "m"],
        "URLPattern detail"
    );
    assert_eq!(
        subs[2].ids_until("m").await,
        ["m"],
        "detail of another topic"
    );
    assert_eq!(
        subs[3].ids_until("m").await,
        ["p1", "m"],
        "type https://mercure.rocks/authorization-detail"
    );
}

/// A subscriber's token is read from the `Authorization` header, the
/// `authorization` query parameter, and the `__Secure-mercure_access_token`,
/// `mercureAuthorization` and `mercureAccessToken` cookies, in that order:
/// the first source present wins, even when a later one holds a better
/// token. A stream authorized from the query is not for shared caches.
#[tokio::test]
async fn subscriber_tokens_are_read_from_every_source() {
    let s = hub(&[]);
    let tok = subscriber(&[BOOK1]);
    let nothing = subscriber(&[]);
    let q = form(&[("topic", BOOK1), ("topic", MARKER)]);
    let with = |extra: &[(&str, &str)]| {
        let mut f = vec![("topic", BOOK1), ("topic", MARKER)];
        f.extend_from_slice(extra);
        form(&f)
    };
    let header = bearer(&tok);
    let cookie = |name: &str, t: &str| format!("theme=dark; {name}={t}; lang=fr");
    // What, the query, the headers, whether the private update comes.
    type Case<'a> = (&'a str, String, Vec<(&'a str, String)>, bool);
    let cases: Vec<Case> = vec![
        (
            "header",
            q.clone(),
            vec![("authorization", header.clone())],
            true,
        ),
        (
            "authorization=",
            with(&[("authorization", &tok)]),
            vec![],
            true,
        ),
        (
            "cookie __Secure-mercure_access_token",
            q.clone(),
            vec![("cookie", cookie("__Secure-mercure_access_token", &tok))],
            true,
        ),
        (
            "cookie mercureAuthorization",
            q.clone(),
            vec![("cookie", cookie("mercureAuthorization", &tok))],
            true,
        ),
        (
            "cookie mercureAccessToken",
            q.clone(),
            vec![("cookie", cookie("mercureAccessToken", &tok))],
            true,
        ),
        (
            "header before query",
            with(&[("authorization", &tok)]),
            vec![("authorization", bearer(&nothing))],
            false,
        ),
        (
            "query before cookie",
            with(&[("authorization", &nothing)]),
            vec![("cookie", cookie("mercureAuthorization", &tok))],
            false,
        ),
        (
            "header before cookie",
            q.clone(),
            vec![
                ("authorization", bearer(&nothing)),
                ("cookie", cookie("__Secure-mercure_access_token", &tok)),
            ],
            false,
        ),
        (
            "__Secure-mercure_access_token before mercureAuthorization",
            q.clone(),
            vec![(
                "cookie",
                format!("mercureAuthorization={tok}; __Secure-mercure_access_token={nothing}"),
            )],
            false,
        ),
        (
            "mercureAuthorization before mercureAccessToken",
            q.clone(),
            vec![(
                "cookie",
                format!("mercureAccessToken={tok}; mercureAuthorization={nothing}"),
            )],
            false,
        ),
    ];
    let mut subs = Vec::new();
    for (what, query, headers, _) in &cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        match subscribe(&s, query, &h).await {
            Ok(st) => subs.push(st),
            Err(a) => panic!("{what}: {} {}", a.status, a.body),
        }
    }
    let cache = subs[1].header("cache-control").unwrap_or_default();
    assert!(
        cache.contains("private"),
        "a token in the URL: Cache-Control {cache:?}"
    );
    // A bad header token is not made up for by a good cookie.
    let bad = subscribe(
        &s,
        &q,
        &[
            (
                "authorization",
                &bearer(&subscriber_with(STRANGER_KEY, &["*"])),
            ),
            ("cookie", &cookie("mercureAuthorization", &tok)),
        ],
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(bad.status, 401);

    publish_ok(
        &s,
        &publisher(&["*"]),
        &[("topic", BOOK1), ("id", "p1"), ("private", "")],
    )
    .await;
    marker(&s, "m").await;
    for ((what, _, _, sees), sub) in cases.iter().zip(&mut subs) {
        let want: &[&str] = if *sees { &["p1", "m"] } else { &["m"] };
        assert_eq!(sub.ids_until("m").await, want, "{what}");
    }
}

/// A stream opened with a token whose `exp` is a few seconds ahead ends by
/// then (it delivers until then); an expired token is refused outright.
#[tokio::test]
async fn a_stream_ends_when_its_token_expires() {
    let s = hub(&[]);
    let exp = now() + 3;
    let tok = sign(
        PUBLISHER_KEY,
        "JWT",
        json!({"exp": exp, "mercure": {"subscribe": ["*"]}}),
    );
    let mut sub = stream_as(&s, &form(&[("topic", MARKER)]), &tok).await;
    marker(&s, "m").await;
    assert_eq!(sub.ids_until("m").await, ["m"]);
    let deadline = Duration::from_secs(8);
    loop {
        match sub.next_within(deadline).await {
            Next::Item(_) => continue,
            Next::End => break,
            Next::Late => panic!("the stream outlived its token by {deadline:?}"),
        }
    }
    let ended = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        ended >= exp as f64 - 0.5,
        "ended at {ended}, before exp {exp}"
    );
    assert!(
        ended <= exp as f64 + 2.0,
        "ended at {ended}, well after exp {exp}"
    );

    let expired = sign(
        PUBLISHER_KEY,
        "JWT",
        json!({"exp": now() - 600, "mercure": {"subscribe": ["*"]}}),
    );
    let a = subscribe(&s, "topic=*", &[("authorization", &bearer(&expired))])
        .await
        .err()
        .expect("refused");
    assert_eq!(a.status, 401);
    assert_eq!(a.challenge(), Some("Bearer error=\"invalid_token\""));
}

/// With `--mercure-audience` and `--mercure-issuer`, tokens must name both
/// (for subscribing and publishing); without them, any `aud` and `iss` go.
#[tokio::test]
async fn audience_and_issuer_are_enforced_when_set() {
    const AUD: &str = "https://hub.example";
    const ISS: &str = "https://issuer.example";
    let strict = hub(&["--mercure-audience", AUD, "--mercure-issuer", ISS]);
    let lax = hub(&[]);
    let claims = |extra: Value| {
        let mut c = json!({"mercure": {"subscribe": ["*"], "publish": ["*"]}});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        sign(PUBLISHER_KEY, "JWT", c)
    };
    let cases: &[(&str, Value, bool)] = &[
        ("both", json!({"aud": AUD, "iss": ISS}), true),
        (
            "audience among others",
            json!({"aud": ["https://other.example", AUD], "iss": ISS}),
            true,
        ),
        ("no audience", json!({"iss": ISS}), false),
        (
            "another audience",
            json!({"aud": "https://other.example", "iss": ISS}),
            false,
        ),
        ("no issuer", json!({"aud": AUD}), false),
        (
            "another issuer",
            json!({"aud": AUD, "iss": "https://evil.example"}),
            false,
        ),
    ];
    for (what, extra, ok) in cases {
        let tok = claims(extra.clone());
        let sub = subscribe(&strict, "topic=*", &[("authorization", &bearer(&tok))]).await;
        let p = publish(&strict, &tok, &[("topic", BOOK1)]).await;
        if *ok {
            assert!(sub.is_ok(), "subscribe, {what}");
            assert_eq!(p.status, 200, "publish, {what}: {}", p.body);
        } else {
            let a = sub
                .err()
                .unwrap_or_else(|| panic!("subscribe, {what}: accepted"));
            assert_eq!(a.status, 401, "subscribe, {what}");
            assert_eq!(a.challenge(), Some("Bearer error=\"invalid_token\""));
            assert_eq!(p.status, 401, "publish, {what}: {}", p.body);
        }
        // Unchecked on a hub that configures neither.
        assert!(
            subscribe(&lax, "topic=*", &[("authorization", &bearer(&tok))])
                .await
                .is_ok(),
            "lax subscribe, {what}"
        );
        assert_eq!(
            publish(&lax, &tok, &[("topic", BOOK1)]).await.status,
            200,
            "lax publish, {what}"
        );
    }
}

/// With `--mercure-subscriber-jwt-key`, subscribers' tokens are verified
/// with that key and publishers' with the publisher key: neither token is
/// good for the other role.
#[tokio::test]
async fn a_separate_subscriber_key_splits_the_roles() {
    let s = hub(&["--mercure-subscriber-jwt-key", SUBSCRIBER_KEY]);
    let sub_tok = subscriber_with(SUBSCRIBER_KEY, &[BOOK1]);
    let pub_as_sub = subscriber_with(PUBLISHER_KEY, &[BOOK1]);
    let a = subscribe(&s, "topic=*", &[("authorization", &bearer(&pub_as_sub))])
        .await
        .err()
        .expect("a publisher-key token may not subscribe");
    assert_eq!(a.status, 401);
    assert_eq!(a.challenge(), Some("Bearer error=\"invalid_token\""));
    let sub_as_pub = sign(
        SUBSCRIBER_KEY,
        "JWT",
        json!({"mercure": {"publish": ["*"]}}),
    );
    let a = publish(&s, &sub_as_pub, &[("topic", BOOK1)]).await;
    assert_eq!(a.status, 401, "a subscriber-key token may not publish");
    assert_eq!(a.challenge(), Some("Bearer error=\"invalid_token\""));

    let mut sub = stream_as(&s, &form(&[("topic", BOOK1), ("topic", MARKER)]), &sub_tok).await;
    publish_ok(
        &s,
        &publisher(&["*"]),
        &[("topic", BOOK1), ("id", "p1"), ("private", "")],
    )
    .await;
    marker(&s, "m").await;
    assert_eq!(sub.ids_until("m").await, ["p1", "m"]);
}

/// `MERCURE_PUBLISHER_JWT_KEY` and `MERCURE_SUBSCRIBER_JWT_KEY` in the
/// environment turn the hub on as the flags do; with neither, the hub's
/// path is 404.
#[tokio::test]
async fn the_keys_may_come_from_the_environment() {
    let spawn = |env: &[(&str, &str)]| {
        let mut cmd = Command::new(process::BIN);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--engine", "memory"])
            .env("HERALD_LOG", "warn")
            .env_remove("MERCURE_PUBLISHER_JWT_KEY")
            .env_remove("MERCURE_SUBSCRIBER_JWT_KEY")
            .stdin(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Server::spawn(cmd)
    };
    let off = spawn(&[]);
    let tok = publisher(&["*"]);
    assert_eq!(publish(&off, &tok, &[("topic", BOOK1)]).await.status, 404);
    assert_eq!(
        subscribe(
            &off,
            "topic=*",
            &[("authorization", &bearer(&subscriber(&[])))]
        )
        .await
        .err()
        .expect("no hub")
        .status,
        404
    );

    let s = spawn(&[
        ("MERCURE_PUBLISHER_JWT_KEY", PUBLISHER_KEY),
        ("MERCURE_SUBSCRIBER_JWT_KEY", SUBSCRIBER_KEY),
    ]);
    let mut sub = stream_as(
        &s,
        &form(&[("topic", BOOK1)]),
        &subscriber_with(SUBSCRIBER_KEY, &[]),
    )
    .await;
    let id = publish_ok(&s, &tok, &[("topic", BOOK1), ("data", "env")]).await;
    assert_eq!(sub.ids_until(&id).await, [id.as_str()]);
    let a = subscribe(
        &s,
        "topic=*",
        &[("authorization", &bearer(&subscriber(&[])))],
    )
    .await
    .err()
    .expect("the subscriber key is the environment's");
    assert_eq!(a.status, 401);
}

/// RS256 and ES256 keys given as PEM (a file path, or the PEM text): tokens
/// signed with the matching private keys are accepted, HS256 ones refused.
#[tokio::test]
async fn pem_public_keys_verify_rs256_and_es256_tokens() {
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/../herald-auth/tests/keys/");
    let rsa_public = format!("{keys}rsa_public.pem");
    let ec_public = std::fs::read_to_string(format!("{keys}ec_public.pem")).unwrap();
    let rsa_private = std::fs::read(format!("{keys}rsa_private.pem")).unwrap();
    let ec_private = std::fs::read(format!("{keys}ec_private.pem")).unwrap();
    // PEM text starts with `-`: given as `--flag=VALUE`, it is not read as
    // a flag.
    let s = Server::memory(&[
        "--mercure-publisher-jwt-key",
        &rsa_public,
        &format!("--mercure-subscriber-jwt-key={ec_public}"),
    ]);
    let rs = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &json!({"mercure": {"publish": ["*"]}}),
        &EncodingKey::from_rsa_pem(&rsa_private).unwrap(),
    )
    .unwrap();
    let es = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &json!({"mercure": {"subscribe": [BOOK1]}}),
        &EncodingKey::from_ec_pem(&ec_private).unwrap(),
    )
    .unwrap();
    let mut sub = stream_as(&s, &form(&[("topic", BOOK1)]), &es).await;
    let id = publish_ok(&s, &rs, &[("topic", BOOK1), ("private", "")]).await;
    assert_eq!(sub.ids_until(&id).await, [id.as_str()]);
    let hs = publisher(&["*"]);
    let a = publish(&s, &hs, &[("topic", BOOK1)]).await;
    assert_eq!(a.status, 401, "an HS256 token against an RSA key");
    let a = subscribe(&s, "topic=*", &[("authorization", &bearer(&rs))])
        .await
        .err()
        .expect("an RS256 token against the EC subscriber key");
    assert_eq!(a.status, 401);
}

// ---------------------------------------------------------------------------
// Resuming

/// A subscriber resumes after the id of `Last-Event-ID`, else `lastEventID`,
/// else `last_event_id` (the header wins over the query); `earliest`
/// replays everything retained; the answer's `Last-Event-ID` says where it
/// resumed from. An unknown id starts live, answered `earliest`; without a
/// resume request the answer has no `Last-Event-ID`.
#[tokio::test]
async fn subscribers_resume_after_the_id_they_name() {
    let s = hub(&["--mercure-anonymous"]);
    let tok = publisher(&["*"]);
    let ids = ["urn:r:1", "[\"r\",2]", "urn:r:\"3\""];
    for id in ids {
        publish_ok(&s, &tok, &[("topic", "urn:r"), ("id", id)]).await;
    }
    let t = ("topic", "urn:r");
    // What, the Last-Event-ID header, the query, the id answered, the
    // ids replayed.
    type Case<'a> = (&'a str, Option<&'a str>, String, &'a str, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "header",
            Some(ids[0]),
            form(&[t]),
            ids[0],
            vec![ids[1], ids[2]],
        ),
        (
            "lastEventID",
            None,
            form(&[t, ("lastEventID", ids[0])]),
            ids[0],
            vec![ids[1], ids[2]],
        ),
        (
            "last_event_id",
            None,
            form(&[t, ("last_event_id", ids[1])]),
            ids[1],
            vec![ids[2]],
        ),
        (
            "header over lastEventID",
            Some(ids[1]),
            form(&[t, ("lastEventID", ids[0])]),
            ids[1],
            vec![ids[2]],
        ),
        (
            "header over last_event_id",
            Some(ids[1]),
            form(&[t, ("last_event_id", ids[0])]),
            ids[1],
            vec![ids[2]],
        ),
        (
            "lastEventID over last_event_id",
            None,
            form(&[t, ("last_event_id", ids[0]), ("lastEventID", ids[1])]),
            ids[1],
            vec![ids[2]],
        ),
        (
            "header earliest",
            Some("earliest"),
            form(&[t]),
            "earliest",
            ids.to_vec(),
        ),
        (
            "query earliest",
            None,
            form(&[t, ("lastEventID", "earliest")]),
            "earliest",
            ids.to_vec(),
        ),
    ];
    for (what, header, query, answered, want) in &cases {
        let h: Vec<(&str, &str)> = header.iter().map(|v| ("last-event-id", *v)).collect();
        let mut sub = stream(&s, query, &h).await;
        assert_eq!(sub.resumed_from(), Some(*answered), "{what}");
        assert_eq!(sub.ids_until(ids[2]).await, *want, "{what}");
    }

    let mut unknown = stream(&s, &form(&[t]), &[("last-event-id", "urn:never")]).await;
    assert_eq!(unknown.resumed_from(), Some("earliest"));
    let mut plain = stream(&s, &form(&[t]), &[]).await;
    assert_eq!(plain.resumed_from(), None);
    publish_ok(&s, &tok, &[("topic", "urn:r"), ("id", "urn:r:4")]).await;
    assert_eq!(
        unknown.event().await.id,
        "urn:r:4",
        "an unknown id starts live"
    );
    assert_eq!(plain.event().await.id, "urn:r:4", "no id starts live");
}

/// Resuming from a private update: a subscriber who may see it is answered
/// its id; one who may not is answered `earliest` (it learns nothing of
/// the update), and gets only what it may see after it.
#[tokio::test]
async fn resuming_from_a_private_update_one_may_not_see_answers_earliest() {
    let s = hub(&["--mercure-anonymous"]);
    let tok = publisher(&["*"]);
    publish_ok(&s, &tok, &[("topic", BOOK1), ("id", "v1")]).await;
    publish_ok(&s, &tok, &[("topic", BOOK1), ("id", "v2"), ("private", "")]).await;
    publish_ok(&s, &tok, &[("topic", BOOK1), ("id", "v3")]).await;
    let granted = subscriber(&["https://ex.com/books/{id}"]);
    let other = subscriber(&[BOOK2]);
    let q = form(&[("topic", BOOK1)]);
    let cases: &[(&str, Option<&str>, &str)] = &[
        ("granted", Some(granted.as_str()), "v2"),
        ("granted another topic", Some(other.as_str()), "earliest"),
        ("anonymous", None, "earliest"),
    ];
    for (what, tok, answered) in cases {
        let mut h = vec![("last-event-id", "v2")];
        let auth = tok.map(bearer);
        if let Some(a) = &auth {
            h.push(("authorization", a));
        }
        let mut sub = stream(&s, &q, &h).await;
        assert_eq!(sub.resumed_from(), Some(*answered), "{what}");
        assert_eq!(sub.ids_until("v3").await, ["v3"], "{what}");
    }
}

// ---------------------------------------------------------------------------
// Active subscriptions

/// The subscription events' topic for one selector (each variable encoded
/// once).
fn subscription_topic(match_type: &str, matcher: &str, subscriber: &str) -> String {
    // RFC 6570, 3.2.2: simple string expansion keeps RFC 3986 unreserved
    // characters and percent-encodes everything else.
    const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    format!(
        "/.well-known/mercure/subscriptions/{match_type}/{}/{}",
        utf8_percent_encode(matcher, COMPONENT),
        utf8_percent_encode(subscriber, COMPONENT)
    )
}

/// The selector, and the grant, of a watcher of subscription events.
const SUBSCRIPTIONS: &str = "/.well-known/mercure/subscriptions/{matchType}/{match}/{subscriber}";

/// Reads `sub` until the subscription event of `topic` with `active`, and
/// returns its document.
async fn subscription_event(sub: &mut Stream, topic: &str, active: bool) -> Value {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match sub.next_within(left).await {
            Next::Item(SseItem::Event(e)) => {
                let doc: Value = serde_json::from_str(&e.data)
                    .unwrap_or_else(|err| panic!("not JSON ({err}): {:?}", e.data));
                if doc["id"] == topic && doc["active"] == active {
                    return doc;
                }
                seen.push(doc);
            }
            Next::Item(_) => {}
            other => panic!("no {topic} active={active} ({other:?}); saw {seen:?}"),
        }
    }
}

/// With `--mercure-subscriptions`, a subscriber's arrival and departure are
/// private updates of `/.well-known/mercure/subscriptions/{matchType}/
/// {match}/{subscriber}`: `active` true, then false once it disconnects;
/// `subscriber` is the token's `sub` (a `urn:uuid:` without one), `payload`
/// the token's. A watcher granted those topics gets them; one that is not
/// does not.
#[tokio::test]
async fn subscription_events_announce_arrivals_and_departures() {
    let s = hub(&["--mercure-subscriptions"]);
    let watch_q = form(&[("topic", SUBSCRIPTIONS), ("topic", MARKER)]);
    let mut watcher = stream_as(&s, &watch_q, &subscriber(&[SUBSCRIPTIONS])).await;
    let mut bystander = stream_as(&s, &watch_q, &subscriber(&["https://ex.com/{any}"])).await;

    let payload = json!({"user": "https://ex.com/users/alice", "n": [1, 2]});
    let alice_tok = sign(
        PUBLISHER_KEY,
        "JWT",
        json!({"sub": "alice", "mercure": {"subscribe": [BOOK1], "payload": payload}}),
    );
    let alice = stream_as(&s, &form(&[("topic", BOOK1)]), &alice_tok).await;
    let topic = subscription_topic("Exact", BOOK1, "alice");
    let doc = subscription_event(&mut watcher, &topic, true).await;
    assert_eq!(
        doc,
        json!({
            "@context": "https://mercure.rocks/",
            "id": topic,
            "type": "Subscription",
            "matchType": "Exact",
            "match": BOOK1,
            "topic": BOOK1,
            "subscriber": "alice",
            "active": true,
            "payload": payload,
        })
    );

    let pattern = "https://ex.com/books/:id";
    let anon_tok = subscriber(&[]);
    let mut nameless = stream_as(&s, &form(&[("matchURLPattern", pattern)]), &anon_tok).await;
    let doc = loop {
        let e = watcher.event().await;
        let doc: Value = serde_json::from_str(&e.data).unwrap();
        if doc["matchType"] == "URLPattern" {
            break doc;
        }
    };
    let who = doc["subscriber"].as_str().unwrap().to_owned();
    assert_uuid_urn(&who);
    assert_eq!(doc["match"], pattern);
    assert_eq!(doc["active"], true);
    assert_eq!(doc["id"], subscription_topic("URLPattern", pattern, &who));
    assert!(
        doc.get("payload").is_none(),
        "no payload in the token: {doc}"
    );

    drop(alice);
    let gone = subscription_event(&mut watcher, &topic, false).await;
    assert_eq!(gone["subscriber"], "alice");
    assert_eq!(gone["payload"], payload);

    marker(&s, "m").await;
    assert_eq!(
        bystander.ids_until("m").await,
        ["m"],
        "a subscriber not granted the subscription topics gets none of them"
    );
    // The nameless subscriber's stream is still fine.
    publish_ok(&s, &publisher(&["*"]), &[("topic", BOOK2), ("id", "b2")]).await;
    assert_eq!(nameless.event().await.id, "b2");
}

/// The subscriptions API (`--mercure-subscriptions`): the collection, by
/// match type, by topic, one subscription (404 when not active), as
/// `application/ld+json` with the log's `lastEventID`; a subscriber token
/// granting the path is needed (401 without a token, 403 when it does not
/// grant it).
#[tokio::test]
async fn the_subscriptions_api_lists_active_subscriptions() {
    let s = hub(&["--mercure-subscriptions"]);
    let reader =
        subscriber(&["/.well-known/mercure/subscriptions{/matchType}{/match}{/subscriber}"]);
    let auth = bearer(&reader);
    let payload = json!({"role": "reader"});
    let alice_tok = sign(
        PUBLISHER_KEY,
        "JWT",
        json!({"sub": "alice", "mercure": {"subscribe": ["*"], "payload": payload}}),
    );
    let bob_tok = sign(PUBLISHER_KEY, "JWT", json!({"sub": "bob"}));
    let pattern = "https://ex.com/books/:id";
    let alice = stream_as(&s, &form(&[("topic", BOOK1)]), &alice_tok).await;
    let _bob = stream_as(&s, &form(&[("matchURLPattern", pattern)]), &bob_tok).await;
    let last = publish_ok(
        &s,
        &publisher(&["*"]),
        &[("topic", BOOK2), ("id", "urn:last")],
    )
    .await;

    let alice_path = subscription_topic("Exact", BOOK1, "alice");
    let bob_path = subscription_topic("URLPattern", pattern, "bob");
    let all = get(
        &s,
        "/.well-known/mercure/subscriptions",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(all.status, 200, "{}", all.body);
    let ct = all.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("application/ld+json"), "content type {ct:?}");
    assert_eq!(all.header("cache-control"), Some("must-revalidate"));
    assert!(has_link(&all.headers));
    let v = all.json();
    assert_eq!(v["@context"], "https://mercure.rocks/");
    assert_eq!(v["id"], "/.well-known/mercure/subscriptions");
    assert_eq!(v["type"], "Subscriptions");
    assert_eq!(v["lastEventID"], last);
    let ids = |v: &Value| -> Vec<String> {
        v["subscriptions"]
            .as_array()
            .unwrap_or_else(|| panic!("no subscriptions array: {v}"))
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut want = vec![alice_path.clone(), bob_path.clone()];
    want.sort();
    assert_eq!(ids(&v), want);
    let a = v["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == alice_path.as_str())
        .unwrap();
    assert_eq!(a["type"], "Subscription");
    assert_eq!(a["subscriber"], "alice");
    assert_eq!(a["topic"], BOOK1);
    assert_eq!(a["match"], BOOK1);
    assert_eq!(a["matchType"], "Exact");
    assert_eq!(a["active"], true);
    assert_eq!(a["payload"], payload);

    let by_type = get(
        &s,
        "/.well-known/mercure/subscriptions/URLPattern",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(by_type.status, 200, "{}", by_type.body);
    assert_eq!(ids(&by_type.json()), [bob_path.as_str()]);

    let by_topic_path = alice_path
        .rsplit_once('/')
        .map(|(p, _)| p.to_owned())
        .unwrap();
    let by_topic = get(&s, &by_topic_path, &[("authorization", &auth)]).await;
    assert_eq!(by_topic.status, 200, "{}", by_topic.body);
    let v = by_topic.json();
    assert_eq!(v["id"], by_topic_path);
    assert_eq!(ids(&v), [alice_path.as_str()]);

    let one = get(&s, &alice_path, &[("authorization", &auth)]).await;
    assert_eq!(one.status, 200, "{}", one.body);
    assert!(one
        .header("content-type")
        .unwrap_or_default()
        .starts_with("application/ld+json"));
    let v = one.json();
    assert_eq!(v["@context"], "https://mercure.rocks/");
    assert_eq!(v["id"], alice_path);
    assert_eq!(v["type"], "Subscription");
    assert_eq!(v["subscriber"], "alice");
    assert_eq!(v["lastEventID"], last);

    let unknown = subscription_topic("Exact", BOOK1, "nobody");
    assert_eq!(
        get(&s, &unknown, &[("authorization", &auth)]).await.status,
        404
    );

    let none = get(&s, "/.well-known/mercure/subscriptions", &[]).await;
    assert_eq!(none.status, 401, "{}", none.body);
    assert_eq!(none.challenge(), Some("Bearer"));
    let narrow = bearer(&subscriber(&[BOOK1]));
    let refused = get(
        &s,
        "/.well-known/mercure/subscriptions",
        &[("authorization", &narrow)],
    )
    .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(
        refused.challenge(),
        Some("Bearer error=\"insufficient_scope\"")
    );
    let foreign = bearer(&subscriber_with(STRANGER_KEY, &["*"]));
    let bad = get(&s, &alice_path, &[("authorization", &foreign)]).await;
    assert_eq!(bad.status, 401);

    // Once alice has gone, her subscription is no longer listed.
    drop(alice);
    let deadline = Instant::now() + WAIT;
    loop {
        let a = get(&s, &alice_path, &[("authorization", &auth)]).await;
        if a.status == 404 {
            break;
        }
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(
            Instant::now() < deadline,
            "alice is still listed after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Without `--mercure-subscriptions` the subscriptions paths are 404 and
/// no subscription event is published.
#[tokio::test]
async fn without_the_flag_there_is_no_subscriptions_api() {
    let s = hub(&[]);
    let auth = bearer(&subscriber(&["*"]));
    let mut watcher = stream(
        &s,
        &form(&[("topic", SUBSCRIPTIONS), ("topic", MARKER)]),
        &[("authorization", &auth)],
    )
    .await;
    let _alice = stream_as(&s, &form(&[("topic", BOOK1)]), &subscriber(&["*"])).await;
    for path in [
        "/.well-known/mercure/subscriptions".to_owned(),
        "/.well-known/mercure/subscriptions/Exact".to_owned(),
        subscription_topic("Exact", BOOK1, "alice"),
    ] {
        let a = get(&s, &path, &[("authorization", &auth)]).await;
        assert_eq!(a.status, 404, "{path}: {}", a.body);
    }
    marker(&s, "m").await;
    assert_eq!(watcher.ids_until("m").await, ["m"]);
}

// ---------------------------------------------------------------------------
// Cookies and origins

/// A publish authorized by a cookie must come from an origin given with
/// `--cors-origin` (its `Origin`, else its `Referer`'s): 400 otherwise. A
/// header token is not subject to it.
#[tokio::test]
async fn a_cookie_publish_needs_an_allowed_origin() {
    let tok = publisher(&["*"]);
    let cookie = format!("mercureAuthorization={tok}");
    let secure_cookie = format!("__Secure-mercure_access_token={tok}");
    let body = form(&[("topic", BOOK1), ("data", "c")]);

    let closed = hub(&[]);
    for origin in [None, Some("https://app.example")] {
        let mut h = vec![("cookie", cookie.as_str())];
        h.extend(origin.map(|o| ("origin", o)));
        let a = post(&closed, &h, &body).await;
        assert_eq!(
            a.status, 400,
            "no --cors-origin, Origin {origin:?}: {}",
            a.body
        );
    }
    // `*` allows no credentials, so no cookie publish either.
    let starred = hub(&["--cors-origin", "*"]);
    let a = post(
        &starred,
        &[("cookie", &cookie), ("origin", "https://app.example")],
        &body,
    )
    .await;
    assert_eq!(a.status, 400, "--cors-origin '*': {}", a.body);
    // Origins compare in the form browsers send them.
    let spelled = hub(&["--cors-origin", "https://App.Example/"]);
    let a = post(
        &spelled,
        &[("cookie", &cookie), ("origin", "https://app.example")],
        &body,
    )
    .await;
    assert_eq!(
        a.status, 200,
        "--cors-origin https://App.Example/: {}",
        a.body
    );

    let open = hub(&["--cors-origin", "https://app.example"]);
    let mut watcher = stream_as(&open, "topic=*", &subscriber(&[])).await;
    // What, the extra headers, the status expected.
    type Case<'a> = (&'a str, Fields<'a>, u16);
    let cases: &[Case] = &[
        ("allowed Origin", &[("origin", "https://app.example")], 200),
        (
            "allowed Origin, the other cookie",
            &[("origin", "https://app.example")],
            200,
        ),
        ("other Origin", &[("origin", "https://evil.example")], 400),
        ("no Origin", &[], 400),
        (
            "allowed Referer",
            &[("referer", "https://app.example/books?x=1")],
            200,
        ),
        (
            "other Referer",
            &[("referer", "https://evil.example/")],
            400,
        ),
    ];
    let mut accepted = Vec::new();
    for (i, (what, extra, want)) in cases.iter().enumerate() {
        let c = if i == 1 { &secure_cookie } else { &cookie };
        let mut h = vec![("cookie", c.as_str())];
        h.extend_from_slice(extra);
        let id = format!("c{i}");
        let a = post(&open, &h, &form(&[("topic", BOOK1), ("id", &id)])).await;
        assert_eq!(a.status, *want, "{what}: {}", a.body);
        if a.status == 200 {
            accepted.push(id);
        }
    }
    let a = post(
        &open,
        &[
            ("authorization", &bearer(&tok)),
            ("origin", "https://evil.example"),
        ],
        &form(&[("topic", BOOK1), ("id", "header")]),
    )
    .await;
    assert_eq!(a.status, 200, "a header token from any origin: {}", a.body);
    accepted.push("header".to_owned());
    assert_eq!(watcher.ids_until("header").await, accepted);
}

/// A publisher's token may come from the `authorization` query parameter
/// as a subscriber's does; the header wins over it.
#[tokio::test]
async fn publisher_tokens_may_come_from_the_query() {
    let s = hub(&[]);
    let tok = publisher(&["*"]);
    let body = form(&[("topic", BOOK1)]);
    let ct = ("content-type", "application/x-www-form-urlencoded");
    let path = format!("{HUB}?{}", form(&[("authorization", &tok)]));
    let a = read(send(&s, Method::POST, &path, &[ct], body.clone()).await).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let narrow = bearer(&publisher(&[BOOK2]));
    let a = read(
        send(
            &s,
            Method::POST,
            &path,
            &[ct, ("authorization", &narrow)],
            body,
        )
        .await,
    )
    .await;
    assert_eq!(
        a.status, 403,
        "the header's token is the one used: {}",
        a.body
    );
}

/// An id is not an idempotency key: two updates with one id are both
/// delivered, and resuming from that id resumes after the newer one.
#[tokio::test]
async fn an_id_given_twice_is_two_updates() {
    let s = hub(&["--mercure-anonymous"]);
    let tok = publisher(&["*"]);
    let mut sub = stream(&s, "topic=urn%3Ad", &[]).await;
    for data in ["first", "second"] {
        let id = publish_ok(
            &s,
            &tok,
            &[("topic", "urn:d"), ("id", "dup"), ("data", data)],
        )
        .await;
        assert_eq!(id, "dup");
    }
    publish_ok(&s, &tok, &[("topic", "urn:d"), ("id", "end")]).await;
    let got: Vec<(String, String)> = sub
        .until("end")
        .await
        .into_iter()
        .map(|e| (e.id, e.data))
        .collect();
    assert_eq!(
        got,
        [
            ("dup".to_owned(), "first".to_owned()),
            ("dup".to_owned(), "second".to_owned()),
            ("end".to_owned(), String::new()),
        ]
    );
    let mut resumed = stream(&s, "topic=urn%3Ad", &[("last-event-id", "dup")]).await;
    assert_eq!(resumed.resumed_from(), Some("dup"));
    assert_eq!(resumed.ids_until("end").await, ["end"]);
}

/// An idle stream gets `:` comments every `--keepalive`.
#[tokio::test]
async fn idle_streams_get_keepalive_comments() {
    let s = hub(&["--mercure-anonymous", "--keepalive", "200ms"]);
    let mut sub = stream(&s, "topic=*", &[]).await;
    let started = Instant::now();
    let mut comments = 0;
    while comments < 2 {
        match sub.next_within(WAIT).await {
            Next::Item(SseItem::Comment(_)) => comments += 1,
            Next::Item(SseItem::Retry(_)) => {}
            other => panic!("{other:?} on an idle stream"),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "two keepalives took {:?}",
        started.elapsed()
    );
}

/// A browser's `EventSource` sends its last event id UTF-8 encoded in the
/// `Last-Event-ID` header (WHATWG HTML, 9.2.4), and ids are any text the
/// publisher chose, non-ASCII included: such a reconnection must resume.
#[tokio::test]
async fn a_non_ascii_id_resumes_from_the_header() {
    let s = hub(&["--mercure-anonymous"]);
    let tok = publisher(&["*"]);
    publish_ok(&s, &tok, &[("topic", "urn:u"), ("id", "café-1")]).await;
    publish_ok(&s, &tok, &[("topic", "urn:u"), ("id", "after")]).await;
    let mut by_query = stream(
        &s,
        &form(&[("topic", "urn:u"), ("lastEventID", "café-1")]),
        &[],
    )
    .await;
    assert_eq!(by_query.ids_until("after").await, ["after"]);
    let mut by_header = match subscribe(&s, "topic=urn%3Au", &[("last-event-id", "café-1")]).await
    {
        Ok(st) => st,
        Err(a) => panic!("a UTF-8 Last-Event-ID: {} {}", a.status, a.body.trim()),
    };
    assert_eq!(
        by_header.headers.get("last-event-id").map(|v| v.as_bytes()),
        Some("café-1".as_bytes())
    );
    assert_eq!(by_header.ids_until("after").await, ["after"]);
}

/// With `--cors-origin`, a page of that origin may read the hub's stream
/// with credentials, and its resume and discovery headers.
#[tokio::test]
async fn a_page_of_an_allowed_origin_may_read_the_stream() {
    let s = hub(&[
        "--mercure-anonymous",
        "--cors-origin",
        "https://app.example",
    ]);
    let sub = stream(
        &s,
        "topic=*&lastEventID=earliest",
        &[("origin", "https://app.example")],
    )
    .await;
    assert_eq!(
        sub.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(sub.header("access-control-allow-credentials"), Some("true"));
    let exposed = sub
        .header("access-control-expose-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    for h in ["last-event-id", "link"] {
        assert!(
            exposed.split(',').any(|e| e.trim() == h),
            "{h} not exposed: {exposed:?}"
        );
    }
    let other = stream(&s, "topic=*", &[("origin", "https://evil.example")]).await;
    assert_eq!(other.header("access-control-allow-origin"), None);
}

/// The RFC 6750 `access_token` query parameter is not read, as the
/// Mercure hub does not read it (a token in a URL ends up in logs): a
/// subscriber or publisher presenting only that parameter has no token.
#[tokio::test]
async fn the_access_token_query_parameter_is_not_read() {
    let s = hub(&[]);
    let tok = subscriber(&[BOOK1]);
    let q = form(&[("topic", BOOK1), ("access_token", &tok)]);
    match subscribe(&s, &q, &[]).await {
        Ok(_) => panic!("a subscriber with only ?access_token= was accepted"),
        Err(a) => assert_eq!(a.status, 401, "{}", a.body.trim()),
    }
    let path = format!("{HUB}?{}", form(&[("access_token", &publisher(&["*"]))]));
    let a = read(
        send(
            &s,
            Method::POST,
            &path,
            &[("content-type", "application/x-www-form-urlencoded")],
            form(&[("topic", BOOK1), ("id", "p1")]),
        )
        .await,
    )
    .await;
    assert_eq!(
        a.status,
        401,
        "publish with ?access_token=: {}",
        a.body.trim()
    );
}

/// Two streams of one subscriber (one `sub`, two tabs) on one selector are
/// one subscription (the spec: the same `{subscriber}` for requests the hub
/// can correlate; hubs "MAY deduplicate subscriptions"): announced active
/// once, still active while either stream is open, and ended, in an event
/// and in the API, only when the last one closes.
#[tokio::test]
async fn two_streams_of_one_subscriber_are_one_subscription_until_both_end() {
    let s = hub(&["--mercure-subscriptions"]);
    let watch = "/.well-known/mercure/subscriptions/:type/:match/:subscriber";
    let mut watcher = stream_as(
        &s,
        &form(&[("matchURLPattern", watch)]),
        &subscriber(&["*"]),
    )
    .await;
    let alice = sign(PUBLISHER_KEY, "JWT", json!({"sub": "alice"}));
    let q = form(&[("topic", BOOK1)]);
    let first = stream_as(&s, &q, &alice).await;
    // The watcher's own subscription is announced too: skip it.
    let doc: Value = loop {
        let doc: Value = serde_json::from_str(&watcher.event().await.data).unwrap();
        if doc["subscriber"] == "alice" {
            break doc;
        }
    };
    assert_eq!(
        (doc["subscriber"].as_str(), doc["active"].as_bool()),
        (Some("alice"), Some(true))
    );
    let id = doc["id"].as_str().unwrap().to_owned();
    let second = stream_as(&s, &q, &alice).await;
    let auth = bearer(&subscriber(&["*"]));
    drop(first);
    // Neither the second opening nor the first closing is news.
    assert!(
        matches!(
            watcher.next_within(Duration::from_millis(500)).await,
            Next::Late
        ),
        "an event while the subscription stayed active"
    );
    let a = get(&s, &id, &[("authorization", &auth)]).await;
    assert_eq!(
        a.status, 200,
        "still active while a stream holds it: {}",
        a.body
    );
    drop(second);
    let doc: Value = serde_json::from_str(&watcher.event().await.data).unwrap();
    assert_eq!(
        (doc["id"].as_str(), doc["active"].as_bool()),
        (Some(id.as_str()), Some(false))
    );
    let mut gone = 0;
    for _ in 0..50 {
        gone = get(&s, &id, &[("authorization", &auth)]).await.status;
        if gone == 404 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gone, 404, "ended, yet listed as active");
}
