//! One measured run: connect the subscribers, measure the server's memory,
//! publish for a fixed time (or hold the connections idle), drain, report.
//!
//! Delivery accounting is exact and per message: `counts[seq]` is how many
//! subscribers received message `seq` and `expected[seq]` how many should
//! have, so loss and duplicates are known message by message whatever the
//! order deliveries arrive in.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Notify, Semaphore};

use crate::procfs;
use crate::subscriber;
use crate::target::{Target, Transport};
use crate::wire;

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
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub label: String,
    pub target: Target,
    pub transport: Transport,
    pub addr: SocketAddr,
    /// More subscriber addresses (other nodes of a cluster): subscribers are
    /// spread round-robin over `addr` and these.
    pub more_addrs: Vec<SocketAddr>,
    pub pub_addr: SocketAddr,
    pub server_pid: Option<u32>,
    pub subs: usize,
    pub topics: Topics,
    /// Messages per second over all publishers; 0 = as fast as the server takes them.
    pub rate: f64,
    /// With `rate == 0`: most messages published but not yet delivered to
    /// every subscriber (0 = no limit: each publisher waits only for its answer).
    pub window: usize,
    /// With `Topics::OwnShared`: every n-th message goes to the shared topic.
    pub shared_every: u64,
    pub size: usize,
    pub publishers: usize,
    /// Publishing time; zero holds the connections idle for `hold`.
    pub duration: Duration,
    pub hold: Duration,
    pub drain: Duration,
    pub settle: Duration,
    pub connect_timeout: Duration,
    pub threads: usize,
    pub sources: usize,
    pub connect_concurrency: usize,
    pub max_messages: usize,
}

/// State every thread of the run shares.
pub struct Shared {
    pub target: Target,
    pub transport: Transport,
    pub addr: SocketAddr,
    pub host: String,
    start: Instant,
    counts: Box<[AtomicU32]>,
    expected: Box<[AtomicU32]>,
    /// Per message, how many microseconds after its scheduled time (at a
    /// fixed rate) it was sent: the time a server made the publisher wait.
    late: Box<[AtomicU32]>,
    pub ready: AtomicUsize,
    failed: AtomicUsize,
    dropped: AtomicUsize,
    publishing_done: AtomicBool,
    received: AtomicU64,
    progress: Notify,
    errors: Mutex<Vec<String>>,
}

impl Shared {
    /// Microseconds since the run started (the clock every payload carries).
    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// How late message `seq` was sent (0 without a fixed rate).
    pub fn late_us(&self, seq: u64) -> u64 {
        self.late
            .get(seq as usize)
            .map_or(0, |l| u64::from(l.load(Ordering::Relaxed)))
    }

    pub fn delivered(&self, seq: u64) {
        self.received.fetch_add(1, Ordering::Relaxed);
        let Some(c) = self.counts.get(seq as usize) else {
            return;
        };
        let n = c.fetch_add(1, Ordering::Relaxed) + 1;
        if n == self.expected[seq as usize].load(Ordering::Relaxed) {
            self.progress.notify_one();
        }
    }

    fn note(&self, e: String) {
        let mut errs = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if errs.len() < 5 {
            errs.push(e);
        }
    }

    /// A subscriber could not connect or subscribe.
    pub fn fail(&self, e: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.note(e);
    }

    /// A subscriber's connection ended before the run did.
    pub fn drop_conn(&self, e: String) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.note(e);
    }
}

/// What one load-generator thread measured.
pub struct ThreadStats {
    pub deliveries: u64,
    /// From the moment the message was sent.
    pub latency: Histogram<u64>,
    /// From the moment the message was due at the fixed rate (coordinated
    /// omission corrected: time a server kept the publisher waiting counts).
    pub scheduled: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 minutes, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// The result of a run, one JSON object.
#[derive(Debug, Serialize)]
pub struct Report {
    pub label: String,
    pub target: Target,
    pub transport: Transport,
    pub subs: usize,
    pub topics: Topics,
    pub rate: f64,
    pub window: usize,
    pub size: usize,
    pub publishers: usize,
    pub duration_s: f64,
    pub connected: usize,
    pub connect_errors: usize,
    pub dropped: usize,
    pub messages: u64,
    pub publish_errors: u64,
    pub publishes_per_s: f64,
    pub publish_p50_ms: f64,
    pub publish_p99_ms: f64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub deliveries_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Latency from the time each message was due at the fixed rate rather
    /// than the time it was sent (coordinated omission corrected): a server
    /// that accepts fewer messages than the rate delays the rest, and that
    /// wait is part of what a publishing application sees. Equal to the
    /// plain figures when every publish went out on time, or without a rate.
    pub sched_p50_ms: f64,
    pub sched_p99_ms: f64,
    pub sched_max_ms: f64,
    pub rss_before_kib: u64,
    pub rss_connected_kib: u64,
    pub rss_end_kib: u64,
    pub bytes_per_conn: f64,
    pub server_cpu_pct: f64,
    pub loadgen_cpu_pct: f64,
    pub errors: Vec<String>,
}

fn source_ips(n: usize) -> Vec<IpAddr> {
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
fn run_prefix() -> String {
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
    }
}

/// Runs `plan` and reports.
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
    let cap = plan.max_messages + 1;
    let shared = Arc::new(Shared {
        target: plan.target,
        transport: plan.transport,
        addr: plan.addr,
        host: plan.addr.to_string(),
        start: Instant::now(),
        counts: (0..cap).map(|_| AtomicU32::new(0)).collect(),
        expected: (0..cap).map(|_| AtomicU32::new(0)).collect(),
        late: (0..cap).map(|_| AtomicU32::new(0)).collect(),
        ready: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        dropped: AtomicUsize::new(0),
        publishing_done: AtomicBool::new(false),
        received: AtomicU64::new(0),
        progress: Notify::new(),
        errors: Mutex::new(Vec::new()),
    });
    let server_pid = plan.server_pid;
    let server_pids = move || server_pid.map(procfs::tree).unwrap_or_default();
    let rss_before = procfs::rss_kib(&server_pids());
    let (stop_tx, stop_rx) = watch::channel(false);
    let prefix = run_prefix();

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

    let mut expected = 0u64;
    let mut lost = 0u64;
    let mut dups = 0u64;
    for seq in 1..=out.messages.min(plan.max_messages as u64) as usize {
        let e = u64::from(shared.expected[seq].load(Ordering::Relaxed));
        let c = u64::from(shared.counts[seq].load(Ordering::Relaxed));
        expected += e;
        lost += e.saturating_sub(c);
        dups += c.saturating_sub(e);
    }
    let ms = |h: &Histogram<u64>, q: f64| {
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(q) as f64 / 1000.0
        }
    };
    let connected = shared.ready.load(Ordering::Relaxed);
    let errors = shared
        .errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(Report {
        label: plan.label.clone(),
        target: plan.target,
        transport: plan.transport,
        subs: plan.subs,
        topics: plan.topics,
        rate: plan.rate,
        window: plan.window,
        size: plan.size,
        publishers: plan.publishers,
        duration_s: out.elapsed,
        connected,
        connect_errors: shared.failed.load(Ordering::Relaxed),
        dropped: shared.dropped.load(Ordering::Relaxed),
        messages: out.messages,
        publish_errors: out.publish_errors,
        publishes_per_s: if out.publish_elapsed > 0.0 {
            out.messages as f64 / out.publish_elapsed
        } else {
            0.0
        },
        publish_p50_ms: ms(&out.publish_latency, 0.5),
        publish_p99_ms: ms(&out.publish_latency, 0.99),
        expected,
        received: deliveries,
        lost,
        duplicates: dups,
        deliveries_per_s: if out.elapsed > 0.0 {
            deliveries as f64 / out.elapsed
        } else {
            0.0
        },
        p50_ms: ms(&latency, 0.5),
        p90_ms: ms(&latency, 0.9),
        p99_ms: ms(&latency, 0.99),
        max_ms: if latency.is_empty() {
            0.0
        } else {
            latency.max() as f64 / 1000.0
        },
        sched_p50_ms: ms(&scheduled, 0.5),
        sched_p99_ms: ms(&scheduled, 0.99),
        sched_max_ms: if scheduled.is_empty() {
            0.0
        } else {
            scheduled.max() as f64 / 1000.0
        },
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
        errors,
    })
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
    let cpu0 = (
        procfs::cpu_seconds(&server_pids()),
        procfs::cpu_seconds(&me),
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
        // Drain: wait until every expected delivery arrived, or the drain time passed.
        let expected: u64 = (1..=messages as usize)
            .map(|s| u64::from(shared.expected[s].load(Ordering::Relaxed)))
            .sum();
        let drain_until = Instant::now() + plan.drain;
        let mut last = shared.received.load(Ordering::Relaxed);
        let mut last_change = Instant::now();
        while Instant::now() < drain_until {
            let r = shared.received.load(Ordering::Relaxed);
            if r >= expected {
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
        // The rate counts up to the last delivery, not the idle tail of the drain.
        elapsed = if last_change.elapsed() > Duration::from_millis(50) {
            (last_change - t0).as_secs_f64()
        } else {
            t0.elapsed().as_secs_f64()
        };
    }
    let wall = t0.elapsed().as_secs_f64().max(1e-9);
    let cpu1 = (
        procfs::cpu_seconds(&server_pids()),
        procfs::cpu_seconds(&me),
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
    })
}

struct PublisherResult {
    errors: u64,
    latency: Histogram<u64>,
}

/// Publisher `j`: one keep-alive connection, one request at a time.
async fn publisher(
    plan: Arc<Plan>,
    prefix: String,
    shared: Arc<Shared>,
    next_seq: Arc<AtomicU64>,
    j: usize,
    ready: usize,
    stop_at: Instant,
) -> Result<PublisherResult> {
    let mut stream = subscriber::connect(IpAddr::V4(Ipv4Addr::LOCALHOST), plan.pub_addr)
        .await
        .context("publisher connect")?;
    let host = plan.pub_addr.to_string();
    let mut out = PublisherResult {
        errors: 0,
        latency: histogram(),
    };
    let per_pub_rate = plan.rate / plan.publishers.max(1) as f64;
    let mut interval = (per_pub_rate > 0.0).then(|| {
        let period = Duration::from_secs_f64(1.0 / per_pub_rate);
        // Spread the publishers over the period.
        let offset = period.mul_f64(j as f64 / plan.publishers.max(1) as f64);
        let mut i = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        i
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // When this message is due: with a fixed rate, its tick (a server
        // that answers slowly makes later ticks fire late, in a burst).
        let due = match interval.as_mut() {
            Some(i) => Some(i.tick().await.into_std()),
            None => None,
        };
        if Instant::now() >= stop_at {
            break;
        }
        let seq = next_seq.fetch_add(1, Ordering::Relaxed);
        if seq as usize > plan.max_messages {
            break;
        }
        let (topic, expect) = match plan.topics {
            Topics::Shared => (format!("{prefix}-bench"), ready),
            Topics::OwnShared if seq.checked_rem(plan.shared_every.max(1)) == Some(0) => {
                (format!("{prefix}-bench"), ready)
            }
            Topics::OwnShared => (
                format!("{prefix}-own-{}", seq as usize % plan.subs.max(1)),
                1,
            ),
            Topics::PerPublisher => {
                let p = plan.publishers.max(1);
                let subs = (0..plan.subs).filter(|i| i % p == j).count();
                (format!("{prefix}-p-{j}"), subs)
            }
        };
        if plan.rate == 0.0 && plan.window > 0 && seq as usize > plan.window {
            // Keep at most `window` messages in flight.
            let old = seq as usize - plan.window;
            let wait_until = Instant::now() + Duration::from_secs(2);
            loop {
                let e = shared.expected[old].load(Ordering::Relaxed);
                if shared.counts[old].load(Ordering::Relaxed) >= e || Instant::now() > wait_until {
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(10), shared.progress.notified())
                    .await;
            }
        }
        shared.expected[seq as usize].store(expect as u32, Ordering::Relaxed);
        let sent = shared.now_us();
        if let Some(due) = due {
            let due_us = due.saturating_duration_since(shared.start).as_micros() as u64;
            let late = sent.saturating_sub(due_us).min(u64::from(u32::MAX)) as u32;
            shared.late[seq as usize].store(late, Ordering::Relaxed);
        }
        let payload = wire::payload(seq, sent, plan.size);
        let req = plan.target.publish_request(&host, &topic, &payload);
        stream.write_all(&req).await.context("publish write")?;
        let (status, close) = read_response(&mut stream, &mut buf).await?;
        if close {
            // Pushpin's publish endpoint answers once per connection.
            stream = subscriber::connect(IpAddr::V4(Ipv4Addr::LOCALHOST), plan.pub_addr)
                .await
                .context("publisher reconnect")?;
        }
        out.latency
            .saturating_record(shared.now_us().saturating_sub(sent).max(1));
        if !(200..300).contains(&status) {
            out.errors += 1;
            shared.expected[seq as usize].store(0, Ordering::Relaxed);
            if out.errors <= 3 {
                shared.note(format!("publish answered {status}"));
            }
        }
    }
    Ok(out)
}

/// Reads one whole response (content-length or chunked); returns its status
/// and whether the server closes the connection after it.
async fn read_response(stream: &mut tokio::net::TcpStream, buf: &mut [u8]) -> Result<(u16, bool)> {
    let mut raw: Vec<u8> = Vec::new();
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(buf))
            .await
            .context("publish answer timed out")??;
        if n == 0 {
            bail!("publish connection closed");
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some((h, at)) = wire::parse_head(&raw).map_err(|e| anyhow!(e))? {
            let body = &raw[at..];
            let complete = if h.chunked {
                let mut d = wire::Dechunker::default();
                d.feed(body, |_| {}).map_err(|e| anyhow!(e))?;
                d.done
            } else {
                body.len() >= h.content_length.unwrap_or(0)
            };
            if complete {
                return Ok((h.status, h.close));
            }
        }
    }
}
