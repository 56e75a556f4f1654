//! One WebSocket connection's loop: client messages, deliveries, pings and
//! the credential's deadline, until something ends it; then the close
//! handshake with the code and reason of the [`Disconnect`] table.
//!
//! Pings, pongs and the close go through tungstenite. Deliveries do not:
//! they are each event's shared frame ([`herald_core::Event::ws_frame`]),
//! written straight to the socket after whatever tungstenite holds; nor do
//! replies, framed here. That interleaving is sound because a server's
//! data frames carry no state tungstenite tracks (no masking, no
//! fragmentation, no extension), and nothing is written after the close.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use herald_auth::{AuthError, Principal};
use herald_core::wire::disconnect::{self, Disconnect};
use herald_core::wire::ws::{Frame, ServerMessage};
use herald_core::wire::ws_frame;
use herald_core::{CloseReason, Delivery, Subscription, Transport};
use serde_json::Value;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::{timeout, Instant, Sleep};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::Socket;
use crate::auth::deadline_of;
use crate::limits::Slot;
use crate::AppState;

/// A token bucket's state: tokens left and when they were counted (8
/// bytes: three buckets on every connection). Its rate and burst come from
/// the configuration at each use.
pub(super) struct RateLimit {
    tokens: f32,
    /// Milliseconds since [`epoch`] (wrapping after 49 days: only the gap
    /// between two counts matters).
    at: u32,
}

/// The process's reference instant for [`RateLimit`]s.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since [`epoch`], wrapping.
fn now_ms() -> u32 {
    epoch().elapsed().as_millis() as u32
}

impl RateLimit {
    /// A full bucket of `burst` (at least 1) tokens.
    fn new(burst: f64) -> Self {
        RateLimit {
            tokens: burst.max(1.0) as f32,
            at: now_ms(),
        }
    }

    /// Takes a token if there is one, after adding `rate` per second since
    /// the last count, up to `burst` (at least 1).
    pub(super) fn allow(&mut self, rate: f64, burst: f64) -> bool {
        let now = now_ms();
        let elapsed = now.wrapping_sub(self.at) as f64 / 1000.0;
        let tokens = (self.tokens as f64 + elapsed * rate).min(burst.max(1.0));
        self.at = now;
        if tokens >= 1.0 {
            self.tokens = (tokens - 1.0) as f32;
            true
        } else {
            self.tokens = tokens as f32;
            false
        }
    }
}

/// One connection's state.
pub(super) struct Connection {
    pub(super) app: AppState,
    /// Not split into a sink and a stream: the loop below reads or writes,
    /// never both at once, and a split pair costs a lock on every write.
    pub(super) ws: Socket,
    pub(super) sub: Subscription,
    /// Publishes.
    pub(super) rate: RateLimit,
    /// Every client message, whatever its kind.
    pub(super) messages: RateLimit,
    /// Errors the client may still cause before the connection is closed.
    errors: RateLimit,
    /// The credential in force.
    pub(super) who: Principal,
    /// Fires at the credential's deadline; `None` for a credential without one.
    deadline: Option<Pin<Box<Sleep>>>,
    /// The connection id of presence entries, made on the first one.
    pub(super) client: Option<Box<str>>,
    /// Present on these subscribed presence topics.
    pub(super) presence: Vec<(herald_core::Topic, herald_core::PresenceGuard)>,
    /// tungstenite may hold bytes not yet written: set when a read
    /// returns (reading a ping or a close queues the reply, which later
    /// reads write as they can), cleared once a flush completes. Deliveries
    /// flush first only then, so that their frames start on a frame
    /// boundary without a flush per event batch.
    unflushed: bool,
    /// Fired when a write stalls for the deadline (see [`Outcome::Stalled`]).
    kill: Option<Arc<Notify>>,
    /// The connection slot and the connection gauge, released with it.
    _held: (Slot, herald_core::metrics::ConnectionGuard),
}

/// What a step of the loop leaves the connection in.
pub(super) enum Outcome {
    Continue,
    /// Close with this reason's code and text.
    Close(Disconnect),
    /// The peer went away (or a write failed): nothing more to send.
    Gone,
    /// A write made no progress for the write deadline: nothing more can
    /// be sent, and the server's kill switch fires. Over HTTP/2 that drops
    /// the connection: hyper resets an upgraded stream only when it can
    /// write to it, which it cannot while the client keeps the stream's
    /// window closed, so the stream (and what it was handed) would stay
    /// for as long as the client keeps the connection.
    Stalled,
}

/// What a connection starts from, handed to [`start`] in one box.
pub(super) struct Start {
    pub(super) app: AppState,
    pub(super) upgrade: hyper::upgrade::OnUpgrade,
    pub(super) config: tokio_tungstenite::tungstenite::protocol::WebSocketConfig,
    pub(super) who: Result<Principal, AuthError>,
    pub(super) slot: Slot,
    /// The server's kill switch for this connection
    /// ([`ConnectionHandle::kill`](crate::connection::ConnectionHandle)),
    /// over HTTP/2.
    pub(super) kill: Option<Arc<Notify>>,
}

/// Completes the upgrade and runs the connection until it ends. Its one
/// argument is a box and the connection is built by a future of its own
/// that ends before the loop: a future keeps every argument and every
/// moved-from local for its whole life, and an idle connection is mostly
/// this future. (Built in a block instead, the block's locals kept 175
/// bytes of padding in front of the loop's state; read with
/// `-Zprint-type-sizes`.)
pub(super) async fn start(start: Box<Start>) {
    let Some((c, refused)) = connect(start).await else {
        return;
    };
    serve(c, refused).await;
}

/// Runs the connection (unless its credential was refused), then ends it.
/// A function returning a block, not an `async fn`: a future keeps its
/// arguments for its whole life, and an `async fn` with a `mut` argument
/// keeps it twice (as argument and as local; 680 bytes here). Owning the
/// connection here, not in `start`, lets it lie over `connect`'s future
/// (a local held across two awaits is laid out beside every other).
fn serve(mut c: Connection, refused: Option<AuthError>) -> impl Future<Output = ()> + Send {
    let refused: Option<&'static Disconnect> = refused.map(|e| match e {
        AuthError::Unavailable(_) => &disconnect::ENGINE_UNAVAILABLE,
        AuthError::Invalid(_) => &disconnect::INVALID_CREDENTIAL,
    });
    async move {
        let outcome = match refused {
            Some(d) => Outcome::Close(*d),
            None => run(&mut c).await,
        };
        end(&mut c, outcome).await;
    }
}

/// Completes the upgrade and builds the connection's state; `None` when
/// the client left before the upgrade.
async fn connect(start: Box<Start>) -> Option<(Connection, Option<AuthError>)> {
    let Start {
        app,
        upgrade,
        config,
        who,
        slot,
        kill,
    } = *start;
    let upgraded = upgrade.await.ok()?;
    let socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
        super::read_ahead::ReadAhead::new(
            hyper_util::rt::TokioIo::new(upgraded),
            app.config.body_timeout,
            slot.client(),
        ),
        tokio_tungstenite::tungstenite::protocol::Role::Server,
        Some(config),
    )
    .await;
    let (mut c, refused) = Connection::new(app, socket, who, slot);
    c.kill = kill;
    Some((c, refused))
}

impl Connection {
    /// The connection's state, and the refusal of its credential if any.
    fn new(
        app: AppState,
        socket: Socket,
        who: Result<Principal, AuthError>,
        slot: Slot,
    ) -> (Connection, Option<AuthError>) {
        let guard = app.hub.metrics().connection(Transport::WebSocket);
        let sub = app.hub.subscribe();
        let rate = RateLimit::new(app.config.ws_publish_burst);
        let messages = RateLimit::new(app.config.ws_message_rate * 2.0);
        let errors = RateLimit::new(app.config.ws_error_burst);
        let mut c = Connection {
            app,
            ws: socket,
            sub,
            rate,
            messages,
            errors,
            who: Principal::Anonymous,
            deadline: None,
            client: None,
            presence: Vec::new(),
            unflushed: false,
            kill: None,
            _held: (slot, guard),
        };
        let mut refused = None;
        match who {
            Ok(w) => c.set_credential(w),
            Err(e) => refused = Some(e),
        }
        (c, refused)
    }
}

/// The connection's loop, until something ends it.
async fn run(c: &mut Connection) -> Outcome {
    let keepalive = c.app.config.keepalive;
    let mut ping = tokio::time::interval_at(Instant::now() + keepalive, keepalive);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_seen = Instant::now();
    loop {
        let step = tokio::select! {
            // `next` is cancel-safe: a frame read in part stays buffered.
            msg = c.ws.next() => {
                last_seen = Instant::now();
                c.unflushed = true;
                // Boxed: handling a client message (subscribe, publish) is a
                // large future, and every idle connection's task would
                // otherwise be sized for it.
                Box::pin(c.on_message(msg)).await
            }
            d = c.sub.next() => c.on_delivery(d).await,
            _ = expired(&mut c.deadline) => Outcome::Close(disconnect::TOKEN_EXPIRED),
            _ = ping.tick() => {
                if last_seen.elapsed() > c.app.config.ws_pong_timeout {
                    Outcome::Close(disconnect::NO_PONG)
                } else {
                    c.send(Message::Ping(bytes::Bytes::new())).await
                }
            }
        };
        match step {
            Outcome::Continue => {}
            other => return other,
        }
    }
}

/// Ends the connection as `outcome` says: the close handshake for a
/// `Close`, the server's kill switch for a stalled write.
async fn end(c: &mut Connection, outcome: Outcome) {
    let mut stalled = matches!(outcome, Outcome::Stalled);
    if let Outcome::Close(d) = outcome {
        let frame = CloseFrame {
            // Every reason a WebSocket closes for has a code; 1011 (internal
            // error) would only show a table entry used by mistake.
            code: d.code.unwrap_or(1011).into(),
            reason: Utf8Bytes::from_static(d.close_text),
        };
        let sent = timeout(
            Duration::from_secs(2),
            c.ws.send(Message::Close(Some(frame))),
        )
        .await;
        // A close that cannot be written in time (a slow consumer's, whose
        // client stopped reading) stalled like any write.
        stalled = sent.is_err();
        if !stalled {
            // Wait briefly for the peer's close reply so the handshake completes.
            let _ = timeout(Duration::from_secs(2), async {
                while let Some(Ok(m)) = c.ws.next().await {
                    if matches!(m, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
    }
    if let (true, Some(kill)) = (stalled, &c.kill) {
        tracing::debug!("dropping a WebSocket whose writes made no progress");
        kill.notify_one();
    }
}

impl Connection {
    /// Puts `who` in force, with its deadline.
    pub(super) fn set_credential(&mut self, who: Principal) {
        self.deadline = deadline_of(&who).map(|d| Box::pin(tokio::time::sleep_until(d)));
        if let Some(user) = who.subject() {
            // The server API finds (and can close) the connection by its user.
            let hub = &self.app.hub;
            let client = self
                .client
                .get_or_insert_with(|| hub.new_client_id().into());
            self.sub.identify(user, client, Transport::WebSocket);
        }
        self.who = who;
    }

    /// Counts an error against the connection's allowance: `Continue` while
    /// some is left, else the close that ends an abusive connection.
    fn count_error(&mut self) -> Outcome {
        let burst = self.app.config.ws_error_burst;
        if self.errors.allow(1.0, burst) {
            Outcome::Continue
        } else {
            Outcome::Close(disconnect::TOO_MANY_ERRORS)
        }
    }

    pub(super) async fn send(&mut self, m: Message) -> Outcome {
        match timeout(self.app.config.write_timeout, self.ws.send(m)).await {
            Ok(Ok(())) => {
                // `send` flushes: tungstenite holds nothing now.
                self.unflushed = false;
                Outcome::Continue
            }
            Ok(Err(_)) => Outcome::Gone,
            Err(_) => Outcome::Stalled,
        }
    }

    /// Sends one server message, echoing `reference`. Framed here and
    /// written past tungstenite like events: tungstenite's write buffer
    /// would keep the largest reply's capacity for the connection's life.
    pub(super) async fn reply(&mut self, m: ServerMessage, reference: Option<Value>) -> Outcome {
        let frame = ws_frame::text_frame(Frame::answering(m, reference).encode().as_bytes());
        let write_timeout = self.app.config.write_timeout;
        let written = timeout(write_timeout, async {
            self.flush_tungstenite().await?;
            write_frames(self.ws.get_mut(), std::slice::from_ref(&frame)).await
        })
        .await;
        match written {
            Ok(Ok(())) => Outcome::Continue,
            Ok(Err(_)) => Outcome::Gone,
            Err(_) => Outcome::Stalled,
        }
    }

    /// Writes out whatever tungstenite holds (a pong, a ping), so that
    /// frames written past it start on a frame boundary.
    async fn flush_tungstenite(&mut self) -> io::Result<()> {
        if self.unflushed {
            self.ws.flush().await.map_err(io::Error::other)?;
            self.unflushed = false;
        }
        Ok(())
    }

    /// Answers an `error {code, message}` (and counts it).
    pub(super) async fn send_error(
        &mut self,
        code: &str,
        message: &str,
        reference: Option<Value>,
    ) -> Outcome {
        self.send_refusal(ServerMessage::error(code, message), reference)
            .await
    }

    /// Answers a refusal the client caused (and counts it).
    pub(super) async fn send_refusal(
        &mut self,
        m: ServerMessage,
        reference: Option<Value>,
    ) -> Outcome {
        if let Outcome::Close(d) = self.count_error() {
            return Outcome::Close(d);
        }
        self.reply(m, reference).await
    }

    /// Writes `first` and whatever else is already queued (up to
    /// `max_coalesce`) with one flush, all under one write timeout (a timer
    /// per event per subscriber would cost more than the write).
    ///
    /// What to write is gathered before the future is made: it holds the
    /// frames and the write, not the deliveries they came from (every
    /// connection's task is sized for this future).
    fn on_delivery(&mut self, first: Delivery) -> impl Future<Output = Outcome> + Send + '_ {
        let (frames, closed) = self.gather(first);
        async move {
            let write_timeout = self.app.config.write_timeout;
            let written = timeout(write_timeout, async {
                self.flush_tungstenite().await?;
                let io = self.ws.get_mut();
                match &frames {
                    Frames::One(frame) => write_frames(io, std::slice::from_ref(frame)).await,
                    Frames::Many(frames) => write_frames(io, frames).await,
                }
            })
            .await;
            match written {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Outcome::Gone,
                Err(_) => return Outcome::Stalled,
            }
            match closed {
                None => Outcome::Continue,
                Some(reason) => {
                    if reason == CloseReason::Shutdown {
                        // Spread the closes of a shutdown over the drain
                        // window, so clients do not all come back at once.
                        // Boxed: once per connection's life.
                        let drain = self.app.config.shutdown_drain;
                        Box::pin(tokio::time::sleep(drain.mul_f64(fastrand::f64()))).await;
                    }
                    Outcome::Close(Disconnect::from(reason))
                }
            }
        }
    }

    /// The frames of `first` and of what else is queued and ready (up to
    /// `max_coalesce`), and the subscription's end if one came among them.
    fn gather(&mut self, first: Delivery) -> (Frames, Option<CloseReason>) {
        // The common case, one event and nothing else queued, is written
        // without a list (no allocation per event per subscriber).
        let mut frames = Frames::Many(Vec::new());
        let mut count = 0;
        let mut next = Some(first);
        while let Some(d) = next.take() {
            let frame = match d {
                Delivery::Event(e) => {
                    self.app
                        .hub
                        .metrics()
                        .events_delivered
                        .fetch_add(1, Ordering::Relaxed);
                    e.link_current_span();
                    e.ws_frame().clone()
                }
                // Rare, and with this subscription's own cursor: framed here.
                Delivery::Gap(g) => ws_frame::text_frame(&g.json()),
                Delivery::Closed(reason) => return (frames, Some(reason)),
            };
            count += 1;
            frames = match frames {
                Frames::Many(more) if more.is_empty() => Frames::One(frame),
                Frames::One(one) => Frames::Many(vec![one, frame]),
                Frames::Many(mut more) => {
                    more.push(frame);
                    Frames::Many(more)
                }
            };
            if count < self.app.config.max_coalesce {
                next = self.sub.try_next();
            }
        }
        (frames, None)
    }
}

/// The frames of one write.
enum Frames {
    One(Bytes),
    Many(Vec<Bytes>),
}

/// The most bytes of queued frames gathered into one buffer per write.
const GATHER_MAX: usize = 16 * 1024;

/// Writes `frames` whole and in order, as few vectored writes as the socket
/// takes (a write may take part of a frame: the next one resumes there),
/// then flushes (TLS holds its records until then).
async fn write_frames<W: AsyncWrite + Unpin>(io: &mut W, frames: &[Bytes]) -> io::Result<()> {
    if frames.is_empty() {
        return Ok(());
    }
    if let [frame] = frames {
        io.write_all(frame).await?;
        return io.flush().await;
    }
    // Small frames are gathered into one buffer first: the kernel copies
    // one contiguous slice much faster than many small ones (measured at
    // 10k subscribers, where the per-slice copy cost dominated the write).
    let total: usize = frames.iter().map(|f| f.len()).sum();
    if total <= GATHER_MAX {
        let mut gathered = Vec::with_capacity(total);
        for f in frames {
            gathered.extend_from_slice(f);
        }
        io.write_all(&gathered).await?;
        return io.flush().await;
    }
    // At most this many slices per write, well under any system's IOV_MAX.
    const MAX_SLICES: usize = 64;
    let mut slices: Vec<IoSlice<'_>> = frames.iter().map(|f| IoSlice::new(f)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let k = rest.len().min(MAX_SLICES);
        let n = io.write_vectored(&rest[..k]).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    io.flush().await
}

/// Resolves at the credential's deadline; never without one.
async fn expired(deadline: &mut Option<Pin<Box<Sleep>>>) {
    match deadline {
        Some(d) => d.await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use herald_core::{Data, Event, NewEvent, Position, Topic};
    use tokio::io::AsyncReadExt;
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket};

    use super::*;

    /// Frames at each payload-length boundary of RFC 6455's header, and an
    /// event's shared frame, written through a pipe that takes a few bytes
    /// at a time, read back by tungstenite's own parser as a client.
    #[tokio::test]
    async fn shared_frames_written_in_pieces_are_read_by_tungstenite() {
        let event = Event::new(
            NewEvent::new(Topic::new("t").unwrap(), Data::Text("hi".into())),
            Position::new(1, 1),
            0,
        );
        let mut texts: Vec<Bytes> = [0, 125, 126, 65535, 65536]
            .into_iter()
            .map(|n| Bytes::from("é".repeat(n / 2) + &"x".repeat(n % 2)))
            .collect();
        let mut frames: Vec<Bytes> = texts.iter().map(|t| ws_frame::text_frame(t)).collect();
        texts.push(event.json().clone());
        frames.push(event.ws_frame().clone());
        let (mut tx, mut rx) = tokio::io::duplex(1000);
        let reader = tokio::spawn(async move {
            let mut wire = Vec::new();
            rx.read_to_end(&mut wire).await.unwrap();
            wire
        });
        write_frames(&mut tx, &frames).await.unwrap();
        drop(tx);
        let wire = reader.await.unwrap();
        let mut client = WebSocket::from_raw_socket(Cursor::new(wire), Role::Client, None);
        for text in texts {
            match client.read().unwrap() {
                Message::Text(t) => assert_eq!(t.as_bytes(), &text[..]),
                other => panic!("{other:?}"),
            }
        }
        // Nothing more: the stream ends without another message.
        assert!(client.read().is_err());
    }
}
