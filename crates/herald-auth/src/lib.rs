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
//!   memory or, for several nodes, in a shared [`OneTimeStore`], with a
//!   per-user share of the pool ([`one_time`]).
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
//! };
//! let token = jwt::sign(&claims, b"0123456789abcdef0123456789abcdef", false, None).unwrap();
//! let who = auth.authenticate(Some(Credential::new(token, Source::Header))).unwrap();
//! assert!(auth.authorize(&who, Action::Subscribe, &Topic::new("users/alice/inbox").unwrap()).is_ok());
//! assert!(auth.authorize(&who, Action::Subscribe, &Topic::new("users/bob/inbox").unwrap()).is_err());
//! ```

pub mod jwt;
pub mod one_time;
pub mod pattern;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herald_core::Topic;
pub use one_time::{quota_key, Capped, IssueError, OneTimeStore};
use one_time::{LocalTokens, ONE_TIME_PREFIX};
pub use pattern::{PatternError, TopicPattern};

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
    /// May start LLM generations (the token's `herald.llm` claim).
    pub llm: bool,
    /// `exp`, seconds since the epoch: the credential's deadline. A
    /// connection opened with it ends at this instant (DESIGN.md,
    /// "Credentials over time").
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

    /// The credential's deadline (`exp`, seconds since the Unix epoch), if it
    /// has one. Connections check it: an SSE stream ends with
    /// `herald.disconnect {"reason":"token_expired"}` and a WebSocket closes
    /// with 4001 `token_expired` once it passes.
    pub fn expires_at(&self) -> Option<u64> {
        match self {
            Principal::User(g) => g.expires_at,
            _ => None,
        }
    }
}

/// What a principal wants to do with a topic. Every transport and endpoint
/// asks [`Auth::authorize`] before doing it (DESIGN.md, "Every action is
/// authorized, on every transport").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Receive the topic's events (SSE, WebSocket `subscribe`, long poll).
    Subscribe,
    /// Publish to the topic (`POST /v1/publish`, WebSocket `publish`).
    /// Topics under [`RELAY_TOPIC_PREFIX`] are refused to everyone: only
    /// the LLM relay writes them, from inside the server.
    Publish,
    /// Read who is subscribed to the topic; granted like [`Action::Subscribe`].
    Presence,
    /// Read the topic's retained events; granted like [`Action::Subscribe`].
    History,
    /// Start an LLM generation whose tokens go to the topic (`llm/<id>`):
    /// needs the `llm` claim, a publisher key, an open server, or
    /// [`AuthConfig::public_llm`].
    Generate,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Subscribe => "subscribe to",
            Action::Publish => "publish to",
            Action::Presence => "read the presence of",
            Action::History => "read the history of",
            Action::Generate => "start an LLM generation on",
        }
    }
}

/// Topics under this prefix (`llm/<id>`) carry LLM generations; only the
/// relay writes them.
pub const RELAY_TOPIC_PREFIX: &str = "llm/";

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
    /// The credential cannot be used for this (401); the message says which one can.
    #[error("{0}")]
    Credential(&'static str),
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
    /// One-time tokens outstanding at most, in this process (503
    /// `server_full` when full).
    pub one_time_max: usize,
    /// One-time tokens outstanding at most per principal (see
    /// [`quota_key`]), across nodes with a shared store (429 when reached).
    pub one_time_max_per_user: usize,
    /// Anyone, with or without a credential, may start LLM generations.
    pub public_llm: bool,
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
            one_time_max_per_user: 100,
            public_llm: false,
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
    one_time: LocalTokens,
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
            one_time: LocalTokens::default(),
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
            one_time: LocalTokens::default(),
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
                    Ok(Some(v)) => {
                        if let Some(owner) = owner_from_store(&v) {
                            store.release(&owner, &c.token).await;
                        }
                        principal_from_store(&v)
                            .ok_or(AuthError::Invalid("one-time token unreadable"))
                    }
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
    /// [`IssueError::Full`] when this process holds
    /// [`AuthConfig::one_time_max`], [`IssueError::Unavailable`] when the
    /// shared store cannot be reached.
    pub async fn issue_one_time_for(
        &self,
        who: &Principal,
        client: Option<IpAddr>,
    ) -> Result<(String, Duration), IssueError> {
        let ttl = self.config.one_time_ttl;
        let owner = quota_key(who, client);
        let Some(store) = &self.shared_one_time else {
            let token = self.one_time.issue(
                who,
                owner,
                ttl,
                self.config.one_time_max,
                self.config.one_time_max_per_user,
            )?;
            return Ok((token, ttl));
        };
        let token = one_time::new_token()?;
        let value = stored_value(who, &owner);
        match store
            .put_capped(
                &token,
                value,
                ttl,
                &owner,
                self.config.one_time_max_per_user,
            )
            .await
        {
            Ok(Capped::Stored) => Ok((token, ttl)),
            Ok(Capped::OwnerFull { retry_after }) => Err(IssueError::UserLimit { retry_after }),
            Err(_) => Err(IssueError::Unavailable),
        }
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

    /// The one authorization check, used by every transport and endpoint
    /// for every [`Action`]. A principal whose credential has passed its
    /// deadline is refused as unauthenticated.
    ///
    /// Errors: [`Denied::Unauthenticated`] (401 / WebSocket 4001) without a
    /// credential or with an expired one, [`Denied::Forbidden`] (403 / 4003)
    /// when the credential does not grant the action on `topic`.
    pub fn authorize(&self, who: &Principal, action: Action, topic: &Topic) -> Result<(), Denied> {
        let forbidden = || Denied::Forbidden {
            action: action.verb(),
            topic: topic.as_str().to_owned(),
        };
        if action == Action::Publish && topic.as_str().starts_with(RELAY_TOPIC_PREFIX) {
            return Err(forbidden());
        }
        if let Some(exp) = who.expires_at() {
            if now() >= exp.saturating_add(self.config.leeway_secs) {
                return Err(Denied::Unauthenticated(topic.as_str().to_owned()));
            }
        }
        let reads = matches!(
            action,
            Action::Subscribe | Action::Presence | Action::History
        );
        // A generation's stream is private to whom the relay granted it (its
        // creator, or whom it was shared with): no token pattern and no
        // public pattern reads it, however wide.
        let relay_topic = topic.as_str().starts_with(RELAY_TOPIC_PREFIX);
        let patterns = match (who, action) {
            (Principal::Open | Principal::Publisher, _) => return Ok(()),
            (_, Action::Generate) if self.config.public_llm => return Ok(()),
            (_, _) if reads && self.granted_to(topic, who.subject()) => return Ok(()),
            (Principal::Anonymous, _) if reads && relay_topic => {
                return Err(Denied::Unauthenticated(topic.as_str().to_owned()))
            }
            (_, _) if reads && relay_topic => return Err(forbidden()),
            (_, _) if reads && self.public.iter().any(|p| p.matches(topic, None)) => return Ok(()),
            (Principal::Anonymous, _) => {
                return Err(Denied::Unauthenticated(topic.as_str().to_owned()))
            }
            (Principal::User(g), Action::Generate) => {
                return if g.llm { Ok(()) } else { Err(forbidden()) }
            }
            (Principal::User(g), Action::Publish) => &g.publish,
            (Principal::User(g), _) => &g.subscribe,
        };
        if patterns.iter().any(|p| p.matches(topic, who.subject())) {
            Ok(())
        } else {
            Err(forbidden())
        }
    }

    /// Whether `who`, authenticated by a credential from `source`, may
    /// exchange it for a one-time token (`POST /v1/tokens`): on a server with
    /// authentication, only a credential from the `Authorization` header or
    /// the cookie may, never a token from a URL (nor another one-time token).
    pub fn authorize_exchange(
        &self,
        who: &Principal,
        source: Option<Source>,
    ) -> Result<(), Denied> {
        if !self.enabled {
            return Ok(());
        }
        let expired = who
            .expires_at()
            .is_some_and(|exp| now() >= exp.saturating_add(self.config.leeway_secs));
        if !who.is_authenticated()
            || expired
            || !matches!(source, Some(Source::Header | Source::Cookie))
        {
            return Err(Denied::Credential(
                "authenticate with an Authorization header or the cookie to get a one-time token",
            ));
        }
        // A publisher key stays in the Authorization header: it is never
        // turned into a credential that travels in a URL.
        if *who == Principal::Publisher {
            return Err(Denied::Credential(
                "publisher keys cannot be exchanged for one-time tokens",
            ));
        }
        Ok(())
    }

    /// Clock leeway applied to `exp`, in seconds.
    pub fn leeway_secs(&self) -> u64 {
        self.config.leeway_secs
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
        self.one_time
            .issue(
                who,
                quota_key(who, None),
                ttl,
                self.config.one_time_max,
                self.config.one_time_max_per_user,
            )
            .map(|t| (t, ttl))
            .map_err(|e| match e {
                IssueError::Auth(a) => a,
                _ => AuthError::Invalid("too many outstanding one-time tokens; try again shortly"),
            })
    }

    fn redeem(&self, token: &str) -> Result<Principal, AuthError> {
        if self.shared_one_time.is_some() {
            return Err(AuthError::Invalid(
                "one-time tokens are shared; redeem them with authenticate_async",
            ));
        }
        self.one_time.redeem(token)
    }
}

/// The rule for a JWT carried in a URL (DESIGN.md, "Credentials over time"):
/// it needs `iat`, its `iat` may not lie in the future (beyond `leeway`
/// seconds), and its remaining lifetime `exp - max(now, iat)` may not exceed
/// `max` seconds. All values are seconds since the Unix epoch.
pub fn query_token_lifetime(
    iat: Option<u64>,
    exp: u64,
    now: u64,
    max: u64,
    leeway: u64,
) -> Result<(), AuthError> {
    let Some(iat) = iat else {
        return Err(AuthError::Invalid("tokens in a URL need an iat claim"));
    };
    if iat > now.saturating_add(leeway) {
        return Err(AuthError::Invalid(
            "tokens in a URL may not be issued in the future (iat)",
        ));
    }
    if exp.saturating_sub(now.max(iat)) > max {
        return Err(AuthError::Invalid(
            "tokens in a URL must be short-lived (exp too far ahead); use POST /v1/tokens",
        ));
    }
    Ok(())
}

/// A principal as a shared one-time store keeps it (JSON), with the
/// [`quota_key`] it is counted under.
fn stored_value(who: &Principal, owner: &str) -> String {
    let mut v: serde_json::Value =
        serde_json::from_str(&principal_to_store(who)).unwrap_or_default();
    v["owner"] = serde_json::Value::from(owner);
    v.to_string()
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
            "llm": g.llm,
            "exp": g.expires_at,
        }),
    }
    .to_string()
}

/// The [`quota_key`] a stored one-time token is counted under.
fn owner_from_store(v: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(v).ok()?;
    v["owner"].as_str().map(str::to_owned)
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
            llm: v["llm"].as_bool().unwrap_or(false),
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
