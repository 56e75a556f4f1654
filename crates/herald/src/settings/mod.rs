//! `herald serve` settings: a TOML file (`--config`), then `HERALD_*`
//! environment variables, then flags, each overriding the one before.
//!
//! - `args.rs`: every setting, declared once as a flag, its variable and its
//!   file key ([`ServeArgs`]).
//! - `engine.rs`: the engine, where it keeps events, and the hub's limits.
//! - `http.rs`: TLS and the router's settings (limits, origins, proxies).
//! - `auth.rs`: keys and credentials, for `serve` and for `herald token`.
//! - `topics.rs`: the `[[topics]]` tables of the config file (topic
//!   policies by pattern).
//! - `mercure.rs`: the Mercure hub (`--mercure-*`).
//! - `webhooks.rs`: the webhooks (`--webhook-url` and its queue).
//!
//! Checks run in one order (auth, address, engine, TLS, hub, topic
//! policies, HTTP, logs, webhooks, LLM), so the first wrong setting is the one
//! reported.

mod args;
mod auth;
mod engine;
mod http;
mod mercure;
mod topics;
mod webhooks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use herald_auth::Auth;
use herald_core::HubConfig;
use herald_http::HttpConfig;
use herald_server::CertSource;

pub use args::ServeArgs;
pub use auth::{mint_token, TokenArgs};

use crate::duration::parse_duration;

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
    /// The OpenAI-compatible upstream's base URL; `None`: the built-in
    /// offline model.
    pub upstream: Option<String>,
    /// The upstream's API key.
    pub api_key: Option<Secret>,
    /// The relay's model, timeout and generation limits.
    pub config: herald_llm::LlmConfig,
    /// Delay between tokens of the offline model.
    pub offline_delay: Duration,
}

/// The engines `herald serve` can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    /// Events in this process's memory, lost on restart.
    Memory,
    /// An append-only log per topic on local disk (`settings.embedded` says where).
    Embedded,
    /// Several nodes on one Redis (`settings.redis` says where).
    Redis,
}

/// Where the Redis engine keeps its data. `Debug` hides the URL's password.
#[derive(Clone)]
pub struct RedisSettings {
    /// `redis://`, `rediss://` or `redis-cluster://` URL.
    pub url: String,
    /// Put before every key and channel name.
    pub prefix: String,
    /// `--redis-replica-acks`: replicas a publish waits for.
    pub replica_acks: u32,
    /// `--redis-replica-timeout`: how long it waits for them.
    pub replica_timeout: std::time::Duration,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &herald_engine_redis::redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("replica_acks", &self.replica_acks)
            .field("replica_timeout", &self.replica_timeout)
            .finish()
    }
}

/// Where the embedded engine keeps its data.
#[derive(Clone, Debug)]
pub struct EmbeddedSettings {
    /// The store's folder.
    pub data_dir: PathBuf,
    /// How long a write may wait for others to share its fsync.
    pub commit_delay: Duration,
}

/// Everything `herald serve` needs, resolved and checked.
#[derive(Debug)]
pub struct Settings {
    /// Address and port to listen on (port 0: any free one).
    pub listen: SocketAddr,
    /// Serve HTTPS from this certificate.
    pub tls: Option<CertSource>,
    /// Which engine keeps the events.
    pub engine: EngineKind,
    /// The Redis engine's server and key prefix (with `--engine redis`).
    pub redis: Option<RedisSettings>,
    /// The embedded engine's folder and group commit (with `--engine embedded`).
    pub embedded: Option<EmbeddedSettings>,
    /// History, budget and queue limits of the hub.
    pub hub: HubConfig,
    /// The router's settings, authentication included.
    pub http: HttpConfig,
    /// Logs as JSON lines instead of text.
    pub log_json: bool,
    /// `--otlp-endpoint`: where traces go over OTLP/HTTP; `None`: nowhere.
    pub otlp_endpoint: Option<String>,
    /// The LLM relay's upstream and limits.
    pub llm: LlmSettings,
    /// Runtime worker threads; `None`: one per core.
    pub workers: Option<usize>,
    /// The webhooks (`--webhook-url`), to register on the hub and run.
    pub webhooks: Option<Arc<herald_hooks::Webhooks>>,
    /// Settings that were given but do nothing, to log at start.
    pub warnings: Vec<String>,
    /// `--examples`: the gallery's folder, served at `/examples/`.
    pub examples: Option<std::path::PathBuf>,
}

impl Settings {
    /// Reads `args` over their config file, and checks every setting.
    ///
    /// Errors: the first setting that is wrong, named as its flag, with
    /// what it takes.
    pub fn resolve(args: ServeArgs) -> anyhow::Result<Settings> {
        let s = args.with_file()?;
        let auth = auth::serve_config(&s)?;
        let listen = s.listen.as_deref().unwrap_or("127.0.0.1:8080");
        let listen: SocketAddr = listen.parse().with_context(|| {
            format!("--listen {listen:?} is not an address such as 127.0.0.1:8080")
        })?;
        let mut warnings = Vec::new();
        let storage = engine::storage(&s, &mut warnings)?;
        let has_keys = auth.hs256_secret.is_some()
            || auth.public_key_pem.is_some()
            || !auth.jwks_urls.is_empty()
            || !auth.api_keys.is_empty();
        let auth = Arc::new(Auth::new(auth)?);
        let tls = http::tls(&s)?;
        // The connect hook authenticates too: the application says who callers are.
        let hook_identifies =
            s.hook_url.as_deref().is_some_and(|u| !u.is_empty()) && s.hook_connect != Some(false);
        if !listen.ip().is_loopback() && !s.insecure && !has_keys && !hook_identifies {
            bail!(
                "refusing to listen on {listen} without authentication: anyone who can reach it could read and publish every topic. \
                 Configure --jwt-secret, --jwt-public-key, --jwt-jwks-url or --publish-key, listen on a loopback address, \
                 or pass --insecure if a proxy in front of Herald authenticates"
            );
        }
        let mut hub = engine::hub(&s, storage.engine, &mut warnings)?;
        let examples = if s.examples {
            let dir = crate::examples::locate(s.examples_dir.as_deref())?;
            warnings.extend(crate::examples::missing_libraries(&dir));
            Some(dir)
        } else {
            None
        };
        let mut tables = s.topics.clone();
        if examples.is_some() {
            // After the file's own tables (first match wins), unless one of
            // them already covers every topic.
            if tables
                .iter()
                .any(|t| t.get("pattern").and_then(|p| p.as_str()) == Some("**"))
            {
                warnings.push(
                    "--examples: a [[topics]] table with pattern \"**\" covers the examples' topics, \
                     so their own policies (presence, ephemeral game and cursor topics) do not apply"
                        .into(),
                );
            } else {
                let hook = s.hook_url.as_deref().is_some_and(|u| !u.is_empty());
                tables.extend(crate::examples::policy_tables(hook, hub.history.max_events));
            }
        }
        let mercure = mercure::config(&s)?;
        if mercure.as_ref().is_some_and(|m| m.subscriptions) {
            tables.insert(0, mercure::policy_table());
        }
        if s.admin {
            // The admin stats are live only: nothing to keep.
            let mut t = toml::Table::new();
            t.insert(
                "pattern".into(),
                toml::Value::String(herald_auth::Auth::ADMIN_STATS_TOPIC.into()),
            );
            t.insert("history".into(), toml::Value::Integer(0));
            tables.insert(0, t);
        }
        hub.policies = topics::policies(&tables, hub.history)?;
        warnings.extend(topics::warnings(&hub.policies));
        if hub.policies.has_hooks() && s.hook_url.as_deref().is_none_or(str::is_empty) {
            bail!(
                "[[topics]] sets subscribe_hook or publish_hook, but no --hook-url says where \
                 the application's hooks are"
            );
        }
        if hub.policies.has_hooks() && !has_keys && !hook_identifies {
            warnings.push(
                "subscribe_hook and publish_hook have no effect without authentication: every caller is \
                 trusted like the publisher key until --jwt-secret, --jwt-public-key, --publish-key or \
                 the connect hook (--hook-connect) identifies callers"
                    .into(),
            );
        }
        if !has_keys
            && !hook_identifies
            && s.topics
                .iter()
                .any(|t| t.get("client_publish") == Some(&toml::Value::Boolean(false)))
        {
            warnings.push(
                "client_publish = false has no effect without authentication: every caller is trusted \
                 like the publisher key until --jwt-secret, --jwt-public-key or --publish-key is set"
                    .into(),
            );
        }
        if let Some(w) = s.workers {
            if !(1..=1024).contains(&w) {
                bail!("--workers must be between 1 and 1024, not {w}");
            }
        }
        let mut http = http::config(&s, auth)?;
        http.mercure = mercure.map(Arc::new);
        // A publish body is at most one event's data.
        hub.max_data_bytes = http.max_body_bytes;
        let log_json = match s.log_format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => bail!("--log-format {other:?}: choose text or json"),
        };
        http.admin = s.admin;
        Ok(Settings {
            otlp_endpoint: s.otlp_endpoint.clone().filter(|e| !e.is_empty()),
            examples,
            webhooks: webhooks::webhooks(&s)?,
            llm: llm(&s)?,
            warnings,
            workers: s.workers,
            embedded: storage.embedded,
            redis: storage.redis,
            listen,
            tls,
            engine: storage.engine,
            hub,
            http,
            log_json,
        })
    }
}

/// The LLM relay's settings, the upstream's URL checked.
fn llm(s: &ServeArgs) -> anyhow::Result<LlmSettings> {
    let d = herald_llm::LlmConfig::default();
    let llm = LlmSettings {
        config: herald_llm::LlmConfig {
            default_model: s.llm_model.clone().unwrap_or(d.default_model.clone()),
            idle_timeout: dur("llm-idle-timeout", &s.llm_idle_timeout, d.idle_timeout)?,
            max_generations: s.llm_max_generations.unwrap_or(d.max_generations),
            max_generations_per_user: s
                .llm_max_generations_per_user
                .unwrap_or(d.max_generations_per_user)
                .max(1),
            ..d
        },
        api_key: s.llm_api_key.clone().filter(|k| !k.is_empty()).map(Secret),
        offline_delay: dur(
            "llm-offline-delay",
            &s.llm_offline_delay,
            Duration::from_millis(25),
        )?,
        upstream: s.llm_upstream.clone().filter(|u| !u.is_empty()),
    };
    if let Some(u) = &llm.upstream {
        herald_llm::Upstream::new(u, None).map_err(|e| anyhow::anyhow!("--llm-upstream: {e}"))?;
    }
    Ok(llm)
}

/// The duration setting `--name`, or `default` when not given.
fn dur(name: &str, v: &Option<String>, default: Duration) -> anyhow::Result<Duration> {
    match v {
        None => Ok(default),
        Some(s) => parse_duration(s).map_err(|e| anyhow::anyhow!("--{name}: {e}")),
    }
}
