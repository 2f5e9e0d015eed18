//! The `status` report: its JSON shape (the field docs are its
//! documentation) and how it is built from the world at `now`.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{
    ChannelWorld, ConfiguredChannel, DaemonStatus, GroupWorld, JSON_VERSION, StoredState, count,
    in_parallel, worlds,
};
use crate::domain::{ChannelId, FailureKind, GroupName, KeyId};
use crate::policy::{self, GroupView, Hold, Plan, Rules, Severity};
use crate::store::{AlertRecord, Location};
use crate::store::{EventKind, IntentOutcome, IssueIntent};

// ---------------------------------------------------------------------------
// status

/// `linetokd status --json`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// [`JSON_VERSION`].
    pub version: u32,
    /// The instant the report describes.
    pub generated_at: DateTime<Utc>,
    /// The database read: its path, or its PostgreSQL URL with the password
    /// masked.
    pub database: String,
    /// Whether a daemon holds it.
    pub daemon: DaemonStatus,
    /// LINE's cap on live tokens per channel.
    pub channel_token_cap: u32,
    /// The outcome of the daemon's last config reload, if it reloaded:
    /// `ok (...)` or `failed (...): <the problems>`. A failed reload leaves
    /// the previous config in force.
    pub last_reload: Option<ReloadStatus>,
    /// Firing alerts about the daemon as a whole (`config_reload_failed`,
    /// `clock_skew`, `line_receiver_quota`); each channel lists its own.
    pub alerts: Vec<FiringStatus>,
    /// Every configured channel (file order), then stored channels no
    /// longer configured that still hold live tokens.
    pub channels: Vec<ChannelStatus>,
    /// Stored token values by how they are held: `{"key": null, "rows":
    /// N}` for plaintext rows, `{"key": 2, "rows": N}` for rows encrypted
    /// under database key 2 (`[encryption]`). A key that is no longer
    /// listed holds no rows and can be removed from the config.
    pub token_values: Vec<crate::store::ValueCount>,
    /// Watched long-lived tokens (`[channel.long_lived]`), by channel:
    /// the file's current one first, then old values still verified
    /// through LINE's reissue grace, then ended ones. Fingerprints only.
    pub long_lived: Vec<LongLivedStatus>,
    /// LINE Login grants per login channel (counts only), when a login
    /// channel is configured or grants are stored; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login: Option<super::LoginStatus>,
}

/// One watched long-lived token, as `status` shows it (never its value).
#[derive(Debug, Clone, Serialize)]
pub struct LongLivedStatus {
    /// The channel.
    pub channel: ChannelId,
    /// `sha256:` and 8 hex digits of the value's SHA-256.
    pub fingerprint: String,
    /// `current` (the file holds it), `old` (replaced, verified until LINE
    /// rejects it) or `ended`.
    pub role: &'static str,
    /// The last verify's result: `pending`, `valid`, `invalid`,
    /// `wrong_channel` or `unknown`.
    pub result: &'static str,
    /// A few words on it.
    pub detail: String,
    /// When the daemon first read it.
    pub first_seen_at: DateTime<Utc>,
    /// When LINE last said it is valid.
    pub last_valid_at: Option<DateTime<Utc>>,
    /// When LINE last answered a verify of it.
    pub last_verified_at: Option<DateTime<Utc>>,
    /// When `linetokd long-lived retire` revoked it.
    pub retired_at: Option<DateTime<Utc>>,
}

/// One channel.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelStatus {
    /// The channel ID.
    pub id: ChannelId,
    /// Its name.
    pub name: String,
    /// True when the config lists it. A channel that left the config is no
    /// longer looked after: its tokens expire on their own.
    pub in_config: bool,
    /// True when the store knows it (the daemon has run with it).
    pub known_to_daemon: bool,
    /// True when a channel secret is configured (needed to revoke).
    pub can_revoke: bool,
    /// How the daemon serves stateless tokens for the channel, when the
    /// config enables them (`null` otherwise). From the config: stateless
    /// tokens live in the daemon's memory only, never in the store.
    pub stateless: Option<StatelessStatus>,
    /// Live tokens linetokd issued on the channel, all groups.
    pub live_ours: u32,
    /// Live foreign key IDs, as the last reconcile listed them (without
    /// the lost ones).
    pub foreign_live: u32,
    /// Under `[ha]`: listed key IDs of ours that no instance holds:
    /// recorded orphans, and those adopted as lost (an issuance whose
    /// answer never arrived, a takeover's among them, may have made each);
    /// they count against capacity like foreign ones.
    pub lost_live: u32,
    /// Issue attempts since the last reconcile that failed or were lost:
    /// each may be a token LINE counts, so each counts against capacity.
    pub unsettled: u32,
    /// Room for more tokens: cap − ours − foreign − unsettled (negative
    /// when over the cap).
    pub capacity: i64,
    /// Issue attempts in the last hour.
    pub issues_last_hour: u32,
    /// The cap on those.
    pub max_issues_per_hour: u32,
    /// When LINE's list of valid key IDs was last applied.
    pub last_reconcile_at: Option<DateTime<Utc>>,
    /// Seconds since then.
    pub last_reconcile_ago_secs: Option<i64>,
    /// The key-ID listing's failure streak, while one runs.
    pub listing: Option<ListingStatus>,
    /// After LINE's 30-token refusal: the channel counts as full until then.
    pub full_until: Option<DateTime<Utc>>,
    /// Alerts the daemon raised on this channel and has not resolved (the
    /// store's rows: what the daemon itself reported).
    pub firing: Vec<FiringStatus>,
    /// The groups: configured ones, and removed ones still holding tokens.
    pub groups: Vec<GroupStatus>,
    /// Foreign key IDs LINE lists on the channel.
    pub foreign: Vec<ForeignStatus>,
    /// Issuances in flight (or left open by a daemon that stopped: the next
    /// start reports them as lost).
    pub open_intents: Vec<IntentStatus>,
    /// Issuances of the last 7 days that were lost or failed.
    pub recent_unfinished_intents: Vec<IntentStatus>,
    /// Under `[ha]` (a shared PostgreSQL database): the channel's lease,
    /// which instance leads it; `null` on SQLite or before any instance
    /// led it.
    pub lease: Option<LeaseStatus>,
    /// Under `[ha]`: tokens a leader got after its lease ended, never
    /// published (key IDs only).
    pub orphans: Vec<OrphanStatus>,
}

/// A channel's lease row, judged at the database's clock.
#[derive(Debug, Clone, Serialize)]
pub struct LeaseStatus {
    /// The instance that holds (or last held) it.
    pub holder: String,
    /// The grant's epoch (its fencing token): one more per grant.
    pub epoch: i64,
    /// When the grant ends unless renewed (database time).
    pub valid_until: DateTime<Utc>,
    /// True while the grant is valid: `holder` leads the channel.
    pub valid: bool,
}

/// A token a leader got after its lease ended.
#[derive(Debug, Clone, Serialize)]
pub struct OrphanStatus {
    /// The group it was issued for.
    pub group: GroupName,
    /// LINE's key ID.
    pub key_id: KeyId,
    /// The epoch the issue was started under.
    pub epoch: i64,
    /// The instance that got it.
    pub recorded_by: String,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
    /// When LINE lets it expire.
    pub expires_at: DateTime<Utc>,
    /// `revoked`, `failed`, `no_secret`, or `null` while not tried.
    pub revoke_outcome: Option<String>,
}

/// A channel's `[channel.stateless]`, as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StatelessStatus {
    /// `assertion` or `secret`: how each token is issued.
    pub auth: &'static str,
    /// A token with this little left (seconds) is never handed out.
    pub refresh_margin_secs: u64,
    /// Inside this many seconds before expiry a token is refreshed in the
    /// background.
    pub refresh_ahead_secs: u64,
    /// The local guard on calls to LINE.
    pub max_issues_per_minute: u32,
    /// Files rewritten with every new token.
    pub sinks: usize,
    /// How the last call to LINE went, as the daemon noted it (`ok:
    /// issued at ..., expires at ...` or `failing since ...: why; no call
    /// before ...`); `null` before the first call.
    pub state: Option<String>,
    /// When the daemon noted `state`.
    pub state_at: Option<DateTime<Utc>>,
}

/// One group.
#[derive(Debug, Clone, Serialize)]
pub struct GroupStatus {
    /// Its name.
    pub name: GroupName,
    /// The kind of token it is kept with (`v2.1`, `short-lived`).
    pub kind: &'static str,
    /// True when the config lists it.
    pub in_config: bool,
    /// True when the store knows it. A configured group the daemon does
    /// not know yet is added when the daemon starts with this config.
    pub known_to_daemon: bool,
    /// When it left the config, as the store recorded it.
    pub removed_at: Option<DateTime<Utc>>,
    /// For a removed group whose tokens the daemon revokes: when
    /// (`removal_grace` after the removal). None when nothing is left to
    /// revoke or the daemon cannot revoke: its channel has no secret, or
    /// the channel left the config too and nobody looks after it. Such
    /// tokens expire on their own.
    pub revoke_at: Option<DateTime<Utc>>,
    /// Live tokens of the group (2 at most, unless something went wrong).
    pub live_tokens: u32,
    /// The newest live token, the one consumers should use.
    pub current: Option<TokenStatus>,
    /// The live token it replaced.
    pub previous: Option<TokenStatus>,
    /// The earliest a new token can be issued if nothing else changes
    /// (`null` for a removed group).
    pub next_rotation_at: Option<DateTime<Utc>>,
    /// Seconds until then (0 or less: due now).
    pub next_rotation_in_secs: Option<i64>,
    /// Why an issue the group needs waits, if it does.
    pub hold: Option<HoldStatus>,
    /// Operator requests (`rotate`, `revoke`) accepted and not yet carried
    /// out, oldest first.
    pub pending_requests: Vec<RequestStatus>,
    /// Conditions an operator should hear about, at `generated_at`.
    pub alerts: Vec<AlertStatus>,
    /// The running failure streak, if the last attempt failed.
    pub last_error: Option<ErrorStatus>,
    /// The outcome of the group's `on_rotate` hook for its latest token, if
    /// it has one.
    pub last_hook: Option<HookStatus>,
    /// How the group's sink files stand, if it has any and the daemon wrote
    /// them.
    pub sinks: Option<SinkStatus>,
}

/// A group's sink files, as the daemon last wrote (or failed to write)
/// them.
#[derive(Debug, Clone, Serialize)]
pub struct SinkStatus {
    /// True when every sink was written.
    pub ok: bool,
    /// The daemon's note (`failing since ...: <path>: <error>`).
    pub detail: String,
    /// When the last write round ended.
    pub at: DateTime<Utc>,
}

/// The last run of a group's hook.
#[derive(Debug, Clone, Serialize)]
pub struct HookStatus {
    /// True when it succeeded.
    pub ok: bool,
    /// The key ID of the token it announced.
    pub key_id: Option<KeyId>,
    /// What happened (`hook exited with status 1 (5 attempts): ...`).
    pub detail: String,
    /// When it ended.
    pub at: DateTime<Utc>,
}

/// One live token, by key ID: never its value.
#[derive(Debug, Clone, Serialize)]
pub struct TokenStatus {
    /// LINE's key ID.
    pub key_id: KeyId,
    /// When it was issued.
    pub issued_at: DateTime<Utc>,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
    /// Seconds until then.
    pub expires_in_secs: i64,
    /// When LINE last confirmed it valid.
    pub last_verified_at: Option<DateTime<Utc>>,
    /// When it was refused: LINE's verify refused it, or an incident that
    /// could not revoke it condemned it. A refused token is live at LINE
    /// but never handed out (sinks, token API, `linetokd token`).
    pub refused_at: Option<DateTime<Utc>>,
}

/// Why a needed issue waits.
#[derive(Debug, Clone, Serialize)]
pub struct RequestStatus {
    /// `rotate` or `incident`.
    pub kind: &'static str,
    /// When the daemon accepted it.
    pub requested_at: DateTime<Utc>,
    /// Who asked.
    pub by: String,
}

/// The key-ID listing's failure streak of a channel.
#[derive(Debug, Clone, Serialize)]
pub struct ListingStatus {
    /// Failures in a row.
    pub failures: u32,
    /// The next attempt.
    pub next_retry_at: Option<DateTime<Utc>>,
    /// The last error.
    pub error: Option<String>,
}

/// An alert the daemon raised and has not resolved.
#[derive(Debug, Clone, Serialize)]
pub struct FiringStatus {
    /// The group, or none for the channel as a whole.
    pub group: Option<GroupName>,
    /// The label that tells it from others of its name (`key_id` of a
    /// foreign token, `sink`, `hook`, `receiver`), if it has one.
    pub label: Option<AlertLabelStatus>,
    /// The alert's stable name (`no_live_token`, `deadline_at_risk`, ...).
    pub alertname: String,
    /// `warning` or `critical`.
    pub severity: String,
    /// The sentence.
    pub summary: String,
    /// When it started firing.
    pub since: DateTime<Utc>,
}

/// An alert's extra label.
#[derive(Debug, Clone, Serialize)]
pub struct AlertLabelStatus {
    /// Its name.
    pub name: String,
    /// Its value.
    pub value: String,
}

/// Why an issue waits.
#[derive(Debug, Clone, Serialize)]
pub struct HoldStatus {
    /// `retry`, `older_token_live`, `rate_limit`, `reconcile`, `settling`,
    /// `capacity` or `line_paused`.
    pub kind: &'static str,
    /// Until when, when known.
    pub until: Option<DateTime<Utc>>,
    /// For `capacity`: when the daemon next looks at the channel, which
    /// may show room (a key-ID listing, an expiry or revocation of ours,
    /// the end of LINE's 30-token answer); the group issues no sooner, and
    /// `next_rotation_at` says the same. `null` for other holds.
    pub next_look_at: Option<DateTime<Utc>>,
    /// In words.
    pub message: String,
}

/// An alert condition.
#[derive(Debug, Clone, Serialize)]
pub struct AlertStatus {
    /// `warning` or `critical`.
    pub severity: &'static str,
    /// In words.
    pub message: String,
}

/// A group's failure streak.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorStatus {
    /// The last error (`step: what LINE or the network said`).
    pub message: Option<String>,
    /// When it happened.
    pub at: Option<DateTime<Utc>>,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// How it failed (`transient`, `rate_limited`, `permanent`,
    /// `channel_full`, `maybe_issued`), when known.
    pub kind: Option<&'static str>,
    /// The step that failed (`issue`, `verify`, `revoke`).
    pub step: Option<String>,
    /// No new attempt before this.
    pub next_retry_at: Option<DateTime<Utc>>,
    /// Seconds until then.
    pub next_retry_in_secs: Option<i64>,
}

/// A listed key ID that is not in the store.
#[derive(Debug, Clone, Serialize)]
pub struct ForeignStatus {
    /// The key ID.
    pub key_id: KeyId,
    /// True under `[ha]` when an issuance of unknown outcome may have made
    /// it: ours and lost (`lost_token`), not another issuer's.
    pub lost: bool,
    /// True when it is a recorded orphan (listed under the channel's
    /// `orphans`): ours, known, never published.
    pub orphan: bool,
    /// The first reconcile that saw it.
    pub first_seen_at: DateTime<Utc>,
    /// The last reconcile that saw it.
    pub last_seen_at: DateTime<Utc>,
}

/// An issuance from the journal.
#[derive(Debug, Clone, Serialize)]
pub struct IntentStatus {
    /// The journal entry's ID.
    pub id: i64,
    /// The group the token was for.
    pub group: GroupName,
    /// `open`, `failed` or `lost`.
    pub outcome: &'static str,
    /// When it began.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Under `[ha]`: the key ID of the token LINE answered it with when
    /// that token was recorded as an orphan (its outcome is known).
    pub orphan: Option<KeyId>,
    /// Why it failed or was lost.
    pub error: Option<String>,
}

/// Builds the status report at `now`.
pub fn status_report(
    now: DateTime<Utc>,
    database: &Location,
    configured: &[ConfiguredChannel],
    rules: &Rules,
    state: &StoredState,
    daemon: DaemonStatus,
) -> StatusReport {
    let worlds = worlds(now, configured, state);
    let channels = in_parallel(&worlds, |w| channel_status(now, w, rules, state));
    StatusReport {
        version: JSON_VERSION,
        generated_at: now,
        database: database.to_string(),
        daemon,
        channel_token_cap: rules.channel_token_cap,
        last_reload: state.last_reload.as_ref().map(|n| ReloadStatus {
            ok: n.value.starts_with("ok"),
            outcome: n.value.clone(),
            at: n.at,
        }),
        alerts: state.daemon_firing.iter().map(firing_status).collect(),
        channels,
        token_values: state.token_values.clone(),
        long_lived: state
            .long_lived
            .iter()
            .map(|r| LongLivedStatus {
                channel: r.channel.clone(),
                fingerprint: r.fingerprint.clone(),
                role: r.role.as_str(),
                result: r.result.as_str(),
                detail: r.detail.clone(),
                first_seen_at: r.first_seen_at,
                last_valid_at: r.last_valid_at,
                last_verified_at: r.last_checked_at,
                retired_at: r.retired_at,
            })
            .collect(),
        // `cli` adds it (`login_status`): it needs `[login]`'s window.
        login: None,
    }
}

/// A stored firing alert as the report shows it.
pub(super) fn firing_status(a: &AlertRecord) -> FiringStatus {
    FiringStatus {
        group: a.group.clone(),
        label: a.label.as_ref().map(|(name, value)| AlertLabelStatus {
            name: name.clone(),
            value: value.clone(),
        }),
        alertname: a.alertname.clone(),
        severity: a.severity.clone(),
        summary: a.summary.clone(),
        since: a.started_at,
    }
}

/// The last config reload.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadStatus {
    /// True when it was applied.
    pub ok: bool,
    /// What happened, with the problems of a failed one.
    pub outcome: String,
    /// When.
    pub at: DateTime<Utc>,
}

fn channel_status(
    now: DateTime<Utc>,
    w: &ChannelWorld<'_>,
    rules: &Rules,
    state: &StoredState,
) -> ChannelStatus {
    let views = w.views();
    let cv = w.channel_view(now, &views);
    // The same driver the daemon runs, so status shows what it would do.
    // A channel the daemon no longer looks after is never planned.
    let decision = w.managed().then(|| {
        policy::drive(
            now,
            &policy::ChannelState {
                groups: views.clone(),
                view: cv.clone(),
            },
            rules,
        )
    });
    let groups = w
        .groups
        .iter()
        .zip(&views)
        .enumerate()
        .map(|(i, (g, view))| {
            let plan = decision.as_ref().and_then(|d| d.plans.get(i));
            group_status(now, w, g, view, plan, rules)
        })
        .collect();
    let channel_row = w.stored.and_then(|s| s.snapshot.channel.as_ref());
    let intent = |i: &IssueIntent| IntentStatus {
        orphan: state
            .ha
            .orphans
            .iter()
            .find(|o| o.intent == i.id.get())
            .map(|o| o.key_id.clone()),
        id: i.id.get(),
        group: i.group.clone(),
        outcome: i.outcome.as_str(),
        started_at: i.started_at,
        finished_at: i.finished_at,
        error: i.error.clone(),
    };
    let window_start = now - policy::rate::ISSUE_WINDOW;
    // Listed key IDs the store does not hold, sorted as the daemon sorts
    // them (`policy::Unheld`): orphans, under [ha] (the database has lease
    // rows) those adopted as lost, and foreign ones.
    let orphans: Vec<KeyId> = state
        .ha
        .orphans
        .iter()
        .filter(|o| o.channel == w.id)
        .map(|o| o.key_id.clone())
        .collect();
    let unheld = w.stored.map_or_else(policy::Unheld::default, |s| {
        let listed: Vec<(KeyId, DateTime<Utc>)> = s
            .foreign
            .iter()
            .map(|k| (k.key_id.clone(), k.first_seen_at))
            .collect();
        let settled = channel_row.map_or(0, |c| c.settled_through_intent);
        let adopt = !state.ha.leases.is_empty();
        policy::Unheld::sort(&listed, &orphans, &s.unknown, settled, adopt)
    });
    let lease = state
        .ha
        .leases
        .iter()
        .find(|(c, _)| *c == w.id)
        .map(|(_, l)| LeaseStatus {
            holder: l.holder.as_str().to_owned(),
            epoch: l.epoch.0,
            valid_until: l.valid_until,
            valid: state.ha.db_now.is_some_and(|db_now| l.is_valid_at(db_now)),
        });
    let orphans = state
        .ha
        .orphans
        .iter()
        .filter(|o| o.channel == w.id)
        .map(|o| OrphanStatus {
            group: o.group.clone(),
            key_id: o.key_id.clone(),
            epoch: o.epoch.0,
            recorded_by: o.recorded_by.clone(),
            recorded_at: o.recorded_at,
            expires_at: o.expires_at,
            revoke_outcome: o.revoke_outcome.clone(),
        })
        .collect();
    ChannelStatus {
        lease,
        orphans,
        id: w.id.clone(),
        name: w.name.clone(),
        in_config: w.managed(),
        known_to_daemon: w.stored.is_some_and(|s| s.snapshot.channel.is_some()),
        can_revoke: w.configured.is_some_and(|c| c.can_revoke),
        stateless: w
            .configured
            .and_then(|c| c.stateless.as_ref())
            .map(|s| StatelessStatus {
                auth: s.auth.as_str(),
                refresh_margin_secs: s.refresh_margin.as_secs(),
                refresh_ahead_secs: s.refresh_ahead.as_secs(),
                max_issues_per_minute: s.max_issues_per_minute,
                sinks: s.sinks,
                state: state.stateless.get(&w.id).map(|n| n.value.clone()),
                state_at: state.stateless.get(&w.id).map(|n| n.at),
            }),
        live_ours: cv.live_ours,
        foreign_live: cv.foreign.saturating_sub(count(unheld.ours())),
        lost_live: count(unheld.ours()),
        unsettled: cv.lost,
        capacity: policy::free_capacity(&cv, rules, 0),
        issues_last_hour: count(
            cv.issues_last_hour
                .iter()
                .filter(|(_, t)| *t > window_start)
                .count(),
        ),
        max_issues_per_hour: rules.max_issues_per_hour,
        last_reconcile_at: cv.last_reconcile_at,
        last_reconcile_ago_secs: cv.last_reconcile_at.map(|at| (now - at).num_seconds()),
        listing: channel_row
            .filter(|c| c.reconcile.failures > 0)
            .map(|c| ListingStatus {
                failures: c.reconcile.failures,
                next_retry_at: c.reconcile.retry_not_before,
                error: c.reconcile.error.clone(),
            }),
        full_until: cv.full_until.filter(|at| *at > now),
        firing: w
            .stored
            .map(|s| s.firing.iter().map(firing_status).collect())
            .unwrap_or_default(),
        groups,
        foreign: w
            .stored
            .map(|s| {
                s.foreign
                    .iter()
                    .map(|k| ForeignStatus {
                        lost: unheld.lost.contains(&k.key_id),
                        orphan: unheld.orphans.contains(&k.key_id),
                        key_id: k.key_id.clone(),
                        first_seen_at: k.first_seen_at,
                        last_seen_at: k.last_seen_at,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        open_intents: state
            .open_intents
            .iter()
            .filter(|i| i.channel_id == w.id)
            .map(intent)
            .collect(),
        recent_unfinished_intents: w
            .stored
            .map(|s| {
                s.recent_intents
                    .iter()
                    .filter(|i| matches!(i.outcome, IntentOutcome::Lost | IntentOutcome::Failed))
                    .map(intent)
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn group_status(
    now: DateTime<Utc>,
    w: &ChannelWorld<'_>,
    g: &GroupWorld<'_>,
    view: &GroupView,
    plan: Option<&Plan>,
    rules: &Rules,
) -> GroupStatus {
    let live = view.live_tokens(now);
    let token = |i: usize| {
        live.get(i).map(|t| TokenStatus {
            key_id: t.key_id.clone(),
            issued_at: t.issued_at,
            expires_at: t.expires_at,
            expires_in_secs: (t.expires_at - now).num_seconds(),
            last_verified_at: g
                .tokens
                .iter()
                .find(|s| s.record.key_id == t.key_id)
                .and_then(|s| s.record.verified_at),
            refused_at: t.refused_at,
        })
    };
    let runtime = g.row.map(|r| &r.runtime);
    // Only a running streak: a streak ended by a config change or `rotate`
    // keeps its last error in the row (the events hold the history), and
    // showing it made a healthy group read "failing, 0 failure(s) in a
    // row" (found by an outside test).
    let last_error = runtime
        .filter(|r| r.consecutive_failures > 0)
        .map(|r| ErrorStatus {
            message: r.last_error.clone(),
            at: r.last_error_at,
            consecutive_failures: r.consecutive_failures,
            kind: r.failure_kind.map(FailureKind::as_str),
            step: r.failed_step.clone(),
            next_retry_at: r.retry_not_before,
            next_retry_in_secs: r.retry_not_before.map(|at| (at - now).num_seconds()),
        });
    let next_rotation_at = plan.and_then(|p| p.next_rotation_at);
    GroupStatus {
        name: view.group.clone(),
        kind: view.kind.as_str(),
        in_config: g.in_config,
        known_to_daemon: g.row.is_some(),
        removed_at: g.row.and_then(|r| r.removed_at),
        // `view.can_revoke` is false for a channel that left the config.
        revoke_at: view
            .removed_at
            .filter(|_| view.revokes() && !live.is_empty())
            .map(|at| {
                at.checked_add_signed(rules.removal_grace)
                    .unwrap_or(DateTime::<Utc>::MAX_UTC)
            }),
        live_tokens: count(live.len()),
        current: token(0),
        previous: token(1),
        next_rotation_at,
        next_rotation_in_secs: next_rotation_at.map(|at| (at - now).num_seconds()),
        hold: plan.and_then(hold_status),
        pending_requests: view
            .requests
            .iter()
            .map(|r| RequestStatus {
                kind: r.kind.as_str(),
                requested_at: r.at,
                by: r.by.clone(),
            })
            .collect(),
        alerts: plan
            .map(|p| {
                p.alerts
                    .iter()
                    .map(|a| AlertStatus {
                        severity: severity_name(a.severity()),
                        message: a.to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        last_error,
        last_hook: w
            .stored
            .and_then(|s| s.hooks.get(&view.group))
            .map(|e| HookStatus {
                ok: e.kind == EventKind::HookSucceeded,
                key_id: e.key_id.clone(),
                detail: e.detail.clone(),
                at: e.at,
            }),
        sinks: w
            .stored
            .and_then(|s| s.sinks.get(&view.group))
            .map(|n| SinkStatus {
                ok: n.value.starts_with("ok"),
                detail: n.value.clone(),
                at: n.at,
            }),
    }
}

/// What `status` says about a plan's hold, if it has one.
pub(super) fn hold_status(plan: &Plan) -> Option<HoldStatus> {
    let hold = plan.hold.as_ref()?;
    let (kind, until) = match hold {
        Hold::Retry { until } => ("retry", Some(*until)),
        Hold::OlderTokenLive { until } => ("older_token_live", Some(*until)),
        Hold::RateLimit { until } => ("rate_limit", Some(*until)),
        Hold::Reconcile => ("reconcile", None),
        Hold::Settling { until } => ("settling", Some(*until)),
        // Nothing says when a full channel frees up: the hold has no end,
        // only looks.
        Hold::Capacity { .. } => ("capacity", None),
        Hold::LinePaused { until } => ("line_paused", Some(*until)),
    };
    // The driver gives a group waiting for room the channel's next look as
    // its next rotation ([`crate::policy::drive`]).
    let next_look_at = match hold {
        Hold::Capacity { .. } => plan.next_rotation_at,
        _ => None,
    };
    // The sentence is the hold's `Display` (`policy::words`).
    let mut message = hold.to_string();
    if let Some(at) = next_look_at {
        // As the holds' own words write instants (`policy::words`).
        let at = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        message.push_str(&format!("; the next look for room is at {at}"));
    }
    Some(HoldStatus {
        kind,
        until,
        next_look_at,
        message,
    })
}

pub(super) fn severity_name(s: Severity) -> &'static str {
    s.text()
}
