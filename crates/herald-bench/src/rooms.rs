//! The rooms mode: N WebSocket clients spread evenly over R rooms (client
//! `i` in room `i mod R`, topic `room/<run>-<room>`), each subscribed to its
//! room and publishing to it on its own socket, as the members of a chat
//! room do.
//!
//! Each client sends `rate × duration` messages on a fixed schedule (message
//! `k` of client `c` is due at `start + (c / N + k) / rate`), with at most
//! one publish unanswered at a time, as the HTTP publishers of the other
//! mode: a server that answers late makes the next messages go out late, and
//! that wait counts in the latency from the scheduled time. Publishing ends
//! when every message went out, or at the latest `duration + drain` after
//! it began (messages still unsent then are reported as `messages` short of
//! `messages_planned`).
//!
//! Every message should reach every member of its room **sender included**
//! (the sender is subscribed to the room, and Herald delivers to it too).
//! Message `k` of client `c` has sequence number `c × per_client + k + 1`
//! in the run's [`Shared`] ledger, so delivery counts, loss and duplicates
//! are exact per message, and its payload carries the `~SEQ~MICROS~` marker
//! the other modes use (plus the sender and `k`, see
//! [`wire::room_payload`]). A publish answered `error` is a refusal: it
//! counts in `publish_errors` and is expected nowhere.
//!
//! The clients speak Herald's WebSocket API, or with [`Protocol::Socketio`]
//! Socket.IO 5 over Engine.IO 4 on a plain WebSocket, to a Socket.IO server
//! that joins each client to the room its handshake names and broadcasts
//! every `msg` event to the room, the sender included
//! (`bench/node/socketio-room.js`). Everything else is the same code:
//! schedule, ledger, accounting and report. Socket.IO answers no event
//! (acknowledgements are opt-in, per emit), so its clients publish on the
//! fixed schedule without waiting, and report no publish round trips.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};

use crate::ledger::{histogram, Shared, ThreadStats};
use crate::procfs;
use crate::run::{drain, run_prefix, source_ips, Latencies, Mode, Report, Topics};
use crate::subscriber::{self, read_now, ws_messages, Counter, Step};
use crate::target::{Target, Transport};
use crate::wire::{self, MarkerScanner, SioPacket};

/// The wire protocol the rooms mode's clients speak.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Herald's WebSocket API (`/v1/ws`): `subscribe` to the room's topic,
    /// `publish` to it with a `ref`, one publish unanswered at a time.
    #[default]
    Herald,
    /// Socket.IO 5 over Engine.IO 4, straight on the WebSocket transport
    /// (`/socket.io/?EIO=4&transport=websocket&room=ROOM`): wait for the
    /// open packet `0{...}`, connect to the main namespace (`40`, answered
    /// `40{"sid":...}`), answer pings `2` with `3`, emit
    /// `42["msg","PAYLOAD"]`, receive the room's `42["msg","PAYLOAD"]`.
    /// No answer per event: messages go out on the schedule alone.
    Socketio,
}

impl Protocol {
    /// Whether the server answers each publish (so that the client waits
    /// for the answer before the next one).
    pub fn answers_publishes(self) -> bool {
        self == Protocol::Herald
    }
}

/// What to run in the rooms mode.
#[derive(Clone, Debug)]
pub struct RoomsPlan {
    /// Free text copied into the report to name the scenario.
    pub label: String,
    /// The server under test (Herald: the only target with client publishes).
    /// With [`Protocol::Socketio`] unused (and reported as given).
    pub target: Target,
    /// The wire protocol the clients speak.
    pub protocol: Protocol,
    /// The server's WebSocket address; must be a loopback address.
    pub addr: SocketAddr,
    /// The server's process id, for RSS and CPU (its children count too).
    pub server_pid: Option<u32>,
    /// WebSocket clients, each a member of one room and a publisher.
    pub clients: usize,
    /// Rooms the clients are spread over (client `i` in room `i mod rooms`).
    pub rooms: usize,
    /// Messages per second each client publishes (more than 0).
    pub rate: f64,
    /// Payload bytes per message, marker included.
    pub size: usize,
    /// Publishing time: each client sends `rate × duration` messages.
    pub duration: Duration,
    /// Most time to wait for deliveries and answers after publishing (the
    /// wait also ends after 2 seconds without a new delivery); also how long
    /// messages a slow server delayed may still go out after `duration`.
    pub drain: Duration,
    /// Time between the last connection and the memory reading.
    pub settle: Duration,
    /// Most time to wait for every client to connect and subscribe; the run
    /// goes on with those that did and notes the shortfall.
    pub connect_timeout: Duration,
    /// Load-generator threads the clients are spread over.
    pub threads: usize,
    /// Source addresses 127.0.0.2, 127.0.0.3, ... to spread connections over.
    pub sources: usize,
    /// Connections being opened at once, over all threads.
    pub connect_concurrency: usize,
    /// The most messages a run may publish (the per-message counters are this long).
    pub max_messages: usize,
    /// Header lines (each ending in CRLF) every WebSocket handshake carries:
    /// the credential (see [`crate::target::auth_headers`]); empty for none.
    pub headers: String,
}

impl RoomsPlan {
    /// Messages each client publishes: `rate × duration`, rounded.
    pub fn per_client(&self) -> u64 {
        (self.rate * self.duration.as_secs_f64()).round() as u64
    }

    /// How long after the start a message may still go out: `duration`,
    /// plus `drain` for the messages a slow server made late.
    pub fn publish_limit(&self) -> Duration {
        self.duration + self.drain
    }
}

/// When publishing starts, and who was in each room then.
#[derive(Clone, Debug)]
struct Start {
    at: Instant,
    /// Per room, its members that had subscribed before the start: what each
    /// message to the room should reach.
    members: Arc<[u32]>,
}

/// Who subscribed before the start. One lock, so that a member is either
/// counted in the start's snapshot or refused.
#[derive(Debug)]
struct Registry {
    started: bool,
    members: Vec<u32>,
}

/// The state the clients of a run share beyond the ledger.
struct Ctx {
    plan: RoomsPlan,
    prefix: String,
    per_client: u64,
    period: Duration,
    registry: Mutex<Registry>,
    /// Publishes sent.
    sent: AtomicU64,
    /// Publishes sent and not answered yet.
    outstanding: AtomicUsize,
    /// Clients done publishing (every message sent, the time up, or gone).
    finished: AtomicUsize,
}

impl Ctx {
    fn topic(&self, room: usize) -> String {
        format!("room/{}-{room}", self.prefix)
    }
}

/// The publishing side of one load-generator thread.
#[derive(Debug)]
struct PubStats {
    /// Publish round trips in microseconds: sent to `published` read.
    latency: Histogram<u64>,
    /// Publishes answered with an `error` message.
    errors: u64,
    /// Publishes still unanswered when the client stopped.
    unanswered: u64,
}

/// Runs `plan` and reports in the shape of the other mode's [`Report`]
/// (`subs` and `publishers` are the clients, `window` is 1: one publish
/// unanswered per client at most; 0 with Socket.IO, which answers none).
///
/// Fails before connecting if the target has no client publishes (Herald's
/// protocol), the address is not loopback, the rate is not positive, or the messages do not
/// fit `max_messages`; fails after if a load-generator thread panicked.
/// Connection errors, drops, refusals and loss are reported, not errors.
pub fn run(plan: RoomsPlan) -> Result<Report> {
    if plan.protocol == Protocol::Herald && plan.target.ws_publish_message("t", "", 0).is_none() {
        bail!("{} has no client publishes over WebSocket", plan.target);
    }
    if !plan.addr.ip().is_loopback() {
        bail!(
            "the rooms mode connects to loopback addresses only, not {}",
            plan.addr
        );
    }
    if !(plan.rate > 0.0 && plan.rate.is_finite()) {
        bail!("the rooms mode needs a positive --rate (messages per second per client)");
    }
    if plan.clients == 0 || plan.rooms == 0 || plan.rooms > plan.clients {
        bail!(
            "give at least one client per room ({} clients, {} rooms)",
            plan.clients,
            plan.rooms
        );
    }
    let per_client = plan.per_client();
    let total = per_client
        .checked_mul(plan.clients as u64)
        .filter(|&t| t <= plan.max_messages as u64)
        .ok_or_else(|| {
            anyhow!(
                "{} clients × {per_client} messages exceed --max-messages {}",
                plan.clients,
                plan.max_messages
            )
        })?;
    let nofile = procfs::raise_nofile();
    if (plan.clients + 64) as u64 > nofile {
        bail!(
            "{} clients need more than the {nofile} open files this process may hold",
            plan.clients
        );
    }
    let shared = Arc::new(
        Shared::new(plan.target, Transport::Ws, plan.addr, total as usize)
            .with_headers(plan.headers.clone()),
    );
    let server_pid = plan.server_pid;
    let server_pids = move || server_pid.map(procfs::tree).unwrap_or_default();
    let rss_before = procfs::rss_kib(&server_pids());
    let ctx = Arc::new(Ctx {
        prefix: run_prefix(),
        per_client,
        period: Duration::from_secs_f64(1.0 / plan.rate),
        registry: Mutex::new(Registry {
            started: false,
            members: vec![0; plan.rooms],
        }),
        sent: AtomicU64::new(0),
        outstanding: AtomicUsize::new(0),
        finished: AtomicUsize::new(0),
        plan,
    });
    let plan = &ctx.plan;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (start_tx, start_rx) = watch::channel::<Option<Start>>(None);

    let sources = source_ips(plan.sources);
    let threads = plan.threads.max(1);
    let mut handles = Vec::new();
    for t in 0..threads {
        let (ctx, shared) = (ctx.clone(), shared.clone());
        let (stop, start) = (stop_rx.clone(), start_rx.clone());
        let mine: Vec<(usize, IpAddr)> = (t..plan.clients)
            .step_by(threads)
            .map(|c| (c, sources[c % sources.len()]))
            .collect();
        let concurrency = (plan.connect_concurrency / threads).max(1);
        handles.push(std::thread::spawn(
            move || -> Result<(ThreadStats, PubStats)> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let local = tokio::task::LocalSet::new();
                let stats = Rc::new(RefCell::new(ThreadStats {
                    deliveries: 0,
                    latency: histogram(),
                    scheduled: histogram(),
                }));
                let pubs = Rc::new(RefCell::new(PubStats {
                    latency: histogram(),
                    errors: 0,
                    unanswered: 0,
                }));
                let sem = Rc::new(Semaphore::new(concurrency));
                local.block_on(&rt, async {
                    let mut tasks = Vec::new();
                    for (c, src) in mine {
                        let client = Client {
                            ctx: ctx.clone(),
                            shared: shared.clone(),
                            stats: stats.clone(),
                            pubs: pubs.clone(),
                            c,
                        };
                        tasks.push(tokio::task::spawn_local(client.run(
                            sem.clone(),
                            start.clone(),
                            stop.clone(),
                            src,
                        )));
                    }
                    for t in tasks {
                        let _ = t.await;
                    }
                });
                drop(local);
                let stats = Rc::try_unwrap(stats)
                    .map(RefCell::into_inner)
                    .map_err(|_| anyhow!("stats still shared"))?;
                let pubs = Rc::try_unwrap(pubs)
                    .map(RefCell::into_inner)
                    .map_err(|_| anyhow!("stats still shared"))?;
                Ok((stats, pubs))
            },
        ));
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outcome = rt.block_on(control(&ctx, &shared, &start_tx, &server_pids));
    stop_tx.send_replace(true);
    let mut deliveries = 0;
    let mut latency = histogram();
    let mut scheduled = histogram();
    let mut publish_latency = histogram();
    let (mut publish_errors, mut unanswered) = (0, 0);
    for h in handles {
        let (st, ps) = h
            .join()
            .map_err(|_| anyhow!("a load-generator thread panicked"))??;
        deliveries += st.deliveries;
        latency.add(&st.latency).map_err(|e| anyhow!("{e:?}"))?;
        scheduled.add(&st.scheduled).map_err(|e| anyhow!("{e:?}"))?;
        publish_latency
            .add(&ps.latency)
            .map_err(|e| anyhow!("{e:?}"))?;
        publish_errors += ps.errors;
        unanswered += ps.unanswered;
    }
    let out = outcome?;
    let messages = ctx.sent.load(Ordering::Relaxed);
    let tally = shared.tally(total);
    let (lat, sched, publ) = (
        Latencies::of(&latency),
        Latencies::of(&scheduled),
        Latencies::of(&publish_latency),
    );
    let connected = shared.ready.load(Ordering::Relaxed);
    let errors = shared
        .errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let per_s = |n: f64, s: f64| if s > 0.0 { n / s } else { 0.0 };
    Ok(Report {
        label: plan.label.clone(),
        mode: Mode::Rooms,
        target: plan.target,
        protocol: Some(plan.protocol),
        transport: Transport::Ws,
        subs: plan.clients,
        topics: Topics::Rooms,
        rooms: plan.rooms,
        rate: plan.rate,
        // One publish unanswered per client; Socket.IO answers none: no limit.
        window: usize::from(plan.protocol.answers_publishes()),
        size: plan.size,
        publishers: plan.clients,
        duration_s: out.elapsed,
        connected,
        connect_errors: shared.failed.load(Ordering::Relaxed),
        dropped: shared.dropped.load(Ordering::Relaxed),
        messages,
        messages_planned: total,
        publish_errors,
        publish_unanswered: unanswered,
        publishes_per_s: per_s(messages as f64, out.publish_elapsed),
        publish_p50_ms: publ.p50,
        publish_p99_ms: publ.p99,
        expected: tally.expected,
        received: deliveries,
        lost: tally.lost,
        duplicates: tally.duplicates,
        deliveries_per_s: per_s(deliveries as f64, out.elapsed),
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
        backend_cpu_pct: 0.0,
        errors,
    })
}

struct Outcome {
    publish_elapsed: f64,
    elapsed: f64,
    rss_connected: u64,
    rss_end: u64,
    server_cpu_pct: f64,
    loadgen_cpu_pct: f64,
}

/// Waits for the clients, starts publishing, waits for it to end, drains.
async fn control(
    ctx: &Ctx,
    shared: &Shared,
    start_tx: &watch::Sender<Option<Start>>,
    server_pids: &dyn Fn() -> Vec<u32>,
) -> Result<Outcome> {
    let plan = &ctx.plan;
    let deadline = Instant::now() + plan.connect_timeout;
    loop {
        let done = shared.ready.load(Ordering::Relaxed)
            + shared.failed.load(Ordering::Relaxed)
            + shared.dropped.load(Ordering::Relaxed);
        if done >= plan.clients {
            break;
        }
        if Instant::now() > deadline {
            shared.note(format!(
                "only {} of {} clients ready after {:?}",
                shared.ready.load(Ordering::Relaxed),
                plan.clients,
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

    // Start: from here on no client joins; each learns its room's size.
    let members: Arc<[u32]> = {
        let mut reg = ctx.registry.lock().unwrap_or_else(|p| p.into_inner());
        reg.started = true;
        reg.members.clone().into()
    };
    let publishing: usize = members.iter().map(|&m| m as usize).sum();
    // A little ahead, so that every thread has the start before the first message is due.
    let t0 = Instant::now() + Duration::from_millis(20);
    start_tx.send_replace(Some(Start { at: t0, members }));
    let stop_publishing = t0 + plan.publish_limit();
    while ctx.finished.load(Ordering::Relaxed) < publishing && Instant::now() < stop_publishing {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let publish_elapsed = t0.elapsed().as_secs_f64();
    // Clients check the time before each send: past this point none starts one.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let expected = shared.tally(ctx.per_client * plan.clients as u64).expected;
    let elapsed = drain(shared, expected, t0, plan.drain, || {
        ctx.outstanding.load(Ordering::Relaxed) == 0
    })
    .await;
    let wall = t0.elapsed().as_secs_f64().max(1e-9);
    let cpu1 = (
        procfs::cpu_seconds(&server_pids()),
        procfs::cpu_seconds(&me),
    );
    Ok(Outcome {
        publish_elapsed,
        elapsed,
        rss_connected,
        rss_end: procfs::rss_kib(&server_pids()),
        server_cpu_pct: 100.0 * (cpu1.0 - cpu0.0) / wall,
        loadgen_cpu_pct: 100.0 * (cpu1.1 - cpu0.1) / wall,
    })
}

/// One client: a member of room `c mod rooms` and a publisher to it.
struct Client {
    ctx: Arc<Ctx>,
    shared: Arc<Shared>,
    stats: Rc<RefCell<ThreadStats>>,
    pubs: Rc<RefCell<PubStats>>,
    c: usize,
}

/// A publish sent and not answered yet.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    seq: u64,
    sent_us: u64,
}

/// The connection's byte-level state.
#[derive(Default)]
struct Conn {
    /// Bytes read and not parsed yet (an incomplete frame).
    pending: Vec<u8>,
    /// Bytes to write (pongs).
    out: Vec<u8>,
    scan: MarkerScanner,
}

impl Client {
    fn room(&self) -> usize {
        self.c % self.ctx.plan.rooms
    }

    /// Connects, subscribes, publishes on schedule and counts deliveries
    /// until `stop`. Counts itself ready, failed or dropped.
    async fn run(
        self,
        connecting: Rc<Semaphore>,
        mut start: watch::Receiver<Option<Start>>,
        mut stop: watch::Receiver<bool>,
        source: IpAddr,
    ) {
        let mut conn = Conn::default();
        let permit = connecting.acquire().await;
        let opened = tokio::time::timeout(
            self.ctx.plan.connect_timeout,
            self.open(source, &mut conn, &mut stop),
        )
        .await
        .unwrap_or_else(|_| Err(anyhow!("no subscribed answer in time")));
        drop(permit);
        let mut stream = match opened {
            Ok(Some(s)) => s,
            Ok(None) => return, // stopped while connecting
            Err(e) => {
                self.shared.fail(format!("{e:#}"));
                return;
            }
        };
        {
            let mut reg = self.ctx.registry.lock().unwrap_or_else(|p| p.into_inner());
            if reg.started {
                drop(reg);
                self.shared.fail("subscribed after publishing began".into());
                return;
            }
            reg.members[self.room()] += 1;
            self.shared.ready.fetch_add(1, Ordering::Relaxed);
        }
        let mut in_flight = None;
        let mut finished = false;
        let r = self
            .session(
                &mut stream,
                &mut conn,
                &mut start,
                &mut stop,
                &mut in_flight,
                &mut finished,
            )
            .await;
        // However the session ended (stopped, closed, failed): done publishing.
        if !finished {
            self.ctx.finished.fetch_add(1, Ordering::Relaxed);
        }
        if in_flight.is_some() {
            self.ctx.outstanding.fetch_sub(1, Ordering::Relaxed);
            self.pubs.borrow_mut().unanswered += 1;
        }
        match r {
            Ok(true) => {}
            Ok(false) => self.shared.drop_conn("server closed the connection".into()),
            Err(e) => self.shared.drop_conn(format!("{e:#}")),
        }
    }

    /// Opens the WebSocket and subscribes to the room. `Ok(None)`: stopped.
    async fn open(
        &self,
        source: IpAddr,
        conn: &mut Conn,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Option<TcpStream>> {
        let sh = &self.shared;
        let mut stream = subscriber::connect(source, sh.addr).await?;
        let topic = self.ctx.topic(self.room());
        let protocol = self.ctx.plan.protocol;
        let path = match protocol {
            Protocol::Herald => sh.target.stream_path(Transport::Ws, &[]),
            Protocol::Socketio => wire::sio_path(&topic),
        };
        stream
            .write_all(subscriber::ws_upgrade_request(&path, &sh.host, &sh.headers).as_bytes())
            .await?;
        let mut upgraded = false;
        let mut subscribed = false;
        while !subscribed {
            let mut just_upgraded = false;
            let step = wait_read(&stream, stop, |mut bytes| {
                if !upgraded {
                    conn.pending.extend_from_slice(bytes);
                    let Some((h, n)) = wire::parse_head(&conn.pending).map_err(|e| anyhow!(e))?
                    else {
                        return Ok(());
                    };
                    if h.status != 101 {
                        bail!("upgrade answered {}", h.status);
                    }
                    conn.pending.drain(..n);
                    upgraded = true;
                    just_upgraded = true;
                    // Frames may have come with the head (Engine.IO's open
                    // packet does): parse what is left now.
                    bytes = &[];
                }
                let mut reply = Vec::new();
                ws_messages(&mut conn.pending, bytes, &mut conn.out, |p| {
                    subscribed |= joined(protocol, p, &mut reply)?;
                    Ok(())
                })?;
                conn.out.extend_from_slice(&reply);
                Ok(())
            })
            .await?;
            if just_upgraded && protocol == Protocol::Herald {
                for m in sh
                    .target
                    .ws_subscribe_messages(std::slice::from_ref(&topic))
                {
                    conn.out
                        .extend_from_slice(&wire::ws_client_frame(1, m.as_bytes()));
                }
            }
            flush(&mut stream, &mut conn.out).await?;
            match step {
                None => return Ok(None),
                Some(Step::Closed) => bail!("server closed the connection while subscribing"),
                Some(Step::More) => {}
            }
        }
        Ok(Some(stream))
    }

    /// Publishes on schedule and counts what arrives until `stop`:
    /// `Ok(true)` when stopped, `Ok(false)` when the server closed.
    async fn session(
        &self,
        stream: &mut TcpStream,
        conn: &mut Conn,
        start: &mut watch::Receiver<Option<Start>>,
        stop: &mut watch::Receiver<bool>,
        in_flight: &mut Option<InFlight>,
        finished: &mut bool,
    ) -> Result<bool> {
        let ctx = &*self.ctx;
        let plan = &ctx.plan;
        let offset = ctx.period.mul_f64(self.c as f64 / plan.clients as f64);
        let mut begun: Option<Start> = None;
        let mut k = 0u64;
        let counter = Counter {
            shared: &self.shared,
            stats: &self.stats,
        };
        loop {
            if *stop.borrow() {
                return Ok(true);
            }
            // The next message, when one may go out.
            let mut due = None;
            if let (Some(s), false) = (&begun, *finished) {
                let end = s.at + plan.publish_limit();
                if k >= ctx.per_client || Instant::now() >= end {
                    *finished = true;
                    ctx.finished.fetch_add(1, Ordering::Relaxed);
                } else if in_flight.is_none() {
                    due = Some(s.at + offset + ctx.period.mul_f64(k as f64));
                }
            }
            let sleep_until = due.map(tokio::time::Instant::from_std);
            tokio::select! {
                r = stream.readable() => {
                    r?;
                    let mut reply = Vec::new();
                    let step = read_now(stream, &mut |bytes: &[u8]| {
                        ws_messages(&mut conn.pending, bytes, &mut conn.out, |p| {
                            if counter.bytes(&mut conn.scan, p) == 0 {
                                self.answer(p, in_flight, &mut reply)?;
                            }
                            Ok(())
                        })
                    })?;
                    conn.out.extend_from_slice(&reply);
                    match step {
                        Some(Step::Closed) => return Ok(false),
                        Some(Step::More) | None => {}
                    }
                    flush(stream, &mut conn.out).await?;
                }
                () = sleep(sleep_until), if sleep_until.is_some() => {
                    let (Some(s), Some(due)) = (&begun, due) else { continue };
                    if Instant::now() >= s.at + plan.publish_limit() {
                        continue; // the time is up: the top of the loop finishes
                    }
                    let room = self.room();
                    let seq = self.c as u64 * ctx.per_client + k + 1;
                    k += 1;
                    self.publish(stream, seq, k - 1, s.members[room], due, in_flight).await?;
                }
                r = start.changed(), if begun.is_none() => {
                    if r.is_err() {
                        return Ok(true);
                    }
                    begun = start.borrow().clone();
                }
                _ = stop.changed() => return Ok(true),
            }
        }
    }

    /// Sends message `k` (sequence number `seq`) to the room, expected by
    /// its `members`; `due` is when the schedule wanted it out. The message
    /// is in flight from before the write, so that a failed write leaves it
    /// counted as sent and unanswered.
    async fn publish(
        &self,
        stream: &mut TcpStream,
        seq: u64,
        k: u64,
        members: u32,
        due: Instant,
        in_flight: &mut Option<InFlight>,
    ) -> Result<()> {
        let sh = &*self.shared;
        let i = seq as usize;
        sh.expected[i].store(members, Ordering::Relaxed);
        let sent_us = sh.now_us();
        let due_us = due.saturating_duration_since(sh.start).as_micros() as u64;
        let late = sent_us.saturating_sub(due_us).min(u64::from(u32::MAX)) as u32;
        sh.late[i].store(late, Ordering::Relaxed);
        let payload = wire::room_payload(seq, sent_us, self.c, k, self.ctx.plan.size);
        let protocol = self.ctx.plan.protocol;
        let msg = match protocol {
            Protocol::Herald => sh
                .target
                .ws_publish_message(&self.ctx.topic(self.room()), &payload, seq)
                .ok_or_else(|| anyhow!("{} has no client publishes", sh.target))?,
            Protocol::Socketio => wire::sio_event("msg", &payload),
        };
        let frame = wire::ws_client_frame(1, msg.as_bytes());
        self.ctx.sent.fetch_add(1, Ordering::Relaxed);
        if protocol.answers_publishes() {
            self.ctx.outstanding.fetch_add(1, Ordering::Relaxed);
            *in_flight = Some(InFlight { seq, sent_us });
        }
        stream.write_all(&frame).await.context("publish write")
    }

    /// A server message without a marker. Herald: the answer to the
    /// publish in flight (`published`, or an `error` refusing it), or
    /// something else, which is ignored. Socket.IO: a ping, answered in
    /// `reply`; the end of the session, an error; anything else ignored.
    fn answer(
        &self,
        payload: &[u8],
        in_flight: &mut Option<InFlight>,
        reply: &mut Vec<u8>,
    ) -> Result<()> {
        match self.ctx.plan.protocol {
            Protocol::Herald => self.herald_answer(payload, in_flight),
            Protocol::Socketio => match wire::sio_packet(payload) {
                SioPacket::Ping => reply.extend_from_slice(&wire::ws_client_frame(1, b"3")),
                SioPacket::Close | SioPacket::Disconnect => {
                    bail!("the Socket.IO server ended the session")
                }
                _ => {}
            },
        }
        Ok(())
    }

    /// [`Client::answer`] for Herald's protocol.
    fn herald_answer(&self, payload: &[u8], in_flight: &mut Option<InFlight>) {
        let Ok(v) = serde_json::from_slice::<Value>(payload) else {
            self.shared.note(format!(
                "unreadable server message: {}",
                String::from_utf8_lossy(&payload[..payload.len().min(200)])
            ));
            return;
        };
        let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
        if kind != "published" && kind != "error" {
            return;
        }
        let reference = v.get("ref").and_then(Value::as_u64);
        let Some(f) = *in_flight else {
            self.shared
                .note(format!("answer with no publish in flight: {v}"));
            return;
        };
        // An error without a ref (a connection-wide refusal) answers the publish in flight.
        if reference.is_some_and(|r| r != f.seq) {
            self.shared
                .note(format!("answer to {reference:?}, {} in flight", f.seq));
            return;
        }
        *in_flight = None;
        self.ctx.outstanding.fetch_sub(1, Ordering::Relaxed);
        let mut pubs = self.pubs.borrow_mut();
        if kind == "published" {
            pubs.latency
                .saturating_record(self.shared.now_us().saturating_sub(f.sent_us).max(1));
        } else {
            pubs.errors += 1;
            self.shared.expected[f.seq as usize].store(0, Ordering::Relaxed);
            if pubs.errors <= 3 {
                self.shared.note(format!("publish refused: {v}"));
            }
        }
    }
}

/// Sleeps until `at` (forever without one; the caller guards that branch).
async fn sleep(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Waits until `stream` is readable (or `stop`) and reads once. `None`: stopped.
async fn wait_read(
    stream: &TcpStream,
    stop: &mut watch::Receiver<bool>,
    mut f: impl FnMut(&[u8]) -> Result<()>,
) -> Result<Option<Step>> {
    loop {
        if *stop.borrow() {
            return Ok(None);
        }
        tokio::select! {
            r = stream.readable() => r?,
            _ = stop.changed() => return Ok(None),
        }
        if let Some(step) = read_now(stream, &mut f)? {
            return Ok(Some(step));
        }
    }
}

async fn flush(stream: &mut TcpStream, out: &mut Vec<u8>) -> Result<()> {
    if !out.is_empty() {
        stream.write_all(out).await?;
        out.clear();
    }
    Ok(())
}

/// Reads server message `p` while joining the room: whether it says the
/// client is in (Herald: `subscribed`; Socket.IO: the CONNECT answer), with
/// what to send back appended to `reply` (Socket.IO: `40` to the open
/// packet, `3` to a ping). A refusal is an error.
fn joined(protocol: Protocol, p: &[u8], reply: &mut Vec<u8>) -> Result<bool> {
    match protocol {
        Protocol::Herald => match message_type(p).as_deref() {
            Some("subscribed") => Ok(true),
            Some("error") => bail!("subscribe refused: {}", String::from_utf8_lossy(p)),
            _ => Ok(false),
        },
        Protocol::Socketio => match wire::sio_packet(p) {
            SioPacket::Open => {
                reply.extend_from_slice(&wire::ws_client_frame(1, b"40"));
                Ok(false)
            }
            SioPacket::Ping => {
                reply.extend_from_slice(&wire::ws_client_frame(1, b"3"));
                Ok(false)
            }
            SioPacket::Connected => Ok(true),
            SioPacket::ConnectError(j) => {
                bail!("Socket.IO connect refused: {}", String::from_utf8_lossy(j))
            }
            SioPacket::Close | SioPacket::Disconnect => {
                bail!("the Socket.IO server ended the session while connecting")
            }
            _ => Ok(false),
        },
    }
}

/// The `type` of a server message, if it is a JSON object with one.
fn message_type(payload: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    v.get("type")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_types() {
        assert_eq!(
            message_type(br#"{"cursor":"c","topic":"a","type":"subscribed"}"#).as_deref(),
            Some("subscribed")
        );
        assert_eq!(message_type(b"not json"), None);
    }

    #[test]
    fn joining() {
        let mut reply = Vec::new();
        let herald = |p: &[u8], r: &mut Vec<u8>| joined(Protocol::Herald, p, r);
        assert!(!herald(br#"{"type":"event"}"#, &mut reply).unwrap());
        assert!(herald(br#"{"type":"subscribed","topic":"a"}"#, &mut reply).unwrap());
        assert!(herald(br#"{"type":"error","code":"forbidden"}"#, &mut reply).is_err());
        assert!(reply.is_empty());
        let sio = |p: &[u8], r: &mut Vec<u8>| joined(Protocol::Socketio, p, r);
        assert!(!sio(br#"0{"sid":"s","pingInterval":25000}"#, &mut reply).unwrap());
        assert_eq!(reply, wire::ws_client_frame(1, b"40"));
        reply.clear();
        assert!(!sio(b"2", &mut reply).unwrap());
        assert_eq!(reply, wire::ws_client_frame(1, b"3"));
        assert!(sio(br#"40{"sid":"x"}"#, &mut reply).unwrap());
        assert!(sio(br#"44{"message":"no"}"#, &mut reply).is_err());
        assert!(sio(b"41", &mut reply).is_err());
        assert!(Protocol::Herald.answers_publishes());
        assert!(!Protocol::Socketio.answers_publishes());
    }
}
