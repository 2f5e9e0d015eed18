//! One channel's state as the policy needs it, read from the store in one
//! blocking call and turned into a [`ChannelState`] for the pure driver
//! ([`policy::drive`]).
//!
//! Shared by the rotator, `linetokd status` and `linetokd plan` (which read
//! a read-only store beside a running daemon), so all three show the policy
//! exactly the same state. Everything the policy decides on is in the
//! store: tokens (to the millisecond), failure streaks with their kind,
//! the channel's listing streak and full hold, operator requests, the
//! hourly issue attempts; the daemon's memory adds nothing.
//!
//! Depends on `store`, `policy` and `domain`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::domain::{ChannelId, FailureKind, GroupName, KeyId, OpenRequest, TokenKind, TokenState};
use crate::policy::{self, ChannelState, ChannelView, GroupView, RetryState, StepKind};
use crate::store::{ChannelRow, GroupRow, GroupRuntime, LiveRecord, Scope, Store, StoreError};

/// The store's view of one channel at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The channel's row; `None` when the store does not know the channel.
    pub channel: Option<ChannelRow>,
    /// Groups to plan: the active ones, and removed ones that still hold
    /// tokens recorded live (revoked after `removal_grace`, or marked
    /// expired), each with its tokens still recorded live. Ordered by group
    /// name.
    pub groups: Vec<(GroupRow, Vec<LiveRecord>)>,
    /// Foreign key IDs the last reconcile saw listed.
    pub foreign: Vec<KeyId>,
    /// Issue attempts with an unknown outcome that no reconcile has settled,
    /// by the group that made each: each may be a live token nobody
    /// recorded.
    pub unsettled: Vec<GroupName>,
    /// Under `[ha]`: the latest assertion expiry of the unsettled
    /// possibly-issued intents a takeover closed
    /// ([`crate::policy::ChannelView::held_assertion_exp`]).
    pub held_assertion_exp: Option<DateTime<Utc>>,
    /// The channel's issue attempts in the hour before `now`, by group.
    pub issues_last_hour: Vec<(GroupName, DateTime<Utc>)>,
    /// Open operator requests, by group, oldest first.
    pub requests: Vec<(GroupName, OpenRequest)>,
    /// Each group's latest short-lived token found evicted within
    /// [`policy::EVICTION_ALERT_SPAN`] of `now`.
    pub evictions: Vec<(GroupName, DateTime<Utc>)>,
    /// While LINE's 30-token refusal holds: our tokens the last listing
    /// counted that have expired since
    /// ([`crate::policy::ChannelView::expired_since_listing`]); zero
    /// otherwise (the read is skipped).
    pub expired_since_listing: u32,
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
        let settled = channel.as_ref().map_or(0, |c| c.settled_through_intent);
        let mut parts = Parts {
            // Only the tokens still recorded live: the policy ignores the
            // rest, and a group's dead tokens pile up with every rotation.
            live: store.live_records_in(Scope::Channel(channel_id))?,
            groups: store.groups(channel_id)?,
            foreign: store
                .live_foreign_kids(channel_id)?
                .into_iter()
                .map(|k| k.key_id)
                .collect(),
            unsettled: store.unsettled_issues(channel_id, settled)?,
            held_assertion_exp: None,
            issues: store.issue_times_since(channel_id, now - policy::rate::ISSUE_WINDOW)?,
            requests: store.open_requests(channel_id)?,
            evictions: Vec::new(),
        };
        // Held attempts are unsettled ones: the usual channel, with none,
        // skips the read (it runs at every round).
        if !parts.unsettled.is_empty() {
            parts.held_assertion_exp = store.held_assertion_exp(channel_id, settled)?;
        }
        // Only a channel with short-lived groups can have evictions: the
        // usual channel skips the read.
        if parts.groups.iter().any(|g| g.kind == TokenKind::ShortLived) {
            parts.evictions = store
                .evictions_in(
                    Scope::Channel(channel_id),
                    now - policy::EVICTION_ALERT_SPAN,
                )?
                .into_iter()
                .map(|(_, group, at)| (group, at))
                .collect();
        }
        let mut snapshot = parts.assemble(channel, now);
        snapshot.expired_since_listing = expired_since_listing(store, &snapshot, now)?;
        Ok(snapshot)
    }

    /// Every stored channel's snapshot at `now`, as [`Self::read`] would
    /// give each, but with one query per table rather than seven per
    /// channel: what `status` and `plan` read.
    ///
    /// # Errors
    /// [`StoreError`] when a query fails.
    ///
    /// The live tokens and the group rows, the two biggest reads, come
    /// from `tokens_from`: given a second connection to the same database,
    /// it reads them on another thread while `store` reads the rest (given
    /// `store` itself, the two threads take turns).
    ///
    /// Never call it inside [`Store::blocking`] on a writer store: the
    /// other thread would wait for the batch the caller's job belongs to,
    /// and the job for that thread. `status` and `plan` call it on
    /// read-only stores.
    pub fn read_all(
        store: &Store,
        tokens_from: &Store,
        now: DateTime<Utc>,
    ) -> Result<Vec<Self>, StoreError> {
        let (big, rest) = std::thread::scope(|scope| {
            let big = scope.spawn(|| {
                Ok::<_, StoreError>((
                    tokens_from.live_records_in(Scope::All)?,
                    tokens_from.all_groups()?,
                ))
            });
            let rest = Self::read_all_but_tokens_and_groups(store, now);
            let big = big.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            (big, rest)
        });
        let mut parts = rest?;
        let (tokens, groups) = big?;
        // Rows of a channel the store does not list cannot exist (foreign
        // keys); `get_mut` simply passes them by.
        for g in groups {
            if let Some(p) = parts.1.get_mut(&g.channel_id) {
                p.groups.push(g);
            }
        }
        for t in tokens {
            if let Some(p) = parts.1.get_mut(&t.channel_id) {
                p.live.push(t);
            }
        }
        let (rows, mut parts) = parts;
        rows.into_iter()
            .filter_map(|row| {
                let p = parts.remove(&row.id)?;
                Some(p.assemble(Some(row), now))
            })
            .map(|mut snapshot| {
                // A query only for the rare channel under a full hold.
                snapshot.expired_since_listing = expired_since_listing(store, &snapshot, now)?;
                Ok(snapshot)
            })
            .collect()
    }

    /// Every table [`Self::read_all`] reads but the tokens and the groups,
    /// sorted out by channel.
    fn read_all_but_tokens_and_groups(
        store: &Store,
        now: DateTime<Utc>,
    ) -> Result<(Vec<ChannelRow>, BTreeMap<ChannelId, Parts>), StoreError> {
        let rows = store.channels()?;
        let mut parts: BTreeMap<ChannelId, Parts> = rows
            .iter()
            .map(|c| (c.id.clone(), Parts::default()))
            .collect();
        for k in store.foreign_kids_in(Scope::All)? {
            if let Some(p) = parts.get_mut(&k.channel_id)
                && k.gone_at.is_none()
            {
                p.foreign.push(k.key_id);
            }
        }
        for (channel, group) in store.unsettled_issues_by_channel()? {
            if let Some(p) = parts.get_mut(&channel) {
                p.unsettled.push(group);
            }
        }
        for (channel, exp) in store.held_assertion_exps_by_channel()? {
            if let Some(p) = parts.get_mut(&channel) {
                p.held_assertion_exp = Some(exp);
            }
        }
        for (channel, group, at) in
            store.issue_times_in(Scope::All, now - policy::rate::ISSUE_WINDOW)?
        {
            if let Some(p) = parts.get_mut(&channel) {
                p.issues.push((group, at));
            }
        }
        for (channel, group, request) in store.open_requests_in(Scope::All)? {
            if let Some(p) = parts.get_mut(&channel) {
                p.requests.push((group, request));
            }
        }
        for (channel, group, at) in
            store.evictions_in(Scope::All, now - policy::EVICTION_ALERT_SPAN)?
        {
            if let Some(p) = parts.get_mut(&channel) {
                p.evictions.push((group, at));
            }
        }
        Ok((rows, parts))
    }

    /// The policy's view of one stored group.
    pub fn group_view(
        &self,
        channel: &ChannelId,
        row: &GroupRow,
        tokens: &[LiveRecord],
        can_revoke: bool,
    ) -> GroupView {
        let current_verified = tokens
            .iter()
            .filter(|t| t.record.state == TokenState::Live && t.record.refused_at.is_none())
            .max_by_key(|t| (t.record.issued_at, t.record.expires_at))
            .and_then(|t| t.record.verified_at);
        let own_issues = || {
            self.issues_last_hour
                .iter()
                .filter(|(g, _)| *g == row.name)
                .map(|(_, at)| *at)
        };
        let issued_last_hour = own_issues().count();
        GroupView {
            channel: channel.clone(),
            group: row.name.clone(),
            kind: row.kind,
            tokens: tokens.iter().map(|t| t.record.clone()).collect(),
            last_verified_at: current_verified,
            can_revoke,
            removed_at: row.removed_at,
            requests: self
                .requests
                .iter()
                .filter(|(g, _)| *g == row.name)
                .map(|(_, r)| r.clone())
                .collect(),
            issued_last_hour: u32::try_from(issued_last_hour).unwrap_or(u32::MAX),
            last_issue_at: own_issues().max(),
            retry: retry_from_runtime(&row.runtime),
            unsettled_attempts: count(self.unsettled.iter().filter(|g| **g == row.name).count()),
            evicted_at: self
                .evictions
                .iter()
                .filter(|(g, _)| *g == row.name)
                .map(|(_, at)| *at)
                .max(),
        }
    }

    /// The channel's counts, timers and streak (`live_ours` and
    /// `eviction_suspects` left empty: the driver derives them from the
    /// groups).
    pub fn channel_view(&self) -> ChannelView {
        let row = self.channel.as_ref();
        ChannelView {
            live_ours: 0,
            eviction_suspects: Vec::new(),
            foreign: count(self.foreign.len()),
            lost: count(self.unsettled.len()),
            held_assertion_exp: self.held_assertion_exp,
            issues_last_hour: self.issues_last_hour.clone(),
            last_reconcile_at: row.and_then(|c| c.last_reconcile_at),
            reconcile_retry: row.and_then(|c| {
                (c.reconcile.failures > 0).then(|| RetryState {
                    failures: c.reconcile.failures,
                    kind: FailureKind::Transient,
                    step: Some(StepKind::Reconcile),
                    not_before: c
                        .reconcile
                        .retry_not_before
                        .unwrap_or(DateTime::<Utc>::MIN_UTC),
                })
            }),
            full_until: row.and_then(|c| c.full).map(|f| f.until),
            relist_needed: row
                .and_then(|c| c.full.map(|f| c.settled_through_intent < f.intent))
                .unwrap_or(false),
            // The driver takes the larger of this and its own count from
            // the groups (which hold live tokens only, here).
            expired_since_listing: self.expired_since_listing,
        }
    }

    /// The whole channel for the driver.
    pub fn state(&self, channel: &ChannelId, can_revoke: bool) -> ChannelState {
        ChannelState {
            groups: self
                .groups
                .iter()
                .map(|(row, tokens)| self.group_view(channel, row, tokens, can_revoke))
                .collect(),
            view: self.channel_view(),
        }
    }
}

/// [`Snapshot::expired_since_listing`]: read only while the channel's full
/// hold lasts and it has been listed.
fn expired_since_listing(
    store: &Store,
    snapshot: &Snapshot,
    now: DateTime<Utc>,
) -> Result<u32, StoreError> {
    let Some(row) = &snapshot.channel else {
        return Ok(0);
    };
    match (row.full, row.last_reconcile_at) {
        (Some(full), Some(listed)) if full.until > now => {
            store.expired_since_listing(&row.id, listed, now)
        }
        _ => Ok(0),
    }
}

/// One channel's rows, as read, before they become a [`Snapshot`].
#[derive(Default)]
struct Parts {
    /// Tokens recorded live, oldest first.
    live: Vec<LiveRecord>,
    /// Group rows, by name.
    groups: Vec<GroupRow>,
    foreign: Vec<KeyId>,
    unsettled: Vec<GroupName>,
    held_assertion_exp: Option<DateTime<Utc>>,
    /// Issue attempts since an hour before `now` (the bound included).
    issues: Vec<(GroupName, DateTime<Utc>)>,
    requests: Vec<(GroupName, OpenRequest)>,
    evictions: Vec<(GroupName, DateTime<Utc>)>,
}

impl Parts {
    fn assemble(self, channel: Option<ChannelRow>, now: DateTime<Utc>) -> Snapshot {
        // One stable sort and one walk hand each group its tokens, oldest
        // first as read, without a pass over the channel's tokens per group
        // (at 100,000 groups that pass was a twentieth of `status`).
        let mut live = self.live;
        live.sort_by(|a, b| a.group.cmp(&b.group));
        let mut live = live.into_iter().peekable();
        let mut rows = self.groups;
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        let mut groups = Vec::with_capacity(rows.len());
        for row in rows {
            // Tokens of a group without a row cannot exist (foreign keys);
            // were there any, they would be passed by, as before.
            while live.next_if(|t| t.group < row.name).is_some() {}
            let mut tokens = Vec::new();
            while let Some(t) = live.next_if(|t| t.group == row.name) {
                tokens.push(t);
            }
            // A removed group stays while it holds a token still recorded
            // live, even past its expiry: the rotator marks it expired.
            if row.is_active() || !tokens.is_empty() {
                groups.push((row, tokens));
            }
        }
        let window_start = now - policy::rate::ISSUE_WINDOW;
        Snapshot {
            channel,
            groups,
            foreign: self.foreign,
            unsettled: self.unsettled,
            held_assertion_exp: self.held_assertion_exp,
            issues_last_hour: self
                .issues
                .into_iter()
                .filter(|(_, at)| *at > window_start)
                .collect(),
            requests: self.requests,
            evictions: self.evictions,
            expired_since_listing: 0,
        }
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The failure streak the store kept for a group, if one is running. A
/// streak written before schema version 4 has no kind; transient is the
/// conservative reading (it retries sooner).
pub fn retry_from_runtime(runtime: &GroupRuntime) -> Option<RetryState> {
    if runtime.consecutive_failures == 0 {
        return None;
    }
    runtime.retry_not_before.map(|not_before| RetryState {
        failures: runtime.consecutive_failures,
        kind: runtime.failure_kind.unwrap_or(FailureKind::Transient),
        step: runtime.failed_step.as_deref().and_then(StepKind::from_name),
        not_before,
    })
}
