//! The server's own counters: TCP connections and TLS handshakes. They are
//! the server's, not the hub's (an application that nests the router in its
//! own server has none of them), and `/metrics` shows them beside the hub's
//! because the accept loop puts them in every request's
//! [`ConnectionHandle`](herald_http::ConnectionHandle).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use herald_core::metrics::{Family, MetricsSource, Value};

/// Counters of the accept loop.
#[derive(Debug, Default)]
pub struct ServerMetrics {
    /// TCP connections accepted (one HTTP/2 connection carries many streams).
    pub tcp_connections_total: AtomicU64,
    /// TCP connections open now: accepted and not yet closed, TLS
    /// handshakes in progress and WebSockets upgraded from HTTP/1.1
    /// included.
    pub tcp_connections_open: AtomicI64,
    /// TLS handshakes that failed or did not finish within
    /// [`HANDSHAKE_TIMEOUT`](crate::HANDSHAKE_TIMEOUT).
    pub tls_handshake_failures: AtomicU64,
}

impl MetricsSource for ServerMetrics {
    fn families(&self) -> Vec<Family> {
        vec![
            Family::counter(
                "herald_tcp_connections_total",
                "TCP connections accepted.",
                self.tcp_connections_total.load(Ordering::Relaxed),
            ),
            Family::gauge(
                "herald_tcp_connections",
                "Open TCP connections.",
                Value::Level(self.tcp_connections_open.load(Ordering::Relaxed)),
            ),
            Family::counter(
                "herald_tls_handshake_failures_total",
                "TLS handshakes that failed or timed out.",
                self.tls_handshake_failures.load(Ordering::Relaxed),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_established_names() {
        let m = ServerMetrics::default();
        m.tcp_connections_total.store(7, Ordering::Relaxed);
        m.tcp_connections_open.store(2, Ordering::Relaxed);
        m.tls_handshake_failures.store(1, Ordering::Relaxed);
        let mut out = String::new();
        herald_core::metrics::write_families(&mut out, &m.families());
        assert_eq!(
            out,
            "# HELP herald_tcp_connections_total TCP connections accepted.\n\
             # TYPE herald_tcp_connections_total counter\n\
             herald_tcp_connections_total 7\n\
             # HELP herald_tcp_connections Open TCP connections.\n\
             # TYPE herald_tcp_connections gauge\n\
             herald_tcp_connections 2\n\
             # HELP herald_tls_handshake_failures_total TLS handshakes that failed or timed out.\n\
             # TYPE herald_tls_handshake_failures_total counter\n\
             herald_tls_handshake_failures_total 1\n"
        );
    }
}
