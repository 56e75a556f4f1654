//! The index from Mercure update ids to their places in the log, so that a
//! `Last-Event-ID` is found in constant time, whatever it names.
//!
//! One task per process reads the log from its oldest retained update on
//! (so after a restart of the embedded engine the retained history is
//! indexed again) and then live, as a subscriber of the log topic (so on
//! Redis this node sees every node's updates). The index keeps the newest
//! [`MAX_IDS`] ids, the oldest forgotten first: bounded like the history it
//! indexes (an id older than the retained history resumes at the history's
//! start anyway). An id given more than once keeps its newest
//! [`MAX_PLACES`] places: a subscriber resumes after the newest of them it
//! would have received (so a publisher reusing an id on another topic
//! cannot move other subscribers' resume point). A lookup the index misses
//! reads nothing once the index has caught up with the log; before that
//! (at start) it reads at most one small page of the newest updates: an
//! unknown `Last-Event-ID` costs the server next to nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use herald_core::subscription::Start;
use herald_core::{CloseReason, Delivery, Hub, Position};

use super::{log_topic, update};

/// Ids held at most (about 100 bytes each, with the map's own).
pub const MAX_IDS: usize = 100_000;

/// Places kept per id (a Mercure id is not unique: a publisher may reuse
/// one, on purpose or to mislead another topic's subscribers), newest last.
pub const MAX_PLACES: usize = 4;

/// Update ids and their positions in the log, newest last.
#[derive(Default)]
pub struct Index {
    inner: Mutex<Inner>,
    /// Set once the filling task has read the retained history.
    ready: AtomicBool,
    /// Told each time an update is indexed.
    indexed: tokio::sync::Notify,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<Box<str>, Vec<Position>>,
    order: VecDeque<(Box<str>, Position)>,
    /// The newest position indexed.
    last: Option<Position>,
}

impl Index {
    /// The positions of the newest updates with id `id` (at most
    /// [`MAX_PLACES`], newest first); empty when not indexed.
    pub fn get(&self, id: &str) -> Vec<Position> {
        self.inner
            .lock()
            .ok()
            .and_then(|g| g.by_id.get(id).map(|v| v.iter().rev().copied().collect()))
            .unwrap_or_default()
    }

    /// Whether the index holds every retained update (the filling task has
    /// caught up with the log): a miss then means the id is not retained.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Records that the update `id` sits at `position` (newer than every
    /// recorded one), forgetting the oldest past [`MAX_IDS`].
    pub fn insert(&self, id: &str, position: Position) {
        let Ok(mut g) = self.inner.lock() else {
            return;
        };
        let places = g.by_id.entry(id.into()).or_default();
        places.push(position);
        if places.len() > MAX_PLACES {
            places.remove(0);
        }
        g.order.push_back((id.into(), position));
        g.last = Some(position);
        while g.order.len() > MAX_IDS {
            let Some((old, at)) = g.order.pop_front() else {
                break;
            };
            if let Some(v) = g.by_id.get_mut(&old) {
                v.retain(|p| *p != at);
                if v.is_empty() {
                    g.by_id.remove(&old);
                }
            }
        }
    }

    /// Waits (at most `limit`) until the update at `head` (the log's head
    /// when a lookup missed) is indexed, so that an update published just
    /// before a subscriber resumes from it is found. Returns whether it is.
    pub async fn caught_up_to(&self, head: Position, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.indexed.notified();
            let last = self.inner.lock().ok().and_then(|g| g.last);
            if last.is_some_and(|l| l >= head) || head.seq == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// How many ids are held.
    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |g| g.order.len())
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Keeps `index` filled from the log of `hub` until the hub shuts down:
/// from the oldest retained update, then live; after a failure (engine
/// unavailable, fallen behind) it starts again after the last position it
/// indexed, with a backoff of up to 5 s.
pub(crate) async fn fill(hub: Hub, index: std::sync::Arc<Index>) {
    let log = log_topic();
    let mut from = Start::Earliest;
    let mut backoff = Duration::from_millis(100);
    loop {
        if hub.is_shutting_down() {
            return;
        }
        let mut sub = hub.subscribe();
        if let Err(e) = sub.add_from(log.clone(), from).await {
            tracing::debug!(error = %e, "Mercure id index: cannot read the log yet");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        }
        loop {
            let next = match sub.next_ready().await {
                Some(d) => d,
                None => {
                    // Caught up with the log: a miss is now a real miss.
                    index.ready.store(true, Ordering::Release);
                    sub.next().await
                }
            };
            match next {
                Delivery::Event(e) => {
                    if let Some(u) = update(&e) {
                        index.insert(&u.id, e.position);
                    }
                    index.indexed.notify_waiters();
                    from = Start::After(e.position);
                    backoff = Duration::from_millis(100);
                }
                Delivery::Gap(_) => {}
                Delivery::Closed(CloseReason::Shutdown) => return,
                Delivery::Closed(_) => break,
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_wins_and_the_oldest_go_first() {
        let ix = Index::default();
        ix.insert("a", Position::new(1, 1));
        ix.insert("b", Position::new(1, 2));
        ix.insert("a", Position::new(1, 3));
        assert_eq!(ix.get("a"), [Position::new(1, 3), Position::new(1, 1)]);
        for i in 0..MAX_IDS {
            ix.insert(&format!("x{i}"), Position::new(1, 10 + i as u64));
        }
        assert_eq!(ix.len(), MAX_IDS);
        assert!(ix.get("b").is_empty());
        assert!(ix.get("a").is_empty());
        assert_eq!(ix.get("x0"), [Position::new(1, 10)]);
        for i in 0..6 {
            ix.insert("dup", Position::new(2, i));
        }
        assert_eq!(ix.get("dup").len(), MAX_PLACES);
        assert_eq!(ix.get("dup")[0], Position::new(2, 5));
    }
}
