//! Webhooks (DESIGN.md, "Webhooks"): Herald tells the application's
//! backend, after the fact, what happened to topics. Each request is a
//! signed `POST` (the same `x-herald-signature` as the hooks, see
//! [`crate::signature`]) of one batch:
//!
//! ```json
//! {"type":"events","events":[
//!   {"kind":"occupied","topic":"rooms/1","at":1700000000000},
//!   {"kind":"join","topic":"rooms/1","user":"alice","client":"5f3a09c1-2","at":1700000000002},
//!   {"kind":"leave","topic":"rooms/1","user":"alice","client":"5f3a09c1-2","at":1700000004100},
//!   {"kind":"vacated","topic":"rooms/1","at":1700000004100}
//! ]}
//! ```
//!
//! `at` is in milliseconds since the Unix epoch; `user` and `client` come
//! with `join` and `leave` only (`user` is empty for a client without a
//! credential). The header `x-herald-webhook-id` names the batch and stays
//! the same when it is sent again, so a backend can skip a batch it has
//! already processed.
//!
//! # Delivery
//!
//! - **Queued, bounded.** [`Webhooks::occurred`](herald_core::Occurrences::occurred)
//!   never waits: it appends to a queue bounded in events and bytes
//!   ([`WebhooksConfig::queue_events`], [`WebhooksConfig::queue_bytes`]).
//!   An event that does not fit is dropped, counted in
//!   `herald_webhook_events_dropped_total{reason="overflow"}` and logged
//!   (at most once per 10 s, with the count since the last line).
//! - **Batched.** One sender task posts up to
//!   [`WebhooksConfig::batch_events`] events at once, as soon as that many
//!   are queued or the oldest has waited [`WebhooksConfig::batch_wait`].
//! - **At least once, in order.** One batch is in flight at a time and
//!   leaves the queue only once the backend answered 2xx, so events reach
//!   the backend in the order they were queued (per topic, the order they
//!   happened on the node that reported them). A batch may arrive twice
//!   (an answer lost on the way back); it is never skipped, except as below.
//! - **Retried with backoff.** A connection error, a timeout
//!   ([`WebhooksConfig::timeout`]), 408, 429 or a 5xx is retried after an
//!   exponential backoff with jitter, from [`WebhooksConfig::retry_min`] up
//!   to [`WebhooksConfig::retry_max`], for as long as it takes; meanwhile
//!   new events queue (and overflow, if it lasts). Any other status (a 4xx:
//!   the backend refuses the batch, retrying would not change its mind)
//!   drops the batch, counted in
//!   `herald_webhook_events_dropped_total{reason="rejected"}` and logged.
//! - **Metrics.** `herald_webhook_batches_total{outcome}` counts POSTs
//!   (`delivered`, `failed` then retried, `rejected`);
//!   `herald_webhook_events_delivered_total` the events of delivered
//!   batches, beside `herald_webhook_events_dropped_total{reason}`;
//!   `herald_webhook_queued_events` is the queue's length now.
//! - **Shutdown.** [`Webhooks::flush`] sends what is queued, within a
//!   bound.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use herald_core::metrics::{Family, Kind, MetricsSource, Sample, Value};
use herald_core::{Occurrence, Occurrences};
use http::{header, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::{client, redacted_url, signature, MIN_SECRET_BYTES};

/// The default of [`WebhooksConfig::timeout`]: 5 s per POST.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The default of [`WebhooksConfig::queue_events`]: 10,000 events.
pub const DEFAULT_QUEUE_EVENTS: usize = 10_000;

/// The default of [`WebhooksConfig::queue_bytes`]: 8 MiB of event JSON.
pub const DEFAULT_QUEUE_BYTES: usize = 8 * 1024 * 1024;

/// The default of [`WebhooksConfig::batch_events`]: 100 events per POST.
pub const DEFAULT_BATCH_EVENTS: usize = 100;

/// The default of [`WebhooksConfig::batch_wait`]: 1 s.
pub const DEFAULT_BATCH_WAIT: Duration = Duration::from_secs(1);

/// The default of [`WebhooksConfig::vacate_grace`]: 5 s.
pub const DEFAULT_VACATE_GRACE: Duration = Duration::from_secs(5);

/// The request header naming a batch (the same on every attempt).
pub const BATCH_ID_HEADER: &str = "x-herald-webhook-id";

/// The most of an answer's body read (and ignored), in bytes.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// How often a full queue is logged at most.
const OVERFLOW_LOG_EVERY: Duration = Duration::from_secs(10);

/// How to reach the backend and how much to hold for it.
#[derive(Clone)]
pub struct WebhooksConfig {
    /// The URL every batch is POSTed to (`http://` or `https://`).
    pub url: String,
    /// The HMAC key of [`crate::signature`]: at least
    /// [`MIN_SECRET_BYTES`] bytes.
    pub secret: Vec<u8>,
    /// The most one POST may take, connecting and reading the answer
    /// included; past it the batch is retried.
    pub timeout: Duration,
    /// Events queued at most (the batch in flight included).
    pub queue_events: usize,
    /// Bytes of event JSON queued at most (the batch in flight included).
    pub queue_bytes: usize,
    /// Events per POST at most.
    pub batch_events: usize,
    /// How long the oldest queued event waits for others before its batch
    /// is sent anyway.
    pub batch_wait: Duration,
    /// How long a topic must stay without subscribers before it is reported
    /// vacated (a long-polling client between two polls, a page reload).
    pub vacate_grace: Duration,
    /// The first retry's delay (before jitter); each next one doubles.
    pub retry_min: Duration,
    /// The longest delay between two attempts.
    pub retry_max: Duration,
}

impl std::fmt::Debug for WebhooksConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhooksConfig")
            .field("url", &self.url)
            .field("secret", &"[redacted]")
            .field("timeout", &self.timeout)
            .field("queue_events", &self.queue_events)
            .field("queue_bytes", &self.queue_bytes)
            .field("batch_events", &self.batch_events)
            .field("batch_wait", &self.batch_wait)
            .field("vacate_grace", &self.vacate_grace)
            .field("retry_min", &self.retry_min)
            .field("retry_max", &self.retry_max)
            .finish()
    }
}

impl WebhooksConfig {
    /// `url` and `secret` with the defaults: [`DEFAULT_TIMEOUT`],
    /// [`DEFAULT_QUEUE_EVENTS`], [`DEFAULT_QUEUE_BYTES`],
    /// [`DEFAULT_BATCH_EVENTS`], [`DEFAULT_BATCH_WAIT`],
    /// [`DEFAULT_VACATE_GRACE`], retries from 500 ms up to 30 s.
    pub fn new(url: impl Into<String>, secret: impl Into<Vec<u8>>) -> WebhooksConfig {
        WebhooksConfig {
            url: url.into(),
            secret: secret.into(),
            timeout: DEFAULT_TIMEOUT,
            queue_events: DEFAULT_QUEUE_EVENTS,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            batch_events: DEFAULT_BATCH_EVENTS,
            batch_wait: DEFAULT_BATCH_WAIT,
            vacate_grace: DEFAULT_VACATE_GRACE,
            retry_min: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
        }
    }
}

/// A configuration [`Webhooks::new`] refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhooksConfigError {
    /// The URL is not `http://` or `https://` with a host, or holds
    /// credentials (the message never repeats them).
    #[error("invalid webhook URL: {0}")]
    Url(String),
    /// The secret is shorter than [`MIN_SECRET_BYTES`].
    #[error("the webhook secret must be at least {MIN_SECRET_BYTES} bytes, not {0}")]
    ShortSecret(usize),
    /// A zero timeout, queue size, batch size or retry delay, or a
    /// `retry_max` under `retry_min`.
    #[error("the webhook {0} must be more than 0")]
    Zero(&'static str),
    /// The HTTPS client could not be built.
    #[error("cannot build the webhook client: {0}")]
    Client(String),
}

/// How a webhook POST ended (the `outcome` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchOutcome {
    /// 2xx: the batch left the queue.
    Delivered,
    /// A connection error, a timeout, 408, 429 or 5xx: sent again later.
    Failed,
    /// Another status (a 4xx): the batch was dropped.
    Rejected,
}

impl BatchOutcome {
    /// Every outcome, in the order metrics list them.
    pub const ALL: [BatchOutcome; 3] = [
        BatchOutcome::Delivered,
        BatchOutcome::Failed,
        BatchOutcome::Rejected,
    ];

    /// The `outcome` label: `delivered`, `failed` or `rejected`.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchOutcome::Delivered => "delivered",
            BatchOutcome::Failed => "failed",
            BatchOutcome::Rejected => "rejected",
        }
    }
}

/// Why events were dropped (the `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The queue was full.
    Overflow,
    /// The backend refused their batch (a 4xx).
    Rejected,
}

impl DropReason {
    /// Every reason, in the order metrics list them.
    pub const ALL: [DropReason; 2] = [DropReason::Overflow, DropReason::Rejected];

    /// The `reason` label: `overflow` or `rejected`.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Overflow => "overflow",
            DropReason::Rejected => "rejected",
        }
    }
}

/// The webhooks' counters, rendered by `/metrics` (a [`MetricsSource`]):
/// `herald_webhook_batches_total{outcome}`,
/// `herald_webhook_events_delivered_total`,
/// `herald_webhook_events_dropped_total{reason}` and the gauge
/// `herald_webhook_queued_events`.
#[derive(Debug, Default)]
pub struct WebhookMetrics {
    batches: [AtomicU64; 3],
    delivered: AtomicU64,
    dropped: [AtomicU64; 2],
    queued: AtomicU64,
}

impl WebhookMetrics {
    /// POSTs that ended with `outcome` so far.
    pub fn batches(&self, outcome: BatchOutcome) -> u64 {
        self.batches[outcome as usize].load(Ordering::Relaxed)
    }

    /// Events the backend took (the events of batches it answered 2xx)
    /// so far.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Events dropped for `reason` so far.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].load(Ordering::Relaxed)
    }

    /// Events queued now (the batch in flight included).
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    fn count_batch(&self, outcome: BatchOutcome) {
        self.batches[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn count_dropped(&self, reason: DropReason, n: u64) {
        self.dropped[reason as usize].fetch_add(n, Ordering::Relaxed);
    }
}

impl MetricsSource for WebhookMetrics {
    fn families(&self) -> Vec<Family> {
        vec![
            Family {
                name: "herald_webhook_batches_total",
                help: "Webhook POSTs by outcome: delivered (2xx), failed (retried), rejected (dropped).",
                kind: Kind::Counter,
                samples: BatchOutcome::ALL
                    .iter()
                    .map(|o| {
                        Sample::labelled("", "outcome", o.as_str(), Value::Count(self.batches(*o)))
                    })
                    .collect(),
            },
            Family::counter(
                "herald_webhook_events_delivered_total",
                "Webhook events delivered: the events of batches the backend answered 2xx.",
                self.delivered(),
            ),
            Family {
                name: "herald_webhook_events_dropped_total",
                help: "Webhook events dropped: the queue was full (overflow) or the backend refused their batch (rejected).",
                kind: Kind::Counter,
                samples: DropReason::ALL
                    .iter()
                    .map(|r| {
                        Sample::labelled("", "reason", r.as_str(), Value::Count(self.dropped(*r)))
                    })
                    .collect(),
            },
            Family::gauge(
                "herald_webhook_queued_events",
                "Webhook events waiting to be delivered, the batch in flight included.",
                Value::Count(self.queued()),
            ),
        ]
    }
}

/// One queued event: its JSON and when it was queued.
struct Queued {
    json: Bytes,
    at: Instant,
}

#[derive(Default)]
struct Queue {
    events: VecDeque<Queued>,
    bytes: usize,
}

/// Drops not yet logged, and when the last line was written.
#[derive(Default)]
struct OverflowLog {
    unlogged: u64,
    last: Option<Instant>,
}

/// The webhooks: a bounded queue of occurrences and the task that sends it
/// (see the module docs). Register it with
/// [`Hub::report_occurrences`](herald_core::Hub::report_occurrences) and
/// spawn [`Webhooks::run`].
pub struct Webhooks {
    url: Uri,
    secret: Vec<u8>,
    config: WebhooksConfig,
    client: client::HookClient,
    queue: Mutex<Queue>,
    wake: Notify,
    closing: AtomicBool,
    metrics: Arc<WebhookMetrics>,
    /// This process's part of batch ids (random per start).
    node: u64,
    next_batch: AtomicU64,
    overflow: Mutex<OverflowLog>,
    jitter: RandomState,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("url", &redacted_url(&self.url))
            .field("queue_events", &self.config.queue_events)
            .field("queue_bytes", &self.config.queue_bytes)
            .finish_non_exhaustive()
    }
}

/// What one POST came to.
enum Answer {
    Delivered,
    Retry(String),
    Rejected(u16),
}

impl Webhooks {
    /// Webhooks as `config` says. Needs no runtime; [`Webhooks::run`] does.
    ///
    /// Errors: see [`WebhooksConfigError`].
    pub fn new(config: WebhooksConfig) -> Result<Webhooks, WebhooksConfigError> {
        let url = crate::parse_url(&config.url).map_err(WebhooksConfigError::Url)?;
        if config.secret.len() < MIN_SECRET_BYTES {
            return Err(WebhooksConfigError::ShortSecret(config.secret.len()));
        }
        for (zero, what) in [
            (config.timeout.is_zero(), "timeout"),
            (config.queue_events == 0, "queue size in events"),
            (config.queue_bytes == 0, "queue size in bytes"),
            (config.batch_events == 0, "batch size"),
            (config.retry_min.is_zero(), "first retry delay"),
            (config.retry_max < config.retry_min, "longest retry delay"),
        ] {
            if zero {
                return Err(WebhooksConfigError::Zero(what));
            }
        }
        let client = client::build(config.timeout, 1).map_err(WebhooksConfigError::Client)?;
        let jitter = RandomState::new();
        Ok(Webhooks {
            url,
            secret: config.secret.clone(),
            client,
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            closing: AtomicBool::new(false),
            metrics: Arc::default(),
            node: jitter.hash_one(SystemTime::now()) & 0xffff_ffff,
            next_batch: AtomicU64::new(1),
            overflow: Mutex::new(OverflowLog::default()),
            jitter,
            config,
        })
    }

    /// The counters, for `/metrics`.
    pub fn metrics(&self) -> &Arc<WebhookMetrics> {
        &self.metrics
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues one event's JSON, or drops it when it does not fit.
    fn push(&self, json: Bytes) {
        let mut q = self.lock();
        if q.events.len() >= self.config.queue_events
            || q.bytes + json.len() > self.config.queue_bytes
        {
            drop(q);
            self.overflowed();
            return;
        }
        q.bytes += json.len();
        q.events.push_back(Queued {
            json,
            at: Instant::now(),
        });
        self.metrics
            .queued
            .store(q.events.len() as u64, Ordering::Relaxed);
        drop(q);
        self.wake.notify_one();
    }

    /// Counts a dropped event and logs, at most every 10 s.
    fn overflowed(&self) {
        self.metrics.count_dropped(DropReason::Overflow, 1);
        let mut log = self.overflow.lock().unwrap_or_else(|e| e.into_inner());
        log.unlogged += 1;
        if log.last.is_none_or(|t| t.elapsed() >= OVERFLOW_LOG_EVERY) {
            tracing::warn!(
                dropped = log.unlogged,
                queue_events = self.config.queue_events,
                queue_bytes = self.config.queue_bytes,
                "webhook queue full: events dropped (is the backend down or slow?)"
            );
            log.unlogged = 0;
            log.last = Some(Instant::now());
        }
    }

    /// Sends the queue to the backend, batch after batch, until the
    /// process ends. Spawn it once.
    pub async fn run(self: Arc<Self>) {
        loop {
            self.wait_for_batch().await;
            let batch: Vec<Bytes> = {
                let q = self.lock();
                q.events
                    .iter()
                    .take(self.config.batch_events)
                    .map(|e| e.json.clone())
                    .collect()
            };
            if batch.is_empty() {
                continue;
            }
            let rejected = !self.deliver(&batch).await;
            let mut q = self.lock();
            for _ in 0..batch.len() {
                if let Some(e) = q.events.pop_front() {
                    q.bytes -= e.json.len();
                }
            }
            self.metrics
                .queued
                .store(q.events.len() as u64, Ordering::Relaxed);
            drop(q);
            if rejected {
                self.metrics
                    .count_dropped(DropReason::Rejected, batch.len() as u64);
            } else {
                self.metrics
                    .delivered
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
        }
    }

    /// Waits until a batch is due: a full batch is queued, the oldest event
    /// has waited [`WebhooksConfig::batch_wait`], or a flush asks.
    async fn wait_for_batch(&self) {
        loop {
            let notified = self.wake.notified();
            let (len, oldest) = {
                let q = self.lock();
                (q.events.len(), q.events.front().map(|e| e.at))
            };
            let Some(oldest) = oldest else {
                notified.await;
                continue;
            };
            if len >= self.config.batch_events || self.closing.load(Ordering::Acquire) {
                return;
            }
            let due = oldest + self.config.batch_wait;
            if Instant::now() >= due {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(due) => return,
                _ = notified => {}
            }
        }
    }

    /// POSTs `batch` until the backend takes it (true) or refuses it for
    /// good (false).
    async fn deliver(&self, batch: &[Bytes]) -> bool {
        let id = format!(
            "{:08x}-{:x}",
            self.node,
            self.next_batch.fetch_add(1, Ordering::Relaxed)
        );
        let body = batch_body(batch);
        let mut attempt: u32 = 0;
        loop {
            match self.post(&id, &body).await {
                Answer::Delivered => {
                    self.metrics.count_batch(BatchOutcome::Delivered);
                    return true;
                }
                Answer::Rejected(status) => {
                    self.metrics.count_batch(BatchOutcome::Rejected);
                    tracing::warn!(
                        status,
                        batch = %id,
                        events = batch.len(),
                        "the webhook backend refused a batch; dropped"
                    );
                    return false;
                }
                Answer::Retry(detail) => {
                    self.metrics.count_batch(BatchOutcome::Failed);
                    let delay = self.backoff(attempt);
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(
                        error = %detail,
                        batch = %id,
                        attempt,
                        retry_in = ?delay,
                        "webhook delivery failed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// The delay before retry number `attempt` (0 first): `retry_min`
    /// doubled per attempt, at most `retry_max`, then between half of it
    /// and all of it at random (so that nodes do not retry in step). Once
    /// a flush started, at most 1 s.
    fn backoff(&self, attempt: u32) -> Duration {
        let c = &self.config;
        let mut base = c
            .retry_min
            .saturating_mul(1u32 << attempt.min(20))
            .min(c.retry_max);
        if self.closing.load(Ordering::Acquire) {
            base = base.min(Duration::from_secs(1));
        }
        let mut h = self.jitter.build_hasher();
        h.write_u32(attempt);
        h.write_u128(now_nanos());
        let half = base / 2;
        half + half.mul_f64((h.finish() % 1_000_001) as f64 / 1_000_000.0)
    }

    /// One signed POST of `body`, bounded by the timeout.
    async fn post(&self, id: &str, body: &Bytes) -> Answer {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let request = Request::post(self.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("herald/", env!("CARGO_PKG_VERSION")),
            )
            .header(signature::HEADER, signature::sign(&self.secret, now, body))
            .header(BATCH_ID_HEADER, id)
            .body(Full::new(body.clone()));
        let request = match request {
            Ok(r) => r,
            Err(e) => return Answer::Retry(e.to_string()),
        };
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("request failed: {}", client::causes(&e)))?;
            let status = response.status().as_u16();
            // Read (and ignore) the answer, so the connection can be kept.
            let _ = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await;
            Ok::<u16, String>(status)
        };
        match tokio::time::timeout(self.config.timeout, exchange).await {
            Err(_) => Answer::Retry(format!("no answer within {:?}", self.config.timeout)),
            Ok(Err(e)) => Answer::Retry(e),
            Ok(Ok(s)) if (200..300).contains(&s) => Answer::Delivered,
            Ok(Ok(s)) if s == 408 || s == 429 || s >= 500 => {
                Answer::Retry(format!("the backend answered {s}"))
            }
            Ok(Ok(s)) => Answer::Rejected(s),
        }
    }

    /// Sends what is queued now without waiting to fill batches, and
    /// returns once the queue is empty or `within` has passed (failed
    /// batches are retried meanwhile, at least every second). For a
    /// graceful shutdown, with [`Webhooks::run`] running. Returns the
    /// events still queued.
    pub async fn flush(&self, within: Duration) -> usize {
        self.closing.store(true, Ordering::Release);
        self.wake.notify_one();
        let deadline = Instant::now() + within;
        loop {
            let left = self.lock().events.len();
            if left == 0 || Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Occurrences for Webhooks {
    fn occurred(&self, occurrence: Occurrence) {
        self.push(Bytes::from(event_json(&occurrence)));
    }

    fn vacate_grace(&self) -> Duration {
        self.config.vacate_grace
    }
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// One event's JSON: `{"kind","topic","user"?,"client"?,"at"}`, keys in
/// that order.
pub fn event_json(o: &Occurrence) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Event<'a> {
        kind: &'a str,
        topic: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        client: Option<&'a str>,
        at: u64,
    }
    serde_json::to_vec(&Event {
        kind: o.kind.as_str(),
        topic: o.topic.as_str(),
        user: o.user.as_deref(),
        client: o.client.as_deref(),
        at: o.at,
    })
    .unwrap_or_default()
}

/// A batch's body: `{"type":"events","events":[...]}` around the events'
/// JSON, as queued.
pub fn batch_body(events: &[Bytes]) -> Bytes {
    const HEAD: &[u8] = br#"{"type":"events","events":["#;
    let len = HEAD.len() + events.iter().map(|e| e.len() + 1).sum::<usize>() + 2;
    let mut body = Vec::with_capacity(len);
    body.extend_from_slice(HEAD);
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(e);
    }
    body.extend_from_slice(b"]}");
    Bytes::from(body)
}

#[cfg(test)]
mod tests;
