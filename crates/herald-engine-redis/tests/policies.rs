//! Topic policies on the Redis engine, against a `redis-server` this file
//! starts: the suite's per-topic history and ephemeral topics, and proof
//! that an ephemeral topic never gets a stream (pub/sub only, no `XADD`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald_core::engine::suite::{self, EngineFactory};
use herald_core::engine::BoxFuture;
use herald_core::{Data, Engine, HistoryLimits, Hub, HubConfig, NewEvent, Topic};
use herald_engine_redis::test_server::RedisServer;
use herald_engine_redis::{RedisConfig, RedisEngine};

struct Fresh {
    redis: RedisServer,
    made: AtomicUsize,
}

impl EngineFactory for Fresh {
    /// The key prefix.
    type Place = String;

    fn place(&self) -> String {
        format!("p{}:", self.made.fetch_add(1, Ordering::Relaxed))
    }

    fn open<'a>(
        &'a self,
        prefix: &'a String,
        limits: HistoryLimits,
    ) -> BoxFuture<'a, Arc<dyn Engine>> {
        Box::pin(async move {
            let mut config = RedisConfig::new(&self.redis.url(), limits);
            config.prefix = prefix.clone();
            config.command_timeout = Duration::from_millis(500);
            Arc::new(RedisEngine::connect(config).await.expect("engine")) as Arc<dyn Engine>
        })
    }

    fn durable(&self) -> bool {
        true
    }
}

fn fresh() -> Fresh {
    Fresh {
        redis: RedisServer::start(),
        made: AtomicUsize::new(0),
    }
}

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
