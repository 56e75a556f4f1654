//! The publishers of a run: each holds one keep-alive HTTP/1.1 connection to
//! the server's publish endpoint and sends one request at a time, at a fixed
//! rate or as fast as the server answers, recording in the [`Shared`] ledger
//! how many subscribers each message should reach.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ledger::{histogram, Shared};
use crate::run::{Plan, Topics};
use crate::subscriber;
use crate::wire;

/// What one publisher measured.
pub(crate) struct PublisherResult {
    /// Publishes the server answered with a status outside 2xx.
    pub(crate) errors: u64,
    /// Publish round trips in microseconds, request written to answer read.
    pub(crate) latency: Histogram<u64>,
}

/// Publisher `j` of `plan.publishers`: one keep-alive connection, one
/// request at a time, until `stop_at` or until `plan.max_messages` sequence
/// numbers (shared through `next_seq`) are taken. `ready` is how many
/// subscribers were connected when publishing began: what a message to the
/// shared topic should reach.
///
/// Fails if the publish connection cannot be opened or written, closes, or
/// leaves an answer unfinished for 30 seconds; a non-2xx answer only counts
/// as an error and the message is expected nowhere.
pub(crate) async fn publisher(
    plan: Arc<Plan>,
    prefix: String,
    shared: Arc<Shared>,
    next_seq: Arc<AtomicU64>,
    j: usize,
    ready: usize,
    stop_at: Instant,
) -> Result<PublisherResult> {
    let mut stream = subscriber::connect(IpAddr::V4(Ipv4Addr::LOCALHOST), plan.pub_addr)
        .await
        .context("publisher connect")?;
    let host = plan.pub_addr.to_string();
    let mut out = PublisherResult {
        errors: 0,
        latency: histogram(),
    };
    let per_pub_rate = plan.rate / plan.publishers.max(1) as f64;
    let mut interval = (per_pub_rate > 0.0).then(|| {
        let period = Duration::from_secs_f64(1.0 / per_pub_rate);
        // Spread the publishers over the period.
        let offset = period.mul_f64(j as f64 / plan.publishers.max(1) as f64);
        let mut i = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        i
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // When this message is due: with a fixed rate, its tick (a server
        // that answers slowly makes later ticks fire late, in a burst).
        let due = match interval.as_mut() {
            Some(i) => Some(i.tick().await.into_std()),
            None => None,
        };
        if Instant::now() >= stop_at {
            break;
        }
        let seq = next_seq.fetch_add(1, Ordering::Relaxed);
        if seq as usize > plan.max_messages {
            break;
        }
        let (topic, expect) = match plan.topics {
            Topics::Shared => (format!("{prefix}-bench"), ready),
            Topics::OwnShared if seq.checked_rem(plan.shared_every.max(1)) == Some(0) => {
                (format!("{prefix}-bench"), ready)
            }
            Topics::OwnShared => (
                format!("{prefix}-own-{}", seq as usize % plan.subs.max(1)),
                1,
            ),
            Topics::PerPublisher => {
                let p = plan.publishers.max(1);
                let subs = (0..plan.subs).filter(|i| i % p == j).count();
                (format!("{prefix}-p-{j}"), subs)
            }
            Topics::Rooms => bail!("in the rooms mode every client publishes on its own socket"),
        };
        if plan.rate == 0.0 && plan.window > 0 && seq as usize > plan.window {
            // Keep at most `window` messages in flight.
            let old = seq as usize - plan.window;
            let wait_until = Instant::now() + Duration::from_secs(2);
            loop {
                let e = shared.expected[old].load(Ordering::Relaxed);
                if shared.counts[old].load(Ordering::Relaxed) >= e || Instant::now() > wait_until {
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(10), shared.progress.notified())
                    .await;
            }
        }
        shared.expected[seq as usize].store(expect as u32, Ordering::Relaxed);
        let sent = shared.now_us();
        if let Some(due) = due {
            let due_us = due.saturating_duration_since(shared.start).as_micros() as u64;
            let late = sent.saturating_sub(due_us).min(u64::from(u32::MAX)) as u32;
            shared.late[seq as usize].store(late, Ordering::Relaxed);
        }
        let payload = wire::payload(seq, sent, plan.size);
        let req = plan
            .target
            .publish_request(&host, &topic, &payload, &shared.headers);
        stream.write_all(&req).await.context("publish write")?;
        let (status, close) = read_response(&mut stream, &mut buf).await?;
        if close {
            // Pushpin's publish endpoint answers once per connection.
            stream = subscriber::connect(IpAddr::V4(Ipv4Addr::LOCALHOST), plan.pub_addr)
                .await
                .context("publisher reconnect")?;
        }
        out.latency
            .saturating_record(shared.now_us().saturating_sub(sent).max(1));
        if !(200..300).contains(&status) {
            out.errors += 1;
            shared.expected[seq as usize].store(0, Ordering::Relaxed);
            if out.errors <= 3 {
                shared.note(format!("publish answered {status}"));
            }
        }
    }
    Ok(out)
}

/// Reads one whole response (content-length or chunked); returns its status
/// and whether the server closes the connection after it.
async fn read_response(stream: &mut tokio::net::TcpStream, buf: &mut [u8]) -> Result<(u16, bool)> {
    let mut raw: Vec<u8> = Vec::new();
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(buf))
            .await
            .context("publish answer timed out")??;
        if n == 0 {
            bail!("publish connection closed");
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some((h, at)) = wire::parse_head(&raw).map_err(|e| anyhow!(e))? {
            let body = &raw[at..];
            let complete = if h.chunked {
                let mut d = wire::Dechunker::default();
                d.feed(body, |_| {}).map_err(|e| anyhow!(e))?;
                d.done
            } else {
                body.len() >= h.content_length.unwrap_or(0)
            };
            if complete {
                return Ok((h.status, h.close));
            }
        }
    }
}
