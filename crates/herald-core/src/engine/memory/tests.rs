//! The memory engine's own behaviour: budget, the expiry timer and its
//! queue, topics held by subscribers. Retention and gaps shared by every
//! engine are in [`crate::engine::suite`].

use super::*;
use crate::engine::{Exhausted, GapReason};
use crate::event::Data;

fn ev(t: &Topic, s: &str) -> NewEvent {
    NewEvent::new(t.clone(), Data::Text(s.into()))
}

fn limits(max_events: usize, max_age: Duration) -> HistoryLimits {
    HistoryLimits {
        max_events,
        max_age,
    }
}

fn attached(e: &MemoryEngine) -> (Arc<Fanout>, Arc<crate::Metrics>) {
    let metrics = Arc::new(crate::Metrics::default());
    let fanout = Arc::new(Fanout::new(metrics.clone()));
    e.attach(fanout.clone());
    (fanout, metrics)
}

#[tokio::test]
async fn topic_budget_refuses_new_topics_only() {
    let e = MemoryEngine::with_epoch(limits(10, Duration::from_secs(60)), 9);
    e.set_budget(Budget {
        max_topics: 2,
        ..Budget::default()
    });
    let (a, b, c) = (
        Topic::new("a").unwrap(),
        Topic::new("b").unwrap(),
        Topic::new("c").unwrap(),
    );
    e.publish(vec![ev(&a, "1")]).await.unwrap();
    e.publish(vec![ev(&b, "1")]).await.unwrap();
    let err = e.publish(vec![ev(&c, "1")]).await.unwrap_err();
    assert!(
        matches!(err, EngineError::ServerFull(Exhausted::Topics { max: 2 })),
        "{err}"
    );
    // A batch with one new topic is refused whole: nothing stored on `a`.
    let err = e.publish(vec![ev(&a, "2"), ev(&c, "1")]).await.unwrap_err();
    assert!(matches!(err, EngineError::ServerFull(_)));
    assert_eq!(e.read(&a, None, 10).await.unwrap().head, 1);
    // Existing topics still take events.
    e.publish(vec![ev(&a, "2")]).await.unwrap();
    assert_eq!(e.usage().0, 2);
}

#[tokio::test]
async fn byte_budget_counts_retained_events() {
    let e = MemoryEngine::with_epoch(limits(2, Duration::from_secs(60)), 9);
    let one = Budget::event_bytes(None, 1000);
    e.set_budget(Budget {
        max_retained_bytes: 3 * one,
        ..Budget::default()
    });
    let (a, b) = (Topic::new("a").unwrap(), Topic::new("b").unwrap());
    let big = "x".repeat(1000);
    e.publish(vec![ev(&a, &big), ev(&a, &big)]).await.unwrap();
    e.publish(vec![ev(&b, &big)]).await.unwrap();
    assert_eq!(e.usage(), (2, 3 * one));
    let err = e.publish(vec![ev(&b, &big)]).await.unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::ServerFull(Exhausted::RetainedBytes { .. })
        ),
        "{err}"
    );
    // `a` keeps 2 events: a third replaces the oldest, so it fits.
    e.publish(vec![ev(&a, &big)]).await.unwrap();
    assert_eq!(e.usage(), (2, 3 * one));
}

#[tokio::test]
async fn timer_expires_history_and_forgets_idle_topics() {
    let e = MemoryEngine::with_epoch(limits(100, Duration::from_millis(100)), 9);
    let (_fanout, metrics) = attached(&e);
    let mut cursors = Vec::new();
    for i in 0..200 {
        let t = Topic::new(&format!("t/{i}")).unwrap();
        let out = e.publish(vec![ev(&t, "x")]).await.unwrap();
        cursors.push((t, out[0].position));
    }
    assert_eq!(e.usage().0, 200);
    assert_eq!(metrics.usage().0, 200);
    // Nobody touches the topics: the timer (every 50 ms) frees them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while e.usage() != (0, 0) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(e.usage(), (0, 0));
    assert_eq!(metrics.usage(), (0, 0));
    assert_eq!(metrics.topics_dropped.load(Ordering::Relaxed), 200);
    // A cursor of a forgotten topic is a gap, and a new event of that
    // topic never reuses its position.
    let (t, old) = cursors[7].clone();
    let r = e.read(&t, Some(old), 10).await.unwrap();
    assert_eq!(r.gap, Some(GapReason::EpochChanged));
    let again = e.publish(vec![ev(&t, "y")]).await.unwrap();
    assert_ne!(again[0].position.epoch, old.epoch);
    let r = e.read(&t, Some(old), 10).await.unwrap();
    assert_eq!(r.gap, Some(GapReason::EpochChanged));
    assert_eq!(r.events.len(), 1);
    // Other buckets keep the engine's first epoch: a quiet topic's
    // cursor (sequence 0) needs no gap, a made-up position gets one.
    let fresh = (0..1000)
        .map(|i| Topic::new(&format!("fresh/{i}")).unwrap())
        .find(|f| e.epoch_of(f) == 9)
        .expect("a topic of an untouched bucket");
    let r = e.read(&fresh, Some(Position::new(9, 0)), 1).await.unwrap();
    assert_eq!(r.gap, None);
    let r = e.read(&fresh, Some(Position::new(9, 3)), 1).await.unwrap();
    assert_eq!(r.gap, Some(GapReason::UnknownPosition));
}

#[tokio::test]
async fn a_subscribed_topic_is_held_until_its_last_subscriber_leaves() {
    let e = MemoryEngine::with_epoch(limits(100, Duration::from_millis(50)), 9);
    let (fanout, metrics) = attached(&e);
    let t = Topic::new("watched").unwrap();
    let q = fanout.new_queue(8, None);
    assert!(fanout.add(&t, &q));
    e.watch(&t);
    let from_now = e.read(&t, None, 10).await.unwrap().from;
    e.publish(vec![ev(&t, "x")]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    e.sweep();
    // The event expired, the topic stays: its subscriber's position holds.
    assert_eq!(e.usage(), (1, 0));
    let r = e.read(&t, Some(from_now), 10).await.unwrap();
    assert_eq!(r.gap, Some(GapReason::HistoryTruncated));
    assert!(fanout.remove(&t, q.id()));
    e.unwatch(&t);
    assert_eq!(e.usage(), (0, 0));
    assert_eq!(metrics.topics_dropped.load(Ordering::Relaxed), 1);
    assert_ne!(e.epoch_of(&t), 9, "forgotten after handing out positions");
    // A watched topic that never had an event leaves no epoch change.
    let u = Topic::new("quiet").unwrap();
    let epoch = e.epoch_of(&u);
    assert!(fanout.add(&u, &q));
    e.watch(&u);
    assert!(fanout.remove(&u, q.id()));
    e.unwatch(&u);
    assert_eq!(e.epoch_of(&u), epoch);
    assert_eq!(e.usage(), (0, 0));
}

#[tokio::test]
async fn the_timer_task_ends_with_the_engine() {
    let alive = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let before = alive();
    let e = MemoryEngine::new(limits(10, Duration::from_millis(40)));
    let _attached = attached(&e);
    assert_eq!(alive(), before + 1);
    drop(e);
    tokio::task::yield_now().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while alive() > before && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(alive(), before);
    let e = MemoryEngine::new(limits(10, Duration::from_millis(40)));
    let _attached = attached(&e);
    assert_eq!(alive(), before + 1);
    e.close().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while alive() > before && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(alive(), before);
}

#[tokio::test]
async fn a_sweep_at_the_exact_expiry_millisecond_ends() {
    let e = MemoryEngine::with_epoch(limits(10, Duration::from_millis(100)), 9);
    let t = Topic::new("edge").unwrap();
    let at = e.publish(vec![ev(&t, "x")]).await.unwrap()[0].published_at_ms;
    // Exactly the age limit: not older than it, so kept (and the pass
    // returns, whatever it re-queues).
    assert_eq!(e.inner.sweep_at(at + 100), 0);
    assert_eq!(e.usage().0, 1);
    assert_eq!(e.inner.sweep_at(at + 101), 1);
    assert_eq!(e.usage(), (0, 0));
}

#[tokio::test]
async fn queue_entries_of_a_forgotten_incarnation_are_skipped() {
    let e = MemoryEngine::with_epoch(limits(10, Duration::from_millis(50)), 9);
    let t = Topic::new("again").unwrap();
    let first = e.publish(vec![ev(&t, "1")]).await.unwrap()[0].published_at_ms;
    tokio::time::sleep(Duration::from_millis(80)).await;
    // A read empties the log, the last subscriber leaving forgets it:
    // its queue entry stays behind.
    assert!(e.read(&t, None, 1).await.unwrap().events.is_empty());
    e.unwatch(&t);
    assert_eq!(e.usage().0, 0);
    let second = e.publish(vec![ev(&t, "2")]).await.unwrap()[0].published_at_ms;
    assert_eq!(e.inner.shard(&t).expiry.len(), 2);
    // The old entry is due; the new incarnation's event is not.
    assert_eq!(e.inner.sweep_at(first + 51), 0);
    assert_eq!(e.usage().0, 1);
    assert_eq!(e.inner.shard(&t).expiry.len(), 1, "the stale entry is gone");
    assert_eq!(e.inner.sweep_at(second + 51), 1);
    assert_eq!(e.inner.shard(&t).expiry.len(), 0);
}

/// The engine suite on the memory engine.
mod suite {
    use super::*;
    use crate::engine::suite::{self, EngineFactory};

    struct Fresh;

    impl EngineFactory for Fresh {
        type Place = ();

        fn place(&self) {}

        fn open<'a>(&'a self, _: &'a (), limits: HistoryLimits) -> BoxFuture<'a, Arc<dyn Engine>> {
            Box::pin(async move { Arc::new(MemoryEngine::new(limits)) as Arc<dyn Engine> })
        }
    }

    #[test]
    fn resume_is_exact() {
        suite::resume_is_exact(&Fresh, 300);
    }

    #[test]
    fn old_cursor_gets_a_gap_then_the_retained_events() {
        suite::old_cursor_gets_a_gap_then_the_retained_events(&Fresh, 256);
    }

    #[test]
    fn concurrent_publishers_race_resume() {
        suite::concurrent_publishers_race_resume(&Fresh, 20, 300);
    }

    #[tokio::test]
    async fn retention_by_count() {
        suite::retention_by_count(&Fresh).await;
    }

    #[tokio::test]
    async fn retention_by_age() {
        suite::retention_by_age(&Fresh).await;
    }

    #[tokio::test]
    async fn gaps_and_epochs() {
        suite::gaps_and_epochs(&Fresh).await;
    }

    #[tokio::test]
    async fn paging_reads_each_event_once() {
        suite::paging_reads_each_event_once(&Fresh).await;
    }

    #[tokio::test]
    async fn starting_points() {
        suite::starting_points(&Fresh).await;
    }

    #[tokio::test]
    async fn idempotency() {
        suite::idempotency(&Fresh).await;
    }

    #[tokio::test]
    async fn one_time_tokens() {
        suite::one_time_tokens(&Fresh).await;
    }

    #[tokio::test]
    async fn topic_policies() {
        suite::topic_policies(&Fresh).await;
    }

    #[tokio::test]
    async fn presence() {
        suite::presence(&Fresh).await;
    }
}

/// An ephemeral topic retains nothing: no bytes counted, and with no
/// subscriber the topic is not held after the publish.
#[test]
fn ephemeral_topics_hold_nothing() {
    let e = MemoryEngine::new(HistoryLimits::default());
    e.set_policies(crate::engine::suite::suite_policies());
    let t = Topic::new("live/x").unwrap();
    let mut last = 0;
    for _ in 0..100 {
        let ev = e
            .inner
            .publish_now(vec![NewEvent::new(t.clone(), Data::Text("x".into()))]);
        last = ev.unwrap()[0].position.seq;
    }
    assert!(last >= 1);
    assert_eq!(e.usage(), (0, 0));
    let stored = Topic::new("kept").unwrap();
    e.inner
        .publish_now(vec![NewEvent::new(stored, Data::Text("x".into()))])
        .unwrap();
    assert_eq!(e.usage().0, 1);
    assert!(e.usage().1 > 0);
}
