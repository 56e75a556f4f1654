//! Topic policies through an engine: per-topic history limits, and
//! ephemeral topics (live only, positions still increasing, a resume
//! without `herald.gap`).

use std::sync::Arc;
use std::time::Duration;

use super::{seqs, text, EngineFactory};
use crate::engine::{GapReason, HistoryLimits};
use crate::event::Position;
use crate::hub::{Hub, HubConfig};
use crate::policy::{PolicyRule, TopicPolicies, TopicPolicy};
use crate::subscription::{Delivery, Subscription};
use crate::topic::Topic;
use crate::topic_pattern::TopicPattern;

/// The policies the suite runs with: `short/**` keeps 2 events,
/// `live/**` is ephemeral, `brief/**` keeps events for 1 s; other topics
/// keep the engine's limits.
pub fn suite_policies() -> Arc<TopicPolicies> {
    let rule = |p: &str, history| PolicyRule {
        pattern: TopicPattern::parse(p).expect("a valid pattern"),
        policy: TopicPolicy {
            history: Some(history),
            ..TopicPolicy::DEFAULT
        },
    };
    let brief = PolicyRule {
        pattern: TopicPattern::parse("brief/**").expect("a valid pattern"),
        policy: TopicPolicy {
            history_max_age: Some(Duration::from_secs(1)),
            ..TopicPolicy::DEFAULT
        },
    };
    Arc::new(TopicPolicies::new(vec![
        rule("short/**", 2),
        rule("live/**", 0),
        brief,
    ]))
}

async fn next(sub: &mut Subscription) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a delivery in time")
}

/// Publishes probes to `topic` until `sub` receives one; its position.
async fn live_now(hub: &Hub, sub: &mut Subscription, topic: &Topic) -> Position {
    for _ in 0..100 {
        hub.publish(text(topic, "probe")).await.unwrap();
        if let Ok(d) = tokio::time::timeout(Duration::from_millis(100), sub.next()).await {
            match d {
                Delivery::Event(e) => return e.position,
                other => panic!("expected a probe, got {other:?}"),
            }
        }
    }
    panic!("no probe of {topic} arrived");
}

/// Through a [`Hub`] whose [`HubConfig::policies`] are
/// [`suite_policies`]: a `short/` topic keeps its last 2 events while
/// another keeps the engine's 10; a `live/` topic's events reach its
/// subscribers with increasing positions, none is read back, and a resume
/// with an older cursor (of any epoch) gets live events only, without a gap.
pub async fn topic_policies<F: EngineFactory>(factory: &F) {
    let place = factory.place();
    let limits = HistoryLimits {
        max_events: 10,
        max_age: Duration::from_secs(3600),
    };
    let engine = factory.open(&place, limits).await;
    let hub = Hub::new(
        engine.clone(),
        HubConfig {
            history: limits,
            policies: suite_policies(),
            ..HubConfig::default()
        },
    );

    // Per-topic count limits.
    let short = Topic::new("short/a").unwrap();
    let long = Topic::new("long/a").unwrap();
    let (mut last, mut last_long) = (Position::new(0, 0), Position::new(0, 0));
    for i in 0..5 {
        last = hub
            .publish(text(&short, &i.to_string()))
            .await
            .unwrap()
            .position;
        last_long = hub
            .publish(text(&long, &i.to_string()))
            .await
            .unwrap()
            .position;
    }
    let r = engine
        .read(&short, Some(Position::new(last.epoch, 0)), 100)
        .await
        .unwrap();
    assert_eq!(r.gap, Some(GapReason::HistoryTruncated));
    assert_eq!(seqs(&r.events), vec![4, 5]);
    let long_start = Some(Position::new(last_long.epoch, 0));
    let r = engine.read(&long, long_start, 100).await.unwrap();
    assert_eq!((r.gap, r.events.len()), (None, 5), "{r:?}");

    // Per-topic age limits: a `brief/` topic's event ages out (the time
    // passing is the point), another topic's stays.
    let brief = Topic::new("brief/a").unwrap();
    let old = hub.publish(text(&brief, "old")).await.unwrap().position;
    let from = Some(Position::new(old.epoch, 0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = engine.read(&brief, from, 10).await.unwrap();
        if r.events.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never expired: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = engine.read(&long, long_start, 100).await.unwrap();
    assert_eq!(r.events.len(), 5, "{r:?}");

    // Ephemeral: live only, positions increasing. A distributed engine
    // starts listening in the background: probe until an event arrives
    // (an ephemeral event published before that reaches no one).
    let live = Topic::new("live/a").unwrap();
    let mut sub = hub.subscribe();
    sub.add(live.clone(), None).await.unwrap();
    let probe = live_now(&hub, &mut sub, &live).await;
    let mut seen = probe;
    for i in 0..3 {
        let sent = hub.publish(text(&live, &i.to_string())).await.unwrap();
        let got = match next(&mut sub).await {
            Delivery::Event(e) => e.position,
            other => panic!("expected an event, got {other:?}"),
        };
        assert_eq!(got, sent.position);
        assert!(
            got.seq > seen.seq,
            "positions increase: {got:?} after {seen:?}"
        );
        seen = got;
    }
    let r = engine.read(&live, Some(probe), 100).await.unwrap();
    assert!(
        r.events.is_empty(),
        "an ephemeral topic keeps nothing: {r:?}"
    );
    let (first, third) = (probe, seen);

    // A resume with an older cursor, or one of another epoch: no gap, the
    // next live event only.
    for cursor in [first, Position::new(first.epoch ^ 1, 7)] {
        let mut resumed = hub.subscribe();
        resumed.add(live.clone(), Some(cursor)).await.unwrap();
        // The first delivery is a live event, never a gap.
        let got = live_now(&hub, &mut resumed, &live).await;
        assert!(got.seq > third.seq);
        // The first subscriber saw every probe, in order.
        loop {
            match next(&mut sub).await {
                Delivery::Event(e) if e.position == got => break,
                Delivery::Event(e) => assert!(e.position.seq < got.seq),
                other => panic!("expected a live event, got {other:?}"),
            }
        }
    }
    drop(sub);
    hub.shutdown();
    engine.close().await;
}
