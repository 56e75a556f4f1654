//! Herald's own events and their payloads. Publishers may not use the
//! `herald.` prefix, so a subscriber can tell these apart from application
//! events on every transport.
//!
//! The payloads are defined here once: the SSE, WebSocket and long-poll
//! encodings of a gap or a disconnect all carry the same `data`.

use serde::{Deserialize, Serialize};

/// Sent when a cursor is older than the retained history or its epoch is
/// gone: events between the cursor and the next delivered event may be
/// missing. `data` is [`GapData`], `{"topic","reason"}`.
pub const GAP: &str = "herald.gap";

/// Sent on an SSE stream right before the server ends it (or as the whole
/// answer of a temporary refusal): `data` is [`DisconnectData`],
/// `{"reason"}`, with one of the SSE reasons of
/// [`super::disconnect::TABLE`]. The client reconnects with its last id and
/// loses nothing.
pub const DISCONNECT: &str = "herald.disconnect";

/// Sent to the subscribers of a topic whose policy has `join_leave = true`
/// when a client starts receiving it: `data` is
/// `{"topic","client","user","info"}`. Not stored, no cursor of its own
/// (see [`crate::presence`]).
pub const JOIN: &str = "herald.join";

/// Sent like [`JOIN`] when a client stops receiving the topic (or its node
/// stopped refreshing it), with the same `data`.
pub const LEAVE: &str = "herald.leave";

/// The prefix reserved for Herald's own events.
pub const PREFIX: &str = "herald.";

/// The `data` of a [`GAP`] event: which topic may have missed events, and
/// why (`history_truncated`, `epoch_changed` or `unknown_position`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapData {
    /// Why events may be missing.
    pub reason: String,
    /// The topic whose delivery continues after the gap.
    pub topic: String,
}

impl GapData {
    /// The compact JSON text, `{"reason":"...","topic":"..."}`.
    pub fn encode(reason: &str, topic: &str) -> String {
        serde_json::json!({ "reason": reason, "topic": topic }).to_string()
    }

    /// Parses the `data` of a gap event. Errors: text that is not this object.
    pub fn decode(text: &str) -> Result<GapData, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// The `data` of a [`DISCONNECT`] event: `{"reason"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisconnectData {
    /// The SSE reason of a [`super::disconnect::Disconnect`].
    pub reason: String,
}

impl DisconnectData {
    /// The compact JSON text, `{"reason":"..."}`.
    pub fn encode(reason: &str) -> String {
        serde_json::json!({ "reason": reason }).to_string()
    }

    /// Parses the `data` of a disconnect event. Errors: text that is not this object.
    pub fn decode(text: &str) -> Result<DisconnectData, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_bytes_are_stable() {
        assert_eq!(
            GapData::encode("history_truncated", "a/b"),
            r#"{"reason":"history_truncated","topic":"a/b"}"#
        );
        assert_eq!(
            DisconnectData::encode("token_expired"),
            r#"{"reason":"token_expired"}"#
        );
    }

    #[test]
    fn payloads_round_trip() {
        let g = GapData::decode(&GapData::encode("epoch_changed", "t")).unwrap();
        assert_eq!(
            (g.reason.as_str(), g.topic.as_str()),
            ("epoch_changed", "t")
        );
        let d = DisconnectData::decode(&DisconnectData::encode("shutdown")).unwrap();
        assert_eq!(d.reason, "shutdown");
        assert!(DisconnectData::decode("[]").is_err());
    }
}
