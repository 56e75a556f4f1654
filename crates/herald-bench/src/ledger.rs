//! The ledger every thread of a run writes to: per-message delivery counts,
//! connection outcomes and the first few errors, plus the latency histograms
//! each load-generator thread keeps for itself.
//!
//! Counters are relaxed atomics indexed by message sequence number (1-based,
//! up to `Plan::max_messages`): threads only add, and the control thread
//! reads them after the threads have joined or while draining, where a
//! slightly stale value only delays a decision by one poll.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use hdrhistogram::Histogram;
use tokio::sync::Notify;

use crate::target::{Target, Transport};

/// State every thread of the run shares.
pub struct Shared {
    /// The server under test, which decides paths and framing.
    pub target: Target,
    /// The transport every subscriber of the run uses.
    pub transport: Transport,
    /// The first subscriber address (`Plan::addr`).
    pub addr: SocketAddr,
    /// `addr` as `ip:port`, sent as the HTTP `Host` header.
    pub host: String,
    /// Header lines (each ending in CRLF) every request and WebSocket
    /// handshake of the run carries: its credential, if any (see
    /// [`crate::target::auth_headers`]).
    pub headers: String,
    /// When the run started: the zero of every payload's microsecond clock.
    pub(crate) start: Instant,
    /// Per message sequence number, how many subscribers received it.
    pub(crate) counts: Box<[AtomicU32]>,
    /// Per message sequence number, how many subscribers should receive it
    /// (set by the publisher before sending; reset to 0 if the publish failed).
    pub(crate) expected: Box<[AtomicU32]>,
    /// Per message, how many microseconds after its scheduled time (at a
    /// fixed rate) it was sent: the time a server made the publisher wait.
    pub(crate) late: Box<[AtomicU32]>,
    /// Subscribers connected and subscribed so far.
    pub ready: AtomicUsize,
    /// Subscribers that could not connect or subscribe.
    pub(crate) failed: AtomicUsize,
    /// Subscribers whose connection ended before the run did.
    pub(crate) dropped: AtomicUsize,
    /// Set once every publisher has stopped.
    pub(crate) publishing_done: AtomicBool,
    /// Deliveries counted so far over all subscribers, duplicates included.
    pub(crate) received: AtomicU64,
    /// Woken when a message reaches its expected count (for the window).
    pub(crate) progress: Notify,
    /// The first five error messages of the run.
    pub(crate) errors: Mutex<Vec<String>>,
}

impl Shared {
    /// A fresh ledger for sequence numbers 1 to `max_messages`, its clock
    /// starting now.
    pub fn new(
        target: Target,
        transport: Transport,
        addr: SocketAddr,
        max_messages: usize,
    ) -> Self {
        let cap = max_messages + 1;
        Shared {
            target,
            transport,
            addr,
            host: addr.to_string(),
            headers: String::new(),
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
        }
    }

    /// The same ledger, its requests carrying `headers` (see [`Shared::headers`]).
    pub fn with_headers(mut self, headers: String) -> Self {
        self.headers = headers;
        self
    }

    /// Expected deliveries, lost ones and duplicates over messages 1 to
    /// `last`, each summed per message.
    pub fn tally(&self, last: u64) -> Tally {
        let mut t = Tally::default();
        for seq in 1..=last.min(self.counts.len().saturating_sub(1) as u64) as usize {
            let e = u64::from(self.expected[seq].load(Ordering::Relaxed));
            let c = u64::from(self.counts[seq].load(Ordering::Relaxed));
            t.expected += e;
            t.lost += e.saturating_sub(c);
            t.duplicates += c.saturating_sub(e);
        }
        t
    }

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

    /// Counts one delivery of message `seq`; wakes a publisher waiting on
    /// its window when `seq` reaches its expected count. A `seq` beyond the
    /// ledger (a stale message from an earlier run) counts as received only.
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

    /// Keeps `e` if fewer than five errors were kept already.
    pub(crate) fn note(&self, e: String) {
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

/// Delivery accounting over a range of messages.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Deliveries that should have happened.
    pub expected: u64,
    /// Expected deliveries that never arrived.
    pub lost: u64,
    /// Deliveries beyond a message's expected count.
    pub duplicates: u64,
}

/// What one load-generator thread measured.
pub struct ThreadStats {
    /// Deliveries this thread's subscribers received, duplicates included.
    pub deliveries: u64,
    /// Delivery latency in microseconds, from the moment the message was sent.
    pub latency: Histogram<u64>,
    /// Delivery latency in microseconds, from the moment the message was due at the fixed rate (coordinated
    /// omission corrected: time a server kept the publisher waiting counts).
    pub scheduled: Histogram<u64>,
}

/// An empty latency histogram in microseconds, 1 µs to 10 minutes.
pub(crate) fn histogram() -> Histogram<u64> {
    // 1 µs to 10 minutes, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}
