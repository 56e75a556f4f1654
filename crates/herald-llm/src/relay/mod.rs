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
//! the coalescing window widens as the count grows (`coalesce`), so a late
//! viewer always reads the whole answer. Here: starting (limits, rights,
//! sharing) and cancelling; `run` is one generation's run, step by step.

mod coalesce;
mod run;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use herald_auth::{Action, Principal, Readers};
use herald_core::{Cursor, Data, Hub, NewEvent, Topic};
use herald_http::ApiError;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::openai::Delta;
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
    /// Its creator alone.
    #[default]
    Creator,
    /// Anyone who may subscribe.
    Everyone,
    /// The creator and these subjects (`sub` claims).
    Subjects(Vec<String>),
}

/// A started generation.
#[derive(Debug, Clone)]
pub struct Started {
    /// The generation's id (12 random bytes, base64url), for a cancel.
    pub id: String,
    /// `llm/<id>`, where its events are published.
    pub topic: Topic,
    /// The topic's cursor before the first token: subscribe with it to read everything.
    pub cursor: String,
}

/// What the relay hands the OpenAI-compatible endpoint, in stream order.
#[derive(Debug)]
pub enum Relayed {
    /// An upstream chunk.
    Chunk {
        /// Its `data` payload as the upstream sent it (the API key taken out).
        data: String,
        /// What it says.
        delta: Delta,
    },
    /// The stream is complete (`[DONE]`).
    Done,
    /// The stream failed; nothing follows.
    Failed {
        /// Why, for a collected answer (redacted).
        message: String,
        /// The error payload to stream: the upstream's own (redacted) or
        /// [`crate::openai::error_data`].
        data: String,
    },
}

impl Relayed {
    /// The `data:` payload of the OpenAI-compatible event stream.
    pub fn data(&self) -> &str {
        match self {
            Relayed::Chunk { data, .. } | Relayed::Failed { data, .. } => data,
            Relayed::Done => "[DONE]",
        }
    }
}

/// How the upstream answered the request: `Ok` once its event stream
/// flows, or the error the OpenAI-compatible endpoint answers with (the
/// upstream's own status, 502 when it could not be reached, 409 after a
/// cancel).
pub type Head = Result<(), ApiError>;

/// Where a generation also goes, for the OpenAI-compatible endpoint: how
/// the upstream answered, then every chunk. A receiver that stops reading
/// for 10 s is dropped; the generation goes on.
#[derive(Debug)]
pub struct Forward {
    /// Told once how the upstream answered.
    pub head: oneshot::Sender<Head>,
    /// The chunks, then [`Relayed::Done`] or [`Relayed::Failed`].
    pub chunks: mpsc::Sender<Relayed>,
}

/// A running generation, as a cancel finds it.
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
    /// A relay publishing on `hub`, authorizing with `auth`, asking `upstream`.
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

    /// Its settings.
    pub fn config(&self) -> &LlmConfig {
        &self.config
    }

    /// Takes a place for a generation of `owner`, or refuses with 429
    /// `too_many_generations` (the server's or this user's limit).
    fn acquire(self: &Arc<Self>, owner: String) -> Result<Slot, ApiError> {
        let mut map = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        if self.active.load(Ordering::Acquire) >= self.config.max_generations {
            return Err(ApiError::too_many_requests(
                "too_many_generations",
                "too many generations are running; retry shortly",
            )
            .retry_after(GENERATION_RETRY_AFTER_SECS));
        }
        let mine = map.get(&owner).copied().unwrap_or(0);
        if mine >= self.config.max_generations_per_user {
            return Err(ApiError::too_many_requests(
                "too_many_generations",
                format!(
                    "you already run {mine} generations, the most allowed at once; retry when one ends"
                ),
            )
            .retry_after(GENERATION_RETRY_AFTER_SECS));
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
    /// `forward`, for the OpenAI-compatible endpoint, also receives the
    /// upstream's answer and chunks.
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
        forward: Option<Forward>,
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
            relay.run(&run_topic, &generation, body, forward).await;
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
            .ok_or_else(|| ApiError::no_such("no such generation"))?;
        let allowed = match who {
            Principal::Open | Principal::Publisher => true,
            Principal::User(_) => g.owner.is_some() && g.owner.as_deref() == who.subject(),
            Principal::Anonymous => false,
        };
        if !allowed {
            return Err(if who.is_authenticated() {
                ApiError::forbidden("forbidden", "only the generation's creator may cancel it")
            } else {
                ApiError::unauthorized("a credential is required")
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

    /// Publishes one event on the generation's topic, retrying a refusing
    /// store (5 tries, 100 ms doubling); `false` when every try failed.
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
}

/// A new generation id: 12 random bytes, base64url (16 characters).
fn new_id() -> Result<String, ApiError> {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).map_err(|_| ApiError::unavailable("no randomness available"))?;
    use base64::Engine;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}
