//! The encoder: Herald's events as `text/event-stream` bytes.
//!
//! An event is a block of `field: value` lines ended by a blank line. Data that
//! contains line breaks (CRLF, CR or LF, which the event-stream grammar all
//! treats as line ends) is split into one `data:` line per line, so the
//! browser re-joins it with `\n`. Each value is written after `": "`; the
//! parser strips exactly one leading space, so data that starts with a space
//! survives.

use bytes::{BufMut, BytesMut};

/// Encodes one event. Returns the frame and the offset where the body (every
/// field after `id:`) starts. `id` and `name` must not contain CR or LF
/// (cursors never do; event names are validated at publish).
pub fn encode_event(id: Option<&str>, name: Option<&str>, data: &str) -> (BytesMut, usize) {
    let mut buf = BytesMut::with_capacity(
        data.len() + id.map_or(0, str::len) + name.map_or(0, str::len) + 24,
    );
    if let Some(id) = id {
        put_field(&mut buf, "id", id);
    }
    let body_start = buf.len();
    if let Some(name) = name {
        put_field(&mut buf, "event", name);
    }
    put_data(&mut buf, data);
    buf.put_u8(b'\n');
    (buf, body_start)
}

/// `id: <cursor>\n`, written before a shared body on multi-topic streams.
pub fn id_line(id: &str) -> BytesMut {
    let mut buf = BytesMut::with_capacity(id.len() + 5);
    put_field(&mut buf, "id", id);
    buf
}

/// The preamble of a stream: the reconnection delay, and an id-only event
/// that sets the browser's last event id to the stream's starting cursor (an
/// event with no data is not dispatched, but its id is kept), so a client that
/// reconnects before its first event still resumes exactly.
pub fn preamble(retry_ms: u64, cursor: &str) -> BytesMut {
    let mut buf = BytesMut::with_capacity(cursor.len() + 32);
    buf.put_slice(b"retry: ");
    buf.put_slice(retry_ms.to_string().as_bytes());
    buf.put_u8(b'\n');
    put_field(&mut buf, "id", cursor);
    buf.put_u8(b'\n');
    buf
}

/// A comment line, which clients ignore: used as a keepalive.
pub const KEEPALIVE: &[u8] = b": keepalive\n\n";

fn put_field(buf: &mut BytesMut, field: &str, value: &str) {
    buf.put_slice(field.as_bytes());
    buf.put_slice(b": ");
    buf.put_slice(value.as_bytes());
    buf.put_u8(b'\n');
}

fn put_data(buf: &mut BytesMut, data: &str) {
    let bytes = data.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\r' => {
                put_field_bytes(buf, &bytes[start..i]);
                if bytes.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            b'\n' => {
                put_field_bytes(buf, &bytes[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    put_field_bytes(buf, &bytes[start..]);
}

fn put_field_bytes(buf: &mut BytesMut, line: &[u8]) {
    buf.put_slice(b"data: ");
    buf.put_slice(line);
    buf.put_u8(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(id: Option<&str>, name: Option<&str>, data: &str) -> String {
        String::from_utf8(encode_event(id, name, data).0.to_vec()).unwrap()
    }

    #[test]
    fn plain_and_named() {
        assert_eq!(enc(None, None, "hi"), "data: hi\n\n");
        assert_eq!(
            enc(Some("c1"), Some("order-update"), "{\"a\":1}"),
            "id: c1\nevent: order-update\ndata: {\"a\":1}\n\n"
        );
    }

    #[test]
    fn splits_every_line_ending() {
        assert_eq!(
            enc(None, None, "a\nb\r\nc\rd"),
            "data: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        assert_eq!(enc(None, None, ""), "data: \n\n");
        assert_eq!(enc(None, None, "\n"), "data: \ndata: \n\n");
        assert_eq!(enc(None, None, "x\r"), "data: x\ndata: \n\n");
        assert_eq!(enc(None, None, " lead"), "data:  lead\n\n");
    }

    #[test]
    fn body_offset() {
        let (f, at) = encode_event(Some("id1"), None, "x");
        assert_eq!(&f[at..], b"data: x\n\n");
    }
}
