//! Idempotent publishes: a retried publish with the same client id returns the
//! first publish's result instead of storing the event again.
//!
//! Keys are scoped by topic and remembered for a bounded time and count.
//! Concurrent publishes with the same key are serialised: the second waits for
//! the first and gets its result; if the first fails, the second publishes.
//!
//! The records live in an [`IdempotencyStore`]: this process's memory
//! ([`Idempotency`]) unless the engine offers a shared one
//! ([`Engine::idempotency_store`](crate::Engine::idempotency_store)), so that
//! a retry that reaches another node is recognised too.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::engine::{BoxFuture, EngineError};
use crate::event::{Event, Position};
use crate::topic::Topic;

/// Where idempotency records live. A record goes from claimed (a publish
/// with this id is in flight) to completed (here is its event) and expires
/// after the hub's `idempotency_ttl`.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Claims `id` on `topic` for a publish.
    fn claim<'a>(
        &'a self,
        topic: &'a Topic,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Claim, EngineError>>;

    /// Records the event the owner of a claim published.
    fn complete<'a>(
        &'a self,
        topic: &'a Topic,
        id: &'a str,
        event: &'a Arc<Event>,
    ) -> BoxFuture<'a, Result<(), EngineError>>;

    /// Releases a claim whose publish failed, so that a retry may publish.
    fn abandon<'a>(&'a self, topic: &'a Topic, id: &'a str) -> BoxFuture<'a, ()>;
}

enum Slot {
    InFlight(Arc<Notify>),
    Done(Arc<Event>),
}

/// The memory of recent idempotency keys.
pub struct Idempotency {
    ttl: Duration,
    max_keys: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    slots: HashMap<String, Slot>,
    /// Completed keys in completion order, for expiry.
    order: VecDeque<(Instant, String)>,
}

/// The outcome of claiming a key.
pub enum Claim {
    /// Nobody has published with this key: the caller publishes, then calls
    /// [`IdempotencyStore::complete`] or [`IdempotencyStore::abandon`].
    Owned,
    /// Already published: here is the event.
    Done(Arc<Event>),
    /// Already published at this position and time (milliseconds since the
    /// Unix epoch). A shared store keeps only these; the retry carries the
    /// same event, so the hub rebuilds it from the request.
    DoneAt(Position, u64),
    /// Another publish with this key is in flight: wait (on the `Notify`
    /// when the store has one, else briefly), then claim again.
    Wait(Option<Arc<Notify>>),
}

impl Idempotency {
    pub fn new(ttl: Duration, max_keys: usize) -> Idempotency {
        Idempotency {
            ttl,
            max_keys: max_keys.max(1),
            state: Mutex::new(State::default()),
        }
    }

    pub fn scoped_key(topic: &str, id: &str) -> String {
        let mut k = String::with_capacity(topic.len() + id.len() + 1);
        k.push_str(topic);
        k.push('\0');
        k.push_str(id);
        k
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn claim_key(&self, key: &str) -> Claim {
        let mut st = self.lock();
        self.expire(&mut st);
        match st.slots.get(key) {
            Some(Slot::Done(e)) => Claim::Done(e.clone()),
            Some(Slot::InFlight(n)) => Claim::Wait(Some(n.clone())),
            None => {
                st.slots
                    .insert(key.to_owned(), Slot::InFlight(Arc::new(Notify::new())));
                Claim::Owned
            }
        }
    }

    fn complete_key(&self, key: &str, event: Arc<Event>) {
        let mut st = self.lock();
        if let Some(Slot::InFlight(n)) = st.slots.insert(key.to_owned(), Slot::Done(event)) {
            n.notify_waiters();
        }
        st.order.push_back((Instant::now(), key.to_owned()));
        while st.order.len() > self.max_keys {
            if let Some((_, k)) = st.order.pop_front() {
                st.slots.remove(&k);
            }
        }
    }

    fn abandon_key(&self, key: &str) {
        let mut st = self.lock();
        if let Some(Slot::InFlight(n)) = st.slots.remove(key) {
            n.notify_waiters();
        }
    }

    fn expire(&self, st: &mut State) {
        let now = Instant::now();
        while let Some((at, _)) = st.order.front() {
            if now.duration_since(*at) < self.ttl {
                break;
            }
            if let Some((_, k)) = st.order.pop_front() {
                if matches!(st.slots.get(&k), Some(Slot::Done(_))) {
                    st.slots.remove(&k);
                }
            }
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
        self.complete_key(&Idempotency::scoped_key(topic.as_str(), id), event.clone());
        Box::pin(async { Ok(()) })
    }

    fn abandon<'a>(&'a self, topic: &'a Topic, id: &'a str) -> BoxFuture<'a, ()> {
        self.abandon_key(&Idempotency::scoped_key(topic.as_str(), id));
        Box::pin(async {})
    }
}
