//! Bounded state through the hub: idempotent retries answered from records
//! that hold no payload, forgotten topics resumed with a gap, and a "from
//! now" subscriber on a quiet topic that sees no spurious gap while topics
//! around it are forgotten.

use std::time::Duration;

use herald_core::engine::{Budget, Exhausted};
use herald_core::{
    Data, Delivery, EngineError, GapReason, HistoryLimits, Hub, HubConfig, NewEvent, PublishError,
    Topic,
};

fn hub(max_age: Duration, idempotency_max_keys: usize) -> Hub {
    Hub::memory(HubConfig {
        history: HistoryLimits {
            max_events: 10,
            max_age,
        },
        idempotency_max_keys,
        ..HubConfig::default()
    })
}

fn with_id(topic: &Topic, data: &str, id: &str) -> NewEvent {
    let mut e = NewEvent::new(topic.clone(), Data::Text(data.into()));
    e.idempotency_key = Some(id.into());
    e
}

async fn next(sub: &mut herald_core::Subscription) -> Delivery {
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("a delivery in time")
}

#[tokio::test]
async fn a_retry_is_answered_with_the_original_position_until_evicted() {
    let hub = hub(Duration::from_secs(60), 2);
    let t = Topic::new("orders/1").unwrap();
    let first = hub.publish(with_id(&t, "paid", "a")).await.unwrap();
    let retry = hub.publish(with_id(&t, "paid", "a")).await.unwrap();
    assert_eq!(retry.position, first.position);
    assert_eq!(retry.published_at_ms, first.published_at_ms);
    assert_eq!(retry.data, Data::Text("paid".into()));
    // Two newer ids push "a" out of the store (count bound 2): a retry now
    // publishes again, as documented.
    hub.publish(with_id(&t, "x", "b")).await.unwrap();
    hub.publish(with_id(&t, "y", "c")).await.unwrap();
    let late = hub.publish(with_id(&t, "paid", "a")).await.unwrap();
    assert!(late.position.seq > first.position.seq);
}

#[tokio::test]
async fn a_forgotten_topic_resumes_with_a_gap_and_quiet_subscribers_see_none() {
    let hub = hub(Duration::from_millis(100), 100);
    let quiet = Topic::new("quiet").unwrap();
    let mut watcher = hub.subscribe();
    watcher.add(quiet.clone(), None).await.unwrap();
    let gone = Topic::new("gone").unwrap();
    let old = hub
        .publish(NewEvent::new(gone.clone(), Data::Text("1".into())))
        .await
        .unwrap();
    // The timer (every 50 ms) forgets `gone`, which changes the epoch of
    // topics created from now on; `quiet` is held by its subscriber.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while hub.metrics().usage().0 != 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(hub.metrics().usage(), (1, 0));
    let mut resumed = hub.subscribe();
    resumed.add(gone.clone(), Some(old.position)).await.unwrap();
    match next(&mut resumed).await {
        Delivery::Gap(g) => {
            assert_eq!(g.reason, GapReason::EpochChanged);
            assert_eq!(g.topic, gone);
        }
        other => panic!("expected a gap, got {other:?}"),
    }
    // The quiet topic's first event arrives as the next one, no gap.
    hub.publish(NewEvent::new(quiet.clone(), Data::Text("hello".into())))
        .await
        .unwrap();
    match next(&mut watcher).await {
        Delivery::Event(e) => assert_eq!(e.data, Data::Text("hello".into())),
        other => panic!("expected the event, got {other:?}"),
    }
}

#[tokio::test]
async fn a_refused_publish_is_counted_and_releases_its_id() {
    let hub = Hub::memory(HubConfig {
        budget: Budget {
            max_topics: 1,
            ..Budget::default()
        },
        ..HubConfig::default()
    });
    let (a, b) = (Topic::new("a").unwrap(), Topic::new("b").unwrap());
    hub.publish(with_id(&a, "1", "x")).await.unwrap();
    let err = hub.publish(with_id(&b, "1", "y")).await.unwrap_err();
    assert!(
        matches!(
            err,
            PublishError::Engine(EngineError::ServerFull(Exhausted::Topics { max: 1 }))
        ),
        "{err}"
    );
    assert_eq!(
        hub.metrics()
            .budget_refusals
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The id was not recorded: the same retry is refused again, not
    // answered with a position that was never stored.
    let err = hub.publish(with_id(&b, "1", "y")).await.unwrap_err();
    assert!(matches!(
        err,
        PublishError::Engine(EngineError::ServerFull(_))
    ));
}

#[tokio::test]
async fn a_back_fill_of_large_events_is_paged_by_bytes_and_loses_nothing() {
    let hub = hub(Duration::from_secs(60), 100);
    let t = Topic::new("big/1").unwrap();
    // The starting point: before any event.
    let mut start = hub.subscribe();
    let from = start.add(t.clone(), None).await.unwrap();
    drop(start);
    let chunk = "x".repeat(512 * 1024);
    let mut published = Vec::new();
    for i in 0..8 {
        let e = hub
            .publish(NewEvent::new(
                t.clone(),
                Data::Text(format!("{i}{chunk}").into()),
            ))
            .await
            .unwrap();
        published.push(e.position);
    }
    // 4 MiB of history: read back in pages of about 1 MiB, every event once, in order.
    let mut sub = hub.subscribe();
    sub.add(t.clone(), Some(from)).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..8 {
        match next(&mut sub).await {
            Delivery::Event(e) => {
                assert_eq!(e.data.len(), chunk.len() + 1);
                got.push(e.position);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, published);
}
