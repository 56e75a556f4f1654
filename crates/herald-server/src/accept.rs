//! The accept loop: HTTP/1.1 and HTTP/2 on one port (h2c by prior knowledge
//! in cleartext, `h2` by ALPN under TLS), WebSocket upgrades over both
//! (HTTP/1.1 `Upgrade`, HTTP/2 extended CONNECT, RFC 8441), graceful shutdown
//! (GOAWAY on HTTP/2), and a per-connection kill switch.
//!
//! Shutdown completes on a channel (see `shutdown`), not by polling gauges.
//!
//! The kill switch exists for the slow-consumer policy: a client that stops
//! reading fills its socket (HTTP/1.1) or its stream's flow-control window
//! (HTTP/2), so its response body is no longer polled and could not end
//! itself. When its queue overflows the hub wakes the
//! [`ConnectionHandle::kill`] it was given. On HTTP/1.1 the connection is
//! then dropped. On HTTP/2 only that stream ends: its event-stream body is
//! dropped at once (its queue, its connection slot and everything it held
//! are freed; the connection's other streams go on), and the stream is
//! reset when hyper next polls it.
//!
//! Request heads are bounded by [`MAX_HEAD`] bytes and [`MAX_HEADERS`]
//! fields, and request targets by [`MAX_URI`](crate::MAX_URI) bytes, on every HTTP/1.1
//! request. The first request of a connection is read by the push path
//! (`http1_push`), which refuses with 431 `headers_too_large` or 414
//! `uri_too_long` and the JSON error body; later requests on a connection
//! hyper serves meet hyper's own checks of the same limits (hyper's head
//! limit counts its read buffer, so a head may pass it by up to one read),
//! and hyper's empty automatic refusals (400, 414, 431) are rewritten on
//! their way out to carry the same JSON error body. HTTP/2 requests without
//! `Host` get one from their `:authority`, as an HTTP/1.1 request would
//! carry it (RFC 9113, section 8.3.1), so that checks made against `Host`
//! (a WebSocket's same-origin rule) work on both. A request without
//! exactly one `Host` is refused with 400 (RFC 9112, section 3.2).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use herald_core::Hub;
use herald_http::connection::ConnectionHandle;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tower::ServiceExt;

use crate::http1_push::{self, Answered, First, Rewind, MAX_HEAD, MAX_HEADERS};
use crate::metrics::ServerMetrics;
use crate::shutdown::{Drain, DrainWatch};
use crate::socket::Socket;
use crate::stream_end;
use crate::tls::Tls;

/// How long graceful shutdown waits for connections to finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A TLS handshake that takes longer than this is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of [`serve_with`].
#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    /// Serve HTTPS with this certificate (HTTP/2 by ALPN); cleartext when `None`.
    pub tls: Option<Arc<Tls>>,
    /// Where the accept loop counts TCP connections and failed TLS
    /// handshakes; `/metrics` shows them. Keep a clone to read them.
    pub metrics: Arc<ServerMetrics>,
    /// How long the kernel keeps trying to send what a connection still
    /// had unsent when it was closed (its answer fitted in the socket's
    /// buffer, the peer reads nothing): the socket's `TCP_USER_TIMEOUT`
    /// (RFC 5482), set as it closes. `None`: 30 s, the default write
    /// deadline. Without it such an orphaned socket holds its send buffer
    /// for as long as the peer acknowledges the kernel's probes.
    pub close_timeout: Option<Duration>,
}

/// Serves `router` in cleartext (HTTP/1.1 and h2c) until `shutdown`
/// resolves; see [`serve_with`].
pub async fn serve<F>(
    listener: TcpListener,
    router: Router,
    hub: Hub,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send,
{
    serve_with(listener, router, hub, ServeOptions::default(), shutdown).await
}

/// Serves `router` on `listener` until `shutdown` resolves, then shuts the hub
/// down (streams end, WebSockets close with 1000, held polls answer), sends
/// GOAWAY on HTTP/2, waits up to [`DRAIN_TIMEOUT`] for connections to finish
/// (their answers, streams and WebSockets), closes the engine and returns.
pub async fn serve_with<F>(
    listener: TcpListener,
    router: Router,
    hub: Hub,
    options: ServeOptions,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(http1_push::HEAD_TIMEOUT)
        .keep_alive(true)
        // A peer that shuts down its sending side after its request still
        // gets the answer.
        .half_close(true)
        // The same head limit as the push path. hyper's read buffer starts
        // at 8 KiB and grows only while a large head or body is read.
        .max_buf_size(MAX_HEAD)
        .max_headers(MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        // Many SSE streams of one page share a connection.
        .max_concurrent_streams(1000)
        // WebSockets over HTTP/2 (RFC 8441).
        .enable_connect_protocol()
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let drain = Drain::new();
    let metrics = options.metrics.clone();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let stream = Socket::new(
            stream,
            options.close_timeout.unwrap_or(http1_push::WRITE_TIMEOUT),
            metrics.clone(),
        );
        metrics
            .tcp_connections_total
            .fetch_add(1, Ordering::Relaxed);
        let conn = Conn {
            builder: builder.clone(),
            router: router.clone(),
            peer,
            watcher: graceful.watcher(),
            drain: drain.watch(),
            metrics: metrics.clone(),
            hub: hub.clone(),
        };
        match &options.tls {
            None => {
                tokio::spawn(conn.run(stream));
            }
            Some(tls) => {
                let acceptor = tls.acceptor().clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => conn.run(tls_stream).await,
                        Ok(Err(e)) => {
                            conn.metrics
                                .tls_handshake_failures
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            conn.metrics
                                .tls_handshake_failures
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%peer, "TLS handshake timed out");
                        }
                    }
                });
            }
        }
    }
    drop(listener);
    hub.shutdown();
    // Streams, polls and WebSockets end by themselves once the hub is shut
    // down; `graceful` closes hyper's idle connections and sends GOAWAY, and
    // the drain finishes when every connection has let go of its token.
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        tokio::join!(graceful.shutdown(), drain.finished());
    })
    .await;
    hub.engine().close().await;
    Ok(())
}

/// Gives an HTTP/2 request without `Host` the one its `:authority` names.
fn authority_as_host<B>(req: &mut Request<B>) {
    if req.headers().contains_key(http::header::HOST) {
        return;
    }
    let host = req
        .uri()
        .authority()
        .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok());
    if let Some(host) = host {
        req.headers_mut().insert(http::header::HOST, host);
    }
}

/// The refusal of a request without one valid `Host`, 400
/// `invalid_request`: over HTTP/1.1 one without it, with more than one or
/// with a value that is not a host and port (RFC 9112, section 3.2; see
/// `host_is_valid`); over HTTP/2 one whose `Host` and `:authority` differ
/// or that has neither (RFC 9113, section 8.3.1), and more than one `Host`
/// on any version. HTTP/1.0 may leave it out. An HTTP/2 request has been
/// given its `:authority` as `Host` ([`authority_as_host`]) before this.
fn host_refusal<B>(req: &Request<B>) -> Option<axum::response::Response> {
    use axum::response::IntoResponse;
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    let host = hosts.next();
    let refusal = |message: &'static str| {
        Some(herald_http::ApiError::bad_request("invalid_request", message).into_response())
    };
    if hosts.next().is_some() {
        return refusal("a request must carry exactly one Host header (RFC 9112, section 3.2)");
    }
    if req.version() == hyper::Version::HTTP_2 {
        let authority = req.uri().authority().map(|a| a.as_str().as_bytes());
        return match (host.map(|h| h.as_bytes()), authority) {
            (None, None) => {
                refusal("an HTTP/2 request must carry :authority or Host (RFC 9113, section 8.3.1)")
            }
            (Some(h), Some(a)) if !h.eq_ignore_ascii_case(a) => {
                refusal("Host and :authority must not differ (RFC 9113, section 8.3.1)")
            }
            (Some(h), _) if !http1_push::host_is_valid(h) => {
                refusal("the Host header is not a host and port (RFC 9113, section 8.3.1)")
            }
            _ => None,
        };
    }
    match host {
        None if req.version() == hyper::Version::HTTP_11 => {
            refusal("a request must carry exactly one Host header (RFC 9112, section 3.2)")
        }
        Some(h) if !http1_push::host_is_valid(h.as_bytes()) => {
            refusal("the Host header is not a host and port (RFC 9112, section 3.2)")
        }
        _ => None,
    }
}

/// The write deadline of a connection hyper serves, shared
/// between the service (which knows each answer) and the stream under
/// hyper (which times the writes): see `Rewind::limit_stalled_writes`.
#[derive(Clone)]
struct WriteLimit {
    /// The deadline of the answer being written, in milliseconds.
    millis: Arc<std::sync::atomic::AtomicU64>,
    /// An answer switched protocols (101): the upgraded protocol times its
    /// own writes from then on.
    switched: Arc<std::sync::atomic::AtomicBool>,
}

/// One accepted connection.
struct Conn {
    builder: Arc<Builder<TokioExecutor>>,
    router: Router,
    peer: SocketAddr,
    watcher: Watcher,
    drain: DrainWatch,
    metrics: Arc<ServerMetrics>,
    hub: Hub,
}

impl Conn {
    /// What the router learns of this connection.
    fn handle(&self, kill: Option<Arc<Notify>>) -> ConnectionHandle {
        ConnectionHandle {
            kill,
            peer: self.peer,
            read_closed: None,
            server_metrics: Some(self.metrics.clone()),
            defers_head: false,
        }
    }

    async fn run<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let kill = Arc::new(Notify::new());
        // HTTP/1.1 event streams and long polls are written directly (see
        // `http1_push`), one request after another; the first other request goes
        // to hyper with the bytes read so far put back, and hyper serves the
        // connection from then on.
        let mut io = Rewind::new(bytes::Bytes::new(), io);
        let io = loop {
            match Box::pin(http1_push::first_request(&mut io)).await {
                First::Gone => break None,
                First::TooLarge => {
                    // Boxed, as every rare path here: the task is sized for its largest await.
                    Box::pin(http1_push::refuse_head(&mut io)).await;
                    break None;
                }
                First::UriTooLong => {
                    Box::pin(http1_push::refuse_uri(&mut io)).await;
                    break None;
                }
                First::Other(prefix) => {
                    io.unread(prefix);
                    break Some(io);
                }
                First::Direct(req, rest) => {
                    io.unread(rest);
                    // Shutdown waits for this answer (and stream) to end.
                    let _serving = self.drain.token();
                    let handle = self.handle(Some(kill.clone()));
                    let router = self.router.clone();
                    let hub = &self.hub;
                    // Boxed: routing is a large future that ends before streaming starts.
                    let answered =
                        Box::pin(http1_push::answer(&mut io, req, router, handle, || {
                            hub.is_shutting_down()
                        }))
                        .await;
                    match answered {
                        Answered::Stream(body, deadline) => {
                            // Boxed: only event streams pay for writing one.
                            Box::pin(http1_push::stream(io, body, &kill, deadline)).await;
                            break None;
                        }
                        Answered::Done => {}
                        Answered::Gone => break None,
                    }
                }
            }
        };
        if let Some(mut io) = io {
            // The socket holds the token: shutdown waits for hyper's
            // connection, and for a WebSocket it upgrades the socket to.
            io.hold(self.drain.token());
            // HTTP/1.1 handlers learn when the peer closes (a stream ends
            // at once, a held poll answers), as on the direct path.
            // Not for HTTP/2 (streams end with RST_STREAM, and hyper reads
            // an HTTP/2 connection all the time).
            let (closed_tx, closed_rx) = herald_http::ReadClosed::channel();
            let upgraded = Arc::new(std::sync::atomic::AtomicBool::new(false));
            // The write deadline of the answer being written (hyper has no
            // write timeout): its `WriteDeadline`, else the default; over
            // HTTP/1.1 off once an answer switches protocols (101), not
            // merely when a request asks to. Over HTTP/2 on for the
            // connection's whole life: a peer that stops reading its socket
            // stalls every stream (and the PINGs and GOAWAY queued behind
            // them), which no healthy HTTP/2 client does; a stream a client
            // stops reading without stalling the socket fills its
            // flow-control window instead, and the slow-consumer rule or
            // the stream's own deadline (`stream_end`) ends it.
            let write_limit = WriteLimit {
                millis: Arc::new(std::sync::atomic::AtomicU64::new(
                    http1_push::WRITE_TIMEOUT.as_millis() as u64,
                )),
                switched: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            };
            if !io.starts_with(http1_push::H2_PREFACE) {
                io.on_read_closed(closed_tx, upgraded.clone());
            }
            io.limit_stalled_writes(write_limit.millis.clone(), write_limit.switched.clone());
            // Boxed: only connections served by hyper pay for its state.
            Box::pin(self.serve_hyper(io, kill, closed_rx, upgraded, write_limit)).await;
        }
    }

    async fn serve_hyper<I>(
        self,
        io: I,
        kill: Arc<Notify>,
        read_closed: herald_http::ReadClosed,
        upgraded: Arc<std::sync::atomic::AtomicBool>,
        write_limit: WriteLimit,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut http1 = self.handle(Some(kill.clone()));
        http1.read_closed = Some(read_closed);
        let router = self.router;
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let router = router.clone();
            let http2 = req.version() == hyper::Version::HTTP_2;
            // Each HTTP/2 stream has its own kill switch.
            let stream_kill = http2.then(|| Arc::new(Notify::new()));
            if http2 {
                authority_as_host(&mut req);
                // A WebSocket (extended CONNECT, RFC 8441) gets the
                // connection's switch instead: it fires it when a write
                // stalls for the deadline, because hyper resets an upgraded
                // stream only when it can write to it, never while its
                // window is closed (see `stream_end` for event streams).
                let websocket = req.method() == hyper::Method::CONNECT;
                req.extensions_mut().insert(ConnectionHandle {
                    kill: if websocket {
                        http1.kill.clone()
                    } else {
                        stream_kill.clone()
                    },
                    // HTTP/2 streams end with RST_STREAM, not a read EOF.
                    read_closed: None,
                    ..http1.clone()
                });
            } else {
                if req.headers().contains_key(hyper::header::UPGRADE) {
                    upgraded.store(true, Ordering::Relaxed);
                }
                req.extensions_mut().insert(http1.clone());
            }
            let limit = write_limit.clone();
            let connection_kill = http1.kill.clone();
            let refusal = host_refusal(&req);
            async move {
                let resp = match refusal {
                    Some(refusal) => refusal,
                    None => router.oneshot(req.map(Body::new)).await?,
                };
                // Over HTTP/2 the deadline of the latest answer holds for
                // the connection: each is bounded, none turns it off.
                let deadline = resp
                    .extensions()
                    .get::<herald_http::connection::WriteDeadline>()
                    .map_or(http1_push::WRITE_TIMEOUT, |d| d.0);
                limit
                    .millis
                    .store(deadline.as_millis() as u64, Ordering::Relaxed);
                if !http2 && resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                    limit.switched.store(true, Ordering::Relaxed);
                }
                Ok::<_, std::convert::Infallible>(match stream_kill {
                    Some(kill) => stream_end::end_on_kill(resp, kill, deadline, connection_kill),
                    None => resp,
                })
            }
        });
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        let conn = self.watcher.watch(conn);
        let peer = self.peer;
        tokio::select! {
            _ = conn => {}
            _ = kill.notified() => {
                tracing::debug!(%peer, "dropping a connection that fell behind");
            }
        }
    }
}
