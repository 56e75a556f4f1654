//! Damaged, foreign or unwritable stores: refused with a clear message and a
//! non-zero exit, or started when only the lock file is missing.

use super::*;

fn damage(path: &Path) {
    let mut b = std::fs::read(path).unwrap();
    let start = b.len() / 3;
    for x in b.iter_mut().skip(start).take(32) {
        *x ^= 0x5a;
    }
    std::fs::write(path, b).unwrap();
}

/// A data dir with 500 events, stopped gracefully.
async fn filled(dir: &Path) {
    let herald = Herald::start(dir, &[]);
    let client = Client::new(&herald.url).unwrap();
    for i in 0..500 {
        publish(&client, "t", &format!("event {i} {}", "x".repeat(64))).await;
    }
    assert!(herald.sigterm().success());
}

fn assert_refused(dir: &Path, needles: &[&str]) {
    let refused = match Herald::try_start(dir, &[]) {
        Ok(h) => panic!("herald started on a bad data dir: {}", h.url),
        Err(r) => r,
    };
    let status = refused.status.expect("herald exited");
    assert!(!status.success(), "exit status {status:?}");
    for n in needles {
        assert!(
            refused.stderr.contains(n),
            "no {n:?} in: {}",
            refused.stderr
        );
    }
    assert!(!refused.stderr.contains("panicked"), "{}", refused.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_is_refused_with_a_clear_message() {
    let dir = TempDir::new("damaged");
    let data = dir.path().join("data");
    filled(&data).await;
    let tables: Vec<PathBuf> = files_under(&data.join("db"))
        .into_iter()
        .filter(|p| p.parent().is_some_and(|d| d.ends_with("tables")))
        .collect();
    let biggest = tables
        .iter()
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a closed store keeps its events in tables");
    damage(biggest);
    assert_refused(&data, &["is damaged", "refuses to start"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_formats_and_foreign_folders_are_refused() {
    let dir = TempDir::new("format");
    let data = dir.path().join("data");
    filled(&data).await;
    let marker = data.join("HERALD-STORE");
    let text = std::fs::read_to_string(&marker).unwrap();
    std::fs::write(&marker, text.replace("format = 1", "format = 99")).unwrap();
    assert_refused(&data, &["format 99", "reads format 1"]);
    std::fs::write(&marker, "not a marker").unwrap();
    assert_refused(&data, &["is damaged", "HERALD-STORE"]);

    let foreign = dir.path().join("photos");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("cat.jpg"), "meow").unwrap();
    assert_refused(&foreign, &["not a Herald store"]);
    assert_eq!(std::fs::read(foreign.join("cat.jpg")).unwrap(), b"meow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_final_persist_exits_non_zero() {
    let dir = TempDir::new("final-persist");
    let data = dir.path().join("data");
    let herald = match Herald::try_start_with_env(
        &data,
        &[],
        &[(
            herald_engine_embedded::FAULT_ENV,
            herald_engine_embedded::FAULT_FINAL_PERSIST,
        )],
    ) {
        Ok(h) => h,
        Err(r) => panic!("did not start: {r:?}"),
    };
    let client = Client::new(&herald.url).unwrap();
    publish(&client, "t", "one").await;
    let (status, stderr) = herald.sigterm_with_stderr();
    assert!(!status.success(), "exited 0 after a failed final persist");
    for needle in ["final flush and fsync failed", "start Herald again"] {
        assert!(stderr.contains(needle), "no {needle:?} in: {stderr}");
    }
    // Without the fault the same store stops cleanly, with the event.
    let herald = Herald::start(&data, &[]);
    let client = Client::new(&herald.url).unwrap();
    let id = publish(&client, "t", "two").await;
    assert_eq!(position("t", &id).seq, 2);
    assert!(herald.sigterm().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_restored_without_its_lock_file_starts() {
    let dir = TempDir::new("lock-file");
    let data = dir.path().join("data");
    filled(&data).await;
    let lock = data.join("db").join("lock");
    assert!(lock.is_file(), "fjall's lock file is at {}", lock.display());
    std::fs::remove_file(&lock).unwrap();
    let herald = Herald::start(&data, &[]);
    assert!(lock.is_file(), "the lock file was recreated");
    let client = Client::new(&herald.url).unwrap();
    let id = publish(&client, "t", "after").await;
    assert_eq!(position("t", &id).seq, 501);
    // A second process on the same data dir is still refused.
    assert_refused(&data, &["in use by another Herald process"]);
    assert!(herald.sigterm().success());
}
