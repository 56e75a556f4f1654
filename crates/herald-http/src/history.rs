//! `GET /v1/history?topic=T&limit=N[&before=C|&after=C]`: a page of a
//! topic's retained events (DESIGN.md, "History").
//!
//! The answer is `{"events":[...],"cursor":C}`, the long-poll shape
//! ([`herald_core::wire::poll`]): events are the WebSocket/poll event
//! messages, oldest first, at most `limit` (default 100, 1 to 1000) and
//! at most `--poll-max-bytes` (1 MiB) of event JSON, one event always: a
//! page cut by size is paged on from its cursor like any other. An
//! ephemeral topic (`history = 0`) answers an empty page, without a gap.
//!
//! A cursor is a place between two events (an event's id is the place
//! just after it):
//!
//! - `after=C`: the oldest `limit` events after `C`; the answer's cursor is
//!   the place after its last event (`C` itself when there is none), to pass
//!   as `after` for the next page. `after=earliest` starts at the oldest
//!   retained event.
//! - `before=C`, or neither: the newest `limit` events before `C` (before
//!   the head); the answer's cursor is the place before its first event, to
//!   pass as `before` for the previous page. An empty page ends the paging.
//!
//! Either cursor is a resume cursor too (`last_event_id`, `since`,
//! `cursor`, WebSocket `since`): delivery continues from that place.
//!
//! A cursor the topic cannot honour (another epoch: the history was lost
//! or the topic expired; older than retention; ahead of the head) is not an
//! error: like a resuming subscriber, the page starts with a `herald.gap`
//! event `{"topic","reason"}` (`epoch_changed`, `history_truncated`,
//! `unknown_position`), then continues from the oldest retained event
//! (`after`) or ends at the newest (`before`). A cursor that does not
//! decode, or names another topic, is 400 `invalid_cursor`.
//!
//! Needs subscribe rights on the topic, checked by the one authorize
//! function as [`Action::History`].

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herald_auth::Action;
use herald_core::wire::poll::{encode_parts, frame_cost};
use herald_core::{Cursor, Gap, Position};

use crate::auth::{authenticate, authorize_all};
use crate::error::ApiError;
use crate::input::{cursor, Query, EARLIEST, MAX_HISTORY};
use crate::AppState;

/// Events a page holds without `limit`.
pub const DEFAULT_LIMIT: usize = 100;

/// `GET /v1/history`.
///
/// Errors: 400 (`invalid_topic`, `invalid_limit`, `invalid_cursor`,
/// `invalid_query` for both `before` and `after`), 401, 403, 503 when the
/// engine cannot read.
pub(crate) async fn handler(
    State(app): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let query = Query::parse(uri.query())?;
    let topic = query.one_topic("history")?;
    let limit = query.limit(DEFAULT_LIMIT, MAX_HISTORY, "events")?;
    let place = |name: &str| -> Result<Option<Position>, ApiError> {
        match query.last(name) {
            None => Ok(None),
            Some(v) => {
                let c = cursor(v, name)?;
                c.get(&topic).map(Some).ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_cursor",
                        format!("{name}: the cursor does not name this topic"),
                    )
                })
            }
        }
    };
    let (who, _) = authenticate(&app, &headers, query.pairs()).await?;
    authorize_all(&app, &who, Action::History, std::slice::from_ref(&topic))?;
    let engine = app.hub.engine();
    let (read, forward) = match (query.last("after"), query.last("before")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "give before or after, not both",
            ))
        }
        (Some(EARLIEST), None) => {
            let now = engine.read(&topic, None, 1).await?;
            let first = engine
                .read(&topic, Some(Position::new(now.epoch, 0)), 1)
                .await?
                .from;
            (engine.read(&topic, Some(first), limit).await?, true)
        }
        (Some(_), None) => {
            let after = place("after")?;
            (engine.read(&topic, after, limit).await?, true)
        }
        (None, _) => {
            let before = place("before")?;
            (engine.read_back(&topic, before, limit).await?, false)
        }
    };
    let mut read = read;
    if app.hub.policy(&topic).is_ephemeral() {
        // An ephemeral topic keeps nothing: an empty page, and no gap for
        // what was never kept (its epochs come and go with its subscribers).
        read.events.clear();
        read.gap = None;
    }
    // At most `--poll-max-bytes` of event JSON (one event always), as a
    // long-poll answer: a forward page keeps its oldest events, a backward
    // page its newest, and the cursor says where the next page continues.
    let max_bytes = app.config.poll_max_bytes.max(1);
    let mut bytes = 0usize;
    let fits = |e: &std::sync::Arc<herald_core::Event>, bytes: &mut usize, first: bool| {
        *bytes += frame_cost(e.json());
        first || *bytes <= max_bytes
    };
    if forward {
        let keep = read
            .events
            .iter()
            .enumerate()
            .take_while(|(i, e)| fits(e, &mut bytes, *i == 0))
            .count();
        read.events.truncate(keep);
    } else {
        let n = read.events.len();
        let keep = read
            .events
            .iter()
            .rev()
            .enumerate()
            .take_while(|(i, e)| fits(e, &mut bytes, *i == 0))
            .count();
        read.events.drain(..n - keep);
        if let Some(first) = read.events.first() {
            read.from = Position::new(first.position.epoch, first.position.seq - 1);
        }
    }
    let end = if forward {
        read.events.last().map_or(read.from, |e| e.position)
    } else {
        read.from
    };
    let mut frames: Vec<Bytes> = Vec::with_capacity(read.events.len() + 1);
    if let Some(reason) = read.gap {
        let gap = Gap {
            topic: topic.clone(),
            reason,
            position: read.from,
        };
        frames.push(gap.json());
    }
    frames.extend(read.events.iter().map(|e| e.json().clone()));
    let parts = encode_parts(frames, &Cursor::single(&topic, end).encode());
    let body: Vec<u8> = parts.concat();
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(body),
    )
        .into_response())
}
