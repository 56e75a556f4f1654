//! The WebSocket frame of a server-to-client text message (RFC 6455,
//! section 5.2), as pure functions over bytes.
//!
//! A server's frames are not masked (section 5.1), so a frame's bytes depend
//! on its payload alone: an event is framed once ([`Event::ws_frame`]) and
//! every subscriber writes the same bytes. The frames made here are whole
//! messages (FIN set, no fragmentation) with no extension bits:
//!
//! ```text
//! 0x81                          FIN + opcode 0x1 (text)
//! then, mask bit clear:
//!   len                         payload of 0..=125 bytes
//!   126, len as u16 big-endian  payload of 126..=65535 bytes
//!   127, len as u64 big-endian  longer payloads
//! then the payload (UTF-8 text)
//! ```
//!
//! [`Event::ws_frame`]: crate::Event::ws_frame

use bytes::Bytes;

/// The longest header: two bytes and a 64-bit extended payload length. A
/// payload encoded after this many bytes of headroom can be framed in place
/// ([`frame_text_in_place`]).
pub const MAX_HEADER_LEN: usize = 10;

/// FIN (the final fragment) and opcode 0x1 (text).
const FIN_TEXT: u8 = 0x81;

/// The header of an unmasked, final text frame whose payload is `len`
/// bytes: the first `n` bytes of the array, for the returned `n` (2, 4
/// or 10).
pub fn text_header(len: usize) -> ([u8; MAX_HEADER_LEN], usize) {
    let mut header = [0; MAX_HEADER_LEN];
    header[0] = FIN_TEXT;
    let n = if len <= 125 {
        header[1] = len as u8;
        2
    } else if let Ok(len) = u16::try_from(len) {
        header[1] = 126;
        header[2..4].copy_from_slice(&len.to_be_bytes());
        4
    } else {
        header[1] = 127;
        header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    (header, n)
}

/// The frame of the text `payload`: header and payload in one new buffer.
pub fn text_frame(payload: &[u8]) -> Bytes {
    let (header, n) = text_header(payload.len());
    let mut frame = Vec::with_capacity(n + payload.len());
    frame.extend_from_slice(&header[..n]);
    frame.extend_from_slice(payload);
    Bytes::from(frame)
}

/// Frames, without copying it, a payload written into `buf` after
/// [`MAX_HEADER_LEN`] bytes of headroom: the header goes just before the
/// payload. Answers `(frame, payload)`, two views of the one buffer.
///
/// # Panics
///
/// If `buf` is shorter than [`MAX_HEADER_LEN`] (it has no headroom).
pub fn frame_text_in_place(mut buf: Vec<u8>) -> (Bytes, Bytes) {
    assert!(
        buf.len() >= MAX_HEADER_LEN,
        "a payload to frame in place follows {MAX_HEADER_LEN} bytes of headroom"
    );
    let (header, n) = text_header(buf.len() - MAX_HEADER_LEN);
    let start = MAX_HEADER_LEN - n;
    buf[start..MAX_HEADER_LEN].copy_from_slice(&header[..n]);
    let buf = Bytes::from(buf);
    (buf.slice(start..), buf.slice(MAX_HEADER_LEN..))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The payload length a frame's header announces, read as section 5.2
    /// says, and the header's length.
    fn announced(frame: &[u8]) -> (u64, usize) {
        assert_eq!(frame[0], 0x81, "FIN + text, no RSV bits");
        assert_eq!(frame[1] & 0x80, 0, "server frames are not masked");
        match frame[1] {
            126 => (u16::from_be_bytes([frame[2], frame[3]]) as u64, 4),
            127 => (u64::from_be_bytes(frame[2..10].try_into().unwrap()), 10),
            n => (n as u64, 2),
        }
    }

    #[test]
    fn lengths_take_the_shortest_form_at_each_boundary() {
        for (len, header) in [
            (0, 2),
            (1, 2),
            (125, 2),
            (126, 4),
            (65535, 4),
            (65536, 10),
            (70000, 10),
        ] {
            let payload = vec![b'x'; len];
            let frame = text_frame(&payload);
            assert_eq!(announced(&frame), (len as u64, header), "{len}");
            assert_eq!(&frame[header..], &payload[..], "{len}");
            assert_eq!(text_header(len).1, header, "{len}");
        }
        // The 7-bit field never holds 126 or 127 as a length.
        assert_eq!(&text_header(126).0[..4], &[0x81, 126, 0, 126]);
        assert_eq!(
            &text_header(65536).0[..],
            &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]
        );
    }

    #[test]
    fn in_place_frames_share_the_payload_buffer() {
        for len in [0, 125, 126, 65535, 65536] {
            let mut buf = vec![0; MAX_HEADER_LEN];
            buf.extend(std::iter::repeat_n(b'y', len));
            let (frame, payload) = frame_text_in_place(buf);
            assert_eq!(payload.len(), len);
            assert_eq!(&frame[..], &text_frame(&payload)[..], "{len}");
            // The payload is the frame's tail, not a copy of it.
            assert_eq!(
                frame.as_ptr() as usize + frame.len(),
                payload.as_ptr() as usize + payload.len()
            );
        }
    }
}
