//! HTTP/1.1 event streams and long polls written straight to the socket.
//!
//! An idle SSE connection or a held long poll is most of what a push server
//! holds, and through hyper each one keeps a read buffer and a write buffer of
//! 8 KiB (hyper's smallest) for as long as it lives, although after the
//! request head it reads nothing and writes little. So the accept loop reads
//! request heads itself. A cleartext or TLS HTTP/1.1 `GET /v1/sse` or
//! `GET /v1/poll` goes through the same router as any request
//! (authentication, limits and the handler are unchanged); an event stream's
//! head and chunks are written here with no buffer kept between writes, and
//! any other answer (a poll's batch, an error) is written whole, after which
//! the connection's next request is read the same way. Any other request is
//! handed to hyper with the bytes already read put back in front of the
//! stream ([`Rewind`]), and hyper serves the connection from then on.
//!
//! Measured with `bench/run.sh` (scenario a, 10k idle connections): the
//! server's memory per SSE connection fell from about 15 KiB to about 3 KiB.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use bytes::{Buf, Bytes};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;
use tower::ServiceExt;

use super::ConnectionHandle;

/// The most request-head bytes read before giving the connection to hyper.
const MAX_HEAD: usize = 8192;
/// The paths served directly.
const SSE_PATH: &str = "/v1/sse";
const POLL_PATH: &str = "/v1/poll";
/// A connection that sends no complete head in this time is closed (hyper's
/// own header read timeout is the same).
pub(super) const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// What the next bytes of a connection asked for.
pub(super) enum First {
    /// An HTTP/1.1 `GET /v1/sse` or `GET /v1/poll`: the request, and the
    /// bytes that followed its head.
    Direct(Box<http::Request<Body>>, Bytes),
    /// Anything else: hyper serves the connection, starting with these bytes.
    Other(Bytes),
    /// The peer closed or the head timed out.
    Gone,
}

/// Reads up to one request head and decides who serves the connection.
pub(super) async fn first_request<I>(io: &mut I) -> First
where
    I: AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let read = async {
        loop {
            if buf.len() >= MAX_HEAD {
                return true;
            }
            buf.reserve(1024.min(MAX_HEAD - buf.len()));
            match io.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
            // HTTP/2 prior knowledge, or a head that is complete.
            if buf.starts_with(b"PRI ") || buf.windows(4).any(|w| w == b"\r\n\r\n") {
                return true;
            }
        }
    };
    match tokio::time::timeout(HEAD_TIMEOUT, read).await {
        Ok(true) => {}
        _ => return First::Gone,
    }
    match parse_direct_request(&buf) {
        Some((req, used)) => First::Direct(Box::new(req), Bytes::copy_from_slice(&buf[used..])),
        None => First::Other(Bytes::from(buf)),
    }
}

/// An HTTP/1.1 `GET /v1/sse` or `GET /v1/poll` with no body and no upgrade,
/// as a request for the router; `None` for anything else (hyper handles it,
/// errors included).
fn parse_direct_request(buf: &[u8]) -> Option<(http::Request<Body>, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    let path = req.path?;
    let route = path.split('?').next();
    if req.method != Some("GET")
        || req.version != Some(1)
        || !(route == Some(SSE_PATH) || route == Some(POLL_PATH))
    {
        return None;
    }
    let mut b = http::Request::builder()
        .method(http::Method::GET)
        .uri(path)
        .version(http::Version::HTTP_11);
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
        {
            return None;
        }
        b = b.header(name, h.value);
    }
    b.body(Body::empty()).ok().map(|r| (r, used))
}

/// How [`answer`] left the connection.
pub(super) enum Answered<I> {
    /// The head of an event stream is written: write `body` with [`stream`].
    Stream(Rewind<I>, Body),
    /// An answer that was not a stream was written whole; the connection's
    /// next request may follow.
    Done(Rewind<I>),
    /// The connection is closed or failed, or the client asked to close it.
    Gone,
}

/// Routes a request read by [`first_request`] and writes the answer: an
/// event stream's head (its body is then written by [`stream`], which is
/// kept apart so that the long-lived part of a connection's task is sized
/// only for what streaming needs), or any other answer whole. While the
/// handler holds the request (a long poll), the socket is watched so that a
/// client that leaves frees the poll at once.
pub(super) async fn answer<I>(
    mut io: Rewind<I>,
    req: Box<http::Request<Body>>,
    router: Router,
    handle: ConnectionHandle,
    shutting_down: impl Fn() -> bool,
) -> Answered<I>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut req = *req;
    let close_asked = req
        .headers()
        .get_all(http::header::CONNECTION)
        .iter()
        .any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
        });
    req.extensions_mut().insert(handle);
    let route = router.oneshot(req);
    tokio::pin!(route);
    // Bytes the client sent while its request was held (a pipelined next
    // request), given back to the connection afterwards.
    let mut early: Vec<u8> = Vec::new();
    let response = loop {
        tokio::select! {
            r = &mut route => match r {
                Ok(r) => break r,
                Err(never) => match never {},
            },
            more = read_some(&mut io) => match more {
                Some(b) if early.len() + b.len() <= MAX_HEAD => early.extend_from_slice(&b),
                // The peer left (or sends more than a request head while it waits).
                _ => return Answered::Gone,
            },
        }
    };
    if !early.is_empty() {
        io.unread(Bytes::from(early));
    }
    let (parts, body) = response.into_parts();
    let is_stream = parts.status == http::StatusCode::OK
        && parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let mut head = Vec::with_capacity(256);
    let close = close_asked || shutting_down();
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or("Unknown")
            .as_bytes(),
    );
    head.extend_from_slice(b"\r\n");
    head.extend_from_slice(b"date: ");
    head.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == http::header::CONTENT_LENGTH || name == http::header::TRANSFER_ENCODING {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if !is_stream {
        // A poll's batch or an error: send it whole, then read the next request.
        let bytes = match http_body_util::BodyExt::collect(body).await {
            Ok(c) => c.to_bytes(),
            Err(_) => return Answered::Gone,
        };
        if close {
            head.extend_from_slice(b"connection: close\r\n");
        }
        head.extend_from_slice(format!("content-length: {}\r\n\r\n", bytes.len()).as_bytes());
        if io.write_vectored_all(&head, &bytes).await.is_err() || io.flush().await.is_err() {
            return Answered::Gone;
        }
        if close {
            let _ = io.shutdown().await;
            return Answered::Gone;
        }
        return Answered::Done(io);
    }
    head.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
    if io.write_all(&head).await.is_err() {
        return Answered::Gone;
    }
    Answered::Stream(io, body)
}

/// Waits for bytes from the peer; `None` when it closed or failed.
async fn read_some<I: AsyncRead + Unpin>(io: &mut I) -> Option<Bytes> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 256];
    match io.read(&mut buf).await {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(Bytes::copy_from_slice(&buf[..n])),
    }
}

/// What woke the stream.
enum Wake {
    Chunk(Bytes),
    End,
    /// The peer closed, or sent something a stream does not expect.
    Gone,
}

/// Writes the body's chunks until it ends, the peer leaves, or `kill` fires
/// (also while a write is blocked on a full socket: that is when it fires).
pub(super) async fn stream<I>(io: I, body: Body, kill: &Notify)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    tokio::select! {
        _ = write_body(io, body) => {}
        _ = kill.notified() => {}
    }
}

async fn write_body<I>(mut io: I, mut body: Body)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| poll_wake(cx, &mut io, &mut body)).await {
            Wake::Chunk(data) => {
                if data.is_empty() {
                    continue;
                }
                if write_chunk(&mut io, data).await.is_err() {
                    return;
                }
            }
            Wake::End => {
                let _ = io.write_all(b"0\r\n\r\n").await;
                let _ = io.flush().await;
                let _ = io.shutdown().await;
                return;
            }
            Wake::Gone => return,
        }
    }
}

fn poll_wake<I: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    io: &mut I,
    body: &mut Body,
) -> Poll<Wake> {
    // Watch the read side so that a peer that leaves frees its stream at once.
    let mut scratch = [0u8; 64];
    let mut rb = ReadBuf::new(&mut scratch);
    if Pin::new(&mut *io).poll_read(cx, &mut rb).is_ready() {
        // EOF, an error, or bytes (a stream takes no further request).
        return Poll::Ready(Wake::Gone);
    }
    match Pin::new(body).poll_frame(cx) {
        Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
            Ok(data) => Poll::Ready(Wake::Chunk(data)),
            Err(_) => Poll::Ready(Wake::Chunk(Bytes::new())),
        },
        Poll::Ready(Some(Err(_))) | Poll::Ready(None) => Poll::Ready(Wake::End),
        Poll::Pending => Poll::Pending,
    }
}

/// One chunk of the chunked encoding, with one vectored write in the common case.
async fn write_chunk<I: AsyncWrite + Unpin>(io: &mut I, mut data: Bytes) -> std::io::Result<()> {
    let mut size = [0u8; 20];
    let n = chunk_size_line(data.len(), &mut size);
    let mut size = &size[..n];
    let mut crlf: &[u8] = b"\r\n";
    while !(size.is_empty() && data.is_empty() && crlf.is_empty()) {
        let slices = [IoSlice::new(size), IoSlice::new(&data), IoSlice::new(crlf)];
        let mut wrote = io.write_vectored(&slices).await?;
        if wrote == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let s = wrote.min(size.len());
        size = &size[s..];
        wrote -= s;
        let d = wrote.min(data.len());
        data.advance(d);
        wrote -= d;
        crlf = &crlf[wrote.min(crlf.len())..];
    }
    io.flush().await
}

/// `{len:x}\r\n` into `out`; returns its length. (Written by hand: this
/// runs once per write on every stream, and `format!` allocates.)
fn chunk_size_line(len: usize, out: &mut [u8; 20]) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = ((usize::BITS - len.leading_zeros()).div_ceil(4)).max(1) as usize;
    for i in 0..digits {
        out[digits - 1 - i] = HEX[(len >> (4 * i)) & 0xf];
    }
    out[digits] = b'\r';
    out[digits + 1] = b'\n';
    digits + 2
}

/// A stream that yields `prefix` before reading from `inner`: the bytes the
/// accept loop read while deciding, handed back to hyper.
pub(super) struct Rewind<I> {
    prefix: Bytes,
    inner: I,
}

impl<I> Rewind<I> {
    pub(super) fn new(prefix: Bytes, inner: I) -> Self {
        Rewind { prefix, inner }
    }

    /// Puts `bytes` back in front of what is still to be read.
    pub(super) fn unread(&mut self, bytes: Bytes) {
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

impl<I: AsyncWrite + Unpin> Rewind<I> {
    /// Writes `a` then `b`, with vectored writes.
    async fn write_vectored_all(&mut self, mut a: &[u8], mut b: &[u8]) -> std::io::Result<()> {
        while !(a.is_empty() && b.is_empty()) {
            let n = self
                .write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
                .await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            let from_a = n.min(a.len());
            a = &a[from_a..];
            b = &b[(n - from_a)..];
        }
        Ok(())
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
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
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_sse_gets_through() {
        let (r, n) = parse_direct_request(
            b"GET /v1/sse?topic=a HTTP/1.1\r\nhost: x\r\nlast-event-id: 1\r\n\r\nrest",
        )
        .unwrap();
        assert_eq!(r.uri(), "/v1/sse?topic=a");
        assert_eq!(r.headers()["last-event-id"], "1");
        assert_eq!(n, 59);
        let (r, _) =
            parse_direct_request(b"GET /v1/poll?topic=a&timeout=5 HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(r.uri(), "/v1/poll?topic=a&timeout=5");
        for other in [
            &b"GET /v1/ssex HTTP/1.1\r\n\r\n"[..],
            b"GET /v1/polls HTTP/1.1\r\n\r\n",
            b"POST /v1/publish HTTP/1.1\r\ncontent-length: 0\r\n\r\n",
            b"POST /v1/sse HTTP/1.1\r\ncontent-length: 0\r\n\r\n",
            b"GET /v1/sse HTTP/1.0\r\n\r\n",
            b"GET /v1/sse HTTP/1.1\r\nupgrade: h2c\r\n\r\n",
            b"GET /v1/sse HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET /v1/sse HTTP/1.1\r\n",
        ] {
            assert!(parse_direct_request(other).is_none(), "{other:?}");
        }
    }

    #[test]
    fn chunk_size_lines() {
        let mut b = [0u8; 20];
        for (len, line) in [
            (0usize, "0\r\n"),
            (9, "9\r\n"),
            (255, "ff\r\n"),
            (256, "100\r\n"),
            (0x1a2b3c, "1a2b3c\r\n"),
            (usize::MAX, "ffffffffffffffff\r\n"),
        ] {
            let n = chunk_size_line(len, &mut b);
            assert_eq!(std::str::from_utf8(&b[..n]).unwrap(), line);
        }
    }

    #[tokio::test]
    async fn rewind_replays_the_prefix() {
        use tokio::io::AsyncReadExt;
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
