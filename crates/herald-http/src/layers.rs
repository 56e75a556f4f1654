//! Request-wide layers: the access log (with credentials redacted) and CORS.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use tower_http::cors::{AllowCredentials, AllowOrigin, CorsLayer};

use crate::auth::redact_query;

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

/// Headers a cross-origin page may send: credentials and JSON bodies, and
/// what `EventSource` polyfills add (`Last-Event-ID` to resume,
/// `Cache-Control`, `X-Requested-With`).
const CORS_ALLOW_HEADERS: [HeaderName; 6] = [
    header::AUTHORIZATION,
    header::CONTENT_TYPE,
    HeaderName::from_static("last-event-id"),
    header::CACHE_CONTROL,
    HeaderName::from_static("x-requested-with"),
    // W3C Trace Context: a page's publish may carry its trace.
    HeaderName::from_static("traceparent"),
];

/// How long a browser may cache a preflight answer.
const CORS_MAX_AGE: Duration = Duration::from_secs(600);

/// CORS for the configured origins, or `None` (CORS off) when none are.
///
/// - `*` answers `Access-Control-Allow-Origin: *` and never allows
///   credentials, so a page on another site cannot turn the user's cookie
///   into a readable answer (a one-time token from `POST /v1/tokens`).
/// - An origin listed explicitly (scheme, host and port, matched exactly) is
///   reflected with `Access-Control-Allow-Credentials: true`. When `*` is
///   listed beside explicit origins, the other origins are reflected without
///   credentials, which a browser treats as `*`.
/// - `null` (sandboxed frames, `file:` pages, some redirects) is never
///   reflected, even if listed, because any site can produce it.
///
/// The WebSocket endpoint is not covered: browsers do not apply CORS to it
/// (its `Origin` is checked by the upgrade itself).
pub(crate) fn cors(origins: &[String]) -> Option<CorsLayer> {
    let any = origins.iter().any(|o| o.trim() == "*");
    let listed: Arc<Vec<HeaderValue>> = Arc::new(
        origins
            .iter()
            .filter_map(|o| normalize_origin(o))
            .filter_map(|o| HeaderValue::from_str(&o).ok())
            .collect(),
    );
    if !any && listed.is_empty() {
        return None;
    }
    let allow_origin = if listed.is_empty() {
        AllowOrigin::any()
    } else {
        let listed = Arc::clone(&listed);
        AllowOrigin::predicate(move |origin, _| {
            origin.as_bytes() != b"null" && (any || listed.contains(origin))
        })
    };
    let credentials = AllowCredentials::predicate(move |origin, _| listed.contains(origin));
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_credentials(credentials)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers(CORS_ALLOW_HEADERS)
            .max_age(CORS_MAX_AGE)
            // Mercure subscribers reading the stream with fetch need the
            // resume header and the discovery link.
            .expose_headers([
                header::RETRY_AFTER,
                header::LINK,
                HeaderName::from_static("last-event-id"),
                HeaderName::from_static("mercure-last-event-id"),
            ])
            // Also with `*`: a cache shared by several sites must not hand
            // one origin's answer to another as configurations change.
            .vary([header::ORIGIN]),
    )
}

/// A configured origin in the form browsers send it (lowercase, no trailing
/// slash, no default port), or `None` for `*`, `null` and empty entries.
pub(crate) fn normalize_origin(origin: &str) -> Option<String> {
    let o = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    if o.is_empty() || o == "*" || o == "null" {
        return None;
    }
    let o = match o.strip_suffix(":443") {
        Some(rest) if rest.starts_with("https://") => rest.to_owned(),
        _ => match o.strip_suffix(":80") {
            Some(rest) if rest.starts_with("http://") => rest.to_owned(),
            _ => o,
        },
    };
    Some(o)
}

#[cfg(test)]
mod tests {
    use super::normalize_origin;

    #[test]
    fn configured_origins_take_the_form_browsers_send() {
        assert_eq!(
            normalize_origin("https://App.Example/").as_deref(),
            Some("https://app.example")
        );
        assert_eq!(
            normalize_origin("https://app.example:443").as_deref(),
            Some("https://app.example")
        );
        assert_eq!(
            normalize_origin("http://localhost:8080").as_deref(),
            Some("http://localhost:8080")
        );
        assert_eq!(
            normalize_origin("https://app.example:80").as_deref(),
            Some("https://app.example:80")
        );
        assert_eq!(normalize_origin("null"), None);
        assert_eq!(normalize_origin(" * "), None);
    }
}
