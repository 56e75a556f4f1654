//! One-time tokens between issue and redemption: per-deployment state kept
//! where the engine keeps it, like idempotency records.
//!
//! A [`OneTimeStore`] holds opaque values (the issuer's encoding of whom a
//! token stands for) under tokens, each for a time to live, counted under
//! an owner (the issuer's name for a principal's share). Taking a token
//! removes it and gives its owner's place back, atomically, so a token is
//! redeemed once across every node that shares the store.
//!
//! The store lives in this process ([`LocalOneTime`]) unless the engine
//! offers a shared one
//! ([`Engine::one_time_store`](crate::Engine::one_time_store)); the hub
//! resolves which ([`Hub::one_time_store`](crate::Hub::one_time_store)).
//! Either way each owner holds at most [`OneTimeCaps::per_owner`]
//! unexpired tokens; the in-process store as a whole holds at most
//! [`OneTimeCaps::total`] (a shared store is bounded by its own memory
//! limit). Expired tokens leave in expiry order from a time-ordered index;
//! putting never scans the whole pool.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::engine::{BoxFuture, EngineError};

/// The bounds a put is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OneTimeCaps {
    /// Unexpired tokens one owner may hold, counted across every node that
    /// shares the store.
    pub per_owner: usize,
    /// Unexpired tokens the in-process store holds at most, all owners
    /// together. A shared store ignores it (Redis is bounded by `maxmemory`).
    pub total: usize,
}

/// The answer of [`OneTimeStore::put`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capped {
    /// The token is stored.
    Stored,
    /// The owner holds its share; its oldest token expires in `retry_after`.
    OwnerFull {
        /// Time until the owner's oldest token expires.
        retry_after: Duration,
    },
    /// The store holds [`OneTimeCaps::total`] tokens; the oldest expires in
    /// `retry_after`.
    PoolFull {
        /// Time until the store's oldest token expires.
        retry_after: Duration,
    },
}

/// The answer of [`OneTimeStore::take`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Taken {
    /// The token was there and unexpired: its value. It is gone now.
    Value(String),
    /// The token was there but expired (a store that can tell; it is gone
    /// now).
    Expired,
    /// Never issued, already taken, or expired and forgotten.
    Unknown,
}

/// Where one-time tokens wait between issue and redemption.
pub trait OneTimeStore: Send + Sync + 'static {
    /// Keeps `value` under `token` for `ttl`, counted under `owner`, unless
    /// that passes one of `caps` (checked in that order: the owner's share,
    /// then the pool).
    fn put<'a>(
        &'a self,
        token: &'a str,
        value: String,
        ttl: Duration,
        owner: &'a str,
        caps: OneTimeCaps,
    ) -> BoxFuture<'a, Result<Capped, EngineError>>;

    /// Removes `token` and returns its value, if it is there and unexpired;
    /// its owner's place is given back. At most one caller gets the value.
    fn take<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Taken, EngineError>>;
}

/// One-time tokens kept in this process's memory, behind one lock.
#[derive(Default)]
pub struct LocalOneTime {
    inner: std::sync::Mutex<Pool>,
}

#[derive(Default)]
struct Pool {
    tokens: HashMap<String, Entry>,
    /// Every outstanding token by (expiry, put number): the oldest first.
    by_expiry: BTreeMap<(Instant, u64), String>,
    /// Each owner's outstanding tokens, oldest first (same keys as `by_expiry`).
    owners: HashMap<String, VecDeque<(Instant, u64)>>,
    next: u64,
}

struct Entry {
    slot: (Instant, u64),
    owner: String,
    value: String,
}

impl Pool {
    fn forget(&mut self, token: &str) -> Option<Entry> {
        let entry = self.tokens.remove(token)?;
        self.by_expiry.remove(&entry.slot);
        if let Some(q) = self.owners.get_mut(&entry.owner) {
            if let Some(i) = q.iter().position(|s| *s == entry.slot) {
                q.remove(i);
            }
            if q.is_empty() {
                self.owners.remove(&entry.owner);
            }
        }
        Some(entry)
    }

    /// Drops every token expired at `now`: O(expired · log n).
    fn purge(&mut self, now: Instant) {
        while let Some(((exp, _), _)) = self.by_expiry.first_key_value() {
            if *exp > now {
                break;
            }
            if let Some((_, token)) = self.by_expiry.pop_first() {
                self.forget(&token);
            }
        }
    }
}

impl LocalOneTime {
    /// [`OneTimeStore::put`], synchronously.
    pub fn put_now(
        &self,
        token: &str,
        value: String,
        ttl: Duration,
        owner: &str,
        caps: OneTimeCaps,
    ) -> Capped {
        let now = Instant::now();
        let mut pool = self.lock();
        pool.purge(now);
        if let Some(q) = pool.owners.get(owner) {
            if q.len() >= caps.per_owner {
                let oldest = q.front().map_or(now + ttl, |s| s.0);
                return Capped::OwnerFull {
                    retry_after: oldest.saturating_duration_since(now),
                };
            }
        }
        if pool.tokens.len() >= caps.total {
            let oldest = pool
                .by_expiry
                .first_key_value()
                .map_or(now + ttl, |(k, _)| k.0);
            return Capped::PoolFull {
                retry_after: oldest.saturating_duration_since(now),
            };
        }
        let slot = (now + ttl, pool.next);
        pool.next += 1;
        pool.by_expiry.insert(slot, token.to_owned());
        pool.owners
            .entry(owner.to_owned())
            .or_default()
            .push_back(slot);
        pool.tokens.insert(
            token.to_owned(),
            Entry {
                slot,
                owner: owner.to_owned(),
                value,
            },
        );
        Capped::Stored
    }

    /// [`OneTimeStore::take`], synchronously; tells an expired token apart.
    pub fn take_now(&self, token: &str) -> Taken {
        match self.lock().forget(token) {
            Some(e) if e.slot.0 > Instant::now() => Taken::Value(e.value),
            Some(_) => Taken::Expired,
            None => Taken::Unknown,
        }
    }

    /// Outstanding tokens (expired ones not yet purged included).
    pub fn len(&self) -> usize {
        self.lock().tokens.len()
    }

    /// Whether no token is outstanding.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl OneTimeStore for LocalOneTime {
    fn put<'a>(
        &'a self,
        token: &'a str,
        value: String,
        ttl: Duration,
        owner: &'a str,
        caps: OneTimeCaps,
    ) -> BoxFuture<'a, Result<Capped, EngineError>> {
        let answer = self.put_now(token, value, ttl, owner, caps);
        Box::pin(async move { Ok(answer) })
    }

    fn take<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Taken, EngineError>> {
        let answer = self.take_now(token);
        Box::pin(async move { Ok(answer) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);
    const CAPS: OneTimeCaps = OneTimeCaps {
        per_owner: 3,
        total: 5,
    };

    fn put(t: &LocalOneTime, token: &str, owner: &str, ttl: Duration, caps: OneTimeCaps) -> Capped {
        t.put_now(token, format!("value of {token}"), ttl, owner, caps)
    }

    #[test]
    fn each_owner_has_a_share_and_the_pool_a_size() {
        let t = LocalOneTime::default();
        for i in 0..3 {
            assert_eq!(
                put(&t, &format!("a{i}"), "sub:a", TTL, CAPS),
                Capped::Stored
            );
        }
        let Capped::OwnerFull { retry_after } = put(&t, "a3", "sub:a", TTL, CAPS) else {
            panic!("a fourth token for the same owner")
        };
        assert!(retry_after <= TTL && retry_after > TTL - Duration::from_secs(5));
        assert_eq!(put(&t, "b0", "sub:b", TTL, CAPS), Capped::Stored);
        assert_eq!(put(&t, "b1", "sub:b", TTL, CAPS), Capped::Stored);
        assert!(matches!(
            put(&t, "c0", "sub:c", TTL, CAPS),
            Capped::PoolFull { .. }
        ));
        // Taking gives the slot back, to the owner and to the pool.
        assert_eq!(t.take_now("b1"), Taken::Value("value of b1".into()));
        assert_eq!(t.take_now("b1"), Taken::Unknown);
        assert_eq!(put(&t, "c0", "sub:c", TTL, CAPS), Capped::Stored);
        assert_eq!(t.len(), 5);
    }

    #[test]
    fn expired_tokens_leave_in_order() {
        let t = LocalOneTime::default();
        let short = Duration::from_millis(20);
        let caps = OneTimeCaps {
            per_owner: 2,
            total: 2,
        };
        assert_eq!(put(&t, "a", "x", short, caps), Capped::Stored);
        assert_eq!(put(&t, "b", "x", short, caps), Capped::Stored);
        assert_ne!(put(&t, "c", "x", short, caps), Capped::Stored);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(put(&t, "d", "x", short, caps), Capped::Stored);
        assert_eq!(t.len(), 1);
        assert_eq!(t.take_now("a"), Taken::Unknown);
    }

    #[test]
    fn an_expired_token_not_yet_purged_is_told_apart() {
        let t = LocalOneTime::default();
        assert_eq!(
            put(&t, "a", "x", Duration::from_millis(10), CAPS),
            Capped::Stored
        );
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(t.take_now("a"), Taken::Expired);
        assert!(t.is_empty());
    }
}
