//! The connects mode: how many new connections a second the server takes,
//! each with its credential checked, and how long each waits for its answer.
//!
//! `clients` connectors share one load-generator thread. Each, over and
//! over: opens a new TCP connection (from the source addresses 127.0.0.2,
//! 127.0.0.3, ... in turn), sends one subscribe request with the run's
//! credential (a session cookie for the connect hook, or a JWT), reads until
//! the answer is known, and closes the connection. On Herald:
//!
//! - SSE (`GET /v1/sse?topic=T`): accepted once the stream's preamble
//!   (`retry:` and the `id:` of its starting cursor) arrived; refused on a
//!   status other than 200, or on a `herald.disconnect` (how Herald refuses
//!   a stream temporarily, a hook that did not answer included).
//! - long polling (`GET /v1/poll?topic=T&timeout=0`): accepted on a whole
//!   `200` answer; refused on any other status.
//!
//! `rate` 0 keeps every connector busy (as many connects a second as the
//! server and the load generator manage, `clients` at a time). A `rate`
//! above 0 schedules attempt `k` at `start + k / rate`, taken by the next
//! free connector: latency is counted from the moment the connection was
//! opened and, corrected for coordinated omission, from the moment the
//! attempt was due.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ledger::histogram;
use crate::procfs;
use crate::run::{run_prefix, source_ips, Latencies, Mode};
use crate::subscriber;
use crate::target::{Target, Transport};
use crate::wire::{self, Dechunker};

/// The most time one attempt may take, connect to answer; past it the
/// attempt counts as failed.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// What to run in the connects mode.
#[derive(Clone, Debug)]
pub struct ConnectsPlan {
    /// Free text copied into the report to name the scenario.
    pub label: String,
    /// The server under test (Herald only).
    pub target: Target,
    /// SSE or long polling.
    pub transport: Transport,
    /// The server's address.
    pub addr: SocketAddr,
    /// The server's process id, for its CPU (its children count too).
    pub server_pid: Option<u32>,
    /// The hook backend's process id, for its CPU.
    pub backend_pid: Option<u32>,
    /// Connectors, each one attempt at a time.
    pub clients: usize,
    /// Attempts per second over all connectors; 0 = as fast as answered.
    pub rate: f64,
    /// How long new attempts start.
    pub duration: Duration,
    /// Source addresses 127.0.0.2, ... the connections are spread over (each
    /// closed connection waits in TIME_WAIT on its address and port).
    pub sources: usize,
    /// Header lines (each ending in CRLF) every request carries: the
    /// credential (see [`crate::target::auth_headers`]).
    pub headers: String,
    /// Put before every topic name of the run.
    pub topic_prefix: String,
}

/// The result of a connects run, printed as one JSON object.
#[derive(Debug, Serialize)]
pub struct ConnectsReport {
    /// The plan's label.
    pub label: String,
    /// Always [`Mode::Connects`].
    pub mode: Mode,
    /// The server under test.
    pub target: Target,
    /// SSE or long polling.
    pub transport: Transport,
    /// Connectors.
    pub clients: usize,
    /// The plan's rate, attempts per second (0 = as fast as answered).
    pub rate: f64,
    /// Seconds from the first attempt to the last answer.
    pub duration_s: f64,
    /// Attempts the fixed rate offers over the duration (0 without a rate).
    pub attempts_planned: u64,
    /// Attempts made.
    pub attempts: u64,
    /// Attempts answered with an open stream or a `200` poll answer.
    pub accepted: u64,
    /// Attempts answered with a refusal (see `refusals`).
    pub refused: u64,
    /// Attempts that got no answer: the connection could not be opened,
    /// failed, closed early, or the answer took over 10 seconds.
    pub failed: u64,
    /// Refusals by kind: the status (`"401"`), or `"disconnect <reason>"`.
    pub refusals: BTreeMap<String, u64>,
    /// Accepted connects per second over `duration_s`.
    pub connects_per_s: f64,
    /// Median time from opening the connection to the accepting answer, ms.
    pub p50_ms: f64,
    /// 90th percentile of the same, ms.
    pub p90_ms: f64,
    /// 99th percentile of the same, ms.
    pub p99_ms: f64,
    /// 99.9th percentile of the same, ms.
    pub p999_ms: f64,
    /// Largest of the same, ms.
    pub max_ms: f64,
    /// Median time from the moment the attempt was due to the accepting
    /// answer, ms (equal to `p50_ms` without a rate).
    pub sched_p50_ms: f64,
    /// 99th percentile of the same, ms.
    pub sched_p99_ms: f64,
    /// Server CPU over the run, percent of one core.
    pub server_cpu_pct: f64,
    /// This load generator's CPU over the run, percent of one core.
    pub loadgen_cpu_pct: f64,
    /// The hook backend's CPU over the run, percent of one core (0 without
    /// its process id).
    pub backend_cpu_pct: f64,
    /// The first five errors the run noted.
    pub errors: Vec<String>,
}

/// How one attempt ended, when it was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The stream opened, or the poll was answered `200`.
    Accepted,
    /// Refused: the status, or `disconnect <reason>`.
    Refused(String),
}

/// What is known about an answer from the bytes read so far.
#[derive(Debug, Default)]
pub struct AnswerReader {
    raw: Vec<u8>,
    head: Option<wire::ResponseHead>,
    body: Vec<u8>,
    dechunk: Dechunker,
}

impl AnswerReader {
    /// Takes the next bytes of the answer to an SSE (`sse` true) or poll
    /// request; `Ok(Some(answer))` once it is known.
    ///
    /// Errors: the head does not parse, or a chunked body is malformed.
    pub fn feed(&mut self, bytes: &[u8], sse: bool) -> Result<Option<Answer>, String> {
        if self.head.is_none() {
            self.raw.extend_from_slice(bytes);
            let Some((h, n)) = wire::parse_head(&self.raw)? else {
                return Ok(None);
            };
            if h.status != 200 {
                return Ok(Some(Answer::Refused(h.status.to_string())));
            }
            let rest = self.raw.split_off(n);
            self.head = Some(h);
            self.raw = Vec::new();
            return self.body_bytes(&rest, sse);
        }
        self.body_bytes(bytes, sse)
    }

    fn body_bytes(&mut self, bytes: &[u8], sse: bool) -> Result<Option<Answer>, String> {
        let Some(h) = &self.head else {
            return Ok(None);
        };
        let complete = if h.chunked {
            let body = &mut self.body;
            self.dechunk.feed(bytes, |b| body.extend_from_slice(b))?;
            self.dechunk.done
        } else {
            self.body.extend_from_slice(bytes);
            self.body.len() >= h.content_length.unwrap_or(usize::MAX)
        };
        if sse {
            // A refusal is one piece: `retry:`, the disconnect event, the end.
            if let Some(at) = wire::find(&self.body, b"herald.disconnect") {
                return Ok(match reason_of(&self.body[at..]) {
                    Some(reason) => Some(Answer::Refused(format!("disconnect {reason}"))),
                    None if complete => Some(Answer::Refused("disconnect".into())),
                    None => None,
                });
            }
            // An open stream starts with `retry:` and its cursor's `id:`.
            if let Some(at) = wire::find(&self.body, b"\nid: ") {
                if wire::find(&self.body[at..], b"\n\n").is_some() {
                    return Ok(Some(Answer::Accepted));
                }
            }
            if complete {
                return Ok(Some(Answer::Refused("ended".into())));
            }
            return Ok(None);
        }
        Ok(complete.then_some(Answer::Accepted))
    }
}

/// The `reason` of a `herald.disconnect` event's data, from the bytes after
/// the event's name.
fn reason_of(after: &[u8]) -> Option<&str> {
    let at = wire::find(after, b"\"reason\":\"")? + 10;
    let rest = &after[at..];
    let end = rest.iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// What every connector shares (one thread).
struct Ctx {
    plan: ConnectsPlan,
    sources: Vec<IpAddr>,
    prefix: String,
    start: Instant,
    stop_at: Instant,
    next: Cell<u64>,
    tally: RefCell<Tally>,
}

struct Tally {
    attempts: u64,
    accepted: u64,
    refused: u64,
    failed: u64,
    refusals: BTreeMap<String, u64>,
    latency: Histogram<u64>,
    scheduled: Histogram<u64>,
    errors: Vec<String>,
    last_answer: Instant,
}

impl Tally {
    fn note(&mut self, e: String) {
        if self.errors.len() < 5 {
            self.errors.push(e);
        }
    }
}

/// Runs `plan` and reports.
///
/// Fails before connecting if the target is not Herald or the transport is
/// neither SSE nor long polling; connection failures and refusals are
/// reported, not errors.
pub fn run(plan: ConnectsPlan) -> Result<ConnectsReport> {
    if plan.target != Target::Herald {
        bail!("the connects mode knows Herald's answers only");
    }
    if !matches!(plan.transport, Transport::Sse | Transport::Poll) {
        bail!(
            "the connects mode opens Herald's SSE streams or long polls, not {}",
            plan.transport
        );
    }
    procfs::raise_nofile();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let server = || plan.server_pid.map(procfs::tree).unwrap_or_default();
    let backend = || plan.backend_pid.map(procfs::tree).unwrap_or_default();
    let me = [std::process::id()];
    let cpu0 = (
        procfs::cpu_seconds(&server()),
        procfs::cpu_seconds(&me),
        procfs::cpu_seconds(&backend()),
    );
    let start = Instant::now();
    let ctx = Rc::new(Ctx {
        sources: source_ips(plan.sources),
        prefix: format!("{}{}", plan.topic_prefix, run_prefix()),
        start,
        stop_at: start + plan.duration,
        next: Cell::new(0),
        tally: RefCell::new(Tally {
            attempts: 0,
            accepted: 0,
            refused: 0,
            failed: 0,
            refusals: BTreeMap::new(),
            latency: histogram(),
            scheduled: histogram(),
            errors: Vec::new(),
            last_answer: start,
        }),
        plan: plan.clone(),
    });
    tokio::task::LocalSet::new().block_on(&rt, async {
        let mut tasks = Vec::new();
        for w in 0..plan.clients.max(1) {
            tasks.push(tokio::task::spawn_local(connector(ctx.clone(), w)));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    let wall = start.elapsed().as_secs_f64().max(1e-9);
    let cpu1 = (
        procfs::cpu_seconds(&server()),
        procfs::cpu_seconds(&me),
        procfs::cpu_seconds(&backend()),
    );
    let ctx = Rc::try_unwrap(ctx).map_err(|_| anyhow!("connectors still running"))?;
    let t = ctx.tally.into_inner();
    let elapsed = (t.last_answer - start).as_secs_f64().max(1e-9);
    let (lat, sched) = (Latencies::of(&t.latency), Latencies::of(&t.scheduled));
    Ok(ConnectsReport {
        label: plan.label.clone(),
        mode: Mode::Connects,
        target: plan.target,
        transport: plan.transport,
        clients: plan.clients,
        rate: plan.rate,
        duration_s: elapsed,
        attempts_planned: (plan.rate * plan.duration.as_secs_f64()).round() as u64,
        attempts: t.attempts,
        accepted: t.accepted,
        refused: t.refused,
        failed: t.failed,
        refusals: t.refusals,
        connects_per_s: t.accepted as f64 / elapsed,
        p50_ms: lat.p50,
        p90_ms: lat.p90,
        p99_ms: lat.p99,
        p999_ms: lat.p999,
        max_ms: lat.max,
        sched_p50_ms: sched.p50,
        sched_p99_ms: sched.p99,
        server_cpu_pct: 100.0 * (cpu1.0 - cpu0.0) / wall,
        loadgen_cpu_pct: 100.0 * (cpu1.1 - cpu0.1) / wall,
        backend_cpu_pct: 100.0 * (cpu1.2 - cpu0.2) / wall,
        errors: t.errors,
    })
}

/// Connector `w`: takes attempts until the duration is over.
async fn connector(ctx: Rc<Ctx>, w: usize) {
    let plan = &ctx.plan;
    let topic = format!("{}-c-{w}", ctx.prefix);
    loop {
        let k = ctx.next.get();
        ctx.next.set(k + 1);
        let due =
            (plan.rate > 0.0).then(|| ctx.start + Duration::from_secs_f64(k as f64 / plan.rate));
        if due.is_some_and(|d| d >= ctx.stop_at) || Instant::now() >= ctx.stop_at {
            break;
        }
        if let Some(due) = due {
            tokio::time::sleep_until(due.into()).await;
        }
        let source = ctx.sources[k as usize % ctx.sources.len()];
        let opened = Instant::now();
        // Without a rate, an attempt is due when its connector is free.
        let due = due.unwrap_or(opened);
        let r = tokio::time::timeout(ATTEMPT_TIMEOUT, attempt(&ctx, source, &topic)).await;
        let answered = Instant::now();
        let mut t = ctx.tally.borrow_mut();
        t.attempts += 1;
        t.last_answer = t.last_answer.max(answered);
        match r {
            Ok(Ok(Answer::Accepted)) => {
                t.accepted += 1;
                let us = |d: Duration| (d.as_micros() as u64).max(1);
                t.latency.saturating_record(us(answered - opened));
                t.scheduled.saturating_record(us(answered - due));
            }
            Ok(Ok(Answer::Refused(why))) => {
                t.refused += 1;
                if t.refused <= 3 {
                    t.note(format!("refused: {why}"));
                }
                *t.refusals.entry(why).or_default() += 1;
            }
            Ok(Err(e)) => {
                t.failed += 1;
                t.note(format!("{e:#}"));
            }
            Err(_) => {
                t.failed += 1;
                t.note(format!("no answer within {ATTEMPT_TIMEOUT:?}"));
            }
        }
    }
}

/// One attempt: connect from `source`, ask, read until the answer is known,
/// close.
async fn attempt(ctx: &Ctx, source: IpAddr, topic: &str) -> Result<Answer> {
    let plan = &ctx.plan;
    let mut stream = subscriber::connect(source, plan.addr).await?;
    let host = plan.addr.to_string();
    let sse = plan.transport == Transport::Sse;
    let req = if sse {
        let path = plan
            .target
            .stream_path(Transport::Sse, &[topic.to_string()]);
        format!(
            "GET {path} HTTP/1.1\r\nhost: {host}\r\naccept: text/event-stream\r\n{}\r\n",
            plan.headers
        )
        .into_bytes()
    } else {
        plan.target
            .poll_request(&host, &[topic.to_string()], None, None, 0, &plan.headers)
    };
    stream.write_all(&req).await?;
    let mut reader = AnswerReader::default();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            bail!("the server closed the connection before answering");
        }
        if let Some(answer) = reader.feed(&buf[..n], sse).map_err(|e| anyhow!(e))? {
            return Ok(answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(bytes: &[u8], sse: bool) -> Option<Answer> {
        // Whole, and split at every byte.
        let whole = AnswerReader::default().feed(bytes, sse).unwrap();
        for cut in 0..bytes.len() {
            let mut r = AnswerReader::default();
            let first = r.feed(&bytes[..cut], sse).unwrap();
            let got = match first {
                Some(a) => Some(a),
                None => r.feed(&bytes[cut..], sse).unwrap(),
            };
            assert_eq!(got, whole, "cut at {cut}");
        }
        whole
    }

    #[test]
    fn sse_answers() {
        let open = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n1a\r\nretry: 2100\nid: Y3Vyc29y\n\n\r\n";
        assert_eq!(answer(open, true), Some(Answer::Accepted));
        let refused = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 77\r\n\r\nretry: 1900\n\nevent: herald.disconnect\ndata: {\"reason\":\"engine_unavailable\"}\n\n";
        assert_eq!(
            answer(refused, true),
            Some(Answer::Refused("disconnect engine_unavailable".into()))
        );
        let unauthorized = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(
            answer(unauthorized, true),
            Some(Answer::Refused("401".into()))
        );
        let head_only = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(answer(head_only, true), None);
    }

    #[test]
    fn poll_answers() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 26\r\n\r\n{\"events\":[],\"cursor\":\"c\"}";
        assert_eq!(answer(&ok[..ok.len() - 1], false), None);
        assert_eq!(answer(ok, false), Some(Answer::Accepted));
        let busy = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(answer(busy, false), Some(Answer::Refused("503".into())));
    }
}
