//! Notes the daemon leaves about itself for `linetokd status`: the outcome
//! of the last config reload. One value per key, overwritten.

use super::sql::{SqlError, SqlRow, p};
use super::{Store, StoreError, millis, screen};
use crate::domain::{ChannelId, GroupName};
use chrono::{DateTime, Utc};

/// The key of the last config reload's outcome.
pub const LAST_RELOAD: &str = "last_reload";

/// The note under which a group's sink state is recorded for `linetokd
/// status` (`ok: ...` or `failing since ...`): delivery writes it, status
/// reads it, and neither needs the other.
pub fn sink_note_key(channel: &ChannelId, group: &GroupName) -> String {
    format!("{SINK_NOTE_PREFIX}{channel}/{group}")
}

/// The start of every [`sink_note_key`], to read them all at once.
pub const SINK_NOTE_PREFIX: &str = "sinks/";

/// The note under which a channel's stateless issuing state is recorded
/// for `linetokd status` (`ok: ...` or `failing since ...`): the stateless
/// cache writes it after each call to LINE (no token value), status reads
/// it. Stateless tokens themselves are never stored.
pub fn stateless_note_key(channel: &ChannelId) -> String {
    format!("{STATELESS_NOTE_PREFIX}{channel}")
}

/// The start of every [`stateless_note_key`].
pub const STATELESS_NOTE_PREFIX: &str = "stateless/";

/// One note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonNote {
    /// What it is about, e.g. [`LAST_RELOAD`].
    pub key: String,
    /// The text (screened like every free-text column).
    pub value: String,
    /// When it was written.
    pub at: DateTime<Utc>,
}

impl Store {
    /// Sets note `key` to `value` (screened like every free-text column).
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn set_note(&self, now: DateTime<Utc>, key: &str, value: &str) -> Result<(), StoreError> {
        self.write_db("writing a daemon note", |db| {
            let value = screen(db, value)?;
            db.execute(
                "INSERT INTO daemon_notes (key, value, at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, at = excluded.at",
                p![key, value.as_str(), millis(now)],
            )?;
            Ok(())
        })
    }

    /// Every note whose key starts with `prefix`, by key.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn notes_with_prefix(&self, prefix: &str) -> Result<Vec<DaemonNote>, StoreError> {
        self.read_db("reading daemon notes", |db| {
            // `substr` rather than LIKE: a prefix may hold `%` or `_`.
            Ok(db.query_map(
                "SELECT key, value, at FROM daemon_notes \
                 WHERE substr(key, 1, length(CAST(?1 AS TEXT))) = ?1 ORDER BY key",
                p![prefix],
                note_from_row,
            )?)
        })
    }

    /// The note `key`, if there is one.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn note(&self, key: &str) -> Result<Option<DaemonNote>, StoreError> {
        self.read_db("reading a daemon note", |db| {
            Ok(db.query_opt(
                "SELECT key, value, at FROM daemon_notes WHERE key = ?1",
                p![key],
                note_from_row,
            )?)
        })
    }
}

fn note_from_row(row: &dyn SqlRow) -> Result<DaemonNote, SqlError> {
    Ok(DaemonNote {
        key: row.get_text(0)?,
        value: row.get_text(1)?,
        at: row.time(2, "daemon_notes.at")?,
    })
}
