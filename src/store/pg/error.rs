//! [`PgError`]: what can go wrong between linetokd and a PostgreSQL server.
//!
//! Every message names what is wrong and where (the server as
//! [`super::PgTarget::redacted`] prints it, the CA file, the migration) and
//! never carries the password: messages are built from the parsed parts of
//! the URL, never from the URL itself, and tokio-postgres's own errors
//! (kept as `source`) name options and server messages, not values.

use std::path::PathBuf;

use crate::domain::ChannelId;
use crate::ha::{Epoch, InstanceId, NotHeld};

/// A PostgreSQL store failure.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The database URL cannot be used; `reason` says why (never quoting
    /// the password).
    #[error("the PostgreSQL URL ({redacted}) is invalid: {reason}")]
    Url {
        /// The URL with its password masked, or a placeholder when not even
        /// that much could be read.
        redacted: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The CA file named by `sslrootcert` cannot be read or holds no
    /// certificate.
    #[error("cannot use the CA file {path} (sslrootcert): {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The system's trusted root certificates cannot be loaded (the default
    /// with `sslmode=require` and no `sslrootcert`).
    #[error(
        "cannot load the system's trusted root certificates for TLS to PostgreSQL: {reason}; \
         name a CA file with ?sslrootcert=/path/to/ca.pem"
    )]
    SystemRoots {
        /// What failed.
        reason: String,
    },

    /// The TLS client could not be set up (not a certificate problem).
    #[error("cannot set up TLS for PostgreSQL: {reason}")]
    TlsSetup {
        /// What failed.
        reason: String,
    },

    /// No connection could be opened (refused, TLS, authentication, timeout).
    #[error("cannot connect to PostgreSQL at {target}: {reason}")]
    Connect {
        /// The server, as [`super::PgTarget::redacted`] prints it.
        target: String,
        /// What failed, in words (the server's message and SQLSTATE for a
        /// refused login, the driver's cause chain otherwise).
        reason: String,
        /// The driver's error, when there is one, for callers that branch
        /// on it. Not the `source`: `reason` already says what it says, and
        /// a cause chain printed with `{:#}` would say it twice.
        driver: Option<tokio_postgres::Error>,
    },

    /// The runtime the store's PostgreSQL connections live on could not
    /// start (out of threads or memory).
    #[error("cannot start the PostgreSQL store's runtime: {reason}")]
    Runtime {
        /// What failed.
        reason: String,
    },

    /// A statement failed on an open connection.
    #[error("PostgreSQL at {target}: {what} failed")]
    Query {
        /// The server, as [`super::PgTarget::redacted`] prints it.
        target: String,
        /// What was being done, e.g. "reading the schema version".
        what: &'static str,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },

    /// Another linetokd instance writes this database. Until the leases of
    /// high availability are wired in (docs/design.md section 14), one
    /// instance writes a database, as with SQLite's writer lock.
    #[error(
        "another linetokd instance already writes the PostgreSQL database at {target} (it holds \
         the writer lock, PostgreSQL backend pid {holder}); stop it first: one instance per \
         database until high availability is wired in"
    )]
    WriterHeld {
        /// The server, as [`super::PgTarget::redacted`] prints it.
        target: String,
        /// The server process of the connection that holds the lock, or
        /// "unknown".
        holder: String,
    },

    /// The database is older than this binary and a reader does not
    /// migrate: the daemon (or `linetokd migrate`) must run first.
    #[error(
        "the PostgreSQL database at {target} has schema version {found}, this linetokd reads \
         {known}: run `linetokd migrate` or start the daemon first"
    )]
    NeedsMigration {
        /// The server, as [`super::PgTarget::redacted`] prints it.
        target: String,
        /// The version found.
        found: u32,
        /// The version this binary reads.
        known: u32,
    },

    /// The database was migrated by a newer linetokd; downgrades are refused.
    #[error(
        "the PostgreSQL database at {target} has schema version {found}, but this linetokd only \
         knows versions up to {known}; use a newer linetokd (downgrades are not supported)"
    )]
    TooNew {
        /// The server, as [`super::PgTarget::redacted`] prints it.
        target: String,
        /// The version found in `schema_version`.
        found: u32,
        /// The newest version this binary knows.
        known: u32,
    },

    /// The database's `schema_version` says something no linetokd writes
    /// (a version below the baseline, say): it was not made by linetokd.
    #[error("the PostgreSQL database at {target} has an unexpected schema: {reason}")]
    Schema {
        /// The server, as [`super::PgTarget::redacted`] prints it.
        target: String,
        /// What is unexpected.
        reason: String,
    },

    /// The migration list compiled in is not contiguous (a programming
    /// error, caught by a unit test).
    #[error("PostgreSQL migration {name} has version {found}, expected {expected}")]
    MigrationOrder {
        /// The version the list should have next.
        expected: u32,
        /// The version it has.
        found: u32,
        /// The migration's name.
        name: &'static str,
    },

    /// A write transaction's fence failed (docs/design.md §14.1): `holder`
    /// does not hold `channel`'s lease with `epoch` at the database's now.
    /// Roll the transaction back (it holds nothing useful) and step down.
    #[error(
        "write for channel {channel} fenced: instance {holder} does not hold its lease with \
         epoch {epoch} ({why}); roll back and step down"
    )]
    Fenced {
        /// The channel written for.
        channel: ChannelId,
        /// The instance that tried to write.
        holder: InstanceId,
        /// The epoch it wrote under.
        epoch: Epoch,
        /// Whose the lease is instead.
        why: NotHeld,
    },

    /// The database refused a lease statement for `holder` and `epoch`, yet
    /// its row, read just after, says `holder` holds it with `epoch`. No
    /// single instance causes that; two instances sharing one `[ha]
    /// instance_id` can.
    #[error(
        "PostgreSQL at {target}: the {what} of channel {channel}'s lease by instance {holder} \
         (epoch {epoch}) was refused, yet the row says that instance holds it; is [ha] \
         instance_id shared by two instances?"
    )]
    LeaseConflict {
        /// The server, as [`super::PgTarget::redacted`] prints it.
        target: String,
        /// "renewal", "release" or "fence".
        what: &'static str,
        /// The channel.
        channel: ChannelId,
        /// The instance.
        holder: InstanceId,
        /// Its epoch.
        epoch: Epoch,
    },

    /// A row holds a value no linetokd writes (a time out of range, an
    /// unknown outcome).
    #[error("PostgreSQL at {target}: {table} holds what no linetokd writes: {reason}")]
    BadRow {
        /// The server, as [`super::PgTarget::redacted`] prints it.
        target: String,
        /// The table.
        table: &'static str,
        /// What is wrong.
        reason: String,
    },

    /// A migration's SQL failed; the whole migration transaction was rolled
    /// back, so the database is as it was.
    #[error("PostgreSQL migration {version} ({name}) failed at {target}; nothing was applied")]
    Migration {
        /// The server, as [`super::PgTarget::redacted`] prints it.
        target: String,
        /// The failing migration's version.
        version: u32,
        /// The failing migration's name.
        name: &'static str,
        /// The driver's error (the server's message names the statement).
        #[source]
        source: tokio_postgres::Error,
    },
}
