//! `linetokd status` and `linetokd plan`: what the daemon knows and what it
//! will do, read from the store while the daemon runs.
//!
//! The store is opened read-only (WAL lets it be read beside the writer);
//! nothing here writes it or takes its writer lock. Whether a daemon runs
//! is told by [`probe_daemon`] from the kernel's lock table, without
//! touching the lock (see there).
//!
//! Both commands see the world the same way ([`read_store`], then
//! `worlds`): each channel's store snapshot, built exactly as the rotator
//! builds its views ([`crate::snapshot`]), with the config file
//! applied on top the way the daemon applies it at start: configured groups
//! the store does not know yet start fresh, stored groups the config no
//! longer lists count as removed now. `status` plans every group once at
//! `now` ([`policy::plan_group`]) for its next rotation, hold and alerts;
//! `plan` runs the policy forward ([`crate::forecast`]).
//!
//! Output: a compact human table, or (`--json`) the serde structs below,
//! whose field docs are the documentation of the JSON shape. Times are
//! RFC 3339 in UTC; every `*_in_secs`/`*_ago_secs` number is relative to
//! `generated_at`. Token values are never read into any report: only key
//! IDs, times and the store's screened error texts are.
//!
//! Depends on `store`, `snapshot` (shared view building),
//! `policy`, `forecast` and `domain`. Reads no config file and no clock:
//! `cli` passes the configured channels ([`ConfiguredChannel`]), the rules
//! and `now`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde::Serialize;

use crate::delivery::{SINK_NOTE_PREFIX, sink_note_key};
use crate::domain::{ChannelId, FailureKind, GroupName, KeyId};
use crate::forecast::{self, Action, ChannelInput, Routine, SYNTHETIC_KEY_PREFIX};
use crate::policy::{
    self, Alert, ChannelView, GroupView, Hold, IssueReason, Plan, RevokeReason, Rules, Severity,
};
use crate::snapshot::Snapshot;
use crate::store::{
    DaemonNote, Event, EventKind, FiringAlert, ForeignKid, GroupRow, IntentOutcome, IssueIntent,
    LAST_RELOAD, Scope, Store, StoreError, StoredToken, WriterLock,
};

/// The version of the JSON shapes below; bumped only when a field changes
/// meaning or disappears (new fields may appear without a bump).
pub const JSON_VERSION: u32 = 1;

/// How far back `status` lists lost and failed issuances.
pub const RECENT_INTENTS: Duration = Duration::days(7);

/// One channel as the config file lists it: what `status` and `plan` need
/// of the config (`cli` builds it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfiguredChannel {
    /// The channel ID.
    pub id: ChannelId,
    /// The operator's name for it.
    pub name: String,
    /// Its groups, in file order.
    pub groups: Vec<GroupName>,
    /// True when a channel secret is configured (needed to revoke).
    pub can_revoke: bool,
}

/// Everything `status` and `plan` read from the store, at one instant.
#[derive(Debug, Clone)]
pub struct StoredState {
    channels: BTreeMap<ChannelId, StoredChannel>,
    open_intents: Vec<IssueIntent>,
    last_reload: Option<DaemonNote>,
}

#[derive(Debug, Clone)]
struct StoredChannel {
    snapshot: Snapshot,
    foreign: Vec<ForeignKid>,
    /// Issue attempts within [`RECENT_INTENTS`] that failed or were lost.
    recent_intents: Vec<IssueIntent>,
    /// Each group's latest hook outcome.
    hooks: BTreeMap<GroupName, Event>,
    /// The alerts the daemon raised on the channel and has not resolved.
    firing: Vec<FiringAlert>,
    /// Each group's sink state, as the daemon last noted it.
    sinks: BTreeMap<GroupName, DaemonNote>,
}

impl StoredState {
    /// A store that holds nothing: what `plan` starts from before the
    /// daemon has ever run.
    pub fn empty() -> Self {
        Self {
            channels: BTreeMap::new(),
            open_intents: Vec::new(),
            last_reload: None,
        }
    }
}

/// Reads every stored channel's snapshot, listed foreign key IDs and
/// recent issuances at `now`.
///
/// # Errors
/// [`StoreError`] when a query fails.
pub fn read_store(store: &Store, now: DateTime<Utc>) -> Result<StoredState, StoreError> {
    // One query per table for all channels, sorted out here: a query per
    // channel and group would be hundreds of thousands at 100k groups.
    let mut channels: BTreeMap<ChannelId, StoredChannel> = Snapshot::read_all(store, now)?
        .into_iter()
        .filter_map(|snapshot| {
            let id = snapshot.channel.as_ref()?.id.clone();
            Some((
                id,
                StoredChannel {
                    snapshot,
                    foreign: Vec::new(),
                    recent_intents: Vec::new(),
                    hooks: BTreeMap::new(),
                    firing: Vec::new(),
                    sinks: BTreeMap::new(),
                },
            ))
        })
        .collect();
    for kid in store.foreign_kids_in(Scope::All)? {
        if let Some(c) = channels.get_mut(&kid.channel_id)
            && kid.gone_at.is_none()
        {
            c.foreign.push(kid);
        }
    }
    for intent in store.unfinished_intents_in(Scope::All, now - RECENT_INTENTS)? {
        if let Some(c) = channels.get_mut(&intent.channel_id) {
            c.recent_intents.push(intent);
        }
    }
    for event in store.latest_group_events(&[EventKind::HookSucceeded, EventKind::HookFailed])? {
        if let (Some(c), Some(group)) = (channels.get_mut(&event.channel_id), event.group.clone()) {
            c.hooks.insert(group, event);
        }
    }
    for alert in store.firing_alerts(None)? {
        if let Some(c) = channels.get_mut(&alert.channel_id) {
            c.firing.push(alert);
        }
    }
    let sink_notes: BTreeMap<String, DaemonNote> = store
        .notes_with_prefix(SINK_NOTE_PREFIX)?
        .into_iter()
        .map(|n| (n.key.clone(), n))
        .collect();
    for (id, c) in &mut channels {
        for (group, _) in &c.snapshot.groups {
            if let Some(note) = sink_notes.get(&sink_note_key(id, &group.name)) {
                c.sinks.insert(group.name.clone(), note.clone());
            }
        }
    }
    Ok(StoredState {
        channels,
        open_intents: store.open_intents()?,
        last_reload: store.note(LAST_RELOAD)?,
    })
}

// ---------------------------------------------------------------------------
// The world: store and config together.

/// One channel as the daemon will see it once it runs the config file.
struct ChannelWorld<'a> {
    id: ChannelId,
    name: String,
    configured: Option<&'a ConfiguredChannel>,
    stored: Option<&'a StoredChannel>,
    groups: Vec<GroupWorld<'a>>,
    /// `live_ours` still to be counted.
    view: ChannelView,
}

struct GroupWorld<'a> {
    view: GroupView,
    row: Option<&'a GroupRow>,
    tokens: &'a [StoredToken],
    in_config: bool,
}

impl ChannelWorld<'_> {
    fn managed(&self) -> bool {
        self.configured.is_some()
    }

    fn views(&self) -> Vec<GroupView> {
        self.groups.iter().map(|g| g.view.clone()).collect()
    }

    fn channel_view(&self, now: DateTime<Utc>, views: &[GroupView]) -> ChannelView {
        ChannelView {
            live_ours: policy::live_ours(now, views),
            ..self.view.clone()
        }
    }
}

/// Configured channels in file order, then stored channels the config no
/// longer lists that still hold live tokens.
fn worlds<'a>(
    now: DateTime<Utc>,
    configured: &'a [ConfiguredChannel],
    state: &'a StoredState,
) -> Vec<ChannelWorld<'a>> {
    let mut out: Vec<ChannelWorld<'a>> = configured
        .iter()
        .map(|c| world(now, c.id.clone(), Some(c), state.channels.get(&c.id)))
        .collect();
    let configured_ids: BTreeSet<&ChannelId> = configured.iter().map(|c| &c.id).collect();
    for (id, stored) in &state.channels {
        if configured_ids.contains(id) {
            continue;
        }
        let w = world(now, id.clone(), None, Some(stored));
        if w.groups.iter().any(|g| !g.view.live_tokens(now).is_empty()) {
            out.push(w);
        }
    }
    out
}

fn world<'a>(
    now: DateTime<Utc>,
    id: ChannelId,
    configured: Option<&'a ConfiguredChannel>,
    stored: Option<&'a StoredChannel>,
) -> ChannelWorld<'a> {
    let can_revoke = configured.is_some_and(|c| c.can_revoke);
    let wanted = |name: &GroupName| configured.is_some_and(|c| c.groups.contains(name));
    let mut groups: Vec<GroupWorld<'a>> = Vec::new();
    if let Some(stored) = stored {
        for (row, tokens) in &stored.snapshot.groups {
            let mut view = stored.snapshot.group_view(&id, row, tokens, can_revoke);
            let in_config = wanted(&row.name);
            // As `Store::sync_config` will: back in the config means active;
            // gone from it means removed, from now if not already.
            view.removed_at = if in_config {
                None
            } else {
                row.removed_at.or(Some(now))
            };
            groups.push(GroupWorld {
                view,
                row: Some(row),
                tokens,
                in_config,
            });
        }
    }
    if let Some(c) = configured {
        for name in &c.groups {
            if !groups.iter().any(|g| &g.view.group == name) {
                groups.push(GroupWorld {
                    view: GroupView::new(id.clone(), name.clone(), c.can_revoke),
                    row: None,
                    tokens: &[],
                    in_config: true,
                });
            }
        }
    }
    // The daemon plans a channel's groups in the store's order: by name.
    groups.sort_by(|a, b| a.view.group.cmp(&b.view.group));
    let view = stored.map_or_else(ChannelView::default, |s| s.snapshot.channel_view());
    let name = configured
        .map(|c| c.name.clone())
        .or_else(|| stored.and_then(|s| s.snapshot.channel.as_ref().map(|c| c.name.clone())))
        .unwrap_or_else(|| id.to_string());
    ChannelWorld {
        id,
        name,
        configured,
        stored,
        groups,
        view,
    }
}

// ---------------------------------------------------------------------------
// Is a daemon running?

/// Whether a daemon holds the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DaemonStatus {
    /// True when a process holds the writer lock, false when none does,
    /// `null` when it cannot be told (no readable `/proc/locks`).
    pub running: Option<bool>,
    /// The holder's PID as it wrote it into `<database>.lock` (or as the
    /// kernel lists it); when `running` is `null`, whatever PID the lock
    /// file holds.
    pub pid: Option<u32>,
    /// The lock file.
    pub lock_file: PathBuf,
    /// Where the running daemon's HTTP listener is bound (health, metrics,
    /// the token API), as it recorded in its state directory; `null` when
    /// no running daemon recorded one.
    pub http: Option<SocketAddr>,
}

/// Tells whether a daemon holds the writer lock of the database at `db`.
///
/// The lock is an exclusive `flock` on `<db>.lock`. Trying to take it, even
/// shared and released at once, would for that instant make a daemon that
/// is starting refuse to run, so this never locks: it looks the lock file's
/// inode up in the kernel's table of held locks (`/proc/locks`). Only the
/// inode is compared, because the device numbers there are the
/// superblock's, which differ from `stat`'s on btrfs subvolumes and
/// overlay filesystems; a wrong "running" would need another file with the
/// same inode number to be `flock`ed on another filesystem. Where
/// `/proc/locks` cannot be read (not Linux), the answer is "unknown".
pub fn probe_daemon(db: &Path) -> DaemonStatus {
    let lock_file = WriterLock::path_for(db);
    let meta = match std::fs::metadata(&lock_file) {
        Ok(meta) => meta,
        Err(e) => {
            // No lock file: no daemon has ever opened this database for
            // writing. Anything else (permissions): cannot tell.
            let running = (e.kind() == std::io::ErrorKind::NotFound).then_some(false);
            return DaemonStatus {
                running,
                pid: None,
                lock_file,
                http: None,
            };
        }
    };
    let pid_in_file = std::fs::read_to_string(&lock_file)
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok());
    match std::fs::read_to_string("/proc/locks") {
        Ok(table) => match flock_holder(&table, meta.ino()) {
            Some(kernel_pid) => DaemonStatus {
                running: Some(true),
                pid: pid_in_file.or(kernel_pid),
                lock_file,
                http: None,
            },
            None => DaemonStatus {
                running: Some(false),
                pid: None,
                lock_file,
                http: None,
            },
        },
        Err(_) => DaemonStatus {
            running: None,
            pid: pid_in_file,
            lock_file,
            http: None,
        },
    }
}

/// Finds an exclusive `flock` on inode `ino` in the text of `/proc/locks`
/// (`1: FLOCK  ADVISORY  WRITE 1234 fe:00:5800560 0 EOF`; waiters are
/// marked `->` and skipped). `Some(pid)` when held, with the holder's PID
/// if the kernel shows one.
fn flock_holder(table: &str, ino: u64) -> Option<Option<u32>> {
    table.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, kind, _, access, pid, dev_ino, ..] = fields.as_slice() else {
            return None;
        };
        if *kind != "FLOCK" || *access != "WRITE" {
            return None;
        }
        let inode: u64 = dev_ino.rsplit(':').next()?.parse().ok()?;
        (inode == ino).then(|| pid.parse::<u32>().ok().filter(|p| *p > 0))
    })
}

// ---------------------------------------------------------------------------
// status

/// `linetokd status --json`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// [`JSON_VERSION`].
    pub version: u32,
    /// The instant the report describes.
    pub generated_at: DateTime<Utc>,
    /// The database read.
    pub database: PathBuf,
    /// Whether a daemon holds it.
    pub daemon: DaemonStatus,
    /// LINE's cap on live tokens per channel.
    pub channel_token_cap: u32,
    /// The outcome of the daemon's last config reload, if it reloaded:
    /// `ok (...)` or `failed (...): <the problems>`. A failed reload leaves
    /// the previous config in force.
    pub last_reload: Option<ReloadStatus>,
    /// Every configured channel (file order), then stored channels no
    /// longer configured that still hold live tokens.
    pub channels: Vec<ChannelStatus>,
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
    /// Live tokens linetokd issued on the channel, all groups.
    pub live_ours: u32,
    /// Live foreign key IDs, as the last reconcile listed them.
    pub foreign_live: u32,
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
}

/// One group.
#[derive(Debug, Clone, Serialize)]
pub struct GroupStatus {
    /// Its name.
    pub name: GroupName,
    /// True when the config lists it.
    pub in_config: bool,
    /// True when the store knows it. A configured group the daemon does
    /// not know yet is added when the daemon starts with this config.
    pub known_to_daemon: bool,
    /// When it left the config, as the store recorded it.
    pub removed_at: Option<DateTime<Utc>>,
    /// For a removed group: when its tokens are revoked (`removal_grace`
    /// after the removal).
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
    /// The alert's stable name (`no_live_token`, `deadline_at_risk`, ...).
    pub alertname: String,
    /// `warning` or `critical`.
    pub severity: String,
    /// The sentence.
    pub summary: String,
    /// When it started firing.
    pub since: DateTime<Utc>,
}

/// Why an issue waits.
#[derive(Debug, Clone, Serialize)]
pub struct HoldStatus {
    /// `retry`, `older_token_live`, `rate_limit`, `reconcile` or
    /// `capacity`.
    pub kind: &'static str,
    /// Until when, when known.
    pub until: Option<DateTime<Utc>>,
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

/// A foreign key ID.
#[derive(Debug, Clone, Serialize)]
pub struct ForeignStatus {
    /// The key ID.
    pub key_id: KeyId,
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
    /// Why it failed or was lost.
    pub error: Option<String>,
}

/// Builds the status report at `now`.
pub fn status_report(
    now: DateTime<Utc>,
    database: &Path,
    configured: &[ConfiguredChannel],
    rules: &Rules,
    state: &StoredState,
    daemon: DaemonStatus,
) -> StatusReport {
    let channels = worlds(now, configured, state)
        .iter()
        .map(|w| channel_status(now, w, rules, state))
        .collect();
    StatusReport {
        version: JSON_VERSION,
        generated_at: now,
        database: database.to_path_buf(),
        daemon,
        channel_token_cap: rules.channel_token_cap,
        last_reload: state.last_reload.as_ref().map(|n| ReloadStatus {
            ok: n.value.starts_with("ok"),
            outcome: n.value.clone(),
            at: n.at,
        }),
        channels,
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
        id: i.id.get(),
        group: i.group.clone(),
        outcome: i.outcome.as_str(),
        started_at: i.started_at,
        finished_at: i.finished_at,
        error: i.error.clone(),
    };
    let window_start = now - policy::rate::ISSUE_WINDOW;
    ChannelStatus {
        id: w.id.clone(),
        name: w.name.clone(),
        in_config: w.managed(),
        known_to_daemon: w.stored.is_some_and(|s| s.snapshot.channel.is_some()),
        can_revoke: w.configured.is_some_and(|c| c.can_revoke),
        live_ours: cv.live_ours,
        foreign_live: cv.foreign,
        unsettled: cv.lost,
        capacity: policy::free_capacity(&cv, rules, 0),
        issues_last_hour: count(
            cv.issue_times_last_hour
                .iter()
                .filter(|t| **t > window_start)
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
            .map(|s| {
                s.firing
                    .iter()
                    .map(|a| FiringStatus {
                        group: a.group.clone(),
                        alertname: a.alertname.clone(),
                        severity: a.severity.clone(),
                        summary: a.summary.clone(),
                        since: a.started_at,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        groups,
        foreign: w
            .stored
            .map(|s| {
                s.foreign
                    .iter()
                    .map(|k| ForeignStatus {
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
                .and_then(|s| s.last_verified_at),
        })
    };
    let runtime = g.row.map(|r| &r.runtime);
    let last_error = runtime
        .filter(|r| r.consecutive_failures > 0 || r.last_error.is_some())
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
        in_config: g.in_config,
        known_to_daemon: g.row.is_some(),
        removed_at: g.row.and_then(|r| r.removed_at),
        revoke_at: view.removed_at.filter(|_| !live.is_empty()).map(|at| {
            at.checked_add_signed(rules.removal_grace)
                .unwrap_or(DateTime::<Utc>::MAX_UTC)
        }),
        live_tokens: count(live.len()),
        current: token(0),
        previous: token(1),
        next_rotation_at,
        next_rotation_in_secs: next_rotation_at.map(|at| (at - now).num_seconds()),
        hold: plan.and_then(|p| p.hold.as_ref()).map(hold_status),
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

fn hold_status(hold: &Hold) -> HoldStatus {
    let (kind, until) = match hold {
        Hold::Retry { until } => ("retry", Some(*until)),
        Hold::OlderTokenLive { until } => ("older_token_live", Some(*until)),
        Hold::RateLimit { until } => ("rate_limit", Some(*until)),
        Hold::Reconcile => ("reconcile", None),
        Hold::Capacity { .. } => ("capacity", None),
    };
    HoldStatus {
        kind,
        until,
        // The sentence is the hold's `Display` (`policy::words`).
        message: hold.to_string(),
    }
}

fn severity_name(s: Severity) -> &'static str {
    s.text()
}

/// The status report as a compact human table.
pub fn render_status(report: &StatusReport) -> String {
    let now = report.generated_at;
    let mut out = String::new();
    let _ = writeln!(out, "linetokd status at {}", ts(now));
    let _ = writeln!(out, "database: {}", report.database.display());
    let daemon = match (report.daemon.running, report.daemon.pid) {
        (Some(true), Some(pid)) => format!("running (pid {pid})"),
        (Some(true), None) => "running".to_owned(),
        (Some(false), _) => "not running".to_owned(),
        (None, Some(pid)) => format!("unknown (the lock file names pid {pid})"),
        (None, None) => "unknown".to_owned(),
    };
    let daemon = match report.daemon.http {
        Some(http) if report.daemon.running != Some(false) => {
            format!("{daemon}, HTTP on http://{http}")
        }
        _ => daemon,
    };
    let _ = writeln!(out, "daemon:   {daemon}");
    if let Some(reload) = &report.last_reload {
        let _ = writeln!(
            out,
            "last config reload at {}: {}",
            ts(reload.at),
            reload.outcome
        );
    }
    if report.channels.is_empty() {
        let _ = writeln!(out, "\nno channels configured");
    }
    for c in &report.channels {
        let _ = writeln!(out);
        let mut title = format!("channel {} ({})", c.name, c.id);
        if !c.in_config {
            title.push_str(
                " — no longer in the config: not looked after, its tokens expire on their own",
            );
        } else if !c.known_to_daemon {
            title.push_str(" — not yet known to the daemon: it is added at the next start");
        }
        let _ = writeln!(out, "{title}");
        let _ = writeln!(
            out,
            "  tokens: {} ours, {} foreign, {} unsettled; capacity {} of {}",
            c.live_ours, c.foreign_live, c.unsettled, c.capacity, report.channel_token_cap
        );
        let _ = writeln!(
            out,
            "  issued in the last hour: {} of {}; last reconcile: {}; channel secret: {}",
            c.issues_last_hour,
            c.max_issues_per_hour,
            c.last_reconcile_at
                .map_or_else(|| "never".to_owned(), |at| when(now, at)),
            if c.can_revoke {
                "yes"
            } else {
                "no (cannot revoke)"
            },
        );
        if let Some(l) = &c.listing {
            let _ = writeln!(
                out,
                "  listing key IDs failed {} time(s) in a row{}: {}",
                l.failures,
                l.next_retry_at
                    .map(|at| format!(", next attempt {}", when(now, at)))
                    .unwrap_or_default(),
                l.error.as_deref().unwrap_or("(no message)")
            );
        }
        if let Some(until) = c.full_until {
            let _ = writeln!(
                out,
                "  LINE refused an issue: the channel holds 30 live tokens; trying again {}",
                when(now, until)
            );
        }
        for a in &c.firing {
            let _ = writeln!(
                out,
                "  firing since {}: {} {}{}: {}",
                when(now, a.since),
                a.severity.to_uppercase(),
                a.alertname,
                a.group
                    .as_ref()
                    .map(|g| format!(" ({g})"))
                    .unwrap_or_default(),
                a.summary
            );
        }
        let mut rows = vec![vec![
            "GROUP".to_owned(),
            "CURRENT KEY".to_owned(),
            "EXPIRES".to_owned(),
            "PREVIOUS KEY".to_owned(),
            "LIVE".to_owned(),
            "NEXT ROTATION".to_owned(),
            "STATE".to_owned(),
        ]];
        for g in &c.groups {
            rows.push(vec![
                g.name.to_string(),
                g.current
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |t| t.key_id.to_string()),
                g.current
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |t| when(now, t.expires_at)),
                g.previous.as_ref().map_or_else(
                    || "-".to_owned(),
                    |t| format!("{} (expires {})", t.key_id, span_from(now, t.expires_at)),
                ),
                g.live_tokens.to_string(),
                g.next_rotation_at
                    .map_or_else(|| "-".to_owned(), |at| when(now, at)),
                group_state(g),
            ]);
        }
        table(&mut out, "  ", &rows);
        for g in &c.groups {
            if let Some(e) = &g.last_error {
                let _ = writeln!(
                    out,
                    "  {}: {} {}failure(s) in a row, the last {}: {}{}",
                    g.name,
                    e.consecutive_failures,
                    e.kind.map(|k| format!("{k} ")).unwrap_or_default(),
                    e.at.map_or_else(|| "at an unknown time".to_owned(), |at| when(now, at)),
                    e.message.as_deref().unwrap_or("(no message)"),
                    e.next_retry_at
                        .map(|at| format!("; next attempt {}", when(now, at)))
                        .unwrap_or_default(),
                );
            }
            if let Some(h) = &g.hold {
                let _ = writeln!(out, "  {}: waiting: {}", g.name, h.message);
            }
            for r in &g.pending_requests {
                let _ = writeln!(
                    out,
                    "  {}: {} requested by {} {}, not carried out yet",
                    g.name,
                    r.kind,
                    r.by,
                    when(now, r.requested_at)
                );
            }
            if let Some(hook) = &g.last_hook {
                let what = if hook.ok {
                    "hook succeeded".to_owned()
                } else {
                    format!("HOOK FAILED: {}", hook.detail)
                };
                let _ = writeln!(out, "  {}: {what} {}", g.name, when(now, hook.at));
            }
            if let Some(sinks) = &g.sinks {
                let what = if sinks.ok {
                    "sinks written".to_owned()
                } else {
                    format!("SINK FAILING: {}; last attempt", sinks.detail)
                };
                let _ = writeln!(out, "  {}: {what} {}", g.name, when(now, sinks.at));
            }
            for a in &g.alerts {
                let _ = writeln!(
                    out,
                    "  {}: {}: {}",
                    g.name,
                    a.severity.to_uppercase(),
                    a.message
                );
            }
        }
        for k in &c.foreign {
            let _ = writeln!(
                out,
                "  foreign key ID {} (first seen {}, last seen {})",
                k.key_id,
                when(now, k.first_seen_at),
                when(now, k.last_seen_at)
            );
        }
        for i in &c.open_intents {
            let _ = writeln!(
                out,
                "  issuance {} for {} in flight since {} (if no daemon runs, the next start reports it lost)",
                i.id,
                i.group,
                when(now, i.started_at)
            );
        }
        for i in &c.recent_unfinished_intents {
            let _ = writeln!(
                out,
                "  issuance {} for {} {} {}: {}",
                i.id,
                i.group,
                i.outcome,
                when(now, i.finished_at.unwrap_or(i.started_at)),
                i.error.as_deref().unwrap_or("(no message)")
            );
        }
    }
    out
}

fn group_state(g: &GroupStatus) -> String {
    if !g.in_config {
        return match g.revoke_at {
            Some(at) => format!("removed: revoked at {}", ts(at)),
            None => "removed".to_owned(),
        };
    }
    if !g.known_to_daemon {
        return "new: added at the next start".to_owned();
    }
    if g.alerts.iter().any(|a| a.severity == "critical") {
        return "CRITICAL".to_owned();
    }
    if g.last_error.is_some() {
        return "failing".to_owned();
    }
    if g.sinks.as_ref().is_some_and(|s| !s.ok) {
        return "sink failing".to_owned();
    }
    if g.hold.is_some() {
        return "waiting".to_owned();
    }
    if g.current.is_none() {
        return "no token yet".to_owned();
    }
    "ok".to_owned()
}

// ---------------------------------------------------------------------------
// plan

/// `linetokd plan --json`.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    /// [`JSON_VERSION`].
    pub version: u32,
    /// Where the forecast starts (now).
    pub from: DateTime<Utc>,
    /// Where it ends.
    pub until: DateTime<Utc>,
    /// The database read.
    pub database: PathBuf,
    /// False when there was no database: the forecast starts from nothing,
    /// as a first start with this config would.
    pub database_found: bool,
    /// False when the forecast stopped early (its loop bound).
    pub complete: bool,
    /// Verifies and reconciles are listed only when asked for (`--all`);
    /// `counts` counts them either way.
    pub routine_listed: bool,
    /// How many actions of each kind the forecast holds.
    pub counts: PlanCounts,
    /// What happens, in time order.
    pub actions: Vec<PlannedStatus>,
}

/// Actions by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PlanCounts {
    /// Tokens issued.
    pub issue: u32,
    /// Tokens revoked.
    pub revoke: u32,
    /// Tokens expiring.
    pub expire: u32,
    /// Verifications; `null` unless `--all`, which simulates every one.
    pub verify: Option<u32>,
    /// Reconciles; `null` unless `--all`.
    pub reconcile: Option<u32>,
    /// Alerts raised.
    pub alert: u32,
}

/// One planned action.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedStatus {
    /// When.
    pub at: DateTime<Utc>,
    /// The channel ID.
    pub channel: ChannelId,
    /// The channel's name.
    pub channel_name: String,
    /// The group.
    pub group: GroupName,
    /// `issue`, `revoke`, `expire`, `verify`, `reconcile` or `alert`.
    pub action: &'static str,
    /// The token, where there is one. Tokens the forecast imagines issued
    /// get synthetic key IDs (`next-1`, ...): LINE picks the real ones.
    pub key_id: Option<KeyId>,
    /// True when `key_id` is synthetic.
    pub synthetic_key: bool,
    /// Why (issue: `no_current`, `due`, `requested`, `incident`; revoke:
    /// `incident`, `excess`, `superseded`, `make_room`, `removed`,
    /// `free_capacity`; alert: `warning` or `critical`).
    pub reason: Option<&'static str>,
    /// For an issue: when the new token expires.
    pub expires_at: Option<DateTime<Utc>>,
    /// In words.
    pub message: String,
}

/// Runs the forecast from `now` to `until` and builds its report. `state`
/// is `None` when there is no database yet.
pub fn plan_report(
    now: DateTime<Utc>,
    database: &Path,
    configured: &[ConfiguredChannel],
    rules: &Rules,
    state: Option<&StoredState>,
    until: DateTime<Utc>,
    include_routine: bool,
) -> PlanReport {
    let empty = StoredState::empty();
    let worlds = worlds(now, configured, state.unwrap_or(&empty));
    let names: BTreeMap<ChannelId, String> = worlds
        .iter()
        .map(|w| (w.id.clone(), w.name.clone()))
        .collect();
    let inputs: Vec<ChannelInput> = worlds
        .iter()
        .map(|w| ChannelInput {
            channel: w.id.clone(),
            managed: w.managed(),
            groups: w.views(),
            view: w.view.clone(),
        })
        .collect();
    let routine = if include_routine {
        Routine::Simulate
    } else {
        Routine::Skip
    };
    let f = forecast::forecast(now, inputs, rules, until, routine);
    let mut counts = PlanCounts::default();
    for a in &f.actions {
        let n = match a.action {
            Action::Issue { .. } => &mut counts.issue,
            Action::Revoke { .. } => &mut counts.revoke,
            Action::Expire { .. } => &mut counts.expire,
            Action::Verify { .. } | Action::Reconcile => continue,
            Action::Alert(_) => &mut counts.alert,
        };
        *n = n.saturating_add(1);
    }
    if let Some((verifies, reconciles)) = f.routine {
        counts.verify = Some(count(verifies));
        counts.reconcile = Some(count(reconciles));
    }
    let actions = f
        .actions
        .iter()
        .filter(|a| include_routine || !a.action.is_routine())
        .map(|a| planned_status(a, &names))
        .collect();
    PlanReport {
        version: JSON_VERSION,
        from: f.from,
        until: f.until,
        database: database.to_path_buf(),
        database_found: state.is_some(),
        complete: f.complete,
        routine_listed: include_routine,
        counts,
        actions,
    }
}

fn planned_status(
    a: &forecast::PlannedAction,
    names: &BTreeMap<ChannelId, String>,
) -> PlannedStatus {
    let (action, key_id, reason, expires_at, message) = match &a.action {
        Action::Issue {
            key_id,
            reason,
            expires_at,
        } => (
            "issue",
            Some(key_id),
            Some(issue_reason_name(*reason)),
            Some(*expires_at),
            format!("{reason}; expires {}", ts(*expires_at)),
        ),
        Action::Revoke { key_id, reason } => (
            "revoke",
            Some(key_id),
            Some(revoke_reason_name(*reason)),
            None,
            reason.text().to_owned(),
        ),
        Action::Expire { key_id } => (
            "expire",
            Some(key_id),
            None,
            None,
            "reaches its expiry".to_owned(),
        ),
        Action::Verify { key_id } => (
            "verify",
            Some(key_id),
            None,
            None,
            "checked with LINE's verify endpoint".to_owned(),
        ),
        Action::Reconcile => (
            "reconcile",
            None,
            None,
            None,
            "the channel's valid key IDs are listed".to_owned(),
        ),
        Action::Alert(alert) => (
            "alert",
            alert_key(alert),
            Some(severity_name(alert.severity())),
            None,
            alert.to_string(),
        ),
    };
    PlannedStatus {
        at: a.at,
        channel: a.channel.clone(),
        channel_name: names
            .get(&a.channel)
            .cloned()
            .unwrap_or_else(|| a.channel.to_string()),
        group: a.group.clone(),
        action,
        key_id: key_id.cloned(),
        synthetic_key: key_id.is_some_and(|k| k.as_str().starts_with(SYNTHETIC_KEY_PREFIX)),
        reason,
        expires_at,
        message,
    }
}

fn alert_key(alert: &Alert) -> Option<&KeyId> {
    match alert {
        Alert::ExpiresBeforeSuccessor { key_id, .. } | Alert::RevokeNeedsSecret { key_id, .. } => {
            Some(key_id)
        }
        _ => None,
    }
}

fn issue_reason_name(r: IssueReason) -> &'static str {
    match r {
        IssueReason::NoCurrent => "no_current",
        IssueReason::Due => "due",
        IssueReason::Requested => "requested",
        IssueReason::Incident => "incident",
    }
}

fn revoke_reason_name(r: RevokeReason) -> &'static str {
    match r {
        RevokeReason::Incident => "incident",
        RevokeReason::Excess => "excess",
        RevokeReason::Superseded => "superseded",
        RevokeReason::MakeRoom => "make_room",
        RevokeReason::Removed => "removed",
        RevokeReason::FreeCapacity => "free_capacity",
        RevokeReason::Refused => "refused",
    }
}

/// The plan as a timeline table.
pub fn render_plan(report: &PlanReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "linetokd plan from {} to {}, assuming every call to LINE succeeds",
        ts(report.from),
        ts(report.until)
    );
    if !report.database_found {
        let _ = writeln!(
            out,
            "no database at {}: planning from nothing, as a first start with this config would",
            report.database.display()
        );
    }
    if report.actions.is_empty() {
        let _ = writeln!(out, "\nnothing to do in this period");
    } else {
        let _ = writeln!(out);
        let mut rows = vec![vec![
            "TIME".to_owned(),
            "CHANNEL".to_owned(),
            "GROUP".to_owned(),
            "ACTION".to_owned(),
            "KEY".to_owned(),
            "DETAIL".to_owned(),
        ]];
        for a in &report.actions {
            rows.push(vec![
                ts(a.at),
                a.channel_name.clone(),
                a.group.to_string(),
                a.action.to_owned(),
                a.key_id
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), ToString::to_string),
                a.message.clone(),
            ]);
        }
        table(&mut out, "", &rows);
    }
    let c = &report.counts;
    let routine = match (c.verify, c.reconcile) {
        (Some(verify), Some(reconcile)) => {
            format!("{verify} verify(ies) and {reconcile} reconcile(s)")
        }
        _ => "routine verifies and reconciles not simulated (--all simulates and lists them)"
            .to_owned(),
    };
    let _ = writeln!(
        out,
        "\n{} issue(s), {} revocation(s), {} expiry(ies), {} alert(s); {routine}",
        c.issue, c.revoke, c.expire, c.alert,
    );
    if report.any_synthetic() {
        let _ = writeln!(
            out,
            "keys named {SYNTHETIC_KEY_PREFIX}N stand for tokens not issued yet: LINE picks their key IDs"
        );
    }
    if !report.complete {
        let _ = writeln!(
            out,
            "the forecast stopped early (too many steps): the timeline ends before {}",
            ts(report.until)
        );
    }
    out
}

impl PlanReport {
    fn any_synthetic(&self) -> bool {
        self.actions.iter().any(|a| a.synthetic_key)
    }
}

// ---------------------------------------------------------------------------
// Formatting helpers.

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// RFC 3339 to the second, UTC.
fn ts(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `2024-05-01T12:00:00Z (in 3d 4h)` / `(5m ago)`.
fn when(now: DateTime<Utc>, at: DateTime<Utc>) -> String {
    format!("{} ({})", ts(at), span_from(now, at))
}

/// `in 3d 4h`, `5m ago`, `now`.
fn span_from(now: DateTime<Utc>, at: DateTime<Utc>) -> String {
    let d = at - now;
    if d.num_seconds() == 0 {
        "now".to_owned()
    } else if d > Duration::zero() {
        format!("in {}", compact(d))
    } else {
        format!("{} ago", compact(-d))
    }
}

/// A positive span in its largest unit and the next one down, leaving out
/// a zero: `29d 23h`, `5h 12m`, `2d`, `45s`.
fn compact(d: Duration) -> String {
    const UNITS: [(i64, &str); 4] = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let secs = d.num_seconds().max(0);
    let Some(first) = UNITS.iter().position(|(size, _)| secs >= *size) else {
        return "0s".to_owned();
    };
    let (size, unit) = UNITS[first];
    let mut text = format!("{}{unit}", secs / size);
    if let Some((next, next_unit)) = UNITS.get(first + 1) {
        let rest = (secs % size) / next;
        if rest > 0 {
            let _ = write!(text, " {rest}{next_unit}");
        }
    }
    text
}

/// Writes `rows` as left-aligned columns two spaces apart.
fn table(out: &mut String, indent: &str, rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = indent.to_owned();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count());
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_spans_keep_the_two_largest_units() {
        let cases = [
            (Duration::seconds(0), "0s"),
            (Duration::seconds(45), "45s"),
            (Duration::seconds(60), "1m"),
            (Duration::seconds(312), "5m 12s"),
            (
                Duration::hours(5) + Duration::minutes(12) + Duration::seconds(9),
                "5h 12m",
            ),
            (
                Duration::days(29) + Duration::hours(23) + Duration::minutes(59),
                "29d 23h",
            ),
            (Duration::days(2) + Duration::seconds(5), "2d"),
        ];
        for (d, want) in cases {
            assert_eq!(compact(d), want, "{d:?}");
        }
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        assert_eq!(span_from(now, now + Duration::hours(2)), "in 2h");
        assert_eq!(span_from(now, now - Duration::minutes(5)), "5m ago");
        assert_eq!(span_from(now, now), "now");
    }

    const PROC_LOCKS: &str = "\
1: FLOCK  ADVISORY  WRITE 21762 fe:00:5800560 0 EOF
2: FLOCK  ADVISORY  READ 21763 fe:00:777 0 EOF
2: -> FLOCK  ADVISORY  WRITE 4242 fe:00:777 0 EOF
3: POSIX  ADVISORY  WRITE 99 00:1f:888 0 EOF
4: FLOCK  ADVISORY  WRITE 0 00:2a:999 0 EOF
";

    #[test]
    fn a_held_exclusive_flock_is_found_by_inode() {
        assert_eq!(flock_holder(PROC_LOCKS, 5_800_560), Some(Some(21762)));
        // The kernel shows 0 for a holder outside our PID namespace.
        assert_eq!(flock_holder(PROC_LOCKS, 999), Some(None));
    }

    #[test]
    fn shared_locks_waiters_posix_locks_and_other_inodes_are_not_a_daemon() {
        assert_eq!(flock_holder(PROC_LOCKS, 777), None);
        assert_eq!(flock_holder(PROC_LOCKS, 888), None);
        assert_eq!(flock_holder(PROC_LOCKS, 12345), None);
        assert_eq!(flock_holder("", 5_800_560), None);
        assert_eq!(flock_holder("garbage\n1: FLOCK\n", 5_800_560), None);
    }

    #[test]
    fn probing_a_database_nobody_ever_opened_says_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let probe = probe_daemon(&dir.path().join("linetokd.db"));
        assert_eq!(probe.running, Some(false));
        assert_eq!(probe.pid, None);
    }

    #[test]
    fn probing_sees_a_writer_in_this_process_and_its_release() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("linetokd.db");
        let lock = WriterLock::acquire(&db).unwrap();
        let probe = probe_daemon(&db);
        if std::fs::read_to_string("/proc/locks").is_ok() {
            assert_eq!(probe.running, Some(true));
            assert_eq!(probe.pid, Some(std::process::id()));
            drop(lock);
            assert_eq!(probe_daemon(&db).running, Some(false));
        } else {
            assert_eq!(probe.running, None);
        }
    }

    #[test]
    fn the_table_aligns_columns() {
        let mut out = String::new();
        table(
            &mut out,
            "  ",
            &[
                vec!["A".into(), "BB".into(), "C".into()],
                vec!["long".into(), "x".into(), "".into()],
            ],
        );
        assert_eq!(out, "  A     BB  C\n  long  x\n");
    }
}
