//! # herald-auth
//!
//! Who may read and write which topic, decided in one place for every
//! transport.
//!
//! # Layout
//!
//! - [`pattern`]: topic patterns (`orders/*`, `users/{sub}/**`).
//! - [`jwt`]: JWT verification (HS256, RS256, ES256) and Herald's claims.
//! - [`jwks`]: keys of identity providers, JSON Web Key Sets (RFC 7517)
//!   fetched from URLs through a [`JwksFetcher`], cached by `kid`, refreshed.
//! - `credential.rs`: a presented [`Credential`] and its [`Source`], and the
//!   rule for a token in a URL ([`query_token_lifetime`]).
//! - `principal.rs`: who is asking ([`Principal`], [`Grant`]), what they
//!   want ([`Action`]) and the refusal ([`Denied`]).
//! - `config.rs`: [`AuthConfig`] and [`AuthConfigError`].
//! - [`Auth`] (here): credentials → [`Principal`] ([`Auth::authenticate`]);
//!   one-time tokens in this process or in the hub's [`OneTimeStore`]
//!   (shared across nodes by a shared engine), with a per-user share of the
//!   pool ([`one_time`]).
//! - `authorize.rs`: the one authorization check ([`Auth::authorize`]) and
//!   topics granted at run time ([`Auth::grant_subscribe`]).
//!
//! # Example
//!
//! ```
//! use herald_auth::{Action, Auth, AuthConfig, Credential, Source, jwt};
//! use herald_core::Topic;
//!
//! let auth = Auth::new(AuthConfig { hs256_secret: Some(b"0123456789abcdef0123456789abcdef".to_vec()), ..AuthConfig::default() }).unwrap();
//! let claims = jwt::Claims {
//!     sub: Some("alice".into()), exp: herald_auth::now() + 60, iat: Some(herald_auth::now()), nbf: None,
//!     herald: jwt::HeraldClaim { subscribe: vec!["users/{sub}/**".into()], ..Default::default() },
//!     info: None,
//! };
//! let token = jwt::sign(&claims, b"0123456789abcdef0123456789abcdef", false, None).unwrap();
//! let who = auth.authenticate(Some(Credential::new(token, Source::Header))).unwrap();
//! assert!(auth.authorize(&who, Action::Subscribe, &Topic::new("users/alice/inbox").unwrap()).is_ok());
//! assert!(auth.authorize(&who, Action::Subscribe, &Topic::new("users/bob/inbox").unwrap()).is_err());
//! ```

#![warn(missing_docs)]

mod authorize;
mod config;
mod credential;
pub mod jwks;
pub mod jwt;
pub mod mercure;
pub mod one_time;
pub mod pattern;
mod principal;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub use authorize::Readers;
pub use config::{AuthConfig, AuthConfigError};
pub use credential::{query_token_lifetime, AuthError, Credential, Source};
pub use jwks::JwksFetcher;
#[cfg(test)]
use one_time::{principal_from_store, principal_to_store};
pub use one_time::{quota_key, IssueError, OneTimeStore};
use one_time::{LocalOneTime, ONE_TIME_PREFIX};
pub use pattern::{PatternError, TopicPattern};
pub use principal::{Action, Denied, Grant, Principal, RELAY_TOPIC_PREFIX};
use subtle::ConstantTimeEq;

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Authentication and authorization, shared by every transport.
pub struct Auth {
    enabled: bool,
    keys: Vec<jwt::Key>,
    key_id: Option<String>,
    /// Identity providers' key sets (`None`: no URL configured).
    jwks: Option<jwks::KeySets>,
    public: Vec<TopicPattern>,
    api_keys: Vec<String>,
    config: AuthConfig,
    one_time: LocalOneTime,
    shared_one_time: Option<Arc<dyn OneTimeStore>>,
    /// Topics granted at run time (an LLM stream to its creator), by topic.
    granted: Mutex<HashMap<String, (Instant, Readers)>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("enabled", &self.enabled)
            .field("keys", &self.keys.len())
            .field("jwks_urls", &self.jwks.as_ref().map_or(0, |j| j.len()))
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// No authentication: every request is allowed.
    pub fn open() -> Auth {
        Auth {
            enabled: false,
            keys: Vec::new(),
            key_id: None,
            jwks: None,
            public: Vec::new(),
            api_keys: Vec::new(),
            config: AuthConfig::default(),
            one_time: LocalOneTime::default(),
            shared_one_time: None,
            granted: Mutex::new(HashMap::new()),
        }
    }

    /// Authentication with `config`'s keys and public patterns; open (every
    /// request allowed) when it configures none.
    ///
    /// Errors: an empty secret, an unreadable public key, a key set URL
    /// that is not `http://` or `https://` (or holds credentials), an
    /// invalid public pattern, or a publisher key under 16 characters.
    pub fn new(config: AuthConfig) -> Result<Auth, AuthConfigError> {
        let mut keys = Vec::new();
        if let Some(secret) = &config.hs256_secret {
            if secret.is_empty() {
                return Err(AuthConfigError::EmptySecret);
            }
            keys.push(jwt::Key {
                alg: jsonwebtoken::Algorithm::HS256,
                key: jsonwebtoken::DecodingKey::from_secret(secret),
            });
        }
        if let Some(pem) = &config.public_key_pem {
            keys.push(jwt::public_key(pem).map_err(AuthConfigError::PublicKey)?);
        }
        for url in &config.jwks_urls {
            jwks::check_url(url).map_err(|error| AuthConfigError::JwksUrl {
                // A URL with credentials is not repeated.
                url: if url.contains('@') {
                    "[redacted]".into()
                } else {
                    url.clone()
                },
                error,
            })?;
        }
        let jwks = (!config.jwks_urls.is_empty()).then(|| jwks::KeySets::new(&config.jwks_urls));
        let public = config
            .public
            .iter()
            .map(|p| {
                TopicPattern::parse(p).map_err(|error| AuthConfigError::Pattern {
                    pattern: p.clone(),
                    error,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if config.api_keys.iter().any(|k| k.len() < 16) {
            return Err(AuthConfigError::ShortApiKey);
        }
        let enabled =
            !keys.is_empty() || jwks.is_some() || !public.is_empty() || !config.api_keys.is_empty();
        Ok(Auth {
            enabled,
            keys,
            key_id: config.key_id.clone(),
            jwks,
            public,
            api_keys: config.api_keys.clone(),
            config,
            one_time: LocalOneTime::default(),
            shared_one_time: None,
            granted: Mutex::new(HashMap::new()),
        })
    }

    /// [`Auth::authenticate`], redeeming one-time tokens from the shared
    /// store when there is one, and fetching the key sets again when a JWT
    /// names a `kid` none of them holds (at most once per
    /// [`jwks::MIN_REFETCH_INTERVAL`] per URL; see [`jwks`]). Every
    /// transport calls this.
    pub async fn authenticate_async(
        &self,
        credential: Option<Credential>,
    ) -> Result<Principal, AuthError> {
        match (&self.shared_one_time, &credential) {
            (Some(store), Some(c)) if c.token.starts_with(ONE_TIME_PREFIX) => {
                self.redeem_shared(store.as_ref(), &c.token).await
            }
            _ => {
                if let (Some(sets), Some(c)) = (&self.jwks, &credential) {
                    if let Some(kid) = self.unknown_kid(sets, &c.token) {
                        sets.fetch_for_kid(&kid).await;
                    }
                }
                self.authenticate(credential)
            }
        }
    }

    /// The `kid` of `token` if it is a JWT naming a key neither the key sets
    /// nor the configured key hold.
    fn unknown_kid(&self, sets: &jwks::KeySets, token: &str) -> Option<String> {
        if token.starts_with(ONE_TIME_PREFIX) {
            return None;
        }
        let kid = jsonwebtoken::decode_header(token).ok()?.kid?;
        let known = sets.get(&kid).is_some() || self.key_id.as_deref() == Some(kid.as_str());
        (!known).then_some(kid)
    }

    /// Fetches the key sets of [`AuthConfig::jwks_urls`] with `fetcher`
    /// (an HTTP client; this crate has none). Call before sharing the
    /// `Auth`; without a fetcher no key set is ever loaded.
    pub fn set_jwks_fetcher(&mut self, fetcher: Arc<dyn JwksFetcher>) {
        if let Some(sets) = &mut self.jwks {
            sets.set_fetcher(fetcher);
        }
    }

    /// Fetches the key sets now (the first time) and again whenever their
    /// lifetime passes or a fetch failed (see [`jwks`]); never returns while
    /// key set URLs are configured (returns at once otherwise). Spawn it
    /// once, at start.
    pub async fn keep_jwks_fresh(&self) {
        let Some(sets) = &self.jwks else {
            return;
        };
        loop {
            let next = sets.refresh_due().await;
            let soonest = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
            tokio::time::sleep_until(next.max(soonest)).await;
        }
    }

    /// The key set URLs configured ([`AuthConfig::jwks_urls`]).
    pub fn jwks_urls(&self) -> &[String] {
        &self.config.jwks_urls
    }

    /// Keys held from the key sets, over every URL (0 before the first fetch).
    pub fn jwks_key_count(&self) -> usize {
        self.jwks.as_ref().map_or(0, jwks::KeySets::key_count)
    }

    /// Whether any authentication is configured.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Who presents `credential` (`None`: no credential). A JWT naming a
    /// `kid` is verified with the key set key of that `kid` if one is held
    /// (this never fetches: a `kid` not held yet is refused here, see
    /// [`Auth::authenticate_async`]), else with the configured keys.
    pub fn authenticate(&self, credential: Option<Credential>) -> Result<Principal, AuthError> {
        if !self.enabled {
            // Still consume one-time tokens, so they behave the same everywhere.
            if let Some(c) = &credential {
                if c.token.starts_with(ONE_TIME_PREFIX) {
                    return self.redeem(&c.token);
                }
            }
            return Ok(Principal::Open);
        }
        let Some(c) = credential else {
            return Ok(Principal::Anonymous);
        };
        if c.token.starts_with(ONE_TIME_PREFIX) {
            return self.redeem(&c.token);
        }
        if self
            .api_keys
            .iter()
            .any(|k| bool::from(k.as_bytes().ct_eq(c.token.as_bytes())))
        {
            if c.source != Source::Header {
                return Err(AuthError::Invalid(
                    "publisher keys are accepted only in the Authorization header",
                ));
            }
            return Ok(Principal::Publisher);
        }
        if self.keys.is_empty() && self.jwks.is_none() {
            return Err(AuthError::Invalid("this server accepts no tokens"));
        }
        let claims = self.verify_jwt(&c.token)?;
        if c.source == Source::Query {
            query_token_lifetime(
                claims.iat,
                claims.exp,
                now(),
                self.config.max_query_token_lifetime.as_secs(),
                self.config.leeway_secs,
            )?;
        }
        Ok(Principal::User(Arc::new(claims.grant()?)))
    }

    /// The claims of the JWT `token`, verified with the key set key its
    /// `kid` names, else with a configured key; `iss` and `aud` checked as
    /// configured.
    fn verify_jwt(&self, token: &str) -> Result<jwt::Claims, AuthError> {
        let header = jwt::header(token)?;
        let expect = jwt::Expect {
            leeway: self.config.leeway_secs,
            issuer: self.config.issuer.as_deref(),
            audience: self.config.audience.as_deref(),
        };
        if let (Some(sets), Some(kid)) = (&self.jwks, &header.kid) {
            if let Some(key) = sets.get(kid) {
                return jwt::decode(token, &header, &key, &expect);
            }
            if self.key_id.as_deref() != Some(kid.as_str()) {
                return Err(AuthError::Invalid(if sets.any_loaded() {
                    "unknown key id (kid)"
                } else {
                    "unknown key id (kid): the identity provider's key set could not be fetched yet"
                }));
            }
        }
        if self.keys.is_empty() {
            return Err(AuthError::Invalid(
                "the token names no key id (kid) of the identity provider's key set",
            ));
        }
        let key = jwt::static_key(&header, &self.keys, self.key_id.as_deref())?;
        jwt::decode(token, &header, key, &expect)
    }

    /// Clock leeway applied to `exp`, in seconds.
    pub fn leeway_secs(&self) -> u64 {
        self.config.leeway_secs
    }
}

#[cfg(test)]
mod tests;
