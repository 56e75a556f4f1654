//! Per-target adapters: how to subscribe and how to publish on each server
//! the bench measures. Everything else in the load generator is shared.

use std::fmt;

use clap::ValueEnum;

use crate::wire;

/// The servers the bench drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// `herald serve`: `/v1/sse`, `/v1/ws`, `/v1/poll`, `POST /v1/publish`;
    /// started with a Mercure key, also `/.well-known/mercure`.
    Herald,
    /// nginx + Nchan with bench/nchan/nginx.conf: `/sub/A,B`, `POST /pub/A`.
    Nchan,
    /// The Express + ws baseline in bench/node: `/sse`, `/ws`, `POST /publish`.
    Node,
    /// Pushpin in front of the baseline's GRIP route: `/grip/sse`, publish on
    /// Pushpin's HTTP control port.
    Pushpin,
    /// herald-bench-ceiling: `/sse`, `/ws`, `POST /publish` (one topic).
    Ceiling,
}

/// How subscribers connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Server-sent events: one long HTTP response (WHATWG HTML, "Server-sent events").
    Sse,
    /// WebSocket (RFC 6455): one upgraded connection.
    Ws,
    /// Long polling: one HTTP request per batch of messages.
    Poll,
    /// A Mercure subscriber: SSE at `/.well-known/mercure?topic=T` (Herald
    /// started with `--mercure-publisher-jwt-key` and `--mercure-anonymous`).
    /// Publishes still go to Herald's `POST /v1/publish`, which reaches
    /// Mercure subscribers as public updates on an open server. The events'
    /// `id:` is a Mercure id (`urn:uuid:...`), not a Herald cursor; the
    /// marker is read from `data:` as on every transport.
    Mercure,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_possible_value() {
            Some(v) => f.write_str(v.get_name()),
            None => f.write_str("?"),
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_possible_value() {
            Some(v) => f.write_str(v.get_name()),
            None => f.write_str("?"),
        }
    }
}

impl Target {
    /// Whether the target serves `transport`.
    pub fn supports(self, transport: Transport) -> bool {
        match self {
            Target::Herald => true,
            Target::Nchan => transport != Transport::Mercure,
            Target::Node | Target::Ceiling => matches!(transport, Transport::Sse | Transport::Ws),
            Target::Pushpin => transport == Transport::Sse,
        }
    }

    /// Whether a subscription may name several topics.
    pub fn multi_topic(self) -> bool {
        self != Target::Ceiling
    }

    /// The request line's path for a streaming (SSE, WebSocket or Mercure)
    /// subscriber.
    pub fn stream_path(self, transport: Transport, topics: &[String]) -> String {
        let q = |prefix: &str| {
            let mut s = String::from(prefix);
            for (i, t) in topics.iter().enumerate() {
                s.push(if i == 0 { '?' } else { '&' });
                s.push_str("topic=");
                s.push_str(t);
            }
            s
        };
        match (self, transport) {
            (Target::Herald, Transport::Sse) => q("/v1/sse"),
            (Target::Herald, Transport::Mercure) => {
                // Mercure topics are often URLs: each one percent-encoded.
                let mut s = String::from("/.well-known/mercure");
                for (i, t) in topics.iter().enumerate() {
                    s.push_str(if i == 0 { "?topic=" } else { "&topic=" });
                    wire::push_percent_encoded(&mut s, t);
                }
                s
            }
            // Topics are sent as subscribe messages once the socket is open.
            (Target::Herald, _) => "/v1/ws".into(),
            (Target::Nchan, _) => format!("/sub/{}", topics.join(",")),
            (Target::Node, Transport::Sse) | (Target::Ceiling, Transport::Sse) => q("/sse"),
            (Target::Node, _) | (Target::Ceiling, _) => q("/ws"),
            (Target::Pushpin, _) => q("/grip/sse"),
        }
    }

    /// WebSocket messages that subscribe, sent after the upgrade (Herald only).
    pub fn ws_subscribe_messages(self, topics: &[String]) -> Vec<String> {
        match self {
            Target::Herald => topics
                .iter()
                .map(|t| format!(r#"{{"type":"subscribe","topic":"{t}"}}"#))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// A WebSocket message that publishes `payload` (a JSON string's
    /// contents, no escaping needed) to `topic` on the client's own socket,
    /// its answer echoing `reference`; `None` when the target has no such
    /// message (Herald only).
    pub fn ws_publish_message(self, topic: &str, payload: &str, reference: u64) -> Option<String> {
        match self {
            Target::Herald => Some(format!(
                r#"{{"type":"publish","topic":"{topic}","data":"{payload}","ref":{reference}}}"#
            )),
            _ => None,
        }
    }

    /// A whole HTTP/1.1 publish request of `payload` to `topic`, with
    /// `extra` (header lines, each ending in CRLF; see [`auth_headers`])
    /// after the others.
    pub fn publish_request(self, host: &str, topic: &str, payload: &str, extra: &str) -> Vec<u8> {
        let (path, ctype, body) = match self {
            Target::Herald => (
                "/v1/publish".to_string(),
                "application/json",
                format!(r#"{{"topic":"{topic}","data":"{payload}"}}"#),
            ),
            Target::Nchan => (format!("/pub/{topic}"), "text/plain", payload.to_string()),
            Target::Node => (
                format!("/publish?topic={topic}"),
                "text/plain",
                payload.to_string(),
            ),
            Target::Ceiling => ("/publish".to_string(), "text/plain", payload.to_string()),
            Target::Pushpin => (
                "/publish/".to_string(),
                "application/json",
                format!(
                    r#"{{"items":[{{"channel":"{topic}","formats":{{"http-stream":{{"content":"data: {payload}\n\n"}}}}}}]}}"#
                ),
            ),
        };
        format!(
            "POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\n{extra}\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// A long-poll request. `cursor`: Herald's cursor; `since`: Nchan's
    /// `(Last-Modified, Etag)` of the previous answer; `extra`: header
    /// lines, each ending in CRLF (see [`auth_headers`]).
    pub fn poll_request(
        self,
        host: &str,
        topics: &[String],
        cursor: Option<&str>,
        since: Option<&(String, String)>,
        timeout_s: u32,
        extra: &str,
    ) -> Vec<u8> {
        match self {
            Target::Herald => {
                let mut path = String::from("/v1/poll");
                for (i, t) in topics.iter().enumerate() {
                    path.push(if i == 0 { '?' } else { '&' });
                    path.push_str("topic=");
                    path.push_str(t);
                }
                match cursor {
                    Some(c) => path.push_str(&format!("&cursor={c}&timeout={timeout_s}")),
                    // The first poll only learns where "now" is.
                    None => path.push_str("&timeout=0"),
                }
                format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n{extra}\r\n").into_bytes()
            }
            _ => {
                let mut req = format!("GET /sub/{} HTTP/1.1\r\nhost: {host}\r\n", topics.join(","));
                if let Some((lm, etag)) = since {
                    req.push_str(&format!(
                        "if-modified-since: {lm}\r\nif-none-match: {etag}\r\n"
                    ));
                }
                req.push_str(extra);
                req.push_str("\r\n");
                req.into_bytes()
            }
        }
    }
}

/// The header lines (each ending in CRLF) that carry the load generator's
/// credential on every request it makes: `cookie: <cookie>` (a session
/// cookie, which Herald hands to the application's connect hook), or
/// `authorization: Bearer <bearer>` (a JWT or a publisher key), or nothing.
pub fn auth_headers(cookie: Option<&str>, bearer: Option<&str>) -> String {
    let mut h = String::new();
    if let Some(c) = cookie {
        h.push_str(&format!("cookie: {c}\r\n"));
    }
    if let Some(b) = bearer {
        h.push_str(&format!("authorization: Bearer {b}\r\n"));
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let t = vec!["a".to_string(), "b".to_string()];
        assert_eq!(
            Target::Herald.stream_path(Transport::Sse, &t),
            "/v1/sse?topic=a&topic=b"
        );
        assert_eq!(
            Target::Herald.stream_path(
                Transport::Mercure,
                &["https://example.com/books/{id}".into(), "b c".into()]
            ),
            "/.well-known/mercure?topic=https%3A%2F%2Fexample.com%2Fbooks%2F%7Bid%7D&topic=b%20c"
        );
        assert!(Target::Herald.supports(Transport::Mercure));
        for other in [
            Target::Nchan,
            Target::Node,
            Target::Pushpin,
            Target::Ceiling,
        ] {
            assert!(!other.supports(Transport::Mercure), "{other}");
        }
        assert_eq!(Target::Nchan.stream_path(Transport::Ws, &t), "/sub/a,b");
        assert_eq!(
            Target::Node.stream_path(Transport::Ws, &t),
            "/ws?topic=a&topic=b"
        );
        let r = String::from_utf8(Target::Herald.publish_request("h", "a", "~1~2~", "")).unwrap();
        assert!(r.ends_with("\r\n\r\n{\"topic\":\"a\",\"data\":\"~1~2~\"}"));
        assert!(r.contains("content-length: 28\r\n"));
        let extra = auth_headers(Some("session=bench"), None);
        let r =
            String::from_utf8(Target::Herald.publish_request("h", "a", "~1~2~", &extra)).unwrap();
        assert!(r.contains("content-length: 28\r\ncookie: session=bench\r\n\r\n{"));
        let r = String::from_utf8(Target::Herald.poll_request(
            "h",
            &t,
            None,
            None,
            25,
            &auth_headers(None, Some("J")),
        ))
        .unwrap();
        assert_eq!(
            r,
            "GET /v1/poll?topic=a&topic=b&timeout=0 HTTP/1.1\r\nhost: h\r\nauthorization: Bearer J\r\n\r\n"
        );
        assert_eq!(
            Target::Herald
                .ws_publish_message("room/0", "~1~2~", 1)
                .as_deref(),
            Some(r#"{"type":"publish","topic":"room/0","data":"~1~2~","ref":1}"#)
        );
        assert_eq!(Target::Nchan.ws_publish_message("room/0", "~1~2~", 1), None);
    }
}
