//! TLS and the router's settings: timeouts, sizes, origins, proxies and
//! connection limits.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use herald_auth::Auth;
use herald_http::HttpConfig;
use herald_server::CertSource;

use super::{dur, ServeArgs};

/// `--tls-cert` with `--tls-key`, or `--tls-self-signed`, or plain HTTP.
pub(super) fn tls(s: &ServeArgs) -> anyhow::Result<Option<CertSource>> {
    Ok(
        match (s.tls_cert.clone(), s.tls_key.clone(), s.tls_self_signed) {
            (Some(_), _, true) | (_, Some(_), true) => {
                bail!("--tls-self-signed and --tls-cert/--tls-key exclude each other")
            }
            (Some(cert), Some(key), false) => Some(CertSource::Files { cert, key }),
            (Some(_), None, _) | (None, Some(_), _) => {
                bail!("--tls-cert and --tls-key go together")
            }
            (None, None, true) => Some(CertSource::SelfSigned),
            (None, None, false) => None,
        },
    )
}

/// The router's settings, with `auth` deciding who may do what.
pub(super) fn config(s: &ServeArgs, auth: Arc<Auth>) -> anyhow::Result<HttpConfig> {
    let d = HttpConfig::default();
    let keepalive = dur("keepalive", &s.keepalive, d.keepalive)?;
    if keepalive.is_zero() {
        bail!("--keepalive must be more than 0");
    }
    let body_timeout = dur("body-timeout", &s.body_timeout, d.body_timeout)?;
    if body_timeout.is_zero() {
        bail!("--body-timeout must be more than 0");
    }
    for origin in &s.cors_origin {
        cors_origin(origin)?;
    }
    Ok(HttpConfig {
        keepalive,
        max_body_bytes: s.max_body.unwrap_or(d.max_body_bytes),
        poll_max_timeout: dur("poll-max-timeout", &s.poll_max_timeout, d.poll_max_timeout)?,
        poll_presence_grace: dur(
            "poll-presence-grace",
            &s.poll_presence_grace,
            d.poll_presence_grace,
        )?,
        poll_batch: s.poll_batch.unwrap_or(d.poll_batch).max(1),
        poll_max_bytes: s.poll_max_bytes.unwrap_or(d.poll_max_bytes).max(1),
        body_timeout,
        ws_max_message_bytes: s.ws_max_message.unwrap_or(d.ws_max_message_bytes),
        ws_pong_timeout: dur(
            "ws-pong-timeout",
            &s.ws_pong_timeout,
            d.ws_pong_timeout.max(keepalive * 2),
        )?,
        ws_publish_rate: s.ws_publish_rate.unwrap_or(d.ws_publish_rate),
        auth,
        auth_cookie: s.auth_cookie.clone().unwrap_or(d.auth_cookie.clone()),
        ws_allowed_origins: s.ws_allowed_origin.clone(),
        cors_origins: s.cors_origin.clone(),
        max_connections: s.max_connections.unwrap_or(d.max_connections),
        max_connections_per_ip: s.max_connections_per_ip.unwrap_or(d.max_connections_per_ip),
        trusted_proxies: herald_http::forwarded::parse_networks(&s.trusted_proxy)
            .map_err(anyhow::Error::msg)?,
        trusted_proxy_header: match &s.trusted_proxy_header {
            Some(h) => h.parse().map_err(anyhow::Error::msg)?,
            None => d.trusted_proxy_header,
        },
        shutdown_drain: match dur("shutdown-drain", &s.shutdown_drain, d.shutdown_drain)? {
            // Streams must have ended before the server stops waiting for them.
            w if w < herald_server::DRAIN_TIMEOUT => w,
            w => bail!(
                "--shutdown-drain {w:?}: at most {:?} (connections get that long to finish)",
                herald_server::DRAIN_TIMEOUT - Duration::from_millis(1)
            ),
        },
        ws_message_rate: match s.ws_message_rate {
            None => d.ws_message_rate,
            Some(r) if r.is_finite() && r >= 1.0 => r,
            Some(r) => {
                bail!("--ws-message-rate {r}: give a number of messages per second, at least 1")
            }
        },
        ..d
    })
}

/// Refuses a `--cors-origin` that is neither `*` nor `scheme://host[:port]`,
/// and `null`, which any site can send.
fn cors_origin(origin: &str) -> anyhow::Result<()> {
    let o = origin.trim();
    if o.eq_ignore_ascii_case("null") {
        bail!(
            "--cors-origin null: refused, because any site can send `Origin: null` \
             (sandboxed frames, file: pages); list real origins such as https://app.example"
        );
    }
    let host = o
        .split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/'));
    if o != "*" && !matches!(host, Some(h) if !h.is_empty() && !h.contains('/')) {
        bail!(
            "--cors-origin {origin:?}: give `*` or an origin as scheme://host[:port], \
             such as https://app.example"
        );
    }
    Ok(())
}
