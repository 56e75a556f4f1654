//! Opening a store: creating it, or checking the marker, the store record
//! and the high-water mark, then recovering every topic's record; the data
//! dir's lock and the marker written atomically.

use super::*;

impl Store {
    /// Opens the store in `dir`, creating it if `dir` is missing or empty,
    /// and recovers every topic's record (see [`Store::recover`] for
    /// `verify`). Refuses a dir that is not a Herald
    /// store, has another format version, or is damaged. A store that holds
    /// fewer commits than its high-water file says (its journal lost
    /// acknowledged writes) is given a new epoch, so that every earlier
    /// cursor gets an `epoch_changed` gap instead of silently skipping
    /// events.
    pub fn open(dir: &Path, verify: bool) -> Result<(Store, Recovered), OpenError> {
        // The storage library may panic on some kinds of damage; that is a
        // damaged store too, and deserves the same clear refusal.
        match std::panic::catch_unwind(|| Store::open_inner(dir, verify)) {
            Ok(r) => r,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "a panic".into());
                let what = what.lines().next().unwrap_or_default().to_owned();
                Err(OpenError::Corrupted {
                    path: dir.to_owned(),
                    detail: format!("the storage library failed while reading it ({what})"),
                })
            }
        }
    }

    fn open_inner(dir: &Path, verify: bool) -> Result<(Store, Recovered), OpenError> {
        let corrupted = |detail: String| OpenError::Corrupted {
            path: dir.to_owned(),
            detail,
        };
        std::fs::create_dir_all(dir).map_err(|e| OpenError::Io {
            path: dir.to_owned(),
            source: e,
        })?;
        let dir_lock = lock_dir(dir)?;
        let marker_path = dir.join(MARKER_FILE);
        let mut store = match std::fs::read(&marker_path) {
            Ok(bytes) => {
                let text = String::from_utf8(bytes)
                    .map_err(|_| corrupted(format!("its {MARKER_FILE} file is not text")))?;
                let marker = format::decode_marker(&text)
                    .map_err(|e| corrupted(format!("its {MARKER_FILE} file is unreadable: {e}")))?;
                if marker.format != FORMAT_VERSION {
                    return Err(OpenError::IncompatibleVersion {
                        path: dir.to_owned(),
                        found: marker.format,
                        supported: FORMAT_VERSION,
                    });
                }
                let db_dir = dir.join(DB_DIR);
                if !db_dir.is_dir() {
                    return Err(corrupted(format!(
                        "its {DB_DIR}/ folder, which holds the events, is missing"
                    )));
                }
                let mut store = Store::open_db(dir, marker, dir_lock)?;
                match store.read_store_record()? {
                    Some(rec) if rec.marker == marker => store.previous_epoch = rec.previous_epoch,
                    Some(rec)
                        if rec.marker.format == marker.format
                            && rec.previous_epoch == marker.epoch =>
                    {
                        // A new epoch was started and the marker's rewrite
                        // was interrupted: finish it.
                        store.marker = rec.marker;
                        store.previous_epoch = rec.previous_epoch;
                        write_marker(dir, rec.marker)?;
                    }
                    Some(rec) => {
                        let rec = rec.marker;
                        return Err(corrupted(format!(
                            "its {MARKER_FILE} file (format {}, epoch {:x}) does not match the store (format {}, epoch {:x})",
                            marker.format, marker.epoch, rec.format, rec.epoch
                        )));
                    }
                    None => {
                        return Err(corrupted(
                            "its store files were replaced or lost (the store record is missing)"
                                .into(),
                        ))
                    }
                }
                store
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Store::create(dir, dir_lock)?,
            Err(e) => {
                return Err(OpenError::Io {
                    path: marker_path,
                    source: e,
                })
            }
        };
        let mut recovered = Recovered {
            topics: store.recover(verify)?,
            ..Recovered::default()
        };
        let found = store.read_u64(COMMIT_COUNTER_KEY, "the commit counter")?;
        recovered.topic_epoch = store.read_u64(TOPIC_EPOCH_KEY, "the topic epoch")?;
        let high_water = store.read_high_water()?;
        recovered.commits = found.max(high_water);
        if found < high_water {
            store.start_new_epoch(&mut recovered.topics, high_water)?;
            recovered.rolled_back = Some((high_water, found));
            recovered.topic_epoch = store.marker.epoch;
        }
        if recovered.topic_epoch == 0 {
            recovered.topic_epoch = store.marker.epoch;
        }
        let (n, bytes) = store.count_idempotency()?;
        recovered.idempotency_records = n;
        recovered.idempotency_bytes = bytes;
        Ok((store, recovered))
    }

    /// The journal lost acknowledged commits: every topic (and the store)
    /// moves to a new epoch, in one batch that also sets the commit counter
    /// back to the high-water mark; then the marker is rewritten.
    fn start_new_epoch(
        &mut self,
        topics: &mut [RecoveredTopic],
        high_water: u64,
    ) -> Result<(), OpenError> {
        let epoch = loop {
            let e = herald_core::engine::new_epoch();
            if e != self.marker.epoch {
                break e;
            }
        };
        let record = StoreRecord {
            marker: Marker {
                format: self.marker.format,
                epoch,
            },
            previous_epoch: self.marker.epoch,
        };
        let mut b = self.batch();
        b.inner.insert(
            &self.topics,
            STORE_RECORD_KEY.to_vec(),
            format::encode_store_record(record),
        );
        b.put_commit_counter(high_water);
        b.put_topic_epoch(epoch);
        for t in topics.iter_mut() {
            t.meta.epoch = epoch;
            b.put_topic(&t.topic, &t.meta);
        }
        b.commit().map_err(|e| OpenError::Io {
            path: self.dir.join(DB_DIR),
            source: std::io::Error::other(e.to_string()),
        })?;
        write_marker(&self.dir, record.marker)?;
        self.marker = record.marker;
        self.previous_epoch = record.previous_epoch;
        Ok(())
    }

    fn read_u64(&self, key: &[u8], what: &'static str) -> Result<u64, OpenError> {
        match self.topics.get(key) {
            Ok(None) => Ok(0),
            Ok(Some(v)) => format::decode_u64(what, &v).map_err(|e| OpenError::Corrupted {
                path: self.dir.clone(),
                detail: e.to_string(),
            }),
            Err(e) => Err(self.open_error(e)),
        }
    }

    /// The high-water mark; 0 when the file is empty or missing (a store
    /// written before it existed, or restored without it: then a rollback
    /// cannot be told, and the file starts again from the store's count).
    fn read_high_water(&self) -> Result<u64, OpenError> {
        let mut b = [0u8; 16];
        let len = self
            .high_water
            .metadata()
            .map_err(|e| OpenError::Io {
                path: self.dir.join(HIGH_WATER_FILE),
                source: e,
            })?
            .len();
        if len == 0 {
            return Ok(0);
        }
        self.high_water
            .read_exact_at(&mut b, 0)
            .map_err(|e| OpenError::Io {
                path: self.dir.join(HIGH_WATER_FILE),
                source: e,
            })?;
        format::decode_high_water(&b).map_err(|e| OpenError::Corrupted {
            path: self.dir.clone(),
            detail: format!(
                "{e}; if the store itself is intact, delete {HIGH_WATER_FILE} and start again"
            ),
        })
    }

    /// Rewrites the high-water file with `commits` and fsyncs it.
    pub fn write_high_water(&self, commits: u64) -> Result<(), StoreError> {
        self.high_water
            .write_all_at(&format::encode_high_water(commits), 0)
            .and_then(|()| self.high_water.sync_data())
            .map_err(|e| StoreError::Storage(format!("cannot write {HIGH_WATER_FILE}: {e}")))
    }

    /// Counts the idempotency records (their expiry entries) and the bytes of
    /// their keys.
    fn count_idempotency(&self) -> Result<(usize, usize), OpenError> {
        let (mut n, mut bytes) = (0usize, 0usize);
        for kv in self.idempotency.prefix(b"x") {
            let k = kv.key().map_err(|e| self.open_error(e))?;
            n += 1;
            bytes += idempotency_entry_bytes(k.len());
        }
        Ok((n, bytes))
    }

    /// A dir without a marker: a fresh start, or a first start that was
    /// interrupted between creating the store and writing the marker.
    fn create(dir: &Path, dir_lock: File) -> Result<Store, OpenError> {
        let names: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| OpenError::Io {
                path: dir.to_owned(),
                source: e,
            })?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with(&format!("{MARKER_FILE}.tmp")) && n != HIGH_WATER_FILE)
            .collect();
        let interrupted = names == [DB_DIR];
        if !names.is_empty() && !interrupted {
            return Err(OpenError::NotAStore {
                path: dir.to_owned(),
            });
        }
        let fresh = Marker {
            format: FORMAT_VERSION,
            epoch: herald_core::engine::new_epoch(),
        };
        let mut store = Store::open_db(dir, fresh, dir_lock)?;
        match store.read_store_record()? {
            Some(rec) if rec.marker.format == FORMAT_VERSION => {
                store.marker = rec.marker;
                store.previous_epoch = rec.previous_epoch;
            }
            Some(rec) => {
                return Err(OpenError::IncompatibleVersion {
                    path: dir.to_owned(),
                    found: rec.marker.format,
                    supported: FORMAT_VERSION,
                })
            }
            None => {
                let empty = store.events.first_key_value().is_none()
                    && store.topics.first_key_value().is_none();
                if !empty {
                    return Err(OpenError::Corrupted {
                        path: dir.to_owned(),
                        detail: format!(
                            "it holds events but neither a {MARKER_FILE} file nor a store record"
                        ),
                    });
                }
                let mut b = store.db.batch().durability(Some(PersistMode::SyncAll));
                b.insert(
                    &store.topics,
                    STORE_RECORD_KEY.to_vec(),
                    format::encode_store_record(StoreRecord {
                        marker: fresh,
                        previous_epoch: 0,
                    }),
                );
                // The store record lives in the `topics` keyspace under a key
                // no topic can have (topic records are keyed by `t` + name).
                b.commit().map_err(|e| store.open_error(e))?;
                // A high-water file left from an earlier store in this dir
                // says nothing about this one.
                store.write_high_water(0).map_err(|e| OpenError::Io {
                    path: dir.join(HIGH_WATER_FILE),
                    source: std::io::Error::other(e.to_string()),
                })?;
            }
        }
        write_marker(dir, store.marker)?;
        Ok(store)
    }

    fn open_db(dir: &Path, marker: Marker, dir_lock: File) -> Result<Store, OpenError> {
        let db_dir = dir.join(DB_DIR);
        // fjall refuses a store whose lock file is missing (a copy or backup
        // restore that skipped the empty file). The data dir is locked by
        // this process, so no other Herald uses it: recreate the file.
        if db_dir.join("version").is_file() && !db_dir.join(FJALL_LOCK_FILE).exists() {
            let lock = db_dir.join(FJALL_LOCK_FILE);
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&lock)
                .and_then(|_| File::open(&db_dir).and_then(|d| d.sync_all()))
                .map_err(|e| OpenError::Io {
                    path: lock.clone(),
                    source: e,
                })?;
            tracing::warn!(path = %lock.display(), "the store's lock file was missing; recreated it");
        }
        let high_water_path = dir.join(HIGH_WATER_FILE);
        let high_water = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&high_water_path)
            .map_err(|e| OpenError::Io {
                path: high_water_path,
                source: e,
            })?;
        let db = Database::builder(db_dir)
            .max_journaling_size(MAX_JOURNAL_BYTES)
            .worker_threads(2)
            .open()
            .map_err(|e| fjall_open_error(dir, e))?;
        let events = db
            .keyspace("events", KeyspaceCreateOptions::default)
            .map_err(|e| fjall_open_error(dir, e))?;
        let topics = db
            .keyspace("topics", KeyspaceCreateOptions::default)
            .map_err(|e| fjall_open_error(dir, e))?;
        let idempotency = db
            .keyspace("idempotency", KeyspaceCreateOptions::default)
            .map_err(|e| fjall_open_error(dir, e))?;
        Ok(Store {
            db,
            events,
            topics,
            idempotency,
            marker,
            previous_epoch: 0,
            dir: dir.to_owned(),
            _dir_lock: dir_lock,
            high_water,
        })
    }

    fn open_error(&self, e: fjall::Error) -> OpenError {
        fjall_open_error(&self.dir, e)
    }

    fn read_store_record(&self) -> Result<Option<StoreRecord>, OpenError> {
        match self.topics.get(STORE_RECORD_KEY) {
            Ok(None) => Ok(None),
            Ok(Some(v)) => {
                format::decode_store_record(&v)
                    .map(Some)
                    .map_err(|e| OpenError::Corrupted {
                        path: self.dir.clone(),
                        detail: e.to_string(),
                    })
            }
            Err(e) => Err(self.open_error(e)),
        }
    }

    /// Reads every topic record and checks it against the events on disk:
    /// with `verify`, by reading every stored event (which checks every
    /// block's checksum, every value's format, and that each topic's events
    /// are contiguous); without, by looking at each topic's first and last.
    fn recover(&self, verify: bool) -> Result<Vec<RecoveredTopic>, OpenError> {
        let corrupted = |detail: String| OpenError::Corrupted {
            path: self.dir.clone(),
            detail,
        };
        let mut out = Vec::new();
        let mut by_id = HashMap::new();
        for kv in self.topics.prefix(TOPIC_PREFIX) {
            let (k, v) = kv.into_inner().map_err(|e| self.open_error(e))?;
            let name = std::str::from_utf8(&k[TOPIC_PREFIX.len()..])
                .ok()
                .and_then(|n| Topic::new(n).ok())
                .ok_or_else(|| corrupted("a topic record has an invalid name".into()))?;
            let meta = format::decode_topic_meta(&v)
                .map_err(|e| corrupted(format!("topic {name:?}: {e}")))?;
            if by_id.insert(meta.id, out.len()).is_some() {
                return Err(corrupted(format!(
                    "topic {name:?} shares its id {} with another topic",
                    meta.id
                )));
            }
            out.push(RecoveredTopic {
                topic: name,
                meta,
                on_disk_from: meta.head + 1,
            });
        }
        // What is on disk per topic: (lowest, highest) sequence.
        let mut span: Vec<Option<(u64, u64)>> = vec![None; out.len()];
        let mut check = |k: &[u8], v: &[u8], must_follow: bool| -> Result<(), OpenError> {
            let (id, seq) = format::decode_event_key(k).map_err(|e| corrupted(e.to_string()))?;
            let Some(&i) = by_id.get(&id) else {
                return Err(corrupted(format!(
                    "it holds events of a topic (id {id}) that has no record"
                )));
            };
            let name = &out[i].topic;
            format::decode_event(v)
                .map_err(|e| corrupted(format!("topic {name:?}, event {seq}: {e}")))?;
            span[i] = match span[i] {
                None => Some((seq, seq)),
                Some((lo, hi)) if !must_follow || seq == hi + 1 => Some((lo.min(seq), hi.max(seq))),
                Some((_, hi)) => {
                    return Err(corrupted(format!(
                        "topic {name:?}: events {} to {} are missing",
                        hi + 1,
                        seq - 1
                    )))
                }
            };
            Ok(())
        };
        if verify {
            for kv in self.events.iter() {
                let (k, v) = kv.into_inner().map_err(|e| self.open_error(e))?;
                check(&k, &v, true)?;
            }
        } else {
            for r in &out {
                let prefix = r.meta.id.to_be_bytes();
                for g in [
                    self.events.prefix(prefix).next(),
                    self.events.prefix(prefix).next_back(),
                ]
                .into_iter()
                .flatten()
                {
                    let (k, v) = g.into_inner().map_err(|e| self.open_error(e))?;
                    check(&k, &v, false)?;
                }
            }
        }
        for (r, span) in out.iter_mut().zip(span) {
            let (name, meta) = (&r.topic, r.meta);
            if meta.first <= meta.head {
                match span {
                    Some((lo, hi)) if lo <= meta.first && hi == meta.head => r.on_disk_from = lo,
                    Some((_, hi)) if hi != meta.head => {
                        return Err(corrupted(format!(
                        "topic {name:?}: its latest event is {hi} on disk, but {} in its record",
                        meta.head
                    )))
                    }
                    _ => {
                        return Err(corrupted(format!(
                        "topic {name:?}: events from {} that its record says are kept are missing",
                        meta.first
                    )))
                    }
                }
            } else if let Some((lo, hi)) = span {
                if hi > meta.head {
                    return Err(corrupted(format!(
                        "topic {name:?}: it holds events past its recorded head ({})",
                        meta.head
                    )));
                }
                r.on_disk_from = lo;
            }
        }
        Ok(out)
    }
}

/// Locks the data dir (an advisory lock on the folder itself) for this
/// process, so that two Herald processes never open one store, whatever
/// state fjall's own lock file is in.
fn lock_dir(dir: &Path) -> Result<File, OpenError> {
    let f = File::open(dir).map_err(|e| OpenError::Io {
        path: dir.to_owned(),
        source: e,
    })?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(OpenError::Locked {
            path: dir.to_owned(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(OpenError::Io {
            path: dir.to_owned(),
            source: e,
        }),
    }
}

fn fjall_open_error(dir: &Path, e: fjall::Error) -> OpenError {
    let path = dir.to_owned();
    match e {
        fjall::Error::Locked => OpenError::Locked { path },
        fjall::Error::InvalidVersion(v) => OpenError::Corrupted {
            path,
            detail: format!(
                "its store files have a format this build cannot read ({v:?}); they were written by another version or damaged"
            ),
        },
        fjall::Error::Io(io)
            if !matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            OpenError::Io {
                path: path.join(DB_DIR),
                source: io,
            }
        }
        other => OpenError::Corrupted {
            path,
            detail: format!("the store files are damaged ({other:?})"),
        },
    }
}

/// Writes the marker so that it is either absent or complete: a temporary
/// file, fsync, rename, fsync of the folder.
fn write_marker(dir: &Path, marker: Marker) -> Result<(), OpenError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| OpenError::Io { path, source }
    };
    let tmp = dir.join(format!("{MARKER_FILE}.tmp"));
    let path = dir.join(MARKER_FILE);
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(format::encode_marker(marker).as_bytes())
        .map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}
