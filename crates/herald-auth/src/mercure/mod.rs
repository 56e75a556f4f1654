//! Mercure's authorization (the Mercure specification, dunglas/mercure
//! `spec/mercure.md`, "Authorization"): the topic selectors a Mercure JWT
//! grants ([`selector`]) and the verification of those JWTs with the
//! Mercure keys ([`claims`]). The `/.well-known/mercure` endpoints build on
//! them; Herald's own `/v1` authentication is not involved.

pub mod claims;
pub mod selector;
