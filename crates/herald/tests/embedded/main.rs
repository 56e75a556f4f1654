//! The embedded engine through the real binary: it is the default, it keeps
//! history and cursors across graceful and hard restarts (also with 10,000
//! topics), applies retention by count and by age, and refuses a damaged or
//! foreign data dir with a clear message and a non-zero exit.

#[path = "../process/mod.rs"]
mod process;

mod disk;
mod refusals;
mod restarts;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use herald_client::Client;
use herald_core::{Cursor, Position, Topic};
use process::{Herald, TempDir};
use serde_json::{json, Value};

fn position(topic: &str, id: &str) -> Position {
    Cursor::decode(id)
        .ok()
        .and_then(|c| c.get(&Topic::new(topic).unwrap()))
        .unwrap_or_else(|| panic!("{id:?} is not a cursor of {topic}"))
}

/// One long poll that answers at once: the events after `cursor`.
async fn poll_now(client: &Client, topics: &[&str], cursor: &str) -> Vec<Value> {
    client
        .poll(topics, Some(cursor), Duration::ZERO)
        .await
        .expect("poll")
        .events
}

async fn publish(client: &Client, topic: &str, data: &str) -> String {
    client
        .publish(topic, Value::String(data.into()), None)
        .await
        .expect("publish")
}

/// The body of a `GET` (for `/metrics`).
async fn get_text(client: &Client, path: &str) -> String {
    use http_body_util::BodyExt;
    let r = client
        .request(http::Method::GET, path, &[], bytes::Bytes::new())
        .await
        .expect("GET");
    let body = r.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8(body.to_vec()).expect("UTF-8")
}

/// A gauge or counter from `/metrics`.
async fn metric(client: &Client, name: &str) -> u64 {
    let text = get_text(client, "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// Disk blocks used under `p`, in bytes (journals are preallocated sparse
/// files: their length says little).
fn dir_size(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    files_under(p)
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

/// fjall's journal files (`*.jnl`) under the data dir.
fn journals(data: &Path) -> Vec<PathBuf> {
    files_under(&data.join("db"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "jnl"))
        .collect()
}

/// Where the written part of a preallocated journal ends: after its last
/// byte that is not zero.
fn written_len(path: &Path) -> u64 {
    let b = std::fs::read(path).unwrap();
    b.iter().rposition(|&x| x != 0).map_or(0, |i| i as u64 + 1)
}

/// Every file under `p`, recursively.
fn files_under(p: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(p).unwrap().flatten() {
        if e.path().is_dir() {
            v.extend(files_under(&e.path()));
        } else {
            v.push(e.path());
        }
    }
    v
}
