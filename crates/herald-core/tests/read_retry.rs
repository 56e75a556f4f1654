//! A history read that fails while the engine recovers (a Redis failover, a
//! network cut) is retried with backoff: the subscription stays open, and
//! once reads work again it delivers every event, in order, once; the
//! subscription's other topics go on meanwhile.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_core::engine::BoxFuture;
use herald_core::fanout::Fanout;
use herald_core::{
    Data, Delivery, Engine, EngineError, Event, HistoryLimits, Hub, HubConfig, MemoryEngine,
    NewEvent, Position, ReadResult, Topic,
};

/// The memory engine, whose reads fail while `down` is set, or for one
/// topic (its master is down).
struct Flaky {
    inner: MemoryEngine,
    down: AtomicBool,
    failing: Mutex<Option<Topic>>,
    failed: AtomicUsize,
}

impl Flaky {
    fn new() -> Flaky {
        Flaky {
            inner: MemoryEngine::new(HistoryLimits::default()),
            down: AtomicBool::new(false),
            failing: Mutex::new(None),
            failed: AtomicUsize::new(0),
        }
    }
}

impl Engine for Flaky {
    fn attach(&self, fanout: Arc<Fanout>) {
        self.inner.attach(fanout)
    }

    fn publish(
        &self,
        events: Vec<NewEvent>,
    ) -> BoxFuture<'_, Result<Vec<Arc<Event>>, EngineError>> {
        self.inner.publish(events)
    }

    fn read<'a>(
        &'a self,
        topic: &'a Topic,
        after: Option<Position>,
        limit: usize,
    ) -> BoxFuture<'a, Result<ReadResult, EngineError>> {
        let failing = self.failing.lock().unwrap().as_ref() == Some(topic);
        if failing || self.down.load(Ordering::SeqCst) {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Box::pin(async { Err(EngineError::Unavailable("recovering".into())) });
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

fn text(t: &Topic, s: &str) -> NewEvent {
    NewEvent::new(t.clone(), Data::Text(s.into()))
}

#[tokio::test]
async fn a_failed_back_fill_is_retried_and_the_subscription_stays_open() {
    let engine = Arc::new(Flaky::new());
    // One event per history read, so that the back-fill needs several.
    let hub = Hub::new(
        engine.clone(),
        HubConfig {
            read_page: 1,
            ..HubConfig::default()
        },
    );
    let t = Topic::new("orders/1").unwrap();
    let start = hub.publish(text(&t, "0")).await.unwrap().position;
    for i in 1..=3 {
        hub.publish(text(&t, &i.to_string())).await.unwrap();
    }
    let mut sub = hub.subscribe();
    sub.add(t.clone(), Some(start)).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("the first page");
    assert!(
        matches!(&first, Delivery::Event(e) if e.data == Data::Text("1".into())),
        "{first:?}"
    );
    // Reads fail from now on: the rest of the back-fill cannot be read.
    engine.down.store(true, Ordering::SeqCst);
    let waited = tokio::time::timeout(Duration::from_millis(1500), sub.next()).await;
    assert!(
        waited.is_err(),
        "nothing to deliver while reads fail: {waited:?}"
    );
    let failed = engine.failed.load(Ordering::SeqCst);
    assert!(
        (2..=20).contains(&failed),
        "retried with backoff, not once and not in a loop: {failed} reads"
    );
    // Live events keep coming meanwhile; the engine recovers.
    hub.publish(text(&t, "4")).await.unwrap();
    engine.down.store(false, Ordering::SeqCst);
    let mut got = Vec::new();
    while got.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("delivered after recovery")
        {
            Delivery::Event(e) => match &e.data {
                Data::Text(s) => got.push(s.to_string()),
                other => panic!("{other:?}"),
            },
            other => panic!("expected events, got {other:?}"),
        }
    }
    assert_eq!(got, ["2", "3", "4"]);
}

/// A WebSocket-style subscription holds topic B; the client subscribes to
/// topic A whose reads fail: the subscribe is refused (503) and leaves
/// nothing behind, and B keeps being delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_topic_whose_reads_fail_does_not_stall_the_others() {
    let engine = Arc::new(Flaky::new());
    let hub = Hub::new(
        engine.clone(),
        HubConfig {
            queue_capacity: 16,
            ..HubConfig::default()
        },
    );
    let (a, b) = (Topic::new("down/a").unwrap(), Topic::new("up/b").unwrap());
    let mut sub = hub.subscribe();
    sub.add(b.clone(), None).await.unwrap();
    *engine.failing.lock().unwrap() = Some(a.clone());
    assert!(sub.add(a.clone(), None).await.is_err());
    assert!(sub.position(&a).is_none(), "a refused topic stays out");
    // Fewer than the queue holds: a slow reader is not what this tests.
    for i in 0..10 {
        hub.publish(text(&b, &i.to_string())).await.unwrap();
    }
    for i in 0..10 {
        match tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
            Ok(Delivery::Event(e)) => {
                assert_eq!(e.topic, b);
                assert_eq!(e.data, Data::Text(i.to_string().into()));
            }
            other => panic!("B is not delivered while A's reads fail: {other:?}"),
        }
    }
}
