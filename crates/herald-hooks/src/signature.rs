//! The signature of every hook request: the header
//! `x-herald-signature: t=<unix seconds>,v1=<hex>`, where `<hex>` is the
//! lowercase hexadecimal HMAC-SHA256 (RFC 2104, FIPS 180-4) of the bytes
//! `"<t>.<body>"` keyed with the hook secret (`--hook-secret`).
//!
//! The timestamp is signed with the body, so a backend that refuses old
//! timestamps (see [`verify`]'s `tolerance`) also refuses a request
//! recorded and replayed later. Pure functions over bytes: no clock is read
//! here, the caller passes `now`.
//!
//! A backend written in Rust can use [`verify`] as it is; the README shows
//! the same check in a few lines of Python.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The request header that carries the signature (lowercase, as HTTP/2
/// sends it; HTTP/1.1 header names are case-insensitive).
pub const HEADER: &str = "x-herald-signature";

/// How far from `now` (in seconds, either way) [`verify`] accepts a
/// timestamp by default: 5 minutes.
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The header is not `t=<digits>,v1=<64 hex digits>`.
    #[error("the x-herald-signature header is not t=<unix seconds>,v1=<hex HMAC-SHA256>")]
    Malformed,
    /// The timestamp is further than the tolerance from now.
    #[error(
        "the signature's timestamp {timestamp} is more than {tolerance} s away from now ({now})"
    )]
    Stale {
        /// The signed timestamp, Unix seconds.
        timestamp: u64,
        /// The verifier's clock, Unix seconds.
        now: u64,
        /// The tolerance, seconds.
        tolerance: u64,
    },
    /// No `v1` value matches the body and the secret.
    #[error("the signature does not match the body and the secret")]
    Mismatch,
}

/// The HMAC-SHA256 of `"<timestamp>.<body>"` keyed with `secret`: 32 bytes.
pub fn tag(secret: &[u8], timestamp: u64, body: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length (RFC 2104, section 3).
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// The header value for `body` sent at `timestamp` (Unix seconds):
/// `t=<timestamp>,v1=<64 lowercase hex digits>`.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut out = format!("t={timestamp},v1=");
    for b in tag(secret, timestamp, body) {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Checks `header` (the value of [`HEADER`]) against `body` and `secret`:
/// the timestamp must lie within `tolerance` seconds of `now` (Unix
/// seconds), and one of its `v1` values must equal the HMAC (compared in
/// constant time). Several `v1` values are allowed, so that a sender can
/// sign with an old and a new secret while they are rotated. Returns the
/// signed timestamp.
///
/// Errors: [`SignatureError::Malformed`], [`SignatureError::Stale`],
/// [`SignatureError::Mismatch`].
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: u64,
    tolerance: u64,
) -> Result<u64, SignatureError> {
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed)?;
        match k {
            "t" if timestamp.is_none()
                && !v.is_empty()
                && v.bytes().all(|b| b.is_ascii_digit()) =>
            {
                timestamp = Some(v.parse::<u64>().map_err(|_| SignatureError::Malformed)?);
            }
            "v1" => candidates.push(decode_hex(v).ok_or(SignatureError::Malformed)?),
            // Other schemes (a later `v2`) are skipped, as they would be by
            // a verifier that does not know them yet.
            "t" => return Err(SignatureError::Malformed),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if timestamp.abs_diff(now) > tolerance {
        return Err(SignatureError::Stale {
            timestamp,
            now,
            tolerance,
        });
    }
    let expected = tag(secret, timestamp, body);
    let matched = candidates
        .iter()
        .fold(subtle::Choice::from(0), |acc, c| acc | expected.ct_eq(c));
    if bool::from(matched) {
        Ok(timestamp)
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// 64 hex digits (either case) as 32 bytes.
fn decode_hex(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"herald-hook-secret-0123456789";
    const BODY: &[u8] = br#"{"type":"subscribe","user":"alice","topic":"rooms/1"}"#;
    const T: u64 = 1_700_000_000;
    /// Computed apart from this crate, with Python's `hmac` module:
    /// `hmac.new(SECRET, b"1700000000." + BODY, hashlib.sha256).hexdigest()`.
    const KNOWN: &str = "8f20e1220afdcab92a8a53dce8db8611a5bbee5a2242d7f505279820db4d72a2";

    #[test]
    fn signs_the_known_vector() {
        assert_eq!(sign(SECRET, T, BODY), format!("t={T},v1={KNOWN}"));
    }

    #[test]
    fn verifies_what_it_signs_and_nothing_else() {
        let header = sign(SECRET, T, BODY);
        assert_eq!(verify(SECRET, &header, BODY, T + 10, 300), Ok(T));
        // Upper-case hex and spaces after commas are accepted.
        let upper = format!("t={T}, v1={}", KNOWN.to_uppercase());
        assert_eq!(verify(SECRET, &upper, BODY, T, 300), Ok(T));
        let tampered = br#"{"type":"subscribe","user":"mallory","topic":"rooms/1"}"#;
        assert_eq!(
            verify(SECRET, &header, tampered, T, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"another-secret-0123456789", &header, BODY, T, 300),
            Err(SignatureError::Mismatch)
        );
        // The timestamp is signed: moving it breaks the signature.
        let moved = header.replace(&T.to_string(), &(T + 1).to_string());
        assert_eq!(
            verify(SECRET, &moved, BODY, T, 300),
            Err(SignatureError::Mismatch)
        );
        assert!(matches!(
            verify(SECRET, &header, BODY, T + 301, 300),
            Err(SignatureError::Stale { .. })
        ));
        assert!(matches!(
            verify(SECRET, &header, BODY, T - 301, 300),
            Err(SignatureError::Stale { .. })
        ));
    }

    #[test]
    fn rotation_accepts_any_matching_v1() {
        let old = sign(b"old-secret-0123456789", T, BODY);
        let new = sign(SECRET, T, BODY);
        let both = format!("{old},v1={}", new.split_once("v1=").unwrap().1);
        assert_eq!(verify(SECRET, &both, BODY, T, 300), Ok(T));
    }

    #[test]
    fn malformed_headers_are_refused() {
        for h in [
            "",
            "t=1700000000",
            &format!("v1={KNOWN}"),
            &format!("t=abc,v1={KNOWN}"),
            &format!("t=-5,v1={KNOWN}"),
            "t=1700000000,v1=zz",
            &format!("t=1700000000,v1={}", &KNOWN[..62]),
            &format!("t=1,t=1700000000,v1={KNOWN}"),
            "garbage",
        ] {
            assert_eq!(
                verify(SECRET, h, BODY, T, 300),
                Err(SignatureError::Malformed),
                "{h:?}"
            );
        }
    }
}
