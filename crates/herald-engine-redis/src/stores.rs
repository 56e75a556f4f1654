//! Records that must hold across nodes, kept in Redis: idempotent publish
//! ids (claimed with `SET NX`, expiring) and one-time tokens (taken with
//! `GETDEL`, so exactly one node can redeem each).

use std::sync::Arc;
use std::time::Duration;

use fred::interfaces::KeysInterface;
use fred::types::scripts::Script;
use fred::types::{Expiration, Value};
use herald_auth::OneTimeStore;
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
/// once.
#[derive(Clone)]
pub struct RedisOneTimeTokens {
    shared: Arc<Shared>,
}

impl RedisOneTimeTokens {
    pub(crate) fn new(shared: Arc<Shared>) -> RedisOneTimeTokens {
        RedisOneTimeTokens { shared }
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
