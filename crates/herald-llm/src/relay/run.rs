//! One generation's run, in three steps:
//! 1. [`Relay::open`] sends the request and tells the OpenAI-compatible
//!    endpoint how the upstream answered (an error status ends it here);
//! 2. [`Relay::read`] reads the upstream's event stream, parsing each
//!    chunk once: its text goes to the topic (coalesced), the chunk itself
//!    to the endpoint;
//! 3. [`Relay::finish`] publishes what is left and the end (`done` or
//!    `error`), and ends the endpoint's stream.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use herald_core::wire::sse::{SseItem, SseParser};
use herald_core::Topic;
use herald_http::ApiError;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::coalesce::Coalescer;
use super::{Forward, Generation, Head, Relay, Relayed};
use crate::openai::{error_data, error_message, parse_data, Chunk, Delta};

/// Why a generation ends when the store refuses its events.
const STORE_FAILED: &str = "could not store the stream";

/// How long an endpoint client may stop reading before it is dropped (the
/// generation goes on).
const CLIENT_STALL: Duration = Duration::from_secs(10);

/// An upstream error body is read for this long, and this much of it.
const ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(10);
const ERROR_BODY_MAX: usize = 64 * 1024;

/// The OpenAI-compatible endpoint's side of a running generation; either
/// part is gone when there is no endpoint, once it was answered, or when
/// its client left.
struct Endpoint {
    head: Option<oneshot::Sender<Head>>,
    chunks: Option<mpsc::Sender<Relayed>>,
}

impl Endpoint {
    fn new(forward: Option<Forward>) -> Endpoint {
        let (head, chunks) = forward.map(|f| (f.head, f.chunks)).unzip();
        Endpoint { head, chunks }
    }

    /// Tells the endpoint how the upstream answered (once).
    fn answer(&mut self, head: Head) {
        if let Some(h) = self.head.take() {
            let _ = h.send(head);
        }
    }

    /// Hands the endpoint a chunk. A client that left (or stopped reading
    /// for [`CLIENT_STALL`]) is dropped; the generation goes on.
    async fn send(&mut self, r: Relayed) {
        if let Some(tx) = &self.chunks {
            if !matches!(
                tokio::time::timeout(CLIENT_STALL, tx.send(r)).await,
                Ok(Ok(()))
            ) {
                self.chunks = None;
            }
        }
    }
}

/// What a generation has read so far.
struct Progress {
    /// Text not yet published.
    out: Coalescer,
    finish_reason: Option<String>,
    usage: Option<Value>,
    /// The upstream's `[DONE]` was handed to the endpoint.
    done_sent: bool,
}

impl Progress {
    fn absorb(&mut self, d: &Delta) {
        if !d.content.is_empty() {
            self.out.push(&d.content);
        }
        if d.finish_reason.is_some() {
            self.finish_reason.clone_from(&d.finish_reason);
        }
        if d.usage.is_some() {
            self.usage.clone_from(&d.usage);
        }
    }
}

/// How reading the upstream's stream ended.
enum End {
    /// `[DONE]`, or the body ended after a finish reason.
    Complete,
    /// The creator cancelled.
    Cancelled,
    /// The upstream sent an error event (already handed to the endpoint):
    /// its message, redacted.
    UpstreamError(String),
    /// The relay gave up (idle, too long, cut, malformed, not stored): why.
    Failed(String),
}

impl Relay {
    /// Runs a generation to its end; `body` is the upstream request.
    pub(super) async fn run(
        &self,
        topic: &Topic,
        g: &Generation,
        body: Bytes,
        forward: Option<Forward>,
    ) {
        let deadline = Instant::now() + self.config.max_duration;
        let mut endpoint = Endpoint::new(forward);
        let Some(stream) = self.open(topic, g, body, &mut endpoint).await else {
            return;
        };
        let cap = self.hub.config().history.max_events.max(4);
        let mut progress = Progress {
            out: Coalescer::new(self.config.coalesce, cap),
            finish_reason: None,
            usage: None,
            done_sent: false,
        };
        // `read` drops the body when it returns, which closes the upstream
        // connection: a cancel stops the upstream request.
        let end = self
            .read(topic, g, stream, deadline, &mut progress, &mut endpoint)
            .await;
        self.finish(topic, g, end, progress, &mut endpoint).await;
    }

    /// Step 1: sends the request and answers the endpoint with how the
    /// upstream answered. `None` when the generation ended there (its end
    /// is published): no connection, a cancel, or an error status.
    async fn open(
        &self,
        topic: &Topic,
        g: &Generation,
        body: Bytes,
        endpoint: &mut Endpoint,
    ) -> Option<Incoming> {
        let response = tokio::select! {
            r = self.upstream.chat_completions(body) => r,
            _ = g.cancel.notified() => {
                endpoint.answer(Err(ApiError::conflict("upstream_error", "cancelled")));
                self.publish(topic, "done", json!({"finish_reason": "cancelled", "usage": null}))
                    .await;
                return None;
            }
        };
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                let msg = self.upstream.redact(&e.to_string());
                endpoint.answer(Err(ApiError::bad_gateway("upstream_error", msg.clone())));
                self.publish(topic, "error", json!({"message": msg})).await;
                return None;
            }
        };
        let status = response.status();
        if status.is_success() {
            endpoint.answer(Ok(()));
            return Some(response.into_body());
        }
        let body = tokio::time::timeout(
            ERROR_BODY_TIMEOUT,
            http_body_util::Limited::new(response.into_body(), ERROR_BODY_MAX).collect(),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .map(|c| c.to_bytes())
        .unwrap_or_default();
        let msg = error_message(status.as_u16(), &body, |t| self.upstream.redact(t));
        endpoint.answer(Err(ApiError::upstream(
            status,
            "upstream_error",
            msg.clone(),
        )));
        let data = json!({"message": msg, "status": status.as_u16()});
        self.publish(topic, "error", data).await;
        None
    }

    /// Step 2: reads the upstream's event stream to its end, each chunk
    /// parsed once; publishes the text as it comes due.
    async fn read(
        &self,
        topic: &Topic,
        g: &Generation,
        mut body: Incoming,
        deadline: Instant,
        p: &mut Progress,
        endpoint: &mut Endpoint,
    ) -> End {
        let mut parser = SseParser::new();
        loop {
            if Instant::now() > deadline {
                return End::Failed("the generation exceeded its maximum duration".into());
            }
            let frame = tokio::select! {
                _ = g.cancel.notified() => return End::Cancelled,
                _ = sleep_until_opt(p.out.deadline()) => {
                    if !self.flush(topic, &mut p.out).await {
                        return End::Failed(STORE_FAILED.into());
                    }
                    continue;
                }
                f = tokio::time::timeout(self.config.idle_timeout, body.frame()) => f,
            };
            let data = match frame {
                Err(_) => return End::Failed("the upstream stopped sending (idle timeout)".into()),
                Ok(None) if p.finish_reason.is_some() => return End::Complete,
                Ok(None) => {
                    return End::Failed("the upstream closed the stream before finishing".into())
                }
                Ok(Some(Err(e))) => {
                    let why = format!("reading the upstream failed: {e}");
                    return End::Failed(self.upstream.redact(&why));
                }
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => continue,
                },
            };
            for item in parser.feed(&data) {
                if let SseItem::Event(e) = item {
                    if let Some(end) = self.take(&e.data, p, endpoint).await {
                        return end;
                    }
                }
            }
            if p.out.due() && !self.flush(topic, &mut p.out).await {
                return End::Failed(STORE_FAILED.into());
            }
        }
    }

    /// One event of the upstream's stream (its `data`): taken in, and handed
    /// to the endpoint. `Some` when it ends the stream.
    async fn take(&self, data: &str, p: &mut Progress, endpoint: &mut Endpoint) -> Option<End> {
        // Model output keeps its text; only the key could not be in it.
        let data = self.upstream.redact_key(data);
        match parse_data(&data) {
            Chunk::Done => {
                endpoint.send(Relayed::Done).await;
                p.done_sent = true;
                Some(End::Complete)
            }
            Chunk::Delta(delta) => {
                p.absorb(&delta);
                endpoint.send(Relayed::Chunk { data, delta }).await;
                None
            }
            Chunk::Error(msg) => {
                // An error may echo the request's headers.
                let message = self.upstream.redact(&msg);
                let data = self.upstream.redact(&data);
                endpoint
                    .send(Relayed::Failed {
                        message: message.clone(),
                        data,
                    })
                    .await;
                Some(End::UpstreamError(message))
            }
            Chunk::Malformed => Some(End::Failed("the upstream sent a malformed chunk".into())),
        }
    }

    /// Step 3: publishes the text left and the end, and ends the endpoint's
    /// stream (`[DONE]` or an error payload). A cancel wins over whatever
    /// else ended the read.
    async fn finish(
        &self,
        topic: &Topic,
        g: &Generation,
        end: End,
        mut p: Progress,
        endpoint: &mut Endpoint,
    ) {
        self.flush(topic, &mut p.out).await;
        let cancelled = matches!(end, End::Cancelled) || g.cancelled.load(Ordering::Acquire);
        let (name, data) = match end {
            _ if cancelled => (
                "done",
                json!({"finish_reason": "cancelled", "usage": p.usage}),
            ),
            End::Complete | End::Cancelled => {
                if !p.done_sent {
                    endpoint.send(Relayed::Done).await;
                }
                let reason = p.finish_reason.unwrap_or_else(|| "stop".into());
                ("done", json!({"finish_reason": reason, "usage": p.usage}))
            }
            End::UpstreamError(message) => (
                "error",
                json!({"message": format!("the upstream reported an error: {message}")}),
            ),
            End::Failed(message) => {
                let data = error_data(&message);
                endpoint
                    .send(Relayed::Failed {
                        message: message.clone(),
                        data,
                    })
                    .await;
                ("error", json!({"message": message}))
            }
        };
        self.publish(topic, name, data).await;
    }

    /// Publishes the waiting text as a `token` event; `false` when the store
    /// refused it.
    async fn flush(&self, topic: &Topic, out: &mut Coalescer) -> bool {
        match out.take() {
            Some(text) => self.publish(topic, "token", json!({"content": text})).await,
            None => true,
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
