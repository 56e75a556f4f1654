//! The [`Engine`] implementation: the publish path hands events to the
//! writer thread; reads are answered from the hot tail in memory, or from
//! the store.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use herald_core::engine::{resolve_start, BoxFuture, Budget, ReadResult};
use herald_core::event::now_ms;
use herald_core::fanout::Fanout;
use herald_core::idempotency::{Claim, Idempotency, IdempotencyStore};
use herald_core::{Engine, EngineError, Event, NewEvent, Position, Topic};
use tokio::sync::{oneshot, Notify, Semaphore};

use crate::config::EmbeddedConfig;
use crate::error::{OpenError, StoreError};
use crate::store::Store;
use crate::writer::{Msg, Request, Writer};

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

    async fn publish_inner(&self, events: Vec<NewEvent>) -> Result<Vec<Arc<Event>>, EngineError> {
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

impl Shared {
    pub(crate) fn topic_epoch(&self) -> u64 {
        self.topic_epoch.load(Ordering::Acquire)
    }

    pub(crate) fn set_topic_epoch(&self, epoch: u64) {
        self.topic_epoch.store(epoch, Ordering::Release);
    }

    pub(crate) fn tail_bytes(&self) -> usize {
        self.tail_bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn max_topics(&self) -> usize {
        self.max_topics.load(Ordering::Relaxed)
    }

    pub(crate) fn idempotency_ttl_ms(&self) -> u64 {
        self.idempotency_ttl_ms.load(Ordering::Relaxed)
    }

    pub(crate) fn set_close_error(&self, why: String) {
        *self.close_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    /// A dropped topic (its drop is durable): its view goes.
    pub(crate) fn drop_view(&self, topic: &Topic) {
        if let Some(v) = self.shard(topic).remove(topic) {
            self.tail_bytes.fetch_sub(v.tail_bytes, Ordering::Relaxed);
        }
    }

    /// Pops a view's oldest tail event.
    fn pop_tail(&self, v: &mut TopicView) {
        if let Some(e) = v.tail.pop_front() {
            let b = EmbeddedConfig::tail_event_bytes(&e);
            v.tail_bytes -= b;
            self.tail_bytes.fetch_sub(b, Ordering::Relaxed);
        }
    }

    /// When the hot tails together hold more than their budget, trims them
    /// (each visited tail loses its older half) until they hold under 3/4
    /// of it, visiting shards round-robin from where the last trim stopped.
    pub(crate) fn trim_tails(&self) {
        if self.tail_bytes() <= self.tail_total_max_bytes {
            return;
        }
        let target = self.tail_total_max_bytes / 4 * 3;
        let start = self.trim_at.load(Ordering::Relaxed);
        for k in 0..SHARDS {
            let i = (start + k) % SHARDS;
            let mut shard = self.views[i].lock().unwrap_or_else(|e| e.into_inner());
            for v in shard.values_mut() {
                let keep = v.tail_bytes / 2;
                while v.tail_bytes > keep && !v.tail.is_empty() {
                    self.pop_tail(v);
                }
                if self.tail_bytes() <= target {
                    break;
                }
            }
            drop(shard);
            if self.tail_bytes() <= target {
                self.trim_at.store((i + 1) % SHARDS, Ordering::Relaxed);
                return;
            }
        }
    }

    fn shard(&self, topic: &Topic) -> MutexGuard<'_, HashMap<Topic, TopicView>> {
        let i = (topic.key().0 as usize) % SHARDS;
        self.views[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_writable(&self) -> Result<(), EngineError> {
        match self.state.load(Ordering::Acquire) {
            OPEN => Ok(()),
            FAILED => Err(EngineError::Unavailable(
                self.failure
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
            )),
            _ => Err(EngineError::ShuttingDown),
        }
    }

    /// The writer could not commit: refuse every later publish (what was
    /// acknowledged is on disk; a restart recovers it).
    pub(crate) fn fail(&self, why: String) {
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = why;
        self.state.store(FAILED, Ordering::Release);
    }

    pub(crate) fn fanout(&self) -> Option<Arc<Fanout>> {
        self.fanout
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Retention moved a topic's first retained event to `first`: readers
    /// stop seeing older events at once, before they are deleted.
    pub(crate) fn retain_from(&self, topic: &Topic, first: u64) {
        let mut shard = self.shard(topic);
        if let Some(v) = shard.get_mut(topic) {
            let first = first.min(v.head + 1);
            if first > v.first {
                v.first = first;
                while v.tail.front().is_some_and(|e| e.position.seq < first) {
                    self.pop_tail(v);
                }
            }
        }
    }

    /// A committed event: into the topic's view and tail, then to the
    /// subscribers, under the topic's lock so that a reader that takes the
    /// lock next sees it in history.
    pub(crate) fn append(&self, event: &Arc<Event>, id: u64, first: u64, fanout: Option<&Fanout>) {
        let mut shard = self.shard(&event.topic);
        let v = shard
            .entry(event.topic.clone())
            .or_insert_with(|| TopicView {
                id,
                epoch: event.position.epoch,
                head: 0,
                first: 1,
                tail: VecDeque::new(),
                tail_bytes: 0,
            });
        let seq = event.position.seq;
        v.head = seq;
        let first = first.min(seq + 1);
        if first > v.first {
            v.first = first;
        }
        let bytes = EmbeddedConfig::tail_event_bytes(event);
        if self.tail_cap > 0 && bytes <= self.tail_max_bytes {
            v.tail.push_back(event.clone());
            v.tail_bytes += bytes;
            self.tail_bytes.fetch_add(bytes, Ordering::Relaxed);
        } else {
            // Not kept: the tail must stay contiguous up to the head.
            while !v.tail.is_empty() {
                self.pop_tail(v);
            }
        }
        while v.tail.len() > self.tail_cap
            || v.tail_bytes > self.tail_max_bytes
            || v.tail.front().is_some_and(|e| e.position.seq < v.first)
        {
            self.pop_tail(v);
        }
        if let Some(f) = fanout {
            f.dispatch(event);
        }
    }

    /// Events just read from disk that end where the tail starts (or at the
    /// head) extend the tail, so the next resume there stays in memory.
    fn fill_tail(&self, topic: &Topic, epoch: u64, events: &[Arc<Event>]) {
        let Some(last) = events.last().map(|e| e.position.seq) else {
            return;
        };
        let mut shard = self.shard(topic);
        let Some(v) = shard.get_mut(topic) else {
            return;
        };
        let joins = match v.tail.front() {
            None => last == v.head,
            Some(f) => f.position.seq == last + 1,
        };
        if !joins || v.epoch != epoch {
            return;
        }
        for e in events.iter().rev() {
            let bytes = EmbeddedConfig::tail_event_bytes(e);
            if v.tail.len() >= self.tail_cap
                || e.position.seq < v.first
                || v.tail_bytes + bytes > self.tail_max_bytes
                || self.tail_bytes() + bytes > self.tail_total_max_bytes
            {
                break;
            }
            v.tail.push_front(e.clone());
            v.tail_bytes += bytes;
            self.tail_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
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

    fn publish(
        &self,
        events: Vec<NewEvent>,
    ) -> BoxFuture<'_, Result<Vec<Arc<Event>>, EngineError>> {
        Box::pin(self.publish_inner(events))
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

/// The embedded engine's idempotency records: in-flight claims in memory,
/// completed records on disk (written by the writer with their event).
struct DurableIdempotency {
    shared: Arc<Shared>,
}

/// Releases an in-flight claim unless disarmed (the claim's owner keeps it).
struct ClaimGuard<'a> {
    shared: &'a Shared,
    key: Option<String>,
}

impl ClaimGuard<'_> {
    fn keep(mut self) {
        self.key = None;
    }
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            self.shared.release_claim(&k);
        }
    }
}

impl Shared {
    fn release_claim(&self, key: &str) {
        let n = self
            .claims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        if let Some(n) = n {
            n.notify_waiters();
        }
    }
}

impl IdempotencyStore for DurableIdempotency {
    fn claim<'a>(
        &'a self,
        topic: &'a Topic,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Claim, EngineError>> {
        Box::pin(async move {
            let key = Idempotency::scoped_key(topic.as_str(), id);
            {
                let mut claims = self.shared.claims.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(n) = claims.get(&key) {
                    return Ok(Claim::Wait(Some(n.clone())));
                }
                claims.insert(key.clone(), Arc::new(Notify::new()));
            }
            let guard = ClaimGuard {
                shared: &self.shared,
                key: Some(key),
            };
            let store = self
                .shared
                .store
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .ok_or_else(|| EngineError::Unavailable("the engine is closed".into()))?;
            let (t, i) = (topic.clone(), id.to_owned());
            let record = blocking(move || store.idempotency_record(&t, &i))
                .await
                .map_err(|e| EngineError::Unavailable(e.to_string()))?;
            let ttl = self.shared.idempotency_ttl_ms();
            match record {
                Some(r) if r.published_at_ms.saturating_add(ttl) > now_ms() => {
                    // `guard` releases the claim: the record answers retries.
                    Ok(Claim::DoneAt(
                        Position::new(r.epoch, r.seq),
                        r.published_at_ms,
                    ))
                }
                _ => {
                    guard.keep();
                    Ok(Claim::Owned)
                }
            }
        })
    }

    /// The record was written with the event; this ends the claim.
    fn complete<'a>(
        &'a self,
        topic: &'a Topic,
        id: &'a str,
        _event: &'a Arc<Event>,
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        self.shared
            .release_claim(&Idempotency::scoped_key(topic.as_str(), id));
        Box::pin(async { Ok(()) })
    }

    fn abandon<'a>(&'a self, topic: &'a Topic, id: &'a str) -> BoxFuture<'a, ()> {
        self.shared
            .release_claim(&Idempotency::scoped_key(topic.as_str(), id));
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use herald_core::{Data, Engine, HistoryLimits, NewEvent, Topic};

    use super::*;

    fn dir_size(p: &std::path::Path) -> u64 {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .map(|e| match e.metadata() {
                        Ok(m) if m.is_dir() => dir_size(&e.path()),
                        Ok(m) => m.len(),
                        Err(_) => 0,
                    })
                    .sum()
            })
            .unwrap_or(0)
    }

    fn keys_on_disk(dir: &std::path::Path, topic: &Topic) -> Vec<u64> {
        let (store, recovered) = Store::open(dir, true).unwrap();
        let t = recovered.topics.iter().find(|r| &r.topic == topic).unwrap();
        store
            .read_events(topic, t.meta.id, t.meta.epoch, 0, u64::MAX)
            .unwrap()
            .iter()
            .map(|e| e.position.seq)
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropped_events_are_deleted_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let t = Topic::new("t").unwrap();
        let cfg = EmbeddedConfig::new(dir.path()).with_history(HistoryLimits {
            max_events: 3,
            max_age: Duration::from_secs(3600),
        });
        let e = EmbeddedEngine::open(cfg).unwrap();
        for i in 0..10 {
            e.publish(vec![NewEvent::new(
                t.clone(),
                Data::Text(i.to_string().into()),
            )])
            .await
            .unwrap();
        }
        e.close().await;
        drop(e);
        assert_eq!(keys_on_disk(dir.path(), &t), [8, 9, 10]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bursts_past_the_commit_byte_limit_all_commit_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = EmbeddedConfig::new(dir.path());
        cfg.max_commit_bytes = 1000;
        cfg.commit_delay = Duration::from_millis(20);
        let e = Arc::new(EmbeddedEngine::open(cfg).unwrap());
        let t = Topic::new("big").unwrap();
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let (e, t) = (e.clone(), t.clone());
                tokio::spawn(async move {
                    let data = Data::Text(format!("{i:03}{}", "x".repeat(297)).into());
                    e.publish(vec![NewEvent::new(t, data)]).await.unwrap()
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().len(), 1);
        }
        let r = e
            .read(&t, Some(Position::new(e.epoch(), 0)), 100)
            .await
            .unwrap();
        let seqs: Vec<u64> = r.events.iter().map(|e| e.position.seq).collect();
        assert_eq!(seqs, (1..=50).collect::<Vec<_>>());
        e.close().await;
    }

    /// 256 MiB written through topics that keep 100 events each: the store
    /// stays near its journal cap (64 MiB, two journals while one rotates)
    /// plus the kept events, far below what was written. (Measured over
    /// 1 GiB: it levels off at 70-80 MiB.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn disk_use_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = EmbeddedConfig::new(dir.path()).with_history(HistoryLimits {
            max_events: 100,
            max_age: Duration::from_secs(3600),
        });
        let e = EmbeddedEngine::open(cfg).unwrap();
        let topics: Vec<Topic> = (0..8)
            .map(|i| Topic::new(&format!("t/{i}")).unwrap())
            .collect();
        let payload: Box<str> = "x".repeat(4096).into();
        let mut largest = 0;
        for round in 0..256 {
            let batch = (0..256)
                .map(|i| NewEvent::new(topics[i % 8].clone(), Data::Text(payload.clone())))
                .collect();
            e.publish(batch).await.unwrap();
            if round % 16 == 15 {
                largest = largest.max(dir_size(dir.path()));
            }
        }
        e.close().await;
        largest = largest.max(dir_size(dir.path()));
        eprintln!("wrote 256 MiB; the store peaked at {} MiB", largest >> 20);
        assert!(
            largest < 160 << 20,
            "the store grew to {} MiB",
            largest >> 20
        );
    }
}
