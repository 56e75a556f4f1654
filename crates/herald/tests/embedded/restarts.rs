//! History and cursors across graceful and hard restarts (also with 10,000
//! topics), and retention by count and by age.

use super::*;

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
