//! Resume through a hub, as property tests: any interleaving of publishes
//! with a resume at any cursor (across a restart, for a durable engine)
//! yields every later event exactly once, in order per topic.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use super::EngineFactory;
use crate::cursor::Cursor;
use crate::engine::{Engine, GapReason, HistoryLimits};
use crate::event::{Data, NewEvent, Position};
use crate::hub::{Hub, HubConfig};
use crate::subscription::{Delivery, Subscription};
use crate::topic::Topic;

const TOPICS: [&str; 3] = ["t/0", "t/1", "t/2"];

/// How long a delivery that must come may take.
const WAIT: Duration = Duration::from_secs(10);

fn hub(engine: Arc<dyn Engine>, history: usize, queue: usize, page: usize) -> Hub {
    let config = HubConfig {
        history: limits(history),
        queue_capacity: queue,
        read_page: page,
        ..HubConfig::default()
    };
    Hub::new(engine, config)
}

fn limits(history: usize) -> HistoryLimits {
    HistoryLimits {
        max_events: history,
        max_age: Duration::from_secs(3600),
    }
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
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

async fn next(sub: &mut Subscription) -> Delivery {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a delivery in time")
}

/// A subscriber sees some events, leaves with its cursor; another resumes
/// from it topic by topic while publishes race it (`cases` runs). A
/// durable engine is restarted between the two in about half the runs.
pub fn resume_is_exact<F: EngineFactory>(factory: &F, cases: u32) {
    let strategy = (
        proptest::collection::vec(0..TOPICS.len(), 0..40),
        0usize..40,
        proptest::collection::vec(step(), 0..80),
        1usize..8,
        any::<bool>(),
    );
    let result = runner(cases).run(&strategy, |(before, seen, schedule, page, restart)| {
        let restart = restart && factory.durable();
        rt().block_on(resume_case(factory, before, seen, schedule, page, restart))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

async fn resume_case<F: EngineFactory>(
    factory: &F,
    before: Vec<usize>,
    seen: usize,
    schedule: Vec<Step>,
    page: usize,
    restart: bool,
) -> Result<(), TestCaseError> {
    let place = factory.place();
    let open = || async {
        hub(
            factory.open(&place, limits(10_000)).await,
            10_000,
            10_000,
            page,
        )
    };
    let mut hub = open().await;
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
    // What the first subscriber saw: in publish order per topic, but not
    // across topics on an engine whose topics travel on separate channels
    // (Redis), so its cursor covers exactly these events.
    let mut seen_set: Vec<(usize, u64)> = Vec::with_capacity(seen);
    for _ in 0..seen {
        match next(&mut first).await {
            Delivery::Event(e) => {
                let t = TOPICS.iter().position(|n| *n == e.topic.as_str()).unwrap();
                seen_set.push((t, e.data.as_sse_text().parse().unwrap()));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let cursor = Cursor::decode(&first.cursor().encode()).unwrap();
    drop(first);
    if restart {
        hub.engine().close().await;
        drop(hub);
        hub = open().await;
    }

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
                // Every other drain takes only what needs no read
                // (`try_next`, as the transports batch); what it leaves
                // for a history read comes later, through `next`.
                if counter.is_multiple_of(2) {
                    while let Some(d) = sub.try_next() {
                        take(d, &mut got);
                    }
                } else {
                    while let Some(d) = sub.next_ready().await {
                        take(d, &mut got);
                    }
                }
            }
            Step::AddTopic => {
                if added < TOPICS.len() {
                    sub.add(topic(added), cursor.get(&topic(added)))
                        .await
                        .unwrap();
                    added += 1;
                }
            }
        }
    }
    while added < TOPICS.len() {
        sub.add(topic(added), cursor.get(&topic(added)))
            .await
            .unwrap();
        added += 1;
    }
    // Every event still due arrives (an engine with cross-node fan-out
    // delivers live events a moment after the publish resolves); then
    // nothing more is ready.
    while got.len() < published.len() - seen {
        take(next(&mut sub).await, &mut got);
    }
    while let Some(d) = sub.next_ready().await {
        take(d, &mut got);
    }
    hub.engine().close().await;

    // Expected: per topic, every event after the cursor, in order.
    for t in 0..TOPICS.len() {
        let want: Vec<u64> = published
            .iter()
            .filter(|(pt, n)| *pt == t && !seen_set.contains(&(*pt, *n)))
            .map(|(_, n)| *n)
            .collect();
        let have: Vec<u64> = got
            .iter()
            .filter(|(gt, _)| *gt == t)
            .map(|(_, n)| *n)
            .collect();
        prop_assert_eq!(have, want, "topic {}", t);
    }
    Ok(())
}

/// A cursor older than the retained history gets `history_truncated`,
/// then exactly the retained events (`cases` runs).
pub fn old_cursor_gets_a_gap_then_the_retained_events<F: EngineFactory>(factory: &F, cases: u32) {
    let result = runner(cases).run(&(1u64..20, 1usize..10), |(extra, history)| {
        rt().block_on(async move {
            let place = factory.place();
            let hub = hub(
                factory.open(&place, limits(history)).await,
                history,
                1000,
                4,
            );
            let t = topic(0);
            let mut sub = hub.subscribe();
            let start = sub.add(t.clone(), None).await.unwrap();
            drop(sub);
            for n in 0..(history as u64 + extra) {
                hub.publish(new_event(0, n)).await.unwrap();
            }
            let mut sub = hub.subscribe();
            sub.add(t.clone(), Some(start)).await.unwrap();
            let Some(Delivery::Gap(g)) = sub.next_ready().await else {
                panic!("no gap")
            };
            prop_assert_eq!(g.reason, GapReason::HistoryTruncated);
            let mut n = 0;
            while let Some(d) = sub.next_ready().await {
                let Delivery::Event(e) = d else { panic!() };
                prop_assert_eq!(e.data.as_sse_text().parse::<u64>().unwrap(), extra + n);
                n += 1;
            }
            prop_assert_eq!(n, history as u64);
            hub.engine().close().await;
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Real concurrency: three publishers on other tasks race a subscriber
/// resuming in the middle of a topic's history, `rounds` times with
/// `per_publisher` events each; every event arrives once, in order.
pub fn concurrent_publishers_race_resume<F: EngineFactory>(
    factory: &F,
    rounds: u64,
    per_publisher: u64,
) {
    rt().block_on(async {
        for round in 0..rounds {
            let place = factory.place();
            let engine = factory.open(&place, limits(100_000)).await;
            let hub = hub(engine, 100_000, 100_000, 3);
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
                        for i in 0..per_publisher {
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
            let total = head.seq + 3 * per_publisher;
            let mut last = since.seq;
            let mut per_publisher_last: HashMap<u64, u64> = HashMap::new();
            while last < total {
                let d = tokio::time::timeout(WAIT, sub.next())
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
                    let prev = per_publisher_last.insert(p, n);
                    assert!(
                        prev.is_none_or(|prev| prev < n),
                        "out of order for publisher {p}"
                    );
                }
            }
            assert!(sub.next_ready().await.is_none());
            hub.engine().close().await;
        }
    });
}
