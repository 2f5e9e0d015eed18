//! PostgreSQL schema migrations: `migrations/postgres/*.sql`, compiled in,
//! applied in one transaction under an advisory lock.
//!
//! # Versions
//!
//! PostgreSQL's schema versions are SQLite's (src/store/migrate.rs): the
//! same number means the same tables, columns, CHECKs and indexes. The
//! PostgreSQL list starts at a *baseline* (version 10, the SQLite schema
//! when PostgreSQL support began) that creates everything at once; an empty
//! database gets the baseline and every later step. Every later SQLite
//! migration gets a PostgreSQL twin with the same number (a unit test fails
//! until it does). The version lives in the `schema_version` table, one row
//! per applied migration, written in the transaction that applies it; the
//! database's version is the highest row.
//!
//! # Concurrency
//!
//! Several linetokd instances may start at once against one database. Each
//! runs [`apply`] as: begin (READ COMMITTED), `pg_advisory_xact_lock(`
//! [`MIGRATION_LOCK_KEY`]`)`, read the version, apply what is missing,
//! commit. The lock is transaction-level, so it is released by the commit
//! or rollback on the very connection that took it, whatever pool or
//! PgBouncer sits in between (a session-level lock taken through a pool
//! stays on whichever connection ran it). The second instance waits on the
//! lock, then reads the version the first committed (READ COMMITTED takes a
//! new snapshot per statement; REPEATABLE READ would read the snapshot from
//! before the wait, so the isolation level is set explicitly) and finds
//! nothing to do.
//!
//! A database newer than this binary is refused ([`PgError::TooNew`]),
//! never downgraded, as SQLite's is.
//!
//! Depends on tokio-postgres only.

use tokio_postgres::{Client, IsolationLevel};

use super::PgError;
use crate::store::Migrated;

/// The advisory lock key every migrator takes: "linetokd" in ASCII
/// (0x6c696e65746f6b64), recognisable in `pg_locks` as classid 0x6c696e65,
/// objid 0x746f6b64. Advisory locks are per database, so instances of
/// different databases on one server do not wait for each other.
pub const MIGRATION_LOCK_KEY: i64 = 0x6c69_6e65_746f_6b64;

/// One PostgreSQL schema step: the SQLite list's type, so a version and
/// its file are named the same way in both dialects.
pub type PgMigration = crate::store::migrate::Migration;

/// Every PostgreSQL migration this binary knows, in order; the first is the
/// baseline.
pub const MIGRATIONS: &[PgMigration] = &[
    PgMigration {
        version: 10,
        name: "0010_baseline",
        sql: include_str!("../../../migrations/postgres/0010_baseline.sql"),
    },
    PgMigration {
        version: 11,
        name: "0011_ha_leases_and_orphans",
        sql: include_str!("../../../migrations/postgres/0011_ha_leases_and_orphans.sql"),
    },
    PgMigration {
        version: 12,
        name: "0012_ha_instances",
        sql: include_str!("../../../migrations/postgres/0012_ha_instances.sql"),
    },
    PgMigration {
        version: 13,
        name: "0013_status_read_indexes",
        sql: include_str!("../../../migrations/postgres/0013_status_read_indexes.sql"),
    },
];

/// The schema version this binary writes and reads on PostgreSQL.
pub fn latest_version() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Applies every migration of `migrations` newer than the database's
/// version, all in one transaction under [`MIGRATION_LOCK_KEY`]. `target`
/// names the server in messages ([`super::PgPool::target`]). `linetokd`
/// passes [`MIGRATIONS`]; tests pass their own lists.
///
/// # Errors
///
/// [`PgError::TooNew`] when the database is newer than the list's last
/// migration; [`PgError::Schema`] when its version predates the list's
/// baseline; [`PgError::MigrationOrder`] when the list is not consecutive;
/// [`PgError::Migration`] when a step fails (nothing is applied: the one
/// transaction rolls back); [`PgError::Query`] when the lock or the version
/// cannot be read.
pub async fn apply(
    client: &mut Client,
    target: &str,
    migrations: &[PgMigration],
) -> Result<Migrated, PgError> {
    check_order(migrations)?;
    let known = migrations.last().map_or(0, |m| m.version);
    let baseline = migrations.first().map_or(0, |m| m.version);
    let query = |what: &'static str| {
        move |source| PgError::Query {
            target: target.to_owned(),
            what,
            source,
        }
    };

    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()
        .await
        .map_err(query("starting the migration transaction"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(query("taking the migration lock"))?;
    let from = read_version(&tx)
        .await
        .map_err(query("reading the schema version"))?;
    if from > known {
        return Err(PgError::TooNew {
            target: target.to_owned(),
            found: from,
            known,
        });
    }
    if from != 0 && from < baseline {
        return Err(PgError::Schema {
            target: target.to_owned(),
            reason: format!(
                "schema_version says {from}, below the PostgreSQL baseline {baseline}; \
                 no linetokd writes that"
            ),
        });
    }
    let pending: Vec<&PgMigration> = migrations.iter().filter(|m| m.version > from).collect();
    for m in &pending {
        let fail = |source| PgError::Migration {
            target: target.to_owned(),
            version: m.version,
            name: m.name,
            source,
        };
        tx.batch_execute(m.sql).await.map_err(fail)?;
        tx.execute(
            "INSERT INTO schema_version (version, name) VALUES ($1, $2)",
            &[&i64::from(m.version), &m.name],
        )
        .await
        .map_err(fail)?;
    }
    tx.commit()
        .await
        .map_err(query("committing the migration transaction"))?;
    for m in &pending {
        tracing::info!(
            database = target,
            version = m.version,
            migration = m.name,
            "applied PostgreSQL migration"
        );
    }
    Ok(Migrated {
        from,
        to: from.max(known),
    })
}

/// The database's schema version: the highest `schema_version` row, 0 when
/// the table does not exist (an empty database).
///
/// # Errors
///
/// The driver's error when the query fails.
pub async fn schema_version(client: &Client) -> Result<u32, tokio_postgres::Error> {
    read_version(client).await
}

async fn read_version<C: tokio_postgres::GenericClient>(
    client: &C,
) -> Result<u32, tokio_postgres::Error> {
    // to_regclass resolves through search_path, as the migrations' CREATE
    // TABLEs do, and needs no CREATE privilege (CREATE TABLE IF NOT EXISTS
    // would, even when the table exists).
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let v: Option<i64> = client
        .query_one("SELECT max(version) FROM schema_version", &[])
        .await?
        .get(0);
    // Versions are small positive numbers; anything else is from no
    // linetokd and counts as "newer than us", as SQLite's runner does.
    Ok(v.map_or(0, |v| u32::try_from(v).unwrap_or(u32::MAX)))
}

fn check_order(migrations: &[PgMigration]) -> Result<(), PgError> {
    let Some(first) = migrations.first() else {
        return Ok(());
    };
    match crate::store::migrate::out_of_order(migrations, first.version) {
        Some((expected, m)) => Err(PgError::MigrationOrder {
            expected,
            found: m.version,
            name: m.name,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_knows_the_same_latest_version_as_sqlite() {
        // A new SQLite migration needs its PostgreSQL twin (same number,
        // same schema); this fails until it has one.
        assert_eq!(latest_version(), crate::store::migrate::latest_version());
    }

    #[test]
    fn shipped_migrations_are_consecutive_and_named_for_their_files() {
        assert!(check_order(MIGRATIONS).is_ok());
        for m in MIGRATIONS {
            assert!(
                m.name.starts_with(&format!("{:04}_", m.version)),
                "{} does not match version {}",
                m.name,
                m.version
            );
        }
        // The baseline creates the table the runner records versions in.
        assert!(MIGRATIONS[0].sql.contains("CREATE TABLE schema_version"));
    }

    #[test]
    fn a_gap_in_the_list_is_refused() {
        let list = [
            PgMigration {
                version: 10,
                name: "0010_a",
                sql: "",
            },
            PgMigration {
                version: 12,
                name: "0012_c",
                sql: "",
            },
        ];
        assert!(matches!(
            check_order(&list),
            Err(PgError::MigrationOrder {
                expected: 11,
                found: 12,
                ..
            })
        ));
    }
}
