//! Events, their positions, and the encodings shared by every subscriber.
//!
//! # Trace context
//!
//! An event may carry a W3C trace context ([`TraceParent`], from a
//! publisher's `traceparent` header). The core only makes `tracing` spans
//! (`publish` with `validate` and `store` inside, `fanout` where an engine
//! hands the event to local subscribers); a process that exports traces
//! installs a [`TraceBridge`] ([`install_trace_bridge`]) that sets their
//! OpenTelemetry parents and links. Without one, the trace context is
//! carried and nothing else happens.

use std::any::Any;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::topic::Topic;
use crate::wire;

mod trace;
pub use trace::{fanout_span, install_trace_bridge, publish_span, TraceBridge, TraceParent};

/// Where an event sits in its topic: a sequence number that grows by one per
/// event, and the epoch of the topic's history. The epoch changes when the
/// history is lost (a restart of the memory engine, a lost Redis stream), so a
/// position from an older epoch can be recognised as "you may have missed
/// events" instead of being silently misread.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct Position {
    /// The epoch of the topic's history; a new epoch starts a new numbering.
    pub epoch: u64,
    /// The sequence number within the epoch: 1 for the first event, 0 for
    /// "before any event".
    pub seq: u64,
}

impl Position {
    /// The position `seq` in `epoch`.
    pub const fn new(epoch: u64, seq: u64) -> Position {
        Position { epoch, seq }
    }
}

/// The payload of an event. Publishers send any JSON value: a string is
/// delivered on SSE as its text, anything else as compact JSON. WebSocket and
/// long-poll messages carry the value as it was published.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Data {
    /// A JSON string, held as its (unescaped) text.
    Text(Box<str>),
    /// Any other JSON value, held as compact JSON text.
    Json(Box<str>),
}

impl Data {
    /// Makes the payload from a parsed JSON value.
    pub fn from_json(value: &serde_json::Value) -> Data {
        match value {
            serde_json::Value::String(s) => Data::Text(s.as_str().into()),
            other => Data::Json(other.to_string().into()),
        }
    }

    /// The payload's size in bytes as it is stored.
    pub fn len(&self) -> usize {
        match self {
            Data::Text(s) | Data::Json(s) => s.len(),
        }
    }

    /// True for a zero-byte payload (the empty string).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The text an SSE `data:` field carries.
    pub fn as_sse_text(&self) -> &str {
        match self {
            Data::Text(s) | Data::Json(s) => s,
        }
    }
}

/// An event a publisher asks to publish, before the engine gives it a position.
#[derive(Clone, Debug)]
pub struct NewEvent {
    /// The topic to publish to.
    pub topic: Topic,
    /// The event name (`event:` in SSE); `None` for the default `message`.
    pub name: Option<Box<str>>,
    /// The payload.
    pub data: Data,
    /// A client-chosen id that makes a retried publish idempotent.
    pub idempotency_key: Option<Box<str>>,
    /// The trace context the event is published in. On the way in: the
    /// publisher's (a `traceparent` header), which becomes the parent of
    /// the `publish` span; the hub then puts that span's own context here
    /// before the engine stores the event (see [`publish_span`]). Not
    /// written to disk or Redis by the engines.
    pub trace: Option<TraceParent>,
}

impl NewEvent {
    /// An unnamed event with no idempotency key and no trace context.
    pub fn new(topic: Topic, data: Data) -> NewEvent {
        NewEvent {
            topic,
            name: None,
            data,
            idempotency_key: None,
            trace: None,
        }
    }

    /// The same event with the name `name` (checked on publish by
    /// [`validate_event_name`](crate::hub::validate_event_name)).
    pub fn named(mut self, name: &str) -> NewEvent {
        self.name = Some(name.into());
        self
    }
}

/// A published event with its position. Shared (`Arc<Event>`) by history and
/// every subscriber's queue; each wire encoding is computed once, on first
/// use, and the same bytes go to every connection.
#[derive(Debug)]
pub struct Event {
    /// The topic the event was published to.
    pub topic: Topic,
    /// Where the engine placed it in the topic's history.
    pub position: Position,
    /// The event name (`event:` in SSE); `None` for the default `message`.
    pub name: Option<Box<str>>,
    /// The payload, as published.
    pub data: Data,
    /// Milliseconds since the Unix epoch when the engine accepted the event.
    pub published_at_ms: u64,
    /// The context of the `publish` span that stored it, when traces are
    /// exported (see [`NewEvent::trace`]): what subscriber-side spans link
    /// to. `None` for events read back from an engine's storage.
    pub trace: Option<TraceParent>,
    sse: OnceLock<SseFrame>,
    json: OnceLock<JsonMessage>,
    extension: OnceLock<Box<dyn Any + Send + Sync>>,
}

/// An SSE frame: `id:` line followed by the body (`event:`/`data:` lines and
/// the blank line). `body()` is a zero-copy slice for streams that write their
/// own multi-topic `id:` line.
#[derive(Debug, Clone)]
pub struct SseFrame {
    frame: Bytes,
    body_start: usize,
}

impl SseFrame {
    /// The whole frame, with the single-topic cursor as its id.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }
    /// The frame without its `id:` line.
    pub fn body(&self) -> Bytes {
        self.frame.slice(self.body_start..)
    }
}

/// The JSON message of an event and its WebSocket frame: two views of one
/// buffer, the frame's header just before the message.
#[derive(Debug)]
struct JsonMessage {
    json: Bytes,
    ws_frame: Bytes,
}

impl Event {
    /// The event `new` placed at `position`, accepted at `published_at_ms`
    /// (milliseconds since the Unix epoch). The wire encodings are computed
    /// lazily.
    pub fn new(new: NewEvent, position: Position, published_at_ms: u64) -> Event {
        Event {
            topic: new.topic,
            position,
            name: new.name,
            data: new.data,
            published_at_ms,
            trace: new.trace,
            sse: OnceLock::new(),
            json: OnceLock::new(),
            extension: OnceLock::new(),
        }
    }

    /// Shortcut for an `Arc<Event>` stamped now.
    pub fn stamped(new: NewEvent, position: Position) -> Arc<Event> {
        Arc::new(Event::new(new, position, now_ms()))
    }

    /// The cursor string of this event alone (one topic).
    pub fn id(&self) -> String {
        crate::cursor::Cursor::single(&self.topic, self.position).encode()
    }

    /// Whether this is one of Herald's signals (`herald.join`,
    /// `herald.leave`: a name with the reserved prefix, which publishers
    /// may not use): delivered live only, never stored, with no cursor of
    /// its own (no SSE `id:` line, no JSON `id`), and it does not move a
    /// subscription's cursor.
    pub fn is_signal(&self) -> bool {
        self.name
            .as_deref()
            .is_some_and(|n| n.starts_with(wire::reserved::PREFIX))
    }

    /// The SSE encoding, computed once (signals: without `id:`).
    pub fn sse(&self) -> &SseFrame {
        self.sse.get_or_init(|| {
            let id = (!self.is_signal()).then(|| self.id());
            let (frame, body_start) = wire::sse::encode_event(
                id.as_deref(),
                self.name.as_deref(),
                self.data.as_sse_text(),
            );
            SseFrame {
                frame: frame.freeze(),
                body_start,
            }
        })
    }

    /// A value derived from this event by a layer above the core (such as
    /// a protocol's own frame of it), computed once by `init` on first use
    /// and then shared by every subscriber, like the wire encodings. One
    /// slot per event: `None` when the slot already holds a value of
    /// another type `T` (a second layer deriving its own value from the
    /// same event computes it itself).
    pub fn extension<T: Any + Send + Sync>(&self, init: impl FnOnce(&Event) -> T) -> Option<&T> {
        self.extension
            .get_or_init(|| Box::new(init(self)))
            .downcast_ref::<T>()
    }

    /// The JSON message `{"type":"event","topic","id","event"?,"data","published_at"}`
    /// used by WebSocket and long polling, computed once (signals: without
    /// `id`).
    pub fn json(&self) -> &Bytes {
        &self.json_message().json
    }

    /// The WebSocket frame of [`json`](Event::json) that every WebSocket
    /// subscriber writes as is: an RFC 6455 (section 5.2) server-to-client
    /// frame, final (FIN), opcode text, unmasked, the payload length in 7
    /// bits, or 126 and 16 bits, or 127 and 64 bits (big-endian), then the
    /// JSON ([`wire::ws_frame`]). Computed once with the JSON, in the same
    /// buffer: `json()` is this frame's tail.
    pub fn ws_frame(&self) -> &Bytes {
        &self.json_message().ws_frame
    }

    fn json_message(&self) -> &JsonMessage {
        self.json.get_or_init(|| {
            let id = if self.is_signal() {
                String::new()
            } else {
                self.id()
            };
            // The JSON after room for the longest frame header, so the frame
            // is made in place.
            let mut buf = vec![0; wire::ws_frame::MAX_HEADER_LEN];
            wire::json::encode_event_into(&mut buf, self, &id);
            let (ws_frame, json) = wire::ws_frame::frame_text_in_place(buf);
            JsonMessage { json, ws_frame }
        })
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(data: &str) -> Event {
        let topic = Topic::new("chat").unwrap();
        Event::new(
            NewEvent::new(topic, Data::Text(data.into())).named("n"),
            Position::new(1, 7),
            42,
        )
    }

    #[test]
    fn the_ws_frame_is_the_json_behind_its_header_in_one_buffer() {
        // Payloads around each length boundary of the frame header.
        for len in [0, 100, 125, 126, 65535, 65536, 70000] {
            let e = event(&"d".repeat(len));
            let (json, frame) = (e.json(), e.ws_frame());
            let header = frame.len() - json.len();
            assert_eq!(&frame[header..], &json[..]);
            assert_eq!(
                &frame[..header],
                &wire::ws_frame::text_header(json.len()).0[..header]
            );
            // One allocation: the JSON is the frame's tail.
            assert_eq!(json.as_ptr(), frame[header..].as_ptr());
            // Computed once.
            assert!(std::ptr::eq(e.ws_frame(), frame));
            assert_eq!(&json[..], &wire::json::encode_event(&e, &e.id())[..]);
        }
    }
}
