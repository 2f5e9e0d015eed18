//! The PostgreSQL side of the store (issue 12): the connection pool, the
//! schema, the backend a [`super::Store`] runs its queries on (`backend`:
//! the store's own runtime, transactions, the writer lock), the throwaway
//! cluster of the tests and `linetokd bench --postgres` ([`cluster`]), and
//! high availability's lease, heartbeat and orphan statements (used by
//! `leader`'s keeper and the rotator's orphan path).
//!
//! - `connect`: [`PgTarget`] parses a `postgres://` URL (read by the caller
//!   from the secret file `[daemon] database_url_file`) and its `sslmode`;
//!   [`PgPool`] is a deadpool-postgres pool over tokio-postgres, TLS through
//!   rustls on the tree's aws-lc-rs provider.
//! - [`migrate`]: `migrations/postgres/*.sql`, the same schema versions as
//!   SQLite's, applied in one transaction under a transaction-level advisory
//!   lock; a newer schema is refused.
//! - [`lease`]: `channel_leases` and `fenced_orphans` (schema 11): acquire,
//!   renew and release a channel's lease, [`fence`] (the first statement
//!   of every write transaction for a channel), the lease table for
//!   `status`, and the orphan record. Each statement decides at the
//!   database's `clock_timestamp()` and answers as its model in
//!   [`crate::ha::lease`] does.
//! - `error`: [`PgError`].
//!
//! Depends on tokio-postgres, deadpool-postgres and rustls, on
//! [`super::Migrated`] and [`super::IntentId`], and on [`crate::ha`]'s pure
//! lease types; nothing above the store.
//!
//! # Invariants
//!
//! - No message carries the database password: they name the server by
//!   [`PgTarget::redacted`].
//! - A schema change commits with its `schema_version` row or not at all,
//!   and two instances migrating at once serialize on the advisory lock.
//! - Times stay integer unix milliseconds (BIGINT), as in SQLite, so both
//!   backends read and write the same values. The lease and orphan
//!   statements take theirs from the database's clock, never the host's.
//! - A write transaction for a channel that passed [`fence`] holds its
//!   lease row `FOR SHARE` until it ends, so no takeover commits in
//!   between; one that failed it must roll back.

mod backend;
pub mod cluster;
mod connect;
mod error;
pub mod lease;
pub mod migrate;

pub use backend::{Backend, LeaseOps, WRITER_LOCK_KEY};
pub use connect::{PgPool, PgTarget, PoolOptions, Roots, TlsMode};
pub use error::PgError;
pub use lease::{Heartbeat, LeaseTable, NewOrphan, Orphan, OrphanRevoke, RevokeOutcome, fence};
pub use migrate::{MIGRATIONS, PgMigration, latest_version};

use super::Migrated;

impl PgPool {
    /// Brings the database's schema to this binary's version
    /// ([`migrate::apply`] with [`MIGRATIONS`]) on one pooled connection.
    ///
    /// # Errors
    ///
    /// As [`migrate::apply`], and [`PgError::Connect`] when no connection
    /// can be had.
    pub async fn migrate(&self) -> Result<Migrated, PgError> {
        let mut conn = self.get().await?;
        migrate::apply(&mut conn, self.target(), MIGRATIONS).await
    }
}
