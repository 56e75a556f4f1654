//! The long-poll answer: `{"events":[...],"cursor":"..."}`.
//!
//! `events` are the event messages of [`super::json`] (gaps included), in
//! order; `cursor` names every topic of the poll, so the next poll continues
//! exactly after the last event included.
//!
//! The server writes an answer from the events' shared JSON frames, piece by
//! piece ([`encode_parts`]): nothing is copied into one buffer, so a client
//! that does not read holds no copy of the events. A client reads it back as
//! a [`PollAnswer`].

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A long-poll answer. `E` is how each event is read: a
/// [`serde_json::Value`] by default, or a typed
/// [`EventMessage`](super::json::EventMessage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PollAnswer<E = serde_json::Value> {
    /// The events after the poll's cursor, oldest first.
    pub events: Vec<E>,
    /// Where the next poll continues.
    pub cursor: String,
}

impl<E: serde::de::DeserializeOwned> PollAnswer<E> {
    /// Parses an answer. Errors: bytes that are not this object.
    pub fn decode(bytes: &[u8]) -> Result<PollAnswer<E>, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// The answer's bytes, in order, around `frames` (each one event message's
/// JSON, shared, not copied). Their lengths sum to the body's length.
pub fn encode_parts(frames: impl IntoIterator<Item = Bytes>, cursor: &str) -> Vec<Bytes> {
    let frames = frames.into_iter();
    let mut parts = Vec::with_capacity(frames.size_hint().0 * 2 + 3);
    parts.push(Bytes::from_static(b"{\"events\":["));
    for (i, f) in frames.enumerate() {
        if i > 0 {
            parts.push(Bytes::from_static(b","));
        }
        parts.push(f);
    }
    parts.push(Bytes::from_static(b"],\"cursor\":\""));
    // Cursors are `[0-9a-f.-]`: nothing to escape.
    parts.push(Bytes::from(cursor.to_owned()));
    parts.push(Bytes::from_static(b"\"}"));
    parts
}

/// The bytes a frame adds to an answer: its own and one separator.
pub fn frame_cost(frame: &Bytes) -> usize {
    frame.len() + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Data;
    use crate::wire::json::{encode_event_parts, EventMessage};

    fn join(parts: Vec<Bytes>) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn empty_answer() {
        let body = join(encode_parts(Vec::new(), "c0"));
        assert_eq!(body, br#"{"events":[],"cursor":"c0"}"#);
        let a = PollAnswer::<EventMessage>::decode(&body).unwrap();
        assert!(a.events.is_empty());
        assert_eq!(a.cursor, "c0");
    }

    #[test]
    fn encode_then_decode() {
        let frames: Vec<Bytes> = (0..3)
            .map(|i| {
                let data = Data::from_json(&serde_json::json!({ "i": i }));
                Bytes::from(encode_event_parts("t", &format!("c{i}"), None, &data, i))
            })
            .collect();
        let body = join(encode_parts(frames, "c2"));
        let a = PollAnswer::<EventMessage>::decode(&body).unwrap();
        assert_eq!(a.cursor, "c2");
        let ids: Vec<_> = a.events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["c0", "c1", "c2"]);
        assert_eq!(a.events[1].data, serde_json::json!({"i": 1}));
        // The untyped form reads the same answer.
        let v = PollAnswer::<serde_json::Value>::decode(&body).unwrap();
        assert_eq!(v.events[2]["type"], "event");
    }
}
