//! Every reason Herald ends a connection for, in one table (as centrifuge's
//! `disconnect.go`): its WebSocket close code and close text, whether an SSE
//! stream says it with `herald.disconnect`, and whether the client should
//! reconnect.
//!
//! "Reconnect" reasons are temporary: the client comes back (after the
//! `retry:` or its backoff) and resumes from its cursor, losing nothing.
//! "Give up" reasons repeat on every attempt until the client changes what
//! it sends (a credential, a topic, a smaller message), so reconnecting as
//! is only repeats the refusal.
//!
//! Close codes follow RFC 6455 §7.4.1 (1000–1015) and its private range
//! (4000–4999) for credential refusals. A reason with no code never closes a
//! WebSocket: the upgrade itself is refused with an HTTP status (429, 503).

use crate::fanout::CloseReason;

/// One reason Herald ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disconnect {
    /// The reason's name: the `reason` of the SSE `herald.disconnect` event
    /// (when [`Disconnect::sse`]), as listed in the README.
    pub reason: &'static str,
    /// The WebSocket close code; `None` when a WebSocket is never closed for
    /// this reason (it is refused before the upgrade with an HTTP status).
    pub code: Option<u16>,
    /// The reason text of the WebSocket close frame (at most 123 bytes, RFC
    /// 6455 §5.5.1); empty when [`Disconnect::code`] is `None`.
    pub close_text: &'static str,
    /// Whether an SSE stream ends with `herald.disconnect {"reason"}` for it
    /// (SSE answers the others with an HTTP status before the stream starts).
    pub sse: bool,
    /// Whether the client should reconnect and resume from its cursor
    /// (`false`: give up until it changes what it sends).
    pub reconnect: bool,
}

/// The server is shutting down (WebSocket closes and SSE ends are spread
/// over the drain window), or refused a connection while doing so.
pub const SHUTDOWN: Disconnect = Disconnect {
    reason: "shutdown",
    code: Some(1000),
    close_text: "server shutting down",
    sse: true,
    reconnect: true,
};

/// The connection fell `--queue-capacity` events behind.
pub const SLOW_CONSUMER: Disconnect = Disconnect {
    reason: "slow_consumer",
    code: Some(1008),
    close_text: "slow consumer",
    sse: true,
    reconnect: true,
};

/// The engine could not be read to catch the subscriber up, or could not
/// be reached when the stream opened.
pub const ENGINE_UNAVAILABLE: Disconnect = Disconnect {
    reason: "engine_unavailable",
    code: Some(1013),
    close_text: "engine unavailable",
    sse: true,
    reconnect: true,
};

/// The credential reached its `exp` (a WebSocket that sent a fresh `auth`
/// before it stays open). Reconnect with a fresh credential.
pub const TOKEN_EXPIRED: Disconnect = Disconnect {
    reason: "token_expired",
    code: Some(4001),
    close_text: "token_expired",
    sse: true,
    reconnect: true,
};

/// Too many streaming connections from the client's address (a WebSocket
/// upgrade gets 429 instead).
pub const RATE_LIMITED: Disconnect = Disconnect {
    reason: "rate_limited",
    code: None,
    close_text: "",
    sse: true,
    reconnect: true,
};

/// The server holds its maximum of connections or a global budget is used
/// up (a WebSocket upgrade gets 503 instead; an open WebSocket whose message
/// in progress would pass the bytes of WebSocket messages being received
/// at once is closed with 1013, "try again later", RFC 6455 section 7.4.1).
pub const SERVER_FULL: Disconnect = Disconnect {
    reason: "server_full",
    code: Some(1013),
    close_text: "server full",
    sse: true,
    reconnect: true,
};

/// A WebSocket's peer stopped answering pings (`--ws-pong-timeout`).
pub const NO_PONG: Disconnect = Disconnect {
    reason: "no_pong",
    code: Some(1011),
    close_text: "no pong",
    sse: false,
    reconnect: true,
};

/// A WebSocket used up its allowance of malformed, refused and
/// rate-limited messages.
pub const TOO_MANY_ERRORS: Disconnect = Disconnect {
    reason: "too_many_errors",
    code: Some(1008),
    close_text: "too many errors",
    sse: false,
    reconnect: false,
};

/// A WebSocket message over `--ws-max-message-bytes`.
pub const MESSAGE_TOO_LARGE: Disconnect = Disconnect {
    reason: "message_too_large",
    code: Some(1009),
    close_text: "message too large",
    sse: false,
    reconnect: false,
};

/// A WebSocket message (all its frames) did not arrive within
/// `--body-timeout` of its first byte, as a request body must.
pub const MESSAGE_TIMEOUT: Disconnect = Disconnect {
    reason: "message_timeout",
    code: Some(1008),
    close_text: "message not completed in time",
    sse: false,
    reconnect: true,
};

/// A WebSocket peer broke the protocol (RFC 6455: an unmasked frame, a
/// reserved opcode or bit, a fragmented or oversized control frame, a
/// continuation with no message, a bad close code): 1002.
pub const PROTOCOL_ERROR: Disconnect = Disconnect {
    reason: "protocol_error",
    code: Some(1002),
    close_text: "protocol error",
    sse: false,
    reconnect: false,
};

/// A WebSocket text message that is not UTF-8: 1007 (RFC 6455, section
/// 8.1).
pub const INVALID_UTF8: Disconnect = Disconnect {
    reason: "invalid_utf8",
    code: Some(1007),
    close_text: "invalid utf-8",
    sse: false,
    reconnect: false,
};

/// The WebSocket's credential (at the upgrade or in an `auth` message) was
/// not accepted.
pub const INVALID_CREDENTIAL: Disconnect = Disconnect {
    reason: "invalid_credential",
    code: Some(4001),
    close_text: "invalid credential",
    sse: false,
    reconnect: false,
};

/// A WebSocket subscribed to a topic that is not public without a credential.
pub const CREDENTIAL_REQUIRED: Disconnect = Disconnect {
    reason: "credential_required",
    code: Some(4001),
    close_text: "credential required",
    sse: false,
    reconnect: false,
};

/// A WebSocket subscribed to a topic its credential does not grant. (A
/// subscription that a refreshed credential no longer grants is only
/// dropped, with `unsubscribed` and this `reason`.)
pub const FORBIDDEN: Disconnect = Disconnect {
    reason: "forbidden",
    code: Some(4003),
    close_text: "forbidden topic",
    sse: false,
    reconnect: false,
};

/// The server API closed every connection of the user
/// (`POST /v1/disconnect`, on every node). Reconnecting as is would be let
/// in again, so the browser client gives up; revoke the user's credential
/// for good.
pub const DISCONNECTED: Disconnect = Disconnect {
    reason: "disconnected",
    code: Some(4009),
    close_text: "disconnected",
    sse: true,
    reconnect: false,
};

/// Every reason, reconnect reasons first.
pub const TABLE: &[Disconnect] = &[
    SHUTDOWN,
    SLOW_CONSUMER,
    ENGINE_UNAVAILABLE,
    TOKEN_EXPIRED,
    RATE_LIMITED,
    SERVER_FULL,
    NO_PONG,
    MESSAGE_TIMEOUT,
    TOO_MANY_ERRORS,
    MESSAGE_TOO_LARGE,
    PROTOCOL_ERROR,
    INVALID_UTF8,
    INVALID_CREDENTIAL,
    CREDENTIAL_REQUIRED,
    FORBIDDEN,
    DISCONNECTED,
];

impl Disconnect {
    /// The entry named `reason`, e.g. to read a `herald.disconnect`.
    pub fn by_reason(reason: &str) -> Option<Disconnect> {
        TABLE.iter().find(|d| d.reason == reason).copied()
    }
}

impl From<CloseReason> for Disconnect {
    fn from(r: CloseReason) -> Disconnect {
        match r {
            CloseReason::SlowConsumer => SLOW_CONSUMER,
            CloseReason::Shutdown => SHUTDOWN,
            CloseReason::EngineUnavailable => ENGINE_UNAVAILABLE,
            CloseReason::Disconnected => DISCONNECTED,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_codes_consistent() {
        for (i, d) in TABLE.iter().enumerate() {
            assert!(
                TABLE[i + 1..].iter().all(|o| o.reason != d.reason),
                "{} twice",
                d.reason
            );
            assert_eq!(d.code.is_none(), d.close_text.is_empty(), "{}", d.reason);
            assert!(d.close_text.len() <= 123, "{}", d.reason);
            // A WebSocket never closes for a reason SSE alone knows, and every
            // reason is said on at least one transport.
            assert!(d.code.is_some() || d.sse, "{}", d.reason);
            assert_eq!(Disconnect::by_reason(d.reason), Some(*d));
        }
    }

    #[test]
    fn hub_closes_map_to_reconnect_reasons() {
        for r in [
            CloseReason::SlowConsumer,
            CloseReason::Shutdown,
            CloseReason::EngineUnavailable,
        ] {
            let d = Disconnect::from(r);
            assert!(d.reconnect && d.sse && d.code.is_some(), "{d:?}");
        }
        assert_eq!(
            Disconnect::from(CloseReason::SlowConsumer).reason,
            "slow_consumer"
        );
    }

    /// The README's table of disconnect reasons lists every entry with its
    /// close code and whether to reconnect.
    #[test]
    fn readme_lists_every_reason() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
        let Ok(readme) = std::fs::read_to_string(path) else {
            return; // Packaged without the workspace's README.
        };
        for d in TABLE {
            let code = d.code.map_or("—".to_owned(), |c| c.to_string());
            let row = format!("| `{}` | {} |", d.reason, code);
            assert!(readme.contains(&row), "README lacks the row {row}");
        }
    }
}
