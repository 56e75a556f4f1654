//! The accepted TCP socket, reset rather than closed when it is dropped
//! while a write is blocked.
//!
//! A connection is dropped with a write blocked when its client stopped
//! reading: at the write deadline, as a slow consumer, or at the end of a
//! shutdown's drain. Closed the usual way (FIN), the kernel would keep the
//! orphaned socket in FIN-WAIT-1 with its whole send buffer (megabytes)
//! for as long as the peer keeps acknowledging zero-window probes, so a
//! client could hold that memory past its connection's end, one connection
//! after another. With `SO_LINGER` 0 the close sends RST and frees it at
//! once (RFC 9293, section 3.10.5: an abort). The bytes the peer had not
//! read are lost either way. A socket whose writes all completed closes
//! with FIN as usual, with a `TCP_USER_TIMEOUT` (RFC 5482) set first: what
//! it still has unsent when the peer reads nothing (an answer that fitted
//! in the send buffer) is given up on after that long, instead of holding
//! the buffer for as long as the peer acknowledges the kernel's probes.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::metrics::ServerMetrics;

/// An accepted TCP stream that remembers whether its last write (or flush,
/// or shutdown) was left waiting, and if so aborts the connection (RST)
/// when dropped. It counts itself in
/// [`ServerMetrics::tcp_connections_open`] from its making to its drop:
/// the socket outlives whatever serves it (a WebSocket upgraded from
/// HTTP/1.1 holds it after hyper's connection has ended).
pub(crate) struct Socket {
    inner: TcpStream,
    metrics: Arc<ServerMetrics>,
    /// The last write, flush or shutdown returned `Pending`.
    write_blocked: bool,
    /// The `TCP_USER_TIMEOUT` set as the socket closes gracefully, in
    /// milliseconds (4 bytes, not a `Duration`'s 16: every connection's
    /// task holds it).
    close_timeout_ms: u32,
}

impl Socket {
    pub(crate) fn new(
        inner: TcpStream,
        close_timeout: Duration,
        metrics: Arc<ServerMetrics>,
    ) -> Self {
        metrics.tcp_connections_open.fetch_add(1, Ordering::Relaxed);
        Socket {
            inner,
            metrics,
            write_blocked: false,
            close_timeout_ms: u32::try_from(close_timeout.as_millis()).unwrap_or(u32::MAX),
        }
    }

    fn note<T>(&mut self, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        self.write_blocked = r.is_pending();
        r
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.metrics
            .tcp_connections_open
            .fetch_sub(1, Ordering::Relaxed);
        let socket = socket2::SockRef::from(&self.inner);
        if self.write_blocked {
            let _ = socket.set_linger(Some(Duration::ZERO));
        } else {
            let timeout = Duration::from_millis(self.close_timeout_ms.into());
            let _ = socket.set_tcp_user_timeout(Some(timeout));
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.note(r)
    }
}
