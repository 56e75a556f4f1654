//! Topic policies in the embedded engine: the policies themselves, and
//! ephemeral topics (`history = 0`), whose events never reach the writer.
//!
//! An ephemeral event gets its position from the topic's view in memory
//! (sequences keep increasing while the topic is held, so cursors stay
//! valid) and is dispatched to local subscribers under the view's lock, as
//! the writer dispatches stored events: nothing of it is written to the
//! store, not even the topic's record. A view of an ephemeral topic
//! ([`EPHEMERAL_ID`]) is held only while it has local subscribers; with none
//! left it is forgotten, and used again it starts over at sequence 1 (a
//! resume on an ephemeral topic is live only, so no client asks for the
//! positions it gave before).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use herald_core::engine::{Exhausted, HistoryLimits};
use herald_core::event::now_ms;
use herald_core::policy::{TopicPolicies, TopicPolicy};
use herald_core::{EngineError, Event, NewEvent, Position, Topic};

use super::{Shared, TopicView};

/// The store id of an ephemeral topic's view: none (the writer's ids start
/// at 1), since the topic has no record in the store.
pub(super) const EPHEMERAL_ID: u64 = 0;

impl Shared {
    /// The policies in force ([`herald_core::Engine::set_policies`]).
    pub(crate) fn policies(&self) -> Arc<TopicPolicies> {
        self.policies
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn set_policies(&self, policies: Arc<TopicPolicies>) {
        *self.policies.write().unwrap_or_else(|e| e.into_inner()) = policies;
    }

    /// The policy of `topic` (cached by [`TopicPolicies`]).
    pub(crate) fn policy(&self, topic: &Topic) -> Arc<TopicPolicy> {
        self.policies().resolve(topic)
    }

    /// `topic`'s history limits over the engine's `server` ones.
    pub(crate) fn limits_of(&self, topic: &Topic, server: HistoryLimits) -> HistoryLimits {
        self.policies().history_limits(topic, server)
    }

    /// Publishes events of ephemeral topics: positions from the views,
    /// dispatched at once, nothing stored. Refused whole with `ServerFull`
    /// when it would create topics beyond `max_topics`.
    pub(super) fn publish_ephemeral(
        &self,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Arc<Event>>, EngineError> {
        self.check_writable()?;
        let fresh: std::collections::HashSet<&Topic> = events
            .iter()
            .map(|e| &e.topic)
            .filter(|t| !self.shard(t).contains_key(*t))
            .collect();
        if !fresh.is_empty() {
            let max = self.max_topics();
            let held: usize = self
                .views
                .iter()
                .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
                .sum();
            if held + fresh.len() > max {
                return Err(EngineError::ServerFull(Exhausted::Topics { max }));
            }
        }
        let fanout = self.fanout();
        let now = now_ms();
        let mut out = Vec::with_capacity(events.len());
        for new in events {
            let topic = new.topic.clone();
            let mut shard = self.shard(&topic);
            let epoch = self.topic_epoch();
            let v = shard.entry(topic.clone()).or_insert_with(|| TopicView {
                id: EPHEMERAL_ID,
                epoch,
                head: 0,
                first: 1,
                tail: VecDeque::new(),
                tail_bytes: 0,
            });
            v.head += 1;
            // Nothing is retained: readers see an empty history ending here.
            v.first = v.head + 1;
            while !v.tail.is_empty() {
                self.pop_tail(v);
            }
            let event = Arc::new(Event::new(new, Position::new(v.epoch, v.head), now));
            if let Some(f) = &fanout {
                f.dispatch(&event);
            }
            let listened = fanout.as_deref().is_some_and(|f| f.subscribers(&topic) > 0);
            if !listened && v.id == EPHEMERAL_ID {
                shard.remove(&topic);
            }
            drop(shard);
            out.push(event);
        }
        Ok(out)
    }

    /// The last local subscriber of `topic` left: an ephemeral topic's view
    /// goes (checked under the view's lock, so a publish racing in either
    /// keeps it for its subscriber or creates it again).
    pub(super) fn unwatch_ephemeral(&self, topic: &Topic) {
        let fanout = self.fanout();
        let mut shard = self.shard(topic);
        let idle = fanout.as_deref().is_none_or(|f| f.subscribers(topic) == 0);
        if idle && shard.get(topic).is_some_and(|v| v.id == EPHEMERAL_ID) {
            if let Some(v) = shard.remove(topic) {
                self.tail_bytes.fetch_sub(v.tail_bytes, Ordering::Relaxed);
            }
        }
    }
}

impl Shared {
    /// The first local subscriber of `topic` arrived: an ephemeral topic is
    /// held from now on, so that the position its subscriber starts from is
    /// under the epoch its first event gets.
    pub(super) fn watch_ephemeral(&self, topic: &Topic) {
        if !self.policy(topic).is_ephemeral() {
            return;
        }
        let epoch = self.topic_epoch();
        self.shard(topic)
            .entry(topic.clone())
            .or_insert_with(|| TopicView {
                id: EPHEMERAL_ID,
                epoch,
                head: 0,
                first: 1,
                tail: VecDeque::new(),
                tail_bytes: 0,
            });
    }
}
