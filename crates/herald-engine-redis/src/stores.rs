//! Records that must hold across nodes, kept in Redis: idempotent publish
//! ids (claimed with `SET NX`, expiring) and one-time tokens (taken with
//! `GETDEL`, so exactly one node can redeem each).

use std::sync::Arc;
use std::time::Duration;

use fred::interfaces::KeysInterface;
use fred::types::scripts::Script;
use fred::types::{Expiration, Value};
use herald_core::engine::BoxFuture;
use herald_core::idempotency::{Claim, IdempotencyStore};
use herald_core::one_time::{Capped, OneTimeCaps, OneTimeStore, Taken};
use herald_core::{EngineError, Event, Position, Topic};

use crate::{codec, scripts, unavailable, Shared};

/// How long an in-flight claim blocks retries if its node dies before
/// completing it (the hub itself gives up waiting after 30 s).
const CLAIM_TTL: Duration = Duration::from_secs(30);

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// Idempotency records in Redis, next to their topic's stream. A completed
/// record holds `<epoch>:<id>` (the stream id `<seq>-<ms>`), enough for a
/// retry to answer with the first publish's cursor.
pub struct RedisIdempotency {
    shared: Arc<Shared>,
    ttl: Duration,
    claim: Script,
    abandon: Script,
}

impl RedisIdempotency {
    pub(crate) fn new(shared: Arc<Shared>, ttl: Duration) -> RedisIdempotency {
        RedisIdempotency {
            shared,
            ttl,
            claim: Script::from_lua(scripts::CLAIM),
            abandon: Script::from_lua(scripts::ABANDON),
        }
    }
}

fn parse_record(v: &str) -> Option<(Position, u64)> {
    let (epoch, id) = v.split_once(':')?;
    let (seq, ms) = codec::parse_id(id).ok()?;
    Some((Position::new(epoch.parse().ok()?, seq), ms))
}

impl IdempotencyStore for RedisIdempotency {
    fn claim<'a>(
        &'a self,
        topic: &'a Topic,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Claim, EngineError>> {
        Box::pin(async move {
            let key = self.shared.keys.idempotency(topic, id);
            let client = self.shared.client(&key)?;
            let answer: String = self
                .claim
                .evalsha_with_reload(&client, key.clone(), millis(CLAIM_TTL))
                .await
                .map_err(unavailable)?;
            Ok(match answer.as_str() {
                "owned" => Claim::Owned,
                "pending" => Claim::Wait(None),
                v => match parse_record(v) {
                    // A publish refused for want of replicas is recorded
                    // too: answered only once it is replicated.
                    Some((position, at)) => {
                        self.shared
                            .confirm_replicated(topic, &key, position)
                            .await?;
                        Claim::DoneAt(position, at)
                    }
                    None => return Err(unavailable(format!("bad idempotency record {v:?}"))),
                },
            })
        })
    }

    fn complete<'a>(
        &'a self,
        topic: &'a Topic,
        id: &'a str,
        event: &'a Arc<Event>,
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            let key = self.shared.keys.idempotency(topic, id);
            let client = self.shared.client(&key)?;
            let p = event.position;
            let record = format!("{}:{}-{}", p.epoch, p.seq, event.published_at_ms);
            let _: Value = client
                .set(
                    key,
                    record,
                    Some(Expiration::PX(millis(self.ttl))),
                    None,
                    false,
                )
                .await
                .map_err(unavailable)?;
            Ok(())
        })
    }

    fn abandon<'a>(&'a self, topic: &'a Topic, id: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let key = self.shared.keys.idempotency(topic, id);
            let Ok(client) = self.shared.client(&key) else {
                return; // the claim expires by itself
            };
            let r: Result<Value, _> = self.abandon.evalsha_with_reload(&client, key, ()).await;
            if let Err(e) = r {
                tracing::debug!(%e, "could not release an idempotency claim");
            }
        })
    }
}

/// One-time tokens in Redis: any node can redeem a token another issued,
/// once (taken with `GETDEL`). A token's value is kept with its owner
/// (`<owner length>:<owner><value>`), so that taking it gives the owner's
/// place back. Each owner's outstanding tokens are also listed in a sorted
/// set scored by expiry (`<prefix>ot:~owner:<owner>`, expiring with its
/// newest token), so the per-owner cap holds across every node. The pool
/// as a whole is bounded by Redis's `maxmemory`, not by
/// [`OneTimeCaps::total`].
#[derive(Clone)]
pub struct RedisOneTimeTokens {
    shared: Arc<Shared>,
    reserve: Script,
    release: Script,
}

/// Claims a place in an owner's share: drops expired entries, refuses
/// (answering the milliseconds until the oldest expires) when the owner
/// holds ARGV[3] tokens, else adds ARGV[1] expiring in ARGV[2] ms and
/// answers -1. Time is the Redis server's, the same for every node.
const RESERVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) - now)
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return -1
"#;

/// Gives back an owner's place for token ARGV[1].
const RELEASE: &str = "return redis.call('ZREM', KEYS[1], ARGV[1])";

/// A token's stored value: its owner, then the value.
fn pack(owner: &str, value: &str) -> String {
    format!("{}:{owner}{value}", owner.len())
}

/// The owner and value of a stored token.
fn unpack(stored: &str) -> Option<(&str, &str)> {
    let (len, rest) = stored.split_once(':')?;
    let len: usize = len.parse().ok()?;
    // False past the end too.
    if !rest.is_char_boundary(len) {
        return None;
    }
    Some(rest.split_at(len))
}

impl RedisOneTimeTokens {
    pub(crate) fn new(shared: Arc<Shared>) -> RedisOneTimeTokens {
        RedisOneTimeTokens {
            shared,
            reserve: Script::from_lua(RESERVE),
            release: Script::from_lua(RELEASE),
        }
    }

    fn owner_key(&self, owner: &str) -> String {
        // Tokens start with `ot_`, so no token key can be an owner's.
        self.shared.keys.one_time_token(&format!("~owner:{owner}"))
    }

    /// Forgets that `owner` holds `token`. Best effort: the entry also
    /// leaves when the token expires.
    async fn release(&self, owner: &str, token: &str) {
        let owner_key = self.owner_key(owner);
        let Ok(client) = self.shared.client(&owner_key) else {
            return;
        };
        let r: Result<Value, _> = self
            .release
            .evalsha_with_reload(&client, owner_key, token)
            .await;
        if let Err(e) = r {
            tracing::debug!(%e, "could not release a one-time token's place");
        }
    }
}

impl OneTimeStore for RedisOneTimeTokens {
    fn put<'a>(
        &'a self,
        token: &'a str,
        value: String,
        ttl: Duration,
        owner: &'a str,
        caps: OneTimeCaps,
    ) -> BoxFuture<'a, Result<Capped, EngineError>> {
        Box::pin(async move {
            let owner_key = self.owner_key(owner);
            let client = self.shared.client(&owner_key)?;
            let max = i64::try_from(caps.per_owner).unwrap_or(i64::MAX);
            let wait: i64 = self
                .reserve
                .evalsha_with_reload(&client, owner_key, (token, millis(ttl), max))
                .await
                .map_err(unavailable)?;
            if wait >= 0 {
                return Ok(Capped::OwnerFull {
                    retry_after: Duration::from_millis(wait.unsigned_abs()),
                });
            }
            let key = self.shared.keys.one_time_token(token);
            // On a cluster the token and its owner's list may live on
            // different masters.
            let stored: Result<Value, _> = match self.shared.client(&key) {
                Ok(client) => client
                    .set(
                        key,
                        pack(owner, &value),
                        Some(Expiration::PX(millis(ttl))),
                        None,
                        false,
                    )
                    .await
                    .map_err(unavailable),
                Err(e) => Err(e),
            };
            if let Err(e) = stored {
                self.release(owner, token).await;
                return Err(e);
            }
            Ok(Capped::Stored)
        })
    }

    fn take<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Taken, EngineError>> {
        Box::pin(async move {
            let key = self.shared.keys.one_time_token(token);
            let client = self.shared.client(&key)?;
            let stored: Option<String> = client.getdel(key).await.map_err(unavailable)?;
            // Redis drops an expired token by itself: it cannot be told apart.
            let Some(stored) = stored else {
                return Ok(Taken::Unknown);
            };
            let Some((owner, value)) = unpack(&stored) else {
                return Err(unavailable(format!("bad one-time token record {stored:?}")));
            };
            self.release(owner, token).await;
            Ok(Taken::Value(value.to_owned()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records() {
        assert_eq!(
            parse_record("281474976710655:12-1700000000000"),
            Some((Position::new(281474976710655, 12), 1700000000000))
        );
        assert_eq!(parse_record("pending"), None);
        assert_eq!(parse_record("1:x-2"), None);
    }

    #[test]
    fn token_records() {
        let packed = pack("sub:ä:1", "{\"kind\":\"open\"}");
        assert_eq!(unpack(&packed), Some(("sub:ä:1", "{\"kind\":\"open\"}")));
        assert_eq!(unpack(&pack("", "v")), Some(("", "v")));
        assert_eq!(unpack("9:short"), None);
        assert_eq!(unpack("1:äb"), None, "not on a character boundary");
        assert_eq!(unpack("x:abc"), None);
    }
}
