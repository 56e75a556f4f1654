//! Credentials from a request, the `POST /v1/tokens` exchange, and query
//! redaction for logs. The decisions themselves are [`herald_auth::Auth`]'s.
//!
//! With hooks (`--hook-url`, [`herald_hooks`]), the application's backend
//! takes part here too, on the one path every endpoint authenticates
//! through: a request that brings no credential Herald can check is
//! identified by the connect hook (its answer then acts exactly like a
//! token's claims), and a read of `subscribe_hook` topics asks the
//! subscribe hook (`subscribe_hooks`).

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_auth::{Action, AuthError, Credential, Principal, Source};
use herald_core::Topic;
use herald_hooks::{ConnectRequest, ConnectVerdict, Hook, Hooks, SubscribeVerdict};

use crate::error::ApiError;
use crate::AppState;

/// The credential a request carries: `Authorization: Bearer`, then
/// `?token=`, then the cookie.
pub fn credential(
    headers: &HeaderMap,
    pairs: &[(String, String)],
    cookie_name: &str,
) -> Result<Option<Credential>, ApiError> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().unwrap_or("");
        let token = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be `Bearer <token>`")
            })?;
        return Ok(Some(Credential::new(token, Source::Header)));
    }
    // The last `token` parameter wins, as for every repeated parameter.
    if let Some((_, t)) = pairs.iter().rev().find(|(k, _)| k == "token") {
        return Ok(Some(Credential::new(t.clone(), Source::Query)));
    }
    for v in headers.get_all(header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for part in v.split(';') {
            if let Some((k, val)) = part.trim().split_once('=') {
                if k == cookie_name && !val.is_empty() {
                    return Ok(Some(Credential::new(val.trim_matches('"'), Source::Cookie)));
                }
            }
        }
    }
    Ok(None)
}

/// Who sends a request, for routes outside this crate (e.g. the LLM relay):
/// the same credential rules as every Herald endpoint, the connect hook
/// included.
pub async fn principal(
    config: &crate::HttpConfig,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<(Principal, Option<Source>), ApiError> {
    let pairs = crate::transport::query_pairs(query);
    identify(config, headers, &pairs).await
}

/// Authenticates the request. Returns who it is and where the credential
/// came from (`None` without one, or when the connect hook identified it).
///
/// With hooks, an endpoint that reads the topics its query names
/// (`topic=` of `GET /v1/sse`, `/v1/poll`, `/v1/history`, `/v1/presence`;
/// see [`hook_context`]) also asks the subscribe hook about each of them
/// here ([`subscribe_hooks`]): those endpoints all authenticate through
/// this function, so none can skip it.
///
/// Errors: 401 for a refused credential, 403 when a hook refuses, 503
/// `hook_unavailable` (or `unavailable`) when an answer could not be had.
pub(crate) async fn authenticate(
    app: &AppState,
    headers: &HeaderMap,
    pairs: &[(String, String)],
) -> Result<(Principal, Option<Source>), ApiError> {
    let (who, source) = identify(&app.config, headers, pairs).await?;
    if app.config.hooks.is_some() && REQUEST.try_with(|r| r.reads_query_topics).unwrap_or(false) {
        let mut topics: Vec<Topic> = Vec::new();
        for (_, v) in pairs.iter().filter(|(k, _)| k == "topic") {
            // An invalid name is refused by the endpoint itself.
            if let Ok(t) = Topic::new(v) {
                if !topics.contains(&t) {
                    topics.push(t);
                }
            }
        }
        subscribe_hooks(app, &who, &topics).await?;
    }
    Ok((who, source))
}

/// The credential's principal, or the connect hook's answer for a request
/// without a credential Herald can check (none at all, or any on a server
/// with no keys, where every credential would mean "open").
async fn identify(
    config: &crate::HttpConfig,
    headers: &HeaderMap,
    pairs: &[(String, String)],
) -> Result<(Principal, Option<Source>), ApiError> {
    let cred = credential(headers, pairs, &config.auth_cookie)?;
    let source = cred.as_ref().map(|c| c.source);
    let who = config.auth.authenticate_async(cred).await?;
    match connect_hook(config, &who) {
        Some(hooks) => Ok((hook_principal(hooks, headers).await?, None)),
        None => Ok((who, source)),
    }
}

/// The hooks to ask who `who` is: when the connect hook is on and `who`
/// is no checked credential (anonymous, or "open" on a server without keys).
fn connect_hook<'a>(config: &'a crate::HttpConfig, who: &Principal) -> Option<&'a Hooks> {
    config
        .hooks
        .as_deref()
        .filter(|h| h.asks_connect() && matches!(who, Principal::Anonymous | Principal::Open))
}

/// The connect hook's principal for a request with `headers`: a user as a
/// token's claims would make it (200), or anonymous (401: the backend does
/// not know the caller, who may still read public topics).
///
/// Errors: 403 when the backend refuses (403), 503 `hook_unavailable`.
async fn hook_principal(hooks: &Hooks, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let context = REQUEST.try_with(Clone::clone).ok();
    let mut forwarded = Vec::new();
    let cookies: Vec<&str> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !cookies.is_empty() {
        // HTTP/2 may split cookies over several fields (RFC 9113, 8.2.3).
        forwarded.push(("cookie", cookies.join("; ")));
    }
    for name in ["authorization", "origin", "user-agent"] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            forwarded.push((name, v.to_owned()));
        }
    }
    let request = ConnectRequest {
        transport: context.as_ref().map_or("http", |c| c.transport),
        remote_addr: context.and_then(|c| c.remote_addr),
        headers: forwarded,
    };
    match hooks.connect(&request).await? {
        ConnectVerdict::Granted(grant) => Ok(grant.into_principal()),
        ConnectVerdict::Unidentified => Ok(Principal::Anonymous),
        ConnectVerdict::Refused(reason) => Err(ApiError::hook_refused(Hook::Connect, reason)),
    }
}

/// The principal of a WebSocket handshake: the credential's, or the
/// connect hook's (see [`identify`]). A refused or uncheckable credential
/// is left to the session, which closes with 4001 or 1013 where browsers
/// see it; the connect hook's refusal (403) and a cookie session from an
/// origin that may not use it refuse the upgrade itself, as a forbidden
/// origin does.
pub(crate) async fn upgrade_principal(
    app: &AppState,
    headers: &HeaderMap,
    credential: Option<Credential>,
) -> Result<Result<Principal, AuthError>, ApiError> {
    let who = match app.config.auth.authenticate_async(credential).await {
        Ok(who) => who,
        Err(e) => return Ok(Err(e)),
    };
    let Some(hooks) = connect_hook(&app.config, &who) else {
        return Ok(Ok(who));
    };
    // Cross-site WebSocket hijacking: a session cookie rides along with any
    // page's upgrade, as the cookie credential does.
    if headers.contains_key(header::COOKIE)
        && !origin_allowed(headers, &app.config.ws_allowed_origins)
    {
        return Err(ApiError::forbidden(
            "forbidden_origin",
            "this origin may not open a WebSocket with a session cookie",
        ));
    }
    match hook_principal(hooks, headers).await {
        Ok(who) => Ok(Ok(who)),
        Err(e) if e.is_temporary() => Ok(Err(AuthError::Unavailable(
            "the application's connect hook is unavailable; retry later",
        ))),
        Err(e) => Err(e),
    }
}

/// Asks the subscribe hook about each of `topics` whose policy has
/// `subscribe_hook = true` and that `who`'s grants allow to read (the
/// grants are checked first: the hook is never asked about what they
/// refuse, and the caller's own authorization then refuses it). The
/// publisher key is never asked about, nor is anyone on a server without
/// authentication, where every caller is trusted like it.
///
/// Errors: 403 `forbidden` with the backend's reason when it refuses one,
/// 503 `hook_unavailable` when an answer could not be had.
pub(crate) async fn subscribe_hooks(
    app: &AppState,
    who: &Principal,
    topics: &[Topic],
) -> Result<(), ApiError> {
    let Some(hooks) = &app.config.hooks else {
        return Ok(());
    };
    if matches!(who, Principal::Publisher | Principal::Open) {
        return Ok(());
    }
    let asked = topics.iter().filter(|t| {
        app.hub.policy(t).subscribe_hook
            && app.config.auth.authorize(who, Action::Subscribe, t).is_ok()
    });
    let verdicts =
        futures_util::future::join_all(asked.map(|t| hooks.subscribe(who.subject(), t))).await;
    for verdict in verdicts {
        if let SubscribeVerdict::Refuse(reason) = verdict? {
            return Err(ApiError::hook_refused(Hook::Subscribe, reason));
        }
    }
    Ok(())
}

tokio::task_local! {
    /// The request being handled, while [`hook_context`] runs it.
    static REQUEST: RequestContext;
}

/// What the connect hook is told about a request besides its headers, and
/// whether its endpoint reads the topics its query names.
#[derive(Clone, Debug)]
struct RequestContext {
    /// `sse`, `ws`, `poll`, or `http` for other endpoints.
    transport: &'static str,
    /// The client's address (behind a trusted proxy, the one its header names).
    remote_addr: Option<String>,
    /// `GET /v1/sse`, `/v1/poll`, `/v1/history`, `/v1/presence`.
    reads_query_topics: bool,
}

/// A layer the router runs when hooks are configured: it keeps the
/// request's transport (from its path) and client address for the hooks
/// while the request is handled. Handlers authenticate with the headers and
/// query alone; this is what the connect hook needs beside them.
pub(crate) async fn hook_context(
    State(app): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let (transport, reads_query_topics) = match req.uri().path() {
        "/v1/sse" => ("sse", true),
        "/v1/ws" => ("ws", false),
        "/v1/poll" => ("poll", true),
        "/v1/history" | "/v1/presence" => ("http", true),
        _ => ("http", false),
    };
    let remote_addr = req
        .extensions()
        .get::<crate::connection::ConnectionHandle>()
        .map(|c| {
            crate::forwarded::client_ip(
                c.peer.ip(),
                req.headers(),
                &app.config.trusted_proxies,
                app.config.trusted_proxy_header,
            )
            .to_string()
        });
    let context = RequestContext {
        transport,
        remote_addr,
        reads_query_topics,
    };
    REQUEST.scope(context, next.run(req)).await
}

/// Authorizes `action` on every topic.
pub(crate) fn authorize_all(
    app: &AppState,
    who: &Principal,
    action: Action,
    topics: &[Topic],
) -> Result<(), ApiError> {
    for t in topics {
        app.config.auth.authorize(who, action, t)?;
    }
    Ok(())
}

/// When `who`'s credential runs out (its `exp`, seconds since the Unix
/// epoch), as a timer instant; `None` for a credential without a deadline.
/// Every connection ends there (DESIGN.md, "Credentials over time").
pub(crate) fn deadline_of(who: &Principal) -> Option<tokio::time::Instant> {
    let exp = who.expires_at()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let left = std::time::Duration::from_secs(exp).saturating_sub(now);
    Some(tokio::time::Instant::now() + left)
}

/// `POST /v1/tokens`: a caller authenticated by header or cookie gets a
/// short-lived, single-use token for `?token=` on an EventSource or WebSocket URL.
/// Each caller holds at most its share of outstanding tokens (counted by
/// `sub`, publisher key, or client address, behind a trusted proxy the one
/// its headers name: [`herald_auth::quota_key`]).
pub(crate) async fn tokens(
    State(app): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    conn: Option<axum::Extension<crate::connection::ConnectionHandle>>,
) -> Response {
    let pairs = crate::transport::query_pairs(uri.query());
    // Behind a trusted proxy, the address its headers name.
    let client = conn.map(|c| app.config.client_addr(c.peer.ip(), &headers));
    let result = async {
        let (who, source) = authenticate(&app, &headers, &pairs).await?;
        app.config.auth.authorize_exchange(&who, source)?;
        // Cross-site request forgery: a cookie rides along with any site's
        // form POST, so a cookie exchange must come from the page's own
        // origin or one configured by name (WebSocket or CORS origins).
        if source == Some(Source::Cookie) {
            let named: Vec<String> = app
                .config
                .ws_allowed_origins
                .iter()
                .chain(&app.config.cors_origins)
                .filter(|o| o.as_str() != "*")
                .cloned()
                .collect();
            let same_site = origin_allowed(&headers, &[]);
            let named_site = !named.is_empty() && origin_allowed(&headers, &named);
            if !same_site && !named_site {
                return Err(ApiError::forbidden(
                    "forbidden_origin",
                    "this origin may not exchange the cookie credential",
                ));
            }
        }
        // A refusal (429, 503) says with `Retry-After` when a token frees up.
        let (token, ttl) = app.config.auth.issue_one_time_for(&who, client).await?;
        // The token carries the credential's `exp`: it lives no longer than
        // the credential it was exchanged for, and `expires_in` says so.
        let expires_in = match who.expires_at() {
            Some(exp) => ttl.as_secs().min(exp.saturating_sub(herald_auth::now())),
            None => ttl.as_secs(),
        };
        Ok::<_, ApiError>(
            Json(serde_json::json!({"token": token, "expires_in": expires_in})).into_response(),
        )
    }
    .await;
    let mut r = result.unwrap_or_else(IntoResponse::into_response);
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

/// The query string with credential values replaced, for logs.
pub fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if is_secret_param(k) => format!("{k}=[redacted]"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn is_secret_param(k: &str) -> bool {
    // Judged on the decoded name: `tok%65n` is read as `token` too.
    let k = percent_encoding::percent_decode_str(&k.replace('+', " "))
        .decode_utf8_lossy()
        .to_ascii_lowercase();
    k == "token" || k == "access_token" || k == "jwt" || k == "authorization" || k.contains("key")
}

/// Whether a WebSocket upgrade's `Origin` may use a cookie credential: it is
/// in the allow-list or, with no list, it is the page's own host.
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        // Browsers always send Origin on WebSocket upgrades; a client without
        // one is not a browser a cross-site page could drive.
        return true;
    };
    // `null` is what sandboxed frames and `file:` pages send: any site can
    // produce it, so it never carries the cookie, whatever the list says.
    if origin.eq_ignore_ascii_case("null") {
        return false;
    }
    if !allowed.is_empty() {
        return allowed
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(origin));
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        assert_eq!(
            redact_query("topic=a&token=eyJ.x.y"),
            "topic=a&token=[redacted]"
        );
        assert_eq!(
            redact_query("Token=abc&api_key=1"),
            "Token=[redacted]&api_key=[redacted]"
        );
        assert_eq!(redact_query("topic=a"), "topic=a");
        assert_eq!(
            redact_query("tok%65n=eyJ&%74oken=ot_x&t=1"),
            "tok%65n=[redacted]&%74oken=[redacted]&t=1"
        );
    }

    #[test]
    fn credential_order_and_parsing() {
        let mut h = HeaderMap::new();
        let q = vec![("token".to_string(), "q".to_string())];
        h.insert(header::COOKIE, "a=1; herald_token=c".parse().unwrap());
        assert_eq!(
            credential(&h, &[], "herald_token").unwrap().unwrap().source,
            Source::Cookie
        );
        assert_eq!(
            credential(&h, &q, "herald_token").unwrap().unwrap().source,
            Source::Query
        );
        h.insert(header::AUTHORIZATION, "Bearer t".parse().unwrap());
        assert_eq!(
            credential(&h, &q, "herald_token").unwrap().unwrap().source,
            Source::Header
        );
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert!(credential(&h, &q, "herald_token").is_err());
        assert!(credential(&HeaderMap::new(), &[], "herald_token")
            .unwrap()
            .is_none());
    }

    #[test]
    fn origins() {
        let mut h = HeaderMap::new();
        assert!(origin_allowed(&h, &[]));
        h.insert(header::HOST, "app.example:8080".parse().unwrap());
        h.insert(header::ORIGIN, "https://app.example:8080".parse().unwrap());
        assert!(origin_allowed(&h, &[]));
        h.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(!origin_allowed(&h, &[]));
        assert!(origin_allowed(&h, &["https://evil.example".into()]));
        assert!(!origin_allowed(&h, &["https://app.example".into()]));
        h.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(!origin_allowed(&h, &["*".into()]));
        assert!(!origin_allowed(&h, &["null".into()]));
        assert!(!origin_allowed(&h, &[]));
    }
}
