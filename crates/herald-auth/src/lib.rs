//! # herald-auth
//!
//! Who may read and write which topic, decided in one place for every
//! transport.
//!
//! # Layout
//!
//! - [`pattern`]: topic patterns (`orders/*`, `users/{sub}/**`).
//! - [`jwt`]: JWT verification (HS256, RS256, ES256) and Herald's claims.
//! - [`Auth`]: credentials → [`Principal`] ([`Auth::authenticate`]), and the one
//!   authorization check ([`Auth::authorize`]); one-time tokens, kept in
//!   memory or, for several nodes, in a shared [`OneTimeStore`].
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
//!     herald: jwt::HeraldClaim { subscribe: vec!["users/{sub}/**".into()], publish: vec![] },
//! };
//! let token = jwt::sign(&claims, b"0123456789abcdef0123456789abcdef", false, None).unwrap();
//! let who = auth.authenticate(Some(Credential::new(token, Source::Header))).unwrap();
//! assert!(auth.authorize(&who, Action::Subscribe, &Topic::new("users/alice/inbox").unwrap()).is_ok());
//! assert!(auth.authorize(&who, Action::Subscribe, &Topic::new("users/bob/inbox").unwrap()).is_err());
//! ```

pub mod jwt;
pub mod pattern;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herald_core::engine::BoxFuture;
use herald_core::Topic;
pub use pattern::{PatternError, TopicPattern};

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
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Where a credential came from. Rules differ: a token in a URL must be
/// short-lived, an API key is only taken from the `Authorization` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Header,
    Cookie,
    Query,
    /// A WebSocket `{"type":"auth"}` message.
    Message,
}

/// A presented credential. Its `Debug` never shows the token.
#[derive(Clone)]
pub struct Credential {
    token: String,
    pub source: Source,
}

impl Credential {
    pub fn new(token: impl Into<String>, source: Source) -> Credential {
        Credential {
            token: token.into(),
            source,
        }
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("token", &"[redacted]")
            .field("source", &self.source)
            .finish()
    }
}

/// What a valid token grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub subject: Option<String>,
    pub subscribe: Vec<TopicPattern>,
    pub publish: Vec<TopicPattern>,
    /// `exp`, seconds since the epoch.
    pub expires_at: Option<u64>,
}

/// Who is asking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// Authentication is not configured: everything is allowed.
    Open,
    /// No credential: only public topics may be read.
    Anonymous,
    /// A verified token.
    User(Arc<Grant>),
    /// A backend holding a publisher API key: may publish and subscribe anywhere.
    Publisher,
}

impl Principal {
    pub fn subject(&self) -> Option<&str> {
        match self {
            Principal::User(g) => g.subject.as_deref(),
            _ => None,
        }
    }

    pub fn is_authenticated(&self) -> bool {
        matches!(self, Principal::User(_) | Principal::Publisher)
    }
}

/// What a principal wants to do with a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Subscribe,
    Publish,
}

/// A credential that was not accepted (maps to 401 / WebSocket 4001). The
/// message never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Invalid(&'static str),
}

/// An authorization refusal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No credential, and the topic is not public (401 / 4001).
    #[error("a credential is required for topic {0:?}")]
    Unauthenticated(String),
    /// The credential does not grant this topic (403 / 4003).
    #[error("not allowed to {action} topic {topic:?}")]
    Forbidden { action: &'static str, topic: String },
}

/// Authentication settings.
#[derive(Clone)]
pub struct AuthConfig {
    /// HS256 secret.
    pub hs256_secret: Option<Vec<u8>>,
    /// RS256 or ES256 public key, PEM.
    pub public_key_pem: Option<Vec<u8>>,
    /// The `kid` of the configured key; a token naming another kid is refused.
    pub key_id: Option<String>,
    /// Topic patterns anyone may subscribe to.
    pub public: Vec<String>,
    /// Publisher API keys (taken only from `Authorization: Bearer`).
    pub api_keys: Vec<String>,
    /// A JWT in a URL (`?token=`) must have `exp - iat` at most this.
    pub max_query_token_lifetime: Duration,
    /// Lifetime of one-time tokens.
    pub one_time_ttl: Duration,
    /// Clock leeway for `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// One-time tokens outstanding at most.
    pub one_time_max: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            hs256_secret: None,
            public_key_pem: None,
            key_id: None,
            public: Vec::new(),
            api_keys: Vec::new(),
            max_query_token_lifetime: Duration::from_secs(300),
            one_time_ttl: Duration::from_secs(60),
            leeway_secs: 5,
            one_time_max: 100_000,
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthConfigError {
    #[error("--jwt-public-key: {0}")]
    PublicKey(String),
    #[error("--public {pattern:?}: {error}")]
    Pattern {
        pattern: String,
        error: PatternError,
    },
    #[error("the JWT secret is empty")]
    EmptySecret,
    #[error("a publisher key must be at least 16 characters")]
    ShortApiKey,
}

/// Authentication and authorization, shared by every transport.
pub struct Auth {
    enabled: bool,
    keys: Vec<jwt::Key>,
    key_id: Option<String>,
    public: Vec<TopicPattern>,
    api_keys: Vec<String>,
    config: AuthConfig,
    one_time: Mutex<HashMap<String, (Instant, Principal)>>,
    shared_one_time: Option<Arc<dyn OneTimeStore>>,
    /// Topics granted at run time (an LLM stream to its creator), by topic.
    granted: Mutex<HashMap<String, (Instant, Readers)>>,
}

/// Who may read a topic granted at run time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readers {
    /// Anyone, with or without a credential.
    Everyone,
    /// These subjects.
    Subjects(Vec<String>),
}

/// Run-time grants held at most; the oldest expire first.
const MAX_GRANTS: usize = 100_000;

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("enabled", &self.enabled)
            .field("keys", &self.keys.len())
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// The prefix of one-time tokens (JWTs never start with it).
const ONE_TIME_PREFIX: &str = "ot_";

impl Auth {
    /// No authentication: every request is allowed.
    pub fn open() -> Auth {
        Auth {
            enabled: false,
            keys: Vec::new(),
            key_id: None,
            public: Vec::new(),
            api_keys: Vec::new(),
            config: AuthConfig::default(),
            one_time: Mutex::new(HashMap::new()),
            shared_one_time: None,
            granted: Mutex::new(HashMap::new()),
        }
    }

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
        let enabled = !keys.is_empty() || !public.is_empty() || !config.api_keys.is_empty();
        Ok(Auth {
            enabled,
            keys,
            key_id: config.key_id.clone(),
            public,
            api_keys: config.api_keys.clone(),
            config,
            one_time: Mutex::new(HashMap::new()),
            shared_one_time: None,
            granted: Mutex::new(HashMap::new()),
        })
    }

    /// Keeps one-time tokens in `store` instead of this process's memory,
    /// so a token issued by one node can be redeemed, once, on any node.
    /// Tokens must then be issued and redeemed with
    /// [`Auth::issue_one_time_async`] and [`Auth::authenticate_async`].
    pub fn set_one_time_store(&mut self, store: Arc<dyn OneTimeStore>) {
        self.shared_one_time = Some(store);
    }

    /// [`Auth::authenticate`], redeeming one-time tokens from the shared
    /// store when there is one. Every transport calls this.
    pub async fn authenticate_async(
        &self,
        credential: Option<Credential>,
    ) -> Result<Principal, AuthError> {
        match (&self.shared_one_time, &credential) {
            (Some(store), Some(c)) if c.token.starts_with(ONE_TIME_PREFIX) => {
                match store.take(&c.token).await {
                    Ok(Some(v)) => principal_from_store(&v)
                        .ok_or(AuthError::Invalid("one-time token unreadable")),
                    Ok(None) => Err(AuthError::Invalid(
                        "one-time token unknown, expired or already used",
                    )),
                    Err(_) => Err(AuthError::Invalid(
                        "one-time tokens cannot be checked right now",
                    )),
                }
            }
            _ => self.authenticate(credential),
        }
    }

    /// [`Auth::issue_one_time`], into the shared store when there is one.
    pub async fn issue_one_time_async(
        &self,
        who: &Principal,
    ) -> Result<(String, Duration), AuthError> {
        let Some(store) = &self.shared_one_time else {
            return self.issue_one_time(who);
        };
        let token = new_one_time_token()?;
        let ttl = self.config.one_time_ttl;
        store
            .put(&token, principal_to_store(who), ttl)
            .await
            .map_err(|_| AuthError::Invalid("one-time tokens cannot be issued right now"))?;
        Ok((token, ttl))
    }

    /// Whether any authentication is configured.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Who presents `credential` (`None`: no credential).
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
            .any(|k| constant_time_eq(k.as_bytes(), c.token.as_bytes()))
        {
            if c.source != Source::Header {
                return Err(AuthError::Invalid(
                    "publisher keys are accepted only in the Authorization header",
                ));
            }
            return Ok(Principal::Publisher);
        }
        if self.keys.is_empty() {
            return Err(AuthError::Invalid("this server accepts no tokens"));
        }
        let claims = jwt::verify(
            &c.token,
            &self.keys,
            self.key_id.as_deref(),
            self.config.leeway_secs,
        )?;
        if c.source == Source::Query {
            let max = self.config.max_query_token_lifetime.as_secs();
            match claims.iat {
                Some(iat) if claims.exp.saturating_sub(iat) <= max => {}
                Some(_) => {
                    return Err(AuthError::Invalid(
                        "tokens in a URL must be short-lived (exp - iat too large); use POST /v1/tokens",
                    ))
                }
                None => return Err(AuthError::Invalid("tokens in a URL need an iat claim")),
            }
        }
        Ok(Principal::User(Arc::new(claims.grant()?)))
    }

    /// The one authorization check, used by every transport and the publish API.
    pub fn authorize(&self, who: &Principal, action: Action, topic: &Topic) -> Result<(), Denied> {
        let (patterns, name) = match (who, action) {
            (Principal::Open | Principal::Publisher, _) => return Ok(()),
            (_, Action::Subscribe) if self.public.iter().any(|p| p.matches(topic, None)) => {
                return Ok(())
            }
            (_, Action::Subscribe) if self.granted_to(topic, who.subject()) => return Ok(()),
            (Principal::Anonymous, _) => {
                return Err(Denied::Unauthenticated(topic.as_str().to_owned()))
            }
            (Principal::User(g), Action::Subscribe) => (&g.subscribe, "subscribe to"),
            (Principal::User(g), Action::Publish) => (&g.publish, "publish to"),
        };
        if patterns.iter().any(|p| p.matches(topic, who.subject())) {
            Ok(())
        } else {
            Err(Denied::Forbidden {
                action: name,
                topic: topic.as_str().to_owned(),
            })
        }
    }

    /// Lets `readers` subscribe to `topic` for `ttl`, beside what their
    /// tokens grant (e.g. an LLM stream readable by its creator).
    pub fn grant_subscribe(&self, topic: &Topic, readers: Readers, ttl: Duration) {
        let now = Instant::now();
        let mut map = self.granted.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_GRANTS {
            map.retain(|_, (exp, _)| *exp > now);
            if map.len() >= MAX_GRANTS {
                if let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, (exp, _))| *exp)
                    .map(|(k, _)| k.clone())
                {
                    map.remove(&oldest);
                }
            }
        }
        map.insert(topic.as_str().to_owned(), (now + ttl, readers));
    }

    fn granted_to(&self, topic: &Topic, subject: Option<&str>) -> bool {
        let map = self.granted.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(topic.as_str()) {
            Some((exp, readers)) if *exp > Instant::now() => match readers {
                Readers::Everyone => true,
                Readers::Subjects(s) => subject.is_some_and(|sub| s.iter().any(|x| x == sub)),
            },
            _ => false,
        }
    }

    /// Issues a one-time token carrying `who`'s rights. Returns the token and its lifetime.
    pub fn issue_one_time(&self, who: &Principal) -> Result<(String, Duration), AuthError> {
        if self.shared_one_time.is_some() {
            return Err(AuthError::Invalid(
                "one-time tokens are shared; issue them with issue_one_time_async",
            ));
        }
        let token = new_one_time_token()?;
        let ttl = self.config.one_time_ttl;
        let now = Instant::now();
        let mut map = self.one_time.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, (exp, _)| *exp > now);
        if map.len() >= self.config.one_time_max {
            return Err(AuthError::Invalid(
                "too many outstanding one-time tokens; try again shortly",
            ));
        }
        map.insert(token.clone(), (now + ttl, who.clone()));
        Ok((token, ttl))
    }

    fn redeem(&self, token: &str) -> Result<Principal, AuthError> {
        if self.shared_one_time.is_some() {
            return Err(AuthError::Invalid(
                "one-time tokens are shared; redeem them with authenticate_async",
            ));
        }
        let mut map = self.one_time.lock().unwrap_or_else(|e| e.into_inner());
        match map.remove(token) {
            Some((exp, who)) if exp > Instant::now() => Ok(who),
            Some(_) => Err(AuthError::Invalid("one-time token expired")),
            None => Err(AuthError::Invalid("one-time token unknown or already used")),
        }
    }
}

fn new_one_time_token() -> Result<String, AuthError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|_| AuthError::Invalid("no randomness available"))?;
    use base64::Engine;
    Ok(format!(
        "{ONE_TIME_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// A principal as a shared one-time store keeps it (JSON).
fn principal_to_store(who: &Principal) -> String {
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
            "exp": g.expires_at,
        }),
    }
    .to_string()
}

fn principal_from_store(v: &str) -> Option<Principal> {
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
            expires_at: v["exp"].as_u64(),
        })),
        _ => return None,
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests;
