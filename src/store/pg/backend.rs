//! A [`crate::store::Store`] on PostgreSQL: the pool, the runtime its
//! connections live on, and running one read or one transaction on a
//! pooled connection through the store's synchronous [`Db`].
//!
//! The store's API is synchronous (SQLite's is), so its PostgreSQL side
//! owns a small runtime of its own (one worker thread, `linetokd-pg`) on
//! which the pool's connection tasks run, and every statement is driven
//! there with `block_on` from the calling thread (`sql::block_on`, which
//! moves to a helper thread when the caller drives async tasks itself).
//! The daemon's async code goes through `Store::blocking`, which hands a
//! PostgreSQL writer's work to the store's writer thread (a plain thread,
//! so its statements block directly). The runtime is shut down in the
//! background when the last clone of the store drops, wherever that
//! happens.

use super::{PgError, PgPool, PgTarget, PoolOptions, lease, migrate};
use crate::store::screen::Screen;
use crate::store::sql::{Db, PgDb, SqlError, block_on};
use crate::store::{Fence, Migrated};

/// The PostgreSQL side of a store.
pub struct Backend {
    /// `Some` until drop.
    runtime: Option<tokio::runtime::Runtime>,
    pool: PgPool,
    /// A writer's own connection, outside the pool, holding the
    /// session-level writer lock ([`WRITER_LOCK_KEY`]) for as long as the
    /// store lives; `None` for a reader.
    writer: Option<deadpool_postgres::ClientWrapper>,
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
    /// credentials), takes the writer lock and brings its schema to this
    /// binary's version.
    ///
    /// # Errors
    ///
    /// [`PgError::Runtime`] when the runtime cannot start,
    /// [`PgError::WriterHeld`] when another instance writes the database,
    /// and as [`PgPool::connect`] and [`PgPool::migrate`].
    pub fn connect(target: &PgTarget, options: &PoolOptions) -> Result<(Self, Migrated), PgError> {
        Self::open(target, options, Role::SoleWriter)
    }

    /// Connects to `target` as one of several instances writing it under
    /// leases (`[ha]`, docs/design.md §14): no writer lock, each channel's
    /// writes fenced by its lease instead; brings the schema to this
    /// binary's version.
    ///
    /// # Errors
    ///
    /// As [`Backend::connect`], without [`PgError::WriterHeld`].
    pub fn connect_shared(
        target: &PgTarget,
        options: &PoolOptions,
    ) -> Result<(Self, Migrated), PgError> {
        Self::open(target, options, Role::SharedWriter)
    }

    /// Connects to `target` to read beside a running daemon (`status`,
    /// `plan`, `token`): no writer lock, no migration; the schema must be
    /// this binary's.
    ///
    /// # Errors
    ///
    /// [`PgError::NeedsMigration`], [`PgError::TooNew`], and as
    /// [`PgPool::connect`].
    pub fn connect_reader(
        target: &PgTarget,
        options: &PoolOptions,
    ) -> Result<(Self, Migrated), PgError> {
        Self::open(target, options, Role::Reader)
    }

    fn open(
        target: &PgTarget,
        options: &PoolOptions,
        role: Role,
    ) -> Result<(Self, Migrated), PgError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("linetokd-pg")
            .enable_all()
            .build()
            .map_err(|e| PgError::Runtime {
                reason: e.to_string(),
            })?;
        let opened = block_on(runtime.handle(), async {
            let pool = PgPool::connect(target, options).await?;
            if role == Role::Reader {
                let found =
                    migrate::schema_version(&*pool.get().await?)
                        .await
                        .map_err(|source| PgError::Query {
                            target: pool.target().to_owned(),
                            what: "reading the schema version",
                            source,
                        })?;
                let known = migrate::latest_version();
                if found != known {
                    let target = pool.target().to_owned();
                    return Err(if found > known {
                        PgError::TooNew {
                            target,
                            found,
                            known,
                        }
                    } else {
                        PgError::NeedsMigration {
                            target,
                            found,
                            known,
                        }
                    });
                }
                return Ok((
                    pool,
                    None,
                    Migrated {
                        from: found,
                        to: found,
                    },
                ));
            }
            let lock = match role {
                Role::SoleWriter => Some(writer_lock(&pool).await?),
                Role::SharedWriter => {
                    // Leases keep instances under [ha] apart; an instance
                    // without them writes every channel: never beside it.
                    if let Some(holder) = writer_lock_holder(&pool).await? {
                        return Err(PgError::WriterHeld {
                            target: pool.target().to_owned(),
                            holder,
                        });
                    }
                    None
                }
                Role::Reader => None,
            };
            let migrated = pool.migrate().await?;
            Ok::<_, PgError>((pool, lock, migrated))
        });
        let (pool, writer, migrated) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                runtime.shutdown_background();
                return Err(e);
            }
        };
        Ok((
            Self {
                runtime: Some(runtime),
                pool,
                writer,
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
        let runtime = self.runtime().handle();
        let client =
            block_on(runtime, self.pool.get()).map_err(|e| SqlError::Pool(e.to_string()))?;
        let db = PgDb::new(&client, runtime, screen);
        f(&db)
    }

    /// The pool and runtime for statements that are not the store's
    /// reads and writes: the lease statements of `[ha]`'s keeper, which
    /// must not wait behind the writer thread's queue.
    pub fn lease_ops(&self) -> LeaseOps {
        LeaseOps {
            pool: self.pool.clone(),
            runtime: self.runtime().handle().clone(),
        }
    }

    /// Whether this writer still holds its lock: false once the lock's
    /// connection has ended (the server released the lock with it). A
    /// reader holds none and always answers true.
    pub fn holds_writer_lock(&self) -> bool {
        self.writer.as_ref().is_none_or(|c| !c.is_closed())
    }

    /// Whether some connection holds the writer lock ([`WRITER_LOCK_KEY`]),
    /// this store's own included.
    ///
    /// # Errors
    /// [`SqlError`] when the lock table cannot be read.
    pub fn writer_present(&self) -> Result<bool, SqlError> {
        let runtime = self.runtime().handle();
        let client =
            block_on(runtime, self.pool.get()).map_err(|e| SqlError::Pool(e.to_string()))?;
        let row = block_on(
            runtime,
            client.query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                 AND classid = ($1::bigint >> 32)::oid AND objid = ($1::bigint & 4294967295)::oid \
                 AND objsubid = 1)",
                &[&WRITER_LOCK_KEY],
            ),
        )?;
        Ok(row.get(0))
    }

    /// Runs `f` in one transaction on a pooled connection, committed only
    /// when `f` succeeds and rolled back otherwise.
    ///
    /// # Errors
    /// As [`Backend::read`], and the commit's failure.
    pub fn write<T, E: From<SqlError> + From<PgError>>(
        &self,
        screen: &Screen,
        fence: Option<&Fence>,
        f: impl FnOnce(&dyn Db) -> Result<T, E>,
    ) -> Result<T, E> {
        let _one_writer = self
            .writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let runtime = self.runtime().handle();
        let client =
            block_on(runtime, self.pool.get()).map_err(|e| SqlError::Pool(e.to_string()))?;
        let db = PgDb::new(&client, runtime, screen);
        let db: &dyn Db = &db;
        {
            db.batch("BEGIN")?;
            let mut open = OpenTransaction { db, open: true };
            // The fence is the transaction's first statement: from here
            // until the commit no takeover of the channel can commit.
            if let Some(fence) = fence {
                block_on(
                    runtime,
                    lease::fence(
                        &**client,
                        &self.pool,
                        &fence.channel,
                        &fence.holder,
                        fence.epoch,
                    ),
                )?;
            }
            let out = f(db)?;
            open.open = false;
            db.batch("COMMIT")?;
            Ok(out)
        }
    }
}

/// Runs lease statements ([`super::lease`]) on the store's runtime, for
/// callers on another runtime ([`Backend::lease_ops`]).
#[derive(Debug, Clone)]
pub struct LeaseOps {
    pool: PgPool,
    runtime: tokio::runtime::Handle,
}

impl LeaseOps {
    /// Runs `f` with the pool on the store's runtime and answers its
    /// result; a statement cut short by the runtime's shutdown answers
    /// [`PgError::Runtime`].
    ///
    /// # Errors
    /// `f`'s, or [`PgError::Runtime`].
    pub async fn run<T, F, Fut>(&self, f: F) -> Result<T, PgError>
    where
        T: Send + 'static,
        F: FnOnce(PgPool) -> Fut,
        Fut: std::future::Future<Output = Result<T, PgError>> + Send + 'static,
    {
        self.runtime
            .spawn(f(self.pool.clone()))
            .await
            .unwrap_or_else(|e| {
                Err(PgError::Runtime {
                    reason: e.to_string(),
                })
            })
    }

    /// The server, as messages name it (no password).
    pub fn target(&self) -> &str {
        self.pool.target()
    }
}

/// How a backend uses the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Reads beside a daemon: no lock, no migration.
    Reader,
    /// The only writer: holds [`WRITER_LOCK_KEY`].
    SoleWriter,
    /// One of several writers under leases: no writer lock.
    SharedWriter,
}

/// The key of the session-level advisory lock a writer holds on its own
/// connection: "linetokw" in ASCII, beside the migrations' "linetokd".
pub const WRITER_LOCK_KEY: i64 = 0x6c69_6e65_746f_6b77;

/// Takes the writer lock on a connection taken out of the pool for good,
/// so the lock lives exactly as long as the store (PostgreSQL releases a
/// session lock when its connection closes, however the process ends).
async fn writer_lock(pool: &PgPool) -> Result<deadpool_postgres::ClientWrapper, PgError> {
    let client = deadpool_postgres::Object::take(pool.get().await?);
    let query = |what: &'static str| {
        move |source| PgError::Query {
            target: pool.target().to_owned(),
            what,
            source,
        }
    };
    let got: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&WRITER_LOCK_KEY])
        .await
        .map_err(query("taking the writer lock"))?
        .get(0);
    if got {
        return Ok(client);
    }
    Err(PgError::WriterHeld {
        target: pool.target().to_owned(),
        holder: writer_lock_holder(pool)
            .await?
            .unwrap_or_else(|| "unknown".to_owned()),
    })
}

/// The server's process ID of the connection that holds the writer lock,
/// if one does (the lock's two halves are the key's high and low words).
async fn writer_lock_holder(pool: &PgPool) -> Result<Option<String>, PgError> {
    let client = pool.get().await?;
    let holder: Option<i32> = client
        .query_opt(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND classid = ($1::bigint >> 32)::oid AND objid = ($1::bigint & 4294967295)::oid \
             AND objsubid = 1 LIMIT 1",
            &[&WRITER_LOCK_KEY],
        )
        .await
        .map_err(|source| PgError::Query {
            target: pool.target().to_owned(),
            what: "looking up the writer lock's holder",
            source,
        })?
        .map(|row| row.get(0));
    Ok(holder.map(|pid| pid.to_string()))
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
