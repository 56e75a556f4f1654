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
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald_core::metrics::MetricsSource;
use tokio::sync::Notify;

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
    /// Told when the peer shuts down its sending side (HTTP/1.1; `None`
    /// for HTTP/2 and servers that do not watch). A held long poll then
    /// answers at once with what it has, and an event stream ends (its
    /// presence entries leave at once). A dropped sender means "unknown",
    /// never "closed".
    pub read_closed: Option<ReadClosed>,
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

/// Nobody has told the end of input yet, and the sender still lives.
const OPEN: u8 = 0;
/// The peer shut down its sending side.
const CLOSED: u8 = 1;
/// The sender went without seeing the end of input: it will not be told.
const ABANDONED: u8 = 2;

#[derive(Debug, Default)]
struct HalfClose {
    state: AtomicU8,
    changed: Notify,
}

impl HalfClose {
    fn settle(&self, to: u8) {
        if self
            .state
            .compare_exchange(OPEN, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.changed.notify_waiters();
        }
    }
}

/// A connection's end-of-input signal, as the router's handlers see it
/// ([`ConnectionHandle::read_closed`]): whether the peer shut down its
/// sending side (TCP half-close, a FIN read as end of input), told once by
/// the server that reads the socket ([`ReadClosedSender`]). Cloning shares
/// it. One allocation of about 64 bytes per connection, where a
/// `tokio::sync::watch` channel took about 340 (it keeps eight wait lists).
#[derive(Clone, Debug)]
pub struct ReadClosed(Arc<HalfClose>);

/// The server's side of a [`ReadClosed`]: [`close`](Self::close) tells the
/// end of input; dropping it without that tells waiters it never will.
#[derive(Debug)]
pub struct ReadClosedSender(Arc<HalfClose>);

impl ReadClosed {
    /// A new signal, not closed, and its sender.
    pub fn channel() -> (ReadClosedSender, ReadClosed) {
        let shared = Arc::new(HalfClose::default());
        (ReadClosedSender(shared.clone()), ReadClosed(shared))
    }

    /// Whether the peer has shut down its sending side.
    pub fn is_closed(&self) -> bool {
        self.0.state.load(Ordering::Acquire) == CLOSED
    }

    /// Whether the end of input may still be told: `false` once it was, or
    /// once the sender went without it.
    pub fn is_watched(&self) -> bool {
        self.0.state.load(Ordering::Acquire) == OPEN
    }

    /// Waits until the end of input is told (`true`) or the sender goes
    /// without telling it (`false`); at once if either happened already.
    /// Cancel-safe.
    pub async fn wait(&self) -> bool {
        let notified = self.0.changed.notified();
        tokio::pin!(notified);
        loop {
            // Registered before the state is read, so a change between the
            // read and the wait is not missed.
            notified.as_mut().enable();
            match self.0.state.load(Ordering::Acquire) {
                CLOSED => return true,
                ABANDONED => return false,
                _ => {}
            }
            notified.as_mut().await;
            notified.set(self.0.changed.notified());
        }
    }
}

impl ReadClosedSender {
    /// Tells the end of input: every waiter wakes with `true`. Later calls
    /// do nothing.
    pub fn close(&self) {
        self.0.settle(CLOSED);
    }
}

impl Drop for ReadClosedSender {
    fn drop(&mut self) {
        self.0.settle(ABANDONED);
    }
}

#[cfg(test)]
mod tests {
    use super::ReadClosed;
    use std::time::Duration;

    #[tokio::test]
    async fn waiters_learn_the_end_of_input_or_that_it_will_not_be_told() {
        let (tx, rx) = ReadClosed::channel();
        assert!(rx.is_watched() && !rx.is_closed());
        let waiting = tokio::spawn({
            let rx = rx.clone();
            async move { rx.wait().await }
        });
        // Not told yet: the waiter waits.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        tx.close();
        assert!(waiting.await.unwrap(), "told: closed");
        assert!(rx.is_closed() && !rx.is_watched());
        drop(tx);
        assert!(rx.is_closed(), "a close stays once the sender goes");
        assert!(rx.wait().await, "and a later wait sees it at once");

        let (tx, rx) = ReadClosed::channel();
        let waiting = tokio::spawn({
            let rx = rx.clone();
            async move { rx.wait().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(tx);
        assert!(!waiting.await.unwrap(), "the sender went: never closed");
        assert!(!rx.is_closed() && !rx.is_watched());
    }
}
