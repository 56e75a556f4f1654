//! The embedded engine through the real binary: it is the default, it keeps
//! history and cursors across graceful and hard restarts (also with 10,000
//! topics), applies retention by count and by age, and refuses a damaged or
//! foreign data dir with a clear message and a non-zero exit.

mod process;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use herald_client::Client;
use herald_core::{Cursor, Position, Topic};
use process::{Herald, TempDir};
use serde_json::{json, Value};

fn position(topic: &str, id: &str) -> Position {
    Cursor::decode(id)
        .ok()
        .and_then(|c| c.get(&Topic::new(topic).unwrap()))
        .unwrap_or_else(|| panic!("{id:?} is not a cursor of {topic}"))
}

/// One long poll that answers at once: the events after `cursor`.
async fn poll_now(client: &Client, topics: &[&str], cursor: &str) -> Vec<Value> {
    client
        .poll(topics, Some(cursor), Duration::ZERO)
        .await
        .expect("poll")
        .events
}

async fn publish(client: &Client, topic: &str, data: &str) -> String {
    client
        .publish(topic, Value::String(data.into()), None)
        .await
        .expect("publish")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_engine_keeps_history_across_a_graceful_restart() {
    let dir = TempDir::new("default-engine");
    let data = dir.path().join("data");
    let herald = Herald::start(&data, &[]);
    let client = Client::new(&herald.url).unwrap();
    let first = publish(&client, "orders/1", "placed").await;
    let second = publish(&client, "orders/1", "paid").await;
    let third = publish(&client, "orders/1", "shipped").await;
    assert!(
        data.join("HERALD-STORE").is_file(),
        "no store in --data-dir"
    );
    let ready = client
        .request(http::Method::GET, "/readyz", &[], Default::default())
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert!(herald.sigterm().success(), "graceful stop");

    let herald = Herald::start(&data, &[]);
    let client = Client::new(&herald.url).unwrap();
    let events = poll_now(&client, &["orders/1"], &first).await;
    let got: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e["id"].as_str().unwrap(), e["data"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        [(second.as_str(), "paid"), (third.as_str(), "shipped")]
    );
    // Positions go on from where they were.
    let fourth = publish(&client, "orders/1", "delivered").await;
    assert_eq!(
        position("orders/1", &fourth),
        Position::new(position("orders/1", &third).epoch, 4)
    );
    assert!(herald.sigterm().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_topics_survive_a_crash() {
    const TOPICS: usize = 10_000;
    let dir = TempDir::new("10k-topics");
    let data = dir.path().join("data");
    let herald = Herald::start(&data, &[]);
    let client = Client::new(&herald.url).unwrap();
    let names: Vec<String> = (0..TOPICS).map(|i| format!("users/{i}/inbox")).collect();
    let mut ids = Vec::with_capacity(TOPICS);
    for chunk in names.chunks(1000) {
        let events: Vec<Value> = chunk
            .iter()
            .map(|t| json!({"topic": t, "data": t}))
            .collect();
        let (status, answer) = client
            .publish_raw(json!({ "events": events }).to_string(), "application/json")
            .await
            .unwrap();
        assert_eq!(status, 200, "{answer}");
        for id in answer["ids"].as_array().expect("ids") {
            ids.push(id.as_str().expect("id").to_owned());
        }
    }
    herald.sigkill();

    let started = Instant::now();
    let herald = Herald::start(&data, &[]);
    eprintln!(
        "restart after SIGKILL with {TOPICS} topics: {:?}",
        started.elapsed()
    );
    let client = Client::new(&herald.url).unwrap();
    let epoch = position(&names[0], &ids[0]).epoch;
    // 64 topics per poll, each from position 0: exactly its one event, same id.
    for (chunk, chunk_ids) in names.chunks(64).zip(ids.chunks(64)) {
        let mut cursor = Cursor::new();
        for t in chunk {
            cursor.set(&Topic::new(t).unwrap(), Position::new(epoch, 0));
        }
        let topics: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let events = poll_now(&client, &topics, &cursor.encode()).await;
        assert_eq!(events.len(), chunk.len());
        for (t, id) in chunk.iter().zip(chunk_ids) {
            let e = events
                .iter()
                .find(|e| e["topic"] == t.as_str())
                .unwrap_or_else(|| panic!("{t} lost its event"));
            assert_eq!(e["id"].as_str(), Some(id.as_str()), "{t}");
            assert_eq!(e["data"].as_str(), Some(t.as_str()));
        }
    }
    assert!(herald.sigterm().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_count_and_age() {
    let dir = TempDir::new("retention");
    let data = dir.path().join("data");
    let args = ["--history", "3", "--history-max-age", "1s"];
    let herald = Herald::start(&data, &args);
    let client = Client::new(&herald.url).unwrap();
    let mut ids = Vec::new();
    for i in 1..=6 {
        ids.push(publish(&client, "count", &i.to_string()).await);
    }
    publish(&client, "age", "old").await;
    herald.sigkill();

    let herald = Herald::start(&data, &args);
    let client = Client::new(&herald.url).unwrap();
    // By count: a cursor older than the kept history gets a gap, then the last 3.
    let events = poll_now(&client, &["count"], &ids[0]).await;
    assert_eq!(events[0]["event"], "herald.gap");
    assert_eq!(events[0]["data"]["reason"], "history_truncated");
    let kept: Vec<&str> = events[1..]
        .iter()
        .map(|e| e["data"].as_str().unwrap())
        .collect();
    assert_eq!(kept, ["4", "5", "6"]);
    let kept_ids: Vec<&str> = events[1..]
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        kept_ids,
        ids[3..].iter().map(String::as_str).collect::<Vec<_>>()
    );
    // By age: once a second has passed, the old event is dropped.
    let epoch = position("count", &ids[0]).epoch;
    let from_start = Cursor::single(&Topic::new("age").unwrap(), Position::new(epoch, 0)).encode();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = poll_now(&client, &["age"], &from_start).await;
        if events.len() == 1 && events[0]["event"] == "herald.gap" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old event was not dropped: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(herald.sigterm().success());
}

fn files_under(p: &Path) -> Vec<PathBuf> {
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

/// The body of a `GET` (for `/metrics`).
async fn get_text(client: &Client, path: &str) -> String {
    use http_body_util::BodyExt;
    let r = client
        .request(http::Method::GET, path, &[], bytes::Bytes::new())
        .await
        .expect("GET");
    let body = r.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8(body.to_vec()).expect("UTF-8")
}

/// A gauge or counter from `/metrics`.
async fn metric(client: &Client, name: &str) -> u64 {
    let text = get_text(client, "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// Disk blocks used under `p`, in bytes (journals are preallocated sparse
/// files: their length says little).
fn dir_size(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    files_under(p)
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

/// fjall's journal files (`*.jnl`) under the data dir.
fn journals(data: &Path) -> Vec<PathBuf> {
    files_under(&data.join("db"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "jnl"))
        .collect()
}

/// Where the written part of a preallocated journal ends: after its last
/// byte that is not zero.
fn written_len(path: &Path) -> u64 {
    let b = std::fs::read(path).unwrap();
    b.iter().rposition(|&x| x != 0).map_or(0, |i| i as u64 + 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_cut_in_half_starts_a_new_epoch_and_old_cursors_get_a_gap() {
    let dir = TempDir::new("cut-journal");
    let data = dir.path().join("data");
    let herald = Herald::start(&data, &[]);
    let client = Client::new(&herald.url).unwrap();
    let mut ids = Vec::new();
    for i in 0..200 {
        ids.push(publish(&client, "cut", &format!("event {i} {}", "x".repeat(200))).await);
    }
    let old_epoch = position("cut", &ids[0]).epoch;
    // Killed: the events are in the journal only (no table was written).
    herald.sigkill();
    let journal = journals(&data)
        .into_iter()
        .max_by_key(|p| written_len(p))
        .expect("a journal");
    let written = written_len(&journal);
    assert!(
        written > 200 * 200,
        "the journal holds the events ({written} bytes)"
    );
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .unwrap();
    f.set_len(written / 2).unwrap();
    f.sync_all().unwrap();
    drop(f);
    eprintln!(
        "cut {} from {written} to {} bytes",
        journal.display(),
        written / 2
    );

    let herald = Herald::start(&data, &[]);
    // The log is read by a thread of its own: give it a moment (bounded).
    for _ in 0..100 {
        if herald.stderr().contains("new epoch") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        herald.stderr().contains("new epoch"),
        "no warning about the new epoch: {}",
        herald.stderr()
    );
    let client = Client::new(&herald.url).unwrap();
    // A client that had read up to event 150 resumes over SSE: it is told
    // its cursor's epoch is gone, then gets what survived, in the new epoch.
    let mut stream = client.sse(&["cut"], Some(&ids[150])).await.expect("SSE");
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next_event())
        .await
        .expect("an event in time")
        .expect("stream")
        .expect("an event");
    assert_eq!(first.event, "herald.gap", "{first:?}");
    let gap: Value = serde_json::from_str(&first.data).expect("gap JSON");
    assert_eq!(gap["reason"], "epoch_changed", "{gap}");
    let mut survived = Vec::new();
    while let Ok(Ok(Some(e))) =
        tokio::time::timeout(Duration::from_millis(500), stream.next_event()).await
    {
        survived.push(e);
    }
    assert!(
        !survived.is_empty() && survived.len() < 200,
        "{} events survived the cut",
        survived.len()
    );
    let new_epoch = position("cut", &survived[0].id).epoch;
    assert_ne!(new_epoch, old_epoch);
    for (i, e) in survived.iter().enumerate() {
        assert_eq!(
            position("cut", &e.id),
            Position::new(new_epoch, i as u64 + 1)
        );
        assert!(e.data.starts_with(&format!("event {i} ")), "{}", e.data);
    }
    // New events follow in the new epoch: none reuses a lost event's id.
    let next = publish(&client, "cut", "after").await;
    assert_eq!(
        position("cut", &next),
        Position::new(new_epoch, survived.len() as u64 + 1)
    );
    assert!(!ids.contains(&next));
    // The new epoch is kept: a restart does not start yet another.
    assert!(herald.sigterm().success());
    let herald = Herald::start(&data, &[]);
    let client = Client::new(&herald.url).unwrap();
    let again = publish(&client, "cut", "later").await;
    assert_eq!(position("cut", &again).epoch, new_epoch);
    assert!(herald.sigterm().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_tails_are_bounded_by_bytes() {
    // 30 topics x 130 events of 100 kB: 390 MB written. Kept whole in
    // 128-event hot tails that would be 384 MB of memory on their own. The
    // bound: the tails' 64 MiB budget, fjall's memtable (up to 64 MiB) and
    // block cache (32 MiB), 30 requests of 100 kB in flight and their
    // copies, and allocator slack.
    const TOPICS: usize = 30;
    const EVENTS: usize = 130;
    const BOUND: u64 = 320 << 20;
    let dir = TempDir::new("hot-tail-bytes");
    let data = dir.path().join("data");
    let herald = Herald::start(&data, &[]);
    let client = Client::new(&herald.url).unwrap();
    // Warm up (allocator, connections) before the baseline.
    for t in 0..TOPICS {
        publish(&client, &format!("big/{t}"), "warm").await;
    }
    let before = herald.rss_bytes();
    let payload = "x".repeat(100_000);
    let started = Instant::now();
    let mut peak = before;
    for round in 0..EVENTS {
        let tasks: Vec<_> = (0..TOPICS)
            .map(|t| {
                let (client, payload) = (client.clone(), payload.clone());
                tokio::spawn(async move {
                    publish(&client, &format!("big/{t}"), &format!("{round} {payload}")).await
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("publisher");
        }
        peak = peak.max(herald.rss_bytes());
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "publishing took too long"
        );
    }
    let after = herald.rss_bytes();
    eprintln!(
        "RSS before {} MiB, after {} MiB, peak {} MiB ({} MB written in {:?})",
        before >> 20,
        after >> 20,
        peak >> 20,
        TOPICS * EVENTS / 10,
        started.elapsed()
    );
    assert!(
        peak.saturating_sub(before) < BOUND,
        "RSS grew by {} MiB",
        (peak - before) >> 20
    );
    // The newest events are still read back (from the tail or the disk).
    let cursor = Cursor::single(
        &Topic::new("big/0").unwrap(),
        Position::new(
            position("big/0", &publish(&client, "big/0", "end").await).epoch,
            100,
        ),
    )
    .encode();
    let events = poll_now(&client, &["big/0"], &cursor).await;
    assert!(!events.is_empty(), "no events after position 100");
    assert_eq!(
        position("big/0", events[0]["id"].as_str().unwrap()).seq,
        101
    );
    let data = events[0]["data"].as_str().unwrap();
    assert!(
        data.starts_with("99 ") && data.len() > 100_000,
        "{}",
        &data[..10]
    );
    assert!(herald.sigterm().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_topics_are_dropped_from_memory_and_disk() {
    const TOPICS: usize = 10_000;
    let dir = TempDir::new("topic-lifecycle");
    let data = dir.path().join("data");
    let args = ["--history-max-age", "2s"];
    let herald = Herald::start(&data, &args);
    let client = Client::new(&herald.url).unwrap();
    let empty_disk = dir_size(&data);
    let names: Vec<String> = (0..TOPICS).map(|i| format!("once/{i}")).collect();
    let mut first_id = String::new();
    for chunk in names.chunks(1000) {
        let events: Vec<Value> = chunk
            .iter()
            .map(|t| json!({"topic": t, "data": "x"}))
            .collect();
        let (status, answer) = client
            .publish_raw(json!({ "events": events }).to_string(), "application/json")
            .await
            .unwrap();
        assert_eq!(status, 200, "{answer}");
        if first_id.is_empty() {
            first_id = answer["ids"][0].as_str().expect("id").to_owned();
        }
    }
    let held = metric(&client, "herald_topics").await;
    let full_disk = dir_size(&data);
    assert!(held >= 9_000, "{held} topics held after publishing");
    // Bounded wait: 2 s of age, then the timer's passes.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut held = held;
    while held > 0 {
        assert!(Instant::now() < deadline, "{held} topics still held");
        tokio::time::sleep(Duration::from_millis(200)).await;
        held = metric(&client, "herald_topics").await;
    }
    let dropped = metric(&client, "herald_topics_dropped_total").await;
    assert!(dropped >= TOPICS as u64, "{dropped} topics dropped");
    // A cursor of a dropped topic gets a gap.
    let events = poll_now(&client, &["once/0"], &first_id).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event"], "herald.gap");
    assert_eq!(events[0]["data"]["reason"], "epoch_changed");
    assert!(herald.sigterm().success());
    let after_stop = dir_size(&data);
    // A restart finds no topic: the drops were on disk.
    let herald = Herald::start(&data, &args);
    let client = Client::new(&herald.url).unwrap();
    assert_eq!(metric(&client, "herald_topics").await, 0);
    let old_epoch = position("once/0", &first_id).epoch;
    let once1 =
        Cursor::single(&Topic::new("once/1").unwrap(), Position::new(old_epoch, 1)).encode();
    let events = poll_now(&client, &["once/1"], &once1).await;
    assert!(
        events.iter().all(|e| e["event"] == "herald.gap"),
        "{events:?}"
    );
    assert!(herald.sigterm().success());
    let after_restart = dir_size(&data);
    eprintln!(
        "data dir: empty {} KiB, with {TOPICS} topics {} KiB, after they expired {} KiB, after a restart {} KiB",
        empty_disk >> 10,
        full_disk >> 10,
        after_stop >> 10,
        after_restart >> 10
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_topics_refuses_new_topics_on_the_embedded_engine() {
    let dir = TempDir::new("max-topics");
    let data = dir.path().join("data");
    let args = ["--max-topics", "3"];
    let herald = Herald::start(&data, &args);
    let client = Client::new(&herald.url).unwrap();
    for t in ["a", "b", "c"] {
        publish(&client, t, "1").await;
    }
    let body = json!({"topic": "d", "data": "1"}).to_string();
    let (status, answer) = client
        .publish_raw(body.clone(), "application/json")
        .await
        .unwrap();
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"]["code"], "server_full", "{answer}");
    // Existing topics still take events; the budget holds across a restart.
    publish(&client, "a", "2").await;
    assert!(herald.sigterm().success());
    let herald = Herald::start(&data, &args);
    let client = Client::new(&herald.url).unwrap();
    let (status, _) = client.publish_raw(body, "application/json").await.unwrap();
    assert_eq!(status, 503);
    assert!(herald.sigterm().success());
}
