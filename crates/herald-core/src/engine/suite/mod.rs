//! The engine test suite, written once and run by every engine's tests
//! (behind the `test-util` feature; herald-core's own unit tests run it on
//! the [`MemoryEngine`](crate::MemoryEngine)).
//!
//! An engine's test implements [`EngineFactory`] (how to make a fresh,
//! empty engine, and for a durable engine how to open the same store
//! again) and calls each function:
//!
//! - [`resume_is_exact`], [`old_cursor_gets_a_gap_then_the_retained_events`]
//!   and [`concurrent_publishers_race_resume`] (in `resume`): resume through
//!   a [`Hub`] yields every later event exactly once, in order per topic,
//!   across a restart for a durable engine;
//! - [`retention_by_count`], [`retention_by_age`], [`gaps_and_epochs`]:
//!   history reads through the [`Engine`] trait;
//! - [`paging_reads_each_event_once`] and [`starting_points`] (in
//!   `paging`): history read page by page forward and backward, and the
//!   subscription starting points built on it;
//! - [`idempotency`] and [`one_time_tokens`]: the per-deployment records
//!   through the hub;
//! - [`topic_policies`] (in `policies`): per-topic history limits and
//!   ephemeral topics through the hub;
//! - [`presence`] (in `presence`): members in the engine's presence store,
//!   `herald.join` / `herald.leave` in order with events, grace periods.
//!
//! The property tests build their own runtimes: call them from a plain
//! `#[test]`. The others are `async`: call them from `#[tokio::test]`.
//!
//! ```ignore
//! struct Fresh;
//! impl EngineFactory for Fresh { /* ... */ }
//! #[test]
//! fn resume() { suite::resume_is_exact(&Fresh, 64) }
//! ```

mod paging;
mod policies;
mod presence;
mod records;
mod resume;

pub use paging::{paging_reads_each_event_once, starting_points};
pub use policies::{suite_policies, topic_policies};
pub use presence::{member, presence, presence_policies};
pub use records::{idempotency, one_time_tokens};
pub use resume::{
    concurrent_publishers_race_resume, old_cursor_gets_a_gap_then_the_retained_events,
    resume_is_exact,
};

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{BoxFuture, Engine, GapReason, HistoryLimits};
use crate::event::{Data, Event, NewEvent, Position};
use crate::topic::Topic;

/// How the suite makes engines.
pub trait EngineFactory: Sync {
    /// Where one engine keeps its state (a folder, a key prefix); kept
    /// until the engines opened over it are dropped.
    type Place: Send + Sync;

    /// A new, empty place, shared with nothing else.
    fn place(&self) -> Self::Place;

    /// An engine over `place` keeping `limits`. Opening a place again
    /// after closing its engine is a restart.
    fn open<'a>(
        &'a self,
        place: &'a Self::Place,
        limits: HistoryLimits,
    ) -> BoxFuture<'a, Arc<dyn Engine>>;

    /// Whether events survive a restart (a durable engine). Default: no.
    fn durable(&self) -> bool {
        false
    }
}

fn text(t: &Topic, s: &str) -> NewEvent {
    NewEvent::new(t.clone(), Data::Text(s.into()))
}

fn seqs(events: &[Arc<Event>]) -> Vec<u64> {
    events.iter().map(|e| e.position.seq).collect()
}

/// Count retention: a topic keeps its last `max_events`; a cursor behind
/// them gets `history_truncated` and the retained ones, reads page by
/// `limit`, and a position past the head is `unknown_position`.
pub async fn retention_by_count<F: EngineFactory>(factory: &F) {
    let place = factory.place();
    let limits = HistoryLimits {
        max_events: 3,
        max_age: Duration::from_secs(3600),
    };
    let e = factory.open(&place, limits).await;
    let t = Topic::new("t").unwrap();
    let mut last = Position::new(0, 0);
    for i in 0..5 {
        last = e.publish(vec![text(&t, &i.to_string())]).await.unwrap()[0].position;
    }
    let epoch = last.epoch;
    assert_eq!(last.seq, 5);
    let r = e
        .read(&t, Some(Position::new(epoch, 0)), 100)
        .await
        .unwrap();
    assert_eq!(r.gap, Some(GapReason::HistoryTruncated));
    assert_eq!(seqs(&r.events), vec![3, 4, 5]);
    let r = e
        .read(&t, Some(Position::new(epoch, 2)), 100)
        .await
        .unwrap();
    assert_eq!(r.gap, None);
    assert_eq!(r.events.len(), 3);
    let r = e.read(&t, Some(Position::new(epoch, 3)), 1).await.unwrap();
    assert_eq!((r.gap, r.events[0].position.seq, r.more()), (None, 4, true));
    let r = e.read(&t, None, 100).await.unwrap();
    assert!(r.events.is_empty());
    assert_eq!(r.from, Position::new(epoch, 5));
    let r = e.read(&t, Some(Position::new(epoch, 9)), 10).await.unwrap();
    assert_eq!(r.gap, Some(GapReason::UnknownPosition));
    e.close().await;
}

/// Age retention: an event older than `max_age` is no longer read (a
/// cursor before it gets `history_truncated`), a younger one still is.
pub async fn retention_by_age<F: EngineFactory>(factory: &F) {
    let place = factory.place();
    let max_age = Duration::from_secs(2);
    let limits = HistoryLimits {
        max_events: 100,
        max_age,
    };
    let e = factory.open(&place, limits).await;
    let t = Topic::new("aging").unwrap();
    let started = Instant::now();
    let old = e.publish(vec![text(&t, "old")]).await.unwrap()[0].position;
    // Half the age later, a newer event keeps the topic alive.
    tokio::time::sleep(max_age / 2).await;
    e.publish(vec![text(&t, "new")]).await.unwrap();
    // Wait for the old event to age out (the time passing is the point).
    let from = Some(Position::new(old.epoch, 0));
    let deadline = started + max_age * 3;
    let r = loop {
        let r = e.read(&t, from, 10).await.unwrap();
        if r.gap.is_some() || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(r.gap, Some(GapReason::HistoryTruncated));
    assert_eq!(r.events.len(), 1);
    assert_eq!(r.events[0].data, Data::Text("new".into()));
    e.close().await;
}

/// Positions and epochs: a topic never published reads as empty under an
/// epoch its first event keeps; a cursor of another epoch (another store,
/// a lost history) gets `epoch_changed`, never events that reuse its
/// sequence numbers.
pub async fn gaps_and_epochs<F: EngineFactory>(factory: &F) {
    let limits = HistoryLimits::default();
    let place = factory.place();
    let e = factory.open(&place, limits).await;
    let t = Topic::new("fresh/1").unwrap();
    let start = e.read(&t, None, 10).await.unwrap();
    assert_eq!((start.head, start.gap), (0, None));
    assert!(start.events.is_empty());
    assert_eq!(start.from.seq, 0);
    let first = e.publish(vec![text(&t, "a")]).await.unwrap()[0].position;
    assert_eq!(first, Position::new(start.from.epoch, 1));
    let r = e.read(&t, Some(start.from), 10).await.unwrap();
    assert_eq!((r.gap, seqs(&r.events)), (None, vec![1]));
    let r = e
        .read(&t, Some(Position::new(first.epoch ^ 1, 1)), 10)
        .await
        .unwrap();
    assert_eq!(r.gap, Some(GapReason::EpochChanged));
    assert_eq!(seqs(&r.events), vec![1]);

    // Another store never honours this one's positions.
    let other_place = factory.place();
    let other = factory.open(&other_place, limits).await;
    let r = other.read(&t, Some(first), 10).await.unwrap();
    assert_eq!(r.gap, Some(GapReason::EpochChanged));
    let again = other.publish(vec![text(&t, "b")]).await.unwrap()[0].position;
    assert_ne!(again.epoch, first.epoch);
    other.close().await;

    // A durable engine opened again keeps positions and epochs.
    if factory.durable() {
        e.close().await;
        drop(e);
        let e = factory.open(&place, limits).await;
        let r = e.read(&t, Some(start.from), 10).await.unwrap();
        assert_eq!((r.gap, seqs(&r.events)), (None, vec![1]));
        assert_eq!(r.epoch, first.epoch);
        e.close().await;
    } else {
        e.close().await;
    }
}
