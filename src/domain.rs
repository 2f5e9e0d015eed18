//! The vocabulary of linetokd as plain data (DESIGN.md section 2).
//!
//! Everything else speaks in these types. They carry no IO and no clock; the
//! pure `policy` needs nothing else. Identifiers are newtypes so a channel ID
//! can never be passed where a token's key ID belongs.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Wraps the raw string.
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }

            /// The raw string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                Self(value.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                Self(value)
            }
        }
    };
}

id_type!(
    /// A LINE channel ID (digits, e.g. `1234567890`). Also the JWT `iss`/`sub`.
    ChannelId
);
id_type!(
    /// The name of a consumer group within a channel (e.g. `backend`).
    GroupName
);
id_type!(
    /// LINE's unique ID of one issued v2.1 token (`key_id`). Not secret: it is
    /// what logs, metrics and status show in place of the token.
    KeyId
);
id_type!(
    /// The `kid` LINE assigned to a registered assertion signing public key.
    SigningKid
);

/// A channel access token. Prints as its fingerprint, never its value.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(Secret);

impl AccessToken {
    /// Wraps a token value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(Secret::new(value))
    }

    /// The token value, for the few places that must hand it on.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// A short non-reversible fingerprint for logs.
    pub fn fingerprint(&self) -> String {
        self.0.fingerprint()
    }
}

/// Tokens arrive in LINE's JSON answers; deserializing straight into
/// `AccessToken` means no intermediate `String` can be Debug-printed.
impl<'de> Deserialize<'de> for AccessToken {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccessToken(sha256:{})", self.0.fingerprint())
    }
}

impl fmt::Display for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A channel secret (needed to revoke v2.1 tokens and for the short-lived and
/// stateless secret forms). Prints as its fingerprint, never its value.
#[derive(Clone, PartialEq, Eq)]
pub struct ChannelSecret(Secret);

impl ChannelSecret {
    /// Wraps a channel secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(Secret::new(value))
    }

    /// The secret value, for requests to LINE.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl fmt::Debug for ChannelSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelSecret(sha256:{})", self.0.fingerprint())
    }
}

impl fmt::Display for ChannelSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Where a token stands, as far as linetokd knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenState {
    /// Issued and, as far as we know, accepted by LINE.
    Live,
    /// Revoked by linetokd.
    Revoked,
    /// Past its expiry.
    Expired,
    /// Missing from LINE's list of valid key IDs or refused by verify while
    /// we thought it live (revoked in the console, or by someone else).
    Gone,
}

impl TokenState {
    /// The name stored in the database and shown in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::Gone => "gone",
        }
    }
}

/// One v2.1 token linetokd issued, without its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// LINE's key ID for the token.
    pub key_id: KeyId,
    /// When LINE issued it (our clock, at the response).
    pub issued_at: DateTime<Utc>,
    /// When it stops being valid: `issued_at + expires_in`.
    pub expires_at: DateTime<Utc>,
    /// Where it stands.
    pub state: TokenState,
}

impl TokenRecord {
    /// True while LINE should still accept it: recorded live and not expired.
    pub fn is_live_at(&self, now: DateTime<Utc>) -> bool {
        self.state == TokenState::Live && now < self.expires_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_secrets_print_as_fingerprints() {
        let t = AccessToken::new("tok-VALUE-123");
        let s = ChannelSecret::new("sec-VALUE-456");
        for shown in [
            format!("{t:?}"),
            format!("{t}"),
            format!("{s:?}"),
            format!("{s}"),
        ] {
            assert!(!shown.contains("VALUE"), "{shown}");
        }
    }

    #[test]
    fn access_tokens_deserialize_from_json_strings() {
        let t: AccessToken = serde_json::from_str("\"tok-VALUE-123\"").unwrap();
        assert_eq!(t.expose(), "tok-VALUE-123");
        assert!(serde_json::from_str::<AccessToken>("42").is_err());
    }
}
