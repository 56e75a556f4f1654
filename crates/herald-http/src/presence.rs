//! `GET /v1/presence?topic=T`: who is subscribed to a topic (DESIGN.md,
//! "Presence"), and the presence entries every transport makes.
//!
//! The answer is `{"topic": T, "clients": [{"client","user","info",
//! "transport"}]}`, ordered by client id, on every node the engine spans.
//! Needs subscribe rights on `T`, checked by the one authorize function as
//! [`Action::Presence`]. A topic whose policy does not track presence is
//! 400 `presence_disabled` (the list would always be empty, which would
//! read as "nobody is here").
//!
//! Each connection is present on each presence topic it receives: an SSE
//! stream and a WebSocket from the moment the topic is subscribed until
//! the connection ends or unsubscribes; a long poll while it is held and
//! for `--poll-presence-grace` after (see [`poll_client_id`] for the id it
//! keeps across polls).

use std::hash::{Hash, Hasher};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_auth::{Action, Principal};
use herald_core::presence::Member;
use herald_core::{PresenceGuard, Topic, Transport};

use crate::auth::{authenticate, authorize_all};
use crate::error::ApiError;
use crate::input::Query;
use crate::AppState;

/// `GET /v1/presence`.
///
/// Errors: 400 `invalid_topic` (missing or invalid), 400
/// `presence_disabled`, 401, 403, 503 when the engine's presence store
/// cannot be read.
pub(crate) async fn handler(
    State(app): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let query = Query::parse(uri.query())?;
    let topic = query.one_topic("presence")?;
    let (who, _) = authenticate(&app, &headers, query.pairs()).await?;
    authorize_all(&app, &who, Action::Presence, std::slice::from_ref(&topic))?;
    let clients = members(&app, &topic).await?;
    Ok(Json(serde_json::json!({ "topic": topic.as_str(), "clients": clients })).into_response())
}

/// The members of `topic`, or 400 `presence_disabled` when its policy does
/// not track presence. The caller has authorized [`Action::Presence`].
pub(crate) async fn members(app: &AppState, topic: &Topic) -> Result<Vec<Member>, ApiError> {
    if !app.hub.policy(topic).tracks_presence() {
        return Err(ApiError::bad_request(
            "presence_disabled",
            format!(
                "{} has no presence: set presence = true in a [[topics]] policy matching it",
                topic.as_str()
            ),
        ));
    }
    Ok(app.hub.presence(topic).await?)
}

/// The presence entry of a connection of `who`: `user` is the credential's
/// `sub` (empty without one), `info` its `info` claim (or `null`).
pub(crate) fn member(who: &Principal, client: &str, transport: Transport) -> Member {
    Member {
        client: client.into(),
        user: who.subject().unwrap_or("").into(),
        info: who.info().cloned().unwrap_or(serde_json::Value::Null),
        transport,
    }
}

/// Enters `client` on each of `topics` that tracks presence; the guards
/// keep it there (dropping them leaves after `linger`). Topics without
/// presence cost a policy lookup and nothing else.
pub(crate) async fn enter_all(
    app: &AppState,
    who: &Principal,
    topics: &[Topic],
    client: &str,
    transport: Transport,
    linger: Duration,
) -> Vec<PresenceGuard> {
    let mut guards = Vec::new();
    for t in topics {
        if app.hub.policy(t).tracks_presence() {
            guards.push(
                app.hub
                    .enter(t, member(who, client, transport), linger)
                    .await,
            );
        }
    }
    guards
}

/// Long-poll presence ids one caller (a `sub`, else an address) may hold
/// at once, lingering ones included.
pub const POLL_IDS_PER_CALLER: usize = 8;
/// Long-poll presence entries (ids × topics) the server holds at most.
pub const MAX_POLL_ENTRIES: usize = 100_000;

/// Bounds long-poll presence. A poll's entries outlive it by the grace
/// period, so the connection limits do not bound them: without this, one
/// caller polling with ever new `client` values (or many callers) would
/// pile up entries. A caller holds at most [`POLL_IDS_PER_CALLER`] poll
/// ids, the server at most [`MAX_POLL_ENTRIES`] entries; a poll beyond
/// either is served but not counted as present.
#[derive(Default)]
pub(crate) struct PollPresence {
    callers: std::sync::Mutex<PollCallers>,
}

/// A caller's poll ids: (poll id, presence topics, present until).
type PollIds = Vec<(Box<str>, usize, tokio::time::Instant)>;

#[derive(Default)]
struct PollCallers {
    /// Caller → its poll ids.
    by_caller: std::collections::HashMap<Box<str>, PollIds>,
    /// Sum of the topics of every live id.
    entries: usize,
}

impl PollCallers {
    /// Forgets ids whose presence has ended.
    fn expire(&mut self, now: tokio::time::Instant) {
        let mut gone = 0;
        self.by_caller.retain(|_, ids| {
            ids.retain(|(_, n, until)| {
                let live = *until > now;
                if !live {
                    gone += n;
                }
                live
            });
            !ids.is_empty()
        });
        self.entries = self.entries.saturating_sub(gone);
    }
}

impl PollPresence {
    /// Whether the poll `client` of `caller` on `topics` presence topics
    /// may be present until `until` (and records it).
    pub(crate) fn admit(
        &self,
        caller: &str,
        client: &str,
        topics: usize,
        until: tokio::time::Instant,
    ) -> bool {
        let now = tokio::time::Instant::now();
        let mut c = self.callers.lock().unwrap_or_else(|e| e.into_inner());
        if c.entries + topics > MAX_POLL_ENTRIES {
            c.expire(now);
        }
        let live_ids = c.by_caller.get(caller).map_or(0, |ids| {
            ids.iter().filter(|(_, _, until)| *until > now).count()
        });
        if let Some(ids) = c.by_caller.get_mut(caller) {
            if let Some(known) = ids.iter_mut().find(|(id, _, _)| &**id == client) {
                known.2 = known.2.max(until);
                return true;
            }
        }
        if live_ids >= POLL_IDS_PER_CALLER {
            let entries = c.entries;
            // Expired ids of this caller make room.
            if let Some(ids) = c.by_caller.get_mut(caller) {
                let before: usize = ids.iter().map(|(_, n, _)| n).sum();
                ids.retain(|(_, _, until)| *until > now);
                let after: usize = ids.iter().map(|(_, n, _)| n).sum();
                c.entries = entries - (before - after);
            }
            let live = c.by_caller.get(caller).map_or(0, Vec::len);
            if live >= POLL_IDS_PER_CALLER {
                return false;
            }
        }
        if c.entries + topics > MAX_POLL_ENTRIES {
            return false;
        }
        c.entries += topics;
        c.by_caller
            .entry(caller.into())
            .or_default()
            .push((client.into(), topics, until));
        true
    }

    /// Entries counted now.
    #[cfg(test)]
    pub(crate) fn entries(&self) -> usize {
        self.callers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entries
    }
}

/// Who a poll's presence counts against: the credential's `sub`, else the
/// client address.
pub(crate) fn poll_caller(who: &Principal, peer: Option<std::net::IpAddr>) -> String {
    match who.subject() {
        Some(sub) => format!("sub:{sub}"),
        None => format!(
            "addr:{}",
            peer.map_or("unknown".to_owned(), |p| p.to_string())
        ),
    }
}

/// The id a long-polling client keeps across its polls, so that its
/// presence lasts from one poll to the next: `p-` and 16 hex digits of a
/// hash of who polls (the credential's `sub`, else the peer address) and
/// the request's `client` parameter (the browser client sends a random id
/// per page; without it, the `User-Agent`). Two polls of the same user
/// with the same `client` are one presence entry; a client cannot take
/// another user's entry. The hash is the same on every node (fixed keys),
/// so a client moving between nodes keeps its id.
pub(crate) fn poll_client_id(
    who: &Principal,
    peer: Option<std::net::IpAddr>,
    client: Option<&str>,
    headers: &HeaderMap,
) -> String {
    #[allow(deprecated)] // SipHash with fixed keys: stable across nodes and runs.
    let mut h = std::hash::SipHasher::new_with_keys(0x6865_7261_6c64, 0x706f_6c6c);
    match who.subject() {
        Some(sub) => ("sub", sub).hash(&mut h),
        None => ("addr", peer).hash(&mut h),
    }
    match client {
        Some(c) => ("client", c).hash(&mut h),
        None => (
            "agent",
            headers
                .get(axum::http::header::USER_AGENT)
                .map(|v| v.as_bytes()),
        )
            .hash(&mut h),
    }
    format!("p-{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn poll_presence_is_bounded_per_caller_and_in_all() {
        let p = PollPresence::default();
        let until = tokio::time::Instant::now() + Duration::from_secs(30);
        for i in 0..POLL_IDS_PER_CALLER {
            assert!(p.admit("sub:ada", &format!("c{i}"), 64, until));
        }
        // A known id is always let through (its next poll); a new one is not.
        assert!(p.admit("sub:ada", "c0", 64, until));
        assert!(!p.admit("sub:ada", "c-new", 64, until));
        assert!(p.admit("sub:bob", "c0", 64, until));
        assert_eq!(p.entries(), 64 * (POLL_IDS_PER_CALLER + 1));
        // Once the grace periods end, room again.
        tokio::time::advance(Duration::from_secs(31)).await;
        let later = tokio::time::Instant::now() + Duration::from_secs(30);
        assert!(p.admit("sub:ada", "c-new", 64, later));
        // The server-wide cap.
        let mut admitted = 0;
        for i in 0..(MAX_POLL_ENTRIES / 64 + 10) {
            if p.admit(
                &format!("addr:10.0.{}.{}", i / 250, i % 250),
                "x",
                64,
                later,
            ) {
                admitted += 1;
            }
        }
        assert!(admitted <= MAX_POLL_ENTRIES / 64);
        assert!(p.entries() <= MAX_POLL_ENTRIES);
    }
}
