//! Authentication settings and the errors of a configuration that cannot work.

use std::time::Duration;

use crate::PatternError;

/// Authentication settings.
#[derive(Clone)]
pub struct AuthConfig {
    /// HS256 secret.
    pub hs256_secret: Option<Vec<u8>>,
    /// RS256 or ES256 public key, PEM.
    pub public_key_pem: Option<Vec<u8>>,
    /// The `kid` of the configured key; a token naming another kid is refused
    /// (unless a key set below holds it).
    pub key_id: Option<String>,
    /// URLs (`http://` or `https://`) of JSON Web Key Sets (RFC 7517, 5):
    /// an identity provider's public keys, chosen by the token's `kid`
    /// (see [`crate::jwks`]). Fetched by the fetcher given to
    /// [`crate::Auth::set_jwks_fetcher`], kept fresh by
    /// [`crate::Auth::keep_jwks_fresh`].
    pub jwks_urls: Vec<String>,
    /// The issuer every JWT must name in `iss` (RFC 7519, 4.1.1), compared
    /// exactly; `None`: `iss` is not read.
    pub issuer: Option<String>,
    /// The audience every JWT must name in `aud`, a string or an array of
    /// strings (RFC 7519, 4.1.3); `None`: tokens with an `aud` are refused.
    pub audience: Option<String>,
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
    /// [`quota_key`](crate::quota_key)), across nodes with a shared store (429 when reached).
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
            jwks_urls: Vec::new(),
            issuer: None,
            audience: None,
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
    /// The public key is not an RSA or EC key in PEM.
    #[error("--jwt-public-key: {0}")]
    PublicKey(String),
    /// A public topic pattern does not parse.
    #[error("--public {pattern:?}: {error}")]
    Pattern {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        error: PatternError,
    },
    /// A key set URL that cannot be fetched from.
    #[error("--jwt-jwks-url {url:?}: {error}")]
    JwksUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        error: &'static str,
    },
    /// An HS256 secret of zero bytes would accept forged tokens.
    #[error("the JWT secret is empty")]
    EmptySecret,
    /// A short publisher key could be guessed.
    #[error("a publisher key must be at least 16 characters")]
    ShortApiKey,
}
