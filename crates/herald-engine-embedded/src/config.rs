//! The embedded engine's settings.

use std::path::PathBuf;
use std::time::Duration;

use herald_core::HistoryLimits;

/// Settings of an [`EmbeddedEngine`](crate::EmbeddedEngine). Every field but
/// `dir` has a production default.
#[derive(Clone, Debug)]
pub struct EmbeddedConfig {
    /// The data dir (created if missing).
    pub dir: PathBuf,
    /// History kept per topic, by count and by age.
    pub history: HistoryLimits,
    /// Group commit: how long the writer may keep collecting publishes after
    /// the first one of a batch before it writes and fsyncs them together.
    /// Publishes that queued up while the previous commit was in flight
    /// always join; the writer waits for more only while fewer have come than
    /// the previous commit held (publishers that were just acknowledged come
    /// back), so a lone publisher never waits. `0` disables the wait.
    pub commit_delay: Duration,
    /// Most events in one commit (a single publish is never split).
    pub max_commit_events: usize,
    /// Most bytes of event data in one commit (a single publish is never
    /// split), so that a burst of large events is written in several commits
    /// rather than held in memory at once.
    pub max_commit_bytes: usize,
    /// Events kept in memory per topic (the newest ones), so live fan-out
    /// and recent resumes never read the disk.
    pub hot_tail: usize,
    /// Bytes kept in memory per topic's hot tail (counted as in
    /// [`EmbeddedConfig::tail_event_bytes`]); the oldest events leave first,
    /// and an event larger than this is not kept (reads find it on disk).
    /// Default 1 MiB.
    pub hot_tail_bytes: usize,
    /// Bytes kept in all hot tails together; past it the writer trims the
    /// tails, oldest events first within each, until they are under 3/4 of
    /// it. Default 64 MiB.
    pub hot_tail_total_bytes: usize,
    /// Idempotency records kept on disk at most (each: the topic, the id and
    /// the event's position and time); past it the oldest go first, before
    /// their TTL. Default 100,000.
    pub idempotency_max_records: usize,
    /// Bytes of idempotency records on disk at most (their keys twice, plus
    /// 25 bytes each); past it the oldest go first. Default 64 MiB.
    pub idempotency_max_bytes: usize,
    /// Most events waiting for the writer; publishes beyond that wait.
    pub max_pending_events: usize,
    /// How often age retention looks for expired events.
    pub retention_interval: Duration,
    /// Read every stored event when opening, so that damage anywhere is
    /// refused at start instead of failing a read later. It costs one
    /// sequential read of the store (see the crate README for figures);
    /// without it, opening checks each topic's first and last event only.
    pub verify_on_open: bool,
}

impl EmbeddedConfig {
    /// The defaults, storing in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> EmbeddedConfig {
        EmbeddedConfig {
            dir: dir.into(),
            history: HistoryLimits::default(),
            commit_delay: DEFAULT_COMMIT_DELAY,
            max_commit_events: 4096,
            max_commit_bytes: 16 * 1024 * 1024,
            hot_tail: 128,
            hot_tail_bytes: 1024 * 1024,
            hot_tail_total_bytes: 64 * 1024 * 1024,
            idempotency_max_records: 100_000,
            idempotency_max_bytes: 64 * 1024 * 1024,
            max_pending_events: 65_536,
            retention_interval: Duration::from_secs(1),
            verify_on_open: true,
        }
    }

    /// Sets the history limits, and checks for expired events often enough
    /// for a short age limit (a quarter of it, between 10 ms and 1 s).
    pub fn with_history(mut self, history: HistoryLimits) -> EmbeddedConfig {
        self.history = history;
        self.retention_interval =
            (history.max_age / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        self
    }
}

impl EmbeddedConfig {
    /// The bytes an event counts for in the hot tail: its data twice (the
    /// event, and the SSE frame it caches once it is sent), its name and
    /// topic, and 256 bytes of bookkeeping.
    pub fn tail_event_bytes(event: &herald_core::Event) -> usize {
        2 * event.data.len()
            + event.name.as_ref().map_or(0, |n| n.len())
            + event.topic.as_str().len()
            + 256
    }
}

/// The default group-commit delay (see [`EmbeddedConfig::commit_delay`]).
pub const DEFAULT_COMMIT_DELAY: Duration = Duration::from_millis(2);
