//! The Redis engine against a real `redis-server` that each test starts on a
//! free loopback port: two or three hubs play the nodes of a cluster.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_auth::{Auth, Credential, Principal, Source};
use herald_core::one_time::{Capped, OneTimeCaps, OneTimeStore, Taken};
use herald_core::{
    Data, Delivery, Engine, EngineError, GapReason, HistoryLimits, Hub, HubConfig, NewEvent,
    Position, PublishError, Topic,
};
use herald_engine_redis::test_server::RedisServer;
use herald_engine_redis::{RedisConfig, RedisEngine};

const WAIT: Duration = Duration::from_secs(5);

fn topic(s: &str) -> Topic {
    Topic::new(s).unwrap()
}

fn text(t: &Topic, s: &str) -> NewEvent {
    NewEvent::new(t.clone(), Data::Text(s.into()))
}

async fn engine(redis: &RedisServer, history: HistoryLimits) -> Arc<RedisEngine> {
    let mut config = RedisConfig::new(&redis.url(), history);
    config.command_timeout = Duration::from_millis(500);
    config.max_reconnect_delay = Duration::from_millis(200);
    Arc::new(RedisEngine::connect(config).await.expect("engine"))
}

async fn node(redis: &RedisServer) -> (Hub, Arc<RedisEngine>) {
    let e = engine(redis, HistoryLimits::default()).await;
    (Hub::new(e.clone(), HubConfig::default()), e)
}

async fn next(sub: &mut herald_core::Subscription) -> Delivery {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a delivery in time")
}

async fn next_text(sub: &mut herald_core::Subscription) -> (Position, String) {
    match next(sub).await {
        Delivery::Event(e) => (e.position, e.data.as_sse_text().to_owned()),
        other => panic!("expected an event, got {other:?}"),
    }
}

async fn expect_quiet(sub: &mut herald_core::Subscription) {
    if let Ok(d) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        panic!("unexpected delivery {d:?}");
    }
}

#[tokio::test]
async fn a_publish_reaches_every_node_once_in_order() {
    let redis = RedisServer::start();
    let (a, _) = node(&redis).await;
    let (b, _) = node(&redis).await;
    let (c, _) = node(&redis).await;
    let t = topic("orders/1");
    let mut subs = Vec::new();
    for hub in [&a, &b, &c] {
        let mut s = hub.subscribe();
        s.add(t.clone(), None).await.unwrap();
        subs.push(s);
    }
    // Publishes from every node interleave into one order.
    for i in 0..30 {
        let hub = [&a, &b, &c][i % 3];
        hub.publish(text(&t, &i.to_string())).await.unwrap();
    }
    for s in &mut subs {
        for i in 0..30u64 {
            let (p, d) = next_text(s).await;
            assert_eq!((p.seq, d), (i + 1, i.to_string()));
        }
        expect_quiet(s).await;
    }
}

#[tokio::test]
async fn a_cursor_from_one_node_resumes_exactly_on_another() {
    let redis = RedisServer::start();
    let (a, _) = node(&redis).await;
    let (b, _) = node(&redis).await;
    let t = topic("chat/room");
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(a.publish(text(&t, &i.to_string())).await.unwrap().position);
    }
    let mut s = b.subscribe();
    s.add(t.clone(), Some(ids[3])).await.unwrap();
    for i in 4..10 {
        assert_eq!(next_text(&mut s).await.1, i.to_string());
    }
    b.publish(text(&t, "10")).await.unwrap();
    assert_eq!(next_text(&mut s).await.1, "10");
    expect_quiet(&mut s).await;
}

/// Retention itself is in the engine suite (`tests/suite.rs`); here, that
/// aged events leave Redis, not only the answers.
#[tokio::test]
async fn aged_events_are_trimmed_in_redis_too() {
    let redis = RedisServer::start();
    let e = engine(
        &redis,
        HistoryLimits {
            max_events: 100,
            max_age: Duration::from_millis(200),
        },
    )
    .await;
    let t = topic("aging");
    let old = e.publish(vec![text(&t, "old")]).await.unwrap()[0].position;
    // Wait until the old event has aged out of what a read returns.
    let from = Some(Position::new(old.epoch, 0));
    let deadline = Instant::now() + WAIT;
    while e.read(&t, from, 10).await.unwrap().gap.is_none() {
        assert!(Instant::now() < deadline, "the old event never aged out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    e.publish(vec![text(&t, "new")]).await.unwrap();
    let r = e.read(&t, from, 10).await.unwrap();
    assert_eq!(r.gap, Some(GapReason::HistoryTruncated));
    assert_eq!(r.events.len(), 1);
    assert_eq!(r.events[0].data, Data::Text("new".into()));
    // Trimmed in Redis too, not only hidden.
    assert!(redis
        .command(&["XLEN", &e.keys().stream(&t)])
        .starts_with(":1"));
}

#[tokio::test]
async fn a_lost_stream_starts_a_new_epoch_and_clients_are_told() {
    let redis = RedisServer::start();
    let (a, e) = node(&redis).await;
    let t = topic("news");
    let first = a.publish(text(&t, "1")).await.unwrap().position;
    a.publish(text(&t, "2")).await.unwrap();
    let mut live = a.subscribe();
    live.add(t.clone(), Some(first)).await.unwrap();
    assert_eq!(next_text(&mut live).await.1, "2");

    // The stream disappears (eviction); its metadata says events existed.
    redis.command(&["DEL", &e.keys().stream(&t)]);
    let r = e.read(&t, Some(first), 10).await.unwrap();
    assert_eq!(r.gap, Some(GapReason::EpochChanged));
    assert_ne!(r.epoch, first.epoch);

    // Everything is lost (a restart without persistence): same signal.
    redis.command(&["FLUSHALL"]);
    let mut resumed = a.subscribe();
    resumed.add(t.clone(), Some(first)).await.unwrap();
    match next(&mut resumed).await {
        Delivery::Gap(g) => assert_eq!(g.reason, GapReason::EpochChanged),
        other => panic!("expected a gap, got {other:?}"),
    }
    // The live subscriber learns at the next event.
    a.publish(text(&t, "3")).await.unwrap();
    match next(&mut live).await {
        Delivery::Gap(g) => assert_eq!(g.reason, GapReason::EpochChanged),
        other => panic!("expected a gap, got {other:?}"),
    }
    assert_eq!(next_text(&mut live).await.1, "3");
    assert_eq!(next_text(&mut resumed).await.1, "3");
}

#[tokio::test]
async fn a_node_listens_only_to_topics_its_clients_use() {
    let redis = RedisServer::start();
    let (a, e) = node(&redis).await;
    let (b, _) = node(&redis).await;
    let used = topic("used");
    let channels = || redis.command(&["PUBSUB", "SHARDCHANNELS"]);
    let mut s1 = a.subscribe();
    s1.add(used.clone(), None).await.unwrap();
    let mut s2 = a.subscribe();
    s2.add(used.clone(), None).await.unwrap();
    b.publish(text(&topic("unused"), "x")).await.unwrap();
    let deadline = Instant::now() + WAIT;
    while !channels().contains(&e.keys().channel(&used)) {
        assert!(
            Instant::now() < deadline,
            "never subscribed: {}",
            channels()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!channels().contains("unused"), "{}", channels());
    assert!(channels().starts_with("*1\r\n"), "{}", channels());
    drop(s1);
    // A barrier: the node handles subscribe and unsubscribe requests in
    // order, so once a later topic's channel is subscribed, a (wrong)
    // unsubscribe of `used` would have been done.
    let probe = topic("probe");
    let mut s3 = a.subscribe();
    s3.add(probe.clone(), None).await.unwrap();
    while !channels().contains(&e.keys().channel(&probe)) {
        assert!(
            Instant::now() < deadline,
            "never subscribed: {}",
            channels()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(channels().contains(&e.keys().channel(&used)));
    drop(s2);
    drop(s3);
    while channels() != "*0\r\n" {
        assert!(
            Instant::now() < deadline,
            "never unsubscribed: {}",
            channels()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_outage_fails_fast_keeps_subscribers_and_loses_nothing() {
    let redis = RedisServer::start_persistent();
    let (a, ea) = node(&redis).await;
    let (b, _) = node(&redis).await;
    let t = topic("orders/9");
    let mut sub = b.subscribe();
    sub.add(t.clone(), None).await.unwrap();
    a.publish(text(&t, "before")).await.unwrap();
    assert_eq!(next_text(&mut sub).await.1, "before");

    redis.stop();
    let started = Instant::now();
    let err = a.publish(text(&t, "during")).await.unwrap_err();
    assert!(
        matches!(err, PublishError::Engine(EngineError::Unavailable(_))),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(ea.ready().await.is_err());
    // The subscription stays open: nothing is delivered, not even a close.
    expect_quiet(&mut sub).await;

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ea.ready().await.is_err() {
        assert!(Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut published = Vec::new();
    for i in 0..5 {
        loop {
            match a.publish(text(&t, &format!("after {i}"))).await {
                Ok(e) => {
                    published.push(e.position.seq);
                    break;
                }
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("{e:?}"),
            }
        }
    }
    assert_eq!(published, [2, 3, 4, 5, 6], "persistence kept the position");
    for i in 0..5 {
        assert_eq!(next_text(&mut sub).await.1, format!("after {i}"));
    }
    expect_quiet(&mut sub).await;
}

#[tokio::test]
async fn idempotent_ids_hold_across_nodes() {
    let redis = RedisServer::start();
    let (a, ea) = node(&redis).await;
    let (b, _) = node(&redis).await;
    let t = topic("pay/1");
    let mut e = text(&t, "charge");
    e.idempotency_key = Some("op-1".into());
    let first = a.publish(e.clone()).await.unwrap();
    let again = b.publish(e.clone()).await.unwrap();
    assert_eq!(first.position, again.position);
    assert_eq!(again.data, Data::Text("charge".into()));
    // Concurrent retries on both nodes: one event in all.
    let mut e2 = text(&t, "refund");
    e2.idempotency_key = Some("op-2".into());
    let (x, y) = tokio::join!(a.publish(e2.clone()), b.publish(e2.clone()));
    assert_eq!(x.unwrap().position, y.unwrap().position);
    let r = ea
        .read(&t, Some(Position::new(first.position.epoch, 0)), 10)
        .await
        .unwrap();
    assert_eq!(r.events.len(), 2);
}

#[tokio::test]
async fn one_time_tokens_are_redeemed_once_across_nodes() {
    let redis = RedisServer::start();
    let (_, ea) = node(&redis).await;
    let (_, eb) = node(&redis).await;
    let mut auth_a = Auth::open();
    auth_a.set_one_time_store(Arc::new(ea.one_time_tokens()));
    let mut auth_b = Auth::open();
    auth_b.set_one_time_store(Arc::new(eb.one_time_tokens()));
    let (token, _) = auth_a
        .issue_one_time_async(&Principal::Publisher)
        .await
        .unwrap();
    let cred = || Some(Credential::new(token.clone(), Source::Query));
    assert_eq!(
        auth_b.authenticate_async(cred()).await,
        Ok(Principal::Publisher)
    );
    assert!(auth_a.authenticate_async(cred()).await.is_err());
    assert!(auth_b.authenticate_async(cred()).await.is_err());

    // Tokens expire.
    let store = ea.one_time_tokens();
    let caps = OneTimeCaps {
        per_owner: 10,
        total: 10,
    };
    let put = store
        .put("ot_x", "v".into(), Duration::from_millis(50), "x", caps)
        .await
        .unwrap();
    assert_eq!(put, Capped::Stored);
    let key = ea.keys().one_time_token("ot_x");
    let deadline = Instant::now() + WAIT;
    while !redis.command(&["EXISTS", &key]).starts_with(":0") {
        assert!(Instant::now() < deadline, "the token never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.take("ot_x").await.unwrap(), Taken::Unknown);
}
