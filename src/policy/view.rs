//! What the policy is shown: one group ([`GroupView`]) and its channel
//! ([`ChannelView`]), as the caller read them from the store.
//!
//! These are snapshots: the policy never reads anything else, so the same
//! views at the same instant always give the same plan. The caller builds
//! them fresh for every call (after executing a plan, state has changed).
//!
//! Depends on `crate::domain`, chrono and [`super::backoff`](mod@super::backoff).

use chrono::{DateTime, Utc};

use super::backoff::RetryState;
use crate::domain::{ChannelId, GroupName, KeyId, TokenRecord};

/// One group as the policy sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupView {
    /// The group's channel: part of the stable jitter.
    pub channel: ChannelId,
    /// The group's name: part of the stable jitter.
    pub group: GroupName,
    /// The tokens linetokd issued for this group, in any state and order.
    /// Only live ones matter; the rest may be left out.
    pub tokens: Vec<TokenRecord>,
    /// When the current token was last verified with LINE. `None`, or a
    /// time before the current token was issued, counts from its issue: the
    /// rotator verifies each new token as part of issuing it.
    pub last_verified_at: Option<DateTime<Utc>>,
    /// True when the channel secret is configured: revoking a v2.1 token
    /// needs it, so without it tokens can only be left to expire.
    pub can_revoke: bool,
    /// When the group left the config, if it did. Its tokens are revoked
    /// `removal_grace` later and it is never issued another.
    pub removed_at: Option<DateTime<Utc>>,
    /// When an operator asked for a rotation (`linetokd rotate`), stamped
    /// with the daemon's clock. The caller clears it once the `Issue` it
    /// caused succeeds; the policy also reads it as satisfied once the
    /// current token was issued at or after it, so a clear lost in a crash
    /// cannot cause a second rotation.
    pub rotate_requested_at: Option<DateTime<Utc>>,
    /// When an operator declared an incident (`linetokd revoke`): every live
    /// token issued before it is revoked at once and a fresh one issued.
    /// Cleared like `rotate_requested_at`, and likewise satisfied once the
    /// current token is younger than it.
    pub revoke_requested_at: Option<DateTime<Utc>>,
    /// The group's failure streak, if its last attempt failed.
    pub retry: Option<RetryState>,
}

impl GroupView {
    /// A group with no tokens, no history and no requests: how a freshly
    /// configured group starts. Set the other fields with struct update.
    pub fn new(channel: ChannelId, group: GroupName, can_revoke: bool) -> Self {
        Self {
            channel,
            group,
            tokens: Vec::new(),
            last_verified_at: None,
            can_revoke,
            removed_at: None,
            rotate_requested_at: None,
            revoke_requested_at: None,
            retry: None,
        }
    }

    /// The group's live tokens at `now`, newest first: index 0 is the
    /// current token, index 1 the previous one, anything after is an excess
    /// (only possible after a crash or a bug). "Newest" is by issue time;
    /// ties go to the later expiry, then to the key ID, so the order is total
    /// and stable.
    pub fn live_tokens(&self, now: DateTime<Utc>) -> Vec<&TokenRecord> {
        let mut live: Vec<&TokenRecord> =
            self.tokens.iter().filter(|t| t.is_live_at(now)).collect();
        live.sort_by(|a, b| {
            b.issued_at
                .cmp(&a.issued_at)
                .then(b.expires_at.cmp(&a.expires_at))
                .then(b.key_id.cmp(&a.key_id))
        });
        live
    }

    /// The newest live token, which consumers should be using.
    pub fn current(&self, now: DateTime<Utc>) -> Option<&TokenRecord> {
        self.live_tokens(now).into_iter().next()
    }

    /// The live tokens that have been superseded (all but the current), each
    /// with the instant it was superseded: the issue time of the token that
    /// replaced it. Oldest first.
    pub fn superseded(&self, now: DateTime<Utc>) -> Vec<(&KeyId, DateTime<Utc>)> {
        let live = self.live_tokens(now);
        let mut out: Vec<(&KeyId, DateTime<Utc>)> = live
            .windows(2)
            .map(|w| (&w[1].key_id, w[0].issued_at))
            .collect();
        out.reverse();
        out
    }
}

/// The channel around a group, as far as capacity and reconciling go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChannelView {
    /// Live tokens linetokd issued on the channel, in every group including
    /// the one being planned (count them with [`TokenRecord::is_live_at`] at
    /// the same `now`; [`live_ours`](super::live_ours) does).
    pub live_ours: u32,
    /// Live key IDs of the channel that are not ours, as the last reconcile
    /// listed them: another team's, an old vendor's, or ours lost in a crash.
    /// Their values are unknown, so they cannot be revoked; they count
    /// against capacity until a reconcile no longer lists them.
    pub foreign: u32,
    /// Issue attempts since the last reconcile whose outcome is unknown:
    /// intents left open by a crash, or requests that failed in a way LINE
    /// may have answered anyway (a timeout after sending). Each may be a live
    /// token nobody recorded, so each counts against capacity until a
    /// reconcile settles it (after which it is `foreign` or nothing). A
    /// non-zero count also makes the next issue reconcile first.
    pub lost: u32,
    /// The channel's issue attempts (any outcome) within the last hour, in
    /// any order; older ones are ignored. This is what bounds issuance.
    pub issue_times_last_hour: Vec<DateTime<Utc>>,
    /// When the channel's key IDs were last listed successfully.
    pub last_reconcile_at: Option<DateTime<Utc>>,
}
