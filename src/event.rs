//! What the rotator tells the rest of the daemon: one [`RotationEvent`] per
//! thing that happened, on a broadcast channel.
//!
//! The demo prints them; delivery (sinks, hooks, the token API) listens for
//! [`RotationEvent::Issued`]. An `Issued` event is sent only after the token
//! is durably stored (invariant 6). The token inside is an [`AccessToken`],
//! whose `Debug` and `Display` show a fingerprint, so an event can be logged
//! whole without leaking it.

use chrono::{DateTime, Utc};

use crate::domain::{AccessToken, ChannelId, FailureKind, GroupName, KeyId};
use crate::policy::{Alert, IssueReason, RevokeReason, StepKind};

/// Something the rotator did or found.
#[derive(Debug, Clone)]
pub enum RotationEvent {
    /// A new token was issued, verified and stored: publish it.
    Issued {
        /// The channel.
        channel: ChannelId,
        /// The group it belongs to.
        group: GroupName,
        /// Its key ID.
        key_id: KeyId,
        /// The token.
        token: AccessToken,
        /// When it was issued.
        issued_at: DateTime<Utc>,
        /// When it expires.
        expires_at: DateTime<Utc>,
        /// Why it was issued.
        reason: IssueReason,
        /// False when LINE's verify could not be reached right after issue
        /// (the token is published anyway: LINE issued it a moment ago).
        verified: bool,
        /// The group's tokens this issue condemned: an incident it carried
        /// out could not revoke them (LINE refused the secret). Consumers
        /// are handed none of them from this event on, not even as the
        /// previous token; a `Gone` for each follows.
        condemned: Vec<KeyId>,
    },
    /// A token of ours was revoked at LINE.
    Revoked {
        /// The channel.
        channel: ChannelId,
        /// The group it belonged to.
        group: GroupName,
        /// Its key ID.
        key_id: KeyId,
        /// Why.
        reason: RevokeReason,
    },
    /// Tokens of ours passed their expiry.
    Expired {
        /// The channel.
        channel: ChannelId,
        /// Their key IDs.
        key_ids: Vec<KeyId>,
    },
    /// A token of ours must no longer be handed out: LINE no longer
    /// accepts it without our doing (missing from the key-ID list, or
    /// refused by verify), or an incident condemned it (LINE still accepts
    /// it until linetokd can revoke it).
    Gone {
        /// The channel.
        channel: ChannelId,
        /// Its key ID.
        key_id: KeyId,
        /// How we found out.
        why: String,
    },
    /// LINE lists a key ID on the channel that we did not issue.
    ForeignSeen {
        /// The channel.
        channel: ChannelId,
        /// The key ID.
        key_id: KeyId,
    },
    /// A request to LINE failed; the group retries later.
    Failed {
        /// The channel.
        channel: ChannelId,
        /// The group whose plan made the request.
        group: GroupName,
        /// What was attempted.
        step: StepKind,
        /// The error, with its causes.
        error: String,
        /// When the group tries again.
        retry_at: DateTime<Utc>,
        /// How it failed.
        kind: FailureKind,
    },
    /// Listing the channel's key IDs at LINE failed. Until a listing
    /// succeeds no v2.1 group of the channel is issued a token (what it
    /// may be issued depends on what LINE counts), so this is their
    /// failure too: a wrong `kid` or key shows here first, as the listing
    /// is signed with the same assertion. Short-lived groups, issued with
    /// the secret and never listed, do not wait for it.
    ListingFailed {
        /// The channel.
        channel: ChannelId,
        /// The groups whose issues wait for the listing (the v2.1 ones).
        groups: Vec<GroupName>,
        /// The error, with its causes.
        error: String,
        /// When the listing is tried again.
        retry_at: DateTime<Utc>,
        /// How it failed.
        kind: FailureKind,
    },
    /// A condition an operator should hear about started.
    Alert {
        /// The channel.
        channel: ChannelId,
        /// The group.
        group: GroupName,
        /// What.
        alert: Alert,
    },
}
