//! The in-process engine: a ring buffer of recent events per topic.
//!
//! One epoch per engine instance: a restart starts a new epoch, so clients
//! that resume with an older cursor get a gap event instead of silence. A
//! topic's counters are kept for the life of the process (a few dozen bytes),
//! so sequence numbers never repeat within an epoch.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use super::{resolve_start, BoxFuture, Engine, EngineError, HistoryLimits, ReadResult};
use crate::event::{now_ms, Event, NewEvent, Position};
use crate::fanout::Fanout;
use crate::topic::Topic;

const SHARDS: usize = 64;

/// The memory engine.
pub struct MemoryEngine {
    epoch: u64,
    limits: HistoryLimits,
    shards: Box<[Mutex<HashMap<Topic, TopicLog>>]>,
    /// Replaced when a new hub attaches (an in-process server restart keeps
    /// the engine, and so its history).
    fanout: RwLock<Option<Arc<Fanout>>>,
}

#[derive(Default)]
struct TopicLog {
    head: u64,
    events: VecDeque<Arc<Event>>,
}

impl TopicLog {
    fn prune(&mut self, limits: &HistoryLimits, now: u64) {
        while self.events.len() > limits.max_events {
            self.events.pop_front();
        }
        let max_age = u64::try_from(limits.max_age.as_millis()).unwrap_or(u64::MAX);
        while let Some(e) = self.events.front() {
            if now.saturating_sub(e.published_at_ms) > max_age {
                self.events.pop_front();
            } else {
                break;
            }
        }
    }

    fn first_retained(&self) -> u64 {
        self.events
            .front()
            .map_or(self.head + 1, |e| e.position.seq)
    }
}

impl MemoryEngine {
    pub fn new(limits: HistoryLimits) -> MemoryEngine {
        MemoryEngine::with_epoch(limits, super::new_epoch())
    }

    /// An engine with a given epoch (tests).
    pub fn with_epoch(limits: HistoryLimits, epoch: u64) -> MemoryEngine {
        MemoryEngine {
            epoch,
            limits,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            fanout: RwLock::new(None),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn shard(&self, topic: &Topic) -> MutexGuard<'_, HashMap<Topic, TopicLog>> {
        let i = (topic.key().0 as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish_now(&self, events: Vec<NewEvent>) -> Vec<Arc<Event>> {
        let fanout = self
            .fanout
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let now = now_ms();
        let mut out = Vec::with_capacity(events.len());
        for new in events {
            let mut shard = self.shard(&new.topic);
            let log = shard.entry(new.topic.clone()).or_default();
            log.head += 1;
            let event = Arc::new(Event::new(new, Position::new(self.epoch, log.head), now));
            log.events.push_back(event.clone());
            log.prune(&self.limits, now);
            // Dispatch under the topic's lock: subscribers see a topic's
            // events in position order, and a reader that takes the lock
            // after us sees the event in history.
            if let Some(f) = &fanout {
                f.dispatch(&event);
            }
            drop(shard);
            out.push(event);
        }
        out
    }

    fn read_now(&self, topic: &Topic, after: Option<Position>, limit: usize) -> ReadResult {
        let mut shard = self.shard(topic);
        let Some(log) = shard.get_mut(topic) else {
            let (from, gap) = resolve_start(self.epoch, 0, 1, after);
            return ReadResult {
                epoch: self.epoch,
                head: 0,
                gap,
                from,
                events: Vec::new(),
            };
        };
        log.prune(&self.limits, now_ms());
        let (from, gap) = resolve_start(self.epoch, log.head, log.first_retained(), after);
        let events = match log.events.front() {
            Some(first) if from.seq < log.head => {
                let skip = (from.seq + 1).saturating_sub(first.position.seq) as usize;
                log.events.iter().skip(skip).take(limit).cloned().collect()
            }
            _ => Vec::new(),
        };
        ReadResult {
            epoch: self.epoch,
            head: log.head,
            gap,
            from,
            events,
        }
    }
}

impl Engine for MemoryEngine {
    fn attach(&self, fanout: Arc<Fanout>) {
        *self.fanout.write().unwrap_or_else(|e| e.into_inner()) = Some(fanout);
    }

    fn publish(
        &self,
        events: Vec<NewEvent>,
    ) -> BoxFuture<'_, Result<Vec<Arc<Event>>, EngineError>> {
        let out = self.publish_now(events);
        Box::pin(async move { Ok(out) })
    }

    fn read<'a>(
        &'a self,
        topic: &'a Topic,
        after: Option<Position>,
        limit: usize,
    ) -> BoxFuture<'a, Result<ReadResult, EngineError>> {
        let r = self.read_now(topic, after, limit);
        Box::pin(async move { Ok(r) })
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), EngineError>> {
        Box::pin(async { Ok(()) })
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

/// Default age limit, re-exported for configuration docs.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::GapReason;
    use crate::event::Data;

    fn ev(t: &Topic, s: &str) -> NewEvent {
        NewEvent::new(t.clone(), Data::Text(s.into()))
    }

    #[tokio::test]
    async fn history_by_count() {
        let e = MemoryEngine::with_epoch(
            HistoryLimits {
                max_events: 3,
                max_age: Duration::from_secs(60),
            },
            9,
        );
        let t = Topic::new("t").unwrap();
        for i in 0..5 {
            e.publish(vec![ev(&t, &i.to_string())]).await.unwrap();
        }
        let r = e.read(&t, Some(Position::new(9, 0)), 100).await.unwrap();
        assert_eq!(r.gap, Some(GapReason::HistoryTruncated));
        assert_eq!(
            r.events.iter().map(|e| e.position.seq).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        let r = e.read(&t, Some(Position::new(9, 2)), 100).await.unwrap();
        assert_eq!(r.gap, None);
        assert_eq!(r.events.len(), 3);
        let r = e.read(&t, Some(Position::new(9, 3)), 1).await.unwrap();
        assert_eq!(r.events[0].position.seq, 4);
        assert!(r.more());
        let r = e.read(&t, None, 100).await.unwrap();
        assert!(r.events.is_empty());
        assert_eq!(r.from, Position::new(9, 5));
    }

    #[tokio::test]
    async fn history_by_age() {
        let e = MemoryEngine::with_epoch(
            HistoryLimits {
                max_events: 100,
                max_age: Duration::from_millis(50),
            },
            9,
        );
        let t = Topic::new("t").unwrap();
        e.publish(vec![ev(&t, "old")]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        e.publish(vec![ev(&t, "new")]).await.unwrap();
        let r = e.read(&t, Some(Position::new(9, 0)), 100).await.unwrap();
        assert_eq!(r.gap, Some(GapReason::HistoryTruncated));
        assert_eq!(r.events.len(), 1);
        assert_eq!(r.events[0].data, Data::Text("new".into()));
    }
}
