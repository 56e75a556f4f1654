//! The WebSocket protocol: JSON text messages both ways, as typed values
//! with pure encode/decode.
//!
//! Client → server ([`ClientMessage`]): `subscribe {topic, since?, history?}`,
//! `unsubscribe {topic}`, `publish {topic, event?, data, id?}`,
//! `presence {topic}`, `auth {token}`. Server → client ([`ServerMessage`]):
//! `event` (also `herald.gap`, `herald.join`, `herald.leave`), `subscribed`,
//! `unsubscribed`, `published`, `presence`, `authenticated`, `error`.
//! Any client message may carry a `ref` (any JSON value) that its answer
//! echoes; [`Frame`] pairs a message with it. Events are not encoded here
//! one by one: every subscriber gets the shared bytes of
//! [`super::json::encode_event`], which decode as [`ServerMessage::Event`].
//!
//! Close codes and close reasons are in [`super::disconnect`].

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::json::EventMessage;

/// A message a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientMessage {
    /// Subscribe to `topic`, after the cursor `since`, or from a starting
    /// point (`since: "earliest"|"latest"`, `history: N`), as the SSE and
    /// poll query parameters of the same names; from now without any. A
    /// cursor wins over `history`.
    Subscribe {
        /// The topic name (validated by the server).
        topic: String,
        /// A cursor to resume after (it must name this topic, or be empty),
        /// or `"earliest"` (every retained event) or `"latest"` (the newest).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<String>,
        /// The newest `N` retained events, then live (at most 1000).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        history: Option<u64>,
    },
    /// Stop delivering `topic`.
    Unsubscribe {
        /// The topic name.
        topic: String,
    },
    /// Publish one event, exactly like `POST /v1/publish`.
    Publish {
        /// The topic name.
        topic: String,
        /// The event name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event: Option<String>,
        /// The data, any JSON value.
        data: Value,
        /// A client id that makes retries idempotent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
    /// Who is subscribed to `topic` (needs subscribe rights; the topic's
    /// policy must track presence), answered [`ServerMessage::Presence`].
    Presence {
        /// The topic name.
        topic: String,
    },
    /// A fresh credential for the same subject, which moves the deadline.
    Auth {
        /// The token (a JWT).
        token: String,
    },
}

/// A message the server sends (an answer, an error or an event).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerMessage {
    /// An event of a subscribed topic (also `herald.gap`).
    Event(EventMessage),
    /// A `subscribe` took effect; `cursor` is where delivery starts.
    Subscribed {
        /// The topic.
        topic: String,
        /// The topic's cursor at the start of delivery.
        cursor: String,
        /// This connection's id in the topic's presence (`client` of
        /// `presence` entries and of `herald.join` / `herald.leave`), on a
        /// topic whose policy tracks presence; absent otherwise. The same
        /// for every topic of the connection.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
    },
    /// A topic is no longer delivered: the client asked, or (with `reason`
    /// `forbidden`) a refreshed credential no longer grants it.
    Unsubscribed {
        /// The topic.
        topic: String,
        /// Whether the connection was subscribed to it.
        was_subscribed: bool,
        /// Why the server dropped it; absent when the client asked.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A `publish` was stored; `id` is the event's cursor.
    Published {
        /// The topic.
        topic: String,
        /// The event's cursor.
        id: String,
    },
    /// An `auth` was accepted: the credential in force and its deadline.
    Authenticated {
        /// The credential's subject (`null` for none).
        sub: Option<String>,
        /// Its `exp`, seconds since the Unix epoch (`null` for none).
        expires_at: Option<u64>,
    },
    /// The answer to a `presence` message: the topic's members
    /// (DESIGN.md, "Presence").
    Presence {
        /// The topic.
        topic: String,
        /// One entry per present connection, ordered by client id.
        clients: Vec<crate::presence::Member>,
    },
    /// A message was refused; the connection stays usable. `code` is the
    /// same as the HTTP error's (`invalid_topic`, `forbidden`, ...).
    Error {
        /// The machine-readable code.
        code: String,
        /// What went wrong, for a person.
        message: String,
    },
}

/// A message with the `ref` its answer echoes (`None`: no `ref` field).
#[derive(Debug, Clone, PartialEq)]
pub struct Frame<M> {
    /// The message.
    pub message: M,
    /// The client's `ref`, any JSON value.
    pub reference: Option<Value>,
}

/// Why a client message could not be read. The connection stays usable:
/// the server answers [`DecodeError::answer`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The text is not JSON (`invalid_json`).
    #[error("message is not valid JSON: {0}")]
    Json(String),
    /// JSON, but not a message of this protocol (`invalid_message`); the
    /// `ref` is kept when the text had one.
    #[error("{error}")]
    Message {
        /// serde's description (unknown `type`, missing field, ...).
        error: String,
        /// The message's `ref`.
        reference: Option<Value>,
    },
}

impl DecodeError {
    /// The `error` answer for it, with the `ref` it had.
    pub fn answer(&self) -> Frame<ServerMessage> {
        let (code, reference) = match self {
            DecodeError::Json(_) => ("invalid_json", None),
            DecodeError::Message { reference, .. } => ("invalid_message", reference.clone()),
        };
        Frame {
            message: ServerMessage::error(code, self.to_string()),
            reference,
        }
    }
}

impl ServerMessage {
    /// `{"type":"error","code","message"}`.
    pub fn error(code: &str, message: impl Into<String>) -> ServerMessage {
        ServerMessage::Error {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

impl<M: Serialize> Frame<M> {
    /// A message without a `ref`.
    pub fn new(message: M) -> Frame<M> {
        Frame {
            message,
            reference: None,
        }
    }

    /// A message answering the one that carried `reference`.
    pub fn answering(message: M, reference: Option<Value>) -> Frame<M> {
        Frame { message, reference }
    }

    /// The JSON text: the message's fields in name order, `ref` among them.
    pub fn encode(&self) -> String {
        let mut v = serde_json::to_value(&self.message).unwrap_or_default();
        if let (Some(r), Some(o)) = (&self.reference, v.as_object_mut()) {
            o.insert("ref".into(), r.clone());
        }
        v.to_string()
    }
}

impl<M: DeserializeOwned> Frame<M> {
    /// Reads one text message. Errors: [`DecodeError::Json`] for text that
    /// is not JSON, [`DecodeError::Message`] for JSON that is not an `M`.
    pub fn decode(text: &str) -> Result<Frame<M>, DecodeError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| DecodeError::Json(e.to_string()))?;
        let reference = value.get("ref").cloned();
        match serde_json::from_value(value) {
            Ok(message) => Ok(Frame { message, reference }),
            Err(e) => Err(DecodeError::Message {
                error: e.to_string(),
                reference,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Data;
    use crate::wire::json::encode_event_parts;
    use serde_json::json;

    fn round_trip<M>(m: M, reference: Option<Value>)
    where
        M: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug + Clone,
    {
        let f = Frame::answering(m, reference);
        assert_eq!(Frame::<M>::decode(&f.encode()).unwrap(), f);
    }

    #[test]
    fn client_messages_round_trip() {
        round_trip(
            ClientMessage::Subscribe {
                topic: "a".into(),
                since: Some("c".into()),
                history: None,
            },
            Some(json!(1)),
        );
        round_trip(
            ClientMessage::Subscribe {
                topic: "a".into(),
                since: None,
                history: Some(3),
            },
            Some(json!(1)),
        );
        round_trip(ClientMessage::Unsubscribe { topic: "a".into() }, None);
        round_trip(
            ClientMessage::Publish {
                topic: "a".into(),
                event: None,
                data: json!({"x": [1, "y"]}),
                id: Some("k".into()),
            },
            Some(json!({"r": "s"})),
        );
        round_trip(ClientMessage::Auth { token: "t".into() }, None);
    }

    #[test]
    fn server_messages_round_trip() {
        for m in [
            ServerMessage::Subscribed {
                topic: "a".into(),
                cursor: "c".into(),
                client: None,
            },
            ServerMessage::Subscribed {
                topic: "a".into(),
                cursor: "c".into(),
                client: Some("k".into()),
            },
            ServerMessage::Unsubscribed {
                topic: "a".into(),
                was_subscribed: true,
                reason: Some("forbidden".into()),
            },
            ServerMessage::Published {
                topic: "a".into(),
                id: "c".into(),
            },
            ServerMessage::Authenticated {
                sub: None,
                expires_at: Some(5),
            },
            ServerMessage::error("bad_request", "no"),
        ] {
            round_trip(m.clone(), None);
            round_trip(m, Some(json!("r")));
        }
    }

    #[test]
    fn encodings_are_the_documented_objects() {
        let f = Frame::answering(
            ServerMessage::Subscribed {
                topic: "a".into(),
                cursor: "c".into(),
                client: None,
            },
            Some(json!(7)),
        );
        assert_eq!(
            f.encode(),
            r#"{"cursor":"c","ref":7,"topic":"a","type":"subscribed"}"#
        );
        let f = Frame::new(ServerMessage::Unsubscribed {
            topic: "a".into(),
            was_subscribed: false,
            reason: None,
        });
        assert_eq!(
            f.encode(),
            r#"{"topic":"a","type":"unsubscribed","was_subscribed":false}"#
        );
        // `sub` and `expires_at` are always present, null when absent.
        let f = Frame::new(ServerMessage::Authenticated {
            sub: None,
            expires_at: None,
        });
        assert_eq!(
            f.encode(),
            r#"{"expires_at":null,"sub":null,"type":"authenticated"}"#
        );
        assert_eq!(
            Frame::new(ServerMessage::error("c", "m")).encode(),
            r#"{"code":"c","message":"m","type":"error"}"#
        );
    }

    #[test]
    fn shared_event_bytes_decode_as_events() {
        let bytes = encode_event_parts("t", "c", Some("n"), &Data::Text("x".into()), 3);
        let f = Frame::<ServerMessage>::decode(std::str::from_utf8(&bytes).unwrap()).unwrap();
        let ServerMessage::Event(e) = f.message else {
            panic!("{f:?}")
        };
        assert_eq!((e.topic.as_str(), e.data), ("t", json!("x")));
    }

    #[test]
    fn refusals_keep_the_ref() {
        let e = Frame::<ClientMessage>::decode("nope").unwrap_err();
        assert!(matches!(e, DecodeError::Json(_)));
        let a = e.answer();
        assert_eq!(a.reference, None);
        assert!(matches!(&a.message, ServerMessage::Error { code, message }
                if code == "invalid_json" && message.starts_with("message is not valid JSON: ")));
        for text in [
            r#"{"type":"dance","ref":3}"#,
            r#"{"type":"subscribe","ref":3}"#,
            r#"{"type":"publish","topic":"a","ref":3}"#,
        ] {
            let e = Frame::<ClientMessage>::decode(text).unwrap_err();
            let a = e.answer();
            assert_eq!(a.reference, Some(json!(3)), "{text}");
            assert!(
                matches!(&a.message, ServerMessage::Error { code, .. } if code == "invalid_message"),
                "{text}"
            );
        }
        // Fields beyond the protocol's are ignored, as before.
        let f = Frame::<ClientMessage>::decode(r#"{"type":"auth","token":"t","x":1}"#).unwrap();
        assert_eq!(f.message, ClientMessage::Auth { token: "t".into() });
    }
}
