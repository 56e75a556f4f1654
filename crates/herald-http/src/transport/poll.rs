//! `GET /v1/poll?topic=A&cursor=...&timeout=25`: long polling.
//!
//! Answers at once with the events after the cursor (at most `poll_batch`),
//! otherwise holds the request, with no thread and no timer loop of its own,
//! until an event arrives or the timeout passes. The answer's `cursor` names
//! every topic of the poll, so the next poll continues exactly: nothing is
//! lost between two polls, even while no poll is open. Without a cursor the
//! poll starts from now and the answer's cursor is where to continue.

use std::time::Duration;

use axum::extract::State;
use std::net::IpAddr;

use axum::http::{header, HeaderMap, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use herald_auth::Action;
use herald_core::{Cursor, Delivery, Subscription, Transport};

use super::{param, query_pairs, subscribe_all, topics_param};
use crate::auth::{authenticate, authorize_all};
use crate::error::ApiError;
use crate::server::ConnectionHandle;
use crate::AppState;

pub(crate) async fn handler(
    State(app): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    conn: Option<axum::Extension<ConnectionHandle>>,
) -> Response {
    match poll(app, headers, uri, conn.map(|c| c.0.peer.ip())).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn parse_timeout(v: Option<&str>, default: Duration, max: Duration) -> Result<Duration, ApiError> {
    let Some(v) = v else {
        return Ok(default.min(max));
    };
    let secs: f64 =
        v.trim().trim_end_matches('s').parse().map_err(|_| {
            ApiError::bad_request("invalid_timeout", "timeout is a number of seconds")
        })?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(ApiError::bad_request(
            "invalid_timeout",
            "timeout is a number of seconds",
        ));
    }
    Ok(Duration::from_secs_f64(secs.min(max.as_secs_f64())))
}

async fn poll(
    app: AppState,
    headers: HeaderMap,
    uri: Uri,
    peer: Option<IpAddr>,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(uri.query());
    let topics = topics_param(&pairs, app.hub.config().max_topics_per_subscription)?;
    let (who, _) = authenticate(&app, &headers, &pairs).await?;
    authorize_all(&app, &who, Action::Subscribe, &topics)?;
    let _slot = app.connection_slot(peer)?;
    let cursor = Cursor::decode(param(&pairs, "cursor").unwrap_or(""))?;
    let wait = parse_timeout(
        param(&pairs, "timeout"),
        app.config.poll_default_timeout,
        app.config.poll_max_timeout,
    )?;
    let _guard = app.hub.metrics().connection(Transport::Poll);
    let mut sub = subscribe_all(app.hub.subscribe(), &topics, &cursor).await?;
    let batch = app.config.poll_batch.max(1);

    let mut frames = Vec::new();
    // What is already there.
    let mut open = drain(&mut sub, &mut frames, batch).await;
    // Nothing yet: hold until something arrives or the timeout passes.
    if open && frames.is_empty() && !wait.is_zero() && !app.hub.is_shutting_down() {
        if let Ok(d) = tokio::time::timeout(wait, sub.next()).await {
            open = take(d, &mut frames);
            if open {
                drain(&mut sub, &mut frames, batch).await;
            }
        }
    }
    app.hub
        .metrics()
        .events_delivered
        .fetch_add(frames.len() as u64, std::sync::atomic::Ordering::Relaxed);

    let cursor = sub.cursor().encode();
    let mut body = BytesMut::with_capacity(
        frames.iter().map(|f| f.len() + 1).sum::<usize>() + cursor.len() + 32,
    );
    body.put_slice(b"{\"events\":[");
    for (i, f) in frames.iter().enumerate() {
        if i > 0 {
            body.put_u8(b',');
        }
        body.put_slice(f);
    }
    body.put_slice(b"],\"cursor\":\"");
    body.put_slice(cursor.as_bytes());
    body.put_slice(b"\"}");
    let mut r = body.freeze().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// Adds a delivery's JSON to `frames`; false when the subscription closed.
fn take(d: Delivery, frames: &mut Vec<Bytes>) -> bool {
    match d {
        Delivery::Event(e) => frames.push(e.json().clone()),
        Delivery::Gap(g) => frames.push(g.json()),
        Delivery::Closed(_) => return false,
    }
    true
}

/// Takes what is ready without waiting for a publish, up to `batch` frames.
async fn drain(sub: &mut Subscription, frames: &mut Vec<Bytes>, batch: usize) -> bool {
    while frames.len() < batch {
        match sub.next_ready().await {
            Some(d) => {
                if !take(d, frames) {
                    return false;
                }
            }
            None => break,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        let d = Duration::from_secs(25);
        let m = Duration::from_secs(60);
        assert_eq!(parse_timeout(None, d, m).unwrap(), d);
        assert_eq!(
            parse_timeout(Some("5"), d, m).unwrap(),
            Duration::from_secs(5)
        );
        assert_eq!(
            parse_timeout(Some("0.5"), d, m).unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(parse_timeout(Some("999"), d, m).unwrap(), m);
        assert!(parse_timeout(Some("-1"), d, m).is_err());
        assert!(parse_timeout(Some("abc"), d, m).is_err());
        assert!(parse_timeout(Some("NaN"), d, m).is_err());
    }
}
