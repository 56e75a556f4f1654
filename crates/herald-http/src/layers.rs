//! Request-wide layers: the access log (with credentials redacted) and CORS.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::redact_query;
use crate::AppState;

/// Logs each request at debug level: method, path, query with credentials
/// redacted, status and time to the response head. Never the token itself,
/// never cookies or the Authorization header.
pub(crate) async fn access_log(req: Request, next: Next) -> Response {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return next.run(req).await;
    }
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(redact_query).unwrap_or_default();
    let started = Instant::now();
    let resp = next.run(req).await;
    tracing::debug!(
        %method,
        path,
        query,
        status = resp.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "request"
    );
    resp
}

/// CORS for the configured origins (off when none are configured). The
/// WebSocket endpoint is not covered: browsers do not apply CORS to it (its
/// `Origin` is checked by the upgrade itself).
pub(crate) async fn cors(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let origins = &app.config.cors_origins;
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let allowed = match &origin {
        Some(o) if !origins.is_empty() => origins
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(o)),
        _ => false,
    };
    if !allowed {
        return next.run(req).await;
    }
    let origin = origin.unwrap_or_default();
    let mut resp = if req.method() == Method::OPTIONS {
        let mut r = (StatusCode::NO_CONTENT, Body::empty()).into_response();
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, last-event-id"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        r
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    h.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    h.append(header::VARY, HeaderValue::from_static("origin"));
    resp
}
