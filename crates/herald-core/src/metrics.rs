//! Counters for `/metrics`, rendered in the Prometheus text format.

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
    pub events_published: AtomicU64,
    pub events_delivered: AtomicU64,
    pub slow_consumer_disconnects: AtomicU64,
    pub publish_errors: AtomicU64,
    pub connections_sse: AtomicI64,
    pub connections_ws: AtomicI64,
    pub connections_poll: AtomicI64,
    pub connections_total: AtomicU64,
    /// TCP connections accepted, and open now (one HTTP/2 connection carries many streams).
    pub tcp_connections_total: AtomicU64,
    pub tcp_connections_open: AtomicI64,
    pub tls_handshake_failures: AtomicU64,
    /// Topics the engine dropped from memory (idle: no subscriber, nothing retained).
    pub topics_dropped: AtomicU64,
    /// Publishes refused because a global budget was used up (503 `server_full`).
    pub budget_refusals: AtomicU64,
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

/// The transports, for per-transport gauges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Sse,
    WebSocket,
    Poll,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::WebSocket => "ws",
            Transport::Poll => "poll",
        }
    }
}

impl Metrics {
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

    /// The Prometheus text exposition.
    pub fn render(&self, engine: &str) -> String {
        let mut o = String::with_capacity(2048);
        let c = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let _ = writeln!(
            o,
            "# HELP herald_events_published_total Events accepted by the engine."
        );
        let _ = writeln!(o, "# TYPE herald_events_published_total counter");
        let _ = writeln!(
            o,
            "herald_events_published_total {}",
            c(&self.events_published)
        );
        let _ = writeln!(
            o,
            "# HELP herald_events_delivered_total Events written to subscribers, all transports."
        );
        let _ = writeln!(o, "# TYPE herald_events_delivered_total counter");
        let _ = writeln!(
            o,
            "herald_events_delivered_total {}",
            c(&self.events_delivered)
        );
        let _ = writeln!(o, "# HELP herald_slow_consumer_disconnects_total Subscribers disconnected for falling behind.");
        let _ = writeln!(o, "# TYPE herald_slow_consumer_disconnects_total counter");
        let _ = writeln!(
            o,
            "herald_slow_consumer_disconnects_total {}",
            c(&self.slow_consumer_disconnects)
        );
        let _ = writeln!(
            o,
            "# HELP herald_publish_errors_total Publishes refused or failed."
        );
        let _ = writeln!(o, "# TYPE herald_publish_errors_total counter");
        let _ = writeln!(o, "herald_publish_errors_total {}", c(&self.publish_errors));
        let _ = writeln!(
            o,
            "# HELP herald_connections Open subscriber connections by transport."
        );
        let _ = writeln!(o, "# TYPE herald_connections gauge");
        for t in [Transport::Sse, Transport::WebSocket, Transport::Poll] {
            let _ = writeln!(
                o,
                "herald_connections{{transport=\"{}\"}} {}",
                t.as_str(),
                self.open(t)
            );
        }
        let _ = writeln!(
            o,
            "# HELP herald_connections_total Subscriber connections accepted."
        );
        let _ = writeln!(o, "# TYPE herald_connections_total counter");
        let _ = writeln!(o, "herald_connections_total {}", c(&self.connections_total));
        let _ = writeln!(
            o,
            "# HELP herald_tcp_connections_total TCP connections accepted."
        );
        let _ = writeln!(o, "# TYPE herald_tcp_connections_total counter");
        let _ = writeln!(
            o,
            "herald_tcp_connections_total {}",
            c(&self.tcp_connections_total)
        );
        let _ = writeln!(o, "# HELP herald_tcp_connections Open TCP connections.");
        let _ = writeln!(o, "# TYPE herald_tcp_connections gauge");
        let _ = writeln!(
            o,
            "herald_tcp_connections {}",
            self.tcp_connections_open.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP herald_tls_handshake_failures_total TLS handshakes that failed or timed out."
        );
        let _ = writeln!(o, "# TYPE herald_tls_handshake_failures_total counter");
        let _ = writeln!(
            o,
            "herald_tls_handshake_failures_total {}",
            c(&self.tls_handshake_failures)
        );
        let _ = writeln!(
            o,
            "# HELP herald_publish_duration_seconds Time for the engine to accept a publish."
        );
        let _ = writeln!(o, "# TYPE herald_publish_duration_seconds histogram");
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                o,
                "herald_publish_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                c(&self.latency_buckets[i])
            );
        }
        let count = c(&self.latency_count);
        let _ = writeln!(
            o,
            "herald_publish_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            o,
            "herald_publish_duration_seconds_sum {}",
            c(&self.latency_sum_us) as f64 / 1e6
        );
        let _ = writeln!(o, "herald_publish_duration_seconds_count {count}");
        let _ = writeln!(
            o,
            "# HELP herald_topics_dropped_total Idle topics dropped from memory (no subscriber, nothing retained)."
        );
        let _ = writeln!(o, "# TYPE herald_topics_dropped_total counter");
        let _ = writeln!(o, "herald_topics_dropped_total {}", c(&self.topics_dropped));
        let _ = writeln!(
            o,
            "# HELP herald_budget_refusals_total Publishes refused because a global budget (topics, retained bytes) was used up."
        );
        let _ = writeln!(o, "# TYPE herald_budget_refusals_total counter");
        let _ = writeln!(
            o,
            "herald_budget_refusals_total {}",
            c(&self.budget_refusals)
        );
        if self.usage_reported.load(Ordering::Relaxed) {
            let (topics, bytes) = self.usage();
            let _ = writeln!(o, "# HELP herald_topics Topics the engine holds in memory.");
            let _ = writeln!(o, "# TYPE herald_topics gauge");
            let _ = writeln!(o, "herald_topics {topics}");
            let _ = writeln!(
                o,
                "# HELP herald_retained_bytes Bytes of retained events the engine holds (data, name and a fixed overhead per event)."
            );
            let _ = writeln!(o, "# TYPE herald_retained_bytes gauge");
            let _ = writeln!(o, "herald_retained_bytes {bytes}");
        }
        let _ = writeln!(o, "# HELP herald_engine_info The engine in use.");
        let _ = writeln!(o, "# TYPE herald_engine_info gauge");
        let _ = writeln!(o, "herald_engine_info{{engine=\"{engine}\"}} 1");
        o
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
