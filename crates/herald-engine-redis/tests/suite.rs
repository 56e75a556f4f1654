//! The engine suite of herald-core (`herald_core::engine::suite`) on the
//! Redis engine, against a `redis-server` this file starts on a free
//! loopback port: resume (across a node restart: Redis keeps the history),
//! retention, gaps and epochs, idempotency and one-time tokens. Each store
//! is a fresh key prefix on that server.

mod common;

use herald_core::engine::suite;

use common::fresh;

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
