//! Idempotent publishes: a retried publish with the same client id returns the
//! first publish's result instead of storing the event again.
//!
//! Keys are scoped by topic and remembered for a bounded time and count.
//! Concurrent publishes with the same key are serialised: the second waits for
//! the first and gets its result; if the first fails, the second publishes.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::event::Event;

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
    /// [`Idempotency::complete`] or [`Idempotency::abandon`].
    Owned,
    /// Already published: here is the event.
    Done(Arc<Event>),
    /// Another publish with this key is in flight: wait, then claim again.
    Wait(Arc<Notify>),
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

    pub fn claim(&self, key: &str) -> Claim {
        let mut st = self.lock();
        self.expire(&mut st);
        match st.slots.get(key) {
            Some(Slot::Done(e)) => Claim::Done(e.clone()),
            Some(Slot::InFlight(n)) => Claim::Wait(n.clone()),
            None => {
                st.slots
                    .insert(key.to_owned(), Slot::InFlight(Arc::new(Notify::new())));
                Claim::Owned
            }
        }
    }

    pub fn complete(&self, key: &str, event: Arc<Event>) {
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

    pub fn abandon(&self, key: &str) {
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
