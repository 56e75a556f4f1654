//! Helpers shared by the embedded engine's integration tests.

// Each test file uses some of them.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use herald_core::{Data, HistoryLimits, NewEvent, Topic};
use herald_engine_embedded::{EmbeddedConfig, EmbeddedEngine};
pub fn topic(name: &str) -> Topic {
    Topic::new(name).unwrap()
}

pub fn ev(t: &Topic, s: &str) -> NewEvent {
    NewEvent::new(t.clone(), Data::Text(s.into()))
}

pub fn config(dir: &Path, max_events: usize, max_age: Duration) -> EmbeddedConfig {
    EmbeddedConfig::new(dir).with_history(HistoryLimits {
        max_events,
        max_age,
    })
}

pub fn open(cfg: EmbeddedConfig) -> EmbeddedEngine {
    EmbeddedEngine::open(cfg).expect("open the store")
}

pub fn texts(events: &[Arc<herald_core::Event>]) -> Vec<String> {
    events
        .iter()
        .map(|e| e.data.as_sse_text().to_owned())
        .collect()
}

pub const HOUR: Duration = Duration::from_secs(3600);
