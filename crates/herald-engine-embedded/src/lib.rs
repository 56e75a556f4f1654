//! # herald-engine-embedded
//!
//! Herald's durable engine, the default of `herald serve`: an append-only
//! log per topic in an embedded store ([fjall], an LSM-tree with a
//! checksummed journal) on local disk. A publish is acknowledged only once
//! its event is fsynced; a restart, or a crash at any point, loses no
//! acknowledged event, and cursors issued before it resume exactly.
//!
//! # Layout
//!
//! - [`format`](mod@format): the on-disk format as pure functions: the `HERALD-STORE`
//!   marker (format version, epoch), keys and values.
//! - `store`: the store itself: range reads and atomic durable write
//!   batches; `store/open` opens it with the marker and high-water checks
//!   and recovers every topic.
//! - `writer`: the one thread that writes: group commit, positions, then
//!   dispatch in order; `writer/retention` applies retention by count and
//!   age, expires idempotency records and drops idle topics.
//! - `engine`: [`EmbeddedEngine`], the [`Engine`](herald_core::Engine):
//!   reads from a hot in-memory tail per topic (`engine/views`), or from
//!   the store; durable idempotency claims (`engine/idempotency`);
//!   topic policies and ephemeral topics, published in memory and never
//!   written (`engine/ephemeral`).
//!   One-time tokens stay in the hub's in-process store (one process is
//!   the whole deployment).
//! - [`EmbeddedConfig`], [`OpenError`].
//! - Tests: `tests/suite.rs` runs herald-core's engine suite (resume across
//!   restarts, retention, gaps, idempotency); `tests/engine.rs` and
//!   `tests/refusals.rs` what only a store on disk does; `tests/policies.rs`
//!   per-topic history and ephemeral topics (the folder does not grow).
//!
//! # How it keeps its promises
//!
//! - **Durable acknowledgements, with group commit.** One writer thread
//!   takes every publish that is waiting (and those that arrive within
//!   [`EmbeddedConfig::commit_delay`]), writes them in one atomic batch and
//!   waits for one fsync; only then are the events shown to readers,
//!   dispatched to subscribers in position order, and acknowledged.
//! - **Positions survive restarts.** Every topic's record (id, epoch, head,
//!   first retained) is written in the same batch as its events. The epoch
//!   is the store's, kept in the marker; a lost store (a new data dir), a
//!   store that lost acknowledged commits, and a topic dropped and used again
//!   all give old cursors an `epoch_changed` gap, never reused positions.
//! - **Truthful recovery.** Each commit counts itself in its batch and, once
//!   durable, in the fsynced `HERALD-HIGH-WATER` file; a store that opens with
//!   fewer commits than the file names moves to a new epoch.
//! - **Durable idempotency.** A publish's idempotency record is written in its
//!   event's batch ([`Engine::idempotency_store`](herald_core::Engine::idempotency_store)),
//!   so a retry after a crash is answered with the original position.
//! - **Refusal over wrong data.** Opening checks the marker's format version,
//!   that the store record matches it, and every topic record against the
//!   events on disk; the journal and tables are checksummed by fjall. Any
//!   mismatch is an [`OpenError`] with a message saying what to do.
//! - **Bounded disk and memory.** Retention by count is applied to the topics
//!   each commit touches; retention by age runs in short passes; readers stop
//!   seeing dropped events at once and deletions follow within a per-commit
//!   budget, so publishes never wait for a large purge. Journals are capped at
//!   64 MiB. Each topic keeps at most [`EmbeddedConfig::hot_tail`] events and
//!   [`EmbeddedConfig::hot_tail_bytes`] in memory, all topics together
//!   [`EmbeddedConfig::hot_tail_total_bytes`]. A topic with nothing retained
//!   and no subscriber is dropped, in memory and on disk; idempotency records
//!   expire on a timer and are bounded in count and bytes.
//!
//! See the crate's `README.md` for the store comparison (redb, fjall,
//! SQLite) and the measurements behind the choice.
//!
//! # Example
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use herald_core::{Data, Hub, HubConfig, NewEvent, Topic};
//! use herald_engine_embedded::{EmbeddedConfig, EmbeddedEngine};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let engine = EmbeddedEngine::open(EmbeddedConfig::new(dir.path())).unwrap();
//! let hub = Hub::new(Arc::new(engine), HubConfig::default());
//! let topic = Topic::new("orders/123").unwrap();
//! // Resolves once the event is on disk.
//! let event = hub.publish(NewEvent::new(topic, Data::Text("shipped".into()))).await.unwrap();
//! assert_eq!(event.position.seq, 1);
//! hub.engine().close().await;
//! # });
//! ```
//!
//! [fjall]: https://docs.rs/fjall

#![warn(missing_docs)]

mod config;
mod engine;
mod error;
pub mod format;
mod store;
mod writer;

pub use config::{EmbeddedConfig, DEFAULT_COMMIT_DELAY};
pub use engine::EmbeddedEngine;
pub use error::{OpenError, StoreError};
pub use writer::{FAULT_ENV, FAULT_FINAL_PERSIST};
