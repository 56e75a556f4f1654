//! `herald serve` settings: a TOML file (`--config`), then `HERALD_*`
//! environment variables, then flags, each overriding the one before.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use std::sync::Arc;

use clap::Args;
use herald_auth::{Auth, AuthConfig};
use herald_core::{HistoryLimits, HubConfig};
use herald_http::tls::CertSource;
use herald_http::HttpConfig;
use serde::Deserialize;

use crate::duration::parse_duration;

/// Flags of `herald serve`. Each also reads `HERALD_<NAME>` from the environment.
#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// A TOML file with any of these settings (keys as the flags, with `_`).
    #[arg(long, env = "HERALD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address and port to listen on; port 0 picks a free one [default: 127.0.0.1:8080].
    #[arg(long, env = "HERALD_LISTEN")]
    pub listen: Option<String>,
    /// Where events live: memory, embedded or redis [default: embedded].
    #[arg(long, env = "HERALD_ENGINE")]
    pub engine: Option<String>,
    /// The embedded store's folder [default: ./herald-data].
    #[arg(long, env = "HERALD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Group commit of the embedded engine: how long it may wait for more
    /// publishes to write with one fsync [default: 2ms].
    #[arg(long, env = "HERALD_COMMIT_DELAY")]
    pub commit_delay: Option<String>,
    /// The Redis engine's server: redis://HOST:PORT, rediss:// for TLS,
    /// redis-cluster://HOST:PORT?node=HOST:PORT for a cluster.
    #[arg(long, env = "HERALD_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Put before every Redis key and channel name [default: herald:].
    #[arg(long, env = "HERALD_REDIS_PREFIX")]
    pub redis_prefix: Option<String>,
    /// Events kept per topic [default: 1000].
    #[arg(long, env = "HERALD_HISTORY")]
    pub history: Option<usize>,
    /// Events older than this are dropped from history [default: 24h].
    #[arg(long, env = "HERALD_HISTORY_MAX_AGE")]
    pub history_max_age: Option<String>,
    /// Topics held at most (with retained events or subscribers); a publish
    /// that would create another gets 503 server_full [default: 1000000].
    #[arg(long, env = "HERALD_MAX_TOPICS")]
    pub max_topics: Option<usize>,
    /// Bytes of retained events at most (data + name + 128 per event); a
    /// publish beyond gets 503 server_full [default: 1073741824].
    #[arg(long, env = "HERALD_MAX_RETAINED_BYTES")]
    pub max_retained_bytes: Option<u64>,
    /// SSE keepalive comment and WebSocket ping interval [default: 15s].
    #[arg(long, env = "HERALD_KEEPALIVE")]
    pub keepalive: Option<String>,
    /// Largest publish body in bytes [default: 1048576].
    #[arg(long, env = "HERALD_MAX_BODY")]
    pub max_body: Option<usize>,
    /// Live events queued per connection before it is dropped as a slow consumer [default: 1024].
    #[arg(long, env = "HERALD_QUEUE_CAPACITY")]
    pub queue_capacity: Option<usize>,
    /// Threads serving connections [default: one per CPU core]. Fewer leave
    /// cores to other processes on the machine (say, a container's CPU limit).
    #[arg(long, env = "HERALD_WORKERS")]
    pub workers: Option<usize>,
    /// Longest hold of a long poll [default: 60s].
    #[arg(long, env = "HERALD_POLL_MAX_TIMEOUT")]
    pub poll_max_timeout: Option<String>,
    /// Most events in one long-poll answer [default: 100].
    #[arg(long, env = "HERALD_POLL_BATCH")]
    pub poll_batch: Option<usize>,
    /// Most bytes of event JSON in one long-poll answer; one event always
    /// gets through whatever its size [default: 1048576].
    #[arg(long, env = "HERALD_POLL_MAX_BYTES")]
    pub poll_max_bytes: Option<usize>,
    /// A request body not fully received within this time gets 408 [default: 30s].
    #[arg(long, env = "HERALD_BODY_TIMEOUT")]
    pub body_timeout: Option<String>,
    /// Largest incoming WebSocket message in bytes [default: 1048576].
    #[arg(long, env = "HERALD_WS_MAX_MESSAGE")]
    pub ws_max_message: Option<usize>,
    /// Close a WebSocket peer silent for this long [default: 45s].
    #[arg(long, env = "HERALD_WS_PONG_TIMEOUT")]
    pub ws_pong_timeout: Option<String>,
    /// Publishes per second allowed per WebSocket [default: 50].
    #[arg(long, env = "HERALD_WS_PUBLISH_RATE")]
    pub ws_publish_rate: Option<f64>,
    /// JWT HS256 secret.
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// JWT RS256/ES256 public key, PEM file.
    #[arg(long, env = "HERALD_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// The `kid` of the configured key; tokens naming another kid are refused.
    #[arg(long, env = "HERALD_JWT_KEY_ID")]
    pub jwt_key_id: Option<String>,
    /// Topic pattern anyone may subscribe to (repeatable; `*` one segment, `**` the rest).
    #[arg(long)]
    pub public: Vec<String>,
    /// Publisher API key for backends, sent as `Authorization: Bearer KEY` (repeatable).
    #[arg(long, env = "HERALD_PUBLISH_KEY", hide_env_values = true)]
    pub publish_key: Vec<String>,
    /// The cookie that may carry a token [default: herald_token].
    #[arg(long, env = "HERALD_AUTH_COOKIE")]
    pub auth_cookie: Option<String>,
    /// Longest `exp - iat` of a JWT passed as `?token=` [default: 5m].
    #[arg(long, env = "HERALD_QUERY_TOKEN_MAX_LIFETIME")]
    pub query_token_max_lifetime: Option<String>,
    /// Lifetime of one-time tokens from POST /v1/tokens [default: 60s].
    #[arg(long, env = "HERALD_ONE_TIME_TOKEN_TTL")]
    pub one_time_token_ttl: Option<String>,
    /// One-time tokens outstanding at most in this process; beyond, POST
    /// /v1/tokens gets 503 server_full [default: 100000].
    #[arg(long, env = "HERALD_ONE_TIME_TOKEN_MAX")]
    pub one_time_token_max: Option<usize>,
    /// One-time tokens outstanding at most per user (token `sub`, publisher
    /// key, or client address); beyond, 429 with Retry-After [default: 100].
    #[arg(long, env = "HERALD_ONE_TIME_TOKEN_MAX_PER_USER")]
    pub one_time_token_max_per_user: Option<usize>,
    /// Origin allowed to open WebSockets with the cookie credential (repeatable; default: same host only).
    #[arg(long)]
    pub ws_allowed_origin: Vec<String>,
    /// Origin allowed by CORS on SSE, poll, publish and tokens (repeatable; a listed origin may send cookies, `*` allows any origin without them; default: off).
    #[arg(long)]
    pub cors_origin: Vec<String>,
    /// Streaming connections (SSE, WebSocket, poll) at most [default: 100000].
    #[arg(long, env = "HERALD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Streaming connections per client address at most [default: 10000].
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// A reverse proxy (address or CIDR network) whose `Forwarded` /
    /// `X-Forwarded-For` headers name the client address that per-address
    /// limits count (repeatable; default: none, the TCP peer counts).
    #[arg(long)]
    pub trusted_proxy: Vec<String>,
    /// The header trusted proxies write the client address into:
    /// x-forwarded-for or forwarded (RFC 7239); only that one is read
    /// [default: x-forwarded-for].
    #[arg(long, env = "HERALD_TRUSTED_PROXY_HEADER")]
    pub trusted_proxy_header: Option<String>,
    /// On shutdown, streams end at random moments within this window so
    /// clients do not all reconnect at once; under 5s [default: 2s].
    #[arg(long, env = "HERALD_SHUTDOWN_DRAIN")]
    pub shutdown_drain: Option<String>,
    /// WebSocket client messages per second per connection, any kind [default: 100].
    #[arg(long, env = "HERALD_WS_MESSAGE_RATE")]
    pub ws_message_rate: Option<f64>,
    /// Serve HTTPS with this certificate chain, PEM (reloaded on SIGHUP or when the file changes).
    #[arg(long, env = "HERALD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key, PEM.
    #[arg(long, env = "HERALD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Serve HTTPS with a certificate made at start for localhost (development only).
    #[arg(long, env = "HERALD_TLS_SELF_SIGNED")]
    pub tls_self_signed: bool,
    /// Allow a non-loopback address without authentication.
    #[arg(long, env = "HERALD_INSECURE")]
    pub insecure: bool,
    /// OpenAI-compatible upstream for the LLM relay, e.g. https://api.openai.com/v1 or
    /// http://127.0.0.1:11434/v1 (Ollama) [default: the built-in offline model].
    #[arg(long, env = "HERALD_LLM_UPSTREAM")]
    pub llm_upstream: Option<String>,
    /// The upstream's API key (sent only to the upstream, never logged).
    #[arg(long, env = "HERALD_LLM_API_KEY", hide_env_values = true)]
    pub llm_api_key: Option<String>,
    /// Model used when a request names none [default: herald-offline].
    #[arg(long, env = "HERALD_LLM_MODEL")]
    pub llm_model: Option<String>,
    /// The upstream may be silent this long mid-stream [default: 60s].
    #[arg(long, env = "HERALD_LLM_IDLE_TIMEOUT")]
    pub llm_idle_timeout: Option<String>,
    /// Generations running at once at most [default: 100].
    #[arg(long, env = "HERALD_LLM_MAX_GENERATIONS")]
    pub llm_max_generations: Option<usize>,
    /// Generations running at once per user (token `sub`, publisher key, or
    /// client address) at most; beyond, 429 with Retry-After [default: 4].
    #[arg(long, env = "HERALD_LLM_MAX_GENERATIONS_PER_USER")]
    pub llm_max_generations_per_user: Option<usize>,
    /// Anyone, with or without a credential, may start LLM generations
    /// (otherwise: a token with the `llm` claim or a publisher key).
    #[arg(long, env = "HERALD_LLM_PUBLIC")]
    pub llm_public: bool,
    /// Delay between tokens of the built-in offline model [default: 25ms].
    #[arg(long, env = "HERALD_LLM_OFFLINE_DELAY")]
    pub llm_offline_delay: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "HERALD_LOG_FORMAT")]
    pub log_format: Option<String>,
}

/// The same settings as a TOML file holds them.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    listen: Option<String>,
    engine: Option<String>,
    data_dir: Option<PathBuf>,
    commit_delay: Option<String>,
    redis_url: Option<String>,
    redis_prefix: Option<String>,
    history: Option<usize>,
    history_max_age: Option<String>,
    max_topics: Option<usize>,
    max_retained_bytes: Option<u64>,
    keepalive: Option<String>,
    max_body: Option<usize>,
    queue_capacity: Option<usize>,
    workers: Option<usize>,
    poll_max_timeout: Option<String>,
    poll_batch: Option<usize>,
    poll_max_bytes: Option<usize>,
    body_timeout: Option<String>,
    ws_max_message: Option<usize>,
    ws_pong_timeout: Option<String>,
    ws_publish_rate: Option<f64>,
    jwt_secret: Option<String>,
    jwt_public_key: Option<PathBuf>,
    jwt_key_id: Option<String>,
    /// Used by `herald token` only.
    jwt_private_key: Option<PathBuf>,
    #[serde(default)]
    public: Vec<String>,
    #[serde(default)]
    publish_key: Vec<String>,
    auth_cookie: Option<String>,
    query_token_max_lifetime: Option<String>,
    one_time_token_ttl: Option<String>,
    one_time_token_max: Option<usize>,
    one_time_token_max_per_user: Option<usize>,
    #[serde(default)]
    ws_allowed_origin: Vec<String>,
    #[serde(default)]
    cors_origin: Vec<String>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    #[serde(default)]
    trusted_proxy: Vec<String>,
    trusted_proxy_header: Option<String>,
    shutdown_drain: Option<String>,
    ws_message_rate: Option<f64>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    #[serde(default)]
    tls_self_signed: bool,
    #[serde(default)]
    insecure: bool,
    log_format: Option<String>,
    llm_upstream: Option<String>,
    llm_api_key: Option<String>,
    llm_model: Option<String>,
    llm_idle_timeout: Option<String>,
    llm_max_generations: Option<usize>,
    llm_max_generations_per_user: Option<usize>,
    #[serde(default)]
    llm_public: bool,
    llm_offline_delay: Option<String>,
}

/// A secret whose `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The LLM relay's settings.
#[derive(Debug, Clone)]
pub struct LlmSettings {
    /// `None`: the built-in offline model.
    pub upstream: Option<String>,
    pub api_key: Option<Secret>,
    pub config: herald_llm::LlmConfig,
    pub offline_delay: Duration,
}

/// The engines `herald serve` can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    Memory,
    /// An append-only log per topic on local disk (`settings.embedded` says where).
    Embedded,
    /// Several nodes on one Redis (`settings.redis` says where).
    Redis,
}

/// Where the Redis engine keeps its data. `Debug` hides the URL's password.
#[derive(Clone)]
pub struct RedisSettings {
    pub url: String,
    pub prefix: String,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &herald_engine_redis::redact_url(&self.url))
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// Everything `herald serve` needs, resolved and checked.
#[derive(Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    /// Serve HTTPS from this certificate.
    pub tls: Option<CertSource>,
    pub engine: EngineKind,
    /// The Redis engine's server and key prefix (with `--engine redis`).
    pub redis: Option<RedisSettings>,
    /// The embedded engine's folder and group commit (with `--engine embedded`).
    pub embedded: Option<EmbeddedSettings>,
    pub hub: HubConfig,
    pub http: HttpConfig,
    pub log_json: bool,
    pub llm: LlmSettings,
    /// Runtime worker threads; `None`: one per core.
    pub workers: Option<usize>,
    /// Settings that were given but do nothing, to log at start.
    pub warnings: Vec<String>,
}

/// Where the embedded engine keeps its data.
#[derive(Clone, Debug)]
pub struct EmbeddedSettings {
    pub data_dir: PathBuf,
    pub commit_delay: Duration,
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
    /// Lifetime [default: 5m].
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
    let file: FileSettings = match &args.config {
        None => FileSettings::default(),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the config file {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("invalid config file {}", p.display()))?
        }
    };
    let ttl = dur("ttl", Some(args.ttl), Duration::from_secs(300))?;
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
        },
    };
    let kid = args.jwt_key_id.or(file.jwt_key_id);
    herald_auth::jwt::sign(&claims, &key, pem, kid.as_deref())
        .map_err(|e| anyhow::anyhow!("cannot sign: {e}"))
}

/// A repeatable setting: the flags (or environment) when given, else the file's.
fn pick(flags: Vec<String>, file: Vec<String>) -> Vec<String> {
    if flags.is_empty() {
        file
    } else {
        flags
    }
}

fn auth_config(args: &ServeArgs, file: &FileSettings) -> anyhow::Result<AuthConfig> {
    let d = AuthConfig::default();
    let public_key_pem = match args.jwt_public_key.clone().or(file.jwt_public_key.clone()) {
        None => None,
        Some(p) => Some(
            std::fs::read(&p)
                .with_context(|| format!("--jwt-public-key: cannot read {}", p.display()))?,
        ),
    };
    Ok(AuthConfig {
        hs256_secret: args
            .jwt_secret
            .clone()
            .or(file.jwt_secret.clone())
            .map(String::into_bytes),
        public_key_pem,
        key_id: args.jwt_key_id.clone().or(file.jwt_key_id.clone()),
        public: pick(args.public.clone(), file.public.clone()),
        api_keys: pick(args.publish_key.clone(), file.publish_key.clone()),
        max_query_token_lifetime: dur(
            "query-token-max-lifetime",
            args.query_token_max_lifetime
                .clone()
                .or(file.query_token_max_lifetime.clone()),
            d.max_query_token_lifetime,
        )?,
        one_time_ttl: dur(
            "one-time-token-ttl",
            args.one_time_token_ttl
                .clone()
                .or(file.one_time_token_ttl.clone()),
            d.one_time_ttl,
        )?,
        one_time_max: args
            .one_time_token_max
            .or(file.one_time_token_max)
            .unwrap_or(d.one_time_max)
            .max(1),
        one_time_max_per_user: args
            .one_time_token_max_per_user
            .or(file.one_time_token_max_per_user)
            .unwrap_or(d.one_time_max_per_user)
            .max(1),
        public_llm: args.llm_public || file.llm_public,
        ..d
    })
}

fn dur(name: &str, v: Option<String>, default: Duration) -> anyhow::Result<Duration> {
    match v {
        None => Ok(default),
        Some(s) => parse_duration(&s).map_err(|e| anyhow::anyhow!("--{name}: {e}")),
    }
}

impl Settings {
    pub fn resolve(args: ServeArgs) -> anyhow::Result<Settings> {
        let file: FileSettings = match &args.config {
            None => FileSettings::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read the config file {}", p.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("invalid config file {}", p.display()))?
            }
        };
        let auth = auth_config(&args, &file)?;
        let listen = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen: SocketAddr = listen.parse().with_context(|| {
            format!("--listen {listen:?} is not an address such as 127.0.0.1:8080")
        })?;
        let engine = match args.engine.or(file.engine).as_deref().unwrap_or("embedded") {
            "memory" => EngineKind::Memory,
            "embedded" => EngineKind::Embedded,
            "redis" => EngineKind::Redis,
            other => bail!("--engine {other:?}: choose memory, embedded or redis"),
        };
        let mut warnings = Vec::new();
        let data_dir = args.data_dir.or(file.data_dir);
        let commit_delay = args.commit_delay.or(file.commit_delay);
        let embedded = match engine {
            EngineKind::Embedded => {
                let commit_delay = dur(
                    "commit-delay",
                    commit_delay,
                    herald_engine_embedded::DEFAULT_COMMIT_DELAY,
                )?;
                if commit_delay > Duration::from_secs(1) {
                    bail!("--commit-delay must be at most 1s: every publish may wait that long");
                }
                Some(EmbeddedSettings {
                    data_dir: data_dir.unwrap_or_else(|| PathBuf::from("herald-data")),
                    commit_delay,
                })
            }
            other => {
                // A setting that does nothing is pointed out (events are not
                // where the user may look for them), but not refused: a
                // launcher may pass the same flags whatever the engine.
                let name = if other == EngineKind::Redis {
                    "redis"
                } else {
                    "memory"
                };
                if data_dir.is_some() {
                    warnings.push(format!(
                        "--data-dir is ignored: it is for --engine embedded, and --engine {name} keeps no files"
                    ));
                }
                if commit_delay.is_some() {
                    warnings.push(format!(
                        "--commit-delay is ignored: it is for --engine embedded, not --engine {name}"
                    ));
                }
                None
            }
        };
        let redis_prefix = args
            .redis_prefix
            .or(file.redis_prefix)
            .unwrap_or_else(|| "herald:".into());
        let redis = match (engine, args.redis_url.or(file.redis_url)) {
            (EngineKind::Redis, Some(url)) => {
                let schemes = [
                    "redis://",
                    "rediss://",
                    "redis-cluster://",
                    "rediss-cluster://",
                ];
                if !schemes.iter().any(|s| url.starts_with(s)) {
                    bail!(
                        "--redis-url {:?}: use redis://HOST:PORT, rediss:// (TLS) or redis-cluster://HOST:PORT?node=HOST:PORT",
                        herald_engine_redis::redact_url(&url)
                    );
                }
                Some(RedisSettings {
                    url,
                    prefix: redis_prefix,
                })
            }
            (EngineKind::Redis, None) => {
                bail!("--engine redis needs --redis-url (e.g. redis://127.0.0.1:6379)")
            }
            (_, Some(_)) => bail!("--redis-url is used only with --engine redis"),
            (_, None) => None,
        };
        let has_keys = auth.hs256_secret.is_some()
            || auth.public_key_pem.is_some()
            || !auth.api_keys.is_empty();
        let auth = Arc::new(Auth::new(auth)?);
        let tls = match (
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
            args.tls_self_signed || file.tls_self_signed,
        ) {
            (Some(_), _, true) | (_, Some(_), true) => {
                bail!("--tls-self-signed and --tls-cert/--tls-key exclude each other")
            }
            (Some(cert), Some(key), false) => Some(CertSource::Files { cert, key }),
            (Some(_), None, _) | (None, Some(_), _) => {
                bail!("--tls-cert and --tls-key go together")
            }
            (None, None, true) => Some(CertSource::SelfSigned),
            (None, None, false) => None,
        };
        let insecure = args.insecure || file.insecure;
        if !listen.ip().is_loopback() && !insecure && !has_keys {
            bail!(
                "refusing to listen on {listen} without authentication: anyone who can reach it could read and publish every topic. \
                 Configure --jwt-secret, --jwt-public-key or --publish-key, listen on a loopback address, \
                 or pass --insecure if a proxy in front of Herald authenticates"
            );
        }

        let defaults_hub = HubConfig::default();
        let history = args
            .history
            .or(file.history)
            .unwrap_or(defaults_hub.history.max_events);
        if history == 0 {
            bail!("--history must be at least 1");
        }
        let max_age = dur(
            "history-max-age",
            args.history_max_age.or(file.history_max_age),
            defaults_hub.history.max_age,
        )?;
        let budget = herald_core::engine::Budget {
            max_topics: args
                .max_topics
                .or(file.max_topics)
                .unwrap_or(defaults_hub.budget.max_topics),
            max_retained_bytes: args
                .max_retained_bytes
                .or(file.max_retained_bytes)
                .unwrap_or(defaults_hub.budget.max_retained_bytes),
        };
        if budget.max_topics == 0 {
            bail!("--max-topics must be at least 1: with 0 no event could ever be published");
        }
        if budget.max_retained_bytes == 0 {
            bail!(
                "--max-retained-bytes must be at least 1 (it counts each retained event's data, \
                 name and 128 bytes; the default is 1073741824, 1 GiB)"
            );
        }
        if engine == EngineKind::Redis && budget != defaults_hub.budget {
            warnings.push(
                "--max-topics and --max-retained-bytes are ignored with --engine redis: \
                 topics expire in Redis after --history-max-age, and Redis's maxmemory bounds the rest"
                    .into(),
            );
        }
        let queue_capacity = args
            .queue_capacity
            .or(file.queue_capacity)
            .unwrap_or(defaults_hub.queue_capacity);
        if queue_capacity == 0 {
            bail!("--queue-capacity must be at least 1");
        }
        let workers = args.workers.or(file.workers);
        if let Some(w) = workers {
            if !(1..=1024).contains(&w) {
                bail!("--workers must be between 1 and 1024, not {w}");
            }
        }
        let d = HttpConfig::default();
        let keepalive = dur("keepalive", args.keepalive.or(file.keepalive), d.keepalive)?;
        if keepalive.is_zero() {
            bail!("--keepalive must be more than 0");
        }
        let body_timeout = dur(
            "body-timeout",
            args.body_timeout.or(file.body_timeout),
            d.body_timeout,
        )?;
        if body_timeout.is_zero() {
            bail!("--body-timeout must be more than 0");
        }
        let max_body = args.max_body.or(file.max_body).unwrap_or(d.max_body_bytes);
        let cors_origins = pick(args.cors_origin, file.cors_origin);
        for origin in &cors_origins {
            let o = origin.trim();
            if o.eq_ignore_ascii_case("null") {
                bail!(
                    "--cors-origin null: refused, because any site can send `Origin: null` \
                     (sandboxed frames, file: pages); list real origins such as https://app.example"
                );
            }
            let host = o
                .split_once("://")
                .map(|(_, rest)| rest.trim_end_matches('/'));
            if o != "*" && !matches!(host, Some(h) if !h.is_empty() && !h.contains('/')) {
                bail!(
                    "--cors-origin {origin:?}: give `*` or an origin as scheme://host[:port], \
                     such as https://app.example"
                );
            }
        }
        let http = HttpConfig {
            keepalive,
            max_body_bytes: max_body,
            poll_max_timeout: dur(
                "poll-max-timeout",
                args.poll_max_timeout.or(file.poll_max_timeout),
                d.poll_max_timeout,
            )?,
            poll_batch: args
                .poll_batch
                .or(file.poll_batch)
                .unwrap_or(d.poll_batch)
                .max(1),
            poll_max_bytes: args
                .poll_max_bytes
                .or(file.poll_max_bytes)
                .unwrap_or(d.poll_max_bytes)
                .max(1),
            body_timeout,
            ws_max_message_bytes: args
                .ws_max_message
                .or(file.ws_max_message)
                .unwrap_or(d.ws_max_message_bytes),
            ws_pong_timeout: dur(
                "ws-pong-timeout",
                args.ws_pong_timeout.or(file.ws_pong_timeout),
                d.ws_pong_timeout.max(keepalive * 2),
            )?,
            ws_publish_rate: args
                .ws_publish_rate
                .or(file.ws_publish_rate)
                .unwrap_or(d.ws_publish_rate),
            auth,
            auth_cookie: args
                .auth_cookie
                .or(file.auth_cookie)
                .unwrap_or(d.auth_cookie.clone()),
            ws_allowed_origins: pick(args.ws_allowed_origin, file.ws_allowed_origin),
            cors_origins,
            max_connections: args
                .max_connections
                .or(file.max_connections)
                .unwrap_or(d.max_connections),
            max_connections_per_ip: args
                .max_connections_per_ip
                .or(file.max_connections_per_ip)
                .unwrap_or(d.max_connections_per_ip),
            trusted_proxies: herald_http::forwarded::parse_networks(&pick(
                args.trusted_proxy,
                file.trusted_proxy,
            ))
            .map_err(anyhow::Error::msg)?,
            trusted_proxy_header: match args.trusted_proxy_header.or(file.trusted_proxy_header) {
                Some(h) => h.parse().map_err(anyhow::Error::msg)?,
                None => d.trusted_proxy_header,
            },
            shutdown_drain: match dur(
                "shutdown-drain",
                args.shutdown_drain.or(file.shutdown_drain),
                d.shutdown_drain,
            )? {
                // Streams must have ended before the server stops waiting for them.
                w if w < herald_http::server::DRAIN_TIMEOUT => w,
                w => bail!(
                    "--shutdown-drain {w:?}: at most {:?} (connections get that long to finish)",
                    herald_http::server::DRAIN_TIMEOUT - Duration::from_millis(1)
                ),
            },
            ws_message_rate: match args.ws_message_rate.or(file.ws_message_rate) {
                None => d.ws_message_rate,
                Some(r) if r.is_finite() && r >= 1.0 => r,
                Some(r) => {
                    bail!("--ws-message-rate {r}: give a number of messages per second, at least 1")
                }
            },
            ..d
        };
        let hub = HubConfig {
            history: HistoryLimits {
                max_events: history,
                max_age,
            },
            queue_capacity,
            max_data_bytes: max_body,
            budget,
            ..defaults_hub
        };
        let log_json = match args.log_format.or(file.log_format).as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => bail!("--log-format {other:?}: choose text or json"),
        };
        let llm_defaults = herald_llm::LlmConfig::default();
        let upstream = args
            .llm_upstream
            .or(file.llm_upstream)
            .filter(|u| !u.is_empty());
        let llm = LlmSettings {
            config: herald_llm::LlmConfig {
                default_model: args
                    .llm_model
                    .or(file.llm_model)
                    .unwrap_or(llm_defaults.default_model.clone()),
                idle_timeout: dur(
                    "llm-idle-timeout",
                    args.llm_idle_timeout.or(file.llm_idle_timeout),
                    llm_defaults.idle_timeout,
                )?,
                max_generations: args
                    .llm_max_generations
                    .or(file.llm_max_generations)
                    .unwrap_or(llm_defaults.max_generations),
                max_generations_per_user: args
                    .llm_max_generations_per_user
                    .or(file.llm_max_generations_per_user)
                    .unwrap_or(llm_defaults.max_generations_per_user)
                    .max(1),
                ..llm_defaults
            },
            api_key: args
                .llm_api_key
                .or(file.llm_api_key)
                .filter(|k| !k.is_empty())
                .map(Secret),
            offline_delay: dur(
                "llm-offline-delay",
                args.llm_offline_delay.or(file.llm_offline_delay),
                Duration::from_millis(25),
            )?,
            upstream,
        };
        if let Some(u) = &llm.upstream {
            herald_llm::Upstream::new(u, None)
                .map_err(|e| anyhow::anyhow!("--llm-upstream: {e}"))?;
        }
        Ok(Settings {
            warnings,
            workers,
            embedded,
            redis,
            llm,
            listen,
            tls,
            engine,
            hub,
            http,
            log_json,
        })
    }
}
