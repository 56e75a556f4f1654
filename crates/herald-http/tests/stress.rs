//! Stress (bounded in count and time): several publishers publish thousands
//! of events to a few topics while subscribers on every transport disconnect
//! and resume at random moments. Every subscriber ends with every event
//! exactly once, in order per topic.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use herald_core::{Cursor, HubConfig, Topic};
use rand::{Rng, SeedableRng};
use serde_json::json;
use support::transport::{Kind, Sub};
use support::{quick_http, TestServer};

const TOPICS: [&str; 3] = ["stress/a", "stress/b", "stress/c"];
const PUBLISHERS: usize = 4;
const PER_PUBLISHER: usize = 1250;
const SUBSCRIBERS_PER_TRANSPORT: usize = 2;
const DEADLINE: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_race_resuming_subscribers_on_every_transport() {
    let seed: u64 = std::env::var("HERALD_STRESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("stress seed {seed} (set HERALD_STRESS_SEED to replay)");
    let mut hub = HubConfig::default();
    hub.history.max_events = 100_000;
    let s = TestServer::start_with(hub, quick_http()).await;
    let total = PUBLISHERS * PER_PUBLISHER;

    // Subscribers first ("from now"), then the publishers.
    let mut subs = Vec::new();
    for kind in [Kind::Sse, Kind::Ws, Kind::Poll] {
        for n in 0..SUBSCRIBERS_PER_TRANSPORT {
            let sub = Sub::open(&s.client, kind, &TOPICS, None).await.unwrap();
            subs.push((kind, n, sub));
        }
    }
    let started = Instant::now();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let client = s.client.clone();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (p as u64 + 1));
            tokio::spawn(async move {
                for i in 0..PER_PUBLISHER {
                    let t = TOPICS[rng.random_range(0..TOPICS.len())];
                    client
                        .publish(t, json!({"p": p, "i": i, "t": t}), None)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();

    let readers: Vec<_> = subs
        .into_iter()
        .enumerate()
        .map(|(k, (kind, n, mut sub))| {
            let client = s.client.clone();
            let mut rng =
                rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(k as u64));
            tokio::spawn(async move {
                let mut got: Vec<(String, u64, usize, usize)> = Vec::with_capacity(total);
                let mut until_drop = rng.random_range(10..300);
                let mut reconnects = 0;
                while got.len() < total {
                    assert!(
                        started.elapsed() < DEADLINE,
                        "{kind:?}#{n}: only {} of {total} events",
                        got.len()
                    );
                    let Some(g) = sub.next(Duration::from_secs(10)).await else {
                        // The server closed us (or a poll timed out): resume.
                        let token = sub.resume_token();
                        sub = Sub::open(&client, kind, &TOPICS, Some(&token))
                            .await
                            .unwrap();
                        reconnects += 1;
                        continue;
                    };
                    assert!(!g.is_gap(), "{kind:?}#{n}: unexpected gap {g:?}");
                    let v: serde_json::Value = serde_json::from_str(&g.data).unwrap();
                    let t = v["t"].as_str().unwrap().to_owned();
                    let seq = Cursor::decode(&g.id)
                        .unwrap()
                        .get(&Topic::new(&t).unwrap())
                        .unwrap()
                        .seq;
                    got.push((
                        t,
                        seq,
                        v["p"].as_u64().unwrap() as usize,
                        v["i"].as_u64().unwrap() as usize,
                    ));
                    until_drop -= 1;
                    if until_drop == 0 {
                        // Disconnect at a random moment and resume from the cursor.
                        let token = sub.resume_token();
                        drop(sub);
                        if rng.random_bool(0.3) {
                            tokio::time::sleep(Duration::from_millis(rng.random_range(1..50)))
                                .await;
                        }
                        sub = Sub::open(&client, kind, &TOPICS, Some(&token))
                            .await
                            .unwrap();
                        reconnects += 1;
                        until_drop = rng.random_range(10..300);
                    }
                }
                // Nothing more arrives.
                if let Some(extra) = sub.next(Duration::from_millis(300)).await {
                    panic!("{kind:?}#{n}: extra event {extra:?}");
                }
                (kind, n, got, reconnects)
            })
        })
        .collect();

    for p in publishers {
        p.await.unwrap();
    }
    for r in readers {
        let (kind, n, got, reconnects) = r.await.unwrap();
        assert!(
            reconnects >= 5,
            "{kind:?}#{n}: only {reconnects} reconnects"
        );
        // Exactly once: every (publisher, i) once.
        let unique: BTreeSet<(usize, usize)> = got.iter().map(|(_, _, p, i)| (*p, *i)).collect();
        assert_eq!(unique.len(), total, "{kind:?}#{n}: duplicates or losses");
        // In order per topic: positions 1, 2, 3, ... with no hole; and each
        // publisher's events in its own order.
        let mut next_seq: HashMap<&str, u64> = HashMap::new();
        let mut last_i: HashMap<(&str, usize), usize> = HashMap::new();
        for (t, seq, p, i) in &got {
            let want = next_seq.entry(t.as_str()).or_insert(1);
            assert_eq!(*seq, *want, "{kind:?}#{n}: topic {t} out of order");
            *want += 1;
            if let Some(prev) = last_i.insert((t.as_str(), *p), *i) {
                assert!(prev < *i, "{kind:?}#{n}: publisher {p} reordered on {t}");
            }
        }
        eprintln!(
            "{kind:?}#{n}: {} events, {reconnects} reconnects",
            got.len()
        );
    }
    eprintln!("stress finished in {:?}", started.elapsed());
}
