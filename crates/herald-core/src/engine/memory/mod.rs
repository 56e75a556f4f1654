//! The in-process engine: a ring buffer of recent events per topic.
//!
//! One epoch per engine instance to start with: a restart starts a new
//! epoch, so clients that resume with an older cursor get a gap event instead
//! of silence.
//!
//! State is bounded (see [`Engine`]'s "Bounded state"):
//! - events older than the age limit are dropped by a timer task (started by
//!   [`Engine::attach`], stopped by [`Engine::close`] or when the engine is
//!   dropped), which pops a per-shard queue ordered by expiry time, so it
//!   never walks topics with nothing to expire;
//! - a topic with no retained event and no local subscriber is forgotten
//!   (its counters too). If it had handed out positions and is used again,
//!   it starts under a new epoch, so an older cursor gets `herald.gap`
//!   (`epoch_changed`) and sequence numbers never repeat within an epoch.
//!   What remembers that is a fixed table of [`EPOCH_BUCKETS`] generations,
//!   indexed by topic key: forgetting a topic that handed out positions
//!   moves its bucket to a new generation, and a topic the engine does not
//!   hold reads (and is re-created) under its bucket's epoch. A cursor of a
//!   quiet topic (sequence 0) stays valid unless a topic of the same bucket
//!   was forgotten since; then it gets a gap it did not strictly need
//!   (never a missed one);
//! - a [`Budget`] caps topics and retained bytes; a publish beyond it is
//!   refused whole with [`EngineError::ServerFull`]. Under concurrent
//!   publishes the caps may be passed by what those publishes carry (the
//!   check and the insert are not one atomic step across shards).

mod log;
mod state;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use super::{BoxFuture, Budget, Engine, EngineError, HistoryLimits, ReadResult};
use crate::event::{Event, NewEvent, Position};
use crate::fanout::Fanout;
use crate::topic::Topic;
use state::{Inner, Shard, SHARDS};

/// Buckets of the table of epoch generations (8 bytes each: 512 KiB). A
/// multiple of `SHARDS` (64), so each bucket belongs to one shard and
/// changes under its lock.
pub const EPOCH_BUCKETS: usize = 1 << 16;

/// The memory engine.
pub struct MemoryEngine {
    inner: Arc<Inner>,
    /// The expiry timer task, once attached.
    sweeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// How often the timer expires history: half the age limit, between 10 ms
/// and 1 s.
fn sweep_period(limits: &HistoryLimits) -> Duration {
    (limits.max_age / 2).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

impl MemoryEngine {
    /// An engine with the default [`Budget`] (the hub sets its own with
    /// [`Engine::set_budget`]).
    pub fn new(limits: HistoryLimits) -> MemoryEngine {
        MemoryEngine::with_epoch(limits, super::new_epoch())
    }

    /// An engine with a given epoch (tests).
    pub fn with_epoch(limits: HistoryLimits, epoch: u64) -> MemoryEngine {
        let budget = Budget::default();
        MemoryEngine {
            inner: Arc::new(Inner {
                limits,
                policies: RwLock::new(Arc::new(crate::policy::TopicPolicies::default())),
                base_epoch: epoch,
                generations: (0..EPOCH_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
                last_generation: AtomicU64::new(0),
                shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
                fanout: RwLock::new(None),
                max_topics: AtomicUsize::new(budget.max_topics),
                max_retained_bytes: AtomicU64::new(budget.max_retained_bytes),
                topics: AtomicUsize::new(0),
                retained_bytes: AtomicU64::new(0),
            }),
            sweeper: Mutex::new(None),
        }
    }

    /// The engine's first epoch: that of every topic until a topic of its
    /// bucket that handed out positions is forgotten.
    pub fn epoch(&self) -> u64 {
        self.inner.base_epoch
    }

    /// The epoch `topic` is read under when not held, and created under.
    pub fn epoch_of(&self, topic: &Topic) -> u64 {
        self.inner.epoch_of(topic)
    }

    /// What the engine holds: (topics, bytes of retained events as
    /// [`Budget::event_bytes`] counts them).
    pub fn usage(&self) -> (usize, u64) {
        self.inner.usage()
    }

    /// Runs one expiry pass now (the timer runs one every
    /// `max_age / 2`, between 10 ms and 1 s). Returns the topics forgotten.
    pub fn sweep(&self) -> u64 {
        self.inner.sweep()
    }

    fn stop_sweeper(&self) {
        if let Some(task) = self
            .sweeper
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

impl Drop for MemoryEngine {
    fn drop(&mut self) {
        self.stop_sweeper();
    }
}

/// The timer: one expiry pass per period while the engine lives.
async fn run_sweeper(inner: Weak<Inner>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.sweep();
    }
}

impl Engine for MemoryEngine {
    fn attach(&self, fanout: Arc<Fanout>) {
        *self.inner.fanout.write().unwrap_or_else(|e| e.into_inner()) = Some(fanout.clone());
        self.inner.report(Some(&fanout));
        let mut sweeper = self.sweeper.lock().unwrap_or_else(|e| e.into_inner());
        if sweeper.is_none() {
            // Without a runtime (a synchronous test) expiry still happens on
            // reads and publishes of the topic, and on `sweep`.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let mut limits = self.inner.limits;
                let policies = self
                    .inner
                    .policies
                    .read()
                    .unwrap_or_else(|e| e.into_inner());
                if let Some(shortest) = policies.shortest_max_age() {
                    limits.max_age = limits.max_age.min(shortest);
                }
                drop(policies);
                let period = sweep_period(&limits);
                *sweeper = Some(rt.spawn(run_sweeper(Arc::downgrade(&self.inner), period)));
            }
        }
    }

    fn set_budget(&self, budget: Budget) {
        self.inner
            .max_topics
            .store(budget.max_topics, Ordering::Relaxed);
        self.inner
            .max_retained_bytes
            .store(budget.max_retained_bytes, Ordering::Relaxed);
    }

    fn set_policies(&self, policies: Arc<crate::policy::TopicPolicies>) {
        *self
            .inner
            .policies
            .write()
            .unwrap_or_else(|e| e.into_inner()) = policies;
    }

    fn publish(
        &self,
        events: Vec<NewEvent>,
    ) -> BoxFuture<'_, Result<Vec<Arc<Event>>, EngineError>> {
        let out = self.inner.publish_now(events);
        Box::pin(async move { out })
    }

    fn read<'a>(
        &'a self,
        topic: &'a Topic,
        after: Option<Position>,
        limit: usize,
    ) -> BoxFuture<'a, Result<ReadResult, EngineError>> {
        let r = self.inner.read_now(topic, after, limit);
        Box::pin(async move { Ok(r) })
    }

    /// Holds the topic while it has subscribers, so that the epoch a "from
    /// now" subscriber is given is the one its first event gets.
    fn watch(&self, topic: &Topic) {
        let mut shard = self.inner.shard(topic);
        if !shard.logs.contains_key(topic) {
            self.inner.topics.fetch_add(1, Ordering::Relaxed);
            let log = self.inner.new_log(topic);
            shard.logs.insert(topic.clone(), log);
        }
    }

    fn unwatch(&self, topic: &Topic) {
        let fanout = self.inner.fanout();
        let mut shard = self.inner.shard(topic);
        if self
            .inner
            .forget_if_idle(&mut shard.logs, topic, fanout.as_deref())
        {
            drop(shard);
            if let Some(f) = &fanout {
                f.metrics().topics_dropped.fetch_add(1, Ordering::Relaxed);
            }
            self.inner.report(fanout.as_deref());
        }
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), EngineError>> {
        Box::pin(async { Ok(()) })
    }

    fn name(&self) -> &'static str {
        "memory"
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.stop_sweeper();
        Box::pin(async {})
    }
}

/// Default age limit, re-exported for configuration docs.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
