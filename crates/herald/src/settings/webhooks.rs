//! The webhooks' settings: `--webhook-url`, signed with `--webhook-secret`
//! (by default `--hook-secret`: one secret for everything Herald sends the
//! application), `--webhook-timeout`, `--webhook-queue`,
//! `--webhook-queue-bytes` and `--webhook-vacate-grace`.

use std::sync::Arc;

use anyhow::bail;
use herald_hooks::webhooks::{
    DEFAULT_QUEUE_BYTES, DEFAULT_QUEUE_EVENTS, DEFAULT_TIMEOUT, DEFAULT_VACATE_GRACE,
};
use herald_hooks::{Webhooks, WebhooksConfig, WebhooksConfigError};

use super::{dur, ServeArgs};

/// The webhooks, or `None` without `--webhook-url`.
///
/// Errors: a webhook setting without `--webhook-url`; `--webhook-url`
/// without `--webhook-secret` or `--hook-secret`, or with a secret under 16
/// bytes; a URL that is not http(s) with a host; a zero or unreadable
/// timeout, queue size or grace. The secret is never repeated.
pub(super) fn webhooks(s: &ServeArgs) -> anyhow::Result<Option<Arc<Webhooks>>> {
    let Some(url) = s.webhook_url.as_deref().filter(|u| !u.is_empty()) else {
        for (given, flag) in [
            (s.webhook_secret.is_some(), "--webhook-secret"),
            (s.webhook_timeout.is_some(), "--webhook-timeout"),
            (s.webhook_queue.is_some(), "--webhook-queue"),
            (s.webhook_queue_bytes.is_some(), "--webhook-queue-bytes"),
            (s.webhook_vacate_grace.is_some(), "--webhook-vacate-grace"),
        ] {
            if given {
                bail!("{flag} needs --webhook-url (the application's endpoint the webhooks call)");
            }
        }
        return Ok(None);
    };
    let secret = [&s.webhook_secret, &s.hook_secret]
        .into_iter()
        .find_map(|k| k.as_deref().filter(|k| !k.is_empty()));
    let Some(secret) = secret else {
        bail!(
            "--webhook-url needs --webhook-secret (or --hook-secret, which it defaults to): every \
             webhook request is signed with it, so that the application can tell Herald's \
             requests from forged ones"
        );
    };
    let mut config = WebhooksConfig::new(url, secret.as_bytes());
    config.timeout = dur("webhook-timeout", &s.webhook_timeout, DEFAULT_TIMEOUT)?;
    config.queue_events = s.webhook_queue.unwrap_or(DEFAULT_QUEUE_EVENTS);
    config.queue_bytes = s.webhook_queue_bytes.unwrap_or(DEFAULT_QUEUE_BYTES);
    config.vacate_grace = dur(
        "webhook-vacate-grace",
        &s.webhook_vacate_grace,
        DEFAULT_VACATE_GRACE,
    )?;
    if config.vacate_grace > std::time::Duration::from_secs(3600) {
        bail!(
            "--webhook-vacate-grace is {:?}; at most 1h",
            config.vacate_grace
        );
    }
    let secret_flag = if s.webhook_secret.as_deref().is_some_and(|k| !k.is_empty()) {
        "--webhook-secret"
    } else {
        "--hook-secret"
    };
    let webhooks = Webhooks::new(config).map_err(|e| match e {
        WebhooksConfigError::Url(_) => anyhow::anyhow!("--webhook-url: {e}"),
        WebhooksConfigError::ShortSecret(_) => anyhow::anyhow!("{secret_flag}: {e}"),
        WebhooksConfigError::Zero("timeout") => anyhow::anyhow!("--webhook-timeout: {e}"),
        WebhooksConfigError::Zero("queue size in events") => {
            anyhow::anyhow!("--webhook-queue: {e}")
        }
        WebhooksConfigError::Zero("queue size in bytes") => {
            anyhow::anyhow!("--webhook-queue-bytes: {e}")
        }
        other => anyhow::anyhow!("{other}"),
    })?;
    Ok(Some(Arc::new(webhooks)))
}
