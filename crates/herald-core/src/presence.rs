//! Presence: who is subscribed to a topic (DESIGN.md, "Presence").
//!
//! A topic whose policy has `presence = true` (or `join_leave = true`,
//! which implies it) keeps one [`Member`] per connection subscribed to it:
//! its connection id, the credential's `sub`, the token's `info` claim and
//! the transport. The transports call [`Hub::enter`](crate::Hub::enter)
//! when a connection starts receiving a topic and keep the returned
//! [`PresenceGuard`] while it does; dropping the guard leaves (after a
//! grace period for long polls, so a polling client does not flicker).
//!
//! Where members are kept is the engine's choice
//! ([`Engine::presence_store`](crate::Engine::presence_store)): in this
//! process ([`LocalPresence`]) for the memory and embedded engines, in Redis
//! for the Redis engine, so that every node answers for the whole cluster.
//!
//! With `join_leave = true`, subscribers receive `herald.join` and
//! `herald.leave` events ([`signal_event`]) whenever the store reports a
//! member that was not there before or is gone. These events are not
//! stored, carry no cursor (no SSE `id:` line, no `id` in JSON) and leave
//! the subscription's cursor where it was.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::{BoxFuture, EngineError};
use crate::event::{Data, Event, NewEvent, Position};
use crate::hub::HubInner;
use crate::metrics::Transport;
use crate::topic::Topic;
use crate::wire::reserved;

/// One present client of a topic: an entry of `GET /v1/presence` and of
/// the WebSocket `presence` answer,
/// `{"client","user","info","transport"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The connection id: unique in the cluster while the connection lives
    /// (a long-polling client keeps one id across its polls).
    pub client: Box<str>,
    /// The credential's `sub`; empty without one.
    pub user: Box<str>,
    /// The token's `info` claim, or `null`.
    #[serde(default)]
    pub info: serde_json::Value,
    /// `sse`, `ws` or `poll`.
    pub transport: Transport,
}

/// Whether a presence change is a join or a leave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A member that was not present is now (`herald.join`).
    Join,
    /// A member is gone (`herald.leave`).
    Leave,
}

impl Change {
    /// The reserved event name: `herald.join` or `herald.leave`.
    pub fn event_name(self) -> &'static str {
        match self {
            Change::Join => reserved::JOIN,
            Change::Leave => reserved::LEAVE,
        }
    }
}

/// The data of `herald.join` / `herald.leave`:
/// `{"topic","client","user","info"}`.
#[derive(Serialize)]
struct ChangeData<'a> {
    topic: &'a str,
    client: &'a str,
    user: &'a str,
    info: &'a serde_json::Value,
}

/// The `herald.join` / `herald.leave` event for `member` on `topic`: a
/// signal (see [`Event::is_signal`]), never stored, at position 0:0.
pub fn signal_event(topic: &Topic, change: Change, member: &Member) -> Arc<Event> {
    let data = serde_json::to_string(&ChangeData {
        topic: topic.as_str(),
        client: &member.client,
        user: &member.user,
        info: &member.info,
    })
    .unwrap_or_else(|_| "{}".into());
    Event::stamped(
        NewEvent::new(topic.clone(), Data::Json(data.into())).named(change.event_name()),
        Position::new(0, 0),
    )
}

/// Where an engine keeps the members of presence topics.
///
/// A store may hold a member on behalf of this process only (local), or for
/// every node of a cluster (Redis). Joins and leaves are idempotent: `join`
/// of a present client refreshes its entry, `leave` of an absent one does
/// nothing.
pub trait PresenceStore: Send + Sync {
    /// Records `member` on `topic`. Returns true when the client was not
    /// present before (a `herald.join` is due).
    fn join<'a>(
        &'a self,
        topic: &'a Topic,
        member: &'a Member,
    ) -> BoxFuture<'a, Result<bool, EngineError>>;

    /// Removes `client` from `topic`. Returns the member it removed, if it
    /// was present (a `herald.leave` is due).
    fn leave<'a>(
        &'a self,
        topic: &'a Topic,
        client: &'a str,
    ) -> BoxFuture<'a, Result<Option<Member>, EngineError>>;

    /// The members of `topic`, ordered by client id.
    fn members<'a>(&'a self, topic: &'a Topic) -> BoxFuture<'a, Result<Vec<Member>, EngineError>>;
}

/// Members kept in this process's memory: presence of one node. Bounded by
/// the connections and the topics each may hold (one entry per connection
/// and presence topic); a topic's map goes when its last member leaves.
#[derive(Default)]
pub struct LocalPresence {
    topics: Mutex<HashMap<Topic, BTreeMap<Box<str>, Member>>>,
}

impl LocalPresence {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Topic, BTreeMap<Box<str>, Member>>> {
        self.topics.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Topics with at least one member.
    pub fn topic_count(&self) -> usize {
        self.lock().len()
    }
}

impl PresenceStore for LocalPresence {
    fn join<'a>(
        &'a self,
        topic: &'a Topic,
        member: &'a Member,
    ) -> BoxFuture<'a, Result<bool, EngineError>> {
        let new = self
            .lock()
            .entry(topic.clone())
            .or_default()
            .insert(member.client.clone(), member.clone())
            .is_none();
        Box::pin(async move { Ok(new) })
    }

    fn leave<'a>(
        &'a self,
        topic: &'a Topic,
        client: &'a str,
    ) -> BoxFuture<'a, Result<Option<Member>, EngineError>> {
        let mut topics = self.lock();
        let gone = topics.get_mut(topic).and_then(|m| m.remove(client));
        if topics.get(topic).is_some_and(BTreeMap::is_empty) {
            topics.remove(topic);
        }
        drop(topics);
        Box::pin(async move { Ok(gone) })
    }

    fn members<'a>(&'a self, topic: &'a Topic) -> BoxFuture<'a, Result<Vec<Member>, EngineError>> {
        let list = self
            .lock()
            .get(topic)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        Box::pin(async move { Ok(list) })
    }
}

/// This process's holds on (topic, client) pairs: how many guards hold
/// each, so that a client present through several requests (overlapping
/// long polls) joins once and leaves once, and a leave waits out its grace
/// period.
#[derive(Default)]
pub(crate) struct Holds {
    map: Mutex<HashMap<(Topic, Box<str>), Hold>>,
}

#[derive(Debug)]
struct Hold {
    /// Guards alive.
    count: usize,
    /// Changes on every enter: a pending leave that finds another value
    /// was overtaken by a new enter and does nothing.
    generation: u64,
}

impl Holds {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Topic, Box<str>), Hold>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a hold; true when the pair was not held nor lingering (the
    /// store must be told).
    pub(crate) fn take(&self, topic: &Topic, client: &str) -> bool {
        let mut map = self.lock();
        match map.get_mut(&(topic.clone(), client.into())) {
            Some(h) => {
                h.count += 1;
                h.generation += 1;
                false
            }
            None => {
                map.insert(
                    (topic.clone(), client.into()),
                    Hold {
                        count: 1,
                        generation: 0,
                    },
                );
                true
            }
        }
    }

    /// Releases a hold; the generation to check after the grace period
    /// when it was the last.
    fn release(&self, topic: &Topic, client: &str) -> Option<u64> {
        let mut map = self.lock();
        let h = map.get_mut(&(topic.clone(), client.into()))?;
        h.count = h.count.saturating_sub(1);
        (h.count == 0).then_some(h.generation)
    }

    /// Forgets the pair if nothing took it since `generation`; true when
    /// the leave should go ahead.
    fn forget(&self, topic: &Topic, client: &str, generation: u64) -> bool {
        let mut map = self.lock();
        let key = (topic.clone(), Box::<str>::from(client));
        match map.get(&key) {
            Some(h) if h.count == 0 && h.generation == generation => {
                map.remove(&key);
                true
            }
            _ => false,
        }
    }

    /// Pairs held or lingering now.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Keeps a client present on a topic while it lives (see
/// [`Hub::enter`](crate::Hub::enter)). Dropping it leaves, at once or after
/// the grace period it was made with. A guard for a topic without presence
/// holds nothing.
#[must_use = "the client leaves when the guard is dropped"]
pub struct PresenceGuard {
    held: Option<Held>,
}

struct Held {
    hub: Weak<HubInner>,
    topic: Topic,
    member: Member,
    linger: Duration,
}

impl PresenceGuard {
    /// A guard that holds nothing (the topic has no presence).
    pub fn none() -> PresenceGuard {
        PresenceGuard { held: None }
    }

    pub(crate) fn new(
        hub: &Arc<HubInner>,
        topic: Topic,
        member: Member,
        linger: Duration,
    ) -> PresenceGuard {
        PresenceGuard {
            held: Some(Held {
                hub: Arc::downgrade(hub),
                topic,
                member,
                linger,
            }),
        }
    }

    /// Whether the guard holds a presence entry.
    pub fn is_held(&self) -> bool {
        self.held.is_some()
    }
}

impl Drop for PresenceGuard {
    fn drop(&mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        let Some(hub) = held.hub.upgrade() else {
            return;
        };
        let Some(generation) = hub.holds.release(&held.topic, &held.member.client) else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            if !held.linger.is_zero() {
                tokio::time::sleep(held.linger).await;
            }
            if hub
                .holds
                .forget(&held.topic, &held.member.client, generation)
            {
                crate::hub::leave(&hub, &held.topic, &held.member.client).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(client: &str) -> Member {
        Member {
            client: client.into(),
            user: "u".into(),
            info: serde_json::json!({"name": "Ada"}),
            transport: Transport::WebSocket,
        }
    }

    #[tokio::test]
    async fn local_store_joins_once_and_leaves_once() {
        let store = LocalPresence::default();
        let t = Topic::new("rooms/1").unwrap();
        assert!(store.join(&t, &member("a")).await.unwrap());
        assert!(!store.join(&t, &member("a")).await.unwrap());
        assert!(store.join(&t, &member("b")).await.unwrap());
        let list = store.members(&t).await.unwrap();
        assert_eq!(
            list.iter().map(|m| &*m.client).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(store.leave(&t, "a").await.unwrap(), Some(member("a")));
        assert_eq!(store.leave(&t, "a").await.unwrap(), None);
        assert_eq!(store.leave(&t, "b").await.unwrap(), Some(member("b")));
        assert_eq!(store.topic_count(), 0, "an empty topic is forgotten");
    }

    #[test]
    fn member_json_shape() {
        let json = serde_json::to_value(member("c1")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"client":"c1","user":"u","info":{"name":"Ada"},"transport":"ws"})
        );
        let back: Member = serde_json::from_value(json).unwrap();
        assert_eq!(back, member("c1"));
    }

    #[test]
    fn signal_events_carry_no_cursor() {
        let t = Topic::new("rooms/1").unwrap();
        let e = signal_event(&t, Change::Join, &member("c1"));
        assert!(e.is_signal());
        assert_eq!(e.name.as_deref(), Some("herald.join"));
        assert_eq!(
            e.data.as_sse_text(),
            r#"{"topic":"rooms/1","client":"c1","user":"u","info":{"name":"Ada"}}"#
        );
        let sse = std::str::from_utf8(e.sse().frame()).unwrap().to_owned();
        assert!(!sse.contains("id:"), "{sse}");
        assert!(sse.starts_with("event: herald.join\n"), "{sse}");
        let json: serde_json::Value = serde_json::from_slice(e.json()).unwrap();
        assert!(json.get("id").is_none(), "{json}");
        assert_eq!(json["event"], "herald.join");
    }

    #[test]
    fn holds_count_and_generations() {
        let holds = Holds::default();
        let t = Topic::new("rooms/1").unwrap();
        assert!(holds.take(&t, "p"));
        assert!(!holds.take(&t, "p"));
        assert_eq!(holds.release(&t, "p"), None);
        let g = holds.release(&t, "p").unwrap();
        // Taken again within the grace period: the pending leave is void.
        assert!(!holds.take(&t, "p"));
        assert!(!holds.forget(&t, "p", g));
        let g = holds.release(&t, "p").unwrap();
        assert!(holds.forget(&t, "p", g));
        assert_eq!(holds.len(), 0);
    }
}
