//! What can go wrong in the store, as one enum callers can branch on.
//!
//! Every variant names the database path or the row it is about. None ever
//! carries a token value: SQLite's own messages name constraints and columns,
//! never bound values, and the store's variants carry only key IDs, channel
//! IDs and group names, which are not secret.

use std::io;
use std::path::PathBuf;

use crate::domain::{ChannelId, GroupName, KeyId};

use super::IntentId;

/// A failure of the SQLite store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The directory meant to hold the database does not exist. The store
    /// does not create it: a missing state directory usually means a wrong
    /// path or a missing `StateDirectory=`, and guessing would hide that.
    #[error("the directory {dir} for the database {path} does not exist")]
    MissingDirectory {
        /// The missing directory.
        dir: PathBuf,
        /// The database path that was asked for.
        path: PathBuf,
    },

    /// A read-only open found no database file.
    #[error("there is no database at {path} (has `linetokd run` or `linetokd migrate` been run?)")]
    NoDatabase {
        /// The database path that was asked for.
        path: PathBuf,
    },

    /// Creating the database file or setting its permissions failed.
    #[error("cannot prepare the database file {path}: {source}")]
    File {
        /// The database path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// SQLite refused to open or configure the database.
    #[error("cannot open the database {path}: {source}")]
    Open {
        /// The database path.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },

    /// The database was written by a newer linetokd: its schema version is
    /// one this binary does not know, and downgrades are refused.
    #[error(
        "the database {path} has schema version {found}, but this linetokd only knows versions up to {known}; \
         use a newer linetokd (downgrades are not supported)"
    )]
    TooNew {
        /// The database path.
        path: PathBuf,
        /// The version found in the database.
        found: u32,
        /// The newest version this binary knows.
        known: u32,
    },

    /// A read-only open found a database that still needs migrations.
    #[error(
        "the database {path} has schema version {found}, but this linetokd needs version {known}; \
         run `linetokd migrate` (or start the daemon) first"
    )]
    NeedsMigration {
        /// The database path.
        path: PathBuf,
        /// The version found in the database.
        found: u32,
        /// The version this binary needs.
        known: u32,
    },

    /// A migration failed; it was rolled back and the schema version is
    /// unchanged.
    #[error(
        "migration {version} ({name}) of the database {path} failed and was rolled back: {source}"
    )]
    Migration {
        /// The database path.
        path: PathBuf,
        /// The migration's version.
        version: u32,
        /// The migration's name (its file name without `.sql`).
        name: &'static str,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },

    /// The list of migrations compiled into the binary is malformed
    /// (versions must be 1, 2, 3, ... in order).
    #[error("migration list is malformed: expected version {expected} but found {found} ({name})")]
    MigrationOrder {
        /// The version expected at this position.
        expected: u32,
        /// The version found there.
        found: u32,
        /// The migration's name.
        name: &'static str,
    },

    /// Another process (or another store in this process) holds the writer
    /// lock on this database.
    #[error("another linetokd ({}) is using {}", describe_pid(*.pid), .path.display())]
    Locked {
        /// The database path.
        path: PathBuf,
        /// The holder's process ID, as it wrote it into the lock file.
        pid: Option<u32>,
    },

    /// The lock file could not be created, read or locked.
    #[error("cannot use the lock file {path}: {source}")]
    LockFile {
        /// The lock file path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A write was attempted through a store opened read-only.
    #[error("the database {path} was opened read-only (the running daemon is its only writer)")]
    ReadOnly {
        /// The database path.
        path: PathBuf,
    },

    /// A query failed.
    #[error("database {path}: {what} failed: {source}")]
    Query {
        /// The database path.
        path: PathBuf,
        /// What the store was doing, e.g. "storing an issued token".
        what: &'static str,
        /// SQLite's error (it names constraints and columns, never values).
        #[source]
        source: rusqlite::Error,
    },

    /// The PostgreSQL database cannot be used: its URL, TLS, the
    /// connection or a migration.
    #[error(transparent)]
    Pg(#[from] super::pg::PgError),

    /// A PostgreSQL statement failed, or no pooled connection could be had.
    #[error("PostgreSQL at {target}: {what} failed: {source}")]
    Postgres {
        /// The server, with its password masked (`PgTarget::redacted`).
        target: String,
        /// What the store was doing.
        what: &'static str,
        /// The server's or the pool's error (it names constraints and
        /// columns, never values).
        #[source]
        source: super::sql::SqlError,
    },

    /// A row holds something this binary cannot read (an unknown state
    /// name, a time out of range).
    #[error("database {path}: {what}")]
    Corrupt {
        /// The database path.
        path: PathBuf,
        /// What is wrong, naming the table and column.
        what: String,
    },

    /// The channel is not in the store (not in the config at the last sync).
    #[error("channel {channel} is not in the store")]
    UnknownChannel {
        /// The channel.
        channel: ChannelId,
    },

    /// The channel or group is not in the store (not in the config at the
    /// last sync).
    #[error("channel {channel} has no group {group} in the store")]
    UnknownGroup {
        /// The channel.
        channel: ChannelId,
        /// The group.
        group: GroupName,
    },

    /// The group has been removed from the config; no token is issued for it.
    #[error("group {group} of channel {channel} was removed from the config")]
    GroupRemoved {
        /// The channel.
        channel: ChannelId,
        /// The group.
        group: GroupName,
    },

    /// An issuance is already in flight for the group. Refusing a second one
    /// is the store's last line against double issuance.
    #[error(
        "an issuance for group {group} of channel {channel} is already in flight (intent {intent}); \
         if a previous run crashed, close it with `close_lost_intents` at start"
    )]
    IssueInFlight {
        /// The channel.
        channel: ChannelId,
        /// The group.
        group: GroupName,
        /// The open intent.
        intent: IntentId,
    },

    /// No issuance intent has this ID.
    #[error("no issuance intent {intent}")]
    UnknownIntent {
        /// The intent asked for.
        intent: IntentId,
    },

    /// The issuance intent was already closed.
    #[error("issuance intent {intent} is already closed ({outcome})")]
    IntentClosed {
        /// The intent.
        intent: IntentId,
        /// How it was closed.
        outcome: &'static str,
    },

    /// No token with this key ID is stored.
    #[error("no stored token has key ID {key_id}")]
    UnknownToken {
        /// The key ID asked for.
        key_id: KeyId,
    },

    /// A token with this key ID is already stored.
    #[error("a token with key ID {key_id} is already stored")]
    DuplicateToken {
        /// The key ID.
        key_id: KeyId,
    },

    /// The database file was deleted, or another file put in its place,
    /// while the store had it open. SQLite would go on writing to the old,
    /// unreachable file; every write is refused instead, and the daemon must
    /// stop ([`StoreError::is_fatal`]).
    #[error(
        "the database file {} was deleted or replaced while linetokd ran; stopping so no token \
         is stored where no one will find it",
        .path.display()
    )]
    Replaced {
        /// The database path.
        path: PathBuf,
    },

    /// Under `[ha]`: this instance's grant of the channel has too little
    /// time left to start a LINE call (docs/design.md §14.2), or is no
    /// longer held. Nothing was sent; the instance steps down.
    #[error(
        "channel {channel}: this instance's lease of the channel is ending or gone; no LINE call \
         started, stepping down"
    )]
    LeaseEnding {
        /// The channel.
        channel: ChannelId,
    },

    /// The PostgreSQL writer lock's connection ended while linetokd ran (a
    /// server restart or failover, a dropped idle connection, a killed
    /// session): the lock went with it, so another instance may now write
    /// the same database. Every write is refused and the daemon must stop
    /// ([`StoreError::is_fatal`]); a restart takes the lock again or is
    /// refused.
    #[error(
        "lost the writer lock on the PostgreSQL database at {target} (its connection ended); \
         stopping so that two instances never write one database"
    )]
    WriterLockLost {
        /// The server, as `PgTarget::redacted` prints it.
        target: String,
    },

    /// The database holds sealed token values and the store was opened
    /// without a keyring: the config lacks `[encryption]`. Refused, never
    /// started with values it cannot read.
    #[error(
        "the database holds encrypted token values ({counts}) but the config has no [encryption] \
         section; add [encryption] with those key files (or run `linetokd db decrypt` with them first)"
    )]
    EncryptedWithoutKeys {
        /// Rows per key, e.g. "key 1: 3 rows".
        counts: String,
    },

    /// Rows are sealed under keys the keyring lacks.
    #[error(
        "the database holds token values encrypted under keys missing from [encryption] key_files \
         ({counts}); add those key files"
    )]
    MissingKeys {
        /// The missing keys and their rows, e.g. "key 1: 3 rows".
        counts: String,
    },

    /// A stored token value did not open: altered, moved from another row,
    /// sealed under a key not configured or a different key of that ID.
    #[error(
        "the stored value of token {key_id} (channel {channel}, group {group}) cannot be decrypted: {reason}"
    )]
    Undecryptable {
        /// The token's LINE key ID (the row).
        key_id: KeyId,
        /// Its channel.
        channel: String,
        /// Its group.
        group: String,
        /// Why.
        #[source]
        reason: super::crypt::CryptError,
    },

    /// A LINE Login grant was to be written or read without database keys:
    /// its tokens are stored only encrypted.
    #[error(
        "LINE Login grants are stored only encrypted, and the database was opened without keys: \
         configure [encryption]"
    )]
    LoginUnencrypted,

    /// A LINE Login grant's token could not be sealed or opened.
    #[error(
        "the {kind} token of login grant {subject} (login channel {channel}) cannot be {action}: {reason}"
    )]
    LoginValue {
        /// The login channel.
        channel: String,
        /// The short hash of the grant's subject (never the subject).
        subject: String,
        /// `access` or `refresh`.
        kind: &'static str,
        /// `encrypted` or `decrypted`.
        action: &'static str,
        /// Why.
        #[source]
        reason: super::crypt::CryptError,
    },

    /// `db decrypt` with LINE Login grants stored: user tokens are stored
    /// only encrypted, and decrypting would write them in plaintext.
    #[error(
        "the database holds {grants} LINE Login grant(s), whose user tokens are stored only \
         encrypted; nothing was decrypted. Delete them first (DELETE \
         /v1/login/{{channel}}/grants/{{subject}}, and remove [[login_channel]]), or keep \
         [encryption] and change keys with `linetokd db rekey` instead"
    )]
    LoginGrantsEncryptedOnly {
        /// How many grants are stored.
        grants: u64,
    },

    /// No grant is stored for this login channel and subject.
    #[error("no login grant {subject} on login channel {channel}")]
    NoLoginGrant {
        /// The login channel.
        channel: String,
        /// The short hash of the subject.
        subject: String,
    },

    /// A token value could not be sealed.
    #[error("the value of token {key_id} cannot be encrypted: {reason}")]
    Seal {
        /// The token's LINE key ID.
        key_id: KeyId,
        /// Why.
        #[source]
        reason: super::crypt::CryptError,
    },

    /// The active database key has sealed as many values as it may.
    #[error(
        "database key {enc_key_id} has encrypted 2^31 values, the most one key may (random nonces); \
         add a new key file, make it [encryption] active, and restart"
    )]
    KeyWornOut {
        /// The worn-out key.
        enc_key_id: u32,
    },

    /// The task running a store call died (it panicked or the runtime is
    /// shutting down) before it could answer.
    #[error("a store task failed: {what}")]
    Internal {
        /// What the runtime said.
        what: String,
    },
}

impl StoreError {
    /// True when the store can no longer be used safely and the daemon must
    /// stop rather than retry: [`StoreError::Replaced`] and
    /// [`StoreError::WriterLockLost`]. Every
    /// other error concerns one operation (a refused write, a busy database,
    /// an unknown row) and the next pass may succeed.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Replaced { .. } | Self::WriterLockLost { .. })
    }

    /// True when a write failed its lease fence (docs/design.md §14.1):
    /// this instance no longer leads the channel, and nothing of the write
    /// was stored.
    pub fn is_fenced(&self) -> bool {
        matches!(
            self,
            Self::LeaseEnding { .. }
                | Self::Pg(
                    super::pg::PgError::Fenced { .. } | super::pg::PgError::LeaseConflict { .. }
                )
        )
    }

    /// True when the config must change before the store can be used: the
    /// database keys it needs are missing or wrong (`[encryption]`). The
    /// commands exit 2 for these, as for any config error.
    pub fn needs_config_change(&self) -> bool {
        matches!(
            self,
            Self::EncryptedWithoutKeys { .. }
                | Self::MissingKeys { .. }
                | Self::Undecryptable { .. }
                | Self::LoginUnencrypted
        )
    }
}

fn describe_pid(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("pid {pid}"),
        None => "pid unknown".to_owned(),
    }
}
