//! Property tests of resume: any interleaving of publishes with a resume at
//! any cursor yields every later event exactly once, in order per topic.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use herald_core::{
    Cursor, Data, Delivery, HistoryLimits, Hub, HubConfig, MemoryEngine, NewEvent, Position, Topic,
};
use proptest::prelude::*;

const TOPICS: [&str; 3] = ["t/0", "t/1", "t/2"];

fn hub(history: usize, queue: usize, page: usize) -> Hub {
    let config = HubConfig {
        history: HistoryLimits {
            max_events: history,
            max_age: Duration::from_secs(3600),
        },
        queue_capacity: queue,
        read_page: page,
        ..HubConfig::default()
    };
    Hub::new(Arc::new(MemoryEngine::new(config.history)), config)
}

fn topic(i: usize) -> Topic {
    Topic::new(TOPICS[i]).unwrap()
}

fn new_event(t: usize, n: u64) -> NewEvent {
    NewEvent::new(topic(t), Data::Text(n.to_string().into()))
}

/// One step of the schedule after the resume starts.
#[derive(Debug, Clone)]
enum Step {
    Publish(usize),
    /// Take whatever is ready without waiting.
    Drain,
    /// Add the next not-yet-added topic of the resumed subscription.
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
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn resume_is_exact(
        before in proptest::collection::vec(0..TOPICS.len(), 0..40),
        seen in 0usize..40,
        schedule in proptest::collection::vec(step(), 0..80),
        page in 1usize..8,
    ) {
        rt().block_on(async move {
            let hub = hub(10_000, 10_000, page);
            // A first subscriber sees `seen` of the `before` events, then leaves with its cursor.
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
                match first.next().await {
                    Delivery::Event(_) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            let cursor = Cursor::decode(&first.cursor().encode()).unwrap();
            drop(first);

            // Resume: topics are added one by one while publishes race it.
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

            // Expected: per topic, every event after the cursor, in order.
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

    #[test]
    fn old_cursor_gets_a_gap_then_the_retained_events(extra in 1u64..20, history in 1usize..10) {
        rt().block_on(async move {
            let hub = hub(history, 1000, 4);
            let t = topic(0);
            let mut sub = hub.subscribe();
            let start = sub.add(t.clone(), None).await.unwrap();
            drop(sub);
            for n in 0..(history as u64 + extra) {
                hub.publish(new_event(0, n)).await.unwrap();
            }
            let mut sub = hub.subscribe();
            sub.add(t.clone(), Some(start)).await.unwrap();
            let Some(Delivery::Gap(g)) = sub.next_ready().await else { panic!("no gap") };
            prop_assert_eq!(g.reason, herald_core::GapReason::HistoryTruncated);
            let mut n = 0;
            while let Some(d) = sub.next_ready().await {
                let Delivery::Event(e) = d else { panic!() };
                prop_assert_eq!(e.data.as_sse_text().parse::<u64>().unwrap(), extra + n);
                n += 1;
            }
            prop_assert_eq!(n, history as u64);
            Ok(())
        })?;
    }
}

/// Real concurrency: publishers on other threads race a resuming subscriber.
#[test]
fn concurrent_publishers_race_resume() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for round in 0..20u64 {
            let hub = hub(100_000, 100_000, 3);
            for i in 0..50u64 {
                hub.publish(new_event((i % 3) as usize, i)).await.unwrap();
            }
            // Resume in the middle of topic 0's history while 3 publishers run.
            let mut probe = hub.subscribe();
            let head = probe.add(topic(0), None).await.unwrap();
            drop(probe);
            let since = Position::new(head.epoch, head.seq / 2 + round % 5);
            let pubs: Vec<_> = (0..3)
                .map(|p| {
                    let hub = hub.clone();
                    tokio::spawn(async move {
                        for i in 0..300u64 {
                            hub.publish(new_event(0, 1000 + p * 1000 + i))
                                .await
                                .unwrap();
                            if i % 50 == 0 {
                                tokio::task::yield_now().await;
                            }
                        }
                    })
                })
                .collect();
            let mut sub = hub.subscribe();
            sub.add(topic(0), Some(since)).await.unwrap();
            for p in pubs {
                p.await.unwrap();
            }
            let total = head.seq + 900;
            let mut last = since.seq;
            let mut per_publisher: HashMap<u64, u64> = HashMap::new();
            while last < total {
                let d = tokio::time::timeout(Duration::from_secs(5), sub.next())
                    .await
                    .expect("stalled");
                let Delivery::Event(e) = d else {
                    panic!("{d:?}")
                };
                assert_eq!(e.position.seq, last + 1, "gap or duplicate");
                last = e.position.seq;
                let n: u64 = e.data.as_sse_text().parse().unwrap();
                if n >= 1000 {
                    let p = n / 1000;
                    let prev = per_publisher.insert(p, n);
                    assert!(
                        prev.is_none_or(|prev| prev < n),
                        "out of order for publisher {p}"
                    );
                }
            }
            assert!(sub.next_ready().await.is_none());
        }
    });
}
