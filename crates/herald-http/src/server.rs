//! The accept loop: HTTP/1.1 and HTTP/2 on one port (h2c by prior knowledge
//! in cleartext, `h2` by ALPN under TLS), WebSocket upgrades over both
//! (HTTP/1.1 `Upgrade`, HTTP/2 extended CONNECT, RFC 8441), graceful shutdown
//! (GOAWAY on HTTP/2), and a per-connection kill switch.
//!
//! The kill switch exists for the slow-consumer policy on HTTP/1.1: a client
//! that stops reading fills its socket, so its response body is no longer
//! polled and could not end itself. When its queue overflows the hub wakes
//! the connection's [`ConnectionHandle::kill`], and the connection is dropped.
//! HTTP/2 streams get no kill switch: a stalled stream is held back by its
//! own flow-control window while the connection's other streams go on, and
//! its queue is freed as soon as it overflows.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use herald_core::{Hub, Transport};
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tower::ServiceExt;

use crate::tls::Tls;
use direct::{Answered, First, Rewind};

mod direct;

/// Per-connection data handlers can read from the request extensions.
#[derive(Clone, Debug)]
pub struct ConnectionHandle {
    /// Wake to drop the connection at once (HTTP/1.1 only).
    pub kill: Option<Arc<Notify>>,
    /// The peer's address.
    pub peer: SocketAddr,
}

/// How long graceful shutdown waits for connections to finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A TLS handshake that takes longer than this is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of [`serve_with`].
#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    /// Serve HTTPS with this certificate (HTTP/2 by ALPN); cleartext when `None`.
    pub tls: Option<Arc<Tls>>,
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
/// GOAWAY on HTTP/2, waits up to [`DRAIN_TIMEOUT`] for connections to finish,
/// closes the engine and returns.
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
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true)
        // The smallest buffer hyper allows: idle streaming connections
        // dominate, and their requests are small.
        .max_buf_size(8192);
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
    let metrics = hub.metrics().clone();
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
        metrics
            .tcp_connections_total
            .fetch_add(1, Ordering::Relaxed);
        let conn = Conn {
            builder: builder.clone(),
            router: router.clone(),
            peer,
            watcher: graceful.watcher(),
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
    // WebSockets and directly written event streams end by themselves once
    // the hub is shut down; hyper's own connections are drained by `graceful`.
    let ws_closed = async {
        while hub.metrics().open(Transport::WebSocket) > 0 || hub.metrics().open(Transport::Sse) > 0
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        tokio::join!(graceful.shutdown(), ws_closed);
    })
    .await;
    hub.engine().close().await;
    Ok(())
}

/// One accepted connection.
struct Conn {
    builder: Arc<Builder<TokioExecutor>>,
    router: Router,
    peer: SocketAddr,
    watcher: Watcher,
    metrics: Arc<herald_core::Metrics>,
    hub: Hub,
}

impl Conn {
    async fn run<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let metrics = self.metrics.clone();
        metrics.tcp_connections_open.fetch_add(1, Ordering::Relaxed);
        let kill = Arc::new(Notify::new());
        // HTTP/1.1 event streams and long polls are written directly (see
        // `direct`), one request after another; the first other request goes
        // to hyper with the bytes read so far put back, and hyper serves the
        // connection from then on.
        let mut io = Rewind::new(bytes::Bytes::new(), io);
        let io = loop {
            match Box::pin(direct::first_request(&mut io)).await {
                First::Gone => break None,
                First::Other(prefix) => {
                    io.unread(prefix);
                    break Some(io);
                }
                First::Direct(req, rest) => {
                    io.unread(rest);
                    let handle = ConnectionHandle {
                        kill: Some(kill.clone()),
                        peer: self.peer,
                    };
                    let router = self.router.clone();
                    let hub = &self.hub;
                    // Boxed: routing is a large future that ends before streaming starts.
                    let answered = Box::pin(direct::answer(io, req, router, handle, || {
                        hub.is_shutting_down()
                    }))
                    .await;
                    match answered {
                        Answered::Stream(io, body) => {
                            direct::stream(io, body, &kill).await;
                            break None;
                        }
                        Answered::Done(back) => io = back,
                        Answered::Gone => break None,
                    }
                }
            }
        };
        if let Some(io) = io {
            // Boxed: only connections served by hyper pay for its state.
            Box::pin(self.serve_hyper(io, kill)).await;
        }
        metrics.tcp_connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    async fn serve_hyper<I>(self, io: I, kill: Arc<Notify>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let http1 = ConnectionHandle {
            kill: Some(kill.clone()),
            peer: self.peer,
        };
        let http2 = ConnectionHandle {
            kill: None,
            peer: self.peer,
        };
        let router = self.router;
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let handle = if req.version() == hyper::Version::HTTP_2 {
                http2.clone()
            } else {
                http1.clone()
            };
            req.extensions_mut().insert(handle);
            router.clone().oneshot(req.map(Body::new))
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
