//! Wire formats as pure functions over bytes: no sockets here, so every rule
//! is unit-tested and fuzzed on its own.
//!
//! - [`sse`]: the `text/event-stream` encoder and parser (WHATWG HTML,
//!   "Server-sent events").
//! - [`json`]: the JSON event message of WebSocket and long polling.
//! - [`ws`]: the WebSocket messages, both directions, as typed values.
//! - [`ws_frame`]: the RFC 6455 frame of a server's text message, made once
//!   per event and written as is by every WebSocket subscriber.
//! - [`poll`]: the long-poll answer.
//! - [`reserved`]: Herald's own events (`herald.gap`, `herald.disconnect`)
//!   and their payloads.
//! - [`disconnect`]: every reason Herald ends a connection, with its
//!   WebSocket close code and whether the client should reconnect.

pub mod disconnect;
pub mod json;
pub mod poll;
pub mod reserved;
pub mod sse;
pub mod ws;
pub mod ws_frame;

pub use disconnect::Disconnect;
