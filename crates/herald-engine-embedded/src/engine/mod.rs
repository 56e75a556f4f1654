//! The [`Engine`] implementation: the publish path hands events to the
//! writer thread; reads are answered from the hot tail in memory, or from
//! the store.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use herald_core::engine::{resolve_start, BoxFuture, Budget, ReadResult};
use herald_core::fanout::Fanout;
use herald_core::idempotency::IdempotencyStore;
use herald_core::policy::TopicPolicies;
use herald_core::{Engine, EngineError, Event, NewEvent, Position, Topic};
use tokio::sync::{oneshot, Notify, Semaphore};

use crate::config::EmbeddedConfig;
use crate::error::{OpenError, StoreError};
use crate::store::Store;
use crate::writer::{Msg, Request, Writer};
use idempotency::DurableIdempotency;

mod ephemeral;
mod idempotency;
#[cfg(test)]
mod tests;
mod views;

const SHARDS: usize = 64;
/// A read whose events were pruned while it read from disk starts over,
/// at most this many times.
const READ_ATTEMPTS: usize = 4;

const OPEN: u8 = 0;
const FAILED: u8 = 1;
const CLOSED: u8 = 2;

/// The embedded durable engine. See the [crate docs](crate).
pub struct EmbeddedEngine {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Msg>,
    pending: Arc<Semaphore>,
    max_pending: usize,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// What readers and the writer share.
pub(crate) struct Shared {
    /// The store's epoch.
    pub(crate) epoch: u64,
    /// The epoch of topics created from now on, and of topics the store
    /// does not hold (see [`crate::format::TOPIC_EPOCH_KEY`]).
    topic_epoch: AtomicU64,
    tail_cap: usize,
    tail_max_bytes: usize,
    tail_total_max_bytes: usize,
    /// Bytes in all hot tails.
    tail_bytes: AtomicUsize,
    /// Where the next trim of the tails starts (a shard index).
    trim_at: AtomicUsize,
    views: Box<[Mutex<HashMap<Topic, TopicView>>]>,
    fanout: RwLock<Option<Arc<Fanout>>>,
    /// Taken out on close, so that the files are released.
    store: RwLock<Option<Arc<Store>>>,
    state: AtomicU8,
    failure: Mutex<String>,
    /// Why the final persist at close failed, if it did.
    close_error: Mutex<Option<String>>,
    /// The topic budget (`Budget::max_topics`).
    max_topics: AtomicUsize,
    /// How long idempotency records count, in milliseconds.
    idempotency_ttl_ms: AtomicU64,
    /// Idempotency ids whose publish is in flight.
    claims: Mutex<HashMap<String, Arc<Notify>>>,
    /// Idempotency records on disk (set by the writer after each commit).
    pub(crate) idempotency_records: AtomicUsize,
    /// Per-topic policies (history limits, ephemeral topics); see
    /// `ephemeral.rs`.
    policies: RwLock<Arc<TopicPolicies>>,
}

/// What readers see of a topic: its committed positions and hot tail.
struct TopicView {
    id: u64,
    epoch: u64,
    head: u64,
    first: u64,
    /// The newest events, contiguous and ending at `head` (maybe empty).
    tail: VecDeque<Arc<Event>>,
    /// Their bytes, as [`EmbeddedConfig::tail_event_bytes`] counts them.
    tail_bytes: usize,
}

impl EmbeddedEngine {
    /// Opens (or creates) the store in `config.dir`, recovers every topic,
    /// and starts the writer. Blocking: it reads the store; from async code
    /// call it in `tokio::task::spawn_blocking`.
    pub fn open(config: EmbeddedConfig) -> Result<EmbeddedEngine, OpenError> {
        let started = std::time::Instant::now();
        let (store, recovered) = Store::open(&config.dir, config.verify_on_open)?;
        let store = Arc::new(store);
        let epoch = store.marker().epoch;
        if let Some((expected, found)) = recovered.rolled_back {
            tracing::warn!(
                dir = %config.dir.display(),
                expected_commits = expected,
                found_commits = found,
                previous_epoch = %format_args!("{:x}", store.previous_epoch()),
                epoch = %format_args!("{epoch:x}"),
                "the store holds fewer commits than it acknowledged (its journal was cut or \
                 restored from an older copy): started a new epoch, so clients resuming \
                 with earlier cursors get an epoch_changed gap"
            );
        }
        let shared = Arc::new(Shared {
            epoch,
            topic_epoch: AtomicU64::new(recovered.topic_epoch),
            tail_cap: config.hot_tail.min(config.history.max_events),
            tail_max_bytes: config.hot_tail_bytes,
            tail_total_max_bytes: config.hot_tail_total_bytes.max(1),
            tail_bytes: AtomicUsize::new(0),
            trim_at: AtomicUsize::new(0),
            views: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            fanout: RwLock::new(None),
            store: RwLock::new(Some(store.clone())),
            state: AtomicU8::new(OPEN),
            failure: Mutex::new(String::new()),
            close_error: Mutex::new(None),
            max_topics: AtomicUsize::new(Budget::default().max_topics),
            idempotency_ttl_ms: AtomicU64::new(600_000),
            claims: Mutex::new(HashMap::new()),
            idempotency_records: AtomicUsize::new(recovered.idempotency_records),
            policies: RwLock::new(Arc::new(TopicPolicies::default())),
        });
        for r in &recovered.topics {
            shared.shard(&r.topic).insert(
                r.topic.clone(),
                TopicView {
                    id: r.meta.id,
                    epoch: r.meta.epoch,
                    head: r.meta.head,
                    first: r.meta.first,
                    tail: VecDeque::new(),
                    tail_bytes: 0,
                },
            );
        }
        tracing::info!(
            dir = %config.dir.display(),
            topics = recovered.topics.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "embedded store open"
        );
        let (tx, rx) = mpsc::channel();
        let max_pending = config.max_pending_events.max(1);
        let writer = Writer::new(shared.clone(), store, rx, &config, recovered);
        let watch = shared.clone();
        let handle = std::thread::Builder::new()
            .name("herald-writer".into())
            .spawn(move || {
                // A bug in the writer must not look like a shutdown: publishes
                // fail with 503 and `/readyz` says why.
                let run = std::panic::AssertUnwindSafe(|| writer.run());
                if std::panic::catch_unwind(run).is_err() {
                    tracing::error!("the store's writer thread panicked");
                    watch.fail("the store's writer thread stopped after an internal error".into());
                }
            })
            .map_err(|e| OpenError::Io {
                path: config.dir.clone(),
                source: e,
            })?;
        Ok(EmbeddedEngine {
            shared,
            tx,
            pending: Arc::new(Semaphore::new(max_pending)),
            max_pending,
            writer: Mutex::new(Some(handle)),
        })
    }

    /// The store's epoch: that of every topic created before the first
    /// topic was dropped.
    pub fn epoch(&self) -> u64 {
        self.shared.epoch
    }

    /// The epoch topics created now get (see
    /// [`format::TOPIC_EPOCH_KEY`](crate::format::TOPIC_EPOCH_KEY)).
    pub fn topic_epoch(&self) -> u64 {
        self.shared.topic_epoch()
    }

    /// Topics the engine holds (with retained events, or a subscriber).
    pub fn topic_count(&self) -> usize {
        self.shared
            .views
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Idempotency records on disk (unexpired, or expired but not yet
    /// removed by the timer).
    pub fn idempotency_records(&self) -> usize {
        self.shared.idempotency_records.load(Ordering::Relaxed)
    }

    /// Bytes held in the hot tails (see [`EmbeddedConfig::tail_event_bytes`]).
    pub fn hot_tail_bytes(&self) -> usize {
        self.shared.tail_bytes()
    }

    /// After [`Engine::close`]: why the final flush and fsync failed, if it
    /// did. Events acknowledged before were already durable; a binary
    /// should still exit non-zero, since the store's state at exit is not
    /// known.
    pub fn close_error(&self) -> Option<String> {
        self.shared
            .close_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Publishes `events`: those of ephemeral topics at once, in memory
    /// only; the others through the writer (first, so that a refused write
    /// publishes nothing). The answer keeps the events' order.
    async fn publish_inner(&self, events: Vec<NewEvent>) -> Result<Vec<Arc<Event>>, EngineError> {
        let policies = self.shared.policies();
        if policies.has_ephemeral() {
            let live: Vec<bool> = events
                .iter()
                .map(|e| policies.resolve(&e.topic).is_ephemeral())
                .collect();
            if live.iter().all(|l| *l) {
                return self.shared.publish_ephemeral(events);
            }
            if live.iter().any(|l| *l) {
                let (mut ephemeral, mut stored) = (Vec::new(), Vec::new());
                for (e, l) in events.into_iter().zip(&live) {
                    if *l {
                        ephemeral.push(e)
                    } else {
                        stored.push(e)
                    }
                }
                let mut stored = self.publish_stored(stored).await?.into_iter();
                let mut ephemeral = self.shared.publish_ephemeral(ephemeral)?.into_iter();
                return Ok(live
                    .iter()
                    .filter_map(|l| if *l { ephemeral.next() } else { stored.next() })
                    .collect());
            }
        }
        self.publish_stored(events).await
    }

    /// Publishes `events` through the writer: durable once answered.
    async fn publish_stored(&self, events: Vec<NewEvent>) -> Result<Vec<Arc<Event>>, EngineError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.shared.check_writable()?;
        let n = u32::try_from(events.len().min(self.max_pending)).unwrap_or(u32::MAX);
        let permit = self
            .pending
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|_| EngineError::ShuttingDown)?;
        let (reply, answer) = oneshot::channel();
        // If the writer is gone (closed, or it failed) say which.
        let stopped = || {
            self.shared
                .check_writable()
                .err()
                .unwrap_or(EngineError::ShuttingDown)
        };
        self.tx
            .send(Msg::Publish(Request {
                events,
                reply,
                _permit: permit,
            }))
            .map_err(|_| stopped())?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }

    async fn read_inner(
        &self,
        topic: &Topic,
        after: Option<Position>,
        limit: usize,
    ) -> Result<ReadResult, EngineError> {
        for _ in 0..READ_ATTEMPTS {
            // Decide from memory: answer there, or say what to read from disk.
            let (mut result, id, want, end) = {
                let shard = self.shared.shard(topic);
                let Some(v) = shard.get(topic) else {
                    let epoch = self.shared.topic_epoch();
                    let (from, gap) = resolve_start(epoch, 0, 1, after);
                    return Ok(ReadResult {
                        epoch,
                        head: 0,
                        gap,
                        from,
                        events: Vec::new(),
                    });
                };
                let (from, gap) = resolve_start(v.epoch, v.head, v.first, after);
                let mut result = ReadResult {
                    epoch: v.epoch,
                    head: v.head,
                    gap,
                    from,
                    events: Vec::new(),
                };
                if after.is_none() || from.seq >= v.head || limit == 0 {
                    return Ok(result);
                }
                let want = from.seq + 1;
                if let Some(front) = v.tail.front() {
                    if front.position.seq <= want {
                        let skip = (want - front.position.seq) as usize;
                        result.events = v.tail.iter().skip(skip).take(limit).cloned().collect();
                        return Ok(result);
                    }
                }
                let end = v.head.min(from.seq.saturating_add(limit as u64));
                (result, v.id, want, end)
            };
            let store = self
                .shared
                .store
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .ok_or_else(|| EngineError::Unavailable("the engine is closed".into()))?;
            let events = {
                let owned = topic.clone();
                let epoch = result.epoch;
                blocking(move || store.read_events(&owned, id, epoch, want, end))
                    .await
                    .map_err(|e| {
                        tracing::error!(%topic, error = %e, "history read failed");
                        EngineError::Unavailable(e.to_string())
                    })?
            };
            let contiguous = events
                .iter()
                .enumerate()
                .all(|(i, e)| e.position.seq == want + i as u64);
            if contiguous && events.last().map(|e| e.position.seq) == Some(end) {
                self.shared.fill_tail(topic, result.epoch, &events);
                result.events = events;
                return Ok(result);
            }
            // Retention dropped some of them while we read: decide again.
        }
        Err(EngineError::Unavailable(format!(
            "the history of {topic} kept changing during a read"
        )))
    }
}

/// Runs blocking store work off the async threads when there are any.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => h
            .spawn_blocking(f)
            .await
            .map_err(|e| StoreError::Storage(format!("read task failed: {e}")))?,
        Err(_) => f(),
    }
}

impl Engine for EmbeddedEngine {
    fn attach(&self, fanout: Arc<Fanout>) {
        // What it holds is known now; the writer reports changes.
        fanout
            .metrics()
            .set_usage(self.topic_count() as u64, self.hot_tail_bytes() as u64);
        *self
            .shared
            .fanout
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(fanout);
    }

    /// Applies `max_topics` (a publish that would create a topic beyond it
    /// is refused whole with `ServerFull`). Retained events live on disk,
    /// bounded by the history limits; their memory is the hot tails',
    /// bounded by [`EmbeddedConfig::hot_tail_total_bytes`], so
    /// `max_retained_bytes` is not applied.
    fn set_budget(&self, budget: Budget) {
        self.shared
            .max_topics
            .store(budget.max_topics.max(1), Ordering::Relaxed);
    }

    /// Idempotency records on disk, written in the batch of their event (a
    /// retry after a crash is answered with the first publish's position),
    /// kept for `ttl` and bounded by
    /// [`EmbeddedConfig::idempotency_max_records`] and
    /// [`EmbeddedConfig::idempotency_max_bytes`].
    fn idempotency_store(&self, ttl: Duration) -> Option<Arc<dyn IdempotencyStore>> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.shared.idempotency_ttl_ms.store(ms, Ordering::Relaxed);
        Some(Arc::new(DurableIdempotency {
            shared: self.shared.clone(),
        }))
    }

    /// Each topic's history limits are its policy's (applied by the
    /// writer when it appends and trims); events of ephemeral topics never
    /// reach the writer (see `ephemeral.rs`).
    fn set_policies(&self, policies: Arc<TopicPolicies>) {
        self.shared.set_policies(policies);
    }

    fn publish(
        &self,
        events: Vec<NewEvent>,
    ) -> BoxFuture<'_, Result<Vec<Arc<Event>>, EngineError>> {
        Box::pin(self.publish_inner(events))
    }

    fn watch(&self, topic: &Topic) {
        self.shared.watch_ephemeral(topic);
    }

    fn unwatch(&self, topic: &Topic) {
        self.shared.unwatch_ephemeral(topic);
    }

    fn read<'a>(
        &'a self,
        topic: &'a Topic,
        after: Option<Position>,
        limit: usize,
    ) -> BoxFuture<'a, Result<ReadResult, EngineError>> {
        Box::pin(self.read_inner(topic, after, limit))
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), EngineError>> {
        let r = match self.shared.check_writable() {
            Err(EngineError::ShuttingDown) => {
                Err(EngineError::Unavailable("the engine is closed".into()))
            }
            other => other,
        };
        Box::pin(async move { r })
    }

    fn name(&self) -> &'static str {
        "embedded"
    }

    /// Stops accepting publishes, lets the writer commit what it has,
    /// fsyncs, and releases the files.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.shared.state.load(Ordering::Acquire) == OPEN {
                self.shared.state.store(CLOSED, Ordering::Release);
            }
            let (done, closed) = oneshot::channel();
            if self.tx.send(Msg::Close(done)).is_ok() {
                let _ = closed.await;
            }
            let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(h) = handle {
                let _ = blocking(move || {
                    let _ = h.join();
                    Ok(())
                })
                .await;
            }
            self.shared
                .store
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .take();
        })
    }
}
