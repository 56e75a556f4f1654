//! A WebSocket's socket with its read-ahead buffer on the stack, and the
//! bounds on messages being received.
//!
//! tungstenite keeps its own read buffer for a connection's whole life, and
//! reads into it at most its configured size at a time. Sized for few
//! system calls (1 KiB), that buffer was a quarter of an idle WebSocket's
//! memory. [`ReadAhead`] lets it be small (see [`TUNGSTENITE_READ`]): each
//! read of the socket goes into a chunk on the stack, what tungstenite
//! asked for is copied out, and only what is left over (bytes the client
//! has already sent) moves to the heap, until tungstenite takes it.
//!
//! tungstenite holds a message until its last frame arrives (up to
//! `--ws-max-message-bytes`, fragments and all). So that a client cannot
//! make the server hold that much on every connection for good,
//! [`ReadAhead`] follows the frame headers (RFC 6455, section 5.2) of what
//! it reads and bounds a message still in progress at the end of a read:
//!
//! - in time: all of it within `--body-timeout` of its first byte, as a
//!   request body ([`Refusal::Timeout`], close 1008 `message_timeout`);
//! - in bytes, across all connections: at most
//!   [`MAX_WS_MESSAGE_BYTES_IN_FLIGHT`], and at most
//!   [`MAX_WS_MESSAGE_BYTES_PER_CLIENT`] for one client address
//!   ([`Refusal::Full`], close 1013 `server_full`).
//!
//! It only counts: tungstenite validates the frames.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};

/// tungstenite's read buffer (`WebSocketConfig::read_buffer_size`): kept
/// for the connection's life, and the most it takes per read from
/// [`ReadAhead`], so a message of `n` bytes takes `n / 64` copies out of
/// the chunk, not that many system calls.
pub(super) const TUNGSTENITE_READ: usize = 64;

/// The most bytes one read of the socket takes (on the stack).
const CHUNK: usize = 16 * 1024;

/// The most bytes of WebSocket messages still in progress at the end of a
/// read that the process holds at once, over all connections: 64 MiB. A
/// message that would pass it closes its connection with 1013
/// `server_full` (reconnect and send again).
pub(super) const MAX_WS_MESSAGE_BYTES_IN_FLIGHT: usize = 64 * 1024 * 1024;

/// The most of [`MAX_WS_MESSAGE_BYTES_IN_FLIGHT`] one client address may
/// hold: a quarter (16 MiB), so that one client cannot keep every other's
/// large messages refused.
pub(super) const MAX_WS_MESSAGE_BYTES_PER_CLIENT: usize = MAX_WS_MESSAGE_BYTES_IN_FLIGHT / 4;

/// The budget's unit, in bytes.
const BUDGET_UNIT: u64 = 1024;

/// The process's bounds on messages in progress, in [`BUDGET_UNIT`]s.
struct Bounds {
    budget: Semaphore,
    /// Units held per client address (only addresses holding some).
    per_client: Mutex<HashMap<IpAddr, u32>>,
    per_client_max: u32,
}

impl Bounds {
    fn new(total: usize, per_client: usize) -> Bounds {
        Bounds {
            budget: Semaphore::new(total / BUDGET_UNIT as usize),
            per_client: Mutex::default(),
            per_client_max: (per_client / BUDGET_UNIT as usize) as u32,
        }
    }

    /// Takes `units` more for `client`, within its share and the total.
    fn take(&self, client: Option<IpAddr>, units: u32) -> Result<(), Refusal> {
        if let Some(ip) = client {
            let mut held = self
                .per_client
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let mine = held.entry(ip).or_default();
            if *mine + units > self.per_client_max {
                if *mine == 0 {
                    held.remove(&ip);
                }
                return Err(Refusal::Full);
            }
            *mine += units;
        }
        match self.budget.try_acquire_many(units) {
            Ok(permits) => {
                permits.forget();
                Ok(())
            }
            Err(_) => {
                self.give(client, 0, units);
                Err(Refusal::Full)
            }
        }
    }

    /// Gives back `units` to the total and `client_units` to the client's share.
    fn give(&self, client: Option<IpAddr>, units: u32, client_units: u32) {
        if units > 0 {
            self.budget.add_permits(units as usize);
        }
        if let (Some(ip), true) = (client, client_units > 0) {
            let mut held = self
                .per_client
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(mine) = held.get_mut(&ip) {
                *mine = mine.saturating_sub(client_units);
                if *mine == 0 {
                    held.remove(&ip);
                }
            }
        }
    }
}

/// The process's [`Bounds`].
fn bounds() -> &'static Bounds {
    static BOUNDS: std::sync::OnceLock<Bounds> = std::sync::OnceLock::new();
    BOUNDS.get_or_init(|| {
        Bounds::new(
            MAX_WS_MESSAGE_BYTES_IN_FLIGHT,
            MAX_WS_MESSAGE_BYTES_PER_CLIENT,
        )
    })
}

/// Why a read failed on purpose: the session closes with its reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum Refusal {
    /// A message was still in progress `--body-timeout` after its first byte.
    #[error("a WebSocket message was not completed in time")]
    Timeout,
    /// The message in progress would pass the process's budget.
    #[error("too many bytes of WebSocket messages are being received at once")]
    Full,
}

impl Refusal {
    /// The refusal a failed read carries, if it is one.
    pub(super) fn of(e: &io::Error) -> Option<Refusal> {
        e.get_ref()?.downcast_ref::<Refusal>().copied()
    }
}

/// A socket whose reads go through a stack chunk and whose messages in
/// progress are bounded; writes pass through.
pub(super) struct ReadAhead<S> {
    io: S,
    /// What reads left behind: bytes not taken yet, a frame or a message
    /// in progress. `None` (no allocation) between messages, which is
    /// where an idle connection is.
    pending: Option<Box<Pending>>,
    /// How long a message may take from its first byte (`--body-timeout`),
    /// in milliseconds.
    limit_ms: u32,
    /// The client address whose share a message in progress counts against.
    client: Option<IpAddr>,
    bounds: &'static Bounds,
}

/// See [`ReadAhead::pending`].
struct Pending {
    /// Bytes read from the socket that the reader has not taken yet, from `at`.
    ahead: Vec<u8>,
    at: usize,
    frames: Frames,
    /// When the message in progress must be complete: set when it is first
    /// seen unfinished at the end of a read (the timer wakes the reader
    /// then, even if nothing more arrives).
    deadline: Option<Pin<Box<Sleep>>>,
    /// Budget units held for it.
    held: u32,
    client: Option<IpAddr>,
    bounds: &'static Bounds,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.bounds.give(self.client, self.held, self.held);
    }
}

/// Where the byte stream is among frames (RFC 6455, section 5.2): only
/// what it takes to know where each frame ends and whether a message is in
/// progress.
#[derive(Default, Clone, Copy)]
struct Frames {
    /// The header read so far of the frame that starts next.
    head: [u8; 14],
    have: u8,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// The current frame is a data frame with FIN: its end ends the message.
    ends_message: bool,
    /// A data message has begun and not ended.
    in_message: bool,
    /// Bytes of that message so far (headers, payloads, control frames
    /// between its fragments).
    bytes: u64,
    /// Messages ended so far (wrapping): tells a read that ended one
    /// message and began the next from one that went on with the same.
    ended: u32,
}

impl Frames {
    /// Follows `data`, the next bytes of the stream.
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.payload_left > 0 {
                let n = (data.len() as u64).min(self.payload_left);
                self.count(n);
                self.payload_left -= n;
                data = &data[n as usize..];
                if self.payload_left == 0 {
                    self.frame_end();
                }
                continue;
            }
            let b = data[0];
            data = &data[1..];
            // Opcodes below 8 are data frames (continuation, text, binary,
            // reserved); 8 and above are control frames.
            if self.have == 0 && b & 0x0F < 8 {
                self.in_message = true;
            }
            self.count(1);
            self.head[self.have as usize] = b;
            self.have += 1;
            if self.have >= 2 && self.have == header_len(self.head[1]) {
                self.ends_message = self.head[0] & 0x80 != 0 && self.head[0] & 0x0F < 8;
                self.payload_left = payload_len(&self.head);
                self.have = 0;
                if self.payload_left == 0 {
                    self.frame_end();
                }
            }
        }
    }

    fn count(&mut self, n: u64) {
        if self.in_message {
            self.bytes = self.bytes.saturating_add(n);
        }
    }

    fn frame_end(&mut self) {
        if self.ends_message {
            self.in_message = false;
            self.bytes = 0;
            self.ended = self.ended.wrapping_add(1);
        }
        self.ends_message = false;
    }

    /// At a frame boundary with no message in progress.
    fn is_idle(&self) -> bool {
        self.have == 0 && self.payload_left == 0 && !self.in_message
    }
}

/// A frame header's length from its second byte: 2, plus 2 or 8 for an
/// extended length, plus 4 for a mask.
fn header_len(b1: u8) -> u8 {
    let extended = match b1 & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + extended + if b1 & 0x80 != 0 { 4 } else { 0 }
}

/// A complete header's payload length.
fn payload_len(head: &[u8; 14]) -> u64 {
    match head[1] & 0x7F {
        126 => u16::from_be_bytes([head[2], head[3]]) as u64,
        127 => u64::from_be_bytes(head[2..10].try_into().expect("eight bytes")),
        n => n as u64,
    }
}

impl<S> ReadAhead<S> {
    /// `io`, a connection from `client`, whose messages must each arrive
    /// within `limit`.
    pub(super) fn new(io: S, limit: Duration, client: Option<IpAddr>) -> Self {
        Self::with_bounds(io, limit, client, bounds())
    }

    fn with_bounds(
        io: S,
        limit: Duration,
        client: Option<IpAddr>,
        bounds: &'static Bounds,
    ) -> Self {
        ReadAhead {
            io,
            pending: None,
            limit_ms: limit.as_millis().min(u32::MAX as u128) as u32,
            client,
            bounds,
        }
    }

    /// Follows `data`, just read from the socket, and bounds the message
    /// left in progress; `leftover` is what the reader did not take.
    fn track(&mut self, data: &[u8], leftover: &[u8]) -> Result<(), Refusal> {
        // A message past its deadline is refused even if these bytes end it.
        if self.is_late() {
            return Err(Refusal::Timeout);
        }
        let mut frames = self
            .pending
            .as_ref()
            .map_or_else(Frames::default, |p| p.frames);
        let ended = frames.ended;
        frames.feed(data);
        if frames.is_idle() && leftover.is_empty() {
            // Between messages with nothing left over: no state, and the
            // budget held (if any) goes back.
            if self.pending.as_ref().is_none_or(|p| p.at == p.ahead.len()) {
                self.pending = None;
                return Ok(());
            }
        }
        let (client, bounds) = (self.client, self.bounds);
        let p = self.pending.get_or_insert_with(|| {
            Box::new(Pending {
                ahead: Vec::new(),
                at: 0,
                frames,
                deadline: None,
                held: 0,
                client,
                bounds,
            })
        });
        p.frames = frames;
        if frames.ended != ended {
            // The message that held the deadline and the budget ended; one
            // begun in the same read gets its own.
            p.deadline = None;
            let held = std::mem::take(&mut p.held);
            bounds.give(client, held, held);
        }
        if !leftover.is_empty() {
            p.ahead.extend_from_slice(leftover);
        }
        if !frames.in_message {
            p.deadline = None;
            let held = std::mem::take(&mut p.held);
            bounds.give(client, held, held);
            return Ok(());
        }
        let limit = Duration::from_millis(self.limit_ms as u64);
        p.deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        let units = frames.bytes.div_ceil(BUDGET_UNIT).min(u32::MAX as u64) as u32;
        if units > p.held {
            bounds.take(client, units - p.held)?;
            p.held = units;
        }
        Ok(())
    }

    /// Whether a message in progress is past its deadline.
    fn is_late(&self) -> bool {
        self.pending
            .as_ref()
            .and_then(|p| p.deadline.as_ref())
            .is_some_and(|d| d.deadline() <= Instant::now())
    }

    /// Bytes read from the socket and not yet taken by the reader.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.pending.as_ref().map_or(0, |p| p.ahead.len() - p.at)
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
        if let Some(p) = this.pending.as_mut().filter(|p| p.at < p.ahead.len()) {
            let n = (p.ahead.len() - p.at).min(buf.remaining());
            buf.put_slice(&p.ahead[p.at..p.at + n]);
            p.at += n;
            if p.at == p.ahead.len() {
                p.ahead = Vec::new();
                p.at = 0;
                if p.frames.is_idle() {
                    this.pending = None;
                }
            }
            return Poll::Ready(Ok(()));
        }
        let refused = if buf.remaining() >= CHUNK {
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
            let read = buf.filled()[before..].to_vec();
            this.track(&read, &[])
        } else {
            let mut chunk = [MaybeUninit::<u8>::uninit(); CHUNK];
            let mut read = ReadBuf::uninit(&mut chunk);
            if Pin::new(&mut this.io)
                .poll_read(cx, &mut read)?
                .is_pending()
            {
                // Nothing to read: a message in progress still ends at its
                // deadline (its timer wakes this task).
                let late = this
                    .pending
                    .as_mut()
                    .and_then(|p| p.deadline.as_mut())
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                return if late {
                    Poll::Ready(Err(io::Error::other(Refusal::Timeout)))
                } else {
                    Poll::Pending
                };
            }
            let got = read.filled();
            let n = got.len().min(buf.remaining());
            buf.put_slice(&got[..n]);
            this.track(got, &got[n..])
        };
        Poll::Ready(refused.map_err(io::Error::other))
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
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::WebSocketStream;

    use super::*;

    const LONG: Duration = Duration::from_secs(60);

    /// A client frame: FIN, `opcode`, masked with a zero key.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&[0, 0, 0, 0]);
        f.extend_from_slice(payload);
        f
    }

    /// Bounds of `total` KiB, `per_client` KiB for one address.
    fn leaked(total: usize, per_client: usize) -> &'static Bounds {
        Box::leak(Box::new(Bounds::new(total * 1024, per_client * 1024)))
    }

    /// Small reads see every byte in order, the leftover is freed once
    /// taken, and a read as large as a chunk goes straight to the socket.
    #[tokio::test]
    async fn small_reads_take_every_byte_and_free_the_leftover() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        // One unmasked binary frame of 65,536 bytes: followed, not refused.
        let mut sent = vec![0x82, 127];
        sent.extend_from_slice(&65_536u64.to_be_bytes());
        sent.extend((0..65_536u32).map(|i| (i % 251) as u8));
        let total = sent.len();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            sent
        });
        let mut socket = ReadAhead::with_bounds(server, LONG, None, leaked(1024, 1024));
        let mut got = Vec::new();
        let mut small = [0u8; TUNGSTENITE_READ];
        let n = socket.read(&mut small).await.unwrap();
        assert_eq!(n, TUNGSTENITE_READ);
        got.extend_from_slice(&small[..n]);
        assert!(socket.held() > 0);
        while socket.held() > 0 {
            let n = socket.read(&mut small).await.unwrap();
            got.extend_from_slice(&small[..n]);
        }
        let mut large = vec![0u8; CHUNK];
        while got.len() < total {
            let n = socket.read(&mut large).await.unwrap();
            got.extend_from_slice(&large[..n]);
            while socket.held() > 0 {
                let n = socket.read(&mut small).await.unwrap();
                got.extend_from_slice(&small[..n]);
            }
        }
        assert_eq!(got, writer.await.unwrap());
        // The message ended with the last byte: nothing kept.
        assert!(socket.pending.is_none());
    }

    /// A fragmented text message with a ping between its fragments, written
    /// one byte at a time, reaches tungstenite whole; then nothing is kept.
    #[tokio::test]
    async fn fragments_written_byte_by_byte_are_read_whole() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut wire = frame(false, 0x1, b"hel");
        wire.extend(frame(true, 0x9, b"p"));
        wire.extend(frame(false, 0x0, b"lo "));
        wire.extend(frame(true, 0x0, &[b'x'; 300]));
        tokio::spawn(async move {
            for b in wire {
                client.write_all(&[b]).await.unwrap();
            }
            // Kept open: the server's pong goes nowhere.
            std::future::pending::<()>().await;
        });
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(TUNGSTENITE_READ);
        let socket = ReadAhead::with_bounds(server, LONG, None, leaked(1024, 1024));
        let mut ws = WebSocketStream::from_raw_socket(socket, Role::Server, Some(config)).await;
        use futures_util::StreamExt;
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::Ping("p".into()));
        let text = ws.next().await.unwrap().unwrap();
        assert_eq!(
            text.to_text().unwrap(),
            format!("hello {}", "x".repeat(300))
        );
        assert!(ws.get_ref().pending.is_none());
    }

    /// A message still unfinished at its deadline is refused: at the next
    /// read if bytes keep coming (pongs), at the deadline itself if none
    /// do, and even if the late bytes would end it. One finished in time
    /// is not.
    #[tokio::test(start_paused = true)]
    async fn a_message_past_its_time_is_refused() {
        /// A socket that has read `first`, the first bytes of a message.
        async fn begun(
            limit: Duration,
            first: &[u8],
        ) -> (tokio::io::DuplexStream, ReadAhead<tokio::io::DuplexStream>) {
            let (mut client, server) = tokio::io::duplex(1024);
            let mut socket = ReadAhead::with_bounds(server, limit, None, leaked(1024, 1024));
            client.write_all(first).await.unwrap();
            let mut buf = [0u8; TUNGSTENITE_READ];
            assert_eq!(socket.read(&mut buf).await.unwrap(), first.len());
            (client, socket)
        }

        let limit = Duration::from_secs(30);
        let mut buf = [0u8; TUNGSTENITE_READ];
        let whole = frame(true, 0x1, b"done");

        let (mut client, mut socket) = begun(limit, &whole[..3]).await;
        tokio::time::advance(Duration::from_secs(20)).await;
        client.write_all(&whole[3..]).await.unwrap();
        assert_eq!(socket.read(&mut buf).await.unwrap(), whole.len() - 3);
        assert!(socket.pending.is_none(), "finished in time");
        // Its first fragment, then pongs only, past the limit.
        let slow = frame(false, 0x1, b"never");
        client.write_all(&slow).await.unwrap();
        assert_eq!(socket.read(&mut buf).await.unwrap(), slow.len());
        tokio::time::advance(Duration::from_secs(31)).await;
        client.write_all(&frame(true, 0xA, b"")).await.unwrap();
        let e = socket.read(&mut buf).await.unwrap_err();
        assert_eq!(Refusal::of(&e), Some(Refusal::Timeout));

        // Nothing more after the first bytes: refused at the deadline (the
        // paused clock jumps to it while the read waits).
        let (_client, mut socket) = begun(limit, &whole[..3]).await;
        let started = Instant::now();
        let e = socket.read(&mut buf).await.unwrap_err();
        assert_eq!(Refusal::of(&e), Some(Refusal::Timeout));
        assert_eq!(started.elapsed(), limit);

        // The rest arrives, but late.
        let (mut client, mut socket) = begun(limit, &whole[..3]).await;
        tokio::time::advance(Duration::from_secs(31)).await;
        client.write_all(&whole[3..]).await.unwrap();
        let e = socket.read(&mut buf).await.unwrap_err();
        assert_eq!(Refusal::of(&e), Some(Refusal::Timeout));
    }

    /// Large messages back to back, each ending in the read that begins
    /// the next: each has its own deadline, so a client streaming them for
    /// longer than the limit is not refused.
    #[tokio::test(start_paused = true)]
    async fn back_to_back_messages_each_get_their_own_deadline() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let bounds = leaked(1024, 1024);
        let mut socket = ReadAhead::with_bounds(server, Duration::from_secs(30), None, bounds);
        let mut buf = [0u8; 4096];
        let message = frame(true, 0x2, &[7; 3000]);
        let (head, tail) = message.split_at(1000);
        client.write_all(head).await.unwrap();
        assert_eq!(socket.read(&mut buf).await.unwrap(), head.len());
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(20)).await;
            let mut next = tail.to_vec();
            next.extend_from_slice(head);
            client.write_all(&next).await.unwrap();
            assert_eq!(socket.read(&mut buf).await.unwrap(), next.len());
            // Only the new message's kilobyte is held.
            assert_eq!(bounds.budget.available_permits(), 1023);
        }
    }

    /// Messages in progress hold the budget by the kilobyte, give it back
    /// when they end or their connection goes, and one that would pass the
    /// total, or its client's share, is refused.
    #[tokio::test]
    async fn messages_in_progress_hold_the_budget() {
        let bounds = leaked(8, 6);
        let free = || bounds.budget.available_permits();
        let one: Option<IpAddr> = Some([10, 0, 0, 1].into());
        let other: Option<IpAddr> = Some([10, 0, 0, 2].into());
        let (mut a_client, a_server) = tokio::io::duplex(64 * 1024);
        let (mut b_client, b_server) = tokio::io::duplex(64 * 1024);
        let (mut c_client, c_server) = tokio::io::duplex(64 * 1024);
        let mut a = ReadAhead::with_bounds(a_server, LONG, one, bounds);
        let mut b = ReadAhead::with_bounds(b_server, LONG, one, bounds);
        let mut c = ReadAhead::with_bounds(c_server, LONG, other, bounds);
        let mut buf = vec![0u8; 8 * 1024];
        // A: 5 KiB of a message whose last fragment has not come: 6 units.
        let first = frame(false, 0x2, &[1; 5 * 1024]);
        a_client.write_all(&first).await.unwrap();
        assert_eq!(a.read(&mut buf).await.unwrap(), first.len());
        assert_eq!(free(), 2);
        // B, from the same address: over its share, though the total has room.
        b_client
            .write_all(&frame(false, 0x2, &[2; 100]))
            .await
            .unwrap();
        let e = b.read(&mut buf).await.unwrap_err();
        assert_eq!(Refusal::of(&e), Some(Refusal::Full));
        drop(b);
        assert_eq!(free(), 2);
        // C, from another address: 1 KiB fits; 3 KiB more would pass the total.
        let small = frame(false, 0x2, &[3; 900]);
        c_client.write_all(&small).await.unwrap();
        assert_eq!(c.read(&mut buf).await.unwrap(), small.len());
        assert_eq!(free(), 1);
        c_client
            .write_all(&frame(false, 0x0, &[4; 3 * 1024]))
            .await
            .unwrap();
        let e = c.read(&mut buf).await.unwrap_err();
        assert_eq!(Refusal::of(&e), Some(Refusal::Full));
        drop(c);
        assert_eq!(free(), 2);
        // A's last fragment ends the message: its budget comes back.
        a_client.write_all(&frame(true, 0x0, b"end")).await.unwrap();
        assert_eq!(a.read(&mut buf).await.unwrap(), 9);
        assert_eq!(free(), 8);
        assert!(bounds.per_client.lock().unwrap().is_empty());
        // A connection that goes mid-message gives its budget back too.
        let again = frame(false, 0x2, &[3; 3 * 1024]);
        a_client.write_all(&again).await.unwrap();
        assert_eq!(a.read(&mut buf).await.unwrap(), again.len());
        assert_eq!(free(), 4);
        drop(a);
        assert_eq!(free(), 8);
        assert!(bounds.per_client.lock().unwrap().is_empty());
    }
}
