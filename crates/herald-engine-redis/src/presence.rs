//! Cluster-wide presence: the members of presence topics, kept in Redis so
//! that every node on the same Redis lists the same clients.
//!
//! # Keys (one hash tag per topic, beside its stream)
//!
//! - [`Keys::presence_members`](crate::Keys::presence_members): a sorted
//!   set, member the client id, score the time (ms, Redis server clock) at
//!   which the entry expires unless refreshed.
//! - [`Keys::presence_info`](crate::Keys::presence_info): a hash, client id
//!   → `<node id>\n<member JSON>`: what `GET /v1/presence` lists, and which
//!   node holds the client.
//!
//! Both keys live a while longer than their newest entry
//! (`2 × ttl + sweep`), so a topic whose nodes all died leaves nothing
//! behind.
//!
//! # Who keeps an entry alive
//!
//! The node that entered a client keeps it in memory (one entry per held
//! (topic, client) pair, so bounded by its connections) and moves its
//! expiry to `now + ttl` every [`PresenceTiming::refresh`]. A node that
//! dies (even `kill -9`) stops refreshing, and its clients expire
//! [`PresenceTiming::ttl`] after the last refresh. Every node sweeps the
//! presence topics it watches (local subscribers) or holds members of,
//! every [`PresenceTiming::sweep`]: one atomic script removes the expired
//! entries and returns them to the one node whose script removed them,
//! which then signals `herald.leave` (when the topic's policy has
//! `join_leave`). So a dead node's clients are gone from every listing
//! within `ttl + sweep` (20 s + 4 s by default) of its last refresh, under
//! the 30 s DESIGN.md promises with room for a slow sweep.
//!
//! A leave removes the client only if this node holds it: a long-polling
//! client may have moved to another node meanwhile, whose entry stays.
//! A refresh that finds one of its clients gone (swept during a stall, or
//! lost by a Redis restart) enters it again and signals `herald.join`.
//!
//! Writes of one topic by this node (join, leave, refresh) are serialized
//! (one of 64 locks, chosen by the topic), so a refresh never writes
//! back a client that a concurrent leave just removed.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use fred::types::scripts::Script;
use fred::types::Value;
use herald_core::engine::{new_epoch, BoxFuture};
use herald_core::presence::{signal_event, Change, Member, PresenceStore};
use herald_core::{EngineError, Occurrence, OccurrenceKind, Occurrences, Topic};
use tokio::task::JoinHandle;

use crate::{scripts, unavailable, write_error, Shared};

/// How presence entries are kept alive in Redis (see the module docs).
/// The time-to-live should be well over the refresh period (2.5 times by
/// default), or a client may expire between two refreshes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PresenceTiming {
    /// How often a node moves the expiry of the clients it holds.
    /// Default 8 s.
    pub refresh: Duration,
    /// How long after its last refresh a client's entry expires (its node
    /// died or lost Redis). Default 20 s.
    pub ttl: Duration,
    /// How often a node removes expired entries of the presence topics it
    /// watches or holds members of. Default 4 s.
    pub sweep: Duration,
}

impl Default for PresenceTiming {
    fn default() -> Self {
        PresenceTiming {
            refresh: Duration::from_secs(8),
            ttl: Duration::from_secs(20),
            sweep: Duration::from_secs(4),
        }
    }
}

impl PresenceTiming {
    /// The longest a dead node's clients stay listed after its last
    /// refresh: `ttl + sweep` (30 s by default).
    pub fn dead_node_bound(&self) -> Duration {
        self.ttl + self.sweep
    }
}

/// Locks that serialize this node's writes per topic (by hash).
const WRITE_LOCKS: usize = 64;

/// Clients per refresh script call.
const REFRESH_BATCH: usize = 256;

/// Expired entries removed per sweep script call, and calls per topic and
/// pass at most (the rest waits for the next pass).
const SWEEP_BATCH: usize = 256;
const SWEEP_ROUNDS: usize = 8;

/// The shortest refresh or sweep period taken (a zero would spin).
const MIN_PERIOD: Duration = Duration::from_millis(10);

fn millis(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}

/// A (topic, client) pair this node entered.
struct Held {
    /// The entry it wrote (`<node id>\n<member JSON>`).
    entry: String,
    /// Joins not yet matched by a leave (the hub alternates them; a join
    /// racing the previous leave makes 2 for a moment).
    count: usize,
}

/// The member an entry describes.
fn parse_entry(entry: &str) -> Option<Member> {
    let (_, json) = entry.split_once('\n')?;
    serde_json::from_str(json).ok()
}

/// Presence in Redis: the engine's [`PresenceStore`].
pub(crate) struct RedisPresence {
    shared: Arc<Shared>,
    /// `<node id>\n`, the start of every entry this node writes.
    node: String,
    timing: PresenceTiming,
    held: Mutex<HashMap<Topic, HashMap<Box<str>, Held>>>,
    /// Topics with local subscribers (swept when they track presence).
    watched: Mutex<HashSet<Topic>>,
    writes: Vec<tokio::sync::Mutex<()>>,
    /// Told of the joins and leaves decided here (webhooks), once set.
    sink: OnceLock<Arc<dyn Occurrences>>,
    hasher: RandomState,
    join: Script,
    leave: Script,
    members: Script,
    refresh: Script,
    sweep: Script,
}

impl RedisPresence {
    pub(crate) fn new(shared: Arc<Shared>, timing: PresenceTiming) -> Arc<RedisPresence> {
        Arc::new(RedisPresence {
            shared,
            node: format!("{:012x}{:012x}\n", new_epoch(), new_epoch()),
            timing,
            held: Mutex::new(HashMap::new()),
            watched: Mutex::new(HashSet::new()),
            writes: (0..WRITE_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            sink: OnceLock::new(),
            hasher: RandomState::new(),
            join: Script::from_lua(scripts::presence_join()),
            leave: Script::from_lua(scripts::PRESENCE_LEAVE),
            members: Script::from_lua(scripts::presence_members()),
            refresh: Script::from_lua(scripts::presence_refresh()),
            sweep: Script::from_lua(scripts::presence_sweep()),
        })
    }

    /// Starts the refresh and sweep tasks; the engine aborts them when it
    /// is dropped.
    pub(crate) fn start(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        let refresher = self.clone();
        let sweeper = self.clone();
        vec![
            tokio::spawn(async move {
                every(refresher.timing.refresh, || refresher.refresh_pass()).await
            }),
            tokio::spawn(async move { every(sweeper.timing.sweep, || sweeper.sweep_pass()).await }),
        ]
    }

    /// Tells `sink` from now on of the joins and leaves decided here (a
    /// refresh entering a member again, a sweep removing expired ones); a
    /// later call changes nothing.
    pub(crate) fn report_to(&self, sink: Arc<dyn Occurrences>) {
        let _ = self.sink.set(sink);
    }

    fn report(&self, kind: OccurrenceKind, topic: &Topic, member: &Member) {
        if let Some(sink) = self.sink.get() {
            sink.occurred(Occurrence::member(
                kind,
                topic,
                &member.user,
                &member.client,
            ));
        }
    }

    /// A topic got its first local subscriber.
    pub(crate) fn watch(&self, topic: &Topic) {
        lock(&self.watched).insert(topic.clone());
    }

    /// A topic lost its last local subscriber.
    pub(crate) fn unwatch(&self, topic: &Topic) {
        lock(&self.watched).remove(topic);
    }

    fn keys(&self, topic: &Topic) -> Vec<String> {
        vec![
            self.shared.keys.presence_members(topic),
            self.shared.keys.presence_info(topic),
        ]
    }

    /// How long a topic's keys live after a write: past the newest entry's
    /// expiry by more than a sweep, so the sweepers see every expiry.
    fn key_life(&self) -> Duration {
        self.timing.ttl * 2 + self.timing.sweep
    }

    fn write_lock(&self, topic: &Topic) -> &tokio::sync::Mutex<()> {
        let i = self.hasher.hash_one(topic) as usize % self.writes.len();
        &self.writes[i]
    }

    fn hold(&self, topic: &Topic, client: &str, entry: String) {
        let mut held = lock(&self.held);
        let h = held
            .entry(topic.clone())
            .or_default()
            .entry(client.into())
            .or_insert(Held {
                entry: String::new(),
                count: 0,
            });
        h.count += 1;
        h.entry = entry;
    }

    fn release(&self, topic: &Topic, client: &str) {
        let mut held = lock(&self.held);
        let Some(clients) = held.get_mut(topic) else {
            return;
        };
        if let Some(h) = clients.get_mut(client) {
            h.count = h.count.saturating_sub(1);
            if h.count == 0 {
                clients.remove(client);
            }
        }
        if clients.is_empty() {
            held.remove(topic);
        }
    }

    /// Signals `change` of `member` to every node's subscribers of `topic`.
    async fn signal(&self, topic: &Topic, change: Change, member: &Member) {
        let event = signal_event(topic, change, member);
        if let Err(e) = self.shared.signal(&event).await {
            tracing::warn!(error = %e, %topic, client = %member.client, "presence {} not signalled", change.event_name());
        }
    }

    /// Refreshes every client this node holds.
    async fn refresh_pass(&self) {
        let topics: Vec<Topic> = lock(&self.held).keys().cloned().collect();
        for topic in topics {
            if let Err(e) = self.refresh_topic(&topic).await {
                tracing::debug!(error = %e, %topic, "presence refresh failed; retrying next pass");
            }
        }
    }

    async fn refresh_topic(&self, topic: &Topic) -> Result<(), EngineError> {
        let _write = self.write_lock(topic).lock().await;
        // Read under the lock: a leave that ran before is not written back.
        let pairs: Vec<(Box<str>, String)> = lock(&self.held)
            .get(topic)
            .map(|m| {
                m.iter()
                    .map(|(c, h)| (c.clone(), h.entry.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let join_leave = self.shared.policy(topic).join_leave;
        for chunk in pairs.chunks(REFRESH_BATCH) {
            let client = self
                .shared
                .client(&self.shared.keys.presence_members(topic))?;
            let mut args: Vec<Value> = Vec::with_capacity(3 + 2 * chunk.len());
            args.push(self.node.as_str().into());
            args.push(millis(self.timing.ttl).into());
            args.push(millis(self.key_life()).into());
            for (c, entry) in chunk {
                args.push((&**c).into());
                args.push(entry.as_str().into());
            }
            let added: Vec<String> = self
                .refresh
                .evalsha_with_reload(&client, self.keys(topic), args)
                .await
                .map_err(write_error)?;
            for id in added {
                tracing::debug!(%topic, client = %id, "presence entry was gone; entered again");
                let member = chunk
                    .iter()
                    .find(|(c, _)| **c == *id)
                    .and_then(|(_, entry)| parse_entry(entry));
                if let Some(member) = member {
                    self.report(OccurrenceKind::Join, topic, &member);
                    if join_leave {
                        self.signal(topic, Change::Join, &member).await;
                    }
                }
            }
        }
        Ok(())
    }

    /// Sweeps the presence topics this node watches or holds members of.
    async fn sweep_pass(&self) {
        let mut topics: HashSet<Topic> = lock(&self.held).keys().cloned().collect();
        topics.extend(lock(&self.watched).iter().cloned());
        for topic in topics {
            let policy = self.shared.policy(&topic);
            if !policy.tracks_presence() {
                continue;
            }
            if let Err(e) = self.sweep_topic(&topic, policy.join_leave).await {
                tracing::debug!(error = %e, %topic, "presence sweep failed; retrying next pass");
            }
        }
    }

    async fn sweep_topic(&self, topic: &Topic, join_leave: bool) -> Result<(), EngineError> {
        for _ in 0..SWEEP_ROUNDS {
            let client = self
                .shared
                .client(&self.shared.keys.presence_members(topic))?;
            let removed: Vec<String> = self
                .sweep
                .evalsha_with_reload(&client, self.keys(topic), SWEEP_BATCH.to_string())
                .await
                .map_err(write_error)?;
            let done = removed.len() < SWEEP_BATCH;
            for entry in removed {
                let Some(member) = parse_entry(&entry) else {
                    tracing::warn!(%topic, "unreadable presence entry swept");
                    continue;
                };
                tracing::debug!(%topic, client = %member.client, "presence entry expired");
                self.report(OccurrenceKind::Leave, topic, &member);
                if join_leave {
                    self.signal(topic, Change::Leave, &member).await;
                }
            }
            if done {
                break;
            }
        }
        Ok(())
    }
}

/// Runs `pass` every `period` (the first after one period), one at a time.
async fn every<F, Fut>(period: Duration, mut pass: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let period = period.max(MIN_PERIOD);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        pass().await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PresenceStore for RedisPresence {
    fn join<'a>(
        &'a self,
        topic: &'a Topic,
        member: &'a Member,
    ) -> BoxFuture<'a, Result<bool, EngineError>> {
        Box::pin(async move {
            let json = serde_json::to_string(member).map_err(unavailable)?;
            let entry = format!("{}{json}", self.node);
            let _write = self.write_lock(topic).lock().await;
            // Held even if Redis fails now: the next refresh enters it.
            self.hold(topic, &member.client, entry.clone());
            let client = self
                .shared
                .client(&self.shared.keys.presence_members(topic))?;
            let args: Vec<Value> = vec![
                (&*member.client).into(),
                entry.into(),
                millis(self.timing.ttl).into(),
                millis(self.key_life()).into(),
            ];
            let new: i64 = self
                .join
                .evalsha_with_reload(&client, self.keys(topic), args)
                .await
                .map_err(write_error)?;
            Ok(new == 1)
        })
    }

    fn leave<'a>(
        &'a self,
        topic: &'a Topic,
        client: &'a str,
    ) -> BoxFuture<'a, Result<Option<Member>, EngineError>> {
        Box::pin(async move {
            let _write = self.write_lock(topic).lock().await;
            // Released even if Redis fails now: the entry then expires and
            // a sweeper reports it.
            self.release(topic, client);
            let redis = self
                .shared
                .client(&self.shared.keys.presence_members(topic))?;
            let entry: Option<String> = self
                .leave
                .evalsha_with_reload(&redis, self.keys(topic), vec![client, self.node.as_str()])
                .await
                .map_err(unavailable)?;
            Ok(entry.as_deref().and_then(parse_entry))
        })
    }

    fn members<'a>(&'a self, topic: &'a Topic) -> BoxFuture<'a, Result<Vec<Member>, EngineError>> {
        Box::pin(async move {
            let client = self
                .shared
                .client(&self.shared.keys.presence_members(topic))?;
            let entries: Vec<String> = self
                .members
                .evalsha_with_reload(&client, self.keys(topic), ())
                .await
                .map_err(unavailable)?;
            let mut list: Vec<Member> = entries.iter().filter_map(|e| parse_entry(e)).collect();
            list.sort_by(|a, b| a.client.cmp(&b.client));
            Ok(list)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::Transport;

    #[test]
    fn entries_name_node_and_member() {
        let m = Member {
            client: "c1".into(),
            user: "u".into(),
            info: serde_json::json!({"name": "Ada\nLovelace"}),
            transport: Transport::Poll,
        };
        let entry = format!("0123abc\n{}", serde_json::to_string(&m).unwrap());
        assert_eq!(parse_entry(&entry), Some(m));
        assert_eq!(parse_entry("no newline"), None);
        assert_eq!(parse_entry("n\n{"), None);
    }

    #[test]
    fn default_timing_bounds_a_dead_node_to_30_seconds() {
        let t = PresenceTiming::default();
        assert_eq!(t.dead_node_bound(), Duration::from_secs(24));
        assert!(t.ttl > t.refresh * 2);
    }
}
