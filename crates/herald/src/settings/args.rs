//! Every `herald serve` setting, declared once: a flag, its `HERALD_*`
//! variable and its config-file key (the flag's name with `_`), with the
//! file's value under the flag's.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use serde::Deserialize;

/// Declares [`ServeArgs`] and [`ServeArgs::over`] from one field list, so a
/// new setting is one field: clap reads it from the command line and the
/// environment, serde from the config file, and `over` layers the two.
macro_rules! layered_settings {
    (
        $(#[$outer:meta])*
        pub struct $name:ident {
            $($(#[$meta:meta])* pub $field:ident: $ty:ty,)*
        }
    ) => {
        $(#[$outer])*
        pub struct $name {
            $($(#[$meta])* pub $field: $ty,)*
        }

        impl $name {
            /// These settings (flags and environment) over `file`'s: each one
            /// given here wins, the others come from `file`.
            fn over(self, file: $name) -> $name {
                $name {
                    $($field: Layer::over(self.$field, file.$field),)*
                }
            }
        }
    };
}

/// How a setting given on the command line (or in the environment) sits over
/// the config file's.
trait Layer {
    fn over(self, file: Self) -> Self;
}

/// A single value: the flag's if given.
impl<T> Layer for Option<T> {
    fn over(self, file: Self) -> Self {
        self.or(file)
    }
}

/// A repeatable flag: the flag's list if given at all, else the file's.
impl<T> Layer for Vec<T> {
    fn over(self, file: Self) -> Self {
        if self.is_empty() {
            file
        } else {
            self
        }
    }
}

/// A switch: on if either turns it on.
impl Layer for bool {
    fn over(self, file: Self) -> Self {
        self || file
    }
}

layered_settings! {
    /// Flags of `herald serve`. Each also reads `HERALD_<NAME>` from the environment.
    #[derive(Args, Debug, Default, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct ServeArgs {
        /// A TOML file with any of these settings (keys as the flags, with `_`).
        #[arg(long, env = "HERALD_CONFIG")]
        #[serde(skip)]
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
        /// Replicas that must hold a publish before it is acknowledged (Redis
        /// WAIT), when the topic's master has replicas online; 0 answers once
        /// the master has it, which a failover can lose [default: 1].
        #[arg(long, env = "HERALD_REDIS_REPLICA_ACKS")]
        pub redis_replica_acks: Option<u32>,
        /// How long a publish waits for its replicas before answering 503
        /// (stored on the master, not known to survive its loss) [default: 1s].
        #[arg(long, env = "HERALD_REDIS_REPLICA_TIMEOUT")]
        pub redis_replica_timeout: Option<String>,
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
        /// How long a long-polling client stays present (GET /v1/presence,
        /// herald.join/leave) after its poll ends, so that it does not flicker
        /// between polls [default: 30s].
        #[arg(long, env = "HERALD_POLL_PRESENCE_GRACE")]
        pub poll_presence_grace: Option<String>,
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
        /// URL (http or https) of an identity provider's JSON Web Key Set
        /// (RFC 7517): tokens naming one of its keys by `kid` are verified
        /// with it (repeatable; one URL in the environment).
        #[arg(long, env = "HERALD_JWT_JWKS_URL")]
        pub jwt_jwks_url: Vec<String>,
        /// The issuer every JWT must name in `iss` (RFC 7519), compared exactly.
        #[arg(long, env = "HERALD_JWT_ISSUER")]
        pub jwt_issuer: Option<String>,
        /// The audience every JWT's `aud` must name (RFC 7519; a string or an
        /// array). Without it, tokens that name an audience are refused.
        #[arg(long, env = "HERALD_JWT_AUDIENCE")]
        pub jwt_audience: Option<String>,
        /// Serve the admin page at `/admin/` (behind the publisher key or a
        /// token with the `admin` claim).
        #[arg(long, env = "HERALD_ADMIN")]
        pub admin: bool,
        /// Send OpenTelemetry traces over OTLP/HTTP to this URL (such as
        /// `http://127.0.0.1:4318`; `/v1/traces` is appended).
        #[arg(long, env = "HERALD_OTLP_ENDPOINT")]
        pub otlp_endpoint: Option<String>,
        /// Turns on the Mercure hub at `/.well-known/mercure`: the key of
        /// publishers' tokens, an HS256 secret (32 bytes or more) or a PEM
        /// public key (its text or a file) for RS256/ES256.
        #[arg(long, env = "MERCURE_PUBLISHER_JWT_KEY", hide_env_values = true)]
        pub mercure_publisher_jwt_key: Option<String>,
        /// The key of Mercure subscribers' tokens [default: the publisher key].
        #[arg(long, env = "MERCURE_SUBSCRIBER_JWT_KEY", hide_env_values = true)]
        pub mercure_subscriber_jwt_key: Option<String>,
        /// Mercure subscribers without a token are accepted (public updates only).
        #[arg(long, env = "HERALD_MERCURE_ANONYMOUS")]
        pub mercure_anonymous: bool,
        /// Mercure subscription events and the subscriptions API.
        #[arg(long, env = "HERALD_MERCURE_SUBSCRIPTIONS")]
        pub mercure_subscriptions: bool,
        /// The audience Mercure tokens must name in `aud` (unchecked without it).
        #[arg(long, env = "HERALD_MERCURE_AUDIENCE")]
        pub mercure_audience: Option<String>,
        /// The issuer Mercure tokens must name in `iss` (unchecked without it).
        #[arg(long, env = "HERALD_MERCURE_ISSUER")]
        pub mercure_issuer: Option<String>,
        /// RS256/ES256 private key, PEM file: a file key only, for `herald token`.
        #[arg(skip)]
        pub jwt_private_key: Option<PathBuf>,
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
        /// Log format: text or json [default: text].
        // Listed last in `--help` (just before `--help`, at 999), while the
        // file's keys keep this order.
        #[arg(long, env = "HERALD_LOG_FORMAT", display_order = 998)]
        pub log_format: Option<String>,
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
        /// The application's hook endpoint (http or https): Herald POSTs signed
        /// JSON there to ask who a connection without a Herald credential is,
        /// and about subscribes and publishes on topics whose policy says so.
        #[arg(long, env = "HERALD_HOOK_URL")]
        pub hook_url: Option<String>,
        /// The hooks' HMAC-SHA256 signing secret, at least 16 bytes (required
        /// with --hook-url; never logged).
        #[arg(long, env = "HERALD_HOOK_SECRET", hide_env_values = true)]
        pub hook_secret: Option<String>,
        /// A hook that does not answer in this time refuses [default: 2s].
        #[arg(long, env = "HERALD_HOOK_TIMEOUT")]
        pub hook_timeout: Option<String>,
        /// Ask the connect hook who a request without a Herald credential is
        /// (`--hook-connect=false` turns it off) [default: true with --hook-url].
        #[arg(long, env = "HERALD_HOOK_CONNECT", num_args = 0..=1, default_missing_value = "true")]
        pub hook_connect: Option<bool>,
        /// The application's webhook endpoint (http or https): Herald POSTs
        /// signed batches of what happened to topics there (occupied,
        /// vacated, join, leave), after the fact, at least once.
        #[arg(long, env = "HERALD_WEBHOOK_URL")]
        pub webhook_url: Option<String>,
        /// The webhooks' HMAC-SHA256 signing secret, at least 16 bytes (never
        /// logged) [default: --hook-secret].
        #[arg(long, env = "HERALD_WEBHOOK_SECRET", hide_env_values = true)]
        pub webhook_secret: Option<String>,
        /// A webhook POST not answered in this time is sent again [default: 5s].
        #[arg(long, env = "HERALD_WEBHOOK_TIMEOUT")]
        pub webhook_timeout: Option<String>,
        /// Webhook events held at most while the backend is slow or down;
        /// more are dropped and counted [default: 10000].
        #[arg(long, env = "HERALD_WEBHOOK_QUEUE")]
        pub webhook_queue: Option<usize>,
        /// Bytes of webhook events held at most [default: 8388608].
        #[arg(long, env = "HERALD_WEBHOOK_QUEUE_BYTES")]
        pub webhook_queue_bytes: Option<usize>,
        /// How long a topic must stay without subscribers before the
        /// webhooks report it vacated [default: 5s].
        #[arg(long, env = "HERALD_WEBHOOK_VACATE_GRACE")]
        pub webhook_vacate_grace: Option<String>,
        /// Also serve the examples gallery at /examples/ (one page per use
        /// case: notifications, dashboard, LLM chat, order status, chat,
        /// editor, game, cursors) and the topic policies its pages need
        /// (under `examples/`). For evaluation and development.
        #[arg(long, env = "HERALD_EXAMPLES")]
        pub examples: bool,
        /// The gallery's folder [default: ./examples/web, else the one in
        /// the source tree this binary was built from].
        #[arg(long, env = "HERALD_EXAMPLES_DIR")]
        pub examples_dir: Option<PathBuf>,
        /// Topic policies, config file only: `[[topics]]` tables (`pattern`,
        /// `history`, `history_max_age`, `client_publish`, `publish_rate`,
        /// `presence`, `join_leave`, `subscribe_hook`, `publish_hook`),
        /// checked by `settings::topics`.
        #[arg(skip)]
        pub topics: Vec<toml::Table>,
    }
}

impl ServeArgs {
    /// The settings of the TOML file at `path`. Unknown keys are refused,
    /// so a misspelt one does not pass unnoticed.
    ///
    /// Errors: the file cannot be read, or is not TOML of these keys (the
    /// message points at the line).
    pub fn read_file(path: &Path) -> anyhow::Result<ServeArgs> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// These settings over those of their `--config` file, if any.
    pub fn with_file(self) -> anyhow::Result<ServeArgs> {
        let file = match &self.config {
            None => ServeArgs::default(),
            Some(p) => ServeArgs::read_file(p)?,
        };
        Ok(self.over(file))
    }
}
