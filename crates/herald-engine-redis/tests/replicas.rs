//! What a publish's 200 means on the Redis engine with replicas: it waits
//! for a replica (`WAIT`), refuses (503) when none has the write in time
//! without ever storing an idempotent retry twice, and a topic that lost
//! acknowledged positions (a failover to a replica that lacked them)
//! starts a new epoch instead of handing them out again. A master and its
//! replica are throw-away `redis-server`s on free loopback ports.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_core::{
    Data, Delivery, Engine, EngineError, GapReason, HistoryLimits, Hub, HubConfig, NewEvent,
    Position, PublishError, Topic,
};
use herald_engine_redis::test_server::RedisServer;
use herald_engine_redis::{RedisConfig, RedisEngine};

#[path = "common/replication.rs"]
mod replication;
use replication::{lose_after, master_and_replica, signal};

fn topic(s: &str) -> Topic {
    Topic::new(s).unwrap()
}

fn text(t: &Topic, s: &str) -> NewEvent {
    NewEvent::new(t.clone(), Data::Text(s.into()))
}

async fn engine(redis: &RedisServer, acks: u32, timeout: Duration) -> Arc<RedisEngine> {
    let mut config = RedisConfig::new(&redis.url(), HistoryLimits::default());
    config.command_timeout = Duration::from_secs(2);
    config.replica_acks = acks;
    config.replica_timeout = timeout;
    Arc::new(RedisEngine::connect(config).await.expect("engine"))
}

/// Entries of a topic's stream on `redis`.
fn stream_len(redis: &RedisServer, e: &RedisEngine, t: &Topic) -> String {
    redis
        .command(&["XLEN", &e.keys().stream(t)])
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_waits_for_a_replica_and_is_refused_when_none_has_it() {
    let (master, replica) = master_and_replica();
    let e = engine(&master, 1, Duration::from_millis(300)).await;
    let hub = Hub::new(e.clone(), HubConfig::default());
    let t = topic("orders/1");
    hub.publish(text(&t, "replicated"))
        .await
        .expect("a replica is online");
    let mut live = hub.subscribe();
    live.add(t.clone(), None).await.unwrap();

    // The replica stops answering (a stalled or cut-off replica): the
    // master still lists it as online until its repl-timeout.
    signal(replica.pid().unwrap(), "-STOP");
    let started = Instant::now();
    let err = hub.publish(text(&t, "unconfirmed")).await.unwrap_err();
    let waited = started.elapsed();
    assert!(
        matches!(&err, PublishError::Engine(EngineError::Unavailable(m)) if m.contains("0 of 1 replicas")),
        "{err:?}"
    );
    assert!(
        waited >= Duration::from_millis(290) && waited < Duration::from_secs(2),
        "waited {waited:?}"
    );
    eprintln!("refused after {waited:?} (replica timeout 300 ms)");

    // An idempotent publish refused this way is stored on the master and
    // recorded: the retry answers with its position, and nothing is stored
    // twice.
    let mut keyed = text(&t, "keyed");
    keyed.idempotency_key = Some("order-1-paid".into());
    assert!(hub.publish(keyed.clone()).await.is_err());
    // Retried while the replica still lacks it: refused again, not stored
    // again.
    assert!(hub.publish(keyed.clone()).await.is_err());
    signal(replica.pid().unwrap(), "-CONT");
    let retried = hub
        .publish(keyed.clone())
        .await
        .expect("retry after the replica is back");
    let again = hub.publish(keyed).await.expect("a second retry");
    assert_eq!(retried.position, again.position);
    // replicated, unconfirmed, keyed: three entries, the keyed one once.
    assert_eq!(stream_len(&master, &e, &t), ":3");
    let r = e
        .read(&t, Some(Position::new(retried.position.epoch, 0)), 10)
        .await
        .unwrap();
    let keyed_count = r
        .events
        .iter()
        .filter(|ev| ev.data == Data::Text("keyed".into()))
        .count();
    assert_eq!(keyed_count, 1, "{:?}", r.events);
    assert_eq!(r.events.last().unwrap().position, retried.position);

    // The confirmed retry announced what was stored but refused, in order,
    // to live subscribers (no later publish needed).
    for want in ["unconfirmed", "keyed"] {
        match tokio::time::timeout(Duration::from_secs(5), live.next())
            .await
            .expect("announced once confirmed")
        {
            herald_core::Delivery::Event(ev) => assert_eq!(ev.data, Data::Text(want.into())),
            other => panic!("expected {want}, got {other:?}"),
        }
    }

    // Replicated now: publishes are acknowledged again.
    hub.publish(text(&t, "after"))
        .await
        .expect("the replica is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_replica_acks_answers_without_waiting() {
    let (master, replica) = master_and_replica();
    let e = engine(&master, 0, Duration::from_millis(300)).await;
    let hub = Hub::new(e, HubConfig::default());
    signal(replica.pid().unwrap(), "-STOP");
    let started = Instant::now();
    hub.publish(text(&topic("fast/1"), "x"))
        .await
        .expect("acks 0 does not wait");
    assert!(started.elapsed() < Duration::from_millis(250));
    signal(replica.pid().unwrap(), "-CONT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_without_replicas_answers_at_once() {
    let redis = RedisServer::start();
    let e = engine(&redis, 1, Duration::from_millis(300)).await;
    let hub = Hub::new(e, HubConfig::default());
    for i in 0..5 {
        hub.publish(text(&topic("solo/1"), &i.to_string()))
            .await
            .expect("no replica to wait for");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_that_lost_writes_starts_a_new_epoch() {
    let redis = RedisServer::start();
    let e = engine(&redis, 1, Duration::from_millis(300)).await;
    let hub = Hub::new(e.clone(), HubConfig::default());
    let t = topic("rooms/lost");
    let mut evs = Vec::new();
    for i in 1..=5 {
        evs.push(hub.publish(text(&t, &i.to_string())).await.unwrap());
    }
    let held = evs[4].position;
    lose_after(&redis, &e, &t, &evs, 2);

    // This node handed out seq 5: the next publish must not be given 3
    // again in the same epoch. A new epoch, numbered on after the loss.
    let next = hub.publish(text(&t, "after the loss")).await.unwrap();
    assert_ne!(next.position.epoch, held.epoch, "{:?}", next.position);
    assert_eq!(next.position.seq, 6);
    // What survived the loss is still history, in the new epoch.
    let r = e
        .read(&t, Some(Position::new(next.position.epoch, 0)), 10)
        .await
        .unwrap();
    let kept: Vec<_> = r
        .events
        .iter()
        .map(|ev| (ev.position.seq, ev.data.clone()))
        .collect();
    assert_eq!(
        kept,
        [
            (1, Data::Text("1".into())),
            (2, Data::Text("2".into())),
            (6, Data::Text("after the loss".into()))
        ]
    );

    // A client holding a lost position is told it missed events.
    let mut sub = hub.subscribe();
    sub.add(t.clone(), Some(held)).await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("a delivery");
    match d {
        Delivery::Gap(g) => assert_eq!(g.reason, GapReason::EpochChanged),
        other => panic!("expected a gap, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_by_a_node_that_saw_lost_positions_starts_a_new_epoch() {
    let redis = RedisServer::start();
    let e = engine(&redis, 1, Duration::from_millis(300)).await;
    let hub = Hub::new(e.clone(), HubConfig::default());
    let t = topic("rooms/read");
    let mut evs = Vec::new();
    for i in 1..=4 {
        evs.push(hub.publish(text(&t, &i.to_string())).await.unwrap());
    }
    let positions: Vec<Position> = evs.iter().map(|ev| ev.position).collect();
    lose_after(&redis, &e, &t, &evs, 1);
    let r = e.read(&t, Some(positions[3]), 10).await.unwrap();
    assert_eq!(r.gap, Some(GapReason::EpochChanged));
    assert_ne!(r.epoch, positions[0].epoch);
    // Another node that never saw the lost positions joins the new epoch.
    let other = engine(&redis, 1, Duration::from_millis(300)).await;
    let r2 = other.read(&t, None, 10).await.unwrap();
    assert_eq!(r2.epoch, r.epoch);
}
