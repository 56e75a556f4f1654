//! The engine suite of herald-core (`herald_core::engine::suite`) on the
//! Redis engine, against a `redis-server` this file starts on a free
//! loopback port: resume (across a node restart: Redis keeps the history),
//! retention, gaps and epochs, idempotency and one-time tokens. Each store
//! is a fresh key prefix on that server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald_core::engine::suite::{self, EngineFactory};
use herald_core::engine::BoxFuture;
use herald_core::{Engine, HistoryLimits};
use herald_engine_redis::test_server::RedisServer;
use herald_engine_redis::{RedisConfig, RedisEngine};

/// Engines on one `redis-server`, each store under its own key prefix.
struct Fresh {
    redis: RedisServer,
    made: AtomicUsize,
}

fn fresh() -> Fresh {
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

#[test]
fn resume_is_exact_across_restarts() {
    suite::resume_is_exact(&fresh(), 64);
}

#[test]
fn old_cursor_gets_a_gap_then_the_retained_events() {
    suite::old_cursor_gets_a_gap_then_the_retained_events(&fresh(), 32);
}

#[test]
fn concurrent_publishers_race_resume() {
    suite::concurrent_publishers_race_resume(&fresh(), 5, 200);
}

#[tokio::test]
async fn retention_by_count() {
    suite::retention_by_count(&fresh()).await;
}

#[tokio::test]
async fn retention_by_age() {
    suite::retention_by_age(&fresh()).await;
}

#[tokio::test]
async fn gaps_and_epochs() {
    suite::gaps_and_epochs(&fresh()).await;
}

#[tokio::test]
async fn paging_reads_each_event_once() {
    suite::paging_reads_each_event_once(&fresh()).await;
}

#[tokio::test]
async fn starting_points() {
    suite::starting_points(&fresh()).await;
}

#[tokio::test]
async fn idempotency() {
    suite::idempotency(&fresh()).await;
}

#[tokio::test]
async fn one_time_tokens() {
    suite::one_time_tokens(&fresh()).await;
}
