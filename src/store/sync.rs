//! Channels and groups: synced from the config, read by the scheduler, and
//! the per-group runtime state it keeps between passes (failures, backoff).
//!
//! A channel or group that leaves the config is marked `removed_at`, never
//! deleted: its tokens keep their parent row and are revoked after
//! `removal_grace`, and its history stays readable. One that comes back is
//! simply marked present again.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::events::insert_event;
use super::sql::{Db, Dialect, SqlError, SqlRow, p};
use super::{EventKind, Fail, Store, StoreError, millis, screen};
use crate::domain::{ChannelId, FailureKind, GroupName, TokenKind};

/// One channel as the config lists it: the part of the config the store
/// keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSpec {
    /// The channel ID.
    pub id: ChannelId,
    /// The operator's name for it (shown in status).
    pub name: String,
    /// Its consumer groups.
    pub groups: Vec<GroupName>,
    /// The groups (of `groups`) kept with short-lived tokens; the rest are
    /// v2.1 groups.
    pub short_lived: Vec<GroupName>,
    /// A digest of what LINE judges the channel's requests by (channel ID,
    /// key ID, signing key, secret). When it differs from the stored one,
    /// every failure streak of the channel ends: a permanent failure's hold
    /// must not outlive the config that caused it, not even across a
    /// restart. `None` leaves the stored one (and the streaks) alone.
    pub fingerprint: Option<String>,
}

/// What [`Store::sync_config`] changed. Channels and groups that came back
/// after a removal count as added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Channels new to the store, or back in the config.
    pub added_channels: Vec<ChannelId>,
    /// Channels no longer in the config.
    pub removed_channels: Vec<ChannelId>,
    /// Groups new to the store, or back in the config.
    pub added_groups: Vec<(ChannelId, GroupName)>,
    /// Groups no longer in the config (including every group of a removed
    /// channel).
    pub removed_groups: Vec<(ChannelId, GroupName)>,
    /// Channels whose config (key, key ID, secret) changed: their failure
    /// streaks and holds were ended so they are tried again now.
    pub changed_channels: Vec<ChannelId>,
    /// Firing alerts resolved because nothing configured states them any
    /// more (a removed channel's; a removed group's sink and hook alerts).
    pub resolved_alerts: usize,
}

impl SyncReport {
    /// True when the store already matched the config.
    pub fn is_empty(&self) -> bool {
        self.added_channels.is_empty()
            && self.removed_channels.is_empty()
            && self.added_groups.is_empty()
            && self.removed_groups.is_empty()
            && self.changed_channels.is_empty()
            && self.resolved_alerts == 0
    }
}

/// A stored channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRow {
    /// The channel ID.
    pub id: ChannelId,
    /// The operator's name for it.
    pub name: String,
    /// When it first appeared in the config.
    pub added_at: DateTime<Utc>,
    /// When it left the config; `None` while it is in it.
    pub removed_at: Option<DateTime<Utc>>,
    /// When LINE's list of valid key IDs was last applied
    /// ([`Store::reconcile`]).
    pub last_reconcile_at: Option<DateTime<Utc>>,
    /// The digest of the channel's config at the last sync.
    pub config_fingerprint: Option<String>,
    /// The key-ID listing's failure streak (it backs off per channel).
    pub reconcile: ReconcileRuntime,
    /// Set by LINE's 30-token refusal: from `full_since` the channel counts
    /// as full until `full_until`, and an issue needs a reconcile newer than
    /// `full_since`.
    pub full: Option<FullHold>,
    /// The newest issue intent a reconcile has settled: intents up to it
    /// whose outcome was unknown are no longer counted as possibly live.
    pub settled_through_intent: i64,
}

/// The key-ID listing's failure streak for one channel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileRuntime {
    /// Failures since the last successful listing.
    pub failures: u32,
    /// No listing before this instant.
    pub retry_not_before: Option<DateTime<Utc>>,
    /// The last failure, for status.
    pub error: Option<String>,
}

/// A channel LINE refused an issue on because it holds 30 live tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FullHold {
    /// When LINE refused.
    pub since: DateTime<Utc>,
    /// The next instant LINE will have room, as far as we know.
    pub until: DateTime<Utc>,
    /// The refused issue attempt: a reconcile that settles it (see
    /// [`ChannelRow::settled_through_intent`]) was asked for after the
    /// refusal.
    pub intent: i64,
}

impl ChannelRow {
    /// True while the channel is in the config.
    pub fn is_active(&self) -> bool {
        self.removed_at.is_none()
    }
}

/// The scheduler's state of one group, kept across restarts so backoff and
/// the last error survive them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupRuntime {
    /// The last failure of an issue, verify or revoke step (screened: never
    /// a token value).
    pub last_error: Option<String>,
    /// When that failure happened.
    pub last_error_at: Option<DateTime<Utc>>,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// No new attempt before this time (backoff).
    pub retry_not_before: Option<DateTime<Utc>>,
    /// How the last attempt failed; `None` without a streak (and for
    /// streaks written before schema version 4).
    pub failure_kind: Option<FailureKind>,
    /// The step that failed (`issue`, `verify` or `revoke`).
    pub failed_step: Option<String>,
}

/// A stored group. The time of its last successful verify is its current
/// token's `record.verified_at` ([`super::StoredToken`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRow {
    /// Its channel.
    pub channel_id: ChannelId,
    /// Its name.
    pub name: GroupName,
    /// When it first appeared in the config.
    pub added_at: DateTime<Utc>,
    /// When it left the config; `None` while it is in it.
    pub removed_at: Option<DateTime<Utc>>,
    /// The kind of token it is kept with, as the config last said.
    pub kind: TokenKind,
    /// The scheduler's state for it.
    pub runtime: GroupRuntime,
}

impl GroupRow {
    /// True while the group is in the config.
    pub fn is_active(&self) -> bool {
        self.removed_at.is_none()
    }
}

/// The columns every channel query selects, in this order:
/// [`channel_from_row`] reads them by position, and a test holds the two
/// together.
const CHANNEL_COLUMNS: &str = "id, name, added_at, removed_at, last_reconcile_at, \
     config_fingerprint, reconcile_failures, reconcile_retry_not_before, reconcile_error, \
     full_since, full_until, full_intent, settled_through_intent";
/// The columns every group query selects, in this order: [`group_from_row`]
/// reads them by position (a lookup by name scans the statement's column
/// names for every value), and a test holds the two together.
const GROUP_COLUMNS: &str = "channel_id, name, added_at, removed_at, last_error, last_error_at, \
                             consecutive_failures, retry_not_before, failure_kind, failed_step, kind";

/// The key of the transaction-level advisory lock under which instances
/// sharing a PostgreSQL database sync their configs: "linetoks" in ASCII,
/// beside the migrations' "linetokd" and the writer's "linetokw".
const CONFIG_SYNC_LOCK_KEY: i64 = 0x6c69_6e65_746f_6b73;

impl Store {
    /// Makes the stored channels and groups match the config: adds new
    /// ones, marks missing ones removed (`removed_at = now`), marks returning
    /// ones present again, updates channel names. Each change is also an
    /// event. One transaction.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`] (e.g. a channel ID listed twice),
    /// [`StoreError::ReadOnly`].
    pub fn sync_config(
        &self,
        now: DateTime<Utc>,
        channels: &[ChannelSpec],
    ) -> Result<SyncReport, StoreError> {
        self.write_db("syncing channels and groups from the config", |tx| {
            // Several instances sharing a PostgreSQL database sync at once
            // when they start together: each reads the rows, then inserts
            // what is missing, so they take turns (a transaction-level
            // lock, released at commit) instead of inserting twice.
            if tx.dialect() == Dialect::Postgres {
                tx.query_one(
                    "SELECT CAST(pg_advisory_xact_lock(?1) AS TEXT)",
                    p![CONFIG_SYNC_LOCK_KEY],
                    |row| row.text(0),
                )?;
            }
            let mut report = SyncReport::default();
            let existing: BTreeMap<ChannelId, ChannelRow> = load_channels(tx)?
                .into_iter()
                .map(|c| (c.id.clone(), c))
                .collect();
            for spec in channels {
                match existing.get(&spec.id) {
                    None => {
                        tx.execute(
                            "INSERT INTO channels (id, name, added_at) VALUES (?1, ?2, ?3)",
                            p![spec.id.as_str(), &spec.name, millis(now)],
                        )?;
                        insert_event(tx, now, &spec.id, None, None, EventKind::ChannelAdded, "")?;
                        report.added_channels.push(spec.id.clone());
                    }
                    Some(row) => {
                        if !row.is_active() {
                            insert_event(
                                tx,
                                now,
                                &spec.id,
                                None,
                                None,
                                EventKind::ChannelAdded,
                                "back in the config",
                            )?;
                            report.added_channels.push(spec.id.clone());
                        }
                        tx.execute(
                            "UPDATE channels SET name = ?2, removed_at = NULL WHERE id = ?1",
                            p![spec.id.as_str(), &spec.name],
                        )?;
                        if spec.fingerprint.is_some()
                            && row.config_fingerprint.is_some()
                            && spec.fingerprint != row.config_fingerprint
                        {
                            end_streaks(
                                tx,
                                now,
                                &spec.id,
                                "the channel's key, key ID or secret changed",
                            )?;
                            report.changed_channels.push(spec.id.clone());
                        }
                    }
                }
                if let Some(fingerprint) = &spec.fingerprint {
                    tx.execute(
                        "UPDATE channels SET config_fingerprint = ?2 WHERE id = ?1",
                        p![spec.id.as_str(), fingerprint],
                    )?;
                }
                sync_groups(tx, now, &spec.id, &spec.groups, &mut report)?;
                sync_kinds(tx, &spec.id, &spec.short_lived)?;
            }
            for row in existing.values() {
                if row.is_active() && !channels.iter().any(|s| s.id == row.id) {
                    tx.execute(
                        "UPDATE channels SET removed_at = ?2 WHERE id = ?1",
                        p![row.id.as_str(), millis(now)],
                    )?;
                    insert_event(tx, now, &row.id, None, None, EventKind::ChannelRemoved, "")?;
                    report.removed_channels.push(row.id.clone());
                    sync_groups(tx, now, &row.id, &[], &mut report)?;
                }
            }
            let configured: Vec<(&ChannelId, &[GroupName])> = channels
                .iter()
                .map(|c| (&c.id, c.groups.as_slice()))
                .collect();
            report.resolved_alerts = super::alerts::resolve_unowned(tx, now, &configured)?;
            Ok(report)
        })
        .inspect(|report| {
            if report.resolved_alerts > 0 {
                self.alerts_changed();
            }
        })
    }

    /// Every stored channel, removed ones included, ordered by ID.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn channels(&self) -> Result<Vec<ChannelRow>, StoreError> {
        self.read_db("listing channels", load_channels)
    }

    /// One stored channel.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn channel(&self, id: &ChannelId) -> Result<Option<ChannelRow>, StoreError> {
        self.read_db("reading a channel", |db| load_channel(db, id))
    }

    /// The groups of one channel, removed ones included, ordered by name.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn groups(&self, channel: &ChannelId) -> Result<Vec<GroupRow>, StoreError> {
        self.read_db("listing groups", |db| {
            Ok(db.query_map(
                &format!(
                    "SELECT {GROUP_COLUMNS} FROM groups WHERE channel_id = ?1 ORDER BY name{}",
                    db.dialect().bytewise()
                ),
                p![channel.as_str()],
                group_from_row,
            )?)
        })
    }

    /// Every stored group of every channel, removed ones included, ordered
    /// by channel and name.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn all_groups(&self) -> Result<Vec<GroupRow>, StoreError> {
        self.read_db("listing groups", |db| {
            let bytewise = db.dialect().bytewise();
            Ok(db.query_map(
                &format!(
                    "SELECT {GROUP_COLUMNS} FROM groups \
                     ORDER BY channel_id{bytewise}, name{bytewise}"
                ),
                p![],
                group_from_row,
            )?)
        })
    }

    /// One stored group.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn group(
        &self,
        channel: &ChannelId,
        group: &GroupName,
    ) -> Result<Option<GroupRow>, StoreError> {
        self.read_db("reading a group", |db| load_group(db, channel, group))
    }

    /// Replaces a group's runtime state. `last_error` is screened against
    /// stored token values and cut to a sane length.
    ///
    /// # Errors
    ///
    /// [`StoreError::UnknownGroup`], [`StoreError::Query`],
    /// [`StoreError::ReadOnly`].
    pub fn set_group_runtime(
        &self,
        channel: &ChannelId,
        group: &GroupName,
        runtime: &GroupRuntime,
    ) -> Result<(), StoreError> {
        self.write_db("saving a group's runtime state", |tx| {
            write_group_runtime(tx, channel, group, runtime)
        })
    }

    /// [`Store::set_group_runtime`] for a failure of a call made with the
    /// channel's credentials digest `under` (`channels.config_fingerprint`):
    /// not recorded, and false, when the store holds another digest, that
    /// is, when a reload replaced the key, kid or secret after the call
    /// went out. Checked in the write's own transaction, so a failure with
    /// the old secret can never land after the reload ended the streaks
    /// (found by review and by a test that hung under load: it held the
    /// group for `permanent_interval` with the fixed secret).
    ///
    /// # Errors
    ///
    /// As [`Store::set_group_runtime`].
    pub fn record_group_failure(
        &self,
        channel: &ChannelId,
        group: &GroupName,
        runtime: &GroupRuntime,
        under: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.write_db("saving a group's failure", |tx| {
            if replaced(tx, channel, under)? {
                return Ok(false);
            }
            write_group_runtime(tx, channel, group, runtime).map(|()| true)
        })
    }
}

/// True when `under` is a credentials digest other than the one the store
/// holds for `channel`: a reload changed the channel since.
fn replaced(tx: &dyn Db, channel: &ChannelId, under: Option<&str>) -> Result<bool, Fail> {
    let Some(under) = under else {
        return Ok(false);
    };
    let stored = tx.query_opt(
        "SELECT config_fingerprint FROM channels WHERE id = ?1",
        p![channel.as_str()],
        |row| row.text(0),
    )?;
    Ok(stored.flatten().is_some_and(|stored| stored != under))
}

fn write_group_runtime(
    tx: &dyn Db,
    channel: &ChannelId,
    group: &GroupName,
    runtime: &GroupRuntime,
) -> Result<(), Fail> {
    let last_error = runtime
        .last_error
        .as_deref()
        .map(|e| screen(tx, e))
        .transpose()?;
    let changed = tx.execute(
        "UPDATE groups SET last_error = ?3, last_error_at = ?4, consecutive_failures = ?5, \
         retry_not_before = ?6, failure_kind = ?7, failed_step = ?8 \
         WHERE channel_id = ?1 AND name = ?2",
        p![
            channel.as_str(),
            group.as_str(),
            last_error.as_deref(),
            runtime.last_error_at.map(millis),
            runtime.consecutive_failures,
            runtime.retry_not_before.map(millis),
            runtime.failure_kind.map(FailureKind::as_str),
            runtime.failed_step.as_deref(),
        ],
    )?;
    if changed == 0 {
        return Err(StoreError::UnknownGroup {
            channel: channel.clone(),
            group: group.clone(),
        }
        .into());
    }
    Ok(())
}

impl Store {
    /// Replaces a channel's key-ID listing streak (the error is screened).
    ///
    /// # Errors
    ///
    /// [`StoreError::UnknownChannel`], [`StoreError::Query`],
    /// [`StoreError::ReadOnly`].
    pub fn set_reconcile_runtime(
        &self,
        channel: &ChannelId,
        runtime: &ReconcileRuntime,
    ) -> Result<(), StoreError> {
        self.write_db("saving a channel's listing streak", |tx| {
            write_reconcile_runtime(tx, channel, runtime)
        })
    }

    /// [`Store::set_reconcile_runtime`] for a listing made with the
    /// credentials digest `under`: not recorded, and false, when a reload
    /// has replaced them since (as [`Store::record_group_failure`]).
    ///
    /// # Errors
    ///
    /// As [`Store::set_reconcile_runtime`].
    pub fn record_listing_failure(
        &self,
        channel: &ChannelId,
        runtime: &ReconcileRuntime,
        under: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.write_db("saving a channel's listing failure", |tx| {
            if replaced(tx, channel, under)? {
                return Ok(false);
            }
            write_reconcile_runtime(tx, channel, runtime).map(|()| true)
        })
    }
}

fn write_reconcile_runtime(
    tx: &dyn Db,
    channel: &ChannelId,
    runtime: &ReconcileRuntime,
) -> Result<(), Fail> {
    let error = runtime
        .error
        .as_deref()
        .map(|e| screen(tx, e))
        .transpose()?;
    let changed = tx.execute(
        "UPDATE channels SET reconcile_failures = ?2, reconcile_retry_not_before = ?3, \
         reconcile_error = ?4 WHERE id = ?1",
        p![
            channel.as_str(),
            runtime.failures,
            runtime.retry_not_before.map(millis),
            error.as_deref()
        ],
    )?;
    if changed == 0 {
        return Err(StoreError::UnknownChannel {
            channel: channel.clone(),
        }
        .into());
    }
    Ok(())
}

impl Store {
    /// Sets (after LINE's 30-token refusal) or clears (after we freed a
    /// slot) a channel's "full at LINE" hold.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn set_channel_full(
        &self,
        channel: &ChannelId,
        hold: Option<FullHold>,
    ) -> Result<(), StoreError> {
        self.write_db("saving a channel's full hold", |tx| {
            tx.execute(
                "UPDATE channels SET full_since = ?2, full_until = ?3, full_intent = ?4 WHERE id = ?1",
                p![
                    channel.as_str(),
                    hold.map(|h| millis(h.since)),
                    hold.map(|h| millis(h.until)),
                    hold.map(|h| h.intent)
                ],
            )?;
            Ok(())
        })
    }
}

/// Records each group's token kind: `short_lived` ones are short-lived,
/// every other group of the channel v2.1. A group that changes kind keeps
/// its live tokens of the old kind (each is revoked and verified the way
/// its own kind is) until its next rotation brings one of the new kind.
fn sync_kinds(tx: &dyn Db, channel: &ChannelId, short_lived: &[GroupName]) -> Result<(), Fail> {
    tx.execute(
        "UPDATE groups SET kind = 'v2.1' WHERE channel_id = ?1 AND kind <> 'v2.1'",
        p![channel.as_str()],
    )?;
    for name in short_lived {
        tx.execute(
            "UPDATE groups SET kind = 'short-lived' WHERE channel_id = ?1 AND name = ?2",
            p![channel.as_str(), name.as_str()],
        )?;
    }
    Ok(())
}

/// Adds, restores and removes the groups of one channel to match `wanted`.
fn sync_groups(
    tx: &dyn Db,
    now: DateTime<Utc>,
    channel: &ChannelId,
    wanted: &[GroupName],
    report: &mut SyncReport,
) -> Result<(), Fail> {
    let existing: BTreeMap<GroupName, Option<i64>> = tx
        .query_map(
            "SELECT name, removed_at FROM groups WHERE channel_id = ?1",
            p![channel.as_str()],
            |row| Ok((GroupName::new(row.get_text(0)?), row.int(1)?)),
        )?
        .into_iter()
        .collect();
    for name in wanted {
        match existing.get(name) {
            None => {
                tx.execute(
                    "INSERT INTO groups (channel_id, name, added_at) VALUES (?1, ?2, ?3)",
                    p![channel.as_str(), name.as_str(), millis(now)],
                )?;
                insert_event(
                    tx,
                    now,
                    channel,
                    Some(name),
                    None,
                    EventKind::GroupAdded,
                    "",
                )?;
                report.added_groups.push((channel.clone(), name.clone()));
            }
            Some(Some(_)) => {
                tx.execute(
                    "UPDATE groups SET removed_at = NULL WHERE channel_id = ?1 AND name = ?2",
                    p![channel.as_str(), name.as_str()],
                )?;
                insert_event(
                    tx,
                    now,
                    channel,
                    Some(name),
                    None,
                    EventKind::GroupAdded,
                    "back in the config",
                )?;
                report.added_groups.push((channel.clone(), name.clone()));
            }
            Some(None) => {}
        }
    }
    for (name, removed_at) in &existing {
        if removed_at.is_none() && !wanted.contains(name) {
            tx.execute(
                "UPDATE groups SET removed_at = ?3 WHERE channel_id = ?1 AND name = ?2",
                p![channel.as_str(), name.as_str(), millis(now)],
            )?;
            insert_event(
                tx,
                now,
                channel,
                Some(name),
                None,
                EventKind::GroupRemoved,
                "",
            )?;
            report.removed_groups.push((channel.clone(), name.clone()));
        }
    }
    Ok(())
}

fn load_channels(db: &dyn Db) -> Result<Vec<ChannelRow>, Fail> {
    Ok(db.query_map(
        &format!(
            "SELECT {CHANNEL_COLUMNS} FROM channels ORDER BY id{}",
            db.dialect().bytewise()
        ),
        p![],
        channel_from_row,
    )?)
}

pub(super) fn load_channel(db: &dyn Db, id: &ChannelId) -> Result<Option<ChannelRow>, Fail> {
    Ok(db.query_opt(
        &format!("SELECT {CHANNEL_COLUMNS} FROM channels WHERE id = ?1"),
        p![id.as_str()],
        channel_from_row,
    )?)
}

pub(super) fn load_group(
    db: &dyn Db,
    channel: &ChannelId,
    group: &GroupName,
) -> Result<Option<GroupRow>, Fail> {
    Ok(db.query_opt(
        &format!("SELECT {GROUP_COLUMNS} FROM groups WHERE channel_id = ?1 AND name = ?2"),
        p![channel.as_str(), group.as_str()],
        group_from_row,
    )?)
}

/// A count column (`table.col`) as a `u32`.
fn count_at(row: &dyn SqlRow, i: usize, col: &str) -> Result<u32, SqlError> {
    let n = row.get_int(i)?;
    u32::try_from(n).map_err(|_| SqlError::Column(format!("{col} holds {n}")))
}

/// Decodes a row of [`CHANNEL_COLUMNS`], by position.
fn channel_from_row(row: &dyn SqlRow) -> Result<ChannelRow, SqlError> {
    let full = match (
        row.opt_time(9, "channels.full_since")?,
        row.opt_time(10, "channels.full_until")?,
        row.int(11)?,
    ) {
        (Some(since), Some(until), Some(intent)) => Some(FullHold {
            since,
            until,
            intent,
        }),
        _ => None,
    };
    Ok(ChannelRow {
        id: ChannelId::new(row.get_text(0)?),
        name: row.get_text(1)?,
        added_at: row.time(2, "channels.added_at")?,
        removed_at: row.opt_time(3, "channels.removed_at")?,
        last_reconcile_at: row.opt_time(4, "channels.last_reconcile_at")?,
        config_fingerprint: row.text(5)?,
        reconcile: ReconcileRuntime {
            failures: count_at(row, 6, "channels.reconcile_failures")?,
            retry_not_before: row.opt_time(7, "channels.reconcile_retry_not_before")?,
            error: row.text(8)?,
        },
        full,
        settled_through_intent: row.get_int(12)?,
    })
}

/// Ends every failure streak and hold of a channel (its config changed, or
/// an operator said "try now"), with an event saying `why`.
pub(super) fn end_streaks(
    tx: &dyn Db,
    now: DateTime<Utc>,
    channel: &ChannelId,
    why: &str,
) -> Result<(), Fail> {
    let held = tx.query_one(
        "SELECT count(*) FROM groups WHERE channel_id = ?1 AND consecutive_failures > 0",
        p![channel.as_str()],
        |row| row.get_int(0),
    )?;
    tx.execute(
        "UPDATE groups SET consecutive_failures = 0, retry_not_before = NULL, \
         failure_kind = NULL, failed_step = NULL WHERE channel_id = ?1",
        p![channel.as_str()],
    )?;
    tx.execute(
        "UPDATE channels SET reconcile_failures = 0, reconcile_retry_not_before = NULL, \
         reconcile_error = NULL, full_since = NULL, full_until = NULL, full_intent = NULL \
         WHERE id = ?1",
        p![channel.as_str()],
    )?;
    if held > 0 {
        insert_event(
            tx,
            now,
            channel,
            None,
            None,
            EventKind::ConfigChanged,
            &format!("{why}: {held} group(s) no longer held by earlier failures"),
        )?;
    }
    Ok(())
}

/// Decodes a row of [`GROUP_COLUMNS`], by position.
fn group_from_row(row: &dyn SqlRow) -> Result<GroupRow, SqlError> {
    Ok(GroupRow {
        channel_id: ChannelId::new(row.get_text(0)?),
        name: GroupName::new(row.get_text(1)?),
        added_at: row.time(2, "groups.added_at")?,
        removed_at: row.opt_time(3, "groups.removed_at")?,
        runtime: GroupRuntime {
            last_error: row.text(4)?,
            last_error_at: row.opt_time(5, "groups.last_error_at")?,
            consecutive_failures: count_at(row, 6, "groups.consecutive_failures")?,
            retry_not_before: row.opt_time(7, "groups.retry_not_before")?,
            failure_kind: row
                .text(8)?
                .map(|k| {
                    FailureKind::parse(&k)
                        .ok_or_else(|| SqlError::Column(format!("groups.failure_kind holds {k:?}")))
                })
                .transpose()?,
            failed_step: row.text(9)?,
        },
        kind: {
            let k = row.get_text(10)?;
            TokenKind::parse(&k)
                .ok_or_else(|| SqlError::Column(format!("groups.kind holds {k:?}")))?
        },
    })
}

#[cfg(test)]
mod column_tests {
    /// [`super::channel_from_row`] reads by position; this is the order it
    /// reads in. Reorder both or neither.
    #[test]
    fn channel_columns_are_in_the_order_the_decoder_reads() {
        let columns: Vec<&str> = super::CHANNEL_COLUMNS.split(',').map(str::trim).collect();
        assert_eq!(
            columns,
            [
                "id",
                "name",
                "added_at",
                "removed_at",
                "last_reconcile_at",
                "config_fingerprint",
                "reconcile_failures",
                "reconcile_retry_not_before",
                "reconcile_error",
                "full_since",
                "full_until",
                "full_intent",
                "settled_through_intent"
            ]
        );
    }

    /// [`super::group_from_row`] reads by position; this is the order it
    /// reads in. Reorder both or neither.
    #[test]
    fn group_columns_are_in_the_order_the_decoder_reads() {
        let columns: Vec<&str> = super::GROUP_COLUMNS.split(',').map(str::trim).collect();
        assert_eq!(
            columns,
            [
                "channel_id",
                "name",
                "added_at",
                "removed_at",
                "last_error",
                "last_error_at",
                "consecutive_failures",
                "retry_not_before",
                "failure_kind",
                "failed_step",
                "kind"
            ]
        );
    }
}
