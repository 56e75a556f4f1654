//! What each client message does: decoded as a
//! [`ClientMessage`](herald_core::wire::ws::ClientMessage), checked against
//! the credential in force, answered with a
//! [`ServerMessage`](herald_core::wire::ws::ServerMessage).

use futures_util::SinkExt;
use herald_auth::{Action, AuthError, Credential, Denied, Principal, Source};
use herald_core::subscription::Start;
use herald_core::wire::disconnect;
use herald_core::wire::ws::{ClientMessage, Frame, ServerMessage};
use herald_core::{Cursor, Topic};
use serde_json::Value;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::read_ahead::Refusal;
use super::session::{Connection, Outcome};
use crate::error::ApiError;
use crate::publish::{publish_as, Caller, PublishItem};

/// How long the reply to a client's close may take to write.
const CLOSE_REPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How a failed read ends the connection: with the close its cause has in
/// the table ([`disconnect`]), or without one when the peer is gone.
fn read_failed(e: &WsError) -> Outcome {
    match e {
        WsError::Capacity(_) => Outcome::Close(disconnect::MESSAGE_TOO_LARGE),
        WsError::Protocol(_) => Outcome::Close(disconnect::PROTOCOL_ERROR),
        WsError::Utf8(_) => Outcome::Close(disconnect::INVALID_UTF8),
        WsError::Io(io) => match Refusal::of(io) {
            Some(Refusal::Timeout) => Outcome::Close(disconnect::MESSAGE_TIMEOUT),
            Some(Refusal::Full) => Outcome::Close(disconnect::SERVER_FULL),
            None => Outcome::Gone,
        },
        _ => Outcome::Gone,
    }
}

impl Connection {
    /// Handles what the socket read.
    pub(super) async fn on_message(&mut self, msg: Option<Result<Message, WsError>>) -> Outcome {
        let msg = match msg {
            None => return Outcome::Gone,
            Some(Ok(m)) => m,
            Some(Err(e)) => return read_failed(&e),
        };
        let rate = self.app.config.ws_message_rate;
        if !self.messages.allow(rate, rate * 2.0) {
            return self
                .send_error(
                    "rate_limited",
                    "too many messages on this connection; slow down",
                    None,
                )
                .await;
        }
        match msg {
            Message::Text(t) => self.on_text(t.as_str()).await,
            Message::Binary(_) => {
                self.send_error("bad_request", "send JSON text messages, not binary", None)
                    .await
            }
            // Pings are answered by tungstenite; a raw frame is never read.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Outcome::Continue,
            Message::Close(_) => {
                // tungstenite queued the reply that completes the close
                // handshake (RFC 6455, section 5.5.1): send it, briefly.
                let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, self.ws.flush()).await;
                Outcome::Gone
            }
        }
    }

    async fn on_text(&mut self, text: &str) -> Outcome {
        let Frame { message, reference } = match Frame::<ClientMessage>::decode(text) {
            Ok(f) => f,
            Err(e) => {
                let answer = e.answer();
                return self.send_refusal(answer.message, answer.reference).await;
            }
        };
        match message {
            ClientMessage::Subscribe {
                topic,
                since,
                history,
            } => self.subscribe(topic, since, history, reference).await,
            ClientMessage::Unsubscribe { topic } => self.unsubscribe(topic, reference).await,
            ClientMessage::Publish {
                topic,
                event,
                data,
                id,
            } => {
                let item = PublishItem {
                    topic,
                    event,
                    data,
                    id,
                };
                self.publish(item, reference).await
            }
            ClientMessage::Presence { topic } => self.presence(topic, reference).await,
            ClientMessage::Auth { token } => self.refresh(token, reference).await,
        }
    }

    async fn subscribe(
        &mut self,
        topic: String,
        since: Option<String>,
        history: Option<u64>,
        reference: Option<Value>,
    ) -> Outcome {
        let topic = match Topic::new(&topic) {
            Ok(t) => t,
            Err(e) => return self.api_error(e.into(), reference).await,
        };
        if let Err(d) = self
            .app
            .config
            .auth
            .authorize(&self.who, Action::Subscribe, &topic)
        {
            return denied(d);
        }
        // The application's subscribe hook, for a topic whose policy asks
        // it: a refusal is an `error`, the socket stays open.
        if let Err(e) =
            crate::auth::subscribe_hooks(&self.app, &self.who, std::slice::from_ref(&topic)).await
        {
            return self.api_error(e, reference).await;
        }
        // The starting point, as `since=earliest|latest` / `history=N` of
        // SSE and polling; a cursor wins.
        let named = match since.as_deref() {
            Some(crate::input::EARLIEST) => Some(Start::Earliest),
            Some(crate::input::LATEST) => Some(Start::Last(1)),
            _ => None,
        };
        let start = match (named, history) {
            (Some(_), Some(_)) => {
                let e = ApiError::bad_request(
                    "invalid_history",
                    "give one starting point: since \"earliest\", \"latest\" or history",
                );
                return self.api_error(e, reference).await;
            }
            (Some(s), None) => s,
            (None, Some(n)) => match crate::input::history_count(&n.to_string()) {
                Ok(n) => Start::Last(n),
                Err(e) => return self.api_error(e, reference).await,
            },
            (None, None) => Start::Now,
        };
        let cursor = if named.is_some() { None } else { since };
        if cursor.as_deref().is_some_and(|c| c.trim().is_empty()) {
            // As over HTTP: an empty cursor names no place, never "from now".
            return self
                .send_error(
                    "invalid_cursor",
                    "since is empty: give a cursor, a starting point, or leave since out to start from now",
                    reference,
                )
                .await;
        }
        let since = match cursor.as_deref().map(Cursor::decode) {
            None => start,
            Some(Err(e)) => return self.api_error(e.into(), reference).await,
            Some(Ok(c)) => match c.get(&topic) {
                Some(p) => Start::After(p),
                None if c.is_empty() => start,
                None => {
                    return self
                        .send_error(
                            "invalid_cursor",
                            "the cursor does not name this topic",
                            reference,
                        )
                        .await
                }
            },
        };
        match self.sub.add_from(topic.clone(), since).await {
            Ok(start) => {
                tracing::Span::current().record("topics", self.sub.topic_count());
                let client = self.enter(&topic).await;
                let cursor = Cursor::single(&topic, start).encode();
                let m = ServerMessage::Subscribed {
                    topic: topic.as_str().to_owned(),
                    cursor,
                    client,
                };
                self.reply(m, reference).await
            }
            Err(e) => self.api_error(e.into(), reference).await,
        }
    }

    async fn unsubscribe(&mut self, topic: String, reference: Option<Value>) -> Outcome {
        let topic = match Topic::new(&topic) {
            Ok(t) => t,
            Err(e) => return self.api_error(e.into(), reference).await,
        };
        let was_subscribed = self.sub.remove(&topic);
        tracing::Span::current().record("topics", self.sub.topic_count());
        self.presence.retain(|(t, _)| t != &topic);
        let m = ServerMessage::Unsubscribed {
            topic: topic.as_str().to_owned(),
            was_subscribed,
            reason: None,
        };
        self.reply(m, reference).await
    }

    async fn publish(&mut self, item: PublishItem, reference: Option<Value>) -> Outcome {
        let (rate, burst) = (
            self.app.config.ws_publish_rate,
            self.app.config.ws_publish_burst,
        );
        if !self.rate.allow(rate, burst) {
            return self
                .send_error(
                    "rate_limited",
                    "too many publishes on this connection; slow down",
                    reference,
                )
                .await;
        }
        // The one publish path: authorized against the credential in
        // force, exactly like `POST /v1/publish`.
        // A topic's publish_rate counts per connection.
        let caller = Caller::Connection(self.sub.id());
        let result = match item.into_new_event() {
            Ok(e) => publish_as(&self.app, &self.who, &caller, vec![e])
                .await
                .and_then(|mut v| {
                    v.pop()
                        .ok_or_else(|| ApiError::unavailable("the engine answered no event"))
                }),
            Err(e) => Err(e),
        };
        match result {
            Ok(e) => {
                let m = ServerMessage::Published {
                    topic: e.topic.as_str().to_owned(),
                    id: e.id(),
                };
                self.reply(m, reference).await
            }
            Err(e) => self.api_error(e, reference).await,
        }
    }

    /// Makes the connection present on `topic` (just subscribed), if its
    /// policy tracks presence and it is not present there yet. Returns the
    /// connection's presence id when the topic tracks presence.
    async fn enter(&mut self, topic: &Topic) -> Option<String> {
        if !self.app.hub.policy(topic).tracks_presence() {
            return None;
        }
        if self.presence.iter().any(|(t, _)| t == topic) {
            return self.client.as_deref().map(str::to_owned);
        }
        let hub = &self.app.hub;
        let client = self
            .client
            .get_or_insert_with(|| hub.new_client_id().into());
        let member = crate::presence::member(&self.who, client, herald_core::Transport::WebSocket);
        let id = client.to_string();
        let guard = hub.enter(topic, member, std::time::Duration::ZERO).await;
        self.presence.push((topic.clone(), guard));
        Some(id)
    }

    /// `presence {topic}`: the topic's members, with subscribe rights.
    async fn presence(&mut self, topic: String, reference: Option<Value>) -> Outcome {
        let topic = match Topic::new(&topic) {
            Ok(t) => t,
            Err(e) => return self.api_error(e.into(), reference).await,
        };
        if let Err(d) = self
            .app
            .config
            .auth
            .authorize(&self.who, Action::Presence, &topic)
        {
            return self.api_error(d.into(), reference).await;
        }
        if let Err(e) =
            crate::auth::subscribe_hooks(&self.app, &self.who, std::slice::from_ref(&topic)).await
        {
            return self.api_error(e, reference).await;
        }
        match crate::presence::members(&self.app, &topic).await {
            Ok(clients) => {
                let m = ServerMessage::Presence {
                    topic: topic.as_str().to_owned(),
                    clients,
                };
                self.reply(m, reference).await
            }
            Err(e) => self.api_error(e, reference).await,
        }
    }

    /// `auth {token}`: a fresh credential for the same subject.
    async fn refresh(&mut self, token: String, reference: Option<Value>) -> Outcome {
        let fresh = self
            .app
            .config
            .auth
            .authenticate_async(Some(Credential::new(token, Source::Message)))
            .await;
        let who = match fresh {
            Ok(who) => who,
            Err(AuthError::Unavailable(_)) => {
                return Outcome::Close(disconnect::ENGINE_UNAVAILABLE)
            }
            Err(AuthError::Invalid(_)) => return Outcome::Close(disconnect::INVALID_CREDENTIAL),
        };
        // On a server without keys whose connect hook says who callers are,
        // a token means nothing ("open"): it may not replace the hook's answer.
        if who == Principal::Open
            && self
                .app
                .config
                .hooks
                .as_ref()
                .is_some_and(|h| h.asks_connect())
        {
            return Outcome::Close(disconnect::INVALID_CREDENTIAL);
        }
        // A refresh moves the deadline; it may not change who the
        // connection is (its subscriptions were authorized for that subject).
        if matches!(self.who, Principal::User(_)) && who.subject() != self.who.subject() {
            return self
                .send_error(
                    "subject_mismatch",
                    "a refreshed credential must name the same subject (sub)",
                    reference,
                )
                .await;
        }
        let m = ServerMessage::Authenticated {
            sub: who.subject().map(str::to_owned),
            expires_at: who.expires_at(),
        };
        self.set_credential(who);
        match self.reply(m, reference).await {
            Outcome::Continue => self.recheck_subscriptions().await,
            ended => ended,
        }
    }

    /// Re-authorizes every current subscription against the credential now
    /// in force: a topic it no longer grants is unsubscribed, and the client
    /// is told with `{"type":"unsubscribed","topic","was_subscribed":true,
    /// "reason":"forbidden"}`.
    async fn recheck_subscriptions(&mut self) -> Outcome {
        let revoked: Vec<Topic> = self
            .sub
            .topics()
            .filter(|t| {
                self.app
                    .config
                    .auth
                    .authorize(&self.who, Action::Subscribe, t)
                    .is_err()
            })
            .cloned()
            .collect();
        for topic in revoked {
            self.sub.remove(&topic);
            self.presence.retain(|(t, _)| t != &topic);
            let m = ServerMessage::Unsubscribed {
                topic: topic.as_str().to_owned(),
                was_subscribed: true,
                reason: Some(disconnect::FORBIDDEN.reason.to_owned()),
            };
            match self.reply(m, None).await {
                Outcome::Continue => {}
                ended => return ended,
            }
        }
        Outcome::Continue
    }

    /// Answers `e` as an `error` with its HTTP code (and counts it).
    async fn api_error(&mut self, e: ApiError, reference: Option<Value>) -> Outcome {
        self.send_error(e.code, &e.message, reference).await
    }
}

/// A refused topic closes the socket: 4001 without a credential, 4003 with one.
fn denied(d: Denied) -> Outcome {
    match d {
        Denied::Unauthenticated(_) | Denied::Credential(_) => {
            Outcome::Close(disconnect::CREDENTIAL_REQUIRED)
        }
        Denied::Forbidden { .. } | Denied::NotAdmin => Outcome::Close(disconnect::FORBIDDEN),
    }
}
