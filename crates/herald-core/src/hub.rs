//! The hub: the one publish path and the one subscribe path every transport uses.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::engine::memory::MemoryEngine;
use crate::engine::{Budget, Engine, EngineError, HistoryLimits};
use crate::event::{Event, NewEvent};
use crate::fanout::Fanout;
use crate::idempotency::{Claim, Idempotency, IdempotencyStore};
use crate::metrics::Metrics;
use crate::occurrence::{LocalOccupancy, Occurrence, OccurrenceKind, Occurrences};
use crate::one_time::{LocalOneTime, OneTimeStore};
use crate::policy::{TopicPolicies, TopicPolicy};
use crate::presence::{
    signal_event, Change, Holds, LocalPresence, Member, PresenceGuard, PresenceStore,
};
use crate::subscription::Subscription;
use crate::topic::Topic;
use crate::wire::reserved;

/// Limits and sizes of the hub. Every field has a production default.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// History kept per topic (used when the hub builds its own memory engine).
    pub history: HistoryLimits,
    /// Live events queued per connection before it counts as a slow consumer.
    pub queue_capacity: usize,
    /// Largest `data` of one event, in bytes.
    pub max_data_bytes: usize,
    /// Most events in one batch publish.
    pub max_batch: usize,
    /// Most topics one subscription (one SSE stream, one WebSocket) may hold.
    pub max_topics_per_subscription: usize,
    /// Events read from history per page while a subscriber catches up.
    pub read_page: usize,
    /// How long idempotency keys are remembered.
    pub idempotency_ttl: Duration,
    /// How many idempotency keys are remembered at most (in this process's
    /// memory; a shared store bounds itself).
    pub idempotency_max_keys: usize,
    /// Bytes of idempotency keys (topic and id) remembered at most, in this
    /// process's memory.
    pub idempotency_max_bytes: usize,
    /// Global caps on the topics and retained bytes the engine holds.
    pub budget: Budget,
    /// Per-topic policies by pattern (history, ephemeral topics, client
    /// publishing, publish rate); none by default. Given to the engine with
    /// [`Engine::set_policies`].
    pub policies: Arc<TopicPolicies>,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            history: HistoryLimits::default(),
            queue_capacity: 1024,
            max_data_bytes: 1024 * 1024,
            max_batch: 1000,
            max_topics_per_subscription: 64,
            read_page: 256,
            idempotency_ttl: Duration::from_secs(600),
            idempotency_max_keys: 100_000,
            idempotency_max_bytes: 32 * 1024 * 1024,
            budget: Budget::default(),
            policies: Arc::new(TopicPolicies::default()),
        }
    }
}

/// Why a publish was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// An event name failed [`validate_event_name`]; the text says which
    /// rule (maps to 400 `invalid_event`).
    #[error("event name is invalid: {0}")]
    InvalidEventName(&'static str),
    /// An event's data is over `HubConfig::max_data_bytes` (maps to 413
    /// `too_large`).
    #[error("event data is {len} bytes; the maximum is {max}")]
    TooLarge {
        /// The data's size in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// A batch is empty or holds more than `HubConfig::max_batch` events
    /// (maps to 400 `invalid_batch`).
    #[error("a batch holds 1 to {max} events; this one holds {len}")]
    BadBatch {
        /// Events in the batch.
        len: usize,
        /// The most events a batch may hold.
        max: usize,
    },
    /// An idempotency id is empty or longer than [`MAX_ID_LEN`] bytes (maps
    /// to 400 `invalid_id`).
    #[error("idempotency id is invalid: {0}")]
    InvalidId(&'static str),
    /// The engine refused or failed; nothing of the publish was stored unless
    /// the error says otherwise (see [`EngineError`]).
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Longest event name accepted, in bytes.
pub const MAX_EVENT_NAME_LEN: usize = 128;
/// Longest idempotency id accepted, in bytes.
pub const MAX_ID_LEN: usize = 256;

/// Checks an event name: non-empty, short, one line, not reserved.
pub fn validate_event_name(name: &str) -> Result<(), PublishError> {
    if name.is_empty() {
        return Err(PublishError::InvalidEventName("it is empty"));
    }
    if name.len() > MAX_EVENT_NAME_LEN {
        return Err(PublishError::InvalidEventName(
            "it is longer than 128 bytes",
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(PublishError::InvalidEventName(
            "it contains a control character",
        ));
    }
    if name.starts_with(reserved::PREFIX) {
        return Err(PublishError::InvalidEventName(
            "names starting with \"herald.\" are reserved",
        ));
    }
    Ok(())
}

/// How long a publish waits for an earlier publish holding the same
/// idempotency id before it gives up.
const CLAIM_WAIT: Duration = Duration::from_secs(30);

/// What an idempotent batch does with one of its events.
enum Planned {
    /// Stored by this publish; `claim` is the (topic, id) record it owns
    /// and completes once stored.
    Store { claim: Option<(Topic, Box<str>)> },
    /// Published before: answered from its record.
    Known(Arc<Event>),
    /// Repeats the event at this index of the batch (the same id earlier).
    Repeat(usize),
}

pub(crate) struct HubInner {
    pub(crate) engine: Arc<dyn Engine>,
    pub(crate) fanout: Arc<Fanout>,
    pub(crate) config: HubConfig,
    metrics: Arc<Metrics>,
    idempotency: Arc<dyn IdempotencyStore>,
    one_time: Arc<dyn OneTimeStore>,
    pub(crate) presence: Arc<dyn PresenceStore>,
    pub(crate) holds: Holds,
    /// Where occurrences go ([`Hub::report_occurrences`]); unset, nothing
    /// is reported and nothing is spent on it.
    occurrences: OnceLock<Observer>,
    /// Where copies of publishes go ([`Hub::set_mirror`]); unset, none.
    mirror: OnceLock<Arc<dyn Mirror>>,
    /// This process's part of connection ids (random per start).
    node: u32,
    next_client: AtomicU64,
    shutdown: watch::Sender<bool>,
}

/// Copies of publishes for a log kept beside the topics (Mercure's, in
/// `herald-http`): set on a hub with [`Hub::set_mirror`], asked about every
/// event of every later [`Hub::publish_batch`] (and so of every publish
/// path: HTTP, WebSocket, the Rust API). A copy is stored in the same
/// engine call as its original, after the whole batch, and is not in the
/// publish's answer; [`Hub::publish_verbatim`] asks no mirror.
pub trait Mirror: Send + Sync + 'static {
    /// The event to store beside `event` (validated already), or `None`.
    fn mirror(&self, event: &NewEvent) -> Option<NewEvent>;
}

/// The publish/subscribe hub. Cheap to clone; every clone is the same hub.
///
/// ```
/// # tokio_test_block(async {
/// use herald_core::{Hub, HubConfig, NewEvent, Data, Topic, Delivery};
/// let hub = Hub::memory(HubConfig::default());
/// let topic = Topic::new("orders/123").unwrap();
/// let mut sub = hub.subscribe();
/// sub.add(topic.clone(), None).await.unwrap();
/// hub.publish(NewEvent::new(topic, Data::Text("shipped".into()))).await.unwrap();
/// match sub.next().await {
///     Delivery::Event(e) => assert_eq!(e.data, Data::Text("shipped".into())),
///     other => panic!("{other:?}"),
/// }
/// # });
/// # fn tokio_test_block<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

impl Hub {
    /// A hub over `engine`.
    pub fn new(engine: Arc<dyn Engine>, config: HubConfig) -> Hub {
        let metrics = Arc::new(Metrics::default());
        let fanout = Arc::new(Fanout::new(metrics.clone()));
        engine.set_budget(config.budget);
        engine.set_policies(config.policies.clone());
        engine.attach(fanout.clone());
        let idempotency = engine
            .idempotency_store(config.idempotency_ttl)
            .unwrap_or_else(|| {
                Arc::new(Idempotency::new(
                    config.idempotency_ttl,
                    config.idempotency_max_keys,
                    config.idempotency_max_bytes,
                ))
            });
        let one_time = engine
            .one_time_store()
            .unwrap_or_else(|| Arc::new(LocalOneTime::default()));
        let presence = engine
            .presence_store()
            .unwrap_or_else(|| Arc::new(LocalPresence::default()));
        Hub {
            inner: Arc::new(HubInner {
                engine,
                fanout,
                config,
                metrics,
                idempotency,
                one_time,
                presence,
                holds: Holds::default(),
                occurrences: OnceLock::new(),
                mirror: OnceLock::new(),
                node: (crate::engine::new_epoch() & 0xffff_ffff) as u32,
                next_client: AtomicU64::new(1),
                shutdown: watch::channel(false).0,
            }),
        }
    }

    /// A hub with an in-memory engine using `config.history`.
    pub fn memory(config: HubConfig) -> Hub {
        let engine = Arc::new(MemoryEngine::new(config.history));
        Hub::new(engine, config)
    }

    /// The limits this hub was built with.
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// The policy of `topic` (see [`crate::policy`]): the first matching
    /// rule's of [`HubConfig::policies`], else the defaults. Cached per topic.
    pub fn policy(&self, topic: &Topic) -> Arc<TopicPolicy> {
        self.inner.config.policies.resolve(topic)
    }

    /// The counters and gauges this hub and its subscriptions update.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The engine that stores and orders this hub's events.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.inner.engine
    }

    /// Where one-time tokens wait between issue and redemption: the
    /// engine's shared store ([`Engine::one_time_store`]), else one in this
    /// process's memory. Authentication keeps its tokens here, so that
    /// every node on a shared engine can redeem them.
    pub fn one_time_store(&self) -> &Arc<dyn OneTimeStore> {
        &self.inner.one_time
    }

    /// Publishes one event. Resolves once the engine has accepted it.
    pub async fn publish(&self, event: NewEvent) -> Result<Arc<Event>, PublishError> {
        let mut v = self.publish_batch(vec![event]).await?;
        v.pop().ok_or(PublishError::Engine(EngineError::Unavailable(
            "engine returned no event".into(),
        )))
    }

    /// Publishes events in order; all are validated before any is stored.
    /// Events whose idempotency id was already published (and whose record
    /// has not expired or been evicted, see [`crate::idempotency`]) are not
    /// stored again: the answer carries the first publish's position and
    /// time, with the retry's own content (a retry repeats the same event).
    ///
    /// A publish the engine's [`Budget`] cannot take fails whole with
    /// [`EngineError::ServerFull`] and is counted in
    /// [`Metrics::budget_refusals`].
    pub async fn publish_batch(
        &self,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Arc<Event>>, PublishError> {
        self.publish_observed(events, true).await
    }

    /// Publishes events in order as [`Hub::publish_batch`] does, without
    /// the copies the [`Mirror`] would add: for the layer that set the
    /// mirror, publishing to its own log and to topics at once.
    pub async fn publish_verbatim(
        &self,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Arc<Event>>, PublishError> {
        self.publish_observed(events, false).await
    }

    /// Sets where copies of every later publish go (see [`Mirror`]); once
    /// per hub. Returns false, leaving the first in place, when one is set.
    pub fn set_mirror(&self, mirror: Arc<dyn Mirror>) -> bool {
        self.inner.mirror.set(mirror).is_ok()
    }

    /// `events` followed by their mirrored copies (when `mirrored` and a
    /// mirror is set), and how many of them are the originals.
    fn with_mirrors(&self, mut events: Vec<NewEvent>, mirrored: bool) -> (Vec<NewEvent>, usize) {
        let n = events.len();
        if let (true, Some(m)) = (mirrored, self.inner.mirror.get()) {
            for i in 0..n {
                if let Some(mut copy) = m.mirror(&events[i]) {
                    copy.trace = events[i].trace;
                    events.push(copy);
                }
            }
        }
        (events, n)
    }

    async fn publish_observed(
        &self,
        mut events: Vec<NewEvent>,
        mirrored: bool,
    ) -> Result<Vec<Arc<Event>>, PublishError> {
        let started = Instant::now();
        // Spans: `publish`, with `validate` and `store` inside (see crate::event::trace).
        let span = crate::event::publish_span(&mut events);
        let r = tracing::Instrument::instrument(self.publish_inner(events, mirrored), span).await;
        match &r {
            Ok(v) => {
                self.inner.metrics.observe_publish(started.elapsed());
                let _ = v;
            }
            Err(e) => {
                self.inner
                    .metrics
                    .publish_errors
                    .fetch_add(1, Ordering::Relaxed);
                if matches!(e, PublishError::Engine(EngineError::ServerFull(_))) {
                    self.inner
                        .metrics
                        .budget_refusals
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        r
    }

    fn validate(&self, events: &[NewEvent]) -> Result<(), PublishError> {
        let cfg = &self.inner.config;
        if events.is_empty() || events.len() > cfg.max_batch {
            return Err(PublishError::BadBatch {
                len: events.len(),
                max: cfg.max_batch,
            });
        }
        for e in events {
            if let Some(name) = &e.name {
                validate_event_name(name)?;
            }
            if e.data.len() > cfg.max_data_bytes {
                return Err(PublishError::TooLarge {
                    len: e.data.len(),
                    max: cfg.max_data_bytes,
                });
            }
            if let Some(id) = &e.idempotency_key {
                if id.is_empty() || id.len() > MAX_ID_LEN {
                    return Err(PublishError::InvalidId("it must be 1 to 256 bytes"));
                }
            }
        }
        Ok(())
    }

    async fn publish_inner(
        &self,
        events: Vec<NewEvent>,
        mirrored: bool,
    ) -> Result<Vec<Arc<Event>>, PublishError> {
        tracing::debug_span!("validate").in_scope(|| self.validate(&events))?;
        if *self.inner.shutdown.borrow() {
            return Err(EngineError::ShuttingDown.into());
        }
        if events.iter().all(|e| e.idempotency_key.is_none()) {
            let (events, n) = self.with_mirrors(events, mirrored);
            let stored_at = Instant::now();
            let store = self.inner.engine.publish(events);
            let mut out = tracing::Instrument::instrument(store, tracing::debug_span!("store"))
                .await
                .map_err(|e| match e {
                    // Stored but unconfirmed: a plain 503 to the caller.
                    EngineError::NotReplicated { detail, .. } => EngineError::Unavailable(detail),
                    e => e,
                })?;
            self.inner.metrics.observe_store(stored_at.elapsed());
            out.truncate(n);
            self.inner
                .metrics
                .events_published
                .fetch_add(out.len() as u64, Ordering::Relaxed);
            return Ok(out);
        }
        self.publish_idempotent(events, mirrored).await
    }

    /// Publishes a batch where some events carry an idempotency id, in one
    /// pass over the batch: each event is planned (stored now, answered from
    /// its record, or a repeat of an earlier event of the batch with the
    /// same id), the events to store go to the engine in one call, and the
    /// answers are assembled in batch order.
    async fn publish_idempotent(
        &self,
        events: Vec<NewEvent>,
        mirrored: bool,
    ) -> Result<Vec<Arc<Event>>, PublishError> {
        let deadline = Instant::now() + CLAIM_WAIT;
        let mut plan: Vec<Planned> = Vec::with_capacity(events.len());
        let mut to_store = Vec::new();
        // The first index of each scoped key in the batch.
        let mut first_of: HashMap<String, usize> = HashMap::new();
        for event in events {
            let Some(id) = event.idempotency_key.clone() else {
                plan.push(Planned::Store { claim: None });
                to_store.push(event);
                continue;
            };
            let key = Idempotency::scoped_key(event.topic.as_str(), &id);
            if let Some(&first) = first_of.get(&key) {
                // The same id twice in one batch: the later repeats the earlier.
                plan.push(Planned::Repeat(first));
                continue;
            }
            first_of.insert(key, plan.len());
            match self.claim(&event.topic, &id, deadline).await {
                Ok(Claim::DoneAt(position, at)) => {
                    plan.push(Planned::Known(Arc::new(Event::new(event, position, at))));
                }
                // Owned (`claim` waits out `Wait` itself).
                Ok(_) => {
                    plan.push(Planned::Store {
                        claim: Some((event.topic.clone(), id)),
                    });
                    to_store.push(event);
                }
                Err(e) => {
                    self.abandon(&plan).await;
                    return Err(e);
                }
            }
        }
        let stored = if to_store.is_empty() {
            Vec::new()
        } else {
            let (to_store, n) = self.with_mirrors(to_store, mirrored);
            let stored_at = Instant::now();
            let store = self.inner.engine.publish(to_store);
            match tracing::Instrument::instrument(store, tracing::debug_span!("store")).await {
                Ok(mut v) => {
                    self.inner.metrics.observe_store(stored_at.elapsed());
                    v.truncate(n);
                    v
                }
                Err(EngineError::NotReplicated { stored, detail }) => {
                    // Stored but not known to survive the primary's loss:
                    // refused (503), yet recorded, so that a retry with the
                    // same id answers with these positions and never stores
                    // the event a second time.
                    self.record_unconfirmed(&plan, stored).await;
                    return Err(EngineError::Unavailable(detail).into());
                }
                Err(err) => {
                    self.abandon(&plan).await;
                    return Err(err.into());
                }
            }
        };
        self.inner
            .metrics
            .events_published
            .fetch_add(stored.len() as u64, Ordering::Relaxed);
        let mut stored = stored.into_iter();
        let mut out: Vec<Arc<Event>> = Vec::with_capacity(plan.len());
        for planned in plan {
            let event = match planned {
                Planned::Store { claim } => {
                    let event =
                        stored
                            .next()
                            .ok_or(PublishError::Engine(EngineError::Unavailable(
                                "lost a batch result".into(),
                            )))?;
                    if let Some((topic, id)) = claim {
                        if let Err(err) = self.inner.idempotency.complete(&topic, &id, &event).await
                        {
                            // Stored, so still acknowledged; a retry waits out the claim.
                            tracing::warn!(%err, "could not record an idempotent publish");
                        }
                    }
                    event
                }
                Planned::Known(event) => event,
                Planned::Repeat(first) => out[first].clone(),
            };
            out.push(event);
        }
        Ok(out)
    }

    /// Claims `id` on `topic`, waiting out another publish that holds it
    /// until `deadline`. Answers [`Claim::Owned`] or [`Claim::DoneAt`].
    async fn claim(
        &self,
        topic: &Topic,
        id: &str,
        deadline: Instant,
    ) -> Result<Claim, PublishError> {
        loop {
            match self.inner.idempotency.claim(topic, id).await? {
                Claim::Wait(notify) => {
                    if Instant::now() > deadline {
                        return Err(EngineError::Unavailable(
                            "an earlier publish with the same id is still in progress".into(),
                        )
                        .into());
                    }
                    let pause = Duration::from_millis(20);
                    match notify {
                        Some(n) => {
                            let _ = tokio::time::timeout(pause, n.notified()).await;
                        }
                        None => tokio::time::sleep(pause).await,
                    }
                }
                answer => return Ok(answer),
            }
        }
    }

    /// Releases the claims `plan` holds (its publish failed).
    /// Completes the claims of `plan` with the events the engine stored
    /// but could not confirm as replicated (in plan order, mirrors after
    /// them), and abandons any claim left without one.
    async fn record_unconfirmed(&self, plan: &[Planned], stored: Vec<Arc<Event>>) {
        let mut stored = stored.into_iter();
        for planned in plan {
            if let Planned::Store { claim } = planned {
                let event = stored.next();
                if let Some((topic, id)) = claim {
                    let done = match &event {
                        Some(event) => self.inner.idempotency.complete(topic, id, event).await,
                        None => Err(EngineError::Unavailable("lost a batch result".into())),
                    };
                    if done.is_err() {
                        self.inner.idempotency.abandon(topic, id).await;
                    }
                }
            }
        }
    }

    async fn abandon(&self, plan: &[Planned]) {
        for planned in plan {
            if let Planned::Store {
                claim: Some((topic, id)),
            } = planned
            {
                self.inner.idempotency.abandon(topic, id).await;
            }
        }
    }

    /// A new, empty subscription with the default queue capacity.
    pub fn subscribe(&self) -> Subscription {
        self.subscribe_with(None)
    }

    /// A new subscription whose queue wakes `on_slow` when it is closed for
    /// falling behind (so a connection that is not being read can be dropped).
    pub fn subscribe_with(&self, on_slow: Option<Arc<Notify>>) -> Subscription {
        let q = self
            .inner
            .fanout
            .new_queue(self.inner.config.queue_capacity, on_slow);
        Subscription::new(self.inner.clone(), q)
    }

    /// Stops accepting publishes and closes every subscription (clients
    /// reconnect elsewhere or later, with their cursors).
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        self.inner.fanout.shutdown();
    }

    /// True once [`Hub::shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        *self.inner.shutdown.borrow()
    }

    /// Resolves when [`Hub::shutdown`] is called.
    pub async fn shutdown_signal(&self) {
        let mut rx = self.inner.shutdown.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }

    /// A new connection id, unique in the cluster while this process
    /// runs: `<8 hex digits of this process>-<hex counter>` (the
    /// `client` of presence entries).
    pub fn new_client_id(&self) -> String {
        let n = self.inner.next_client.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}-{n:x}", self.inner.node)
    }

    /// Makes `member` present on `topic` while the returned guard lives,
    /// if the topic's policy tracks presence (else the guard holds
    /// nothing and this costs nothing). The first hold of a (topic,
    /// client) pair records the member in the engine's presence store and,
    /// when it was not there and the policy has `join_leave`, signals
    /// `herald.join` to the topic's subscribers. When the last guard of
    /// the pair is dropped, the member leaves after `linger` (a long
    /// poll's grace period; zero for streams) unless the pair was taken
    /// again meanwhile.
    ///
    /// A store that cannot be reached is logged and counted
    /// ([`Metrics::presence_errors`]); the connection goes on without its
    /// entry.
    pub async fn enter(&self, topic: &Topic, member: Member, linger: Duration) -> PresenceGuard {
        let policy = self.policy(topic);
        if !policy.tracks_presence() {
            return PresenceGuard::none();
        }
        if self.inner.holds.take(topic, &member.client) {
            match self.inner.presence.join(topic, &member).await {
                Ok(true) => {
                    self.inner
                        .report_member(OccurrenceKind::Join, topic, &member);
                    if policy.join_leave {
                        let event = signal_event(topic, Change::Join, &member);
                        if let Err(e) = self.inner.engine.signal(event, &self.inner.fanout).await {
                            self.presence_failed("herald.join", &e);
                        }
                    }
                }
                Ok(false) => {}
                Err(e) => self.presence_failed("join", &e),
            }
        }
        PresenceGuard::new(&self.inner, topic.clone(), member, linger)
    }

    fn presence_failed(&self, what: &str, e: &EngineError) {
        presence_failed(&self.inner, what, e);
    }

    /// The members of `topic` (empty for a topic without presence), on
    /// every node the engine spans.
    ///
    /// # Errors
    /// [`EngineError::Unavailable`] when the store cannot be read.
    pub async fn presence(&self, topic: &Topic) -> Result<Vec<Member>, EngineError> {
        if !self.policy(topic).tracks_presence() {
            return Ok(Vec::new());
        }
        self.inner.presence.members(topic).await
    }

    /// Closes every connection of `user` (a credential's `sub`), on every
    /// node the engine spans: SSE streams end with `herald.disconnect
    /// {"reason":"disconnected"}`, WebSockets close with 4009.
    ///
    /// # Errors
    /// [`EngineError::Unavailable`] when the other nodes could not be told
    /// (this node's connections are closed anyway).
    pub async fn disconnect_user(&self, user: &str) -> Result<(), EngineError> {
        self.inner
            .engine
            .disconnect_user(user, &self.inner.fanout)
            .await
    }

    /// This node's connections of `user`, oldest first.
    pub fn connections_of(&self, user: &str) -> Vec<crate::fanout::ConnectionInfo> {
        self.inner.fanout.connections_of(user)
    }

    /// Topics with subscribers on this node, the busiest first, at most
    /// `limit`; and how many there are in all.
    pub fn busiest_topics(&self, limit: usize) -> (Vec<(Topic, usize)>, usize) {
        self.inner.fanout.busiest(limit)
    }

    /// (topic, client) pairs this process holds present or is about to
    /// let go after their grace period.
    pub fn presence_holds(&self) -> usize {
        self.inner.holds.len()
    }

    /// The most live events waiting in one of this node's subscriber
    /// queues now: a scan of the queues, for `/metrics` (not a hot path).
    pub fn deepest_queue(&self) -> usize {
        self.inner.fanout.deepest_queue()
    }

    /// Local subscribers of a topic (tests, admin).
    pub fn subscribers(&self, topic: &crate::Topic) -> usize {
        self.inner.fanout.subscribers(topic)
    }

    /// Tells `sink` from now on what happens to topics (see
    /// [`crate::occurrence`]): joins and leaves where presence decides
    /// them, and occupied / vacated, decided by the engine when it spans
    /// nodes ([`Engine::report_occurrences`]), else from this process's
    /// fan-out. Call it once, before clients connect: topics occupied
    /// before are not reported. Returns false (and changes nothing) when
    /// an observer was registered already.
    pub fn report_occurrences(&self, sink: Arc<dyn Occurrences>) -> bool {
        if self.inner.occurrences.get().is_some() {
            return false;
        }
        let local = (!self.inner.engine.report_occurrences(sink.clone())).then(LocalOccupancy::new);
        self.inner.occurrences.set(Observer { sink, local }).is_ok()
    }
}

/// The registered observer, and the hub's own occupancy when the engine
/// does not decide it.
struct Observer {
    sink: Arc<dyn Occurrences>,
    local: Option<Arc<LocalOccupancy>>,
}

impl HubInner {
    /// `topic` got its first or lost its last local subscriber: tells the
    /// observer, when there is one and the hub decides occupancy. Once the
    /// hub is shutting down, vacancies are told at once (no grace), so that
    /// they can still be delivered.
    pub(crate) fn occupancy_changed(&self, topic: &Topic) {
        let Some(Observer {
            sink,
            local: Some(local),
        }) = self.occurrences.get()
        else {
            return;
        };
        let grace = if *self.shutdown.borrow() {
            Duration::ZERO
        } else {
            sink.vacate_grace()
        };
        let (fanout, t) = (self.fanout.clone(), topic.clone());
        local.reconcile(topic, move || fanout.subscribers(&t), sink, grace);
    }

    /// Tells the observer, if any, that `member` joined or left `topic`.
    fn report_member(&self, kind: OccurrenceKind, topic: &Topic, member: &Member) {
        if let Some(o) = self.occurrences.get() {
            o.sink.occurred(Occurrence::member(
                kind,
                topic,
                &member.user,
                &member.client,
            ));
        }
    }
}

/// Removes `client` from `topic` in the presence store and, when it was
/// there and the policy has `join_leave`, signals `herald.leave`.
pub(crate) async fn leave(hub: &Arc<HubInner>, topic: &Topic, client: &str) {
    match hub.presence.leave(topic, client).await {
        Ok(Some(member)) => {
            hub.report_member(OccurrenceKind::Leave, topic, &member);
            if hub.config.policies.resolve(topic).join_leave {
                let event = signal_event(topic, Change::Leave, &member);
                if let Err(e) = hub.engine.signal(event, &hub.fanout).await {
                    presence_failed(hub, "herald.leave", &e);
                }
            }
        }
        Ok(None) => {}
        Err(e) => presence_failed(hub, "leave", &e),
    }
}

fn presence_failed(hub: &HubInner, what: &str, e: &EngineError) {
    hub.metrics.presence_errors.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(error = %e, "presence {what} failed");
}
