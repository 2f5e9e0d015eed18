//! The PostgreSQL store's foundation against a real PostgreSQL 15
//! (`pg_harness`): migrations (empty database, re-applied, two at once, a
//! newer schema, a failing step), the schema against SQLite's, and the pool
//! (plaintext, TLS with a CA file and with the system's roots, a wrong
//! password, a closed port). Each test skips with one printed line when
//! there is no PostgreSQL, unless `LINETOKD_REQUIRE_POSTGRES=1`.

use std::collections::BTreeMap;
use std::time::Duration;

use linetokd::store::pg::migrate::{self, MIGRATION_LOCK_KEY};
use linetokd::store::pg::{MIGRATIONS, PgError, PgMigration, PgPool, PgTarget, PoolOptions};

use crate::pg_harness::{self, Cluster, PASSWORD, PASSWORD_USER, TestDb, test_db};
use crate::support::assert_leaks_nothing;

async fn pool(url: &str) -> Result<PgPool, PgError> {
    let options = PoolOptions {
        max_size: 4,
        connect_timeout: Duration::from_secs(20),
        wait_timeout: Duration::from_secs(20),
    };
    PgPool::connect(&PgTarget::parse(url)?, &options).await
}

/// The `schema_version` rows a fully migrated database has.
fn shipped_versions() -> Vec<(i64, String)> {
    MIGRATIONS
        .iter()
        .map(|m| (i64::from(m.version), m.name.to_owned()))
        .collect()
}

async fn versions(db: &TestDb) -> Vec<(i64, String)> {
    db.client()
        .await
        .query(
            "SELECT version, name FROM schema_version ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Per table: its columns in order as (name, not null, type), its CHECK and
/// foreign-key counts; per index: (table, unique, partial, columns).
#[derive(Debug, PartialEq, Default)]
struct Shape {
    columns: BTreeMap<String, Vec<(String, bool, String)>>,
    checks: BTreeMap<String, usize>,
    foreign_keys: BTreeMap<String, usize>,
    indexes: BTreeMap<String, (String, bool, bool, Vec<String>)>,
}

fn sqlite_shape() -> Shape {
    let mut conn = rusqlite::Connection::open_in_memory().unwrap();
    linetokd::store::migrate::apply(&mut conn, linetokd::store::migrate::MIGRATIONS).unwrap();
    let mut shape = Shape::default();
    let tables: Vec<(String, String)> = conn
        .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name <> 'sqlite_sequence'")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (table, sql) in tables {
        let cols = conn
            .prepare(&format!(
                "SELECT name, \"notnull\", type, pk FROM pragma_table_info('{table}')"
            ))
            .unwrap()
            .query_map([], |r| {
                let ty: String = r.get(2)?;
                let pg = match ty.as_str() {
                    "INTEGER" => "bigint",
                    "TEXT" => "text",
                    "BLOB" => "bytea",
                    other => panic!("unexpected SQLite type {other}"),
                };
                // A primary key column is NOT NULL in PostgreSQL even where
                // SQLite's text does not say so.
                let not_null = r.get::<_, bool>(1)? || r.get::<_, i64>(3)? > 0;
                Ok((r.get(0)?, not_null, pg.to_owned()))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        shape.columns.insert(table.clone(), cols);
        shape
            .checks
            .insert(table.clone(), sql.matches("CHECK").count());
        let fks: i64 = conn
            .query_row(
                &format!("SELECT count(DISTINCT id) FROM pragma_foreign_key_list('{table}')"),
                [],
                |r| r.get(0),
            )
            .unwrap();
        shape
            .foreign_keys
            .insert(table.clone(), usize::try_from(fks).unwrap());
        let indexes: Vec<(String, bool, bool)> = conn
            .prepare(&format!(
                "SELECT name, \"unique\", partial FROM pragma_index_list('{table}') WHERE origin = 'c'"
            ))
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for (name, unique, partial) in indexes {
            let cols = conn
                .prepare(&format!("SELECT coalesce(name, '<expr>') FROM pragma_index_info('{name}') ORDER BY seqno"))
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            shape
                .indexes
                .insert(name, (table.clone(), unique, partial, cols));
        }
    }
    shape
}

async fn postgres_shape(client: &tokio_postgres::Client) -> Shape {
    let mut shape = Shape::default();
    for r in client
        .query(
            "SELECT table_name::text, column_name::text, is_nullable = 'NO', data_type::text
               FROM information_schema.columns
              WHERE table_schema = current_schema() AND table_name <> 'schema_version'
              ORDER BY table_name, ordinal_position",
            &[],
        )
        .await
        .unwrap()
    {
        shape
            .columns
            .entry(r.get(0))
            .or_default()
            .push((r.get(1), r.get(2), r.get(3)));
    }
    for (kind, map) in [("c", &mut shape.checks), ("f", &mut shape.foreign_keys)] {
        for table in shape.columns.keys() {
            map.insert(table.clone(), 0);
        }
        for r in client
            .query(
                "SELECT conrelid::regclass::text, count(*) FROM pg_constraint
                  WHERE contype = $1::text::\"char\" AND connamespace = current_schema()::regnamespace
                    AND conrelid <> 'schema_version'::regclass
                  GROUP BY 1",
                &[&kind],
            )
            .await
            .unwrap()
        {
            let n: i64 = r.get(1);
            map.insert(r.get(0), usize::try_from(n).unwrap());
        }
    }
    for r in client
        .query(
            "SELECT c.relname::text, t.relname::text, i.indisunique, i.indpred IS NOT NULL,
                    array(SELECT coalesce(a.attname::text, '<expr>')
                            FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
                            LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                           ORDER BY k.ord)
               FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
               JOIN pg_class t ON t.oid = i.indrelid
              WHERE t.relnamespace = current_schema()::regnamespace AND NOT i.indisprimary",
            &[],
        )
        .await
        .unwrap()
    {
        shape
            .indexes
            .insert(r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4)));
    }
    shape
}

#[tokio::test]
async fn migrations_give_an_empty_database_the_sqlite_schema() {
    let Some(db) = test_db("migrations_give_an_empty_database_the_sqlite_schema").await else {
        return;
    };
    let pool = pool(&db.url()).await.unwrap();
    let migrated = pool.migrate().await.unwrap();
    assert_eq!((migrated.from, migrated.to), (0, migrate::latest_version()));
    assert_eq!(versions(&db).await, shipped_versions());

    let pg = postgres_shape(&db.client().await).await;
    let sqlite = sqlite_shape();
    assert_eq!(pg.columns, sqlite.columns, "columns differ");
    assert_eq!(pg.checks, sqlite.checks, "CHECK constraints differ");
    assert_eq!(pg.foreign_keys, sqlite.foreign_keys, "foreign keys differ");
    assert_eq!(pg.indexes, sqlite.indexes, "indexes differ");
}

#[tokio::test]
async fn migrating_again_is_a_no_op_that_keeps_the_rows() {
    let Some(db) = test_db("migrating_again_is_a_no_op_that_keeps_the_rows").await else {
        return;
    };
    let pool = pool(&db.url()).await.unwrap();
    pool.migrate().await.unwrap();
    let client = db.client().await;
    client
        .execute(
            "INSERT INTO channels (id, name, added_at) VALUES ('1234567890', 'main', 1700000000000)",
            &[],
        )
        .await
        .unwrap();
    let again = pool.migrate().await.unwrap();
    assert!(again.was_current(), "{again:?}");
    let latest = migrate::latest_version();
    assert_eq!((again.from, again.to), (latest, latest));
    assert_eq!(versions(&db).await, shipped_versions());
    let n: i64 = client
        .query_one("SELECT count(*) FROM channels", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_migrators_started_together_wait_on_the_lock_and_end_with_one_schema() {
    let test = "two_migrators_started_together_wait_on_the_lock_and_end_with_one_schema";
    let Some(db) = test_db(test).await else {
        return;
    };
    // Hold the migration lock so both migrators are provably inside apply()
    // and waiting on it before either can go on.
    let holder = db.client().await;
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"
        ))
        .await
        .unwrap();
    let migrator = |url: String| async move {
        let (mut client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        migrate::apply(&mut client, "test", MIGRATIONS).await
    };
    let a = tokio::spawn(migrator(db.url()));
    let b = tokio::spawn(migrator(db.url()));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = holder
            .query_one(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                  WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the migrators never waited on the advisory lock ({waiting} waiting)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    holder.batch_execute("COMMIT").await.unwrap();

    let a = a.await.unwrap().unwrap();
    let b = b.await.unwrap().unwrap();
    let applied = [a, b].iter().filter(|m| !m.was_current()).count();
    assert_eq!(applied, 1, "exactly one migrator applies: {a:?} {b:?}");
    assert_eq!(a.to, migrate::latest_version());
    assert_eq!(b.to, migrate::latest_version());
    assert_eq!(versions(&db).await, shipped_versions());
}

#[tokio::test]
async fn a_schema_newer_than_this_binary_is_refused_and_left_alone() {
    let test = "a_schema_newer_than_this_binary_is_refused_and_left_alone";
    let Some(db) = test_db(test).await else {
        return;
    };
    let pool = pool(&db.url()).await.unwrap();
    pool.migrate().await.unwrap();
    let known = migrate::latest_version();
    let future = known + 1;
    db.client()
        .await
        .execute(
            "INSERT INTO schema_version (version, name) VALUES ($1, 'from_the_future')",
            &[&i64::from(future)],
        )
        .await
        .unwrap();
    let err = pool.migrate().await.unwrap_err();
    assert!(
        matches!(
            err,
            PgError::TooNew { found, known: k, .. } if found == future && k == known
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains(&format!("schema version {future}")), "{text}");
    assert!(text.contains(&format!("up to {known}")), "{text}");
    assert!(text.contains("downgrades are not supported"), "{text}");
    assert!(text.contains(&db.name), "names the database: {text}");
    assert_eq!(versions(&db).await.len(), MIGRATIONS.len() + 1);
}

#[tokio::test]
async fn a_failing_step_rolls_back_every_step_of_the_run() {
    let Some(db) = test_db("a_failing_step_rolls_back_every_step_of_the_run").await else {
        return;
    };
    let list = [
        MIGRATIONS[0],
        PgMigration {
            version: 11,
            name: "0011_broken",
            sql: "ALTER TABLE channels ADD COLUMN x BIGINT; SELECT no_such_function();",
        },
    ];
    let mut client = db.client().await;
    let err = migrate::apply(&mut client, "test-db", &list)
        .await
        .unwrap_err();
    assert!(
        matches!(err, PgError::Migration { version: 11, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("0011_broken"), "{err}");
    assert_eq!(migrate::schema_version(&client).await.unwrap(), 0);
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        tables, 0,
        "the baseline was rolled back with the broken step"
    );

    // The same list without the broken SQL applies both steps at once.
    let list = [
        MIGRATIONS[0],
        PgMigration {
            version: 11,
            name: "0011_add_x",
            sql: "ALTER TABLE channels ADD COLUMN x BIGINT;",
        },
    ];
    let m = migrate::apply(&mut client, "test-db", &list).await.unwrap();
    assert_eq!((m.from, m.to), (0, 11));
    assert_eq!(migrate::schema_version(&client).await.unwrap(), 11);
}

async fn ssl_in_use(pool: &PgPool) -> bool {
    pool.get()
        .await
        .unwrap()
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn the_pool_connects_with_sslmode_disable() {
    let Some(db) = test_db("the_pool_connects_with_sslmode_disable").await else {
        return;
    };
    let pool = pool(&db.url()).await.unwrap();
    assert!(!ssl_in_use(&pool).await);
    assert!(pool.target().contains(&db.name), "{}", pool.target());
}

#[tokio::test]
async fn a_wrong_password_is_refused_with_a_message_that_never_shows_it() {
    let test = "a_wrong_password_is_refused_with_a_message_that_never_shows_it";
    let Some(db) = test_db(test).await else {
        return;
    };
    let port = db.cluster.port;
    let wrong = "Wrong-Password-4711";
    let url = format!(
        "postgres://{PASSWORD_USER}:{wrong}@127.0.0.1:{port}/{}?sslmode=disable",
        db.name
    );
    let err = pool(&url).await.unwrap_err();
    assert!(matches!(err, PgError::Connect { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("password authentication failed"),
        "says what is wrong: {text}"
    );
    assert!(text.contains(PASSWORD_USER), "names the user: {text}");
    assert!(text.contains(":***@"), "masks the password: {text}");
    assert_leaks_nothing(&err, &[wrong]);

    // The right password gets in: the refusal was about the password.
    let url = format!(
        "postgres://{PASSWORD_USER}:{PASSWORD}@127.0.0.1:{port}/{}?sslmode=disable",
        db.name
    );
    pool(&url).await.unwrap();
}

#[tokio::test]
async fn a_closed_port_is_named_in_the_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = pool(&format!(
        "postgres://u:secret-pw@127.0.0.1:{port}/db?sslmode=disable"
    ))
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(text.contains("cannot connect"), "{text}");
    assert_leaks_nothing(&err, &["secret-pw"]);
}

fn tls_cluster(test: &str, cluster: &'static Cluster) -> Option<&'static std::path::Path> {
    let ca = cluster.ca_file();
    if ca.is_none() {
        pg_harness::skip(test, "the cluster has no TLS (openssl was not usable)");
    }
    ca
}

#[tokio::test]
async fn sslmode_require_verifies_the_server_against_the_ca_file() {
    let test = "sslmode_require_verifies_the_server_against_the_ca_file";
    let Some(db) = test_db(test).await else {
        return;
    };
    let Some(ca) = tls_cluster(test, db.cluster) else {
        return;
    };
    let base = format!(
        "postgres://{PASSWORD_USER}:{PASSWORD}@127.0.0.1:{}/{}",
        db.cluster.port, db.name
    );
    let with_ca = format!("{base}?sslmode=require&sslrootcert={}", ca.display());
    let pool_ = pool(&with_ca).await.unwrap();
    assert!(ssl_in_use(&pool_).await, "the connection is encrypted");

    // The system's roots do not know the test CA: the handshake fails and
    // the error says it was the certificate.
    let err = pool(&format!("{base}?sslmode=require")).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("certificate"), "{text}");
    assert_leaks_nothing(&err, &[PASSWORD]);
}

#[test]
fn missing_server_binaries_are_named_in_the_reason_to_skip() {
    let empty = tempfile::tempdir().unwrap();
    let why = Cluster::start_with(empty.path()).err().unwrap();
    assert!(
        why.contains(&empty.path().join("initdb").display().to_string()),
        "{why}"
    );
    assert!(why.contains("apt-get install postgresql"), "{why}");
}

#[test]
fn a_cluster_is_stopped_and_its_dir_removed_when_its_owner_panics() {
    let test = "a_cluster_is_stopped_and_its_dir_removed_when_its_owner_panics";
    if let Err(why) = pg_harness::cluster() {
        pg_harness::skip(test, why);
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let owner = std::thread::spawn(move || {
        let cluster = Cluster::start().unwrap();
        tx.send((cluster.base.clone(), cluster.port)).unwrap();
        assert!(cluster.base.join("data/postmaster.pid").exists());
        panic!("a test failing while it owns a cluster");
    });
    assert!(owner.join().is_err(), "the owner panicked");
    let (base, port) = rx.recv().unwrap();
    assert!(!base.exists(), "{} was removed", base.display());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing listens on {port} any more"
    );
}

#[tokio::test]
async fn a_database_owner_without_superuser_can_migrate() {
    let test = "a_database_owner_without_superuser_can_migrate";
    let Some(db) = test_db(test).await else {
        return;
    };
    // PostgreSQL 15's `public` schema belongs to the database owner, and
    // nobody else may create in it. Over TLS when the cluster has it, so
    // SCRAM with channel binding is exercised too.
    db.client()
        .await
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" OWNER TO {PASSWORD_USER}",
            db.name
        ))
        .await
        .unwrap();
    let url = format!(
        "postgres://{PASSWORD_USER}:{PASSWORD}@127.0.0.1:{}/{}",
        db.cluster.port, db.name
    );
    let url = match db.cluster.ca_file() {
        Some(ca) => format!("{url}?sslmode=require&sslrootcert={}", ca.display()),
        None => format!("{url}?sslmode=disable"),
    };
    let pool = pool(&url).await.unwrap();
    let m = pool.migrate().await.unwrap();
    assert_eq!((m.from, m.to), (0, migrate::latest_version()));
    let superuser: bool = pool
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!superuser);
}

/// The store on PostgreSQL keeps one writer per database, as SQLite's lock
/// file does: a second writer is refused naming the holder, a reader opens
/// beside the writer, and the lock goes with the first writer. A reader of
/// a database no writer migrated yet is told to migrate.
#[test]
fn one_writer_per_postgres_database_and_readers_beside_it() {
    use linetokd::store::{Store, StoreError, StoreOptions};
    let Some(db) = pg_harness::test_db_blocking("one_writer_per_postgres_database") else {
        return;
    };
    let target = PgTarget::parse(&db.url()).unwrap();
    let refused = Store::open_postgres_read_only(&target, None).unwrap_err();
    assert!(
        matches!(
            refused,
            StoreError::Pg(PgError::NeedsMigration { found: 0, .. })
        ),
        "{refused:?}"
    );
    assert!(
        refused.to_string().contains("run `linetokd migrate`"),
        "{refused}"
    );

    let options = PoolOptions::default();
    let first = Store::open_postgres(&target, &options, StoreOptions::default()).unwrap();
    assert!(!first.migrated().was_current());
    let second = Store::open_postgres(&target, &options, StoreOptions::default()).unwrap_err();
    assert!(
        matches!(second, StoreError::Pg(PgError::WriterHeld { .. })),
        "{second:?}"
    );
    let message = second.to_string();
    assert!(
        message.contains("another linetokd instance already writes"),
        "{message}"
    );
    assert!(!message.contains("unknown"), "the holder's pid: {message}");

    let reader = Store::open_postgres_read_only(&target, None).unwrap();
    assert!(reader.is_read_only());
    first
        .set_note(chrono::Utc::now(), "last_reload", "ok")
        .unwrap();
    assert_eq!(reader.note("last_reload").unwrap().unwrap().value, "ok");
    let write = reader
        .set_note(chrono::Utc::now(), "last_reload", "no")
        .unwrap_err();
    assert!(matches!(write, StoreError::ReadOnly { .. }), "{write:?}");

    drop(first);
    // The lock is released when the writer's connection closes, which the
    // server notices at once on a local socket; a new writer takes over.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let again = loop {
        match Store::open_postgres(&target, &options, StoreOptions::default()) {
            Ok(store) => break store,
            Err(StoreError::Pg(PgError::WriterHeld { .. }))
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    assert!(again.migrated().was_current());
}

/// The writer lock lives on one connection: when that connection ends (a
/// server restart, a dropped idle connection, a killed session) the lock
/// goes with it, and the store stops writing with a fatal error rather
/// than write beside a second instance that could now take the lock.
#[test]
fn a_writer_whose_lock_connection_ends_refuses_every_write() {
    use linetokd::store::{Store, StoreError, StoreOptions};
    let Some(db) = pg_harness::test_db_blocking("writer_lock_connection_ends") else {
        return;
    };
    let target = PgTarget::parse(&db.url()).unwrap();
    let store =
        Store::open_postgres(&target, &PoolOptions::default(), StoreOptions::default()).unwrap();
    store.set_note(chrono::Utc::now(), "k", "before").unwrap();
    let killed: i64 = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            db.client()
                .await
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_locks \
                     WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
                     AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                     AND classid = ($1::bigint >> 32)::oid AND objid = ($1::bigint & 4294967295)::oid",
                    &[&linetokd::store::pg::WRITER_LOCK_KEY],
                )
                .await
                .unwrap()
                .get(0)
        });
    assert_eq!(killed, 1);
    // The driver notices the ended session as soon as it reads the
    // server's farewell; until then a write may still pass.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let refused = loop {
        match store.set_note(chrono::Utc::now(), "k", "after") {
            Err(e) => break e,
            Ok(()) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(()) => panic!("the store kept writing without its lock"),
        }
    };
    assert!(
        matches!(refused, StoreError::WriterLockLost { .. }),
        "{refused:?}"
    );
    assert!(refused.is_fatal());
    assert!(
        refused.to_string().contains("lost the writer lock"),
        "{refused}"
    );
    // Another instance may take the database now.
    let second =
        Store::open_postgres(&target, &PoolOptions::default(), StoreOptions::default()).unwrap();
    second.set_note(chrono::Utc::now(), "k", "second").unwrap();
}
