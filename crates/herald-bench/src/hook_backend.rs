//! `herald-bench hook-backend`: the application's side of Herald's hooks
//! (`herald serve --hook-url URL --hook-secret S`), as fast as it can be,
//! for the hook benchmarks: it should never be what limits them.
//!
//! Every `POST` is a hook request. Its `x-herald-signature`
//! (`t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`) is checked over the
//! raw body, in constant time, with a 5-minute window on `t`; a request that
//! fails is counted and answered `401`. Then:
//!
//! - `connect`: `200 {"user","grants":{"subscribe":["**"],"publish":["**"]},"expires_at"}`
//!   (an hour ahead) when the forwarded `cookie` header holds the session
//!   cookie (`--session`, `session=bench`), else `401` (no identity);
//! - `publish`: `200 {}` (accepted as it is);
//! - `subscribe`: `200 {}`;
//! - anything else: `400`.
//!
//! `GET /stats` answers the counters ([`Stats`]) as JSON: the bench reads
//! them after each measurement, so a signature Herald got wrong, or a
//! cookie it did not forward, shows in the results.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The largest hook request body read, in bytes (Herald's default
/// `--max-body` is 1 MiB of event data, sent inside the JSON).
const MAX_BODY: usize = 4 * 1024 * 1024;

/// How far from now (either way) a signature's timestamp may be, seconds.
const TOLERANCE_SECS: u64 = 300;

/// How the backend runs.
#[derive(Clone, Debug)]
pub struct BackendConfig {
    /// Where to listen (HTTP/1.1, kept-alive connections).
    pub listen: SocketAddr,
    /// The HMAC-SHA256 key, Herald's `--hook-secret`.
    pub secret: Vec<u8>,
    /// The cookie (`name=value`) the connect hook grants: one of the
    /// forwarded `cookie` header's pairs must equal it.
    pub session: String,
    /// The user the connect hook names.
    pub user: String,
    /// Runtime worker threads.
    pub workers: usize,
}

/// What the backend was asked and how it answered, since it started.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connect requests answered with a grant.
    pub connect_granted: AtomicU64,
    /// Connect requests without the session cookie (answered 401).
    pub connect_unidentified: AtomicU64,
    /// Publish requests (answered `200 {}`).
    pub publish: AtomicU64,
    /// Subscribe requests (answered `200 {}`).
    pub subscribe: AtomicU64,
    /// Requests whose signature was missing, malformed, stale or wrong.
    pub bad_signature: AtomicU64,
    /// Signed requests that did not parse or named no known hook.
    pub bad_request: AtomicU64,
}

/// [`Stats`] read at one moment, as `GET /stats` answers it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// See [`Stats::connect_granted`].
    pub connect_granted: u64,
    /// See [`Stats::connect_unidentified`].
    pub connect_unidentified: u64,
    /// See [`Stats::publish`].
    pub publish: u64,
    /// See [`Stats::subscribe`].
    pub subscribe: u64,
    /// See [`Stats::bad_signature`].
    pub bad_signature: u64,
    /// See [`Stats::bad_request`].
    pub bad_request: u64,
}

impl Stats {
    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            connect_granted: r(&self.connect_granted),
            connect_unidentified: r(&self.connect_unidentified),
            publish: r(&self.publish),
            subscribe: r(&self.subscribe),
            bad_signature: r(&self.bad_signature),
            bad_request: r(&self.bad_request),
        }
    }
}

/// Why a signature was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// No `x-herald-signature` header, or not `t=<digits>,v1=<hex>`.
    Malformed,
    /// `t` is more than 5 minutes from now.
    Stale,
    /// No `v1` is the HMAC of the body.
    Mismatch,
}

/// Checks the `x-herald-signature` value `header` against `body`, keyed
/// with `secret`, at `now` (Unix seconds).
///
/// Errors: [`SignatureError`].
pub fn verify(secret: &[u8], header: &str, body: &[u8], now: u64) -> Result<(), SignatureError> {
    let mut t = None;
    let mut tags = Vec::new();
    for part in header.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed)?;
        match k {
            "t" if t.is_none() && !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
                t = Some(v);
            }
            "v1" => tags.push(unhex(v).ok_or(SignatureError::Malformed)?),
            _ => {}
        }
    }
    let t = t.ok_or(SignatureError::Malformed)?;
    let secs: u64 = t.parse().map_err(|_| SignatureError::Malformed)?;
    if tags.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if secs.abs_diff(now) > TOLERANCE_SECS {
        return Err(SignatureError::Stale);
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| SignatureError::Mismatch)?;
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    // `verify_slice` compares in constant time.
    if tags.iter().any(|tag| mac.clone().verify_slice(tag).is_ok()) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// Whether the `cookie` header value `cookies` holds the pair `session`
/// (`name=value`).
pub fn has_cookie(cookies: &str, session: &str) -> bool {
    cookies.split(';').any(|c| c.trim() == session)
}

/// The part of a hook request the backend reads.
#[derive(Deserialize)]
struct HookRequest {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    headers: Headers,
}

#[derive(Deserialize, Default)]
struct Headers {
    #[serde(default)]
    cookie: Option<String>,
}

struct State {
    config: BackendConfig,
    stats: Stats,
}

/// Serves hook requests on `config.listen` until the process is stopped.
///
/// Errors: the runtime cannot start, or the address cannot be bound.
pub fn serve(config: BackendConfig) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("bind {}", config.listen))?;
        println!(
            "hook backend listening on http://{}",
            listener.local_addr()?
        );
        let state = Arc::new(State {
            config,
            stats: Stats::default(),
        });
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of files, for one: wait a little, keep serving.
                    eprintln!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let state = state.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| answer(state.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    })
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

async fn answer(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let stats = &state.stats;
    if req.method() == Method::GET && req.uri().path() == "/stats" {
        let body = serde_json::to_vec(&stats.snapshot()).unwrap_or_default();
        return Ok(reply(StatusCode::OK, body));
    }
    if req.method() != Method::POST {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, "{}"));
    }
    let signature = req
        .headers()
        .get("x-herald-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            stats.bad_request.fetch_add(1, Ordering::Relaxed);
            return Ok(reply(StatusCode::BAD_REQUEST, "{}"));
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if verify(&state.config.secret, &signature, &body, now).is_err() {
        stats.bad_signature.fetch_add(1, Ordering::Relaxed);
        return Ok(reply(StatusCode::UNAUTHORIZED, "{}"));
    }
    let Ok(hook) = serde_json::from_slice::<HookRequest>(&body) else {
        stats.bad_request.fetch_add(1, Ordering::Relaxed);
        return Ok(reply(StatusCode::BAD_REQUEST, "{}"));
    };
    Ok(match hook.kind.as_str() {
        "connect" => {
            let cookies = hook.headers.cookie.as_deref().unwrap_or("");
            if has_cookie(cookies, &state.config.session) {
                stats.connect_granted.fetch_add(1, Ordering::Relaxed);
                let grant = serde_json::json!({
                    "user": state.config.user,
                    "grants": {"subscribe": ["**"], "publish": ["**"]},
                    "expires_at": now + 3600,
                });
                reply(StatusCode::OK, grant.to_string())
            } else {
                stats.connect_unidentified.fetch_add(1, Ordering::Relaxed);
                reply(StatusCode::UNAUTHORIZED, "{}")
            }
        }
        "publish" => {
            stats.publish.fetch_add(1, Ordering::Relaxed);
            reply(StatusCode::OK, "{}")
        }
        "subscribe" => {
            stats.subscribe.fetch_add(1, Ordering::Relaxed);
            reply(StatusCode::OK, "{}")
        }
        _ => {
            stats.bad_request.fetch_add(1, Ordering::Relaxed);
            reply(StatusCode::BAD_REQUEST, "{}")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], t: u64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("t={t},v1={hex}")
    }

    #[test]
    fn signatures() {
        let (secret, body, now) = (
            b"a-secret-of-16-bytes",
            br#"{"type":"publish"}"#,
            1_764_540_000,
        );
        let good = sign(secret, now, body);
        assert_eq!(verify(secret, &good, body, now), Ok(()));
        assert_eq!(verify(secret, &good, body, now + 299), Ok(()));
        assert_eq!(
            verify(secret, &good, body, now + 301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(secret, &good, b"{}", now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"another-secret-16b", &good, body, now),
            Err(SignatureError::Mismatch)
        );
        // A second v1 (a secret being rotated) may be the one that matches.
        let two = format!(
            "t={now},v1={},{}",
            "00".repeat(32),
            good.split_once(',').unwrap().1
        );
        assert_eq!(verify(secret, &two, body, now), Ok(()));
        for bad in ["", "t=1", "v1=00", "t=x,v1=00", "t=1,v1=0g", "garbage"] {
            assert_eq!(
                verify(secret, bad, body, now),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn cookies() {
        assert!(has_cookie("session=bench", "session=bench"));
        assert!(has_cookie("a=1; session=bench", "session=bench"));
        assert!(!has_cookie("session=benchmark", "session=bench"));
        assert!(!has_cookie("", "session=bench"));
    }
}
