//! What an application's backend does with the requests Herald sends it
//! (hooks and webhooks), written as a backend would, without Herald's code:
//! [`signature_ok`] checks `x-herald-signature` (DESIGN.md, "Hooks").

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The backend's own check of `x-herald-signature: t=<secs>,v1=<hex>`:
/// HMAC-SHA256 of "<t>.<body>" keyed with `secret`, compared in constant
/// time, with the timestamp within a minute of `now` (Unix seconds).
pub fn signature_ok(secret: &[u8], header: &str, body: &[u8], now: u64) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => v1 = Some(v.to_owned()),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    if t.abs_diff(now) > 60 || v1.len() != 64 {
        return false;
    }
    let Some(tag) = (0..32)
        .map(|i| u8::from_str_radix(&v1[2 * i..2 * i + 2], 16).ok())
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&tag).is_ok()
}
