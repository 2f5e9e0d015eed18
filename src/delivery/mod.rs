//! Delivery: getting the current token to the programs that use it
//! (DESIGN.md section 6).
//!
//! - [`published`]: the in-memory book of each group's current and
//!   previous token, fed by the rotator's events.
//! - [`hook`]: runs a group's `on_rotate` program with the new token on
//!   stdin, with a timeout and retries.
//!
//! Depends on `domain` (and `clock` for hook retries); reads no config:
//! `app` hands it small specs.

pub mod hook;
pub mod published;

pub use published::{GroupTokens, PublishedToken, TokenBook};
