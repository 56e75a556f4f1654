//! Stores the embedded engine refuses or recovers from: damaged tables
//! and journals, another format, a foreign folder, a second process, and
//! a store older than its high-water mark (a new epoch).

mod common;

use std::path::Path;

use common::{config, ev, open, texts, topic, HOUR};
use herald_core::{Engine, GapReason, Position};
use herald_engine_embedded::{EmbeddedConfig, EmbeddedEngine, OpenError};

fn flip_bytes(path: &Path, at: f64) {
    let mut b = std::fs::read(path).unwrap();
    let start = ((b.len() as f64) * at) as usize;
    for x in b.iter_mut().skip(start).take(16) {
        *x ^= 0x5a;
    }
    std::fs::write(path, b).unwrap();
}

fn files_under(p: &Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(p).unwrap().flatten() {
        if e.path().is_dir() {
            v.extend(files_under(&e.path()));
        } else {
            v.push(e.path());
        }
    }
    v
}

async fn filled_store() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let e = open(EmbeddedConfig::new(dir.path()));
    let t = topic("t");
    for i in 0..300 {
        e.publish(vec![ev(&t, &format!("event {i} {}", "x".repeat(50)))])
            .await
            .unwrap();
    }
    e.close().await;
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_stores_are_refused() {
    // A damaged event table.
    let dir = filled_store().await;
    let tables: Vec<_> = files_under(&dir.path().join("db"))
        .into_iter()
        .filter(|p| p.parent().is_some_and(|d| d.ends_with("tables")))
        .collect();
    assert!(
        !tables.is_empty(),
        "a closed store has its events in tables"
    );
    let biggest = tables
        .iter()
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .unwrap();
    flip_bytes(biggest, 0.3);
    let err = EmbeddedEngine::open(EmbeddedConfig::new(dir.path()))
        .err()
        .expect("refused");
    assert!(matches!(err, OpenError::Corrupted { .. }), "{err}");
    assert!(err.to_string().contains("damaged"), "{err}");

    // A garbled marker.
    let dir = filled_store().await;
    std::fs::write(dir.path().join("HERALD-STORE"), "garbage").unwrap();
    let err = EmbeddedEngine::open(EmbeddedConfig::new(dir.path()))
        .err()
        .expect("refused");
    assert!(matches!(err, OpenError::Corrupted { .. }), "{err}");

    // The events folder gone while the marker stays: refusing keeps old
    // cursors from being misread against a new history with the same epoch.
    let dir = filled_store().await;
    std::fs::remove_dir_all(dir.path().join("db")).unwrap();
    let err = EmbeddedEngine::open(EmbeddedConfig::new(dir.path()))
        .err()
        .expect("refused");
    assert!(matches!(err, OpenError::Corrupted { .. }), "{err}");

    // The store files replaced by another store's.
    let dir = filled_store().await;
    let other = filled_store().await;
    std::fs::remove_dir_all(dir.path().join("db")).unwrap();
    std::fs::rename(other.path().join("db"), dir.path().join("db")).unwrap();
    let err = EmbeddedEngine::open(EmbeddedConfig::new(dir.path()))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("does not match"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_formats_foreign_folders_and_second_processes_are_refused() {
    let dir = filled_store().await;
    let marker = dir.path().join("HERALD-STORE");
    let text = std::fs::read_to_string(&marker).unwrap();
    std::fs::write(&marker, text.replace("format = 1", "format = 2")).unwrap();
    let err = EmbeddedEngine::open(EmbeddedConfig::new(dir.path()))
        .err()
        .expect("refused");
    assert!(
        matches!(
            err,
            OpenError::IncompatibleVersion {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
    let err = EmbeddedEngine::open(EmbeddedConfig::new(dir.path()))
        .err()
        .expect("refused");
    assert!(matches!(err, OpenError::NotAStore { .. }), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let first = open(EmbeddedConfig::new(dir.path()));
    let err = EmbeddedEngine::open(EmbeddedConfig::new(dir.path()))
        .err()
        .expect("refused");
    assert!(matches!(err, OpenError::Locked { .. }), "{err}");
    first.close().await;
    drop(first);
    // Closing released the files.
    open(EmbeddedConfig::new(dir.path())).close().await;
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// `db/` restored from an older copy while the high-water file is newer:
/// the lost commits are noticed, and the store moves to a new epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_older_than_its_high_water_mark_starts_a_new_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let backup = tempfile::tempdir().unwrap();
    let t = topic("t");
    let e = open(config(dir.path(), 1000, HOUR));
    let epoch = e.epoch();
    for i in 0..5 {
        e.publish(vec![ev(&t, &i.to_string())]).await.unwrap();
    }
    e.close().await;
    drop(e);
    copy_dir(&dir.path().join("db"), &backup.path().join("db"));
    let e = open(config(dir.path(), 1000, HOUR));
    for i in 5..10 {
        e.publish(vec![ev(&t, &i.to_string())]).await.unwrap();
    }
    e.close().await;
    drop(e);
    // A graceful reopen keeps the epoch.
    let e = open(config(dir.path(), 1000, HOUR));
    assert_eq!(e.epoch(), epoch);
    e.close().await;
    drop(e);
    std::fs::remove_dir_all(dir.path().join("db")).unwrap();
    copy_dir(&backup.path().join("db"), &dir.path().join("db"));
    let e = open(config(dir.path(), 1000, HOUR));
    let new_epoch = e.epoch();
    assert_ne!(new_epoch, epoch, "the rollback was not noticed");
    let r = e
        .read(&t, Some(Position::new(epoch, 7)), 100)
        .await
        .unwrap();
    assert_eq!(r.gap, Some(GapReason::EpochChanged));
    assert_eq!(texts(&r.events), ["0", "1", "2", "3", "4"]);
    assert!(r.events.iter().all(|e| e.position.epoch == new_epoch));
    let next = e.publish(vec![ev(&t, "new")]).await.unwrap();
    assert_eq!(next[0].position, Position::new(new_epoch, 6));
    e.close().await;
    drop(e);
    // Once: the next open keeps the new epoch.
    let e = open(config(dir.path(), 1000, HOUR));
    assert_eq!(e.epoch(), new_epoch);
    e.close().await;
}
