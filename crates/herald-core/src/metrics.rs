//! Counters, gauges and histograms for `/metrics`, rendered in the
//! Prometheus text format (version 0.0.4) from a table of [`Family`]
//! values, so that the core and the server (its TCP and TLS counters, a
//! [`MetricsSource`]) write the same way.
//!
//! What the hot path pays: a relaxed atomic add per counter it moves, two
//! per [`Histogram`] observation (its bucket and its sum) and a clock read
//! around what is timed; never a lock or an allocation. Whatever costs
//! more (the deepest subscriber queue, a scan) is computed when `/metrics`
//! is read. README.md, "Metrics reference", lists every family.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::policy::TopicPolicies;

/// Upper bounds (nanoseconds) of the buckets of the publish and store
/// histograms: 100 µs to 1 s.
pub const LATENCY_BUCKETS: [u64; 12] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    500_000_000,
    1_000_000_000,
];

/// Upper bounds (nanoseconds) of the buckets of the fan-out hand-off
/// histogram: 1 µs to 100 ms (a hand-off queues a shared `Arc` per local
/// subscriber, so it is far shorter than a store).
pub const HANDOFF_BUCKETS: [u64; 16] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
];

/// A histogram of durations in Prometheus's shape: cumulative
/// `_bucket{le="<seconds>"}` samples (the last `le="+Inf"`), `_sum` in
/// seconds and `_count`. Kept as one counter per bucket (not cumulative)
/// and a sum in nanoseconds, so an observation is two relaxed atomic adds;
/// the count is the sum of the buckets, read when rendered.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds of the buckets, in nanoseconds, ascending.
    bounds: &'static [u64],
    /// Observations per bucket; one more than `bounds` (the `+Inf` bucket).
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// An empty histogram whose buckets end at `bounds` (nanoseconds,
    /// ascending), plus `+Inf`.
    pub fn new(bounds: &'static [u64]) -> Histogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one duration (in the first bucket whose bound is at least
    /// `took`).
    pub fn observe(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let i = self.bounds.partition_point(|b| *b < nanos);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The sum of the observed durations.
    pub fn sum(&self) -> Duration {
        Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed))
    }

    /// The family `name`: its cumulative buckets, `_sum` and `_count`.
    pub fn family(&self, name: &'static str, help: &'static str) -> Family {
        let mut samples = Vec::with_capacity(self.counts.len() + 2);
        let mut cumulative = 0;
        for (i, n) in self.counts.iter().enumerate() {
            cumulative += n.load(Ordering::Relaxed);
            let le = match self.bounds.get(i) {
                Some(b) => (*b as f64 / 1e9).to_string(),
                None => "+Inf".to_owned(),
            };
            samples.push(Sample::labelled(
                "_bucket",
                "le",
                le,
                Value::Count(cumulative),
            ));
        }
        samples.push(Sample::plain(
            "_sum",
            Value::Real(self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9),
        ));
        samples.push(Sample::plain("_count", Value::Count(cumulative)));
        Family {
            name,
            help,
            kind: Kind::Histogram,
            samples,
        }
    }
}

/// The hub's latency histograms (see [`Metrics::latency`]).
#[derive(Debug)]
pub struct Latencies {
    /// `herald_publish_duration_seconds`: from the hub taking a publish
    /// ([`crate::Hub::publish_batch`]) to its acknowledgement (validation,
    /// idempotency records, the engine's publish), successful publishes
    /// only, one observation per batch. [`LATENCY_BUCKETS`].
    pub publish: Histogram,
    /// `herald_store_duration_seconds`: the engine's publish call
    /// ([`crate::Engine::publish`]), accepted calls only, one per batch.
    /// The memory and embedded engines hand events to local subscribers
    /// inside it (under the topic's lock), so it includes their fan-out.
    /// [`LATENCY_BUCKETS`].
    pub store: Histogram,
    /// `herald_fanout_duration_seconds`: one [`crate::fanout::Fanout::dispatch`] of
    /// an event to the local subscriber queues of its topic, observed when
    /// the topic has at least one (presence signals and, on Redis, events
    /// from other nodes included). [`HANDOFF_BUCKETS`].
    pub fanout: Histogram,
}

impl Default for Latencies {
    fn default() -> Latencies {
        Latencies {
            publish: Histogram::new(&LATENCY_BUCKETS),
            store: Histogram::new(&LATENCY_BUCKETS),
            fanout: Histogram::new(&HANDOFF_BUCKETS),
        }
    }
}

/// Stripes of [`QueuedEvents`]: enough that the connections' tasks on
/// different cores seldom adjust the same one.
const STRIPES: usize = 16;

/// One stripe, alone on its cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe(AtomicI64);

/// The events waiting in every local subscriber queue: a gauge adjusted
/// where events enter and leave the queues (an atomic add each, on one of
/// [`STRIPES`] cache lines chosen by the caller's key) and summed when
/// read, so that no scan is needed and no single line is fought over.
#[derive(Debug, Default)]
pub struct QueuedEvents([Stripe; STRIPES]);

impl QueuedEvents {
    /// Adds `delta` (negative: taken out) on the stripe of `key` (any
    /// number that spreads callers: a queue id).
    pub fn adjust(&self, key: u64, delta: i64) {
        self.0[(key as usize) % STRIPES]
            .0
            .fetch_add(delta, Ordering::Relaxed);
    }

    /// Events waiting now (0 while an add is still behind its take, an
    /// instant that only a racing read sees).
    pub fn get(&self) -> u64 {
        let sum: i64 = self.0.iter().map(|s| s.0.load(Ordering::Relaxed)).sum();
        sum.max(0) as u64
    }
}

/// The hub's counters. Transports update the per-transport ones.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Events the engine accepted.
    pub events_published: AtomicU64,
    /// Events written to subscribers, all transports.
    pub events_delivered: AtomicU64,
    /// Subscribers disconnected for falling behind.
    pub slow_consumer_disconnects: AtomicU64,
    /// Publishes refused or failed.
    pub publish_errors: AtomicU64,
    /// Open SSE streams (see [`Metrics::connection`]).
    pub connections_sse: AtomicI64,
    /// Open WebSockets.
    pub connections_ws: AtomicI64,
    /// Held long polls.
    pub connections_poll: AtomicI64,
    /// Subscriber connections accepted, all transports.
    pub connections_total: AtomicU64,
    /// Topics the engine dropped from memory (idle: no subscriber, nothing retained).
    pub topics_dropped: AtomicU64,
    /// Publishes refused because a global budget was used up (503 `server_full`).
    pub budget_refusals: AtomicU64,
    /// Presence joins, leaves and signals that failed (the store or the
    /// engine could not be reached).
    pub presence_errors: AtomicU64,
    /// `herald.join` / `herald.leave` left out of a subscriber's queue that
    /// was at least half full (presence churn never disconnects anyone).
    pub presence_signals_dropped: AtomicU64,
    /// Topics the engine holds now (set with [`Metrics::set_usage`]).
    topics_held: AtomicU64,
    /// Bytes of retained events the engine holds now (see `Budget::event_bytes`).
    retained_bytes: AtomicU64,
    /// Whether the engine reports the two gauges above (Redis does not: its
    /// state lives in Redis).
    usage_reported: std::sync::atomic::AtomicBool,
    /// The latency histograms: publish-to-ack, store, fan-out hand-off.
    pub latency: Latencies,
    /// Events waiting in local subscriber queues (kept by the fan-out).
    pub queued_events: QueuedEvents,
}

/// The transports, for per-transport gauges and presence entries
/// (serialized as `"sse"`, `"ws"`, `"poll"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Transport {
    /// Server-sent events (`GET /v1/sse`).
    #[serde(rename = "sse")]
    Sse,
    /// WebSocket (`/v1/ws`).
    #[serde(rename = "ws")]
    WebSocket,
    /// Long polling (`GET /v1/poll`).
    #[serde(rename = "poll")]
    Poll,
}

impl Transport {
    /// The `transport` label value: `sse`, `ws` or `poll`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::WebSocket => "ws",
            Transport::Poll => "poll",
        }
    }
}

impl Metrics {
    /// Records how long the hub took to acknowledge a publish (see
    /// [`Latencies::publish`]).
    pub fn observe_publish(&self, took: Duration) {
        self.latency.publish.observe(took);
    }

    /// Records how long the engine's publish call took (see
    /// [`Latencies::store`]).
    pub fn observe_store(&self, took: Duration) {
        self.latency.store.observe(took);
    }

    fn gauge(&self, t: Transport) -> &AtomicI64 {
        match t {
            Transport::Sse => &self.connections_sse,
            Transport::WebSocket => &self.connections_ws,
            Transport::Poll => &self.connections_poll,
        }
    }

    /// Sets the engine's usage gauges: topics held and bytes of retained
    /// events. Engines that hold per-topic state call this as it changes.
    pub fn set_usage(&self, topics: u64, retained_bytes: u64) {
        self.topics_held.store(topics, Ordering::Relaxed);
        self.retained_bytes.store(retained_bytes, Ordering::Relaxed);
        self.usage_reported.store(true, Ordering::Relaxed);
    }

    /// The last usage set: (topics held, bytes of retained events).
    pub fn usage(&self) -> (u64, u64) {
        (
            self.topics_held.load(Ordering::Relaxed),
            self.retained_bytes.load(Ordering::Relaxed),
        )
    }

    /// Counts a connection for as long as the guard lives.
    pub fn connection(self: &std::sync::Arc<Self>, t: Transport) -> ConnectionGuard {
        self.gauge(t).fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard {
            metrics: self.clone(),
            transport: t,
        }
    }

    /// Open connections of one transport.
    pub fn open(&self, t: Transport) -> i64 {
        self.gauge(t).load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition, with the families of `extra` (the
    /// serving process's own counters, such as TCP connections) after the
    /// subscriber connections.
    pub fn render(&self, engine: &str, extra: &[&dyn MetricsSource]) -> String {
        let mut o = String::with_capacity(2048);
        write_families(&mut o, &self.families_before_extra());
        for source in extra {
            write_families(&mut o, &source.families());
        }
        write_families(&mut o, &self.families_after_extra(engine));
        o
    }

    fn families_before_extra(&self) -> Vec<Family> {
        let c = |v: &AtomicU64| v.load(Ordering::Relaxed);
        vec![
            Family::counter(
                "herald_events_published_total",
                "Events accepted by the engine.",
                c(&self.events_published),
            ),
            Family::counter(
                "herald_events_delivered_total",
                "Events written to subscribers, all transports.",
                c(&self.events_delivered),
            ),
            Family::counter(
                "herald_slow_consumer_disconnects_total",
                "Subscribers disconnected for falling behind.",
                c(&self.slow_consumer_disconnects),
            ),
            Family::counter(
                "herald_publish_errors_total",
                "Publishes refused or failed.",
                c(&self.publish_errors),
            ),
            Family {
                name: "herald_connections",
                help: "Open subscriber connections by transport.",
                kind: Kind::Gauge,
                samples: [Transport::Sse, Transport::WebSocket, Transport::Poll]
                    .into_iter()
                    .map(|t| {
                        Sample::labelled("", "transport", t.as_str(), Value::Level(self.open(t)))
                    })
                    .collect(),
            },
            Family::counter(
                "herald_connections_total",
                "Subscriber connections accepted.",
                c(&self.connections_total),
            ),
            Family::gauge(
                "herald_subscriber_queued_events",
                "Live events waiting in this node's subscriber queues, all connections.",
                Value::Count(self.queued_events.get()),
            ),
        ]
    }

    fn families_after_extra(&self, engine: &str) -> Vec<Family> {
        let c = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let mut families = vec![
            self.latency.publish.family(
                "herald_publish_duration_seconds",
                "Time from the hub taking a publish to its acknowledgement (validation, idempotency, store).",
            ),
            self.latency.store.family(
                "herald_store_duration_seconds",
                "Time of the engine's publish call (memory and embedded engines: their fan-out included).",
            ),
            self.latency.fanout.family(
                "herald_fanout_duration_seconds",
                "Time to hand one event to the local subscriber queues of its topic.",
            ),
            Family::counter(
                "herald_topics_dropped_total",
                "Idle topics dropped from memory (no subscriber, nothing retained).",
                c(&self.topics_dropped),
            ),
            Family::counter(
                "herald_budget_refusals_total",
                "Publishes refused because a global budget (topics, retained bytes) was used up.",
                c(&self.budget_refusals),
            ),
            Family::counter(
                "herald_presence_errors_total",
                "Presence joins, leaves and join/leave signals that failed (store or engine unreachable).",
                c(&self.presence_errors),
            ),
            Family::counter(
                "herald_presence_signals_dropped_total",
                "herald.join / herald.leave left out of a subscriber queue at least half full.",
                c(&self.presence_signals_dropped),
            ),
        ];
        if self.usage_reported.load(Ordering::Relaxed) {
            let (topics, bytes) = self.usage();
            families.push(Family::gauge(
                "herald_topics",
                "Topics the engine holds in memory.",
                Value::Count(topics),
            ));
            families.push(Family::gauge(
                "herald_retained_bytes",
                "Bytes of retained events the engine holds (data, name and a fixed overhead per event).",
                Value::Count(bytes),
            ));
        }
        families.push(Family {
            name: "herald_engine_info",
            help: "The engine in use.",
            kind: Kind::Gauge,
            samples: vec![Sample::labelled("", "engine", engine, Value::Level(1))],
        });
        families
    }
}

/// Metric families from outside the core (the server's TCP and TLS
/// counters), rendered by [`Metrics::render`] in the same format.
pub trait MetricsSource: Send + Sync + std::fmt::Debug {
    /// The families as they are now.
    fn families(&self) -> Vec<Family>;
}

/// The deepest subscriber queue and the capacity of each, shown beside
/// `herald_subscriber_queued_events`: the deepest is found by a scan of
/// the queues ([`crate::Hub::deepest_queue`]), made when `/metrics` is
/// read, never on the hot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueBounds {
    /// Events waiting in the deepest local subscriber queue now.
    pub deepest: u64,
    /// Events one queue holds before its subscriber is disconnected as a
    /// slow consumer ([`crate::HubConfig::queue_capacity`]).
    pub capacity: u64,
}

impl MetricsSource for QueueBounds {
    fn families(&self) -> Vec<Family> {
        vec![
            Family::gauge(
                "herald_subscriber_queue_max_events",
                "Live events waiting in this node's deepest subscriber queue.",
                Value::Count(self.deepest),
            ),
            Family::gauge(
                "herald_subscriber_queue_capacity_events",
                "Live events one subscriber queue holds before a slow-consumer disconnect.",
                Value::Count(self.capacity),
            ),
        ]
    }
}

/// Why a topic policy refused a client's publish: the `reason` label of
/// `herald_policy_publish_refusals_total` (see [`TopicPolicies::count_refusal`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyRefusal {
    /// Over the policy's `publish_rate` (429 `rate_limited`): `rate_limited`.
    RateLimited,
    /// The policy sets `client_publish = false` (403 `forbidden`):
    /// `client_publish`.
    ClientPublish,
    /// The application's publish hook refused it (403 `hook_refused`):
    /// `publish_hook`.
    PublishHook,
}

impl PolicyRefusal {
    /// Every reason, in the order metrics list them.
    pub const ALL: [PolicyRefusal; 3] = [
        PolicyRefusal::RateLimited,
        PolicyRefusal::ClientPublish,
        PolicyRefusal::PublishHook,
    ];

    /// The `reason` label: `rate_limited`, `client_publish` or `publish_hook`.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyRefusal::RateLimited => "rate_limited",
            PolicyRefusal::ClientPublish => "client_publish",
            PolicyRefusal::PublishHook => "publish_hook",
        }
    }

    /// Whether `policy` can refuse for this reason (only those samples
    /// are shown).
    fn applies(self, policy: &crate::TopicPolicy) -> bool {
        match self {
            PolicyRefusal::RateLimited => policy.publish_rate.is_some(),
            PolicyRefusal::ClientPublish => policy.client_publish == Some(false),
            PolicyRefusal::PublishHook => policy.publish_hook,
        }
    }
}

/// Refused publishes per policy rule and [`PolicyRefusal`], held by
/// [`TopicPolicies`] beside its rules: a fixed table (the rules come from
/// the configuration file), so the label set is bounded.
#[derive(Debug, Default)]
pub struct PolicyRefusals {
    counts: Box<[[AtomicU64; 3]]>,
}

impl PolicyRefusals {
    /// Zeroed counters for `rules` rules.
    pub fn new(rules: usize) -> PolicyRefusals {
        PolicyRefusals {
            counts: (0..rules).map(|_| Default::default()).collect(),
        }
    }

    /// Counts one refusal by rule number `rule` (ignored if out of range).
    pub fn count(&self, rule: usize, reason: PolicyRefusal) {
        if let Some(c) = self.counts.get(rule) {
            c[reason as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Refusals by rule `rule` for `reason` so far.
    pub fn get(&self, rule: usize, reason: PolicyRefusal) -> u64 {
        self.counts
            .get(rule)
            .map_or(0, |c| c[reason as usize].load(Ordering::Relaxed))
    }
}

/// `herald_policy_publish_refusals_total{policy,reason}`: per rule (its
/// pattern as `policy`), the reasons its settings can refuse for; no
/// family when no rule can refuse. A rule repeating an earlier rule's
/// pattern never matches (the first match wins) and is left out.
impl MetricsSource for TopicPolicies {
    fn families(&self) -> Vec<Family> {
        let rules = self.rules();
        let mut samples = Vec::new();
        for (i, (pattern, policy)) in rules.iter().enumerate() {
            if rules[..i]
                .iter()
                .any(|(p, _)| p.as_str() == pattern.as_str())
            {
                continue;
            }
            for reason in PolicyRefusal::ALL {
                if reason.applies(policy) {
                    samples.push(Sample::with_labels(
                        "",
                        vec![
                            ("policy", pattern.as_str().to_owned()),
                            ("reason", reason.as_str().to_owned()),
                        ],
                        Value::Count(self.refusals().get(i, reason)),
                    ));
                }
            }
        }
        if samples.is_empty() {
            return Vec::new();
        }
        vec![Family {
            name: "herald_policy_publish_refusals_total",
            help: "Client publishes refused by a topic policy, by the policy's pattern and reason.",
            kind: Kind::Counter,
            samples,
        }]
    }
}

/// The type of a metric family (Prometheus text format 0.0.4, `# TYPE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (until the process restarts).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Cumulative `_bucket{le=...}` samples, then `_sum` and `_count`.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A sample's value, written as Prometheus expects it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    /// A counter or a non-negative gauge.
    Count(u64),
    /// A gauge that may go below zero.
    Level(i64),
    /// A sum of seconds and the like.
    Real(f64),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Count(v) => write!(f, "{v}"),
            Value::Level(v) => write!(f, "{v}"),
            Value::Real(v) => write!(f, "{v}"),
        }
    }
}

/// One line of a family: `<name><suffix>{<label>="<value>",...} <value>`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Appended to the family's name (`_bucket`, `_sum`, `_count`), or empty.
    pub suffix: &'static str,
    /// The labels, in order: each one's name and its value (unescaped).
    pub labels: Vec<(&'static str, String)>,
    /// The value.
    pub value: Value,
}

impl Sample {
    /// A sample without labels.
    pub fn plain(suffix: &'static str, value: Value) -> Sample {
        Sample {
            suffix,
            labels: Vec::new(),
            value,
        }
    }

    /// A sample with one label.
    pub fn labelled(
        suffix: &'static str,
        label: &'static str,
        label_value: impl Into<String>,
        value: Value,
    ) -> Sample {
        Sample {
            suffix,
            labels: vec![(label, label_value.into())],
            value,
        }
    }

    /// A sample with several labels, written in the order given.
    pub fn with_labels(
        suffix: &'static str,
        labels: Vec<(&'static str, String)>,
        value: Value,
    ) -> Sample {
        Sample {
            suffix,
            labels,
            value,
        }
    }
}

/// One metric family: its `# HELP` and `# TYPE` lines and its samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    /// The metric name (`herald_...`).
    pub name: &'static str,
    /// The `# HELP` text.
    pub help: &'static str,
    /// The `# TYPE`.
    pub kind: Kind,
    /// The sample lines, in order.
    pub samples: Vec<Sample>,
}

impl Family {
    /// A counter with one unlabelled sample.
    pub fn counter(name: &'static str, help: &'static str, value: u64) -> Family {
        Family {
            name,
            help,
            kind: Kind::Counter,
            samples: vec![Sample::plain("", Value::Count(value))],
        }
    }

    /// A gauge with one unlabelled sample.
    pub fn gauge(name: &'static str, help: &'static str, value: Value) -> Family {
        Family {
            name,
            help,
            kind: Kind::Gauge,
            samples: vec![Sample::plain("", value)],
        }
    }
}

/// Writes `families` in the Prometheus text format (version 0.0.4): per
/// family a `# HELP` line, a `# TYPE` line and its samples. Label values are
/// escaped as the format requires (`\\`, `\"`, `\n`).
pub fn write_families(out: &mut String, families: &[Family]) {
    for f in families {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.as_str());
        for s in &f.samples {
            out.push_str(f.name);
            out.push_str(s.suffix);
            for (i, (label, value)) in s.labels.iter().enumerate() {
                let open = if i == 0 { "{" } else { "," };
                let _ = write!(out, "{open}{label}=\"");
                for ch in value.chars() {
                    match ch {
                        '\\' => out.push_str("\\\\"),
                        '"' => out.push_str("\\\""),
                        '\n' => out.push_str("\\n"),
                        c => out.push(c),
                    }
                }
                out.push('"');
            }
            if !s.labels.is_empty() {
                out.push('}');
            }
            let _ = writeln!(out, " {}", s.value);
        }
    }
}

/// Decrements the connection gauge when dropped.
#[derive(Debug)]
pub struct ConnectionGuard {
    metrics: std::sync::Arc<Metrics>,
    transport: Transport,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.metrics
            .gauge(self.transport)
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Stands for the server's TCP and TLS counters.
    #[derive(Debug)]
    struct Tcp;

    impl MetricsSource for Tcp {
        fn families(&self) -> Vec<Family> {
            vec![
                Family::counter(
                    "herald_tcp_connections_total",
                    "TCP connections accepted.",
                    7,
                ),
                Family::gauge(
                    "herald_tcp_connections",
                    "Open TCP connections.",
                    Value::Level(2),
                ),
                Family::counter(
                    "herald_tls_handshake_failures_total",
                    "TLS handshakes that failed or timed out.",
                    1,
                ),
            ]
        }
    }

    /// The exposition is byte for byte what it was before it was
    /// table-driven, with the families added since in their places.
    #[test]
    fn renders_the_established_text() {
        let m = Arc::new(Metrics::default());
        m.events_published.store(3, Ordering::Relaxed);
        let _ws = m.connection(Transport::WebSocket);
        m.observe_publish(Duration::from_micros(700));
        m.set_usage(4, 1234);
        assert_eq!(m.render("memory", &[&Tcp]), EXPECTED);
    }

    #[test]
    fn a_histogram_observation_lands_in_one_bucket_rendered_cumulatively() {
        let h = Histogram::new(&HANDOFF_BUCKETS);
        h.observe(Duration::from_nanos(1_000)); // on a bound: le="0.000001"
        h.observe(Duration::from_micros(30)); // le="0.00005"
        h.observe(Duration::from_secs(3)); // past the last bound: +Inf only
        assert_eq!(h.count(), 3);
        assert_eq!(h.sum(), Duration::from_nanos(3_000_031_000));
        let mut out = String::new();
        write_families(&mut out, &[h.family("x_seconds", "h")]);
        for line in [
            "x_seconds_bucket{le=\"0.000001\"} 1\n",
            "x_seconds_bucket{le=\"0.000025\"} 1\n",
            "x_seconds_bucket{le=\"0.00005\"} 2\n",
            "x_seconds_bucket{le=\"0.1\"} 2\n",
            "x_seconds_bucket{le=\"+Inf\"} 3\n",
            "x_seconds_sum 3.000031\n",
            "x_seconds_count 3\n",
        ] {
            assert!(out.contains(line), "{line} in {out}");
        }
        assert_eq!(out.lines().count(), 2 + HANDOFF_BUCKETS.len() + 1 + 2);
    }

    #[test]
    fn queued_events_sum_their_stripes_and_never_show_below_zero() {
        let q = QueuedEvents::default();
        q.adjust(1, 5);
        q.adjust(2, 3);
        q.adjust(17, -2); // another key of stripe 1
        assert_eq!(q.get(), 6);
        q.adjust(3, -10); // a take seen before its add
        assert_eq!(q.get(), 0);
        q.adjust(4, 10);
        assert_eq!(q.get(), 6);
    }

    #[test]
    fn policy_refusals_are_rendered_per_pattern_for_the_reasons_it_can_refuse() {
        use crate::policy::{PolicyRule, TopicPolicies, TopicPolicy};
        use crate::topic_pattern::TopicPattern;
        use crate::Topic;
        let rule = |pattern: &str, policy: TopicPolicy| PolicyRule {
            pattern: TopicPattern::parse(pattern).unwrap(),
            policy,
        };
        let policies = TopicPolicies::new(vec![
            rule(
                "game/**",
                TopicPolicy {
                    publish_rate: Some(1),
                    publish_hook: true,
                    ..TopicPolicy::DEFAULT
                },
            ),
            rule(
                "news/*",
                TopicPolicy {
                    client_publish: Some(false),
                    ..TopicPolicy::DEFAULT
                },
            ),
            rule(
                "live/**",
                TopicPolicy {
                    history: Some(0),
                    ..TopicPolicy::DEFAULT
                },
            ),
        ]);
        let game = Topic::new("game/1").unwrap();
        assert!(policies.admit_publish("a", &[&game]).is_ok());
        assert!(policies.admit_publish("a", &[&game, &game]).is_err());
        policies.count_refusal(&game, PolicyRefusal::PublishHook);
        policies.count_refusal(&Topic::new("news/x").unwrap(), PolicyRefusal::ClientPublish);
        // No rule: nothing to count.
        policies.count_refusal(&Topic::new("other").unwrap(), PolicyRefusal::ClientPublish);
        let mut out = String::new();
        write_families(&mut out, &policies.families());
        assert_eq!(
            out,
            "# HELP herald_policy_publish_refusals_total Client publishes refused by a topic policy, by the policy's pattern and reason.\n\
             # TYPE herald_policy_publish_refusals_total counter\n\
             herald_policy_publish_refusals_total{policy=\"game/**\",reason=\"rate_limited\"} 1\n\
             herald_policy_publish_refusals_total{policy=\"game/**\",reason=\"publish_hook\"} 1\n\
             herald_policy_publish_refusals_total{policy=\"news/*\",reason=\"client_publish\"} 1\n"
        );
        assert!(TopicPolicies::default().families().is_empty());
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        let family = Family {
            name: "x",
            help: "h",
            kind: Kind::Gauge,
            samples: vec![Sample::labelled("", "l", "a\\b\"c\nd", Value::Level(-1))],
        };
        write_families(&mut out, &[family]);
        assert_eq!(
            out,
            "# HELP x h\n# TYPE x gauge\nx{l=\"a\\\\b\\\"c\\nd\"} -1\n"
        );
    }

    #[test]
    fn several_labels_are_written_in_order() {
        let mut out = String::new();
        let labels = vec![
            ("hook", "connect".to_owned()),
            ("outcome", "a\"b".to_owned()),
        ];
        let family = Family {
            name: "x",
            help: "h",
            kind: Kind::Counter,
            samples: vec![Sample::with_labels("", labels, Value::Count(2))],
        };
        write_families(&mut out, &[family]);
        assert_eq!(
            out,
            "# HELP x h\n# TYPE x counter\nx{hook=\"connect\",outcome=\"a\\\"b\"} 2\n"
        );
    }

    const EXPECTED: &str = r#"# HELP herald_events_published_total Events accepted by the engine.
# TYPE herald_events_published_total counter
herald_events_published_total 3
# HELP herald_events_delivered_total Events written to subscribers, all transports.
# TYPE herald_events_delivered_total counter
herald_events_delivered_total 0
# HELP herald_slow_consumer_disconnects_total Subscribers disconnected for falling behind.
# TYPE herald_slow_consumer_disconnects_total counter
herald_slow_consumer_disconnects_total 0
# HELP herald_publish_errors_total Publishes refused or failed.
# TYPE herald_publish_errors_total counter
herald_publish_errors_total 0
# HELP herald_connections Open subscriber connections by transport.
# TYPE herald_connections gauge
herald_connections{transport="sse"} 0
herald_connections{transport="ws"} 1
herald_connections{transport="poll"} 0
# HELP herald_connections_total Subscriber connections accepted.
# TYPE herald_connections_total counter
herald_connections_total 1
# HELP herald_subscriber_queued_events Live events waiting in this node's subscriber queues, all connections.
# TYPE herald_subscriber_queued_events gauge
herald_subscriber_queued_events 0
# HELP herald_tcp_connections_total TCP connections accepted.
# TYPE herald_tcp_connections_total counter
herald_tcp_connections_total 7
# HELP herald_tcp_connections Open TCP connections.
# TYPE herald_tcp_connections gauge
herald_tcp_connections 2
# HELP herald_tls_handshake_failures_total TLS handshakes that failed or timed out.
# TYPE herald_tls_handshake_failures_total counter
herald_tls_handshake_failures_total 1
# HELP herald_publish_duration_seconds Time from the hub taking a publish to its acknowledgement (validation, idempotency, store).
# TYPE herald_publish_duration_seconds histogram
herald_publish_duration_seconds_bucket{le="0.0001"} 0
herald_publish_duration_seconds_bucket{le="0.00025"} 0
herald_publish_duration_seconds_bucket{le="0.0005"} 0
herald_publish_duration_seconds_bucket{le="0.001"} 1
herald_publish_duration_seconds_bucket{le="0.0025"} 1
herald_publish_duration_seconds_bucket{le="0.005"} 1
herald_publish_duration_seconds_bucket{le="0.01"} 1
herald_publish_duration_seconds_bucket{le="0.025"} 1
herald_publish_duration_seconds_bucket{le="0.05"} 1
herald_publish_duration_seconds_bucket{le="0.1"} 1
herald_publish_duration_seconds_bucket{le="0.5"} 1
herald_publish_duration_seconds_bucket{le="1"} 1
herald_publish_duration_seconds_bucket{le="+Inf"} 1
herald_publish_duration_seconds_sum 0.0007
herald_publish_duration_seconds_count 1
# HELP herald_store_duration_seconds Time of the engine's publish call (memory and embedded engines: their fan-out included).
# TYPE herald_store_duration_seconds histogram
herald_store_duration_seconds_bucket{le="0.0001"} 0
herald_store_duration_seconds_bucket{le="0.00025"} 0
herald_store_duration_seconds_bucket{le="0.0005"} 0
herald_store_duration_seconds_bucket{le="0.001"} 0
herald_store_duration_seconds_bucket{le="0.0025"} 0
herald_store_duration_seconds_bucket{le="0.005"} 0
herald_store_duration_seconds_bucket{le="0.01"} 0
herald_store_duration_seconds_bucket{le="0.025"} 0
herald_store_duration_seconds_bucket{le="0.05"} 0
herald_store_duration_seconds_bucket{le="0.1"} 0
herald_store_duration_seconds_bucket{le="0.5"} 0
herald_store_duration_seconds_bucket{le="1"} 0
herald_store_duration_seconds_bucket{le="+Inf"} 0
herald_store_duration_seconds_sum 0
herald_store_duration_seconds_count 0
# HELP herald_fanout_duration_seconds Time to hand one event to the local subscriber queues of its topic.
# TYPE herald_fanout_duration_seconds histogram
herald_fanout_duration_seconds_bucket{le="0.000001"} 0
herald_fanout_duration_seconds_bucket{le="0.0000025"} 0
herald_fanout_duration_seconds_bucket{le="0.000005"} 0
herald_fanout_duration_seconds_bucket{le="0.00001"} 0
herald_fanout_duration_seconds_bucket{le="0.000025"} 0
herald_fanout_duration_seconds_bucket{le="0.00005"} 0
herald_fanout_duration_seconds_bucket{le="0.0001"} 0
herald_fanout_duration_seconds_bucket{le="0.00025"} 0
herald_fanout_duration_seconds_bucket{le="0.0005"} 0
herald_fanout_duration_seconds_bucket{le="0.001"} 0
herald_fanout_duration_seconds_bucket{le="0.0025"} 0
herald_fanout_duration_seconds_bucket{le="0.005"} 0
herald_fanout_duration_seconds_bucket{le="0.01"} 0
herald_fanout_duration_seconds_bucket{le="0.025"} 0
herald_fanout_duration_seconds_bucket{le="0.05"} 0
herald_fanout_duration_seconds_bucket{le="0.1"} 0
herald_fanout_duration_seconds_bucket{le="+Inf"} 0
herald_fanout_duration_seconds_sum 0
herald_fanout_duration_seconds_count 0
# HELP herald_topics_dropped_total Idle topics dropped from memory (no subscriber, nothing retained).
# TYPE herald_topics_dropped_total counter
herald_topics_dropped_total 0
# HELP herald_budget_refusals_total Publishes refused because a global budget (topics, retained bytes) was used up.
# TYPE herald_budget_refusals_total counter
herald_budget_refusals_total 0
# HELP herald_presence_errors_total Presence joins, leaves and join/leave signals that failed (store or engine unreachable).
# TYPE herald_presence_errors_total counter
herald_presence_errors_total 0
# HELP herald_presence_signals_dropped_total herald.join / herald.leave left out of a subscriber queue at least half full.
# TYPE herald_presence_signals_dropped_total counter
herald_presence_signals_dropped_total 0
# HELP herald_topics Topics the engine holds in memory.
# TYPE herald_topics gauge
herald_topics 4
# HELP herald_retained_bytes Bytes of retained events the engine holds (data, name and a fixed overhead per event).
# TYPE herald_retained_bytes gauge
herald_retained_bytes 1234
# HELP herald_engine_info The engine in use.
# TYPE herald_engine_info gauge
herald_engine_info{engine="memory"} 1
"#;
}
