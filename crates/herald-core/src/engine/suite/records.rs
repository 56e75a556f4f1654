//! The per-deployment records through a hub: idempotent publishes and
//! one-time tokens, in whatever store the engine offers.

use std::time::Duration;

use super::{text, EngineFactory};
use crate::engine::HistoryLimits;
use crate::event::{Data, NewEvent};
use crate::hub::{Hub, HubConfig};
use crate::one_time::{Capped, OneTimeCaps, Taken};
use crate::topic::Topic;

fn with_id(t: &Topic, data: &str, id: &str) -> NewEvent {
    let mut e = text(t, data);
    e.idempotency_key = Some(id.into());
    e
}

/// Idempotent publishes: a retry is answered with the first publish's
/// position and time and the retry's content, not stored again; in one
/// batch a repeated id takes its first occurrence's event; concurrent
/// retries store one event; ids are scoped by topic.
pub async fn idempotency<F: EngineFactory>(factory: &F) {
    let place = factory.place();
    let config = HubConfig::default();
    let hub = Hub::new(factory.open(&place, HistoryLimits::default()).await, config);
    let t = Topic::new("pay/1").unwrap();
    let first = hub.publish(with_id(&t, "charge", "op-1")).await.unwrap();
    let retry = hub.publish(with_id(&t, "charge", "op-1")).await.unwrap();
    assert_eq!(retry.position, first.position);
    assert_eq!(retry.published_at_ms, first.published_at_ms);
    assert_eq!(retry.data, Data::Text("charge".into()));

    // A batch: a known id, a new one, an event without id, a repeat.
    let batch = vec![
        with_id(&t, "charge", "op-1"),
        with_id(&t, "refund", "op-2"),
        text(&t, "note"),
        with_id(&t, "refund", "op-2"),
    ];
    let out = hub.publish_batch(batch).await.unwrap();
    assert_eq!(out.len(), 4);
    assert_eq!(out[0].position, first.position);
    assert_eq!(out[1].position.seq, first.position.seq + 1);
    assert_eq!(out[2].position.seq, first.position.seq + 2);
    assert_eq!(out[3].position, out[1].position);
    assert_eq!(out[2].data, Data::Text("note".into()));

    // Concurrent retries: one event in all.
    let (x, y) = tokio::join!(
        hub.publish(with_id(&t, "void", "op-3")),
        hub.publish(with_id(&t, "void", "op-3"))
    );
    assert_eq!(x.unwrap().position, y.unwrap().position);
    let r = hub
        .engine()
        .read(&t, Some(first.position), 100)
        .await
        .unwrap();
    assert_eq!(r.gap, None);
    assert_eq!(r.events.len(), 3, "op-2, the note and op-3, once each");

    // The same id on another topic is another record.
    let u = Topic::new("pay/2").unwrap();
    let other = hub.publish(with_id(&u, "charge", "op-1")).await.unwrap();
    assert_eq!(other.topic, u);
    assert_eq!(other.position.seq, 1);
    hub.engine().close().await;
}

/// One-time tokens in the hub's store: a token is taken once, each owner
/// holds at most its share (a taken token gives its place back), and a
/// token expires.
pub async fn one_time_tokens<F: EngineFactory>(factory: &F) {
    let place = factory.place();
    let hub = Hub::new(
        factory.open(&place, HistoryLimits::default()).await,
        HubConfig::default(),
    );
    let store = hub.one_time_store();
    let ttl = Duration::from_secs(60);
    let caps = OneTimeCaps {
        per_owner: 2,
        total: 100,
    };
    let put = |token: &'static str, owner: &'static str, ttl: Duration| {
        store.put(token, format!("value of {token}"), ttl, owner, caps)
    };
    assert_eq!(put("ot_a1", "sub:a", ttl).await.unwrap(), Capped::Stored);
    assert_eq!(put("ot_a2", "sub:a", ttl).await.unwrap(), Capped::Stored);
    let Capped::OwnerFull { retry_after } = put("ot_a3", "sub:a", ttl).await.unwrap() else {
        panic!("a third token for an owner with a share of two")
    };
    assert!(retry_after <= ttl && retry_after > ttl - Duration::from_secs(5));
    assert_eq!(put("ot_b1", "sub:b", ttl).await.unwrap(), Capped::Stored);
    assert_eq!(
        store.take("ot_a1").await.unwrap(),
        Taken::Value("value of ot_a1".into())
    );
    assert_eq!(store.take("ot_a1").await.unwrap(), Taken::Unknown);
    assert_eq!(put("ot_a3", "sub:a", ttl).await.unwrap(), Capped::Stored);
    assert_eq!(store.take("ot_never").await.unwrap(), Taken::Unknown);

    // Expiry: gone once its time is up (told apart or not).
    let short = Duration::from_millis(50);
    assert_eq!(put("ot_x", "sub:x", short).await.unwrap(), Capped::Stored);
    tokio::time::sleep(short * 3).await;
    assert!(matches!(
        store.take("ot_x").await.unwrap(),
        Taken::Expired | Taken::Unknown
    ));
    hub.engine().close().await;
}
