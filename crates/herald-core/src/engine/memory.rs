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

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;

use super::{
    resolve_start, BoxFuture, Budget, Engine, EngineError, Exhausted, HistoryLimits, ReadResult,
};
use crate::event::{now_ms, Event, NewEvent, Position};
use crate::fanout::Fanout;
use crate::topic::Topic;

const SHARDS: usize = 64;

/// Buckets of the table of epoch generations (8 bytes each: 512 KiB). A
/// multiple of `SHARDS` (64), so each bucket belongs to one shard and
/// changes under its lock.
pub const EPOCH_BUCKETS: usize = 1 << 16;

/// Epochs stay within 48 bits (see [`super::new_epoch`]).
const EPOCH_MASK: u64 = 0xffff_ffff_ffff;

/// The memory engine.
pub struct MemoryEngine {
    inner: Arc<Inner>,
    /// The expiry timer task, once attached.
    sweeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct Inner {
    limits: HistoryLimits,
    /// The engine's first epoch: generation 0 of every bucket.
    base_epoch: u64,
    /// The generation of each bucket of topics (see the module docs).
    generations: Box<[AtomicU64]>,
    /// The last generation given out.
    last_generation: AtomicU64,
    shards: Box<[Mutex<Shard>]>,
    /// Replaced when a new hub attaches (an in-process server restart keeps
    /// the engine, and so its history).
    fanout: RwLock<Option<Arc<Fanout>>>,
    max_topics: AtomicUsize,
    max_retained_bytes: AtomicU64,
    /// Topics held, all shards.
    topics: AtomicUsize,
    /// [`Budget::event_bytes`] of every retained event, all shards.
    retained_bytes: AtomicU64,
}

#[derive(Default)]
struct Shard {
    logs: HashMap<Topic, TopicLog>,
    /// When each topic's oldest event expires (ms since the Unix epoch): one
    /// valid entry per topic that retains events ([`TopicLog::queued`]);
    /// entries of a forgotten incarnation are skipped. An entry may be early
    /// (the count limit dropped that event since); the sweep then re-queues
    /// the topic at its new oldest event.
    expiry: BinaryHeap<Reverse<(u64, Topic)>>,
}

struct TopicLog {
    epoch: u64,
    head: u64,
    events: VecDeque<Arc<Event>>,
    /// The expiry time of the topic's one valid entry in its shard's
    /// expiry queue, if it has one (others are stale and skipped).
    queued: Option<u64>,
}

fn event_bytes(e: &Event) -> u64 {
    Budget::event_bytes(e.name.as_deref(), e.data.len())
}

impl TopicLog {
    fn new(epoch: u64) -> TopicLog {
        TopicLog {
            epoch,
            head: 0,
            events: VecDeque::new(),
            queued: None,
        }
    }

    /// Drops events beyond the count limit and older than the age limit.
    /// Returns the bytes freed.
    fn prune(&mut self, limits: &HistoryLimits, now: u64) -> u64 {
        let mut freed = 0;
        while self.events.len() > limits.max_events {
            if let Some(e) = self.events.pop_front() {
                freed += event_bytes(&e);
            }
        }
        let max_age = max_age_ms(limits);
        while let Some(e) = self.events.front() {
            if now.saturating_sub(e.published_at_ms) > max_age {
                freed += event_bytes(e);
                self.events.pop_front();
            } else {
                break;
            }
        }
        freed
    }

    /// The bytes a publish of `adding` events would free by pruning first.
    fn freed_by(&self, limits: &HistoryLimits, adding: usize, now: u64) -> u64 {
        let max_age = max_age_ms(limits);
        let over = (self.events.len() + adding).saturating_sub(limits.max_events);
        self.events
            .iter()
            .enumerate()
            .take_while(|(i, e)| *i < over || now.saturating_sub(e.published_at_ms) > max_age)
            .map(|(_, e)| event_bytes(e))
            .sum()
    }

    fn first_retained(&self) -> u64 {
        self.events
            .front()
            .map_or(self.head + 1, |e| e.position.seq)
    }

    /// The first millisecond at which [`TopicLog::prune`] drops the oldest
    /// retained event for its age (it drops events *older* than the limit).
    fn expires_at(&self, limits: &HistoryLimits) -> Option<u64> {
        self.events.front().map(|e| {
            e.published_at_ms
                .saturating_add(max_age_ms(limits))
                .saturating_add(1)
        })
    }
}

fn max_age_ms(limits: &HistoryLimits) -> u64 {
    u64::try_from(limits.max_age.as_millis()).unwrap_or(u64::MAX)
}

/// How often the timer expires history: half the age limit, between 10 ms
/// and 1 s.
fn sweep_period(limits: &HistoryLimits) -> Duration {
    (limits.max_age / 2).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

impl Inner {
    fn shard(&self, topic: &Topic) -> MutexGuard<'_, Shard> {
        let i = (topic.key().0 as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fanout(&self) -> Option<Arc<Fanout>> {
        self.fanout
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn usage(&self) -> (usize, u64) {
        (
            self.topics.load(Ordering::Relaxed),
            self.retained_bytes.load(Ordering::Relaxed),
        )
    }

    fn report(&self, fanout: Option<&Fanout>) {
        if let Some(f) = fanout {
            let (topics, bytes) = self.usage();
            f.metrics().set_usage(topics as u64, bytes);
        }
    }

    /// Refuses `events` if storing them would pass the budget.
    fn admit(&self, events: &[NewEvent], now: u64) -> Result<(), EngineError> {
        let mut per_topic: HashMap<&Topic, (usize, u64)> = HashMap::new();
        for e in events {
            let entry = per_topic.entry(&e.topic).or_default();
            entry.0 += 1;
            entry.1 += Budget::event_bytes(e.name.as_deref(), e.data.len());
        }
        let (mut new_topics, mut adding, mut freeing) = (0usize, 0u64, 0u64);
        for (topic, (count, bytes)) in per_topic {
            adding += bytes;
            match self.shard(topic).logs.get(topic) {
                None => new_topics += 1,
                Some(log) => freeing += log.freed_by(&self.limits, count, now),
            }
        }
        let max = self.max_topics.load(Ordering::Relaxed);
        if new_topics > 0 && self.topics.load(Ordering::Relaxed) + new_topics > max {
            return Err(EngineError::ServerFull(Exhausted::Topics { max }));
        }
        let max = self.max_retained_bytes.load(Ordering::Relaxed);
        let retained = self.retained_bytes.load(Ordering::Relaxed);
        if (retained + adding).saturating_sub(freeing) > max {
            return Err(EngineError::ServerFull(Exhausted::RetainedBytes { max }));
        }
        Ok(())
    }

    fn publish_now(&self, events: Vec<NewEvent>) -> Result<Vec<Arc<Event>>, EngineError> {
        let now = now_ms();
        self.admit(&events, now)?;
        let fanout = self.fanout();
        let mut out = Vec::with_capacity(events.len());
        for new in events {
            let topic = new.topic.clone();
            let mut guard = self.shard(&topic);
            let Shard { logs, expiry } = &mut *guard;
            let log = logs.entry(topic.clone()).or_insert_with(|| {
                self.topics.fetch_add(1, Ordering::Relaxed);
                TopicLog::new(self.epoch_of(&topic))
            });
            log.head += 1;
            let event = Arc::new(Event::new(new, Position::new(log.epoch, log.head), now));
            self.retained_bytes
                .fetch_add(event_bytes(&event), Ordering::Relaxed);
            log.events.push_back(event.clone());
            let freed = log.prune(&self.limits, now);
            self.retained_bytes.fetch_sub(freed, Ordering::Relaxed);
            if log.queued.is_none() {
                if let Some(at) = log.expires_at(&self.limits) {
                    expiry.push(Reverse((at, topic)));
                    log.queued = Some(at);
                }
            }
            // Dispatch under the topic's lock: subscribers see a topic's
            // events in position order, and a reader that takes the lock
            // after us sees the event in history.
            if let Some(f) = &fanout {
                f.dispatch(&event);
            }
            drop(guard);
            out.push(event);
        }
        self.report(fanout.as_deref());
        Ok(out)
    }

    fn read_now(&self, topic: &Topic, after: Option<Position>, limit: usize) -> ReadResult {
        let mut shard = self.shard(topic);
        let Some(log) = shard.logs.get_mut(topic) else {
            // Not held (never used, or dropped): read as an empty topic of
            // its bucket's epoch, which a dropped topic's positions are not.
            let epoch = self.epoch_of(topic);
            let (from, gap) = resolve_start(epoch, 0, 1, after);
            return ReadResult {
                epoch,
                head: 0,
                gap,
                from,
                events: Vec::new(),
            };
        };
        let freed = log.prune(&self.limits, now_ms());
        self.retained_bytes.fetch_sub(freed, Ordering::Relaxed);
        let (from, gap) = resolve_start(log.epoch, log.head, log.first_retained(), after);
        let events = match log.events.front() {
            Some(first) if from.seq < log.head => {
                let skip = (from.seq + 1).saturating_sub(first.position.seq) as usize;
                log.events.iter().skip(skip).take(limit).cloned().collect()
            }
            _ => Vec::new(),
        };
        ReadResult {
            epoch: log.epoch,
            head: log.head,
            gap,
            from,
            events,
        }
    }

    /// Forgets `topic` if it retains nothing and has no local subscriber.
    /// Returns whether it did. Called with the topic's shard locked.
    fn forget_if_idle(
        &self,
        logs: &mut HashMap<Topic, TopicLog>,
        topic: &Topic,
        fanout: Option<&Fanout>,
    ) -> bool {
        let idle = logs.get(topic).is_some_and(|log| log.events.is_empty())
            && fanout.map_or(0, |f| f.subscribers(topic)) == 0;
        if !idle {
            return false;
        }
        let Some(log) = logs.remove(topic) else {
            return false;
        };
        self.topics.fetch_sub(1, Ordering::Relaxed);
        if log.head > 0 {
            // Its positions must never be handed out again: if it is used
            // again it starts under another epoch. Done under the shard's
            // lock (the bucket belongs to it), so the topic cannot be
            // re-created in between.
            let next = self.last_generation.fetch_add(1, Ordering::Relaxed) + 1;
            self.generations[bucket(topic)].store(next, Ordering::Relaxed);
        }
        true
    }

    /// The epoch under which `topic` is read when not held, and created.
    fn epoch_of(&self, topic: &Topic) -> u64 {
        let generation = self.generations[bucket(topic)].load(Ordering::Relaxed);
        match self.base_epoch.wrapping_add(generation) & EPOCH_MASK {
            0 => 1,
            e => e,
        }
    }

    /// Drops expired events and forgets idle topics. Returns the topics
    /// forgotten.
    fn sweep(&self) -> u64 {
        self.sweep_at(now_ms())
    }

    /// [`Inner::sweep`] as if the time were `now` (ms since the Unix epoch).
    fn sweep_at(&self, now: u64) -> u64 {
        let fanout = self.fanout();
        let mut dropped = 0;
        for shard in self.shards.iter() {
            let mut guard = shard.lock().unwrap_or_else(|e| e.into_inner());
            let Shard { logs, expiry } = &mut *guard;
            // Topics still retaining events go back in the queue after the
            // pass, so the pass ends whatever their new expiry times.
            let mut requeue = Vec::new();
            while let Some(Reverse((at, _))) = expiry.peek() {
                if *at > now {
                    break;
                }
                let Some(Reverse((at, topic))) = expiry.pop() else {
                    break;
                };
                let Some(log) = logs.get_mut(&topic) else {
                    continue; // forgotten since
                };
                if log.queued != Some(at) {
                    continue; // an entry of an earlier incarnation
                }
                log.queued = None;
                let freed = log.prune(&self.limits, now);
                self.retained_bytes.fetch_sub(freed, Ordering::Relaxed);
                if let Some(next) = log.expires_at(&self.limits) {
                    log.queued = Some(next);
                    requeue.push(Reverse((next, topic)));
                } else if self.forget_if_idle(logs, &topic, fanout.as_deref()) {
                    dropped += 1;
                }
            }
            expiry.extend(requeue);
        }
        if let Some(f) = &fanout {
            if dropped > 0 {
                f.metrics()
                    .topics_dropped
                    .fetch_add(dropped, Ordering::Relaxed);
            }
        }
        self.report(fanout.as_deref());
        dropped
    }
}

fn bucket(topic: &Topic) -> usize {
    (topic.key().0 as usize) % EPOCH_BUCKETS
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
                let period = sweep_period(&self.inner.limits);
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
            let epoch = self.inner.epoch_of(topic);
            shard.logs.insert(topic.clone(), TopicLog::new(epoch));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::GapReason;
    use crate::event::Data;

    fn ev(t: &Topic, s: &str) -> NewEvent {
        NewEvent::new(t.clone(), Data::Text(s.into()))
    }

    #[tokio::test]
    async fn history_by_count() {
        let e = MemoryEngine::with_epoch(
            HistoryLimits {
                max_events: 3,
                max_age: Duration::from_secs(60),
            },
            9,
        );
        let t = Topic::new("t").unwrap();
        for i in 0..5 {
            e.publish(vec![ev(&t, &i.to_string())]).await.unwrap();
        }
        let r = e.read(&t, Some(Position::new(9, 0)), 100).await.unwrap();
        assert_eq!(r.gap, Some(GapReason::HistoryTruncated));
        assert_eq!(
            r.events.iter().map(|e| e.position.seq).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        let r = e.read(&t, Some(Position::new(9, 2)), 100).await.unwrap();
        assert_eq!(r.gap, None);
        assert_eq!(r.events.len(), 3);
        let r = e.read(&t, Some(Position::new(9, 3)), 1).await.unwrap();
        assert_eq!(r.events[0].position.seq, 4);
        assert!(r.more());
        let r = e.read(&t, None, 100).await.unwrap();
        assert!(r.events.is_empty());
        assert_eq!(r.from, Position::new(9, 5));
    }

    #[tokio::test]
    async fn history_by_age() {
        let e = MemoryEngine::with_epoch(
            HistoryLimits {
                max_events: 100,
                max_age: Duration::from_millis(50),
            },
            9,
        );
        let t = Topic::new("t").unwrap();
        e.publish(vec![ev(&t, "old")]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        e.publish(vec![ev(&t, "new")]).await.unwrap();
        let r = e.read(&t, Some(Position::new(9, 0)), 100).await.unwrap();
        assert_eq!(r.gap, Some(GapReason::HistoryTruncated));
        assert_eq!(r.events.len(), 1);
        assert_eq!(r.events[0].data, Data::Text("new".into()));
    }

    fn limits(max_events: usize, max_age: Duration) -> HistoryLimits {
        HistoryLimits {
            max_events,
            max_age,
        }
    }

    fn attached(e: &MemoryEngine) -> (Arc<Fanout>, Arc<crate::Metrics>) {
        let metrics = Arc::new(crate::Metrics::default());
        let fanout = Arc::new(Fanout::new(metrics.clone()));
        e.attach(fanout.clone());
        (fanout, metrics)
    }

    #[tokio::test]
    async fn topic_budget_refuses_new_topics_only() {
        let e = MemoryEngine::with_epoch(limits(10, Duration::from_secs(60)), 9);
        e.set_budget(Budget {
            max_topics: 2,
            ..Budget::default()
        });
        let (a, b, c) = (
            Topic::new("a").unwrap(),
            Topic::new("b").unwrap(),
            Topic::new("c").unwrap(),
        );
        e.publish(vec![ev(&a, "1")]).await.unwrap();
        e.publish(vec![ev(&b, "1")]).await.unwrap();
        let err = e.publish(vec![ev(&c, "1")]).await.unwrap_err();
        assert!(
            matches!(err, EngineError::ServerFull(Exhausted::Topics { max: 2 })),
            "{err}"
        );
        // A batch with one new topic is refused whole: nothing stored on `a`.
        let err = e.publish(vec![ev(&a, "2"), ev(&c, "1")]).await.unwrap_err();
        assert!(matches!(err, EngineError::ServerFull(_)));
        assert_eq!(e.read(&a, None, 10).await.unwrap().head, 1);
        // Existing topics still take events.
        e.publish(vec![ev(&a, "2")]).await.unwrap();
        assert_eq!(e.usage().0, 2);
    }

    #[tokio::test]
    async fn byte_budget_counts_retained_events() {
        let e = MemoryEngine::with_epoch(limits(2, Duration::from_secs(60)), 9);
        let one = Budget::event_bytes(None, 1000);
        e.set_budget(Budget {
            max_retained_bytes: 3 * one,
            ..Budget::default()
        });
        let (a, b) = (Topic::new("a").unwrap(), Topic::new("b").unwrap());
        let big = "x".repeat(1000);
        e.publish(vec![ev(&a, &big), ev(&a, &big)]).await.unwrap();
        e.publish(vec![ev(&b, &big)]).await.unwrap();
        assert_eq!(e.usage(), (2, 3 * one));
        let err = e.publish(vec![ev(&b, &big)]).await.unwrap_err();
        assert!(
            matches!(
                err,
                EngineError::ServerFull(Exhausted::RetainedBytes { .. })
            ),
            "{err}"
        );
        // `a` keeps 2 events: a third replaces the oldest, so it fits.
        e.publish(vec![ev(&a, &big)]).await.unwrap();
        assert_eq!(e.usage(), (2, 3 * one));
    }

    #[tokio::test]
    async fn timer_expires_history_and_forgets_idle_topics() {
        let e = MemoryEngine::with_epoch(limits(100, Duration::from_millis(100)), 9);
        let (_fanout, metrics) = attached(&e);
        let mut cursors = Vec::new();
        for i in 0..200 {
            let t = Topic::new(&format!("t/{i}")).unwrap();
            let out = e.publish(vec![ev(&t, "x")]).await.unwrap();
            cursors.push((t, out[0].position));
        }
        assert_eq!(e.usage().0, 200);
        assert_eq!(metrics.usage().0, 200);
        // Nobody touches the topics: the timer (every 50 ms) frees them.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while e.usage() != (0, 0) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(e.usage(), (0, 0));
        assert_eq!(metrics.usage(), (0, 0));
        assert_eq!(metrics.topics_dropped.load(Ordering::Relaxed), 200);
        // A cursor of a forgotten topic is a gap, and a new event of that
        // topic never reuses its position.
        let (t, old) = cursors[7].clone();
        let r = e.read(&t, Some(old), 10).await.unwrap();
        assert_eq!(r.gap, Some(GapReason::EpochChanged));
        let again = e.publish(vec![ev(&t, "y")]).await.unwrap();
        assert_ne!(again[0].position.epoch, old.epoch);
        let r = e.read(&t, Some(old), 10).await.unwrap();
        assert_eq!(r.gap, Some(GapReason::EpochChanged));
        assert_eq!(r.events.len(), 1);
        // Other buckets keep the engine's first epoch: a quiet topic's
        // cursor (sequence 0) needs no gap, a made-up position gets one.
        let fresh = (0..1000)
            .map(|i| Topic::new(&format!("fresh/{i}")).unwrap())
            .find(|f| e.epoch_of(f) == 9)
            .expect("a topic of an untouched bucket");
        let r = e.read(&fresh, Some(Position::new(9, 0)), 1).await.unwrap();
        assert_eq!(r.gap, None);
        let r = e.read(&fresh, Some(Position::new(9, 3)), 1).await.unwrap();
        assert_eq!(r.gap, Some(GapReason::UnknownPosition));
    }

    #[tokio::test]
    async fn a_subscribed_topic_is_held_until_its_last_subscriber_leaves() {
        let e = MemoryEngine::with_epoch(limits(100, Duration::from_millis(50)), 9);
        let (fanout, metrics) = attached(&e);
        let t = Topic::new("watched").unwrap();
        let q = fanout.new_queue(8, None);
        assert!(fanout.add(&t, &q));
        e.watch(&t);
        let from_now = e.read(&t, None, 10).await.unwrap().from;
        e.publish(vec![ev(&t, "x")]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        e.sweep();
        // The event expired, the topic stays: its subscriber's position holds.
        assert_eq!(e.usage(), (1, 0));
        let r = e.read(&t, Some(from_now), 10).await.unwrap();
        assert_eq!(r.gap, Some(GapReason::HistoryTruncated));
        assert!(fanout.remove(&t, q.id()));
        e.unwatch(&t);
        assert_eq!(e.usage(), (0, 0));
        assert_eq!(metrics.topics_dropped.load(Ordering::Relaxed), 1);
        assert_ne!(e.epoch_of(&t), 9, "forgotten after handing out positions");
        // A watched topic that never had an event leaves no epoch change.
        let u = Topic::new("quiet").unwrap();
        let epoch = e.epoch_of(&u);
        assert!(fanout.add(&u, &q));
        e.watch(&u);
        assert!(fanout.remove(&u, q.id()));
        e.unwatch(&u);
        assert_eq!(e.epoch_of(&u), epoch);
        assert_eq!(e.usage(), (0, 0));
    }

    #[tokio::test]
    async fn the_timer_task_ends_with_the_engine() {
        let alive = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        let before = alive();
        let e = MemoryEngine::new(limits(10, Duration::from_millis(40)));
        let _attached = attached(&e);
        assert_eq!(alive(), before + 1);
        drop(e);
        tokio::task::yield_now().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while alive() > before && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(alive(), before);
        let e = MemoryEngine::new(limits(10, Duration::from_millis(40)));
        let _attached = attached(&e);
        assert_eq!(alive(), before + 1);
        e.close().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while alive() > before && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(alive(), before);
    }

    #[tokio::test]
    async fn a_sweep_at_the_exact_expiry_millisecond_ends() {
        let e = MemoryEngine::with_epoch(limits(10, Duration::from_millis(100)), 9);
        let t = Topic::new("edge").unwrap();
        let at = e.publish(vec![ev(&t, "x")]).await.unwrap()[0].published_at_ms;
        // Exactly the age limit: not older than it, so kept (and the pass
        // returns, whatever it re-queues).
        assert_eq!(e.inner.sweep_at(at + 100), 0);
        assert_eq!(e.usage().0, 1);
        assert_eq!(e.inner.sweep_at(at + 101), 1);
        assert_eq!(e.usage(), (0, 0));
    }

    #[tokio::test]
    async fn queue_entries_of_a_forgotten_incarnation_are_skipped() {
        let e = MemoryEngine::with_epoch(limits(10, Duration::from_millis(50)), 9);
        let t = Topic::new("again").unwrap();
        let first = e.publish(vec![ev(&t, "1")]).await.unwrap()[0].published_at_ms;
        tokio::time::sleep(Duration::from_millis(80)).await;
        // A read empties the log, the last subscriber leaving forgets it:
        // its queue entry stays behind.
        assert!(e.read(&t, None, 1).await.unwrap().events.is_empty());
        e.unwatch(&t);
        assert_eq!(e.usage().0, 0);
        let second = e.publish(vec![ev(&t, "2")]).await.unwrap()[0].published_at_ms;
        assert_eq!(e.inner.shard(&t).expiry.len(), 2);
        // The old entry is due; the new incarnation's event is not.
        assert_eq!(e.inner.sweep_at(first + 51), 0);
        assert_eq!(e.usage().0, 1);
        assert_eq!(e.inner.shard(&t).expiry.len(), 1, "the stale entry is gone");
        assert_eq!(e.inner.sweep_at(second + 51), 1);
        assert_eq!(e.inner.shard(&t).expiry.len(), 0);
    }
}
