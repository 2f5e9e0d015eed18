//! LINE's channel access token endpoints, as types and a client.
//!
//! This folder is LINE's contract (`line-openapi/channel-access-token.yml`,
//! docs/line-api.md) written down in Rust:
//!
//! - [`endpoint`]: the eight operations, with path, method and operationId.
//! - [`types`]: the request and answer schemas, by their OpenAPI names.
//! - [`client`]: [`LineClient`], one async method per operation.
//! - `deadline`: the whole-request deadline, which still reads an answer
//!   that arrived while the process was stopped.
//! - [`error`]: [`LineError`], every failure classified as transient,
//!   rate-limited, channel full (30 tokens), maybe issued (LINE said yes,
//!   the answer is unusable), permanent or a local assertion problem.
//! - [`validate`]: the shape LINE's key IDs, tokens and lifetimes must have
//!   before the client hands them on.
//! - [`headers`]: `X-Line-Request-Id`, `Retry-After` and `Date`.
//! - [`keys`]: assertion signing keys (load PEM/JWK, generate, public JWK).
//! - [`login`]: LINE Login's user token endpoints ([`login::LoginEndpoint`],
//!   [`login::LoginClient`]), which share three URLs with the channel token
//!   API but not its OpenAPI file.
//! - [`operation`]: what the request plumbing asks of either API's
//!   operations; [`LineError`] and [`RequestObserver`] are generic over it.
//! - [`jwt`]: the client assertion LINE's v2.1 endpoints authenticate with.
//!
//! Depends on `domain` and `clock` only; the rotator calls it, the sandbox
//! uses [`jwt`] and [`keys`] types only.

pub mod client;
mod deadline;
pub mod endpoint;
pub mod error;
pub mod headers;
pub mod jwt;
pub mod keys;
pub mod login;
pub mod operation;
mod skew;
pub mod types;
pub mod validate;

pub use client::{LineClient, LineClientConfig, RequestObserver, SignedAssertion};
pub use endpoint::Endpoint;
pub use error::{ErrorBody, LineError, MAX_RETRY_AFTER, TransientCause, TransportError};
pub use login::{Deauthorization, LoginClient, LoginEndpoint, LoginError, LoginTokenResponse};
pub use operation::Operation;
pub use skew::{WARN_INTERVAL as SKEW_WARN_INTERVAL, WARN_THRESHOLD as SKEW_WARN_THRESHOLD};
pub use types::Verification;
