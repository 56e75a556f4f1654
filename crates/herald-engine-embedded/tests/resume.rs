//! The resume property tests of herald-core, run on the embedded engine:
//! any interleaving of publishes with a resume at any cursor, across a
//! restart or not, yields every later event exactly once, in order per topic.
//! A tiny hot tail makes most back-fills read the disk.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use herald_core::{
    Cursor, Data, Delivery, HistoryLimits, Hub, HubConfig, NewEvent, Position, Topic,
};
use herald_engine_embedded::{EmbeddedConfig, EmbeddedEngine};
use proptest::prelude::*;

const TOPICS: [&str; 3] = ["t/0", "t/1", "t/2"];

fn hub(dir: &std::path::Path, tail: usize, page: usize) -> Hub {
    let config = HubConfig {
        history: HistoryLimits {
            max_events: 10_000,
            max_age: Duration::from_secs(3600),
        },
        queue_capacity: 10_000,
        read_page: page,
        ..HubConfig::default()
    };
    let mut cfg = EmbeddedConfig::new(dir).with_history(config.history);
    cfg.hot_tail = tail;
    cfg.commit_delay = Duration::ZERO;
    Hub::new(Arc::new(EmbeddedEngine::open(cfg).unwrap()), config)
}

fn topic(i: usize) -> Topic {
    Topic::new(TOPICS[i]).unwrap()
}

fn new_event(t: usize, n: u64) -> NewEvent {
    NewEvent::new(topic(t), Data::Text(n.to_string().into()))
}

#[derive(Debug, Clone)]
enum Step {
    Publish(usize),
    Drain,
    AddTopic,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..TOPICS.len()).prop_map(Step::Publish),
        2 => Just(Step::Drain),
        1 => Just(Step::AddTopic),
    ]
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn resume_is_exact_across_restarts(
        before in proptest::collection::vec(0..TOPICS.len(), 0..30),
        seen in 0usize..30,
        schedule in proptest::collection::vec(step(), 0..50),
        page in 1usize..6,
        tail in 0usize..4,
        restart in any::<bool>(),
    ) {
        rt().block_on(async move {
            let dir = tempfile::tempdir().unwrap();
            let mut hub = hub(dir.path(), tail, page);
            let mut first = hub.subscribe();
            for i in 0..TOPICS.len() {
                first.add(topic(i), None).await.unwrap();
            }
            let mut counter = 0u64;
            let mut published: Vec<(usize, u64)> = Vec::new();
            for t in &before {
                counter += 1;
                hub.publish(new_event(*t, counter)).await.unwrap();
                published.push((*t, counter));
            }
            let seen = seen.min(before.len());
            for _ in 0..seen {
                match tokio::time::timeout(Duration::from_secs(5), first.next()).await.unwrap() {
                    Delivery::Event(_) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            let cursor = Cursor::decode(&first.cursor().encode()).unwrap();
            drop(first);
            if restart {
                hub.engine().close().await;
                drop(hub);
                hub = self::hub(dir.path(), tail, page);
            }

            let mut sub = hub.subscribe();
            let mut added = 0usize;
            sub.add(topic(0), cursor.get(&topic(0))).await.unwrap();
            added += 1;
            let mut got: Vec<(usize, u64)> = Vec::new();
            let take = |d: Delivery, got: &mut Vec<(usize, u64)>| match d {
                Delivery::Event(e) => {
                    let t = TOPICS.iter().position(|n| *n == e.topic.as_str()).unwrap();
                    got.push((t, e.data.as_sse_text().parse().unwrap()));
                }
                other => panic!("unexpected {other:?}"),
            };
            for s in schedule {
                match s {
                    Step::Publish(t) => {
                        counter += 1;
                        hub.publish(new_event(t, counter)).await.unwrap();
                        published.push((t, counter));
                    }
                    Step::Drain => {
                        while let Some(d) = sub.next_ready().await {
                            take(d, &mut got);
                        }
                    }
                    Step::AddTopic => {
                        if added < TOPICS.len() {
                            sub.add(topic(added), cursor.get(&topic(added))).await.unwrap();
                            added += 1;
                        }
                    }
                }
            }
            while added < TOPICS.len() {
                sub.add(topic(added), cursor.get(&topic(added))).await.unwrap();
                added += 1;
            }
            while let Some(d) = sub.next_ready().await {
                take(d, &mut got);
            }
            hub.engine().close().await;

            let seen_set: Vec<(usize, u64)> = published[..seen].to_vec();
            for t in 0..TOPICS.len() {
                let want: Vec<u64> = published
                    .iter()
                    .filter(|(pt, n)| *pt == t && !seen_set.contains(&(*pt, *n)))
                    .map(|(_, n)| *n)
                    .collect();
                let have: Vec<u64> = got.iter().filter(|(gt, _)| *gt == t).map(|(_, n)| *n).collect();
                prop_assert_eq!(have, want, "topic {}", t);
            }
            Ok(())
        })?;
    }
}

/// Real concurrency: publishers on other tasks race a resuming subscriber
/// whose back-fill reads the disk.
#[test]
fn concurrent_publishers_race_resume() {
    rt().block_on(async {
        for round in 0..5u64 {
            let dir = tempfile::tempdir().unwrap();
            let hub = hub(dir.path(), 2, 3);
            for i in 0..50u64 {
                hub.publish(new_event((i % 3) as usize, i)).await.unwrap();
            }
            let mut probe = hub.subscribe();
            let head = probe.add(topic(0), None).await.unwrap();
            drop(probe);
            let since = Position::new(head.epoch, head.seq / 2 + round);
            let pubs: Vec<_> = (0..3)
                .map(|p| {
                    let hub = hub.clone();
                    tokio::spawn(async move {
                        for i in 0..200u64 {
                            hub.publish(new_event(0, 1000 + p * 1000 + i))
                                .await
                                .unwrap();
                        }
                    })
                })
                .collect();
            let mut sub = hub.subscribe();
            sub.add(topic(0), Some(since)).await.unwrap();
            for p in pubs {
                p.await.unwrap();
            }
            let total = head.seq + 600;
            let mut last = since.seq;
            let mut per_publisher: HashMap<u64, u64> = HashMap::new();
            while last < total {
                let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
                    .await
                    .expect("stalled");
                let Delivery::Event(e) = d else {
                    panic!("{d:?}")
                };
                assert_eq!(e.position.seq, last + 1, "gap or duplicate");
                last = e.position.seq;
                let n: u64 = e.data.as_sse_text().parse().unwrap();
                if n >= 1000 {
                    let prev = per_publisher.insert(n / 1000, n);
                    assert!(prev.is_none_or(|prev| prev < n), "out of order");
                }
            }
            assert!(sub.next_ready().await.is_none());
            hub.engine().close().await;
        }
    });
}
