//! Delivery: getting the current token to the programs that use it
//! (DESIGN.md section 6).
//!
//! - [`published`]: the in-memory book of each group's current and
//!   previous token, fed by the rotator's events.
//!
//! Depends on `domain` (and `clock` for hook retries); reads no config:
//! `app` hands it small specs.

pub mod published;

pub use published::{GroupTokens, PublishedToken, TokenBook};
