//! `GET /v1/ws`: WebSocket, JSON text messages both ways.
//!
//! Built on axum's WebSocket (tokio-tungstenite underneath: a complete,
//! Autobahn-tested RFC 6455 implementation that validates UTF-8, reassembles
//! fragments and runs the close handshake). Event frames are the JSON bytes
//! each event encodes once; every subscriber sends the same bytes.
//!
//! Client → server: `subscribe {topic, since?}`, `unsubscribe {topic}`,
//! `publish {topic, event?, data, id?}`, `auth {token}`; any may carry a
//! `ref` that the answer echoes. Server → client: `event`, `subscribed`,
//! `unsubscribed`, `published`, `error`. A malformed message gets an `error`
//! and the connection stays usable.
//!
//! Every action goes through the same checks as over HTTP: a `subscribe` is
//! authorized like `GET /v1/sse`, a `publish` takes the one publish path of
//! `POST /v1/publish` ([`crate::publish::publish_as`]), both against the
//! credential in force at that moment.
//!
//! Credentials over time (DESIGN.md): the connection's credential has a
//! deadline, its `exp`. At the deadline the socket is closed with 4001
//! `token_expired`, unless the client sent a fresh `{"type":"auth"}` for the
//! same `sub` before it, which moves the deadline (answered `authenticated`
//! with `expires_at`).
//!
//! Abuse: every client message counts against a per-connection rate
//! ([`HttpConfig::ws_message_rate`](crate::HttpConfig)); malformed, refused
//! and rate-limited messages count against an error allowance, and a
//! connection that exhausts it is closed with 1008.
//!
//! Close codes: 1000 shutdown (reconnect), 1008 slow consumer or policy
//! (too many errors), 1009 message too large, 1011 peer stopped answering
//! pings, 1013 engine unavailable, 4001 missing/invalid/expired credential,
//! 4003 forbidden topic.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use herald_core::wire::json::encode_error;
use herald_core::{CloseReason, Cursor, Delivery, Subscription, Topic, Transport};
use serde::Deserialize;
use tokio::time::{timeout, Instant, Sleep};

use crate::auth::{deadline_of, origin_allowed};
use crate::error::ApiError;
use crate::limits::Slot;
use crate::publish::{publish_as, PublishItem};
use crate::server::ConnectionHandle;
use crate::transport::query_pairs;
use crate::AppState;
use axum::http::{HeaderMap, StatusCode, Uri};
use herald_auth::{Action, AuthError, Credential, Denied, Principal, Source};

/// WebSocket close codes Herald uses.
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const TRY_AGAIN_LATER: u16 = 1013;
    pub const UNAUTHORIZED: u16 = 4001;
    pub const FORBIDDEN: u16 = 4003;
}

pub(crate) async fn handler(
    State(app): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    conn: Option<axum::Extension<ConnectionHandle>>,
    ws: WebSocketUpgrade,
) -> Response {
    if app.hub.is_shutting_down() {
        return ApiError::unavailable("the server is shutting down").into_response();
    }
    let pairs = query_pairs(uri.query());
    let credential = match crate::auth::credential(&headers, &pairs, &app.config.auth_cookie) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    // Cross-site WebSocket hijacking: a cookie rides along with any page's
    // upgrade, so a cookie credential is only honoured from allowed origins.
    if credential
        .as_ref()
        .is_some_and(|c| c.source == Source::Cookie)
        && !origin_allowed(&headers, &app.config.ws_allowed_origins)
    {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            "this origin may not open a WebSocket with the cookie credential",
        )
        .into_response();
    }
    // Refusals of the credential are sent as close 4001 after the upgrade,
    // where browsers can see them.
    let who = app.config.auth.authenticate_async(credential).await;
    let slot = match app.connection_slot(conn.map(|c| c.0.peer.ip()), &headers) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let max = app.config.ws_max_message_bytes;
    ws.max_message_size(max)
        .max_frame_size(max)
        // Small buffers: an idle connection should cost little memory
        // (subscribers send little; a bigger message just takes more reads).
        .read_buffer_size(1024)
        .write_buffer_size(16 * 1024)
        .on_upgrade(move |socket| run(app, socket, who, slot))
}

/// Messages a client sends.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ClientMessage {
    Subscribe {
        topic: String,
        #[serde(default)]
        since: Option<String>,
    },
    Unsubscribe {
        topic: String,
    },
    Publish {
        topic: String,
        #[serde(default)]
        event: Option<String>,
        data: serde_json::Value,
        #[serde(default)]
        id: Option<String>,
    },
    Auth {
        token: String,
    },
}

/// A token bucket for the per-connection publish rate.
struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    fn new(rate: f64, burst: f64) -> Self {
        RateLimit {
            rate,
            burst: burst.max(1.0),
            tokens: burst.max(1.0),
            at: Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Connection {
    app: AppState,
    /// Not split into a sink and a stream: the loop below reads or writes,
    /// never both at once, and a split pair costs a lock on every write.
    ws: WebSocket,
    sub: Subscription,
    rate: RateLimit,
    /// Every client message, whatever its kind.
    messages: RateLimit,
    /// Errors the client may still cause before the connection is closed.
    errors: RateLimit,
    who: Principal,
    /// Fires at the credential's deadline; `None` for a credential without one.
    deadline: Option<std::pin::Pin<Box<Sleep>>>,
}

enum Outcome {
    Continue,
    Close(u16, &'static str),
    Gone,
}

async fn run(app: AppState, socket: WebSocket, who: Result<Principal, AuthError>, _slot: Slot) {
    let _guard = app.hub.metrics().connection(Transport::WebSocket);
    let sub = app.hub.subscribe();
    let rate = RateLimit::new(app.config.ws_publish_rate, app.config.ws_publish_burst);
    let messages = RateLimit::new(app.config.ws_message_rate, app.config.ws_message_rate * 2.0);
    let errors = RateLimit::new(1.0, app.config.ws_error_burst);
    let mut c = Connection {
        app,
        ws: socket,
        sub,
        rate,
        messages,
        errors,
        who: Principal::Anonymous,
        deadline: None,
    };
    let mut refused = None;
    match who {
        Ok(w) => c.set_credential(w),
        Err(e) => refused = Some(e),
    }
    let keepalive = c.app.config.keepalive;
    let pong_timeout = c.app.config.ws_pong_timeout;
    let mut ping = tokio::time::interval_at(Instant::now() + keepalive, keepalive);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_seen = Instant::now();
    let outcome = loop {
        if refused.take().is_some() {
            break Outcome::Close(close_code::UNAUTHORIZED, "invalid credential");
        }
        let step = tokio::select! {
            // `next` is cancel-safe: a frame read in part stays buffered.
            msg = c.ws.next() => {
                last_seen = Instant::now();
                // Boxed: handling a client message (subscribe, publish) is a
                // large future, and every idle connection's task would
                // otherwise be sized for it.
                Box::pin(c.on_message(msg)).await
            }
            d = c.sub.next() => c.on_delivery(d).await,
            _ = expired(&mut c.deadline) => {
                Outcome::Close(close_code::UNAUTHORIZED, "token_expired")
            }
            _ = ping.tick() => {
                if last_seen.elapsed() > pong_timeout {
                    Outcome::Close(close_code::INTERNAL, "no pong")
                } else {
                    c.send(Message::Ping(bytes::Bytes::new())).await
                }
            }
        };
        match step {
            Outcome::Continue => {}
            other => break other,
        }
    };
    if let Outcome::Close(code, reason) = outcome {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let _ = timeout(
            Duration::from_secs(2),
            c.ws.send(Message::Close(Some(frame))),
        )
        .await;
        // Wait briefly for the peer's close reply so the handshake completes.
        let _ = timeout(Duration::from_secs(2), async {
            while let Some(Ok(m)) = c.ws.next().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

impl Connection {
    /// Puts `who` in force, with its deadline.
    fn set_credential(&mut self, who: Principal) {
        self.deadline = deadline_of(&who).map(|d| Box::pin(tokio::time::sleep_until(d)));
        self.who = who;
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
            let v = serde_json::json!({
                "type": "unsubscribed",
                "topic": topic.as_str(),
                "was_subscribed": true,
                "reason": "forbidden",
            });
            match self.send_json(v).await {
                Outcome::Continue => {}
                ended => return ended,
            }
        }
        Outcome::Continue
    }

    /// Counts an error against the connection's allowance: `Continue` while
    /// some is left, else the close that ends an abusive connection.
    fn count_error(&mut self) -> Outcome {
        if self.errors.allow() {
            Outcome::Continue
        } else {
            Outcome::Close(close_code::POLICY, "too many errors")
        }
    }

    async fn send(&mut self, m: Message) -> Outcome {
        match timeout(self.app.config.write_timeout, self.ws.send(m)).await {
            Ok(Ok(())) => Outcome::Continue,
            _ => Outcome::Gone,
        }
    }

    async fn send_json(&mut self, v: serde_json::Value) -> Outcome {
        self.send(Message::Text(v.to_string().into())).await
    }

    /// Answers an error (and counts it).
    async fn send_error(
        &mut self,
        code: &str,
        message: &str,
        reference: Option<serde_json::Value>,
    ) -> Outcome {
        if let Outcome::Close(c, r) = self.count_error() {
            return Outcome::Close(c, r);
        }
        let mut v: serde_json::Value =
            serde_json::from_str(&encode_error(code, message)).unwrap_or_default();
        if let (Some(r), Some(o)) = (reference, v.as_object_mut()) {
            o.insert("ref".into(), r);
        }
        self.send_json(v).await
    }

    /// Writes `first` and whatever else is already queued (up to
    /// `max_coalesce`) with one flush, all under one write timeout (a timer
    /// per event per subscriber would cost more than the write).
    async fn on_delivery(&mut self, first: Delivery) -> Outcome {
        let write_timeout = self.app.config.write_timeout;
        timeout(write_timeout, self.write_deliveries(first))
            .await
            .unwrap_or(Outcome::Gone)
    }

    async fn write_deliveries(&mut self, first: Delivery) -> Outcome {
        let mut next = Some(first);
        let mut n = 0;
        while let Some(d) = next.take() {
            let frame = match d {
                Delivery::Event(e) => {
                    self.app
                        .hub
                        .metrics()
                        .events_delivered
                        .fetch_add(1, Ordering::Relaxed);
                    e.json().clone()
                }
                Delivery::Gap(g) => g.json(),
                Delivery::Closed(reason) => {
                    let _ = self.ws.flush().await;
                    return match reason {
                        CloseReason::Shutdown => {
                            // Spread the closes of a shutdown over the drain
                            // window, so clients do not all come back at once.
                            let drain = self.app.config.shutdown_drain;
                            tokio::time::sleep(drain.mul_f64(fastrand::f64())).await;
                            Outcome::Close(close_code::NORMAL, "server shutting down")
                        }
                        CloseReason::SlowConsumer => {
                            Outcome::Close(close_code::POLICY, "slow consumer")
                        }
                        CloseReason::EngineUnavailable => {
                            Outcome::Close(close_code::TRY_AGAIN_LATER, "engine unavailable")
                        }
                    };
                }
            };
            let text = match Utf8Bytes::try_from(frame) {
                Ok(t) => t,
                Err(_) => continue,
            };
            // Feed without flushing; one flush sends everything queued.
            if self.ws.feed(Message::Text(text)).await.is_err() {
                return Outcome::Gone;
            }
            n += 1;
            if n < self.app.config.max_coalesce && self.sub.queued() > 0 {
                next = self.sub.next_ready().await;
            }
        }
        match self.ws.flush().await {
            Ok(()) => Outcome::Continue,
            Err(_) => Outcome::Gone,
        }
    }

    async fn on_message(&mut self, msg: Option<Result<Message, axum::Error>>) -> Outcome {
        let msg = match msg {
            None => return Outcome::Gone,
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                return if is_too_large(e) {
                    Outcome::Close(close_code::TOO_BIG, "message too large")
                } else {
                    Outcome::Gone
                };
            }
        };
        if !self.messages.allow() {
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
            Message::Ping(_) | Message::Pong(_) => Outcome::Continue,
            Message::Close(_) => Outcome::Gone,
        }
    }

    async fn on_text(&mut self, text: &str) -> Outcome {
        let value: serde_json::Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                return self
                    .send_error(
                        "invalid_json",
                        &format!("message is not valid JSON: {e}"),
                        None,
                    )
                    .await
            }
        };
        let reference = value.get("ref").cloned();
        let msg: ClientMessage = match serde_json::from_value(value) {
            Ok(m) => m,
            Err(e) => {
                return self
                    .send_error("invalid_message", &e.to_string(), reference)
                    .await
            }
        };
        match msg {
            ClientMessage::Subscribe { topic, since } => {
                self.subscribe(topic, since, reference).await
            }
            ClientMessage::Unsubscribe { topic } => {
                let topic = match Topic::new(&topic) {
                    Ok(t) => t,
                    Err(e) => return self.api_error(e.into(), reference).await,
                };
                let was = self.sub.remove(&topic);
                let mut v = serde_json::json!({"type": "unsubscribed", "topic": topic.as_str(), "was_subscribed": was});
                put_ref(&mut v, reference);
                self.send_json(v).await
            }
            ClientMessage::Publish {
                topic,
                event,
                data,
                id,
            } => {
                if !self.rate.allow() {
                    return self
                        .send_error(
                            "rate_limited",
                            "too many publishes on this connection; slow down",
                            reference,
                        )
                        .await;
                }
                let item = PublishItem {
                    topic,
                    event,
                    data,
                    id,
                };
                // The one publish path: authorized against the credential in
                // force, exactly like `POST /v1/publish`.
                let result = match item.into_new_event() {
                    Ok(e) => publish_as(&self.app, &self.who, vec![e])
                        .await
                        .and_then(|mut v| {
                            v.pop().ok_or_else(|| {
                                ApiError::unavailable("the engine answered no event")
                            })
                        }),
                    Err(e) => Err(e),
                };
                match result {
                    Ok(e) => {
                        let mut v = serde_json::json!({"type": "published", "topic": e.topic.as_str(), "id": e.id()});
                        put_ref(&mut v, reference);
                        self.send_json(v).await
                    }
                    Err(e) => self.api_error(e, reference).await,
                }
            }
            ClientMessage::Auth { token } => {
                match self
                    .app
                    .config
                    .auth
                    .authenticate_async(Some(Credential::new(token, Source::Message)))
                    .await
                {
                    Ok(who) => {
                        // A refresh moves the deadline; it may not change
                        // who the connection is (its subscriptions were
                        // authorized for that subject).
                        if matches!(self.who, Principal::User(_))
                            && who.subject() != self.who.subject()
                        {
                            return self
                                .send_error(
                                    "subject_mismatch",
                                    "a refreshed credential must name the same subject (sub)",
                                    reference,
                                )
                                .await;
                        }
                        let mut v = serde_json::json!({
                            "type": "authenticated",
                            "sub": who.subject(),
                            "expires_at": who.expires_at(),
                        });
                        self.set_credential(who);
                        put_ref(&mut v, reference);
                        match self.send_json(v).await {
                            Outcome::Continue => self.recheck_subscriptions().await,
                            ended => ended,
                        }
                    }
                    Err(_) => Outcome::Close(close_code::UNAUTHORIZED, "invalid credential"),
                }
            }
        }
    }

    async fn subscribe(
        &mut self,
        topic: String,
        since: Option<String>,
        reference: Option<serde_json::Value>,
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
        let since = match since.as_deref().map(Cursor::decode) {
            None => None,
            Some(Err(e)) => return self.api_error(e.into(), reference).await,
            Some(Ok(c)) => match c.get(&topic) {
                Some(p) => Some(p),
                None if c.is_empty() => None,
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
        match self.sub.add(topic.clone(), since).await {
            Ok(start) => {
                let cursor = Cursor::single(&topic, start).encode();
                let mut v = serde_json::json!({"type": "subscribed", "topic": topic.as_str(), "cursor": cursor});
                put_ref(&mut v, reference);
                self.send_json(v).await
            }
            Err(e) => self.api_error(e.into(), reference).await,
        }
    }

    async fn api_error(&mut self, e: ApiError, reference: Option<serde_json::Value>) -> Outcome {
        self.send_error(e.code, &e.message, reference).await
    }
}

/// Resolves at the credential's deadline; never without one.
async fn expired(deadline: &mut Option<std::pin::Pin<Box<Sleep>>>) {
    match deadline {
        Some(d) => d.await,
        None => std::future::pending().await,
    }
}

/// A refused topic closes the socket: 4001 without a credential, 4003 with one.
fn denied(d: Denied) -> Outcome {
    match d {
        Denied::Unauthenticated(_) | Denied::Credential(_) => {
            Outcome::Close(close_code::UNAUTHORIZED, "credential required")
        }
        Denied::Forbidden { .. } => Outcome::Close(close_code::FORBIDDEN, "forbidden topic"),
    }
}

fn put_ref(v: &mut serde_json::Value, reference: Option<serde_json::Value>) {
    if let (Some(r), Some(o)) = (reference, v.as_object_mut()) {
        o.insert("ref".into(), r);
    }
}

fn is_too_large(e: axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match e.into_inner().downcast::<WsError>() {
        Ok(e) => matches!(*e, WsError::Capacity(_)),
        Err(_) => false,
    }
}
