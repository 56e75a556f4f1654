//! One-time tokens (`POST /v1/tokens`): short-lived, single-use tokens for
//! `?token=` on an `EventSource` or WebSocket URL.
//!
//! Tokens wait in a [`OneTimeStore`] (herald-core's one design for
//! per-deployment state): this process's memory ([`LocalOneTime`]) unless
//! [`Auth::set_one_time_store`] gives the hub's
//! ([`Hub::one_time_store`](herald_core::Hub::one_time_store)), which is the
//! engine's shared store when it has one (Redis), so a token issued on one
//! node is redeemed once on any. The store keeps whom a token stands for as
//! JSON (`principal_to_store`). Every principal has a share of the pool: at
//! most [`AuthConfig::one_time_max_per_user`] outstanding tokens each
//! (counted under [`quota_key`]), so one user issuing in a loop is answered
//! 429 while everyone else still gets tokens. The in-process pool as a whole
//! holds at most [`AuthConfig::one_time_max`] tokens (503 when full).
//!
//! [`AuthConfig::one_time_max_per_user`]: crate::AuthConfig::one_time_max_per_user
//! [`AuthConfig::one_time_max`]: crate::AuthConfig::one_time_max

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

pub use herald_core::one_time::{Capped, LocalOneTime, OneTimeCaps, OneTimeStore, Taken};

use crate::{Auth, AuthError, Grant, Principal, TopicPattern};

/// The prefix of one-time tokens (JWTs never start with it).
pub(crate) const ONE_TIME_PREFIX: &str = "ot_";

/// Why no one-time token was issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    /// This principal already holds its share of outstanding tokens
    /// (429 `rate_limited`); its oldest token expires in `retry_after`.
    #[error("too many outstanding one-time tokens for this user; retry in {}s", retry_secs(*retry_after))]
    UserLimit {
        /// Time until the principal's oldest token expires (sent as
        /// `Retry-After`, rounded up to whole seconds).
        retry_after: Duration,
    },
    /// The pool of outstanding tokens is full (503 `server_full`); the
    /// oldest token expires in `retry_after`.
    #[error("the one-time token pool is full; retry in {}s", retry_secs(*retry_after))]
    Full {
        /// Time until the pool's oldest token expires (sent as
        /// `Retry-After`, rounded up to whole seconds).
        retry_after: Duration,
    },
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

impl Auth {
    /// Keeps one-time tokens in `store` instead of this process's memory:
    /// the hub's ([`Hub::one_time_store`](herald_core::Hub::one_time_store)),
    /// so that with a shared engine a token issued by one node can be
    /// redeemed, once, on any node. Tokens must then be issued and redeemed
    /// with [`Auth::issue_one_time_for`] (or [`Auth::issue_one_time_async`])
    /// and [`Auth::authenticate_async`].
    pub fn set_one_time_store(&mut self, store: Arc<dyn OneTimeStore>) {
        self.shared_one_time = Some(store);
    }

    /// The bounds of every put: [`AuthConfig::one_time_max_per_user`]
    /// per owner, [`AuthConfig::one_time_max`] in all.
    ///
    /// [`AuthConfig::one_time_max_per_user`]: crate::AuthConfig::one_time_max_per_user
    /// [`AuthConfig::one_time_max`]: crate::AuthConfig::one_time_max
    fn one_time_caps(&self) -> OneTimeCaps {
        OneTimeCaps {
            per_owner: self.config.one_time_max_per_user,
            total: self.config.one_time_max,
        }
    }

    /// Redeems a one-time token from the store set with
    /// [`Auth::set_one_time_store`].
    pub(crate) async fn redeem_shared(
        &self,
        store: &dyn OneTimeStore,
        token: &str,
    ) -> Result<Principal, AuthError> {
        match store.take(token).await {
            Ok(Taken::Value(v)) => {
                principal_from_store(&v).ok_or(AuthError::Invalid("one-time token unreadable"))
            }
            Ok(Taken::Expired) => Err(AuthError::Invalid("one-time token expired")),
            Ok(Taken::Unknown) => Err(AuthError::Invalid(
                "one-time token unknown, expired or already used",
            )),
            Err(_) => Err(AuthError::Unavailable(
                "one-time tokens cannot be checked right now",
            )),
        }
    }

    /// [`Auth::issue_one_time`], into the shared store when there is one.
    /// Refusals (share used up, pool full, store unreachable) all become
    /// [`AuthError`]; [`Auth::issue_one_time_for`] tells them apart.
    pub async fn issue_one_time_async(
        &self,
        who: &Principal,
    ) -> Result<(String, Duration), AuthError> {
        self.issue_one_time_for(who, None)
            .await
            .map_err(|e| match e {
                IssueError::Auth(a) => a,
                IssueError::UserLimit { .. } => {
                    AuthError::Invalid("too many outstanding one-time tokens for this user")
                }
                IssueError::Full { .. } => AuthError::Invalid("the one-time token pool is full"),
                IssueError::Unavailable => {
                    AuthError::Invalid("one-time tokens cannot be issued right now")
                }
            })
    }

    /// Issues a one-time token carrying `who`'s rights, into the shared
    /// store when there is one, counted against `who`'s share
    /// ([`quota_key`]`(who, client)`; `client` is the caller's address,
    /// used for principals without a subject). Returns the token and its
    /// lifetime.
    ///
    /// Errors: [`IssueError::UserLimit`] when `who` holds
    /// [`AuthConfig::one_time_max_per_user`] unexpired tokens,
    /// [`IssueError::Full`] when an in-process store holds
    /// [`AuthConfig::one_time_max`], [`IssueError::Unavailable`] when the
    /// shared store cannot be reached.
    ///
    /// [`AuthConfig::one_time_max_per_user`]: crate::AuthConfig::one_time_max_per_user
    /// [`AuthConfig::one_time_max`]: crate::AuthConfig::one_time_max
    pub async fn issue_one_time_for(
        &self,
        who: &Principal,
        client: Option<IpAddr>,
    ) -> Result<(String, Duration), IssueError> {
        let ttl = self.config.one_time_ttl;
        let owner = quota_key(who, client);
        let token = new_token()?;
        let value = principal_to_store(who);
        let caps = self.one_time_caps();
        let placed = match &self.shared_one_time {
            None => self.one_time.put_now(&token, value, ttl, &owner, caps),
            Some(store) => store
                .put(&token, value, ttl, &owner, caps)
                .await
                .map_err(|_| IssueError::Unavailable)?,
        };
        match placed {
            Capped::Stored => Ok((token, ttl)),
            Capped::OwnerFull { retry_after } => Err(IssueError::UserLimit { retry_after }),
            Capped::PoolFull { retry_after } => Err(IssueError::Full { retry_after }),
        }
    }

    /// Issues a one-time token carrying `who`'s rights, in this process.
    /// Returns the token and its lifetime. Refused when a shared store is
    /// configured (use [`Auth::issue_one_time_for`]), when `who` holds its
    /// share, or when the pool is full.
    pub fn issue_one_time(&self, who: &Principal) -> Result<(String, Duration), AuthError> {
        if self.shared_one_time.is_some() {
            return Err(AuthError::Invalid(
                "one-time tokens are shared; issue them with issue_one_time_async",
            ));
        }
        let ttl = self.config.one_time_ttl;
        let token = new_token()?;
        let placed = self.one_time.put_now(
            &token,
            principal_to_store(who),
            ttl,
            &quota_key(who, None),
            self.one_time_caps(),
        );
        match placed {
            Capped::Stored => Ok((token, ttl)),
            _ => Err(AuthError::Invalid(
                "too many outstanding one-time tokens; try again shortly",
            )),
        }
    }

    /// Redeems a one-time token from this process's store.
    pub(crate) fn redeem(&self, token: &str) -> Result<Principal, AuthError> {
        if self.shared_one_time.is_some() {
            return Err(AuthError::Invalid(
                "one-time tokens are shared; redeem them with authenticate_async",
            ));
        }
        match self.one_time.take_now(token) {
            Taken::Value(v) => {
                principal_from_store(&v).ok_or(AuthError::Invalid("one-time token unreadable"))
            }
            Taken::Expired => Err(AuthError::Invalid("one-time token expired")),
            Taken::Unknown => Err(AuthError::Invalid("one-time token unknown or already used")),
        }
    }
}

/// A principal as a one-time store keeps it (JSON).
pub(crate) fn principal_to_store(who: &Principal) -> String {
    let patterns = |v: &[TopicPattern]| v.iter().map(|p| p.as_str().to_owned()).collect::<Vec<_>>();
    match who {
        Principal::Open => serde_json::json!({"kind": "open"}),
        Principal::Anonymous => serde_json::json!({"kind": "anonymous"}),
        Principal::Publisher => serde_json::json!({"kind": "publisher"}),
        Principal::User(g) => serde_json::json!({
            "kind": "user",
            "sub": g.subject,
            "subscribe": patterns(&g.subscribe),
            "publish": patterns(&g.publish),
            "llm": g.llm,
            "admin": g.admin,
            "exp": g.expires_at,
            "info": g.info,
        }),
    }
    .to_string()
}

/// The principal [`principal_to_store`] kept, if `v` is one.
pub(crate) fn principal_from_store(v: &str) -> Option<Principal> {
    let v: serde_json::Value = serde_json::from_str(v).ok()?;
    let patterns = |key: &str| -> Option<Vec<TopicPattern>> {
        v[key]
            .as_array()?
            .iter()
            .map(|p| TopicPattern::parse(p.as_str()?).ok())
            .collect()
    };
    Some(match v["kind"].as_str()? {
        "open" => Principal::Open,
        "anonymous" => Principal::Anonymous,
        "publisher" => Principal::Publisher,
        "user" => Principal::User(Arc::new(Grant {
            subject: v["sub"].as_str().map(str::to_owned),
            subscribe: patterns("subscribe")?,
            publish: patterns("publish")?,
            llm: v["llm"].as_bool().unwrap_or(false),
            admin: v["admin"].as_bool().unwrap_or(false),
            expires_at: v["exp"].as_u64(),
            info: v.get("info").filter(|i| !i.is_null()).cloned(),
        })),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_keys() {
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let user = |sub: Option<&str>| {
            Principal::User(Arc::new(crate::Grant {
                subject: sub.map(str::to_owned),
                subscribe: vec![],
                publish: vec![],
                llm: false,
                admin: false,
                expires_at: None,
                info: None,
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
