//! A history read that fails while the engine recovers (a Redis failover, a
//! network cut) is retried with backoff: the subscription stays open, and
//! once reads work again it delivers every event, in order, once.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald_core::engine::BoxFuture;
use herald_core::fanout::Fanout;
use herald_core::{
    Data, Delivery, Engine, EngineError, Event, HistoryLimits, Hub, HubConfig, MemoryEngine,
    NewEvent, Position, ReadResult, Topic,
};

/// The memory engine, whose reads fail while `down` is set.
struct Flaky {
    inner: MemoryEngine,
    down: AtomicBool,
    failed: AtomicUsize,
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
        if self.down.load(Ordering::SeqCst) {
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
    let engine = Arc::new(Flaky {
        inner: MemoryEngine::new(HistoryLimits::default()),
        down: AtomicBool::new(false),
        failed: AtomicUsize::new(0),
    });
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
