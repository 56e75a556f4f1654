//! # herald-core
//!
//! Herald's publish/subscribe core, with no HTTP and no engine client
//! libraries: topics, events, cursors, history, live fan-out, and the
//! [`Engine`] trait that storage back-ends implement.
//!
//! # Layout
//!
//! - [`topic`]: validated topic names and the stable key cursors use.
//! - [`topic_pattern`]: the one topic pattern matcher (`orders/*`,
//!   `users/{sub}/**`), for grants and policies alike.
//! - [`policy`]: topic policies by pattern (history, ephemeral topics,
//!   client publishing, publish rate), resolved once per topic.
//! - [`presence`]: who is subscribed to a topic, `herald.join` /
//!   `herald.leave`, in this process or in the engine's shared store.
//! - [`event`]: events, positions (`epoch` + `seq`) and their shared encodings.
//! - [`cursor`]: the opaque resume ids clients see, one position per topic.
//! - [`engine`]: the [`Engine`] trait and the [`MemoryEngine`]
//!   (`engine/memory`: topic logs, sharded state and the expiry timer);
//!   durable and Redis engines live beside it. `engine::suite` (feature
//!   `test-util`) is the engine test suite every engine runs.
//! - [`fanout`]: the registry of local subscriber queues; bounded queues and
//!   the slow-consumer policy.
//! - [`subscription`]: resume (live first, back-fill, de-duplicate) written
//!   once for every transport.
//! - [`hub`]: the publish path (validation, idempotency) and the entry point.
//! - [`occurrence`]: what happened to topics (occupied, vacated, joins and
//!   leaves), told after the fact to an observer such as the webhooks.
//! - [`idempotency`] and [`one_time`]: per-deployment records (publish ids,
//!   one-time tokens), in this process or in a store the engine shares.
//! - [`wire`]: the wire protocol as pure functions: SSE (both ways),
//!   WebSocket messages, the long-poll answer, Herald's reserved events and
//!   the table of disconnect reasons.
//! - [`metrics`]: counters rendered in the Prometheus format.
//!
//! # Example
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use herald_core::{Data, Delivery, Hub, HubConfig, NewEvent, Topic};
//!
//! let hub = Hub::memory(HubConfig::default());
//! let topic = Topic::new("users/42/notifications").unwrap();
//! let mut sub = hub.subscribe();
//! sub.add(topic.clone(), None).await.unwrap();
//! hub.publish(NewEvent::new(topic, Data::Text("hello".into()))).await.unwrap();
//! let Delivery::Event(event) = sub.next().await else { panic!() };
//! assert_eq!(event.data.as_sse_text(), "hello");
//! # });
//! ```

#![warn(missing_docs)]

pub mod cursor;
pub mod engine;
pub mod event;
pub mod fanout;
pub mod hub;
pub mod idempotency;
pub mod metrics;
pub mod occurrence;
pub mod one_time;
pub mod policy;
pub mod presence;
pub mod subscription;
pub mod topic;
pub mod topic_pattern;
pub mod wire;

pub use cursor::{Cursor, CursorError};
pub use engine::memory::MemoryEngine;
pub use engine::{Engine, EngineError, GapReason, HistoryLimits, ReadResult};
pub use event::{Data, Event, NewEvent, Position};
pub use fanout::CloseReason;
pub use hub::{Hub, HubConfig, Mirror, PublishError};
pub use metrics::{Metrics, Transport};
pub use occurrence::{Occurrence, OccurrenceKind, Occurrences};
pub use one_time::OneTimeStore;
pub use policy::{RateLimited, TopicPolicies, TopicPolicy};
pub use presence::{Member, PresenceGuard, PresenceStore};
pub use subscription::{Delivery, Gap, SubscribeError, Subscription};
pub use topic::{Topic, TopicError, TopicKey};
