//! # herald-engine-redis
//!
//! Herald's Redis engine: several Herald nodes share one Redis (or Redis
//! Cluster), so a subscriber on node B gets what was published on node A and
//! resumes on any node. It implements [`herald_core::Engine`]; the transports
//! never know it runs.
//!
//! # How it works
//!
//! - **History**: one Redis Stream per topic, entry id `<seq>-<published ms>`,
//!   trimmed with `MAXLEN ~` to the history size and by age. A hash beside it
//!   holds the topic's `epoch` and last `seq`, so positions (and so cursors)
//!   mean the same on every node. If the stream is lost (Redis restarted
//!   without persistence, a key evicted) the topic gets a new epoch, and
//!   clients with older cursors get `herald.gap` (`epoch_changed`). A
//!   topic's policy ([`Engine::set_policies`]) may set its own limits; an
//!   ephemeral topic (`history = 0`) has no stream at all: its events take
//!   their sequence from the hash and go through pub/sub only, never `XADD`.
//! - **Expiry**: both keys of a topic expire [`topic_ttl`] after its last
//!   publish (the history age limit, at least 1 s): a topic nobody
//!   publishes to or subscribes to leaves nothing behind, and when it is used again it
//!   starts a new epoch (older cursors get `herald.gap`). A read of a topic
//!   never published creates its metadata with the same expiry. The global
//!   [`Budget`](herald_core::engine::Budget) is not enforced here: Redis's
//!   own `maxmemory` bounds what it holds, and a write it refuses for lack
//!   of memory answers 503 `server_full`. While local clients are
//!   subscribed to a topic, the node extends its keys' life every third
//!   of the time-to-live (one small script per watched topic), so a quiet
//!   topic keeps the epoch its subscribers hold.
//! - **Publish**: one Lua script per topic appends the events and trims,
//!   atomically: a subscriber that resumes during a publish reads either
//!   before or after it, and the core's live-first-then-back-fill resume does
//!   the rest. When the topic's master has replicas online, the engine then
//!   waits (`WAIT`, [`RedisConfig::replica_acks`] within
//!   [`RedisConfig::replica_timeout`]) and only then notifies the topic's
//!   sharded pub/sub channel (`SPUBLISH`) and acknowledges; a write no
//!   replica confirmed in time is [`EngineError::NotReplicated`] (503).
//!   Without replicas the script notifies at once.
//! - **Lost writes**: each node remembers the furthest position it has seen
//!   of each topic (its floor) and passes it to the scripts; a topic shorter
//!   than that in the same epoch lost writes in a failover, and starts a new
//!   epoch instead of handing the lost positions out again (see `scripts`).
//! - **Live fan-out**: each node subscribes (`SSUBSCRIBE`) only to the
//!   channels of topics its own clients use ([`Engine::watch`]) and
//!   unsubscribes when the last one leaves. Every message is dispatched
//!   locally once, in position order per topic. After each subscribe and each
//!   reconnect the node reads what it may have missed, so a lost message only
//!   delays an event, never drops it.
//! - **Keys** share one hash tag per topic ([`keys`]), so a topic lives on
//!   one shard of a cluster.
//! - **Outages**: with Redis unreachable, publishes fail at once with
//!   [`EngineError::Unavailable`] (503), [`Engine::ready`] fails (`/readyz`),
//!   live connections stay open, and the clients reconnect with backoff.
//!   Each master of a cluster has its own connections (`shards`): one dead
//!   master refuses only its own topics, and a catch-up read that fails is
//!   retried with backoff.
//! - **Shared records**: idempotent publish ids ([`Engine::idempotency_store`])
//!   and one-time tokens ([`Engine::one_time_store`], [`RedisOneTimeTokens`])
//!   live in Redis too, so they hold across nodes.
//! - **Presence** ([`Engine::presence_store`]): the members of presence
//!   topics live in Redis (a sorted set by expiry and a hash per topic,
//!   beside its stream), so every node lists the whole cluster's. Each
//!   node refreshes the clients it holds and sweeps expired entries, so the
//!   clients of a node that dies stop counting within
//!   [`PresenceTiming::dead_node_bound`] (30 s by default); see `presence`.
//!   `herald.join` / `herald.leave` ([`Engine::signal`]) travel on the
//!   topic's pub/sub channel, in order with its events.
//! - **Occupancy** ([`Engine::report_occurrences`], for the webhooks): per
//!   topic, a sorted set of the nodes with local subscribers, refreshed and
//!   swept like presence, so a topic is occupied once and vacated once
//!   cluster-wide, and a dead node's topics vacate; see `occupancy`.
//!
//! The client library is [fred](https://docs.rs/fred) (RESP, reconnect
//! policies, TLS, `redis://`, `rediss://`, `redis-cluster://` and
//! `rediss-cluster://` URLs), used as single-server clients, one small set
//! per master: `shards` routes each command by its key's hash slot.
//!
//! # Layout
//!
//! - [`keys`]: key and channel names (pure).
//! - [`scripts`]: the Lua scripts for publish, read and idempotency claims.
//! - `codec`: events to script arguments and back (pure).
//! - `shards`: the connections of each master, the slot layout, replica
//!   counts.
//! - `listener`: the pub/sub task: subscriptions (following the layout),
//!   dispatch, catch-up, and keeping watched topics' keys alive.
//! - [`stores`]: idempotency records and one-time tokens in Redis.
//! - `presence`: presence members in Redis, their refresh and sweep tasks.
//! - `occupancy`: which nodes have subscribers of a topic, for the
//!   webhooks' occupied / vacated.
//! - Tests: `tests/suite.rs` runs herald-core's engine suite (resume,
//!   retention, gaps, idempotency, one-time tokens); `tests/engine.rs` and
//!   `tests/lifecycle.rs` what is Redis's own (nodes, outages, expiry);
//!   `tests/presence.rs` the suite's presence and presence across nodes
//!   (a node that dies); `tests/replicas.rs` a master and its replica
//!   (`WAIT`, refusals, lost writes and new epochs);
//!   `tests/cluster_harness.rs` the throw-away cluster itself.
//! - `test_server` and `test_cluster` (feature `test-util`): a throw-away
//!   `redis-server` and Redis Cluster for the tests of this and other
//!   crates.
//!
//! # Example
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use herald_core::{Hub, HubConfig};
//! use herald_engine_redis::{RedisConfig, RedisEngine};
//!
//! let config = HubConfig::default();
//! let engine = RedisEngine::connect(RedisConfig::new("redis://127.0.0.1:6379", config.history)).await?;
//! let hub = Hub::new(Arc::new(engine), config);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod codec;
pub mod keys;
mod listener;
mod occupancy;
mod presence;
pub mod scripts;
mod shards;
pub mod stores;
#[cfg(feature = "test-util")]
pub mod test_cluster;
#[cfg(feature = "test-util")]
pub mod test_server;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use fred::interfaces::{ClientLike, PubsubInterface};
use fred::prelude::Client;
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand, Value};
use herald_core::engine::{new_epoch, resolve_start, BoxFuture, Exhausted};
use herald_core::fanout::Fanout;
use herald_core::idempotency::IdempotencyStore;
use herald_core::one_time::OneTimeStore;
use herald_core::policy::{TopicPolicies, TopicPolicy};
use herald_core::presence::PresenceStore;
use herald_core::{
    Engine, EngineError, Event, HistoryLimits, NewEvent, Occurrences, Position, ReadResult, Topic,
};
use tokio::sync::mpsc;

pub use keys::Keys;
pub use presence::PresenceTiming;
pub use stores::{RedisIdempotency, RedisOneTimeTokens};

/// How to reach Redis and what to keep there.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// `redis://`, `rediss://` (TLS), `redis-cluster://` or
    /// `rediss-cluster://` (more nodes as `?node=host:port`).
    pub url: String,
    /// Put before every key and channel name (`herald:`), so several
    /// Herald deployments can share one Redis.
    pub prefix: String,
    /// History kept per topic.
    pub history: HistoryLimits,
    /// Connections for commands.
    pub pool_size: usize,
    /// A command that takes longer fails (and its publish answers 503).
    pub command_timeout: Duration,
    /// Longest pause between reconnection attempts (the backoff starts at 50 ms).
    pub max_reconnect_delay: Duration,
    /// How presence entries are refreshed, expire and are swept (defaults:
    /// 8 s, 20 s, 4 s); shorter in tests.
    pub presence: PresenceTiming,
    /// Replicas that must hold a publish before it is acknowledged (Redis
    /// `WAIT`), counted against the replicas the topic's master has online
    /// (with fewer online, as many as there are; with none, the master
    /// alone). 0 acknowledges once the master has the write. Default 1.
    pub replica_acks: u32,
    /// How long a publish waits for its replicas; past it the publish
    /// answers 503 (the event is stored on the master but not known to
    /// survive its loss; a retry with the same idempotency id answers with
    /// its position). Default 1 s.
    pub replica_timeout: Duration,
}

impl RedisConfig {
    /// The configuration for `url` (see [`RedisConfig::url`]) with `history`
    /// and the defaults: key prefix `herald:`, 2 pooled connections, a
    /// 2-second command timeout, reconnection backoff up to 2 seconds,
    /// [`PresenceTiming::default`], one replica acknowledging each publish
    /// within 1 s.
    pub fn new(url: &str, history: HistoryLimits) -> RedisConfig {
        RedisConfig {
            url: url.to_owned(),
            prefix: "herald:".to_owned(),
            history,
            pool_size: 2,
            command_timeout: Duration::from_secs(2),
            max_reconnect_delay: Duration::from_secs(2),
            presence: PresenceTiming::default(),
            replica_acks: 1,
            replica_timeout: Duration::from_secs(1),
        }
    }
}

/// A configuration the engine cannot start with.
#[derive(Debug, thiserror::Error)]
pub enum RedisConfigError {
    /// The URL does not parse as a Redis URL.
    #[error("--redis-url {url:?}: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// The client library's explanation.
        reason: String,
    },
    /// The client library refused the configuration (the text is its error);
    /// an unreachable Redis is not this error: the engine starts and retries.
    #[error("cannot set up the Redis client: {0}")]
    Client(String),
}

/// Maps a client error to the engine's "unavailable" (503).
fn unavailable(e: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(format!("redis: {e}"))
}

/// Maps the error of a write: Redis out of memory (`maxmemory` reached,
/// nothing written) is "server full", anything else "unavailable".
fn write_error(e: fred::error::Error) -> EngineError {
    let text = e.to_string();
    if text.contains("OOM command not allowed") {
        EngineError::ServerFull(Exhausted::Storage)
    } else {
        unavailable(text)
    }
}

/// How long a topic's keys live after its last publish: the history age
/// limit (so retained history is never cut short), at least 1 s and at
/// most 100 years.
pub fn topic_ttl(history: &HistoryLimits) -> Duration {
    history.max_age.clamp(
        Duration::from_secs(1),
        Duration::from_secs(100 * 365 * 24 * 3600),
    )
}

/// The age limit in ms, as the scripts take it.
fn max_age_ms(limits: &HistoryLimits) -> u64 {
    u64::try_from(limits.max_age.as_millis()).unwrap_or(u64::MAX / 2)
}

/// [`topic_ttl`] in ms, as the scripts take it.
fn ttl_ms(limits: &HistoryLimits) -> u64 {
    u64::try_from(topic_ttl(limits).as_millis()).unwrap_or(u64::MAX)
}

/// What the engine and its listener share.
pub(crate) struct Shared {
    pub(crate) keys: Keys,
    pub(crate) history: HistoryLimits,
    /// Per-topic policies ([`Engine::set_policies`]): each topic's history
    /// limits, and ephemeral topics (pub/sub only, never a stream).
    policies: RwLock<Arc<TopicPolicies>>,
    /// The masters and who serves which slot.
    pub(crate) shards: Arc<shards::Shards>,
    /// The furthest position this node has seen of each topic.
    floors: Floors,
    replica_acks: u32,
    replica_timeout: Duration,
    command_timeout: Duration,
    publish_script: Script,
    notify_script: Script,
    retouch_script: Script,
    read_script: Script,
    pub(crate) touch_script: Script,
    pub(crate) fanout: RwLock<Option<Arc<Fanout>>>,
}

/// The Redis engine. See the crate docs.
pub struct RedisEngine {
    shared: Arc<Shared>,
    /// Reads the layout and the replica counts every second.
    layout_upkeep: tokio::task::JoinHandle<()>,
    control: mpsc::UnboundedSender<listener::Control>,
    listener: tokio::task::JoinHandle<()>,
    presence: Arc<presence::RedisPresence>,
    /// Cluster-wide occupancy, once an observer is registered.
    occupancy: Arc<occupancy::RedisOccupancy>,
    /// The presence refresh and sweep tasks.
    upkeep: Vec<tokio::task::JoinHandle<()>>,
}

impl RedisEngine {
    /// Builds the clients and starts connecting. Waits up to the command
    /// timeout for a first connection; if Redis is not reachable yet the
    /// engine still starts (not ready, publishes answer 503) and keeps
    /// trying in the background.
    pub async fn connect(config: RedisConfig) -> Result<RedisEngine, RedisConfigError> {
        let (shards, node_events) = shards::Shards::new(
            &config.url,
            shards::ClientSettings {
                pool_size: config.pool_size,
                publish_pool_size: PUBLISH_CONNECTIONS,
                command_timeout: config.command_timeout,
                max_reconnect_delay: config.max_reconnect_delay,
            },
        )?;
        if shards.wait_for_connect(config.command_timeout).await {
            for node in shards.layout_nodes() {
                node.read_replicas(config.command_timeout).await;
            }
        } else {
            tracing::warn!(url = %redact_url(&config.url), "Redis is not reachable yet; retrying in the background");
        }
        let shared = Arc::new(Shared {
            keys: Keys::new(&config.prefix),
            history: config.history,
            policies: RwLock::new(Arc::new(TopicPolicies::default())),
            shards: shards.clone(),
            floors: Floors::default(),
            replica_acks: config.replica_acks,
            replica_timeout: config.replica_timeout,
            command_timeout: config.command_timeout,
            publish_script: Script::from_lua(scripts::publish()),
            notify_script: Script::from_lua(scripts::NOTIFY),
            retouch_script: Script::from_lua(scripts::RETOUCH),
            read_script: Script::from_lua(scripts::read()),
            touch_script: Script::from_lua(scripts::TOUCH),
            fanout: RwLock::new(None),
        });
        let (control, rx) = mpsc::unbounded_channel();
        let listener = tokio::spawn(listener::run(shared.clone(), node_events, rx));
        let layout_upkeep = tokio::spawn(shards.upkeep());
        let presence = presence::RedisPresence::new(shared.clone(), config.presence);
        let upkeep = presence.start();
        let occupancy = occupancy::RedisOccupancy::new(shared.clone(), config.presence);
        Ok(RedisEngine {
            shared,
            layout_upkeep,
            control,
            listener,
            presence,
            occupancy,
            upkeep,
        })
    }

    /// The key names this engine uses.
    pub fn keys(&self) -> &Keys {
        &self.shared.keys
    }

    /// A connected command connection to the master serving `key` (tests
    /// and tools), or 503 when it is not reachable.
    pub fn client_for(&self, key: &str) -> Result<Client, EngineError> {
        self.shared.client(key)
    }

    /// A shared one-time token store on this engine's connections.
    pub fn one_time_tokens(&self) -> RedisOneTimeTokens {
        RedisOneTimeTokens::new(self.shared.clone())
    }
}

impl Drop for RedisEngine {
    fn drop(&mut self) {
        self.listener.abort();
        self.layout_upkeep.abort();
        for task in &self.upkeep {
            task.abort();
        }
        self.occupancy.stop();
        // Close the connections (their tasks would otherwise outlive us).
        self.shared.shards.close();
    }
}

/// The URL without its password, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://[redacted]@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

impl Shared {
    /// A connected command connection to the master serving `key`, or
    /// 503 at once (that master is down, or no master serves the slot).
    pub(crate) fn client(&self, key: &str) -> Result<Client, EngineError> {
        self.shards.client(key)
    }

    /// `topic`'s history limits: its policy's over the engine's (0 events:
    /// ephemeral, no stream at all).
    fn limits_of(&self, topic: &Topic) -> HistoryLimits {
        self.policies
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .history_limits(topic, self.history)
    }

    /// How long one command may take.
    pub(crate) fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    pub(crate) fn ttl_ms(&self) -> u64 {
        ttl_ms(&self.history)
    }

    /// `topic`'s policy.
    pub(crate) fn policy(&self, topic: &Topic) -> Arc<TopicPolicy> {
        self.policies
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .resolve(topic)
    }

    /// Sends a signal on its topic's channel: every node watching the
    /// topic dispatches it, in order with the topic's events.
    pub(crate) async fn signal(&self, event: &Event) -> Result<(), EngineError> {
        let channel = self.keys.channel(&event.topic);
        let client = self.client(&channel)?;
        let _: Value = client
            .spublish(channel, codec::signal_message(event))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn publish_topic(&self, events: Vec<NewEvent>) -> Result<Vec<Arc<Event>>, EngineError> {
        let topic = events[0].topic.clone();
        let limits = self.limits_of(&topic);
        let ephemeral = limits.max_events == 0;
        let keys = vec![self.keys.meta(&topic), self.keys.stream(&topic)];
        let channel = self.keys.channel(&topic);
        let deadline = Instant::now() + self.command_timeout;
        loop {
            let node = self.shards.node_for(&keys[0])?;
            // An ephemeral topic keeps nothing a replica could save.
            let acks = if ephemeral { 0 } else { self.acks_for(&node) };
            let floor = self.floors.get(&topic);
            let mut args: Vec<Value> = Vec::with_capacity(8 + 3 * events.len());
            args.push(new_epoch().to_string().into());
            args.push(limits.max_events.to_string().into());
            args.push(max_age_ms(&limits).to_string().into());
            args.push(channel.as_str().into());
            args.push(ttl_ms(&limits).to_string().into());
            args.push(if acks == 0 { "1" } else { "0" }.into());
            push_floor(floor, &mut args);
            for e in &events {
                codec::push_event_args(e, &mut args);
            }
            let client = node.publish_client()?;
            let answer: Vec<Value> = match self
                .publish_script
                .evalsha_with_reload(&client, keys.clone(), args)
                .await
            {
                Ok(answer) => answer,
                // Not run (a redirection is answered before the script
                // starts): ask for the layout again and retry while time is
                // left.
                Err(e) if redirected(&e) => {
                    self.shards.refresh().await;
                    if Instant::now() >= deadline {
                        return Err(unavailable(e));
                    }
                    tokio::time::sleep(REDIRECT_PAUSE).await;
                    continue;
                }
                Err(e) => return Err(write_error(e)),
            };
            let (epoch, first, at) = codec::publish_answer(&answer).map_err(unavailable)?;
            if let Some(f) = floor.filter(|f| f.epoch != epoch) {
                tracing::debug!(%topic, old = f.epoch, new = epoch, "topic is in a new epoch");
            }
            let stored: Vec<Arc<Event>> = events
                .into_iter()
                .enumerate()
                .map(|(i, e)| Arc::new(Event::new(e, Position::new(epoch, first + i as u64), at)))
                .collect();
            if acks == 0 {
                if let Some(last) = stored.last() {
                    self.floors.raise(&topic, last.position);
                }
                return Ok(stored);
            }
            // The connection's writes, this one included, reach `acks`
            // replicas or the timeout passes (Redis `WAIT`).
            let reached = match self.wait_replicas(&client, acks).await {
                Ok(n) => n,
                Err(e) => {
                    return Err(EngineError::NotReplicated {
                        stored,
                        detail: format!("redis: stored, but waiting for its replicas failed: {e}"),
                    })
                }
            };
            if reached < acks {
                return Err(EngineError::NotReplicated {
                    stored,
                    detail: format!(
                        "redis: stored on the master, but {reached} of {acks} replicas had it within {} ms; it may be lost if the master fails (retry with the same idempotency id to get its position once replicated)",
                        self.replica_timeout.as_millis()
                    ),
                });
            }
            // Replicated: now readers may be given it, and every node's
            // subscribers see it.
            let last = stored
                .last()
                .map_or(Position::new(epoch, 0), |e| e.position);
            self.floors.raise(&topic, last);
            let args = vec![last.epoch.to_string(), last.seq.to_string()];
            // Until it runs, readers are not given the events: tried on
            // this connection, then on others of the master.
            let notify_keys = vec![channel.clone(), keys[0].clone(), keys[1].clone()];
            let mut failure = None;
            for attempt in 0..NOTIFY_ATTEMPTS {
                let c = if attempt == 0 {
                    client.clone()
                } else {
                    match node.publish_client() {
                        Ok(c) => c,
                        Err(e) => {
                            failure = Some(e.to_string());
                            break;
                        }
                    }
                };
                let notified: Result<Value, _> = self
                    .notify_script
                    .evalsha_with_reload(&c, notify_keys.clone(), args.clone())
                    .await;
                match notified {
                    Ok(_) => return Ok(stored),
                    Err(e) => failure = Some(e.to_string()),
                }
            }
            tracing::warn!(error = ?failure, %topic, "notifying a replicated publish failed");
            // Stored and replicated, but not yet readable: not acknowledged.
            // An idempotent retry makes it readable and answers its id.
            return Err(EngineError::NotReplicated {
                stored,
                detail: format!(
                    "redis: stored and replicated, but not yet made readable ({}); retry with the same idempotency id",
                    failure.unwrap_or_default()
                ),
            });
        }
    }

    /// Reads `topic`; `after` is `Some(None)` for the latest event alone.
    pub(crate) async fn read_raw(
        &self,
        topic: &Topic,
        after: ReadFrom,
        limit: usize,
    ) -> Result<ReadResult, EngineError> {
        let limits = self.limits_of(topic);
        let (after_epoch, after_seq) = match after {
            ReadFrom::Now => (String::new(), 0),
            ReadFrom::Latest => ("*".to_owned(), 0),
            ReadFrom::After(p) => (p.epoch.to_string(), p.seq),
        };
        let keys = vec![self.keys.meta(topic), self.keys.stream(topic)];
        let deadline = Instant::now() + self.command_timeout;
        let answer: Vec<Value> = loop {
            let client = self.client(&keys[0])?;
            let mut args: Vec<Value> = vec![
                new_epoch().to_string().into(),
                after_epoch.as_str().into(),
                after_seq.to_string().into(),
                limit.to_string().into(),
                limits.max_events.to_string().into(),
                max_age_ms(&limits).to_string().into(),
                ttl_ms(&limits).to_string().into(),
            ];
            push_floor(self.floors.get(topic), &mut args);
            match self
                .read_script
                .evalsha_with_reload(&client, keys.clone(), args)
                .await
            {
                Ok(answer) => break answer,
                Err(e) if redirected(&e) && Instant::now() < deadline => {
                    self.shards.refresh().await;
                    tokio::time::sleep(REDIRECT_PAUSE).await;
                }
                Err(e) => return Err(unavailable(e)),
            }
        };
        let raw = codec::read_answer(topic, answer).map_err(unavailable)?;
        self.floors.raise(topic, Position::new(raw.epoch, raw.head));
        let requested = match after {
            ReadFrom::After(p) => Some(p),
            ReadFrom::Now => None,
            // The latest event: as if reading after the one before it.
            ReadFrom::Latest => Some(Position::new(raw.epoch, raw.head.saturating_sub(1))),
        };
        let (from, gap) = resolve_start(raw.epoch, raw.head, raw.first_retained, requested);
        let events = raw
            .events
            .into_iter()
            .filter(|e| e.position.seq > from.seq)
            .take(limit)
            .collect();
        Ok(ReadResult {
            epoch: raw.epoch,
            head: raw.head,
            gap,
            from,
            events,
        })
    }

    /// Replicas a write through `node` waits for: the configured count,
    /// at most the replicas it has online.
    fn acks_for(&self, node: &shards::Node) -> usize {
        (self.replica_acks as usize).min(node.replicas())
    }

    /// Waits until everything the master serving `key` holds now has
    /// reached the replicas a publish waits for: a write to `key` (its
    /// time-to-live set again, unchanged) followed by `WAIT` on the same
    /// connection, which covers every earlier write of that master. For
    /// an idempotent retry of a publish that was stored but refused
    /// (503): answered with its position only once it is replicated.
    ///
    /// Errors: 503 when the master is down or the replicas do not have it
    /// within the replica timeout.
    pub(crate) async fn confirm_replicated(
        &self,
        topic: &Topic,
        key: &str,
        position: Position,
    ) -> Result<(), EngineError> {
        let node = self.shards.node_for(key)?;
        let acks = self.acks_for(&node);
        if acks == 0 {
            return Ok(());
        }
        let client = node.publish_client()?;
        let _: Value = self
            .retouch_script
            .evalsha_with_reload(&client, vec![key.to_owned()], ())
            .await
            .map_err(unavailable)?;
        let reached = self
            .wait_replicas(&client, acks)
            .await
            .map_err(unavailable)?;
        if reached < acks {
            return Err(EngineError::Unavailable(format!(
                "redis: stored on the master, not yet on its replicas ({reached} of {acks}); retry later"
            )));
        }
        // Replicated: readers may be given it now, and subscribers get its
        // notification (with any other event not yet announced).
        let args = vec![position.epoch.to_string(), position.seq.to_string()];
        let keys = vec![
            self.keys.channel(topic),
            self.keys.meta(topic),
            self.keys.stream(topic),
        ];
        let _: Value = self
            .notify_script
            .evalsha_with_reload(&client, keys, args)
            .await
            .map_err(unavailable)?;
        self.floors.raise(topic, position);
        Ok(())
    }

    /// `WAIT acks timeout` on `client`: how many replicas have every write
    /// this connection made.
    async fn wait_replicas(
        &self,
        client: &Client,
        acks: usize,
    ) -> Result<usize, fred::error::Error> {
        let timeout_ms = i64::try_from(self.replica_timeout.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        // The client's own timeout must outlast the wait it asks Redis for.
        let options = fred::prelude::Options {
            timeout: Some(self.replica_timeout + self.command_timeout),
            ..Default::default()
        };
        let n: i64 = client
            .with_options(&options)
            .custom(
                CustomCommand::new_static("WAIT", ClusterHash::Random, true),
                vec![acks as i64, timeout_ms],
            )
            .await?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Remembers that this node saw `topic` at `position` (dispatched it).
    pub(crate) fn saw(&self, topic: &Topic, position: Position) {
        self.floors.raise(topic, position);
    }
}

/// Attempts at the notification that makes a replicated publish readable.
const NOTIFY_ATTEMPTS: usize = 3;

/// Connections per master for publishes (each may be held by a `WAIT`).
const PUBLISH_CONNECTIONS: usize = 4;

/// The pause before a redirected command is sent again (a slot that is
/// migrating answers `ASK`/`TRYAGAIN` until its keys have moved).
const REDIRECT_PAUSE: Duration = Duration::from_millis(20);

/// Whether Redis answered with a cluster redirection or a refusal to serve
/// the slot now: the command did not run, and the layout may have changed.
fn redirected(e: &fred::error::Error) -> bool {
    let d = e.details();
    ["MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN"]
        .iter()
        .any(|p| d.starts_with(p) || d.contains(&format!(": {p}")))
        || d.contains("MOVED") && d.contains(':')
}

/// Appends a floor (epoch, seq) to script arguments: `''` and `0` for none.
fn push_floor(floor: Option<Position>, args: &mut Vec<Value>) {
    match floor {
        Some(f) => {
            args.push(f.epoch.to_string().into());
            args.push(f.seq.to_string().into());
        }
        None => {
            args.push("".into());
            args.push("0".into());
        }
    }
}

/// The furthest position this node has seen of each topic (published,
/// read or dispatched), passed to the scripts so that a topic that lost
/// writes in a failover starts a new epoch instead of handing out its lost
/// positions again (see `scripts`). At most [`FLOORS_MAX`] topics: past
/// it, a tenth of them is forgotten (those topics lose the check on this
/// node until it sees them again).
#[derive(Default)]
struct Floors(Mutex<HashMap<Topic, Position>>);

/// Topics whose floor a node keeps (each about 100 bytes).
const FLOORS_MAX: usize = 100_000;

impl Floors {
    fn get(&self, topic: &Topic) -> Option<Position> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
            .copied()
    }

    fn raise(&self, topic: &Topic, p: Position) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = map.get_mut(topic) {
            if f.epoch != p.epoch || p.seq > f.seq {
                *f = p;
            }
            return;
        }
        if map.len() >= FLOORS_MAX {
            let forget: Vec<Topic> = map.keys().take(FLOORS_MAX / 10).cloned().collect();
            for t in forget {
                map.remove(&t);
            }
        }
        map.insert(topic.clone(), p);
    }
}

/// Where a read starts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ReadFrom {
    /// Nothing, just the head.
    Now,
    /// The latest event alone.
    Latest,
    After(Position),
}

impl Engine for RedisEngine {
    fn attach(&self, fanout: Arc<Fanout>) {
        *self
            .shared
            .fanout
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(fanout);
    }

    /// Each topic's history limits are its policy's (the scripts trim by
    /// them); an ephemeral topic's events go through pub/sub only, never
    /// `XADD`.
    fn set_policies(&self, policies: Arc<TopicPolicies>) {
        *self
            .shared
            .policies
            .write()
            .unwrap_or_else(|e| e.into_inner()) = policies;
    }

    fn publish(
        &self,
        events: Vec<NewEvent>,
    ) -> BoxFuture<'_, Result<Vec<Arc<Event>>, EngineError>> {
        Box::pin(async move {
            // One script per topic (a topic's keys share a shard; a batch's
            // topics may not). Order is kept within each topic.
            let n = events.len();
            let mut groups: Vec<(Topic, Vec<usize>, Vec<NewEvent>)> = Vec::new();
            let mut index: HashMap<Topic, usize> = HashMap::new();
            for (i, e) in events.into_iter().enumerate() {
                let g = *index.entry(e.topic.clone()).or_insert_with(|| {
                    groups.push((e.topic.clone(), Vec::new(), Vec::new()));
                    groups.len() - 1
                });
                groups[g].1.push(i);
                groups[g].2.push(e);
            }
            let mut out: Vec<Option<Arc<Event>>> = vec![None; n];
            // A topic whose write its replicas did not confirm is stored
            // all the same: the others go on, and the whole batch is then
            // reported as stored but unconfirmed, in batch order, so that
            // every idempotency id is recorded with its own position.
            let mut unconfirmed = None;
            for (_, slots, group) in groups {
                let stored = match self.shared.publish_topic(group).await {
                    Ok(stored) => stored,
                    Err(EngineError::NotReplicated { stored, detail }) => {
                        unconfirmed.get_or_insert(detail);
                        stored
                    }
                    Err(e) => return Err(e),
                };
                for (slot, e) in slots.into_iter().zip(stored) {
                    out[slot] = Some(e);
                }
            }
            let out: Vec<Arc<Event>> = out.into_iter().flatten().collect();
            match unconfirmed {
                Some(detail) => Err(EngineError::NotReplicated {
                    stored: out,
                    detail,
                }),
                None => Ok(out),
            }
        })
    }

    fn read<'a>(
        &'a self,
        topic: &'a Topic,
        after: Option<Position>,
        limit: usize,
    ) -> BoxFuture<'a, Result<ReadResult, EngineError>> {
        let from = after.map_or(ReadFrom::Now, ReadFrom::After);
        Box::pin(self.shared.read_raw(topic, from, limit))
    }

    fn watch(&self, topic: &Topic) {
        self.presence.watch(topic);
        self.occupancy.changed(topic);
        let _ = self.control.send(listener::Control::Watch(topic.clone()));
    }

    fn unwatch(&self, topic: &Topic) {
        self.presence.unwatch(topic);
        self.occupancy.changed(topic);
        let _ = self.control.send(listener::Control::Unwatch(topic.clone()));
    }

    /// Occupancy decided cluster-wide (see the crate docs), and the joins
    /// and leaves presence decides on its own: members whose entry expired
    /// (their node died), members entered again by a refresh.
    fn report_occurrences(&self, sink: Arc<dyn Occurrences>) -> bool {
        self.presence.report_to(sink.clone());
        self.occupancy.start(sink)
    }

    fn idempotency_store(&self, ttl: Duration) -> Option<Arc<dyn IdempotencyStore>> {
        Some(Arc::new(RedisIdempotency::new(self.shared.clone(), ttl)))
    }

    fn one_time_store(&self) -> Option<Arc<dyn OneTimeStore>> {
        Some(Arc::new(self.one_time_tokens()))
    }

    /// Members in Redis, shared by every node (see the crate docs).
    fn presence_store(&self) -> Option<Arc<dyn PresenceStore>> {
        Some(self.presence.clone())
    }

    /// Closes this node's connections of `user` at once, then tells every
    /// node on the control channel (this one's listener closes again what
    /// opened meanwhile).
    fn disconnect_user<'a>(
        &'a self,
        user: &'a str,
        local: &'a Fanout,
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        local.close_user(user, herald_core::CloseReason::Disconnected);
        Box::pin(async move {
            let control = self.shared.keys.control();
            let client = self.shared.client(&control)?;
            let _: Value = client
                .publish(control, codec::disconnect_message(user))
                .await
                .map_err(unavailable)?;
            Ok(())
        })
    }

    /// Sends the signal on the topic's pub/sub channel; every node's
    /// listener (this one's too) dispatches it to its local subscribers,
    /// in order with the topic's events.
    fn signal<'a>(
        &'a self,
        event: Arc<Event>,
        _local: &'a Fanout,
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move { self.shared.signal(&event).await })
    }

    /// Ready while at least one master serving slots answers `PING` and
    /// its pub/sub connection and a publish connection are up (after an
    /// outage the pools reconnect one by one: ready means a publish is
    /// taken). With one master of a cluster down,
    /// its topics answer 503 while the others work, and the node stays
    /// ready: every node shares that master, and taking them all out of a
    /// load balancer at once would refuse every topic. Not ready when the
    /// layout is unknown or no master is reachable (a node cut off from
    /// Redis).
    fn ready(&self) -> BoxFuture<'_, Result<(), EngineError>> {
        Box::pin(async move {
            let nodes = self.shared.shards.layout_nodes();
            if nodes.is_empty() {
                return Err(EngineError::Unavailable(
                    "redis: the cluster's slot layout is not known yet".into(),
                ));
            }
            let mut last = None;
            for node in nodes {
                if !node.subscriber.is_connected() {
                    last = Some(EngineError::Unavailable(format!(
                        "redis {} pub/sub is not connected",
                        node.addr
                    )));
                    continue;
                }
                if let Err(e) = node.publish_client() {
                    last = Some(e);
                    continue;
                }
                match node.client() {
                    Ok(client) => match client.ping::<Value>(None).await {
                        Ok(_) => return Ok(()),
                        Err(e) => last = Some(unavailable(e)),
                    },
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| EngineError::Unavailable("redis is not connected".into())))
        })
    }

    fn name(&self) -> &'static str {
        "redis"
    }

    // `close` keeps the default: nothing waits to be flushed (a publish is
    // acknowledged once Redis has it), and a hub restarted over this engine
    // keeps working. Connections close when the engine is dropped.
}
