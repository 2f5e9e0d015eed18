//! The vocabulary of linetokd as plain data (docs/design.md section 2).
//!
//! Everything else speaks in these types. They carry no IO and no clock; the
//! pure `policy` needs nothing else. Identifiers are newtypes so a channel ID
//! can never be passed where a token's key ID belongs.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// The identifiers below share their text: a clone is a reference count,
/// not a copy. A group's channel ID and name are keys of several per-group
/// tables (the token book, delivery, the token API's keys, the rotator's
/// state); cloned from the config, every table points at the same two
/// strings instead of holding its own (about 64 bytes per table per group).
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Wraps the raw string.
            pub fn new(value: impl Into<String>) -> Self {
                Self(Arc::from(value.into()))
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
                Self(Arc::from(value))
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                Self(Arc::from(value))
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                String::deserialize(deserializer).map(Self::from)
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

/// The prefix of the identity linetokd gives a short-lived token. LINE gives
/// short-lived tokens no key ID, so the store keys them by a fingerprint of
/// the value instead; `:` is not a character of LINE's key IDs
/// ([`is_line_char`]), so the two can never collide and the kind of any
/// stored token is read from its identity alone.
pub const SHORT_LIVED_PREFIX: &str = "sl:";

impl KeyId {
    /// The identity of a short-lived token: `sl:` and the first 16 hex
    /// digits of the SHA-256 of its value. Not reversible, and stable, so
    /// the same token always maps to the same row.
    pub fn short_lived(token: &AccessToken) -> Self {
        use aws_lc_rs::digest::{SHA256, digest};
        let hash = digest(&SHA256, token.expose().as_bytes());
        let hex: String = hash.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Self::new(format!("{SHORT_LIVED_PREFIX}{hex}"))
    }

    /// The kind of token this identity belongs to.
    pub fn kind(&self) -> TokenKind {
        if self.0.starts_with(SHORT_LIVED_PREFIX) {
            TokenKind::ShortLived
        } else {
            TokenKind::V21
        }
    }
}

/// The kind of channel access token a group is kept with (docs/design.md,
/// "Token kinds"). Each kind has its own pool of 30 at LINE.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum TokenKind {
    /// Channel access token v2.1: issued with a signed JWT assertion, up to
    /// 30 days, listed by key ID; LINE refuses a 31st.
    #[default]
    #[serde(rename = "v2.1")]
    V21,
    /// Short-lived channel access token: issued with the channel secret,
    /// 30 days, never listed; a 31st silently evicts the channel's oldest.
    #[serde(rename = "short-lived")]
    ShortLived,
}

impl TokenKind {
    /// The name used in the config, the store, status and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V21 => "v2.1",
            Self::ShortLived => "short-lived",
        }
    }

    /// The kind named `name` in the config or the store.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "v2.1" => Some(Self::V21),
            "short-lived" => Some(Self::ShortLived),
            _ => None,
        }
    }

    /// True when LINE lists live tokens of this kind by key ID, so a
    /// reconcile can count them (and foreign ones). Short-lived tokens can
    /// only be checked one by one with verify.
    pub fn is_listed(self) -> bool {
        self == Self::V21
    }
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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

/// A LINE Login refresh token: a user's grant, good for up to 90 days from
/// the login that produced it. Prints as its fingerprint, never its value.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken(Secret);

impl RefreshToken {
    /// Wraps a refresh token value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(Secret::new(value))
    }

    /// The token value, for the few places that must hand it on (a request
    /// to LINE, the store).
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// A short non-reversible fingerprint for logs.
    pub fn fingerprint(&self) -> String {
        self.0.fingerprint()
    }
}

/// As for [`AccessToken`]: no intermediate `String` can be Debug-printed.
impl<'de> Deserialize<'de> for RefreshToken {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

impl fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RefreshToken(sha256:{})", self.0.fingerprint())
    }
}

impl fmt::Display for RefreshToken {
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

/// True for the characters LINE's key IDs and tokens are made of: ASCII
/// letters, digits and `-._~+/=` (base64, base64url, JWS separators and
/// padding; `~` is the last URL-unreserved character). The LINE client
/// refuses anything else; the store relies on it to screen text cheaply.
pub fn is_line_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~' | '+' | '/' | '=')
}

/// How a request to LINE failed, which decides how the engine waits before
/// the next attempt (docs/design.md section 5, and `docs/design.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// A network error, a timeout before sending, or a 5xx: back off with
    /// full jitter.
    Transient,
    /// A 429: wait at least its `Retry-After` (capped), then as transient.
    RateLimited,
    /// Only a change of config or console can fix it (a wrong key ID, a
    /// wrong key, a wrong secret): retry slowly until the config changes or
    /// an operator runs `linetokd rotate`.
    Permanent,
    /// LINE's 30-token refusal: the channel is full at LINE right now.
    /// Reconcile, free capacity, and retry at the next expiry LINE honours.
    ChannelFull,
    /// The answer leaves open whether LINE issued a token (a timeout after
    /// sending, a 200 that breaks the contract): it counts against capacity
    /// until a reconcile settles it, and retries are slow.
    MaybeIssued,
}

impl FailureKind {
    /// Every kind, for parsing.
    pub const ALL: [Self; 5] = [
        Self::Transient,
        Self::RateLimited,
        Self::Permanent,
        Self::ChannelFull,
        Self::MaybeIssued,
    ];

    /// The name stored in the database and shown in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::RateLimited => "rate_limited",
            Self::Permanent => "permanent",
            Self::ChannelFull => "channel_full",
            Self::MaybeIssued => "maybe_issued",
        }
    }

    /// The kind stored as `name`, if any.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Transient => "transient failure",
            Self::RateLimited => "rate limited by LINE",
            Self::Permanent => "permanent failure",
            Self::ChannelFull => "channel full at LINE",
            Self::MaybeIssued => "outcome unknown (LINE may have issued)",
        })
    }
}

/// What an operator asked the daemon to do for a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// `linetokd rotate`: issue a fresh token now (and try now, whatever
    /// held the group).
    Rotate,
    /// `linetokd revoke`: revoke every live token of the group and issue a
    /// fresh one (the channel's holds end too).
    Incident,
}

impl RequestKind {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rotate => "rotate",
            Self::Incident => "incident",
        }
    }

    /// The kind stored as `name`, if any.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Rotate, Self::Incident]
            .into_iter()
            .find(|k| k.as_str() == name)
    }
}

impl fmt::Display for RequestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Rotate => "rotation",
            Self::Incident => "incident revoke",
        })
    }
}

/// An operator request not yet carried out, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenRequest {
    /// The store's ID for it; the issue that carries it out closes it by ID
    /// in the same transaction that stores the new token.
    pub id: i64,
    /// What was asked.
    pub kind: RequestKind,
    /// When it was accepted (the daemon's clock).
    pub at: DateTime<Utc>,
    /// Who asked.
    pub by: String,
}

/// Where an operator request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestOutcome {
    /// Not carried out yet.
    Open,
    /// Carried out by an issue: closed in the transaction that stored the
    /// new token, which the engine announces right after the commit.
    Done,
    /// Closed without an issue (its group left the config).
    Dropped,
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
    /// When LINE's verify refused it while it was recorded live. Such a
    /// token is never handed out as current again, but LINE may still count
    /// it (its key-ID list may still list it), so it stays live for
    /// capacity and for the two-per-group bound until it is revoked,
    /// expires, or a reconcile no longer finds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_at: Option<DateTime<Utc>>,
    /// When LINE's verify last accepted it. The policy verifies every live
    /// short-lived token on its own schedule (nothing lists them); for v2.1
    /// only the group's current token is verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<DateTime<Utc>>,
}

impl TokenRecord {
    /// A live token that verify has never refused.
    pub fn live(key_id: KeyId, issued_at: DateTime<Utc>, expires_at: DateTime<Utc>) -> Self {
        Self {
            key_id,
            issued_at,
            expires_at,
            state: TokenState::Live,
            refused_at: None,
            verified_at: None,
        }
    }

    /// The kind of token, read from its identity.
    pub fn kind(&self) -> TokenKind {
        self.key_id.kind()
    }

    /// True while LINE may still count it: recorded live and not expired
    /// (to the millisecond: LINE's expiries are instants).
    pub fn is_live_at(&self, now: DateTime<Utc>) -> bool {
        self.state == TokenState::Live && now < self.expires_at
    }

    /// True while it can be handed out: live and never refused (by LINE's
    /// verify, or condemned by an incident that could not revoke it).
    pub fn is_usable_at(&self, now: DateTime<Utc>) -> bool {
        self.is_live_at(now) && self.refused_at.is_none()
    }
}

/// The short hash that stands for a LINE Login grant's subject (the
/// user's LINE ID) in logs, events, alerts, metrics and `status`: the
/// first 8 hex digits of its SHA-256. An application can compute the same
/// from its own user IDs to match a notice to a user.
pub fn subject_hash(subject: &str) -> String {
    Secret::new(subject).fingerprint()
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
    fn refresh_tokens_print_as_fingerprints() {
        let r = RefreshToken::new("refresh-VALUE-789");
        for shown in [format!("{r:?}"), format!("{r}"), format!("{r:#?}")] {
            assert!(!shown.contains("VALUE"), "{shown}");
            assert!(shown.contains(&r.fingerprint()), "{shown}");
        }
        let de: RefreshToken = serde_json::from_str("\"refresh-VALUE-789\"").unwrap();
        assert_eq!(de, r);
    }

    #[test]
    fn short_lived_identities_are_stable_fingerprints_of_their_own_kind() {
        let a = KeyId::short_lived(&AccessToken::new("tok-VALUE-123"));
        assert_eq!(a, KeyId::short_lived(&AccessToken::new("tok-VALUE-123")));
        assert_ne!(a, KeyId::short_lived(&AccessToken::new("tok-VALUE-124")));
        assert!(
            a.as_str().starts_with("sl:") && a.as_str().len() == 19,
            "{a}"
        );
        assert!(!a.as_str().contains("VALUE"));
        assert_eq!(a.kind(), TokenKind::ShortLived);
        assert_eq!(KeyId::new("sDTOzw5wIfxxxxPEzcmeQA").kind(), TokenKind::V21);
        for kind in [TokenKind::V21, TokenKind::ShortLived] {
            assert_eq!(TokenKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(TokenKind::parse("long-lived"), None);
    }

    #[test]
    fn access_tokens_deserialize_from_json_strings() {
        let t: AccessToken = serde_json::from_str("\"tok-VALUE-123\"").unwrap();
        assert_eq!(t.expose(), "tok-VALUE-123");
        assert!(serde_json::from_str::<AccessToken>("42").is_err());
    }
}
