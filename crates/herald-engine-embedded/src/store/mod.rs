//! The store on disk: opening (with the marker checks and recovery, in
//! `open`), reading event ranges, and atomic, durable write batches.
//! Blocking calls; the engine runs them on its writer thread or on tokio's
//! blocking pool.

mod open;

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use herald_core::{Event, NewEvent, Position, Topic};

use crate::error::{OpenError, StoreError};
use crate::format::{
    self, IdempotencyRecord, Marker, StoreRecord, TopicMeta, COMMIT_COUNTER_KEY, FORMAT_VERSION,
    HIGH_WATER_FILE, MARKER_FILE, STORE_RECORD_KEY, TOPIC_EPOCH_KEY,
};

/// fjall's folder inside the data dir.
const DB_DIR: &str = "db";
/// Journals are flushed into tables past this size, which bounds both the
/// disk they use and the time a restart spends replaying them.
const MAX_JOURNAL_BYTES: u64 = 64 * 1024 * 1024;

/// fjall's lock file inside `db/`: an empty file it locks. A store copied
/// or restored without it is still whole; the file is recreated under the
/// data dir's own lock.
const FJALL_LOCK_FILE: &str = "lock";

/// An open store.
pub struct Store {
    db: Database,
    events: Keyspace,
    topics: Keyspace,
    idempotency: Keyspace,
    marker: Marker,
    previous_epoch: u64,
    dir: PathBuf,
    /// The data dir, locked for as long as the store is open.
    _dir_lock: File,
    /// The high-water file, rewritten and fsynced after each commit.
    high_water: File,
}

/// What opening found, besides the topics.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    pub topics: Vec<RecoveredTopic>,
    /// Commits the store holds (and the high-water file says).
    pub commits: u64,
    /// The epoch of new topics (see [`format::TOPIC_EPOCH_KEY`]).
    pub topic_epoch: u64,
    /// Idempotency records on disk: expiry index entries, and their bytes.
    pub idempotency_records: usize,
    pub idempotency_bytes: usize,
    /// Set when the store had lost acknowledged commits and a new epoch was
    /// started: (commits the high-water file names, commits found).
    pub rolled_back: Option<(u64, u64)>,
}

/// A topic as recovered at open.
#[derive(Debug, Clone)]
pub struct RecoveredTopic {
    pub topic: Topic,
    pub meta: TopicMeta,
    /// The lowest sequence still on disk (`meta.first` or below: retention
    /// may not have deleted everything it dropped yet).
    pub on_disk_from: u64,
}

impl Store {
    pub fn marker(&self) -> Marker {
        self.marker
    }

    /// The epoch before the current one (0: the store never changed epoch).
    pub fn previous_epoch(&self) -> u64 {
        self.previous_epoch
    }

    /// The idempotency record of `id` on `topic`, if there is one.
    pub fn idempotency_record(
        &self,
        topic: &Topic,
        id: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let key = format::idempotency_key(topic.as_str(), id);
        match self.idempotency.get(&key).map_err(StoreError::from)? {
            None => Ok(None),
            Some(v) => format::decode_idempotency_record(&v)
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    topic: topic.to_string(),
                    detail: format!("idempotency record {id:?}: {e}"),
                }),
        }
    }

    /// Up to `n` of the oldest idempotency expiry entries: (published at,
    /// record key).
    pub fn oldest_idempotency(&self, n: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.idempotency.prefix(b"x").take(n) {
            let k = kv.key().map_err(StoreError::from)?;
            let (at, record) =
                format::decode_idempotency_expiry_key(&k).map_err(|e| StoreError::Corrupt {
                    topic: String::new(),
                    detail: e.to_string(),
                })?;
            out.push((at, record.to_vec()));
        }
        Ok(out)
    }

    /// The publish time of the record under `record_key`, if there is one.
    pub fn idempotency_record_time(&self, record_key: &[u8]) -> Result<Option<u64>, StoreError> {
        match self.idempotency.get(record_key).map_err(StoreError::from)? {
            None => Ok(None),
            Some(v) => Ok(format::decode_idempotency_record(&v)
                .ok()
                .map(|r| r.published_at_ms)),
        }
    }

    /// Events `from..=to` of the topic with id `id`, as far as they are on
    /// disk, in order.
    pub fn read_events(
        &self,
        topic: &Topic,
        id: u64,
        epoch: u64,
        from: u64,
        to: u64,
    ) -> Result<Vec<Arc<Event>>, StoreError> {
        let mut out = Vec::new();
        if from > to {
            return Ok(out);
        }
        let range = format::event_key(id, from)..=format::event_key(id, to);
        for kv in self.events.range(range) {
            let (k, v) = kv.into_inner().map_err(StoreError::from)?;
            let (_, seq) = format::decode_event_key(&k).map_err(|e| StoreError::Corrupt {
                topic: topic.to_string(),
                detail: e.to_string(),
            })?;
            let stored = format::decode_event(&v).map_err(|e| StoreError::Corrupt {
                topic: topic.to_string(),
                detail: format!("event {seq}: {e}"),
            })?;
            let mut new = NewEvent::new(topic.clone(), stored.data);
            new.name = stored.name;
            out.push(Arc::new(Event::new(
                new,
                Position::new(epoch, seq),
                stored.published_at_ms,
            )));
        }
        Ok(out)
    }

    /// The first event in `from..=to` of topic `id` published at or after
    /// `cutoff_ms`, looking at no more than `budget` events: `Found(seq,
    /// published_at)`, `NoneUpTo(seq)` when every event up to `seq` is older
    /// (the budget ran out, or `seq == to`).
    pub fn first_not_older(
        &self,
        id: u64,
        from: u64,
        to: u64,
        cutoff_ms: u64,
        budget: usize,
    ) -> Result<AgeScan, StoreError> {
        let mut last = from.saturating_sub(1);
        if from > to {
            return Ok(AgeScan::NoneUpTo(last));
        }
        let range = format::event_key(id, from)..=format::event_key(id, to);
        for kv in self.events.range(range).take(budget.max(1)) {
            let (k, v) = kv.into_inner().map_err(StoreError::from)?;
            let (_, seq) = format::decode_event_key(&k).map_err(|e| StoreError::Corrupt {
                topic: format!("#{id}"),
                detail: e.to_string(),
            })?;
            let stored = format::decode_event(&v).map_err(|e| StoreError::Corrupt {
                topic: format!("#{id}"),
                detail: format!("event {seq}: {e}"),
            })?;
            if stored.published_at_ms >= cutoff_ms {
                return Ok(AgeScan::Found(seq, stored.published_at_ms));
            }
            last = seq;
        }
        Ok(AgeScan::NoneUpTo(last))
    }

    /// A new atomic batch of writes.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            store: self,
            inner: self.db.batch().durability(Some(PersistMode::SyncAll)),
        }
    }

    /// Makes everything written so far durable (graceful close).
    pub fn persist(&self) -> Result<(), StoreError> {
        self.db
            .persist(PersistMode::SyncAll)
            .map_err(StoreError::from)
    }
}

/// Topic records are keyed by this prefix + the name, apart from the store
/// record.
const TOPIC_PREFIX: &[u8] = b"t";

fn topic_key(topic: &Topic) -> Vec<u8> {
    let mut key = Vec::with_capacity(TOPIC_PREFIX.len() + topic.as_str().len());
    key.extend_from_slice(TOPIC_PREFIX);
    key.extend_from_slice(topic.as_str().as_bytes());
    key
}

/// What one idempotency record costs on disk, as counted for the bound: its
/// key twice (record and expiry entry) and its value.
pub fn idempotency_entry_bytes(expiry_key_len: usize) -> usize {
    2 * expiry_key_len + 25
}

/// The result of [`Store::first_not_older`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgeScan {
    Found(u64, u64),
    NoneUpTo(u64),
}

/// Writes that become durable together, or not at all.
pub struct Batch<'a> {
    store: &'a Store,
    inner: fjall::OwnedWriteBatch,
}

impl Batch<'_> {
    pub fn put_event(&mut self, id: u64, seq: u64, value: Vec<u8>) {
        self.inner.insert(
            &self.store.events,
            format::event_key(id, seq).to_vec(),
            value,
        );
    }

    pub fn delete_event(&mut self, id: u64, seq: u64) {
        self.inner
            .remove(&self.store.events, format::event_key(id, seq).to_vec());
    }

    pub fn put_topic(&mut self, topic: &Topic, meta: &TopicMeta) {
        self.inner.insert(
            &self.store.topics,
            topic_key(topic),
            format::encode_topic_meta(meta).to_vec(),
        );
    }

    /// Removes a topic's record (its events must be deleted too).
    pub fn delete_topic(&mut self, topic: &Topic) {
        self.inner.remove(&self.store.topics, topic_key(topic));
    }

    pub fn put_commit_counter(&mut self, commits: u64) {
        self.inner.insert(
            &self.store.topics,
            COMMIT_COUNTER_KEY.to_vec(),
            format::encode_u64(commits).to_vec(),
        );
    }

    pub fn put_topic_epoch(&mut self, epoch: u64) {
        self.inner.insert(
            &self.store.topics,
            TOPIC_EPOCH_KEY.to_vec(),
            format::encode_u64(epoch).to_vec(),
        );
    }

    /// An idempotency record and its expiry entry; returns the bytes it
    /// counts for the bound.
    pub fn put_idempotency(&mut self, topic: &Topic, id: &str, r: &IdempotencyRecord) -> usize {
        let key = format::idempotency_key(topic.as_str(), id);
        let expiry = format::idempotency_expiry_key(r.published_at_ms, &key);
        let bytes = idempotency_entry_bytes(expiry.len());
        self.inner.insert(
            &self.store.idempotency,
            key,
            format::encode_idempotency_record(r).to_vec(),
        );
        self.inner
            .insert(&self.store.idempotency, expiry, Vec::<u8>::new());
        bytes
    }

    /// Removes an expiry entry, and its record when the record is still the
    /// one the entry was written for.
    pub fn delete_idempotency(&mut self, at_ms: u64, record_key: &[u8], record_too: bool) {
        self.inner.remove(
            &self.store.idempotency,
            format::idempotency_expiry_key(at_ms, record_key),
        );
        if record_too {
            self.inner
                .remove(&self.store.idempotency, record_key.to_vec());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Writes the batch and waits for the fsync.
    pub fn commit(self) -> Result<(), StoreError> {
        self.inner.commit().map_err(StoreError::from)
    }
}
