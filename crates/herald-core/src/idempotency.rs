//! Idempotent publishes: a retried publish with the same client id returns the
//! first publish's result instead of storing the event again.
//!
//! Keys are scoped by topic. Concurrent publishes with the same key are
//! serialised: the second waits for the first and gets its result; if the
//! first fails, the second publishes.
//!
//! A record keeps only what a retry's answer needs: the event's [`Position`]
//! and publish time ([`Claim::DoneAt`]). The retry carries the same event, so
//! the hub rebuilds the answer from the request; no payload is held here.
//!
//! The records live in an [`IdempotencyStore`]: this process's memory
//! ([`Idempotency`]) unless the engine offers a shared one
//! ([`Engine::idempotency_store`](crate::Engine::idempotency_store)), so that
//! a retry that reaches another node is recognised too.
//!
//! A record is kept for the hub's `idempotency_ttl` at most, and the
//! in-memory store also forgets its oldest records beyond a count and a byte
//! bound. **A retry after its record expired or was evicted publishes
//! again**: idempotency covers retries within the window, not forever.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::engine::{BoxFuture, EngineError};
use crate::event::{Event, Position};
use crate::topic::Topic;

/// Where idempotency records live. A record goes from claimed (a publish
/// with this id is in flight) to completed (here is its position) and
/// expires after the hub's `idempotency_ttl`.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Claims `id` on `topic` for a publish.
    fn claim<'a>(
        &'a self,
        topic: &'a Topic,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Claim, EngineError>>;

    /// Records the event the owner of a claim published (a store keeps its
    /// position and time, not the event).
    fn complete<'a>(
        &'a self,
        topic: &'a Topic,
        id: &'a str,
        event: &'a Arc<Event>,
    ) -> BoxFuture<'a, Result<(), EngineError>>;

    /// Releases a claim whose publish failed, so that a retry may publish.
    fn abandon<'a>(&'a self, topic: &'a Topic, id: &'a str) -> BoxFuture<'a, ()>;
}

/// The outcome of claiming a key.
pub enum Claim {
    /// Nobody has published with this key: the caller publishes, then calls
    /// [`IdempotencyStore::complete`] or [`IdempotencyStore::abandon`].
    Owned,
    /// Already published at this position and time (milliseconds since the
    /// Unix epoch). The retry carries the same event, so the hub rebuilds it
    /// from the request.
    DoneAt(Position, u64),
    /// Another publish with this key is in flight: wait (on the `Notify`
    /// when the store has one, else briefly), then claim again.
    Wait(Option<Arc<Notify>>),
}

/// Bytes counted per record on top of its key: the map and queue entries,
/// the position and time.
pub const RECORD_OVERHEAD: usize = 96;

enum Slot {
    InFlight(Arc<Notify>),
    Done { position: Position, at_ms: u64 },
}

/// The in-memory store of recent idempotency records, bounded by age, count
/// and bytes (the key strings are what grows: topic name plus id, up to
/// 1 KiB + 256 bytes each).
///
/// Completed records sit in a queue in completion order; expiry and eviction
/// pop from its front, so no operation walks the whole map under the lock.
pub struct Idempotency {
    ttl: Duration,
    max_keys: usize,
    max_bytes: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    slots: HashMap<Arc<str>, Slot>,
    /// Completed keys in completion order, for expiry and eviction.
    order: VecDeque<(Instant, Arc<str>)>,
    /// Bytes of the completed records (see [`Idempotency::record_bytes`]).
    bytes: usize,
}

impl Idempotency {
    /// A store keeping completed records for `ttl`, at most `max_keys` of
    /// them and at most `max_bytes` of keys plus [`RECORD_OVERHEAD`] each;
    /// beyond a bound the oldest records are forgotten first.
    pub fn new(ttl: Duration, max_keys: usize, max_bytes: usize) -> Idempotency {
        Idempotency {
            ttl,
            max_keys: max_keys.max(1),
            max_bytes: max_bytes.max(1),
            state: Mutex::new(State::default()),
        }
    }

    /// The key of `id` on `topic`: the topic, a NUL (never part of a topic
    /// name) and the id.
    pub fn scoped_key(topic: &str, id: &str) -> String {
        let mut k = String::with_capacity(topic.len() + id.len() + 1);
        k.push_str(topic);
        k.push('\0');
        k.push_str(id);
        k
    }

    /// The bytes one completed record counts for.
    pub fn record_bytes(key: &str) -> usize {
        key.len() + RECORD_OVERHEAD
    }

    /// Completed records held now: (count, bytes).
    pub fn usage(&self) -> (usize, usize) {
        let st = self.lock();
        (st.order.len(), st.bytes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn claim_key(&self, key: &str) -> Claim {
        let mut st = self.lock();
        self.expire(&mut st, Instant::now());
        match st.slots.get(key) {
            Some(Slot::Done { position, at_ms }) => Claim::DoneAt(*position, *at_ms),
            Some(Slot::InFlight(n)) => Claim::Wait(Some(n.clone())),
            None => {
                st.slots
                    .insert(Arc::from(key), Slot::InFlight(Arc::new(Notify::new())));
                Claim::Owned
            }
        }
    }

    fn complete_key(&self, key: &str, position: Position, at_ms: u64) {
        let now = Instant::now();
        let mut st = self.lock();
        self.expire(&mut st, now);
        let key: Arc<str> = match st.slots.get_key_value(key) {
            Some((k, _)) => k.clone(),
            None => Arc::from(key),
        };
        let done = Slot::Done { position, at_ms };
        match st.slots.insert(key.clone(), done) {
            Some(Slot::InFlight(n)) => n.notify_waiters(),
            // Completed twice (cannot happen through the hub): keep one
            // queue entry per record.
            Some(Slot::Done { .. }) => return,
            None => {}
        }
        st.bytes += Idempotency::record_bytes(&key);
        st.order.push_back((now, key));
        while st.order.len() > self.max_keys || st.bytes > self.max_bytes {
            if !self.pop_oldest(&mut st) {
                break;
            }
        }
    }

    fn abandon_key(&self, key: &str) {
        let mut st = self.lock();
        if let Some(Slot::InFlight(n)) = st.slots.remove(key) {
            n.notify_waiters();
        }
    }

    /// Forgets the oldest completed record. Returns false if there is none.
    fn pop_oldest(&self, st: &mut State) -> bool {
        let Some((_, k)) = st.order.pop_front() else {
            return false;
        };
        st.bytes = st.bytes.saturating_sub(Idempotency::record_bytes(&k));
        if matches!(st.slots.get(&k), Some(Slot::Done { .. })) {
            st.slots.remove(&k);
        }
        true
    }

    /// Forgets records older than the ttl: front of the queue only.
    fn expire(&self, st: &mut State, now: Instant) {
        while let Some((at, _)) = st.order.front() {
            if now.duration_since(*at) < self.ttl {
                break;
            }
            self.pop_oldest(st);
        }
    }
}

impl IdempotencyStore for Idempotency {
    fn claim<'a>(
        &'a self,
        topic: &'a Topic,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Claim, EngineError>> {
        let c = self.claim_key(&Idempotency::scoped_key(topic.as_str(), id));
        Box::pin(async move { Ok(c) })
    }

    fn complete<'a>(
        &'a self,
        topic: &'a Topic,
        id: &'a str,
        event: &'a Arc<Event>,
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        self.complete_key(
            &Idempotency::scoped_key(topic.as_str(), id),
            event.position,
            event.published_at_ms,
        );
        Box::pin(async { Ok(()) })
    }

    fn abandon<'a>(&'a self, topic: &'a Topic, id: &'a str) -> BoxFuture<'a, ()> {
        self.abandon_key(&Idempotency::scoped_key(topic.as_str(), id));
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Data, NewEvent};

    fn topic() -> Topic {
        Topic::new("orders/1").unwrap()
    }

    fn event(seq: u64, at_ms: u64) -> Arc<Event> {
        Arc::new(Event::new(
            NewEvent::new(topic(), Data::Text("x".repeat(100_000).into())),
            Position::new(7, seq),
            at_ms,
        ))
    }

    /// Claims and completes `id` with an event at `seq`.
    async fn record(store: &Idempotency, id: &str, seq: u64) {
        let t = topic();
        assert!(matches!(store.claim(&t, id).await.unwrap(), Claim::Owned));
        store
            .complete(&t, id, &event(seq, 1000 + seq))
            .await
            .unwrap();
    }

    async fn lookup(store: &Idempotency, id: &str) -> Option<(Position, u64)> {
        let t = topic();
        match store.claim(&t, id).await.unwrap() {
            Claim::DoneAt(p, at) => Some((p, at)),
            Claim::Owned => {
                store.abandon(&t, id).await;
                None
            }
            Claim::Wait(_) => panic!("{id} is in flight"),
        }
    }

    #[tokio::test]
    async fn a_retry_gets_the_original_position_and_time() {
        let store = Idempotency::new(Duration::from_secs(60), 100, 1 << 20);
        record(&store, "a", 5).await;
        assert_eq!(lookup(&store, "a").await, Some((Position::new(7, 5), 1005)));
        // A record holds the key, not the 100 kB event.
        let (count, bytes) = store.usage();
        assert_eq!(count, 1);
        assert_eq!(
            bytes,
            Idempotency::record_bytes(&Idempotency::scoped_key("orders/1", "a"))
        );
        assert!(bytes < 200, "{bytes}");
    }

    #[tokio::test]
    async fn a_second_claim_waits_for_the_first() {
        let store = Idempotency::new(Duration::from_secs(60), 100, 1 << 20);
        let t = topic();
        assert!(matches!(store.claim(&t, "a").await.unwrap(), Claim::Owned));
        assert!(matches!(
            store.claim(&t, "a").await.unwrap(),
            Claim::Wait(Some(_))
        ));
        store.abandon(&t, "a").await;
        assert!(matches!(store.claim(&t, "a").await.unwrap(), Claim::Owned));
    }

    #[tokio::test]
    async fn count_bound_forgets_the_oldest() {
        let store = Idempotency::new(Duration::from_secs(60), 3, 1 << 20);
        for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
            record(&store, id, i as u64 + 1).await;
        }
        assert_eq!(store.usage().0, 3);
        assert_eq!(lookup(&store, "a").await, None, "the oldest was evicted");
        for id in ["b", "c", "d"] {
            assert!(lookup(&store, id).await.is_some(), "{id}");
        }
    }

    #[tokio::test]
    async fn bytes_bound_forgets_the_oldest() {
        let long = "x".repeat(200);
        let per = Idempotency::record_bytes(&Idempotency::scoped_key("orders/1", &long));
        // Room for two long keys, whatever the count bound.
        let store = Idempotency::new(Duration::from_secs(60), 1000, 2 * per + per / 2);
        let ids: Vec<String> = (0..4).map(|i| format!("{i}{}", &long[1..])).collect();
        for (i, id) in ids.iter().enumerate() {
            record(&store, id, i as u64 + 1).await;
            assert!(store.usage().1 <= 2 * per + per / 2);
        }
        assert_eq!(store.usage(), (2, 2 * per));
        assert_eq!(lookup(&store, &ids[0]).await, None);
        assert_eq!(lookup(&store, &ids[1]).await, None);
        assert_eq!(
            lookup(&store, &ids[3]).await,
            Some((Position::new(7, 4), 1004))
        );
        // Short keys take less room: more of them fit.
        let store = Idempotency::new(Duration::from_secs(60), 1000, 2 * per + per / 2);
        for i in 0..5 {
            record(&store, &i.to_string(), i + 1).await;
        }
        assert_eq!(store.usage().0, 5);
    }

    #[tokio::test]
    async fn expiry_follows_completion_order() {
        let store = Idempotency::new(Duration::from_millis(300), 100, 1 << 20);
        record(&store, "old", 1).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        record(&store, "new", 2).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        // "old" is 350 ms old, "new" 150 ms.
        assert_eq!(
            lookup(&store, "old").await,
            None,
            "expired: publishes again"
        );
        assert_eq!(
            lookup(&store, "new").await,
            Some((Position::new(7, 2), 1002))
        );
        assert_eq!(store.usage().0, 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(lookup(&store, "new").await, None);
        assert_eq!(store.usage(), (0, 0));
    }

    #[tokio::test]
    async fn an_evicted_key_can_be_recorded_again() {
        let store = Idempotency::new(Duration::from_secs(60), 1, 1 << 20);
        record(&store, "a", 1).await;
        record(&store, "b", 2).await;
        record(&store, "a", 3).await;
        assert_eq!(store.usage().0, 1);
        assert_eq!(lookup(&store, "a").await, Some((Position::new(7, 3), 1003)));
    }
}
