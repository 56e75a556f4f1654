//! Paging through history in both directions, and the starting points built
//! on it: every retained event is read exactly once, in order.

use std::sync::Arc;
use std::time::Duration;

use super::{seqs, text, EngineFactory};
use crate::engine::{GapReason, HistoryLimits};
use crate::event::{Event, Position};
use crate::hub::{Hub, HubConfig};
use crate::subscription::{Delivery, Start};
use crate::topic::Topic;

/// Forward pages (`read` after the last event of the previous page) and
/// backward pages ([`Engine::read_back`](crate::Engine::read_back) before
/// the `from` of the previous page) each yield every retained event exactly
/// once, in order, whatever the page size; a `before` of another epoch or
/// past the head is reported and ends at the head.
pub async fn paging_reads_each_event_once<F: EngineFactory>(factory: &F) {
    let place = factory.place();
    let limits = HistoryLimits {
        max_events: 7,
        max_age: Duration::from_secs(3600),
    };
    let e = factory.open(&place, limits).await;
    let t = Topic::new("paging").unwrap();
    let mut last = Position::new(0, 0);
    for i in 0..10 {
        last = e.publish(vec![text(&t, &i.to_string())]).await.unwrap()[0].position;
    }
    let epoch = last.epoch;
    let retained: Vec<u64> = (4..=10).collect();
    for page in [1, 2, 3, 7, 100] {
        // Backward from the head.
        let mut got: Vec<u64> = Vec::new();
        let mut before = None;
        loop {
            let r = e.read_back(&t, before, page).await.unwrap();
            assert_eq!(r.gap, None);
            assert!(r.events.len() <= page);
            if r.events.is_empty() {
                break;
            }
            assert_eq!(r.from.seq + 1, r.events[0].position.seq);
            let mut s = seqs(&r.events);
            s.extend(got);
            got = s;
            before = Some(r.from);
        }
        assert_eq!(got, retained, "backward, page {page}");
        // Forward from the oldest (a backward read's `from` of everything).
        let all = e.read_back(&t, None, 1000).await.unwrap();
        assert_eq!(seqs(&all.events), retained);
        let mut after = all.from;
        let mut got = Vec::new();
        loop {
            let r = e.read(&t, Some(after), page).await.unwrap();
            assert_eq!(r.gap, None);
            let Some(l) = r.events.last() else { break };
            after = l.position;
            got.extend(seqs(&r.events));
        }
        assert_eq!(got, retained, "forward, page {page}");
    }
    // Before a position: the events at or before it.
    let r = e
        .read_back(&t, Some(Position::new(epoch, 6)), 2)
        .await
        .unwrap();
    assert_eq!((seqs(&r.events), r.from.seq), (vec![5, 6], 4));
    // Before anything retained: nothing.
    let r = e
        .read_back(&t, Some(Position::new(epoch, 2)), 5)
        .await
        .unwrap();
    assert!(r.events.is_empty() && r.gap.is_none());
    // Another epoch, or past the head: reported, then the newest.
    let r = e
        .read_back(&t, Some(Position::new(epoch ^ 1, 6)), 2)
        .await
        .unwrap();
    assert_eq!(
        (r.gap, seqs(&r.events)),
        (Some(GapReason::EpochChanged), vec![9, 10])
    );
    let r = e
        .read_back(&t, Some(Position::new(epoch, 99)), 1)
        .await
        .unwrap();
    assert_eq!(
        (r.gap, seqs(&r.events)),
        (Some(GapReason::UnknownPosition), vec![10])
    );
    // A topic never published: nothing, at its head.
    let fresh = Topic::new("paging/fresh").unwrap();
    let r = e.read_back(&fresh, None, 3).await.unwrap();
    assert!(r.events.is_empty());
    assert_eq!((r.head, r.from.seq, r.gap), (0, 0, None));
    e.close().await;
}

/// The starting points of a subscription: `Earliest` delivers every
/// retained event, `Last(n)` the newest `n`, each then live, with no gap.
pub async fn starting_points<F: EngineFactory>(factory: &F) {
    let place = factory.place();
    let limits = HistoryLimits {
        max_events: 5,
        max_age: Duration::from_secs(3600),
    };
    let e = factory.open(&place, limits).await;
    let config = HubConfig {
        history: limits,
        ..HubConfig::default()
    };
    let hub = Hub::new(e.clone(), config);
    let t = Topic::new("start").unwrap();
    for i in 0..8 {
        e.publish(vec![text(&t, &i.to_string())]).await.unwrap();
    }
    for start in [
        Start::Earliest,
        Start::Last(1),
        Start::Last(3),
        Start::Last(50),
        Start::Last(0),
        Start::Now,
    ] {
        // Each round's live event is history for the next: expect from the head.
        let head = e.read(&t, None, 1).await.unwrap().head;
        let oldest = head - 4;
        let want: Vec<u64> = match start {
            Start::Earliest => (oldest..=head).collect(),
            Start::Last(n) => (oldest.max(head + 1 - (n as u64).min(head))..=head).collect(),
            _ => Vec::new(),
        };
        let mut sub = hub.subscribe();
        sub.add_from(t.clone(), start).await.unwrap();
        let mut got = Vec::new();
        while let Some(d) = sub.next_ready().await {
            match d {
                Delivery::Event(ev) => got.push(ev.position.seq),
                other => panic!("{start:?}: unexpected {other:?}"),
            }
        }
        assert_eq!(got, want, "{start:?}");
        // Then live.
        let live = e.publish(vec![text(&t, "live")]).await.unwrap()[0].clone();
        let next: Arc<Event> = match tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("a live event")
        {
            Delivery::Event(ev) => ev,
            other => panic!("{start:?}: unexpected {other:?}"),
        };
        assert_eq!(next.position, live.position, "{start:?}");
    }
    drop(hub);
    e.close().await;
}
