//! The WHATWG `text/event-stream` parser. It lives in
//! [`herald_core::wire::sse`], beside the encoder it is property-tested
//! against; re-exported here so `herald_client::sse::SseParser` keeps working.

pub use herald_core::wire::sse::{SseEvent, SseItem, SseParser};
