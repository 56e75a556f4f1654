//! Cursors: the opaque ids clients see and hand back to resume.
//!
//! A cursor lists, for every topic of a subscription, the position of the last
//! event the client was given: `KEY-EPOCH-SEQ` entries in lower-case hex joined
//! by `.`, where `KEY` is the topic's [`TopicKey`]. One event's own id is the
//! one-entry cursor of its topic. A cursor of a multi-topic SSE stream carries
//! every topic, so a resume is exact for each of them, including topics that
//! had no event yet (their entry has sequence 0).
//!
//! The format is URL-safe (`[0-9a-f.-]`) and opaque to clients.

use std::fmt::Write;

use crate::event::Position;
use crate::topic::{Topic, TopicKey};

/// Most entries a cursor may carry; also bounds the parser's work.
pub const MAX_CURSOR_ENTRIES: usize = 256;

/// A decoded cursor: positions by topic key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    entries: Vec<(TopicKey, Position)>,
}

/// Why a cursor string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    /// Not the cursor syntax `KEY-EPOCH-SEQ[.KEY-EPOCH-SEQ...]`: an entry
    /// without exactly three fields, or a field that is not 1 to 16 hex
    /// digits (maps to 400 `invalid_cursor`).
    #[error("cursor is malformed")]
    Malformed,
    /// More than [`MAX_CURSOR_ENTRIES`] topic positions (maps to 400
    /// `invalid_cursor`).
    #[error("cursor has more than {MAX_CURSOR_ENTRIES} topics")]
    TooManyEntries,
}

impl Cursor {
    /// A cursor with no positions: the subscriber starts at the live edge of
    /// every topic.
    pub fn new() -> Cursor {
        Cursor::default()
    }

    /// A cursor holding one position, the `id:` of a single-topic SSE frame.
    pub fn single(topic: &Topic, position: Position) -> Cursor {
        Cursor {
            entries: vec![(topic.key(), position)],
        }
    }

    /// Sets the position of `topic`, replacing any earlier one.
    pub fn set(&mut self, topic: &Topic, position: Position) {
        let key = topic.key();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = position,
            None => {
                // Doubling from one (see `Subscription::add`): a held
                // poll keeps its cursor, most often of one topic.
                if self.entries.len() == self.entries.capacity() {
                    self.entries.reserve_exact(self.entries.len().max(1));
                }
                self.entries.push((key, position))
            }
        }
    }

    /// The position this cursor holds for `topic`, if any.
    pub fn get(&self, topic: &Topic) -> Option<Position> {
        let key = topic.key();
        self.entries.iter().find(|(k, _)| *k == key).map(|e| e.1)
    }

    /// True if the cursor holds no position.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many topic positions the cursor holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The string form.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(self.entries.len() * 36);
        for (i, (key, pos)) in self.entries.iter().enumerate() {
            if i > 0 {
                out.push('.');
            }
            let _ = write!(out, "{:x}-{:x}-{:x}", key.0, pos.epoch, pos.seq);
        }
        out
    }

    /// Parses the string form. Never panics, whatever the input.
    pub fn decode(s: &str) -> Result<Cursor, CursorError> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(Cursor::default());
        }
        let mut entries = Vec::new();
        for (n, part) in s.split('.').enumerate() {
            if n == MAX_CURSOR_ENTRIES {
                return Err(CursorError::TooManyEntries);
            }
            let mut fields = part.split('-');
            let (Some(k), Some(e), Some(q), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(CursorError::Malformed);
            };
            let key = hex(k)?;
            let pos = Position::new(hex(e)?, hex(q)?);
            let key = TopicKey(key);
            match entries.iter_mut().find(|(k, _)| *k == key) {
                Some(entry) => *entry = (key, pos),
                None => entries.push((key, pos)),
            }
        }
        Ok(Cursor { entries })
    }
}

fn hex(s: &str) -> Result<u64, CursorError> {
    if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CursorError::Malformed);
    }
    u64::from_str_radix(s, 16).map_err(|_| CursorError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_lookup() {
        let a = Topic::new("a").unwrap();
        let b = Topic::new("b").unwrap();
        let mut c = Cursor::new();
        c.set(&a, Position::new(7, 3));
        c.set(&b, Position::new(7, 0));
        c.set(&a, Position::new(7, 4));
        let s = c.encode();
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'.' || b == b'-'));
        let d = Cursor::decode(&s).unwrap();
        assert_eq!(d.get(&a), Some(Position::new(7, 4)));
        assert_eq!(d.get(&b), Some(Position::new(7, 0)));
        assert_eq!(d.get(&Topic::new("c").unwrap()), None);
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "x",
            "1-2",
            "1-2-3-4",
            "g-1-1",
            "1--1",
            "11111111111111111-1-1",
            "1-1-1.",
            "-",
        ] {
            assert!(Cursor::decode(s).is_err(), "{s:?}");
        }
        assert_eq!(Cursor::decode("").unwrap(), Cursor::new());
        let many = vec!["1-1-1"; MAX_CURSOR_ENTRIES + 1].join(".");
        assert_eq!(Cursor::decode(&many), Err(CursorError::TooManyEntries));
    }

    proptest! {
        #[test]
        fn decode_never_panics(s in "\\PC{0,80}") {
            let _ = Cursor::decode(&s);
        }

        #[test]
        fn encode_decode(entries in proptest::collection::vec((any::<u64>(), any::<u64>(), any::<u64>()), 0..8)) {
            let mut c = Cursor::new();
            for (k, e, q) in &entries {
                let key = TopicKey(*k);
                match c.entries.iter_mut().find(|(kk, _)| *kk == key) {
                    Some(x) => x.1 = Position::new(*e, *q),
                    None => c.entries.push((key, Position::new(*e, *q))),
                }
            }
            prop_assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        }
    }
}
