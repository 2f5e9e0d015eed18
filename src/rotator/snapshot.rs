//! One channel's state as the policy needs it, read from the store in one
//! blocking call and turned into [`GroupView`]s and a [`ChannelView`].
//!
//! Shared by the rotator (which folds in its in-memory state: retry
//! streaks, operator requests) and by `linetokd status` and `linetokd plan`
//! (which read a read-only store and see only what the store keeps), so the
//! commands show the policy exactly the views the daemon builds.
//!
//! Depends on `store`, `policy` and `domain`.

use chrono::{DateTime, Duration, Utc};

use super::{ChannelSetup, GroupState, Rotator};
use crate::domain::{ChannelId, TokenState};
use crate::policy::{self, ChannelView, FailureKind, GroupView, RetryState};
use crate::store::{ChannelRow, GroupRow, GroupRuntime, Store, StoreError, StoredToken};

/// The store's view of one channel at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The channel's row; `None` when the store does not know the channel.
    pub channel: Option<ChannelRow>,
    /// Groups to plan: the active ones, and removed ones that still hold
    /// live tokens (they are revoked after `removal_grace`), each with its
    /// tokens still recorded live. Ordered by group name.
    pub groups: Vec<(GroupRow, Vec<StoredToken>)>,
    /// Foreign key IDs the last reconcile saw listed.
    pub foreign: u32,
    /// Issue attempts since the last reconcile whose outcome is unknown
    /// (failed or lost): each may be a live token nobody recorded.
    pub unsettled: u32,
    /// The channel's issue attempts in the hour before `now`.
    pub issue_times_last_hour: Vec<DateTime<Utc>>,
}

impl Snapshot {
    /// Reads one channel's state at `now`. Blocking: async callers run it on
    /// the blocking pool. Works on a read-only store.
    ///
    /// # Errors
    /// [`StoreError`] when a query fails.
    pub fn read(
        store: &Store,
        channel_id: &ChannelId,
        now: DateTime<Utc>,
    ) -> Result<Self, StoreError> {
        let channel = store.channel(channel_id)?;
        // Only the tokens still recorded live: the policy ignores the rest
        // (GroupView::tokens), and a group's dead tokens pile up with every
        // rotation, so reading them made every pass slower the longer the
        // daemon ran.
        let mut live = store.live_tokens_of_channel(channel_id)?;
        let mut groups = Vec::new();
        for row in store.groups(channel_id)? {
            let (tokens, rest): (Vec<StoredToken>, Vec<StoredToken>) =
                live.into_iter().partition(|t| t.group == row.name);
            live = rest;
            let has_live = tokens.iter().any(|t| t.record.is_live_at(now));
            if row.is_active() || has_live {
                groups.push((row, tokens));
            }
        }
        let foreign = store
            .foreign_kids(channel_id)?
            .iter()
            .filter(|k| k.gone_at.is_none())
            .count();
        let last_reconcile = channel.as_ref().and_then(|c| c.last_reconcile_at);
        let unsettled = store.unsettled_issues_since(channel_id, last_reconcile)?;
        // The store keeps whole seconds, truncated: an attempt recorded at
        // `t` started within [t, t + 1 s). Counted at the end of its second,
        // it leaves the rolling hour no earlier than it really does, so the
        // budget never reopens early.
        let issue_times_last_hour = store
            .issue_times_since(channel_id, now - Duration::hours(1) - Duration::seconds(1))?
            .into_iter()
            .map(|t| t + Duration::seconds(1))
            .collect();
        Ok(Self {
            channel,
            groups,
            foreign: u32::try_from(foreign).unwrap_or(u32::MAX),
            unsettled,
            issue_times_last_hour,
        })
    }

    pub(super) async fn load(
        rotator: &Rotator,
        setup: &ChannelSetup,
        now: DateTime<Utc>,
    ) -> Result<Self, StoreError> {
        let channel_id = setup.id.clone();
        rotator
            .db(move |store| Self::read(store, &channel_id, now))
            .await
    }

    /// The policy's view of each group, with the rotator's in-memory state
    /// (retry streaks, operator requests) folded in.
    pub(super) fn group_views(&self, rotator: &Rotator, setup: &ChannelSetup) -> Vec<GroupView> {
        let mut states = rotator.lock_groups();
        self.groups
            .iter()
            .map(|(row, tokens)| {
                let state = states
                    .entry((setup.id.clone(), row.name.clone()))
                    .or_default();
                seed_from_store(state, row);
                GroupView {
                    rotate_requested_at: state.rotate_requested_at,
                    revoke_requested_at: state.revoke_requested_at,
                    retry: state.retry.clone(),
                    ..stored_group_view(&setup.id, row, tokens, setup.secret.is_some())
                }
            })
            .collect()
    }

    /// The channel's counts for capacity, budget and reconciling, with
    /// `live_ours` counted from `views` at `now`.
    pub fn channel_view(&self, now: DateTime<Utc>, views: &[GroupView]) -> ChannelView {
        ChannelView {
            live_ours: policy::live_ours(now, views),
            foreign: self.foreign,
            lost: self.unsettled,
            issue_times_last_hour: self.issue_times_last_hour.clone(),
            last_reconcile_at: self.channel.as_ref().and_then(|c| c.last_reconcile_at),
        }
    }
}

/// One group's view from what the store keeps alone: its tokens, the
/// current token's last verify, its removal, and its failure streak read
/// back with [`retry_from_runtime`]. Operator requests live only in the
/// running daemon's memory, so they are `None` here.
pub fn stored_group_view(
    channel: &ChannelId,
    row: &GroupRow,
    tokens: &[StoredToken],
    can_revoke: bool,
) -> GroupView {
    let current_verified = tokens
        .iter()
        .filter(|t| t.record.state == TokenState::Live)
        .max_by_key(|t| (t.record.issued_at, t.record.expires_at))
        .and_then(|t| t.last_verified_at);
    GroupView {
        channel: channel.clone(),
        group: row.name.clone(),
        tokens: tokens.iter().map(|t| t.record.clone()).collect(),
        last_verified_at: current_verified,
        can_revoke,
        removed_at: row.removed_at,
        rotate_requested_at: None,
        revoke_requested_at: None,
        retry: retry_from_runtime(&row.runtime),
    }
}

/// The failure streak the store kept for a group, if one is running.
///
/// The store does not keep the failure's kind; transient is the
/// conservative reading (it retries sooner, and a permanent failure shows
/// itself again at once).
pub fn retry_from_runtime(runtime: &GroupRuntime) -> Option<RetryState> {
    if runtime.consecutive_failures == 0 {
        return None;
    }
    runtime.retry_not_before.map(|not_before| RetryState {
        failures: runtime.consecutive_failures,
        kind: FailureKind::Transient,
        not_before,
    })
}

/// After a restart the failure streak lives only in the store: carry it
/// over once, so a crash loop cannot reset the backoff.
fn seed_from_store(state: &mut GroupState, row: &GroupRow) {
    if state.seeded {
        return;
    }
    state.seeded = true;
    if state.retry.is_none() {
        state.retry = retry_from_runtime(&row.runtime);
    }
}
