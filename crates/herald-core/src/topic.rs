//! Topic names: validation and the stable key that cursors use.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// Longest topic name accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 1024;

/// A validated topic name such as `orders/123` or `users/42/notifications`.
///
/// Cheap to clone (an `Arc<str>`). Construct with [`Topic::new`], which rejects
/// empty names, names longer than [`MAX_TOPIC_LEN`] bytes and control characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

/// Why a topic name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The name is the empty string.
    #[error("topic name is empty")]
    Empty,
    /// The name is longer than [`MAX_TOPIC_LEN`] bytes.
    #[error("topic name is {len} bytes long; the maximum is {MAX_TOPIC_LEN}")]
    TooLong {
        /// The name's length in bytes.
        len: usize,
    },
    /// The name holds a Unicode control character (newlines included, which
    /// would break SSE framing).
    #[error("topic name contains a control character at byte {at}")]
    ControlCharacter {
        /// The byte offset of the first control character.
        at: usize,
    },
}

impl Topic {
    /// Validates `name` and makes a topic of it.
    pub fn new(name: &str) -> Result<Topic, TopicError> {
        validate(name)?;
        Ok(Topic(Arc::from(name)))
    }

    /// The name, as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A stable 64-bit key for this topic (FNV-1a of its name). Cursors name
    /// topics by this key so that they stay short whatever the topic's length,
    /// and every node and every restart computes the same key.
    pub fn key(&self) -> TopicKey {
        TopicKey::of(&self.0)
    }
}

fn validate(name: &str) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::Empty);
    }
    if name.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong { len: name.len() });
    }
    if let Some((at, _)) = name.char_indices().find(|(_, c)| c.is_control()) {
        return Err(TopicError::ControlCharacter { at });
    }
    Ok(())
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({:?})", &*self.0)
    }
}

impl Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for Topic {
    type Error = TopicError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Topic::new(s)
    }
}

/// The FNV-1a hash of a topic name, as carried in cursors.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct TopicKey(pub u64);

impl TopicKey {
    /// The key of the topic named `name` (64-bit FNV-1a over its UTF-8 bytes).
    pub fn of(name: &str) -> TopicKey {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.as_bytes() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        TopicKey(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for n in [
            "orders/123",
            "users/42/notifications",
            "chat",
            "ünïcødé/✓",
            "a b",
        ] {
            assert_eq!(Topic::new(n).unwrap().as_str(), n);
        }
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(Topic::new(""), Err(TopicError::Empty));
        assert_eq!(
            Topic::new(&"x".repeat(1025)),
            Err(TopicError::TooLong { len: 1025 })
        );
        assert!(Topic::new(&"x".repeat(1024)).is_ok());
        assert_eq!(
            Topic::new("a\nb"),
            Err(TopicError::ControlCharacter { at: 1 })
        );
        assert!(Topic::new("a\u{7f}").is_err());
        assert!(Topic::new("\0").is_err());
    }

    #[test]
    fn key_is_stable() {
        // Cursors cross restarts and nodes: this value must never change.
        // The published FNV-1a 64 test vector for "a".
        assert_eq!(TopicKey::of("a"), TopicKey(0xaf63_dc4c_8601_ec8c));
        assert_eq!(TopicKey::of(""), TopicKey(0xcbf2_9ce4_8422_2325));
        assert_ne!(TopicKey::of("a"), TopicKey::of("b"));
    }
}
