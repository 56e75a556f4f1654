//! The engine suite of herald-core (`herald_core::engine::suite`) on the
//! embedded engine: resume (across restarts: the engine is durable),
//! retention, gaps and epochs, idempotency, one-time tokens. Tiny hot
//! tails (0 to 3 events, one per store in turn) make most back-fills read
//! the disk.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald_core::engine::suite::{self, EngineFactory};
use herald_core::engine::BoxFuture;
use herald_core::{Engine, HistoryLimits};
use herald_engine_embedded::{EmbeddedConfig, EmbeddedEngine};

/// Stores in fresh temporary folders, each with its own hot tail size.
struct Fresh {
    made: AtomicUsize,
}

fn fresh() -> Fresh {
    Fresh {
        made: AtomicUsize::new(0),
    }
}

impl EngineFactory for Fresh {
    /// The folder, and the hot tail its engines keep.
    type Place = (tempfile::TempDir, usize);

    fn place(&self) -> Self::Place {
        let tail = self.made.fetch_add(1, Ordering::Relaxed) % 4;
        (tempfile::tempdir().expect("a temporary folder"), tail)
    }

    fn open<'a>(
        &'a self,
        (dir, tail): &'a Self::Place,
        limits: HistoryLimits,
    ) -> BoxFuture<'a, Arc<dyn Engine>> {
        Box::pin(async move {
            let mut cfg = EmbeddedConfig::new(dir.path()).with_history(limits);
            cfg.hot_tail = *tail;
            cfg.commit_delay = Duration::ZERO;
            Arc::new(EmbeddedEngine::open(cfg).expect("open the store")) as Arc<dyn Engine>
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_count() {
    suite::retention_by_count(&fresh()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_age() {
    suite::retention_by_age(&fresh()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaps_and_epochs() {
    suite::gaps_and_epochs(&fresh()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_reads_each_event_once() {
    suite::paging_reads_each_event_once(&fresh()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_points() {
    suite::starting_points(&fresh()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency() {
    suite::idempotency(&fresh()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_time_tokens() {
    suite::one_time_tokens(&fresh()).await;
}
