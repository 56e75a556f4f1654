//! Errors as HTTP responses, decided in one place:
//! `{"error": {"code": "...", "message": "..."}}` with the matching status.
//!
//! Every status Herald answers an error with is chosen here: by the named
//! constructors of [`ApiError`] and by the `From` conversions of the core's,
//! auth's and one-time tokens' errors. Handlers return `Result<_, ApiError>`
//! and never name a status themselves. A 429 or 503 always carries
//! `Retry-After` (1 s unless the error knows better); an SSE stream turns
//! such a temporary refusal into a `herald.disconnect`
//! ([`ApiError::disconnect`]).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_auth::{AuthError, Denied, IssueError};
use herald_core::wire::disconnect::{self, Disconnect};
use herald_core::{CursorError, EngineError, PublishError, SubscribeError, TopicError};

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The machine-readable code of the JSON body (also a WebSocket
    /// `error`'s `code`).
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
    /// `Retry-After` in seconds, for a 429 or 503 that knows when to come
    /// back (`None`: 1 s).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with any status; prefer the named constructors below, so
    /// that the statuses stay listed in this module.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400: the request is malformed (`code` says how).
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401 `unauthorized`: no credential, or one that is not accepted.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: the credential does not allow this (`forbidden`), or it may not
    /// be used from this origin (`forbidden_origin`).
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, code, message)
    }

    /// 403 for the application's refusal through a hook, with its reason
    /// when it gave one: `forbidden` for a connection (connect hook) or a
    /// topic read (subscribe hook), `hook_refused` for a publish (publish
    /// hook).
    pub fn hook_refused(hook: herald_hooks::Hook, reason: Option<String>) -> ApiError {
        use herald_hooks::Hook;
        let (code, fallback) = match hook {
            Hook::Connect => ("forbidden", "the application refused this connection"),
            Hook::Subscribe => (
                "forbidden",
                "the application does not allow reading this topic",
            ),
            Hook::Publish => ("hook_refused", "the application refused this publish"),
        };
        ApiError::forbidden(code, reason.unwrap_or_else(|| fallback.to_owned()))
    }

    /// 404 `not_found`: no such route.
    pub fn not_found() -> ApiError {
        ApiError::no_such("no such route")
    }

    /// 404 `not_found` for a named thing (a generation, a topic).
    pub fn no_such(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 405 `method_not_allowed`.
    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not accept that method",
        )
    }

    /// 408 `request_timeout`: the body did not arrive in time.
    pub fn request_timeout(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", message)
    }

    /// 409: the request conflicts with the state of what it names.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, code, message)
    }

    /// 413 `too_large`: a body or an event over its limit.
    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }

    /// 415 `unsupported_media_type`: a body that is not JSON.
    pub fn unsupported_media_type(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        )
    }

    /// 429: this client holds its share (`rate_limited`,
    /// `too_many_connections`, ...); with `Retry-After`.
    pub fn too_many_requests(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message)
    }

    /// 502: an upstream service answered with an error.
    pub fn bad_gateway(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_GATEWAY, code, message)
    }

    /// 503 `unavailable`: shutting down, or the engine cannot be reached;
    /// with `Retry-After`.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::overloaded("unavailable", message)
    }

    /// 503 `server_full`: a global budget is used up; with `Retry-After`.
    pub fn server_full(message: impl Into<String>) -> ApiError {
        ApiError::overloaded("server_full", message)
    }

    /// 503 with another code (e.g. `too_many_connections` for the whole
    /// server); with `Retry-After`.
    pub fn overloaded(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    /// 504: an upstream service did not answer in time.
    pub fn gateway_timeout(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::GATEWAY_TIMEOUT, code, message)
    }

    /// An upstream service's own error status, passed on (an SDK expects
    /// the upstream's 401 as a 401); a status that is not an error (4xx,
    /// 5xx) becomes 502.
    pub fn upstream(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        if status.is_client_error() || status.is_server_error() {
            ApiError::new(status, code, message)
        } else {
            ApiError::bad_gateway(code, message)
        }
    }

    /// The same error, telling the client to come back in `secs` seconds.
    pub fn retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs);
        self
    }

    /// Whether the refusal is temporary (429, 503): it carries `Retry-After`.
    pub fn is_temporary(&self) -> bool {
        self.status == StatusCode::SERVICE_UNAVAILABLE
            || self.status == StatusCode::TOO_MANY_REQUESTS
    }

    /// The `Retry-After` seconds of a temporary refusal; `None` for others.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.is_temporary().then(|| self.retry_after.unwrap_or(1))
    }

    /// The reason an SSE stream gives for this refusal with
    /// `herald.disconnect` when a client should retry later, or `None` for a
    /// final one (400, 401, 403, ...), which keeps its status.
    pub fn disconnect(&self, shutting_down: bool) -> Option<Disconnect> {
        match self.status {
            StatusCode::TOO_MANY_REQUESTS => Some(disconnect::RATE_LIMITED),
            StatusCode::SERVICE_UNAVAILABLE if shutting_down => Some(disconnect::SHUTDOWN),
            StatusCode::SERVICE_UNAVAILABLE
                if matches!(self.code, "too_many_connections" | "server_full") =>
            {
                Some(disconnect::SERVER_FULL)
            }
            StatusCode::SERVICE_UNAVAILABLE => Some(disconnect::ENGINE_UNAVAILABLE),
            _ => None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        serde_json::json!({"error": {"code": self.code, "message": self.message}}).to_string()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry = self.retry_after_secs();
        let mut r = (self.status, self.body()).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = retry {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        r
    }
}

impl From<TopicError> for ApiError {
    fn from(e: TopicError) -> Self {
        ApiError::bad_request("invalid_topic", e.to_string())
    }
}

impl From<CursorError> for ApiError {
    fn from(e: CursorError) -> Self {
        ApiError::bad_request("invalid_cursor", e.to_string())
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            // A global budget is used up: temporary, like any 503 (Retry-After).
            EngineError::ServerFull(_) => ApiError::server_full(e.to_string()),
            EngineError::Unavailable(_)
            | EngineError::ShuttingDown
            | EngineError::NotReplicated { .. } => ApiError::unavailable(e.to_string()),
        }
    }
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        let msg = e.to_string();
        match e {
            PublishError::InvalidEventName(_) => ApiError::bad_request("invalid_event", msg),
            PublishError::TooLarge { .. } => ApiError::too_large(msg),
            PublishError::BadBatch { .. } => ApiError::bad_request("invalid_batch", msg),
            PublishError::InvalidId(_) => ApiError::bad_request("invalid_id", msg),
            PublishError::Engine(e) => e.into(),
        }
    }
}

impl From<SubscribeError> for ApiError {
    fn from(e: SubscribeError) -> Self {
        match e {
            SubscribeError::TooManyTopics(_) => {
                ApiError::bad_request("too_many_topics", e.to_string())
            }
            SubscribeError::Engine(e) => e.into(),
        }
    }
}

/// A request to `/v1/ws` that is not a WebSocket handshake (RFC 6455,
/// section 4.2.1; RFC 8441 over HTTP/2): its status (400 `invalid_upgrade`,
/// 405 `method_not_allowed` for an HTTP/2 request other than extended
/// CONNECT, 426 `upgrade_required`) with the JSON body every error has.
impl From<axum::extract::ws::rejection::WebSocketUpgradeRejection> for ApiError {
    fn from(e: axum::extract::ws::rejection::WebSocketUpgradeRejection) -> Self {
        let status = e.status();
        let code = match status {
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::UPGRADE_REQUIRED => "upgrade_required",
            _ => "invalid_upgrade",
        };
        ApiError::new(status, code, e.body_text())
    }
}

/// 401 for a refused credential; 503 `unavailable` (with `Retry-After`)
/// when it could not be checked now.
impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Invalid(_) => ApiError::unauthorized(e.to_string()),
            AuthError::Unavailable(_) => ApiError::unavailable(e.to_string()),
        }
    }
}

impl From<Denied> for ApiError {
    fn from(e: Denied) -> Self {
        match e {
            Denied::Unauthenticated(_) | Denied::Credential(_) => {
                ApiError::unauthorized(e.to_string())
            }
            Denied::Forbidden { .. } | Denied::NotAdmin => {
                ApiError::forbidden("forbidden", e.to_string())
            }
        }
    }
}

/// The application's hook gave no verdict (no answer in time, a failed
/// connection, a 5xx, an answer that does not parse): 503
/// `hook_unavailable` with `Retry-After`, so the action is refused (the hooks
/// fail closed) and the client retries later. An SSE stream says it with
/// `herald.disconnect` `engine_unavailable` (see [`ApiError::disconnect`]),
/// a WebSocket upgrade closes with 1013. The detail goes to the log, never
/// to the client.
impl From<herald_hooks::HookError> for ApiError {
    fn from(e: herald_hooks::HookError) -> Self {
        let hook = match &e {
            herald_hooks::HookError::Timeout { hook, .. }
            | herald_hooks::HookError::Unavailable { hook, .. } => *hook,
        };
        ApiError::overloaded(
            "hook_unavailable",
            format!("the application's {hook} hook is unavailable; retry later"),
        )
    }
}

/// A refused one-time token: 429 `rate_limited` when the caller holds its
/// share, 503 `server_full` when the pool is full, 503 `unavailable` when
/// the shared store cannot be reached; `Retry-After` says when a token
/// frees up.
impl From<IssueError> for ApiError {
    fn from(e: IssueError) -> Self {
        let retry = e.retry_after_secs();
        let api = match &e {
            IssueError::UserLimit { .. } => {
                ApiError::too_many_requests("rate_limited", e.to_string())
            }
            IssueError::Full { .. } => ApiError::server_full(e.to_string()),
            IssueError::Unavailable => ApiError::unavailable(e.to_string()),
            IssueError::Auth(a) => ApiError::from(a.clone()),
        };
        match retry {
            Some(secs) => api.retry_after(secs),
            None => api,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_refusals_carry_retry_after() {
        let r = ApiError::unavailable("x").into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let r = ApiError::too_many_requests("rate_limited", "x")
            .retry_after(30)
            .into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "30");
        let r = ApiError::bad_request("c", "x")
            .retry_after(30)
            .into_response();
        assert!(r.headers().get(header::RETRY_AFTER).is_none());
    }

    #[test]
    fn hook_refusals_are_final_and_failures_temporary() {
        use herald_hooks::{Hook, HookError};
        let e = ApiError::hook_refused(Hook::Publish, Some("no links".into()));
        assert_eq!(
            (e.status, e.code, e.message.as_str()),
            (StatusCode::FORBIDDEN, "hook_refused", "no links")
        );
        let e = ApiError::hook_refused(Hook::Subscribe, None);
        assert_eq!((e.status, e.code), (StatusCode::FORBIDDEN, "forbidden"));
        assert_eq!(e.disconnect(false), None);
        let e = ApiError::from(HookError::Unavailable {
            hook: "connect",
            detail: "connection refused by 10.0.0.1".into(),
        });
        assert_eq!(
            (e.status, e.code),
            (StatusCode::SERVICE_UNAVAILABLE, "hook_unavailable")
        );
        assert!(!e.message.contains("10.0.0.1"), "details stay in the log");
        assert_eq!(e.retry_after_secs(), Some(1));
        assert_eq!(
            e.disconnect(false).map(|d| d.reason),
            Some("engine_unavailable")
        );
    }

    #[test]
    fn sse_reasons_of_refusals() {
        let reason = |e: ApiError, down| e.disconnect(down).map(|d| d.reason);
        let full = ApiError::overloaded("too_many_connections", "x");
        assert_eq!(reason(full.clone(), false), Some("server_full"));
        assert_eq!(reason(full, true), Some("shutdown"));
        assert_eq!(
            reason(ApiError::server_full("x"), false),
            Some("server_full")
        );
        assert_eq!(
            reason(ApiError::unavailable("x"), false),
            Some("engine_unavailable")
        );
        assert_eq!(
            reason(
                ApiError::too_many_requests("too_many_connections", "x"),
                false
            ),
            Some("rate_limited")
        );
        assert_eq!(reason(ApiError::unauthorized("x"), false), None);
        assert_eq!(reason(ApiError::forbidden("forbidden", "x"), true), None);
    }
}
