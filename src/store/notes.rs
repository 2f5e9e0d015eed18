//! Notes the daemon leaves about itself for `linetokd status`: the outcome
//! of the last config reload. One value per key, overwritten.

use chrono::{DateTime, Utc};
use rusqlite::params;

use super::{ExecCached as _, Store, StoreError, millis, screen, time_at};
use crate::domain::{ChannelId, GroupName};

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
    /// Writes (or overwrites) a note.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn set_note(&self, now: DateTime<Utc>, key: &str, value: &str) -> Result<(), StoreError> {
        self.write("writing a daemon note", |tx| {
            let value = screen(tx, value)?;
            tx.exec_cached(
                "INSERT INTO daemon_notes (key, value, at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, at = excluded.at",
                params![key, value, millis(now)],
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
        self.read("reading daemon notes", |conn| {
            // `substr` rather than LIKE: a prefix may hold `%` or `_`.
            let mut stmt = conn.prepare_cached(
                "SELECT key, value, at FROM daemon_notes \
                 WHERE substr(key, 1, length(?1)) = ?1 ORDER BY key",
            )?;
            let mut rows = stmt.query(params![prefix])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(DaemonNote {
                    key: row.get(0)?,
                    value: row.get(1)?,
                    at: time_at(row, "at")?,
                });
            }
            Ok(out)
        })
    }

    /// The note under `key`, if any.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn note(&self, key: &str) -> Result<Option<DaemonNote>, StoreError> {
        self.read("reading a daemon note", |conn| {
            let mut stmt =
                conn.prepare_cached("SELECT key, value, at FROM daemon_notes WHERE key = ?1")?;
            let mut rows = stmt.query(params![key])?;
            match rows.next()? {
                Some(row) => Ok(Some(DaemonNote {
                    key: row.get(0)?,
                    value: row.get(1)?,
                    at: time_at(row, "at")?,
                })),
                None => Ok(None),
            }
        })
    }
}
