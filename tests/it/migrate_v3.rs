//! Migration 0004 in place: a database written by schema version 3 (times
//! in whole seconds) opened by [`Store::open`] is converted in one
//! transaction, every time column to milliseconds (issue 8, Deliver 1).
//!
//! The version-3 database is built with the shipped migrations 1 to 3 and
//! filled the way version 3 wrote it. Which columns are times is not copied
//! from the migration (a column it forgot would then go unnoticed): every
//! INTEGER column of the version-3 schema is a time unless it is an ID or a
//! counter, and every one of them must come out multiplied by 1000.

use chrono::{DateTime, Utc};
use linetokd::domain::{ChannelId, GroupName, KeyId};
use linetokd::store::migrate::{self, MIGRATIONS};
use linetokd::store::{Store, StoreError};
use rusqlite::Connection;

/// A whole second, as version 3 stored times.
const T0: i64 = 1_700_000_000;

/// INTEGER columns of the version-3 schema that are not times.
const NOT_TIMES: [(&str, &str); 3] = [
    ("issue_intents", "id"),
    ("events", "id"),
    ("groups", "consecutive_failures"),
];

/// Also not a time: a reference to an intent.
const REFERENCES: [(&str, &str); 1] = [("tokens", "intent_id")];

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap()
}

/// A database at schema version 3 in `dir`, with a row in every table and
/// every nullable time column set in at least one row.
fn version_3_database(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("linetokd.db");
    let mut conn = Connection::open(&path).unwrap();
    let applied = migrate::apply(&mut conn, &MIGRATIONS[..3]).unwrap();
    assert_eq!((applied.from, applied.to), (0, 3));
    let t = |d: i64| T0 + d;
    conn.execute_batch(&format!(
        "INSERT INTO channels (id, name, added_at, removed_at, last_reconcile_at) VALUES
             ('100', 'shop', {c0}, NULL, {c55}),
             ('200', 'old', {c1}, {c5}, NULL);
         INSERT INTO groups (channel_id, name, added_at, removed_at, last_error, last_error_at,
                             consecutive_failures, retry_not_before) VALUES
             ('100', 'a', {c2}, NULL, 'issue: LINE answered 500', {c20}, 2, {c80}),
             ('100', 'b', {c3}, {c30}, NULL, NULL, 0, NULL),
             ('200', 'x', {c1}, NULL, NULL, NULL, 0, NULL);
         INSERT INTO issue_intents (id, channel_id, group_name, started_at, finished_at, outcome,
                                    key_id, error) VALUES
             (1, '100', 'a', {c40}, {c41}, 'issued', 'k1', NULL),
             (2, '100', 'a', {c50}, {c51}, 'failed', NULL, 'LINE answered 500'),
             (3, '100', 'b', {c60}, {c61}, 'lost', NULL, 'in flight at a crash'),
             (4, '100', 'a', {c70}, NULL, 'open', NULL, NULL);
         INSERT INTO tokens (key_id, channel_id, group_name, access_token, issued_at, expires_at,
                             state, state_reason, state_changed_at, last_verified_at, intent_id)
         VALUES
             ('k1', '100', 'a', 'value-one', {c41}, {exp1}, 'live', NULL, {c41}, {c45}, 1),
             ('k0', '100', 'b', 'value-zero', {c4}, {c100}, 'revoked', 'revoked: incident',
              {c30}, NULL, NULL);
         INSERT INTO foreign_kids (channel_id, key_id, first_seen_at, last_seen_at, gone_at) VALUES
             ('100', 'f1', {c10}, {c11}, {c12});
         INSERT INTO events (at, channel_id, group_name, key_id, kind, detail) VALUES
             ({c41}, '100', 'a', 'k1', 'issued', 'token issued');
         INSERT INTO daemon_notes (key, value, at) VALUES ('last_reload', 'ok (1 channel)', {c90});",
        c0 = t(0),
        c1 = t(1),
        c2 = t(2),
        c3 = t(3),
        c4 = t(4),
        c5 = t(5),
        c10 = t(10),
        c11 = t(11),
        c12 = t(12),
        c20 = t(20),
        c30 = t(30),
        c40 = t(40),
        c41 = t(41),
        c45 = t(45),
        c50 = t(50),
        c51 = t(51),
        c55 = t(55),
        c60 = t(60),
        c61 = t(61),
        c70 = t(70),
        c80 = t(80),
        c90 = t(90),
        c100 = t(100),
        exp1 = t(41) + 2_592_000,
    ))
    .unwrap();
    path
}

/// Every (table, column) of the database's schema declared INTEGER that is
/// a time: not an ID, counter or reference.
fn time_columns(conn: &Connection) -> Vec<(String, String)> {
    let tables: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut out = Vec::new();
    for table in tables {
        let mut stmt = conn
            .prepare(&format!(
                "SELECT name, type FROM pragma_table_info('{table}')"
            ))
            .unwrap();
        let columns: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for (column, kind) in columns {
            let skip = NOT_TIMES
                .iter()
                .chain(&REFERENCES)
                .any(|(t, c)| *t == table && *c == column);
            if kind.eq_ignore_ascii_case("INTEGER") && !skip {
                out.push((table.clone(), column));
            }
        }
    }
    out
}

/// Every value of `columns`, in a stable order (nulls included).
fn values(conn: &Connection, columns: &[(String, String)]) -> Vec<(String, Option<i64>)> {
    let mut out = Vec::new();
    for (table, column) in columns {
        let mut stmt = conn
            .prepare(&format!("SELECT {column} FROM {table} ORDER BY rowid"))
            .unwrap();
        let vals: Vec<Option<i64>> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for v in vals {
            out.push((format!("{table}.{column}"), v));
        }
    }
    out
}

fn user_version(conn: &Connection) -> i64 {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap()
}

#[test]
fn a_version_3_database_is_converted_to_milliseconds_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = version_3_database(dir.path());
    let (columns, before) = {
        let conn = Connection::open(&path).unwrap();
        let columns = time_columns(&conn);
        (columns.clone(), values(&conn, &columns))
    };
    // The search found the time columns of every table of version 3, and
    // the fixture sets each of them somewhere.
    assert_eq!(columns.len(), 18, "{columns:?}");
    for (table, column) in &columns {
        let name = format!("{table}.{column}");
        assert!(
            before.iter().any(|(n, v)| *n == name && v.is_some()),
            "the fixture never sets {name}"
        );
    }

    let store = Store::open(&path).unwrap();
    let migrated = store.migrated();
    assert_eq!((migrated.from, migrated.to), (3, migrate::latest_version()));

    // Every time of version 3, multiplied by 1000; nulls stay null.
    let conn = Connection::open(&path).unwrap();
    assert_eq!(user_version(&conn), i64::from(migrate::latest_version()));
    let after = values(&conn, &columns);
    assert_eq!(after.len(), before.len());
    for ((name, old), (name_after, new)) in before.iter().zip(&after) {
        assert_eq!(name, name_after);
        assert_eq!(*new, old.map(|s| s * 1000), "{name}");
    }
    // Failed and lost attempts of version 3 may have issued; the issued and
    // the open one are not marked.
    let maybe: Vec<(i64, i64)> = conn
        .prepare("SELECT id, maybe_issued FROM issue_intents ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(maybe, [(1, 0), (2, 1), (3, 1), (4, 0)]);
    // The last reconcile (second 55) settled the attempts that ended before
    // it: intents 1 and 2.
    let settled: i64 = conn
        .query_row(
            "SELECT settled_through_intent FROM channels WHERE id = '100'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(settled, 2);

    // Read back through the store: the same instants as before, now typed.
    let k1 = store.token(&KeyId::new("k1")).unwrap().unwrap();
    assert_eq!(k1.record.issued_at, at(T0 + 41));
    assert_eq!(k1.record.expires_at, at(T0 + 41 + 2_592_000));
    assert_eq!(k1.record.verified_at, Some(at(T0 + 45)));
    assert_eq!(k1.value.expose(), "value-one");
    let channel = ChannelId::new("100");
    let row = store.channel(&channel).unwrap().unwrap();
    assert_eq!(row.last_reconcile_at, Some(at(T0 + 55)));
    let groups = store.groups(&channel).unwrap();
    let a = groups
        .iter()
        .find(|g| g.name == GroupName::new("a"))
        .unwrap();
    assert_eq!(a.runtime.consecutive_failures, 2);
    assert_eq!(a.runtime.retry_not_before, Some(at(T0 + 80)));
    assert_eq!(a.runtime.last_error_at, Some(at(T0 + 20)));
    assert_eq!(a.runtime.failure_kind, None);
    let b = groups
        .iter()
        .find(|g| g.name == GroupName::new("b"))
        .unwrap();
    assert_eq!(b.removed_at, Some(at(T0 + 30)));
    let foreign = store.foreign_kids(&channel).unwrap();
    assert_eq!(foreign.len(), 1);
    assert_eq!(foreign[0].first_seen_at, at(T0 + 10));
    assert_eq!(foreign[0].gone_at, Some(at(T0 + 12)));
    let open = store.open_intents().unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].started_at, at(T0 + 70));
    // The new tables start empty.
    assert!(store.open_requests(&channel).unwrap().is_empty());
}

#[test]
fn a_migration_that_fails_midway_leaves_version_3_and_every_old_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = version_3_database(dir.path());
    // A table of the name 0004 creates: its CREATE TABLE fails after every
    // UPDATE of the conversion has run.
    let (columns, before) = {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE requests (note TEXT); INSERT INTO requests VALUES ('x');")
            .unwrap();
        let columns = time_columns(&conn);
        (columns.clone(), values(&conn, &columns))
    };

    let Err(err) = Store::open(&path) else {
        panic!("the migration must fail");
    };
    assert!(
        matches!(err, StoreError::Migration { version: 4, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("0004_store_milliseconds_and_engine_state"),
        "{text}"
    );

    let conn = Connection::open(&path).unwrap();
    assert_eq!(user_version(&conn), 3);
    assert_eq!(
        values(&conn, &columns),
        before,
        "a conversion step survived"
    );
    let intent_columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('issue_intents')")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        !intent_columns.iter().any(|c| c == "maybe_issued"),
        "{intent_columns:?}"
    );
    let alerts: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'alerts'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(alerts, 0, "the alerts table survived the rollback");
    drop(conn);

    // Once the conflict is gone, the same database converts.
    Connection::open(&path)
        .unwrap()
        .execute_batch("DROP TABLE requests;")
        .unwrap();
    let store = Store::open(&path).unwrap();
    assert_eq!(store.migrated().to, migrate::latest_version());
    let k1 = store.token(&KeyId::new("k1")).unwrap().unwrap();
    assert_eq!(k1.record.expires_at, at(T0 + 41 + 2_592_000));
}
