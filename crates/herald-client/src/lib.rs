//! # herald-client
//!
//! A Rust client for a Herald server over its three transports, used by the
//! `herald publish` / `herald subscribe` commands, the integration tests and
//! the load generator.
//!
//! # Layout
//!
//! - [`sse`]: the WHATWG-exact `text/event-stream` parser, re-exported from
//!   `herald_core::wire::sse` (pure, fuzzed, property-tested against the encoder).
//! - [`Client`]: publish, and open an [`SseStream`], a [`WsClient`] or a long [`Client::poll`].
//!   WebSocket messages and long-poll answers are read with the server's own
//!   types, [`herald_core::wire::ws`] and [`herald_core::wire::poll`].
//!
//! # Example
//!
//! ```no_run
//! # async fn run() -> Result<(), herald_client::ClientError> {
//! let client = herald_client::Client::new("http://127.0.0.1:8080")?;
//! let mut stream = client.sse(&["orders/123"], None).await?;
//! client.publish("orders/123", serde_json::json!({"status": "shipped"}), None).await?;
//! while let Some(event) = stream.next_event().await? {
//!     println!("{} {}", event.event, event.data);
//! }
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod sse;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio_tungstenite::tungstenite::Message;

pub use sse::{SseEvent, SseItem, SseParser};

/// What went wrong talking to Herald.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server address is not an `http://` URL.
    #[error("invalid URL: {0}")]
    Url(String),
    /// The request could not be sent or its answer not read.
    #[error("HTTP error: {0}")]
    Http(String),
    /// The server answered with an error status; `body` is its JSON error.
    #[error("server answered {status}: {body}")]
    Status {
        /// The HTTP status.
        status: StatusCode,
        /// The answer's body, as text.
        body: String,
    },
    /// The WebSocket handshake or a frame failed.
    #[error("WebSocket error: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    /// The server sent JSON this client does not understand.
    #[error("invalid JSON from server: {0}")]
    Json(#[from] serde_json::Error),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
}

type HttpClient = hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>;

/// A connection to one Herald server.
#[derive(Clone)]
pub struct Client {
    base: String,
    http: HttpClient,
    token: Option<String>,
}

/// The answer to a long poll, `{"events": [...], "cursor"}`: the server's
/// [`PollAnswer`](herald_core::wire::poll::PollAnswer) with each event as a
/// JSON value (decode one with [`EventMessage::decode`] or read the whole
/// answer with `PollAnswer::<EventMessage>::decode`).
pub type PollResponse = herald_core::wire::poll::PollAnswer;

pub use herald_core::wire::json::EventMessage;
pub use herald_core::wire::ws::{ClientMessage, ServerMessage};

/// What a [`WsClient`] reads: a server message with the `ref` it echoes, or
/// the close frame that ended the socket.
#[derive(Debug, Clone, PartialEq)]
pub enum WsIncoming {
    /// A message of Herald's protocol.
    Message(herald_core::wire::ws::Frame<ServerMessage>),
    /// The server closed the socket: its close code (1005 when the frame
    /// had none) and reason (see `herald_core::wire::disconnect`).
    Close {
        /// The close code.
        code: u16,
        /// The close reason text.
        reason: String,
    },
}

impl Client {
    /// `base` is the server's root, e.g. `http://127.0.0.1:8080`.
    pub fn new(base: &str) -> Result<Client, ClientError> {
        let base = base.trim_end_matches('/').to_owned();
        base.parse::<http::Uri>()
            .map_err(|e| ClientError::Url(format!("{base}: {e}")))?;
        if !base.starts_with("http://") {
            return Err(ClientError::Url(format!(
                "{base}: only http:// is supported"
            )));
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Client {
            base,
            http,
            token: None,
        })
    }

    /// Sends `Authorization: Bearer <token>` with every request.
    pub fn with_token(mut self, token: impl Into<String>) -> Client {
        self.token = Some(token.into());
        self
    }

    /// The server's root URL, without a trailing `/`.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str, query: &[(&str, &str)]) -> String {
        let mut s = format!("{}{}", self.base, path);
        if !query.is_empty() {
            let mut ser = form_urlencoded::Serializer::new(String::new());
            for (k, v) in query {
                ser.append_pair(k, v);
            }
            s.push('?');
            s.push_str(&ser.finish());
        }
        s
    }

    /// Sends a request and returns the response with its body unread.
    pub async fn request(
        &self,
        method: http::Method,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<http::Response<Incoming>, ClientError> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path_and_query));
        if let Some(t) = &self.token {
            if !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            {
                req = req.header("authorization", format!("Bearer {t}"));
            }
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        self.http
            .request(req)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))
    }

    /// POSTs a raw publish body; returns the status and the JSON answer.
    pub async fn publish_raw(
        &self,
        body: impl Into<Bytes>,
        content_type: &str,
    ) -> Result<(StatusCode, serde_json::Value), ClientError> {
        let resp = self
            .request(
                http::Method::POST,
                "/v1/publish",
                &[("content-type", content_type)],
                body.into(),
            )
            .await?;
        let status = resp.status();
        let bytes = read_body(resp.into_body()).await?;
        let v = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Ok((status, v))
    }

    /// Sends a server API request (`method` `path_and_query`, an optional
    /// JSON body) and returns its JSON answer. Needs the publisher key or a
    /// token with the `admin` claim as this client's token.
    ///
    /// # Errors
    /// [`ClientError::Status`] for an error answer (401, 403, 400, 503),
    /// [`ClientError::Http`] when the server cannot be reached,
    /// [`ClientError::Json`] for an answer that is not JSON.
    pub async fn server_api(
        &self,
        method: http::Method,
        path_and_query: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, ClientError> {
        let (headers, bytes): (&[(&str, &str)], Bytes) = match body {
            Some(b) => (
                &[("content-type", "application/json")],
                Bytes::from(b.to_string()),
            ),
            None => (&[], Bytes::new()),
        };
        let resp = self.request(method, path_and_query, headers, bytes).await?;
        let status = resp.status();
        let bytes = read_body(resp.into_body()).await?;
        if !status.is_success() {
            return Err(ClientError::Status {
                status,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// `POST /v1/disconnect {"user"}`: closes every connection of `user`
    /// on every node. Errors as [`Client::server_api`].
    pub async fn disconnect_user(&self, user: &str) -> Result<serde_json::Value, ClientError> {
        let body = serde_json::json!({ "user": user });
        self.server_api(http::Method::POST, "/v1/disconnect", Some(body))
            .await
    }

    /// `GET /v1/topics?limit=N`: topics with subscribers on the node, the
    /// busiest first. Errors as [`Client::server_api`].
    pub async fn topics(&self, limit: Option<usize>) -> Result<serde_json::Value, ClientError> {
        let path = match limit {
            Some(n) => format!("/v1/topics?limit={n}"),
            None => "/v1/topics".to_owned(),
        };
        self.server_api(http::Method::GET, &path, None).await
    }

    /// `GET /v1/connections?user=U`: the user's connections on the node.
    /// Errors as [`Client::server_api`].
    pub async fn connections(&self, user: &str) -> Result<serde_json::Value, ClientError> {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("user", user)
            .finish();
        self.server_api(http::Method::GET, &format!("/v1/connections?{q}"), None)
            .await
    }

    /// Publishes one event; returns its id.
    pub async fn publish(
        &self,
        topic: &str,
        data: serde_json::Value,
        event: Option<&str>,
    ) -> Result<String, ClientError> {
        let mut body = serde_json::json!({"topic": topic, "data": data});
        if let Some(e) = event {
            body["event"] = e.into();
        }
        let (status, v) = self
            .publish_raw(body.to_string(), "application/json")
            .await?;
        if status != StatusCode::OK {
            return Err(ClientError::Status {
                status,
                body: v.to_string(),
            });
        }
        Ok(v["id"].as_str().unwrap_or_default().to_owned())
    }

    /// Opens an SSE stream of `topics`, resuming after `last_event_id`.
    pub async fn sse(
        &self,
        topics: &[&str],
        last_event_id: Option<&str>,
    ) -> Result<SseStream, ClientError> {
        self.sse_with(topics, last_event_id, &[]).await
    }

    /// [`Client::sse`] with `extra` query parameters (such as the starting
    /// points `since=earliest` or `history=N`).
    pub async fn sse_with(
        &self,
        topics: &[&str],
        last_event_id: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Result<SseStream, ClientError> {
        let mut query: Vec<(&str, &str)> = topics.iter().map(|t| ("topic", *t)).collect();
        query.extend_from_slice(extra);
        let url = self.url("/v1/sse", &query);
        let path = &url[self.base.len()..];
        let mut headers = vec![("accept", "text/event-stream")];
        if let Some(id) = last_event_id {
            headers.push(("last-event-id", id));
        }
        let resp = self
            .request(http::Method::GET, path, &headers, Bytes::new())
            .await?;
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            let body = String::from_utf8_lossy(&read_body(resp.into_body()).await?).into_owned();
            return Err(ClientError::Status { status, body });
        }
        Ok(SseStream {
            headers: resp.headers().clone(),
            body: resp.into_body(),
            parser: SseParser::new(),
            queue: std::collections::VecDeque::new(),
            last_event_id: last_event_id.unwrap_or_default().to_owned(),
        })
    }

    /// One long poll.
    pub async fn poll(
        &self,
        topics: &[&str],
        cursor: Option<&str>,
        timeout: Duration,
    ) -> Result<PollResponse, ClientError> {
        self.poll_with(topics, cursor, timeout, &[]).await
    }

    /// [`Client::poll`] with `extra` query parameters (such as the starting
    /// points `since=earliest` or `history=N`).
    pub async fn poll_with(
        &self,
        topics: &[&str],
        cursor: Option<&str>,
        timeout: Duration,
        extra: &[(&str, &str)],
    ) -> Result<PollResponse, ClientError> {
        let secs = format!("{}", timeout.as_secs_f64());
        let mut query: Vec<(&str, &str)> = topics.iter().map(|t| ("topic", *t)).collect();
        query.extend_from_slice(extra);
        if let Some(c) = cursor {
            query.push(("cursor", c));
        }
        query.push(("timeout", &secs));
        let url = self.url("/v1/poll", &query);
        let resp = self
            .request(
                http::Method::GET,
                &url[self.base.len()..],
                &[],
                Bytes::new(),
            )
            .await?;
        let status = resp.status();
        let bytes = read_body(resp.into_body()).await?;
        if status != StatusCode::OK {
            return Err(ClientError::Status {
                status,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        Ok(PollResponse::decode(&bytes)?)
    }

    /// Opens a WebSocket to `/v1/ws`.
    pub async fn ws(&self) -> Result<WsClient, ClientError> {
        self.ws_with(&[], "").await
    }

    /// Opens a WebSocket to `/v1/ws` + `query` with extra request headers.
    pub async fn ws_with(
        &self,
        headers: &[(&str, &str)],
        query: &str,
    ) -> Result<WsClient, ClientError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("ws://{}/v1/ws{query}", &self.base["http://".len()..]);
        let mut req = url.into_client_request()?;
        if let Some(t) = &self.token {
            if let Ok(v) = format!("Bearer {t}").parse() {
                req.headers_mut().insert("authorization", v);
            }
        }
        for (k, v) in headers {
            let name = http::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| ClientError::Http(e.to_string()))?;
            let value =
                http::HeaderValue::from_str(v).map_err(|e| ClientError::Http(e.to_string()))?;
            req.headers_mut().insert(name, value);
        }
        let (socket, _) = tokio_tungstenite::connect_async(req).await?;
        Ok(WsClient { socket })
    }
}

async fn read_body(body: Incoming) -> Result<Bytes, ClientError> {
    body.collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| ClientError::Http(e.to_string()))
}

/// An open SSE stream.
pub struct SseStream {
    /// The answer's headers.
    pub headers: http::HeaderMap,
    body: Incoming,
    parser: SseParser,
    queue: std::collections::VecDeque<SseItem>,
    last_event_id: String,
}

impl SseStream {
    /// The next item (event, comment or retry); `None` when the server ended the stream.
    pub async fn next_item(&mut self) -> Result<Option<SseItem>, ClientError> {
        loop {
            if let Some(item) = self.queue.pop_front() {
                match &item {
                    SseItem::Event(e) => self.last_event_id.clone_from(&e.id),
                    SseItem::Id(id) => self.last_event_id.clone_from(id),
                    _ => {}
                }
                return Ok(Some(item));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(ClientError::Http(e.to_string())),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.queue.extend(self.parser.feed(&data));
                    }
                }
            }
        }
    }

    /// The next event, skipping comments and retry fields.
    pub async fn next_event(&mut self) -> Result<Option<SseEvent>, ClientError> {
        loop {
            match self.next_item().await? {
                Some(SseItem::Event(e)) => return Ok(Some(e)),
                Some(_) => continue,
                None => return Ok(None),
            }
        }
    }

    /// The last event id of what was returned so far (events the parser
    /// read ahead do not count), to resume with.
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }
}

/// An open WebSocket speaking Herald's JSON messages.
pub struct WsClient {
    /// The socket, for raw frames.
    pub socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl WsClient {
    /// Sends any JSON value as a text message (also ones the protocol
    /// refuses, to test the server).
    pub async fn send_json(&mut self, v: &serde_json::Value) -> Result<(), ClientError> {
        self.socket
            .send(Message::Text(v.to_string().into()))
            .await?;
        Ok(())
    }

    /// Sends one protocol message, with an optional `ref` for its answer.
    pub async fn send_message(
        &mut self,
        message: ClientMessage,
        reference: Option<serde_json::Value>,
    ) -> Result<(), ClientError> {
        let text = herald_core::wire::ws::Frame::answering(message, reference).encode();
        self.socket.send(Message::Text(text.into())).await?;
        Ok(())
    }

    /// Sends `{"type":"subscribe","topic","since"?}` (does not wait for the answer).
    pub async fn subscribe(&mut self, topic: &str, since: Option<&str>) -> Result<(), ClientError> {
        let m = ClientMessage::Subscribe {
            topic: topic.to_owned(),
            since: since.map(str::to_owned),
            history: None,
        };
        self.send_message(m, None).await
    }

    /// The next message, decoded as the protocol's types; `None` when the
    /// socket ended without a close frame. Errors: a text message that is
    /// not a server message of this protocol ([`ClientError::Json`]).
    pub async fn next_message(&mut self) -> Result<Option<WsIncoming>, ClientError> {
        loop {
            match self.socket.next().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Message::Text(t))) => {
                    let frame = herald_core::wire::ws::Frame::decode(t.as_str())
                        .map_err(|e| ClientError::Json(serde::de::Error::custom(e.to_string())))?;
                    return Ok(Some(WsIncoming::Message(frame)));
                }
                Some(Ok(Message::Close(f))) => {
                    let (code, reason) = close_parts(f);
                    return Ok(Some(WsIncoming::Close { code, reason }));
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next JSON message; `None` when the socket closed (the close frame,
    /// if any, is returned as `{"type":"close","code","reason"}`).
    pub async fn next_json(&mut self) -> Result<Option<serde_json::Value>, ClientError> {
        loop {
            match self.socket.next().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Message::Text(t))) => return Ok(Some(serde_json::from_str(t.as_str())?)),
                Some(Ok(Message::Close(f))) => {
                    let (code, reason) = close_parts(f);
                    return Ok(Some(
                        serde_json::json!({"type": "close", "code": code, "reason": reason}),
                    ));
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next message of a given type, skipping others.
    pub async fn next_of_type(
        &mut self,
        ty: &str,
    ) -> Result<Option<serde_json::Value>, ClientError> {
        while let Some(v) = self.next_json().await? {
            if v["type"] == ty {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }
}

/// A close frame's code and reason; 1005 ("no status received", RFC 6455
/// §7.4.1) for a close without a frame.
fn close_parts(f: Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>) -> (u16, String) {
    f.map(|f| (u16::from(f.code), f.reason.to_string()))
        .unwrap_or((1005, String::new()))
}
