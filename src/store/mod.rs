//! The store, on SQLite or PostgreSQL: channels and groups, tokens, the
//! issuance-intent journal, foreign key IDs and the event history.
//!
//! # Shape
//!
//! [`Store`] wraps, in an `Arc` (so it is `Clone + Send + Sync` and cheap
//! to hand to tasks), either one rusqlite [`Connection`] behind a std
//! `Mutex` or a PostgreSQL pool (`pg::Backend`, [`Location`] says which).
//! Its API is synchronous (rusqlite blocks; PostgreSQL's statements are
//! driven to their end on the store's own runtime): async callers hand
//! their work to [`Store::blocking`], which runs a SQLite writer's jobs on
//! its own thread and commits the jobs that arrive together in one
//! transaction (`batch`: group commit, one fsync for many), and a
//! PostgreSQL writer's there too, one by one. Every typed query is
//! written once against [`sql::Db`] and runs on both backends through
//! `Store::read_db`/`Store::write_db`; `screen` holds the stored
//! values free text is screened against. The typed queries live in one
//! file per concern:
//! `sync` (channels and groups from the config, failure streaks and holds),
//! `tokens`, `intents` (the crash journal), `foreign` (reconcile against
//! LINE's list of valid key IDs), `requests` (operator requests), `alerts`
//! (raised alerts), `notifications` (what each alert receiver was sent),
//! `long_lived` (watched long-lived tokens, by fingerprint), `login`
//! (LINE Login grants, stored only sealed, and their refresh journal) and `events`; `migrate` runs `migrations/*.sql` and `lock`
//! keeps a second daemon out. [`crypt`] is the sealed-value format of
//! encryption at rest and `values` the rules around it (sealing on write,
//! the checks at open, re-encryption, `db decrypt`).
//!
//! Depends on `domain`, rusqlite and tokio-postgres (`pg`, `sql`); nothing
//! above it. It never reads the
//! clock: every time is an argument (`now`), so the simulation can drive it
//! on a manual clock.
//!
//! # Invariants
//!
//! - **One writer** (docs/design.md section 5): [`Store::open`] takes the
//!   [`WriterLock`] and holds it as long as any clone of the store lives; a
//!   second writer is refused with the holder's PID. Readers
//!   ([`Store::open_read_only`]) need no lock: WAL lets them read while the
//!   daemon writes.
//! - **Durable before published** (invariant 6): WAL with
//!   `synchronous = FULL`, so a committed transaction survives power loss;
//!   a token and the closing of its intent commit in one transaction
//!   ([`Store::complete_issue`]).
//! - **No token value outside `tokens.access_token`** (invariant 5): every
//!   free-text column is screened against the stored token values before it
//!   is written, and errors carry no values.
//! - Times are stored as integer unix milliseconds (UTC): LINE's expiries
//!   are instants, and integers compare and index directly in SQL.
//! - The database file (and its `-wal`/`-shm` companions) is mode 0600.
//! - **The path still names the file we opened**: a writer records the
//!   file's device and inode at open and checks them (one `stat`) before
//!   every write transaction. SQLite keeps writing through its open file
//!   descriptor after the file is deleted or replaced, so without the check
//!   tokens would be committed to a file no one can find again;
//!   [`StoreError::Replaced`] stops that ([`StoreError::is_fatal`]).

mod alerts;
mod batch;
pub mod crypt;
mod error;
mod events;
mod foreign;
mod intents;
mod leases;
mod lock;
mod login;
mod long_lived;
pub mod migrate;
mod notes;
mod notifications;
pub mod pg;
mod requests;
pub use requests::CONDEMNED;
pub mod screen;
pub mod sql;
mod sync;
mod tokens;
mod values;

use std::fs::{self, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::domain::ChannelId;

pub use alerts::{AlertChanges, AlertLabel, AlertRecord, AlertScope, AlertSpec, fingerprint};
pub use error::StoreError;
pub use events::{Event, EventKind, NewEvent};
pub use foreign::{ForeignKid, ReconcileReport};
pub use intents::{Completed, IntentId, IntentOutcome, IssueIntent, IssuedToken};
pub use leases::{HaState, OrphanRow};
pub use lock::WriterLock;
pub use login::{
    GrantCount, GrantRecord, GrantState, GrantSummary, GrantTokens, NewGrant, OpenRefreshIntent,
    RefreshFailure, RefreshedGrant,
};
pub use long_lived::{LongLivedResult, LongLivedRole, LongLivedRow};
pub use migrate::Migrated;
pub use notes::{
    DaemonNote, LAST_RELOAD, SINK_NOTE_PREFIX, STATELESS_NOTE_PREFIX, sink_note_key,
    stateless_note_key,
};
pub use notifications::{NotifyItem, NotifyKind, NotifyState, PendingNotification};
pub use sync::{
    ChannelRow, ChannelSpec, FullHold, GroupRow, GroupRuntime, ReconcileRuntime, SyncReport,
};
pub use tokens::{LiveRecord, StoredToken};
pub use values::{REKEY_BATCH, RekeyProgress, ValueCount};

/// Which channels a read covers: one (the rotator, channel by channel), or
/// every channel at once (`status` and `plan`, which would otherwise ask
/// the same question once per channel: 40 queries a channel, 270,000 at
/// 100,000 groups).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// One channel.
    Channel(&'a ChannelId),
    /// Every channel.
    All,
}

impl<'a> Scope<'a> {
    /// The SQL condition on `channel_id` (`column`), with its one
    /// parameter as `?1` ([`Self::param`]).
    fn condition(self, column: &str) -> String {
        match self {
            Self::Channel(_) => format!("{column} = ?1"),
            // Cast: PostgreSQL cannot infer a parameter's type from IS NULL.
            Self::All => "CAST(?1 AS TEXT) IS NULL".to_owned(),
        }
    }

    /// The value for `?1`.
    fn param(self) -> Option<&'a str> {
        match self {
            Self::Channel(id) => Some(id.as_str()),
            Self::All => None,
        }
    }
}

/// Where a store lives: a SQLite file, or a PostgreSQL database (`[daemon]
/// database_url_file`). Shown as the path, or as the URL with its password
/// masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL database.
    Postgres(Box<pg::PgTarget>),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "{}", path.display()),
            Self::Postgres(target) => f.write_str(target.redacted()),
        }
    }
}

/// How hard each commit is pushed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous = FULL`: a commit returns once it is on disk, so a stored
    /// token survives a power loss (invariant 6). The default, and the only
    /// setting the daemon uses outside tests.
    #[default]
    Full,
    /// `synchronous = OFF`: commits reach the OS but are not synced. A crash
    /// of the process loses nothing, a power loss may lose the last commits.
    /// For tests and the simulation, whose databases are thrown away and
    /// which would otherwise spend most of their time in fsync.
    Unsynced,
}

/// How [`Store::open_with`] opens the database.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// How hard each commit is pushed to disk.
    pub durability: Durability,
    /// The database keys (`[encryption]`): with one, every token value is
    /// sealed under its active key, and plaintext rows found at open are
    /// sealed then (`values`). Without one, a database holding sealed
    /// values is refused.
    pub keyring: Option<Arc<crypt::Keyring>>,
    /// Leaves plaintext rows as they are at open even with a keyring: for
    /// `linetokd db decrypt`, which is about to open every row anyway.
    pub keep_plaintext: bool,
    /// PostgreSQL only: several instances write this database under
    /// leases (`[ha]`), so no instance takes the one-writer lock; each
    /// channel's writes are fenced instead ([`Store::fenced`]).
    pub shared: bool,
}

/// How long a statement waits for a lock held by another connection (a
/// `status` reader checkpointing, say) before giving up with "busy".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The SQLite store. Clones share one connection (and, for a writer, one
/// [`WriterLock`]).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    /// The lease every write of this clone checks first ([`Store::fenced`]);
    /// `None` for an unfenced store.
    fence: Option<Arc<Fence>>,
}

/// A channel's lease as its leader holds it: every write transaction of a
/// [`Store::fenced`] clone begins by checking, at the database's now, that
/// `holder` still holds `channel` with `epoch` (docs/design.md §14.1), and
/// rolls back with [`StoreError::Fenced`] when it does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The channel the writes are for.
    pub channel: ChannelId,
    /// This instance.
    pub holder: crate::ha::InstanceId,
    /// The grant's epoch.
    pub epoch: crate::ha::Epoch,
}

struct Inner {
    /// Declared before `lock` so the connection closes before the lock is
    /// released when the last clone drops.
    conn: Connections,
    /// True for [`Store::open_read_only`]'s stores.
    read_only: bool,
    /// Signalled when the writer thread's batch ends
    /// ([`Store::connection`]).
    batch_ended: Condvar,
    /// Where [`Store::blocking`] sends a writer's jobs; the thread starts
    /// with the first one (`batch`).
    writer: OnceLock<Sender<batch::Job>>,
    path: PathBuf,
    migrated: Migrated,
    /// `None` for a read-only store.
    _lock: Option<WriterLock>,
    /// The database file as opened, checked before every write; `None` for
    /// a read-only store (it never writes).
    identity: Option<FileIdentity>,
    /// Moves whenever alerts are raised or resolved: the notifier waits on
    /// it ([`Store::subscribe_alerts`]).
    alerts_changed: tokio::sync::watch::Sender<u64>,
    /// How token values are sealed and opened (the keyring, if any).
    values: values::Values,
    /// The stored values free text is screened against.
    screen: screen::Screen,
}

/// Where the store's statements run.
enum Connections {
    /// SQLite: one connection (a writer's shared with its writer thread).
    Sqlite(Mutex<batch::Connection>),
    /// PostgreSQL: a pool of connections, used one statement or one
    /// transaction at a time.
    Postgres(pg::Backend),
}

impl Inner {
    /// The SQLite connection; `None` on PostgreSQL.
    fn sqlite(&self) -> Option<&Mutex<batch::Connection>> {
        match &self.conn {
            Connections::Sqlite(conn) => Some(conn),
            Connections::Postgres(_) => None,
        }
    }
}

/// Which file a path named when it was looked at: device and inode. A file
/// deleted and recreated, or another file renamed over the path, has a
/// different pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    dev: u64,
    ino: u64,
}

impl FileIdentity {
    fn of(meta: &fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .field("read_only", &self.is_read_only())
            .finish()
    }
}

impl Store {
    /// Opens the database at `path` for writing: takes the writer lock,
    /// creates the file (mode 0600) if it is missing, tightens an existing
    /// file's mode to 0600, switches to WAL and applies pending migrations.
    /// The parent directory must exist. `linetokd run` and `linetokd migrate`
    /// both go through here.
    ///
    /// # Errors
    ///
    /// [`StoreError::MissingDirectory`], [`StoreError::Locked`] (another
    /// daemon), [`StoreError::File`], [`StoreError::Open`],
    /// [`StoreError::TooNew`] (a newer linetokd wrote it),
    /// [`StoreError::Migration`].
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, StoreOptions::default())
    }

    /// [`Store::open`] with explicit [`StoreOptions`]. Production opens with
    /// the defaults; tests and the simulation may trade durability for speed.
    ///
    /// # Errors
    ///
    /// As [`Store::open`].
    pub fn open_with(path: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        check_parent(path)?;
        let lock = WriterLock::acquire(path)?;
        prepare_private_file(path)?;
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        // No CREATE flag: the file was just created with the right mode, and
        // SQLite must not create one with the umask's.
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                what: format!("SQLite refused WAL mode (journal_mode stays {mode})"),
            });
        }
        // WAL's default (NORMAL) may lose the last commits on power loss; a
        // token must be durable before it is published, so sync every commit.
        let synchronous = match options.durability {
            Durability::Full => "FULL",
            Durability::Unsynced => "OFF",
        };
        conn.pragma_update(None, "synchronous", synchronous)
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(open_err)?;
        conn.pragma_update(None, "cache_size", -DAEMON_CACHE_KIB)
            .map_err(open_err)?;
        prepare_once(&conn).map_err(open_err)?;
        let migrated = migrate::apply(&mut conn, migrate::MIGRATIONS)?;
        // The first write created -wal and -shm; SQLite gives them the
        // database file's mode, but an older pair may be looser.
        tighten_companions(path)?;
        // Taken after SQLite opened the file, so it is the file SQLite holds
        // (short of a swap in the last few microseconds of open).
        let identity = fs::metadata(path)
            .map(|m| FileIdentity::of(&m))
            .map_err(|source| StoreError::File {
                path: path.to_path_buf(),
                source,
            })?;
        let values = values::Values::new(options.keyring);
        let screen = screen::Screen::default();
        values::prepare(&mut conn, &values, &screen, options.keep_plaintext)
            .map_err(|e| e.into_store_error(path, "checking the stored token values"))?;
        Ok(Self {
            fence: None,
            inner: Arc::new(Inner {
                conn: Connections::Sqlite(Mutex::new(batch::Connection::new(conn))),
                read_only: false,
                batch_ended: Condvar::new(),
                writer: OnceLock::new(),
                path: path.to_path_buf(),
                migrated,
                _lock: Some(lock),
                identity: Some(identity),
                alerts_changed: tokio::sync::watch::Sender::new(0),
                values,
                screen,
            }),
        })
    }

    /// Opens the PostgreSQL database `target` names as a writer: connects
    /// (one connection proves the URL and the credentials), applies pending
    /// migrations under the advisory lock and fills the screening set.
    /// Without [`StoreOptions::shared`], one writer per database: a second
    /// is refused while the first holds the writer lock, and a writer that
    /// lost its lock refuses to write. With it (`[ha]`), no lock: each
    /// channel's writes are fenced by its lease ([`Store::fenced`]).
    ///
    /// # Errors
    ///
    /// [`StoreError::Pg`] for the connection, the TLS set-up or a
    /// migration ([`pg::PgError`] says which); [`StoreError::Postgres`]
    /// when reading the stored values fails.
    pub fn open_postgres(
        target: &pg::PgTarget,
        pool: &pg::PoolOptions,
        options: StoreOptions,
    ) -> Result<Self, StoreError> {
        let (backend, migrated) = if options.shared {
            pg::Backend::connect_shared(target, pool)?
        } else {
            pg::Backend::connect(target, pool)?
        };
        Self::on_postgres(target, backend, migrated, false, options.keyring)
    }

    /// Opens the PostgreSQL database `target` names to read beside a
    /// running daemon (`status`, `plan`, `token`), as
    /// [`Store::open_read_only_with`] opens a SQLite file: no writer lock,
    /// no migration, and every write refused.
    ///
    /// # Errors
    ///
    /// [`StoreError::Pg`] for the connection or a schema that is not this
    /// binary's ([`pg::PgError::NeedsMigration`], [`pg::PgError::TooNew`]).
    pub fn open_postgres_read_only(
        target: &pg::PgTarget,
        keyring: Option<Arc<crypt::Keyring>>,
    ) -> Result<Self, StoreError> {
        let options = pg::PoolOptions {
            max_size: 2,
            ..pg::PoolOptions::default()
        };
        let (backend, migrated) = pg::Backend::connect_reader(target, &options)?;
        Self::on_postgres(target, backend, migrated, true, keyring)
    }

    fn on_postgres(
        target: &pg::PgTarget,
        backend: pg::Backend,
        migrated: Migrated,
        read_only: bool,
        keyring: Option<Arc<crypt::Keyring>>,
    ) -> Result<Self, StoreError> {
        let store = Self {
            fence: None,
            inner: Arc::new(Inner {
                conn: Connections::Postgres(backend),
                read_only,
                batch_ended: Condvar::new(),
                writer: OnceLock::new(),
                path: PathBuf::from(target.redacted()),
                migrated,
                _lock: None,
                identity: None,
                alerts_changed: tokio::sync::watch::Sender::new(0),
                values: values::Values::new(keyring),
                screen: screen::Screen::default(),
            }),
        };
        if read_only {
            return Ok(store);
        }
        values::prepare_postgres(&store)?;
        store.read_db("reading the stored token values", |db| {
            values::fill_screen(db, &store.inner.values)
        })?;
        Ok(store)
    }

    /// [`Store::open_with`] or [`Store::open_postgres`], by where the store
    /// lives: a writer, its migrations applied.
    ///
    /// # Errors
    ///
    /// As those two.
    pub fn open_at(location: &Location, options: StoreOptions) -> Result<Self, StoreError> {
        match location {
            Location::Sqlite(path) => Self::open_with(path, options),
            Location::Postgres(target) => {
                Self::open_postgres(target, &pg::PoolOptions::default(), options)
            }
        }
    }

    /// [`Store::open_read_only_with`] or [`Store::open_postgres_read_only`],
    /// by where the store lives.
    ///
    /// # Errors
    ///
    /// As those two.
    pub fn open_read_only_at(
        location: &Location,
        keyring: Option<Arc<crypt::Keyring>>,
    ) -> Result<Self, StoreError> {
        match location {
            Location::Sqlite(path) => Self::open_read_only_with(path, keyring),
            Location::Postgres(target) => Self::open_postgres_read_only(target, keyring),
        }
    }

    /// Applies pending migrations to the database at `path` and closes it:
    /// `linetokd migrate`. Same as [`Store::open`] followed by a drop, so it
    /// also refuses to run beside a running daemon.
    ///
    /// # Errors
    ///
    /// As [`Store::open`].
    pub fn migrate(path: &Path) -> Result<Migrated, StoreError> {
        Self::migrate_with(path, StoreOptions::default())
    }

    /// [`Store::migrate`] with explicit [`StoreOptions`]: `linetokd migrate`
    /// passes the config's keyring, which an encrypted database needs.
    ///
    /// # Errors
    ///
    /// As [`Store::open`].
    pub fn migrate_with(path: &Path, options: StoreOptions) -> Result<Migrated, StoreError> {
        Ok(Self::open_with(path, options)?.migrated())
    }

    /// Opens an existing database read-only, without the writer lock, for
    /// `linetokd status`, `plan` and `token` while the daemon runs. Every
    /// write method returns [`StoreError::ReadOnly`].
    ///
    /// # Errors
    ///
    /// [`StoreError::NoDatabase`] when the file is missing,
    /// [`StoreError::TooNew`] or [`StoreError::NeedsMigration`] when its
    /// schema is not the one this binary reads, [`StoreError::Open`].
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        Self::open_read_only_with(path, None)
    }

    /// [`Store::open_read_only`] with the database keys, for the commands
    /// that read token values (`status`, `plan`, `token`): without them a
    /// sealed value read is [`StoreError::Undecryptable`].
    ///
    /// # Errors
    ///
    /// As [`Store::open_read_only`].
    pub fn open_read_only_with(
        path: &Path,
        keyring: Option<Arc<crypt::Keyring>>,
    ) -> Result<Self, StoreError> {
        if !path.is_file() {
            return Err(StoreError::NoDatabase {
                path: path.to_path_buf(),
            });
        }
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        conn.pragma_update(None, "query_only", true)
            .map_err(open_err)?;
        prepare_once(&conn).map_err(open_err)?;
        let found = migrate::schema_version(&conn).map_err(open_err)?;
        let known = migrate::latest_version();
        if found > known {
            return Err(StoreError::TooNew {
                path: path.to_path_buf(),
                found,
                known,
            });
        }
        if found < known {
            return Err(StoreError::NeedsMigration {
                path: path.to_path_buf(),
                found,
                known,
            });
        }
        Ok(Self {
            fence: None,
            inner: Arc::new(Inner {
                conn: Connections::Sqlite(Mutex::new(batch::Connection::new(conn))),
                read_only: true,
                batch_ended: Condvar::new(),
                writer: OnceLock::new(),
                path: path.to_path_buf(),
                migrated: Migrated {
                    from: found,
                    to: found,
                },
                _lock: None,
                identity: None,
                alerts_changed: tokio::sync::watch::Sender::new(0),
                values: values::Values::new(keyring),
                screen: screen::Screen::default(),
            }),
        })
    }

    /// Whether a writer (a daemon, or `linetokd migrate`) holds this
    /// PostgreSQL database's writer lock: `None` on SQLite, whose lock is a
    /// file `status` probes itself.
    ///
    /// # Errors
    /// [`StoreError::Postgres`] when the lock table cannot be read.
    pub fn writer_present(&self) -> Result<Option<bool>, StoreError> {
        match &self.inner.conn {
            Connections::Sqlite(_) => Ok(None),
            Connections::Postgres(pg) => pg.writer_present().map(Some).map_err(|e| {
                Fail::Pg(e).into_store_error(&self.inner.path, "reading the writer lock")
            }),
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// True for a store from [`Store::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.inner.read_only
    }

    /// The schema versions before and after the migrations applied at open.
    pub fn migrated(&self) -> Migrated {
        self.inner.migrated
    }

    /// The connection, once no other thread holds a batch open on it: a
    /// batch's writes are not committed yet, and nothing may read them or
    /// write beside them until they are (`batch`).
    ///
    /// # Errors
    /// [`StoreError::Internal`] on PostgreSQL: every query runs on both
    /// backends through [`Store::read_db`] and [`Store::write_db`], and
    /// only the steps that rewrite the SQLite file itself (`db decrypt`'s
    /// scrub) come here, which `cli` refuses on PostgreSQL before.
    fn connection(&self) -> Result<MutexGuard<'_, batch::Connection>, StoreError> {
        let Some(conn) = self.inner.sqlite() else {
            return Err(StoreError::Internal {
                what: "this step rewrites a SQLite database file; the store is PostgreSQL"
                    .to_owned(),
            });
        };
        let mut guard = conn.lock().unwrap_or_else(PoisonError::into_inner);
        while guard.in_other_batch() {
            guard = self
                .inner
                .batch_ended
                .wait(guard)
                .unwrap_or_else(PoisonError::into_inner);
        }
        Ok(guard)
    }

    /// Runs `f` on the connection outside any explicit transaction (reads).
    fn read<T>(
        &self,
        what: &'static str,
        f: impl FnOnce(&sql::SqliteDb<'_>) -> Result<T, Fail>,
    ) -> Result<T, StoreError> {
        let guard = self.connection()?;
        f(&sql::SqliteDb::new(&guard.conn, &self.inner.screen))
            .map_err(|e| e.into_store_error(&self.inner.path, what))
    }

    /// Runs `f` outside any explicit transaction (reads), on either
    /// backend.
    fn read_db<T>(
        &self,
        what: &'static str,
        f: impl FnOnce(&dyn sql::Db) -> Result<T, Fail>,
    ) -> Result<T, StoreError> {
        match &self.inner.conn {
            Connections::Sqlite(_) => self.read(what, |conn| f(conn)),
            Connections::Postgres(pg) => pg
                .read(&self.inner.screen, f)
                .map_err(|e| e.into_store_error(&self.inner.path, what)),
        }
    }

    /// Runs `f` in one transaction (see [`Store::write`]), on either
    /// backend.
    fn write_db<T>(
        &self,
        what: &'static str,
        f: impl FnOnce(&dyn sql::Db) -> Result<T, Fail>,
    ) -> Result<T, StoreError> {
        match &self.inner.conn {
            Connections::Sqlite(_) => self.write(what, |conn| f(conn)),
            Connections::Postgres(pg) => {
                if self.is_read_only() {
                    return Err(StoreError::ReadOnly {
                        path: self.inner.path.clone(),
                    });
                }
                // SQLite's writer checks its file before every write; a
                // PostgreSQL writer checks that it still holds its lock
                // (under HA there is none: the fence guards each channel).
                if !pg.holds_writer_lock() {
                    return Err(StoreError::WriterLockLost {
                        target: pg.target().to_owned(),
                    });
                }
                pg.write(&self.inner.screen, self.fence.as_deref(), f)
                    .map_err(|e| e.into_store_error(&self.inner.path, what))
            }
        }
    }

    /// This store with every write fenced by `fence` (docs/design.md
    /// §14.1): each write transaction first checks the lease, at the
    /// database's now, and fails with [`StoreError::Fenced`] (rolled back)
    /// when `fence.holder` no longer holds `fence.channel` with
    /// `fence.epoch`. Reads are not fenced. Only PostgreSQL has leases; a
    /// SQLite store (one writer, its file lock) ignores the fence.
    #[must_use]
    pub fn fenced(&self, fence: Fence) -> Store {
        Store {
            inner: Arc::clone(&self.inner),
            fence: Some(Arc::new(fence)),
        }
    }

    /// The lease statements of `[ha]` (PostgreSQL); `None` on SQLite,
    /// which has no leases.
    pub fn lease_ops(&self) -> Option<pg::LeaseOps> {
        match &self.inner.conn {
            Connections::Postgres(pg) => Some(pg.lease_ops()),
            Connections::Sqlite(_) => None,
        }
    }

    /// The fence this clone's writes check, if any.
    pub fn fence(&self) -> Option<&Fence> {
        self.fence.as_deref()
    }

    /// Runs `f` with this store off the async runtime, for async callers:
    /// rusqlite blocks, and so do PostgreSQL's statements. A writer's jobs
    /// go to its writer thread, which on SQLite commits the jobs that
    /// arrive together in one transaction (`batch`); the answer comes once
    /// `f`'s writes are durable. On PostgreSQL the same thread runs each
    /// job on its own (each write its own transaction): a plain thread, so
    /// its statements block on the store's runtime directly (`sql::block_on`
    /// cannot tell a blocking-pool thread from one that drives tasks, and
    /// would hand every statement to a helper thread there). A read-only
    /// store uses tokio's blocking pool. A job that panicked or was lost comes
    /// back as [`StoreError::Internal`].
    ///
    /// # Errors
    /// Whatever `f` returns, the batch's commit failure, or
    /// [`StoreError::Internal`].
    pub async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let lost = |what: String| StoreError::Internal { what };
        if self.is_read_only() {
            let store = self.clone();
            return tokio::task::spawn_blocking(move || f(&store))
                .await
                .unwrap_or_else(|e| Err(lost(e.to_string())));
        }
        let writer = match self.inner.writer.get() {
            Some(writer) => writer,
            None => {
                let started = batch::start(&self.inner)?;
                // Another caller may have started one first; the spare
                // thread ends at once, its sender dropped here.
                self.inner.writer.get_or_init(|| started)
            }
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        // The writer thread hands each job its own clone of the store; a
        // fenced caller's writes stay fenced there.
        let fence = self.fence.clone();
        let job = move |store: &Store| match fence {
            Some(fence) => f(&Store {
                inner: Arc::clone(&store.inner),
                fence: Some(fence),
            }),
            None => f(store),
        };
        writer
            .send(batch::job(job, reply))
            .map_err(|_| lost("the store's writer thread has stopped".to_owned()))?;
        answer
            .await
            .unwrap_or_else(|_| Err(lost("the store's writer thread dropped a job".to_owned())))
    }

    /// Runs `f` in one immediate transaction, committed only if `f`
    /// succeeds. A panic or error inside rolls everything back. Refused with
    /// [`StoreError::Replaced`] once the path no longer names the file
    /// opened. On the writer thread inside a batch, `f` runs in a savepoint
    /// of the batch's transaction instead, which the batch commits.
    fn write<T>(
        &self,
        what: &'static str,
        f: impl FnOnce(&sql::SqliteDb<'_>) -> Result<T, Fail>,
    ) -> Result<T, StoreError> {
        if self.is_read_only() {
            return Err(StoreError::ReadOnly {
                path: self.inner.path.clone(),
            });
        }
        let mut guard = self.connection()?;
        let run = |conn: &mut batch::Connection| -> Result<T, Fail> {
            if conn.in_my_batch() {
                // SQLite ended the batch's transaction after an error (a
                // full disk, an I/O error): a savepoint now would begin and
                // commit a transaction of its own, which the batch would
                // then report as failed. The batch is over for every job.
                if conn.conn.is_autocommit() {
                    return Err(Fail::Store(StoreError::Internal {
                        what:
                            "SQLite rolled back this batch of writes after an error; nothing of it \
                               was stored"
                                .to_owned(),
                    }));
                }
                // The batch checks the file when it begins and again
                // before it commits.
                let savepoint = batch::Savepoint::open(&conn.conn)?;
                let out = f(&sql::SqliteDb::new(&conn.conn, &self.inner.screen))?;
                savepoint.release()?;
                return Ok(out);
            }
            // Under the connection lock, so no write of ours slips in
            // between the check and the transaction.
            self.check_same_file()?;
            let tx = conn
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&sql::SqliteDb::new(&tx, &self.inner.screen))?;
            tx.commit()?;
            Ok(out)
        };
        run(&mut guard).map_err(|e| e.into_store_error(&self.inner.path, what))
    }

    /// Checks that the path still names the file opened (one `stat`); every
    /// write does this first. Always fine for a read-only store.
    ///
    /// # Errors
    /// [`StoreError::Replaced`] when the path is gone or names another file;
    /// [`StoreError::File`] when it cannot be looked at (a permission change
    /// on the directory, say).
    pub fn check_same_file(&self) -> Result<(), StoreError> {
        let Some(opened) = self.inner.identity else {
            return Ok(());
        };
        let replaced = || StoreError::Replaced {
            path: self.inner.path.clone(),
        };
        match fs::metadata(&self.inner.path) {
            Ok(meta) if FileIdentity::of(&meta) == opened => Ok(()),
            Ok(_) => Err(replaced()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(replaced()),
            Err(source) => Err(StoreError::File {
                path: self.inner.path.clone(),
                source,
            }),
        }
    }
}

/// The inner error of a query closure: SQLite's, a malformed row, or a
/// domain refusal. Turned into a [`StoreError`] naming the path and the
/// operation by [`Store::read`]/[`Store::write`].
enum Fail {
    Sql(rusqlite::Error),
    /// A PostgreSQL statement's (or its pool's) failure.
    Pg(sql::SqlError),
    Corrupt(String),
    Store(StoreError),
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sql(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// The PostgreSQL notification channel on which writers announce that a
/// channel's tokens changed (the payload is the channel ID): instances
/// that do not lead the channel publish at once instead of at their next
/// look at the store (`Delivery::follow`).
pub const CHANGED_NOTIFICATION: &str = "linetokd_changed";

/// Announces, at the commit of `db`'s transaction, that `channel`'s tokens
/// changed. PostgreSQL only: a SQLite store has no other instance to tell.
fn notify_changed(db: &dyn sql::Db, channel: &ChannelId) -> Result<(), sql::SqlError> {
    if db.dialect() == sql::Dialect::Postgres {
        db.query_one(
            "SELECT CAST(pg_notify(?1, ?2) AS TEXT)",
            sql::p![CHANGED_NOTIFICATION, channel.as_str()],
            |row| row.text(0),
        )?;
    }
    Ok(())
}

impl From<pg::PgError> for Fail {
    fn from(e: pg::PgError) -> Self {
        Self::Store(StoreError::Pg(e))
    }
}

impl From<sql::SqlError> for Fail {
    fn from(e: sql::SqlError) -> Self {
        match e {
            sql::SqlError::Sqlite(e) => Self::Sql(e),
            sql::SqlError::Column(detail) => Self::Corrupt(detail),
            other => Self::Pg(other),
        }
    }
}

impl Fail {
    fn into_store_error(self, path: &Path, what: &'static str) -> StoreError {
        match self {
            Self::Sql(source) => StoreError::Query {
                path: path.to_path_buf(),
                what,
                source,
            },
            Self::Pg(source) => StoreError::Postgres {
                target: path.display().to_string(),
                what,
                source,
            },
            Self::Corrupt(detail) => StoreError::Corrupt {
                path: path.to_path_buf(),
                what: format!("{what}: {detail}"),
            },
            Self::Store(e) => e,
        }
    }
}

/// `execute` through the connection's statement cache. Our statements run
/// thousands of times a minute at bootstrap, and `Connection::execute`
/// parses and plans the SQL anew on every call: that was the store's
/// biggest CPU cost after the commits themselves.
trait ExecCached {
    fn exec_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
}

impl ExecCached for Connection {
    fn exec_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }
}

/// How many prepared statements each connection keeps. The store has
/// about a hundred distinct statements, and rusqlite's default of 16 made
/// the snapshot's queries evict each other on every driver round.
const STATEMENT_CACHE: usize = 256;

/// Sizes the statement cache ([`STATEMENT_CACHE`]) and turns on SQLite's
/// query planner stability guarantee: a statement's plan
/// no longer depends on the values bound to it. Without it SQLite (3.54)
/// marks the parameters of most of our `WHERE x = ?` queries as "re-plan
/// when rebound", so every cached statement was parsed and planned again on
/// each call with a different channel or group: a quarter of the daemon's
/// CPU time on every pass. Our queries are simple lookups whose best plan
/// does not depend on the value.
/// The writer's page cache, in KiB (SQLite's default is 2,000). The daemon
/// reads a channel's rows when it plans the channel, so what it misses
/// comes from the OS's page cache, not the disk; a full 2 MB cache stayed
/// resident for good once the database outgrew it. Measured with
/// `linetokd bench`: about 1 MiB less RSS at 10,000 groups, CPU per issued
/// token within the noise.
const DAEMON_CACHE_KIB: i64 = 512;

fn prepare_once(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map(|_| ())
}

/// A time as stored: unix milliseconds. LINE's expiries are instants, and
/// the engine must never act in the second a token expires as if LINE had
/// already freed its slot (schema version 4).
fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// What a free-text column gets instead of a text that contained a token.
const WITHHELD: &str = "[withheld: the text contained a token value]";

/// Free text longer than this is cut (LINE error bodies can be long).
const MAX_TEXT_CHARS: usize = 2000;

/// Screens free text before it is stored outside the token value columns:
/// a text containing any stored token value is replaced by [`WITHHELD`]
/// (the check runs before truncation so half a token cannot slip through),
/// and long texts are cut.
fn screen(db: &dyn sql::Db, text: &str) -> Result<String, Fail> {
    Ok(screen_in(db.screen(), text))
}

/// [`screen`] against the set `screen`.
fn screen_in(screen: &screen::Screen, text: &str) -> String {
    if screen.holds(text) {
        return WITHHELD.to_owned();
    }
    match text.char_indices().nth(MAX_TEXT_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

fn check_parent(path: &Path) -> Result<(), StoreError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if dir.is_dir() {
        Ok(())
    } else {
        Err(StoreError::MissingDirectory {
            dir: dir.to_path_buf(),
            path: path.to_path_buf(),
        })
    }
}

/// Creates the database file with mode 0600 before SQLite sees it, or
/// tightens an existing one. The mode is set explicitly after creation
/// because `OpenOptions::mode` is filtered through the umask.
fn prepare_private_file(path: &Path) -> Result<(), StoreError> {
    let file_err = |source| StoreError::File {
        path: path.to_path_buf(),
        source,
    };
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(file) => {
            file.set_permissions(Permissions::from_mode(0o600))
                .map_err(file_err)?;
            file.sync_all().map_err(file_err)?;
            // Make the new directory entry durable too.
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(file_err)?;
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // Never chmod a directory or device someone pointed us at.
            if !fs::metadata(path).map_err(file_err)?.is_file() {
                return Err(file_err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "it exists but is not a regular file",
                )));
            }
            tighten(path).map_err(file_err)
        }
        Err(e) => Err(file_err(e)),
    }
}

/// Tightens the `-wal` and `-shm` files, if present, to 0600.
fn tighten_companions(db: &Path) -> Result<(), StoreError> {
    for suffix in ["-wal", "-shm"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        let companion = PathBuf::from(name);
        match tighten(&companion) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StoreError::File {
                    path: companion,
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Sets `path` to 0600 if group or others have any access, with a warning:
/// the database holds token values.
fn tighten(path: &Path) -> io::Result<()> {
    let mode = fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            file = %path.display(),
            mode = format!("{:o}", mode & 0o777),
            "database file was readable by others; setting it to 0600"
        );
        fs::set_permissions(path, Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synchronous(store: &Store) -> i64 {
        store
            .read("reading the sync mode", |conn| {
                Ok(conn.pragma_query_value(None, "synchronous", |row| row.get(0))?)
            })
            .unwrap()
    }

    #[test]
    fn the_default_syncs_every_commit_and_unsynced_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let full = Store::open(&dir.path().join("full.db")).unwrap();
        // SQLite's numbering: OFF = 0, NORMAL = 1, FULL = 2.
        assert_eq!(synchronous(&full), 2);
        let options = StoreOptions {
            durability: Durability::Unsynced,
            ..StoreOptions::default()
        };
        let off = Store::open_with(&dir.path().join("off.db"), options).unwrap();
        assert_eq!(synchronous(&off), 0);
    }

    /// `status` reads these across all channels; events and issue intents
    /// grow with every rotation, so each must read its partial index
    /// (schema 13, `tokens_short_lived_gone` before it) and never scan the
    /// table. SQLite picks a partial index only when the query's WHERE
    /// repeats the index's terms as written: a reworded query falls back
    /// to a scan silently, so the plans are checked here.
    #[test]
    fn status_reads_of_history_use_their_partial_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plans.db");
        drop(Store::open(&path).unwrap());
        let conn = rusqlite::Connection::open(&path).unwrap();
        for (sql, index) in [
            (events::latest_hook_results_sql(), "events_hook_results"),
            (
                intents::UNSETTLED_BY_CHANNEL.to_owned(),
                "issue_intents_maybe_issued",
            ),
            (intents::held_by_channel_sql(), "issue_intents_maybe_issued"),
            (tokens::evictions_sql(Scope::All), "tokens_short_lived_gone"),
        ] {
            let mut explain = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let nulls = vec![rusqlite::types::Null; explain.parameter_count()];
            let plan: Vec<String> = explain
                .query_map(rusqlite::params_from_iter(nulls), |row| {
                    row.get::<_, String>(3)
                })
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(
                plan.iter()
                    .any(|step| step.contains(&format!("INDEX {index}"))),
                "{index} not used by {sql}:\n{}",
                plan.join("\n")
            );
            assert!(
                !plan
                    .iter()
                    .any(|step| step == "SCAN events" || step == "SCAN i" || step == "SCAN tokens"),
                "a full scan in {sql}:\n{}",
                plan.join("\n")
            );
        }
    }
}
