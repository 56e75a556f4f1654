//! SSE wire details and the publish API, against a real server over TCP.

#[path = "../support/mod.rs"]
mod support;

mod http1_polls;
mod publish;
mod stream;

use std::io::{Read, Write};
use std::time::Duration;

use herald_client::SseItem;
use herald_core::{HubConfig, Transport};
use herald_http::HttpConfig;
use serde_json::json;
use support::{eventually, quick_http, TestServer};

const WAIT: Duration = Duration::from_secs(5);

async fn next_event(s: &mut herald_client::SseStream) -> herald_client::SseEvent {
    tokio::time::timeout(WAIT, s.next_event())
        .await
        .expect("timeout")
        .unwrap()
        .expect("ended")
}
