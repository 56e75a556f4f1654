//! The Mercure hub's settings (`--mercure-*`; DESIGN.md, "Mercure
//! compatibility").

use anyhow::{bail, Context};
use herald_auth::mercure::claims::MercureKeys;
use herald_http::mercure::{subscriptions::PRESENCE_TOPIC, MercureConfig};

use super::ServeArgs;

/// The hub, when `--mercure-publisher-jwt-key` (or
/// `MERCURE_PUBLISHER_JWT_KEY`) is set; `None` otherwise.
///
/// Errors: a key that is not a usable secret or PEM key; any other
/// `--mercure-*` setting without the publisher key.
pub(super) fn config(s: &ServeArgs) -> anyhow::Result<Option<MercureConfig>> {
    let key = |v: &Option<String>, flag: &str| -> anyhow::Result<Option<MercureKeys>> {
        match v.as_deref() {
            None => Ok(None),
            Some(v) => MercureKeys::from_flag(v)
                .map(|k| {
                    Some(
                        k.with_audience(s.mercure_audience.clone())
                            .with_issuer(s.mercure_issuer.clone()),
                    )
                })
                .with_context(|| format!("--{flag}")),
        }
    };
    let publisher = key(&s.mercure_publisher_jwt_key, "mercure-publisher-jwt-key")?;
    let subscriber = key(&s.mercure_subscriber_jwt_key, "mercure-subscriber-jwt-key")?;
    let Some(publisher) = publisher else {
        let others = [
            (subscriber.is_some(), "--mercure-subscriber-jwt-key"),
            (s.mercure_anonymous, "--mercure-anonymous"),
            (s.mercure_subscriptions, "--mercure-subscriptions"),
            (s.mercure_audience.is_some(), "--mercure-audience"),
            (s.mercure_issuer.is_some(), "--mercure-issuer"),
        ];
        if let Some((_, flag)) = others.iter().find(|(set, _)| *set) {
            bail!(
                "{flag} needs --mercure-publisher-jwt-key (or MERCURE_PUBLISHER_JWT_KEY), \
                 which turns the Mercure hub on"
            );
        }
        return Ok(None);
    };
    let mut cfg = MercureConfig::new(publisher, subscriber);
    cfg.anonymous = s.mercure_anonymous;
    cfg.subscriptions = s.mercure_subscriptions;
    Ok(Some(cfg))
}

/// The topic policy the subscriptions API needs (active subscriptions are
/// presence members of [`PRESENCE_TOPIC`]), first so that no `[[topics]]`
/// table of the file shadows it.
pub(super) fn policy_table() -> toml::Table {
    let mut t = toml::Table::new();
    t.insert("pattern".into(), toml::Value::String(PRESENCE_TOPIC.into()));
    t.insert("presence".into(), toml::Value::Boolean(true));
    t
}
