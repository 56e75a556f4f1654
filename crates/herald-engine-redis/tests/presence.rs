//! Presence on the Redis engine, against a `redis-server` each test starts:
//! the engine suite's presence, and presence across nodes (three hubs on
//! one key prefix): every node lists the same members, join and leave
//! signals reach every node's subscribers, a client that moves between
//! nodes stays present, and the clients of a node that dies without
//! leaving stop counting once their entries expire, with exactly one
//! `herald.leave` each.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fresh;
use herald_core::engine::suite::{self, member};
use herald_core::{
    Data, Delivery, Event, Hub, HubConfig, Member, NewEvent, Subscription, Topic, Transport,
};
use herald_engine_redis::test_server::RedisServer;
use herald_engine_redis::{PresenceTiming, RedisConfig, RedisEngine};

#[tokio::test]
async fn presence() {
    suite::presence(&fresh()).await;
}

/// Short presence timing, so that a dead node's clients expire quickly.
const TIMING: PresenceTiming = PresenceTiming {
    refresh: Duration::from_millis(300),
    ttl: Duration::from_millis(1500),
    sweep: Duration::from_millis(250),
};

/// A node: a hub with the suite's presence policies (`room/**` with
/// join/leave) over its own engine, every node under the same key prefix.
async fn node(redis: &RedisServer) -> (Hub, Arc<RedisEngine>) {
    let mut config = RedisConfig::new(&redis.url(), Default::default());
    config.prefix = "cluster:".into();
    config.command_timeout = Duration::from_millis(500);
    config.presence = TIMING;
    let engine = Arc::new(RedisEngine::connect(config).await.expect("engine"));
    let hub = Hub::new(
        engine.clone(),
        HubConfig {
            policies: suite::presence_policies(),
            ..HubConfig::default()
        },
    );
    (hub, engine)
}

async fn next_event(sub: &mut Subscription, within: Duration) -> Arc<Event> {
    match tokio::time::timeout(within, sub.next()).await {
        Ok(Delivery::Event(e)) => e,
        Ok(other) => panic!("expected an event, got {other:?}"),
        Err(_) => panic!("no delivery within {within:?}"),
    }
}

/// The next delivery is `name` (`herald.join` / `herald.leave`) for `client`.
async fn expect_signal(sub: &mut Subscription, name: &str, client: &str) {
    let e = next_event(sub, Duration::from_secs(5)).await;
    assert_eq!(e.name.as_deref(), Some(name), "{e:?}");
    assert!(e.is_signal());
    let data: serde_json::Value = serde_json::from_str(e.data.as_sse_text()).unwrap();
    assert_eq!(data["client"], client, "{data}");
}

async fn expect_quiet(sub: &mut Subscription, for_: Duration) {
    if let Ok(d) = tokio::time::timeout(for_, sub.next()).await {
        panic!("unexpected delivery {d:?}");
    }
}

/// Subscribes to `topic` on `hub` and publishes probes until one arrives
/// (the node starts listening in the background).
async fn live_subscriber(hub: &Hub, topic: &Topic) -> Subscription {
    let mut sub = hub.subscribe();
    sub.add(topic.clone(), None).await.unwrap();
    for _ in 0..100 {
        hub.publish(NewEvent::new(topic.clone(), Data::Text("probe".into())))
            .await
            .unwrap();
        if let Ok(d) = tokio::time::timeout(Duration::from_millis(100), sub.next()).await {
            assert!(matches!(d, Delivery::Event(_)), "{d:?}");
            // Drain probes still on their way.
            while let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(100), sub.next_ready()).await
            {
            }
            return sub;
        }
    }
    panic!("no probe of {topic} arrived");
}

/// Takes the probes other subscribers' set-up sent `sub`, until 200 ms
/// pass without one.
async fn drain_probes(sub: &mut Subscription) {
    for _ in 0..200 {
        match tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
            Ok(Delivery::Event(e)) if e.data.as_sse_text() == "probe" => {}
            Ok(other) => panic!("expected a probe, got {other:?}"),
            Err(_) => return,
        }
    }
    panic!("probes kept coming");
}

fn clients(list: &[Member]) -> Vec<&str> {
    list.iter().map(|m| &*m.client).collect()
}

/// Polls `hub`'s members of `topic` (every 50 ms, at most `within`) until
/// `done` holds for them; the time it took.
async fn until_members(
    hub: &Hub,
    topic: &Topic,
    within: Duration,
    done: impl Fn(&[Member]) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let list = hub.presence(topic).await.unwrap();
        if done(&list) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "members of {topic} still {:?} after {within:?}",
            clients(&list)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn three_nodes_share_presence_and_a_dead_node_stops_counting() {
    let redis = RedisServer::start();
    let (n1, _e1) = node(&redis).await;
    let (n2, e2) = node(&redis).await;
    let (n3, _e3) = node(&redis).await;
    let room = Topic::new("room/1").unwrap();
    // Subscribers on nodes 1 and 3: both nodes sweep the topic.
    let mut s1 = live_subscriber(&n1, &room).await;
    let mut s3 = live_subscriber(&n3, &room).await;
    drain_probes(&mut s1).await;

    // Entered on node 1: listed by every node, join and leave everywhere.
    let a = n1
        .enter(&room, member("a", Transport::WebSocket), Duration::ZERO)
        .await;
    for hub in [&n1, &n2, &n3] {
        assert_eq!(
            hub.presence(&room).await.unwrap(),
            vec![member("a", Transport::WebSocket)]
        );
    }
    expect_signal(&mut s3, "herald.join", "a").await;
    expect_signal(&mut s1, "herald.join", "a").await;
    drop(a);
    expect_signal(&mut s3, "herald.leave", "a").await;
    expect_signal(&mut s1, "herald.leave", "a").await;
    for hub in [&n1, &n2, &n3] {
        until_members(hub, &room, Duration::from_secs(2), <[Member]>::is_empty).await;
    }

    // Entered on node 2, which then dies without leaving: no guard is
    // dropped, and the engine goes (its refresh task with it).
    let k = n2
        .enter(&room, member("k", Transport::Sse), Duration::ZERO)
        .await;
    expect_signal(&mut s3, "herald.join", "k").await;
    expect_signal(&mut s1, "herald.join", "k").await;
    std::mem::forget(k);
    drop(n2);
    assert_eq!(
        Arc::strong_count(&e2),
        1,
        "nothing else holds node 2's engine"
    );
    drop(e2);
    let died = Instant::now();
    assert_eq!(
        clients(&n1.presence(&room).await.unwrap()),
        ["k"],
        "still listed until its entry expires"
    );

    // Gone from every listing within the time-to-live and a sweep (plus
    // the polling and scheduling slack).
    let bound = TIMING.dead_node_bound() + Duration::from_millis(700);
    for hub in [&n1, &n3] {
        until_members(hub, &room, bound, <[Member]>::is_empty).await;
    }
    assert!(died.elapsed() <= bound, "took {:?}", died.elapsed());

    // Exactly one herald.leave, though two nodes sweep.
    expect_signal(&mut s3, "herald.leave", "k").await;
    expect_signal(&mut s1, "herald.leave", "k").await;
    expect_quiet(&mut s3, TIMING.sweep * 4).await;
    expect_quiet(&mut s1, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_client_that_moves_to_another_node_stays_present() {
    let redis = RedisServer::start();
    let (n1, _e1) = node(&redis).await;
    let (n2, _e2) = node(&redis).await;
    let room = Topic::new("room/poll").unwrap();
    let mut sub = live_subscriber(&n2, &room).await;

    // A long-polling client on node 1, then its next poll on node 2 while
    // node 1's grace period runs.
    let grace = Duration::from_millis(200);
    let first = n1.enter(&room, member("p", Transport::Poll), grace).await;
    expect_signal(&mut sub, "herald.join", "p").await;
    let second = n2.enter(&room, member("p", Transport::Poll), grace).await;
    drop(first);
    // Node 1's leave, after its grace period, leaves node 2's entry alone;
    // node 2 keeps refreshing it past several time-to-lives.
    tokio::time::sleep(grace + TIMING.ttl * 2).await;
    assert_eq!(clients(&n1.presence(&room).await.unwrap()), ["p"]);
    expect_quiet(&mut sub, Duration::from_millis(100)).await;

    drop(second);
    expect_signal(&mut sub, "herald.leave", "p").await;
    until_members(&n1, &room, Duration::from_secs(2), <[Member]>::is_empty).await;
}
