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
//! - [`relay`]: generations: limits, sharing, cancel, the events on the
//!   topic; one generation's run in named steps (ask, read, finish) and
//!   the coalescing of tokens into events. The upstream's event stream is
//!   parsed once, with the core's WHATWG parser
//!   (`herald_core::wire::sse`); its chunks go to the topic and, typed
//!   ([`relay::Relayed`]), to the OpenAI-compatible endpoint.
//! - [`http`]: `POST /v1/llm/chat`, `.../{id}/cancel`, and the OpenAI-compatible
//!   `POST /v1/chat/completions` (streamed with the core's SSE encoder, or
//!   collected into one answer); errors through `herald_http::ApiError`.
//! - [`upstream`]: the HTTP(S) client to the upstream: hyper-util's client
//!   over rustls (its API key goes nowhere else).
//! - [`openai`]: the chunk wire format as pure functions, and the
//!   non-streaming answer collected from chunks.
//! - [`redact`]: credentials taken out of upstream text before a client or a
//!   topic sees it.
//! - [`offline`]: a built-in deterministic model speaking the same wire
//!   format, for demos and tests.

#![warn(missing_docs)]

pub mod http;
pub mod offline;
pub mod openai;
pub mod redact;
pub mod relay;
pub mod upstream;

pub use relay::{Forward, Head, LlmConfig, Relay, Relayed, Share, Started};
pub use upstream::Upstream;
