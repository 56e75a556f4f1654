//! The Mercure hub at `/.well-known/mercure` (DESIGN.md, "Mercure
//! compatibility"; the Mercure specification), against the real
//! `herald serve` binary with plain HTTP clients.
//!
//! - `protocol`: publishing, subscribing, selectors, tokens and their
//!   sources, private updates, resume by id, errors, subscriptions API.
//! - `bridging`: Mercure and Herald's own transports on one core, every
//!   engine (ids across a restart of the embedded engine, two nodes on
//!   Redis), the reserved log topic refused to `/v1`.

#[path = "../process/mod.rs"]
mod process;

mod bridging;
mod protocol;
