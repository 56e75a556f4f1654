//! A WebSocket's socket with its read-ahead buffer on the stack: an idle
//! connection holds no read buffer at all.
//!
//! tungstenite keeps its own read buffer for a connection's whole life, and
//! reads into it at most its configured size at a time. Sized for few
//! system calls (1 KiB), that buffer was a quarter of an idle WebSocket's
//! memory. [`ReadAhead`] lets it be small (see [`TUNGSTENITE_READ`]): each
//! read of the socket goes into a chunk on the stack, what tungstenite
//! asked for is copied out, and only what is left over (bytes the client
//! has already sent) moves to the heap, until tungstenite takes it.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// tungstenite's read buffer (`WebSocketConfig::read_buffer_size`): kept
/// for the connection's life, and the most it takes per read from
/// [`ReadAhead`], so a message of `n` bytes takes `n / 64` copies out of
/// the chunk, not that many system calls.
pub(super) const TUNGSTENITE_READ: usize = 64;

/// The most bytes one read of the socket takes (on the stack).
const CHUNK: usize = 16 * 1024;

/// A socket whose reads go through a stack chunk; writes pass through.
pub(super) struct ReadAhead<S> {
    io: S,
    /// Bytes read from the socket that the reader has not taken yet, from
    /// `at`; `None` (no allocation) whenever it took everything.
    ahead: Option<Box<[u8]>>,
    at: usize,
}

impl<S> ReadAhead<S> {
    pub(super) fn new(io: S) -> Self {
        ReadAhead {
            io,
            ahead: None,
            at: 0,
        }
    }

    /// Bytes read from the socket and not yet taken by the reader.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.ahead.as_ref().map_or(0, |a| a.len() - self.at)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if let Some(ahead) = &this.ahead {
            let n = (ahead.len() - this.at).min(buf.remaining());
            buf.put_slice(&ahead[this.at..this.at + n]);
            this.at += n;
            if this.at == ahead.len() {
                this.ahead = None;
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= CHUNK {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let mut chunk = [MaybeUninit::<u8>::uninit(); CHUNK];
        let mut read = ReadBuf::uninit(&mut chunk);
        ready!(Pin::new(&mut this.io).poll_read(cx, &mut read))?;
        let got = read.filled();
        let n = got.len().min(buf.remaining());
        buf.put_slice(&got[..n]);
        if n < got.len() {
            this.ahead = Some(got[n..].into());
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Small reads see every byte in order, the leftover is freed once
    /// taken, and a read as large as a chunk goes straight to the socket.
    #[tokio::test]
    async fn small_reads_take_every_byte_and_free_the_leftover() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let sent: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        client.write_all(&sent).await.unwrap();
        drop(client);
        let mut socket = ReadAhead::new(server);
        let mut got = Vec::new();
        let mut small = [0u8; TUNGSTENITE_READ];
        let n = socket.read(&mut small).await.unwrap();
        assert_eq!(n, TUNGSTENITE_READ);
        got.extend_from_slice(&small[..n]);
        assert_eq!(socket.held(), CHUNK - TUNGSTENITE_READ);
        while socket.held() > 0 {
            let n = socket.read(&mut small).await.unwrap();
            got.extend_from_slice(&small[..n]);
        }
        assert!(socket.ahead.is_none());
        let mut large = vec![0u8; CHUNK];
        let n = socket.read(&mut large).await.unwrap();
        assert_eq!(socket.held(), 0);
        got.extend_from_slice(&large[..n]);
        socket.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, sent);
    }
}
