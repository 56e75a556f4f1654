//! Counters for `/metrics`, rendered in the Prometheus text format
//! (version 0.0.4) from a table of [`Family`] values, so that the core and
//! the server (its TCP and TLS counters, a [`MetricsSource`]) write the same
//! way.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the publish latency histogram buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
];

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
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
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
    /// Records how long the engine took to accept a publish.
    pub fn observe_publish(&self, took: Duration) {
        let secs = took.as_secs_f64();
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
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
        ]
    }

    fn families_after_extra(&self, engine: &str) -> Vec<Family> {
        let c = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let count = c(&self.latency_count);
        let mut latency: Vec<Sample> = LATENCY_BUCKETS
            .iter()
            .zip(&self.latency_buckets)
            .map(|(bound, n)| {
                Sample::labelled("_bucket", "le", bound.to_string(), Value::Count(c(n)))
            })
            .collect();
        latency.push(Sample::labelled(
            "_bucket",
            "le",
            "+Inf",
            Value::Count(count),
        ));
        latency.push(Sample::plain(
            "_sum",
            Value::Real(c(&self.latency_sum_us) as f64 / 1e6),
        ));
        latency.push(Sample::plain("_count", Value::Count(count)));
        let mut families = vec![
            Family {
                name: "herald_publish_duration_seconds",
                help: "Time for the engine to accept a publish.",
                kind: Kind::Histogram,
                samples: latency,
            },
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

    /// The exposition is byte for byte what it was before it was table-driven.
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
# HELP herald_tcp_connections_total TCP connections accepted.
# TYPE herald_tcp_connections_total counter
herald_tcp_connections_total 7
# HELP herald_tcp_connections Open TCP connections.
# TYPE herald_tcp_connections gauge
herald_tcp_connections 2
# HELP herald_tls_handshake_failures_total TLS handshakes that failed or timed out.
# TYPE herald_tls_handshake_failures_total counter
herald_tls_handshake_failures_total 1
# HELP herald_publish_duration_seconds Time for the engine to accept a publish.
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
