//! What the policy is shown: one group ([`GroupView`]) and its channel
//! ([`ChannelView`]), as the caller read them from the store.
//!
//! These are snapshots: the policy never reads anything else, so the same
//! views at the same instant always give the same plan. The caller builds
//! them fresh for every call (after executing a plan, state has changed).
//!
//! Depends on `crate::domain`, chrono and [`super::backoff`](mod@super::backoff).

use chrono::{DateTime, Utc};

use super::backoff::{RetryState, StepKind};
use crate::domain::{
    ChannelId, GroupName, KeyId, OpenRequest, RequestKind, TokenKind, TokenRecord,
};

/// One group as the policy sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupView {
    /// The group's channel: part of the stable jitter.
    pub channel: ChannelId,
    /// The group's name: part of the stable jitter.
    pub group: GroupName,
    /// The kind of token the group is kept with: which pool of 30 its next
    /// token counts in, and whether a key-ID listing must come before it.
    /// Its live tokens may include some of the other kind (the group
    /// changed kind); each is verified and revoked as its own kind is.
    pub kind: TokenKind,
    /// The tokens linetokd issued for this group, in any state and order.
    /// Only live ones matter; the rest may be left out.
    pub tokens: Vec<TokenRecord>,
    /// When the current token was last verified with LINE. `None`, or a
    /// time before the current token was issued, counts from its issue: the
    /// rotator verifies each new token as part of issuing it.
    pub last_verified_at: Option<DateTime<Utc>>,
    /// True when the channel secret is configured: revoking a v2.1 token
    /// needs it, so without it tokens can only be left to expire. The
    /// policy asks [`GroupView::revokes`], which also heeds a revoke LINE
    /// refused for good.
    pub can_revoke: bool,
    /// When the group left the config, if it did. Its tokens are revoked
    /// `removal_grace` later and it is never issued another.
    pub removed_at: Option<DateTime<Utc>>,
    /// Operator requests not yet carried out (`linetokd rotate`,
    /// `linetokd revoke`), oldest first. The issue that carries them out
    /// closes them by ID in the same transaction that stores its token
    /// ([`Step::Issue`](super::Step::Issue) lists them), so a request is
    /// never judged done by comparing times.
    pub requests: Vec<OpenRequest>,
    /// The group's issue attempts in the last hour (any outcome). A group
    /// with no live token and no attempt in the hour may be issued one even
    /// when the channel's hourly budget is spent (the first-start burst).
    pub issued_last_hour: u32,
    /// The group's latest issue attempt (any outcome) within the last hour,
    /// from the same journal as `issued_last_hour`. An attempt over the
    /// channel's budget to save a token about to expire (the deadline
    /// rescue, [`rate`](super::rate)) comes at least
    /// [`OVER_BUDGET_SPACING`](super::rate::OVER_BUDGET_SPACING) after it.
    pub last_issue_at: Option<DateTime<Utc>>,
    /// The group's failure streak, if its last attempt failed.
    pub retry: Option<RetryState>,
    /// The group's issue attempts of unknown outcome that no listing has
    /// settled yet (a crash mid-call, an answer lost, a takeover's
    /// possibly-issued intent): each may be a live token of the group
    /// nobody recorded. The channel's sum is
    /// [`ChannelView::lost`](ChannelView).
    pub unsettled_attempts: u32,
    /// When LINE's verify last refused a short-lived token of the group
    /// that still had time left: a 31st token on the channel (anyone's) evicted it,
    /// or it was revoked outside linetokd. Raises
    /// [`Alert::ShortLivedEvicted`](super::Alert::ShortLivedEvicted) for
    /// [`EVICTION_ALERT_SPAN`](super::plan::EVICTION_ALERT_SPAN).
    pub evicted_at: Option<DateTime<Utc>>,
}

impl GroupView {
    /// A group with no tokens, no history and no requests: how a freshly
    /// configured group starts. Set the other fields with struct update.
    pub fn new(channel: ChannelId, group: GroupName, can_revoke: bool) -> Self {
        Self {
            channel,
            group,
            kind: TokenKind::V21,
            tokens: Vec::new(),
            last_verified_at: None,
            can_revoke,
            removed_at: None,
            requests: Vec::new(),
            issued_last_hour: 0,
            last_issue_at: None,
            retry: None,
            unsettled_attempts: 0,
            evicted_at: None,
        }
    }

    /// Whether the group may revoke now: the channel secret is configured
    /// and LINE has not refused a revoke of the group for good
    /// ([`RetryState::refuses_revokes`]: until that streak ends, the group
    /// plans as one without the secret, and what should be revoked is
    /// reported and left to expire).
    pub fn revokes(&self) -> bool {
        self.can_revoke && !self.retry.as_ref().is_some_and(RetryState::refuses_revokes)
    }

    /// Whether the group's failure streak holds its steps of `step` now
    /// ([`RetryState::holds`]).
    pub fn held(&self, step: StepKind, now: DateTime<Utc>) -> bool {
        self.retry
            .as_ref()
            .is_some_and(|r| r.not_before > now && r.holds(step))
    }

    /// The group's live tokens at `now` (LINE may count them all), usable
    /// ones first and newest first within each part: index 0 is the current
    /// token when it is usable, index 1 the previous one, anything after is
    /// an excess (only possible after a crash, a refusal or a bug). A token
    /// verify refused sorts after every usable one. "Newest" is by issue
    /// time; ties go to the later expiry, then to the key ID, so the order
    /// is total and stable.
    pub fn live_tokens(&self, now: DateTime<Utc>) -> Vec<&TokenRecord> {
        let mut live: Vec<&TokenRecord> = self.live(now).collect();
        live.sort_by(|a, b| newest_usable_first(a, b));
        live
    }

    /// The live tokens in no particular order, for counts and extremes:
    /// no list to build and sort (the forecast asks this of every group
    /// in every round).
    pub fn live(&self, now: DateTime<Utc>) -> impl Iterator<Item = &TokenRecord> {
        self.tokens.iter().filter(move |t| t.is_live_at(now))
    }

    /// The newest usable token, which consumers should be using: the first
    /// of [`Self::live_tokens`], found without sorting them.
    pub fn current(&self, now: DateTime<Utc>) -> Option<&TokenRecord> {
        self.live(now)
            .min_by(|a, b| newest_usable_first(a, b))
            .filter(|t| t.refused_at.is_none())
    }

    /// The open request of `kind`, if any (the oldest).
    pub fn request(&self, kind: RequestKind) -> Option<&OpenRequest> {
        self.requests.iter().find(|r| r.kind == kind)
    }

    /// The IDs of every open request: an issue closes them all.
    pub fn request_ids(&self) -> Vec<i64> {
        self.requests.iter().map(|r| r.id).collect()
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

/// How close to the oldest of our short-lived tokens another must have been
/// issued to be just as likely the oldest at LINE ([`ChannelView::eviction_suspects`]).
pub const EVICTION_ORDER_TOLERANCE: chrono::Duration = chrono::Duration::seconds(1);

/// The channel around a group, as far as capacity and reconciling go: the
/// pool of the group's kind. For short-lived groups the driver shows a pool
/// with no foreign or lost tokens and no listing (LINE lists none of them).
#[derive(Debug, Clone, PartialEq, Default)]
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
    /// The channel's issue attempts (any outcome) within the last hour, each
    /// with its group, in any order; older ones are ignored. This is what
    /// bounds issuance ([`rate`](super::rate)).
    pub issues_last_hour: Vec<(GroupName, DateTime<Utc>)>,
    /// When the channel's key IDs were last listed successfully.
    pub last_reconcile_at: Option<DateTime<Utc>>,
    /// The key-ID listing's failure streak: it backs off per channel, and
    /// holds only the listing (and the issues that wait for a fresh one),
    /// never a group's verify or revoke.
    pub reconcile_retry: Option<RetryState>,
    /// LINE's 30-token refusal: until this instant the channel counts as
    /// full as our books and the listing after the refusal say, with our
    /// tokens expired since that listing still taking room.
    pub full_until: Option<DateTime<Utc>>,
    /// True after LINE's 30-token refusal until a key-ID listing asked for
    /// after it succeeds: our count was wrong, so no issue before it.
    pub relist_needed: bool,
    /// Our tokens of the pool that the last listing counted (issued by
    /// then, expiring after it) and whose expiry has passed since, unless
    /// revoked or found gone. While LINE's 30-token refusal holds
    /// (`full_until`) they still take room: LINE frees a slot only once
    /// its own clock passes the expiry. Whoever keeps the tokens counts
    /// them: the store for the daemon (`Store::expired_since_listing`; the
    /// snapshot holds live tokens only), the forecast as its tokens expire.
    pub expired_since_listing: u32,
    /// Short-lived pool only: our oldest live short-lived tokens on the
    /// channel (every one issued within [`EVICTION_ORDER_TOLERANCE`] of the
    /// oldest: our issue times do not order tokens issued together the way
    /// LINE does) that LINE last accepted before a later issue of ours.
    /// That issue may have been the pool's 31st, and LINE then evicts the
    /// oldest token on the channel, which is one of these if it is not
    /// another issuer's; so they are verified at once rather than at their
    /// interval.
    pub eviction_suspects: Vec<KeyId>,
    /// Under `[ha]`: the latest assertion expiry among the unsettled
    /// possibly-issued intents a takeover closed (a previous leader's
    /// request may still reach LINE until then, plus
    /// [`Rules::line_clock_allowance`](super::Rules)): no listing before
    /// that settles them, so none is asked for only to settle them.
    /// `None` when there are none.
    pub held_assertion_exp: Option<DateTime<Utc>>,
}

/// The order of [`GroupView::live_tokens`]: usable before refused, then
/// newest issue, later expiry, greater key ID first. Total, so the first
/// is the same whether found by sorting or by `min_by`.
fn newest_usable_first(a: &TokenRecord, b: &TokenRecord) -> std::cmp::Ordering {
    a.refused_at
        .is_some()
        .cmp(&b.refused_at.is_some())
        .then(b.issued_at.cmp(&a.issued_at))
        .then(b.expires_at.cmp(&a.expires_at))
        .then(b.key_id.cmp(&a.key_id))
}
