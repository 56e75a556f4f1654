//! The Redis engine as the suite's `EngineFactory`: engines on one
//! throw-away `redis-server` on a free loopback port, each store under its
//! own key prefix.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald_core::engine::suite::EngineFactory;
use herald_core::engine::BoxFuture;
use herald_core::{Engine, HistoryLimits};
use herald_engine_redis::test_server::RedisServer;
use herald_engine_redis::{RedisConfig, RedisEngine};

/// Engines on one `redis-server`, each store under its own key prefix.
pub struct Fresh {
    /// The server every engine of this factory talks to.
    pub redis: RedisServer,
    made: AtomicUsize,
}

/// A factory on a new `redis-server`.
pub fn fresh() -> Fresh {
    Fresh {
        redis: RedisServer::start(),
        made: AtomicUsize::new(0),
    }
}

impl EngineFactory for Fresh {
    /// The key prefix.
    type Place = String;

    fn place(&self) -> String {
        format!("s{}:", self.made.fetch_add(1, Ordering::Relaxed))
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
