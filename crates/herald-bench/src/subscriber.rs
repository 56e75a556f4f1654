//! One subscriber connection: connect from its own source address, subscribe
//! over SSE, WebSocket, long polling or Mercure (SSE on another path), then
//! count every marker it receives.
//!
//! Tasks run on a current-thread runtime and share that thread's read buffer
//! (`SCRATCH`): a connection keeps only its small parser state between
//! reads, so 19k of them cost the load generator little memory and cache.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::ledger::{Shared, ThreadStats};
use crate::target::{Target, Transport};
use crate::wire::{self, Dechunker, MarkerScanner};

thread_local! {
    /// The read buffer every connection of this thread reads into.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; 256 * 1024]);
}

/// Connects from `source` (bind before connect, so each source address has
/// its own ephemeral port range).
pub async fn connect(source: IpAddr, addr: SocketAddr) -> Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(source, 0))
        .with_context(|| format!("bind {source}"))?;
    let stream = sock
        .connect(addr)
        .await
        .with_context(|| format!("connect {addr} from {source}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// What one read produced.
pub(crate) enum Step {
    /// Keep reading.
    More,
    /// The peer closed the connection.
    Closed,
}

/// Reads once (waiting for readability or stop) and hands the bytes to `f`.
/// Returns `None` when asked to stop.
async fn read_once(
    stream: &TcpStream,
    stop: &mut watch::Receiver<bool>,
    mut f: impl FnMut(&[u8]) -> Result<()>,
) -> Result<Option<Step>> {
    loop {
        if *stop.borrow() {
            return Ok(None);
        }
        tokio::select! {
            r = stream.readable() => r?,
            _ = stop.changed() => return Ok(None),
        }
        if let Some(step) = read_now(stream, &mut f)? {
            return Ok(Some(step));
        }
    }
}

/// Reads what is there now into this thread's shared buffer and hands the
/// bytes to `f`; `None` when nothing was there after all (a spurious wake).
pub(crate) fn read_now(
    stream: &TcpStream,
    f: &mut impl FnMut(&[u8]) -> Result<()>,
) -> Result<Option<Step>> {
    SCRATCH.with(|s| {
        let mut buf = s.borrow_mut();
        match stream.try_read(&mut buf) {
            Ok(0) => Ok(Some(Step::Closed)),
            Ok(n) => f(&buf[..n]).map(|()| Some(Step::More)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e.into()),
        }
    })
}

/// Per-connection counting of markers into the run's shared counters.
pub(crate) struct Counter<'a> {
    pub(crate) shared: &'a Shared,
    pub(crate) stats: &'a RefCell<ThreadStats>,
}

impl Counter<'_> {
    /// Counts every marker in `bytes`; returns how many it found.
    pub(crate) fn bytes(&self, scan: &mut MarkerScanner, bytes: &[u8]) -> usize {
        self.bytes_at(scan, bytes, self.shared.now_us())
    }

    /// [`Counter::bytes`] for bytes that arrived at `now` (microseconds of
    /// the run): the messages of one read share one clock reading.
    pub(crate) fn bytes_at(&self, scan: &mut MarkerScanner, bytes: &[u8], now: u64) -> usize {
        let mut st = self.stats.borrow_mut();
        let mut found = 0;
        scan.feed(bytes, |seq, sent| {
            found += 1;
            self.shared.delivered(seq);
            st.deliveries += 1;
            let lat = now.saturating_sub(sent).max(1);
            st.latency.saturating_record(lat);
            st.scheduled
                .saturating_record(lat + self.shared.late_us(seq));
        });
        found
    }
}

/// Runs subscriber `idx` until `stop`. Counts itself ready, failed or dropped.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    shared: Arc<Shared>,
    stats: Rc<RefCell<ThreadStats>>,
    connecting: Rc<Semaphore>,
    mut stop: watch::Receiver<bool>,
    source: IpAddr,
    topics: Vec<String>,
    addr: SocketAddr,
) {
    let permit = connecting.acquire().await;
    let stream = match connect(source, addr).await {
        Ok(s) => s,
        Err(e) => {
            shared.fail(format!("{e:#}"));
            return;
        }
    };
    let counter = Counter {
        shared: &shared,
        stats: &stats,
    };
    let r = match shared.transport {
        Transport::Sse | Transport::Mercure => {
            sse(&counter, stream, &topics, &mut stop, permit).await
        }
        Transport::Ws => ws(&counter, stream, &topics, &mut stop, permit).await,
        Transport::Poll => poll(&counter, stream, &topics, &mut stop, permit).await,
    };
    match r {
        Ok(true) => {}
        Ok(false) => shared.drop_conn("server closed the connection".into()),
        Err(e) => shared.drop_conn(format!("{e:#}")),
    }
}

/// Marks the connection ready once; later calls do nothing.
fn ready<T>(shared: &Shared, permit: &mut Option<T>) {
    if permit.take().is_some() {
        shared.ready.fetch_add(1, Ordering::Relaxed);
    }
}

/// SSE, on the transport's path (Herald's `/v1/sse` or its Mercure
/// endpoint): `Ok(true)` when stopped, `Ok(false)` when the server closed.
///
/// Only the markers in the body are read, never the `id:` lines, so a
/// Mercure id (`urn:uuid:...`) counts the same as a Herald cursor.
async fn sse<T>(
    c: &Counter<'_>,
    mut stream: TcpStream,
    topics: &[String],
    stop: &mut watch::Receiver<bool>,
    permit: T,
) -> Result<bool> {
    let sh = c.shared;
    let path = sh.target.stream_path(sh.transport, topics);
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: {}\r\naccept: text/event-stream\r\n{}\r\n",
        sh.host, sh.headers
    );
    stream.write_all(req.as_bytes()).await?;
    let mut permit = Some(permit);
    let mut head: Vec<u8> = Vec::new();
    let mut chunked: Option<bool> = None;
    let mut dechunk = Dechunker::default();
    let mut scan = MarkerScanner::default();
    let mut became_ready = false;
    loop {
        let step = read_once(&stream, stop, |mut bytes| {
            if chunked.is_none() {
                head.extend_from_slice(bytes);
                let Some((h, n)) = wire::parse_head(&head).map_err(|e| anyhow!(e))? else {
                    return Ok(());
                };
                if h.status != 200 {
                    bail!("subscribe answered {}", h.status);
                }
                chunked = Some(h.chunked);
                became_ready = true;
                let rest = std::mem::take(&mut head);
                // Process what followed the head below, from a copy.
                head = rest[n..].to_vec();
                bytes = &[];
            }
            let body: &[u8] = if head.is_empty() { bytes } else { &head };
            if chunked == Some(true) {
                dechunk
                    .feed(body, |b| {
                        c.bytes(&mut scan, b);
                    })
                    .map_err(|e| anyhow!(e))?;
            } else {
                c.bytes(&mut scan, body);
            }
            head.clear();
            Ok(())
        })
        .await?;
        if became_ready {
            ready(sh, &mut permit);
        }
        match step {
            None => return Ok(true),
            Some(Step::Closed) => return Ok(false),
            Some(Step::More) => {}
        }
        if dechunk.done {
            return Ok(false);
        }
    }
}

/// WebSocket: handshake, subscribe messages (Herald), then frames.
async fn ws<T>(
    c: &Counter<'_>,
    mut stream: TcpStream,
    topics: &[String],
    stop: &mut watch::Receiver<bool>,
    permit: T,
) -> Result<bool> {
    let sh = c.shared;
    let path = sh.target.stream_path(Transport::Ws, topics);
    stream
        .write_all(ws_upgrade_request(&path, &sh.host, &sh.headers).as_bytes())
        .await?;
    let subs = sh.target.ws_subscribe_messages(topics);
    let mut acks_needed = subs.len();
    let mut permit = Some(permit);
    let mut pending: Vec<u8> = Vec::new();
    let mut upgraded = false;
    let mut out: Vec<u8> = Vec::new();
    let mut scan = MarkerScanner::default();
    loop {
        let mut just_upgraded = false;
        let step = read_once(&stream, stop, |bytes| {
            if !upgraded {
                pending.extend_from_slice(bytes);
                let Some((h, n)) = wire::parse_head(&pending).map_err(|e| anyhow!(e))? else {
                    return Ok(());
                };
                if h.status != 101 {
                    bail!("upgrade answered {}", h.status);
                }
                upgraded = true;
                just_upgraded = true;
                pending.drain(..n);
                return frames(c, &mut pending, &[], &mut scan, &mut acks_needed, &mut out);
            }
            frames(
                c,
                &mut pending,
                bytes,
                &mut scan,
                &mut acks_needed,
                &mut out,
            )
        })
        .await?;
        if just_upgraded {
            for m in &subs {
                out.extend_from_slice(&wire::ws_client_frame(1, m.as_bytes()));
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if upgraded && acks_needed == 0 {
            ready(sh, &mut permit);
        }
        match step {
            None => return Ok(true),
            Some(Step::Closed) => return Ok(false),
            Some(Step::More) => {}
        }
    }
}

/// The HTTP/1.1 request that opens a WebSocket on `path`, with `extra`
/// header lines (each ending in CRLF).
pub(crate) fn ws_upgrade_request(path: &str, host: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nhost: {host}\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n{extra}\r\n"
    )
}

/// Parses every complete frame of `pending` + `bytes`; keeps the rest in `pending`.
fn frames(
    c: &Counter<'_>,
    pending: &mut Vec<u8>,
    bytes: &[u8],
    scan: &mut MarkerScanner,
    acks_needed: &mut usize,
    out: &mut Vec<u8>,
) -> Result<()> {
    let now = c.shared.now_us();
    ws_messages(pending, bytes, out, |payload| {
        // Only while subscribing: events are not searched for these.
        if *acks_needed > 0 {
            if wire::find(payload, b"\"subscribed\"").is_some() {
                *acks_needed -= 1;
            } else if payload.first() == Some(&b'{') && wire::find(payload, b"\"error\"").is_some()
            {
                bail!("subscribe refused: {}", String::from_utf8_lossy(payload));
            }
        }
        c.bytes_at(scan, payload, now);
        Ok(())
    })
}

/// Parses every complete frame of `pending` + `bytes` and keeps the rest in
/// `pending`: data frames go to `on_data`, a ping gets its pong appended to
/// `out`, a close frame is an error (the run did not end it).
///
/// A frame begun in an earlier read is completed with only the bytes it
/// needs; the rest are parsed where they are (copying each read behind a
/// partial frame cost the load generator more than the server's write).
pub(crate) fn ws_messages(
    pending: &mut Vec<u8>,
    mut bytes: &[u8],
    out: &mut Vec<u8>,
    mut on_data: impl FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let mut on_frame = |f: wire::WsFrame<'_>| -> Result<()> {
        match f.opcode {
            0..=2 => on_data(f.payload)?,
            8 => bail!("server closed the WebSocket: {:?}", close_reason(f.payload)),
            9 => out.extend_from_slice(&wire::ws_client_frame(0xA, f.payload)),
            _ => {}
        }
        Ok(())
    };
    while !pending.is_empty() {
        // The frame's whole length once its header is in; until then, one
        // more byte of the header at a time.
        let want = wire::ws_frame_len(pending).unwrap_or(pending.len() + 1);
        let take = want.saturating_sub(pending.len()).min(bytes.len());
        pending.extend_from_slice(&bytes[..take]);
        bytes = &bytes[take..];
        match wire::parse_ws_frame(pending).map_err(|e| anyhow!(e))? {
            Some((f, n)) => {
                on_frame(f)?;
                pending.drain(..n);
            }
            None if bytes.is_empty() => return Ok(()),
            None => {}
        }
    }
    let mut at = 0;
    while let Some((f, n)) = wire::parse_ws_frame(&bytes[at..]).map_err(|e| anyhow!(e))? {
        at += n;
        on_frame(f)?;
    }
    pending.extend_from_slice(&bytes[at..]);
    Ok(())
}

fn close_reason(p: &[u8]) -> String {
    if p.len() >= 2 {
        format!(
            "{} {}",
            u16::from_be_bytes([p[0], p[1]]),
            String::from_utf8_lossy(&p[2..])
        )
    } else {
        "no code".into()
    }
}

/// Long polling: one request at a time on a keep-alive connection.
async fn poll<T>(
    c: &Counter<'_>,
    mut stream: TcpStream,
    topics: &[String],
    stop: &mut watch::Receiver<bool>,
    permit: T,
) -> Result<bool> {
    let sh = c.shared;
    let mut permit = Some(permit);
    let mut cursor: Option<String> = None;
    let mut since: Option<(String, String)> = None;
    let mut scan = MarkerScanner::default();
    if sh.target != Target::Herald {
        // Nchan registers the subscriber when the first request arrives.
        ready(sh, &mut permit);
    }
    loop {
        let req = sh.target.poll_request(
            &sh.host,
            topics,
            cursor.as_deref(),
            since.as_ref(),
            25,
            &sh.headers,
        );
        stream.write_all(&req).await?;
        let mut raw: Vec<u8> = Vec::new();
        let mut head: Option<(wire::ResponseHead, usize)> = None;
        let mut body: Vec<u8> = Vec::new();
        let mut dechunk = Dechunker::default();
        loop {
            let step = read_once(&stream, stop, |bytes| {
                if head.is_none() {
                    raw.extend_from_slice(bytes);
                    head = wire::parse_head(&raw).map_err(|e| anyhow!(e))?;
                    if let Some((_, n)) = &head {
                        raw.drain(..*n);
                    }
                } else {
                    raw.extend_from_slice(bytes);
                }
                if let Some((h, _)) = &head {
                    if h.chunked {
                        dechunk
                            .feed(&raw, |b| body.extend_from_slice(b))
                            .map_err(|e| anyhow!(e))?;
                    } else {
                        body.extend_from_slice(&raw);
                    }
                    raw.clear();
                }
                Ok(())
            })
            .await?;
            match step {
                None => return Ok(true),
                Some(Step::Closed) => return Ok(false),
                Some(Step::More) => {}
            }
            if let Some((h, _)) = &head {
                let complete = if h.chunked {
                    dechunk.done
                } else {
                    body.len() >= h.content_length.unwrap_or(0)
                };
                if complete {
                    break;
                }
            }
        }
        let (h, _) = head.ok_or_else(|| anyhow!("no response"))?;
        match h.status {
            200 => {}
            // Nchan: nothing new before its timeout; poll again with the same position.
            304 | 408 => continue,
            s => bail!("poll answered {s}: {}", String::from_utf8_lossy(&body)),
        }
        c.bytes(&mut scan, &body);
        if sh.target == Target::Herald {
            let at = body
                .windows(10)
                .rposition(|w| w == b"\"cursor\":\"")
                .ok_or_else(|| anyhow!("poll answer without a cursor"))?;
            let rest = &body[at + 10..];
            let end = rest
                .iter()
                .position(|&b| b == b'"')
                .ok_or_else(|| anyhow!("unterminated cursor"))?;
            cursor = Some(String::from_utf8_lossy(&rest[..end]).into_owned());
            ready(sh, &mut permit);
        } else {
            since = Some((
                h.last_modified.unwrap_or_default(),
                h.etag.unwrap_or_default(),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames of each header size, a ping and an empty frame, cut into
    /// reads at every point (and in pieces of every size up to 300 bytes),
    /// give the same messages and pongs as the stream read whole.
    #[test]
    fn frames_split_across_reads_are_parsed_whole() {
        let payloads: Vec<Vec<u8>> = vec![
            b"abc".to_vec(),
            vec![b'x'; 200],
            vec![],
            vec![b'y'; 70_000],
            b"{\"type\":\"event\"}".to_vec(),
        ];
        let mut wire = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            wire.extend(wire::ws_server_frame(1, p));
            if i == 1 {
                wire.extend(wire::ws_server_frame(9, b"ping"));
            }
        }
        let run = |cuts: &mut dyn Iterator<Item = usize>| {
            let (mut pending, mut out, mut got) = (Vec::new(), Vec::new(), Vec::new());
            let mut at = 0;
            while at < wire.len() {
                let n = cuts.next().unwrap().clamp(1, wire.len() - at);
                ws_messages(&mut pending, &wire[at..at + n], &mut out, |p| {
                    got.push(p.to_vec());
                    Ok(())
                })
                .unwrap();
                at += n;
            }
            assert!(pending.is_empty());
            (got, out)
        };
        let (whole, pong) = run(&mut std::iter::repeat(wire.len()));
        assert_eq!(whole, payloads);
        assert_eq!(pong, wire::ws_client_frame(0xA, b"ping"));
        for cut in 1..wire.len().min(400) {
            let mut cuts = [cut, wire.len()].into_iter();
            assert_eq!(
                run(&mut cuts),
                (whole.clone(), pong.clone()),
                "cut at {cut}"
            );
        }
        for piece in 1..300 {
            assert_eq!(
                run(&mut std::iter::repeat(piece)),
                (whole.clone(), pong.clone()),
                "pieces of {piece}"
            );
        }
    }
}
