//! One topic's retained events in the memory engine, and the retention
//! rules (count, age) applied to them.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::engine::{Budget, HistoryLimits};
use crate::event::Event;

pub(super) struct TopicLog {
    pub(super) epoch: u64,
    /// The topic's history limits: its policy's over the engine's, resolved
    /// once when the topic is created. `max_events == 0`: ephemeral.
    pub(super) limits: HistoryLimits,
    pub(super) head: u64,
    pub(super) events: VecDeque<Arc<Event>>,
    /// The expiry time of the topic's one valid entry in its shard's
    /// expiry queue, if it has one (others are stale and skipped).
    pub(super) queued: Option<u64>,
}

pub(super) fn event_bytes(e: &Event) -> u64 {
    Budget::event_bytes(e.name.as_deref(), e.data.len())
}

impl TopicLog {
    pub(super) fn new(epoch: u64, limits: HistoryLimits) -> TopicLog {
        TopicLog {
            epoch,
            limits,
            head: 0,
            events: VecDeque::new(),
            queued: None,
        }
    }

    /// Drops events beyond the count limit and older than the age limit.
    /// Returns the bytes freed.
    pub(super) fn prune(&mut self, now: u64) -> u64 {
        let limits = self.limits;
        let mut freed = 0;
        while self.events.len() > limits.max_events {
            if let Some(e) = self.events.pop_front() {
                freed += event_bytes(&e);
            }
        }
        let max_age = max_age_ms(&limits);
        while let Some(e) = self.events.front() {
            if now.saturating_sub(e.published_at_ms) > max_age {
                freed += event_bytes(e);
                self.events.pop_front();
            } else {
                break;
            }
        }
        freed
    }

    /// The bytes a publish of `adding` events would free by pruning first.
    pub(super) fn freed_by(&self, adding: usize, now: u64) -> u64 {
        let max_age = max_age_ms(&self.limits);
        let over = (self.events.len() + adding).saturating_sub(self.limits.max_events);
        self.events
            .iter()
            .enumerate()
            .take_while(|(i, e)| *i < over || now.saturating_sub(e.published_at_ms) > max_age)
            .map(|(_, e)| event_bytes(e))
            .sum()
    }

    pub(super) fn first_retained(&self) -> u64 {
        self.events
            .front()
            .map_or(self.head + 1, |e| e.position.seq)
    }

    /// The first millisecond at which [`TopicLog::prune`] drops the oldest
    /// retained event for its age (it drops events *older* than the limit).
    pub(super) fn expires_at(&self) -> Option<u64> {
        self.events.front().map(|e| {
            e.published_at_ms
                .saturating_add(max_age_ms(&self.limits))
                .saturating_add(1)
        })
    }
}

pub(super) fn max_age_ms(limits: &HistoryLimits) -> u64 {
    u64::try_from(limits.max_age.as_millis()).unwrap_or(u64::MAX)
}
