//! Live fan-out: which local subscriber queues want which topic.
//!
//! Engines call [`Fanout::dispatch`] once per event, in position order per
//! topic, after the event is stored. Dispatch never blocks and never waits for
//! a subscriber: it pushes an `Arc<Event>` onto each bounded queue, and a queue
//! that is full is closed with [`CloseReason::SlowConsumer`] (its memory freed
//! at once); the client resumes from its cursor and loses nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::event::Event;
use crate::metrics::Metrics;
use crate::topic::Topic;

const SHARDS: usize = 64;

/// Why a subscriber's queue was closed by the hub. Its close code, SSE
/// reason and reconnect advice are in the one table of reasons,
/// [`crate::wire::disconnect`] (`Disconnect::from(reason)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The subscriber fell `queue_capacity` events behind.
    SlowConsumer,
    /// The server is shutting down.
    Shutdown,
    /// The engine could not be read to catch the subscriber up.
    EngineUnavailable,
}

/// Identifies one subscriber queue in the registry.
pub type SubscriberId = u64;

/// The bounded queue of live events of one connection.
#[derive(Debug)]
pub struct SubscriberQueue {
    id: SubscriberId,
    capacity: usize,
    state: Mutex<QueueState>,
    notify: Notify,
    /// Woken when the queue is closed for being slow: the connection that
    /// owns it may not be reading (its socket is full), so the HTTP layer
    /// drops the connection itself rather than waiting to be polled.
    on_close: Option<Arc<Notify>>,
}

#[derive(Debug, Default)]
struct QueueState {
    events: VecDeque<Arc<Event>>,
    closed: Option<CloseReason>,
}

/// What a wait on the queue found.
pub enum Popped {
    /// The next event, in publish order for its topic.
    Event(Arc<Event>),
    /// The queue was closed; events still queued at the close were dropped.
    Closed(CloseReason),
}

impl SubscriberQueue {
    /// An empty queue for subscriber `id` holding at most `capacity` events
    /// (at least 1; a push beyond it closes the queue with
    /// [`CloseReason::SlowConsumer`]).
    /// `on_close` is notified when the queue closes, for a reader that may
    /// not be polling.
    pub fn new(id: SubscriberId, capacity: usize, on_close: Option<Arc<Notify>>) -> Self {
        SubscriberQueue {
            id,
            capacity: capacity.max(1),
            state: Mutex::new(QueueState::default()),
            notify: Notify::new(),
            on_close,
        }
    }

    /// The subscriber this queue belongs to.
    pub fn id(&self) -> SubscriberId {
        self.id
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A panic while holding this lock cannot leave the queue inconsistent
        // (every critical section is a single push/pop), so poison is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pushes an event; returns true if this push found the queue full and
    /// closed it (the subscriber is too slow).
    fn push(&self, event: &Arc<Event>) -> bool {
        let mut st = self.lock();
        if st.closed.is_some() {
            return false;
        }
        if st.events.len() >= self.capacity {
            st.closed = Some(CloseReason::SlowConsumer);
            st.events = VecDeque::new();
            drop(st);
            self.notify.notify_one();
            if let Some(n) = &self.on_close {
                n.notify_one();
            }
            return true;
        }
        st.events.push_back(event.clone());
        drop(st);
        self.notify.notify_one();
        false
    }

    /// Closes the queue (for shutdown).
    pub fn close(&self, reason: CloseReason) {
        let mut st = self.lock();
        if st.closed.is_none() {
            st.closed = Some(reason);
            st.events = VecDeque::new();
        }
        drop(st);
        self.notify.notify_one();
    }

    /// Takes the next event without waiting.
    pub fn try_pop(&self) -> Option<Popped> {
        let mut st = self.lock();
        if let Some(reason) = st.closed {
            return Some(Popped::Closed(reason));
        }
        st.events.pop_front().map(Popped::Event)
    }

    /// Waits for the next event. Cancel-safe: nothing is taken from the queue
    /// unless it is returned.
    pub async fn pop(&self) -> Popped {
        loop {
            let notified = self.notify.notified();
            if let Some(p) = self.try_pop() {
                return p;
            }
            notified.await;
        }
    }

    /// Events waiting to be taken.
    pub fn len(&self) -> usize {
        self.lock().events.len()
    }

    /// True if no event is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One shard of the registry: topic → its local subscriber queues.
type Shard = HashMap<Topic, Vec<Arc<SubscriberQueue>>>;

/// The registry of local subscribers by topic.
#[derive(Debug)]
pub struct Fanout {
    shards: Box<[Mutex<Shard>]>,
    all: Mutex<HashMap<SubscriberId, std::sync::Weak<SubscriberQueue>>>,
    next_id: AtomicU64,
    shut_down: std::sync::atomic::AtomicBool,
    metrics: Arc<Metrics>,
}

impl Fanout {
    /// An empty registry that counts subscribers and deliveries in `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Fanout {
        Fanout {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            all: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            shut_down: std::sync::atomic::AtomicBool::new(false),
            metrics,
        }
    }

    fn shard(&self, topic: &Topic) -> MutexGuard<'_, Shard> {
        let i = (topic.key().0 as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes a new queue (registered for shutdown, not yet for any topic).
    pub fn new_queue(
        &self,
        capacity: usize,
        on_close: Option<Arc<Notify>>,
    ) -> Arc<SubscriberQueue> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let q = Arc::new(SubscriberQueue::new(id, capacity, on_close));
        if self.shut_down.load(Ordering::Acquire) {
            q.close(CloseReason::Shutdown);
        }
        self.all
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Arc::downgrade(&q));
        q
    }

    /// Forgets a queue (when its subscription is dropped).
    pub fn drop_queue(&self, id: SubscriberId) {
        self.all
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// Adds `queue` to `topic`. Returns true if it is the topic's first local subscriber.
    pub fn add(&self, topic: &Topic, queue: &Arc<SubscriberQueue>) -> bool {
        let mut shard = self.shard(topic);
        let list = shard.entry(topic.clone()).or_default();
        let first = list.is_empty();
        if !list.iter().any(|q| q.id == queue.id) {
            list.push(queue.clone());
        }
        first
    }

    /// Removes the queue from `topic`. Returns true if the topic has no local subscriber left.
    pub fn remove(&self, topic: &Topic, id: SubscriberId) -> bool {
        let mut shard = self.shard(topic);
        let Some(list) = shard.get_mut(topic) else {
            return false;
        };
        if let Some(i) = list.iter().position(|q| q.id == id) {
            list.swap_remove(i);
        }
        if list.is_empty() {
            shard.remove(topic);
            return true;
        }
        false
    }

    /// The hub's metrics, where engines report what they hold.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Number of local subscribers of `topic`.
    pub fn subscribers(&self, topic: &Topic) -> usize {
        self.shard(topic).get(topic).map_or(0, Vec::len)
    }

    /// Hands `event` to every local subscriber of its topic. Engines call this
    /// in position order per topic.
    pub fn dispatch(&self, event: &Arc<Event>) {
        let shard = self.shard(&event.topic);
        let Some(list) = shard.get(&event.topic) else {
            return;
        };
        let mut slow = 0u64;
        for q in list {
            if q.push(event) {
                slow += 1;
            }
        }
        drop(shard);
        if slow > 0 {
            self.metrics
                .slow_consumer_disconnects
                .fetch_add(slow, Ordering::Relaxed);
        }
    }

    /// Closes every queue with [`CloseReason::Shutdown`], and every queue made later.
    pub fn shutdown(&self) {
        self.shut_down.store(true, Ordering::Release);
        let all: Vec<_> = self
            .all
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter_map(std::sync::Weak::upgrade)
            .collect();
        for q in all {
            q.close(CloseReason::Shutdown);
        }
    }
}
