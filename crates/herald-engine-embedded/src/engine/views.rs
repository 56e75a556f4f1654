//! What readers and the writer share of each topic: committed positions
//! and hot tails (bounded per topic and in all), the topic epoch, and the
//! engine's failure state.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use herald_core::fanout::Fanout;
use herald_core::{EngineError, Event, Topic};

use super::{Shared, TopicView, FAILED, OPEN, SHARDS};
use crate::config::EmbeddedConfig;

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
    pub(super) fn pop_tail(&self, v: &mut TopicView) {
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

    pub(super) fn shard(&self, topic: &Topic) -> MutexGuard<'_, HashMap<Topic, TopicView>> {
        let i = (topic.key().0 as usize) % SHARDS;
        self.views[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn check_writable(&self) -> Result<(), EngineError> {
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
    pub(super) fn fill_tail(&self, topic: &Topic, epoch: u64, events: &[Arc<Event>]) {
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
