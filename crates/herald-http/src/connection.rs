//! What the server that accepted a connection tells the router about it.
//!
//! The router never accepts connections itself: `herald-server` (or any
//! server an application nests the router in) does. A server that wants the
//! transports to know a request's peer, to end a slow consumer's response
//! at once, or to show its own counters on `/metrics` inserts a
//! [`ConnectionHandle`] into each request's extensions. Without one (plain
//! `axum::serve`), the transports work the same, minus those features. A
//! transport asks for a write deadline by inserting [`WriteDeadline`] into
//! its response's extensions; servers that write answers themselves honour
//! it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herald_core::metrics::MetricsSource;
use tokio::sync::{watch, Notify};

/// Per-connection data handlers can read from the request extensions.
#[derive(Clone, Debug)]
pub struct ConnectionHandle {
    /// Wake to end the response at once: HTTP/1.1 drops the connection,
    /// HTTP/2 ends this stream's event-stream body. A WebSocket fires it
    /// itself when a write makes no progress for the write deadline; over
    /// HTTP/2 (extended CONNECT, RFC 8441) herald-server gives it the
    /// connection's switch, so that firing it drops the whole connection.
    pub kill: Option<Arc<Notify>>,
    /// The peer's address.
    pub peer: SocketAddr,
    /// Becomes `true` when the peer shuts down its sending side (HTTP/1.1;
    /// `None` for HTTP/2 and servers that do not watch). A held long poll
    /// then answers at once with what it has, and an event stream ends
    /// (its presence entries leave at once). A dropped sender means
    /// "unknown", never "closed".
    pub read_closed: Option<watch::Receiver<bool>>,
    /// The serving process's own counters (TCP connections, TLS handshake
    /// failures), rendered by `/metrics` beside the hub's; `None` when the
    /// server keeps none.
    pub server_metrics: Option<Arc<dyn MetricsSource>>,
    /// The server writes the head of an answer that is not an event stream
    /// only once its body's first frame is ready (or the body ended), with
    /// `content-length` when the body knows its length by then
    /// (herald-server's HTTP/1.1 direct path). A held long poll then
    /// returns its response at once with a body that waits for the answer,
    /// and holds only what the wait needs. `false`: the handler waits and
    /// the body is complete when returned.
    pub defers_head: bool,
}

impl ConnectionHandle {
    /// A handle for a connection from `peer`, with no kill switch, no
    /// half-close watch and no server counters.
    pub fn new(peer: SocketAddr) -> ConnectionHandle {
        ConnectionHandle {
            kill: None,
            peer,
            read_closed: None,
            server_metrics: None,
            defers_head: false,
        }
    }
}

/// A response extension: the write deadline of this answer (a write that
/// does not progress for this long drops the connection), honoured by
/// servers that write answers on the socket themselves (`herald-server`'s
/// HTTP/1.1 push path). Answers without one use the default of
/// [`crate::HttpConfig::write_timeout`].
#[derive(Clone, Copy, Debug)]
pub struct WriteDeadline(pub Duration);
