//! Delivery: getting the current token to the programs that use it
//! (DESIGN.md section 6).
//!
//! - [`published`]: the in-memory book of each group's current and
//!   previous token, fed by the rotator's events.
//! - [`sink`]: files holding a group's token (raw, json, env), written
//!   atomically with a given mode and owner.
//!
//! Depends on `domain` (and `clock` for hook retries); reads no config:
//! `app` hands it small specs.

pub mod published;
pub mod sink;

pub use published::{GroupTokens, PublishedToken, TokenBook};
