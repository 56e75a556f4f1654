//! What can go wrong opening or using the store.

use std::path::PathBuf;

use crate::format::MARKER_FILE;

/// Why the store could not be opened. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "the data dir {path} is not a Herald store: it is not empty and has no {MARKER_FILE} file. \
         Point --data-dir at an empty or missing folder, or at an existing Herald store"
    )]
    NotAStore { path: PathBuf },
    #[error(
        "the data dir {path} holds store format {found}, and this Herald reads format {supported}. \
         Run the Herald version that wrote it, or move the folder away to start with an empty store"
    )]
    IncompatibleVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error(
        "the data dir {path} is damaged: {detail}. Herald refuses to start rather than serve \
         wrong or incomplete history; restore the folder from a backup, or move it away to start with an empty store"
    )]
    Corrupted { path: PathBuf, detail: String },
    #[error("the data dir {path} is in use by another Herald process")]
    Locked { path: PathBuf },
    #[error("cannot use {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A failure of the running store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Storage(String),
    #[error("a stored event of topic {topic} is damaged: {detail}")]
    Corrupt { topic: String, detail: String },
}

impl From<fjall::Error> for StoreError {
    fn from(e: fjall::Error) -> Self {
        StoreError::Storage(format!("{e:?}"))
    }
}
