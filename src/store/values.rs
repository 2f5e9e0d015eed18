//! Token values at rest: which column holds a value, sealing on write,
//! opening on read, and the database-wide steps of encryption (the checks
//! at open, sealing every plaintext row, re-encryption under a new active
//! key, `linetokd db decrypt`).
//!
//! A token's value is either plaintext in `tokens.access_token` or sealed
//! ([`super::crypt`]) in `tokens.access_token_enc` with its key ID in
//! `tokens.enc_key_id` (schema version 7). LINE Login grants
//! (`login_grants`, schema version 10, [`super::login`]) hold two values,
//! both only ever sealed, under one `enc_key_id` per row: every step here
//! that walks the keys (the counts, the probe at open, re-encryption)
//! covers them too, and `db decrypt` refuses while any exists, since they
//! have no plaintext form. A store opened with a
//! [`Keyring`] seals every value it writes under the active key and, at
//! open, every plaintext row it finds (one transaction), then truncates the
//! WAL, vacuums and turns on `secure_delete`, so no plaintext value is left
//! in the file or its WAL.
//!
//! # Invariants
//!
//! - A writer never starts on a database it cannot fully read: every key
//!   ID a row names must be in the keyring, and one row per key is opened
//!   as a probe ([`prepare`]); sealed rows without a keyring are refused,
//!   never silently left unreadable.
//! - Every seal is counted per key in `encryptions`, in the transaction
//!   that stores the value; a key past
//!   [`crypt::MAX_ENCRYPTIONS_PER_KEY`] seals nothing more.
//! - Screening (docs/design.md invariant 5) needs every stored value: a
//!   writer fills its screening set ([`super::screen`], keyed hashes in
//!   memory) at open and adds each new token as it is stored. Errors name
//!   rows and key IDs, never values.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{Connection, TransactionBehavior, params};

use super::crypt::{self, CryptError, Keyring, Place};
use super::sql::{Db, SqlError, SqlRow, SqliteDb, p};
use super::{Fail, StoreError};
use crate::domain::{AccessToken, KeyId};

/// The table sealed values live in (part of the additional data).
const TABLE: &str = "tokens";

/// The most rows one re-encryption step seals, so a rekey never holds the
/// writer for long.
pub const REKEY_BATCH: usize = 100;

/// How a store reads and writes token values: its keyring, if any, and
/// how often a value failed to open.
#[derive(Debug, Default)]
pub(super) struct Values {
    keyring: Option<Arc<Keyring>>,
    decrypt_failures: AtomicU64,
}

/// A value as it goes into its row.
pub(super) struct Column {
    /// `access_token`.
    pub plain: Option<String>,
    /// `access_token_enc`.
    pub sealed: Option<Vec<u8>>,
    /// `enc_key_id`.
    pub key: Option<u32>,
}

/// How many token rows hold their value one way: plaintext (`key` is
/// `None`) or sealed under one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ValueCount {
    /// The database key, or `None` for plaintext rows.
    pub key: Option<u32>,
    /// How many rows.
    pub rows: u64,
}

/// What one re-encryption step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RekeyProgress {
    /// Rows sealed under the active key in this step.
    pub rekeyed: u64,
    /// Rows still under another key (or plaintext) after it.
    pub remaining: u64,
}

impl Values {
    pub(super) fn new(keyring: Option<Arc<Keyring>>) -> Self {
        Self {
            keyring,
            decrypt_failures: AtomicU64::new(0),
        }
    }

    pub(super) fn keyring(&self) -> Option<&Keyring> {
        self.keyring.as_deref()
    }

    /// How many values failed to open since the store was opened.
    pub(super) fn decrypt_failures(&self) -> u64 {
        self.decrypt_failures.load(Ordering::Relaxed)
    }

    /// A row's value from its two columns.
    pub(super) fn open(
        &self,
        row: Row<'_>,
        plain: Option<String>,
        sealed: Option<Vec<u8>>,
    ) -> Result<AccessToken, Fail> {
        match (plain, sealed) {
            (Some(plain), None) => Ok(AccessToken::new(plain)),
            (None, Some(sealed)) => self.open_sealed(row, &sealed).map_err(|reason| {
                self.decrypt_failures.fetch_add(1, Ordering::Relaxed);
                Fail::Store(StoreError::Undecryptable {
                    key_id: KeyId::new(row.key_id),
                    channel: row.channel.to_owned(),
                    group: row.group.to_owned(),
                    reason,
                })
            }),
            _ => Err(Fail::Corrupt(format!(
                "tokens row {}: exactly one of access_token and access_token_enc must be set",
                row.key_id
            ))),
        }
    }

    fn open_sealed(&self, row: Row<'_>, sealed: &[u8]) -> Result<AccessToken, CryptError> {
        let Some(keyring) = self.keyring() else {
            return Err(CryptError::UnknownKey(crypt::key_id_of(sealed)?));
        };
        let bytes = keyring.open(&row.place(), sealed)?;
        // Sealed from a `&str`, so text unless altered, and altered text
        // fails the tag first.
        String::from_utf8(bytes)
            .map(AccessToken::new)
            .map_err(|_| CryptError::Tampered(crypt::key_id_of(sealed).unwrap_or(0)))
    }

    /// How `value` goes into its row: sealed under the active key (and the
    /// seal counted in `tx`) when the store has a keyring, else plaintext.
    pub(super) fn column(
        &self,
        tx: &dyn Db,
        row: Row<'_>,
        value: &AccessToken,
    ) -> Result<Column, Fail> {
        let Some(keyring) = self.keyring() else {
            return Ok(Column {
                plain: Some(value.expose().to_owned()),
                sealed: None,
                key: None,
            });
        };
        let key = keyring.active();
        count_seal(tx, key)?;
        let sealed = keyring
            .seal(&row.place(), value.expose().as_bytes())
            .map_err(|reason| {
                Fail::Store(StoreError::Seal {
                    key_id: KeyId::new(row.key_id),
                    reason,
                })
            })?;
        Ok(Column {
            plain: None,
            sealed: Some(sealed),
            key: Some(key),
        })
    }
}

impl Values {
    /// Seals `value` for `place` under the active key, counting the seal in
    /// `tx`, for values that have no plaintext form (LINE Login grants):
    /// without a keyring this is [`StoreError::LoginUnencrypted`]. Returns
    /// the sealed bytes and the key ID.
    pub(super) fn seal_only(
        &self,
        tx: &dyn Db,
        place: &Place<'_>,
        value: &str,
    ) -> Result<Result<(Vec<u8>, u32), CryptError>, Fail> {
        let Some(keyring) = self.keyring() else {
            return Err(Fail::Store(StoreError::LoginUnencrypted));
        };
        let key = keyring.active();
        count_seal(tx, key)?;
        Ok(keyring.seal(place, value.as_bytes()).map(|v| (v, key)))
    }

    /// Opens a value [`Self::seal_only`] sealed for `place`; a failure is
    /// counted like a token row's.
    pub(super) fn open_only(
        &self,
        place: &Place<'_>,
        sealed: &[u8],
    ) -> Result<Result<String, CryptError>, Fail> {
        let Some(keyring) = self.keyring() else {
            return Err(Fail::Store(StoreError::LoginUnencrypted));
        };
        let opened = keyring.open(place, sealed).and_then(|bytes| {
            String::from_utf8(bytes)
                .map_err(|_| CryptError::Tampered(crypt::key_id_of(sealed).unwrap_or(0)))
        });
        if opened.is_err() {
            self.decrypt_failures.fetch_add(1, Ordering::Relaxed);
        }
        Ok(opened)
    }
}

/// Where a token row is: its LINE key ID, channel and group.
#[derive(Debug, Clone, Copy)]
pub(super) struct Row<'a> {
    pub key_id: &'a str,
    pub channel: &'a str,
    pub group: &'a str,
}

/// A `tokens` row's value as stored, with what names it: the columns of
/// [`VALUE_COLUMNS`], in order.
struct StoredValue {
    key_id: String,
    channel: String,
    group: String,
    plain: Option<String>,
    sealed: Option<Vec<u8>>,
}

/// The `tokens` columns [`StoredValue::decode`] reads, in its order.
const VALUE_COLUMNS: &str = "key_id, channel_id, group_name, access_token, access_token_enc";

impl StoredValue {
    fn decode(row: &dyn SqlRow) -> Result<Self, SqlError> {
        Ok(Self {
            key_id: row.get_text(0)?,
            channel: row.get_text(1)?,
            group: row.get_text(2)?,
            plain: row.text(3)?,
            sealed: row.blob(4)?,
        })
    }

    /// The value in the clear, opening a sealed one with `values`.
    fn open(self, values: &Values) -> Result<AccessToken, Fail> {
        let row = Row {
            key_id: &self.key_id,
            channel: &self.channel,
            group: &self.group,
        };
        values.open(row, self.plain, self.sealed)
    }
}

impl Row<'_> {
    fn place(&self) -> Place<'_> {
        Place {
            table: TABLE,
            channel: self.channel,
            group: self.group,
            row: self.key_id,
        }
    }
}

/// Counts one seal under `key`, refusing it past the key's limit. The
/// column is qualified in the update (`encryptions.sealed`) so both
/// dialects read it as the stored row's, not the proposed one's.
fn count_seal(tx: &dyn Db, key: u32) -> Result<(), Fail> {
    let sealed = tx.query_one(
        "INSERT INTO encryptions (enc_key_id, sealed) VALUES (?1, 1) \
         ON CONFLICT (enc_key_id) DO UPDATE SET sealed = encryptions.sealed + 1 RETURNING sealed",
        p![key],
        |row| row.get_int(0),
    )?;
    if u64::try_from(sealed).unwrap_or(u64::MAX) > crypt::MAX_ENCRYPTIONS_PER_KEY {
        return Err(Fail::Store(StoreError::KeyWornOut { enc_key_id: key }));
    }
    Ok(())
}

/// Rows per key, plaintext first: token rows and login grants together
/// (a grant is one row, its two values under one key).
pub(super) fn value_counts(db: &dyn Db) -> Result<Vec<ValueCount>, Fail> {
    Ok(rows_per_key(db)?
        .into_iter()
        .map(|r| ValueCount {
            key: r.key,
            rows: r.tokens + r.grants,
        })
        .collect())
}

/// Rows under one key (or plaintext), split by table: what the refusals
/// at open name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KeyRows {
    key: Option<u32>,
    tokens: u64,
    grants: u64,
}

/// [`KeyRows`] per key, plaintext first.
fn rows_per_key(db: &dyn Db) -> Result<Vec<KeyRows>, Fail> {
    // The casts: PostgreSQL's sum of BIGINTs is NUMERIC. Plaintext (NULL)
    // first on both: SQLite sorts NULL first, PostgreSQL last.
    let rows = db.query_map(
        "SELECT enc_key_id, CAST(sum(tokens) AS BIGINT), CAST(sum(grants) AS BIGINT) FROM ( \
             SELECT enc_key_id, count(*) AS tokens, 0 AS grants FROM tokens GROUP BY enc_key_id \
             UNION ALL \
             SELECT enc_key_id, 0, count(*) FROM login_grants GROUP BY enc_key_id) AS per_table \
         GROUP BY enc_key_id ORDER BY enc_key_id IS NOT NULL, enc_key_id",
        p![],
        |row| Ok((row.int(0)?, row.get_int(1)?, row.get_int(2)?)),
    )?;
    let mut out = Vec::new();
    for (key, tokens, grants) in rows {
        let key = key
            .map(|k| {
                u32::try_from(k).map_err(|_| {
                    Fail::Corrupt(format!("an enc_key_id column holds {k}, not a u32"))
                })
            })
            .transpose()?;
        out.push(KeyRows {
            key,
            tokens: u64::try_from(tokens).unwrap_or(0),
            grants: u64::try_from(grants).unwrap_or(0),
        });
    }
    Ok(out)
}

/// Seals counted per key, ever.
pub(super) fn seal_counts(db: &dyn Db) -> Result<Vec<(u32, u64)>, Fail> {
    let rows = db.query_map(
        "SELECT enc_key_id, sealed FROM encryptions ORDER BY enc_key_id",
        p![],
        |row| Ok((row.get_int(0)?, row.get_int(1)?)),
    )?;
    Ok(rows
        .into_iter()
        .filter_map(|(key, sealed)| {
            u32::try_from(key)
                .ok()
                .map(|key| (key, u64::try_from(sealed).unwrap_or(0)))
        })
        .collect())
}

/// What a writer does at open, after the migrations: refuse a database it
/// could not fully read, seal plaintext rows when it has a keyring (unless
/// `keep_plaintext`), and fill the screening table.
pub(super) fn prepare(
    conn: &mut Connection,
    values: &Values,
    screen: &super::screen::Screen,
    keep_plaintext: bool,
) -> Result<(), Fail> {
    // Before anything may need a temporary file (VACUUM's copy, the
    // screening table): they stay in memory, never in $TMPDIR.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    check_keys(&SqliteDb::new(conn, screen), values)?;
    if values.keyring().is_some() {
        // From now on deleted content is zeroed, not left in free pages.
        conn.pragma_update(None, "secure_delete", true)?;
        // A run that sealed the plaintext rows but died before scrubbing
        // the file left the old values in free pages and the WAL.
        if scrub_pending(conn)? {
            tracing::info!("finishing an interrupted scrub of plaintext token values");
            scrub(conn)?;
        }
    }
    if values.keyring().is_some() && !keep_plaintext {
        let plaintext: i64 = conn.query_row(
            "SELECT count(*) FROM tokens WHERE access_token IS NOT NULL",
            [],
            |row| row.get(0),
        )?;
        if plaintext > 0 {
            tracing::info!(
                rows = plaintext,
                "encrypting every plaintext token value in one transaction"
            );
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let sealed = reseal(&SqliteDb::new(&tx, screen), values, None)?;
            // Committed with the seals: a crash before the scrub below is
            // finished at the next open.
            tx.execute(
                "INSERT INTO daemon_notes (key, value, at) VALUES (?1, 'pending', 0) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [SCRUB_PENDING],
            )?;
            tx.commit()?;
            scrub(conn)?;
            tracing::warn!(
                sealed,
                "encrypted every plaintext token value in the database; backups and copies made \
                 before now still hold them in plaintext"
            );
        }
    }
    fill_screen(&super::sql::SqliteDb::new(conn, screen), values)
}

/// Every key a row names is in the keyring, and opens a row of its own
/// (a token row, else a login grant's access value).
pub(super) fn check_keys(db: &dyn Db, values: &Values) -> Result<(), Fail> {
    let sealed: Vec<KeyRows> = rows_per_key(db)?
        .into_iter()
        .filter(|c| c.key.is_some())
        .collect();
    if sealed.is_empty() {
        return Ok(());
    }
    let Some(keyring) = values.keyring() else {
        return Err(Fail::Store(StoreError::EncryptedWithoutKeys {
            counts: describe_rows(&sealed),
        }));
    };
    let missing: Vec<KeyRows> = sealed
        .iter()
        .copied()
        .filter(|c| c.key.is_some_and(|k| !keyring.contains(k)))
        .collect();
    if !missing.is_empty() {
        return Err(Fail::Store(StoreError::MissingKeys {
            counts: describe_rows(&missing),
        }));
    }
    // One row per key, as a probe: a wrong key file under the right ID is
    // found now, not at the first revoke.
    for count in &sealed {
        let probe = db.query_opt(
            &format!("SELECT {VALUE_COLUMNS} FROM tokens WHERE enc_key_id = ?1 LIMIT 1"),
            p![count.key],
            StoredValue::decode,
        )?;
        if let Some(probe) = probe {
            probe.open(values)?;
            continue;
        }
        let grant = db.query_opt(
            "SELECT channel_id, subject, access_token_enc FROM login_grants \
             WHERE enc_key_id = ?1 LIMIT 1",
            p![count.key],
            |row| Ok((row.get_text(0)?, row.get_text(1)?, row.blob(2)?)),
        )?;
        if let Some((channel, subject, Some(sealed))) = grant {
            super::login::open_value(
                values,
                &channel,
                &subject,
                GrantValue::Access.as_str(),
                &sealed,
            )?;
        }
    }
    Ok(())
}

/// "key 1: 3 rows (1 login grant)": [`describe_counts`] with the login
/// grants among the rows named, so an operator knows user tokens are at
/// stake.
fn describe_rows(rows: &[KeyRows]) -> String {
    rows.iter()
        .map(|r| {
            let total = describe_counts(&[ValueCount {
                key: r.key,
                rows: r.tokens + r.grants,
            }]);
            match r.grants {
                0 => total,
                1 => format!("{total} (1 login grant)"),
                n => format!("{total} ({n} login grants)"),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// "key 1: 3 rows, key 4: 1 row".
fn describe_counts(counts: &[ValueCount]) -> String {
    counts
        .iter()
        .map(|c| {
            let key = c
                .key
                .map_or_else(|| "plaintext".to_owned(), |k| format!("key {k}"));
            let rows = if c.rows == 1 { "row" } else { "rows" };
            format!("{key}: {} {rows}", c.rows)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Seals under the active key every row that is plaintext or under
/// another key, at most `limit` rows (all when `None`); returns how many.
/// Runs inside the caller's transaction, on either backend.
pub(super) fn reseal(tx: &dyn Db, values: &Values, limit: Option<usize>) -> Result<u64, Fail> {
    let Some(keyring) = values.keyring() else {
        return Ok(0);
    };
    let active = keyring.active();
    // No limit is the most rows there can be: both dialects take a number.
    let limit = limit.map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX));
    let rows = tx.query_map(
        // Ranges, not `<>`: the index on enc_key_id serves them, so a step
        // does not scan the rows already under the active key.
        &format!(
            "SELECT {VALUE_COLUMNS} FROM tokens \
             WHERE enc_key_id IS NULL OR enc_key_id < ?1 OR enc_key_id > ?1 \
             LIMIT CAST(?2 AS BIGINT)"
        ),
        p![active, limit],
        StoredValue::decode,
    )?;
    let mut done = 0;
    for stored in rows {
        let key_id = stored.key_id.clone();
        let (channel, group) = (stored.channel.clone(), stored.group.clone());
        let value = stored.open(values)?;
        let row = Row {
            key_id: &key_id,
            channel: &channel,
            group: &group,
        };
        let column = values.column(tx, row, &value)?;
        tx.execute(
            "UPDATE tokens SET access_token = NULL, access_token_enc = ?2, enc_key_id = ?3 \
             WHERE key_id = ?1",
            p![key_id.as_str(), column.sealed.as_deref(), column.key],
        )?;
        done += 1;
    }
    let left = limit.saturating_sub(i64::try_from(done).unwrap_or(i64::MAX));
    if left > 0 {
        done += reseal_grants(tx, values, active, left)?;
    }
    Ok(done)
}

/// Which of a grant's two values (part of its additional data).
#[derive(Debug, Clone, Copy)]
pub(super) enum GrantValue {
    Access,
    Refresh,
}

impl GrantValue {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Access => "access",
            Self::Refresh => "refresh",
        }
    }
}

/// Seals under the `active` key, both values under the same additional
/// data rules as when written, at most `limit` login grants that are under
/// another key; returns how many.
fn reseal_grants(tx: &dyn Db, values: &Values, active: u32, limit: i64) -> Result<u64, Fail> {
    let rows = tx.query_map(
        "SELECT channel_id, subject, access_token_enc, refresh_token_enc FROM login_grants \
         WHERE enc_key_id < ?1 OR enc_key_id > ?1 LIMIT CAST(?2 AS BIGINT)",
        p![active, limit],
        |row| {
            let bytes = |i| {
                row.blob(i)?.ok_or_else(|| {
                    SqlError::Column(format!("login_grants column {i} is NULL, expected bytes"))
                })
            };
            Ok((row.get_text(0)?, row.get_text(1)?, bytes(2)?, bytes(3)?))
        },
    )?;
    let mut done = 0;
    for (channel, subject, access, refresh) in rows {
        let mut sealed = Vec::with_capacity(2);
        for (kind, value) in [(GrantValue::Access, access), (GrantValue::Refresh, refresh)] {
            let opened =
                super::login::open_value(values, &channel, &subject, kind.as_str(), &value)?;
            let (bytes, key) =
                super::login::seal_value(values, tx, &channel, &subject, kind.as_str(), &opened)?;
            sealed.push((bytes, key));
        }
        let [(access, key), (refresh, _)] = <[(Vec<u8>, u32); 2]>::try_from(sealed)
            .map_err(|_| Fail::Corrupt("a login grant has two values".to_owned()))?;
        tx.execute(
            "UPDATE login_grants SET access_token_enc = ?3, refresh_token_enc = ?4, \
             enc_key_id = ?5 WHERE channel_id = ?1 AND subject = ?2",
            p![
                channel.as_str(),
                subject.as_str(),
                access.as_slice(),
                refresh.as_slice(),
                key
            ],
        )?;
        done += 1;
    }
    Ok(done)
}

/// Rows not yet under the active key (plaintext included).
pub(super) fn off_active(db: &dyn Db, values: &Values) -> Result<u64, Fail> {
    let Some(keyring) = values.keyring() else {
        return Ok(0);
    };
    let n = db.query_one(
        "SELECT (SELECT count(*) FROM tokens WHERE enc_key_id IS NULL OR enc_key_id < ?1 \
         OR enc_key_id > ?1) \
         + (SELECT count(*) FROM login_grants WHERE enc_key_id < ?1 OR enc_key_id > ?1)",
        p![keyring.active()],
        |row| row.get_int(0),
    )?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Opens every sealed row back to plaintext inside the caller's
/// transaction; returns how many.
pub(super) fn unseal_all(tx: &Connection, values: &Values) -> Result<u64, Fail> {
    let rows = {
        let mut stmt = tx.prepare(
            "SELECT key_id, channel_id, group_name, access_token_enc FROM tokens \
             WHERE access_token_enc IS NOT NULL",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, Vec<u8>>(3)?,
            ))
        })?;
        rows.collect::<Result<Vec<_>, _>>()?
    };
    let mut done = 0;
    for (key_id, channel, group, sealed) in rows {
        let row = Row {
            key_id: &key_id,
            channel: &channel,
            group: &group,
        };
        let value = values.open(row, None, Some(sealed))?;
        tx.execute(
            "UPDATE tokens SET access_token = ?2, access_token_enc = NULL, enc_key_id = NULL \
             WHERE key_id = ?1",
            params![key_id, value.expose()],
        )?;
        done += 1;
    }
    Ok(done)
}

/// The daemon note that says plaintext values were sealed but the file
/// not yet scrubbed of their old form.
const SCRUB_PENDING: &str = "scrub_pending";

fn scrub_pending(conn: &Connection) -> Result<bool, Fail> {
    Ok(conn
        .prepare("SELECT 1 FROM daemon_notes WHERE key = ?1")?
        .exists([SCRUB_PENDING])?)
}

/// After values changed form: moves the WAL into the file and truncates
/// it, then rebuilds the file, so neither holds the old form in free pages;
/// then clears [`SCRUB_PENDING`].
pub(super) fn scrub(conn: &Connection) -> Result<(), Fail> {
    checkpoint_truncate(conn)?;
    conn.execute_batch("VACUUM")?;
    conn.execute("DELETE FROM daemon_notes WHERE key = ?1", [SCRUB_PENDING])?;
    checkpoint_truncate(conn)?;
    Ok(())
}

/// `wal_checkpoint(TRUNCATE)`, which reports a reader in the way as a
/// result, not an error: retried for a few seconds, then an error (the
/// WAL would otherwise keep the old values while the log says otherwise).
fn checkpoint_truncate(conn: &Connection) -> Result<(), Fail> {
    for _ in 0..50 {
        let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))?;
        if busy == 0 {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Err(Fail::Corrupt(
        "the WAL could not be truncated after sealing token values: another connection kept \
         reading for 5 s; the old values stay in the -wal file until the next checkpoint"
            .to_owned(),
    ))
}

/// What a PostgreSQL writer does at open, after the migrations: refuse a
/// database it could not fully read and seal plaintext rows when it has a
/// keyring (one transaction), as [`prepare`] does for SQLite. PostgreSQL
/// keeps the old row versions until its autovacuum reuses them, and its WAL
/// and backups as the server keeps them: unlike SQLite's file, nothing
/// here can scrub them, so the warning says so.
pub(super) fn prepare_postgres(store: &super::Store) -> Result<(), StoreError> {
    let values = &store.inner.values;
    store.read_db("checking the database keys", |db| check_keys(db, values))?;
    if values.keyring().is_none() {
        return Ok(());
    }
    let sealed = store.write_db("encrypting every plaintext token value", |tx| {
        let plaintext = tx.query_one(
            "SELECT count(*) FROM tokens WHERE access_token IS NOT NULL",
            p![],
            |row| row.get_int(0),
        )?;
        if plaintext == 0 {
            return Ok(0);
        }
        reseal(tx, values, None)
    })?;
    if sealed > 0 {
        tracing::warn!(
            sealed,
            "encrypted every plaintext token value in the PostgreSQL database; the server's \
             old row versions, WAL archive and backups made before now may still hold them in \
             plaintext"
        );
    }
    Ok(())
}

/// Fills the store's screening set ([`super::screen`]) with every stored
/// token value, opening the sealed ones.
pub(super) fn fill_screen(db: &dyn Db, values: &Values) -> Result<(), Fail> {
    // Each value goes into the set as its row streams by (holding every
    // row first would hold every value at once). A value that does not
    // open is a store error, which a row callback cannot return: it is kept
    // aside and the query stopped.
    let mut failed: Option<Fail> = None;
    let streamed = db.query_each(
        &format!("SELECT {VALUE_COLUMNS} FROM tokens"),
        p![],
        &mut |row| match StoredValue::decode(row)?.open(values) {
            Ok(value) => {
                db.screen().remember(value.expose());
                Ok(())
            }
            Err(e) => {
                failed = Some(e);
                Err(SqlError::Column("a stored value did not open".to_owned()))
            }
        },
    );
    if let Some(e) = failed {
        return Err(e);
    }
    streamed?;
    Ok(())
}

/// Adds a newly stored value to the screening set.
pub(super) fn remember(db: &dyn Db, value: &AccessToken) {
    db.screen().remember(value.expose());
}

impl super::Store {
    /// Checks that this store's keys open every sealed value, as a writer's
    /// open does: the commands that read beside the daemon (`status`,
    /// `plan`) call it, since they no longer read the values themselves and
    /// would otherwise report an encrypted database without the keys the
    /// daemon needs to start.
    ///
    /// # Errors
    ///
    /// [`StoreError::EncryptedWithoutKeys`], [`StoreError::MissingKeys`],
    /// [`StoreError::Undecryptable`] (a wrong key file), [`StoreError::Query`].
    pub fn check_value_keys(&self) -> Result<(), StoreError> {
        self.read_db("checking the database keys", |db| {
            check_keys(db, &self.inner.values)
        })
    }

    /// Rows per key: plaintext (`key: None`) first, then each database
    /// key, for `status` and the metrics; login grants count as one row
    /// each.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`].
    pub fn value_counts(&self) -> Result<Vec<ValueCount>, StoreError> {
        self.read_db("counting token values per key", value_counts)
    }

    /// How many values each database key has sealed, ever.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`].
    pub fn seal_counts(&self) -> Result<Vec<(u32, u64)>, StoreError> {
        self.read_db("counting encryptions per key", seal_counts)
    }

    /// How many stored values failed to open since this store was opened.
    pub fn decrypt_failures(&self) -> u64 {
        self.inner.values.decrypt_failures()
    }

    /// The keyring this store seals and opens with, if any.
    pub fn keyring(&self) -> Option<&Keyring> {
        self.inner.values.keyring()
    }

    /// [`Self::keyring`], shared: for a second connection to the same
    /// database.
    pub fn shared_keyring(&self) -> Option<Arc<Keyring>> {
        self.inner.values.keyring.clone()
    }

    /// One re-encryption step: seals at most [`REKEY_BATCH`] rows (token
    /// rows first, then login grants, both values of each) that are under
    /// another key (or plaintext) under the active key, in one
    /// transaction. Without a keyring it does nothing.
    ///
    /// # Errors
    ///
    /// [`StoreError::Undecryptable`], [`StoreError::KeyWornOut`],
    /// [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn rekey_step(&self) -> Result<RekeyProgress, StoreError> {
        let values = &self.inner.values;
        if values.keyring().is_none() {
            return Ok(RekeyProgress {
                rekeyed: 0,
                remaining: 0,
            });
        }
        self.write_db("re-encrypting token values", |tx| {
            let rekeyed = reseal(tx, values, Some(REKEY_BATCH))?;
            let remaining = off_active(tx, values)?;
            Ok(RekeyProgress { rekeyed, remaining })
        })
    }

    /// `linetokd db decrypt`: every sealed value back to plaintext in one
    /// transaction, then the WAL truncated and the file rebuilt. Returns
    /// how many rows were opened. The config's `[encryption]` must be
    /// removed before the next start, or the daemon seals them again.
    /// Refused, changing nothing, while any LINE Login grant is stored:
    /// user tokens are never written in plaintext.
    ///
    /// # Errors
    ///
    /// [`StoreError::LoginGrantsEncryptedOnly`],
    /// [`StoreError::Undecryptable`], [`StoreError::Query`],
    /// [`StoreError::ReadOnly`].
    pub fn decrypt_all(&self) -> Result<u64, StoreError> {
        let values = &self.inner.values;
        let opened = self.write("decrypting token values", |tx| {
            // User tokens have no plaintext column, and must not get one:
            // checked inside the writing transaction, so no import slips in.
            let grants: i64 =
                tx.query_row("SELECT count(*) FROM login_grants", [], |row| row.get(0))?;
            if grants > 0 {
                return Err(Fail::Store(StoreError::LoginGrantsEncryptedOnly {
                    grants: u64::try_from(grants).unwrap_or(0),
                }));
            }
            unseal_all(tx, values)
        })?;
        self.read("truncating the WAL and vacuuming", |c| scrub(c))?;
        Ok(opened)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_as_people_say_them() {
        let counts = [
            ValueCount { key: None, rows: 2 },
            ValueCount {
                key: Some(4),
                rows: 1,
            },
        ];
        assert_eq!(describe_counts(&counts), "plaintext: 2 rows, key 4: 1 row");
    }

    #[test]
    fn refusals_name_the_login_grants_among_the_rows() {
        let rows = [
            KeyRows {
                key: Some(1),
                tokens: 2,
                grants: 1,
            },
            KeyRows {
                key: Some(3),
                tokens: 0,
                grants: 5,
            },
            KeyRows {
                key: Some(4),
                tokens: 1,
                grants: 0,
            },
        ];
        assert_eq!(
            describe_rows(&rows),
            "key 1: 3 rows (1 login grant), key 3: 5 rows (5 login grants), key 4: 1 row"
        );
    }
}
