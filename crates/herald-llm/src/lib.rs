//! # herald-llm
//!
//! LLM token streams that survive a reload: a generation runs against an
//! OpenAI-compatible upstream to its end, whether or not anyone watches, and
//! its tokens are published on the Herald topic `llm/<id>`, so viewers on any
//! transport read it, resume it with their cursor, and several can watch at
//! once; a cancel stops the upstream request.
//!
//! # Layout
//!
//! - [`relay`]: generations, coalescing, cancel, the events on the topic.
//! - [`http`]: `POST /v1/llm/chat`, `.../{id}/cancel`, and the OpenAI-compatible
//!   `POST /v1/chat/completions`.
//! - [`upstream`]: the HTTP(S) client to the upstream (its API key goes
//!   nowhere else).
//! - [`openai`]: the chunk wire format as pure functions.
//! - [`redact`]: credentials taken out of upstream text before a client or a
//!   topic sees it.
//! - [`offline`]: a built-in deterministic model speaking the same wire
//!   format, for demos and tests.

pub mod http;
pub mod offline;
pub mod openai;
pub mod redact;
pub mod relay;
pub mod upstream;

pub use relay::{LlmConfig, Relay, Share, Started};
pub use upstream::Upstream;
