//! A [`crate::store::Store`] on PostgreSQL: the pool, the runtime its
//! connections live on, and running one read or one transaction on a
//! pooled connection through the store's synchronous [`Db`].
//!
//! The store's API is synchronous (SQLite's is), so its PostgreSQL side
//! owns a small runtime of its own (one worker thread, `linetokd-pg`) on
//! which the pool's connection tasks run, and every statement is driven
//! there with `block_on` from the calling thread. The caller must not be
//! an async task: `Store::blocking` hands a PostgreSQL store's work to
//! tokio's blocking pool. The runtime is shut down in the background when
//! the last clone of the store drops, wherever that happens.

use super::{PgError, PgPool, PgTarget, PoolOptions};
use crate::store::Migrated;
use crate::store::screen::Screen;
use crate::store::sql::{Db, PgDb, SqlError};

/// The PostgreSQL side of a store.
pub struct Backend {
    /// `Some` until drop.
    runtime: Option<tokio::runtime::Runtime>,
    pool: PgPool,
    /// Held by every write transaction of this process: the store's
    /// writes are serialized as SQLite's single writer serializes them, so
    /// a read-then-write of one transaction never interleaves with
    /// another's (READ COMMITTED would allow it). Other instances are kept
    /// apart per channel by the lease (docs/design.md section 14).
    writes: std::sync::Mutex<()>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl Backend {
    /// Connects to `target` (one connection proves the URL and the
    /// credentials) and brings its schema to this binary's version.
    ///
    /// # Errors
    ///
    /// [`PgError::Runtime`] when the runtime cannot start, and as
    /// [`PgPool::connect`] and [`PgPool::migrate`].
    pub fn connect(target: &PgTarget, options: &PoolOptions) -> Result<(Self, Migrated), PgError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("linetokd-pg")
            .enable_all()
            .build()
            .map_err(|e| PgError::Runtime {
                reason: e.to_string(),
            })?;
        let (pool, migrated) = runtime.block_on(async {
            let pool = PgPool::connect(target, options).await?;
            let migrated = pool.migrate().await?;
            Ok::<_, PgError>((pool, migrated))
        })?;
        Ok((
            Self {
                runtime: Some(runtime),
                pool,
                writes: std::sync::Mutex::new(()),
            },
            migrated,
        ))
    }

    /// The server, as messages name it (no password).
    pub fn target(&self) -> &str {
        self.pool.target()
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime
            .as_ref()
            .expect("the runtime lives until the backend drops")
    }

    /// Runs `f` on a pooled connection, outside any explicit transaction.
    ///
    /// # Errors
    /// [`SqlError::Pool`] when no connection can be had; `f`'s own.
    pub fn read<T, E: From<SqlError>>(
        &self,
        screen: &Screen,
        f: impl FnOnce(&dyn Db) -> Result<T, E>,
    ) -> Result<T, E> {
        let runtime = self.runtime();
        let client = runtime
            .block_on(self.pool.get())
            .map_err(|e| SqlError::Pool(e.to_string()))?;
        let db = PgDb::new(&client, runtime.handle(), screen);
        f(&db)
    }

    /// Runs `f` in one transaction on a pooled connection, committed only
    /// when `f` succeeds and rolled back otherwise.
    ///
    /// # Errors
    /// As [`Backend::read`], and the commit's failure.
    pub fn write<T, E: From<SqlError>>(
        &self,
        screen: &Screen,
        f: impl FnOnce(&dyn Db) -> Result<T, E>,
    ) -> Result<T, E> {
        let _one_writer = self
            .writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.read(screen, |db| {
            db.batch("BEGIN")?;
            let mut open = OpenTransaction { db, open: true };
            let out = f(db)?;
            open.open = false;
            db.batch("COMMIT")?;
            Ok(out)
        })
    }
}

/// Rolls back a transaction that did not reach its commit (an error or a
/// panic in the caller's closure), so the connection goes back to the pool
/// with nothing open on it. A failed rollback means the connection is
/// broken, which its next use finds.
struct OpenTransaction<'a> {
    db: &'a dyn Db,
    open: bool,
}

impl Drop for OpenTransaction<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.db.batch("ROLLBACK");
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // The last clone of a store may drop on an async task's thread,
        // where dropping a runtime (which waits for its threads) panics.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
