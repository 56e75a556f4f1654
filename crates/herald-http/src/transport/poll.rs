//! `GET /v1/poll?topic=A&cursor=...&timeout=25`: long polling.
//!
//! Answers at once with the events after the cursor (at most `poll_batch`
//! events and `poll_max_bytes` of event JSON, but always at least one
//! event), otherwise holds the request, with no thread and no timer loop of its own,
//! until an event arrives or the timeout passes. The answer's `cursor` names
//! every topic of the poll, so the next poll continues exactly: nothing is
//! lost between two polls, even while no poll is open. Without a cursor the
//! poll starts at its starting point (`since=earliest`, `since=latest`,
//! `history=N`; from now without one) and the answer's cursor is where to
//! continue.
//!
//! The answer is a body of known length made of the events' shared JSON
//! frames, written piece by piece: a client that does not read holds at most
//! one answer's worth of events (which the hub keeps anyway), never a copy.
//! On the HTTP/1.1 direct path a held poll whose client half-closes (shuts
//! down its sending side) is answered at once with what there is, and the
//! connection then closes.
//!
//! What a held poll costs: on a server that writes the head only once the
//! body has something ([`ConnectionHandle::defers_head`], herald-server's
//! HTTP/1.1 direct path), the handler returns at once with a body that
//! waits, so a held poll keeps its subscription, its batch and its timer,
//! not the request and the handling around it.

use std::time::Duration;

use axum::extract::State;
use std::net::IpAddr;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herald_auth::Action;
use herald_core::wire::poll::{encode_parts, frame_cost};
use herald_core::{Cursor, Delivery, Subscription, Transport};
use http_body::{Frame, SizeHint};
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::{param, subscribe_all, topics_param};
use crate::auth::{authenticate, authorize_all};
use crate::connection::{ConnectionHandle, WriteDeadline};
use crate::error::ApiError;
use crate::AppState;

pub(crate) async fn handler(
    State(app): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    conn: Option<axum::Extension<ConnectionHandle>>,
    body: axum::body::Body,
) -> Response {
    let conn = conn.map(|c| c.0);
    let peer = conn.as_ref().map(|c| c.peer.ip());
    let defer = conn.as_ref().is_some_and(|c| c.defers_head);
    let read_closed = conn.and_then(|c| c.read_closed);
    // The poll's span (`topics` once they are read), linked to the publish
    // of each traced event it answers with.
    let span = tracing::debug_span!(
        parent: None,
        "poll",
        transport = "poll",
        topics = tracing::field::Empty,
    );
    let polled = poll(app, headers, uri, body, peer, read_closed, defer);
    match tracing::Instrument::instrument(polled, span).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn parse_timeout(v: Option<&str>, default: Duration, max: Duration) -> Result<Duration, ApiError> {
    let Some(v) = v else {
        return Ok(default.min(max));
    };
    let secs: f64 =
        v.trim().trim_end_matches('s').parse().map_err(|_| {
            ApiError::bad_request("invalid_timeout", "timeout is a number of seconds")
        })?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(ApiError::bad_request(
            "invalid_timeout",
            "timeout is a number of seconds",
        ));
    }
    Ok(Duration::from_secs_f64(secs.min(max.as_secs_f64())))
}

async fn poll(
    app: AppState,
    headers: HeaderMap,
    uri: Uri,
    body: axum::body::Body,
    peer: Option<IpAddr>,
    read_closed: Option<crate::ReadClosed>,
    defer: bool,
) -> Result<Response, ApiError> {
    super::refuse_content(&headers, body, app.config.body_timeout).await?;
    // Strict decoding: a topic that is not UTF-8 is refused, never replaced.
    let query = crate::input::Query::parse(uri.query())?;
    let pairs = query.pairs();
    let topics = topics_param(pairs, app.hub.config().max_topics_per_subscription)?;
    tracing::Span::current().record("topics", topics.len());
    let (who, _) = authenticate(&app, &headers, pairs).await?;
    authorize_all(&app, &who, Action::Subscribe, &topics)?;
    let slot = app.connection_slot(peer, &headers)?;
    let cursor =
        crate::input::resume_cursor(&headers, &query, crate::input::POLL_SOURCES, &topics)?;
    let wait = parse_timeout(
        param(pairs, "timeout"),
        app.config.poll_default_timeout,
        app.config.poll_max_timeout,
    )?;
    // A poll is never held past its credential's deadline (the next poll
    // then needs a fresh credential).
    let wait = match crate::auth::deadline_of(&who) {
        Some(d) => wait.min(d.saturating_duration_since(tokio::time::Instant::now())),
        None => wait,
    };
    let guard = app.hub.metrics().connection(Transport::Poll);
    let start = crate::input::starting_point(&query)?;
    let mut sub = subscribe_all(app.hub.subscribe(), &topics, &cursor, start).await?;
    let client = crate::presence::poll_client_id(&who, peer, param(pairs, "client"), &headers);
    if let Some(user) = who.subject() {
        sub.identify(user, &client, Transport::Poll);
    }
    // A held poll is present while held and for the grace period after
    // (the guards go with the answer). A poll that is not held (timeout 0)
    // is a read, like a history page: not a presence. Entries are bounded
    // per caller and in all (see `PollPresence`).
    let grace = app.config.poll_presence_grace;
    let presence_topics = topics
        .iter()
        .filter(|t| app.hub.policy(t).tracks_presence())
        .count();
    let presence = if wait.is_zero() || presence_topics == 0 {
        Vec::new()
    } else if app.poll_presence.admit(
        &crate::presence::poll_caller(&who, peer),
        &client,
        presence_topics,
        tokio::time::Instant::now() + wait + grace,
    ) {
        crate::presence::enter_all(&app, &who, &topics, &client, Transport::Poll, grace).await
    } else {
        Vec::new()
    };
    let mut batch = Batch::new(
        app.config.poll_batch.max(1),
        app.config.poll_max_bytes.max(1),
        sub.cursor(),
    );

    // What is already there.
    let open = batch.drain(&mut sub).await;
    // Nothing yet: hold until something arrives, the timeout passes, or the
    // peer half-closes (it is then answered at once with what there is).
    let peer_left = read_closed.as_ref().is_some_and(|r| r.is_closed());
    let hold =
        open && batch.is_empty() && !wait.is_zero() && !app.hub.is_shutting_down() && !peer_left;
    let body = if !hold {
        answer_body(&app, batch)
    } else {
        let held = Held {
            app: app.clone(),
            sub,
            batch,
            wait,
            read_closed,
            _keep: (slot, guard, presence),
        };
        if defer {
            // The request's handling ends here; the answer's body waits.
            Body::new(HeldBody::Waiting(Box::pin(held.finish())))
        } else {
            held.finish().await
        }
    };
    let mut r = body.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.extensions_mut()
        .insert(WriteDeadline(app.config.write_timeout));
    Ok(r)
}

/// A held poll: what it keeps while it waits for an event (the request and
/// its handling are gone by then on a server that defers the head; see
/// [`ConnectionHandle::defers_head`]).
struct Held {
    app: AppState,
    sub: Subscription,
    batch: Batch,
    wait: Duration,
    read_closed: Option<crate::ReadClosed>,
    /// The connection slot, the connection gauge and the presence entries,
    /// released with the answer.
    _keep: (
        crate::limits::Slot,
        herald_core::metrics::ConnectionGuard,
        Vec<herald_core::PresenceGuard>,
    ),
}

impl Held {
    /// Waits until an event arrives, the timeout passes or the peer
    /// half-closes, then takes what is ready: the answer's body.
    ///
    /// A plain function returning an `async move` block, not an `async fn`
    /// taking `mut self`: that form moves its argument into a local of the
    /// future and keeps both, 312 bytes twice for every held poll (read
    /// with `-Zprint-type-sizes`). The block uses `held` whole, so it owns
    /// all of it (a block that names only some fields captures only those,
    /// and the rest, the connection slot among them, would be dropped
    /// here); fields are used in place, as a moved-out value is kept twice.
    fn finish(self) -> impl std::future::Future<Output = Body> + Send {
        let mut held = self;
        async move {
            let held = &mut held;
            let read_closed = held.read_closed.take();
            let closed = async move {
                match read_closed {
                    Some(r) => {
                        r.wait().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                d = tokio::time::timeout(held.wait, held.sub.next()) => if let Ok(d) = d {
                    if held.batch.take(d, &held.sub) {
                        held.batch.drain(&mut held.sub).await;
                    }
                },
                _ = closed => {}
            }
            answer_body(
                &held.app,
                std::mem::replace(&mut held.batch, Batch::new(1, 1, Cursor::default())),
            )
        }
    }
}

/// The answer's body, counted as delivered.
fn answer_body(app: &AppState, batch: Batch) -> Body {
    app.hub.metrics().events_delivered.fetch_add(
        batch.frames.len() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    Body::new(batch.into_body())
}

/// The body of a held poll on a server that defers the head: nothing until
/// the poll is answered, then the answer's frames, its length exact from
/// then on (so the head that follows the first frame says
/// `content-length`).
enum HeldBody {
    Waiting(Pin<Box<dyn std::future::Future<Output = Body> + Send>>),
    Ready(Body),
}

impl http_body::Body for HeldBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        loop {
            match &mut *self {
                HeldBody::Waiting(held) => {
                    let body = std::task::ready!(held.as_mut().poll(cx));
                    *self = HeldBody::Ready(body);
                }
                HeldBody::Ready(body) => return Pin::new(body).poll_frame(cx),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            HeldBody::Waiting(_) => false,
            HeldBody::Ready(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            HeldBody::Waiting(_) => SizeHint::default(),
            HeldBody::Ready(body) => body.size_hint(),
        }
    }
}

/// One answer's events, bounded by count and by bytes.
struct Batch {
    /// Each event's (or gap's) JSON, shared with the hub (not copied).
    frames: Vec<Bytes>,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
    /// Where the next poll continues: after the last included frame.
    cursor: Cursor,
    /// A frame did not fit: the answer is complete.
    full: bool,
}

impl Batch {
    fn new(max_events: usize, max_bytes: usize, cursor: Cursor) -> Batch {
        Batch {
            frames: Vec::new(),
            bytes: 0,
            max_events,
            max_bytes,
            cursor,
            full: false,
        }
    }

    fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    fn is_full(&self) -> bool {
        self.full || self.frames.len() >= self.max_events
    }

    /// Adds a delivery; false when the subscription closed. A frame that
    /// would take the answer over `max_bytes` is left out (unless it is the
    /// first: one event always gets through), and the cursor stays before
    /// it, so the next poll reads it again from history.
    fn take(&mut self, d: Delivery, sub: &Subscription) -> bool {
        let frame = match d {
            Delivery::Event(e) => {
                e.link_current_span();
                e.json().clone()
            }
            Delivery::Gap(g) => g.json(),
            Delivery::Closed(herald_core::CloseReason::Disconnected) => {
                // The server API closed the user's connections: the answer
                // says so, as an SSE stream would, so that the client stops
                // (`herald.disconnect {"reason":"disconnected"}`, no id).
                let topic = sub.topics().next().map_or("", |t| t.as_str());
                let data = herald_core::Data::Json(
                    herald_core::wire::reserved::DisconnectData::encode(
                        herald_core::wire::disconnect::DISCONNECTED.reason,
                    )
                    .into(),
                );
                self.frames
                    .push(Bytes::from(herald_core::wire::json::encode_event_parts(
                        topic,
                        "",
                        Some(herald_core::wire::reserved::DISCONNECT),
                        &data,
                        herald_core::event::now_ms(),
                    )));
                return false;
            }
            Delivery::Closed(_) => return false,
        };
        if !self.frames.is_empty() && self.bytes + frame_cost(&frame) > self.max_bytes {
            self.full = true;
            return true;
        }
        self.bytes += frame_cost(&frame);
        self.frames.push(frame);
        self.cursor = sub.cursor();
        true
    }

    /// Takes what is ready without waiting for a publish, until full.
    async fn drain(&mut self, sub: &mut Subscription) -> bool {
        while !self.is_full() {
            match sub.next_ready().await {
                Some(d) => {
                    if !self.take(d, sub) {
                        return false;
                    }
                }
                None => break,
            }
        }
        true
    }

    /// `{"events":[...],"cursor":"..."}` ([`herald_core::wire::poll`]) as a
    /// body of known length whose frames are written one by one (nothing is
    /// copied into one buffer).
    fn into_body(self) -> PollBody {
        let parts = VecDeque::from(encode_parts(self.frames, &self.cursor.encode()));
        let remaining = parts.iter().map(|p| p.len() as u64).sum();
        PollBody { parts, remaining }
    }
}

/// A poll answer: its pieces in order, with an exact length (so both the
/// direct path and hyper send `content-length` and write piece by piece).
struct PollBody {
    parts: VecDeque<Bytes>,
    remaining: u64,
}

impl http_body::Body for PollBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match this.parts.pop_front() {
            Some(b) => {
                this.remaining -= b.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.parts.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects a poll body as a client reads it.
    async fn read_body(body: PollBody) -> (u64, Vec<u8>) {
        use http_body::Body as _;
        let exact = body.size_hint().exact().unwrap();
        let bytes = http_body_util::BodyExt::collect(body)
            .await
            .unwrap()
            .to_bytes();
        (exact, bytes.to_vec())
    }

    #[tokio::test]
    async fn answers_are_bounded_in_bytes_and_continue_exactly() {
        use herald_core::{Data, Hub, HubConfig, NewEvent, Topic};
        let hub = Hub::memory(HubConfig::default());
        let topic = Topic::new("bytes").unwrap();
        let mut sub = hub.subscribe();
        sub.add(topic.clone(), None).await.unwrap();
        let mut ids = Vec::new();
        let mut sizes = Vec::new();
        for i in 0..5 {
            let data = serde_json::json!(format!("{i}{}", "x".repeat(400)));
            let e = hub
                .publish(NewEvent::new(topic.clone(), Data::from_json(&data)))
                .await
                .unwrap();
            ids.push(e.id());
            sizes.push(e.json().len());
        }
        // A cap that holds exactly two of these events; a tiny cap still takes one.
        let two = sizes[0] + sizes[1] + 2;
        let mut got = Vec::new();
        for (cap, per_answer) in [(two, 2), (two, 2), (1, 1)] {
            let mut batch = Batch::new(100, cap, sub.cursor());
            assert!(batch.drain(&mut sub).await);
            assert_eq!(batch.frames.len(), per_answer, "cap {cap}");
            let cursor = batch.cursor.clone();
            let (exact, body) = read_body(batch.into_body()).await;
            assert_eq!(exact, body.len() as u64, "the announced length is exact");
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["cursor"], cursor.encode());
            for e in v["events"].as_array().unwrap() {
                got.push(e["id"].as_str().unwrap().to_owned());
            }
            // The next answer resumes from this one's cursor, as a new poll would.
            let mut next = hub.subscribe();
            next.add(topic.clone(), cursor.get(&topic)).await.unwrap();
            sub = next;
        }
        assert_eq!(got, ids, "every event once, in order");
    }

    #[test]
    fn timeouts() {
        let d = Duration::from_secs(25);
        let m = Duration::from_secs(60);
        assert_eq!(parse_timeout(None, d, m).unwrap(), d);
        assert_eq!(
            parse_timeout(Some("5"), d, m).unwrap(),
            Duration::from_secs(5)
        );
        assert_eq!(
            parse_timeout(Some("0.5"), d, m).unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(parse_timeout(Some("999"), d, m).unwrap(), m);
        assert!(parse_timeout(Some("-1"), d, m).is_err());
        assert!(parse_timeout(Some("abc"), d, m).is_err());
        assert!(parse_timeout(Some("NaN"), d, m).is_err());
    }
}
