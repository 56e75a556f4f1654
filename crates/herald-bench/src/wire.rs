//! The load generator's wire handling, as pure functions and small state
//! machines over bytes (no sockets here, so each is unit-tested alone).
//!
//! The load generator never parses events properly: every payload carries a
//! marker `~SEQ~MICROS~` (sequence number, send time in microseconds since the
//! run started), and a streaming [`MarkerScanner`] finds markers in whatever
//! bytes arrive: an SSE body after de-chunking, WebSocket payloads, a
//! long-poll JSON answer. `~` never occurs in Herald's, Nchan's or the
//! baseline's framing (nor in the `urn:uuid:` ids of Herald's Mercure
//! events), so each marker is one delivery.

/// The payload of message `seq` sent at `micros`, padded with `x` to `size` bytes.
pub fn payload(seq: u64, micros: u64, size: usize) -> String {
    let mut s = format!("~{seq}~{micros}~");
    while s.len() < size {
        s.push('x');
    }
    s
}

/// The payload of message `seq` sent at `micros` by rooms-mode client
/// `sender` as its message number `k` (from 0), padded with `x` to `size`
/// bytes: the marker first, then the sender and its own count in words
/// (the scanner reads only the marker; the rest is for a human reading a
/// capture).
pub fn room_payload(seq: u64, micros: u64, sender: usize, k: u64, size: usize) -> String {
    let mut s = format!("~{seq}~{micros}~ from {sender} no {k} ");
    while s.len() < size {
        s.push('x');
    }
    s
}

/// Finds `~SEQ~MICROS~` markers in a byte stream split anywhere.
#[derive(Debug, Default, Clone)]
pub struct MarkerScanner {
    state: u8,
    seq: u64,
    micros: u64,
}

impl MarkerScanner {
    /// Scans `bytes`, calling `found(seq, micros)` for each complete marker.
    pub fn feed(&mut self, bytes: &[u8], mut found: impl FnMut(u64, u64)) {
        let mut i = 0;
        while i < bytes.len() {
            if self.state == 0 {
                // Skip to the next `~` quickly: payload padding is long.
                match bytes[i..].iter().position(|&b| b == b'~') {
                    Some(p) => {
                        i += p + 1;
                        self.state = 1;
                        self.seq = 0;
                        self.micros = 0;
                        continue;
                    }
                    None => return,
                }
            }
            let b = bytes[i];
            i += 1;
            match (self.state, b) {
                (1, b'0'..=b'9') => self.seq = self.seq * 10 + u64::from(b - b'0'),
                (1, b'~') => self.state = 2,
                (2, b'0'..=b'9') => self.micros = self.micros * 10 + u64::from(b - b'0'),
                (2, b'~') => {
                    found(self.seq, self.micros);
                    self.state = 0;
                }
                (_, b'~') => {
                    // A stray `~`: start over from here.
                    self.state = 1;
                    self.seq = 0;
                    self.micros = 0;
                }
                _ => self.state = 0,
            }
        }
    }
}

/// The head of an HTTP/1.1 response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// The status code of the status line (RFC 9112 §4).
    pub status: u16,
    /// `Transfer-Encoding: chunked`: the body comes in chunks (RFC 9112 §7.1).
    pub chunked: bool,
    /// `Content-Length` in bytes, if the server sent one.
    pub content_length: Option<usize>,
    /// `Last-Modified` and `Etag`, which Nchan's long polling hands back.
    pub last_modified: Option<String>,
    /// The `Etag` header's value, as sent.
    pub etag: Option<String>,
    /// `Connection: close`: the server ends the connection after this answer.
    pub close: bool,
}

/// Parses a response head from the start of `buf`. `Ok(None)`: not complete
/// yet. `Ok(Some((head, len)))`: the head and its length with the blank line.
pub fn parse_head(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, String> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > 64 * 1024 {
            return Err("response head over 64 KiB".into());
        }
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| "head is not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut head = ResponseHead {
        status,
        chunked: false,
        content_length: None,
        last_modified: None,
        etag: None,
        close: false,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            head.content_length = value.parse().ok();
        } else if name.eq_ignore_ascii_case("last-modified") {
            head.last_modified = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("connection") {
            head.close = value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("etag") {
            head.etag = Some(value.to_string());
        }
    }
    Ok(Some((head, end + 4)))
}

/// The first position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Decodes `Transfer-Encoding: chunked` incrementally.
#[derive(Debug, Default, Clone)]
pub struct Dechunker {
    state: ChunkState,
    size: usize,
    /// The terminating zero-size chunk was seen.
    pub done: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    /// After the size: extensions up to the line end.
    SizeLine,
    Data,
    DataEnd,
    /// After the last chunk: trailers up to the blank line.
    Trailer,
}

impl Dechunker {
    /// Feeds raw body bytes; `out` gets the decoded bytes. Returns how many
    /// input bytes were used (less than all only once `done`).
    pub fn feed(&mut self, input: &[u8], mut out: impl FnMut(&[u8])) -> Result<usize, String> {
        let mut i = 0;
        while i < input.len() && !self.done {
            match self.state {
                ChunkState::Size => {
                    let b = input[i];
                    i += 1;
                    match b {
                        b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                            let d = (b as char).to_digit(16).unwrap_or(0) as usize;
                            self.size = self
                                .size
                                .checked_mul(16)
                                .and_then(|s| s.checked_add(d))
                                .ok_or("chunk size overflow")?;
                        }
                        b'\r' | b';' | b' ' => self.state = ChunkState::SizeLine,
                        b'\n' => self.after_size_line(),
                        _ => return Err(format!("bad chunk size byte {b:#x}")),
                    }
                }
                ChunkState::SizeLine => {
                    let b = input[i];
                    i += 1;
                    if b == b'\n' {
                        self.after_size_line();
                    }
                }
                ChunkState::Data => {
                    let n = self.size.min(input.len() - i);
                    out(&input[i..i + n]);
                    i += n;
                    self.size -= n;
                    if self.size == 0 {
                        self.state = ChunkState::DataEnd;
                    }
                }
                ChunkState::DataEnd => {
                    let b = input[i];
                    i += 1;
                    if b == b'\n' {
                        self.state = ChunkState::Size;
                    }
                }
                ChunkState::Trailer => {
                    // Trailers are not used by any target: the next LF ends the body.
                    let b = input[i];
                    i += 1;
                    if b == b'\n' {
                        self.done = true;
                    }
                }
            }
        }
        Ok(i)
    }

    fn after_size_line(&mut self) {
        if self.size == 0 {
            self.state = ChunkState::Trailer;
        } else {
            self.state = ChunkState::Data;
        }
    }
}

/// A WebSocket frame from the server (never masked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsFrame<'a> {
    /// The frame's opcode (RFC 6455 §5.2): 0x0 continuation, 0x1 text,
    /// 0x2 binary, 0x8 close, 0x9 ping, 0xA pong.
    pub opcode: u8,
    /// The FIN bit: this frame ends its message.
    pub fin: bool,
    /// The payload bytes, borrowed from the read buffer.
    pub payload: &'a [u8],
}

/// The whole length in bytes (header and payload) of the server frame
/// starting `buf`, once its header is complete; `None` before.
pub fn ws_frame_len(buf: &[u8]) -> Option<usize> {
    let (len, at): (usize, usize) = match *buf.get(1)? & 0x7f {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => {
            let b: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (usize::try_from(u64::from_be_bytes(b)).ok()?, 10)
        }
        n => (n as usize, 2),
    };
    at.checked_add(len)
}

/// Parses one frame at the start of `buf`. `Ok(None)`: incomplete.
/// `Ok(Some((frame, len)))`: the frame and the bytes it took.
pub fn parse_ws_frame(buf: &[u8]) -> Result<Option<(WsFrame<'_>, usize)>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0f;
    if buf[1] & 0x80 != 0 {
        return Err("server frames must not be masked".into());
    }
    let (len, at) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (
                usize::try_from(u64::from_be_bytes(b)).map_err(|_| "frame too large")?,
                10,
            )
        }
        n => (n as usize, 2),
    };
    if buf.len() < at + len {
        return Ok(None);
    }
    Ok(Some((
        WsFrame {
            opcode,
            fin,
            payload: &buf[at..at + len],
        },
        at + len,
    )))
}

/// A client frame (masked with a zero key, which leaves the payload as is).
pub fn ws_client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

/// A server frame (unmasked), as the ceiling program sends it.
pub fn ws_server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 10);
    f.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= 0xffff => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

/// One Engine.IO v4 packet as a WebSocket text message carries it (one
/// packet per message on that transport), read as Socket.IO v5 where it is a
/// `4` (message) packet of the main namespace `/`: what the rooms mode's
/// Socket.IO clients need to tell apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SioPacket<'a> {
    /// `0{...}`: Engine.IO open (session id, ping interval); answered `40`.
    Open,
    /// `1`: Engine.IO close.
    Close,
    /// `2`: Engine.IO ping from the server; answered `3`.
    Ping,
    /// `40{"sid":...}`: Socket.IO CONNECT, the server's answer to the client's `40`.
    Connected,
    /// `41`: Socket.IO DISCONNECT from the server.
    Disconnect,
    /// `42[...]`: a Socket.IO EVENT; its JSON array (ack id, if any, skipped).
    Event(&'a [u8]),
    /// `44{...}`: Socket.IO CONNECT_ERROR; its JSON.
    ConnectError(&'a [u8]),
    /// Anything else: a pong, noop, upgrade, ack, binary event, or another
    /// namespace's packet.
    Other,
}

/// Classifies the text message `p` (see [`SioPacket`]).
pub fn sio_packet(p: &[u8]) -> SioPacket<'_> {
    match p {
        [b'0', ..] => SioPacket::Open,
        [b'1', ..] => SioPacket::Close,
        [b'2', ..] => SioPacket::Ping,
        [b'4', b'0', ..] => SioPacket::Connected,
        [b'4', b'1', ..] => SioPacket::Disconnect,
        [b'4', b'2', rest @ ..] => {
            // An ack id (digits) may stand before the array.
            let at = rest
                .iter()
                .position(|b| !b.is_ascii_digit())
                .unwrap_or(rest.len());
            match &rest[at..] {
                json @ [b'[', ..] => SioPacket::Event(json),
                _ => SioPacket::Other,
            }
        }
        [b'4', b'4', rest @ ..] => SioPacket::ConnectError(rest),
        _ => SioPacket::Other,
    }
}

/// The Socket.IO EVENT packet that emits `event` with one string argument
/// `data` (the contents of a JSON string: no escaping is done), as a client
/// sends it: `42["msg","..."]`.
pub fn sio_event(event: &str, data: &str) -> String {
    format!(r#"42["{event}","{data}"]"#)
}

/// The request path that opens an Engine.IO v4 session straight on the
/// WebSocket transport (no polling first), with `room` (percent-encoded) in
/// the handshake's query for the server to read.
pub fn sio_path(room: &str) -> String {
    let mut p = String::from("/socket.io/?EIO=4&transport=websocket&room=");
    push_percent_encoded(&mut p, room);
    p
}

/// Appends `s` to `out` as a query value: every byte but RFC 3986's
/// unreserved characters (letters, digits, `-._~`) as `%XX`.
pub fn push_percent_encoded(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(chunks: &[&[u8]]) -> Vec<(u64, u64)> {
        let mut s = MarkerScanner::default();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, |a, b| out.push((a, b)));
        }
        out
    }

    #[test]
    fn markers_split_anywhere() {
        let text = format!(
            "id: 1\ndata: {}\n\ndata: {}\n\n",
            payload(7, 123, 40),
            payload(8, 456, 10)
        );
        let bytes = text.as_bytes();
        for cut in 0..bytes.len() {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(scan_all(&[a, b]), vec![(7, 123), (8, 456)], "cut at {cut}");
        }
        assert_eq!(scan_all(&[b"~x~1~2~3~"]), vec![(1, 2)]);
    }

    #[test]
    fn markers_in_mercure_frames() {
        // What a Mercure subscriber reads: a keepalive comment, then events
        // whose ids are Mercure ids, not Herald cursors.
        let text = format!(
            ":\nid: urn:uuid:3f1c9a2e-5b7d-4e08-9c61-0a2b4c6d8e10\ndata: {}\n\n\
             id: urn:uuid:8d0e6f4a-2c1b-4a39-8e57-61f0b3d2c9a4\ndata: \"{}\"\n\n",
            payload(41, 9000, 60),
            payload(42, 9100, 20)
        );
        let bytes = text.as_bytes();
        for cut in 0..bytes.len() {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(
                scan_all(&[a, b]),
                vec![(41, 9000), (42, 9100)],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn percent_encoding() {
        let mut s = String::from("?topic=");
        push_percent_encoded(&mut s, "https://h/a b/{id}~-._");
        assert_eq!(s, "?topic=https%3A%2F%2Fh%2Fa%20b%2F%7Bid%7D~-._");
    }

    #[test]
    fn payload_size() {
        assert_eq!(payload(1, 2, 100).len(), 100);
        assert_eq!(payload(1, 2, 0), "~1~2~");
    }

    #[test]
    fn room_payload_carries_one_marker() {
        let p = room_payload(4001, 77, 12, 20, 100);
        assert_eq!(p.len(), 100);
        assert!(p.starts_with("~4001~77~ from 12 no 20 x"));
        let frame = format!(r#"{{"data":"{p}","id":"c","topic":"room/r1-0","type":"event"}}"#);
        assert_eq!(scan_all(&[frame.as_bytes()]), vec![(4001, 77)]);
        assert_eq!(room_payload(1, 2, 3, 4, 0), "~1~2~ from 3 no 4 ");
    }

    #[test]
    fn response_head() {
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nEtag: 0\r\n\r\nabc";
        let (h, n) = parse_head(r).unwrap().unwrap();
        assert_eq!(h.status, 200);
        assert!(h.chunked);
        assert_eq!(h.etag.as_deref(), Some("0"));
        assert_eq!(&r[n..], b"abc");
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap(), None);
    }

    #[test]
    fn dechunk_split_anywhere() {
        let body = b"5\r\nhello\r\n3;x=y\r\n, w\r\n0\r\n\r\n";
        for cut in 0..body.len() {
            let mut d = Dechunker::default();
            let mut out = Vec::new();
            d.feed(&body[..cut], |b| out.extend_from_slice(b)).unwrap();
            d.feed(&body[cut..], |b| out.extend_from_slice(b)).unwrap();
            assert_eq!(out, b"hello, w");
            assert!(d.done);
        }
    }

    #[test]
    fn ws_frames_round_trip() {
        for len in [0, 5, 125, 126, 300, 70_000] {
            let p = vec![b'a'; len];
            let f = ws_server_frame(1, &p);
            let (frame, n) = parse_ws_frame(&f).unwrap().unwrap();
            assert_eq!((frame.opcode, frame.payload.len(), n), (1, len, f.len()));
            assert_eq!(parse_ws_frame(&f[..f.len() - 1]).unwrap(), None);
        }
        let c = ws_client_frame(1, b"hi");
        assert_eq!(c, vec![0x81, 0x82, 0, 0, 0, 0, b'h', b'i']);
    }

    #[test]
    fn socketio_packets() {
        assert_eq!(
            sio_packet(br#"0{"sid":"a","upgrades":[],"pingInterval":25000}"#),
            SioPacket::Open
        );
        assert_eq!(sio_packet(b"2"), SioPacket::Ping);
        assert_eq!(sio_packet(b"3"), SioPacket::Other);
        assert_eq!(sio_packet(b"1"), SioPacket::Close);
        assert_eq!(sio_packet(br#"40{"sid":"x"}"#), SioPacket::Connected);
        assert_eq!(sio_packet(b"41"), SioPacket::Disconnect);
        assert_eq!(
            sio_packet(br#"42["msg","~1~2~"]"#),
            SioPacket::Event(br#"["msg","~1~2~"]"#)
        );
        assert_eq!(
            sio_packet(br#"4217["msg",1]"#),
            SioPacket::Event(br#"["msg",1]"#)
        );
        assert_eq!(
            sio_packet(br#"44{"message":"no"}"#),
            SioPacket::ConnectError(br#"{"message":"no"}"#)
        );
        assert_eq!(sio_packet(b"42/admin,[\"x\"]"), SioPacket::Other);
        assert_eq!(sio_packet(b""), SioPacket::Other);
        let e = sio_event("msg", &room_payload(9, 8, 7, 6, 40));
        assert_eq!(e, r#"42["msg","~9~8~ from 7 no 6 xxxxxxxxxxxxxxxxxxxxxx"]"#);
        assert_eq!(scan_all(&[e.as_bytes()]), vec![(9, 8)]);
        assert_eq!(
            sio_path("room/r1-0"),
            "/socket.io/?EIO=4&transport=websocket&room=room%2Fr1-0"
        );
    }
}
