//! Faults an attacker or a failing cluster can cause, each found in a
//! review and kept as a regression test: a failover that lost writes
//! destroys none of the history that survived; a position not yet on a
//! replica is never served (so no node can hand it out again after a
//! failover); a batch whose one topic is not replicated records every
//! idempotency id with its own position; one topic whose reads fail does
//! not stall the other topics of a subscription.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_core::engine::BoxFuture;
use herald_core::fanout::Fanout;
use herald_core::policy::PolicyRule;
use herald_core::topic_pattern::TopicPattern;
use herald_core::{
    Data, Delivery, Engine, EngineError, HistoryLimits, Hub, HubConfig, MemoryEngine, NewEvent,
    Position, ReadResult, Topic, TopicPolicies, TopicPolicy,
};
use herald_engine_redis::test_server::RedisServer;
use herald_engine_redis::{RedisConfig, RedisEngine};

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

/// As `tests/replicas.rs` does: the topic loses its events after `keep`
/// (a failover to a replica that lacked them).
fn lose_after(
    redis: &RedisServer,
    e: &RedisEngine,
    t: &Topic,
    evs: &[Arc<herald_core::Event>],
    keep: u64,
) {
    for ev in evs {
        if ev.position.seq > keep {
            redis.command(&[
                "XDEL",
                &e.keys().stream(t),
                &format!("{}-{}", ev.position.seq, ev.published_at_ms),
            ]);
        }
    }
    redis.command(&["HSET", &e.keys().meta(t), "seq", &keep.to_string()]);
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

fn master_and_replica() -> (RedisServer, RedisServer) {
    let master = RedisServer::start_persistent();
    let replica = RedisServer::start_persistent();
    let port = master.addr().port().to_string();
    replica.command(&["REPLICAOF", "127.0.0.1", &port]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !master
        .command(&["INFO", "replication"])
        .contains("state=online")
    {
        assert!(Instant::now() < deadline, "replica never online");
        std::thread::sleep(Duration::from_millis(50));
    }
    (master, replica)
}

fn signal(pid: u32, sig: &str) {
    assert!(std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success());
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

/// An engine whose reads of one topic fail (its master is down).
struct Flaky {
    inner: MemoryEngine,
    failing: Mutex<Option<Topic>>,
}

impl Engine for Flaky {
    fn attach(&self, f: Arc<Fanout>) {
        self.inner.attach(f)
    }
    fn set_policies(&self, p: Arc<TopicPolicies>) {
        self.inner.set_policies(p)
    }
    fn publish(
        &self,
        events: Vec<NewEvent>,
    ) -> BoxFuture<'_, Result<Vec<Arc<herald_core::Event>>, EngineError>> {
        self.inner.publish(events)
    }
    fn read<'a>(
        &'a self,
        topic: &'a Topic,
        after: Option<Position>,
        limit: usize,
    ) -> BoxFuture<'a, Result<ReadResult, EngineError>> {
        if self.failing.lock().unwrap().as_ref() == Some(topic) {
            return Box::pin(async { Err(EngineError::Unavailable("master down".into())) });
        }
        self.inner.read(topic, after, limit)
    }
    fn ready(&self) -> BoxFuture<'_, Result<(), EngineError>> {
        self.inner.ready()
    }
    fn name(&self) -> &'static str {
        "flaky"
    }
}

/// A WebSocket-style subscription holds topic B (healthy master);
/// the client subscribes to topic A whose master is down: the subscribe
/// fails (503), but B must keep being delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_topic_whose_reads_fail_does_not_stall_the_others() {
    let engine = Arc::new(Flaky {
        inner: MemoryEngine::new(HistoryLimits::default()),
        failing: Mutex::new(None),
    });
    let config = HubConfig {
        queue_capacity: 16,
        ..HubConfig::default()
    };
    let hub = Hub::new(engine.clone(), config);
    let (a, b) = (topic("down/a"), topic("up/b"));
    let mut sub = hub.subscribe();
    sub.add(b.clone(), None).await.unwrap();
    *engine.failing.lock().unwrap() = Some(a.clone());
    let added = sub.add(a.clone(), None).await;
    eprintln!(
        "subscribe to A while its master is down: {:?}",
        added.is_err()
    );
    // Fewer than the queue holds: a slow reader is not what this tests.
    for i in 0..10 {
        hub.publish(text(&b, &i.to_string())).await.unwrap();
    }
    let got = tokio::time::timeout(Duration::from_secs(2), sub.next()).await;
    eprintln!("next delivery on B: {got:?}");
    match got {
        Ok(Delivery::Event(e)) => assert_eq!(e.topic, b),
        other => panic!("B is not delivered while A's reads fail: {other:?}"),
    }
}
