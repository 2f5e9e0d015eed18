//! The sandbox's two kinds of failure: its own set-up errors ([`SandboxError`])
//! and the refusals it answers LINE's clients with ([`LineRefusal`]).
//!
//! LINE answers errors in two body shapes (docs/line-api.md §0), and the sandbox
//! reproduces both so the daemon's error classification is exercised:
//!
//! - OAuth style `{"error", "error_description"}` for authentication and
//!   request problems (`invalid_client`, `invalid_request`);
//! - Messaging-API style `{"message"}` for the 30-token refusal, the unknown
//!   signing key (404), rate limiting, outages and inspection errors.
//!
//! Depends on nothing but `domain` types; no refusal ever carries a token
//! value or a channel secret (docs/design.md invariant 5).

use std::path::PathBuf;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::domain::{ChannelId, SigningKid};
use crate::line::keys::KeyError;

/// Why the sandbox could not be set up (config, key files, registration,
/// fault rules).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The config file could not be read.
    #[error("cannot read sandbox config {path}: {source}")]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// The IO failure.
        source: std::io::Error,
    },
    /// The config file is not valid TOML of the expected shape.
    #[error("invalid sandbox config {path}: {source}")]
    ConfigParse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the key's name and position.
        source: Box<toml::de::Error>,
    },
    /// A channel's public key file could not be used.
    #[error("channels[].keys[] of channel {channel}, kid {kid}: public_key_file {source}")]
    Key {
        /// The channel the key is registered on.
        channel: ChannelId,
        /// The key's `kid`.
        kid: SigningKid,
        /// What the file holds and what is needed; names the file.
        source: KeyError,
    },
    /// A public key that LINE would not accept: LINE takes RSA-2048 only.
    #[error(
        "channel {channel} key {kid}: LINE accepts only RSA-2048 keys, this one has {bits} bits"
    )]
    KeySize {
        /// The channel the key is registered on.
        channel: ChannelId,
        /// The key's `kid`.
        kid: SigningKid,
        /// The modulus size found.
        bits: usize,
    },
    /// A channel ID that is empty or not all digits.
    #[error("channels[].id {0:?}: a LINE channel ID is a non-empty string of digits")]
    BadChannelId(String),
    /// The same channel ID appears twice in the config.
    #[error("channels[].id {0}: listed twice")]
    DuplicateChannel(ChannelId),
    /// The same `kid` is registered twice; LINE assigns each key a unique kid.
    #[error("kid {kid}: already registered on channel {owner}")]
    DuplicateKid {
        /// The kid.
        kid: SigningKid,
        /// The channel that already holds it.
        owner: ChannelId,
    },
    /// A channel without a secret (revoke and the secret forms need one).
    #[error("channels[].secret of channel {0}: must not be empty")]
    EmptySecret(ChannelId),
    /// A channel that is not registered in the sandbox.
    #[error("no channel {0} is registered in the sandbox")]
    UnknownChannel(ChannelId),
    /// The console refused a long-lived issue or reissue.
    #[error(transparent)]
    LongLived(#[from] super::state::LongLivedRefusal),
    /// A LINE Login channel that cannot be registered.
    #[error("login_channels[] {channel:?}: {problem}")]
    LoginChannel {
        /// The channel ID as given.
        channel: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A fault rule that makes no sense.
    #[error("faults.{key}: {problem}")]
    Faults {
        /// The offending key, e.g. `endpoints."/oauth2/v2.1/token".error_rate`.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// A refusal the sandbox answers a LINE endpoint with, in the body shape
/// LINE uses for that case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineRefusal {
    /// OAuth style: `{"error": .., "error_description": ..}`; the description
    /// is omitted where LINE omits it.
    OAuth {
        /// The HTTP status (400 in every case LINE documents).
        status: StatusCode,
        /// The OAuth error code, e.g. `invalid_client`.
        error: &'static str,
        /// Human text, if LINE gives one for this case.
        description: Option<String>,
    },
    /// Messaging-API style: `{"message": ..}`.
    Message {
        /// The HTTP status.
        status: StatusCode,
        /// Human text.
        message: String,
    },
}

impl LineRefusal {
    /// 400 `invalid_request` with a description.
    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::OAuth {
            status: StatusCode::BAD_REQUEST,
            error: "invalid_request",
            description: Some(description.into()),
        }
    }

    /// 400 `invalid_client` with a description.
    pub fn invalid_client(description: impl Into<String>) -> Self {
        Self::OAuth {
            status: StatusCode::BAD_REQUEST,
            error: "invalid_client",
            description: Some(description.into()),
        }
    }

    /// A `{"message"}` body with the given status.
    pub fn message(status: StatusCode, message: impl Into<String>) -> Self {
        Self::Message {
            status,
            message: message.into(),
        }
    }

    /// LINE's 404 for a `kid` that is not registered (docs/line-api.md §1, §3, §6).
    pub fn unknown_key() -> Self {
        Self::message(
            StatusCode::NOT_FOUND,
            "Cannot find channel key that satisfies the conditions",
        )
    }

    /// LINE's 400 once a channel has 30 live v2.1 tokens (docs/line-api.md §1).
    pub fn too_many_tokens() -> Self {
        Self::message(
            StatusCode::BAD_REQUEST,
            "The maximum number of access tokens has already been issued",
        )
    }

    /// The HTTP status of this refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::OAuth { status, .. } | Self::Message { status, .. } => *status,
        }
    }
}

impl IntoResponse for LineRefusal {
    fn into_response(self) -> Response {
        match self {
            Self::OAuth {
                status,
                error,
                description: Some(description),
            } => (
                status,
                Json(json!({ "error": error, "error_description": description })),
            )
                .into_response(),
            Self::OAuth {
                status,
                error,
                description: None,
            } => (status, Json(json!({ "error": error }))).into_response(),
            Self::Message { status, message } => {
                (status, Json(json!({ "message": message }))).into_response()
            }
        }
    }
}
