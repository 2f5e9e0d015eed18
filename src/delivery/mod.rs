//! Delivery: getting the current token to the programs that use it
//! (docs/design.md section 6).
//!
//! - [`service`]: the [`Delivery`] service: listens to the rotator, keeps
//!   the book, writes the sinks (retrying failed ones with backoff, and
//!   reporting their state) and runs the hooks.
//! - [`published`]: the in-memory book of each group's current and
//!   previous token, fed by the rotator's events.
//! - [`sink`]: files holding a group's token (raw, json, env), written
//!   atomically with a given mode and owner.
//! - [`long_lived`]: the document a watched long-lived token is handed out
//!   in, by its sinks and by the token API.
//! - [`hook`]: runs a group's `on_rotate` program with the new token on
//!   stdin, with a timeout and retries.
//!
//! Depends on `domain`, `clock` (for retries), `store` (hook events, sink
//! notes) and `metrics`; reads no config: `app` hands it small specs.

pub mod hook;
pub mod long_lived;
pub mod published;
pub mod service;
pub mod sink;

pub use published::{GroupTokens, PublishedToken, TokenBook};
pub use service::{
    Delivery, FailingSink, GroupDelivery, LedHere, SinkBoard, SinkHealth, SinkRetry,
};
