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
//! any other answer (a poll's batch, an error) is written piece by piece
//! from its body, after which the connection's next request is read the same
//! way. Any other request is handed to hyper with the bytes already read put
//! back in front of the stream ([`Rewind`]), and hyper serves the connection
//! from then on.
//!
//! Measured with `bench/run.sh` (scenario a, 10k idle connections): the
//! server's memory per SSE connection fell from about 15 KiB to about 3 KiB.
//!
//! # Rules of the path
//!
//! - **Heads.** Whether a head is complete is decided by the parser
//!   (`httparse`, which also accepts bare LF line ends), never by searching
//!   for a blank line. A head is at most [`MAX_HEAD`] bytes and
//!   [`MAX_HEADERS`] fields; above either the answer is 431
//!   `headers_too_large` with the JSON error body and the connection closes.
//!   The read buffer grows only while a head is being read and is freed once
//!   it is parsed.
//! - **Pipelining.** Bytes sent behind a held request (a long poll) are read
//!   up to [`EARLY_MAX`]; after that the connection is not read until the
//!   held request is answered (the bytes wait in the kernel, and the sender
//!   is held back by TCP), and every request is answered in order. While
//!   reading has stopped, a peer that leaves is noticed when its answer is
//!   written (within the write deadline).
//! - **Half-close.** A peer that shuts down its sending side after its
//!   requests gets every request it sent answered, then the connection
//!   closes. A held long poll is answered at once with what it has (the
//!   same peer cannot send another request, so there is nothing to wait
//!   for); an event stream whose peer has half-closed ends.
//! - **Write deadline.** Every write must progress within the answer's
//!   write deadline ([`WriteDeadline`], else [`WRITE_TIMEOUT`]); a write
//!   that does not is abandoned and the connection dropped with all it held.

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::IntoResponse;
use axum::Router;
use bytes::{Buf, Bytes};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{watch, Notify};
use tower::ServiceExt;

use super::{ConnectionHandle, WriteDeadline};
use crate::error::ApiError;

/// The largest request head, in bytes: the request line and every header
/// field, on both the direct path and hyper's. It admits the documented
/// subscription limits, 64 topics with names of 1 KiB in the query (about
/// 66 KiB), plus ordinary headers (cookies, a token) with room to spare.
/// Above it: 431 `headers_too_large`.
pub const MAX_HEAD: usize = 96 * 1024;
/// The longest request target (path and query), in bytes: the most the
/// `http` crate's `Uri` (and so hyper and every handler) can hold. Above
/// it: 414 `uri_too_long`. It is what bounds a subscription's topics in
/// the query: 64 topics fit with names of up to about 1,000 bytes each.
pub const MAX_URI: usize = u16::MAX as usize - 1;
/// The most header fields in a request head (hyper's default too); above
/// it: 431 `headers_too_large`.
pub const MAX_HEADERS: usize = 100;
/// The most pipelined bytes read while a request is held (see the module
/// notes); more wait in the kernel.
pub const EARLY_MAX: usize = 8 * 1024;
/// The write deadline of answers that carry no [`WriteDeadline`] (event
/// streams, errors): the default of [`crate::HttpConfig::write_timeout`].
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// The paths served directly.
const SSE_PATH: &str = "/v1/sse";
const POLL_PATH: &str = "/v1/poll";
/// A connection that sends no complete head in this time is closed (hyper's
/// own header read timeout is the same).
pub(super) const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Small answers are gathered into one write up to this size.
const GATHER: usize = 16 * 1024;

/// What the next bytes of a connection asked for.
pub(super) enum First {
    /// An HTTP/1.1 `GET /v1/sse` or `GET /v1/poll`: the request, and the
    /// bytes that followed its head.
    Direct(Box<http::Request<Body>>, Bytes),
    /// Anything else: hyper serves the connection, starting with these bytes.
    Other(Bytes),
    /// A head over [`MAX_HEAD`] bytes or [`MAX_HEADERS`] fields: answer with
    /// [`refuse_head`].
    TooLarge,
    /// A request target over [`MAX_URI`] bytes: answer with [`refuse_uri`].
    UriTooLong,
    /// The peer closed or the head timed out.
    Gone,
}

/// What the parser says of the bytes read so far.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Head {
    /// A complete head of this many bytes.
    Complete(usize),
    /// A complete head whose request target is over [`MAX_URI`] bytes.
    UriTooLong,
    /// More bytes are needed.
    Partial,
    /// Too many header fields (or, with [`Head::Partial`] at the size
    /// limit, too many bytes).
    TooLarge,
    /// Not a request head this path understands (HTTP/2's preface, a
    /// malformed head): hyper decides.
    Other,
}

/// Classifies `buf`, the start of a connection's next request.
pub(super) fn head_status(buf: &[u8]) -> Head {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let n = buf.len().min(PREFACE.len());
    if n > 0 && buf[..n] == PREFACE[..n] {
        return if n == PREFACE.len() {
            Head::Other
        } else {
            Head::Partial
        };
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => Head::TooLarge,
        Ok(httparse::Status::Complete(_)) if req.path.is_some_and(|p| p.len() > MAX_URI) => {
            Head::UriTooLong
        }
        Ok(httparse::Status::Complete(n)) => Head::Complete(n),
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => Head::TooLarge,
        Ok(httparse::Status::Partial) => Head::Partial,
        Err(httparse::Error::TooManyHeaders) => Head::TooLarge,
        Err(_) => Head::Other,
    }
}

/// Reads up to one request head and decides who serves the connection.
pub(super) async fn first_request<I>(io: &mut I) -> First
where
    I: AsyncRead + Unpin,
{
    // Grown only while a head is read, dropped once it is parsed.
    let mut buf: Vec<u8> = Vec::new();
    let read = async {
        loop {
            let room = buf.len().clamp(1024, 16 * 1024).min(MAX_HEAD - buf.len());
            buf.reserve_exact(room);
            let before = buf.len();
            match (&mut *io).take(room as u64).read_buf(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            // Parse only when a line may have ended.
            if !buf[before..].contains(&b'\n') && buf.len() < MAX_HEAD {
                if head_status(&buf[..buf.len().min(24)]) == Head::Other {
                    return Some(Head::Other);
                }
                continue;
            }
            match head_status(&buf) {
                Head::Partial => continue,
                other => return Some(other),
            }
        }
    };
    let status = match tokio::time::timeout(HEAD_TIMEOUT, read).await {
        Ok(Some(s)) => s,
        _ => return First::Gone,
    };
    match status {
        Head::TooLarge => First::TooLarge,
        Head::UriTooLong => First::UriTooLong,
        Head::Complete(_) => match parse_direct_request(&buf) {
            Some((req, used)) => First::Direct(Box::new(req), Bytes::copy_from_slice(&buf[used..])),
            None => First::Other(Bytes::from(buf)),
        },
        Head::Partial | Head::Other => First::Other(Bytes::from(buf)),
    }
}

/// An HTTP/1.1 `GET /v1/sse` or `GET /v1/poll` with no body and no upgrade,
/// as a request for the router; `None` for anything else (hyper handles it,
/// errors included).
pub(super) fn parse_direct_request(buf: &[u8]) -> Option<(http::Request<Body>, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
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

/// Answers a head over the limits with 431 `headers_too_large` (JSON body,
/// `connection: close`), then closes: the rest of the head is read and
/// discarded for a moment so that the close does not reset the answer away.
pub(super) async fn refuse_head<I>(io: &mut I)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let refusal = ApiError::new(
        http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
        format!("the request head exceeds {MAX_HEAD} bytes or {MAX_HEADERS} header fields"),
    );
    refuse(io, refusal).await;
}

/// Answers a request target over [`MAX_URI`] bytes with 414 `uri_too_long`
/// (JSON body), then closes.
pub(super) async fn refuse_uri<I>(io: &mut I)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let refusal = ApiError::new(
        http::StatusCode::URI_TOO_LONG,
        "uri_too_long",
        format!(
            "the request target exceeds {MAX_URI} bytes: name fewer or shorter topics, or subscribe over a WebSocket"
        ),
    );
    refuse(io, refusal).await;
}

async fn refuse<I>(io: &mut I, refusal: ApiError)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    if write_answer(io, refusal.into_response(), true, WRITE_TIMEOUT)
        .await
        .is_ok()
    {
        let _ = timed(WRITE_TIMEOUT, io.shutdown()).await;
        linger(io).await;
    }
}

/// After a refusal: reads and discards what the peer still sends (at most
/// 1 MiB, for at most 2 s) so that closing with unread bytes does not reset
/// the connection before the peer has read the answer.
async fn linger<I: AsyncRead + Unpin>(io: &mut I) {
    let mut scratch = [0u8; 1024];
    let mut left = 1024 * 1024usize;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while left > 0 {
            match io.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// How [`answer`] left the connection.
pub(super) enum Answered<I> {
    /// The head of an event stream is written: write `body` with [`stream`]
    /// under this write deadline.
    Stream(Rewind<I>, Body, Duration),
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
/// client that leaves or half-closes frees the poll at once (the handler
/// sees it through [`ConnectionHandle::read_closed`]).
pub(super) async fn answer<I>(
    mut io: Rewind<I>,
    req: Box<http::Request<Body>>,
    router: Router,
    mut handle: ConnectionHandle,
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
    let (closed_tx, closed_rx) = watch::channel(io.eof);
    handle.read_closed = Some(closed_rx);
    req.extensions_mut().insert(handle);
    let route = router.oneshot(req);
    tokio::pin!(route);
    // Bytes the client sent while its request was held (a pipelined next
    // request), given back to the connection afterwards.
    let mut early: Vec<u8> = Vec::new();
    let response = loop {
        let reading = !io.eof && early.len() < EARLY_MAX;
        tokio::select! {
            r = &mut route => match r {
                Ok(r) => break r,
                Err(never) => match never {},
            },
            n = read_early(&mut io, &mut early), if reading => {
                if n == 0 {
                    // End of input (or a failed read): answer what was sent.
                    io.eof = true;
                    let _ = closed_tx.send(true);
                }
            }
        }
    };
    drop(closed_tx);
    if !early.is_empty() {
        io.unread(Bytes::from(early));
    }
    let deadline = response
        .extensions()
        .get::<WriteDeadline>()
        .map_or(WRITE_TIMEOUT, |d| d.0);
    let is_stream = response.status() == http::StatusCode::OK
        && response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if is_stream {
        if io.eof {
            // A stream is for a peer that stays.
            return Answered::Gone;
        }
        let (parts, body) = response.into_parts();
        let mut head = response_head(&parts, false);
        head.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
        if timed(deadline, io.write_all(&head)).await.is_err() {
            return Answered::Gone;
        }
        return Answered::Stream(io, body, deadline);
    }
    let close = close_asked || shutting_down();
    if write_answer(&mut io, response, close, deadline)
        .await
        .is_err()
    {
        return Answered::Gone;
    }
    if close {
        let _ = timed(deadline, io.shutdown()).await;
        return Answered::Gone;
    }
    Answered::Done(io)
}

/// Reads what the peer sent into `early`, up to [`EARLY_MAX`]; 0 at the
/// end of input or on an error.
async fn read_early<I: AsyncRead + Unpin>(io: &mut I, early: &mut Vec<u8>) -> usize {
    let mut scratch = [0u8; 1024];
    let room = (EARLY_MAX - early.len()).min(scratch.len());
    match io.read(&mut scratch[..room]).await {
        Ok(n) => {
            early.extend_from_slice(&scratch[..n]);
            n
        }
        Err(_) => 0,
    }
}

/// `HTTP/1.1 <status>`, `date` and the response's headers (without framing
/// headers, which the caller adds), each line ended.
fn response_head(parts: &http::response::Parts, close: bool) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
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
        if name == http::header::CONTENT_LENGTH
            || name == http::header::TRANSFER_ENCODING
            || name == http::header::CONNECTION
        {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if close {
        head.extend_from_slice(b"connection: close\r\n");
    }
    head
}

/// Writes an answer that is not an event stream: with `content-length` when
/// its body knows its length (a poll's batch, an error), chunked otherwise,
/// its frames written as they come (small ones gathered into one write),
/// each write within `deadline`.
async fn write_answer<I>(
    io: &mut I,
    response: http::Response<Body>,
    close: bool,
    deadline: Duration,
) -> std::io::Result<()>
where
    I: AsyncWrite + Unpin,
{
    let (parts, mut body) = response.into_parts();
    let mut out = response_head(&parts, close);
    let exact = body.size_hint().exact();
    match exact {
        Some(len) => out.extend_from_slice(format!("content-length: {len}\r\n\r\n").as_bytes()),
        None => out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n"),
    }
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let Ok(data) = frame.map_err(std::io::Error::other)?.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        if exact.is_none() {
            if !out.is_empty() {
                timed(deadline, io.write_all(&out)).await?;
                out = Vec::new();
            }
            timed(deadline, write_chunk(io, data)).await?;
            continue;
        }
        if out.len() + data.len() <= GATHER {
            out.extend_from_slice(&data);
            continue;
        }
        if !out.is_empty() {
            timed(deadline, io.write_all(&out)).await?;
            out.clear();
        }
        if data.len() > GATHER {
            timed(deadline, io.write_all(&data)).await?;
        } else {
            out.extend_from_slice(&data);
        }
    }
    if exact.is_none() {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        timed(deadline, io.write_all(&out)).await?;
    }
    timed(deadline, io.flush()).await
}

/// `f` within `deadline`; a timeout is an error (`TimedOut`).
async fn timed<T>(
    deadline: Duration,
    f: impl Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    match tokio::time::timeout(deadline, f).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// What woke the stream.
enum Wake {
    Chunk(Bytes),
    End,
    /// The peer closed, or sent something a stream does not expect.
    Gone,
}

/// Writes the body's chunks until it ends, the peer leaves, a write does
/// not progress within `deadline`, or `kill` fires (also while a write is
/// blocked on a full socket: that is when it fires).
pub(super) async fn stream<I>(io: I, body: Body, kill: &Notify, deadline: Duration)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    tokio::select! {
        _ = write_body(io, body, deadline) => {}
        _ = kill.notified() => {}
    }
}

async fn write_body<I>(mut io: I, mut body: Body, deadline: Duration)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| poll_wake(cx, &mut io, &mut body)).await {
            Wake::Chunk(data) => {
                if data.is_empty() {
                    continue;
                }
                if timed(deadline, write_chunk(&mut io, data)).await.is_err() {
                    return;
                }
            }
            Wake::End => {
                let _ = timed(deadline, async {
                    io.write_all(b"0\r\n\r\n").await?;
                    io.flush().await?;
                    io.shutdown().await
                })
                .await;
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
///
/// Once `eof` is set (the peer half-closed), reading yields what is left
/// of the prefix and then the end of input.
///
/// On the write side it gives hyper's automatic answers to a head it could
/// not read (an empty 400, 414 or 431 written when a later request on a
/// connection hyper serves is malformed or over the limits) the JSON error
/// body every other refusal has: see [`automatic_answer`].
pub(super) struct Rewind<I> {
    prefix: Bytes,
    inner: I,
    /// The peer has shut down its sending side.
    pub(super) eof: bool,
    /// The JSON answer being written in place of hyper's empty one, and the
    /// length of hyper's (reported as written once ours is).
    replacing: Option<(Bytes, usize)>,
}

impl<I> Rewind<I> {
    pub(super) fn new(prefix: Bytes, inner: I) -> Self {
        Rewind {
            prefix,
            inner,
            eof: false,
            replacing: None,
        }
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
        if self.eof {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// When `head` is hyper's automatic answer to a request head it could not
/// read (`HTTP/1.1 400`, `414` or `431` with `content-length: 0` and no
/// body, in one write), the same refusal with the JSON error body and
/// `connection: close` (hyper closes the connection after it). Herald's own
/// handlers never answer these statuses with an empty body, so nothing else
/// matches.
fn automatic_answer(head: &[u8]) -> Option<Bytes> {
    let rest = head.strip_prefix(b"HTTP/1.1 4")?;
    let refusal = match rest.get(..3)? {
        b"00 " => ApiError::bad_request("invalid_request", "the request head is malformed"),
        b"14 " => ApiError::new(
            http::StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target exceeds {MAX_URI} bytes"),
        ),
        b"31 " => ApiError::new(
            http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("the request head exceeds {MAX_HEAD} bytes or {MAX_HEADERS} header fields"),
        ),
        _ => return None,
    };
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    if end + 4 != head.len()
        || !head[..end]
            .windows(19)
            .any(|w| w.eq_ignore_ascii_case(b"\r\ncontent-length: 0"))
    {
        return None;
    }
    let body = refusal.body();
    let (parts, _) = refusal.into_response().into_parts();
    let mut out = response_head(&parts, true);
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body.as_bytes());
    Some(Bytes::from(out))
}

impl<I: AsyncWrite + Unpin> Rewind<I> {
    /// Writes the pending replacement; `Ok(n)` with the length of what it
    /// stands for once all of it is written.
    fn poll_replace(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let Some((bytes, stands_for)) = self.replacing.as_mut() else {
            return Poll::Ready(Ok(0));
        };
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

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.replacing.is_none() {
            if let Some(answer) = automatic_answer(buf) {
                self.replacing = Some((answer, buf.len()));
            }
        }
        if self.replacing.is_some() {
            return self.poll_replace(cx);
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.replacing.is_some() {
            return self.poll_replace(cx);
        }
        // An automatic answer is one head alone.
        let mut non_empty = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(first), None) = (non_empty.next(), non_empty.next()) {
            if first.starts_with(b"HTTP/1.1 4") {
                let first: &[u8] = first;
                return self.poll_write(cx, first);
            }
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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
                return Poll::Pending;
            }
        }
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
    fn head_completeness_is_the_parser_s() {
        assert_eq!(
            head_status(b"GET /healthz HTTP/1.1\nHost: x\n\n"),
            Head::Complete(31)
        );
        assert_eq!(
            head_status(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
            Head::Complete(34)
        );
        assert_eq!(
            head_status(b"GET /healthz HTTP/1.1\nHost: x\n"),
            Head::Partial
        );
        assert_eq!(head_status(b"GET /heal"), Head::Partial);
        assert_eq!(head_status(b"PRI * HTTP/2.0\r\n"), Head::Partial);
        assert_eq!(
            head_status(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Head::Other
        );
        assert_eq!(head_status(b"\x16\x03\x01\x02\x00"), Head::Other);
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(head_status(&many), Head::TooLarge);
        let mut long = b"GET /v1/sse?topic=".to_vec();
        long.resize(MAX_HEAD, b'a');
        assert_eq!(head_status(&long), Head::TooLarge);
        let mut uri = b"GET /v1/sse?topic=".to_vec();
        uri.resize("GET ".len() + MAX_URI + 1, b'a');
        uri.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        assert_eq!(head_status(&uri), Head::UriTooLong);
        let (r, n) =
            parse_direct_request(b"GET /v1/poll?topic=a HTTP/1.1\nHost: x\n\nnext").unwrap();
        assert_eq!(r.uri(), "/v1/poll?topic=a");
        assert_eq!(n, 39);
    }

    /// A reader that hands out `input` in pieces cut at `cuts`.
    struct Pieces {
        input: Vec<u8>,
        cuts: Vec<usize>,
        at: usize,
    }

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let at = self.at;
            let end = self
                .cuts
                .iter()
                .copied()
                .find(|&c| c > at)
                .unwrap_or(self.input.len())
                .min(self.input.len())
                .min(at + buf.remaining());
            buf.put_slice(&self.input[at..end]);
            self.at = end;
            Poll::Ready(Ok(()))
        }
    }

    /// Runs [`first_request`] over `input` cut at `cuts`; returns what it
    /// decided and the bytes it did not read.
    fn first_of(input: &[u8], cuts: &[usize]) -> (First, Vec<u8>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let mut cuts = cuts.to_vec();
        cuts.sort_unstable();
        let mut r = Pieces {
            input: input.to_vec(),
            cuts,
            at: 0,
        };
        let first = rt.block_on(first_request(&mut r));
        let unread = r.input[r.at..].to_vec();
        (first, unread)
    }

    /// What a decision means, comparable across splits: the direct request
    /// (method, URI, headers) with every byte after its head, or all the
    /// bytes hyper gets.
    fn meaning(first: First, unread: Vec<u8>) -> String {
        match first {
            First::Direct(req, rest) => {
                let mut after = rest.to_vec();
                after.extend_from_slice(&unread);
                format!(
                    "direct {} {:?} {:?}",
                    req.uri(),
                    req.headers(),
                    String::from_utf8_lossy(&after)
                )
            }
            First::Other(prefix) => {
                let mut all = prefix.to_vec();
                all.extend_from_slice(&unread);
                format!("other {:?}", String::from_utf8_lossy(&all))
            }
            First::TooLarge => "too large".into(),
            First::UriTooLong => "uri too long".into(),
            First::Gone => "gone".into(),
        }
    }

    const REQUESTS: &[&str] = &[
        "GET /v1/poll?topic=a&timeout=0 HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n",
        "GET /v1/sse?topic=a%2Fb&topic=c HTTP/1.1\nHost: x\nLast-Event-ID: 1\n\n",
        "POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        "GET /healthz HTTP/1.1\nHost: x\n\n",
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Arbitrary bytes cut anywhere never panic, and nothing read is
        /// lost: hyper gets every byte, or the direct request and every byte
        /// after its head.
        #[test]
        fn arbitrary_bytes_never_panic(
            input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            cuts in proptest::collection::vec(0usize..600, 0..8),
        ) {
            let (first, unread) = first_of(&input, &cuts);
            match first {
                First::Other(prefix) => {
                    let mut all = prefix.to_vec();
                    all.extend_from_slice(&unread);
                    proptest::prop_assert_eq!(all, input);
                }
                First::Direct(_, rest) => {
                    let mut after = rest.to_vec();
                    after.extend_from_slice(&unread);
                    proptest::prop_assert!(input.ends_with(&after));
                }
                First::TooLarge | First::UriTooLong | First::Gone => {}
            }
        }

        /// A valid request cut anywhere means the same as when it arrives whole.
        #[test]
        fn valid_requests_split_anywhere(
            which in 0..REQUESTS.len(),
            cuts in proptest::collection::vec(0usize..120, 0..10),
        ) {
            let input = REQUESTS[which].as_bytes();
            let (whole, unread) = first_of(input, &[]);
            let whole = meaning(whole, unread);
            let (split, unread) = first_of(input, &cuts);
            proptest::prop_assert_eq!(meaning(split, unread), whole);
        }
    }

    #[test]
    fn hyper_s_empty_refusals_get_the_json_body() {
        let a = automatic_answer(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n",
        )
        .unwrap();
        let text = String::from_utf8(a.to_vec()).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
        assert!(text.contains("connection: close\r\n"), "{text}");
        assert!(text.ends_with(r#""code":"headers_too_large","message":"the request head exceeds 98304 bytes or 100 header fields"}}"#), "{text}");
        assert!(
            automatic_answer(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").is_some()
        );
        assert!(
            automatic_answer(b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n\r\n").is_some()
        );
        for other in [
            &b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 5\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nbody",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
        ] {
            assert!(automatic_answer(other).is_none(), "{other:?}");
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
