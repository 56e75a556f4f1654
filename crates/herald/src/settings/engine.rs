//! The engine, where it keeps its events, and the hub's limits.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use herald_core::{HistoryLimits, HubConfig};

use super::{dur, EmbeddedSettings, EngineKind, RedisSettings, ServeArgs};

/// The chosen engine and where it keeps events.
pub(super) struct Storage {
    /// `--engine`.
    pub engine: EngineKind,
    /// With `--engine embedded`: its folder and group commit.
    pub embedded: Option<EmbeddedSettings>,
    /// With `--engine redis`: its server and key prefix.
    pub redis: Option<RedisSettings>,
}

/// `--engine` and its own settings. Embedded-only settings given to another
/// engine are pointed out in `warnings` (events are not where the user may
/// look for them), but not refused: a launcher may pass the same flags
/// whatever the engine.
pub(super) fn storage(s: &ServeArgs, warnings: &mut Vec<String>) -> anyhow::Result<Storage> {
    let engine = match s.engine.as_deref().unwrap_or("embedded") {
        "memory" => EngineKind::Memory,
        "embedded" => EngineKind::Embedded,
        "redis" => EngineKind::Redis,
        other => bail!("--engine {other:?}: choose memory, embedded or redis"),
    };
    let embedded = match engine {
        EngineKind::Embedded => {
            let commit_delay = dur(
                "commit-delay",
                &s.commit_delay,
                herald_engine_embedded::DEFAULT_COMMIT_DELAY,
            )?;
            if commit_delay > Duration::from_secs(1) {
                bail!("--commit-delay must be at most 1s: every publish may wait that long");
            }
            Some(EmbeddedSettings {
                data_dir: s
                    .data_dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("herald-data")),
                commit_delay,
            })
        }
        other => {
            let name = if other == EngineKind::Redis {
                "redis"
            } else {
                "memory"
            };
            if s.data_dir.is_some() {
                warnings.push(format!(
                    "--data-dir is ignored: it is for --engine embedded, and --engine {name} keeps no files"
                ));
            }
            if s.commit_delay.is_some() {
                warnings.push(format!(
                    "--commit-delay is ignored: it is for --engine embedded, not --engine {name}"
                ));
            }
            None
        }
    };
    let redis = match (engine, s.redis_url.clone()) {
        (EngineKind::Redis, Some(url)) => {
            let schemes = [
                "redis://",
                "rediss://",
                "redis-cluster://",
                "rediss-cluster://",
            ];
            if !schemes.iter().any(|s| url.starts_with(s)) {
                bail!(
                    "--redis-url {:?}: use redis://HOST:PORT, rediss:// (TLS) or redis-cluster://HOST:PORT?node=HOST:PORT",
                    herald_engine_redis::redact_url(&url)
                );
            }
            let replica_timeout = dur(
                "redis-replica-timeout",
                &s.redis_replica_timeout,
                Duration::from_secs(1),
            )?;
            if replica_timeout.is_zero() || replica_timeout > Duration::from_secs(60) {
                bail!("--redis-replica-timeout must be between 1ms and 60s: every publish may wait that long");
            }
            let replica_acks = s.redis_replica_acks.unwrap_or(1);
            if replica_acks > 16 {
                bail!("--redis-replica-acks {replica_acks}: at most 16 replicas can be waited for");
            }
            Some(RedisSettings {
                url,
                prefix: s.redis_prefix.clone().unwrap_or_else(|| "herald:".into()),
                replica_acks,
                replica_timeout,
            })
        }
        (EngineKind::Redis, None) => {
            bail!("--engine redis needs --redis-url (e.g. redis://127.0.0.1:6379)")
        }
        (_, Some(_)) => bail!("--redis-url is used only with --engine redis"),
        (_, None) if s.redis_replica_acks.is_some() || s.redis_replica_timeout.is_some() => {
            bail!("--redis-replica-acks and --redis-replica-timeout are used only with --engine redis")
        }
        (_, None) => None,
    };
    Ok(Storage {
        engine,
        embedded,
        redis,
    })
}

/// History, budget and queue limits. `max_data_bytes` is left at its
/// default: the caller sets it from `--max-body`.
pub(super) fn hub(
    s: &ServeArgs,
    engine: EngineKind,
    warnings: &mut Vec<String>,
) -> anyhow::Result<HubConfig> {
    let d = HubConfig::default();
    let history = s.history.unwrap_or(d.history.max_events);
    if history == 0 {
        bail!("--history must be at least 1");
    }
    let max_age = dur("history-max-age", &s.history_max_age, d.history.max_age)?;
    let budget = herald_core::engine::Budget {
        max_topics: s.max_topics.unwrap_or(d.budget.max_topics),
        max_retained_bytes: s.max_retained_bytes.unwrap_or(d.budget.max_retained_bytes),
    };
    if budget.max_topics == 0 {
        bail!("--max-topics must be at least 1: with 0 no event could ever be published");
    }
    if budget.max_retained_bytes == 0 {
        bail!(
            "--max-retained-bytes must be at least 1 (it counts each retained event's data, \
             name and 128 bytes; the default is 1073741824, 1 GiB)"
        );
    }
    if engine == EngineKind::Redis && budget != d.budget {
        warnings.push(
            "--max-topics and --max-retained-bytes are ignored with --engine redis: \
             topics expire in Redis after --history-max-age, and Redis's maxmemory bounds the rest"
                .into(),
        );
    }
    let queue_capacity = s.queue_capacity.unwrap_or(d.queue_capacity);
    if queue_capacity == 0 {
        bail!("--queue-capacity must be at least 1");
    }
    Ok(HubConfig {
        history: HistoryLimits {
            max_events: history,
            max_age,
        },
        queue_capacity,
        budget,
        ..d
    })
}
