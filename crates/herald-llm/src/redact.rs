//! Credentials taken out of upstream text before it is returned to a client
//! or published on a generation's topic: an upstream (or a proxy in front of
//! it) may echo the request's headers in an error body.
//!
//! Replaced with `[redacted]`:
//! - the configured API key, wherever it appears;
//! - the credential after `Bearer` (any case, as in `Authorization: Bearer …`);
//! - the value after a header or field named `authorization`, `api-key`,
//!   `x-api-key`, `api_key` or `apikey` (any case, `:` or `=`, quoted or not);
//! - anything shaped like an OpenAI secret key (`sk-` and 8 or more key
//!   characters, masked ones included), as OpenAI's own errors echo a
//!   masked key.

/// What replaces a credential.
pub const REDACTED: &str = "[redacted]";

/// Names whose value is a credential (lowercase; `x-api-key` ends in `api-key`).
const SECRET_NAMES: &[&str] = &["authorization", "api-key", "api_key", "apikey"];

/// Characters of a credential value: RFC 6750's `b64token`, and `*` for masked keys.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=' | b'*')
}

/// `text` with every credential listed in the module docs replaced by
/// [`REDACTED`]. `key` is the configured upstream API key (ignored when
/// empty).
pub fn redact(text: &str, key: Option<&str>) -> String {
    let text = match key.filter(|k| !k.is_empty()) {
        Some(k) if text.contains(k) => text.replace(k, REDACTED),
        _ => text.to_owned(),
    };
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    // `copied`: bytes of `text` already in `out`. Every cut is next to an
    // ASCII byte, so slices stay on character boundaries.
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        if let Some((start, end)) = secret_at(b, i) {
            out.push_str(&text[copied..start]);
            out.push_str(REDACTED);
            copied = end;
            i = end;
        } else {
            i += 1;
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// If a credential pattern starts at `i`, the byte range of the secret value.
fn secret_at(b: &[u8], i: usize) -> Option<(usize, usize)> {
    let starts_word = i == 0 || !b[i - 1].is_ascii_alphanumeric();
    // `Bearer <token>`
    if starts_word && eq_ignore_case(b, i, "bearer") {
        let mut j = i + 6;
        let spaces = j;
        while j < b.len() && matches!(b[j], b' ' | b'\t') {
            j += 1;
        }
        if j > spaces {
            if let Some(end) = token_end(b, j) {
                return Some((j, end));
            }
        }
    }
    // `authorization: …`, `"x-api-key": "…"`, `api_key=…`
    for name in SECRET_NAMES {
        if eq_ignore_case(b, i, name) {
            let mut j = i + name.len();
            while j < b.len() && matches!(b[j], b'"' | b'\'' | b' ' | b'\t') {
                j += 1;
            }
            if j < b.len() && matches!(b[j], b':' | b'=') {
                j += 1;
                while j < b.len() && matches!(b[j], b'"' | b'\'' | b' ' | b'\t' | b'\\') {
                    j += 1;
                }
                // A scheme word first (`Basic …`, `Bearer …`): the secret follows it.
                let mut k = j;
                while k < b.len() && b[k].is_ascii_alphabetic() {
                    k += 1;
                }
                if k > j && k < b.len() && b[k] == b' ' {
                    let mut v = k;
                    while v < b.len() && b[v] == b' ' {
                        v += 1;
                    }
                    if let Some(end) = token_end(b, v) {
                        return Some((v, end));
                    }
                }
                if let Some(end) = token_end(b, j) {
                    return Some((j, end));
                }
            }
        }
    }
    // `sk-…` secret keys, masked or not.
    if starts_word && b[i..].starts_with(b"sk-") {
        let end = token_end(b, i + 3).unwrap_or(i + 3);
        if end - (i + 3) >= 8 {
            return Some((i, end));
        }
    }
    None
}

/// The end of a run of token characters starting at `j`, if it is not empty
/// (and is not already a redaction).
fn token_end(b: &[u8], j: usize) -> Option<usize> {
    if b[j..].starts_with(REDACTED.as_bytes()) {
        return None;
    }
    let mut k = j;
    while k < b.len() && is_token_char(b[k]) {
        k += 1;
    }
    (k > j).then_some(k)
}

fn eq_ignore_case(b: &[u8], i: usize, word: &str) -> bool {
    b.len() >= i + word.len() && b[i..i + word.len()].eq_ignore_ascii_case(word.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-proj-Secret_Key-0123456789";

    #[test]
    fn the_configured_key_goes_wherever_it_is() {
        assert_eq!(
            redact(&format!("x{KEY}y and {KEY}"), Some(KEY)),
            "x[redacted]y and [redacted]"
        );
        // Not shaped like anything else: only the exact key finds it.
        assert_eq!(
            redact("unusual key k3y!@#", Some("k3y!@#")),
            "unusual key [redacted]"
        );
    }

    #[test]
    fn bearer_and_header_echoes() {
        for (input, want) in [
            (
                "Authorization: Bearer abc.def-ghi",
                "Authorization: Bearer [redacted]",
            ),
            (
                "authorization: BEARER abc",
                "authorization: BEARER [redacted]",
            ),
            ("got bearer\tXyZ123=, bad", "got bearer\t[redacted], bad"),
            (
                r#"{"headers":{"authorization":"Basic dXNlcjpwYXNz"}}"#,
                r#"{"headers":{"authorization":"Basic [redacted]"}}"#,
            ),
            (
                r#"{"x-api-key": "k-123"}"#,
                r#"{"x-api-key": "[redacted]"}"#,
            ),
            ("Api-Key: k-123", "Api-Key: [redacted]"),
            ("?api_key=abc&x=1", "?api_key=[redacted]&x=1"),
            ("apikey=abc", "apikey=[redacted]"),
            (
                "Incorrect API key provided: sk-abc12*****************wxyz",
                "Incorrect API key provided: [redacted]",
            ),
            // Over-eager on prose, which is fine for error text.
            ("The bearer of bad news", "The bearer [redacted] bad news"),
        ] {
            assert_eq!(redact(input, None), want, "{input}");
        }
    }

    #[test]
    fn ordinary_text_stays() {
        for text in [
            "risk-management and task-list",
            "sk-short",
            "ünïcødé ✓ authorization required",
            "",
        ] {
            assert_eq!(redact(text, Some(KEY)), text);
        }
        assert_eq!(
            redact("ü Bearer ✓ok", None),
            "ü Bearer ✓ok",
            "no token characters: nothing to take"
        );
    }
}
