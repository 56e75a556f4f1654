//! Server-Sent Events, both directions (WHATWG HTML, "Server-sent events"):
//!
//! - [`encode`]: Herald's events, stream preamble and keepalives as bytes;
//! - [`decode`]: the incremental parser that reads any event stream the way a
//!   browser does (used by the Rust client, the tests and the LLM relay's
//!   upstream reader).
//!
//! Both are pure; a property test below feeds whatever the encoder writes to
//! the parser in arbitrary chunk splits and checks that every event comes
//! back with its id, name and data.

pub mod decode;
pub mod encode;

pub use decode::{SseEvent, SseItem, SseParser};
pub use encode::{encode_event, id_line, preamble, KEEPALIVE};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What Herald may encode as one event: an optional cursor (no line
    /// break, no NUL: cursors are base64url), an optional name as publish
    /// validates it (no control character), and any data.
    fn event() -> impl Strategy<Value = (Option<String>, Option<String>, String)> {
        (
            proptest::option::of("[A-Za-z0-9_.~-]{0,24}"),
            proptest::option::of("[^\\p{Cc}]{1,16}"),
            prop_oneof![
                any::<String>(),
                // Line breaks of every kind, and leading spaces, are where an
                // encoder and a parser disagree first.
                proptest::collection::vec(
                    prop_oneof![
                        Just("\n"),
                        Just("\r"),
                        Just("\r\n"),
                        Just(" "),
                        Just(":"),
                        Just("data: x"),
                        Just("é"),
                        Just("\u{FEFF}"),
                    ],
                    0..12
                )
                .prop_map(|parts| parts.concat()),
            ],
        )
    }

    /// The data a parser dispatches: every CRLF, CR and LF becomes LF.
    fn normalised(data: &str) -> String {
        data.replace("\r\n", "\n").replace('\r', "\n")
    }

    /// `stream` fed to a new parser in pieces cut at `cuts`.
    fn parse_in_pieces(stream: &[u8], cuts: &[usize]) -> Vec<SseItem> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.sort_unstable();
        let mut parser = SseParser::new();
        let mut items = Vec::new();
        let mut from = 0;
        for cut in cuts.into_iter().chain([stream.len()]) {
            items.extend(parser.feed(&stream[from..cut]));
            from = cut;
        }
        items
    }

    proptest! {
        #[test]
        fn what_herald_encodes_decodes_to_the_same_events(
            retry in 0u64..100_000,
            start in "[A-Za-z0-9_-]{1,24}",
            events in proptest::collection::vec(event(), 0..6),
            shared_body in any::<bool>(),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut stream = preamble(retry, &start).to_vec();
            let mut want = vec![SseItem::Retry(retry), SseItem::Id(start.clone())];
            let mut last_id = start;
            for (id, name, data) in &events {
                let (frame, body_at) = encode_event(id.as_deref(), name.as_deref(), data);
                match id {
                    // A multi-topic stream writes each subscriber's own
                    // `id:` line before a body encoded once.
                    Some(id) if shared_body => {
                        stream.extend_from_slice(&id_line(id));
                        stream.extend_from_slice(&frame[body_at..]);
                    }
                    _ => stream.extend_from_slice(&frame),
                }
                if let Some(id) = id {
                    last_id.clone_from(id);
                }
                want.push(SseItem::Event(SseEvent {
                    event: name.clone().unwrap_or_else(|| "message".into()),
                    data: normalised(data),
                    id: last_id.clone(),
                }));
            }
            stream.extend_from_slice(KEEPALIVE);
            want.push(SseItem::Comment("keepalive".into()));
            prop_assert_eq!(parse_in_pieces(&stream, &cuts), want);
        }
    }
}
