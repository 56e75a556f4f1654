//! Engines: where events live and how they reach other nodes.
//!
//! An engine stores events (assigning each its [`Position`]), answers history
//! reads, and hands every stored event to the hub's [`Fanout`] in position
//! order per topic. Transports never see which engine runs.
//!
//! - [`memory`]: in-process ring buffers; history is lost on restart (the epoch
//!   changes, so resuming clients are told).
//! - `suite` (feature `test-util`): the engine tests written once, run by
//!   every engine's tests.
//!
//! # Topic lifecycle and the global budget
//!
//! Every engine keeps its state bounded (see [`Engine`] for the contract):
//!
//! - A topic with no local subscriber ([`Fanout::subscribers`]) and no
//!   retained event is forgotten. Expiry of events older than
//!   [`HistoryLimits::max_age`] runs on a timer, not only when a topic is
//!   next touched.
//! - A forgotten topic never hands out a position it gave before: when it is
//!   used again it starts a new epoch, so a client resuming with an older
//!   cursor gets `herald.gap` (`epoch_changed`) rather than events that
//!   happen to reuse its sequence numbers.
//! - A [`Budget`] caps the topics held and the bytes of retained events; a
//!   publish beyond it is refused whole with [`EngineError::ServerFull`]
//!   (HTTP 503 `server_full` with `Retry-After`), nothing stored.

pub mod memory;
#[cfg(any(test, feature = "test-util"))]
pub mod suite;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::event::{Event, NewEvent, Position};
use crate::fanout::Fanout;
use crate::idempotency::IdempotencyStore;
use crate::occurrence::Occurrences;
use crate::one_time::OneTimeStore;
use crate::policy::TopicPolicies;
use crate::presence::PresenceStore;
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
    /// The events were stored, but the write did not reach the replicas
    /// the engine waits for within its timeout (the Redis engine's `WAIT`,
    /// see its "Guarantees"): they may be lost if the primary fails now.
    /// Maps to 503 like [`EngineError::Unavailable`]; the hub records the
    /// stored positions under the publish's idempotency ids, so a retry
    /// with the same id answers with them instead of storing again.
    #[error("engine unavailable: {detail}")]
    NotReplicated {
        /// What was stored, in the order given, positions assigned.
        stored: Vec<Arc<Event>>,
        /// Why, for the 503's message (how many replicas answered in time).
        detail: String,
    },
    /// A [`Budget`] is used up: the publish would create a topic beyond
    /// `max_topics` or retain more than `max_retained_bytes`. Nothing of the
    /// publish was stored (maps to 503 `server_full` with `Retry-After`).
    #[error("the server is full: {0}")]
    ServerFull(Exhausted),
}

/// Which part of the [`Budget`] a refused publish would have exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    /// The engine holds `max` topics; the publish would have created another.
    Topics {
        /// The topic budget, `Budget::max_topics`.
        max: usize,
    },
    /// Retained events would have exceeded `max` bytes.
    RetainedBytes {
        /// The retention budget in bytes, `Budget::max_retained_bytes`.
        max: u64,
    },
    /// The engine's store refused the write for lack of room (Redis at
    /// `maxmemory`, a full disk).
    Storage,
}

impl std::fmt::Display for Exhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exhausted::Topics { max } => write!(
                f,
                "it holds the most topics it may ({max}); publishing to an existing topic still works, \
                 new topics are accepted again once idle ones expire"
            ),
            Exhausted::RetainedBytes { max } => write!(
                f,
                "retained events would exceed {max} bytes; retry once older events expire"
            ),
            Exhausted::Storage => write!(
                f,
                "the event store has no room left; retry once older events expire"
            ),
        }
    }
}

/// Global caps on what an engine holds, whatever the topics. Set by the hub
/// from [`HubConfig::budget`](crate::HubConfig::budget) through
/// [`Engine::set_budget`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Topics held at most: topics with retained events or local
    /// subscribers. A publish that would create one more is refused.
    /// Default 1,000,000.
    pub max_topics: usize,
    /// Bytes of retained events at most, counted as each event's data plus
    /// its name plus [`Budget::EVENT_OVERHEAD`]. A publish that would go
    /// beyond is refused. Default 1 GiB.
    pub max_retained_bytes: u64,
}

impl Budget {
    /// Bytes counted per retained event on top of its data and name (its
    /// position, time, topic handle and bookkeeping).
    pub const EVENT_OVERHEAD: u64 = 128;

    /// The bytes one event counts for against `max_retained_bytes`.
    pub fn event_bytes(name: Option<&str>, data_len: usize) -> u64 {
        (data_len + name.map_or(0, str::len)) as u64 + Budget::EVENT_OVERHEAD
    }
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            max_topics: 1_000_000,
            max_retained_bytes: 1 << 30,
        }
    }
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
    /// The reason as it appears on the wire (`history_truncated`,
    /// `epoch_changed`, `unknown_position`) in gap events and messages.
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
///
/// # Bounded state (what an engine that holds per-topic state does)
///
/// - **Expiry on a timer.** [`Engine::attach`] starts a background task (on
///   the current tokio runtime) that drops events older than
///   [`HistoryLimits::max_age`] about once a second, so memory is freed
///   without the topic being touched. [`Engine::close`] and dropping the
///   engine stop it; no task outlives the engine.
/// - **Idle topics are forgotten.** A topic with no retained event and no
///   local subscriber (`fanout.subscribers(topic) == 0`, checked under the
///   same lock a publish to the topic takes) is dropped, in memory and on
///   disk.
/// - **Positions are never reused.** A dropped topic used again starts a
///   new epoch; reads of a topic the engine does not hold report an epoch
///   that differs from any the topic had before it was dropped, so an older
///   cursor gets [`GapReason::EpochChanged`].
/// - **Budget.** [`Engine::set_budget`] gives the caps; a publish that
///   would exceed one is refused whole with [`EngineError::ServerFull`].
/// - **Metrics.** The engine reports what it holds with
///   [`Metrics::set_usage`](crate::Metrics::set_usage) and counts dropped
///   topics in [`Metrics::topics_dropped`](crate::Metrics::topics_dropped),
///   on the [`Fanout::metrics`] of the hub attached last. The hub counts
///   refusals itself.
pub trait Engine: Send + Sync + 'static {
    /// Called by the hub before any other call: where stored events go. A
    /// later call (a new hub over the same engine) replaces the earlier. An
    /// engine that expires history on a timer starts that task here (once).
    fn attach(&self, fanout: Arc<Fanout>);

    /// The global caps on what the engine holds; the hub calls this before
    /// [`Engine::attach`] with its [`HubConfig::budget`](crate::HubConfig::budget).
    /// A later call replaces the earlier. Default: ignored (for an engine
    /// whose store bounds itself, such as Redis under `maxmemory`).
    fn set_budget(&self, _budget: Budget) {}

    /// The per-topic policies; the hub calls this before [`Engine::attach`]
    /// with its [`HubConfig::policies`](crate::HubConfig::policies). An
    /// engine applies each topic's history limits
    /// ([`TopicPolicies::history_limits`]) when it appends and trims, and
    /// never stores an event of an ephemeral topic
    /// ([`TopicPolicy::is_ephemeral`](crate::TopicPolicy::is_ephemeral)):
    /// it still gets a position (positions keep increasing, so cursors stay
    /// valid) and reaches the local subscribers, and a distributed engine
    /// still carries it to the other nodes. Every engine of the workspace
    /// implements it; the default (ignoring policies) is for engines outside.
    fn set_policies(&self, _policies: Arc<TopicPolicies>) {}

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

    /// Reads backward: the newest `limit` events of `topic` at or before
    /// `before` (`None`: the head), returned oldest first. `from` is the
    /// position just before the first returned event (the place a forward
    /// reader resumes to get these events again), or the end of the range
    /// when none is returned. A `before` of another epoch
    /// ([`GapReason::EpochChanged`]) or ahead of the head
    /// ([`GapReason::UnknownPosition`]) is reported in `gap`, and the read
    /// then ends at the head.
    ///
    /// Default: [`read_back_forward`], two forward reads; a topic's
    /// positions within an epoch are consecutive, so the range is known
    /// once the head is.
    fn read_back<'a>(
        &'a self,
        topic: &'a Topic,
        before: Option<Position>,
        limit: usize,
    ) -> BoxFuture<'a, Result<ReadResult, EngineError>> {
        Box::pin(read_back_forward(self, topic, before, limit))
    }

    /// The first local subscriber of `topic` arrived (a distributed engine
    /// starts listening for it). Default: nothing.
    fn watch(&self, _topic: &Topic) {}

    /// The last local subscriber of `topic` left. Default: nothing.
    fn unwatch(&self, _topic: &Topic) {}

    /// Where to report occurrences ([`crate::occurrence`]) the engine
    /// decides itself; the hub calls this once, from
    /// [`Hub::report_occurrences`](crate::Hub::report_occurrences). An
    /// engine that spans nodes decides occupied / vacated cluster-wide (one
    /// report per transition, whichever node sees it; a dead node's topics
    /// vacate once its entries expire) and reports the joins and leaves its
    /// presence store decides on its own (expired members, members entered
    /// again), then returns true. Default: false, and the hub decides
    /// occupancy from its local fan-out ([`Engine::watch`] /
    /// [`Engine::unwatch`] transitions).
    fn report_occurrences(&self, _sink: Arc<dyn Occurrences>) -> bool {
        false
    }

    /// A store for idempotency records shared by every node on this engine,
    /// keeping records for `ttl`. Default: none, and the hub keeps them in
    /// its own memory.
    fn idempotency_store(&self, _ttl: Duration) -> Option<Arc<dyn IdempotencyStore>> {
        None
    }

    /// A store for one-time tokens shared by every node on this engine
    /// (see [`crate::one_time`]). Default: none, and the hub keeps them in
    /// its own memory ([`LocalOneTime`](crate::one_time::LocalOneTime)), as
    /// the memory and embedded engines do: their deployment is one process.
    fn one_time_store(&self) -> Option<Arc<dyn OneTimeStore>> {
        None
    }

    /// Where the members of presence topics are kept
    /// ([`crate::presence`]): a store every node shares, for an engine
    /// that spans nodes; `None` (the default) keeps them in this process.
    fn presence_store(&self) -> Option<Arc<dyn PresenceStore>> {
        None
    }

    /// Closes every connection of `user` with
    /// [`CloseReason::Disconnected`](crate::CloseReason::Disconnected), on
    /// every node the engine spans (`POST /v1/disconnect`). The default
    /// closes those of `local`, this process's fan-out.
    ///
    /// # Errors
    /// [`EngineError::Unavailable`] when the other nodes could not be told.
    fn disconnect_user<'a>(
        &'a self,
        user: &'a str,
        local: &'a Fanout,
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        local.close_user(user, crate::CloseReason::Disconnected);
        Box::pin(async { Ok(()) })
    }

    /// Delivers a signal ([`Event::is_signal`]: `herald.join` /
    /// `herald.leave`) to every subscriber of its topic, on every node the
    /// engine spans, in order with the topic's events; nothing is stored.
    /// The default hands it to `local`, this process's fan-out.
    ///
    /// # Errors
    /// [`EngineError::Unavailable`] when the engine could not pass it on
    /// (the signal is then lost; presence itself stays right).
    fn signal<'a>(
        &'a self,
        event: Arc<Event>,
        local: &'a Fanout,
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        local.dispatch(&event);
        Box::pin(async { Ok(()) })
    }

    /// Whether the engine can serve (for `/readyz`).
    fn ready(&self) -> BoxFuture<'_, Result<(), EngineError>>;

    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;

    /// Flushes and closes (graceful shutdown), and stops any background
    /// task the engine started. Default: nothing.
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

/// [`Engine::read_back`] through [`Engine::read`]: reads the head, then
/// forward from `limit` events before the end. Retries when the topic
/// started a new epoch between the two reads.
///
/// Errors: whatever [`Engine::read`] returns.
pub async fn read_back_forward<E: Engine + ?Sized>(
    engine: &E,
    topic: &Topic,
    before: Option<Position>,
    limit: usize,
) -> Result<ReadResult, EngineError> {
    const ATTEMPTS: usize = 3;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let now = engine.read(topic, None, 0).await?;
        let (end, gap) = match before {
            None => (now.head, None),
            Some(p) if p.epoch != now.epoch => (now.head, Some(GapReason::EpochChanged)),
            Some(p) if p.seq > now.head => (now.head, Some(GapReason::UnknownPosition)),
            Some(p) => (p.seq, None),
        };
        let start = Position::new(now.epoch, end.saturating_sub(limit as u64));
        // `read` with a limit of 0 is not asked for: some stores read "no
        // count" as "everything".
        let mut r = engine.read(topic, Some(start), limit.max(1)).await?;
        if r.epoch != now.epoch && attempt < ATTEMPTS {
            continue; // dropped and used again between the two reads
        }
        if limit == 0 {
            r.events.clear();
        }
        // A start behind retention reads from the oldest retained event,
        // possibly past the end: keep the range only.
        r.events
            .retain(|e| e.position.epoch == now.epoch && e.position.seq <= end);
        r.from = match r.events.first() {
            Some(e) => Position::new(e.position.epoch, e.position.seq - 1),
            None => Position::new(r.epoch, end.min(r.head)),
        };
        r.gap = gap;
        return Ok(r);
    }
}

/// `d` with up to ±25 % random jitter (0.75 d to 1.25 d), so that the many
/// readers retrying after one outage do not all retry at the same moment.
pub fn jittered(d: std::time::Duration) -> std::time::Duration {
    // new_epoch() is random enough for spreading retries.
    let r = new_epoch() % 1001;
    d.mul_f64(0.75 + r as f64 / 2000.0)
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
