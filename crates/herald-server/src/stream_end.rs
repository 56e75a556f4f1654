//! Ending one HTTP/2 event stream when its subscriber is dropped as a slow
//! consumer, or when its writes make no progress within the deadline.
//!
//! A stream whose client stopped reading has no flow-control window left,
//! so hyper no longer polls its body and the body cannot end itself. When
//! the stream's kill switch fires, a small watcher drops the body at once
//! (its subscription queue, its connection slot and its metrics guard with
//! it); the next time hyper polls the stream, the body fails and hyper
//! resets the stream. Only event streams are watched: other answers are
//! short.
//!
//! The watcher also enforces the write deadline per stream: a stream whose
//! client keeps its flow-control window closed while reading the
//! connection (so the connection's writes progress) would otherwise hold
//! whatever its body holds (a back-fill read from the engine can be
//! megabytes) for good. A stream is stalled when its body handed hyper a
//! frame and hyper has not asked for the next one since; the watcher looks
//! once per deadline, and a stream stalled at two looks in a row (so for
//! at least one deadline) is dropped with its whole connection: hyper has
//! already handed that frame to the HTTP/2 layer, which keeps it (up to
//! the size of an event, or of a back-fill's batch) until the stream is
//! reset, and hyper resets a stream only when it polls its body, which it
//! does not do while the window is closed. The client reconnects and
//! resumes from its cursors; no healthy client keeps a stream's window
//! closed for the deadline while it reads the connection.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::Notify;

/// `resp` with its body dropped when `kill` fires, or when it stalls for
/// `deadline` (then `connection`, the connection's kill switch, fires too;
/// see the module's text), if it is an event stream; other responses
/// unchanged.
pub(crate) fn end_on_kill(
    resp: http::Response<Body>,
    kill: Arc<Notify>,
    deadline: Duration,
    connection: Option<Arc<Notify>>,
) -> http::Response<Body> {
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
    let progress = Arc::new(Progress::default());
    let watched = Arc::downgrade(&slot);
    let finished = done.clone();
    let seen = progress.clone();
    tokio::spawn(async move {
        let stalled = async {
            let mut last = None;
            loop {
                tokio::time::sleep(deadline).await;
                let polls = seen.polls.load(Ordering::Relaxed);
                if seen.holding.load(Ordering::Relaxed) && last == Some(polls) {
                    tracing::debug!("dropping an HTTP/2 stream whose writes made no progress");
                    return;
                }
                last = Some(polls);
            }
        };
        tokio::select! {
            _ = kill.notified() => {}
            _ = stalled => {
                if let Some(connection) = &connection {
                    connection.notify_one();
                }
            }
            _ = finished.notified() => return,
        }
        if let Some(slot) = watched.upgrade() {
            let body = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
            drop(body);
        }
    });
    http::Response::from_parts(
        parts,
        Body::new(Killable {
            slot,
            done,
            progress,
        }),
    )
}

/// What the watcher reads of a stream's progress.
#[derive(Default)]
struct Progress {
    /// How many times hyper asked the body for a frame.
    polls: AtomicU64,
    /// The last answer was a frame: hyper holds it until the stream's
    /// window lets it be sent, and asks for the next one after that.
    holding: AtomicBool,
}

/// The stream's body while it lives; `None` once killed.
struct Killable {
    slot: Arc<Mutex<Option<Body>>>,
    /// Tells the watcher that the stream ended on its own.
    done: Arc<Notify>,
    progress: Arc<Progress>,
}

/// The error that makes hyper reset a killed stream.
#[derive(Debug, thiserror::Error)]
#[error("the subscriber fell behind or stopped reading and was dropped")]
struct SlowConsumer;

impl http_body::Body for Killable {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.progress.polls.fetch_add(1, Ordering::Relaxed);
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        let r = match slot.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(Some(Err(axum::Error::new(SlowConsumer)))),
        };
        self.progress
            .holding
            .store(matches!(r, Poll::Ready(Some(Ok(_)))), Ordering::Relaxed);
        r
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
