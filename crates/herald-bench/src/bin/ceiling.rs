//! `herald-bench-ceiling`: the ceiling every figure is read against.
//!
//! A server that does the least a push hub must do: subscribers connect with
//! `GET /sse` or `GET /ws` (one topic, no parsing beyond the request line and
//! the WebSocket key); each `POST /publish` body is encoded once as an SSE
//! frame and once as a WebSocket frame, then written to every subscriber with
//! one blocking `write()` each, from one thread, before the publish is
//! answered. No queues, no history, no cursors, no allocation per delivery.
//!
//! Usage: `herald-bench-ceiling 127.0.0.1:9100`

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use herald_bench::wire;

enum Kind {
    Sse,
    Ws,
}

type Subscribers = Arc<Mutex<Vec<(Kind, TcpStream)>>>;

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9100".into());
    herald_bench::procfs::raise_nofile();
    let listener = TcpListener::bind(&addr)?;
    println!("ceiling listening on http://{}", listener.local_addr()?);
    let subs: Subscribers = Arc::new(Mutex::new(Vec::new()));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let _ = stream.set_nodelay(true);
        let subs = subs.clone();
        // The request head is read on the accept thread: it is already there.
        if let Err(e) = accept(stream, subs) {
            eprintln!("ceiling: {e}");
        }
    }
    Ok(())
}

/// Reads the request head; keeps a subscriber, or starts a publisher thread.
fn accept(stream: TcpStream, subs: Subscribers) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let (line, headers) = read_head(&mut reader)?;
    let mut out = stream;
    if line.starts_with("POST /publish") {
        let len = header(&headers, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        std::thread::spawn(move || {
            let _ = publisher(reader, out, subs, len);
        });
    } else if line.starts_with("GET /sse") {
        out.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\r\n",
        )?;
        lock(&subs).push((Kind::Sse, out));
    } else if line.starts_with("GET /ws") {
        let key = header(&headers, "sec-websocket-key").unwrap_or_default();
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        write!(
            out,
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
        )?;
        lock(&subs).push((Kind::Ws, out));
    } else {
        out.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")?;
    }
    Ok(())
}

fn lock(subs: &Subscribers) -> std::sync::MutexGuard<'_, Vec<(Kind, TcpStream)>> {
    subs.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serves publishes on one keep-alive connection.
fn publisher(
    mut reader: BufReader<TcpStream>,
    mut out: TcpStream,
    subs: Subscribers,
    mut len: usize,
) -> std::io::Result<()> {
    loop {
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body)?;
        let mut sse = Vec::with_capacity(body.len() + 8);
        sse.extend_from_slice(b"data: ");
        sse.extend_from_slice(&body);
        sse.extend_from_slice(b"\n\n");
        let ws = wire::ws_server_frame(1, &body);
        {
            let mut list = lock(&subs);
            // One write per delivery; a subscriber whose write fails is dropped.
            list.retain_mut(|(kind, s)| {
                let frame = match kind {
                    Kind::Sse => &sse,
                    Kind::Ws => &ws,
                };
                s.write_all(frame).is_ok()
            });
        }
        out.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")?;
        let (line, headers) = read_head(&mut reader)?;
        if !line.starts_with("POST") {
            return Ok(());
        }
        len = header(&headers, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
    }
}

fn read_head(r: &mut impl BufRead) -> std::io::Result<(String, Vec<(String, String)>)> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Ok((line, headers))
}

fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}
