//! The JSON event message shared by WebSocket and long polling.
//!
//! Every message is an object with a `type`. Events carry `data` as the JSON
//! value it was published as (a string stays a string). An event is encoded
//! once ([`encode_event`], borrowed, no copy of stored JSON) and the same
//! bytes go to every subscriber; [`EventMessage`] is its owned, decoded form.

use serde::{Deserialize, Serialize};

use crate::event::{Data, Event};

/// The borrowed form [`encode_event_parts`] writes.
#[derive(Serialize)]
struct EventFrame<'a> {
    r#type: &'static str,
    topic: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a str>,
    data: RawData<'a>,
    published_at: u64,
}

/// Serializes `Data` as a JSON value without re-parsing stored JSON.
struct RawData<'a>(&'a Data);

impl Serialize for RawData<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Data::Text(t) => s.serialize_str(t),
            Data::Json(j) => match serde_json::from_str::<&serde_json::value::RawValue>(j) {
                Ok(raw) => raw.serialize(s),
                // Stored JSON is always valid (it was produced by serde_json);
                // fall back to a string rather than writing invalid JSON.
                Err(_) => s.serialize_str(j),
            },
        }
    }
}

/// `{"type":"event","topic","id","event"?,"data","published_at"}`.
pub fn encode_event(event: &Event, id: &str) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_event_into(&mut buf, event, id);
    buf
}

/// [`encode_event`], appended to `buf` (which may already hold room for a
/// frame header, as [`Event::ws_frame`] does).
pub fn encode_event_into(buf: &mut Vec<u8>, event: &Event, id: &str) {
    encode_event_parts_into(
        buf,
        event.topic.as_str(),
        id,
        event.name.as_deref(),
        &event.data,
        event.published_at_ms,
    )
}

/// The same message from its parts (used for Herald's own events such as gaps).
pub fn encode_event_parts(
    topic: &str,
    id: &str,
    name: Option<&str>,
    data: &Data,
    published_at: u64,
) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_event_parts_into(&mut buf, topic, id, name, data, published_at);
    buf
}

/// [`encode_event_parts`], appended to `buf`. Appends nothing if the
/// message cannot be encoded (it always can: every part is valid JSON).
pub fn encode_event_parts_into(
    buf: &mut Vec<u8>,
    topic: &str,
    id: &str,
    name: Option<&str>,
    data: &Data,
    published_at: u64,
) {
    let msg = EventFrame {
        r#type: "event",
        topic,
        id,
        event: name,
        data: RawData(data),
        published_at,
    };
    let start = buf.len();
    buf.reserve(128 + data.len());
    if serde_json::to_writer(&mut *buf, &msg).is_err() {
        buf.truncate(start);
    }
}

/// An event message as a client reads it:
/// `{"type":"event","topic","id","event"?,"data","published_at"}` (the
/// `type` is checked by [`super::ws::ServerMessage`], ignored here so that
/// long-poll answers decode too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventMessage {
    /// The topic the event was published to.
    pub topic: String,
    /// The event's cursor: resume after it with `since` / `cursor`. Empty
    /// (absent on the wire) for `herald.join` / `herald.leave`, which have
    /// no cursor of their own.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// The event name; absent for unnamed events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// The data as the JSON value it was published as.
    pub data: serde_json::Value,
    /// When the engine accepted it, in milliseconds since the Unix epoch.
    #[serde(default)]
    pub published_at: u64,
}

impl EventMessage {
    /// Parses one event message. Errors: JSON that is not an event object.
    pub fn decode(bytes: &[u8]) -> Result<EventMessage, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{NewEvent, Position};
    use crate::topic::Topic;

    #[test]
    fn data_keeps_its_json_type() {
        let t = Topic::new("t").unwrap();
        let json = Data::from_json(&serde_json::json!({"a": [1, "x"]}));
        let e = Event::new(
            NewEvent::new(t.clone(), json).named("n"),
            Position::new(1, 2),
            5,
        );
        let v: serde_json::Value = serde_json::from_slice(e.json()).unwrap();
        assert_eq!(v["data"], serde_json::json!({"a": [1, "x"]}));
        assert_eq!(v["event"], "n");
        assert_eq!(v["type"], "event");
        assert_eq!(v["published_at"], 5);

        let e = Event::new(
            NewEvent::new(t, Data::Text("line\n\"q\"".into())),
            Position::new(1, 3),
            5,
        );
        let v: serde_json::Value = serde_json::from_slice(e.json()).unwrap();
        assert_eq!(v["data"], "line\n\"q\"");
        assert!(v.get("event").is_none());
    }

    #[test]
    fn encode_then_decode() {
        let data = Data::from_json(&serde_json::json!({"k": [true, null]}));
        let bytes = encode_event_parts("a/b", "c1", Some("n"), &data, 7);
        let m = EventMessage::decode(&bytes).unwrap();
        assert_eq!(
            m,
            EventMessage {
                topic: "a/b".into(),
                id: "c1".into(),
                event: Some("n".into()),
                data: serde_json::json!({"k": [true, null]}),
                published_at: 7,
            }
        );
        let bytes = encode_event_parts("t", "c2", None, &Data::Text("x".into()), 1);
        assert_eq!(EventMessage::decode(&bytes).unwrap().event, None);
    }
}
