//! `herald serve` settings: a TOML file (`--config`), then `HERALD_*`
//! environment variables, then flags, each overriding the one before.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use herald_core::{HistoryLimits, HubConfig};
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
    /// Where events live: memory, embedded or redis [default: memory].
    #[arg(long, env = "HERALD_ENGINE")]
    pub engine: Option<String>,
    /// The embedded store's folder [default: ./herald-data].
    #[arg(long, env = "HERALD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The Redis engine's server.
    #[arg(long, env = "HERALD_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Events kept per topic [default: 1000].
    #[arg(long, env = "HERALD_HISTORY")]
    pub history: Option<usize>,
    /// Events older than this are dropped from history [default: 24h].
    #[arg(long, env = "HERALD_HISTORY_MAX_AGE")]
    pub history_max_age: Option<String>,
    /// SSE keepalive comment and WebSocket ping interval [default: 15s].
    #[arg(long, env = "HERALD_KEEPALIVE")]
    pub keepalive: Option<String>,
    /// Largest publish body in bytes [default: 1048576].
    #[arg(long, env = "HERALD_MAX_BODY")]
    pub max_body: Option<usize>,
    /// Live events queued per connection before it is dropped as a slow consumer [default: 1024].
    #[arg(long, env = "HERALD_QUEUE_CAPACITY")]
    pub queue_capacity: Option<usize>,
    /// Longest hold of a long poll [default: 60s].
    #[arg(long, env = "HERALD_POLL_MAX_TIMEOUT")]
    pub poll_max_timeout: Option<String>,
    /// Most events in one long-poll answer [default: 100].
    #[arg(long, env = "HERALD_POLL_BATCH")]
    pub poll_batch: Option<usize>,
    /// Largest incoming WebSocket message in bytes [default: 1048576].
    #[arg(long, env = "HERALD_WS_MAX_MESSAGE")]
    pub ws_max_message: Option<usize>,
    /// Close a WebSocket peer silent for this long [default: 45s].
    #[arg(long, env = "HERALD_WS_PONG_TIMEOUT")]
    pub ws_pong_timeout: Option<String>,
    /// Publishes per second allowed per WebSocket [default: 50].
    #[arg(long, env = "HERALD_WS_PUBLISH_RATE")]
    pub ws_publish_rate: Option<f64>,
    /// JWT HS256 secret (authentication is not yet supported).
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// JWT RS256/ES256 public key, PEM (authentication is not yet supported).
    #[arg(long, env = "HERALD_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// Topic pattern anyone may subscribe to (authentication is not yet supported).
    #[arg(long)]
    pub public: Vec<String>,
    /// TLS certificate, PEM (not yet supported).
    #[arg(long, env = "HERALD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS key, PEM (not yet supported).
    #[arg(long, env = "HERALD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Allow a non-loopback address without authentication.
    #[arg(long, env = "HERALD_INSECURE")]
    pub insecure: bool,
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
    redis_url: Option<String>,
    history: Option<usize>,
    history_max_age: Option<String>,
    keepalive: Option<String>,
    max_body: Option<usize>,
    queue_capacity: Option<usize>,
    poll_max_timeout: Option<String>,
    poll_batch: Option<usize>,
    ws_max_message: Option<usize>,
    ws_pong_timeout: Option<String>,
    ws_publish_rate: Option<f64>,
    jwt_secret: Option<String>,
    jwt_public_key: Option<PathBuf>,
    #[serde(default)]
    public: Vec<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    #[serde(default)]
    insecure: bool,
    log_format: Option<String>,
}

/// The engines `herald serve` can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    Memory,
}

/// Everything `herald serve` needs, resolved and checked.
#[derive(Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub engine: EngineKind,
    pub hub: HubConfig,
    pub http: HttpConfig,
    pub log_json: bool,
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
        let listen = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen: SocketAddr = listen.parse().with_context(|| {
            format!("--listen {listen:?} is not an address such as 127.0.0.1:8080")
        })?;
        let engine = match args.engine.or(file.engine).as_deref().unwrap_or("memory") {
            "memory" => EngineKind::Memory,
            "embedded" => {
                bail!("--engine embedded is not yet supported in this version; use --engine memory")
            }
            "redis" => {
                bail!("--engine redis is not yet supported in this version; use --engine memory")
            }
            other => bail!("--engine {other:?}: choose memory, embedded or redis"),
        };
        let _ = args.data_dir.or(file.data_dir);
        if args.redis_url.or(file.redis_url).is_some() {
            bail!("--redis-url is not yet supported in this version");
        }
        if args.jwt_secret.or(file.jwt_secret).is_some()
            || args.jwt_public_key.or(file.jwt_public_key).is_some()
            || !args.public.is_empty()
            || !file.public.is_empty()
        {
            bail!("authentication (--jwt-secret, --jwt-public-key, --public) is not yet supported in this version");
        }
        if args.tls_cert.or(file.tls_cert).is_some() || args.tls_key.or(file.tls_key).is_some() {
            bail!("TLS (--tls-cert, --tls-key) is not yet supported in this version");
        }
        let insecure = args.insecure || file.insecure;
        if !listen.ip().is_loopback() && !insecure {
            bail!(
                "refusing to listen on {listen} without authentication: anyone who can reach it could read and publish every topic. \
                 Listen on a loopback address, or pass --insecure if a proxy in front of Herald authenticates"
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
        let queue_capacity = args
            .queue_capacity
            .or(file.queue_capacity)
            .unwrap_or(defaults_hub.queue_capacity);
        if queue_capacity == 0 {
            bail!("--queue-capacity must be at least 1");
        }
        let d = HttpConfig::default();
        let keepalive = dur("keepalive", args.keepalive.or(file.keepalive), d.keepalive)?;
        if keepalive.is_zero() {
            bail!("--keepalive must be more than 0");
        }
        let max_body = args.max_body.or(file.max_body).unwrap_or(d.max_body_bytes);
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
            ..d
        };
        let hub = HubConfig {
            history: HistoryLimits {
                max_events: history,
                max_age,
            },
            queue_capacity,
            max_data_bytes: max_body,
            ..defaults_hub
        };
        let log_json = match args.log_format.or(file.log_format).as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => bail!("--log-format {other:?}: choose text or json"),
        };
        Ok(Settings {
            listen,
            engine,
            hub,
            http,
            log_json,
        })
    }
}
