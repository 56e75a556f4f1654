//! Topic patterns: which topics a credential may use, and which
//! [`policy`](crate::policy) a topic gets. The one matcher of the workspace
//! (`herald_auth::TopicPattern` re-exports it).
//!
//! A pattern is matched segment by segment (segments are separated by `/`):
//! - a plain segment matches itself exactly;
//! - `*` matches exactly one segment, whatever it is;
//! - `**`, allowed only as the last segment, matches the rest: zero or more segments;
//! - `{sub}` inside a segment is replaced by the credential's subject and the
//!   result is then compared literally, so a subject can never widen a grant
//!   (a subject containing `/` or `*` simply matches nothing).

use crate::topic::Topic;

/// Longest pattern accepted, in bytes (a topic is at most 1 KiB).
pub const MAX_PATTERN_LEN: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// A literal with `{sub}` placeholders.
    WithSubject(String),
    One,
    Rest,
}

/// A parsed topic pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicPattern {
    source: String,
    segments: Vec<Segment>,
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// `""`.
    #[error("pattern is empty")]
    Empty,
    /// Over [`MAX_PATTERN_LEN`] bytes.
    #[error("pattern is longer than {MAX_PATTERN_LEN} bytes")]
    TooLong,
    /// A control character anywhere.
    #[error("pattern contains a control character")]
    ControlCharacter,
    /// `**` before the last segment (`a/**/b`).
    #[error("`**` may only be the last segment of a pattern")]
    RestNotLast,
    /// `*` inside a segment (`a*`).
    #[error("`*` must be a whole segment (`a/*/b`, not `a*`)")]
    PartialWildcard,
}

impl TopicPattern {
    /// Reads `pattern`: segments split by `/`, `*` one whole segment, `**`
    /// the rest (last only), `{sub}` the token's subject.
    ///
    /// Errors: see [`PatternError`].
    pub fn parse(pattern: &str) -> Result<TopicPattern, PatternError> {
        if pattern.is_empty() {
            return Err(PatternError::Empty);
        }
        if pattern.len() > MAX_PATTERN_LEN {
            return Err(PatternError::TooLong);
        }
        if pattern.chars().any(char::is_control) {
            return Err(PatternError::ControlCharacter);
        }
        let parts: Vec<&str> = pattern.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            let seg = match *p {
                "**" if i + 1 == parts.len() => Segment::Rest,
                "**" => return Err(PatternError::RestNotLast),
                "*" => Segment::One,
                s if s.contains('*') => return Err(PatternError::PartialWildcard),
                s if s.contains("{sub}") => Segment::WithSubject(s.to_owned()),
                s => Segment::Literal(s.to_owned()),
            };
            segments.push(seg);
        }
        Ok(TopicPattern {
            source: pattern.to_owned(),
            segments,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `topic` matches, with `{sub}` standing for `subject` (a
    /// pattern with `{sub}` never matches when there is no subject).
    pub fn matches(&self, topic: &Topic, subject: Option<&str>) -> bool {
        let mut parts = topic.as_str().split('/');
        for seg in &self.segments {
            match seg {
                Segment::Rest => return true,
                Segment::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(l) => {
                    if parts.next() != Some(l.as_str()) {
                        return false;
                    }
                }
                Segment::WithSubject(s) => {
                    let Some(sub) = subject else { return false };
                    let Some(part) = parts.next() else {
                        return false;
                    };
                    if !matches_with_subject(s, sub, part) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

/// `template` with every `{sub}` replaced by `sub` equals `part`, compared
/// without building the string.
fn matches_with_subject(template: &str, sub: &str, mut part: &str) -> bool {
    let mut pieces = template.split("{sub}").peekable();
    while let Some(piece) = pieces.next() {
        let Some(rest) = part.strip_prefix(piece) else {
            return false;
        };
        part = rest;
        if pieces.peek().is_some() {
            let Some(rest) = part.strip_prefix(sub) else {
                return false;
            };
            part = rest;
        }
    }
    part.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(p: &str, t: &str, sub: Option<&str>) -> bool {
        TopicPattern::parse(p)
            .unwrap()
            .matches(&Topic::new(t).unwrap(), sub)
    }

    #[test]
    fn matching() {
        assert!(m("orders/1", "orders/1", None));
        assert!(!m("orders/1", "orders/12", None));
        assert!(!m("orders/1", "orders/1/x", None));
        assert!(m("chat/*", "chat/room1", None));
        assert!(!m("chat/*", "chat", None));
        assert!(!m("chat/*", "chat/a/b", None));
        assert!(m("chat/*/typing", "chat/x/typing", None));
        assert!(m(
            "users/{sub}/**",
            "users/alice/notifications",
            Some("alice")
        ));
        assert!(m("users/{sub}/**", "users/alice", Some("alice")));
        assert!(m("users/{sub}/**", "users/alice/a/b/c", Some("alice")));
        assert!(!m(
            "users/{sub}/**",
            "users/bob/notifications",
            Some("alice")
        ));
        assert!(!m("users/{sub}/**", "users/alice/x", None));
        assert!(m("dm/{sub}-{sub}", "dm/al-al", Some("al")));
        assert!(!m("dm/{sub}-x", "dm/al-y", Some("al")));
        assert!(m("**", "anything/at/all", None));
        // A subject cannot widen a grant.
        assert!(!m("users/{sub}", "users/a/b", Some("a/b")));
        assert!(!m("users/{sub}/x", "users/mallory/x", Some("*")));
        assert!(!m("users/{sub}/x", "users/*/x", Some("mallory")));
    }

    #[test]
    fn refuses_bad_patterns() {
        assert_eq!(TopicPattern::parse(""), Err(PatternError::Empty));
        assert_eq!(
            TopicPattern::parse("a/**/b"),
            Err(PatternError::RestNotLast)
        );
        assert_eq!(
            TopicPattern::parse("a*"),
            Err(PatternError::PartialWildcard)
        );
        assert_eq!(
            TopicPattern::parse("a/b**"),
            Err(PatternError::PartialWildcard)
        );
        assert_eq!(
            TopicPattern::parse("a\nb"),
            Err(PatternError::ControlCharacter)
        );
        assert_eq!(
            TopicPattern::parse(&"a".repeat(1025)),
            Err(PatternError::TooLong)
        );
    }

    proptest! {
        #[test]
        fn parse_and_match_never_panic(p in "\\PC{0,40}", t in "[a-z*{}/]{1,30}", sub in proptest::option::of("[a-z/*{}]{0,8}")) {
            if let Ok(pat) = TopicPattern::parse(&p) {
                if let Ok(topic) = Topic::new(&t) {
                    let _ = pat.matches(&topic, sub.as_deref());
                }
            }
        }

        #[test]
        fn literal_patterns_match_only_themselves(a in "[a-z]{1,5}(/[a-z]{1,5}){0,3}", b in "[a-z]{1,5}(/[a-z]{1,5}){0,3}") {
            let pat = TopicPattern::parse(&a).unwrap();
            prop_assert_eq!(pat.matches(&Topic::new(&b).unwrap(), None), a == b);
        }
    }
}
