//! Keys and credentials: the authentication settings of `herald serve`, and
//! `herald token`, which signs a development token with the same keys.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use herald_auth::AuthConfig;

use super::{dur, ServeArgs};

/// The authentication settings of `herald serve`; the public key file is
/// read here, key set URLs are checked (not fetched).
pub(super) fn serve_config(s: &ServeArgs) -> anyhow::Result<AuthConfig> {
    let d = AuthConfig::default();
    for url in &s.jwt_jwks_url {
        crate::jwks::check_url(url)?;
    }
    // An empty value (say, an empty environment variable) sets nothing.
    let given = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
    let public_key_pem = match &s.jwt_public_key {
        None => None,
        Some(p) => Some(
            std::fs::read(p)
                .with_context(|| format!("--jwt-public-key: cannot read {}", p.display()))?,
        ),
    };
    Ok(AuthConfig {
        hs256_secret: s.jwt_secret.clone().map(String::into_bytes),
        public_key_pem,
        key_id: s.jwt_key_id.clone(),
        jwks_urls: s.jwt_jwks_url.clone(),
        issuer: given(&s.jwt_issuer),
        audience: given(&s.jwt_audience),
        public: s.public.clone(),
        api_keys: s.publish_key.clone(),
        max_query_token_lifetime: dur(
            "query-token-max-lifetime",
            &s.query_token_max_lifetime,
            d.max_query_token_lifetime,
        )?,
        one_time_ttl: dur("one-time-token-ttl", &s.one_time_token_ttl, d.one_time_ttl)?,
        one_time_max: s.one_time_token_max.unwrap_or(d.one_time_max).max(1),
        one_time_max_per_user: s
            .one_time_token_max_per_user
            .unwrap_or(d.one_time_max_per_user)
            .max(1),
        public_llm: s.llm_public,
        ..d
    })
}

/// Flags of `herald token`: the signing key, from the same flags,
/// environment and config file as `serve`.
#[derive(Args, Debug)]
pub struct TokenArgs {
    /// The token's subject (`sub`), also what `{sub}` in patterns stands for.
    #[arg(long)]
    pub sub: Option<String>,
    /// Topic pattern the holder may subscribe to (repeatable).
    #[arg(long)]
    pub subscribe: Vec<String>,
    /// Topic pattern the holder may publish to (repeatable).
    #[arg(long)]
    pub publish: Vec<String>,
    /// The holder may start LLM generations (the `llm` claim).
    #[arg(long)]
    pub llm: bool,
    /// JSON about the holder, shown to others in presence entries and
    /// herald.join / herald.leave (the `info` claim, at most 1024 bytes),
    /// e.g. '{"name":"Ada"}'.
    #[arg(long)]
    pub info: Option<String>,
    /// Grant the server API (`herald.admin`: POST /v1/disconnect, GET
    /// /v1/topics, GET /v1/connections), like the publisher key.
    #[arg(long)]
    pub admin: bool,
    /// Lifetime, e.g. 30s, 10m, 8h.
    #[arg(long, default_value = "5m")]
    pub ttl: String,
    /// A TOML config file (as for `serve`).
    #[arg(long, env = "HERALD_CONFIG")]
    pub config: Option<PathBuf>,
    /// HS256 secret.
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// RS256/ES256 private key, PEM file (the server verifies with its public key).
    #[arg(long, env = "HERALD_JWT_PRIVATE_KEY")]
    pub jwt_private_key: Option<PathBuf>,
    /// `kid` to put in the header.
    #[arg(long, env = "HERALD_JWT_KEY_ID")]
    pub jwt_key_id: Option<String>,
}

/// Mints a development token as `herald token` does.
pub fn mint_token(args: TokenArgs) -> anyhow::Result<String> {
    let file = match &args.config {
        None => ServeArgs::default(),
        Some(p) => ServeArgs::read_file(p)?,
    };
    let ttl = dur("ttl", &Some(args.ttl), Duration::from_secs(300))?;
    for p in args.subscribe.iter().chain(&args.publish) {
        herald_auth::TopicPattern::parse(p).map_err(|e| anyhow::anyhow!("pattern {p:?}: {e}"))?;
    }
    let (key, pem) = match (
        args.jwt_private_key.or(file.jwt_private_key),
        args.jwt_secret.or(file.jwt_secret),
    ) {
        (Some(path), _) => (
            std::fs::read(&path)
                .with_context(|| format!("--jwt-private-key: cannot read {}", path.display()))?,
            true,
        ),
        (None, Some(secret)) => (secret.into_bytes(), false),
        (None, None) => bail!(
            "no signing key: pass --jwt-secret or --jwt-private-key (or set them in --config)"
        ),
    };
    let info = match &args.info {
        None => None,
        Some(text) => {
            let v: serde_json::Value = serde_json::from_str(text)
                .map_err(|e| anyhow::anyhow!("--info is not JSON: {e}"))?;
            let len = v.to_string().len();
            if len > herald_auth::jwt::MAX_INFO_BYTES {
                bail!(
                    "--info is {len} bytes of JSON; at most {} are accepted",
                    herald_auth::jwt::MAX_INFO_BYTES
                );
            }
            Some(v)
        }
    };
    let now = herald_auth::now();
    let claims = herald_auth::jwt::Claims {
        sub: args.sub,
        exp: now + ttl.as_secs().max(1),
        iat: Some(now),
        nbf: None,
        herald: herald_auth::jwt::HeraldClaim {
            subscribe: args.subscribe,
            publish: args.publish,
            llm: args.llm,
            admin: args.admin,
        },
        info,
    };
    let kid = args.jwt_key_id.or(file.jwt_key_id);
    herald_auth::jwt::sign(&claims, &key, pem, kid.as_deref())
        .map_err(|e| anyhow::anyhow!("cannot sign: {e}"))
}
