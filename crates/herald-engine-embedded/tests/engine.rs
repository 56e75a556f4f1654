//! The embedded engine through the `Engine` trait and a `Hub`: durability
//! across restarts, retention by count and by age on disk, 10,000 topics,
//! dropped topics, idempotency records, budgets and hot tails. Refusals of
//! damaged or foreign stores are in `refusals.rs`; the engine suite of
//! herald-core in `suite.rs`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{config, ev, open, texts, topic, HOUR};
use herald_core::{Data, Delivery, Engine, GapReason, Hub, HubConfig, NewEvent, Position, Topic};
use herald_engine_embedded::EmbeddedConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_positions_and_epoch_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (topic("orders/1"), topic("orders/2"));
    let e = open(config(dir.path(), 1000, HOUR));
    let epoch = e.epoch();
    let mut stored = Vec::new();
    for i in 0..50 {
        let t = if i % 3 == 0 { &b } else { &a };
        let mut new = ev(t, &format!("{i}"));
        if i % 5 == 0 {
            new = new.named("tick");
        }
        stored.extend(e.publish(vec![new]).await.unwrap());
    }
    // A batch is stored in order, with consecutive positions.
    let batch = e
        .publish(vec![ev(&a, "x"), ev(&a, "y"), ev(&b, "z")])
        .await
        .unwrap();
    assert_eq!(batch[1].position.seq, batch[0].position.seq + 1);
    stored.extend(batch);
    e.close().await;
    // After close, publishes are refused and reads say the engine is closed.
    assert!(e.publish(vec![ev(&a, "late")]).await.is_err());
    assert!(e.ready().await.is_err());
    drop(e);

    let e = open(config(dir.path(), 1000, HOUR));
    assert_eq!(e.epoch(), epoch, "the epoch is kept");
    for t in [&a, &b] {
        let r = e
            .read(t, Some(Position::new(epoch, 0)), 1000)
            .await
            .unwrap();
        assert_eq!(r.gap, None);
        let want: Vec<_> = stored.iter().filter(|s| &s.topic == t).collect();
        assert_eq!(r.events.len(), want.len());
        for (got, want) in r.events.iter().zip(want) {
            assert_eq!(got.position, want.position);
            assert_eq!(got.id(), want.id(), "cursor ids are unchanged");
            assert_eq!(got.name, want.name);
            assert_eq!(got.data, want.data);
            assert_eq!(got.published_at_ms, want.published_at_ms);
        }
        assert_eq!(r.head, want_head(&stored, t));
    }
    // Sequences continue after the restart.
    let next = e.publish(vec![ev(&a, "after")]).await.unwrap();
    assert_eq!(next[0].position.seq, want_head(&stored, &a) + 1);
    // A topic with no event yet has the store's epoch, so a cursor issued
    // for it before the restart resumes without a gap.
    let r = e
        .read(&topic("never"), Some(Position::new(epoch, 0)), 10)
        .await
        .unwrap();
    assert_eq!((r.epoch, r.gap), (epoch, None));
    e.close().await;
}

fn want_head(stored: &[Arc<herald_core::Event>], t: &Topic) -> u64 {
    stored
        .iter()
        .filter(|s| &s.topic == t)
        .map(|s| s.position.seq)
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_beyond_the_hot_tail_come_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1000, HOUR);
    cfg.hot_tail = 4;
    let e = open(cfg);
    let t = topic("t");
    for i in 1..=40 {
        e.publish(vec![ev(&t, &i.to_string())]).await.unwrap();
    }
    let epoch = e.epoch();
    // Every starting point and page size returns exactly the next events.
    for after in 0..40u64 {
        for limit in [1usize, 3, 7, 100] {
            let r = e
                .read(&t, Some(Position::new(epoch, after)), limit)
                .await
                .unwrap();
            let want: Vec<String> = (after + 1..=40.min(after + limit as u64))
                .map(|i| i.to_string())
                .collect();
            assert_eq!(texts(&r.events), want, "after {after} limit {limit}");
            assert_eq!(r.from, Position::new(epoch, after));
        }
    }
    e.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_count_survives_restarts_and_deletes_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let t = topic("t");
    let e = open(config(dir.path(), 5, HOUR));
    let epoch = e.epoch();
    for i in 1..=20 {
        e.publish(vec![ev(&t, &i.to_string())]).await.unwrap();
    }
    let check = |r: herald_core::ReadResult| {
        assert_eq!(r.gap, Some(GapReason::HistoryTruncated));
        assert_eq!(r.from, Position::new(epoch, 15));
        assert_eq!(texts(&r.events), ["16", "17", "18", "19", "20"]);
    };
    check(
        e.read(&t, Some(Position::new(epoch, 3)), 100)
            .await
            .unwrap(),
    );
    // A cursor inside the kept history resumes without a gap.
    let r = e
        .read(&t, Some(Position::new(epoch, 17)), 100)
        .await
        .unwrap();
    assert_eq!(
        (r.gap, texts(&r.events)),
        (None, vec!["18".into(), "19".into(), "20".into()])
    );
    e.close().await;
    drop(e);
    let e = open(config(dir.path(), 5, HOUR));
    check(
        e.read(&t, Some(Position::new(epoch, 3)), 100)
            .await
            .unwrap(),
    );
    e.close().await;
    drop(e);
    // The dropped events are gone from disk, not only hidden: a larger
    // limit does not bring them back.
    let e = open(config(dir.path(), 1000, HOUR));
    check(
        e.read(&t, Some(Position::new(epoch, 3)), 100)
            .await
            .unwrap(),
    );
    // A lower limit applies at once on open.
    e.close().await;
    drop(e);
    let e = open(config(dir.path(), 2, HOUR));
    let r = e
        .read(&t, Some(Position::new(epoch, 0)), 100)
        .await
        .unwrap();
    assert_eq!(texts(&r.events), ["19", "20"]);
    e.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_age_without_new_publishes() {
    let dir = tempfile::tempdir().unwrap();
    let (old, mixed) = (topic("old"), topic("mixed"));
    let max_age = Duration::from_millis(400);
    let e = open(config(dir.path(), 1000, max_age));
    let epoch = e.epoch();
    e.publish(vec![ev(&old, "a"), ev(&old, "b"), ev(&mixed, "early")])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    e.publish(vec![ev(&mixed, "late")]).await.unwrap();
    // Bounded wait for the age pass (it runs every max_age / 4): the old
    // events go, then the topic itself (nothing retained, no subscriber).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = e
            .read(&old, Some(Position::new(epoch, 0)), 100)
            .await
            .unwrap();
        assert!(r.events.is_empty() || texts(&r.events) == ["a", "b"]);
        if r.events.is_empty() && r.gap == Some(GapReason::HistoryTruncated) {
            assert_eq!(r.from, Position::new(epoch, 2));
        }
        if r.gap == Some(GapReason::EpochChanged) {
            // Dropped: reads report the epoch new topics get, and nothing.
            assert_ne!(r.epoch, epoch);
            assert_eq!((r.head, r.events.len()), (0, 0));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the expired topic was not dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = e
        .read(&mixed, Some(Position::new(epoch, 0)), 100)
        .await
        .unwrap();
    assert_eq!(
        texts(&r.events),
        ["late"],
        "only the expired event is dropped"
    );
    // Even the cursor at the old head gets a gap: a later topic of that
    // name never continues its positions.
    let r = e
        .read(&old, Some(Position::new(epoch, 2)), 100)
        .await
        .unwrap();
    assert_eq!((r.gap, r.events.len()), (Some(GapReason::EpochChanged), 0));
    let topic_epoch = e.topic_epoch();
    assert_ne!(topic_epoch, epoch);
    assert_eq!(e.topic_count(), 1, "only `mixed` is held");
    e.close().await;
    drop(e);
    // Dropped for good: a restart with a long age limit does not bring it back.
    let e = open(config(dir.path(), 1000, HOUR));
    assert_eq!(e.topic_count(), 1);
    assert_eq!(e.topic_epoch(), topic_epoch);
    let r = e
        .read(&old, Some(Position::new(epoch, 2)), 100)
        .await
        .unwrap();
    assert_eq!(
        (r.gap, r.events.len(), r.head),
        (Some(GapReason::EpochChanged), 0, 0)
    );
    let next = e.publish(vec![ev(&old, "c")]).await.unwrap();
    assert_eq!(next[0].position, Position::new(topic_epoch, 1));
    e.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_ten_thousand_topics() {
    let dir = tempfile::tempdir().unwrap();
    const TOPICS: usize = 10_000;
    let names: Vec<Topic> = (0..TOPICS)
        .map(|i| topic(&format!("users/{i}/feed")))
        .collect();
    let e = open(config(dir.path(), 1000, HOUR));
    let epoch = e.epoch();
    let started = Instant::now();
    for round in 0..2 {
        for chunk in names.chunks(500) {
            let batch = chunk
                .iter()
                .map(|t| ev(t, &format!("{t} {round}")))
                .collect();
            e.publish(batch).await.unwrap();
        }
    }
    let publish_time = started.elapsed();
    e.close().await;
    drop(e);
    let started = Instant::now();
    let e = open(config(dir.path(), 1000, HOUR));
    let open_time = started.elapsed();
    eprintln!(
        "10,000 topics: published 20,000 events in {publish_time:?}, reopened in {open_time:?}"
    );
    assert!(
        open_time < Duration::from_secs(30),
        "reopen took {open_time:?}"
    );
    for t in &names {
        let r = e.read(t, Some(Position::new(epoch, 0)), 10).await.unwrap();
        assert_eq!(r.gap, None);
        assert_eq!(texts(&r.events), [format!("{t} 0"), format!("{t} 1")]);
    }
    let next = e.publish(vec![ev(&names[1234], "more")]).await.unwrap();
    assert_eq!(next[0].position, Position::new(epoch, 3));
    e.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_subscribers_get_live_events_after_a_restart_resume() {
    let dir = tempfile::tempdir().unwrap();
    let t = topic("chat/1");
    let config = HubConfig::default();
    let hub = Hub::new(
        Arc::new(open(EmbeddedConfig::new(dir.path()))),
        config.clone(),
    );
    let mut sub = hub.subscribe();
    sub.add(t.clone(), None).await.unwrap();
    for i in 0..3 {
        hub.publish(ev(&t, &i.to_string())).await.unwrap();
    }
    let mut cursor = None;
    for _ in 0..2 {
        match tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
        {
            Delivery::Event(e) => cursor = Some(e.position),
            other => panic!("{other:?}"),
        }
    }
    drop(sub);
    hub.engine().close().await;
    drop(hub);

    let hub = Hub::new(Arc::new(open(EmbeddedConfig::new(dir.path()))), config);
    let mut sub = hub.subscribe();
    sub.add(t.clone(), cursor).await.unwrap();
    hub.publish(ev(&t, "3")).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        match tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
        {
            Delivery::Event(e) => got.push(e.data.as_sse_text().to_owned()),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, ["2", "3"]);
    hub.engine().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_topics_are_dropped_and_stay_dropped() {
    let dir = tempfile::tempdir().unwrap();
    const TOPICS: usize = 10_000;
    let e = open(config(dir.path(), 1000, Duration::from_secs(2)));
    let names: Vec<Topic> = (0..TOPICS).map(|i| topic(&format!("once/{i}"))).collect();
    for chunk in names.chunks(1000) {
        e.publish(chunk.iter().map(|t| ev(t, "x")).collect())
            .await
            .unwrap();
    }
    assert_eq!(e.topic_count(), TOPICS);
    let deadline = Instant::now() + Duration::from_secs(20);
    while e.topic_count() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} topics still held",
            e.topic_count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    e.close().await;
    drop(e);
    let e = open(config(dir.path(), 1000, HOUR));
    assert_eq!(e.topic_count(), 0);
    e.close().await;
}

fn with_id(t: &Topic, s: &str, id: &str) -> NewEvent {
    let mut e = ev(t, s);
    e.idempotency_key = Some(id.into());
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_records_survive_a_restart_and_expire_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let t = topic("orders");
    let hub_config = |ttl: Duration| HubConfig {
        idempotency_ttl: ttl,
        ..HubConfig::default()
    };
    let hub = Hub::new(
        Arc::new(open(config(dir.path(), 1000, HOUR))),
        hub_config(HOUR),
    );
    let first = hub.publish(with_id(&t, "a", "id-1")).await.unwrap();
    let second = hub.publish(with_id(&t, "b", "id-2")).await.unwrap();
    hub.engine().close().await;
    drop(hub);
    // After a restart, retries are answered with the first positions and
    // store nothing.
    let engine = Arc::new(open(config(dir.path(), 1000, HOUR)));
    assert_eq!(engine.idempotency_records(), 2);
    let hub = Hub::new(engine.clone(), hub_config(Duration::from_millis(300)));
    let again = hub.publish(with_id(&t, "a", "id-1")).await.unwrap();
    assert_eq!(
        (again.position, again.published_at_ms),
        (first.position, first.published_at_ms)
    );
    let again = hub.publish(with_id(&t, "b", "id-2")).await.unwrap();
    assert_eq!(again.position, second.position);
    let r = engine
        .read(&t, Some(Position::new(first.position.epoch, 0)), 100)
        .await
        .unwrap();
    assert_eq!(texts(&r.events), ["a", "b"]);
    // The same id on another topic is another publish.
    let other = hub
        .publish(with_id(&topic("other"), "c", "id-1"))
        .await
        .unwrap();
    assert_eq!(other.position.seq, 1);
    // Past the TTL the timer removes the records from disk, and a retry is
    // a new publish.
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.idempotency_records() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} records left",
            engine.idempotency_records()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let late = hub.publish(with_id(&t, "a", "id-1")).await.unwrap();
    assert_eq!(late.position.seq, 3);
    hub.engine().close().await;
    drop(hub);
    drop(engine);
    let engine = open(config(dir.path(), 1000, HOUR));
    assert_eq!(engine.idempotency_records(), 1, "only the late publish's");
    engine.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_topic_budget_refuses_new_topics_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut hub_config = HubConfig::default();
    hub_config.budget.max_topics = 3;
    let engine = Arc::new(open(config(dir.path(), 1000, HOUR)));
    let hub = Hub::new(engine.clone(), hub_config);
    let (a, b, c, d) = (topic("a"), topic("b"), topic("c"), topic("d"));
    hub.publish_batch(vec![ev(&a, "1"), ev(&b, "1")])
        .await
        .unwrap();
    // c fits, d does not: the batch is refused whole.
    let err = hub
        .publish_batch(vec![ev(&c, "1"), ev(&d, "1")])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            herald_core::PublishError::Engine(herald_core::EngineError::ServerFull(_))
        ),
        "{err:?}"
    );
    assert_eq!(engine.topic_count(), 2, "nothing of the refused batch");
    hub.publish(ev(&c, "1")).await.unwrap();
    hub.publish(ev(&a, "2")).await.unwrap();
    assert!(hub.publish(ev(&d, "1")).await.is_err());
    engine.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_tails_are_bounded_by_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1000, HOUR);
    cfg.hot_tail_bytes = 1 << 20;
    cfg.hot_tail_total_bytes = 4 << 20;
    let e = open(cfg);
    let big: Box<str> = "x".repeat(200_000).into();
    let topics: Vec<Topic> = (0..20).map(|i| topic(&format!("big/{i}"))).collect();
    for _ in 0..10 {
        let batch = topics
            .iter()
            .map(|t| NewEvent::new(t.clone(), Data::Text(big.clone())))
            .collect();
        e.publish(batch).await.unwrap();
        assert!(
            e.hot_tail_bytes() <= 4 << 20,
            "{} bytes in the tails",
            e.hot_tail_bytes()
        );
    }
    // Every event is still read, from the disk when not in memory.
    let epoch = e.epoch();
    for t in &topics {
        let r = e.read(t, Some(Position::new(epoch, 0)), 100).await.unwrap();
        assert_eq!(r.events.len(), 10);
        assert!(e.hot_tail_bytes() <= 4 << 20);
    }
    e.close().await;
}
