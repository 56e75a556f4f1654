//! Topic policies on the embedded engine: the suite's per-topic history,
//! ephemeral topics and presence (members in this process, join and leave
//! in order with the topic's events), and proof that an ephemeral topic's
//! events are never written: thousands of them leave the store's folder
//! the size it was.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use herald_core::engine::suite::{self, EngineFactory};
use herald_core::engine::BoxFuture;
use herald_core::{Data, Delivery, Engine, HistoryLimits, Hub, HubConfig, NewEvent, Topic};
use herald_engine_embedded::{EmbeddedConfig, EmbeddedEngine};

struct Fresh;

impl EngineFactory for Fresh {
    type Place = tempfile::TempDir;

    fn place(&self) -> Self::Place {
        tempfile::tempdir().expect("a temporary folder")
    }

    fn open<'a>(
        &'a self,
        dir: &'a Self::Place,
        limits: HistoryLimits,
    ) -> BoxFuture<'a, Arc<dyn Engine>> {
        Box::pin(async move {
            let mut cfg = EmbeddedConfig::new(dir.path()).with_history(limits);
            cfg.commit_delay = Duration::ZERO;
            Arc::new(EmbeddedEngine::open(cfg).expect("open the store")) as Arc<dyn Engine>
        })
    }

    fn durable(&self) -> bool {
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_policies() {
    suite::topic_policies(&Fresh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence() {
    suite::presence(&Fresh).await;
}

/// Bytes of every file under `dir`.
fn folder_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read the folder")
        .flatten()
        .map(|e| {
            let meta = e.metadata().expect("metadata");
            if meta.is_dir() {
                folder_bytes(&e.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_events_never_touch_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Fresh.open(&dir, HistoryLimits::default()).await;
    let hub = Hub::new(
        engine.clone(),
        HubConfig {
            policies: suite::suite_policies(),
            ..HubConfig::default()
        },
    );
    // One stored event first, so that the store has written what it
    // writes at start.
    let kept = Topic::new("kept").unwrap();
    hub.publish(NewEvent::new(kept, Data::Text("x".into())))
        .await
        .unwrap();
    let before = folder_bytes(dir.path());

    let live = Topic::new("live/cursor").unwrap();
    let mut sub = hub.subscribe();
    sub.add(live.clone(), None).await.unwrap();
    let payload = "p".repeat(512);
    let mut last = 0;
    for i in 0..5000 {
        let e = hub
            .publish(NewEvent::new(
                live.clone(),
                Data::Text(payload.clone().into()),
            ))
            .await
            .unwrap();
        assert!(e.position.seq > last, "positions increase");
        last = e.position.seq;
        match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
            Ok(Delivery::Event(got)) => assert_eq!(got.position, e.position),
            other => panic!("expected the event, got {other:?}"),
        }
        // Half of them go to a topic nobody listens to.
        let nobody = Topic::new(&format!("live/nobody/{}", i % 50)).unwrap();
        hub.publish(NewEvent::new(nobody, Data::Text(payload.clone().into())))
            .await
            .unwrap();
    }
    engine.close().await;
    let after = folder_bytes(dir.path());
    // 10,000 events of 512 bytes would be over 5 MB; allow for the
    // store's own bookkeeping only.
    assert!(
        after <= before + 64 * 1024,
        "the folder grew from {before} to {after} bytes"
    );
}
