//! Records that must hold across nodes, kept in Redis: idempotent publish
//! ids (claimed with `SET NX`, expiring) and one-time tokens (taken with
//! `GETDEL`, so exactly one node can redeem each).

use std::sync::Arc;
use std::time::Duration;

use fred::interfaces::KeysInterface;
use fred::types::scripts::Script;
use fred::types::{Expiration, Value};
use herald_auth::{Capped, OneTimeStore};
use herald_core::engine::BoxFuture;
use herald_core::idempotency::{Claim, IdempotencyStore};
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
            let client = self.shared.client()?;
            let key = self.shared.keys.idempotency(topic, id);
            let answer: String = self
                .claim
                .evalsha_with_reload(client, key, millis(CLAIM_TTL))
                .await
                .map_err(unavailable)?;
            Ok(match answer.as_str() {
                "owned" => Claim::Owned,
                "pending" => Claim::Wait(None),
                v => match parse_record(v) {
                    Some((position, at)) => Claim::DoneAt(position, at),
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
            let client = self.shared.client()?;
            let key = self.shared.keys.idempotency(topic, id);
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
            let Ok(client) = self.shared.client() else {
                return; // the claim expires by itself
            };
            let key = self.shared.keys.idempotency(topic, id);
            let r: Result<Value, _> = self.abandon.evalsha_with_reload(client, key, ()).await;
            if let Err(e) = r {
                tracing::debug!(%e, "could not release an idempotency claim");
            }
        })
    }
}

/// One-time tokens in Redis: any node can redeem a token another issued,
/// once. Each owner's outstanding tokens are also listed in a sorted set
/// scored by expiry (`<prefix>ot:~owner:<owner>`, expiring with its newest
/// token), so the per-user cap holds across every node.
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
}

impl OneTimeStore for RedisOneTimeTokens {
    fn put<'a>(
        &'a self,
        token: &'a str,
        value: String,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let client = self.shared.client().map_err(|e| e.to_string())?;
            let key = self.shared.keys.one_time_token(token);
            let _: Value = client
                .set(key, value, Some(Expiration::PX(millis(ttl))), None, false)
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        })
    }

    fn take<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<String>, String>> {
        Box::pin(async move {
            let client = self.shared.client().map_err(|e| e.to_string())?;
            let key = self.shared.keys.one_time_token(token);
            client.getdel(key).await.map_err(|e| e.to_string())
        })
    }

    fn put_capped<'a>(
        &'a self,
        token: &'a str,
        value: String,
        ttl: Duration,
        owner: &'a str,
        max_per_owner: usize,
    ) -> BoxFuture<'a, Result<Capped, String>> {
        Box::pin(async move {
            let client = self.shared.client().map_err(|e| e.to_string())?;
            let owner_key = self.owner_key(owner);
            let max = i64::try_from(max_per_owner).unwrap_or(i64::MAX);
            let wait: i64 = self
                .reserve
                .evalsha_with_reload(client, owner_key.clone(), (token, millis(ttl), max))
                .await
                .map_err(|e| e.to_string())?;
            if wait >= 0 {
                return Ok(Capped::OwnerFull {
                    retry_after: Duration::from_millis(wait.unsigned_abs()),
                });
            }
            if let Err(e) = self.put(token, value, ttl).await {
                let _: Result<Value, _> = self
                    .release
                    .evalsha_with_reload(client, owner_key, token)
                    .await;
                return Err(e);
            }
            Ok(Capped::Stored)
        })
    }

    fn release<'a>(&'a self, owner: &'a str, token: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Ok(client) = self.shared.client() else {
                return; // the entry expires with the token
            };
            let r: Result<Value, _> = self
                .release
                .evalsha_with_reload(client, self.owner_key(owner), token)
                .await;
            if let Err(e) = r {
                tracing::debug!(%e, "could not release a one-time token's place");
            }
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
}
