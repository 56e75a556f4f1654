//! Writing a response, as pure functions over values: the HTTP/1.1
//! response head, the chunked encoding's size lines, and the refusals a
//! request head can meet (431 `headers_too_large`, 414 `uri_too_long`, 400
//! for a malformed head) with their JSON error body, including the
//! rewriting of hyper's empty automatic refusals into the same.

use std::time::SystemTime;

use axum::response::IntoResponse;
use bytes::Bytes;
use herald_http::ApiError;

use super::head::{MAX_HEAD, MAX_HEADERS, MAX_URI};

/// 431 `headers_too_large`: a head over [`MAX_HEAD`] bytes or
/// [`MAX_HEADERS`] fields.
pub(crate) fn headers_too_large() -> ApiError {
    ApiError::new(
        http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
        format!("the request head exceeds {MAX_HEAD} bytes or {MAX_HEADERS} header fields"),
    )
}

/// 414 `uri_too_long`: a request target over [`MAX_URI`] bytes, with what
/// a subscriber can do instead when `advice` is set.
pub(crate) fn uri_too_long(advice: bool) -> ApiError {
    let message = if advice {
        format!(
            "the request target exceeds {MAX_URI} bytes: name fewer or shorter topics, or subscribe over a WebSocket"
        )
    } else {
        format!("the request target exceeds {MAX_URI} bytes")
    };
    ApiError::new(http::StatusCode::URI_TOO_LONG, "uri_too_long", message)
}

/// `HTTP/1.1 <status>`, `date` and the response's headers (without framing
/// headers, which the caller adds), each line ended.
pub(crate) fn response_head(parts: &http::response::Parts, close: bool) -> Vec<u8> {
    Fields::of(parts).head(close)
}

/// What a response head says apart from its framing, its `date` and
/// `connection`: the status and the header lines, rendered. A held long
/// poll keeps these few bytes while it waits, instead of the response's
/// header map and extensions.
pub(crate) struct Fields {
    status: http::StatusCode,
    /// `name: value\r\n` for every header but `content-length`,
    /// `transfer-encoding` and `connection`.
    lines: Box<[u8]>,
}

impl Fields {
    /// Renders the header lines of `parts`.
    pub(crate) fn of(parts: &http::response::Parts) -> Fields {
        let mut lines = Vec::with_capacity(128);
        for (name, value) in &parts.headers {
            if name == http::header::CONTENT_LENGTH
                || name == http::header::TRANSFER_ENCODING
                || name == http::header::CONNECTION
            {
                continue;
            }
            lines.extend_from_slice(name.as_str().as_bytes());
            lines.extend_from_slice(b": ");
            lines.extend_from_slice(value.as_bytes());
            lines.extend_from_slice(b"\r\n");
        }
        Fields {
            status: parts.status,
            lines: lines.into_boxed_slice(),
        }
    }

    /// The head without its framing line, dated now.
    pub(crate) fn head(&self, close: bool) -> Vec<u8> {
        self.head_at(close, SystemTime::now())
    }

    /// [`Fields::head`] with the `date` of `now`.
    fn head_at(&self, close: bool, now: SystemTime) -> Vec<u8> {
        let mut head = Vec::with_capacity(96 + self.lines.len());
        head.extend_from_slice(b"HTTP/1.1 ");
        head.extend_from_slice(self.status.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(
            self.status
                .canonical_reason()
                .unwrap_or("Unknown")
                .as_bytes(),
        );
        head.extend_from_slice(b"\r\n");
        head.extend_from_slice(b"date: ");
        head.extend_from_slice(httpdate::fmt_http_date(now).as_bytes());
        head.extend_from_slice(b"\r\n");
        head.extend_from_slice(&self.lines);
        if close {
            head.extend_from_slice(b"connection: close\r\n");
        }
        head
    }
}

/// [`response_head`] with the `date` of `now`.
#[cfg(test)]
fn response_head_at(parts: &http::response::Parts, close: bool, now: SystemTime) -> Vec<u8> {
    Fields::of(parts).head_at(close, now)
}

/// The line that ends a head whose body has `len` bytes, or, with `None`,
/// one whose body follows in chunks.
pub(crate) fn framing(len: Option<u64>) -> Vec<u8> {
    match len {
        Some(len) => format!("content-length: {len}\r\n\r\n").into_bytes(),
        None => b"transfer-encoding: chunked\r\n\r\n".to_vec(),
    }
}

/// The chunk that ends a chunked body.
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// `{len:x}\r\n` into `out`; returns its length. (Written by hand: this
/// runs once per write on every stream, and `format!` allocates.)
pub(crate) fn chunk_size_line(len: usize, out: &mut [u8; 20]) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = ((usize::BITS - len.leading_zeros()).div_ceil(4)).max(1) as usize;
    for i in 0..digits {
        out[digits - 1 - i] = HEX[(len >> (4 * i)) & 0xf];
    }
    out[digits] = b'\r';
    out[digits + 1] = b'\n';
    digits + 2
}

/// When `head` is hyper's automatic answer to a request head it could not
/// read (`HTTP/1.1 400`, `414` or `431` with `content-length: 0` and no
/// body, in one write), the same refusal with the JSON error body and
/// `connection: close` (hyper closes the connection after it). Herald's own
/// handlers never answer these statuses with an empty body, so nothing else
/// matches.
pub(crate) fn automatic_answer(head: &[u8]) -> Option<Bytes> {
    let rest = head.strip_prefix(b"HTTP/1.1 4")?;
    let refusal = match rest.get(..3)? {
        b"00 " => ApiError::bad_request("invalid_request", "the request head is malformed"),
        b"14 " => uri_too_long(false),
        b"31 " => headers_too_large(),
        _ => return None,
    };
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    if end + 4 != head.len()
        || !head[..end]
            .windows(19)
            .any(|w| w.eq_ignore_ascii_case(b"\r\ncontent-length: 0"))
    {
        return None;
    }
    let body = refusal.body();
    let (parts, _) = refusal.into_response().into_parts();
    let mut out = response_head(&parts, true);
    out.extend_from_slice(&framing(Some(body.len() as u64)));
    out.extend_from_slice(body.as_bytes());
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyper_s_empty_refusals_get_the_json_body() {
        let a = automatic_answer(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n",
        )
        .unwrap();
        let text = String::from_utf8(a.to_vec()).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
        assert!(text.contains("connection: close\r\n"), "{text}");
        assert!(text.ends_with(r#""code":"headers_too_large","message":"the request head exceeds 98304 bytes or 100 header fields"}}"#), "{text}");
        assert!(
            automatic_answer(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").is_some()
        );
        assert!(
            automatic_answer(b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n\r\n").is_some()
        );
        for other in [
            &b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 5\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nbody",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
        ] {
            assert!(automatic_answer(other).is_none(), "{other:?}");
        }
    }

    #[test]
    fn chunk_size_lines() {
        let mut b = [0u8; 20];
        for (len, line) in [
            (0usize, "0\r\n"),
            (9, "9\r\n"),
            (255, "ff\r\n"),
            (256, "100\r\n"),
            (0x1a2b3c, "1a2b3c\r\n"),
            (usize::MAX, "ffffffffffffffff\r\n"),
        ] {
            let n = chunk_size_line(len, &mut b);
            assert_eq!(std::str::from_utf8(&b[..n]).unwrap(), line);
        }
    }

    #[test]
    fn heads_leave_framing_to_the_caller() {
        let resp = http::Response::builder()
            .status(404)
            .header("content-type", "application/json")
            .header("content-length", "9")
            .header("connection", "keep-alive")
            .header("x-a", "1")
            .body(())
            .unwrap();
        let (parts, ()) = resp.into_parts();
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(784111777);
        let mut head = response_head_at(&parts, true, at);
        head.extend_from_slice(&framing(Some(9)));
        assert_eq!(
            std::str::from_utf8(&head).unwrap(),
            "HTTP/1.1 404 Not Found\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             content-type: application/json\r\nx-a: 1\r\nconnection: close\r\n\
             content-length: 9\r\n\r\n"
        );
        assert_eq!(framing(None), b"transfer-encoding: chunked\r\n\r\n");
    }
}
