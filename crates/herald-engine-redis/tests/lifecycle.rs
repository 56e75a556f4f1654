//! Topics do not live forever in Redis: their keys expire after the history
//! age limit, a read of a topic never published leaves only keys that
//! expire, and a topic used again after expiring starts a new epoch. Against
//! a real `redis-server` each test starts on a free loopback port.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_core::engine::Exhausted;
use herald_core::{
    Data, Delivery, Engine, EngineError, GapReason, HistoryLimits, Hub, HubConfig, NewEvent,
    PublishError, Topic,
};
use herald_engine_redis::test_server::RedisServer;
use herald_engine_redis::{RedisConfig, RedisEngine};

fn limits(max_age: Duration) -> HistoryLimits {
    HistoryLimits {
        max_events: 100,
        max_age,
    }
}

async fn engine(redis: &RedisServer, history: HistoryLimits) -> Arc<RedisEngine> {
    let mut config = RedisConfig::new(&redis.url(), history);
    config.command_timeout = Duration::from_millis(500);
    Arc::new(RedisEngine::connect(config).await.expect("engine"))
}

/// The integer of a RESP reply such as `:1234\r\n`.
fn integer(reply: &str) -> i64 {
    reply
        .trim()
        .strip_prefix(':')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not an integer reply: {reply:?}"))
}

fn pttl(redis: &RedisServer, key: &str) -> i64 {
    integer(&redis.command(&["PTTL", key]))
}

#[tokio::test]
async fn a_publish_gives_both_keys_the_history_age_as_ttl() {
    let redis = RedisServer::start();
    let e = engine(&redis, limits(Duration::from_secs(60))).await;
    let hub = Hub::new(e.clone(), HubConfig::default());
    let t = Topic::new("orders/1").unwrap();
    hub.publish(NewEvent::new(t.clone(), Data::Text("a".into())))
        .await
        .unwrap();
    for key in [e.keys().meta(&t), e.keys().stream(&t)] {
        let ttl = pttl(&redis, &key);
        assert!(ttl > 55_000 && ttl <= 60_000, "{key}: PTTL {ttl}");
    }
    // The redis-cli view the README points operators to: TTL in seconds.
    assert!(integer(&redis.command(&["TTL", &e.keys().stream(&t)])) > 0);
}

#[tokio::test]
async fn reading_a_topic_never_published_leaves_only_expiring_keys() {
    let redis = RedisServer::start();
    let e = engine(&redis, limits(Duration::from_secs(30))).await;
    let _hub = Hub::new(e.clone(), HubConfig::default());
    let t = Topic::new("never/published").unwrap();
    let r = e.read(&t, None, 10).await.unwrap();
    assert_eq!(r.head, 0);
    let ttl = pttl(&redis, &e.keys().meta(&t));
    assert!(ttl > 25_000 && ttl <= 30_000, "metadata PTTL {ttl}");
    assert_eq!(
        integer(&redis.command(&["EXISTS", &e.keys().stream(&t)])),
        0
    );
    // Reads keep the epoch they were given while the metadata lives.
    let again = e.read(&t, None, 10).await.unwrap();
    assert_eq!(again.epoch, r.epoch);
}

#[tokio::test]
async fn an_expired_topic_is_gone_and_its_cursors_get_a_gap() {
    let redis = RedisServer::start();
    let e = engine(&redis, limits(Duration::from_secs(1))).await;
    let hub = Hub::new(e.clone(), HubConfig::default());
    let t = Topic::new("short/lived").unwrap();
    let first = hub
        .publish(NewEvent::new(t.clone(), Data::Text("a".into())))
        .await
        .unwrap();
    let (meta, stream) = (e.keys().meta(&t), e.keys().stream(&t));
    assert!(pttl(&redis, &meta) > 0 && pttl(&redis, &stream) > 0);
    // Both keys go once the age limit has passed (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(5);
    while integer(&redis.command(&["EXISTS", &meta, &stream])) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(integer(&redis.command(&["EXISTS", &meta, &stream])), 0);
    let r = e.read(&t, Some(first.position), 10).await.unwrap();
    assert_eq!(r.gap, Some(GapReason::EpochChanged));
    // Used again: a new epoch, so no position of the first life repeats.
    let second = hub
        .publish(NewEvent::new(t.clone(), Data::Text("b".into())))
        .await
        .unwrap();
    assert_ne!(second.position.epoch, first.position.epoch);
}

#[tokio::test]
async fn redis_out_of_memory_answers_server_full() {
    let redis = RedisServer::start();
    let e = engine(&redis, limits(Duration::from_secs(60))).await;
    let hub = Hub::new(e.clone(), HubConfig::default());
    let t = Topic::new("full").unwrap();
    hub.publish(NewEvent::new(t.clone(), Data::Text("before".into())))
        .await
        .unwrap();
    assert!(redis
        .command(&["CONFIG", "SET", "maxmemory", "1"])
        .starts_with("+OK"));
    let err = hub
        .publish(NewEvent::new(
            t.clone(),
            Data::Text("x".repeat(1000).into()),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PublishError::Engine(EngineError::ServerFull(Exhausted::Storage))
        ),
        "{err}"
    );
    assert_eq!(
        hub.metrics()
            .budget_refusals
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // Nothing was stored: room again, and the sequence goes on from 1.
    assert!(redis
        .command(&["CONFIG", "SET", "maxmemory", "0"])
        .starts_with("+OK"));
    let next = hub
        .publish(NewEvent::new(t.clone(), Data::Text("after".into())))
        .await
        .unwrap();
    assert_eq!(next.position.seq, 2);
}

#[tokio::test]
async fn a_quiet_topic_with_subscribers_keeps_its_epoch() {
    let redis = RedisServer::start();
    let e = engine(&redis, limits(Duration::from_secs(1))).await;
    let hub = Hub::new(e.clone(), HubConfig::default());
    let t = Topic::new("quiet/room").unwrap();
    let mut sub = hub.subscribe();
    let from = sub.add(t.clone(), None).await.unwrap();
    // Three times the time-to-live with no publish: the node keeps the
    // metadata alive for its subscriber.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(pttl(&redis, &e.keys().meta(&t)) > 0);
    let event = hub
        .publish(NewEvent::new(t.clone(), Data::Text("hi".into())))
        .await
        .unwrap();
    assert_eq!(event.position.epoch, from.epoch);
    match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
        Ok(Delivery::Event(got)) => assert_eq!(got.position, event.position),
        other => panic!("expected the event without a gap, got {other:?}"),
    }
    // Once nobody watches, the keys expire as usual.
    drop(sub);
    let deadline = Instant::now() + Duration::from_secs(6);
    let (meta, stream) = (e.keys().meta(&t), e.keys().stream(&t));
    while integer(&redis.command(&["EXISTS", &meta, &stream])) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(integer(&redis.command(&["EXISTS", &meta, &stream])), 0);
}
