//! What `linetokd status` shows of high availability (docs/design.md §14):
//! each channel's lease row and the orphan tokens recorded, read through
//! the store's one interface. The statements that decide (acquire, renew,
//! release, the fence) are PostgreSQL's own, in `pg::lease`; on SQLite
//! (one writer, no leases) both tables stay empty and nothing is read.

use chrono::{DateTime, Utc};

use super::sql::{Dialect, SqlError, SqlRow, p};
use super::{Store, StoreError};
use crate::domain::{ChannelId, GroupName, KeyId};
use crate::ha::{Epoch, InstanceId, Lease};

/// The lease rows and orphans, with the database's now.
#[derive(Debug, Clone, Default)]
pub struct HaState {
    /// The database's clock when the leases were read: a grant is valid
    /// while `db_now < valid_until`. `None` on SQLite.
    pub db_now: Option<DateTime<Utc>>,
    /// Each channel ever led and its row.
    pub leases: Vec<(ChannelId, Lease)>,
    /// Tokens whose store failed the fence, newest first.
    pub orphans: Vec<OrphanRow>,
    /// The instances alive under `[ha]` (their heartbeat row is in the
    /// database's future), by ID, with when each stops counting as alive.
    pub instances: Vec<(String, DateTime<Utc>)>,
}

/// One recorded orphan, as `status` shows it (a key ID, never a value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanRow {
    /// Its channel.
    pub channel: ChannelId,
    /// Its group.
    pub group: GroupName,
    /// LINE's key ID.
    pub key_id: KeyId,
    /// The issuance (journal intent) that LINE answered with it.
    pub intent: i64,
    /// The epoch its intent was committed under.
    pub epoch: Epoch,
    /// The instance that got it after losing its grant.
    pub recorded_by: String,
    /// When it was recorded (database time).
    pub recorded_at: DateTime<Utc>,
    /// When LINE lets it expire.
    pub expires_at: DateTime<Utc>,
    /// `revoked`, `failed`, `no_secret`, or `None` while not tried.
    pub revoke_outcome: Option<String>,
}

impl Store {
    /// The key IDs of `channel`'s recorded orphans: tokens of ours whose
    /// store failed the fence, known by key ID, so a listing that shows one
    /// shows neither another issuer's token nor a lost one. Empty on
    /// SQLite.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`].
    pub fn orphan_key_ids(&self, channel: &ChannelId) -> Result<Vec<KeyId>, StoreError> {
        self.read_db("reading the channel's orphaned key IDs", |db| {
            Ok(db.query_map(
                "SELECT key_id FROM fenced_orphans WHERE channel_id = ?1 ORDER BY id",
                p![channel.as_str()],
                |row| Ok(KeyId::new(row.get_text(0)?)),
            )?)
        })
    }

    /// The lease rows and orphans (empty on SQLite).
    ///
    /// # Errors
    ///
    /// [`StoreError::Postgres`] or [`StoreError::Corrupt`] when a query
    /// fails.
    pub fn ha_state(&self) -> Result<HaState, StoreError> {
        self.read_db("reading the leases and orphans", |db| {
            if db.dialect() == Dialect::Sqlite {
                return Ok(HaState::default());
            }
            let db_now = db.query_one(
                &format!("SELECT {}", super::pg::lease::NOW_MS),
                p![],
                |row| row.time(0, "clock_timestamp()"),
            )?;
            let leases = db.query_map(
                &format!(
                    "SELECT channel_id, holder, epoch, valid_until FROM channel_leases \
                     ORDER BY channel_id{}",
                    db.dialect().bytewise()
                ),
                p![],
                |row| {
                    Ok((
                        ChannelId::new(row.get_text(0)?),
                        Lease {
                            holder: InstanceId::new(row.get_text(1)?),
                            epoch: Epoch(row.get_int(2)?),
                            valid_until: row.time(3, "channel_leases.valid_until")?,
                        },
                    ))
                },
            )?;
            let orphans = db.query_map(
                "SELECT channel_id, group_name, key_id, epoch, recorded_by, recorded_at, \
                 expires_at, revoke_outcome, intent_id FROM fenced_orphans ORDER BY id DESC",
                p![],
                orphan_from_row,
            )?;
            let instances = db.query_map(
                &format!(
                    "SELECT instance_id, alive_until FROM ha_instances WHERE alive_until > ?1 \
                     ORDER BY instance_id{}",
                    db.dialect().bytewise()
                ),
                p![super::millis(db_now)],
                |row| Ok((row.get_text(0)?, row.time(1, "ha_instances.alive_until")?)),
            )?;
            Ok(HaState {
                db_now: Some(db_now),
                leases,
                orphans,
                instances,
            })
        })
    }
}

fn orphan_from_row(row: &dyn SqlRow) -> Result<OrphanRow, SqlError> {
    Ok(OrphanRow {
        channel: ChannelId::new(row.get_text(0)?),
        group: GroupName::new(row.get_text(1)?),
        key_id: KeyId::new(row.get_text(2)?),
        epoch: Epoch(row.get_int(3)?),
        recorded_by: row.get_text(4)?,
        recorded_at: row.time(5, "fenced_orphans.recorded_at")?,
        expires_at: row.time(6, "fenced_orphans.expires_at")?,
        revoke_outcome: row.text(7)?,
        intent: row.get_int(8)?,
    })
}
