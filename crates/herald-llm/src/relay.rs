//! The relay: a generation runs against the upstream to its end whether or
//! not anyone watches, and its tokens are published on `llm/<id>` so any
//! number of viewers, on any transport, read it and resume it with a cursor.
//!
//! Events on the topic:
//! - `token` `{"content"}`: text, coalesced over a short window;
//! - `done` `{"finish_reason", "usage"}`: the end (`finish_reason` is
//!   `cancelled` after a cancel);
//! - `error` `{"message"}`: the upstream failed; this is the end too.
//!
//! A generation never publishes more events than the topic's history keeps:
//! the coalescing window widens as the count grows, so a late viewer always
//! reads the whole answer.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use herald_auth::{Action, Principal, Readers};
use herald_client::{SseItem, SseParser};
use herald_core::wire::sse::encode_event;
use herald_core::{Cursor, Data, Hub, NewEvent, Topic};
use herald_http::ApiError;
use http_body_util::BodyExt;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

use crate::openai::{error_message, parse_data, Chunk};
use crate::upstream::Upstream;

/// Relay settings.
#[derive(Clone, Debug)]
pub struct LlmConfig {
    /// The model used when a request names none.
    pub default_model: String,
    /// The upstream may be silent this long between chunks.
    pub idle_timeout: Duration,
    /// A generation may last this long.
    pub max_duration: Duration,
    /// Generations running at once at most (429 above).
    pub max_generations: usize,
    /// Generations running at once per principal at most (429 above), counted
    /// under [`herald_auth::quota_key`]: the token's `sub`, `publisher`, or
    /// the client address.
    pub max_generations_per_user: usize,
    /// Tokens arriving within this window are published as one event.
    pub coalesce: Duration,
    /// How long a stream stays readable by its creator (and those it is shared with).
    pub stream_ttl: Duration,
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            default_model: "herald-offline".into(),
            idle_timeout: Duration::from_secs(60),
            max_duration: Duration::from_secs(600),
            max_generations: 100,
            max_generations_per_user: 4,
            coalesce: Duration::from_millis(40),
            stream_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// Who besides its creator may read a stream.
#[derive(Clone, Debug, Default)]
pub enum Share {
    #[default]
    Creator,
    Everyone,
    Subjects(Vec<String>),
}

/// A started generation.
#[derive(Debug, Clone)]
pub struct Started {
    pub id: String,
    pub topic: Topic,
    /// The topic's cursor before the first token: subscribe with it to read everything.
    pub cursor: String,
}

/// Raw upstream `data:` payloads, for the OpenAI-compatible endpoint.
pub type RawSink = mpsc::Sender<Bytes>;

/// How the upstream answered the request (for the OpenAI-compatible endpoint).
pub type Head = Result<(), (StatusCode, String)>;

struct Generation {
    owner: Option<String>,
    cancel: Notify,
    cancelled: AtomicBool,
}

/// The LLM relay.
pub struct Relay {
    hub: Hub,
    auth: Arc<herald_auth::Auth>,
    upstream: Upstream,
    config: LlmConfig,
    generations: Mutex<HashMap<String, Arc<Generation>>>,
    active: AtomicUsize,
    /// Running generations per [`herald_auth::quota_key`].
    per_user: Mutex<HashMap<String, usize>>,
}

/// How long a client refused for too many running generations is asked
/// to wait (`Retry-After`, seconds): a generation's end cannot be known.
pub const GENERATION_RETRY_AFTER_SECS: u64 = 2;

/// A running generation's place in the global and per-user counts; given
/// back when dropped.
struct Slot {
    relay: Arc<Relay>,
    owner: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self
            .relay
            .per_user
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.relay.active.fetch_sub(1, Ordering::AcqRel);
        if let Some(n) = map.get_mut(&self.owner) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.owner);
            }
        }
    }
}

impl Relay {
    pub fn new(
        hub: Hub,
        auth: Arc<herald_auth::Auth>,
        upstream: Upstream,
        config: LlmConfig,
    ) -> Arc<Relay> {
        Arc::new(Relay {
            hub,
            auth,
            upstream,
            config,
            generations: Mutex::new(HashMap::new()),
            active: AtomicUsize::new(0),
            per_user: Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &LlmConfig {
        &self.config
    }

    /// Takes a place for a generation of `owner`, or refuses with 429
    /// `too_many_generations` (the server's or this user's limit).
    fn acquire(self: &Arc<Self>, owner: String) -> Result<Slot, ApiError> {
        let mut map = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        if self.active.load(Ordering::Acquire) >= self.config.max_generations {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_generations",
                "too many generations are running; retry shortly",
            ));
        }
        let mine = map.get(&owner).copied().unwrap_or(0);
        if mine >= self.config.max_generations_per_user {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_generations",
                format!(
                    "you already run {mine} generations, the most allowed at once; retry when one ends"
                ),
            ));
        }
        map.insert(owner.clone(), mine + 1);
        self.active.fetch_add(1, Ordering::AcqRel);
        Ok(Slot {
            relay: self.clone(),
            owner,
        })
    }

    /// Starts a generation for `who` (calling from `client`, whose address
    /// counts the share of principals without a subject). `request` is an
    /// OpenAI chat-completions body; it is sent upstream with `stream: true`.
    ///
    /// Errors: 400 for a bad request; 401/403 unless `who` may start
    /// generations ([`Action::Generate`]); 429 `too_many_generations` when
    /// the server runs [`LlmConfig::max_generations`] or `who` runs
    /// [`LlmConfig::max_generations_per_user`]; 503 when the store is down.
    pub async fn start(
        self: &Arc<Self>,
        who: &Principal,
        client: Option<IpAddr>,
        request: Map<String, Value>,
        share: Share,
        raw: Option<RawSink>,
        head: Option<oneshot::Sender<Head>>,
    ) -> Result<Started, ApiError> {
        let body = self.upstream_body(request)?;
        let id = new_id()?;
        let topic = Topic::new(&format!("llm/{id}")).map_err(ApiError::from)?;
        // Starting a generation is its own action; the relay alone then
        // writes the topic.
        self.auth.authorize(who, Action::Generate, &topic)?;
        // A creator without a credential (`--llm-public`) could neither read
        // nor cancel a generation kept to its creator: refuse it rather than
        // run (and pay for) an answer nobody can see.
        if *who == Principal::Anonymous && matches!(share, Share::Creator) {
            return Err(ApiError::bad_request(
                "invalid_request",
                "a generation started without a credential is readable only if shared: pass \"share\": \"everyone\"",
            ));
        }
        let slot = self.acquire(herald_auth::quota_key(who, client))?;
        let owner = who.subject().map(str::to_owned);
        let mut readers: Vec<String> = owner.iter().cloned().collect();
        let grant = match share {
            Share::Everyone => Some(Readers::Everyone),
            Share::Subjects(s) => {
                readers.extend(s);
                Some(Readers::Subjects(readers))
            }
            Share::Creator if readers.is_empty() => None,
            Share::Creator => Some(Readers::Subjects(readers)),
        };
        if let Some(g) = grant {
            self.auth.grant_subscribe(&topic, g, self.config.stream_ttl);
        }
        let start = self.hub.engine().read(&topic, None, 0).await?.from;
        let generation = Arc::new(Generation {
            owner,
            cancel: Notify::new(),
            cancelled: AtomicBool::new(false),
        });
        self.generations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), generation.clone());
        let relay = self.clone();
        let run_topic = topic.clone();
        let run_id = id.clone();
        tokio::spawn(async move {
            relay.run(&run_topic, &generation, body, raw, head).await;
            drop(slot);
            // Keep the entry a while so a late cancel answers sensibly.
            tokio::time::sleep(Duration::from_secs(60)).await;
            relay
                .generations
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&run_id);
        });
        Ok(Started {
            cursor: Cursor::single(&topic, start).encode(),
            id,
            topic,
        })
    }

    /// Stops a generation's upstream request. Only its creator (or a backend) may.
    pub fn cancel(&self, id: &str, who: &Principal) -> Result<(), ApiError> {
        let g = self
            .generations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such generation")
            })?;
        let allowed = match who {
            Principal::Open | Principal::Publisher => true,
            Principal::User(_) => g.owner.is_some() && g.owner.as_deref() == who.subject(),
            Principal::Anonymous => false,
        };
        if !allowed {
            return Err(if who.is_authenticated() {
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "only the generation's creator may cancel it",
                )
            } else {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "a credential is required",
                )
            });
        }
        g.cancelled.store(true, Ordering::Release);
        g.cancel.notify_one();
        Ok(())
    }

    fn upstream_body(&self, mut request: Map<String, Value>) -> Result<Bytes, ApiError> {
        match request.get("messages") {
            Some(Value::Array(m)) if !m.is_empty() => {}
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    "`messages` must be a non-empty array of chat messages",
                ))
            }
        }
        match request.get("model") {
            None | Some(Value::Null) => {
                request.insert(
                    "model".into(),
                    Value::String(self.config.default_model.clone()),
                );
            }
            Some(Value::String(_)) => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    "`model` must be a string",
                ))
            }
        }
        request.insert("stream".into(), Value::Bool(true));
        request.insert("stream_options".into(), json!({"include_usage": true}));
        serde_json::to_vec(&request)
            .map(Bytes::from)
            .map_err(|e| ApiError::bad_request("invalid_request", e.to_string()))
    }

    async fn publish(&self, topic: &Topic, name: &str, data: Value) -> bool {
        for attempt in 0..5u32 {
            let e = NewEvent::new(topic.clone(), Data::from_json(&data)).named(name);
            match self.hub.publish(e).await {
                Ok(_) => return true,
                Err(err) => {
                    tracing::warn!(%topic, error = %err, attempt, "LLM stream publish failed");
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
            }
        }
        false
    }

    async fn run(
        &self,
        topic: &Topic,
        g: &Generation,
        body: Bytes,
        raw: Option<RawSink>,
        mut head: Option<oneshot::Sender<Head>>,
    ) {
        let started = Instant::now();
        let cap = self.hub.config().history.max_events.max(4);
        let mut out = Coalescer::new(self.config.coalesce, cap);
        let had_raw = raw.is_some();
        let mut raw = raw;
        let end = tokio::select! {
            r = self.upstream.chat_completions(body) => match r {
                Ok(resp) => resp,
                Err(e) => {
                    let msg = self.upstream.redact(&e.to_string());
                    if let Some(h) = head.take() {
                        let _ = h.send(Err((StatusCode::BAD_GATEWAY, msg.clone())));
                    }
                    self.publish(topic, "error", json!({"message": msg})).await;
                    return;
                }
            },
            _ = g.cancel.notified() => {
                if let Some(h) = head.take() {
                    let _ = h.send(Err((StatusCode::CONFLICT, "cancelled".into())));
                }
                self.publish(topic, "done", json!({"finish_reason": "cancelled", "usage": null})).await;
                return;
            }
        };
        let status = end.status();
        if !status.is_success() {
            let body = tokio::time::timeout(
                Duration::from_secs(10),
                http_body_util::Limited::new(end.into_body(), 64 * 1024).collect(),
            )
            .await
            .ok()
            .and_then(Result::ok)
            .map(|c| c.to_bytes())
            .unwrap_or_default();
            let msg = error_message(status.as_u16(), &body, |t| self.upstream.redact(t));
            if let Some(h) = head.take() {
                let _ = h.send(Err((status, msg.clone())));
            }
            self.publish(
                topic,
                "error",
                json!({"message": msg, "status": status.as_u16()}),
            )
            .await;
            return;
        }
        if let Some(h) = head.take() {
            let _ = h.send(Ok(()));
        }
        let mut body = end.into_body();
        let mut parser = SseParser::new();
        let mut finish_reason: Option<String> = None;
        let mut usage: Option<Value> = None;
        let mut done_sent = false;
        let outcome: Result<(), String> = loop {
            if started.elapsed() > self.config.max_duration {
                break Err("the generation exceeded its maximum duration".into());
            }
            let deadline = out.deadline();
            let frame = tokio::select! {
                _ = g.cancel.notified() => break Ok(()),
                _ = sleep_until_opt(deadline) => {
                    if let Some(text) = out.take() {
                        if !self.publish(topic, "token", json!({"content": text})).await {
                            break Err("could not store the stream".into());
                        }
                    }
                    continue;
                }
                f = tokio::time::timeout(self.config.idle_timeout, body.frame()) => f,
            };
            let frame = match frame {
                Err(_) => break Err("the upstream stopped sending (idle timeout)".into()),
                Ok(None) => {
                    if finish_reason.is_some() {
                        break Ok(());
                    }
                    break Err("the upstream closed the stream before finishing".into());
                }
                Ok(Some(Err(e))) => {
                    break Err(self
                        .upstream
                        .redact(&format!("reading the upstream failed: {e}")))
                }
                Ok(Some(Ok(f))) => f,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let mut finished = None;
            for item in parser.feed(&data) {
                let SseItem::Event(e) = item else { continue };
                // Model output keeps its text; only the key could not be in it.
                let data = self.upstream.redact_key(&e.data);
                match parse_data(&data) {
                    Chunk::Done => {
                        forward(&mut raw, sse("[DONE]")).await;
                        done_sent = true;
                        finished = Some(Ok(()));
                        break;
                    }
                    Chunk::Delta {
                        content,
                        finish_reason: fr,
                        usage: u,
                    } => {
                        forward(&mut raw, sse(&data)).await;
                        if !content.is_empty() {
                            out.push(&content);
                        }
                        if fr.is_some() {
                            finish_reason = fr;
                        }
                        if u.is_some() {
                            usage = u;
                        }
                    }
                    Chunk::Error(msg) => {
                        // An error may echo the request's headers.
                        forward(&mut raw, sse(&self.upstream.redact(&data))).await;
                        let msg = self.upstream.redact(&msg);
                        finished = Some(Err(format!("the upstream reported an error: {msg}")));
                        break;
                    }
                    Chunk::Malformed => {
                        finished = Some(Err("the upstream sent a malformed chunk".into()));
                        break;
                    }
                }
            }
            if let Some(f) = finished {
                break f;
            }
            if out.due() {
                if let Some(text) = out.take() {
                    if !self.publish(topic, "token", json!({"content": text})).await {
                        break Err("could not store the stream".into());
                    }
                }
            }
        };
        drop(body); // closes the upstream connection (a cancel stops the upstream request)
        if let Some(text) = out.take() {
            self.publish(topic, "token", json!({"content": text})).await;
        }
        if g.cancelled.load(Ordering::Acquire) {
            self.publish(
                topic,
                "done",
                json!({"finish_reason": "cancelled", "usage": usage}),
            )
            .await;
            return;
        }
        match outcome {
            Ok(()) => {
                if !done_sent {
                    forward(&mut raw, sse("[DONE]")).await;
                }
                self.publish(
                    topic,
                    "done",
                    json!({"finish_reason": finish_reason.unwrap_or_else(|| "stop".into()), "usage": usage}),
                )
                .await;
            }
            Err(msg) => {
                if had_raw && !msg.contains("reported an error") {
                    let err = json!({"error": {"message": msg, "type": "upstream_error"}});
                    forward(&mut raw, sse(&err.to_string())).await;
                }
                self.publish(topic, "error", json!({"message": msg})).await;
            }
        }
    }
}

/// One event of the OpenAI-compatible stream, framed by the shared SSE
/// encoder (data with line breaks becomes one `data:` line per line).
fn sse(data: &str) -> Bytes {
    encode_event(None, None, data).0.freeze()
}

/// Hands a raw chunk to the OpenAI-compatible response. A client that left
/// (or stopped reading for 10 s) is dropped; the generation goes on.
async fn forward(raw: &mut Option<RawSink>, b: Bytes) {
    if let Some(r) = raw {
        if !matches!(
            tokio::time::timeout(Duration::from_secs(10), r.send(b)).await,
            Ok(Ok(()))
        ) {
            *raw = None;
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Joins tokens into events, widening the window as the event count nears
/// the history limit so the whole answer always stays readable.
struct Coalescer {
    base: Duration,
    cap: usize,
    published: usize,
    buf: String,
    since: Option<Instant>,
}

impl Coalescer {
    fn new(base: Duration, cap: usize) -> Coalescer {
        Coalescer {
            base,
            cap,
            published: 0,
            buf: String::new(),
            since: None,
        }
    }

    fn window(&self) -> Option<Duration> {
        // Leave room for the final `done`/`error` event (and a trailing flush).
        let budget = self.cap.saturating_sub(3);
        if self.published >= budget {
            None
        } else if self.published >= budget * 3 / 4 {
            Some(Duration::from_secs(10))
        } else if self.published >= budget / 2 {
            Some(Duration::from_secs(1))
        } else {
            Some(self.base)
        }
    }

    fn push(&mut self, text: &str) {
        if self.since.is_none() {
            self.since = Some(Instant::now());
        }
        self.buf.push_str(text);
    }

    fn deadline(&self) -> Option<Instant> {
        Some(self.since? + self.window()?)
    }

    fn due(&self) -> bool {
        self.deadline().is_some_and(|d| Instant::now() >= d)
    }

    fn take(&mut self) -> Option<String> {
        if self.buf.is_empty() {
            return None;
        }
        self.since = None;
        self.published += 1;
        Some(std::mem::take(&mut self.buf))
    }
}

fn new_id() -> Result<String, ApiError> {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).map_err(|_| ApiError::unavailable("no randomness available"))?;
    use base64::Engine;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalescer_never_exceeds_the_budget() {
        let mut c = Coalescer::new(Duration::ZERO, 20);
        let mut events = 0;
        for i in 0..10_000 {
            c.push(&i.to_string());
            if (c.window().is_some_and(|w| w.is_zero()) || c.due()) && c.take().is_some() {
                events += 1;
            }
        }
        if c.take().is_some() {
            events += 1;
        }
        assert!(events <= 18, "{events}");
    }
}
