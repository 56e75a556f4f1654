//! `herald-bench`: one measured run against one server; prints a JSON line.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use herald_bench::connects::{self, ConnectsPlan};
use herald_bench::hook_backend::{self, BackendConfig};
use herald_bench::rooms::{self, Protocol, RoomsPlan};
use herald_bench::run::{run, Mode, Plan, Topics};
use herald_bench::target::{auth_headers, Target, Transport};

/// Measure a push server: N subscribers, a publisher, memory, CPU, latency.
///
/// `--mode rooms`: N WebSocket clients (`--clients`) spread over `--rooms`
/// rooms, each subscribed to its room and publishing `--rate` messages per
/// second to it on its own socket for `--duration` seconds: Herald's
/// WebSocket API, or with `--protocol socketio` Socket.IO 5 over Engine.IO 4
/// (a server like bench/node/socketio-room.js).
///
/// `--mode connects`: `--clients` connectors, each opening new SSE
/// (`--transport sse`) or long-poll (`--transport poll`) connections one
/// after another for `--duration` seconds, at `--rate` in all (0: as fast
/// as answered); reports accepted connects per second (Herald only).
///
/// `herald-bench hook-backend`: the application side of Herald's hooks.
#[derive(Parser, Debug)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// A free-form label copied into the report.
    #[arg(long, default_value = "")]
    label: String,
    /// Subscribers and separate publishers, clients in rooms that publish
    /// themselves, or new connections one after another.
    #[arg(long, value_enum, default_value = "subscribers")]
    mode: Mode,
    /// With --mode rooms: rooms the clients are spread over.
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// With --mode rooms: what the clients speak. `herald`: Herald's
    /// WebSocket API (`--target herald`); `socketio`: Socket.IO 5 over
    /// Engine.IO 4 on a plain WebSocket at
    /// `/socket.io/?EIO=4&transport=websocket&room=ROOM`, emitting and
    /// receiving `msg` events (no answer per event: sent on schedule).
    #[arg(long, value_enum, default_value = "herald")]
    protocol: Protocol,
    #[arg(long, value_enum, default_value = "herald")]
    target: Target,
    /// How subscribers connect; `mercure`: SSE at Herald's
    /// `/.well-known/mercure` (Herald only, started with a Mercure key and
    /// `--mercure-anonymous`), publishing on `POST /v1/publish` as ever.
    #[arg(long, value_enum, default_value = "sse")]
    transport: Transport,
    /// The server's subscriber address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Other nodes' subscriber addresses (comma-separated): subscribers are spread over all.
    #[arg(long, value_delimiter = ',')]
    more_addrs: Vec<SocketAddr>,
    /// Where to publish (defaults to --addr).
    #[arg(long)]
    pub_addr: Option<SocketAddr>,
    /// The server's process id, for RSS and CPU (its children are counted too).
    #[arg(long)]
    server_pid: Option<u32>,
    /// The hook backend's process id, for its CPU.
    #[arg(long)]
    backend_pid: Option<u32>,
    /// Send this cookie (`name=value`) with every request and handshake: a
    /// session Herald's connect hook asks the application about.
    #[arg(long, conflicts_with = "bearer")]
    cookie: Option<String>,
    /// Send `Authorization: Bearer TOKEN` with every request and handshake
    /// (a JWT, or a publisher key).
    #[arg(long)]
    bearer: Option<String>,
    /// Put this before every topic name (`hook/`: the topics a
    /// `[[topics]]` policy of the server's config covers).
    #[arg(long, default_value = "")]
    topic_prefix: String,
    /// Subscriber connections (with --mode rooms: clients; with --mode
    /// connects: connectors, each one connection at a time).
    #[arg(long, alias = "clients", default_value_t = 1000)]
    subs: usize,
    #[arg(long, value_enum, default_value = "shared")]
    topics: Topics,
    /// Messages per second over all publishers; 0 = as fast as the server
    /// takes them. With --mode rooms: per client, more than 0. With --mode
    /// connects: new connections per second over all connectors.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// With --rate 0: messages in flight (published, not yet delivered to all); 0 = no limit.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// With --topics own-shared: every n-th message goes to the shared topic.
    #[arg(long, default_value_t = 100)]
    shared_every: u64,
    /// Payload bytes per message.
    #[arg(long, alias = "payload", default_value_t = 100)]
    size: usize,
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Seconds of publishing; 0 holds the connections idle for --hold.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    #[arg(long, default_value_t = 5.0)]
    hold: f64,
    /// Most seconds to wait for deliveries after the last publish.
    #[arg(long, default_value_t = 10.0)]
    drain: f64,
    /// Seconds between the last connection and the memory reading.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    #[arg(long, default_value_t = 120.0)]
    connect_timeout: f64,
    /// Load-generator threads for the subscribers (the publishers get one more).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Source addresses 127.0.0.2 ... to spread connections over.
    #[arg(long, default_value_t = 20)]
    sources: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// The most messages a run publishes (the per-message counters are this long).
    #[arg(long, default_value_t = 2_000_000)]
    max_messages: usize,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve Herald's hooks for the hook benchmarks: check every
    /// request's signature, grant the session cookie, accept every publish;
    /// `GET /stats` answers the counters.
    HookBackend {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:9601")]
        listen: SocketAddr,
        /// The signing secret (Herald's `--hook-secret`).
        #[arg(long)]
        secret: String,
        /// The cookie (`name=value`) the connect hook grants.
        #[arg(long, default_value = "session=bench")]
        session: String,
        /// The user the connect hook names.
        #[arg(long, default_value = "bench")]
        user: String,
        /// Runtime threads.
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

fn main() -> Result<()> {
    let a = Args::parse();
    if let Some(Command::HookBackend {
        listen,
        secret,
        session,
        user,
        workers,
    }) = a.command
    {
        return hook_backend::serve(BackendConfig {
            listen,
            secret: secret.into_bytes(),
            session,
            user,
            workers,
        });
    }
    let headers = auth_headers(a.cookie.as_deref(), a.bearer.as_deref());
    if a.mode == Mode::Connects {
        let report = connects::run(ConnectsPlan {
            label: a.label,
            target: a.target,
            transport: a.transport,
            addr: a.addr,
            server_pid: a.server_pid,
            backend_pid: a.backend_pid,
            clients: a.subs,
            rate: a.rate,
            duration: secs(a.duration),
            sources: a.sources,
            headers,
            topic_prefix: a.topic_prefix,
        })?;
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    if a.mode == Mode::Rooms {
        let report = rooms::run(RoomsPlan {
            label: a.label,
            target: a.target,
            protocol: a.protocol,
            addr: a.addr,
            server_pid: a.server_pid,
            clients: a.subs,
            rooms: a.rooms,
            rate: a.rate,
            size: a.size,
            duration: secs(a.duration),
            drain: secs(a.drain),
            settle: secs(a.settle),
            connect_timeout: secs(a.connect_timeout),
            threads: a.threads,
            sources: a.sources,
            connect_concurrency: a.connect_concurrency,
            max_messages: a.max_messages,
            headers,
        })?;
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let report = run(Plan {
        label: a.label,
        target: a.target,
        transport: a.transport,
        addr: a.addr,
        more_addrs: a.more_addrs,
        pub_addr: a.pub_addr.unwrap_or(a.addr),
        server_pid: a.server_pid,
        backend_pid: a.backend_pid,
        headers,
        topic_prefix: a.topic_prefix,
        subs: a.subs,
        topics: a.topics,
        rate: a.rate,
        window: a.window,
        shared_every: a.shared_every,
        size: a.size,
        publishers: a.publishers,
        duration: secs(a.duration),
        hold: secs(a.hold),
        drain: secs(a.drain),
        settle: secs(a.settle),
        connect_timeout: secs(a.connect_timeout),
        threads: a.threads,
        sources: a.sources,
        connect_concurrency: a.connect_concurrency,
        max_messages: a.max_messages,
    })?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
