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

use std::collections::HashMap;
use std::sync::Arc;

use fred::interfaces::{EventInterface, PubsubInterface};
use fred::prelude::Client;
use fred::types::Value;
use herald_core::{Event, Position, Topic};
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

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
}

/// Events read from history for a channel, to dispatch if still new.
type CaughtUp = (String, Vec<Arc<Event>>);

/// Events read per topic when catching up; if more were missed, the latest
/// is dispatched too and subscribers read the rest themselves.
const CATCH_UP_PAGE: usize = 256;

pub(crate) async fn run(
    shared: Arc<Shared>,
    subscriber: Client,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let mut messages = subscriber.message_rx();
    let mut reconnects = subscriber.reconnect_rx();
    let (caught_tx, mut caught_rx) = mpsc::unbounded_channel::<CaughtUp>();
    let mut watched: HashMap<String, Watched> = HashMap::new();
    let mut refresh = tokio::time::interval(refresh_period(&shared));
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut touching = Touching(None);
    let control_channel = shared.keys.control();
    if let Err(e) = subscriber.subscribe(control_channel.as_str()).await {
        tracing::debug!(%e, "SUBSCRIBE to the control channel failed; retrying after reconnect");
    }
    loop {
        tokio::select! {
            _ = refresh.tick() => {
                // One pass at a time: a slow Redis does not pile them up.
                if touching.0.as_ref().is_none_or(|t| t.is_finished()) && !watched.is_empty() {
                    let topics: Vec<Topic> = watched.values().map(|w| w.topic.clone()).collect();
                    touching.0 = Some(tokio::spawn(touch(shared.clone(), topics)));
                }
            }
            c = control.recv() => match c {
                None => return,
                Some(Control::Watch(topic)) => {
                    let channel = shared.keys.channel(&topic);
                    if watched.contains_key(&channel) {
                        continue;
                    }
                    watched.insert(channel.clone(), Watched { topic: topic.clone(), last: None });
                    // On failure (Redis down) the reconnect subscribes again.
                    if let Err(e) = subscriber.ssubscribe(channel.as_str()).await {
                        tracing::debug!(%e, %topic, "SSUBSCRIBE failed; retrying after reconnect");
                    }
                    catch_up(&shared, &caught_tx, channel, topic, None);
                }
                Some(Control::Unwatch(topic)) => {
                    let channel = shared.keys.channel(&topic);
                    if watched.remove(&channel).is_some() {
                        if let Err(e) = subscriber.sunsubscribe(channel.as_str()).await {
                            tracing::debug!(%e, %topic, "SUNSUBSCRIBE failed");
                        }
                    }
                }
            },
            m = messages.recv() => match m {
                Ok(message) if *message.channel == *control_channel => {
                    let Some(payload) = message.value.as_str() else { continue };
                    if let Some(user) = codec::decode_disconnect(&payload) {
                        let fanout = shared.fanout.read().unwrap_or_else(|e| e.into_inner());
                        if let Some(f) = fanout.as_ref() {
                            f.close_user(user, herald_core::CloseReason::Disconnected);
                        }
                    }
                }
                Ok(message) => {
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
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "pub/sub listener lagged; catching up from history");
                    catch_up_all(&shared, &caught_tx, &watched);
                }
                Err(RecvError::Closed) => return,
            },
            r = reconnects.recv() => match r {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    // A new connection has no subscriptions: subscribe again,
                    // then read what went by while we were away.
                    if let Err(e) = subscriber.subscribe(control_channel.as_str()).await {
                        tracing::debug!(%e, "SUBSCRIBE to the control channel after reconnect failed");
                    }
                    for channel in watched.keys() {
                        if let Err(e) = subscriber.ssubscribe(channel.as_str()).await {
                            tracing::debug!(%e, channel, "SSUBSCRIBE after reconnect failed");
                        }
                    }
                    if !watched.is_empty() {
                        tracing::info!(topics = watched.len(), "Redis pub/sub reconnected; catching up");
                    }
                    catch_up_all(&shared, &caught_tx, &watched);
                }
                Err(RecvError::Closed) => return,
            },
            Some((channel, events)) = caught_rx.recv() => {
                if let Some(w) = watched.get_mut(&channel) {
                    for e in &events {
                        dispatch(&shared, w, e);
                    }
                }
            }
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
        let Ok(client) = shared.client() else {
            return; // disconnected: the next pass tries again
        };
        let keys = vec![shared.keys.meta(&topic), shared.keys.stream(&topic)];
        let r: Result<Value, _> = shared
            .touch_script
            .evalsha_with_reload(client, keys, vec![ttl.clone()])
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

fn catch_up_all(
    shared: &Arc<Shared>,
    tx: &mpsc::UnboundedSender<CaughtUp>,
    watched: &HashMap<String, Watched>,
) {
    for (channel, w) in watched {
        catch_up(shared, tx, channel.clone(), w.topic.clone(), w.last);
    }
}

/// Reads, in the background, what `topic` has after `last` (or its latest
/// event) and sends it back to the task to dispatch.
fn catch_up(
    shared: &Arc<Shared>,
    tx: &mpsc::UnboundedSender<CaughtUp>,
    channel: String,
    topic: Topic,
    last: Option<Position>,
) {
    let shared = shared.clone();
    let tx = tx.clone();
    tokio::spawn(async move {
        let mut events = Vec::new();
        if let Some(last) = last {
            match shared
                .read_raw(&topic, ReadFrom::After(last), CATCH_UP_PAGE)
                .await
            {
                Ok(r) if r.gap.is_none() => {
                    let more = r.more();
                    events = r.events;
                    if !more {
                        let _ = tx.send((channel, events));
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(%e, %topic, "catch-up read failed");
                    return;
                }
            }
        }
        // Dispatching the latest event makes every subscriber that is
        // behind it read history for the rest.
        match shared.read_raw(&topic, ReadFrom::Latest, 1).await {
            Ok(r) => events.extend(r.events),
            Err(e) => tracing::debug!(%e, %topic, "catch-up read failed"),
        }
        let _ = tx.send((channel, events));
    });
}
