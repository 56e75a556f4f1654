//! Cluster-wide occupancy, for the webhooks: a topic is occupied while any
//! node has local subscribers of it, and each transition is reported once,
//! by the node whose script saw it.
//!
//! # Keys
//!
//! - [`Keys::occupancy`](crate::Keys::occupancy): per topic, a sorted set
//!   of node ids scored by the time (ms, Redis server clock) their entry
//!   expires unless refreshed.
//! - [`Keys::occupancy_index`](crate::Keys::occupancy_index): the topics
//!   with entries, scored by when a sweeper should look at them.
//!
//! # How
//!
//! Only once an observer is registered
//! ([`Engine::report_occurrences`](herald_core::Engine::report_occurrences))
//! does the engine start one task that does everything in order:
//!
//! - On a topic's first or last local subscriber ([`Engine::watch`] /
//!   [`Engine::unwatch`](herald_core::Engine::unwatch)) it compares the
//!   local fan-out with what it wrote. A first entry (the set was empty)
//!   reports `occupied`; removing the last one reports `vacated`, once the
//!   topic stayed empty here for the observer's vacate grace. Both are
//!   single scripts, so of two nodes racing exactly one sees each edge.
//! - Every [`PresenceTiming::refresh`] it marks its topics in the index and
//!   moves its entries' expiry to now + [`PresenceTiming::ttl`]; an entry
//!   that was gone (swept during a stall, or lost by Redis) is written
//!   again, and reports `occupied` if the set was empty.
//! - Every [`PresenceTiming::sweep`] it asks the index for topics due
//!   (nobody refreshed them for a time-to-live) and removes their expired
//!   entries; the sweep that empties a set reports `vacated`. So a node
//!   that dies (even `kill -9`) stops counting within `ttl + sweep`, as
//!   its presence members do.
//!
//! Every node serving the same clients should have the webhooks on: a node
//! without them writes no entries, and its subscribers do not count.
//!
//! [`Engine::watch`]: herald_core::Engine::watch

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use fred::types::scripts::Script;
use fred::types::Value;
use herald_core::engine::new_epoch;
use herald_core::event::now_ms;
use herald_core::{EngineError, Occurrence, OccurrenceKind, Occurrences, Topic};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::{scripts, write_error, PresenceTiming, Shared};

/// Topics per index marking call.
const MARK_BATCH: usize = 256;

/// Topics a sweep takes from the index per call, and calls per pass at
/// most (the rest waits for the next pass).
const SWEEP_BATCH: usize = 256;
const SWEEP_ROUNDS: usize = 8;

/// How long a topic's keys outlive their last write: long enough that the
/// entries of a cluster that stopped altogether are still swept (and
/// reported vacated) when a node comes back within a day.
const KEY_LIFE: Duration = Duration::from_secs(24 * 3600);

/// The shortest refresh or sweep period taken (a zero would spin).
const MIN_PERIOD: Duration = Duration::from_millis(10);

fn millis(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}

/// Occupancy in Redis for one node.
pub(crate) struct RedisOccupancy {
    shared: Arc<Shared>,
    /// This node's id in the occupancy sets.
    node: String,
    timing: PresenceTiming,
    sink: OnceLock<Arc<dyn Occurrences>>,
    /// Topics whose local subscribers crossed zero (or whose grace ended),
    /// to reconcile: a set, so bounded by the topics however fast
    /// subscribers come and go while Redis is slow.
    pending: Mutex<HashSet<Topic>>,
    wake: Notify,
    task: Mutex<Option<JoinHandle<()>>>,
    enter: Script,
    leave: Script,
    sweep: Script,
    mark: Script,
    due: Script,
    settle: Script,
}

/// What the task has written: the topics it holds an entry for, and those
/// emptied locally within the grace (since when, and the ms to report).
#[derive(Default)]
struct State {
    held: HashSet<Topic>,
    emptied: HashMap<Topic, (Instant, u64)>,
}

impl RedisOccupancy {
    pub(crate) fn new(shared: Arc<Shared>, timing: PresenceTiming) -> Arc<RedisOccupancy> {
        Arc::new(RedisOccupancy {
            shared,
            node: format!("{:012x}{:012x}", new_epoch(), new_epoch()),
            timing,
            sink: OnceLock::new(),
            pending: Mutex::new(HashSet::new()),
            wake: Notify::new(),
            task: Mutex::new(None),
            enter: Script::from_lua(scripts::occupancy_enter()),
            leave: Script::from_lua(scripts::OCCUPANCY_LEAVE),
            sweep: Script::from_lua(scripts::occupancy_sweep()),
            mark: Script::from_lua(scripts::occupancy_mark()),
            due: Script::from_lua(scripts::occupancy_due()),
            settle: Script::from_lua(scripts::occupancy_settle()),
        })
    }

    /// Registers `sink` and starts the task (on the current runtime).
    /// False when a sink was registered before or there is no runtime.
    pub(crate) fn start(self: &Arc<Self>, sink: Arc<dyn Occurrences>) -> bool {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("occupancy needs a running runtime; not reported");
            return false;
        };
        if self.sink.set(sink).is_err() {
            return false;
        }
        let me = self.clone();
        *lock(&self.task) = Some(rt.spawn(async move { me.run().await }));
        true
    }

    /// Stops the task (the engine is dropped).
    pub(crate) fn stop(&self) {
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
    }

    /// `topic` got its first or lost its last local subscriber.
    pub(crate) fn changed(&self, topic: &Topic) {
        if self.sink.get().is_some() {
            lock(&self.pending).insert(topic.clone());
            self.wake.notify_one();
        }
    }

    fn report(&self, o: Occurrence) {
        if let Some(sink) = self.sink.get() {
            sink.occurred(o);
        }
    }

    async fn run(self: Arc<Self>) {
        let mut state = State::default();
        let refresh = self.timing.refresh.max(MIN_PERIOD);
        let sweep = self.timing.sweep.max(MIN_PERIOD);
        let mut refresh = tokio::time::interval_at(Instant::now() + refresh, refresh);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweep = tokio::time::interval_at(Instant::now() + sweep, sweep);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.wake.notified() => {
                    let topics = std::mem::take(&mut *lock(&self.pending));
                    for topic in topics {
                        self.reconcile(&mut state, topic).await;
                    }
                }
                _ = refresh.tick() => self.refresh_pass(&state).await,
                _ = sweep.tick() => self.sweep_pass().await,
            }
        }
    }

    /// Local subscribers of `topic` now.
    fn local(&self, topic: &Topic) -> usize {
        self.shared
            .fanout
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, |f| f.subscribers(topic))
    }

    /// Brings this node's entry for `topic` in line with its local
    /// subscribers, reporting the edges the scripts see.
    async fn reconcile(self: &Arc<Self>, state: &mut State, topic: Topic) {
        let grace = self.sink.get().map_or(Duration::ZERO, |s| s.vacate_grace());
        if self.local(&topic) > 0 {
            state.emptied.remove(&topic);
            if state.held.insert(topic.clone()) {
                // Held even if Redis fails now: the next refresh enters it.
                match self.enter_topic(&topic).await {
                    Ok(true) => {
                        self.report(Occurrence::topic(OccurrenceKind::Occupied, &topic));
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, %topic, "occupancy entry not written; retrying on refresh");
                    }
                }
            }
            return;
        }
        if !state.held.contains(&topic) {
            return;
        }
        match state.emptied.get(&topic) {
            None if !grace.is_zero() => {
                state
                    .emptied
                    .insert(topic.clone(), (Instant::now(), now_ms()));
                let me: Weak<RedisOccupancy> = Arc::downgrade(self);
                tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    if let Some(me) = me.upgrade() {
                        me.changed(&topic);
                    }
                });
            }
            Some((since, _)) if since.elapsed() < grace => {} // its timer comes
            _ => {
                let at = state
                    .emptied
                    .remove(&topic)
                    .map_or_else(now_ms, |(_, at)| at);
                state.held.remove(&topic);
                match self.leave_topic(&topic).await {
                    Ok(true) => {
                        let mut o = Occurrence::topic(OccurrenceKind::Vacated, &topic);
                        o.at = at;
                        self.report(o);
                    }
                    Ok(false) => {}
                    // The entry expires; a sweeper reports the vacancy.
                    Err(e) => {
                        tracing::debug!(error = %e, %topic, "occupancy entry not removed; it expires")
                    }
                }
            }
        }
    }

    /// Writes this node's entry; true when the topic became occupied.
    async fn enter_topic(&self, topic: &Topic) -> Result<bool, EngineError> {
        self.mark_topics(std::slice::from_ref(topic)).await?;
        self.enter_topic_only(topic).await
    }

    /// Removes this node's entry; true when the topic became vacant.
    async fn leave_topic(&self, topic: &Topic) -> Result<bool, EngineError> {
        let client = self.shared.client(&self.shared.keys.occupancy(topic))?;
        let edge: i64 = self
            .leave
            .evalsha_with_reload(
                &client,
                vec![self.shared.keys.occupancy(topic)],
                vec![self.node.as_str()],
            )
            .await
            .map_err(write_error)?;
        Ok(edge == 1)
    }

    /// Marks `topics` in the index, to be swept a time-to-live from now
    /// unless marked again. Done before an entry is written, so that no
    /// entry is ever out of the sweepers' sight.
    async fn mark_topics(&self, topics: &[Topic]) -> Result<(), EngineError> {
        for chunk in topics.chunks(MARK_BATCH) {
            let client = self.shared.client(&self.shared.keys.occupancy_index())?;
            let mut args: Vec<Value> = Vec::with_capacity(2 + chunk.len());
            args.push(millis(self.timing.ttl).into());
            args.push(millis(KEY_LIFE).into());
            args.extend(chunk.iter().map(|t| Value::from(t.as_str())));
            let _: Value = self
                .mark
                .evalsha_with_reload(&client, vec![self.shared.keys.occupancy_index()], args)
                .await
                .map_err(write_error)?;
        }
        Ok(())
    }

    /// Moves the expiry of every entry this node holds (writing again
    /// those that were gone).
    async fn refresh_pass(&self, state: &State) {
        let topics: Vec<Topic> = state.held.iter().cloned().collect();
        if topics.is_empty() {
            return;
        }
        if let Err(e) = self.mark_topics(&topics).await {
            tracing::debug!(error = %e, "occupancy refresh failed; retrying next pass");
            return;
        }
        for topic in topics {
            match self.enter_topic_only(&topic).await {
                Ok(true) => {
                    tracing::debug!(%topic, "occupancy entry was gone; occupied again");
                    self.report(Occurrence::topic(OccurrenceKind::Occupied, &topic));
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(error = %e, %topic, "occupancy refresh failed; retrying next pass");
                    return;
                }
            }
        }
    }

    /// [`RedisOccupancy::enter_topic`] without marking (the pass marked
    /// every topic at once).
    async fn enter_topic_only(&self, topic: &Topic) -> Result<bool, EngineError> {
        let client = self.shared.client(&self.shared.keys.occupancy(topic))?;
        let args: Vec<Value> = vec![
            self.node.as_str().into(),
            millis(self.timing.ttl).into(),
            millis(KEY_LIFE).into(),
        ];
        let edge: i64 = self
            .enter
            .evalsha_with_reload(&client, vec![self.shared.keys.occupancy(topic)], args)
            .await
            .map_err(write_error)?;
        Ok(edge == 1)
    }

    /// Sweeps the topics the index says are due.
    async fn sweep_pass(&self) {
        for _ in 0..SWEEP_ROUNDS {
            match self.sweep_round().await {
                Ok(true) => continue,
                Ok(false) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "occupancy sweep failed; retrying next pass");
                    return;
                }
            }
        }
    }

    /// One batch of due topics; true when the batch was full (more may be due).
    async fn sweep_round(&self) -> Result<bool, EngineError> {
        let index = self.shared.keys.occupancy_index();
        let client = self.shared.client(&self.shared.keys.occupancy_index())?;
        let due: Vec<String> = self
            .due
            .evalsha_with_reload(&client, vec![index.clone()], SWEEP_BATCH.to_string())
            .await
            .map_err(write_error)?;
        let full = due.len() >= SWEEP_BATCH;
        for name in due {
            let next = match Topic::new(&name) {
                Ok(topic) => {
                    let client = self.shared.client(&self.shared.keys.occupancy(&topic))?;
                    let answer: Vec<i64> = self
                        .sweep
                        .evalsha_with_reload(&client, vec![self.shared.keys.occupancy(&topic)], ())
                        .await
                        .map_err(write_error)?;
                    if answer.first() == Some(&1) {
                        tracing::debug!(%topic, "occupancy entries expired; vacated");
                        self.report(Occurrence::topic(OccurrenceKind::Vacated, &topic));
                    }
                    answer.get(1).copied().unwrap_or(0)
                }
                Err(_) => 0, // not a topic: forget it
            };
            let client = self.shared.client(&self.shared.keys.occupancy_index())?;
            let _: Value = self
                .settle
                .evalsha_with_reload(&client, vec![index.clone()], vec![name, next.to_string()])
                .await
                .map_err(write_error)?;
        }
        Ok(full)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
