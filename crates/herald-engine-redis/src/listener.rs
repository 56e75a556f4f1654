//! The pub/sub task: one per engine. It subscribes to the control channel
//! (cluster-wide requests such as closing a user's connections) and to the
//! channels of the topics local clients use, and hands each notification to the local
//! fan-out once, in position order per topic. Signals (`herald.join` /
//! `herald.leave`, sent by [`Engine::signal`](herald_core::Engine::signal)
//! on the same channel) are handed on as they come, in order with the
//! events around them; they are never read back from history.
//!
//! Pub/sub may drop a message (it is not stored, and a connection can break
//! between a publish and its delivery), so after every subscribe and every
//! reconnect the task reads the topic from history and dispatches what it has
//! not seen. Subscribers also heal themselves: an event that is not the next
//! one sends them back to history. Events already dispatched are skipped by
//! position, so nothing arrives twice.
//!
//! Each channel is subscribed on the master serving its slot (see
//! `shards`). When the layout changes (a replica promoted, a slot
//! migrated) or a master's pub/sub connection comes back, the channels
//! follow within [`FOLLOW_PERIOD`]: subscribed where they are served now,
//! then caught up. A catch-up read that fails (the master is still down)
//! is retried with backoff; it never ends anything.

use std::collections::HashMap;
use std::sync::Arc;

use fred::interfaces::{ClientLike, PubsubInterface};
use fred::types::Value;
use herald_core::{Event, Position, Topic};
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};

use crate::shards::{Node, NodeEvent};
use crate::{codec, ReadFrom, Shared};

/// Asked of the task by the engine.
pub(crate) enum Control {
    /// The first local subscriber of a topic arrived.
    Watch(Topic),
    /// The last local subscriber of a topic left.
    Unwatch(Topic),
}

struct Watched {
    topic: Topic,
    /// The last position dispatched.
    last: Option<Position>,
    /// The master the channel is subscribed on (none: not subscribed yet,
    /// or its connection broke).
    on: Option<Arc<Node>>,
}

/// What a catch-up read found.
enum CaughtUp {
    /// Events read from history for a channel, to dispatch if still new.
    Caught(String, Vec<Arc<Event>>),
}

/// Events read per topic when catching up; if more were missed, the latest
/// is dispatched too and subscribers read the rest themselves.
const CATCH_UP_PAGE: usize = 256;

/// How often channels are checked against the layout and subscribed where
/// they are not yet.
pub(crate) const FOLLOW_PERIOD: Duration = Duration::from_secs(1);

/// Catch-up reads in flight at once (a reconnect with many watched topics
/// reads them all).
const CATCH_UP_CONCURRENCY: usize = 32;

/// Attempts of one catch-up read: backoff from 100 ms doubling to 5 s,
/// with jitter, so about a minute in all; the next reconnect or layout
/// change starts another.
const CATCH_UP_ATTEMPTS: u32 = 16;

pub(crate) async fn run(
    shared: Arc<Shared>,
    mut events: mpsc::Receiver<NodeEvent>,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let (caught_tx, mut caught_rx) = mpsc::unbounded_channel::<CaughtUp>();
    let reads = Arc::new(Semaphore::new(CATCH_UP_CONCURRENCY));
    let catch = Catch {
        shared: shared.clone(),
        tx: caught_tx,
        reads,
        running: Arc::default(),
    };
    let mut watched: HashMap<String, Watched> = HashMap::new();
    let mut refresh = tokio::time::interval(refresh_period(&shared));
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut follow_tick = tokio::time::interval(FOLLOW_PERIOD);
    follow_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut followed = u64::MAX;
    let mut touching = Touching(None);
    let control_channel = shared.keys.control();
    let mut control_on: Option<Arc<Node>> = None;
    loop {
        tokio::select! {
            _ = refresh.tick() => {
                // One pass at a time: a slow Redis does not pile them up.
                if touching.0.as_ref().is_none_or(|t| t.is_finished()) && !watched.is_empty() {
                    let topics: Vec<Topic> = watched.values().map(|w| w.topic.clone()).collect();
                    touching.0 = Some(tokio::spawn(touch(shared.clone(), topics)));
                }
            }
            _ = follow_tick.tick() => {
                let version = shared.shards.version();
                let behind = watched.values().any(|w| w.on.is_none());
                if version != followed || behind || control_on.is_none() {
                    followed = version;
                    follow_control(&shared, &control_channel, &mut control_on).await;
                    follow(&shared, &catch, &mut watched).await;
                }
            }
            c = control.recv() => match c {
                None => return,
                Some(Control::Watch(topic)) => {
                    let channel = shared.keys.channel(&topic);
                    if watched.contains_key(&channel) {
                        continue;
                    }
                    let mut w = Watched { topic: topic.clone(), last: None, on: None };
                    // On failure (the master is down) the next follow
                    // subscribes it.
                    subscribe(&shared, &channel, &mut w).await;
                    catch.start(channel.clone(), topic, None);
                    watched.insert(channel, w);
                }
                Some(Control::Unwatch(topic)) => {
                    let channel = shared.keys.channel(&topic);
                    if let Some(w) = watched.remove(&channel) {
                        // Awaited, not sent in the background: a Watch of the
                        // same topic right after must subscribe after it.
                        if let Some(node) = w.on.filter(|n| n.subscriber.is_connected()) {
                            let r = tokio::time::timeout(
                                shared.command_timeout(),
                                node.subscriber.sunsubscribe(channel.as_str()),
                            )
                            .await;
                            if let Ok(Err(e)) = r {
                                tracing::debug!(%e, %topic, "SUNSUBSCRIBE failed");
                            }
                        }
                    }
                }
            },
            e = events.recv() => match e {
                None => return,
                Some(NodeEvent::Message(message)) if *message.channel == *control_channel => {
                    let Some(payload) = message.value.as_str() else { continue };
                    if let Some(user) = codec::decode_disconnect(&payload) {
                        let fanout = shared.fanout.read().unwrap_or_else(|e| e.into_inner());
                        if let Some(f) = fanout.as_ref() {
                            f.close_user(user, herald_core::CloseReason::Disconnected);
                        }
                    }
                }
                Some(NodeEvent::Message(message)) => {
                    let Some(w) = watched.get_mut(&*message.channel) else { continue };
                    let Some(payload) = message.value.as_str() else { continue };
                    match codec::decode_message(&w.topic, &payload) {
                        Ok(codec::Notification::Event(event)) => dispatch(&shared, w, &event),
                        // In order with the topic's events (one channel),
                        // and never a position: `last` stays.
                        Ok(codec::Notification::Signal(signal)) => dispatch_signal(&shared, &signal),
                        Err(e) => tracing::warn!(%e, topic = %w.topic, "undecodable notification"),
                    }
                }
                Some(NodeEvent::Lagged) => {
                    tracing::warn!("pub/sub listener lagged; catching up from history");
                    for (channel, w) in &watched {
                        catch.start(channel.clone(), w.topic.clone(), w.last);
                    }
                }
                Some(NodeEvent::Reconnected(addr)) => {
                    // A new connection has no subscriptions: subscribe again
                    // (where the layout says now), then read what went by
                    // while it was away.
                    if control_on.as_ref().is_some_and(|n| n.addr == addr) {
                        control_on = None;
                    }
                    let mut dropped = 0;
                    for w in watched.values_mut() {
                        if w.on.as_ref().is_some_and(|n| n.addr == addr) {
                            w.on = None;
                            dropped += 1;
                        }
                    }
                    if dropped > 0 {
                        tracing::info!(node = %addr, topics = dropped, "Redis pub/sub reconnected; catching up");
                    }
                    follow_control(&shared, &control_channel, &mut control_on).await;
                    follow(&shared, &catch, &mut watched).await;
                }
            },
            Some(CaughtUp::Caught(channel, events)) = caught_rx.recv() => {
                if let Some(w) = watched.get_mut(&channel) {
                    for e in &events {
                        dispatch(&shared, w, e);
                    }
                }
            }
        }
    }
}

/// Subscribes `channel` on the master serving it; false (and `w.on` none)
/// when that master is not reachable now.
async fn subscribe(shared: &Shared, channel: &str, w: &mut Watched) -> bool {
    let Ok(node) = shared.shards.node_for(channel) else {
        return false;
    };
    if !node.subscriber.is_connected() {
        return false;
    }
    match tokio::time::timeout(
        shared.command_timeout(),
        node.subscriber.ssubscribe(channel),
    )
    .await
    {
        Ok(Ok(())) => {
            w.on = Some(node);
            true
        }
        Ok(Err(e)) => {
            tracing::debug!(%e, channel, "SSUBSCRIBE failed; retrying");
            false
        }
        Err(_) => false,
    }
}

/// Moves every channel whose slot is served elsewhere now (or that is not
/// subscribed) to the master serving it, and catches each moved one up.
async fn follow(shared: &Shared, catch: &Catch, watched: &mut HashMap<String, Watched>) {
    for (channel, w) in watched.iter_mut() {
        let owner = shared.shards.node_for(channel).ok();
        let settled = match (&w.on, &owner) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) && a.subscriber.is_connected(),
            _ => false,
        };
        if settled {
            continue;
        }
        if let Some(old) = w.on.take() {
            unsubscribe(shared, old, channel.clone());
        }
        if subscribe(shared, channel, w).await {
            catch.start(channel.clone(), w.topic.clone(), w.last);
        }
    }
}

/// Unsubscribes `channel` on `node`, a node that no longer serves it, in
/// the background: a node that stopped answering (cut off, or no longer a
/// master) must not hold up the listener.
fn unsubscribe(shared: &Shared, node: Arc<Node>, channel: String) {
    if !node.subscriber.is_connected() {
        return;
    }
    let limit = shared.command_timeout();
    tokio::spawn(async move {
        let r = tokio::time::timeout(limit, node.subscriber.sunsubscribe(channel.as_str())).await;
        if let Ok(Err(e)) = r {
            tracing::debug!(%e, channel, "SUNSUBSCRIBE failed");
        }
    });
}

/// Keeps the control channel (plain pub/sub, which a cluster carries to
/// every node) subscribed on a reachable master.
async fn follow_control(shared: &Shared, channel: &str, on: &mut Option<Arc<Node>>) {
    if on.as_ref().is_some_and(|n| n.subscriber.is_connected()) {
        return;
    }
    *on = None;
    let mut nodes = shared.shards.layout_nodes();
    if let Ok(preferred) = shared.shards.node_for(channel) {
        nodes.insert(0, preferred);
    }
    for node in nodes {
        if !node.subscriber.is_connected() {
            continue;
        }
        let r = tokio::time::timeout(shared.command_timeout(), node.subscriber.subscribe(channel))
            .await;
        if let Ok(Ok(())) = r {
            *on = Some(node);
            return;
        }
    }
}

/// The pass extending watched topics' keys, stopped with the listener.
struct Touching(Option<tokio::task::JoinHandle<()>>);

impl Drop for Touching {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.abort();
        }
    }
}

/// How often the keys of watched topics get their life extended: a third
/// of their time-to-live (so one late pass loses nothing), between 250 ms
/// and an hour.
fn refresh_period(shared: &Shared) -> Duration {
    (Duration::from_millis(shared.ttl_ms()) / 3)
        .clamp(Duration::from_millis(250), Duration::from_secs(3600))
}

/// Extends the life of the keys of `topics` (those that exist).
async fn touch(shared: Arc<Shared>, topics: Vec<Topic>) {
    let ttl = shared.ttl_ms().to_string();
    for topic in topics {
        let keys = vec![shared.keys.meta(&topic), shared.keys.stream(&topic)];
        let Ok(client) = shared.client(&keys[0]) else {
            continue; // that master is down: the next pass tries again
        };
        let r: Result<Value, _> = shared
            .touch_script
            .evalsha_with_reload(&client, keys, vec![ttl.clone()])
            .await;
        if let Err(e) = r {
            tracing::debug!(%e, %topic, "extending a watched topic's keys failed");
        }
    }
}

/// Dispatches `event` unless an event at or after its position already was.
fn dispatch(shared: &Shared, w: &mut Watched, event: &Arc<Event>) {
    if let Some(last) = w.last {
        if last.epoch == event.position.epoch && event.position.seq <= last.seq {
            return;
        }
    }
    w.last = Some(event.position);
    shared.saw(&w.topic, event.position);
    let fanout = shared.fanout.read().unwrap_or_else(|e| e.into_inner());
    if let Some(f) = fanout.as_ref() {
        f.dispatch(event);
    }
}

/// Hands a signal (`herald.join` / `herald.leave`) to the local fan-out as
/// it comes: it has no position to order or skip by.
fn dispatch_signal(shared: &Shared, signal: &Arc<Event>) {
    let fanout = shared.fanout.read().unwrap_or_else(|e| e.into_inner());
    if let Some(f) = fanout.as_ref() {
        f.dispatch(signal);
    }
}

/// Starts catch-up reads, at most [`CATCH_UP_CONCURRENCY`] at once.
struct Catch {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<CaughtUp>,
    reads: Arc<Semaphore>,
    /// Channels with a catch-up running: one at a time each, however
    /// often the connections flap.
    running: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl Catch {
    /// Reads, in the background, what `topic` has after `last` (or its
    /// latest event) and sends it back to the task to dispatch; a failed
    /// read is retried with backoff.
    fn start(&self, channel: String, topic: Topic, last: Option<Position>) {
        if !self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(channel.clone())
        {
            return;
        }
        let shared = self.shared.clone();
        let tx = self.tx.clone();
        let reads = self.reads.clone();
        let running = self.running.clone();
        tokio::spawn(async move {
            // Leaves the set however the task ends.
            struct Done(
                Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
                String,
            );
            impl Drop for Done {
                fn drop(&mut self) {
                    self.0
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&self.1);
                }
            }
            let _done = Done(running, channel.clone());
            let mut delay = Duration::from_millis(100);
            for attempt in 1..=CATCH_UP_ATTEMPTS {
                let read = {
                    let Ok(_permit) = reads.acquire().await else {
                        return;
                    };
                    catch_up(&shared, &topic, last).await
                };
                match read {
                    Ok(events) => {
                        let _ = tx.send(CaughtUp::Caught(channel, events));
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(%e, %topic, attempt, "catch-up read failed; retrying");
                    }
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(herald_core::engine::jittered(delay)).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            tracing::warn!(%topic, "catch-up reads kept failing; subscribers heal from the next event");
        });
    }
}

/// What `topic` has after `last`, or its latest event: dispatching the
/// latest event makes every subscriber that is behind it read history for
/// the rest.
async fn catch_up(
    shared: &Shared,
    topic: &Topic,
    last: Option<Position>,
) -> Result<Vec<Arc<Event>>, herald_core::EngineError> {
    let mut events = Vec::new();
    if let Some(last) = last {
        let r = shared
            .read_raw(topic, ReadFrom::After(last), CATCH_UP_PAGE)
            .await?;
        if r.gap.is_none() {
            let more = r.more();
            events = r.events;
            if !more {
                return Ok(events);
            }
        }
    }
    let r = shared.read_raw(topic, ReadFrom::Latest, 1).await?;
    events.extend(r.events);
    Ok(events)
}
