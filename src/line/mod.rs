//! LINE's channel access token endpoints, as types.
//!
//! - [`keys`]: assertion signing keys (load PEM/JWK, generate, public JWK).
//! - [`jwt`]: the client assertion LINE's v2.1 endpoints authenticate with.

pub mod jwt;
pub mod keys;
