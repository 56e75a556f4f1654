//! `GET /v1/sse`: Server-Sent Events.
//!
//! The stream starts with `retry:` and an id-only event carrying the starting
//! cursor, then back-filled events (on resume), then live events, with a
//! `: keepalive` comment whenever the stream has been idle for `keepalive`.
//! When several events are already waiting they are written in one chunk.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use herald_core::metrics::ConnectionGuard;
use herald_core::wire::{reserved, sse};
use herald_core::{Cursor, Delivery, Subscription, Transport};
use tokio::time::{Instant, Sleep};

use super::{param, query_pairs, subscribe_all, topics_param};
use crate::auth::{authenticate, authorize_all};
use crate::error::ApiError;
use crate::limits::Slot;
use crate::server::ConnectionHandle;
use crate::AppState;
use herald_auth::Action;

pub(crate) async fn handler(
    State(app): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    conn: Option<axum::Extension<ConnectionHandle>>,
) -> Response {
    match open(app, headers, uri, conn.map(|c| c.0)).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn open(
    app: AppState,
    headers: HeaderMap,
    uri: Uri,
    conn: Option<ConnectionHandle>,
) -> Result<Response, ApiError> {
    if app.hub.is_shutting_down() {
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    let pairs = query_pairs(uri.query());
    let topics = topics_param(&pairs, app.hub.config().max_topics_per_subscription)?;
    let (who, _) = authenticate(&app, &headers, &pairs).await?;
    authorize_all(&app, &who, Action::Subscribe, &topics)?;
    let slot = app.connection_slot(conn.as_ref().map(|c| c.peer.ip()))?;
    // The header wins: a browser's EventSource sends it on every reconnect,
    // while the URL keeps the query parameter of the first connection.
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or_else(|| param(&pairs, "last_event_id"));
    let cursor = Cursor::decode(last_id.unwrap_or(""))?;
    let sub = app
        .hub
        .subscribe_with(conn.as_ref().and_then(|c| c.kill.clone()));
    let sub = subscribe_all(sub, &topics, &cursor).await?;

    let preamble = sse::preamble(app.config.sse_retry_ms, &sub.cursor().encode()).freeze();
    let stream = SseStream {
        sub,
        metrics: app.hub.metrics().clone(),
        _slot: slot,
        _guard: app.hub.metrics().connection(Transport::Sse),
        keepalive: app.config.keepalive,
        idle: Box::pin(tokio::time::sleep(app.config.keepalive)),
        last_write: Instant::now(),
        max_coalesce: app.config.max_coalesce.max(1),
        preamble: Some(preamble),
        done: false,
    };
    let body = Body::from_stream(futures_util::stream::unfold(stream, |mut s| async move {
        let chunk = s.next_chunk().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), s))
    }));
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(r)
}

/// One SSE connection's state.
struct SseStream {
    sub: Subscription,
    metrics: Arc<herald_core::Metrics>,
    _guard: ConnectionGuard,
    _slot: Slot,
    keepalive: Duration,
    /// Fires `keepalive` after the last write, give or take: it is moved
    /// only when it fires (see [`SseStream::next_chunk`]).
    idle: Pin<Box<Sleep>>,
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
        let first = loop {
            tokio::select! {
                d = self.sub.next() => break d,
                _ = &mut self.idle => {
                    // The timer is not moved on every write (a timer-wheel
                    // update per event per subscriber); when it fires, a
                    // stream that wrote since gets the rest of its interval.
                    let due = self.last_write + self.keepalive;
                    if Instant::now() < due {
                        self.idle.as_mut().reset(due);
                        continue;
                    }
                    self.last_write = Instant::now();
                    self.idle.as_mut().reset(self.last_write + self.keepalive);
                    return Some(Bytes::from_static(sse::KEEPALIVE));
                }
            }
        };
        self.last_write = Instant::now();
        let first = self.encode(first);
        if self.done || self.sub.queued() == 0 {
            return Some(first);
        }
        // The subscriber has fallen behind: coalesce what is waiting into one write.
        let mut buf = BytesMut::from(&first[..]);
        for _ in 1..self.max_coalesce {
            match self.sub.next_ready().await {
                Some(d) => {
                    let b = self.encode(d);
                    buf.extend_from_slice(&b);
                    if self.done {
                        break;
                    }
                }
                None => break,
            }
        }
        Some(buf.freeze())
    }

    fn encode(&mut self, d: Delivery) -> Bytes {
        match d {
            Delivery::Event(e) => {
                self.metrics
                    .events_delivered
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if self.sub.topic_count() == 1 {
                    // One topic: the event's own id is the stream's cursor,
                    // so the frame shared by every subscriber is complete.
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
                let data = serde_json::json!({"reason": reason.as_str()}).to_string();
                sse::encode_event(None, Some(reserved::DISCONNECT), &data)
                    .0
                    .freeze()
            }
        }
    }
}
