//! The accept loop: HTTP/1.1 and HTTP/2 (prior knowledge) on one port,
//! WebSocket upgrades, graceful shutdown, and a per-connection kill switch.
//!
//! The kill switch exists for the slow-consumer policy: a client that stops
//! reading fills its socket, so its response body is no longer polled and
//! could not end itself. When its queue overflows the hub wakes the
//! connection's [`ConnectionHandle::kill`], and the connection is dropped.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use herald_core::{Hub, Transport};
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tower::ServiceExt;

/// Per-connection data handlers can read from the request extensions.
#[derive(Clone, Debug)]
pub struct ConnectionHandle {
    /// Wake to drop the connection at once.
    pub kill: Arc<Notify>,
    /// The peer's address.
    pub peer: SocketAddr,
}

/// How long graceful shutdown waits for connections to finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `router` on `listener` until `shutdown` resolves, then shuts the hub
/// down (streams end, WebSockets close with 1000, held polls answer), waits up
/// to [`DRAIN_TIMEOUT`] for connections to finish, and returns.
pub async fn serve<F>(
    listener: TcpListener,
    router: Router,
    hub: Hub,
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
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(20)));
    let graceful = GracefulShutdown::new();
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
        let kill = Arc::new(Notify::new());
        let handle = ConnectionHandle {
            kill: kill.clone(),
            peer,
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(handle.clone());
            router.clone().oneshot(req.map(Body::new))
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            tokio::select! {
                _ = conn => {}
                _ = kill.notified() => {
                    tracing::debug!(%peer, "dropping a connection that fell behind");
                }
            }
        });
    }
    drop(listener);
    hub.shutdown();
    let ws_closed = async {
        while hub.metrics().open(Transport::WebSocket) > 0 {
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
