//! Idempotency records of the embedded engine: in-flight claims in memory,
//! completed records on disk, written in their event's commit.

use std::sync::Arc;

use herald_core::engine::BoxFuture;
use herald_core::event::now_ms;
use herald_core::idempotency::{Claim, Idempotency, IdempotencyStore};
use herald_core::{EngineError, Event, Position, Topic};
use tokio::sync::Notify;

use super::{blocking, Shared};

/// The embedded engine's idempotency records: in-flight claims in memory,
/// completed records on disk (written by the writer with their event).
pub(super) struct DurableIdempotency {
    pub(super) shared: Arc<Shared>,
}

/// Releases an in-flight claim unless disarmed (the claim's owner keeps it).
struct ClaimGuard<'a> {
    shared: &'a Shared,
    key: Option<String>,
}

impl ClaimGuard<'_> {
    fn keep(mut self) {
        self.key = None;
    }
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            self.shared.release_claim(&k);
        }
    }
}

impl Shared {
    pub(super) fn release_claim(&self, key: &str) {
        let n = self
            .claims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        if let Some(n) = n {
            n.notify_waiters();
        }
    }
}

impl IdempotencyStore for DurableIdempotency {
    fn claim<'a>(
        &'a self,
        topic: &'a Topic,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Claim, EngineError>> {
        Box::pin(async move {
            let key = Idempotency::scoped_key(topic.as_str(), id);
            {
                let mut claims = self.shared.claims.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(n) = claims.get(&key) {
                    return Ok(Claim::Wait(Some(n.clone())));
                }
                claims.insert(key.clone(), Arc::new(Notify::new()));
            }
            let guard = ClaimGuard {
                shared: &self.shared,
                key: Some(key),
            };
            let store = self
                .shared
                .store
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .ok_or_else(|| EngineError::Unavailable("the engine is closed".into()))?;
            let (t, i) = (topic.clone(), id.to_owned());
            let record = blocking(move || store.idempotency_record(&t, &i))
                .await
                .map_err(|e| EngineError::Unavailable(e.to_string()))?;
            let ttl = self.shared.idempotency_ttl_ms();
            match record {
                Some(r) if r.published_at_ms.saturating_add(ttl) > now_ms() => {
                    // `guard` releases the claim: the record answers retries.
                    Ok(Claim::DoneAt(
                        Position::new(r.epoch, r.seq),
                        r.published_at_ms,
                    ))
                }
                _ => {
                    guard.keep();
                    Ok(Claim::Owned)
                }
            }
        })
    }

    /// The record was written with the event; this ends the claim.
    fn complete<'a>(
        &'a self,
        topic: &'a Topic,
        id: &'a str,
        _event: &'a Arc<Event>,
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        self.shared
            .release_claim(&Idempotency::scoped_key(topic.as_str(), id));
        Box::pin(async { Ok(()) })
    }

    fn abandon<'a>(&'a self, topic: &'a Topic, id: &'a str) -> BoxFuture<'a, ()> {
        self.shared
            .release_claim(&Idempotency::scoped_key(topic.as_str(), id));
        Box::pin(async {})
    }
}
