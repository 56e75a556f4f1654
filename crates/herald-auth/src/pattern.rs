//! Topic patterns: which topics a credential may use.
//!
//! The matcher lives in the core ([`herald_core::topic_pattern`]), because
//! topic policies resolve by pattern too and the core cannot depend on this
//! crate; it is re-exported here so that grants keep their names. One
//! matcher, one syntax: `*` one segment, `**` the rest, `{sub}` the
//! credential's subject.

pub use herald_core::topic_pattern::{PatternError, TopicPattern, MAX_PATTERN_LEN};
