//! Topic policies on the Redis engine, against a `redis-server` this file
//! starts: the suite's per-topic history and ephemeral topics, and proof
//! that an ephemeral topic never gets a stream (pub/sub only, no `XADD`).

mod common;

use common::fresh;
use herald_core::engine::suite::{self, EngineFactory};
use herald_core::{Data, HistoryLimits, Hub, HubConfig, NewEvent, Topic};

#[tokio::test]
async fn topic_policies() {
    suite::topic_policies(&fresh()).await;
}

#[tokio::test]
async fn ephemeral_topics_get_no_stream() {
    let f = fresh();
    let prefix = f.place();
    let engine = f.open(&prefix, HistoryLimits::default()).await;
    let hub = Hub::new(
        engine.clone(),
        HubConfig {
            policies: suite::suite_policies(),
            ..HubConfig::default()
        },
    );
    let live = Topic::new("live/cursor").unwrap();
    let mut last = 0;
    for _ in 0..2000 {
        let e = hub
            .publish(NewEvent::new(live.clone(), Data::Text("x".into())))
            .await
            .unwrap();
        assert!(e.position.seq > last, "positions increase");
        last = e.position.seq;
    }
    // A stored topic does get its stream, so the check below looks at the
    // right keys.
    hub.publish(NewEvent::new(
        Topic::new("kept").unwrap(),
        Data::Text("x".into()),
    ))
    .await
    .unwrap();
    let streams = f
        .redis
        .command(&["SCAN", "0", "COUNT", "10000", "TYPE", "stream"]);
    assert!(streams.contains("kept"), "{streams}");
    assert!(
        !streams.contains("live"),
        "an ephemeral topic got a stream: {streams}"
    );
    engine.close().await;
}
