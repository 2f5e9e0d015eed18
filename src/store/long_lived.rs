//! Long-lived tokens as the daemon watches them, one row per (channel,
//! fingerprint): what `linetokd status` shows and what survives a restart
//! (when a token was first seen, last valid, last checked, retired). The
//! value itself is never here: the operator's `token_file` holds it, and an
//! old value lives only in the daemon's memory (migration 0008).

use chrono::{DateTime, Utc};
use rusqlite::{Row, params};

use super::sql::SqliteDb;
use super::{ExecCached as _, Fail, Store, StoreError, millis, opt_time_at, screen, time_at};
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

    fn parse(text: &str) -> Result<Self, Fail> {
        Ok(match text {
            "current" => Self::Current,
            "old" => Self::Old,
            "ended" => Self::Ended,
            other => return Err(Fail::Corrupt(format!("long-lived role {other:?}"))),
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

    fn parse(text: &str) -> Result<Self, Fail> {
        Ok(match text {
            "pending" => Self::Pending,
            "valid" => Self::Valid,
            "invalid" => Self::Invalid,
            "wrong_channel" => Self::WrongChannel,
            "unknown" => Self::Unknown,
            other => return Err(Fail::Corrupt(format!("long-lived result {other:?}"))),
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

fn decode(row: &Row<'_>) -> Result<LongLivedRow, Fail> {
    Ok(LongLivedRow {
        channel: ChannelId::new(row.get::<_, String>("channel_id")?),
        fingerprint: row.get("fingerprint")?,
        role: LongLivedRole::parse(&row.get::<_, String>("role")?)?,
        first_seen_at: time_at(row, "first_seen_at")?,
        last_valid_at: opt_time_at(row, "last_valid_at")?,
        last_checked_at: opt_time_at(row, "last_checked_at")?,
        result: LongLivedResult::parse(&row.get::<_, String>("result")?)?,
        detail: row.get("detail")?,
        retired_at: opt_time_at(row, "retired_at")?,
    })
}

/// Inserts or updates one row; `retired_at` is kept as stored,
/// `first_seen_at` as first written.
fn upsert(tx: &SqliteDb<'_>, row: &LongLivedRow) -> Result<(), Fail> {
    let detail = screen(tx, &row.detail)?;
    tx.exec_cached(
        "INSERT INTO long_lived_tokens (channel_id, fingerprint, role, first_seen_at, \
         last_valid_at, last_checked_at, result, detail) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
         ON CONFLICT (channel_id, fingerprint) DO UPDATE SET role = excluded.role, \
         last_valid_at = excluded.last_valid_at, \
         last_checked_at = excluded.last_checked_at, result = excluded.result, \
         detail = excluded.detail",
        params![
            row.channel.as_str(),
            row.fingerprint,
            row.role.as_str(),
            millis(row.first_seen_at),
            row.last_valid_at.map(millis),
            row.last_checked_at.map(millis),
            row.result.as_str(),
            detail,
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
        self.write("recording a long-lived token", |tx| upsert(tx, row))
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
        self.write("recording a channel's long-lived tokens", |tx| {
            for row in rows.iter().filter(|r| &r.channel == channel) {
                upsert(tx, row)?;
            }
            let mut stmt = tx.prepare_cached(
                "SELECT fingerprint FROM long_lived_tokens \
                 WHERE channel_id = ?1 AND role IN ('current', 'old')",
            )?;
            let held: Vec<String> = stmt
                .query_map(params![channel.as_str()], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let mut ended = 0;
            for fp in held
                .iter()
                .filter(|fp| !rows.iter().any(|r| &r.fingerprint == *fp))
            {
                ended += tx.exec_cached(
                    "UPDATE long_lived_tokens SET role = 'ended', \
                     detail = 'no longer verified: the token file no longer holds it' \
                     WHERE channel_id = ?1 AND fingerprint = ?2",
                    params![channel.as_str(), fp],
                )?;
            }
            Ok(ended)
        })
    }

    /// Every watched token, by channel, then current before old before
    /// ended, then newest first.
    ///
    /// # Errors
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn long_lived_rows(&self) -> Result<Vec<LongLivedRow>, StoreError> {
        self.read("reading long-lived tokens", |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT * FROM long_lived_tokens ORDER BY channel_id, \
                 CASE role WHEN 'current' THEN 0 WHEN 'old' THEN 1 ELSE 2 END, \
                 first_seen_at DESC",
            )?;
            let mut rows = stmt.query([])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(decode(row)?);
            }
            Ok(out)
        })
    }

    /// Marks every `old` row as `ended`: at start, the old values the last
    /// run kept in memory are gone, so nobody verifies them any more.
    /// Returns how many there were.
    ///
    /// # Errors
    /// [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn forget_old_long_lived(&self) -> Result<usize, StoreError> {
        self.write("forgetting old long-lived tokens", |tx| {
            Ok(tx.exec_cached(
                "UPDATE long_lived_tokens SET role = 'ended', \
                 detail = 'no longer verified: the daemon restarted and the old value was only in its memory' \
                 WHERE role = 'old'",
                [],
            )?)
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
        self.write("retiring a long-lived token", |tx| {
            tx.exec_cached(
                "INSERT INTO long_lived_tokens (channel_id, fingerprint, role, first_seen_at, \
                 result, detail, retired_at) VALUES (?1, ?2, 'current', ?3, 'invalid', \
                 'revoked by linetokd long-lived retire', ?3) \
                 ON CONFLICT (channel_id, fingerprint) DO UPDATE SET retired_at = ?3, \
                 result = 'invalid', detail = 'revoked by linetokd long-lived retire'",
                params![channel.as_str(), fingerprint, millis(now)],
            )?;
            Ok(())
        })
    }
}
