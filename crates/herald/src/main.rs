//! The `herald` binary: `serve` runs the hub; `publish` and `subscribe` talk
//! to a running one.

mod duration;
mod examples;
mod jwks;
mod settings;
mod telemetry;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use herald_client::Client;
use herald_core::{Hub, MemoryEngine};

use settings::{EngineKind, ServeArgs, Settings, TokenArgs};

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "A real-time push hub: SSE, WebSocket and long polling over one publish/subscribe core"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub.
    Serve(Box<ServeArgs>),
    /// Publish one event to a running hub.
    Publish {
        topic: String,
        /// JSON (an object, number, ...) or, if it is not JSON, plain text.
        data: String,
        /// The event name.
        #[arg(long)]
        event: Option<String>,
        /// Send DATA as a string even if it parses as JSON.
        #[arg(long)]
        raw: bool,
        /// An id that makes a retried publish idempotent.
        #[arg(long)]
        id: Option<String>,
        #[arg(long, env = "HERALD_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
        /// A JWT or publisher key, sent as `Authorization: Bearer`.
        #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Print a JWT signed with the configured key, for development.
    Token(TokenArgs),
    /// Close every connection of a user on every node (the server API;
    /// needs the publisher key or an admin token).
    Disconnect {
        /// The user: a token's `sub`.
        user: String,
        #[arg(long, env = "HERALD_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
        /// The publisher key or a JWT with the admin claim.
        #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// List the topics with subscribers on a node, the busiest first.
    Topics {
        /// At most this many (1 to 10000) [default: 100].
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, env = "HERALD_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
        /// The publisher key or a JWT with the admin claim.
        #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// List a user's connections on a node.
    Connections {
        /// The user: a token's `sub`.
        user: String,
        #[arg(long, env = "HERALD_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
        /// The publisher key or a JWT with the admin claim.
        #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Print the events of topics as they arrive, one JSON object per line.
    Subscribe {
        #[arg(required = true)]
        topics: Vec<String>,
        /// sse, ws or poll.
        #[arg(long, default_value = "sse")]
        transport: String,
        /// Resume after this cursor.
        #[arg(long)]
        since: Option<String>,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<u64>,
        #[arg(long, env = "HERALD_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
        /// A JWT, sent as `Authorization: Bearer`.
        #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

fn main() -> std::process::ExitCode {
    let mut cli = Cli::parse();
    // `serve` settings are read before the runtime exists: they size it.
    let mut serve_settings = None;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Command::Serve(args) = &mut cli.command {
        match Settings::resolve(std::mem::take(&mut **args)) {
            Ok(s) => {
                if let Some(w) = s.workers {
                    builder.worker_threads(w);
                }
                serve_settings = Some(s);
            }
            Err(e) => {
                eprintln!("herald: {e:#}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Serve(_) => match serve_settings {
                Some(s) => serve(s).await,
                None => unreachable!("serve settings are resolved above"),
            },
            Command::Publish {
                topic,
                data,
                event,
                raw,
                id,
                server,
                token,
            } => publish(&client(&server, token)?, &topic, &data, event, raw, id).await,
            Command::Token(args) => settings::mint_token(args).map(|t| println!("{t}")),
            Command::Disconnect {
                user,
                server,
                token,
            } => print_json(client(&server, token)?.disconnect_user(&user).await),
            Command::Topics {
                limit,
                server,
                token,
            } => print_json(client(&server, token)?.topics(limit).await),
            Command::Connections {
                user,
                server,
                token,
            } => print_json(client(&server, token)?.connections(&user).await),
            Command::Subscribe {
                topics,
                transport,
                since,
                count,
                server,
                token,
            } => subscribe(&client(&server, token)?, &topics, &transport, since, count).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(mut settings: Settings) -> anyhow::Result<()> {
    // Logs, and traces with --otlp-endpoint (flushed at the end).
    let telemetry = telemetry::init(settings.log_json, settings.otlp_endpoint.as_deref())?;
    for w in &settings.warnings {
        tracing::warn!("{w}");
    }
    // Certificate and port first: a bad flag or a busy port fails before the
    // store is opened (or created).
    let tls = match settings.tls.clone() {
        None => None,
        Some(source) => Some(Arc::new(herald_server::Tls::new(source).context("TLS")?)),
    };
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    // Kept to ask, after the shutdown, whether the store's final persist worked.
    let mut embedded_engine = None;
    let hub = match settings.engine {
        EngineKind::Redis => {
            let redis = settings
                .redis
                .clone()
                .context("--engine redis needs --redis-url")?;
            let mut config =
                herald_engine_redis::RedisConfig::new(&redis.url, settings.hub.history);
            config.prefix = redis.prefix;
            config.replica_acks = redis.replica_acks;
            config.replica_timeout = redis.replica_timeout;
            let engine = Arc::new(herald_engine_redis::RedisEngine::connect(config).await?);
            Hub::new(engine, settings.hub.clone())
        }
        EngineKind::Embedded => {
            let embedded = settings
                .embedded
                .clone()
                .context("--engine embedded needs --data-dir")?;
            let mut config = herald_engine_embedded::EmbeddedConfig::new(&embedded.data_dir)
                .with_history(settings.hub.history);
            config.commit_delay = embedded.commit_delay;
            // Opening reads (and checks) the whole store: off the async threads.
            let engine = tokio::task::spawn_blocking(move || {
                herald_engine_embedded::EmbeddedEngine::open(config)
            })
            .await
            .context("opening the store failed")??;
            let engine = Arc::new(engine);
            embedded_engine = Some(engine.clone());
            Hub::new(engine, settings.hub.clone())
        }
        EngineKind::Memory => Hub::new(
            Arc::new(MemoryEngine::new(settings.hub.history)),
            settings.hub.clone(),
        ),
    };
    // One-time tokens wait in the hub's store: the engine's shared one when
    // it has one (Redis: a token issued by one node is redeemed, once, on
    // any), else this process's memory.
    Arc::get_mut(&mut settings.http.auth)
        .context("the auth settings were shared before the engine was built")?
        .set_one_time_store(hub.one_time_store().clone());
    // Webhooks (--webhook-url): the hub (and a Redis engine, cluster-wide)
    // reports what happens to topics from now on; one task sends it.
    if let Some(webhooks) = &settings.webhooks {
        hub.report_occurrences(webhooks.clone());
        tokio::spawn(webhooks.clone().run());
        settings.http.metrics.push(webhooks.metrics().clone());
    }
    // Identity providers' key sets (--jwt-jwks-url): the first fetch starts
    // now, in the background, and they are kept fresh from then on. A
    // provider that does not answer is logged and retried; Herald serves
    // meanwhile, refusing only the tokens of keys it does not hold yet.
    if !settings.http.auth.jwks_urls().is_empty() {
        Arc::get_mut(&mut settings.http.auth)
            .context("the auth settings were shared before the key sets were set up")?
            .set_jwks_fetcher(jwks::HttpFetcher::new()?);
        let auth = settings.http.auth.clone();
        tokio::spawn(async move { auth.keep_jwks_fresh().await });
    }
    // The one line scripts and tests wait for.
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("herald listening on {scheme}://{addr}");
    let _ = std::io::stdout().flush();
    if let Some(tls) = &tls {
        if tls.self_signed_pem.is_some() {
            tracing::warn!("serving a self-signed certificate: for development only");
        }
        tokio::spawn(herald_server::tls::reload_certificates(tls.clone()));
    }
    tracing::info!(%addr, engine = hub.engine().name(), history = settings.hub.history.max_events, "serving");
    if addr.ip().is_loopback() && !settings.http.auth.is_enabled() {
        tracing::warn!(
            "no authentication configured: every topic is open to anyone who can reach {addr}"
        );
    }
    let upstream = match &settings.llm.upstream {
        Some(url) => url.clone(),
        None => herald_llm::offline::spawn(herald_llm::offline::OfflineModel {
            token_delay: settings.llm.offline_delay,
            ..Default::default()
        })
        .await
        .context("cannot start the offline model")?,
    };
    let upstream = herald_llm::Upstream::new(
        &upstream,
        settings.llm.api_key.as_ref().map(|k| k.0.clone()),
    )?;
    // Without its query: a provider key may ride there (`?api-key=...`).
    let shown = upstream.base().split(['?', '#']).next().unwrap_or_default();
    tracing::info!(upstream = shown, "LLM relay");
    let relay = herald_llm::Relay::new(
        hub.clone(),
        settings.http.auth.clone(),
        upstream,
        settings.llm.config.clone(),
    );
    let mut extra = herald_llm::http::router(relay, Arc::new(settings.http.clone()));
    if let Some(dir) = settings.examples.clone() {
        tracing::info!(folder = %dir.display(), "examples gallery at /examples/");
        extra = extra.merge(examples::router(dir));
        tokio::spawn(examples::run_dashboard_generator(hub.clone()));
    }
    let close_timeout = Some(settings.http.write_timeout);
    let router = herald_http::router_with(hub.clone(), settings.http, extra);
    let options = herald_server::ServeOptions {
        tls,
        close_timeout,
        ..Default::default()
    };
    herald_server::serve_with(listener, router, hub, options, shutdown_signal()).await?;
    if let Some(webhooks) = &settings.webhooks {
        // What the shutdown itself reported (vacated topics) goes too.
        let left = webhooks.flush(WEBHOOK_FLUSH).await;
        if left > 0 {
            tracing::warn!(
                events = left,
                "webhook events not delivered within {WEBHOOK_FLUSH:?} of the shutdown"
            );
        }
    }
    // The connections have ended (their spans with them): send the last spans.
    telemetry.shutdown().await;
    if let Some(why) = embedded_engine.and_then(|e| e.close_error()) {
        anyhow::bail!(
            "{why}; events acknowledged before the shutdown were already on disk, but later \
             writes (retention, idempotency expiry) may not be: check the disk and the data dir, \
             then start Herald again, which recovers the store"
        );
    }
    tracing::info!("stopped");
    Ok(())
}

/// How long a shutdown waits for queued webhook events to be delivered.
const WEBHOOK_FLUSH: Duration = Duration::from_secs(5);

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Prints a server API answer as one line of JSON.
fn print_json(answer: Result<serde_json::Value, herald_client::ClientError>) -> anyhow::Result<()> {
    println!("{}", answer?);
    Ok(())
}

fn client(server: &str, token: Option<String>) -> anyhow::Result<Client> {
    let c = Client::new(server)?;
    Ok(match token {
        Some(t) => c.with_token(t),
        None => c,
    })
}

async fn publish(
    client: &Client,
    topic: &str,
    data: &str,
    event: Option<String>,
    raw: bool,
    id: Option<String>,
) -> anyhow::Result<()> {
    let value = if raw {
        serde_json::Value::String(data.to_owned())
    } else {
        serde_json::from_str(data).unwrap_or_else(|_| serde_json::Value::String(data.to_owned()))
    };
    let mut body = serde_json::json!({"topic": topic, "data": value});
    if let Some(e) = event {
        body["event"] = e.into();
    }
    if let Some(id) = id {
        body["id"] = id.into();
    }
    let (status, answer) = client
        .publish_raw(body.to_string(), "application/json")
        .await?;
    if !status.is_success() {
        anyhow::bail!("server answered {status}: {answer}");
    }
    println!("{}", answer["id"].as_str().unwrap_or_default());
    Ok(())
}

async fn subscribe(
    client: &Client,
    topics: &[String],
    transport: &str,
    since: Option<String>,
    count: Option<u64>,
) -> anyhow::Result<()> {
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    if count == Some(0) {
        return Ok(());
    }
    let mut left = count.unwrap_or(u64::MAX);
    let mut out = std::io::stdout();
    let mut print = |v: serde_json::Value| -> anyhow::Result<bool> {
        writeln!(out, "{v}")?;
        out.flush()?;
        left -= 1;
        Ok(left == 0)
    };
    match transport {
        "sse" => {
            let mut stream = client.sse(&topics, since.as_deref()).await?;
            while let Some(e) = stream.next_event().await? {
                let v = serde_json::json!({"id": e.id, "event": e.event, "data": e.data});
                if print(v)? {
                    break;
                }
            }
        }
        "ws" => {
            let mut ws = client.ws().await?;
            for t in &topics {
                ws.subscribe(t, since.as_deref()).await?;
            }
            while let Some(v) = ws.next_json().await? {
                match v["type"].as_str() {
                    Some("event") if print(v.clone())? => break,
                    Some("event") => {}
                    Some("error") => eprintln!("herald: {}", v["message"]),
                    Some("close") => {
                        anyhow::bail!("server closed the WebSocket: {} {}", v["code"], v["reason"])
                    }
                    _ => {}
                }
            }
        }
        "poll" => {
            let mut cursor = since;
            loop {
                let r = client
                    .poll(&topics, cursor.as_deref(), Duration::from_secs(25))
                    .await?;
                cursor = Some(r.cursor);
                for v in r.events {
                    if print(v)? {
                        return Ok(());
                    }
                }
            }
        }
        other => anyhow::bail!("--transport {other:?}: choose sse, ws or poll"),
    }
    Ok(())
}
