//! One measured run: connect the subscribers, measure the server's memory,
//! publish for a fixed time (or hold the connections idle), drain, report.
//!
//! Delivery accounting is exact and per message: `counts[seq]` is how many
//! subscribers received message `seq` and `expected[seq]` how many should
//! have, so loss and duplicates are known message by message whatever the
//! order deliveries arrive in. Those counters live in [`crate::ledger`];
//! the publishers that fill `expected` in `publish`; this module starts the
//! threads, times the phases and turns the counters into a [`Report`].

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{watch, Semaphore};

use crate::ledger::{histogram, Shared, ThreadStats};
use crate::procfs;
use crate::publish::publisher;
use crate::subscriber;
use crate::target::{Target, Transport};

/// What kind of run: who publishes, who receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Subscribers over SSE, WebSocket, long polling or Mercure, and separate
    /// publishers over HTTP ([`run`]).
    Subscribers,
    /// WebSocket clients in rooms, each subscribed to its room and publishing
    /// to it on its own socket ([`crate::rooms::run`]).
    Rooms,
    /// New connections, each opened, answered and closed: how many a second
    /// the server accepts and how long each waits ([`crate::connects::run`]).
    Connects,
}

/// Which topics subscribers take and publishers use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Topics {
    /// Every subscriber on one topic, `bench`.
    Shared,
    /// Subscriber i on `own-i` and on `bench`.
    OwnShared,
    /// Publisher j publishes to `p-j`; subscriber i takes `p-(i mod publishers)`.
    PerPublisher,
    /// The rooms mode's layout (not a `--topics` choice): client i takes
    /// `room/<run>-<i mod rooms>` and publishes there.
    #[value(skip)]
    Rooms,
}

/// What to run: the command line of `herald-bench`, parsed.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Free text copied into the report to name the scenario.
    pub label: String,
    /// The server under test.
    pub target: Target,
    /// How every subscriber connects.
    pub transport: Transport,
    /// The server's subscriber address.
    pub addr: SocketAddr,
    /// More subscriber addresses (other nodes of a cluster): subscribers are
    /// spread round-robin over `addr` and these.
    pub more_addrs: Vec<SocketAddr>,
    /// Where publishers send their requests (usually `addr`).
    pub pub_addr: SocketAddr,
    /// The server's process id, for RSS and CPU (its children count too);
    /// without it those figures are 0.
    pub server_pid: Option<u32>,
    /// The hook backend's process id (`herald-bench hook-backend`), for its
    /// CPU; without it that figure is 0.
    pub backend_pid: Option<u32>,
    /// Header lines (each ending in CRLF) every request carries: the
    /// credential (see [`crate::target::auth_headers`]); empty for none.
    pub headers: String,
    /// Put before every topic name of the run (`hook/`: topics a policy of
    /// the server's config file covers).
    pub topic_prefix: String,
    /// Subscriber connections to open.
    pub subs: usize,
    /// Which topics subscribers take and publishers use.
    pub topics: Topics,
    /// Messages per second over all publishers; 0 = as fast as the server takes them.
    pub rate: f64,
    /// With `rate == 0`: most messages published but not yet delivered to
    /// every subscriber (0 = no limit: each publisher waits only for its answer).
    pub window: usize,
    /// With `Topics::OwnShared`: every n-th message goes to the shared topic.
    pub shared_every: u64,
    /// Payload bytes per message, marker included.
    pub size: usize,
    /// Publisher connections, each one request at a time.
    pub publishers: usize,
    /// Publishing time; zero holds the connections idle for `hold`.
    pub duration: Duration,
    /// With a zero `duration`: how long connections stay idle before the
    /// final memory and CPU readings.
    pub hold: Duration,
    /// Most time to wait for deliveries after the last publish (the wait also
    /// ends after 2 seconds without a new delivery).
    pub drain: Duration,
    /// Time between the last connection and the memory reading.
    pub settle: Duration,
    /// Most time to wait for every subscriber to connect; the run goes on
    /// with those that did and notes the shortfall.
    pub connect_timeout: Duration,
    /// Load-generator threads for the subscribers (the publishers get one more).
    pub threads: usize,
    /// Source addresses 127.0.0.2, 127.0.0.3, ... to spread connections over,
    /// so that more than one port range of connections fits.
    pub sources: usize,
    /// Connections being opened at once, over all threads.
    pub connect_concurrency: usize,
    /// The most messages a run publishes (the per-message counters are this long).
    pub max_messages: usize,
}

/// The result of a run, printed as one JSON object (the field names are
/// what `bench/run.sh` and `bench/smoke.sh` read).
#[derive(Debug, Serialize)]
pub struct Report {
    /// The plan's label.
    pub label: String,
    /// The kind of run.
    pub mode: Mode,
    /// The server under test.
    pub target: Target,
    /// The rooms mode's wire protocol (absent in the other modes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<crate::rooms::Protocol>,
    /// The transport subscribers used.
    pub transport: Transport,
    /// Subscriber connections the plan asked for.
    pub subs: usize,
    /// The plan's topic layout.
    pub topics: Topics,
    /// Rooms (the rooms mode; 0 otherwise).
    pub rooms: usize,
    /// The plan's rate, messages per second (0 = unbounded): over all
    /// publishers, or per client in the rooms mode.
    pub rate: f64,
    /// The plan's in-flight window, messages (the rooms mode: per client).
    pub window: usize,
    /// Payload bytes per message.
    pub size: usize,
    /// Publisher connections.
    pub publishers: usize,
    /// Seconds from the first publish to the last delivery (or the idle hold).
    pub duration_s: f64,
    /// Subscribers that connected and subscribed.
    pub connected: usize,
    /// Subscribers that could not connect or subscribe.
    pub connect_errors: usize,
    /// Subscriber connections that ended before the run did.
    pub dropped: usize,
    /// Messages published (sequence numbers taken, failed publishes included).
    pub messages: u64,
    /// Messages the plan's fixed rate offers over its duration (0 without a rate).
    pub messages_planned: u64,
    /// Publishes refused: answered with a status outside 2xx, or (rooms
    /// mode) with a WebSocket `error` message.
    pub publish_errors: u64,
    /// Publishes sent but never answered by the end of the run.
    pub publish_unanswered: u64,
    /// Messages per second over the publishing time.
    pub publishes_per_s: f64,
    /// Median publish round trip, milliseconds.
    pub publish_p50_ms: f64,
    /// 99th-percentile publish round trip, milliseconds.
    pub publish_p99_ms: f64,
    /// Deliveries that should have happened: per message, the subscribers of its topic.
    pub expected: u64,
    /// Deliveries that happened, duplicates included.
    pub received: u64,
    /// Expected deliveries that never arrived, summed per message.
    pub lost: u64,
    /// Deliveries beyond a message's expected count, summed per message.
    pub duplicates: u64,
    /// Deliveries per second over `duration_s`.
    pub deliveries_per_s: f64,
    /// Median delivery latency from send, milliseconds.
    pub p50_ms: f64,
    /// 90th-percentile delivery latency from send, milliseconds.
    pub p90_ms: f64,
    /// 99th-percentile delivery latency from send, milliseconds.
    pub p99_ms: f64,
    /// 99.9th-percentile delivery latency from send, milliseconds.
    pub p999_ms: f64,
    /// Largest delivery latency from send, milliseconds.
    pub max_ms: f64,
    /// Median latency in milliseconds from the time each message was due at
    /// the fixed rate rather than the time it was sent (coordinated omission corrected): a server
    /// that accepts fewer messages than the rate delays the rest, and that
    /// wait is part of what a publishing application sees. Equal to the
    /// plain figures when every publish went out on time, or without a rate.
    pub sched_p50_ms: f64,
    /// 90th-percentile latency from the scheduled time, milliseconds.
    pub sched_p90_ms: f64,
    /// 99th-percentile latency from the scheduled time, milliseconds.
    pub sched_p99_ms: f64,
    /// 99.9th-percentile latency from the scheduled time, milliseconds.
    pub sched_p999_ms: f64,
    /// Largest latency from the scheduled time, milliseconds.
    pub sched_max_ms: f64,
    /// Server RSS before any subscriber connected, KiB.
    pub rss_before_kib: u64,
    /// Server RSS once every subscriber connected and `settle` passed, KiB.
    pub rss_connected_kib: u64,
    /// Server RSS at the end of publishing or of the hold, KiB.
    pub rss_end_kib: u64,
    /// Server memory per connected subscriber, bytes: RSS growth from before to connected, over `connected`.
    pub bytes_per_conn: f64,
    /// Server CPU over the measured time, percent of one core.
    pub server_cpu_pct: f64,
    /// This load generator's CPU over the measured time, percent of one core.
    pub loadgen_cpu_pct: f64,
    /// The hook backend's CPU over the measured time, percent of one core
    /// (0 without its process id).
    pub backend_cpu_pct: f64,
    /// The first five errors the run noted.
    pub errors: Vec<String>,
}

/// The latency fields of a [`Report`], in milliseconds.
pub(crate) struct Latencies {
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) max: f64,
}

impl Latencies {
    /// Reads a histogram of microseconds (all zero when it is empty).
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        let ms = |q: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(q) as f64 / 1000.0
            }
        };
        Latencies {
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            p999: ms(0.999),
            max: if h.is_empty() {
                0.0
            } else {
                h.max() as f64 / 1000.0
            },
        }
    }
}

pub(crate) fn source_ips(n: usize) -> Vec<IpAddr> {
    (0..n.max(1))
        .map(|i| {
            let host = 2 + i as u32; // 127.0.0.2, 127.0.0.3, ...
            IpAddr::V4(Ipv4Addr::from(0x7f00_0000 | host))
        })
        .collect()
}

/// Topic names start with a prefix unique to the run, so that history a
/// server kept from an earlier run (Nchan replays its buffer to new
/// subscribers) never counts as a delivery.
pub(crate) fn run_prefix() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    format!("r{}x{}", std::process::id(), t % 1_000_000_000_000)
}

fn topics_of(plan: &Plan, prefix: &str, i: usize) -> Vec<String> {
    match plan.topics {
        Topics::Shared => vec![format!("{prefix}-bench")],
        Topics::OwnShared => vec![format!("{prefix}-own-{i}"), format!("{prefix}-bench")],
        Topics::PerPublisher => vec![format!("{prefix}-p-{}", i % plan.publishers.max(1))],
        Topics::Rooms => Vec::new(),
    }
}

/// Runs `plan` and reports.
///
/// Fails before connecting if the target does not serve the transport or
/// the topic layout, or if this process may not open enough files; fails
/// after if a load-generator thread panicked or a publisher's connection
/// failed. Connection errors, drops and loss are reported, not errors.
pub fn run(plan: Plan) -> Result<Report> {
    if !plan.target.supports(plan.transport) {
        bail!("{} does not serve {}", plan.target, plan.transport);
    }
    if plan.topics == Topics::OwnShared && !plan.target.multi_topic() {
        bail!("{} serves one topic per connection", plan.target);
    }
    let nofile = procfs::raise_nofile();
    if (plan.subs + plan.publishers + 64) as u64 > nofile {
        bail!(
            "{} subscribers need more than the {nofile} open files this process may hold",
            plan.subs
        );
    }
    if plan.topics == Topics::Rooms {
        bail!("the rooms layout is the rooms mode's: use --mode rooms");
    }
    let shared = Arc::new(
        Shared::new(plan.target, plan.transport, plan.addr, plan.max_messages)
            .with_headers(plan.headers.clone()),
    );
    let server_pid = plan.server_pid;
    let server_pids = move || server_pid.map(procfs::tree).unwrap_or_default();
    let rss_before = procfs::rss_kib(&server_pids());
    let (stop_tx, stop_rx) = watch::channel(false);
    let prefix = format!("{}{}", plan.topic_prefix, run_prefix());

    // Subscriber threads, each a current-thread runtime.
    let sources = source_ips(plan.sources);
    let threads = plan.threads.max(1);
    let mut handles = Vec::new();
    for t in 0..threads {
        let shared = shared.clone();
        let stop = stop_rx.clone();
        let addrs: Vec<SocketAddr> = std::iter::once(plan.addr)
            .chain(plan.more_addrs.iter().copied())
            .collect();
        let conns: Vec<(IpAddr, Vec<String>, SocketAddr)> = (t..plan.subs)
            .step_by(threads)
            .map(|i| {
                (
                    sources[i % sources.len()],
                    topics_of(&plan, &prefix, i),
                    addrs[i % addrs.len()],
                )
            })
            .collect();
        let concurrency = (plan.connect_concurrency / threads).max(1);
        handles.push(std::thread::spawn(move || -> Result<ThreadStats> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let local = tokio::task::LocalSet::new();
            let stats = Rc::new(RefCell::new(ThreadStats {
                deliveries: 0,
                latency: histogram(),
                scheduled: histogram(),
            }));
            let sem = Rc::new(Semaphore::new(concurrency));
            local.block_on(&rt, async {
                let mut tasks = Vec::new();
                for (src, topics, addr) in conns {
                    tasks.push(tokio::task::spawn_local(subscriber::run(
                        shared.clone(),
                        stats.clone(),
                        sem.clone(),
                        stop.clone(),
                        src,
                        topics,
                        addr,
                    )));
                }
                for t in tasks {
                    let _ = t.await;
                }
            });
            drop(local);
            Rc::try_unwrap(stats)
                .map(RefCell::into_inner)
                .map_err(|_| anyhow!("stats still shared"))
        }));
    }

    // The control thread: wait for connections, measure, publish, drain.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let plan = Arc::new(plan);
    let outcome =
        tokio::task::LocalSet::new().block_on(&rt, control(&plan, &prefix, &shared, &server_pids));
    stop_tx.send_replace(true);
    let mut deliveries = 0;
    let mut latency = histogram();
    let mut scheduled = histogram();
    for h in handles {
        let st = h
            .join()
            .map_err(|_| anyhow!("a load-generator thread panicked"))??;
        deliveries += st.deliveries;
        latency.add(&st.latency).map_err(|e| anyhow!("{e:?}"))?;
        scheduled.add(&st.scheduled).map_err(|e| anyhow!("{e:?}"))?;
    }
    let out = outcome?;

    let tally = shared.tally(out.messages);
    let ms = |h: &Histogram<u64>, q: f64| {
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(q) as f64 / 1000.0
        }
    };
    let (lat, sched) = (Latencies::of(&latency), Latencies::of(&scheduled));
    let connected = shared.ready.load(Ordering::Relaxed);
    let errors = shared
        .errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(Report {
        label: plan.label.clone(),
        mode: Mode::Subscribers,
        target: plan.target,
        protocol: None,
        transport: plan.transport,
        subs: plan.subs,
        topics: plan.topics,
        rooms: 0,
        rate: plan.rate,
        window: plan.window,
        size: plan.size,
        publishers: plan.publishers,
        duration_s: out.elapsed,
        connected,
        connect_errors: shared.failed.load(Ordering::Relaxed),
        dropped: shared.dropped.load(Ordering::Relaxed),
        messages: out.messages,
        messages_planned: (plan.rate * plan.duration.as_secs_f64()).round() as u64,
        publish_errors: out.publish_errors,
        publish_unanswered: 0,
        publishes_per_s: if out.publish_elapsed > 0.0 {
            out.messages as f64 / out.publish_elapsed
        } else {
            0.0
        },
        publish_p50_ms: ms(&out.publish_latency, 0.5),
        publish_p99_ms: ms(&out.publish_latency, 0.99),
        expected: tally.expected,
        received: deliveries,
        lost: tally.lost,
        duplicates: tally.duplicates,
        deliveries_per_s: if out.elapsed > 0.0 {
            deliveries as f64 / out.elapsed
        } else {
            0.0
        },
        p50_ms: lat.p50,
        p90_ms: lat.p90,
        p99_ms: lat.p99,
        p999_ms: lat.p999,
        max_ms: lat.max,
        sched_p50_ms: sched.p50,
        sched_p90_ms: sched.p90,
        sched_p99_ms: sched.p99,
        sched_p999_ms: sched.p999,
        sched_max_ms: sched.max,
        rss_before_kib: rss_before,
        rss_connected_kib: out.rss_connected,
        rss_end_kib: out.rss_end,
        bytes_per_conn: if connected > 0 {
            (out.rss_connected.saturating_sub(rss_before) as f64 * 1024.0) / connected as f64
        } else {
            0.0
        },
        server_cpu_pct: out.server_cpu_pct,
        loadgen_cpu_pct: out.loadgen_cpu_pct,
        backend_cpu_pct: out.backend_cpu_pct,
        errors,
    })
}

/// Waits until `expected` deliveries arrived and `settled()` holds, or
/// `limit` passed, or nothing was delivered for 2 seconds. Returns the
/// seconds from `t0` to the last delivery (not the idle tail of the wait).
pub(crate) async fn drain(
    shared: &Shared,
    expected: u64,
    t0: Instant,
    limit: Duration,
    settled: impl Fn() -> bool,
) -> f64 {
    let drain_until = Instant::now() + limit;
    let mut last = shared.received.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    while Instant::now() < drain_until {
        let r = shared.received.load(Ordering::Relaxed);
        if r >= expected && settled() {
            break;
        }
        if r != last {
            last = r;
            last_change = Instant::now();
        } else if last_change.elapsed() > Duration::from_secs(2) {
            break; // nothing moves any more
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if last_change.elapsed() > Duration::from_millis(50) {
        (last_change - t0).as_secs_f64()
    } else {
        t0.elapsed().as_secs_f64()
    }
}

struct Outcome {
    messages: u64,
    publish_errors: u64,
    publish_elapsed: f64,
    publish_latency: Histogram<u64>,
    /// From the first publish to the last delivery (or the hold time).
    elapsed: f64,
    rss_connected: u64,
    rss_end: u64,
    server_cpu_pct: f64,
    loadgen_cpu_pct: f64,
    backend_cpu_pct: f64,
}

async fn control(
    plan: &Arc<Plan>,
    prefix: &str,
    shared: &Arc<Shared>,
    server_pids: &dyn Fn() -> Vec<u32>,
) -> Result<Outcome> {
    // 1. Connections.
    let deadline = Instant::now() + plan.connect_timeout;
    loop {
        let done = shared.ready.load(Ordering::Relaxed)
            + shared.failed.load(Ordering::Relaxed)
            + shared.dropped.load(Ordering::Relaxed);
        if done >= plan.subs {
            break;
        }
        if Instant::now() > deadline {
            shared.note(format!(
                "only {} of {} subscribers ready after {:?}",
                shared.ready.load(Ordering::Relaxed),
                plan.subs,
                plan.connect_timeout
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(plan.settle).await;
    let rss_connected = procfs::rss_kib(&server_pids());
    let me = [std::process::id()];
    let backend = || plan.backend_pid.map(procfs::tree).unwrap_or_default();
    let cpu0 = (
        procfs::cpu_seconds(&server_pids()),
        procfs::cpu_seconds(&me),
        procfs::cpu_seconds(&backend()),
    );
    let t0 = Instant::now();

    // 2. Idle hold, or publishing then drain.
    let mut messages = 0;
    let mut publish_errors = 0;
    let mut publish_latency = histogram();
    let mut publish_elapsed = 0.0;
    let elapsed;
    if plan.duration.is_zero() {
        tokio::time::sleep(plan.hold).await;
        elapsed = t0.elapsed().as_secs_f64();
    } else {
        let ready = shared.ready.load(Ordering::Relaxed);
        let next_seq = Arc::new(AtomicU64::new(1));
        let stop_at = Instant::now() + plan.duration;
        let mut tasks = Vec::new();
        for j in 0..plan.publishers.max(1) {
            tasks.push(tokio::task::spawn_local(publisher(
                plan.clone(),
                prefix.to_string(),
                shared.clone(),
                next_seq.clone(),
                j,
                ready,
                stop_at,
            )));
        }
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.map_err(|e| anyhow!("publisher task: {e}"))?);
        }
        publish_elapsed = t0.elapsed().as_secs_f64();
        shared.publishing_done.store(true, Ordering::Relaxed);
        for r in results {
            let r = r?;
            publish_errors += r.errors;
            publish_latency
                .add(&r.latency)
                .map_err(|e| anyhow!("{e:?}"))?;
        }
        messages = (next_seq.load(Ordering::Relaxed) - 1).min(plan.max_messages as u64);
        let expected = shared.tally(messages).expected;
        elapsed = drain(shared, expected, t0, plan.drain, || true).await;
    }
    let wall = t0.elapsed().as_secs_f64().max(1e-9);
    let cpu1 = (
        procfs::cpu_seconds(&server_pids()),
        procfs::cpu_seconds(&me),
        procfs::cpu_seconds(&backend()),
    );
    let rss_end = procfs::rss_kib(&server_pids());
    Ok(Outcome {
        messages,
        publish_errors,
        publish_elapsed,
        publish_latency,
        elapsed,
        rss_connected,
        rss_end,
        server_cpu_pct: 100.0 * (cpu1.0 - cpu0.0) / wall,
        loadgen_cpu_pct: 100.0 * (cpu1.1 - cpu0.1) / wall,
        backend_cpu_pct: 100.0 * (cpu1.2 - cpu0.2) / wall,
    })
}
