//! The index from Mercure update ids to their places in the log, so that a
//! `Last-Event-ID` is found in constant time, whatever it names.
//!
//! One task per process reads the log from its oldest retained update on
//! (so after a restart of the embedded engine the retained history is
//! indexed again) and then live, as a subscriber of the log topic (so on
//! Redis this node sees every node's updates). The index keeps the newest
//! [`MAX_IDS`] ids, the oldest forgotten first: bounded like the history it
//! indexes (an id older than the retained history resumes at the history's
//! start anyway). An id given twice maps to its newest update. A lookup the
//! index misses (the task is still reading the history at start, or the id
//! is unknown) reads at most one page of the newest updates, never more: an
//! unknown `Last-Event-ID` costs a client little and the server little.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use herald_core::subscription::Start;
use herald_core::{CloseReason, Delivery, Hub, Position};

use super::{log_topic, update};

/// Ids held at most (about 100 bytes each, with the map's own).
pub const MAX_IDS: usize = 100_000;

/// Update ids and their positions in the log, newest last.
#[derive(Default)]
pub struct Index {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<Box<str>, Position>,
    order: VecDeque<(Box<str>, Position)>,
}

impl Index {
    /// The position of the newest update with id `id`, if indexed.
    pub fn get(&self, id: &str) -> Option<Position> {
        self.inner.lock().ok()?.by_id.get(id).copied()
    }

    /// Records that the update `id` sits at `position` (newer than every
    /// recorded one), forgetting the oldest past [`MAX_IDS`].
    pub fn insert(&self, id: &str, position: Position) {
        let Ok(mut g) = self.inner.lock() else {
            return;
        };
        g.by_id.insert(id.into(), position);
        g.order.push_back((id.into(), position));
        while g.order.len() > MAX_IDS {
            let Some((old, at)) = g.order.pop_front() else {
                break;
            };
            // Only if no newer update reused the id.
            if g.by_id.get(&old) == Some(&at) {
                g.by_id.remove(&old);
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
            match sub.next().await {
                Delivery::Event(e) => {
                    if let Some(u) = update(&e) {
                        index.insert(&u.id, e.position);
                    }
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
        assert_eq!(ix.get("a"), Some(Position::new(1, 3)));
        for i in 0..MAX_IDS {
            ix.insert(&format!("x{i}"), Position::new(1, 10 + i as u64));
        }
        assert_eq!(ix.len(), MAX_IDS);
        assert_eq!(ix.get("b"), None);
        assert_eq!(ix.get("a"), None);
        assert_eq!(ix.get("x0"), Some(Position::new(1, 10)));
    }
}
