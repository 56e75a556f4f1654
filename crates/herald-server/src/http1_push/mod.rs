//! HTTP/1.1 event streams and long polls written straight to the socket.
//!
//! An idle SSE connection or a held long poll is most of what a push server
//! holds, and through hyper each one keeps a read buffer and a write buffer of
//! 8 KiB (hyper's smallest) for as long as it lives, although after the
//! request head it reads nothing and writes little. So the accept loop reads
//! request heads itself. A cleartext or TLS HTTP/1.1 `GET /v1/sse`,
//! `GET /v1/poll` or `GET /.well-known/mercure` goes through the same router as any request
//! (authentication, limits and the handler are unchanged), and so does a
//! `POST /v1/publish` whose whole body (one `content-length`, at most
//! [`head::MAX_DIRECT_BODY`] bytes) was read with its head: a publisher on a
//! keep-alive connection then costs no hyper dispatch per publish (measured
//! with `bench/run.sh --only d-publish`, see bench/README.md); an event stream's
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
//!
//! # Layout
//!
//! - `head`: reading a request head, pure: complete or not, over the
//!   limits or not, served here or by hyper.
//! - `response`: the response head, the chunked encoding and the refusals
//!   as values, pure.
//! - [`Rewind`]: the stream hyper gets, with the bytes read so far put back.
//! - This module: the socket loop that joins them (read a head, route it,
//!   write the answer or the stream, each write under a deadline).

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::IntoResponse;
use axum::Router;
use bytes::{Buf, Bytes};
use herald_http::connection::{ConnectionHandle, WriteDeadline};
use herald_http::ApiError;
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;
use tower::ServiceExt;

pub(crate) use head::host_is_valid;
pub(crate) use head::H2_PREFACE;
use head::{head_status, Head};
pub use head::{MAX_HEAD, MAX_HEADERS, MAX_URI};
use response::{chunk_size_line, framing, response_head, Fields, LAST_CHUNK};
pub(crate) use rewind::Rewind;

mod head;
mod response;
mod rewind;

/// The most pipelined bytes read while a request is held (see the module
/// notes); more wait in the kernel.
pub(crate) const EARLY_MAX: usize = 8 * 1024;
/// The write deadline of answers that carry no [`WriteDeadline`] (event
/// streams, errors): the default of [`herald_http::HttpConfig::write_timeout`].
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection that sends no complete head in this time is closed (hyper's
/// own header read timeout is the same).
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Small answers are gathered into one write up to this size.
const GATHER: usize = 16 * 1024;

/// What the next bytes of a connection asked for.
pub(crate) enum First {
    /// An HTTP/1.1 `GET /v1/sse` or `GET /v1/poll`, or a `POST /v1/publish`
    /// with its body: the request, and the bytes that followed it.
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

/// Reads up to one request head and decides who serves the connection.
pub(crate) async fn first_request<I>(io: &mut I) -> First
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
                if matches!(head_status(&buf[..buf.len().min(24)]), Head::Other) {
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
        Head::Complete(head, Some(direct)) => {
            take_ready_body(io, &mut buf, head + direct.body_len);
            match direct.with_body(&buf, head) {
                Some((req, used)) => {
                    First::Direct(Box::new(req), Bytes::copy_from_slice(&buf[used..]))
                }
                None => First::Other(Bytes::from(buf)),
            }
        }
        Head::Complete(_, None) | Head::Partial | Head::Other => First::Other(Bytes::from(buf)),
    }
}

/// When `buf` holds less than the `total` bytes of a direct request's
/// head and body (a publish, see [`head::Direct`]), takes what more of the
/// body the socket already holds, without waiting (a body still on its way
/// leaves the request to hyper, whose body reading and timeouts then apply).
fn take_ready_body<I: AsyncRead + Unpin>(io: &mut I, buf: &mut Vec<u8>, total: usize) {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut scratch = [0u8; 4096];
    while buf.len() < total {
        let want = (total - buf.len()).min(scratch.len());
        let mut rb = ReadBuf::new(&mut scratch[..want]);
        match Pin::new(&mut *io).poll_read(&mut cx, &mut rb) {
            Poll::Ready(Ok(())) if !rb.filled().is_empty() => buf.extend_from_slice(rb.filled()),
            // End of input, an error or nothing yet: hyper takes the bytes
            // read so far and meets the same.
            _ => return,
        }
    }
}

/// Answers a head over the limits with 431 `headers_too_large` (JSON body,
/// `connection: close`), then closes: the rest of the head is read and
/// discarded for a moment so that the close does not reset the answer away.
pub(crate) async fn refuse_head<I>(io: &mut I)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    refuse(io, response::headers_too_large()).await;
}

/// Answers a request target over [`MAX_URI`] bytes with 414 `uri_too_long`
/// (JSON body), then closes.
pub(crate) async fn refuse_uri<I>(io: &mut I)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    refuse(io, response::uri_too_long(true)).await;
}

async fn refuse<I>(io: &mut I, refusal: ApiError)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let (parts, body) = refusal.into_response().into_parts();
    if write_answer(io, Fields::of(&parts), None, body, true, WRITE_TIMEOUT)
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
pub(crate) enum Answered {
    /// The head of an event stream is written: write `body` with [`stream`]
    /// under this write deadline.
    Stream(Body, Duration),
    /// An answer that was not a stream was written whole; the connection's
    /// next request may follow.
    Done,
    /// The connection is closed or failed, or the client asked to close it.
    Gone,
}

/// Routes a request read by [`first_request`] and writes the answer: an
/// event stream's head (its body is then written by [`stream`], which is
/// kept apart so that the long-lived part of a connection's task is sized
/// only for what streaming needs), or any other answer whole. The head of
/// an answer whose body does not know its length yet (a held long poll) is
/// written once the body's first frame is ready. While the handler runs and
/// while such a body waits, the socket is watched so that a client that
/// leaves or half-closes frees the poll at once (the handler sees it
/// through [`ConnectionHandle::read_closed`]). `io` is borrowed, not
/// moved: a held poll keeps this future, and every argument it owns costs
/// its size for as long as the poll is held.
pub(crate) async fn answer<I>(
    io: &mut Rewind<I>,
    req: Box<http::Request<Body>>,
    router: Router,
    mut handle: ConnectionHandle,
    shutting_down: impl Fn() -> bool,
) -> Answered
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let close_asked = req
        .headers()
        .get_all(http::header::CONNECTION)
        .iter()
        .any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
        });
    let (closed_tx, closed_rx) = herald_http::ReadClosed::channel();
    if io.eof {
        closed_tx.close();
    }
    handle.read_closed = Some(closed_rx);
    handle.defers_head = true;
    // Boxed: the routing future is large and ends before any wait for an
    // event (a held poll's body does that wait; see below). The request's
    // box is freed here, not kept for as long as this future.
    let route = {
        let mut req = req;
        req.extensions_mut().insert(handle);
        Box::pin(router.oneshot(*req))
    };
    // Bytes the client sent while its request was held (a pipelined next
    // request), given back to the connection afterwards.
    let mut early: Vec<u8> = Vec::new();
    let response = match reading_while(io, &mut early, &closed_tx, route).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
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
        drop(closed_tx);
        if !early.is_empty() {
            io.unread(Bytes::from(early));
        }
        if io.eof {
            // A stream is for a peer that stays.
            return Answered::Gone;
        }
        let (parts, body) = response.into_parts();
        // The connection ends with the stream, so the head says so (RFC 9112,
        // section 9.6): a client must not pool it for its next request, which
        // would race the close.
        let mut head = response_head(&parts, true);
        head.extend_from_slice(&framing(None));
        if timed(deadline, io.write_all(&head)).await.is_err() {
            return Answered::Gone;
        }
        return Answered::Stream(body, deadline);
    }
    // The head waits for the body's first frame (a held poll's answer),
    // while the socket is still watched for a peer that leaves; meanwhile
    // only the rendered header lines are kept, not the header map.
    let (parts, mut body) = response.into_parts();
    let fields = Fields::of(&parts);
    drop(parts);
    let first = if body.size_hint().exact().is_none() && !body.is_end_stream() {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx));
        match reading_while(io, &mut early, &closed_tx, frame).await {
            Some(Ok(frame)) => frame.into_data().ok(),
            Some(Err(_)) => return Answered::Gone,
            None => Some(Bytes::new()),
        }
    } else {
        None
    };
    drop(closed_tx);
    if !early.is_empty() {
        io.unread(Bytes::from(early));
    }
    let close = close_asked || shutting_down();
    // Boxed: a held poll's wait above is the long-lived part of this future.
    if Box::pin(write_answer(io, fields, first, body, close, deadline))
        .await
        .is_err()
    {
        return Answered::Gone;
    }
    if close {
        let _ = timed(deadline, io.shutdown()).await;
        return Answered::Gone;
    }
    Answered::Done
}

/// Runs `f` while reading what the peer sends into `early` (up to
/// [`EARLY_MAX`]); at the end of input `closed` says so, and `f` goes on.
async fn reading_while<I, F>(
    io: &mut Rewind<I>,
    early: &mut Vec<u8>,
    closed: &herald_http::ReadClosedSender,
    f: F,
) -> F::Output
where
    I: AsyncRead + Unpin,
    F: Future + Unpin,
{
    let mut f = f;
    loop {
        let reading = !io.eof && early.len() < EARLY_MAX;
        tokio::select! {
            r = &mut f => return r,
            n = read_early(io, early), if reading => {
                if n == 0 {
                    // End of input (or a failed read): answer what was sent.
                    io.eof = true;
                    closed.close();
                }
            }
        }
    }
}

/// Reads what the peer sent into `early`, up to [`EARLY_MAX`]; 0 at the
/// end of input or on an error. The scratch buffer lives on the stack of
/// each poll, not in the future (which a held poll keeps).
async fn read_early<I: AsyncRead + Unpin>(io: &mut I, early: &mut Vec<u8>) -> usize {
    std::future::poll_fn(|cx| {
        let mut scratch = [0u8; 1024];
        let room = (EARLY_MAX - early.len()).min(scratch.len());
        let mut rb = ReadBuf::new(&mut scratch[..room]);
        match Pin::new(&mut *io).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                early.extend_from_slice(rb.filled());
                Poll::Ready(rb.filled().len())
            }
            Poll::Ready(Err(_)) => Poll::Ready(0),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Writes an answer that is not an event stream: with `content-length` when
/// its body knows its length (a poll's batch, an error), chunked otherwise,
/// its frames written as they come (small ones gathered into one write),
/// each write within `deadline`. `first` is a frame already taken from the
/// body (its length then counts in `content-length`).
async fn write_answer<I>(
    io: &mut I,
    fields: Fields,
    first: Option<Bytes>,
    mut body: Body,
    close: bool,
    deadline: Duration,
) -> std::io::Result<()>
where
    I: AsyncWrite + Unpin,
{
    let mut out = fields.head(close);
    drop(fields);
    let taken = first.as_ref().map_or(0, |f| f.len() as u64);
    let exact = body.size_hint().exact().map(|rest| rest + taken);
    out.extend_from_slice(&framing(exact));
    let mut first = first;
    loop {
        let data = match first.take() {
            Some(data) => data,
            None => match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                Some(frame) => {
                    let Ok(data) = frame.map_err(std::io::Error::other)?.into_data() else {
                        continue;
                    };
                    data
                }
                None => break,
            },
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
        out.extend_from_slice(LAST_CHUNK);
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
///
/// A plain function building [`Stream`], not an `async fn`: an `async fn`
/// keeps its arguments beside the futures it moves them into, and the
/// socket would be held twice in every idle stream.
pub(crate) fn stream<I>(
    io: I,
    body: Body,
    kill: &Notify,
    deadline: Duration,
) -> Stream<'_, impl Future<Output = ()>>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    Stream {
        write: write_body(io, body, deadline),
        killed: kill.notified(),
    }
}

pin_project_lite::pin_project! {
    /// An event stream being written ([`stream`]): the writing, raced with
    /// the kill signal. Resolves when either ends.
    pub(crate) struct Stream<'a, W> {
        #[pin]
        write: W,
        #[pin]
        killed: tokio::sync::futures::Notified<'a>,
    }
}

impl<W: Future<Output = ()>> Future for Stream<'_, W> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.killed.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        this.write.poll(cx)
    }
}

/// Writes the body's chunks until it ends, the peer leaves or a write does
/// not progress within `deadline`. A plain function returning an `async
/// move` block, for the reason given at [`stream`].
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would keep its arguments twice (see `stream`)"
)]
fn write_body<I>(mut io: I, mut body: Body, deadline: Duration) -> impl Future<Output = ()>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    async move {
        let mut blank = BlankAllowance::new();
        loop {
            let wake = std::future::poll_fn(|cx| poll_wake(cx, &mut io, &mut body, &mut blank));
            // The chunk taken out of the wake, so that the wake is not kept
            // beside it while the chunk is written.
            let data = match wake.await {
                Wake::Chunk(data) => data,
                Wake::End => {
                    let _ = timed(deadline, async {
                        io.write_all(LAST_CHUNK).await?;
                        io.flush().await?;
                        io.shutdown().await
                    })
                    .await;
                    return;
                }
                Wake::Gone => return,
            };
            if data.is_empty() {
                continue;
            }
            if timed(deadline, write_chunk(&mut io, data)).await.is_err() {
                return;
            }
        }
    }
}

fn poll_wake<I: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    io: &mut I,
    body: &mut Body,
    blank: &mut BlankAllowance,
) -> Poll<Wake> {
    // Watch the read side so that a peer that leaves frees its stream at
    // once. Empty lines are let be (RFC 9112, section 2.2: a server ignores
    // them before a request; some clients send them to keep a connection
    // warm), within the stream's allowance; anything else (the end of
    // input, an error, a further request, which a stream does not take, or
    // more empty lines than allowed) ends it. The allowance bounds the loop.
    let mut scratch = [0u8; 256];
    loop {
        let mut rb = ReadBuf::new(&mut scratch);
        match Pin::new(&mut *io).poll_read(cx, &mut rb) {
            Poll::Pending => break,
            Poll::Ready(Ok(())) if is_blank(rb.filled()) && blank.take(rb.filled().len()) => {}
            Poll::Ready(_) => return Poll::Ready(Wake::Gone),
        }
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

/// The empty lines an event stream's client may send: a burst of
/// [`BLANK_BURST`] bytes, then [`BLANK_RATE`] bytes a second (a CRLF now
/// and then to keep a connection warm is two bytes). Past it the client is
/// flooding its connection and the stream ends. Eight bytes per stream.
struct BlankAllowance {
    /// Bytes the client may still send.
    bytes: u32,
    /// When `bytes` was last topped up, in whole seconds of [`coarse_now`].
    at: u32,
}

/// The most empty-line bytes an event stream takes at once.
const BLANK_BURST: u32 = 1024;
/// Empty-line bytes per second an event stream takes after its burst.
const BLANK_RATE: u32 = 256;

impl BlankAllowance {
    fn new() -> Self {
        BlankAllowance {
            bytes: BLANK_BURST,
            at: coarse_now(),
        }
    }

    /// Takes `n` bytes from the allowance: false (and nothing taken) when
    /// they exceed it.
    fn take(&mut self, n: usize) -> bool {
        let now = coarse_now();
        let earned = now.wrapping_sub(self.at).saturating_mul(BLANK_RATE);
        self.bytes = self.bytes.saturating_add(earned).min(BLANK_BURST);
        self.at = now;
        match u32::try_from(n) {
            Ok(n) if n <= self.bytes => {
                self.bytes -= n;
                true
            }
            _ => false,
        }
    }
}

/// Whole seconds since this process first asked (wrapping after 136
/// years): a clock for allowances that fits in four bytes.
fn coarse_now() -> u32 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs() as u32
}

/// Bytes that are only line ends (CR, LF), and at least one.
fn is_blank(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.iter().all(|b| matches!(b, b'\r' | b'\n'))
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

#[cfg(test)]
mod tests;
