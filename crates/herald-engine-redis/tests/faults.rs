//! Faults an attacker or a failing cluster can cause, each found in a
//! review and kept as a regression test: a failover that lost writes
//! destroys none of the history that survived; a position not yet on a
//! replica is never served (so no node can hand it out again after a
//! failover); a batch whose one topic is not replicated records every
//! idempotency id with its own position. (One topic whose reads fail not
//! stalling the others is herald-core's `tests/read_retry.rs`.)

use std::sync::Arc;
use std::time::Duration;

use herald_core::policy::PolicyRule;
use herald_core::topic_pattern::TopicPattern;
use herald_core::{
    Data, Engine, HistoryLimits, Hub, HubConfig, NewEvent, Position, Topic, TopicPolicies,
    TopicPolicy,
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

async fn engine(redis: &RedisServer, acks: u32) -> Arc<RedisEngine> {
    let mut config = RedisConfig::new(&redis.url(), HistoryLimits::default());
    config.replica_acks = acks;
    config.replica_timeout = Duration::from_millis(300);
    Arc::new(RedisEngine::connect(config).await.expect("engine"))
}

/// Seq 1..3 acknowledged and still held by the promoted replica; seq 4
/// (served: no replica to wait for) was lost. The topic goes on in a new
/// epoch, so a client resuming at seq 1 is told (`epoch_changed`) and then
/// gets everything that survived; none of it is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_that_lost_writes_keeps_the_history_that_survived() {
    let redis = RedisServer::start();
    let e = engine(&redis, 1).await;
    let hub = Hub::new(e.clone(), HubConfig::default());
    let t = topic("wipe/1");
    let mut evs = Vec::new();
    for i in 1..=4 {
        evs.push(hub.publish(text(&t, &i.to_string())).await.unwrap());
    }
    lose_after(&redis, &e, &t, &evs, 3);
    eprintln!(
        "XLEN after failover: {}",
        redis.command(&["XLEN", &e.keys().stream(&t)]).trim()
    );
    let r = e.read(&t, Some(evs[0].position), 10).await.unwrap();
    eprintln!(
        "read after seq 1: gap={:?} events={:?} XLEN now {}",
        r.gap,
        r.events.iter().map(|e| e.position).collect::<Vec<_>>(),
        redis.command(&["XLEN", &e.keys().stream(&t)]).trim()
    );
    assert_eq!(r.gap, Some(herald_core::GapReason::EpochChanged));
    assert_ne!(r.epoch, evs[0].position.epoch);
    assert_eq!(
        r.events.iter().map(|e| e.position.seq).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "the acknowledged events that survived are still history"
    );
    // And the next publish does not take seq 4 again.
    let next = hub.publish(text(&t, "5")).await.unwrap();
    assert_eq!(next.position, Position::new(r.epoch, 5));
}

/// Node C's publish of seq 3 is stored but its replica has not got it
/// (C answered 503). Node A must not serve seq 3 to anyone: if the master
/// fails now, seq 3 is gone and node B will hand it out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_not_yet_replicated_is_never_served() {
    let (master, replica) = master_and_replica();
    let a = engine(&master, 1).await;
    let b = engine(&master, 1).await;
    let hub_b = Hub::new(b.clone(), HubConfig::default());
    let t = topic("reuse/1");
    let mut evs = Vec::new();
    for i in 1..=2 {
        evs.push(hub_b.publish(text(&t, &i.to_string())).await.unwrap());
    }
    signal(replica.pid().unwrap(), "-STOP");
    let c = engine(&master, 1).await;
    let hub_c = Hub::new(c.clone(), HubConfig::default());
    assert!(hub_c
        .publish(text(&t, "3, never replicated"))
        .await
        .is_err());
    let seen = a.read(&t, Some(evs[0].position), 10).await.unwrap();
    let served: Vec<u64> = seen.events.iter().map(|e| e.position.seq).collect();
    assert_eq!(served, vec![2], "served a position no replica holds");
    assert_eq!(seen.head, 2);
    signal(replica.pid().unwrap(), "-CONT");
}

/// A batch [ephemeral topic (no WAIT), stored topic (WAIT times out)],
/// both with idempotency ids. The retry must not answer the first event
/// with the second's position, nor store the second twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_one_unreplicated_topic_records_each_id_with_its_own_position() {
    let (master, replica) = master_and_replica();
    let e = engine(&master, 1).await;
    // Let the engine read the replica count.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let config = HubConfig {
        policies: Arc::new(TopicPolicies::new(vec![PolicyRule {
            pattern: TopicPattern::parse("eph").unwrap(),
            policy: TopicPolicy {
                history: Some(0),
                ..Default::default()
            },
        }])),
        ..HubConfig::default()
    };
    let hub = Hub::new(e.clone(), config);
    let eph = topic("eph");
    let stored = topic("kept/1");
    let mut a = text(&eph, "a");
    a.idempotency_key = Some("id-a".into());
    let mut b = text(&stored, "b");
    b.idempotency_key = Some("id-b".into());
    signal(replica.pid().unwrap(), "-STOP");
    let first = hub.publish_batch(vec![a.clone(), b.clone()]).await;
    eprintln!("first attempt: {first:?}");
    assert!(first.is_err());
    signal(replica.pid().unwrap(), "-CONT");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let retry = hub.publish_batch(vec![a, b]).await.expect("retry");
    eprintln!(
        "retry: {:?}",
        retry
            .iter()
            .map(|e| (e.topic.as_str().to_owned(), e.position))
            .collect::<Vec<_>>()
    );
    let xlen = master.command(&["XLEN", &e.keys().stream(&stored)]);
    eprintln!("XLEN kept/1 = {}", xlen.trim());
    assert_ne!(
        retry[0].position, retry[1].position,
        "the ephemeral event was answered with the stored topic's position"
    );
    assert_eq!(xlen.trim(), ":1", "event b stored twice");
}
