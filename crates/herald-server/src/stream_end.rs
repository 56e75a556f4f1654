//! Ending one HTTP/2 event stream when its subscriber is dropped as a slow
//! consumer.
//!
//! A stream whose client stopped reading has no flow-control window left,
//! so hyper no longer polls its body and the body cannot end itself. When
//! the stream's kill switch fires, a small watcher drops the body at once
//! (its subscription queue, its connection slot and its metrics guard with
//! it); the next time hyper polls the stream, the body fails and hyper
//! resets the stream. Only event streams are watched: other answers are
//! short.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::Notify;

/// `resp` with its body dropped when `kill` fires, if it is an event stream;
/// other responses unchanged.
pub(crate) fn end_on_kill(resp: http::Response<Body>, kill: Arc<Notify>) -> http::Response<Body> {
    let is_stream = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !is_stream {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let slot = Arc::new(Mutex::new(Some(body)));
    let done = Arc::new(Notify::new());
    let watched = Arc::downgrade(&slot);
    let finished = done.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = kill.notified() => {
                if let Some(slot) = watched.upgrade() {
                    let body = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
                    drop(body);
                }
            }
            _ = finished.notified() => {}
        }
    });
    http::Response::from_parts(parts, Body::new(Killable { slot, done }))
}

/// The stream's body while it lives; `None` once killed.
struct Killable {
    slot: Arc<Mutex<Option<Body>>>,
    /// Tells the watcher that the stream ended on its own.
    done: Arc<Notify>,
}

/// The error that makes hyper reset a killed stream.
#[derive(Debug, thiserror::Error)]
#[error("the subscriber fell behind and was dropped")]
struct SlowConsumer;

impl http_body::Body for Killable {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        match slot.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(Some(Err(axum::Error::new(SlowConsumer)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Drop for Killable {
    fn drop(&mut self) {
        self.done.notify_one();
    }
}
