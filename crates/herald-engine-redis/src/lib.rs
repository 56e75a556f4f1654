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
//! - **Publish**: one Lua script per topic appends the events, notifies the
//!   topic's sharded pub/sub channel with each (`SPUBLISH`) and trims, all
//!   atomically: a subscriber that resumes during a publish reads either
//!   before or after it, and the core's live-first-then-back-fill resume does
//!   the rest.
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
//! The client library is [fred](https://docs.rs/fred): it speaks sharded
//! pub/sub to a single server and to a cluster (routing each `SSUBSCRIBE` to
//! the shard that owns the channel), reconnects with a backoff policy, and
//! takes `redis://`, `rediss://`, `redis-cluster://` and `rediss-cluster://`
//! URLs.
//!
//! # Layout
//!
//! - [`keys`]: key and channel names (pure).
//! - [`scripts`]: the Lua scripts for publish, read and idempotency claims.
//! - `codec`: events to script arguments and back (pure).
//! - `listener`: the pub/sub task: subscriptions, dispatch, catch-up, and
//!   keeping watched topics' keys alive.
//! - [`stores`]: idempotency records and one-time tokens in Redis.
//! - `presence`: presence members in Redis, their refresh and sweep tasks.
//! - `occupancy`: which nodes have subscribers of a topic, for the
//!   webhooks' occupied / vacated.
//! - Tests: `tests/suite.rs` runs herald-core's engine suite (resume,
//!   retention, gaps, idempotency, one-time tokens); `tests/engine.rs` and
//!   `tests/lifecycle.rs` what is Redis's own (nodes, outages, expiry);
//!   `tests/presence.rs` the suite's presence and presence across nodes
//!   (a node that dies).
//! - `test_server` (feature `test-util`): a throw-away `redis-server` for
//!   the tests of this and other crates.
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
pub mod stores;
#[cfg(feature = "test-util")]
pub mod test_server;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use fred::clients::Pool;
use fred::interfaces::{ClientLike, PubsubInterface};
use fred::prelude::{Builder, Client, Config, ReconnectPolicy};
use fred::types::scripts::Script;
use fred::types::Value;
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
}

impl RedisConfig {
    /// The configuration for `url` (see [`RedisConfig::url`]) with `history`
    /// and the defaults: key prefix `herald:`, 2 pooled connections, a
    /// 2-second command timeout, reconnection backoff up to 2 seconds,
    /// [`PresenceTiming::default`].
    pub fn new(url: &str, history: HistoryLimits) -> RedisConfig {
        RedisConfig {
            url: url.to_owned(),
            prefix: "herald:".to_owned(),
            history,
            pool_size: 2,
            command_timeout: Duration::from_secs(2),
            max_reconnect_delay: Duration::from_secs(2),
            presence: PresenceTiming::default(),
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
    pub(crate) pool: Pool,
    publish_script: Script,
    read_script: Script,
    pub(crate) touch_script: Script,
    pub(crate) fanout: RwLock<Option<Arc<Fanout>>>,
}

/// The Redis engine. See the crate docs.
pub struct RedisEngine {
    shared: Arc<Shared>,
    subscriber: Client,
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
        let mut fred_config = Config::from_url(&config.url).map_err(|e| RedisConfigError::Url {
            url: config.url.clone(),
            reason: e.details().to_string(),
        })?;
        // Start even when Redis is down; the reconnect policy takes over.
        fred_config.fail_fast = false;
        let max_delay = u32::try_from(config.max_reconnect_delay.as_millis()).unwrap_or(u32::MAX);
        let mut builder = Builder::from_config(fred_config);
        builder
            .set_policy(ReconnectPolicy::new_exponential(
                0,
                50,
                max_delay.max(50),
                2,
            ))
            .with_connection_config(|c| {
                c.connection_timeout = config.command_timeout;
                c.internal_command_timeout = config.command_timeout;
                // A publish must never run twice: a command whose connection
                // drops fails instead of being sent again.
                c.max_command_attempts = 1;
            })
            .with_performance_config(|p| {
                p.default_command_timeout = config.command_timeout;
                // Pub/sub messages are buffered here between the socket and
                // the listener; if it ever lags, it catches up from history.
                p.broadcast_channel_capacity = 4096;
            });
        let client_error = |e: fred::error::Error| RedisConfigError::Client(e.to_string());
        let pool = builder
            .build_pool(config.pool_size.max(1))
            .map_err(client_error)?;
        let subscriber = builder.build().map_err(client_error)?;
        pool.connect_pool();
        subscriber.connect();
        let wait = async {
            let _ = pool.wait_for_connect().await;
            let _ = subscriber.wait_for_connect().await;
        };
        if tokio::time::timeout(config.command_timeout, wait)
            .await
            .is_err()
        {
            tracing::warn!(url = %redact_url(&config.url), "Redis is not reachable yet; retrying in the background");
        }
        let shared = Arc::new(Shared {
            keys: Keys::new(&config.prefix),
            history: config.history,
            policies: RwLock::new(Arc::new(TopicPolicies::default())),
            pool,
            publish_script: Script::from_lua(scripts::publish()),
            read_script: Script::from_lua(scripts::read()),
            touch_script: Script::from_lua(scripts::TOUCH),
            fanout: RwLock::new(None),
        });
        let (control, rx) = mpsc::unbounded_channel();
        let listener = tokio::spawn(listener::run(shared.clone(), subscriber.clone(), rx));
        let presence = presence::RedisPresence::new(shared.clone(), config.presence);
        let upkeep = presence.start();
        let occupancy = occupancy::RedisOccupancy::new(shared.clone(), config.presence);
        Ok(RedisEngine {
            shared,
            subscriber,
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

    /// A client of the command pool (tests and tools).
    pub fn client(&self) -> &Client {
        self.shared.pool.next()
    }

    /// A shared one-time token store on this engine's connections.
    pub fn one_time_tokens(&self) -> RedisOneTimeTokens {
        RedisOneTimeTokens::new(self.shared.clone())
    }
}

impl Drop for RedisEngine {
    fn drop(&mut self) {
        self.listener.abort();
        for task in &self.upkeep {
            task.abort();
        }
        self.occupancy.stop();
        // Close the connections (their tasks would otherwise outlive us).
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (pool, subscriber) = (self.shared.pool.clone(), self.subscriber.clone());
            rt.spawn(async move {
                let _ = subscriber.quit().await;
                let _ = pool.quit().await;
            });
        }
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
    /// A connected command client, or 503 at once.
    pub(crate) fn client(&self) -> Result<&Client, EngineError> {
        let c = self.pool.next_connected();
        if c.is_connected() {
            Ok(c)
        } else {
            Err(EngineError::Unavailable("redis is not connected".into()))
        }
    }

    /// `topic`'s history limits: its policy's over the engine's (0 events:
    /// ephemeral, no stream at all).
    fn limits_of(&self, topic: &Topic) -> HistoryLimits {
        self.policies
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .history_limits(topic, self.history)
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
        let client = self.client()?;
        let _: Value = client
            .spublish(
                self.keys.channel(&event.topic),
                codec::signal_message(event),
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn publish_topic(&self, events: Vec<NewEvent>) -> Result<Vec<Arc<Event>>, EngineError> {
        let topic = events[0].topic.clone();
        let client = self.client()?;
        let limits = self.limits_of(&topic);
        let mut args: Vec<Value> = Vec::with_capacity(4 + 3 * events.len());
        args.push(new_epoch().to_string().into());
        args.push(limits.max_events.to_string().into());
        args.push(max_age_ms(&limits).to_string().into());
        args.push(self.keys.channel(&topic).into());
        args.push(ttl_ms(&limits).to_string().into());
        for e in &events {
            codec::push_event_args(e, &mut args);
        }
        let keys = vec![self.keys.meta(&topic), self.keys.stream(&topic)];
        let answer: Vec<Value> = self
            .publish_script
            .evalsha_with_reload(client, keys, args)
            .await
            .map_err(write_error)?;
        let (epoch, first, at) = codec::publish_answer(&answer).map_err(unavailable)?;
        Ok(events
            .into_iter()
            .enumerate()
            .map(|(i, e)| Arc::new(Event::new(e, Position::new(epoch, first + i as u64), at)))
            .collect())
    }

    /// Reads `topic`; `after` is `Some(None)` for the latest event alone.
    pub(crate) async fn read_raw(
        &self,
        topic: &Topic,
        after: ReadFrom,
        limit: usize,
    ) -> Result<ReadResult, EngineError> {
        let client = self.client()?;
        let limits = self.limits_of(topic);
        let (after_epoch, after_seq) = match after {
            ReadFrom::Now => (String::new(), 0),
            ReadFrom::Latest => ("*".to_owned(), 0),
            ReadFrom::After(p) => (p.epoch.to_string(), p.seq),
        };
        let args: Vec<Value> = vec![
            new_epoch().to_string().into(),
            after_epoch.into(),
            after_seq.to_string().into(),
            limit.to_string().into(),
            limits.max_events.to_string().into(),
            max_age_ms(&limits).to_string().into(),
            ttl_ms(&limits).to_string().into(),
        ];
        let keys = vec![self.keys.meta(topic), self.keys.stream(topic)];
        let answer: Vec<Value> = self
            .read_script
            .evalsha_with_reload(client, keys, args)
            .await
            .map_err(unavailable)?;
        let raw = codec::read_answer(topic, answer).map_err(unavailable)?;
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
            for (_, slots, group) in groups {
                let stored = self.shared.publish_topic(group).await?;
                for (slot, e) in slots.into_iter().zip(stored) {
                    out[slot] = Some(e);
                }
            }
            Ok(out.into_iter().flatten().collect())
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
            let client = self.shared.client()?;
            let _: Value = client
                .publish(self.shared.keys.control(), codec::disconnect_message(user))
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

    fn ready(&self) -> BoxFuture<'_, Result<(), EngineError>> {
        Box::pin(async move {
            if !self.subscriber.is_connected() {
                return Err(EngineError::Unavailable(
                    "redis pub/sub is not connected".into(),
                ));
            }
            let client = self.shared.client()?;
            let _: Value = client.ping(None).await.map_err(unavailable)?;
            Ok(())
        })
    }

    fn name(&self) -> &'static str {
        "redis"
    }

    // `close` keeps the default: nothing waits to be flushed (a publish is
    // acknowledged once Redis has it), and a hub restarted over this engine
    // keeps working. Connections close when the engine is dropped.
}
