//! # herald-bench
//!
//! The load generator that measures Herald beside its peers (nginx + Nchan,
//! a Node.js Express/`ws` baseline, Pushpin; Socket.IO 4 in the rooms mode)
//! and beside the ceiling program, all on the same machine in the same run.
//! `bench/run.sh` drives it; see `bench/README.md` for the scenarios and the
//! results.
//!
//! # Layout
//!
//! - [`wire`]: pure parsing of what subscribers receive (HTTP heads, chunked
//!   bodies, WebSocket frames) and the `~SEQ~MICROS~` marker each payload carries.
//! - [`target`]: one small adapter per server: subscribe paths, publish requests.
//! - [`subscriber`]: one connection over SSE, WebSocket, long polling, or
//!   as a Mercure subscriber (SSE at Herald's `/.well-known/mercure`).
//! - [`run`]: a whole run: connect, measure memory, publish, drain, report.
//! - [`rooms`]: the rooms mode: WebSocket clients in rooms, each subscribed
//!   to its room and publishing to it on its own socket, reported in the
//!   same shape; over Herald's WebSocket API or Socket.IO's.
//! - [`connects`]: the connects mode: new connections opened, answered and
//!   closed, counted per second with the time each waited (a session cookie
//!   through Herald's connect hook against a JWT).
//! - [`hook_backend`]: `herald-bench hook-backend`, the application side of
//!   Herald's hooks for the hook benchmarks: checks every signature, grants
//!   a fixed session cookie, accepts every publish.
//! - [`ledger`]: the per-message delivery counts and errors every thread of a
//!   run writes to, and each thread's latency histograms.
//! - `publish`: the publishers, one keep-alive connection each.
//! - [`procfs`]: RSS and CPU time of the server's process tree.
//!
//! The `herald-bench-ceiling` binary (`src/bin/ceiling.rs`) is the ceiling: it
//! writes one pre-encoded frame per subscriber per message and does nothing else.
//!
//! # Example
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use herald_bench::run::{run, Plan, Topics};
//! use herald_bench::target::{Target, Transport};
//! use std::time::Duration;
//! let addr = "127.0.0.1:8080".parse()?;
//! let report = run(Plan {
//!     label: "fanout".into(), target: Target::Herald, transport: Transport::Sse,
//!     addr, more_addrs: vec![], pub_addr: addr, server_pid: None, backend_pid: None,
//!     headers: String::new(), topic_prefix: String::new(), subs: 1000, topics: Topics::Shared,
//!     rate: 100.0, window: 0, shared_every: 1, size: 100, publishers: 1,
//!     duration: Duration::from_secs(10), hold: Duration::ZERO,
//!     drain: Duration::from_secs(5), settle: Duration::from_secs(1),
//!     connect_timeout: Duration::from_secs(60), threads: 1, sources: 4,
//!     connect_concurrency: 128, max_messages: 1_000_000,
//! })?;
//! println!("{}", serde_json::to_string(&report)?);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod connects;
pub mod hook_backend;
pub mod ledger;
pub mod procfs;
mod publish;
pub mod rooms;
pub mod run;
pub mod subscriber;
pub mod target;
pub mod wire;
