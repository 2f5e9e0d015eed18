//! Long-lived tokens as the daemon watches them, one row per (channel,
//! fingerprint): what `linetokd status` shows and what survives a restart
//! (when a token was first seen, last valid, last checked, retired). The
//! value itself is never here: the operator's `token_file` holds it, and an
//! old value lives only in the daemon's memory (migration 0008).

use chrono::{DateTime, Utc};

use super::sql::{Db, Dialect, SqlError, SqlRow, p};
use super::{Fail, Store, StoreError, millis, screen};
use crate::domain::ChannelId;

/// Where a watched token stands relative to the channel's `token_file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LongLivedRole {
    /// The value the file holds.
    Current,
    /// A value the file held before, still verified until LINE rejects it.
    Old,
    /// No longer watched: LINE rejected the old value, or the daemon
    /// restarted and its in-memory value is gone.
    Ended,
}

impl LongLivedRole {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Current => "current",
            Self::Old => "old",
            Self::Ended => "ended",
        }
    }

    fn parse(text: &str) -> Result<Self, SqlError> {
        Ok(match text {
            "current" => Self::Current,
            "old" => Self::Old,
            "ended" => Self::Ended,
            other => return Err(SqlError::Column(format!("long-lived role {other:?}"))),
        })
    }
}

/// The last verify's answer about a watched token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LongLivedResult {
    /// Not verified yet.
    Pending,
    /// LINE accepts it for this channel.
    Valid,
    /// LINE rejects it (400).
    Invalid,
    /// LINE accepts it, but for another channel.
    WrongChannel,
    /// Several verifies in a row failed transiently: nobody knows.
    Unknown,
}

impl LongLivedResult {
    /// The stored spelling, also what `status` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Valid => "valid",
            Self::Invalid => "invalid",
            Self::WrongChannel => "wrong_channel",
            Self::Unknown => "unknown",
        }
    }

    fn parse(text: &str) -> Result<Self, SqlError> {
        Ok(match text {
            "pending" => Self::Pending,
            "valid" => Self::Valid,
            "invalid" => Self::Invalid,
            "wrong_channel" => Self::WrongChannel,
            "unknown" => Self::Unknown,
            other => return Err(SqlError::Column(format!("long-lived result {other:?}"))),
        })
    }
}

/// One watched long-lived token, without its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LongLivedRow {
    /// The channel whose `token_file` held it.
    pub channel: ChannelId,
    /// `sha256:` and the first 8 hex digits of the value's SHA-256.
    pub fingerprint: String,
    /// Current, old or ended.
    pub role: LongLivedRole,
    /// When the daemon first read it from the file.
    pub first_seen_at: DateTime<Utc>,
    /// The last time LINE said it is valid for this channel.
    pub last_valid_at: Option<DateTime<Utc>>,
    /// The last verify that got an answer (valid or not).
    pub last_checked_at: Option<DateTime<Utc>>,
    /// That answer.
    pub result: LongLivedResult,
    /// A few words on the result (LINE's error code, the other channel).
    pub detail: String,
    /// When `linetokd long-lived retire` revoked it.
    pub retired_at: Option<DateTime<Utc>>,
}

/// The columns [`decode`] reads, in its order.
const COLUMNS: &str = "channel_id, fingerprint, role, first_seen_at, last_valid_at, \
     last_checked_at, result, detail, retired_at";

/// Decodes a row of [`COLUMNS`], by position.
fn decode(row: &dyn SqlRow) -> Result<LongLivedRow, SqlError> {
    Ok(LongLivedRow {
        channel: ChannelId::new(row.get_text(0)?),
        fingerprint: row.get_text(1)?,
        role: LongLivedRole::parse(&row.get_text(2)?)?,
        first_seen_at: row.time(3, "first_seen_at")?,
        last_valid_at: row.opt_time(4, "last_valid_at")?,
        last_checked_at: row.opt_time(5, "last_checked_at")?,
        result: LongLivedResult::parse(&row.get_text(6)?)?,
        detail: row.get_text(7)?,
        retired_at: row.opt_time(8, "retired_at")?,
    })
}

/// Inserts or updates one row; `retired_at` is kept as stored,
/// `first_seen_at` as first written.
fn upsert(tx: &dyn Db, row: &LongLivedRow) -> Result<(), Fail> {
    let detail = screen(tx, &row.detail)?;
    tx.execute(
        "INSERT INTO long_lived_tokens (channel_id, fingerprint, role, first_seen_at, \
         last_valid_at, last_checked_at, result, detail) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
         ON CONFLICT (channel_id, fingerprint) DO UPDATE SET role = excluded.role, \
         last_valid_at = excluded.last_valid_at, \
         last_checked_at = excluded.last_checked_at, result = excluded.result, \
         detail = excluded.detail",
        p![
            row.channel.as_str(),
            row.fingerprint.as_str(),
            row.role.as_str(),
            millis(row.first_seen_at),
            row.last_valid_at.map(millis),
            row.last_checked_at.map(millis),
            row.result.as_str(),
            detail.as_str(),
        ],
    )?;
    Ok(())
}

impl Store {
    /// Writes what the watcher knows about one token (insert or update);
    /// `retired_at` is kept as stored, `first_seen_at` as first written.
    ///
    /// # Errors
    /// [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn record_long_lived(&self, row: &LongLivedRow) -> Result<(), StoreError> {
        self.write_db("recording a long-lived token", |tx| upsert(tx, row))
    }

    /// Writes every token a channel's watcher holds (`rows`, each as
    /// [`Store::record_long_lived`]) and ends, in the same transaction, the
    /// channel's `current` and `old` rows that are not among them: a value
    /// no watcher holds is verified by nobody, so its last answer must not
    /// stand as if it were. Returns how many rows were ended that way.
    ///
    /// # Errors
    /// [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn sync_long_lived(
        &self,
        channel: &ChannelId,
        rows: &[LongLivedRow],
    ) -> Result<usize, StoreError> {
        self.write_db("recording a channel's long-lived tokens", |tx| {
            for row in rows.iter().filter(|r| &r.channel == channel) {
                upsert(tx, row)?;
            }
            let held = tx.query_map(
                "SELECT fingerprint FROM long_lived_tokens \
                 WHERE channel_id = ?1 AND role IN ('current', 'old')",
                p![channel.as_str()],
                |r| r.get_text(0),
            )?;
            let mut ended = 0;
            for fp in held
                .iter()
                .filter(|fp| !rows.iter().any(|r| &r.fingerprint == *fp))
            {
                ended += tx.execute(
                    "UPDATE long_lived_tokens SET role = 'ended', \
                     detail = 'no longer verified: the token file no longer holds it' \
                     WHERE channel_id = ?1 AND fingerprint = ?2",
                    p![channel.as_str(), fp.as_str()],
                )?;
            }
            Ok(usize::try_from(ended).unwrap_or(usize::MAX))
        })
    }

    /// Every watched token, by channel, then current before old before
    /// ended, then newest first.
    ///
    /// # Errors
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn long_lived_rows(&self) -> Result<Vec<LongLivedRow>, StoreError> {
        self.read_db("reading long-lived tokens", |db| {
            // By channel in byte order on both: PostgreSQL's database
            // collation might order text otherwise.
            let channel = match db.dialect() {
                Dialect::Sqlite => "channel_id",
                Dialect::Postgres => "channel_id COLLATE \"C\"",
            };
            Ok(db.query_map(
                &format!(
                    "SELECT {COLUMNS} FROM long_lived_tokens ORDER BY {channel}, \
                     CASE role WHEN 'current' THEN 0 WHEN 'old' THEN 1 ELSE 2 END, \
                     first_seen_at DESC"
                ),
                p![],
                decode,
            )?)
        })
    }

    /// Marks every `old` row as `ended`: at start, the old values the last
    /// run kept in memory are gone, so nobody verifies them any more.
    /// Returns how many there were.
    ///
    /// # Errors
    /// [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn forget_old_long_lived(&self) -> Result<usize, StoreError> {
        self.write_db("forgetting old long-lived tokens", |tx| {
            let ended = tx.execute(
                "UPDATE long_lived_tokens SET role = 'ended', \
                 detail = 'no longer verified: the daemon restarted and the old value was only in its memory' \
                 WHERE role = 'old'",
                p![],
            )?;
            Ok(usize::try_from(ended).unwrap_or(usize::MAX))
        })
    }

    /// Records that `linetokd long-lived retire` revoked the token
    /// `fingerprint` of `channel` at `now` (inserting the row if the daemon
    /// never saw it). The daemon stops verifying and alerting about it.
    ///
    /// # Errors
    /// [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn retire_long_lived(
        &self,
        now: DateTime<Utc>,
        channel: &ChannelId,
        fingerprint: &str,
    ) -> Result<(), StoreError> {
        self.write_db("retiring a long-lived token", |tx| {
            tx.execute(
                "INSERT INTO long_lived_tokens (channel_id, fingerprint, role, first_seen_at, \
                 result, detail, retired_at) VALUES (?1, ?2, 'current', ?3, 'invalid', \
                 'revoked by linetokd long-lived retire', ?3) \
                 ON CONFLICT (channel_id, fingerprint) DO UPDATE SET retired_at = ?3, \
                 result = 'invalid', detail = 'revoked by linetokd long-lived retire'",
                p![channel.as_str(), fingerprint, millis(now)],
            )?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    /// [`super::decode`] reads by position; this is the order it reads in.
    /// Reorder both or neither.
    #[test]
    fn columns_are_in_the_order_the_decoder_reads() {
        let columns: Vec<&str> = super::COLUMNS.split(',').map(str::trim).collect();
        assert_eq!(
            columns,
            [
                "channel_id",
                "fingerprint",
                "role",
                "first_seen_at",
                "last_valid_at",
                "last_checked_at",
                "result",
                "detail",
                "retired_at"
            ]
        );
    }
}
