//! `GET /v1/sse`: Server-Sent Events.
//!
//! The stream starts with `retry:` and an id-only event carrying the starting
//! cursor, then back-filled events (on resume), then live events, with a
//! `: keepalive` comment whenever the stream has been idle for `keepalive`.
//! When several events are already waiting they are written in one chunk.
//!
//! A browser's `EventSource` gives up for good on any answer other than
//! `200 text/event-stream` (WHATWG HTML, "server-sent events", §9.2.3: a
//! non-200 status "fails the connection"). So a *temporary* refusal (per-address
//! or server connection limits, engine unavailable, shutting down) is answered
//! `200 text/event-stream` with `retry:` set to the Retry-After, one
//! `herald.disconnect` event whose `reason` says why, and the end of the
//! stream; the browser then reconnects by itself. 400, 401 and 403 stay what
//! they are: retrying cannot help.
//!
//! The `retry:` a stream starts with carries per-connection jitter (±25 %),
//! and a stream whose credential has a deadline (`exp`) ends at it with
//! `herald.disconnect {"reason":"token_expired"}`. Every reason comes from
//! the one table, [`herald_core::wire::disconnect`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use herald_core::metrics::ConnectionGuard;
use herald_core::wire::disconnect::{self, Disconnect};
use herald_core::wire::reserved::{self, DisconnectData};
use herald_core::wire::sse;
use herald_core::{CloseReason, Delivery, Subscription, Transport};
use tokio::time::{Instant, Sleep};

use super::{subscribe_all, topics_param};
use crate::auth::{authenticate, authorize_all};
use crate::connection::ConnectionHandle;
use crate::error::ApiError;
use crate::input::{sse_cursor, Query};
use crate::limits::Slot;
use crate::AppState;
use herald_auth::Action;

pub(crate) async fn handler(
    State(app): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    conn: Option<axum::Extension<ConnectionHandle>>,
    body: Body,
) -> Response {
    let shutting_down = app.hub.is_shutting_down();
    let retry_ms = app.config.sse_retry_ms;
    match open(app, headers, uri, conn.map(|c| c.0), body).await {
        Ok(r) => r,
        Err(e) => match e.disconnect(shutting_down) {
            Some(reason) => refusal(reason, retry_after_ms(&e, retry_ms)),
            None => e.into_response(),
        },
    }
}

/// The refusal's Retry-After in milliseconds (every 429/503 carries one,
/// see [`ApiError`]), never below the stream's usual `retry:`.
pub(crate) fn retry_after_ms(e: &ApiError, retry_ms: u64) -> u64 {
    e.retry_after_secs()
        .map_or(retry_ms, |s| s.saturating_mul(1000).max(retry_ms))
}

/// `retry_ms` with ±25 % of per-connection jitter.
pub(crate) fn jittered(retry_ms: u64) -> u64 {
    let spread = retry_ms / 4;
    retry_ms - spread + fastrand::u64(0..=spread * 2)
}

/// A temporary refusal an EventSource understands: `200 text/event-stream`,
/// `retry: <ms>`, one `herald.disconnect {"reason": reason}`, then the end.
pub(crate) fn refusal(reason: Disconnect, retry_ms: u64) -> Response {
    let mut body = BytesMut::from(&b"retry: "[..]);
    body.extend_from_slice(jittered(retry_ms).to_string().as_bytes());
    body.extend_from_slice(b"\n\n");
    body.extend_from_slice(&disconnect_event(reason));
    let mut r = Body::from(body.freeze()).into_response();
    stream_headers(r.headers_mut());
    r
}

pub(crate) fn stream_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
}

async fn open(
    app: AppState,
    headers: HeaderMap,
    uri: Uri,
    conn: Option<ConnectionHandle>,
    body: Body,
) -> Result<Response, ApiError> {
    if app.hub.is_shutting_down() {
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    super::refuse_content(&headers, body, app.config.body_timeout).await?;
    let query = Query::parse(uri.query())?;
    let topics = topics_param(query.pairs(), app.hub.config().max_topics_per_subscription)?;
    let cursor = sse_cursor(&headers, &query, &topics)?;
    let start = crate::input::starting_point(&query)?;
    let (who, _) = authenticate(&app, &headers, query.pairs()).await?;
    authorize_all(&app, &who, Action::Subscribe, &topics)?;
    let slot = app.connection_slot(conn.as_ref().map(|c| c.peer.ip()), &headers)?;
    let deadline = crate::auth::deadline_of(&who);
    let sub = app
        .hub
        .subscribe_with(conn.as_ref().and_then(|c| c.kill.clone()));
    let sub = subscribe_all(sub, &topics, &cursor, start).await?;
    let client = app.hub.new_client_id();
    if let Some(user) = who.subject() {
        sub.identify(user, &client, Transport::Sse);
    }
    let presence =
        crate::presence::enter_all(&app, &who, &topics, &client, Transport::Sse, Duration::ZERO)
            .await;

    let preamble =
        sse::preamble(jittered(app.config.sse_retry_ms), &sub.cursor().encode()).freeze();
    Ok(respond(
        &app,
        Opened {
            sub,
            presence,
            slot,
            deadline,
            conn,
            preamble,
            view: None,
            held: None,
        },
    ))
}

/// An opened stream's parts, for [`respond`].
pub(crate) struct Opened {
    pub(crate) sub: Subscription,
    pub(crate) presence: Vec<herald_core::PresenceGuard>,
    pub(crate) slot: Slot,
    pub(crate) deadline: Option<Instant>,
    pub(crate) conn: Option<ConnectionHandle>,
    /// The first bytes written.
    pub(crate) preamble: Bytes,
    /// Writes each event its own way, or skips it (the Mercure endpoint);
    /// `None`: Herald's frames.
    pub(crate) view: Option<Arc<dyn View>>,
    /// Kept alive as long as the stream.
    pub(crate) held: Option<Box<dyn std::any::Any + Send>>,
}

/// A stream's own encoding of events (see [`Opened::view`]).
pub(crate) trait View: Send + Sync {
    /// The bytes for `event`, or `None` to skip it.
    fn frame(&self, event: &herald_core::Event) -> Option<Bytes>;
}

/// The `200 text/event-stream` answer streaming `o`'s subscription.
pub(crate) fn respond(app: &AppState, o: Opened) -> Response {
    let Opened {
        sub,
        presence,
        slot,
        deadline,
        conn,
        preamble,
        view,
        held,
    } = o;
    let peer_closed = conn.as_ref().and_then(|c| c.read_closed.clone());
    let first_wake = Instant::now() + app.config.keepalive;
    // The connection's span: a trace of its own, linked to the publish of
    // each traced event it writes.
    let span = tracing::debug_span!(
        parent: None,
        "sse",
        transport = "sse",
        protocol = if view.is_some() { "mercure" } else { "herald" },
        topics = sub.topic_count(),
    );
    let stream = SseStream {
        span,
        sub,
        peer_closed,
        _presence: presence,
        view,
        _held: held,
        metrics: app.hub.metrics().clone(),
        _slot: slot,
        _guard: app.hub.metrics().connection(Transport::Sse),
        keepalive: app.config.keepalive,
        idle: Box::pin(tokio::time::sleep_until(
            deadline.map_or(first_wake, |d| d.min(first_wake)),
        )),
        deadline,
        drain: app.config.shutdown_drain,
        last_write: Instant::now(),
        max_coalesce: app.config.max_coalesce.max(1),
        preamble: Some(preamble),
        done: false,
    };
    let body = Body::from_stream(futures_util::stream::unfold(stream, |mut s| async move {
        let span = s.span.clone();
        let chunk = tracing::Instrument::instrument(s.next_chunk(), span).await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), s))
    }));
    let mut r = body.into_response();
    stream_headers(r.headers_mut());
    // A write to this subscriber that does not progress for this long ends
    // the connection (the HTTP/1.1 direct path reads it).
    r.extensions_mut()
        .insert(crate::connection::WriteDeadline(app.config.write_timeout));
    r
}

/// One SSE connection's state.
struct SseStream {
    /// The `sse` span, entered while the stream works; it ends with it.
    span: tracing::Span,
    sub: Subscription,
    /// Present on the presence topics of the stream while it lives.
    _presence: Vec<herald_core::PresenceGuard>,
    view: Option<Arc<dyn View>>,
    _held: Option<Box<dyn std::any::Any + Send>>,
    /// Becomes true when the client closes the connection (see
    /// [`ConnectionHandle::read_closed`]): the stream ends at once rather
    /// than at its next failed write.
    peer_closed: Option<crate::ReadClosed>,
    metrics: Arc<herald_core::Metrics>,
    _guard: ConnectionGuard,
    _slot: Slot,
    keepalive: Duration,
    /// Fires `keepalive` after the last write, give or take: it is moved
    /// only when it fires (see [`SseStream::next_chunk`]).
    idle: Pin<Box<Sleep>>,
    /// The credential's deadline: the stream ends there with `token_expired`.
    /// The idle timer never sleeps past it.
    deadline: Option<Instant>,
    /// A shutdown ends the stream at a random moment within this window.
    drain: Duration,
    last_write: Instant,
    max_coalesce: usize,
    preamble: Option<Bytes>,
    done: bool,
}

impl SseStream {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        if let Some(p) = self.preamble.take() {
            return Some(p);
        }
        loop {
            if let Some(chunk) = self.next_chunk_once().await {
                return chunk;
            }
        }
    }

    /// The next chunk (`Some(None)`: the end), or `None` when the next
    /// delivery was skipped by the view: nothing to write yet.
    async fn next_chunk_once(&mut self) -> Option<Option<Bytes>> {
        let first = loop {
            tokio::select! {
                d = self.sub.next() => break d,
                _ = peer_closed(&mut self.peer_closed) => {
                    self.done = true;
                    return Some(None);
                }
                _ = &mut self.idle => {
                    let now = Instant::now();
                    if self.deadline.is_some_and(|d| now >= d) {
                        self.done = true;
                        return Some(Some(disconnect_event(disconnect::TOKEN_EXPIRED)));
                    }
                    // The timer is not moved on every write (a timer-wheel
                    // update per event per subscriber); when it fires, a
                    // stream that wrote since gets the rest of its interval.
                    let due = self.last_write + self.keepalive;
                    let cap = |t: Instant| self.deadline.map_or(t, |d| d.min(t));
                    if now < due {
                        self.idle.as_mut().reset(cap(due));
                        continue;
                    }
                    self.last_write = now;
                    self.idle.as_mut().reset(cap(now + self.keepalive));
                    return Some(Some(Bytes::from_static(sse::KEEPALIVE)));
                }
            }
        };
        if matches!(first, Delivery::Closed(CloseReason::Shutdown)) {
            // Spread the ends of a shutdown over the drain window.
            tokio::time::sleep(self.drain.mul_f64(fastrand::f64())).await;
        }
        let first = self.encode(first)?;
        // Only what is written counts against the keepalive (a view may
        // skip many events in a row).
        self.last_write = Instant::now();
        if self.done || self.sub.queued() == 0 {
            return Some(Some(first));
        }
        // The subscriber has fallen behind: coalesce what is waiting into one write.
        let mut buf = BytesMut::from(&first[..]);
        for _ in 1..self.max_coalesce {
            match self.sub.try_next() {
                Some(d) => {
                    if let Some(b) = self.encode(d) {
                        buf.extend_from_slice(&b);
                    }
                    if self.done {
                        break;
                    }
                }
                None => break,
            }
        }
        Some(Some(buf.freeze()))
    }

    /// The bytes of `d`, or `None` when the view skips it.
    fn encode(&mut self, d: Delivery) -> Option<Bytes> {
        Some(match d {
            Delivery::Event(e) if self.view.is_some() => {
                let b = self.view.as_ref()?.frame(&e)?;
                e.link_current_span();
                self.metrics
                    .events_delivered
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                b
            }
            // A view has no words for Herald's gap notice.
            Delivery::Gap(_) if self.view.is_some() => return None,
            Delivery::Event(e) => {
                self.metrics
                    .events_delivered
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                e.link_current_span();
                if self.sub.topic_count() == 1 || e.is_signal() {
                    // One topic: the event's own id is the stream's cursor,
                    // so the frame shared by every subscriber is complete.
                    // A signal (herald.join / herald.leave) has no id line
                    // on any stream: the cursor stays where it was.
                    e.sse().frame().clone()
                } else {
                    let mut b = sse::id_line(&self.sub.cursor().encode());
                    b.extend_from_slice(&e.sse().body());
                    b.freeze()
                }
            }
            Delivery::Gap(g) => {
                let id = self.sub.cursor().encode();
                let data = g.data();
                sse::encode_event(Some(&id), Some(reserved::GAP), data.as_sse_text())
                    .0
                    .freeze()
            }
            Delivery::Closed(reason) => {
                self.done = true;
                disconnect_event(Disconnect::from(reason))
            }
        })
    }
}

/// `herald.disconnect {"reason"}`, the last event of a stream.
fn disconnect_event(d: Disconnect) -> Bytes {
    let data = DisconnectData::encode(d.reason);
    sse::encode_event(None, Some(reserved::DISCONNECT), &data)
        .0
        .freeze()
}

/// Resolves when the peer closed the connection; never when nobody watches
/// (or the watch ended without seeing it close).
async fn peer_closed(rx: &mut Option<crate::ReadClosed>) {
    if let Some(r) = rx {
        if r.wait().await {
            return;
        }
        *rx = None;
    }
    std::future::pending().await
}
