//! The connection's stream as hyper sees it: the bytes already read put
//! back in front, and hyper's empty automatic refusals given the JSON body.

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::response::automatic_answer;
use crate::shutdown::DrainToken;
use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream that yields `prefix` before reading from `inner`: the bytes the
/// accept loop read while deciding, handed back to hyper.
///
/// Once `eof` is set (the peer half-closed), reading yields what is left
/// of the prefix and then the end of input.
///
/// On the write side it gives hyper's automatic answers to a head it could
/// not read (an empty 400, 414 or 431 written when a later request on a
/// connection hyper serves is malformed or over the limits) the JSON error
/// body every other refusal has: see [`automatic_answer`].
///
/// It may carry the server's [`DrainToken`], so that whoever ends up with
/// the socket (hyper, or the WebSocket hyper upgrades it to) holds off the
/// end of a graceful shutdown until it is done with it.
///
/// It may fail writes that make no progress within a deadline
/// ([`Rewind::limit_stalled_writes`]): hyper has no write timeout of its
/// own, so without it a client that stops reading would hold its
/// connection, and the kernel's send buffer, for good.
pub(crate) struct Rewind<I> {
    prefix: Bytes,
    inner: I,
    /// The peer has shut down its sending side.
    pub(crate) eof: bool,
    /// The JSON answer being written in place of hyper's empty one, and the
    /// length of hyper's (reported as written once ours is). Boxed: rare,
    /// and every socket would otherwise carry its 40 bytes.
    replacing: Option<Box<(Bytes, usize)>>,
    /// Held for as long as the socket lives.
    drain: Option<DrainToken>,
    /// Told when a read finds the end of input (the peer closed or
    /// half-closed), for the handlers of requests hyper serves.
    read_closed: Option<(herald_http::ReadClosedSender, Arc<AtomicBool>)>,
    /// The write deadline in milliseconds (see
    /// [`Rewind::limit_stalled_writes`]), and the timer of the write that
    /// is waiting now.
    write_limit: Option<(Arc<AtomicU64>, Arc<AtomicBool>)>,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<I> Rewind<I> {
    pub(crate) fn new(prefix: Bytes, inner: I) -> Self {
        Rewind {
            prefix,
            inner,
            eof: false,
            replacing: None,
            drain: None,
            read_closed: None,
            write_limit: None,
            stalled: None,
        }
    }

    /// From now on a write or flush that makes no progress for `limit`
    /// milliseconds (read at the moment it starts waiting; the caller sets
    /// it to the write deadline of the answer being written) fails with
    /// `TimedOut`, and hyper then drops the connection with all it held, as
    /// the direct path does. Not once `switched` is set (an answer
    /// switched protocols): the upgraded protocol (a WebSocket) times its
    /// own writes.
    pub(crate) fn limit_stalled_writes(
        &mut self,
        limit: Arc<AtomicU64>,
        switched: Arc<AtomicBool>,
    ) {
        self.write_limit = Some((limit, switched));
    }

    /// `r`, a write's or a flush's outcome, failed with `TimedOut` once the
    /// write has waited past the deadline; the timer starts when a write
    /// first waits and stops when one progresses.
    fn stall_check<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        let limit = match &self.write_limit {
            Some((limit, switched)) if r.is_pending() && !switched.load(Ordering::Relaxed) => {
                limit.load(Ordering::Relaxed)
            }
            _ => {
                self.stalled = None;
                return r;
            }
        };
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(limit))));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.stalled = None;
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "a write made no progress within the write deadline",
                )))
            }
            Poll::Pending => r,
        }
    }

    /// Sets `tx` to `true` when a read finds the end of input, and from
    /// then on looks for it while hyper writes: hyper does not read a
    /// connection in the middle of an answer (it lets half-closed peers
    /// get theirs), so without this a streaming answer would learn that
    /// its client went away only at its second failed write. Bytes read
    /// this way (a pipelined request) are kept, in order, for hyper's next
    /// read, at most [`PEEK_MAX`] of them.
    ///
    /// `upgraded` stops the looking ahead: once a request upgrades the
    /// connection (a WebSocket), its protocol reads all the time itself.
    pub(crate) fn on_read_closed(
        &mut self,
        tx: herald_http::ReadClosedSender,
        upgraded: Arc<AtomicBool>,
    ) {
        self.read_closed = Some((tx, upgraded));
    }

    /// Once an answer has switched protocols (101), no HTTP handler will
    /// wait for the end of input again: the sender that tells them goes
    /// (its receivers learn it never will), and so does the write deadline
    /// (off once switched), with its two shared values.
    fn release_after_switch(&mut self) {
        let switched = self
            .write_limit
            .as_ref()
            .is_some_and(|(_, switched)| switched.load(Ordering::Relaxed));
        if switched {
            self.read_closed = None;
            self.write_limit = None;
        }
    }

    fn saw_end(&mut self) {
        if let Some((tx, _)) = &self.read_closed {
            tx.close();
        }
    }
}

/// The most bytes [`Rewind`] reads ahead of hyper while watching for the
/// end of input.
pub(crate) const PEEK_MAX: usize = 64 * 1024;

impl<I: AsyncRead + Unpin> Rewind<I> {
    /// Looks for the end of input without waiting (see
    /// [`Rewind::on_read_closed`]); the read registers the task for the
    /// socket's next readiness, so the end is seen when it comes.
    fn watch_end(&mut self, cx: &mut Context<'_>) {
        let watching = self
            .read_closed
            .as_ref()
            .is_some_and(|(_, up)| !up.load(Ordering::Relaxed));
        if !watching || self.eof || self.prefix.len() >= PEEK_MAX {
            return;
        }
        let mut chunk = [0u8; 4096];
        let mut buf = ReadBuf::new(&mut chunk);
        match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                self.eof = true;
                self.saw_end();
            }
            Poll::Ready(Ok(())) => {
                let mut b = bytes::BytesMut::with_capacity(self.prefix.len() + buf.filled().len());
                b.extend_from_slice(&self.prefix);
                b.extend_from_slice(buf.filled());
                self.prefix = b.freeze();
            }
            // A reset peer is gone too; hyper's next write fails.
            Poll::Ready(Err(_)) => self.saw_end(),
            Poll::Pending => {}
        }
    }

    /// Makes the stream hold `token` for the rest of its life.
    pub(crate) fn hold(&mut self, token: Option<DrainToken>) {
        self.drain = token;
    }

    /// Whether what is still to be read starts with `bytes`.
    pub(crate) fn starts_with(&self, bytes: &[u8]) -> bool {
        self.prefix.starts_with(bytes)
    }

    /// Puts `bytes` back in front of what is still to be read.
    pub(crate) fn unread(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        self.prefix = if self.prefix.is_empty() {
            bytes
        } else {
            let mut b = bytes::BytesMut::with_capacity(bytes.len() + self.prefix.len());
            b.extend_from_slice(&bytes);
            b.extend_from_slice(&self.prefix);
            b.freeze()
        };
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.read_closed.is_some() {
            self.release_after_switch();
        }
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Free the allocation: the stream may live for hours.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        if self.eof {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() == before && buf.remaining() > 0 {
            self.saw_end();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> Rewind<I> {
    /// Writes the pending replacement; `Ok(n)` with the length of what it
    /// stands for once all of it is written.
    fn poll_replace(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let Some(replacing) = self.replacing.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        let (bytes, stands_for) = &mut **replacing;
        while !bytes.is_empty() {
            match Pin::new(&mut self.inner).poll_write(cx, bytes) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(n)) => bytes.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = *stands_for;
        self.replacing = None;
        Poll::Ready(Ok(n))
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.replacing.is_none() {
            if let Some(answer) = automatic_answer(buf) {
                self.replacing = Some(Box::new((answer, buf.len())));
            }
        }
        let r = if self.replacing.is_some() {
            self.poll_replace(cx)
        } else {
            Pin::new(&mut self.inner).poll_write(cx, buf)
        };
        self.stall_check(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.replacing.is_some() {
            let r = self.poll_replace(cx);
            return self.stall_check(cx, r);
        }
        // An automatic answer is one head alone.
        let mut non_empty = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(first), None) = (non_empty.next(), non_empty.next()) {
            if first.starts_with(b"HTTP/1.1 4") {
                let first: &[u8] = first;
                return self.poll_write(cx, first);
            }
        }
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.stall_check(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.replacing.is_some() {
            if let Poll::Ready(Err(e)) = self.poll_replace(cx) {
                return Poll::Ready(Err(e));
            }
            if self.replacing.is_some() {
                return self.stall_check(cx, Poll::Pending);
            }
        }
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch_end(cx);
        self.stall_check(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn rewind_replays_the_prefix() {
        let mut r = Rewind::new(Bytes::from_static(b"ab"), &b"never read"[..]);
        r.eof = true;
        let mut s = String::new();
        r.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "ab");
        let mut r = Rewind::new(Bytes::from_static(b"abc"), &b"def"[..]);
        let mut s = String::new();
        r.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "abcdef");
        let mut r = Rewind::new(Bytes::from_static(b"cd"), &b"ef"[..]);
        r.unread(Bytes::from_static(b"ab"));
        r.unread(Bytes::new());
        let mut s = String::new();
        r.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "abcdef");
    }
}
