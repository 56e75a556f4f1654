//! Engines: where events live and how they reach other nodes.
//!
//! An engine stores events (assigning each its [`Position`]), answers history
//! reads, and hands every stored event to the hub's [`Fanout`] in position
//! order per topic. Transports never see which engine runs.
//!
//! - [`memory`]: in-process ring buffers; history is lost on restart (the epoch
//!   changes, so resuming clients are told).

pub mod memory;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::event::{Event, NewEvent, Position};
use crate::fanout::Fanout;
use crate::idempotency::IdempotencyStore;
use crate::topic::Topic;

/// A boxed future, so that engines can be used as `Arc<dyn Engine>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What an engine failed at.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The engine cannot store or read right now (maps to 503).
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// Shutting down; no new publishes are accepted.
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// How much history each topic keeps.
#[derive(Clone, Copy, Debug)]
pub struct HistoryLimits {
    /// Events kept per topic.
    pub max_events: usize,
    /// Events older than this are dropped.
    pub max_age: Duration,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            max_events: 1000,
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

/// Why a read could not continue exactly after the requested position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GapReason {
    /// Events after the position were dropped by retention.
    HistoryTruncated,
    /// The position belongs to an epoch whose history is gone.
    EpochChanged,
    /// The position is ahead of anything this topic has stored.
    UnknownPosition,
}

impl GapReason {
    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::HistoryTruncated => "history_truncated",
            GapReason::EpochChanged => "epoch_changed",
            GapReason::UnknownPosition => "unknown_position",
        }
    }
}

/// The answer to a history read.
#[derive(Debug, Clone)]
pub struct ReadResult {
    /// The topic's current epoch.
    pub epoch: u64,
    /// Sequence of the topic's latest event (0 if none yet).
    pub head: u64,
    /// Set when the events do not follow the requested position directly; the
    /// events then start at the oldest retained one.
    pub gap: Option<GapReason>,
    /// The position the events follow: the requested one, or after a gap the
    /// position just before the oldest retained event.
    pub from: Position,
    /// Events after `from`, in order, at most the requested limit.
    pub events: Vec<Arc<Event>>,
}

impl ReadResult {
    /// Whether more events remain after the returned ones.
    pub fn more(&self) -> bool {
        let last = self.events.last().map_or(self.from.seq, |e| e.position.seq);
        last < self.head
    }
}

/// The storage and cross-node side of the hub.
pub trait Engine: Send + Sync + 'static {
    /// Called by the hub before any other call: where stored events go. A
    /// later call (a new hub over the same engine) replaces the earlier.
    fn attach(&self, fanout: Arc<Fanout>);

    /// Stores the events (in order), then dispatches them. Resolves only once
    /// they are accepted (durable, for a durable engine).
    fn publish(&self, events: Vec<NewEvent>)
        -> BoxFuture<'_, Result<Vec<Arc<Event>>, EngineError>>;

    /// Reads up to `limit` events of `topic` after `after`; `None` reads from
    /// the current head (nothing, but the head's position).
    fn read<'a>(
        &'a self,
        topic: &'a Topic,
        after: Option<Position>,
        limit: usize,
    ) -> BoxFuture<'a, Result<ReadResult, EngineError>>;

    /// The first local subscriber of `topic` arrived (a distributed engine
    /// starts listening for it). Default: nothing.
    fn watch(&self, _topic: &Topic) {}

    /// The last local subscriber of `topic` left. Default: nothing.
    fn unwatch(&self, _topic: &Topic) {}

    /// A store for idempotency records shared by every node on this engine,
    /// keeping records for `ttl`. Default: none, and the hub keeps them in
    /// its own memory.
    fn idempotency_store(&self, _ttl: Duration) -> Option<Arc<dyn IdempotencyStore>> {
        None
    }

    /// Whether the engine can serve (for `/readyz`).
    fn ready(&self) -> BoxFuture<'_, Result<(), EngineError>>;

    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;

    /// Flushes and closes (graceful shutdown). Default: nothing.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Classifies `after` against a topic's retained range and says where a read
/// starts. Shared by engines so that gap rules are decided in one place.
///
/// `first_retained` is the sequence of the oldest retained event, or `head + 1`
/// when nothing is retained.
pub fn resolve_start(
    epoch: u64,
    head: u64,
    first_retained: u64,
    after: Option<Position>,
) -> (Position, Option<GapReason>) {
    let oldest = Position::new(epoch, first_retained.saturating_sub(1));
    match after {
        None => (Position::new(epoch, head), None),
        Some(p) if p.epoch != epoch => (oldest, Some(GapReason::EpochChanged)),
        Some(p) if p.seq > head => (oldest, Some(GapReason::UnknownPosition)),
        Some(p) if p.seq + 1 < first_retained => (oldest, Some(GapReason::HistoryTruncated)),
        Some(p) => (p, None),
    }
}

/// A fresh epoch: random enough that two runs never share one.
pub fn new_epoch() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    // Keep it within 48 bits so cursors stay short, and never 0.
    (h.finish() & 0xffff_ffff_ffff).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_rules() {
        // Nothing published yet: head 0, first retained 1.
        assert_eq!(resolve_start(5, 0, 1, None), (Position::new(5, 0), None));
        assert_eq!(
            resolve_start(5, 0, 1, Some(Position::new(5, 0))),
            (Position::new(5, 0), None)
        );
        assert_eq!(
            resolve_start(5, 10, 4, Some(Position::new(5, 3))),
            (Position::new(5, 3), None)
        );
        assert_eq!(
            resolve_start(5, 10, 4, Some(Position::new(5, 2))),
            (Position::new(5, 3), Some(GapReason::HistoryTruncated))
        );
        assert_eq!(
            resolve_start(5, 10, 4, Some(Position::new(4, 9))),
            (Position::new(5, 3), Some(GapReason::EpochChanged))
        );
        assert_eq!(
            resolve_start(5, 10, 4, Some(Position::new(5, 11))),
            (Position::new(5, 3), Some(GapReason::UnknownPosition))
        );
        // Everything expired: nothing retained, a cursor behind the head is a gap.
        assert_eq!(
            resolve_start(5, 10, 11, Some(Position::new(5, 8))),
            (Position::new(5, 10), Some(GapReason::HistoryTruncated))
        );
        assert_eq!(
            resolve_start(5, 10, 11, Some(Position::new(5, 10))),
            (Position::new(5, 10), None)
        );
    }
}
