//! The memory engine's state: topics sharded by key, each shard with its
//! expiry queue, the table of epoch generations and the budget counters;
//! publish, read and the expiry sweep over them.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard, RwLock};

use super::log::{event_bytes, TopicLog};
use super::EPOCH_BUCKETS;
use crate::engine::{resolve_start, Budget, EngineError, Exhausted, HistoryLimits, ReadResult};
use crate::event::{now_ms, Event, NewEvent, Position};
use crate::fanout::Fanout;
use crate::policy::TopicPolicies;
use crate::topic::Topic;

pub(super) const SHARDS: usize = 64;

/// Epochs stay within 48 bits (see [`super::new_epoch`]).
const EPOCH_MASK: u64 = 0xffff_ffff_ffff;

pub(super) struct Inner {
    pub(super) limits: HistoryLimits,
    /// Per-topic policies ([`crate::Engine::set_policies`]); a topic's
    /// limits are resolved when its log is created.
    pub(super) policies: RwLock<Arc<TopicPolicies>>,
    /// The engine's first epoch: generation 0 of every bucket.
    pub(super) base_epoch: u64,
    /// The generation of each bucket of topics (see the module docs).
    pub(super) generations: Box<[AtomicU64]>,
    /// The last generation given out.
    pub(super) last_generation: AtomicU64,
    pub(super) shards: Box<[Mutex<Shard>]>,
    /// Replaced when a new hub attaches (an in-process server restart keeps
    /// the engine, and so its history).
    pub(super) fanout: RwLock<Option<Arc<Fanout>>>,
    pub(super) max_topics: AtomicUsize,
    pub(super) max_retained_bytes: AtomicU64,
    /// Topics held, all shards.
    pub(super) topics: AtomicUsize,
    /// [`Budget::event_bytes`] of every retained event, all shards.
    pub(super) retained_bytes: AtomicU64,
}

#[derive(Default)]
pub(super) struct Shard {
    pub(super) logs: HashMap<Topic, TopicLog>,
    /// When each topic's oldest event expires (ms since the Unix epoch): one
    /// valid entry per topic that retains events ([`TopicLog::queued`]);
    /// entries of a forgotten incarnation are skipped. An entry may be early
    /// (the count limit dropped that event since); the sweep then re-queues
    /// the topic at its new oldest event.
    pub(super) expiry: BinaryHeap<Reverse<(u64, Topic)>>,
}

impl Inner {
    pub(super) fn shard(&self, topic: &Topic) -> MutexGuard<'_, Shard> {
        let i = (topic.key().0 as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn fanout(&self) -> Option<Arc<Fanout>> {
        self.fanout
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The history limits of `topic`: its policy's over the engine's.
    pub(super) fn limits_of(&self, topic: &Topic) -> HistoryLimits {
        self.policies
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .history_limits(topic, self.limits)
    }

    /// A new log for `topic`, under the epoch it is created with.
    pub(super) fn new_log(&self, topic: &Topic) -> TopicLog {
        TopicLog::new(self.epoch_of(topic), self.limits_of(topic))
    }

    pub(super) fn usage(&self) -> (usize, u64) {
        (
            self.topics.load(Ordering::Relaxed),
            self.retained_bytes.load(Ordering::Relaxed),
        )
    }

    pub(super) fn report(&self, fanout: Option<&Fanout>) {
        if let Some(f) = fanout {
            let (topics, bytes) = self.usage();
            f.metrics().set_usage(topics as u64, bytes);
        }
    }

    /// Refuses `events` if storing them would pass the budget.
    pub(super) fn admit(&self, events: &[NewEvent], now: u64) -> Result<(), EngineError> {
        let mut per_topic: HashMap<&Topic, (usize, u64)> = HashMap::new();
        for e in events {
            let entry = per_topic.entry(&e.topic).or_default();
            entry.0 += 1;
            entry.1 += Budget::event_bytes(e.name.as_deref(), e.data.len());
        }
        let (mut new_topics, mut adding, mut freeing) = (0usize, 0u64, 0u64);
        for (topic, (count, bytes)) in per_topic {
            match self.shard(topic).logs.get(topic) {
                None => {
                    new_topics += 1;
                    // An ephemeral topic retains nothing.
                    if self.limits_of(topic).max_events > 0 {
                        adding += bytes;
                    }
                }
                Some(log) if log.limits.max_events == 0 => {}
                Some(log) => {
                    adding += bytes;
                    freeing += log.freed_by(count, now);
                }
            }
        }
        let max = self.max_topics.load(Ordering::Relaxed);
        if new_topics > 0 && self.topics.load(Ordering::Relaxed) + new_topics > max {
            return Err(EngineError::ServerFull(Exhausted::Topics { max }));
        }
        let max = self.max_retained_bytes.load(Ordering::Relaxed);
        let retained = self.retained_bytes.load(Ordering::Relaxed);
        if (retained + adding).saturating_sub(freeing) > max {
            return Err(EngineError::ServerFull(Exhausted::RetainedBytes { max }));
        }
        Ok(())
    }

    pub(super) fn publish_now(
        &self,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Arc<Event>>, EngineError> {
        let now = now_ms();
        self.admit(&events, now)?;
        let fanout = self.fanout();
        let mut out = Vec::with_capacity(events.len());
        for new in events {
            let topic = new.topic.clone();
            let mut guard = self.shard(&topic);
            let Shard { logs, expiry } = &mut *guard;
            let log = logs.entry(topic.clone()).or_insert_with(|| {
                self.topics.fetch_add(1, Ordering::Relaxed);
                self.new_log(&topic)
            });
            log.head += 1;
            let event = Arc::new(Event::new(new, Position::new(log.epoch, log.head), now));
            let ephemeral = log.limits.max_events == 0;
            if !ephemeral {
                self.retained_bytes
                    .fetch_add(event_bytes(&event), Ordering::Relaxed);
                log.events.push_back(event.clone());
                let freed = log.prune(now);
                self.retained_bytes.fetch_sub(freed, Ordering::Relaxed);
                if log.queued.is_none() {
                    if let Some(at) = log.expires_at() {
                        expiry.push(Reverse((at, topic.clone())));
                        log.queued = Some(at);
                    }
                }
            }
            // Dispatch under the topic's lock: subscribers see a topic's
            // events in position order, and a reader that takes the lock
            // after us sees the event in history.
            if let Some(f) = &fanout {
                f.dispatch(&event);
            }
            // An ephemeral topic nobody listens to holds nothing: forget it
            // now (no expiry entry would ever visit it).
            if ephemeral && self.forget_if_idle(logs, &topic, fanout.as_deref()) {
                if let Some(f) = &fanout {
                    f.metrics().topics_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            drop(guard);
            out.push(event);
        }
        self.report(fanout.as_deref());
        Ok(out)
    }

    pub(super) fn read_now(
        &self,
        topic: &Topic,
        after: Option<Position>,
        limit: usize,
    ) -> ReadResult {
        let mut shard = self.shard(topic);
        let Some(log) = shard.logs.get_mut(topic) else {
            // Not held (never used, or dropped): read as an empty topic of
            // its bucket's epoch, which a dropped topic's positions are not.
            let epoch = self.epoch_of(topic);
            let (from, gap) = resolve_start(epoch, 0, 1, after);
            return ReadResult {
                epoch,
                head: 0,
                gap,
                from,
                events: Vec::new(),
            };
        };
        let freed = log.prune(now_ms());
        self.retained_bytes.fetch_sub(freed, Ordering::Relaxed);
        let (from, gap) = resolve_start(log.epoch, log.head, log.first_retained(), after);
        let events = match log.events.front() {
            Some(first) if from.seq < log.head => {
                let skip = (from.seq + 1).saturating_sub(first.position.seq) as usize;
                log.events.iter().skip(skip).take(limit).cloned().collect()
            }
            _ => Vec::new(),
        };
        ReadResult {
            epoch: log.epoch,
            head: log.head,
            gap,
            from,
            events,
        }
    }

    /// Forgets `topic` if it retains nothing and has no local subscriber.
    /// Returns whether it did. Called with the topic's shard locked.
    pub(super) fn forget_if_idle(
        &self,
        logs: &mut HashMap<Topic, TopicLog>,
        topic: &Topic,
        fanout: Option<&Fanout>,
    ) -> bool {
        let idle = logs.get(topic).is_some_and(|log| log.events.is_empty())
            && fanout.map_or(0, |f| f.subscribers(topic)) == 0;
        if !idle {
            return false;
        }
        let Some(log) = logs.remove(topic) else {
            return false;
        };
        self.topics.fetch_sub(1, Ordering::Relaxed);
        if log.head > 0 {
            // Its positions must never be handed out again: if it is used
            // again it starts under another epoch. Done under the shard's
            // lock (the bucket belongs to it), so the topic cannot be
            // re-created in between.
            let next = self.last_generation.fetch_add(1, Ordering::Relaxed) + 1;
            self.generations[bucket(topic)].store(next, Ordering::Relaxed);
        }
        true
    }

    /// The epoch under which `topic` is read when not held, and created.
    pub(super) fn epoch_of(&self, topic: &Topic) -> u64 {
        let generation = self.generations[bucket(topic)].load(Ordering::Relaxed);
        match self.base_epoch.wrapping_add(generation) & EPOCH_MASK {
            0 => 1,
            e => e,
        }
    }

    /// Drops expired events and forgets idle topics. Returns the topics
    /// forgotten.
    pub(super) fn sweep(&self) -> u64 {
        self.sweep_at(now_ms())
    }

    /// [`Inner::sweep`] as if the time were `now` (ms since the Unix epoch).
    pub(super) fn sweep_at(&self, now: u64) -> u64 {
        let fanout = self.fanout();
        let mut dropped = 0;
        for shard in self.shards.iter() {
            let mut guard = shard.lock().unwrap_or_else(|e| e.into_inner());
            let Shard { logs, expiry } = &mut *guard;
            // Topics still retaining events go back in the queue after the
            // pass, so the pass ends whatever their new expiry times.
            let mut requeue = Vec::new();
            while let Some(Reverse((at, _))) = expiry.peek() {
                if *at > now {
                    break;
                }
                let Some(Reverse((at, topic))) = expiry.pop() else {
                    break;
                };
                let Some(log) = logs.get_mut(&topic) else {
                    continue; // forgotten since
                };
                if log.queued != Some(at) {
                    continue; // an entry of an earlier incarnation
                }
                log.queued = None;
                let freed = log.prune(now);
                self.retained_bytes.fetch_sub(freed, Ordering::Relaxed);
                if let Some(next) = log.expires_at() {
                    log.queued = Some(next);
                    requeue.push(Reverse((next, topic)));
                } else if self.forget_if_idle(logs, &topic, fanout.as_deref()) {
                    dropped += 1;
                }
            }
            expiry.extend(requeue);
        }
        if let Some(f) = &fanout {
            if dropped > 0 {
                f.metrics()
                    .topics_dropped
                    .fetch_add(dropped, Ordering::Relaxed);
            }
        }
        self.report(fanout.as_deref());
        dropped
    }
}

fn bucket(topic: &Topic) -> usize {
    (topic.key().0 as usize) % EPOCH_BUCKETS
}
