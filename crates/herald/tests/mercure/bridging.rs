//! Mercure and Herald's own API on one core (DESIGN.md, "Mercure
//! compatibility"; the `mercure` module of herald-http), against the real
//! `herald serve` binary:
//!
//! - a public Mercure update reaches Herald's SSE, WebSocket and long-poll
//!   subscribers of its topic (data as text, `type` as the event name); a
//!   private one reaches none of them;
//! - a Herald publish (HTTP or WebSocket) reaches Mercure subscribers: as a
//!   public update on an open server or under a `--public` pattern, else as
//!   a private one; Mercure and Herald publishes keep one order;
//! - the log topic `.well-known/mercure` and the hub's namespace are refused
//!   to every `/v1` request, whatever the credential;
//! - publisher ids survive a restart of the embedded engine, and two nodes
//!   on one Redis are one hub (delivery and resume across nodes);
//! - without a Mercure key there is no hub, and a `--mercure-*` flag
//!   without the publisher key refuses to start.
//!
//! Every wait is bounded ([`WAIT`]); "nothing arrives" is shown by a later
//! public marker arriving first, or by a short quiet read ([`QUIET`]).

use std::collections::VecDeque;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use herald_client::{Client, ClientError, ClientMessage, SseEvent, SseItem, SseParser, WsClient};
use herald_engine_redis::test_server::RedisServer;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::process::{self, Herald, ServeProcess, TempDir};

/// The Mercure publisher key (HS256, at least 32 bytes).
const MERCURE_KEY: &str = "bridging-mercure-key-0123456789abcdef";
/// Herald's own JWT secret, for the servers with authentication.
const HERALD_SECRET: &str = "bridging-herald-secret-0123456789abcdef";
/// Herald's publisher key (`--publish-key`).
const PUBLISH_KEY: &str = "bridging-publisher-key-0123456789";
/// The longest wait for something that should arrive.
const WAIT: Duration = Duration::from_secs(5);
/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------
// Servers, tokens and clients
// ---------------------------------------------------------------------------

/// `herald serve --engine memory` with a Mercure hub accepting anonymous
/// subscribers, plus `extra`.
fn hub(extra: &[&str]) -> ServeProcess {
    let mut args = vec![
        "--mercure-publisher-jwt-key",
        MERCURE_KEY,
        "--mercure-anonymous",
    ];
    args.extend_from_slice(extra);
    ServeProcess::memory(&args)
}

/// A Mercure HS256 token (signed with [`MERCURE_KEY`], `typ: JWT`, no
/// `exp`) with the `mercure` claim `{"publish", "subscribe"}`.
fn mercure_token(publish: &[&str], subscribe: &[&str]) -> String {
    let claims = json!({"mercure": {"publish": publish, "subscribe": subscribe}});
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(MERCURE_KEY.as_bytes()),
    )
    .expect("sign a Mercure token")
}

/// A publisher token for every topic.
fn publisher() -> String {
    mercure_token(&["*"], &[])
}

/// `application/x-www-form-urlencoded` (and query) encoding of one value:
/// every byte but RFC 3986's unreserved ones percent-encoded.
fn enc(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `k=v&...`, encoded.
fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The status and body text of a finished request.
async fn answer(r: http::Response<Incoming>) -> (u16, String) {
    let status = r.status().as_u16();
    let body = tokio::time::timeout(WAIT, r.into_body().collect())
        .await
        .expect("the answer's body in time")
        .expect("the answer's body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// `POST /.well-known/mercure` with `fields`, authorized by `token`:
/// the status and the body (the update's id on success).
async fn mercure_publish_raw(c: &Client, token: &str, fields: &[(&str, &str)]) -> (u16, String) {
    let r = tokio::time::timeout(
        WAIT,
        c.request(
            http::Method::POST,
            "/.well-known/mercure",
            &[
                ("authorization", &format!("Bearer {token}")),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            Bytes::from(form(fields)),
        ),
    )
    .await
    .expect("a Mercure publish answered in time")
    .expect("a Mercure publish");
    answer(r).await
}

/// A Mercure publish that must succeed: its id.
async fn mercure_publish(c: &Client, fields: &[(&str, &str)]) -> String {
    let (status, body) = mercure_publish_raw(c, &publisher(), fields).await;
    assert_eq!(status, 200, "Mercure publish {fields:?}: {body}");
    body
}

/// `POST /v1/publish` `{"topic","data","event"?}` that must succeed.
async fn herald_publish(c: &Client, topic: &str, data: Value, event: Option<&str>) -> String {
    tokio::time::timeout(WAIT, c.publish(topic, data, event))
        .await
        .expect("a Herald publish answered in time")
        .unwrap_or_else(|e| panic!("Herald publish to {topic}: {e}"))
}

/// An open Mercure subscription (`GET /.well-known/mercure`).
struct MercureSub {
    headers: http::HeaderMap,
    body: Incoming,
    parser: SseParser,
    queue: VecDeque<SseItem>,
}

impl MercureSub {
    /// Subscribes with `query` (selectors and resume parameters, encoded),
    /// `token` as the bearer token (anonymous when `None`) and an optional
    /// `Last-Event-ID` header. Panics unless the answer is 200.
    async fn open(c: &Client, query: &str, token: Option<&str>, last: Option<&str>) -> MercureSub {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("accept", "text/event-stream")];
        if let Some(b) = &bearer {
            headers.push(("authorization", b));
        }
        if let Some(id) = last {
            headers.push(("last-event-id", id));
        }
        let r = tokio::time::timeout(
            WAIT,
            c.request(
                http::Method::GET,
                &format!("/.well-known/mercure?{query}"),
                &headers,
                Bytes::new(),
            ),
        )
        .await
        .expect("a Mercure subscription answered in time")
        .expect("a Mercure subscription");
        if r.status() != 200 {
            let (status, body) = answer(r).await;
            panic!("Mercure subscribe ?{query}: {status} {body}");
        }
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(ct.starts_with("text/event-stream"), "content type {ct:?}");
        MercureSub {
            headers: r.headers().clone(),
            body: r.into_body(),
            parser: SseParser::new(),
            queue: VecDeque::new(),
        }
    }

    /// The answer's `Last-Event-ID` header, if any.
    fn last_event_id_header(&self) -> Option<&str> {
        self.headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
    }

    /// The next update within `limit`; `None` when none came (or the
    /// stream ended).
    async fn next_within(&mut self, limit: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            while let Some(item) = self.queue.pop_front() {
                if let SseItem::Event(e) = item {
                    return Some(e);
                }
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .ok()??
                .expect("the Mercure stream's body");
            if let Ok(data) = frame.into_data() {
                self.queue.extend(self.parser.feed(&data));
            }
        }
    }

    /// The next update, which must come within [`WAIT`].
    async fn next(&mut self) -> SseEvent {
        self.next_within(WAIT)
            .await
            .expect("a Mercure update within the wait")
    }

    /// Nothing more arrives for [`QUIET`].
    async fn expect_quiet(&mut self) {
        if let Some(e) = self.next_within(QUIET).await {
            panic!("unexpected Mercure update {e:?}");
        }
    }
}

/// Herald's SSE stream of `topic` (subscribed once the headers came).
async fn herald_sse(c: &Client, topic: &str) -> herald_client::SseStream {
    tokio::time::timeout(WAIT, c.sse(&[topic], None))
        .await
        .expect("Herald SSE answered in time")
        .expect("Herald SSE subscribe")
}

/// The next Herald SSE event within [`WAIT`] (comments skipped).
async fn sse_next(s: &mut herald_client::SseStream) -> SseEvent {
    tokio::time::timeout(WAIT, s.next_event())
        .await
        .expect("a Herald SSE event within the wait")
        .expect("the Herald SSE stream")
        .expect("the Herald SSE stream is open")
}

/// A Herald WebSocket subscribed to `topic` (its `subscribed` answer read).
async fn herald_ws(c: &Client, topic: &str) -> WsClient {
    let mut ws = tokio::time::timeout(WAIT, c.ws())
        .await
        .expect("WebSocket in time")
        .expect("WebSocket");
    ws.subscribe(topic, None).await.expect("send subscribe");
    let ok = ws_next_of(&mut ws, "subscribed").await;
    assert_eq!(ok["topic"], topic, "{ok}");
    ws
}

/// The next WebSocket message of type `ty` within [`WAIT`].
async fn ws_next_of(ws: &mut WsClient, ty: &str) -> Value {
    tokio::time::timeout(WAIT, ws.next_of_type(ty))
        .await
        .unwrap_or_else(|_| panic!("a WebSocket `{ty}` within the wait"))
        .expect("the WebSocket")
        .unwrap_or_else(|| panic!("the WebSocket closed before a `{ty}`"))
}

/// A long-poll cursor of `topic` from now (a poll that answers at once).
async fn poll_cursor(c: &Client, topic: &str) -> String {
    tokio::time::timeout(WAIT, c.poll(&[topic], None, Duration::ZERO))
        .await
        .expect("a poll in time")
        .expect("a poll")
        .cursor
}

/// One long poll after `cursor` (held at most 3 s): its events.
async fn poll_after(c: &Client, topic: &str, cursor: &str) -> (Vec<Value>, String) {
    let a = tokio::time::timeout(WAIT, c.poll(&[topic], Some(cursor), Duration::from_secs(3)))
        .await
        .expect("a long poll answered in time")
        .expect("a long poll");
    (a.events, a.cursor)
}

/// The status of a `GET path` (any body discarded).
async fn get_status(c: &Client, path: &str) -> u16 {
    let r = tokio::time::timeout(WAIT, c.request(http::Method::GET, path, &[], Bytes::new()))
        .await
        .expect("an answer in time")
        .expect("a GET");
    answer(r).await.0
}

/// The HTTP status of a refused Herald request.
fn refused_status(e: ClientError) -> u16 {
    match e {
        ClientError::Status { status, .. } => status.as_u16(),
        other => panic!("expected an error status, got {other}"),
    }
}

// ---------------------------------------------------------------------------
// 1. Mercure → Herald
// ---------------------------------------------------------------------------

/// A public Mercure update to `books/1` reaches Herald's SSE, WebSocket and
/// long-poll subscribers of `books/1` with its data as text (a JSON-looking
/// payload stays a string) and its `type` as the event name. A private
/// update to the same topic, published before a public marker, reaches none
/// of them: each one's next event is the marker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mercure_update_reaches_herald_subscribers_unless_private() {
    let s = hub(&[]);
    let c = &s.client;
    let topic = "books/1";
    let mut sse = herald_sse(c, topic).await;
    let mut ws = herald_ws(c, topic).await;
    let cursor = poll_cursor(c, topic).await;

    let data = r#"{"title":"Dune"}"#;
    let id = mercure_publish(
        c,
        &[
            ("topic", topic),
            ("data", data),
            ("type", "book.updated"),
            ("id", "m-1"),
        ],
    )
    .await;
    assert_eq!(id, "m-1", "the publisher's id, verbatim");

    let e = sse_next(&mut sse).await;
    assert_eq!((e.event.as_str(), e.data.as_str()), ("book.updated", data));
    let m = ws_next_of(&mut ws, "event").await;
    assert_eq!(m["topic"], topic, "{m}");
    assert_eq!(m["event"], "book.updated", "{m}");
    assert_eq!(m["data"], Value::String(data.into()), "data as text: {m}");
    let (events, cursor) = poll_after(c, topic, &cursor).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event"], "book.updated", "{events:?}");
    assert_eq!(events[0]["data"], Value::String(data.into()), "{events:?}");

    // Private, then a public marker: the marker comes first everywhere.
    mercure_publish(
        c,
        &[("topic", topic), ("data", "secret"), ("private", "on")],
    )
    .await;
    mercure_publish(c, &[("topic", topic), ("data", "marker")]).await;
    let e = sse_next(&mut sse).await;
    assert_eq!((e.event.as_str(), e.data.as_str()), ("message", "marker"));
    let m = ws_next_of(&mut ws, "event").await;
    assert_eq!(m["data"], "marker", "{m}");
    assert!(m.get("event").is_none(), "an update without type: {m}");
    let (events, _) = poll_after(c, topic, &cursor).await;
    let got: Vec<&Value> = events.iter().map(|e| &e["data"]).collect();
    assert_eq!(got, [&Value::String("marker".into())], "{events:?}");
    // Nor does the private one sit in the topic's history.
    let r = c
        .request(
            http::Method::GET,
            &format!("/v1/history?topic={}&after=earliest", enc(topic)),
            &[],
            Bytes::new(),
        )
        .await
        .expect("history");
    let (status, body) = answer(r).await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("secret"), "{body}");
    assert!(body.contains("marker"), "{body}");
}

// ---------------------------------------------------------------------------
// 2. Herald → Mercure
// ---------------------------------------------------------------------------

/// On an open server (no Herald authentication, loopback) a
/// `POST /v1/publish` to `orders/1` and a WebSocket publish reach an
/// anonymous Mercure subscriber of `orders/1` as public updates: data as
/// text (a JSON string unquoted, other JSON compact), the event name as
/// `event:`, a generated `urn:uuid:` id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herald_publish_on_an_open_server_reaches_anonymous_mercure_subscribers() {
    let s = hub(&[]);
    let c = &s.client;
    let mut sub = MercureSub::open(c, "topic=orders%2F1", None, None).await;

    herald_publish(c, "orders/1", json!("placed"), Some("status")).await;
    let e = sub.next().await;
    assert_eq!((e.event.as_str(), e.data.as_str()), ("status", "placed"));
    assert!(e.id.starts_with("urn:uuid:"), "a generated id: {e:?}");

    herald_publish(c, "orders/1", json!({"total": 12}), None).await;
    let e = sub.next().await;
    assert_eq!(
        (e.event.as_str(), e.data.as_str()),
        ("message", r#"{"total":12}"#)
    );

    // Herald's WebSocket publish is mirrored as well.
    let mut ws = tokio::time::timeout(WAIT, c.ws())
        .await
        .expect("WebSocket in time")
        .expect("WebSocket");
    ws.send_message(
        ClientMessage::Publish {
            topic: "orders/1".into(),
            event: Some("status".into()),
            data: json!("shipped"),
            id: None,
        },
        None,
    )
    .await
    .expect("send publish");
    ws_next_of(&mut ws, "published").await;
    let e = sub.next().await;
    assert_eq!((e.event.as_str(), e.data.as_str()), ("status", "shipped"));

    // Another topic's publish is not selected.
    herald_publish(c, "orders/2", json!("other"), None).await;
    sub.expect_quiet().await;
}

/// With `--jwt-secret` and `--public 'news/**'`: a publish to `orders/1`
/// (not covered by a public pattern) is mirrored as a private update, which
/// an anonymous Mercure subscriber never gets and a subscriber whose token
/// grants `subscribe` on `orders/1` does; a publish to `news/1` is public
/// and reaches both. A WebSocket publish (with the publisher key) follows
/// the same rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_publishes_are_private_unless_readable_without_a_credential() {
    let s = hub(&[
        "--jwt-secret",
        HERALD_SECRET,
        "--publish-key",
        PUBLISH_KEY,
        "--public",
        "news/**",
    ]);
    let plain = &s.client;
    let herald = s.client.clone().with_token(PUBLISH_KEY);
    let query = "topic=orders%2F1&topic=news%2F1";
    let mut anonymous = MercureSub::open(plain, query, None, None).await;
    let granted = mercure_token(&[], &["orders/1"]);
    let mut allowed = MercureSub::open(plain, query, Some(&granted), None).await;
    let other = mercure_token(&[], &["orders/2"]);
    let mut not_allowed = MercureSub::open(plain, query, Some(&other), None).await;

    herald_publish(&herald, "orders/1", json!("private order"), None).await;
    herald_publish(&herald, "news/1", json!("public news"), None).await;

    let e = allowed.next().await;
    assert_eq!(e.data, "private order", "the token grants orders/1");
    assert_eq!(allowed.next().await.data, "public news");
    for sub in [&mut anonymous, &mut not_allowed] {
        let e = sub.next().await;
        assert_eq!(e.data, "public news", "the private update was skipped");
    }

    // A WebSocket publish, same rule.
    let mut ws = tokio::time::timeout(WAIT, herald.ws())
        .await
        .expect("WebSocket in time")
        .expect("WebSocket");
    for (topic, data) in [("orders/1", "ws order"), ("news/1", "ws news")] {
        ws.send_message(
            ClientMessage::Publish {
                topic: topic.into(),
                event: None,
                data: json!(data),
                id: None,
            },
            None,
        )
        .await
        .expect("send publish");
        ws_next_of(&mut ws, "published").await;
    }
    assert_eq!(allowed.next().await.data, "ws order");
    assert_eq!(allowed.next().await.data, "ws news");
    assert_eq!(anonymous.next().await.data, "ws news");
    assert_eq!(not_allowed.next().await.data, "ws news");
    for sub in [&mut allowed, &mut anonymous, &mut not_allowed] {
        sub.expect_quiet().await;
    }

    // Replayed from the log, the private updates stay private.
    let mut replay =
        MercureSub::open(plain, &format!("{query}&lastEventID=earliest"), None, None).await;
    assert_eq!(replay.next().await.data, "public news");
    assert_eq!(replay.next().await.data, "ws news");
    replay.expect_quiet().await;
}

/// Mercure and Herald publishes to one topic, interleaved, reach a
/// Mercure subscriber (and Herald's SSE subscriber) in publish order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_mercure_and_herald_publishes_keep_their_order() {
    let s = hub(&[]);
    let c = &s.client;
    let topic = "https://example.com/feeds/1";
    let mut mercure = MercureSub::open(c, &format!("topic={}", enc(topic)), None, None).await;
    let mut sse = herald_sse(c, topic).await;
    const N: usize = 20;
    for i in 0..N {
        if i % 2 == 0 {
            let n = i.to_string();
            let id = format!("o-{i}");
            mercure_publish(c, &[("topic", topic), ("data", &n), ("id", &id)]).await;
        } else {
            herald_publish(c, topic, json!(i), None).await;
        }
    }
    let mut got = Vec::new();
    for _ in 0..N {
        let e = mercure.next().await;
        if let Some(i) = e.id.strip_prefix("o-") {
            assert_eq!(i, e.data, "the publisher's id goes with its update");
        }
        got.push(e.data);
    }
    let want: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    assert_eq!(got, want, "Mercure subscriber");
    let mut got = Vec::new();
    for _ in 0..N {
        got.push(sse_next(&mut sse).await.data);
    }
    assert_eq!(got, want, "Herald SSE subscriber");
    mercure.expect_quiet().await;
}

// ---------------------------------------------------------------------------
// 3. The reserved log
// ---------------------------------------------------------------------------

/// The log topic `.well-known/mercure` and the hub's namespace are refused
/// (403, WebSocket close 4003) to `/v1/sse`, a WebSocket subscribe,
/// `/v1/poll`, `/v1/history` and `/v1/publish`, with the publisher key on a
/// server with authentication and on an open server; nothing a refused
/// publish carried lands in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_topic_is_refused_to_every_v1_request() {
    let secured = hub(&["--jwt-secret", HERALD_SECRET, "--publish-key", PUBLISH_KEY]);
    let open = hub(&[]);
    let servers = [
        (
            "publisher key",
            &secured,
            secured.client.clone().with_token(PUBLISH_KEY),
        ),
        ("open server", &open, open.client.clone()),
    ];
    for (what, server, c) in &servers {
        for topic in [
            ".well-known/mercure",
            "/.well-known/mercure",
            ".well-known/mercure/subscriptions",
            "/.well-known/mercure/subscriptions/x",
        ] {
            let cell = format!("{what}, {topic}");
            let e = tokio::time::timeout(WAIT, c.sse(&[topic], None))
                .await
                .expect("in time");
            assert_eq!(
                refused_status(e.err().expect("SSE refused")),
                403,
                "SSE {cell}"
            );

            let e = tokio::time::timeout(WAIT, c.poll(&[topic], None, Duration::ZERO))
                .await
                .expect("in time");
            assert_eq!(
                refused_status(e.expect_err("poll refused")),
                403,
                "poll {cell}"
            );

            let path = format!("/v1/history?topic={}", enc(topic));
            assert_eq!(get_status(c, &path).await, 403, "history {cell}");
            let path = format!("/v1/history?topic={}&after=earliest", enc(topic));
            assert_eq!(get_status(c, &path).await, 403, "history after {cell}");

            let body = json!({"topic": topic, "data": {"id": "forged", "topics": ["x"], "data": "forged"}});
            let (status, v) =
                tokio::time::timeout(WAIT, c.publish_raw(body.to_string(), "application/json"))
                    .await
                    .expect("in time")
                    .expect("publish answered");
            assert_eq!(status.as_u16(), 403, "publish {cell}: {v}");

            let mut ws = tokio::time::timeout(WAIT, c.ws())
                .await
                .expect("WebSocket in time")
                .expect("WebSocket");
            ws.subscribe(topic, None).await.expect("send subscribe");
            let closed = ws_next_of(&mut ws, "close").await;
            assert_eq!(closed["code"], 4003, "WebSocket subscribe {cell}: {closed}");
        }
        // The log holds nothing: a subscriber of every topic replaying
        // from the earliest update sees only the marker published now.
        mercure_publish(&server.client, &[("topic", "x"), ("data", "marker")]).await;
        let all = mercure_token(&[], &["*"]);
        let mut log = MercureSub::open(
            &server.client,
            "topic=*&lastEventID=earliest",
            Some(&all),
            None,
        )
        .await;
        assert_eq!(log.next().await.data, "marker", "{what}");
        log.expect_quiet().await;
    }
}

// ---------------------------------------------------------------------------
// 4. Durable ids (embedded engine)
// ---------------------------------------------------------------------------

/// On the embedded engine (the default), updates published with ids `a1`,
/// `a2`, `a3` survive a graceful restart on the same data dir: a
/// subscriber with `Last-Event-ID: a1` gets `a2`, `a3` (ids verbatim) and
/// the response header `Last-Event-ID: a1`; `lastEventID=earliest` replays
/// all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_ids_survive_a_restart_of_the_embedded_engine() {
    let dir = TempDir::new("mercure-ids");
    let data = dir.path().join("data");
    let flags = [
        "--mercure-publisher-jwt-key",
        MERCURE_KEY,
        "--mercure-anonymous",
    ];
    let herald = Herald::start(&data, &flags);
    let c = Client::new(&herald.url).unwrap();
    for (id, text) in [("a1", "one"), ("a2", "two"), ("a3", "three")] {
        let got = mercure_publish(&c, &[("topic", "docs/1"), ("id", id), ("data", text)]).await;
        assert_eq!(got, id);
    }
    assert!(herald.sigterm().success(), "graceful stop");

    let herald = Herald::start(&data, &flags);
    let c = Client::new(&herald.url).unwrap();
    let mut sub = MercureSub::open(&c, "topic=docs%2F1", None, Some("a1")).await;
    assert_eq!(sub.last_event_id_header(), Some("a1"));
    for (id, text) in [("a2", "two"), ("a3", "three")] {
        let e = sub.next().await;
        assert_eq!((e.id.as_str(), e.data.as_str()), (id, text));
    }
    sub.expect_quiet().await;

    let mut all = MercureSub::open(&c, "topic=docs%2F1&lastEventID=earliest", None, None).await;
    assert_eq!(all.last_event_id_header(), Some("earliest"));
    for (id, text) in [("a1", "one"), ("a2", "two"), ("a3", "three")] {
        let e = all.next().await;
        assert_eq!((e.id.as_str(), e.data.as_str()), (id, text));
    }
    all.expect_quiet().await;
    assert!(herald.sigterm().success());
}

// ---------------------------------------------------------------------------
// 5. Two nodes on Redis
// ---------------------------------------------------------------------------

/// Two `herald serve --engine redis` on one (throw-away) Redis are one
/// hub: a Mercure subscriber on node B gets a Mercure publish and a Herald
/// `/v1/publish` made on node A, in order; after more publishes on A it
/// resumes on B with `Last-Event-ID` (a Herald update's generated id, then
/// a publisher's id) exactly where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_redis_are_one_mercure_hub() {
    let redis = RedisServer::start();
    let url = redis.url();
    let node = || {
        let mut cmd = Command::new(process::BIN);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--engine", "redis"])
            .args(["--redis-url", &url, "--redis-prefix", "mercure:"])
            .args([
                "--mercure-publisher-jwt-key",
                MERCURE_KEY,
                "--mercure-anonymous",
            ])
            .env("HERALD_LOG", "warn")
            .stdin(Stdio::null())
            .stderr(Stdio::null());
        ServeProcess::spawn(cmd)
    };
    let a = node();
    let b = node();
    let query = "topic=rooms%2F1";
    let mut sub = MercureSub::open(&b.client, query, None, None).await;

    mercure_publish(
        &a.client,
        &[("topic", "rooms/1"), ("id", "r1"), ("data", "one")],
    )
    .await;
    herald_publish(&a.client, "rooms/1", json!("two"), None).await;
    let e = sub.next().await;
    assert_eq!((e.id.as_str(), e.data.as_str()), ("r1", "one"));
    let e = sub.next().await;
    assert_eq!(e.data, "two");
    let herald_id = e.id;
    assert!(herald_id.starts_with("urn:uuid:"), "{herald_id}");
    sub.expect_quiet().await;
    drop(sub);

    mercure_publish(
        &a.client,
        &[("topic", "rooms/1"), ("id", "r3"), ("data", "three")],
    )
    .await;
    herald_publish(&a.client, "rooms/1", json!("four"), None).await;

    let mut resumed = MercureSub::open(&b.client, query, None, Some(&herald_id)).await;
    assert_eq!(resumed.last_event_id_header(), Some(herald_id.as_str()));
    let e = resumed.next().await;
    assert_eq!((e.id.as_str(), e.data.as_str()), ("r3", "three"));
    assert_eq!(resumed.next().await.data, "four");
    resumed.expect_quiet().await;

    let mut from_r1 =
        MercureSub::open(&b.client, &format!("{query}&lastEventID=r1"), None, None).await;
    assert_eq!(from_r1.last_event_id_header(), Some("r1"));
    let got: Vec<String> = [
        from_r1.next().await,
        from_r1.next().await,
        from_r1.next().await,
    ]
    .into_iter()
    .map(|e| e.data)
    .collect();
    assert_eq!(got, ["two", "three", "four"]);
    from_r1.expect_quiet().await;
}

// ---------------------------------------------------------------------------
// 6. Without a Mercure key
// ---------------------------------------------------------------------------

/// Without a Mercure key there is no hub: `/.well-known/mercure` answers
/// 404 (subscribe and publish), and `/v1/publish` works as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_mercure_key_there_is_no_hub() {
    let s = ServeProcess::memory(&[]);
    let c = &s.client;
    assert_eq!(get_status(c, "/.well-known/mercure?topic=x").await, 404);
    let (status, body) =
        mercure_publish_raw(c, &publisher(), &[("topic", "x"), ("data", "d")]).await;
    assert_eq!(status, 404, "{body}");

    let mut sse = herald_sse(c, "x").await;
    let id = herald_publish(c, "x", json!("as before"), None).await;
    let e = sse_next(&mut sse).await;
    assert_eq!((e.id.as_str(), e.data.as_str()), (id.as_str(), "as before"));
}

/// `--mercure-anonymous` without `--mercure-publisher-jwt-key` refuses to
/// start, with a non-zero exit and a message naming the missing flag.
#[test]
fn a_mercure_flag_without_the_publisher_key_refuses_to_start() {
    let dir = TempDir::new("mercure-refusal");
    let refused = match Herald::try_start(
        &dir.path().join("data"),
        &["--engine", "memory", "--mercure-anonymous"],
    ) {
        Ok(_) => panic!("started without --mercure-publisher-jwt-key"),
        Err(r) => r,
    };
    assert!(
        refused.status.is_some_and(|s| !s.success()),
        "exited with a failure: {:?}",
        refused.status
    );
    assert!(
        refused.stderr.contains("--mercure-publisher-jwt-key"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("--mercure-anonymous"),
        "{}",
        refused.stderr
    );
}

/// An id further back than the newest few hundred updates is found through
/// the id index, which a restart of the embedded engine fills again from
/// the retained history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_id_is_found_after_a_restart() {
    let dir = TempDir::new("mercure-index");
    let data = dir.path().join("data");
    let flags = [
        "--mercure-publisher-jwt-key",
        MERCURE_KEY,
        "--mercure-anonymous",
    ];
    let herald = Herald::start(&data, &flags);
    let c = Client::new(&herald.url).unwrap();
    mercure_publish(&c, &[("topic", "old/1"), ("id", "first"), ("data", "0")]).await;
    for i in 1..=600 {
        let n = i.to_string();
        mercure_publish(
            &c,
            &[("topic", "old/1"), ("id", &format!("u{i}")), ("data", &n)],
        )
        .await;
    }
    assert!(herald.sigterm().success(), "graceful stop");

    let herald = Herald::start(&data, &flags);
    let c = Client::new(&herald.url).unwrap();
    // The index reads the history in the background: give it a moment.
    let deadline = std::time::Instant::now() + WAIT;
    let mut sub = loop {
        let sub = MercureSub::open(&c, "topic=old%2F1", None, Some("first")).await;
        if sub.last_event_id_header() == Some("first") || std::time::Instant::now() > deadline {
            break sub;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(sub.last_event_id_header(), Some("first"));
    for i in 1..=3 {
        let e = sub.next().await;
        assert_eq!(
            (e.id.as_str(), e.data.as_str()),
            (format!("u{i}").as_str(), i.to_string().as_str())
        );
    }
    // An id nobody published: live from now, and the header says so.
    let unknown = MercureSub::open(&c, "topic=old%2F1", None, Some("never")).await;
    assert_eq!(unknown.last_event_id_header(), Some("earliest"));
    assert!(herald.sigterm().success());
}

/// What an attack on the bridge found, closed: a topic whose policy has a
/// subscribe hook is copied as private (the hook may refuse anyone, so
/// `--public` alone does not make it public); an ephemeral topic is not
/// copied at all (live only on Herald's side, so not kept in the log); and
/// a Mercure publisher cannot write where only Herald writes (LLM streams,
/// the admin stats), the publisher key's own limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_keeps_herald_topic_policies() {
    let dir = TempDir::new("mercure-policies");
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        "[[topics]]\npattern = \"hooked/**\"\nsubscribe_hook = true\n\n\
         [[topics]]\npattern = \"cursors/**\"\nhistory = 0\n",
    )
    .unwrap();
    let s = hub(&[
        "--config",
        config.to_str().unwrap(),
        "--jwt-secret",
        HERALD_SECRET,
        "--publish-key",
        PUBLISH_KEY,
        "--public",
        "**",
        "--hook-url",
        "http://127.0.0.1:9/hook",
        "--hook-secret",
        "bridging-hook-secret-0123456789abcdef",
    ]);
    let herald = s.client.clone().with_token(PUBLISH_KEY);
    let mut anonymous = MercureSub::open(&s.client, "topic=*", None, None).await;
    herald_publish(&herald, "hooked/secret", json!("HOOK-PROTECTED"), None).await;
    herald_publish(&herald, "cursors/a", json!("EPHEMERAL"), None).await;
    herald_publish(&herald, "news/1", json!("marker"), None).await;
    let e = anonymous.next().await;
    assert_eq!(
        e.data, "marker",
        "neither the hooked nor the ephemeral topic reached it"
    );
    let mut replay = MercureSub::open(&s.client, "topic=*&lastEventID=earliest", None, None).await;
    assert_eq!(
        replay.next().await.data,
        "marker",
        "nor the replay of the log"
    );
    let everything = mercure_token(&[], &["*"]);
    let mut granted = MercureSub::open(
        &s.client,
        "topic=*&lastEventID=earliest",
        Some(&everything),
        None,
    )
    .await;
    let seen: Vec<String> = [granted.next().await, granted.next().await]
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(
        seen,
        ["HOOK-PROTECTED", "marker"],
        "private, not lost; the ephemeral one not kept"
    );

    for topic in ["llm/abc", "herald/admin/stats"] {
        let (status, body) =
            mercure_publish_raw(&s.client, &publisher(), &[("topic", topic), ("data", "x")]).await;
        assert_eq!(status, 403, "Mercure publish to {topic}: {body}");
    }
}

/// A publisher reusing another topic's update id cannot move that topic's
/// subscribers: they resume after the newest update with that id they
/// would have received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_id_does_not_move_other_subscribers() {
    let s = hub(&[]);
    for (id, data) in [("W-1", "v1"), ("W-2", "v2"), ("W-3", "v3")] {
        mercure_publish(
            &s.client,
            &[("topic", "victim"), ("id", id), ("data", data)],
        )
        .await;
    }
    let attacker = mercure_token(&["attacker/{x}"], &[]);
    let (status, body) = mercure_publish_raw(
        &s.client,
        &attacker,
        &[("topic", "attacker/1"), ("id", "W-1"), ("data", "forged")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut sub = MercureSub::open(&s.client, "topic=victim", None, Some("W-1")).await;
    assert_eq!(sub.last_event_id_header(), Some("W-1"));
    assert_eq!(sub.next().await.id, "W-2");
    assert_eq!(sub.next().await.id, "W-3");
}

/// The limits an attack on the endpoint asked for: `earliest` is not an
/// id; an update's copies are bounded in number and bytes; a caller
/// without a token is refused before any URL pattern is compiled, and a
/// subscription holds at most 8 of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_bounds_what_one_request_costs() {
    let s = ServeProcess::memory(&[
        "--mercure-publisher-jwt-key",
        MERCURE_KEY,
        "--max-body",
        "100000",
    ]);
    let c = &s.client;
    let (status, _) =
        mercure_publish_raw(c, &publisher(), &[("topic", "a"), ("id", "earliest")]).await;
    assert_eq!(status, 400, "`earliest` as an id");
    let many: Vec<String> = (0..65).map(|i| format!("t/{i}")).collect();
    let fields: Vec<(&str, &str)> = many.iter().map(|t| ("topic", t.as_str())).collect();
    let (status, _) = mercure_publish_raw(c, &publisher(), &fields).await;
    assert_eq!(status, 400, "65 topics");
    let data = "x".repeat(90_000);
    let mut fields: Vec<(&str, &str)> = many[..5].iter().map(|t| ("topic", t.as_str())).collect();
    fields.push(("data", &data));
    let (status, _) = mercure_publish_raw(c, &publisher(), &fields).await;
    assert_eq!(status, 413, "90 kB × 6 copies over 4 × --max-body");

    let patterns: String = (0..64)
        .map(|i| format!("matchURLPattern=%2F{i}&"))
        .collect();
    assert_eq!(
        get_status(c, &format!("/.well-known/mercure?{patterns}")).await,
        401
    );
    let nine: String = (0..9).map(|i| format!("matchURLPattern=%2F{i}&")).collect();
    let (status, _) = {
        let token = mercure_token(&[], &["*"]);
        let r = c
            .request(
                http::Method::GET,
                &format!("/.well-known/mercure?{nine}"),
                &[("authorization", &format!("Bearer {token}"))],
                Bytes::new(),
            )
            .await
            .expect("subscribe");
        answer(r).await
    };
    assert_eq!(status, 400, "nine URL patterns");
}
