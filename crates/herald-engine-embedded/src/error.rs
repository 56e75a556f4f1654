//! What can go wrong opening or using the store.

use std::path::PathBuf;

use crate::format::MARKER_FILE;

/// Why the store could not be opened. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The data dir is neither empty nor a Herald store (it has files but no marker).
    #[error(
        "the data dir {path} is not a Herald store: it is not empty and has no {MARKER_FILE} file. \
         Point --data-dir at an empty or missing folder, or at an existing Herald store"
    )]
    NotAStore {
        /// The data dir.
        path: PathBuf,
    },
    /// The store was written in a format this build does not read.
    #[error(
        "the data dir {path} holds store format {found}, and this Herald reads format {supported}. \
         Run the Herald version that wrote it, or move the folder away to start with an empty store"
    )]
    IncompatibleVersion {
        /// The data dir.
        path: PathBuf,
        /// The format version its marker names.
        found: u32,
        /// The format version this build reads ([`crate::format::FORMAT_VERSION`]).
        supported: u32,
    },
    /// The store's marker, records or high-water file are damaged or disagree
    /// (acknowledged commits lost, a swapped store).
    #[error(
        "the data dir {path} is damaged: {detail}. Herald refuses to start rather than serve \
         wrong or incomplete history; restore the folder from a backup, or move it away to start with an empty store"
    )]
    Corrupted {
        /// The data dir.
        path: PathBuf,
        /// What is damaged: the marker, the store record, the high-water
        /// file, or a mismatch between them.
        detail: String,
    },
    /// Another process holds the store's lock.
    #[error("the data dir {path} is in use by another Herald process")]
    Locked {
        /// The data dir.
        path: PathBuf,
    },
    /// Reading or creating a file of the data dir failed.
    #[error("cannot use {path}: {source}")]
    Io {
        /// The file or folder that could not be used.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// A failure of the running store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage library (fjall), a write of the high-water file or a
    /// blocking read task failed; the text says which.
    #[error("storage error: {0}")]
    Storage(String),
    /// A stored event, idempotency record or expiry key did not decode (see
    /// [`crate::format::DecodeError`]).
    #[error("a stored event of topic {topic} is damaged: {detail}")]
    Corrupt {
        /// The topic the value belongs to (empty for an expiry key, which
        /// names none).
        topic: String,
        /// The decode error.
        detail: String,
    },
}

impl From<fjall::Error> for StoreError {
    fn from(e: fjall::Error) -> Self {
        StoreError::Storage(format!("{e:?}"))
    }
}
