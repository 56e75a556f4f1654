//! Who is asking ([`Principal`]), what a token grants ([`Grant`]), what they
//! want to do ([`Action`]), and the refusal ([`Denied`]).

use std::sync::Arc;

use crate::TopicPattern;

/// What a valid token grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The token's `sub`.
    pub subject: Option<String>,
    /// Patterns the holder may subscribe to (and read presence and history of).
    pub subscribe: Vec<TopicPattern>,
    /// Patterns the holder may publish to.
    pub publish: Vec<TopicPattern>,
    /// May start LLM generations (the token's `herald.llm` claim).
    pub llm: bool,
    /// May use the server API (the token's `herald.admin` claim).
    pub admin: bool,
    /// `exp`, seconds since the epoch: the credential's deadline. A
    /// connection opened with it ends at this instant (DESIGN.md,
    /// "Credentials over time").
    pub expires_at: Option<u64>,
    /// The token's `info` claim (at most 1024 bytes of JSON), shown in
    /// presence entries.
    pub info: Option<serde_json::Value>,
}

/// Who is asking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// Authentication is not configured: everything is allowed.
    Open,
    /// No credential: only public topics may be read.
    Anonymous,
    /// A verified token.
    User(Arc<Grant>),
    /// A backend holding a publisher API key: may publish and subscribe anywhere.
    Publisher,
}

impl Principal {
    /// The token's subject, for a user.
    pub fn subject(&self) -> Option<&str> {
        match self {
            Principal::User(g) => g.subject.as_deref(),
            _ => None,
        }
    }

    /// The token's `info` claim, for a user that has one.
    pub fn info(&self) -> Option<&serde_json::Value> {
        match self {
            Principal::User(g) => g.info.as_ref(),
            _ => None,
        }
    }

    /// Whether a credential was verified (a user token or a publisher key).
    pub fn is_authenticated(&self) -> bool {
        matches!(self, Principal::User(_) | Principal::Publisher)
    }

    /// The credential's deadline (`exp`, seconds since the Unix epoch), if it
    /// has one. Connections check it: an SSE stream ends with
    /// `herald.disconnect {"reason":"token_expired"}` and a WebSocket closes
    /// with 4001 `token_expired` once it passes.
    pub fn expires_at(&self) -> Option<u64> {
        match self {
            Principal::User(g) => g.expires_at,
            _ => None,
        }
    }
}

/// What a principal wants to do with a topic. Every transport and endpoint
/// asks [`Auth::authorize`](crate::Auth::authorize) before doing it (DESIGN.md, "Every action is
/// authorized, on every transport").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Receive the topic's events (SSE, WebSocket `subscribe`, long poll).
    Subscribe,
    /// Publish to the topic (`POST /v1/publish`, WebSocket `publish`).
    /// Topics under [`RELAY_TOPIC_PREFIX`] are refused to everyone: only
    /// the LLM relay writes them, from inside the server.
    Publish,
    /// Read who is subscribed to the topic; granted like [`Action::Subscribe`].
    Presence,
    /// Read the topic's retained events; granted like [`Action::Subscribe`].
    History,
    /// Start an LLM generation whose tokens go to the topic (`llm/<id>`):
    /// needs the `llm` claim, a publisher key, an open server, or
    /// [`AuthConfig::public_llm`](crate::AuthConfig::public_llm).
    Generate,
}

impl Action {
    pub(crate) fn verb(self) -> &'static str {
        match self {
            Action::Subscribe => "subscribe to",
            Action::Publish => "publish to",
            Action::Presence => "read the presence of",
            Action::History => "read the history of",
            Action::Generate => "start an LLM generation on",
        }
    }
}

/// Topics under this prefix (`llm/<id>`) carry LLM generations; only the
/// relay writes them.
pub const RELAY_TOPIC_PREFIX: &str = "llm/";

/// An authorization refusal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No credential, and the topic is not public (401 / 4001).
    #[error("a credential is required for topic {0:?}")]
    Unauthenticated(String),
    /// The credential does not grant this topic (403 / 4003).
    #[error("not allowed to {action} topic {topic:?}")]
    Forbidden {
        /// What was asked, as a verb phrase ("publish to").
        action: &'static str,
        /// The topic asked for.
        topic: String,
    },
    /// The credential cannot be used for this (401); the message says which one can.
    #[error("{0}")]
    Credential(&'static str),
    /// A verified credential that does not grant the server API: a token
    /// without the admin claim (403).
    #[error("the server API needs the publisher key or a token with the admin claim")]
    NotAdmin,
}
