//! The writer thread: the only code that writes the store.
//!
//! It takes publishes from a channel, collects those that arrive within
//! `commit_delay` (and all that queued up during the previous commit),
//! assigns positions, writes them with retention's deletions and the topics'
//! records in one atomic batch, waits for the fsync, and only then shows the
//! events to readers, dispatches them in order and acknowledges them.
//!
//! Retention never stalls publishes for long: the count limit is applied to
//! the topics a batch touches; the age limit is checked every
//! `retention_interval` in a bounded pass over the topics; deletions beyond a
//! per-commit budget are carried over to later commits. Readers stop seeing
//! dropped events before they are deleted.
//!
//! Each commit also writes the idempotency records of its events (so a retry
//! after a crash finds them), the commit counter, and, once durable, the
//! high-water file. A topic left with nothing retained and no subscriber is
//! dropped in a commit: its record goes, and new topics from then on get a
//! new epoch, so the dropped topic's cursors never resume into a later topic
//! of the same name.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_core::engine::{Exhausted, HistoryLimits};
use herald_core::event::now_ms;
use herald_core::{EngineError, Event, NewEvent, Position, Topic};
use tokio::sync::{oneshot, OwnedSemaphorePermit};

use crate::config::EmbeddedConfig;
use crate::engine::Shared;
use crate::format::{self, IdempotencyRecord, TopicMeta};
use crate::store::{Batch, Recovered, Store};

mod retention;

/// Most old events deleted in one commit; the rest wait for the next ones.
const DELETE_BUDGET: usize = 8192;
/// Most events an age pass reads from disk, and the longest it runs.
const AGE_SCAN_BUDGET: usize = 4096;
const AGE_PASS_TIME: Duration = Duration::from_millis(5);
/// Most idempotency records an expiry pass looks at.
const IDEMPOTENCY_SWEEP_BUDGET: usize = 4096;
/// Most topics dropped in one commit.
const DROP_BUDGET: usize = 4096;

pub(crate) enum Msg {
    Publish(Request),
    Close(oneshot::Sender<()>),
}

pub(crate) struct Request {
    pub(crate) events: Vec<NewEvent>,
    pub(crate) reply: oneshot::Sender<Result<Vec<Arc<Event>>, EngineError>>,
    /// Held until the request is answered: bounds the events in flight.
    pub(crate) _permit: OwnedSemaphorePermit,
}

impl Request {
    /// The size of its events' data and names.
    fn bytes(&self) -> usize {
        self.events
            .iter()
            .map(|e| e.data.len() + e.name.as_ref().map_or(0, |n| n.len()))
            .sum()
    }
}

/// The writer's own copy of a topic's state; readers see theirs in
/// [`Shared`], updated after each commit.
struct WriterTopic {
    topic: Topic,
    id: u64,
    epoch: u64,
    head: u64,
    first: u64,
    /// Lowest sequence still on disk: `first` once retention caught up.
    on_disk_from: u64,
    /// A lower bound of when event `first` was published (0: unknown).
    first_at: u64,
    /// When event `head` was published (0: unknown, recovered from disk): a
    /// topic whose newest event is expired drops all without a disk read.
    last_at: u64,
    /// Its record must be written in the next commit.
    dirty: bool,
    /// Waiting in the deletion backlog.
    queued: bool,
}

impl WriterTopic {
    /// Nothing retained and nothing left on disk to delete.
    fn is_empty(&self) -> bool {
        self.first > self.head && self.on_disk_from >= self.first && !self.queued
    }
}

/// An idempotency record to delete in the next commit: its expiry entry's
/// time, the record's key, whether the record itself goes too (it does not
/// when a later publish reused the id), and the bytes it counted.
struct IdempotencyDeletion {
    at_ms: u64,
    key: Vec<u8>,
    record_too: bool,
    bytes: usize,
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    store: Arc<Store>,
    rx: Receiver<Msg>,
    commit_delay: Duration,
    max_commit_events: usize,
    max_commit_bytes: usize,
    retention_interval: Duration,
    /// The server-wide history limits; a topic's policy may set its own
    /// (see [`Writer::limits_of`]).
    history: HistoryLimits,
    topics: Vec<WriterTopic>,
    index: HashMap<Topic, usize>,
    next_id: u64,
    last_ts: u64,
    dirty: Vec<usize>,
    backlog: VecDeque<usize>,
    sweep_at: usize,
    last_sweep: Instant,
    failed: Option<String>,
    /// How many publishes the last commit held: how many to wait for.
    expected: usize,
    /// Commits and events since start (logged on close).
    stat_commits: u64,
    stat_events: u64,
    /// Commits the store holds: the commit counter.
    commits: u64,
    /// Idempotency records on disk, and their bytes (see
    /// `store::idempotency_entry_bytes`).
    idem_records: usize,
    idem_bytes: usize,
    idem_max_records: usize,
    idem_max_bytes: usize,
    idem_deletions: Vec<IdempotencyDeletion>,
    /// Topics to consider dropping in the next commit.
    drop_candidates: Vec<usize>,
    /// Fault injection for tests (see `EmbeddedConfig`): fail the final
    /// persist.
    fail_final_persist: bool,
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        store: Arc<Store>,
        rx: Receiver<Msg>,
        config: &EmbeddedConfig,
        recovered: Recovered,
    ) -> Writer {
        let mut w = Writer {
            shared,
            store,
            rx,
            commit_delay: config.commit_delay,
            max_commit_events: config.max_commit_events.max(1),
            max_commit_bytes: config.max_commit_bytes.max(1),
            retention_interval: config.retention_interval.max(Duration::from_millis(1)),
            history: config.history,
            topics: Vec::with_capacity(recovered.topics.len()),
            index: HashMap::with_capacity(recovered.topics.len()),
            next_id: 1,
            last_ts: 0,
            dirty: Vec::new(),
            backlog: VecDeque::new(),
            sweep_at: 0,
            last_sweep: Instant::now(),
            failed: None,
            expected: 1,
            stat_commits: 0,
            stat_events: 0,
            commits: recovered.commits,
            idem_records: recovered.idempotency_records,
            idem_bytes: recovered.idempotency_bytes,
            idem_max_records: config.idempotency_max_records.max(1),
            idem_max_bytes: config.idempotency_max_bytes.max(1),
            idem_deletions: Vec::new(),
            drop_candidates: Vec::new(),
            fail_final_persist: std::env::var_os(FAULT_ENV)
                .is_some_and(|v| v == FAULT_FINAL_PERSIST),
        };
        for r in recovered.topics {
            let i = w.topics.len();
            w.next_id = w.next_id.max(r.meta.id + 1);
            w.index.insert(r.topic.clone(), i);
            w.topics.push(WriterTopic {
                topic: r.topic,
                id: r.meta.id,
                epoch: r.meta.epoch,
                head: r.meta.head,
                first: r.meta.first,
                on_disk_from: r.on_disk_from,
                first_at: 0,
                last_at: 0,
                dirty: false,
                queued: false,
            });
            // A lower history limit than last time applies at once.
            w.apply_count_limit(i);
            w.shared.retain_from(&w.topics[i].topic, w.topics[i].first);
        }
        w.report_usage();
        w
    }

    /// `topic`'s history limits (its policy's over the server's): events
    /// kept (at least 1: ephemeral topics never reach the writer) and the
    /// age limit in ms.
    fn limits_of(&self, topic: &Topic) -> (u64, u64) {
        let l = self.shared.limits_of(topic, self.history);
        (
            l.max_events.max(1) as u64,
            u64::try_from(l.max_age.as_millis()).unwrap_or(u64::MAX),
        )
    }

    /// How often age retention runs: the configured interval, shorter when
    /// a policy's age limit needs it (a quarter of it, at least 10 ms).
    fn retention_every(&self) -> Duration {
        match self.shared.policies().shortest_max_age() {
            Some(age) => self
                .retention_interval
                .min((age / 4).max(Duration::from_millis(10))),
            None => self.retention_interval,
        }
    }

    fn has_work(&self) -> bool {
        !self.dirty.is_empty()
            || !self.backlog.is_empty()
            || !self.idem_deletions.is_empty()
            || !self.drop_candidates.is_empty()
    }

    fn report_usage(&self) {
        self.shared
            .idempotency_records
            .store(self.idem_records, std::sync::atomic::Ordering::Relaxed);
        if let Some(f) = self.shared.fanout() {
            f.metrics()
                .set_usage(self.topics.len() as u64, self.shared.tail_bytes() as u64);
        }
    }

    pub(crate) fn run(mut self) {
        loop {
            let every = self.retention_every();
            let wait = if !self.has_work() {
                every.saturating_sub(self.last_sweep.elapsed())
            } else {
                Duration::ZERO
            };
            let mut batch = Vec::new();
            let mut close = None;
            match self.rx.recv_timeout(wait) {
                Ok(Msg::Publish(r)) => {
                    batch.push(r);
                    self.gather(&mut batch, &mut close);
                }
                Ok(Msg::Close(done)) => close = Some(done),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if self.last_sweep.elapsed() >= every {
                self.sweep_ages();
                self.sweep_idempotency();
                self.last_sweep = Instant::now();
            } else if self.idem_records > self.idem_max_records
                || self.idem_bytes > self.idem_max_bytes
            {
                self.sweep_idempotency();
            }
            if !batch.is_empty() || self.has_work() {
                self.commit(batch);
            }
            if let Some(done) = close {
                self.finish();
                let _ = done.send(());
                return;
            }
        }
        self.finish();
    }

    /// Collects more publishes: all that are queued, then, while fewer
    /// publishes than the last commit held have arrived, those that arrive
    /// within `commit_delay`. Publishers that were just acknowledged usually
    /// come back with their next publish, so the delay is spent only while
    /// they are expected (a lone publisher never waits) and never longer
    /// than `commit_delay`.
    fn gather(&mut self, batch: &mut Vec<Request>, close: &mut Option<oneshot::Sender<()>>) {
        let mut n: usize = batch.iter().map(|r| r.events.len()).sum();
        let mut bytes: usize = batch.iter().map(Request::bytes).sum();
        let deadline = Instant::now() + self.commit_delay;
        while n < self.max_commit_events && bytes < self.max_commit_bytes {
            let msg = match self.rx.try_recv() {
                Ok(m) => m,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() || batch.len() >= self.expected {
                        break;
                    }
                    match self.rx.recv_timeout(left) {
                        Ok(m) => m,
                        Err(_) => break,
                    }
                }
            };
            match msg {
                Msg::Publish(r) => {
                    n += r.events.len();
                    bytes += r.bytes();
                    batch.push(r);
                }
                Msg::Close(done) => {
                    *close = Some(done);
                    break;
                }
            }
        }
        self.expected = batch.len();
    }

    fn topic_index(&mut self, topic: &Topic) -> usize {
        if let Some(&i) = self.index.get(topic) {
            return i;
        }
        let i = self.topics.len();
        self.topics.push(WriterTopic {
            topic: topic.clone(),
            id: self.next_id,
            epoch: self.shared.topic_epoch(),
            head: 0,
            first: 1,
            on_disk_from: 1,
            first_at: 0,
            last_at: 0,
            dirty: false,
            queued: false,
        });
        self.next_id += 1;
        self.index.insert(topic.clone(), i);
        i
    }

    fn mark_dirty(&mut self, i: usize) {
        if !self.topics[i].dirty {
            self.topics[i].dirty = true;
            self.dirty.push(i);
        }
    }

    /// One atomic, durable commit: the batch's events, retention's
    /// deletions, the changed topic records. Then readers, subscribers and
    /// publishers learn of it, in that order.
    fn commit(&mut self, mut batch: Vec<Request>) {
        if let Some(why) = &self.failed {
            for r in batch {
                let _ = r.reply.send(Err(EngineError::Unavailable(why.clone())));
            }
            return;
        }
        let now = now_ms().max(self.last_ts);
        self.last_ts = now;
        // The topic budget: a publish that would create topics beyond it is
        // refused whole, before anything of it is written.
        let max_topics = self.shared.max_topics();
        let mut new_topics: std::collections::HashSet<Topic> = Default::default();
        batch.retain_mut(|r| {
            let mut fresh: std::collections::HashSet<Topic> = Default::default();
            for e in &r.events {
                if !self.index.contains_key(&e.topic) && !new_topics.contains(&e.topic) {
                    fresh.insert(e.topic.clone());
                }
            }
            if self.topics.len() + new_topics.len() + fresh.len() > max_topics {
                let reply = std::mem::replace(&mut r.reply, oneshot::channel().0);
                let _ = reply.send(Err(EngineError::ServerFull(Exhausted::Topics {
                    max: max_topics,
                })));
                return false;
            }
            new_topics.extend(fresh);
            true
        });
        let store = self.store.clone();
        let mut wb = store.batch();
        let mut stored: Vec<Vec<(Arc<Event>, usize)>> = Vec::with_capacity(batch.len());
        let mut idem_added = (0usize, 0usize);
        for r in &mut batch {
            let mut events = Vec::with_capacity(r.events.len());
            for mut new in std::mem::take(&mut r.events) {
                let i = self.topic_index(&new.topic);
                self.mark_dirty(i);
                let t = &mut self.topics[i];
                t.head += 1;
                if t.first == t.head {
                    // The topic had nothing retained: this is its oldest event.
                    t.first_at = now;
                }
                t.last_at = now;
                if let Some(id) = new.idempotency_key.take() {
                    // In the event's batch: a retry after a crash finds it.
                    let rec = IdempotencyRecord {
                        epoch: t.epoch,
                        seq: t.head,
                        published_at_ms: now,
                    };
                    idem_added.0 += 1;
                    idem_added.1 += wb.put_idempotency(&t.topic, &id, &rec);
                }
                let event = Arc::new(Event::new(new, Position::new(t.epoch, t.head), now));
                wb.put_event(
                    t.id,
                    t.head,
                    format::encode_event(now, event.name.as_deref(), &event.data),
                );
                events.push((event, i));
            }
            stored.push(events);
        }
        let idem_deleted = std::mem::take(&mut self.idem_deletions);
        for d in &idem_deleted {
            wb.delete_idempotency(d.at_ms, &d.key, d.record_too);
        }
        let changed = std::mem::take(&mut self.dirty);
        for &i in &changed {
            self.apply_count_limit(i);
            // Readers stop seeing dropped events now, before the deletion.
            self.shared
                .retain_from(&self.topics[i].topic, self.topics[i].first);
        }
        // `apply_count_limit` may have marked them dirty again.
        for &i in &changed {
            self.topics[i].dirty = false;
        }
        self.dirty.clear();
        self.delete_old(&mut wb);
        // Topics left with nothing retained and no subscriber go, record and
        // all; topics created from now on get a new epoch.
        let mut dropping: Vec<usize> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let candidates = std::mem::take(&mut self.drop_candidates);
        let fanout = self.shared.fanout();
        for i in changed.iter().copied().chain(candidates) {
            if dropping.len() >= DROP_BUDGET {
                break;
            }
            let t = &self.topics[i];
            if t.is_empty()
                && seen.insert(i)
                && fanout
                    .as_deref()
                    .is_none_or(|f| f.subscribers(&t.topic) == 0)
            {
                dropping.push(i);
            }
        }
        let next_topic_epoch = if dropping.is_empty() {
            None
        } else {
            let e = loop {
                let e = herald_core::engine::new_epoch();
                if e != self.shared.topic_epoch() && e != self.shared.epoch {
                    break e;
                }
            };
            wb.put_topic_epoch(e);
            Some(e)
        };
        for &i in &changed {
            let t = &self.topics[i];
            if dropping.contains(&i) {
                continue;
            }
            wb.put_topic(
                &t.topic,
                &TopicMeta {
                    id: t.id,
                    epoch: t.epoch,
                    head: t.head,
                    first: t.first,
                },
            );
        }
        for &i in &dropping {
            wb.delete_topic(&self.topics[i].topic);
        }
        if wb.is_empty() {
            return;
        }
        wb.put_commit_counter(self.commits + 1);
        let committed = wb
            .commit()
            .and_then(|()| self.store.write_high_water(self.commits + 1));
        if let Err(e) = committed {
            let why = format!("the store cannot write: {e}");
            tracing::error!(error = %e, "commit failed; refusing further publishes until a restart");
            self.shared.fail(why.clone());
            self.failed = Some(why.clone());
            for r in batch {
                let _ = r.reply.send(Err(EngineError::Unavailable(why.clone())));
            }
            return;
        }
        self.commits += 1;
        self.idem_records += idem_added.0;
        self.idem_bytes += idem_added.1;
        for d in &idem_deleted {
            self.idem_records = self.idem_records.saturating_sub(1);
            self.idem_bytes = self.idem_bytes.saturating_sub(d.bytes);
        }
        self.stat_commits += 1;
        self.stat_events += stored.iter().map(|v| v.len() as u64).sum::<u64>();
        // Durable: show, dispatch, acknowledge.
        let fanout = self.shared.fanout();
        for events in &stored {
            for (e, i) in events {
                let t = &self.topics[*i];
                self.shared.append(e, t.id, t.first, fanout.as_deref());
            }
        }
        // Over their byte budget, the tails shrink before anyone is answered.
        self.shared.trim_tails();
        // Drops are applied after this: they move topics in `self.topics`.
        for (r, events) in batch.into_iter().zip(stored) {
            let _ = r
                .reply
                .send(Ok(events.into_iter().map(|(e, _)| e).collect()));
        }
        if let Some(e) = next_topic_epoch {
            // Readers of unknown topics see the new epoch before the views go.
            self.shared.set_topic_epoch(e);
            self.drop_topics(dropping);
        }
        self.report_usage();
    }

    fn finish(&mut self) {
        tracing::debug!(
            commits = self.stat_commits,
            events = self.stat_events,
            "writer stopped"
        );
        let persisted = if self.fail_final_persist {
            Err(crate::StoreError::Storage(format!(
                "fault injected by {FAULT_ENV}={FAULT_FINAL_PERSIST}"
            )))
        } else {
            self.store.persist()
        };
        if let Err(e) = persisted {
            tracing::error!(error = %e, "final fsync failed");
            self.shared
                .set_close_error(format!("the store's final flush and fsync failed: {e}"));
        }
    }
}

/// The environment variable that injects a fault, for tests of what the
/// binary does when the store fails; [`FAULT_FINAL_PERSIST`] is the only
/// value it knows.
pub const FAULT_ENV: &str = "HERALD_EMBEDDED_FAULT";

/// Makes the final persist at close fail.
pub const FAULT_FINAL_PERSIST: &str = "final-persist";
