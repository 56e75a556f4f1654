//! `herald_hook_requests_total{hook,outcome}`: every hook request counted
//! by hook (`connect`, `subscribe`, `publish`) and outcome, rendered by the
//! core's `/metrics` through [`MetricsSource`].

use std::sync::atomic::{AtomicU64, Ordering};

use herald_core::metrics::{Family, Kind, MetricsSource, Sample, Value};

use crate::Hook;

/// How a hook request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The backend allowed it (connect: granted; publish: accepted, with
    /// its data or replaced).
    Allowed,
    /// The backend refused it (401 or 403).
    Refused,
    /// No answer within `--hook-timeout`, waiting for a free slot included.
    Timeout,
    /// No usable answer: connection error, 5xx or another status, an
    /// answer that does not parse or is too large.
    Error,
}

impl Outcome {
    /// Every outcome, in the order metrics list them.
    pub const ALL: [Outcome; 4] = [
        Outcome::Allowed,
        Outcome::Refused,
        Outcome::Timeout,
        Outcome::Error,
    ];

    /// The `outcome` label: `allowed`, `refused`, `timeout` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Refused => "refused",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
        }
    }
}

/// The counters, one per hook and outcome.
#[derive(Debug, Default)]
pub struct HookMetrics {
    counts: [[AtomicU64; 4]; 3],
}

impl HookMetrics {
    /// Counts one request of `hook` that ended with `outcome`.
    pub fn count(&self, hook: Hook, outcome: Outcome) {
        self.cell(hook, outcome).fetch_add(1, Ordering::Relaxed);
    }

    /// Requests of `hook` that ended with `outcome` so far.
    pub fn get(&self, hook: Hook, outcome: Outcome) -> u64 {
        self.cell(hook, outcome).load(Ordering::Relaxed)
    }

    fn cell(&self, hook: Hook, outcome: Outcome) -> &AtomicU64 {
        let h = Hook::ALL.iter().position(|x| *x == hook).unwrap_or(0);
        let o = Outcome::ALL.iter().position(|x| *x == outcome).unwrap_or(0);
        &self.counts[h][o]
    }
}

impl MetricsSource for HookMetrics {
    fn families(&self) -> Vec<Family> {
        let samples = Hook::ALL
            .iter()
            .flat_map(|h| Outcome::ALL.iter().map(move |o| (*h, *o)))
            .map(|(h, o)| {
                Sample::with_labels(
                    "",
                    vec![("hook", h.as_str().into()), ("outcome", o.as_str().into())],
                    Value::Count(self.get(h, o)),
                )
            })
            .collect();
        vec![Family {
            name: "herald_hook_requests_total",
            help: "Requests to the application's hooks, by hook and outcome.",
            kind: Kind::Counter,
            samples,
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_hook_and_outcome() {
        let m = HookMetrics::default();
        m.count(Hook::Publish, Outcome::Timeout);
        m.count(Hook::Publish, Outcome::Timeout);
        let mut out = String::new();
        herald_core::metrics::write_families(&mut out, &m.families());
        assert!(out.contains("# TYPE herald_hook_requests_total counter\n"));
        assert!(
            out.contains("herald_hook_requests_total{hook=\"publish\",outcome=\"timeout\"} 2\n")
        );
        assert!(
            out.contains("herald_hook_requests_total{hook=\"connect\",outcome=\"allowed\"} 0\n")
        );
        assert_eq!(out.lines().count(), 2 + 12);
    }
}
