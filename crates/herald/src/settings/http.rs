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
        poll_presence_grace: {
            let grace = dur(
                "poll-presence-grace",
                &s.poll_presence_grace,
                d.poll_presence_grace,
            )?;
            if grace > std::time::Duration::from_secs(600) {
                bail!(
                    "--poll-presence-grace is {grace:?}; at most 10m: a polling client that left \
                     would be listed as present that long"
                );
            }
            grace
        },
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
        hooks: hooks(s)?,
        ..d
    })
}

/// The application's hooks (`--hook-url` with `--hook-secret`, `--hook-timeout`,
/// `--hook-connect`), or `None` without `--hook-url`.
///
/// Errors: a hook setting without `--hook-url`, `--hook-url` without a
/// secret or with one under 16 bytes, a URL that is not http(s) with a
/// host, a zero or unreadable timeout. The secret is never repeated.
pub(super) fn hooks(s: &ServeArgs) -> anyhow::Result<Option<Arc<herald_hooks::Hooks>>> {
    let Some(url) = s.hook_url.as_deref().filter(|u| !u.is_empty()) else {
        for (given, flag) in [
            // The webhooks sign with it too, by default.
            (
                s.hook_secret.is_some() && s.webhook_url.as_deref().is_none_or(str::is_empty),
                "--hook-secret",
            ),
            (s.hook_timeout.is_some(), "--hook-timeout"),
            (s.hook_connect.is_some(), "--hook-connect"),
        ] {
            if given {
                bail!("{flag} needs --hook-url (the application's endpoint the hooks call)");
            }
        }
        return Ok(None);
    };
    let Some(secret) = s.hook_secret.as_deref().filter(|k| !k.is_empty()) else {
        bail!(
            "--hook-url needs --hook-secret: every hook request is signed with it, so that the \
             application can tell Herald's requests from forged ones"
        );
    };
    let mut config = herald_hooks::HooksConfig::new(url, secret.as_bytes());
    config.timeout = dur(
        "hook-timeout",
        &s.hook_timeout,
        herald_hooks::DEFAULT_TIMEOUT,
    )?;
    config.connect = s.hook_connect.unwrap_or(true);
    let hooks = herald_hooks::Hooks::new(config).map_err(|e| match e {
        herald_hooks::HooksConfigError::Url(_) => anyhow::anyhow!("--hook-url: {e}"),
        herald_hooks::HooksConfigError::ShortSecret(_) => anyhow::anyhow!("--hook-secret: {e}"),
        herald_hooks::HooksConfigError::Zero("timeout") => anyhow::anyhow!("--hook-timeout: {e}"),
        other => anyhow::anyhow!("{other}"),
    })?;
    Ok(Some(Arc::new(hooks)))
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
