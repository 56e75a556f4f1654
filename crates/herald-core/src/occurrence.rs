//! Occurrences: what happened to topics, told after the fact to an
//! observer such as the webhooks (DESIGN.md, "Webhooks").
//!
//! - **Occupied / vacated**: a topic's subscribers went from none to some,
//!   or from some to none. On the memory and embedded engines the hub
//!   decides from this process's fan-out (`LocalOccupancy`); an engine
//!   that spans nodes decides cluster-wide
//!   ([`Engine::report_occurrences`](crate::Engine::report_occurrences)
//!   returns true), so that a topic with subscribers on two nodes is
//!   occupied once and vacated once.
//! - **Join / leave**: a member entered or left a presence topic, exactly
//!   where presence decides it (`herald.join` / `herald.leave` are sent on
//!   the same decisions when the policy has `join_leave`; the observer
//!   hears of them with or without it).
//!
//! Occupied and vacated alternate per topic. A vacancy is reported only
//! once the topic stayed empty for the observer's
//! [`Occurrences::vacate_grace`], so a long-polling client between two
//! polls (or a page reload) does not make a topic flicker; once the hub is
//! shutting down, at once (so that the vacancies can still be delivered).
//!
//! Nothing here costs anything until an observer is registered
//! ([`Hub::report_occurrences`](crate::Hub::report_occurrences)): the
//! subscribe path checks one `OnceLock` on a topic's first and last
//! subscriber only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::event::now_ms;
use crate::topic::Topic;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OccurrenceKind {
    /// The topic's first subscriber arrived (cluster-wide with an engine
    /// that spans nodes).
    Occupied,
    /// The topic's last subscriber left, and none came back within the
    /// vacate grace.
    Vacated,
    /// A member entered a presence topic.
    Join,
    /// A member left a presence topic (or its entry expired: its node died).
    Leave,
}

impl OccurrenceKind {
    /// The webhook's `kind`: `occupied`, `vacated`, `join` or `leave`.
    pub fn as_str(self) -> &'static str {
        match self {
            OccurrenceKind::Occupied => "occupied",
            OccurrenceKind::Vacated => "vacated",
            OccurrenceKind::Join => "join",
            OccurrenceKind::Leave => "leave",
        }
    }
}

/// One occurrence: its kind, its topic, who (joins and leaves) and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Occurrence {
    /// What happened.
    pub kind: OccurrenceKind,
    /// To which topic.
    pub topic: Topic,
    /// Joins and leaves: the member's user (the credential's `sub`; empty
    /// without one). `None` for occupied and vacated.
    pub user: Option<Box<str>>,
    /// Joins and leaves: the member's connection id. `None` for occupied
    /// and vacated.
    pub client: Option<Box<str>>,
    /// When it happened, milliseconds since the Unix epoch (for a vacancy:
    /// when the last subscriber left).
    pub at: u64,
}

impl Occurrence {
    /// `kind` (occupied or vacated) of `topic`, now.
    pub fn topic(kind: OccurrenceKind, topic: &Topic) -> Occurrence {
        Occurrence {
            kind,
            topic: topic.clone(),
            user: None,
            client: None,
            at: now_ms(),
        }
    }

    /// `kind` (join or leave) of the member `user` / `client` on `topic`, now.
    pub fn member(kind: OccurrenceKind, topic: &Topic, user: &str, client: &str) -> Occurrence {
        Occurrence {
            kind,
            topic: topic.clone(),
            user: Some(user.into()),
            client: Some(client.into()),
            at: now_ms(),
        }
    }
}

/// An observer of occurrences (the webhooks' queue).
///
/// [`Occurrences::occurred`] is called on the subscribe and presence paths,
/// sometimes under a lock that keeps a topic's occurrences in order: it
/// must not block or wait (queue and return; drop and count when full).
pub trait Occurrences: Send + Sync + 'static {
    /// Takes one occurrence. Occurrences of one topic arrive in the order
    /// they happened on the node that reports them.
    fn occurred(&self, occurrence: Occurrence);

    /// How long a topic must stay empty before it is reported vacated.
    /// Default: zero (at once).
    fn vacate_grace(&self) -> Duration {
        Duration::ZERO
    }
}

/// One topic's state in [`LocalOccupancy`].
#[derive(Clone, Copy, Debug)]
enum State {
    /// Occupied and reported so.
    Occupied,
    /// Empty since `since` (`at`, ms), within the grace: still occupied
    /// for the observer.
    Emptied { since: Instant, at: u64 },
}

/// Occupancy decided from this process's fan-out: which topics the
/// observer was told are occupied. Bounded by the topics with local
/// subscribers (and those emptied within the grace).
pub(crate) struct LocalOccupancy {
    topics: Mutex<HashMap<Topic, State>>,
}

impl LocalOccupancy {
    pub(crate) fn new() -> Arc<LocalOccupancy> {
        Arc::new(LocalOccupancy {
            topics: Mutex::new(HashMap::new()),
        })
    }

    /// Brings `topic`'s reported state in line with `subscribers()` (read
    /// under this occupancy's lock, so concurrent calls report in order),
    /// reporting to `sink`. An emptied topic is reported vacated once it
    /// stayed empty for `grace`: a timer on the current runtime calls this
    /// again then.
    pub(crate) fn reconcile(
        self: &Arc<Self>,
        topic: &Topic,
        subscribers: impl Fn() -> usize + Send + Sync + 'static,
        sink: &Arc<dyn Occurrences>,
        grace: Duration,
    ) {
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        let occupied = subscribers() > 0;
        match (topics.get(topic).copied(), occupied) {
            (None, true) => {
                topics.insert(topic.clone(), State::Occupied);
                sink.occurred(Occurrence::topic(OccurrenceKind::Occupied, topic));
            }
            (Some(State::Emptied { .. }), true) => {
                topics.insert(topic.clone(), State::Occupied);
            }
            (Some(State::Occupied), false) => {
                let at = now_ms();
                let rt = tokio::runtime::Handle::try_current();
                match rt {
                    Ok(rt) if !grace.is_zero() => {
                        topics.insert(
                            topic.clone(),
                            State::Emptied {
                                since: Instant::now(),
                                at,
                            },
                        );
                        let (me, topic, sink) = (Arc::downgrade(self), topic.clone(), sink.clone());
                        rt.spawn(settle_later(me, topic, subscribers, sink, grace));
                    }
                    _ => {
                        topics.remove(topic);
                        sink.occurred(Occurrence::topic(OccurrenceKind::Vacated, topic));
                    }
                }
            }
            (Some(State::Emptied { since, at }), false) if since.elapsed() >= grace => {
                topics.remove(topic);
                let mut o = Occurrence::topic(OccurrenceKind::Vacated, topic);
                o.at = at;
                sink.occurred(o);
            }
            // Occupied and reported, empty within the grace (its timer
            // comes), or empty and never reported: nothing to tell.
            _ => {}
        }
    }

    /// Topics reported occupied (or within their grace).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.topics.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Waits out the grace, then reconciles `topic` again.
async fn settle_later(
    occupancy: Weak<LocalOccupancy>,
    topic: Topic,
    subscribers: impl Fn() -> usize + Send + Sync + 'static,
    sink: Arc<dyn Occurrences>,
    grace: Duration,
) {
    tokio::time::sleep(grace).await;
    if let Some(o) = occupancy.upgrade() {
        o.reconcile(&topic, subscribers, &sink, grace);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    struct Seen {
        list: Mutex<Vec<(OccurrenceKind, String)>>,
        grace: Duration,
    }

    impl Occurrences for Seen {
        fn occurred(&self, o: Occurrence) {
            self.list
                .lock()
                .unwrap()
                .push((o.kind, o.topic.as_str().to_owned()));
        }
        fn vacate_grace(&self) -> Duration {
            self.grace
        }
    }

    fn kinds(seen: &Seen) -> Vec<OccurrenceKind> {
        seen.list.lock().unwrap().iter().map(|(k, _)| *k).collect()
    }

    #[tokio::test]
    async fn occupied_and_vacated_alternate_and_empty_blips_are_not_told() {
        use OccurrenceKind::*;
        let seen = Arc::new(Seen::default());
        let sink: Arc<dyn Occurrences> = seen.clone();
        let occ = LocalOccupancy::new();
        let t = Topic::new("rooms/1").unwrap();
        let n = Arc::new(AtomicUsize::new(0));
        let count = |n: &Arc<AtomicUsize>| {
            let n = n.clone();
            move || n.load(Ordering::SeqCst)
        };
        // Empty and never reported: nothing.
        occ.reconcile(&t, count(&n), &sink, sink.vacate_grace());
        n.store(1, Ordering::SeqCst);
        occ.reconcile(&t, count(&n), &sink, sink.vacate_grace());
        occ.reconcile(&t, count(&n), &sink, sink.vacate_grace());
        n.store(2, Ordering::SeqCst);
        occ.reconcile(&t, count(&n), &sink, sink.vacate_grace());
        n.store(0, Ordering::SeqCst);
        occ.reconcile(&t, count(&n), &sink, sink.vacate_grace());
        occ.reconcile(&t, count(&n), &sink, sink.vacate_grace());
        assert_eq!(kinds(&seen), [Occupied, Vacated]);
        assert_eq!(occ.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_vacancy_waits_out_the_grace() {
        use OccurrenceKind::*;
        let seen = Arc::new(Seen {
            grace: Duration::from_secs(2),
            ..Default::default()
        });
        let sink: Arc<dyn Occurrences> = seen.clone();
        let occ = LocalOccupancy::new();
        let t = Topic::new("rooms/1").unwrap();
        let n = Arc::new(AtomicUsize::new(1));
        let count = |n: &Arc<AtomicUsize>| {
            let n = n.clone();
            move || n.load(Ordering::SeqCst)
        };
        occ.reconcile(&t, count(&n), &sink, sink.vacate_grace());
        // Leaves and comes back within the grace (a long poll): no change.
        n.store(0, Ordering::SeqCst);
        occ.reconcile(&t, count(&n), &sink, sink.vacate_grace());
        tokio::time::sleep(Duration::from_millis(500)).await;
        n.store(1, Ordering::SeqCst);
        occ.reconcile(&t, count(&n), &sink, sink.vacate_grace());
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(kinds(&seen), [Occupied]);
        // Leaves for good: vacated once the grace has passed.
        n.store(0, Ordering::SeqCst);
        occ.reconcile(&t, count(&n), &sink, sink.vacate_grace());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(kinds(&seen), [Occupied]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(kinds(&seen), [Occupied, Vacated]);
        assert_eq!(occ.len(), 0);
    }

    #[tokio::test]
    async fn the_hub_reports_subscribers_and_members() {
        use crate::policy::{PolicyRule, TopicPolicies, TopicPolicy};
        use crate::presence::Member;
        use crate::topic_pattern::TopicPattern;
        use crate::{Hub, HubConfig, Transport};
        use OccurrenceKind::*;
        let policies = Arc::new(TopicPolicies::new(vec![PolicyRule {
            pattern: TopicPattern::parse("quiet/**").unwrap(),
            policy: TopicPolicy {
                presence: true,
                ..TopicPolicy::DEFAULT
            },
        }]));
        let hub = Hub::memory(HubConfig {
            policies,
            ..HubConfig::default()
        });
        let seen = Arc::new(Seen::default());
        assert!(hub.report_occurrences(seen.clone()));
        assert!(!hub.report_occurrences(seen.clone()), "registered once");
        let t = Topic::new("quiet/1").unwrap();
        let mut a = hub.subscribe();
        a.add(t.clone(), None).await.unwrap();
        let mut b = hub.subscribe();
        b.add(t.clone(), None).await.unwrap();
        let member = Member {
            client: "c1".into(),
            user: "alice".into(),
            info: serde_json::Value::Null,
            transport: Transport::Sse,
        };
        let guard = hub.enter(&t, member, Duration::ZERO).await;
        drop(a);
        drop(guard);
        tokio::time::timeout(Duration::from_secs(5), async {
            while seen.list.lock().unwrap().len() < 3 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the leave");
        b.remove(&t);
        assert_eq!(kinds(&seen), [Occupied, Join, Leave, Vacated]);
        assert!(seen
            .list
            .lock()
            .unwrap()
            .iter()
            .all(|(_, t)| t == "quiet/1"));
    }
}
