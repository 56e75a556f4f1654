//! One-time tokens (`POST /v1/tokens`): short-lived, single-use tokens for
//! `?token=` on an `EventSource` or WebSocket URL.
//!
//! Tokens wait in this process ([`LocalTokens`]) or, for several nodes, in a
//! shared [`OneTimeStore`]. Either way every principal has a share of the
//! pool: at most [`AuthConfig::one_time_max_per_user`] outstanding tokens
//! each (counted under [`quota_key`]), so one user issuing in a loop is
//! answered 429 while everyone else still gets tokens. The in-process pool as
//! a whole holds at most [`AuthConfig::one_time_max`] tokens (503 when full).
//! Expired tokens leave in expiry order from a time-ordered index; issuing
//! never scans the whole pool.
//!
//! [`AuthConfig::one_time_max_per_user`]: crate::AuthConfig::one_time_max_per_user
//! [`AuthConfig::one_time_max`]: crate::AuthConfig::one_time_max

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use herald_core::engine::BoxFuture;

use crate::{AuthError, Principal};

/// The prefix of one-time tokens (JWTs never start with it).
pub(crate) const ONE_TIME_PREFIX: &str = "ot_";

/// Where one-time tokens wait between issue and redemption when several
/// nodes must share them (the Redis engine provides one). Values are opaque
/// strings; `take` must remove and return atomically, so a token is redeemed
/// once across every node. Without a store, tokens stay in this process.
pub trait OneTimeStore: Send + Sync + 'static {
    /// Keeps `value` under `token` for `ttl`.
    fn put<'a>(
        &'a self,
        token: &'a str,
        value: String,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), String>>;

    /// Removes and returns the value of `token`, if it is there and not expired.
    fn take<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<String>, String>>;

    /// Keeps `value` under `token` for `ttl` unless `owner` already holds
    /// `max_per_owner` unexpired tokens, counted across every node. The
    /// default stores without counting; a store shared by several nodes
    /// should override it (and [`OneTimeStore::release`]).
    fn put_capped<'a>(
        &'a self,
        token: &'a str,
        value: String,
        ttl: Duration,
        owner: &'a str,
        max_per_owner: usize,
    ) -> BoxFuture<'a, Result<Capped, String>> {
        let _ = (owner, max_per_owner);
        Box::pin(async move {
            self.put(token, value, ttl).await?;
            Ok(Capped::Stored)
        })
    }

    /// Forgets that `owner` holds `token` (it was redeemed). Best effort:
    /// the count also drops when the token expires.
    fn release<'a>(&'a self, owner: &'a str, token: &'a str) -> BoxFuture<'a, ()> {
        let _ = (owner, token);
        Box::pin(async {})
    }
}

/// The answer of [`OneTimeStore::put_capped`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capped {
    /// The token is stored.
    Stored,
    /// The owner holds its share; its oldest token expires in `retry_after`.
    OwnerFull { retry_after: Duration },
}

/// Why no one-time token was issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    /// This principal already holds its share of outstanding tokens
    /// (429 `rate_limited`); its oldest token expires in `retry_after`.
    #[error("too many outstanding one-time tokens for this user; retry in {}s", retry_secs(*retry_after))]
    UserLimit { retry_after: Duration },
    /// The pool of outstanding tokens is full (503 `server_full`); the
    /// oldest token expires in `retry_after`.
    #[error("the one-time token pool is full; retry in {}s", retry_secs(*retry_after))]
    Full { retry_after: Duration },
    /// The shared store could not be reached (503 `unavailable`).
    #[error("one-time tokens cannot be issued right now")]
    Unavailable,
    /// No randomness (or another credential problem).
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl IssueError {
    /// Whole seconds to wait before asking again (at least 1), for `Retry-After`.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            IssueError::UserLimit { retry_after } | IssueError::Full { retry_after } => {
                Some(retry_secs(*retry_after))
            }
            IssueError::Unavailable => Some(1),
            IssueError::Auth(_) => None,
        }
    }
}

/// `d` rounded up to whole seconds, at least 1.
pub(crate) fn retry_secs(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

/// The name a principal's per-user shares (one-time tokens, LLM
/// generations) are counted under:
/// - a token with a subject: `sub:<sub>`;
/// - a publisher key: `publisher` (all backends share one allowance);
/// - everyone else (an open server, an anonymous caller where allowed, a
///   token without `sub`): the client address, `addr:<ip>`, or `unknown`
///   when the address is not known.
pub fn quota_key(who: &Principal, client: Option<IpAddr>) -> String {
    match (who, who.subject(), client) {
        (Principal::User(_), Some(sub), _) => format!("sub:{sub}"),
        (Principal::Publisher, _, _) => "publisher".into(),
        (_, _, Some(ip)) => format!("addr:{ip}"),
        (_, _, None) => "unknown".into(),
    }
}

pub(crate) fn new_token() -> Result<String, AuthError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|_| AuthError::Invalid("no randomness available"))?;
    use base64::Engine;
    Ok(format!(
        "{ONE_TIME_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// One-time tokens kept in this process.
#[derive(Default)]
pub(crate) struct LocalTokens {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    tokens: HashMap<String, Entry>,
    /// Every outstanding token by (expiry, issue number): the oldest first.
    by_expiry: BTreeMap<(Instant, u64), String>,
    /// Each owner's outstanding tokens, oldest first (same keys as `by_expiry`).
    owners: HashMap<String, VecDeque<(Instant, u64)>>,
    next: u64,
}

struct Entry {
    slot: (Instant, u64),
    owner: String,
    who: Principal,
}

impl Inner {
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

impl LocalTokens {
    /// Issues a token for `who` under `owner`, or says why not.
    pub(crate) fn issue(
        &self,
        who: &Principal,
        owner: String,
        ttl: Duration,
        max: usize,
        max_per_owner: usize,
    ) -> Result<String, IssueError> {
        let token = new_token()?;
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.purge(now);
        if let Some(q) = inner.owners.get(&owner) {
            if q.len() >= max_per_owner {
                let oldest = q.front().map_or(now + ttl, |s| s.0);
                return Err(IssueError::UserLimit {
                    retry_after: oldest.saturating_duration_since(now),
                });
            }
        }
        if inner.tokens.len() >= max {
            let oldest = inner
                .by_expiry
                .first_key_value()
                .map_or(now + ttl, |(k, _)| k.0);
            return Err(IssueError::Full {
                retry_after: oldest.saturating_duration_since(now),
            });
        }
        let slot = (now + ttl, inner.next);
        inner.next += 1;
        inner.by_expiry.insert(slot, token.clone());
        inner
            .owners
            .entry(owner.clone())
            .or_default()
            .push_back(slot);
        inner.tokens.insert(
            token.clone(),
            Entry {
                slot,
                owner,
                who: who.clone(),
            },
        );
        Ok(token)
    }

    /// Redeems `token`: removes it and returns its principal.
    pub(crate) fn redeem(&self, token: &str) -> Result<Principal, AuthError> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match inner.forget(token) {
            Some(e) if e.slot.0 > Instant::now() => Ok(e.who),
            Some(_) => Err(AuthError::Invalid("one-time token expired")),
            None => Err(AuthError::Invalid("one-time token unknown or already used")),
        }
    }

    /// Outstanding tokens (expired ones not yet purged included).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tokens
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn each_owner_has_a_share_and_the_pool_a_size() {
        let t = LocalTokens::default();
        let who = Principal::Publisher;
        for _ in 0..3 {
            t.issue(&who, "sub:a".into(), TTL, 5, 3).unwrap();
        }
        let Err(IssueError::UserLimit { retry_after }) = t.issue(&who, "sub:a".into(), TTL, 5, 3)
        else {
            panic!("a fourth token for the same owner")
        };
        assert!(retry_after <= TTL && retry_after > TTL - Duration::from_secs(5));
        t.issue(&who, "sub:b".into(), TTL, 5, 3).unwrap();
        let last = t.issue(&who, "sub:b".into(), TTL, 5, 3).unwrap();
        assert!(matches!(
            t.issue(&who, "sub:c".into(), TTL, 5, 3),
            Err(IssueError::Full { .. })
        ));
        // Redeeming gives the slot back, to the owner and to the pool.
        assert_eq!(t.redeem(&last), Ok(Principal::Publisher));
        assert!(t.redeem(&last).is_err());
        t.issue(&who, "sub:c".into(), TTL, 5, 3).unwrap();
        assert_eq!(t.len(), 5);
    }

    #[test]
    fn expired_tokens_leave_in_order() {
        let t = LocalTokens::default();
        let short = Duration::from_millis(20);
        let a = t.issue(&Principal::Open, "x".into(), short, 2, 2).unwrap();
        t.issue(&Principal::Open, "x".into(), short, 2, 2).unwrap();
        assert!(t.issue(&Principal::Open, "x".into(), short, 2, 2).is_err());
        std::thread::sleep(Duration::from_millis(40));
        t.issue(&Principal::Open, "x".into(), short, 2, 2).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(
            t.redeem(&a),
            Err(AuthError::Invalid("one-time token unknown or already used"))
        );
    }

    #[test]
    fn quota_keys() {
        use std::sync::Arc;
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let user = |sub: Option<&str>| {
            Principal::User(Arc::new(crate::Grant {
                subject: sub.map(str::to_owned),
                subscribe: vec![],
                publish: vec![],
                llm: false,
                expires_at: None,
            }))
        };
        assert_eq!(quota_key(&user(Some("alice")), Some(ip)), "sub:alice");
        assert_eq!(quota_key(&user(None), Some(ip)), "addr:10.0.0.7");
        assert_eq!(quota_key(&Principal::Publisher, Some(ip)), "publisher");
        assert_eq!(quota_key(&Principal::Open, Some(ip)), "addr:10.0.0.7");
        assert_eq!(quota_key(&Principal::Open, None), "unknown");
        assert_eq!(retry_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_secs(Duration::from_millis(2500)), 3);
        assert_eq!(retry_secs(Duration::ZERO), 1);
    }
}
