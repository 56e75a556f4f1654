//! The browser client and the demo page: `GET /` (a page that subscribes,
//! shows events and publishes), `GET /client/herald.js` (the ES module) and
//! `GET /client/herald.d.ts` (its types).
//!
//! The files live in `clients/js/` (an npm package layout, tested in headless
//! Chromium there) and are embedded at compile time, so the `herald` binary
//! stays one file. Paths are stable; `ETag` and `cache-control: no-cache` let
//! browsers keep them and revalidate.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// One embedded file.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: u64,
}

const fn asset(body: &'static str, content_type: &'static str) -> Asset {
    Asset {
        body,
        content_type,
        etag: fnv1a(body.as_bytes()),
    }
}

const DEMO: Asset = asset(
    include_str!("../../../clients/js/demo/index.html"),
    "text/html; charset=utf-8",
);
const CLIENT: Asset = asset(
    include_str!("../../../clients/js/herald.js"),
    "text/javascript; charset=utf-8",
);
const TYPES: Asset = asset(
    include_str!("../../../clients/js/herald.d.ts"),
    "application/typescript; charset=utf-8",
);

/// FNV-1a, 64 bits: a content hash for the `ETag`, computed at compile time.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

pub(crate) async fn demo(headers: HeaderMap) -> Response {
    serve(&DEMO, &headers)
}

pub(crate) async fn client(headers: HeaderMap) -> Response {
    let mut r = public(serve(&CLIENT, &headers));
    // Deno and some editors find the types of a module URL here.
    r.headers_mut().insert(
        "x-typescript-types",
        HeaderValue::from_static("./herald.d.ts"),
    );
    r
}

pub(crate) async fn types(headers: HeaderMap) -> Response {
    public(serve(&TYPES, &headers))
}

/// Pages on other origins import the module (module scripts load in CORS
/// mode). It is public and carries no credential, so any origin may; the
/// configured CORS layer still overrides this for its own origins.
fn public(mut r: Response) -> Response {
    r.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

fn serve(a: &Asset, req: &HeaderMap) -> Response {
    let etag = format!("\"{:016x}\"", a.etag);
    let fresh = req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut r = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        a.body.into_response()
    };
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_with_etag_and_revalidates() {
        let r = client(HeaderMap::new()).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        let etag = r.headers()[header::ETAG].clone();
        let mut req = HeaderMap::new();
        req.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(client(req).await.status(), StatusCode::NOT_MODIFIED);
    }

    #[test]
    fn embeds_the_client_and_the_page() {
        assert!(CLIENT.body.contains("export function connect"));
        assert!(TYPES.body.contains("export function connect"));
        assert!(DEMO.body.contains("client/herald.js"));
        assert_ne!(CLIENT.etag, TYPES.etag);
    }
}
