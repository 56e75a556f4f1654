//! Live fan-out: which local subscriber queues want which topic.
//!
//! Engines call [`Fanout::dispatch`] once per event, in position order per
//! topic, after the event is stored. Dispatch never blocks and never waits for
//! a subscriber: it pushes an `Arc<Event>` onto each bounded queue, and a queue
//! that is full is closed with [`CloseReason::SlowConsumer`] (its memory freed
//! at once); the client resumes from its cursor and loses nothing.
//!
//! The events waiting in the queues are counted as they come and go
//! ([`crate::metrics::QueuedEvents`]: one atomic add per dispatch and one
//! per event taken), and each dispatch that reaches a subscriber is timed
//! (`herald_fanout_duration_seconds`).

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
    /// The server API closed every connection of the user
    /// (`POST /v1/disconnect`).
    Disconnected,
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
    /// Where events entering and leaving are counted (a queue made by a
    /// [`Fanout`]); the fan-out counts the entries, the queue the rest.
    metrics: Option<Arc<Metrics>>,
}

#[derive(Debug, Default)]
struct QueueState {
    events: VecDeque<Arc<Event>>,
    closed: Option<CloseReason>,
}

/// What a push did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pushed {
    /// Queued.
    Queued,
    /// Not queued: the queue was already closed.
    Ignored,
    /// The queue was full: closed as a slow consumer.
    Closed,
    /// A signal left out of a queue at least half full.
    SignalDropped,
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
            metrics: None,
        }
    }

    /// Takes `n` events out of the queued-events gauge.
    fn left(&self, n: usize) {
        if let (Some(m), true) = (&self.metrics, n > 0) {
            m.queued_events.adjust(self.id, -(n as i64));
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
    /// closed it (the subscriber is too slow). A signal (`herald.join` /
    /// `herald.leave`) is dropped instead when the queue is half full:
    /// presence churn by others never disconnects a subscriber
    /// ([`Fanout::dispatch`] counts the drop).
    fn push(&self, event: &Arc<Event>) -> Pushed {
        let mut st = self.lock();
        if st.closed.is_some() {
            return Pushed::Ignored;
        }
        if st.events.len() >= self.capacity / 2 && event.is_signal() {
            return Pushed::SignalDropped;
        }
        if st.events.len() >= self.capacity {
            st.closed = Some(CloseReason::SlowConsumer);
            let dropped = std::mem::take(&mut st.events).len();
            drop(st);
            self.left(dropped);
            self.notify.notify_one();
            if let Some(n) = &self.on_close {
                n.notify_one();
            }
            return Pushed::Closed;
        }
        st.events.push_back(event.clone());
        drop(st);
        self.notify.notify_one();
        Pushed::Queued
    }

    /// Closes the queue (for shutdown).
    pub fn close(&self, reason: CloseReason) {
        let mut st = self.lock();
        let mut dropped = 0;
        if st.closed.is_none() {
            st.closed = Some(reason);
            dropped = std::mem::take(&mut st.events).len();
        }
        drop(st);
        self.left(dropped);
        self.notify.notify_one();
    }

    /// Takes the next event without waiting.
    pub fn try_pop(&self) -> Option<Popped> {
        let mut st = self.lock();
        if let Some(reason) = st.closed {
            return Some(Popped::Closed(reason));
        }
        let event = st.events.pop_front()?;
        drop(st);
        self.left(1);
        Some(Popped::Event(event))
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

impl Drop for SubscriberQueue {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        let n = st.events.len();
        self.left(n);
    }
}

/// One shard of the registry: topic → its local subscriber queues.
type Shard = HashMap<Topic, Vec<Arc<SubscriberQueue>>>;

/// A connection the server API can see and close: its user, connection
/// id and transport (see [`Fanout::identify`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConnectionInfo {
    /// The connection id (the `client` of presence entries).
    pub client: Box<str>,
    /// The credential's `sub`.
    pub user: Box<str>,
    /// `sse`, `ws` or `poll`.
    pub transport: crate::metrics::Transport,
    /// When it was identified, milliseconds since the Unix epoch.
    pub connected_at: u64,
    /// The topics it receives now.
    pub topics: Vec<Box<str>>,
}

/// An identified connection: what [`ConnectionInfo`] shows, without its
/// topics (read from the queue's subscription when listed).
#[derive(Debug)]
struct Identified {
    queue: std::sync::Weak<SubscriberQueue>,
    client: Box<str>,
    transport: crate::metrics::Transport,
    connected_at: u64,
}

/// Identified connections by user (only connections whose credential has a
/// `sub`), and the user of each queue, so a queue is forgotten in O(1).
#[derive(Debug, Default)]
struct Users {
    by_user: HashMap<Box<str>, HashMap<SubscriberId, Identified>>,
    user_of: HashMap<SubscriberId, Box<str>>,
}

/// The registry of local subscribers by topic.
#[derive(Debug)]
pub struct Fanout {
    shards: Box<[Mutex<Shard>]>,
    all: Mutex<HashMap<SubscriberId, std::sync::Weak<SubscriberQueue>>>,
    users: Mutex<Users>,
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
            users: Mutex::new(Users::default()),
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
        let mut q = SubscriberQueue::new(id, capacity, on_close);
        q.metrics = Some(self.metrics.clone());
        let q = Arc::new(q);
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
        self.forget_user_of(id);
    }

    fn users(&self) -> MutexGuard<'_, Users> {
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn forget_user_of(&self, id: SubscriberId) {
        let mut users = self.users();
        if let Some(user) = users.user_of.remove(&id) {
            if let Some(conns) = users.by_user.get_mut(&user) {
                conns.remove(&id);
                if conns.is_empty() {
                    users.by_user.remove(&user);
                }
            }
        }
    }

    /// Records that `queue` belongs to a connection of `user` (a
    /// credential's `sub`) with connection id `client`, so that
    /// [`Fanout::close_user`] and [`Fanout::connections_of`] find it.
    /// Identifying a queue again replaces its entry. Forgotten with the
    /// queue ([`Fanout::drop_queue`]).
    pub fn identify(
        &self,
        queue: &Arc<SubscriberQueue>,
        user: &str,
        client: &str,
        transport: crate::metrics::Transport,
    ) {
        self.forget_user_of(queue.id);
        let mut users = self.users();
        users.user_of.insert(queue.id, user.into());
        users.by_user.entry(user.into()).or_default().insert(
            queue.id,
            Identified {
                queue: Arc::downgrade(queue),
                client: client.into(),
                transport,
                connected_at: crate::event::now_ms(),
            },
        );
    }

    /// Closes every local connection of `user` with `reason`; how many.
    pub fn close_user(&self, user: &str, reason: CloseReason) -> usize {
        let queues: Vec<Arc<SubscriberQueue>> = self
            .users()
            .by_user
            .get(user)
            .map(|c| c.values().filter_map(|i| i.queue.upgrade()).collect())
            .unwrap_or_default();
        for q in &queues {
            q.close(reason);
        }
        queues.len()
    }

    /// The local connections of `user`, oldest first, with the topics each
    /// receives now.
    pub fn connections_of(&self, user: &str) -> Vec<ConnectionInfo> {
        let mut list: Vec<(SubscriberId, ConnectionInfo)> = self
            .users()
            .by_user
            .get(user)
            .map(|c| {
                c.iter()
                    .map(|(id, i)| {
                        (
                            *id,
                            ConnectionInfo {
                                client: i.client.clone(),
                                user: user.into(),
                                transport: i.transport,
                                connected_at: i.connected_at,
                                topics: Vec::new(),
                            },
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        list.sort_by_key(|(id, i)| (i.connected_at, *id));
        if list.is_empty() {
            return Vec::new();
        }
        // The topics of each: one pass over the shards.
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for (topic, queues) in shard.iter() {
                for q in queues {
                    if let Some((_, info)) = list.iter_mut().find(|(id, _)| *id == q.id) {
                        info.topics.push(topic.as_str().into());
                    }
                }
            }
        }
        list.into_iter()
            .map(|(_, mut i)| {
                i.topics.sort();
                i
            })
            .collect()
    }

    /// Topics with local subscribers and how many each has, the busiest
    /// first (ties by name), at most `limit`; and how many topics have
    /// local subscribers in all.
    pub fn busiest(&self, limit: usize) -> (Vec<(Topic, usize)>, usize) {
        let mut all: Vec<(Topic, usize)> = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            all.extend(shard.iter().map(|(t, q)| (t.clone(), q.len())));
        }
        let total = all.len();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.as_str().cmp(b.0.as_str())));
        all.truncate(limit);
        (all, total)
    }

    /// The most events waiting in one local subscriber queue now: a scan
    /// of every queue (each locked in turn, the registry only while its
    /// entries are copied), for `/metrics`, not for a hot path.
    pub fn deepest_queue(&self) -> usize {
        let queues: Vec<std::sync::Weak<SubscriberQueue>> = self
            .all
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        queues
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .map(|q| q.len())
            .max()
            .unwrap_or(0)
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
        // The `fanout` span, only for an event whose trace is exported.
        let _span = crate::event::fanout_span(event);
        let started = std::time::Instant::now();
        let shard = self.shard(&event.topic);
        let Some(list) = shard.get(&event.topic) else {
            return;
        };
        let (mut queued, mut slow, mut dropped) = (0i64, 0u64, 0u64);
        for q in list {
            match q.push(event) {
                Pushed::Queued => queued += 1,
                Pushed::Ignored => {}
                Pushed::Closed => slow += 1,
                Pushed::SignalDropped => dropped += 1,
            }
        }
        let stripe = list.first().map_or(0, |q| q.id);
        drop(shard);
        if queued > 0 {
            self.metrics.queued_events.adjust(stripe, queued);
        }
        self.metrics.latency.fanout.observe(started.elapsed());
        if slow > 0 {
            self.metrics
                .slow_consumer_disconnects
                .fetch_add(slow, Ordering::Relaxed);
        }
        if dropped > 0 {
            self.metrics
                .presence_signals_dropped
                .fetch_add(dropped, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Data, NewEvent, Position};
    use crate::presence::{signal_event, Change, Member};

    #[test]
    fn queued_events_follow_pushes_takes_closes_and_drops() {
        let metrics = Arc::new(Metrics::default());
        let fanout = Fanout::new(metrics.clone());
        let topic = Topic::new("t").unwrap();
        let event = |seq| {
            Event::stamped(
                NewEvent::new(topic.clone(), Data::Text("x".into())),
                Position::new(1, seq),
            )
        };
        let (a, b) = (fanout.new_queue(4, None), fanout.new_queue(100, None));
        fanout.add(&topic, &a);
        fanout.add(&topic, &b);
        for seq in 1..=3 {
            fanout.dispatch(&event(seq));
        }
        assert_eq!(metrics.queued_events.get(), 6);
        assert_eq!(fanout.deepest_queue(), 3);
        assert!(matches!(a.try_pop(), Some(Popped::Event(_))));
        assert_eq!(metrics.queued_events.get(), 5);
        // `a` fills up and is closed as slow at the 6th: its 4 events go.
        for seq in 4..=6 {
            fanout.dispatch(&event(seq));
        }
        assert_eq!(metrics.queued_events.get(), 6);
        assert_eq!(fanout.deepest_queue(), 6);
        assert_eq!(metrics.slow_consumer_disconnects.load(Ordering::Relaxed), 1);
        // A closed queue takes nothing more.
        fanout.dispatch(&event(7));
        assert_eq!(metrics.queued_events.get(), 7);
        // Every dispatch that reached a subscriber was timed.
        assert_eq!(metrics.latency.fanout.count(), 7);
        // A queue dropped with events in it takes them out.
        fanout.remove(&topic, b.id());
        fanout.drop_queue(b.id());
        drop(b);
        assert_eq!(metrics.queued_events.get(), 0);
        // A topic without local subscribers is not timed.
        fanout.remove(&topic, a.id());
        fanout.dispatch(&event(8));
        assert_eq!(metrics.latency.fanout.count(), 7);
        // A shutdown's close takes out what was queued.
        let c = fanout.new_queue(10, None);
        fanout.add(&topic, &c);
        fanout.dispatch(&event(9));
        assert_eq!(metrics.queued_events.get(), 1);
        fanout.shutdown();
        assert_eq!(metrics.queued_events.get(), 0);
    }

    #[test]
    fn signals_are_dropped_from_a_half_full_queue_never_closing_it() {
        let fanout = Fanout::new(Arc::new(Metrics::default()));
        let topic = Topic::new("room/1").unwrap();
        let q = fanout.new_queue(8, None);
        fanout.add(&topic, &q);
        let member = Member {
            client: "c".into(),
            user: "u".into(),
            info: serde_json::Value::Null,
            transport: crate::metrics::Transport::Sse,
        };
        let join = signal_event(&topic, Change::Join, &member);
        for seq in 1..=4 {
            let e = Event::stamped(
                NewEvent::new(topic.clone(), Data::Text("x".into())),
                Position::new(1, seq),
            );
            fanout.dispatch(&e);
        }
        // Half full: a thousand joins are left out, the queue stays open.
        for _ in 0..1000 {
            fanout.dispatch(&join);
        }
        assert_eq!(q.len(), 4);
        assert_eq!(
            fanout
                .metrics()
                .presence_signals_dropped
                .load(Ordering::Relaxed),
            1000
        );
        // Below half, signals are queued again.
        q.try_pop();
        fanout.dispatch(&join);
        assert_eq!(q.len(), 4);
        // Events still close a full queue as before.
        for seq in 5..=9 {
            let e = Event::stamped(
                NewEvent::new(topic.clone(), Data::Text("x".into())),
                Position::new(1, seq),
            );
            fanout.dispatch(&e);
        }
        assert!(matches!(
            q.try_pop(),
            Some(Popped::Closed(CloseReason::SlowConsumer))
        ));
    }
}
