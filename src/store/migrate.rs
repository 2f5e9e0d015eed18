//! Schema migrations: `migrations/*.sql`, compiled in, applied in order.
//!
//! The schema version lives in SQLite's `PRAGMA user_version` (the database
//! header), which is written inside the same transaction as the migration's
//! statements: a migration and its version bump commit together or not at
//! all. A database whose version is newer than the newest migration compiled
//! into this binary is refused, never downgraded. This follows lldap's
//! migration runner.
//!
//! To change the schema, add `migrations/000N_<verb_object>.sql` and one
//! entry to [`MIGRATIONS`]; never edit a migration that has been released.
//!
//! Depends on rusqlite only.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;

/// One schema step, of either dialect (PostgreSQL's list uses it too:
/// `pg::migrate`).
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The schema version after this step; versions run 1, 2, 3, ...
    pub version: u32,
    /// The file name without `.sql`, e.g. `0001_init`, for messages.
    pub name: &'static str,
    /// The SQL, run as one batch inside the migration's transaction. For
    /// SQLite it must not contain statements SQLite refuses inside a
    /// transaction (`VACUUM`, `PRAGMA journal_mode`).
    pub sql: &'static str,
}

/// Every migration this binary knows, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_init",
        sql: include_str!("../../migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "0002_create_daemon_notes",
        sql: include_str!("../../migrations/0002_create_daemon_notes.sql"),
    },
    Migration {
        version: 3,
        name: "0003_add_hook_events",
        sql: include_str!("../../migrations/0003_add_hook_events.sql"),
    },
    Migration {
        version: 4,
        name: "0004_store_milliseconds_and_engine_state",
        sql: include_str!("../../migrations/0004_store_milliseconds_and_engine_state.sql"),
    },
    Migration {
        version: 5,
        name: "0005_create_alert_notifications",
        sql: include_str!("../../migrations/0005_create_alert_notifications.sql"),
    },
    Migration {
        version: 6,
        name: "0006_alerts_for_the_daemon_and_extra_labels",
        sql: include_str!("../../migrations/0006_alerts_for_the_daemon_and_extra_labels.sql"),
    },
    Migration {
        version: 7,
        name: "0007_encrypt_token_values_at_rest",
        sql: include_str!("../../migrations/0007_encrypt_token_values_at_rest.sql"),
    },
    Migration {
        version: 8,
        name: "0008_group_token_kinds",
        sql: include_str!("../../migrations/0008_group_token_kinds.sql"),
    },
    Migration {
        version: 9,
        name: "0009_watch_long_lived_tokens",
        sql: include_str!("../../migrations/0009_watch_long_lived_tokens.sql"),
    },
    Migration {
        version: 10,
        name: "0010_login_grants",
        sql: include_str!("../../migrations/0010_login_grants.sql"),
    },
    Migration {
        version: 11,
        name: "0011_ha_leases_and_orphans",
        sql: include_str!("../../migrations/0011_ha_leases_and_orphans.sql"),
    },
    Migration {
        version: 12,
        name: "0012_ha_instances",
        sql: include_str!("../../migrations/0012_ha_instances.sql"),
    },
    Migration {
        version: 13,
        name: "0013_status_read_indexes",
        sql: include_str!("../../migrations/0013_status_read_indexes.sql"),
    },
];

/// The schema version this binary writes and reads.
pub fn latest_version() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// What [`apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    /// The schema version found before.
    pub from: u32,
    /// The schema version now.
    pub to: u32,
}

impl Migrated {
    /// True when nothing had to be applied.
    pub fn was_current(&self) -> bool {
        self.from == self.to
    }
}

/// Applies every migration of `migrations` newer than the database's
/// version, each in its own immediate transaction together with its version
/// bump. `linetokd` passes [`MIGRATIONS`]; tests pass their own lists.
///
/// # Errors
///
/// [`StoreError::TooNew`] when the database is newer than the last
/// migration in the list; [`StoreError::MigrationOrder`] when the list is
/// not 1, 2, 3, ...; [`StoreError::Migration`] when a step fails (that step
/// is rolled back, earlier steps stay applied).
pub fn apply(conn: &mut Connection, migrations: &[Migration]) -> Result<Migrated, StoreError> {
    let path = db_path(conn);
    check_order(migrations)?;
    let known = migrations.last().map_or(0, |m| m.version);
    let from = schema_version(conn).map_err(|source| StoreError::Open {
        path: path.clone(),
        source,
    })?;
    if from > known {
        return Err(StoreError::TooNew {
            path,
            found: from,
            known,
        });
    }
    for m in migrations.iter().filter(|m| m.version > from) {
        let fail = |source| StoreError::Migration {
            path: path.clone(),
            version: m.version,
            name: m.name,
            source,
        };
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(fail)?;
        tx.execute_batch(m.sql).map_err(fail)?;
        tx.pragma_update(None, "user_version", m.version)
            .map_err(fail)?;
        tx.commit().map_err(fail)?;
        tracing::info!(
            database = %path.display(),
            version = m.version,
            migration = m.name,
            "applied database migration"
        );
    }
    Ok(Migrated {
        from,
        to: from.max(known),
    })
}

/// The database's schema version (`PRAGMA user_version`).
///
/// # Errors
///
/// SQLite's error when the file is not a database or cannot be read.
pub fn schema_version(conn: &Connection) -> rusqlite::Result<u32> {
    let v: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    // user_version is a signed 32-bit header field; linetokd only ever writes
    // small positive values, so anything else is treated as "newer than us".
    Ok(u32::try_from(v).unwrap_or(u32::MAX))
}

fn check_order(migrations: &[Migration]) -> Result<(), StoreError> {
    match out_of_order(migrations, 1) {
        Some((expected, m)) => Err(StoreError::MigrationOrder {
            expected,
            found: m.version,
            name: m.name,
        }),
        None => Ok(()),
    }
}

/// The first migration of `migrations` whose version is not the one
/// expected when they count up by one from `first`, with that expected
/// version. Both dialects' lists are checked with it (PostgreSQL's starts
/// at its baseline).
pub(crate) fn out_of_order(migrations: &[Migration], first: u32) -> Option<(u32, &Migration)> {
    (first..)
        .zip(migrations)
        .find(|(expected, m)| m.version != *expected)
}

fn db_path(conn: &Connection) -> PathBuf {
    match conn.path() {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => Path::new(":memory:").to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_migrations_are_numbered_in_order_and_named_for_their_files() {
        assert!(check_order(MIGRATIONS).is_ok());
        for m in MIGRATIONS {
            assert!(
                m.name.starts_with(&format!("{:04}_", m.version)),
                "{} does not match version {}",
                m.name,
                m.version
            );
        }
    }

    #[test]
    fn a_gap_in_the_list_is_refused() {
        let list = [
            Migration {
                version: 1,
                name: "0001_a",
                sql: "",
            },
            Migration {
                version: 3,
                name: "0003_c",
                sql: "",
            },
        ];
        let mut conn = Connection::open_in_memory().unwrap();
        let err = apply(&mut conn, &list).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::MigrationOrder {
                    expected: 2,
                    found: 3,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(schema_version(&conn).unwrap(), 0);
    }
}
