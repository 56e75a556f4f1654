//! What the store holds on disk and in memory: a journal cut in half, hot
//! tails bounded by bytes, expired topics dropped, `--max-topics`.

use super::*;

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
