//! `/healthz`, `/readyz` and `/metrics`.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::connection::ConnectionHandle;
use crate::error::ApiError;
use crate::AppState;

/// The process is up.
pub(crate) async fn healthz() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

/// The engine is reachable and the server is not shutting down.
pub(crate) async fn readyz(State(app): State<AppState>) -> Response {
    if app.hub.is_shutting_down() {
        return ApiError::unavailable("the server is shutting down").into_response();
    }
    match app.hub.engine().ready().await {
        Ok(()) => (
            StatusCode::OK,
            Json(serde_json::json!({"status": "ready", "engine": app.hub.engine().name()})),
        )
            .into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Prometheus text format (README.md, "Metrics reference"): the hub's
/// counters, gauges and histograms; the subscriber queues' deepest and
/// capacity ([`herald_core::metrics::QueueBounds`], the one scan made
/// here); the per-policy refusals; those of the server that accepted the
/// connection when it inserted them (see
/// [`ConnectionHandle::server_metrics`]); the hooks' when configured; and
/// those of [`crate::HttpConfig::metrics`].
pub(crate) async fn metrics(
    State(app): State<AppState>,
    conn: Option<axum::Extension<ConnectionHandle>>,
) -> Response {
    use herald_core::metrics::{MetricsSource, QueueBounds};
    let queues = QueueBounds {
        deepest: app.hub.deepest_queue() as u64,
        capacity: app.hub.config().queue_capacity as u64,
    };
    let server = conn.and_then(|c| c.0.server_metrics);
    let hooks = app.config.hooks.as_ref().map(|h| h.metrics().clone());
    let extra: Vec<&dyn MetricsSource> = [&queues as &dyn MetricsSource]
        .into_iter()
        .chain(server.as_deref())
        .chain(hooks.as_deref().map(|m| m as &dyn MetricsSource))
        .chain(std::iter::once(
            &*app.hub.config().policies as &dyn MetricsSource,
        ))
        .chain(app.config.metrics.iter().map(|m| &**m))
        .collect();
    let body = app.hub.metrics().render(app.hub.engine().name(), &extra);
    let mut r = body.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}
