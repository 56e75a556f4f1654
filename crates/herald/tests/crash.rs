//! SIGKILL loses no acknowledged event: a real `herald serve` on the
//! embedded engine takes concurrent publishes over HTTP and is killed
//! mid-stream, several times, at different moments; after each restart on
//! the same data dir every publish that was answered 200 is there with the
//! same id and in order, and SSE subscribers that resume from the cursors
//! they held before the kill get everything, exactly once.
//!
//! Every publish carries an idempotency `id`. After each restart the
//! publishes that were in flight at the kill are retried with their ids, and
//! at the end every acknowledged id is retried too: each retry is answered
//! with the event's original id, and no event is stored twice.

mod process;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use herald_client::Client;
use herald_core::{Cursor, Position, Topic};
use process::{Herald, TempDir};

const TOPICS: [&str; 3] = ["crash/a", "crash/b", "crash/c"];
const PUBLISHERS: usize = 8;
/// When each round's SIGKILL lands, after the publishers start.
const KILL_AFTER_MS: [u64; 5] = [40, 350, 120, 800, 220];
/// Retention must not drop what the test checks.
const SERVE_ARGS: [&str; 4] = ["--history", "1000000", "--poll-batch", "1000"];

/// (round, publisher): each publishes one event at a time.
type Publisher = (usize, usize);

/// A publish answered 200.
#[derive(Clone, Debug)]
struct Acked {
    topic: &'static str,
    id: String,
    data: String,
    /// The idempotency id it was sent with.
    key: String,
    publisher: Publisher,
    n: u64,
}

/// A publish that got no answer (the server was killed while it was in
/// flight): it may or may not be stored.
#[derive(Clone, Debug)]
struct InFlight {
    topic: &'static str,
    data: String,
    key: String,
    publisher: Publisher,
    n: u64,
}

/// Publishes `data` on `topic` with the idempotency id `key`; the event's
/// id, or `None` if there was no 200 answer.
async fn publish_with_key(client: &Client, topic: &str, data: &str, key: &str) -> Option<String> {
    let body = serde_json::json!({"topic": topic, "data": data, "id": key});
    match client
        .publish_raw(body.to_string(), "application/json")
        .await
    {
        Ok((status, v)) if status == 200 => v["id"].as_str().map(str::to_owned),
        _ => None,
    }
}

/// Retries a publish with its idempotency id; panics unless it is answered.
async fn retry(client: &Client, topic: &str, data: &str, key: &str) -> String {
    publish_with_key(client, topic, data, key)
        .await
        .unwrap_or_else(|| panic!("retry of {key} ({data}) was not answered 200"))
}

/// An SSE subscriber that lives across the restarts: what it has seen and
/// the cursor it resumes from.
struct Subscriber {
    topics: Vec<&'static str>,
    cursor: Option<String>,
    seen: Vec<(String, String)>,
    gaps: Vec<String>,
}

fn topic_of(data: &str) -> &str {
    data.split('|').next().unwrap_or_default()
}

/// Reads events until the stream ends (the server died), or, given
/// `until` (the last event of each topic), until each topic's last event
/// seen (counting those in `seen_before`) is that one, then a little longer
/// to catch any extra. Bounded in time. Returns the events as (topic, data),
/// gap payloads, and the cursor to resume from.
async fn listen(
    client: Client,
    topics: Vec<&'static str>,
    cursor: Option<String>,
    ready: tokio::sync::oneshot::Sender<()>,
    until: Option<HashMap<String, String>>,
    seen_before: HashMap<String, String>,
) -> (Vec<(String, String)>, Vec<String>, Option<String>) {
    let mut stream = client
        .sse(&topics, cursor.as_deref())
        .await
        .expect("SSE subscribe");
    let _ = ready.send(());
    let mut seen = Vec::new();
    let mut gaps = Vec::new();
    let mut last = seen_before;
    let mut deadline = Instant::now() + Duration::from_secs(60);
    let mut caught_up = false;
    loop {
        if let Some(until) = &until {
            if !caught_up && until.iter().all(|(t, d)| last.get(t) == Some(d)) {
                caught_up = true;
                deadline = Instant::now() + Duration::from_millis(300);
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.next_event()).await {
            Ok(Ok(Some(e))) if e.event == "herald.gap" => gaps.push(e.data),
            Ok(Ok(Some(e))) if e.event == "herald.disconnect" => break,
            Ok(Ok(Some(e))) => {
                let t = topic_of(&e.data).to_owned();
                last.insert(t.clone(), e.data.clone());
                seen.push((t, e.data));
            }
            // The server was killed, or the final catch-up ended.
            Ok(Ok(None)) | Ok(Err(_)) | Err(_) => break,
        }
    }
    let cursor = Some(stream.last_event_id().to_owned()).filter(|c| !c.is_empty());
    (seen, gaps, cursor)
}

/// Publishes one event at a time, each with its own idempotency id, until
/// the server stops answering; returns the acknowledged publishes and the
/// one in flight when it stopped.
async fn publish(client: Client, round: usize, publisher: usize) -> (Vec<Acked>, Option<InFlight>) {
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in 0..1_000_000u64 {
        if Instant::now() > deadline {
            break;
        }
        let topic = TOPICS[(publisher + n as usize) % TOPICS.len()];
        let data = format!("{topic}|r{round}|p{publisher}|n{n}");
        let key = format!("r{round}-p{publisher}-n{n}");
        match publish_with_key(&client, topic, &data, &key).await {
            Some(id) => acked.push(Acked {
                topic,
                id,
                data,
                key,
                publisher: (round, publisher),
                n,
            }),
            None => {
                let lost = InFlight {
                    topic,
                    data,
                    key,
                    publisher: (round, publisher),
                    n,
                };
                return (acked, Some(lost));
            }
        }
    }
    (acked, None)
}

/// Every event of `topic` in the store, in order: (id, data).
async fn history(client: &Client, topic: &str, epoch: u64) -> Vec<(String, String)> {
    let t = Topic::new(topic).unwrap();
    let mut cursor = Cursor::single(&t, Position::new(epoch, 0)).encode();
    let mut out = Vec::new();
    for _ in 0..10_000 {
        let r = client
            .poll(&[topic], Some(&cursor), Duration::ZERO)
            .await
            .expect("poll");
        if r.events.is_empty() {
            return out;
        }
        for e in r.events {
            assert_ne!(
                e["event"], "herald.gap",
                "history of {topic} has a gap: {e}"
            );
            let id = e["id"].as_str().expect("id").to_owned();
            let data = e["data"].as_str().expect("string data").to_owned();
            out.push((id, data));
        }
        cursor = r.cursor;
    }
    panic!("history of {topic} did not end");
}

fn position(topic: &str, id: &str) -> Position {
    Cursor::decode(id)
        .ok()
        .and_then(|c| c.get(&Topic::new(topic).unwrap()))
        .unwrap_or_else(|| panic!("{id:?} is not a cursor of {topic}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_no_acknowledged_event() {
    let dir = TempDir::new("crash");
    let data_dir = dir.path().join("data");
    let mut subscribers: Vec<Subscriber> = TOPICS
        .iter()
        .map(|t| vec![*t])
        .chain(std::iter::once(TOPICS.to_vec()))
        .map(|topics| Subscriber {
            topics,
            cursor: None,
            seen: Vec::new(),
            gaps: Vec::new(),
        })
        .collect();
    let mut acked: Vec<Acked> = Vec::new();
    let mut in_flight: Vec<InFlight> = Vec::new();
    let mut retried_in_flight = 0;

    for (round, kill_after) in KILL_AFTER_MS.iter().enumerate() {
        let herald = Herald::start(&data_dir, &SERVE_ARGS);
        let client = Client::new(&herald.url).unwrap();
        // The publishes in flight at the kill, retried with their ids: each
        // is stored at most once, whether or not it was before the kill.
        retried_in_flight += in_flight.len();
        for f in in_flight.drain(..) {
            let id = retry(&client, f.topic, &f.data, &f.key).await;
            // Twice: the second retry gets the same answer.
            assert_eq!(
                retry(&client, f.topic, &f.data, &f.key).await,
                id,
                "{}",
                f.key
            );
            acked.push(Acked {
                topic: f.topic,
                id,
                data: f.data,
                key: f.key,
                publisher: f.publisher,
                n: f.n,
            });
        }
        // Subscribers first: in round 0 they start "from now", an empty
        // store, so they must see every event; later they resume from the
        // cursors they held when the server died.
        let mut listeners = Vec::new();
        for s in &subscribers {
            let (ready, is_ready) = tokio::sync::oneshot::channel();
            listeners.push(tokio::spawn(listen(
                client.clone(),
                s.topics.clone(),
                s.cursor.clone(),
                ready,
                None,
                HashMap::new(),
            )));
            tokio::time::timeout(Duration::from_secs(10), is_ready)
                .await
                .expect("subscriber connected")
                .expect("subscriber task");
        }
        let publishers: Vec<_> = (0..PUBLISHERS)
            .map(|p| tokio::spawn(publish(client.clone(), round, p)))
            .collect();
        // The kill lands mid-stream, at this round's moment (the scenario).
        tokio::time::sleep(Duration::from_millis(*kill_after)).await;
        herald.sigkill();
        let mut this_round = 0;
        for p in publishers {
            let (a, lost) = p.await.expect("publisher task");
            this_round += a.len();
            acked.extend(a);
            in_flight.extend(lost);
        }
        assert!(
            this_round > 0,
            "round {round}: nothing was published before the kill"
        );
        for (s, l) in subscribers.iter_mut().zip(listeners) {
            let (seen, gaps, cursor) = l.await.expect("subscriber task");
            s.seen.extend(seen);
            s.gaps.extend(gaps);
            assert!(
                cursor.is_some(),
                "round {round}: a subscriber got no cursor"
            );
            s.cursor = cursor;
        }
        eprintln!(
            "round {round}: killed after {kill_after} ms, {this_round} publishes acknowledged"
        );
    }

    // Restart once more, retry what was in flight at the last kill, then
    // every acknowledged publish: each gets its original id back.
    let herald = Herald::start(&data_dir, &SERVE_ARGS);
    let client = Client::new(&herald.url).unwrap();
    retried_in_flight += in_flight.len();
    for f in in_flight.drain(..) {
        let id = retry(&client, f.topic, &f.data, &f.key).await;
        acked.push(Acked {
            topic: f.topic,
            id,
            data: f.data,
            key: f.key,
            publisher: f.publisher,
            n: f.n,
        });
    }
    for a in &acked {
        let id = retry(&client, a.topic, &a.data, &a.key).await;
        assert_eq!(id, a.id, "the retry of {} got another id", a.key);
    }
    eprintln!(
        "{} acknowledged ids retried after the kills ({retried_in_flight} of them in flight at a kill): all answered with their original ids",
        acked.len()
    );
    let epoch = position(acked[0].topic, &acked[0].id).epoch;
    let mut histories: HashMap<&str, Vec<(String, String)>> = HashMap::new();
    for t in TOPICS {
        let h = history(&client, t, epoch).await;
        // Positions 1..=n, in order, in one epoch: nothing stored was lost.
        for (i, (id, _)) in h.iter().enumerate() {
            assert_eq!(position(t, id), Position::new(epoch, i as u64 + 1), "{t}");
        }
        let distinct: HashSet<&String> = h.iter().map(|(_, d)| d).collect();
        assert_eq!(distinct.len(), h.len(), "{t}: an event is stored twice");
        histories.insert(t, h);
    }
    // Every acknowledged publish is there, with the id it was given.
    let mut at: HashMap<&str, (usize, &str)> = HashMap::new();
    for (t, h) in &histories {
        for (i, (id, data)) in h.iter().enumerate() {
            at.insert(data.as_str(), (i, id.as_str()));
            assert_eq!(topic_of(data), *t);
        }
    }
    for a in &acked {
        let Some((_, id)) = at.get(a.data.as_str()) else {
            panic!("acknowledged event {} ({}) is lost", a.data, a.id);
        };
        assert_eq!(*id, a.id, "{}: its id changed", a.data);
    }
    // In the order each publisher published them.
    // (publisher, topic) -> (n, index in the topic's history) of its last event.
    let mut last: HashMap<(Publisher, &str), (u64, usize)> = HashMap::new();
    for a in &acked {
        let (i, _) = at[a.data.as_str()];
        if let Some((n, j)) = last.insert((a.publisher, a.topic), (a.n, i)) {
            assert!(n < a.n && j < i, "{} is out of order", a.data);
        }
    }
    eprintln!(
        "{} publishes acknowledged over {} kills; {} events stored",
        acked.len(),
        KILL_AFTER_MS.len(),
        histories.values().map(Vec::len).sum::<usize>()
    );

    // Each subscriber resumes from the cursor it held at the last kill and
    // ends up with the whole history of its topics, exactly once, in order.
    let mut listeners = Vec::new();
    for s in &subscribers {
        let until: HashMap<String, String> = s
            .topics
            .iter()
            .filter_map(|t| histories[t].last().map(|(_, d)| (t.to_string(), d.clone())))
            .collect();
        let mut seen_before = HashMap::new();
        for (t, d) in &s.seen {
            seen_before.insert(t.clone(), d.clone());
        }
        let (ready, _) = tokio::sync::oneshot::channel();
        listeners.push(tokio::spawn(listen(
            client.clone(),
            s.topics.clone(),
            s.cursor.clone(),
            ready,
            Some(until),
            seen_before,
        )));
    }
    for (s, l) in subscribers.iter_mut().zip(listeners) {
        let (seen, gaps, _) = l.await.expect("subscriber task");
        s.seen.extend(seen);
        s.gaps.extend(gaps);
        assert!(s.gaps.is_empty(), "{:?} got gaps: {:?}", s.topics, s.gaps);
        for t in &s.topics {
            let got: Vec<&str> = s
                .seen
                .iter()
                .filter(|(st, _)| st == t)
                .map(|(_, d)| d.as_str())
                .collect();
            let want: Vec<&str> = histories[t].iter().map(|(_, d)| d.as_str()).collect();
            assert_eq!(
                got.len(),
                want.len(),
                "subscriber of {:?}, topic {t}: {} events instead of {}",
                s.topics,
                got.len(),
                want.len()
            );
            assert!(
                got == want,
                "subscriber of {:?}, topic {t}: wrong order",
                s.topics
            );
        }
    }
    assert!(herald.sigterm().success(), "graceful stop");
}
