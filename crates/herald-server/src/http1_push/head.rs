//! Reading a request head, as pure functions over bytes: whether the bytes
//! read so far hold a complete head (decided by `httparse`, which also
//! accepts bare LF line ends, never by searching for a blank line), whether
//! it is over the limits, and whether it is a request the push path serves.

use axum::body::Body;

/// The largest request head, in bytes: the request line and every header
/// field, on both the push path and hyper's. It admits the documented
/// subscription limits, 64 topics with names of 1 KiB in the query (about
/// 66 KiB), plus ordinary headers (cookies, a token) with room to spare.
/// Above it: 431 `headers_too_large`.
pub const MAX_HEAD: usize = 96 * 1024;
/// The longest request target (path and query), in bytes: the most the
/// `http` crate's `Uri` (and so hyper and every handler) can hold. Above
/// it: 414 `uri_too_long`. It is what bounds a subscription's topics in
/// the query: 64 topics fit with names of up to about 1,000 bytes each.
pub const MAX_URI: usize = u16::MAX as usize - 1;
/// The most header fields in a request head (hyper's default too); above
/// it: 431 `headers_too_large`.
pub const MAX_HEADERS: usize = 100;
/// The paths served directly.
const SSE_PATH: &str = "/v1/sse";
const POLL_PATH: &str = "/v1/poll";
/// A Mercure subscriber's stream (`herald-http`'s `mercure` module).
const MERCURE_PATH: &str = "/.well-known/mercure";
/// Publishes whose body came with their head (see [`parse_direct_request`]).
const PUBLISH_PATH: &str = "/v1/publish";

/// What the parser says of the bytes read so far.
#[derive(Debug)]
pub(crate) enum Head {
    /// A complete head of this many bytes, and the request it is when the
    /// push path serves it (see [`Direct`]); `None`: hyper serves it.
    Complete(usize, Option<Box<Direct>>),
    /// A complete head whose request target is over [`MAX_URI`] bytes.
    UriTooLong,
    /// More bytes are needed.
    Partial,
    /// Too many header fields (or, with [`Head::Partial`] at the size
    /// limit, too many bytes).
    TooLarge,
    /// Not a request head this path understands (HTTP/2's preface, a
    /// malformed head): hyper decides.
    Other,
}

/// The HTTP/2 connection preface (RFC 9113, section 3.4).
pub(crate) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Classifies `buf`, the start of a connection's next request, in one
/// parse: whether it holds a complete head, whether that is over the
/// limits, and whether it is a request the push path serves.
pub(crate) fn head_status(buf: &[u8]) -> Head {
    const PREFACE: &[u8] = H2_PREFACE;
    let n = buf.len().min(PREFACE.len());
    if n > 0 && buf[..n] == PREFACE[..n] {
        return if n == PREFACE.len() {
            Head::Other
        } else {
            Head::Partial
        };
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => Head::TooLarge,
        Ok(httparse::Status::Complete(_)) if req.path.is_some_and(|p| p.len() > MAX_URI) => {
            Head::UriTooLong
        }
        Ok(httparse::Status::Complete(n)) => Head::Complete(n, direct(&req)),
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => Head::TooLarge,
        Ok(httparse::Status::Partial) => Head::Partial,
        Err(httparse::Error::TooManyHeaders) => Head::TooLarge,
        Err(_) => Head::Other,
    }
}

/// The largest publish body read on the push path: a `POST /v1/publish`
/// whose body is longer, or not yet wholly read with its head, goes to hyper.
pub(crate) const MAX_DIRECT_BODY: usize = 16 * 1024;

/// A request the push path serves: an HTTP/1.1 `GET /v1/sse`,
/// `GET /v1/poll` or `GET /.well-known/mercure` (a Mercure subscriber) with
/// no body and no upgrade, or a `POST /v1/publish` with one
/// `content-length` of at most [`MAX_DIRECT_BODY`] bytes, once its whole
/// body has been read with its head ([`Direct::with_body`]; a publisher's
/// head and body usually arrive in one segment). Each has exactly one
/// `Host` (RFC 9112, section 3.2). Anything else is hyper's, errors
/// included: a chunked body, `expect: 100-continue`, a malformed or
/// repeated length, a missing or repeated `Host` (refused there with 400).
#[derive(Debug)]
pub(crate) struct Direct {
    /// The request's head.
    pub(crate) head: http::Request<()>,
    /// Its body's length in bytes (0 for a `GET`).
    pub(crate) body_len: usize,
}

impl Direct {
    /// The request with its body, taken from `buf` after its `head_len`-byte
    /// head, and how many bytes of `buf` it used (head and body); `None`
    /// while the body is not all in `buf`.
    pub(crate) fn with_body(
        self,
        buf: &[u8],
        head_len: usize,
    ) -> Option<(http::Request<Body>, usize)> {
        let end = head_len + self.body_len;
        let body = buf.get(head_len..end)?;
        let body = if body.is_empty() {
            Body::empty()
        } else {
            Body::from(bytes::Bytes::copy_from_slice(body))
        };
        Some((self.head.map(|()| body), end))
    }
}

/// Whether `value` is a `Host` field value Herald accepts: `uri-host
/// [":" port]` (RFC 9112, section 3.2; RFC 3986, section 3.2), or empty.
/// A comma list (what merging two `Host` lines gives) and userinfo are
/// refused, and so is a bracketed host that is not an IPv6 address (an
/// IP-literal, RFC 3986, section 3.2.2; `IPvFuture` is not accepted).
pub(crate) fn host_is_valid(value: &[u8]) -> bool {
    if value.is_empty() {
        return true;
    }
    if value.iter().any(|&b| b == b',' || b == b'@') {
        return false;
    }
    if value.first() == Some(&b'[') {
        let Some(end) = value.iter().position(|&b| b == b']') else {
            return false;
        };
        let ipv6 = std::str::from_utf8(&value[1..end])
            .is_ok_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok());
        if !ipv6 || value.get(end + 1).is_some_and(|&b| b != b':') {
            return false;
        }
    }
    // A port, when there is one, is a number that fits in 16 bits (the
    // last colon outside an IPv6 literal's brackets starts it).
    let port_ok = match value.iter().rposition(|&b| b == b':') {
        Some(i) if !value[i..].contains(&b']') => {
            let port = &value[i + 1..];
            port.iter().all(u8::is_ascii_digit)
                && (port.is_empty()
                    || std::str::from_utf8(port).is_ok_and(|p| p.parse::<u16>().is_ok()))
        }
        _ => true,
    };
    port_ok && http::uri::Authority::try_from(value).is_ok()
}

/// The [`Direct`] request a complete head is, if it is one.
fn direct(req: &httparse::Request<'_, '_>) -> Option<Box<Direct>> {
    let path = req.path?;
    let route = path.split('?').next();
    if req.version != Some(1) {
        return None;
    }
    let method = match req.method {
        Some("GET")
            if route == Some(SSE_PATH)
                || route == Some(POLL_PATH)
                || route == Some(MERCURE_PATH) =>
        {
            http::Method::GET
        }
        Some("POST") if route == Some(PUBLISH_PATH) => http::Method::POST,
        _ => return None,
    };
    let mut length: Option<usize> = None;
    let mut hosts = 0;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            if !host_is_valid(h.value) {
                return None;
            }
            hosts += 1;
        } else if name.eq_ignore_ascii_case("content-length") && method == http::Method::POST {
            // RFC 9110, section 8.6: one decimal length, nothing else.
            if length.is_some() || h.value.is_empty() || !h.value.iter().all(u8::is_ascii_digit) {
                return None;
            }
            length = Some(std::str::from_utf8(h.value).ok()?.parse().ok()?);
        } else if name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("expect")
        {
            return None;
        }
    }
    let body_len = match (&method, length) {
        _ if hosts != 1 => return None,
        (&http::Method::GET, _) => 0,
        (_, Some(len)) if len <= MAX_DIRECT_BODY => len,
        _ => return None,
    };
    let mut b = http::Request::builder()
        .method(method)
        .uri(path)
        .version(http::Version::HTTP_11);
    for h in req.headers.iter() {
        b = b.header(h.name, h.value);
    }
    let head = b.body(()).ok()?;
    Some(Box::new(Direct { head, body_len }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request and the bytes it used, when `buf` holds a direct one whole.
    fn parse_direct_request(buf: &[u8]) -> Option<(http::Request<Body>, usize)> {
        match head_status(buf) {
            Head::Complete(n, Some(d)) => d.with_body(buf, n),
            _ => None,
        }
    }

    /// The body length of a complete head that is a direct publish.
    fn publish_length(head: &[u8]) -> Option<usize> {
        match head_status(head) {
            Head::Complete(_, Some(d)) if d.head.method() == http::Method::POST => Some(d.body_len),
            _ => None,
        }
    }

    #[test]
    fn host_values() {
        for ok in [
            &b""[..],
            b"x",
            b"example.com:8080",
            b"127.0.0.1",
            b"[::1]:80",
            b"[::1]",
            b"[2001:db8::7]:443",
        ] {
            assert!(host_is_valid(ok), "{ok:?}");
        }
        for bad in [
            &b"a, b"[..],
            b"a,b",
            b"u@a",
            b"a b",
            b"a\tb",
            b"a/b",
            b"a:99999",
            b"a:65536",
            b"a:http",
            b"a:+80",
            b"[zz]",
            b"[zz]:80",
            b"[127.0.0.1]",
            b"[::1",
            b"[::1]x",
            b"[v1.fe]",
        ] {
            assert!(!host_is_valid(bad), "{bad:?}");
        }
    }

    fn complete(buf: &[u8]) -> Option<usize> {
        match head_status(buf) {
            Head::Complete(n, _) => Some(n),
            _ => None,
        }
    }

    #[test]
    fn only_plain_sse_gets_through() {
        let (r, n) = parse_direct_request(
            b"GET /v1/sse?topic=a HTTP/1.1\r\nhost: x\r\nlast-event-id: 1\r\n\r\nrest",
        )
        .unwrap();
        assert_eq!(r.uri(), "/v1/sse?topic=a");
        assert_eq!(r.headers()["last-event-id"], "1");
        assert_eq!(n, 59);
        let (r, _) =
            parse_direct_request(b"GET /v1/poll?topic=a&timeout=5 HTTP/1.1\r\nhost: x\r\n\r\n")
                .unwrap();
        assert_eq!(r.uri(), "/v1/poll?topic=a&timeout=5");
        let (r, _) =
            parse_direct_request(b"GET /.well-known/mercure?topic=a HTTP/1.1\r\nhost: x\r\n\r\n")
                .unwrap();
        assert_eq!(r.uri(), "/.well-known/mercure?topic=a");
        assert!(parse_direct_request(
            b"POST /.well-known/mercure HTTP/1.1\r\ncontent-length: 7\r\n\r\ntopic=a"
        )
        .is_none());
        assert!(
            parse_direct_request(b"GET /.well-known/mercure/subscriptions HTTP/1.1\r\n\r\n")
                .is_none()
        );
        for other in [
            &b"GET /v1/ssex HTTP/1.1\r\n\r\n"[..],
            b"GET /v1/polls HTTP/1.1\r\n\r\n",
            b"POST /v1/publish HTTP/1.1\r\ncontent-length: 5\r\n\r\n{\"a\"",
            b"POST /v1/publish HTTP/1.1\r\n\r\n",
            b"POST /v1/publish HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\n{",
            b"POST /v1/publish HTTP/1.1\r\ncontent-length: +1\r\n\r\n{",
            b"POST /v1/publish HTTP/1.1\r\ncontent-length: 2\r\nexpect: 100-continue\r\n\r\n{}",
            b"POST /v1/publish HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            b"POST /v1/publish HTTP/1.0\r\ncontent-length: 2\r\n\r\n{}",
            b"GET /v1/publish HTTP/1.1\r\n\r\n",
            b"POST /v1/tokens HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}",
            b"POST /v1/sse HTTP/1.1\r\ncontent-length: 0\r\n\r\n",
            b"GET /v1/sse HTTP/1.0\r\n\r\n",
            b"GET /v1/sse HTTP/1.1\r\nupgrade: h2c\r\n\r\n",
            b"GET /v1/sse HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET /v1/sse HTTP/1.1\r\n",
            // RFC 9112, section 3.2: exactly one Host (hyper refuses the rest).
            b"GET /v1/sse?topic=a HTTP/1.1\r\n\r\n",
            b"GET /v1/sse?topic=a HTTP/1.1\r\nhost: x\r\nHost: y\r\n\r\n",
            b"POST /v1/publish HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}",
            b"GET /v1/sse?topic=a HTTP/1.1\r\nhost: a, b\r\n\r\n",
            b"GET /v1/sse?topic=a HTTP/1.1\r\nhost: u@a\r\n\r\n",
            b"GET /v1/sse?topic=a HTTP/1.1\r\nhost: a b\r\n\r\n",
        ] {
            assert!(parse_direct_request(other).is_none(), "{other:?}");
        }
    }

    #[test]
    fn a_publish_is_direct_only_with_its_whole_body() {
        let (r, n) = parse_direct_request(
            b"POST /v1/publish?x=1 HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}GET",
        )
        .unwrap();
        assert_eq!(r.method(), http::Method::POST);
        assert_eq!(r.uri(), "/v1/publish?x=1");
        assert_eq!(r.headers()["content-length"], "2");
        assert_eq!(n, 95, "head and body used, the next request's bytes left");
        let (r, n) = parse_direct_request(
            b"POST /v1/publish HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.headers()["content-length"], "0");
        assert_eq!(n, 57);
        let mut big = format!(
            "POST /v1/publish HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
            MAX_DIRECT_BODY + 1
        )
        .into_bytes();
        big.resize(big.len() + MAX_DIRECT_BODY + 1, b' ');
        assert!(
            parse_direct_request(&big).is_none(),
            "a body over the bound goes to hyper"
        );
    }

    #[test]
    fn publish_lengths_are_those_of_direct_publishes() {
        let head = |h: &str| format!("POST /v1/publish HTTP/1.1\r\nhost: x\r\n{h}\r\n");
        assert_eq!(
            publish_length(head("content-length: 900\r\n").as_bytes()),
            Some(900)
        );
        assert_eq!(
            publish_length(head(&format!("content-length: {MAX_DIRECT_BODY}\r\n")).as_bytes()),
            Some(MAX_DIRECT_BODY)
        );
        for other in [
            head(&format!("content-length: {}\r\n", MAX_DIRECT_BODY + 1)),
            head("content-length: 1\r\ncontent-length: 1\r\n"),
            head("content-length: +1\r\n"),
            head(""),
            "POST /v1/tokens HTTP/1.1\r\ncontent-length: 2\r\n\r\n".into(),
            "GET /v1/publish HTTP/1.1\r\ncontent-length: 2\r\n\r\n".into(),
            "POST /v1/publish HTTP/1.1\r\ncontent-length: 2\r\n".into(),
        ] {
            assert_eq!(publish_length(other.as_bytes()), None, "{other:?}");
        }
    }

    #[test]
    fn head_completeness_is_the_parser_s() {
        assert_eq!(complete(b"GET /healthz HTTP/1.1\nHost: x\n\n"), Some(31));
        assert_eq!(
            complete(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(34)
        );
        assert!(matches!(
            head_status(b"GET /healthz HTTP/1.1\nHost: x\n"),
            Head::Partial
        ));
        assert!(matches!(head_status(b"GET /heal"), Head::Partial));
        assert!(matches!(head_status(b"PRI * HTTP/2.0\r\n"), Head::Partial));
        assert!(matches!(
            head_status(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Head::Other
        ));
        assert!(matches!(head_status(b"\x16\x03\x01\x02\x00"), Head::Other));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(head_status(&many), Head::TooLarge));
        let mut long = b"GET /v1/sse?topic=".to_vec();
        long.resize(MAX_HEAD, b'a');
        assert!(matches!(head_status(&long), Head::TooLarge));
        let mut uri = b"GET /v1/sse?topic=".to_vec();
        uri.resize("GET ".len() + MAX_URI + 1, b'a');
        uri.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        assert!(matches!(head_status(&uri), Head::UriTooLong));
        let (r, n) =
            parse_direct_request(b"GET /v1/poll?topic=a HTTP/1.1\nHost: x\n\nnext").unwrap();
        assert_eq!(r.uri(), "/v1/poll?topic=a");
        assert_eq!(n, 39);
    }
}
