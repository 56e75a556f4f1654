//! Wire formats as pure functions over bytes: no sockets here, so every rule
//! is unit-tested and fuzzed on its own.
//!
//! - [`sse`]: the `text/event-stream` encoding (WHATWG HTML, "Server-sent events").
//! - [`json`]: the JSON messages of WebSocket and long polling.

pub mod json;
pub mod sse;

/// Event names that Herald itself sends; publishers may not use the `herald.` prefix.
pub mod reserved {
    /// Sent when a cursor is older than the retained history or its epoch is
    /// gone: events between the cursor and the next delivered event may be
    /// missing. `data` is `{"topic","reason","cursor"}` with `reason` one of
    /// `history_truncated`, `epoch_changed`, `unknown_position`.
    pub const GAP: &str = "herald.gap";
    /// Sent on an SSE stream right before the server closes it: `data` is
    /// `{"reason"}` with `reason` `slow_consumer` or `shutdown`. The client
    /// reconnects with its last id and loses nothing.
    pub const DISCONNECT: &str = "herald.disconnect";
    /// The prefix reserved for Herald's own events.
    pub const PREFIX: &str = "herald.";
}
