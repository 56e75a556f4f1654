//! Presence through an engine: members kept in the engine's presence store,
//! `herald.join` / `herald.leave` delivered in order with the topic's
//! events and without moving the cursor, the grace period of a lingering
//! client.

use std::sync::Arc;
use std::time::Duration;

use super::{text, EngineFactory};
use crate::engine::HistoryLimits;
use crate::event::Event;
use crate::hub::{Hub, HubConfig};
use crate::metrics::Transport;
use crate::policy::{PolicyRule, TopicPolicies, TopicPolicy};
use crate::presence::Member;
use crate::subscription::{Delivery, Subscription};
use crate::topic::Topic;
use crate::topic_pattern::TopicPattern;

/// The policies the presence suite runs with: `room/**` tracks presence
/// with join/leave events, `quiet/**` tracks presence only; other topics
/// have none.
pub fn presence_policies() -> Arc<TopicPolicies> {
    let rule = |p: &str, presence, join_leave| PolicyRule {
        pattern: TopicPattern::parse(p).expect("a valid pattern"),
        policy: TopicPolicy {
            presence,
            join_leave,
            ..TopicPolicy::DEFAULT
        },
    };
    Arc::new(TopicPolicies::new(vec![
        rule("room/**", true, true),
        rule("quiet/**", true, false),
    ]))
}

/// A member of the suite: client `client`, user `u-<client>`, info
/// `{"name": client}`.
pub fn member(client: &str, transport: Transport) -> Member {
    Member {
        client: client.into(),
        user: format!("u-{client}").into(),
        info: serde_json::json!({ "name": client }),
        transport,
    }
}

async fn next_event(sub: &mut Subscription) -> Arc<Event> {
    match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
        Ok(Delivery::Event(e)) => e,
        Ok(other) => panic!("expected an event, got {other:?}"),
        Err(_) => panic!("no delivery within 10 s"),
    }
}

/// Publishes probes to `topic` until `sub` receives one (a distributed
/// engine starts listening in the background).
async fn live(hub: &Hub, sub: &mut Subscription, topic: &Topic) {
    for _ in 0..100 {
        hub.publish(text(topic, "probe")).await.unwrap();
        if let Ok(d) = tokio::time::timeout(Duration::from_millis(100), sub.next()).await {
            match d {
                Delivery::Event(e) if e.data.as_sse_text() == "probe" => {
                    // Drain probes that were still on their way.
                    while let Ok(Some(Delivery::Event(_))) =
                        tokio::time::timeout(Duration::from_millis(50), sub.next_ready()).await
                    {
                    }
                    return;
                }
                other => panic!("expected a probe, got {other:?}"),
            }
        }
    }
    panic!("no probe of {topic} arrived");
}

fn clients(list: &[Member]) -> Vec<&str> {
    list.iter().map(|m| &*m.client).collect()
}

/// Through a [`Hub`] whose policies are [`presence_policies`]:
/// - entering `room/1` lists the member and signals `herald.join` to a
///   subscriber, before the events published after it; leaving signals
///   `herald.leave` after the events published before it; neither moves
///   the subscriber's cursor;
/// - a member that leaves with a grace period and comes back within it
///   causes no signal; once the period passes it leaves;
/// - `quiet/1` lists members without signals; a topic without presence
///   lists nobody.
pub async fn presence<F: EngineFactory>(factory: &F) {
    let place = factory.place();
    let limits = HistoryLimits::default();
    let engine = factory.open(&place, limits).await;
    let hub = Hub::new(
        engine.clone(),
        HubConfig {
            history: limits,
            policies: presence_policies(),
            ..HubConfig::default()
        },
    );
    let room = Topic::new("room/1").unwrap();
    let mut sub = hub.subscribe();
    sub.add(room.clone(), None).await.unwrap();
    live(&hub, &mut sub, &room).await;
    let cursor = sub.cursor().encode();

    // Join, then an event: in that order, the cursor untouched by the join.
    let guard = hub
        .enter(&room, member("b", Transport::WebSocket), Duration::ZERO)
        .await;
    assert!(guard.is_held());
    let join = next_event(&mut sub).await;
    assert_eq!(join.name.as_deref(), Some("herald.join"));
    assert!(join.is_signal());
    let data: serde_json::Value = serde_json::from_str(join.data.as_sse_text()).unwrap();
    assert_eq!(
        data,
        serde_json::json!({"topic":"room/1","client":"b","user":"u-b","info":{"name":"b"}})
    );
    assert_eq!(sub.cursor().encode(), cursor, "a join moves no cursor");
    let members = hub.presence(&room).await.unwrap();
    assert_eq!(members, vec![member("b", Transport::WebSocket)]);
    let e1 = hub.publish(text(&room, "e1")).await.unwrap();
    let got = next_event(&mut sub).await;
    assert_eq!(got.position, e1.position);

    // An event, then the leave.
    let e2 = hub.publish(text(&room, "e2")).await.unwrap();
    drop(guard);
    let got = next_event(&mut sub).await;
    assert_eq!(got.position, e2.position);
    let leave = next_event(&mut sub).await;
    assert_eq!(leave.name.as_deref(), Some("herald.leave"));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(leave.data.as_sse_text()).unwrap(),
        data
    );
    assert_eq!(sub.cursor().get(&room), Some(e2.position));
    assert!(hub.presence(&room).await.unwrap().is_empty());

    // A lingering member that comes back within its grace period: no
    // signal; gone once the period has passed.
    let grace = Duration::from_millis(300);
    let p = member("p", Transport::Poll);
    let first = hub.enter(&room, p.clone(), grace).await;
    assert_eq!(
        next_event(&mut sub).await.name.as_deref(),
        Some("herald.join")
    );
    drop(first);
    tokio::time::sleep(grace / 3).await;
    let again = hub.enter(&room, p.clone(), grace).await;
    tokio::time::sleep(grace * 2).await;
    assert_eq!(clients(&hub.presence(&room).await.unwrap()), ["p"]);
    let e3 = hub.publish(text(&room, "e3")).await.unwrap();
    assert_eq!(
        next_event(&mut sub).await.position,
        e3.position,
        "no leave or join while the member came back in time"
    );
    drop(again);
    assert_eq!(
        clients(&hub.presence(&room).await.unwrap()),
        ["p"],
        "present during the grace period"
    );
    let leave = next_event(&mut sub).await;
    assert_eq!(leave.name.as_deref(), Some("herald.leave"));
    assert!(hub.presence(&room).await.unwrap().is_empty());

    // Presence without signals.
    let quiet = Topic::new("quiet/1").unwrap();
    let mut q = hub.subscribe();
    q.add(quiet.clone(), None).await.unwrap();
    live(&hub, &mut q, &quiet).await;
    let x = hub
        .enter(&quiet, member("x", Transport::Sse), Duration::ZERO)
        .await;
    let y = hub
        .enter(&quiet, member("y", Transport::Sse), Duration::ZERO)
        .await;
    assert_eq!(clients(&hub.presence(&quiet).await.unwrap()), ["x", "y"]);
    drop(x);
    let e = hub.publish(text(&quiet, "after")).await.unwrap();
    assert_eq!(
        next_event(&mut q).await.position,
        e.position,
        "no join or leave on a topic without join_leave"
    );
    drop(y);

    // No presence: nothing held, nobody listed.
    let plain = Topic::new("plain/1").unwrap();
    let none = hub
        .enter(&plain, member("z", Transport::Sse), Duration::ZERO)
        .await;
    assert!(!none.is_held());
    assert!(hub.presence(&plain).await.unwrap().is_empty());

    drop((sub, q));
    hub.shutdown();
    engine.close().await;
}
