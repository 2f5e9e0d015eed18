//! The store: migrations, file mode and WAL, the writer lock, the
//! issuance journal, reconcile, and the rule that no table but `tokens` ever
//! holds a token value. Every test uses its own temp directory; the tests
//! of what both backends do run on SQLite and on PostgreSQL (`backends`),
//! each in a fresh database.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use linetokd::domain::{AccessToken, ChannelId, GroupName, KeyId, TokenState};
use linetokd::store::migrate::{self, Migration};
use linetokd::store::{
    ChannelSpec, EventKind, ForeignKid, FullHold, GroupRuntime, IntentOutcome, IssuedToken,
    NewEvent, ReconcileRuntime, Scope, Store, StoreError, WriterLock,
};
use rusqlite::Connection;
use tempfile::TempDir;

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000, 0).unwrap()
}

fn fresh() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("linetokd.db");
    (dir, path)
}

fn ch(id: &str) -> ChannelId {
    ChannelId::new(id)
}

fn gr(name: &str) -> GroupName {
    GroupName::new(name)
}

fn kid(id: &str) -> KeyId {
    KeyId::new(id)
}

/// One channel `1000` with groups `backend` and `crm`.
fn synced_store(path: &Path) -> Store {
    let store = Store::open(path).unwrap();
    sync_shop_bot(&store);
    store
}

/// Syncs channel `1000` with groups `backend` and `crm` into `store`.
fn sync_shop_bot(store: &Store) {
    store
        .sync_config(
            t0(),
            &[ChannelSpec {
                id: ch("1000"),
                name: "shop-bot".into(),
                groups: vec![gr("backend"), gr("crm")],
                fingerprint: None,
                short_lived: Vec::new(),
            }],
        )
        .unwrap();
}

fn issued(key_id: &str, value: &str, at: DateTime<Utc>) -> IssuedToken {
    IssuedToken {
        key_id: kid(key_id),
        value: AccessToken::new(value),
        issued_at: at,
        expires_at: at + Duration::days(30),
        verified_at: Some(at),
    }
}

/// Issues a token for `group` of channel `1000` through the journal.
fn issue(store: &Store, group: &str, key_id: &str, value: &str, at: DateTime<Utc>) {
    let intent = store.begin_issue(at, &ch("1000"), &gr(group)).unwrap();
    store
        .complete_issue(at, intent, &issued(key_id, value, at), &[])
        .unwrap();
}

fn user_version(path: &Path) -> i64 {
    let conn = Connection::open(path).unwrap();
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

#[test]
fn migrations_apply_on_a_fresh_database() {
    let (_dir, path) = fresh();
    let store = Store::open(&path).unwrap();
    let latest = migrate::latest_version();
    assert!(latest >= 1);
    assert_eq!(store.migrated().from, 0);
    assert_eq!(store.migrated().to, latest);
    drop(store);
    assert_eq!(user_version(&path), i64::from(latest));
    let conn = Connection::open(&path).unwrap();
    for table in [
        "channels",
        "groups",
        "tokens",
        "issue_intents",
        "events",
        "foreign_kids",
    ] {
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [table],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1, "table {table} missing");
    }
}

#[test]
fn reopening_a_current_database_applies_nothing_and_keeps_data() {
    let (_dir, path) = fresh();
    let store = synced_store(&path);
    issue(&store, "backend", "k1", "tok-1", t0());
    drop(store);

    let store = Store::open(&path).unwrap();
    assert!(store.migrated().was_current(), "{:?}", store.migrated());
    let err = Store::migrate(&path).unwrap_err();
    assert!(
        matches!(err, StoreError::Locked { .. }),
        "migrate beside a running daemon: {err:?}"
    );
    drop(store);
    let again = Store::migrate(&path).unwrap();
    assert!(again.was_current());
    let store = Store::open(&path).unwrap();
    let tokens = store.tokens_of_group(&ch("1000"), &gr("backend")).unwrap();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].value.expose(), "tok-1");
}

#[test]
fn a_database_newer_than_the_binary_is_refused_by_name_and_versions() {
    let (_dir, path) = fresh();
    drop(Store::open(&path).unwrap());
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();

    let known = migrate::latest_version();
    for err in [
        Store::open(&path).unwrap_err(),
        Store::open_read_only(&path).unwrap_err(),
    ] {
        assert!(
            matches!(err, StoreError::TooNew { found: 99, .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("99"), "{msg}");
        assert!(msg.contains(&format!("up to {known}")), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
    }
    assert_eq!(user_version(&path), 99, "a refused database is left alone");
}

#[test]
fn a_failing_migration_is_rolled_back_with_its_version_bump() {
    let (_dir, path) = fresh();
    let good = Migration {
        version: 1,
        name: "0001_first",
        sql: "CREATE TABLE first (a INTEGER);",
    };
    let broken = Migration {
        version: 2,
        name: "0002_break_things",
        sql: "CREATE TABLE half_done (a INTEGER); INSERT INTO first VALUES (1); CREATE TABLE oops (",
    };
    let mut conn = Connection::open(&path).unwrap();
    let err = migrate::apply(&mut conn, &[good, broken]).unwrap_err();
    assert!(
        matches!(err, StoreError::Migration { version: 2, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("0002_break_things"), "{err}");
    assert_eq!(migrate::schema_version(&conn).unwrap(), 1);
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(tables, ["first"], "migration 2 left a trace");
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM first", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0, "migration 2's insert survived");

    let fixed = Migration {
        version: 2,
        name: "0002_fixed",
        sql: "CREATE TABLE second (a INTEGER);",
    };
    let done = migrate::apply(&mut conn, &[good, fixed]).unwrap();
    assert_eq!((done.from, done.to), (1, 2));
}

#[test]
fn database_files_are_private() {
    let (_dir, path) = fresh();
    let store = synced_store(&path);
    issue(&store, "backend", "k1", "tok-1", t0());
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&with_suffix(&path, "-wal")), 0o600);
    assert_eq!(mode(&with_suffix(&path, "-shm")), 0o600);
    assert_eq!(mode(&with_suffix(&path, ".lock")), 0o600);
    drop(store);

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    drop(Store::open(&path).unwrap());
    assert_eq!(mode(&path), 0o600, "a loose existing file is tightened");
}

#[test]
fn the_database_runs_in_wal_mode() {
    let (_dir, path) = fresh();
    let _store = Store::open(&path).unwrap();
    let conn = Connection::open(&path).unwrap();
    let journal: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(journal, "wal");
}

#[test]
fn a_missing_directory_is_named_and_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir");
    let path = missing.join("linetokd.db");
    let err = Store::open(&path).unwrap_err();
    assert!(
        matches!(err, StoreError::MissingDirectory { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
    assert!(!missing.exists());
}

#[test]
fn a_database_path_that_is_a_directory_is_refused_untouched() {
    let (_dir, path) = fresh();
    std::fs::create_dir(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::File { .. }), "{err:?}");
    assert!(err.to_string().contains("not a regular file"), "{err}");
    assert_eq!(mode(&path), 0o755);
}

#[test]
fn a_second_writer_is_refused_with_the_holders_pid_until_the_first_drops() {
    let (_dir, path) = fresh();
    let first = WriterLock::acquire(&path).unwrap();
    let pid = std::process::id();

    let err = WriterLock::acquire(&path).unwrap_err();
    assert!(
        matches!(err, StoreError::Locked { pid: Some(p), .. } if p == pid),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("another linetokd (pid {pid}) is using {}", path.display())
    );
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");

    drop(first);
    let store = Store::open(&path).unwrap();
    let err = WriterLock::acquire(&path).unwrap_err();
    assert!(
        matches!(err, StoreError::Locked { .. }),
        "the store holds the lock: {err:?}"
    );
    let clone = store.clone();
    drop(store);
    assert!(
        WriterLock::acquire(&path).is_err(),
        "a live clone keeps the lock"
    );
    drop(clone);
    WriterLock::acquire(&path).unwrap();
}

#[test]
fn a_reader_works_while_the_writer_holds_the_lock() {
    let (_dir, path) = fresh();
    let writer = synced_store(&path);
    issue(&writer, "backend", "k1", "tok-1", t0());

    let reader = Store::open_read_only(&path).unwrap();
    assert!(reader.is_read_only());
    let tokens = reader.tokens_of_group(&ch("1000"), &gr("backend")).unwrap();
    assert_eq!(tokens.len(), 1);

    issue(&writer, "crm", "k2", "tok-2", t0() + Duration::minutes(1));
    assert_eq!(reader.live_tokens_of_channel(&ch("1000")).unwrap().len(), 2);

    let err = reader
        .begin_issue(t0(), &ch("1000"), &gr("backend"))
        .unwrap_err();
    assert!(matches!(err, StoreError::ReadOnly { .. }), "{err:?}");

    // `linetokd status` after the daemon stopped (its WAL checkpointed away).
    drop(reader);
    drop(writer);
    let reader = Store::open_read_only(&path).unwrap();
    assert_eq!(reader.live_tokens_of_channel(&ch("1000")).unwrap().len(), 2);
}

#[test]
fn read_only_open_refuses_missing_and_unmigrated_databases() {
    let (_dir, path) = fresh();
    let err = Store::open_read_only(&path).unwrap_err();
    assert!(matches!(err, StoreError::NoDatabase { .. }), "{err:?}");
    assert!(!path.exists(), "a reader never creates the database");

    drop(Connection::open(&path).unwrap());
    let err = Store::open_read_only(&path).unwrap_err();
    assert!(
        matches!(err, StoreError::NeedsMigration { found: 0, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("linetokd migrate"), "{err}");
}

#[test]
fn complete_issue_stores_the_token_and_closes_the_intent_in_one_transaction() {
    for b in backends("complete_issue_one_transaction") {
        let store = &b.store;
        synced(&b);
        let at = t0() + Duration::seconds(5);
        let intent = store.begin_issue(at, &ch("1000"), &gr("backend")).unwrap();
        assert_eq!(store.open_intents().unwrap().len(), 1, "{}", b.name);

        let stored = store
            .complete_issue(at, intent, &issued("k1", "tok-1", at), &[])
            .unwrap()
            .token;
        assert_eq!(stored.record.state, TokenState::Live);
        assert_eq!(stored.record.expires_at, at + Duration::days(30));
        assert_eq!(stored.intent, Some(intent));
        assert_eq!(stored.record.verified_at, Some(at));
        assert_eq!(stored.value.expose(), "tok-1");
        let journal = store.intent(intent).unwrap().unwrap();
        assert_eq!(journal.outcome, IntentOutcome::Issued);
        assert_eq!(journal.key_id, Some(kid("k1")));
        assert!(store.open_intents().unwrap().is_empty());
        assert_eq!(
            b.last_event(),
            ("issued".to_owned(), Some("k1".to_owned())),
            "{}",
            b.name
        );

        // A failure in the transaction's last step (the event insert) must
        // undo the token insert and leave the intent open.
        let (sabotage, unsabotage) = if b.is_postgres() {
            (
                "CREATE FUNCTION sabotage() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'sabotaged'; END $$; \
                 CREATE TRIGGER sabotage BEFORE INSERT ON events FOR EACH ROW \
                 WHEN (NEW.kind = 'issued') EXECUTE FUNCTION sabotage();",
                "DROP TRIGGER sabotage ON events;",
            )
        } else {
            (
                "CREATE TRIGGER sabotage BEFORE INSERT ON events WHEN NEW.kind = 'issued' \
                 BEGIN SELECT RAISE(ABORT, 'sabotaged'); END;",
                "DROP TRIGGER sabotage;",
            )
        };
        b.batch(sabotage);
        let intent2 = store.begin_issue(at, &ch("1000"), &gr("crm")).unwrap();
        let err = store
            .complete_issue(at, intent2, &issued("k2", "tok-2", at), &[])
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Query { .. } | StoreError::Postgres { .. }),
            "{}: {err:?}",
            b.name
        );
        assert!(
            store.token(&kid("k2")).unwrap().is_none(),
            "{}: token survived a failed transaction",
            b.name
        );
        assert_eq!(
            store.intent(intent2).unwrap().unwrap().outcome,
            IntentOutcome::Open
        );

        // Completing a closed intent, or storing a key ID twice, is refused.
        let err = store
            .complete_issue(at, intent, &issued("k3", "tok-3", at), &[])
            .unwrap_err();
        assert!(matches!(err, StoreError::IntentClosed { .. }), "{err:?}");
        b.batch(unsabotage);
        let err = store
            .complete_issue(at, intent2, &issued("k1", "tok-other", at), &[])
            .unwrap_err();
        assert!(
            matches!(err, StoreError::DuplicateToken { .. }),
            "{}: {err:?}",
            b.name
        );
        assert!(!format!("{err} {err:?}").contains("tok-other"));
        store
            .complete_issue(at, intent2, &issued("k2", "tok-2", at), &[])
            .unwrap();
    }
}

#[test]
fn open_intents_of_a_crashed_run_are_listed_then_closed_as_lost() {
    for b in backends("open_intents_closed_as_lost") {
        synced(&b);
        let intent = b
            .store
            .begin_issue(t0(), &ch("1000"), &gr("backend"))
            .unwrap();
        // The daemon dies between asking LINE and storing the answer.
        let b = b.restart();
        let store = &b.store;
        let open = store.open_intents().unwrap();
        assert_eq!(open.len(), 1, "{}", b.name);
        assert_eq!((open[0].id, open[0].group.clone()), (intent, gr("backend")));

        let err = store
            .begin_issue(t0() + Duration::minutes(1), &ch("1000"), &gr("backend"))
            .unwrap_err();
        assert!(
            matches!(err, StoreError::IssueInFlight { intent: i, .. } if i == intent),
            "{}: {err:?}",
            b.name
        );

        let later = t0() + Duration::minutes(2);
        let lost = store.close_lost_intents(later).unwrap();
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].outcome, IntentOutcome::Lost);
        assert_eq!(lost[0].finished_at, Some(later));
        assert!(store.open_intents().unwrap().is_empty());
        assert_eq!(b.last_event().0, "intent_lost", "{}", b.name);
        assert_eq!(
            store.unsettled_issues(&ch("1000"), 0).unwrap(),
            [gr("backend")]
        );

        let err = store
            .complete_issue(later, intent, &issued("k1", "tok-1", later), &[])
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::IntentClosed {
                    outcome: "lost",
                    ..
                }
            ),
            "{}: {err:?}",
            b.name
        );
        store
            .begin_issue(later, &ch("1000"), &gr("backend"))
            .unwrap();
    }
}

/// Under a full hold the policy counts our tokens that the last listing
/// saw and that expired since (LINE may count them a moment longer); the
/// snapshot holds live tokens only, so the store counts them.
#[test]
fn tokens_expired_since_a_listing_are_counted_for_a_full_hold() {
    for b in backends("expired_since_listing") {
        let store = &b.store;
        sync_one_channel(store);
        let listed = t0() + Duration::days(30) - Duration::seconds(10);
        // Expires 10 s after the listing: counted once expired.
        issue(store, "backend", "ours-a", "tok-a", t0());
        // Issued after the listing: not the listing's.
        issue(
            store,
            "crm",
            "ours-b",
            "tok-b",
            listed + Duration::seconds(1),
        );
        let now = listed + Duration::seconds(11);
        let channel = ch("1000");
        assert_eq!(
            store.expired_since_listing(&channel, listed, now).unwrap(),
            1,
            "{}",
            b.name
        );
        assert_eq!(
            store
                .expired_since_listing(&channel, listed, listed + Duration::seconds(4))
                .unwrap(),
            0,
            "{}: not expired yet",
            b.name
        );
        // Marked expired by the rotator: still counted.
        assert_eq!(
            store.expire_due_in(now, &channel).unwrap(),
            [kid("ours-a")],
            "{}",
            b.name
        );
        assert_eq!(
            store.expired_since_listing(&channel, listed, now).unwrap(),
            1,
            "{}",
            b.name
        );
    }
}

/// Found by an outside test: a token that expired while LINE built the
/// list (2 ms after it was asked for) was marked gone, with a warning that
/// someone revoked it outside linetokd. Missing that close to its expiry,
/// it expired; one missing with time left is gone.
#[test]
fn a_token_missing_from_the_list_at_its_expiry_expired_rather_than_went() {
    for b in backends("unlisted_at_expiry") {
        let store = &b.store;
        sync_one_channel(store);
        let asked = t0() + Duration::days(30) - Duration::milliseconds(2);
        issue(store, "backend", "ours-a", "tok-a", t0());
        issue(store, "crm", "ours-b", "tok-b", t0() + Duration::days(1));
        let report = store
            .reconcile(
                asked,
                &ch("1000"),
                &[],
                store.newest_intent_id(&ch("1000")).unwrap(),
            )
            .unwrap();
        assert_eq!(report.expired, [kid("ours-a")], "{}", b.name);
        assert_eq!(report.gone, [kid("ours-b")], "{}", b.name);
        assert_eq!(report.ours_live, 0, "{}", b.name);
        let a = store.token(&kid("ours-a")).unwrap().unwrap();
        assert_eq!(a.record.state, TokenState::Expired, "{}", b.name);
    }
}

#[test]
fn reconcile_marks_ours_gone_and_foreign_keeping_first_seen() {
    for b in backends("reconcile_marks_ours_gone") {
        let store = &b.store;
        sync_one_channel(store);
        issue(store, "backend", "ours-a", "tok-a", t0());
        issue(store, "crm", "ours-b", "tok-b", t0());
        // Issued before the token of another group expires: a short-lived one.
        let intent = store.begin_issue(t0(), &ch("1000"), &gr("crm")).unwrap();
        let mut short = issued("ours-old", "tok-old", t0() - Duration::days(29));
        short.expires_at = t0() + Duration::hours(1);
        store.complete_issue(t0(), intent, &short, &[]).unwrap();

        let t1 = t0() + Duration::hours(2);
        let report = store
            .reconcile(
                t1,
                &ch("1000"),
                &[kid("ours-a"), kid("f1"), kid("ours-old")],
                store.newest_intent_id(&ch("1000")).unwrap(),
            )
            .unwrap();
        assert_eq!(
            report.expired,
            [kid("ours-old")],
            "expired before judged gone"
        );
        assert_eq!(report.gone, [kid("ours-b")]);
        assert_eq!(report.new_foreign, [kid("f1")]);
        assert_eq!((report.ours_live, report.foreign_live), (1, 1));
        let ours_b = store.token(&kid("ours-b")).unwrap().unwrap();
        assert_eq!(ours_b.record.state, TokenState::Gone);
        assert_eq!(ours_b.state_changed_at, t1);
        assert_eq!(
            store
                .channel(&ch("1000"))
                .unwrap()
                .unwrap()
                .last_reconcile_at,
            Some(t1)
        );

        // A token issued after the list was requested is not judged by it.
        let t2 = t1 + Duration::hours(1);
        issue(store, "crm", "ours-new", "tok-new", t2);
        let report = store
            .reconcile(
                t2,
                &ch("1000"),
                &[kid("ours-a"), kid("f1"), kid("f2")],
                store.newest_intent_id(&ch("1000")).unwrap(),
            )
            .unwrap();
        assert!(report.gone.is_empty(), "{report:?}");
        assert_eq!(report.new_foreign, [kid("f2")], "f1 is not new again");
        assert_eq!((report.ours_live, report.foreign_live), (2, 2));
        let f1 = store
            .foreign_kids(&ch("1000"))
            .unwrap()
            .into_iter()
            .find(|f| f.key_id == kid("f1"))
            .unwrap();
        assert_eq!(
            (f1.first_seen_at, f1.last_seen_at, f1.gone_at),
            (t1, t2, None)
        );

        let t3 = t2 + Duration::hours(1);
        let report = store
            .reconcile(
                t3,
                &ch("1000"),
                &[kid("ours-a"), kid("ours-new"), kid("f2")],
                store.newest_intent_id(&ch("1000")).unwrap(),
            )
            .unwrap();
        assert_eq!(report.foreign_gone, [kid("f1")]);
        assert!(report.new_foreign.is_empty());
        let kinds: Vec<EventKind> = store
            .events_of_channel(&ch("1000"), 100)
            .unwrap()
            .iter()
            .map(|e| e.kind)
            .collect();
        for k in [
            EventKind::Gone,
            EventKind::Expired,
            EventKind::ForeignSeen,
            EventKind::ForeignGone,
        ] {
            assert!(kinds.contains(&k), "no {k} event in {kinds:?}");
        }

        // A key ID first seen as foreign that turns out to be ours (a reconcile
        // ran while LINE was answering our issue) leaves the foreign list.
        let intent = store.begin_issue(t3, &ch("1000"), &gr("backend")).unwrap();
        store
            .complete_issue(t3, intent, &issued("f2", "tok-f2", t3), &[])
            .unwrap();
        assert!(
            store
                .foreign_kids(&ch("1000"))
                .unwrap()
                .iter()
                .all(|f| f.key_id != kid("f2"))
        );

        let err = store.reconcile(t3, &ch("9999"), &[], 0).unwrap_err();
        assert!(matches!(err, StoreError::UnknownChannel { .. }), "{err:?}");
    }
}

#[test]
fn issue_times_since_counts_every_attempt_across_restarts() {
    for b in backends("issue_times_across_restarts") {
        synced(&b);
        sync(
            &b,
            t0(),
            &[
                ChannelSpec {
                    id: ch("1000"),
                    name: "shop-bot".into(),
                    groups: vec![gr("backend"), gr("crm")],
                    fingerprint: None,
                    short_lived: Vec::new(),
                },
                ChannelSpec {
                    id: ch("2000"),
                    name: "other".into(),
                    groups: vec![gr("backend")],
                    fingerprint: None,
                    short_lived: Vec::new(),
                },
            ],
        );
        let store = &b.store;
        issue(
            store,
            "backend",
            "old",
            "tok-old",
            t0() - Duration::hours(2),
        );
        issue(store, "backend", "k1", "tok-1", t0());
        let failed = store
            .begin_issue(t0() + Duration::minutes(10), &ch("1000"), &gr("crm"))
            .unwrap();
        store
            .fail_issue(
                t0() + Duration::minutes(11),
                failed,
                "LINE answered 500",
                true,
            )
            .unwrap();
        store
            .begin_issue(t0() + Duration::minutes(20), &ch("1000"), &gr("crm"))
            .unwrap();
        store
            .begin_issue(t0() + Duration::minutes(20), &ch("2000"), &gr("backend"))
            .unwrap();
        let b = b.restart(); // crash with two intents open

        let store = &b.store;
        store
            .close_lost_intents(t0() + Duration::minutes(30))
            .unwrap();
        let times = store
            .issue_times_since(&ch("1000"), t0() - Duration::minutes(30))
            .unwrap()
            .into_iter()
            .map(|(_, at)| at)
            .collect::<Vec<_>>();
        assert_eq!(
            times,
            [
                t0(),
                t0() + Duration::minutes(10),
                t0() + Duration::minutes(20)
            ],
            "{}",
            b.name
        );
        let all = store
            .issue_times_in(Scope::All, t0() - Duration::minutes(30))
            .unwrap();
        assert_eq!(all.len(), 4, "{}: {all:?}", b.name);
        assert_eq!(all[3].0, ch("2000"));
        let failed = store.intent(failed).unwrap().unwrap();
        assert_eq!(failed.outcome, IntentOutcome::Failed);
        assert_eq!(failed.error.as_deref(), Some("LINE answered 500"));
        assert_eq!(
            store
                .intents_since(&ch("1000"), t0() - Duration::minutes(30))
                .unwrap()
                .len(),
            3
        );
        let unfinished = store
            .unfinished_intents_in(Scope::Channel(&ch("1000")), t0())
            .unwrap();
        assert_eq!(
            unfinished.iter().map(|i| i.outcome).collect::<Vec<_>>(),
            [IntentOutcome::Failed, IntentOutcome::Lost],
            "{}",
            b.name
        );
        let unknown = store
            .unknown_outcomes_since(&ch("1000"), t0())
            .unwrap()
            .into_iter()
            .map(|(_, group, at)| (group, at))
            .collect::<Vec<_>>();
        assert_eq!(
            unknown,
            [
                (gr("crm"), t0() + Duration::minutes(10)),
                (gr("crm"), t0() + Duration::minutes(20))
            ]
        );
        assert!(store.newest_intent_id(&ch("1000")).unwrap() > failed.id.get());
        assert_eq!(store.newest_intent_id(&ch("9999")).unwrap(), 0);
    }
}

#[test]
fn no_table_but_tokens_ever_holds_a_token_value() {
    for b in backends("no_table_but_tokens") {
        synced(&b);
        let store = &b.store;
        let value = "eyJhbGciOiJIUzI1NiJ9.SECRET-TOKEN-VALUE.sig";
        let at = t0();
        let intent = store.begin_issue(at, &ch("1000"), &gr("backend")).unwrap();
        let stored = store
            .complete_issue(at, intent, &issued("k1", value, at), &[])
            .unwrap();
        assert!(!format!("{stored:?}").contains(value));
        store.record_verified(at, &kid("k1")).unwrap();

        // Careless callers hand the value to every free-text column.
        let careless = format!("LINE said: {{\"access_token\":\"{value}\"}}");
        let failed = store
            .begin_issue(at + Duration::minutes(1), &ch("1000"), &gr("crm"))
            .unwrap();
        store
            .fail_issue(at + Duration::minutes(1), failed, &careless, true)
            .unwrap();
        store.mark_refused(at, &kid("k1"), &careless).unwrap();
        store
            .record_long_lived(&linetokd::store::LongLivedRow {
                channel: ch("1000"),
                fingerprint: "sha256:0123abcd".to_owned(),
                role: linetokd::store::LongLivedRole::Current,
                first_seen_at: at,
                last_valid_at: None,
                last_checked_at: Some(at),
                result: linetokd::store::LongLivedResult::Invalid,
                detail: careless.clone(),
                retired_at: None,
            })
            .unwrap();
        checked(
            &b,
            store.record_event(
                at,
                &NewEvent {
                    channel_id: ch("1000"),
                    group: Some(gr("backend")),
                    key_id: Some(kid("k1")),
                    kind: EventKind::VerifyFailed,
                    detail: careless.clone(),
                },
            ),
        );
        checked(
            &b,
            store.set_group_runtime(
                &ch("1000"),
                &gr("backend"),
                &GroupRuntime {
                    last_error: Some(careless.clone()),
                    last_error_at: Some(at),
                    consecutive_failures: 1,
                    retry_not_before: Some(at + Duration::minutes(5)),
                    failure_kind: None,
                    failed_step: None,
                },
            ),
        );
        checked(
            &b,
            store.reconcile(
                at + Duration::minutes(2),
                &ch("1000"),
                &[kid("k1"), kid("foreign")],
                store.newest_intent_id(&ch("1000")).unwrap(),
            ),
        );
        assert!(
            store
                .set_token_state(
                    at + Duration::minutes(3),
                    &kid("k1"),
                    TokenState::Revoked,
                    &careless
                )
                .unwrap()
        );
        let runtime = checked(&b, store.group(&ch("1000"), &gr("backend")))
            .unwrap()
            .runtime;
        assert_eq!(runtime.consecutive_failures, 1);
        assert!(!runtime.last_error.unwrap().contains(value));
        let b = b.restart();
        assert_eq!(
            b.store.token(&kid("k1")).unwrap().unwrap().value.expose(),
            value
        );
        let OnBackend {
            name, store, at, ..
        } = b;
        drop(store);

        let holders = match &at {
            Place::Sqlite(path) => sqlite_holders(path, value),
            Place::Postgres(url) => postgres_holders(url, value),
        };
        assert_eq!(holders, ["tokens.access_token"], "{name}");
    }
}

/// Every `table.column` of the SQLite database at `path` whose text holds
/// `value`.
fn sqlite_holders(path: &Path, value: &str) -> Vec<String> {
    let conn = Connection::open(path).unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut holders = Vec::new();
    for table in &tables {
        let columns: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info(?1)")
            .unwrap()
            .query_map([table], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for column in columns {
            let n: i64 = conn
                .query_row(
                    &format!(
                        "SELECT count(*) FROM \"{table}\" WHERE instr(CAST(\"{column}\" AS TEXT), ?1) > 0"
                    ),
                    [value],
                    |r| r.get(0),
                )
                .unwrap();
            if n > 0 {
                holders.push(format!("{table}.{column}"));
            }
        }
    }
    holders
}

/// Every `table.column` of every table of the PostgreSQL database at
/// `url` (all schemas but the system's) whose content holds `value`: text
/// and every other type through its text form, bytes as bytes.
fn postgres_holders(url: &str, value: &str) -> Vec<String> {
    OnBackend::on_postgres(url, async |c| {
        let columns = c
            .query(
                "SELECT c.table_schema, c.table_name, c.column_name, c.data_type \
                 FROM information_schema.columns c JOIN information_schema.tables t \
                 ON t.table_schema = c.table_schema AND t.table_name = c.table_name \
                 WHERE t.table_type = 'BASE TABLE' \
                 AND c.table_schema NOT IN ('pg_catalog', 'information_schema') \
                 ORDER BY 1, 2, c.ordinal_position",
                &[],
            )
            .await
            .unwrap();
        assert!(columns.len() > 50, "only {} columns found", columns.len());
        let mut holders = Vec::new();
        for row in &columns {
            let (schema, table, column, ty): (String, String, String, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            let test = if ty == "bytea" {
                format!("position(convert_to($1, 'UTF8') IN \"{column}\") > 0")
            } else {
                format!("strpos(CAST(\"{column}\" AS TEXT), $1) > 0")
            };
            let n: i64 = c
                .query_one(
                    &format!("SELECT count(*) FROM \"{schema}\".\"{table}\" WHERE {test}"),
                    &[&value],
                )
                .await
                .unwrap()
                .get(0);
            if n > 0 {
                holders.push(format!("{table}.{column}"));
            }
        }
        holders
    })
}

#[test]
fn sync_config_marks_removed_rows_and_restores_returning_ones() {
    for b in backends("sync_config_marks_removed_rows") {
        let store = &b.store;
        let name = b.name;
        sync_one_channel(store);
        issue(store, "crm", "k1", "tok-1", t0());
        let t1 = t0() + Duration::hours(1);
        let report = store
            .sync_config(
                t1,
                &[
                    ChannelSpec {
                        id: ch("1000"),
                        name: "renamed".into(),
                        groups: vec![gr("backend")],
                        fingerprint: None,
                        short_lived: Vec::new(),
                    },
                    ChannelSpec {
                        id: ch("2000"),
                        name: "new".into(),
                        groups: vec![gr("x")],
                        fingerprint: None,
                        short_lived: Vec::new(),
                    },
                ],
            )
            .unwrap();
        assert_eq!(report.added_channels, [ch("2000")], "{name}");
        assert_eq!(report.removed_groups, [(ch("1000"), gr("crm"))], "{name}");
        assert_eq!(report.added_groups, [(ch("2000"), gr("x"))], "{name}");
        let crm = store.group(&ch("1000"), &gr("crm")).unwrap().unwrap();
        assert_eq!(crm.removed_at, Some(t1), "{name}");
        assert_eq!(store.channel(&ch("1000")).unwrap().unwrap().name, "renamed");
        assert_eq!(
            store
                .tokens_of_group(&ch("1000"), &gr("crm"))
                .unwrap()
                .len(),
            1
        );
        let err = store.begin_issue(t1, &ch("1000"), &gr("crm")).unwrap_err();
        assert!(matches!(err, StoreError::GroupRemoved { .. }), "{err:?}");
        let err = store.begin_issue(t1, &ch("1000"), &gr("nope")).unwrap_err();
        assert!(matches!(err, StoreError::UnknownGroup { .. }), "{err:?}");

        let t2 = t1 + Duration::hours(1);
        let report = store
            .sync_config(
                t2,
                &[ChannelSpec {
                    id: ch("1000"),
                    name: "renamed".into(),
                    groups: vec![gr("backend"), gr("crm")],
                    fingerprint: None,
                    short_lived: Vec::new(),
                }],
            )
            .unwrap();
        assert_eq!(report.removed_channels, [ch("2000")], "{name}");
        assert_eq!(report.removed_groups, [(ch("2000"), gr("x"))], "{name}");
        assert_eq!(report.added_groups, [(ch("1000"), gr("crm"))], "{name}");
        assert!(
            store
                .group(&ch("1000"), &gr("crm"))
                .unwrap()
                .unwrap()
                .is_active(),
            "{name}"
        );
        let channels = store.channels().unwrap();
        assert_eq!(channels.len(), 2, "{name}");
        assert_eq!(channels[1].removed_at, Some(t2), "{name}");
        assert!(
            store
                .all_groups()
                .unwrap()
                .iter()
                .any(|g| g.name == gr("x") && g.removed_at == Some(t2)),
            "{name}"
        );
        let kinds: Vec<EventKind> = store
            .events_of_channel(&ch("2000"), 10)
            .unwrap()
            .iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            kinds,
            [
                EventKind::GroupRemoved,
                EventKind::ChannelRemoved,
                EventKind::GroupAdded,
                EventKind::ChannelAdded
            ],
            "{name}: newest first"
        );

        let unchanged = store
            .sync_config(
                t2,
                &[ChannelSpec {
                    id: ch("1000"),
                    name: "renamed".into(),
                    groups: vec![gr("backend"), gr("crm")],
                    fingerprint: None,
                    short_lived: Vec::new(),
                }],
            )
            .unwrap();
        assert!(unchanged.is_empty(), "{name}: {unchanged:?}");

        // A channel listed twice breaks its primary key: the whole sync is
        // rolled back, the first listing's changes with it.
        let twice = ChannelSpec {
            id: ch("3000"),
            name: "twice".into(),
            groups: vec![gr("a")],
            fingerprint: None,
            short_lived: Vec::new(),
        };
        let err = store.sync_config(t2, &[twice.clone(), twice]).unwrap_err();
        assert!(!err.is_fatal(), "{name}: {err:?}");
        assert_eq!(store.channel(&ch("3000")).unwrap(), None, "{name}");
        assert_eq!(store.channels().unwrap().len(), 2, "{name}");
    }
}

/// What the driver rounds and `status` read: the live tokens' records
/// without their values, the same rows in the same order as with them.
#[test]
fn live_records_are_the_live_tokens_without_their_values() {
    for b in backends("live_records") {
        synced(&b);
        let store = &b.store;
        issue(
            store,
            "crm",
            "k2",
            "tok-2",
            t0() + Duration::milliseconds(1),
        );
        issue(store, "backend", "k1", "tok-1", t0());
        issue(store, "backend", "k3", "tok-3", t0() + Duration::seconds(5));
        store
            .set_token_state(t0(), &kid("k3"), TokenState::Revoked, "superseded")
            .unwrap();
        for scope in [Scope::Channel(&ch("1000")), Scope::All] {
            let with_values = store.live_tokens_in(scope).unwrap();
            let records = store.live_records_in(scope).unwrap();
            assert_eq!(records.len(), 2, "{}", b.name);
            for (full, bare) in with_values.iter().zip(&records) {
                assert_eq!(full.record, bare.record);
                assert_eq!(full.group, bare.group);
                assert_eq!(full.channel_id, bare.channel_id);
            }
            assert_eq!(records[0].record.key_id, kid("k1"), "oldest first");
            assert_eq!(with_values[0].value.expose(), "tok-1");
        }
    }
}

/// Tokens issued in the same millisecond are listed by key ID in byte
/// order on both backends, whatever PostgreSQL's collation, and one
/// group's tokens in every state come back oldest first.
#[test]
fn same_millisecond_tokens_are_ordered_by_key_id_bytes_on_both_backends() {
    for b in backends("same_millisecond_tokens") {
        if b.is_postgres() {
            // The test cluster's collation is C, which is byte order: a
            // linguistic one (ICU's root locale, case-blind first) would
            // put `a-kid` before `B-kid` unless the query asks for bytes.
            b.batch("ALTER TABLE tokens ALTER COLUMN key_id TYPE TEXT COLLATE \"und-x-icu\"");
        }
        synced(&b);
        let store = &b.store;
        issue(store, "backend", "a-kid", "tok-a", t0());
        issue(store, "backend", "B-kid", "tok-b", t0());
        issue(
            store,
            "backend",
            "older",
            "tok-o",
            t0() - Duration::seconds(1),
        );
        store
            .set_token_state(t0(), &kid("older"), TokenState::Gone, "not listed")
            .unwrap();
        let kids = |tokens: Vec<linetokd::store::StoredToken>| {
            tokens
                .into_iter()
                .map(|t| t.record.key_id.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            kids(store.tokens_of_group(&ch("1000"), &gr("backend")).unwrap()),
            ["older", "B-kid", "a-kid"],
            "{}",
            b.name
        );
        assert_eq!(
            kids(store.live_tokens_of_channel(&ch("1000")).unwrap()),
            ["B-kid", "a-kid"],
            "{}",
            b.name
        );
        let expired = store
            .expire_due_in(t0() + Duration::days(30), &ch("1000"))
            .unwrap();
        assert_eq!(expired, [kid("B-kid"), kid("a-kid")], "{}", b.name);
    }
}

#[test]
fn a_token_leaves_the_live_state_once_and_keeps_its_first_cause() {
    for b in backends("token_leaves_live_once") {
        synced(&b);
        let store = &b.store;
        issue(store, "backend", "k1", "tok-1", t0());
        let t1 = t0() + Duration::hours(1);
        assert!(
            store
                .set_token_state(t1, &kid("k1"), TokenState::Revoked, "superseded")
                .unwrap()
        );
        assert!(
            !store
                .set_token_state(t1, &kid("k1"), TokenState::Gone, "not listed")
                .unwrap()
        );
        let k1 = store.token(&kid("k1")).unwrap().unwrap();
        assert_eq!(k1.record.state, TokenState::Revoked, "{}", b.name);
        assert_eq!(k1.state_reason.as_deref(), Some("superseded"));
        assert_eq!(k1.state_changed_at, t1);
        assert!(
            store
                .live_tokens_of_channel(&ch("1000"))
                .unwrap()
                .is_empty()
        );
        let err = store
            .set_token_state(t1, &kid("nope"), TokenState::Revoked, "")
            .unwrap_err();
        assert!(matches!(err, StoreError::UnknownToken { .. }), "{err:?}");

        issue(store, "backend", "k2", "tok-2", t1);
        store.record_verified(t1, &kid("k2")).unwrap();
        store.mark_refused(t1, &kid("k2"), "LINE said no").unwrap();
        let k2 = store.token(&kid("k2")).unwrap().unwrap();
        assert_eq!(
            (k2.record.verified_at, k2.record.refused_at),
            (Some(t1), Some(t1))
        );
        assert_eq!(b.last_event().0, "refused", "{}", b.name);
        assert!(
            store
                .expire_due(t1 + Duration::days(30) - Duration::seconds(1))
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store.expire_due(t1 + Duration::days(30)).unwrap(),
            [kid("k2")],
            "{}",
            b.name
        );
        assert_eq!(
            b.last_event(),
            ("expired".to_owned(), Some("k2".to_owned()))
        );
    }
}

#[test]
fn group_runtime_state_round_trips() {
    for b in backends("group_runtime_state_round_trips") {
        sync_one_channel(&b.store);
        let runtime = GroupRuntime {
            last_error: Some("LINE answered 503".into()),
            last_error_at: Some(t0()),
            consecutive_failures: 3,
            retry_not_before: Some(t0() + Duration::minutes(4)),
            failure_kind: Some(linetokd::domain::FailureKind::RateLimited),
            failed_step: Some("verify".into()),
        };
        b.store
            .set_group_runtime(&ch("1000"), &gr("backend"), &runtime)
            .unwrap();
        let b = b.reopened();
        let store = &b.store;
        assert_eq!(
            store
                .group(&ch("1000"), &gr("backend"))
                .unwrap()
                .unwrap()
                .runtime,
            runtime,
            "{}",
            b.name
        );
        // The other group's state is its own.
        assert_eq!(
            store
                .group(&ch("1000"), &gr("crm"))
                .unwrap()
                .unwrap()
                .runtime,
            GroupRuntime::default(),
            "{}",
            b.name
        );
        store
            .set_group_runtime(&ch("1000"), &gr("backend"), &GroupRuntime::default())
            .unwrap();
        assert_eq!(
            store
                .group(&ch("1000"), &gr("backend"))
                .unwrap()
                .unwrap()
                .runtime,
            GroupRuntime::default(),
            "{}",
            b.name
        );
        let err = store
            .set_group_runtime(&ch("1000"), &gr("nope"), &GroupRuntime::default())
            .unwrap_err();
        assert!(
            matches!(err, StoreError::UnknownGroup { .. }),
            "{}: {err:?}",
            b.name
        );
        assert_eq!(store.group(&ch("1000"), &gr("nope")).unwrap(), None);
    }
}

#[test]
fn the_store_can_be_shared_between_threads() {
    fn assert_shareable<T: Clone + Send + Sync + 'static>() {}
    assert_shareable::<Store>();
    let (_dir, path) = fresh();
    let store = synced_store(&path);
    let handles: Vec<_> = ["backend", "crm"]
        .into_iter()
        .enumerate()
        .map(|(i, group)| {
            let store = store.clone();
            std::thread::spawn(move || {
                issue(&store, group, &format!("k{i}"), &format!("tok-{i}"), t0());
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(store.live_tokens_of_channel(&ch("1000")).unwrap().len(), 2);
}

// ---------------------------------------------------------------------------
// The database file deleted or replaced under a running daemon (issue 8)
// ---------------------------------------------------------------------------

/// Asserts `err` is the fatal "deleted or replaced" error for `path`.
fn assert_replaced(err: &StoreError, path: &Path) {
    match err {
        StoreError::Replaced { path: p } => assert_eq!(p, path),
        other => panic!("expected Replaced, got {other:?}"),
    }
    assert!(err.is_fatal());
    assert_eq!(
        err.to_string(),
        format!(
            "the database file {} was deleted or replaced while linetokd ran; stopping so no \
             token is stored where no one will find it",
            path.display()
        )
    );
}

#[test]
fn a_database_deleted_while_open_refuses_every_write() {
    let (_dir, path) = fresh();
    let store = synced_store(&path);
    issue(&store, "backend", "k1", "tok-1", t0());
    std::fs::remove_file(&path).unwrap();

    let err = store
        .begin_issue(t0(), &ch("1000"), &gr("crm"))
        .unwrap_err();
    assert_replaced(&err, &path);
    // Every later write too, not just the first: the check is per write.
    let event = NewEvent {
        channel_id: ch("1000"),
        group: None,
        key_id: None,
        kind: EventKind::VerifyFailed,
        detail: String::new(),
    };
    let err = store.record_event(t0(), &event).unwrap_err();
    assert_replaced(&err, &path);
    // A new file at the path is not the one opened either.
    std::fs::write(&path, b"").unwrap();
    let err = store
        .begin_issue(t0(), &ch("1000"), &gr("crm"))
        .unwrap_err();
    assert_replaced(&err, &path);
}

#[test]
fn a_file_renamed_over_the_database_refuses_every_write() {
    let (dir, path) = fresh();
    let store = synced_store(&path);
    issue(&store, "backend", "k1", "tok-1", t0());
    // What a restore from backup looks like: a byte-for-byte copy moved in
    // place. Same content, another file: the token we would write next
    // would land in the unlinked original.
    let copy = dir.path().join("restored.db");
    std::fs::copy(&path, &copy).unwrap();
    std::fs::rename(&copy, &path).unwrap();

    let err = store
        .begin_issue(t0(), &ch("1000"), &gr("crm"))
        .unwrap_err();
    assert_replaced(&err, &path);
}

#[test]
fn an_untouched_database_keeps_writing_and_other_errors_are_not_fatal() {
    let (_dir, path) = fresh();
    let store = synced_store(&path);
    for n in 0..3 {
        let key = format!("k{n}");
        issue(&store, "backend", &key, &format!("tok-{n}"), t0());
    }
    let err = store
        .begin_issue(t0(), &ch("9999"), &gr("backend"))
        .unwrap_err();
    assert!(!matches!(err, StoreError::Replaced { .. }), "{err:?}");
    assert!(!err.is_fatal(), "{err:?}");
}

/// Migration 8 gives every group of a schema-7 database the kind it always
/// had (v2.1); a config sync then records each group's configured kind, a
/// reconcile never marks a short-lived token gone (LINE lists none), and a
/// short-lived token found evicted is read back as that group's eviction.
#[test]
fn groups_get_their_kind_and_short_lived_tokens_stay_out_of_the_listing() {
    use linetokd::domain::TokenKind;
    use linetokd::store::migrate::{self, MIGRATIONS};
    let (dir, path) = fresh();
    {
        let mut conn = Connection::open(&path).unwrap();
        migrate::apply(&mut conn, &MIGRATIONS[..7]).unwrap();
        conn.execute_batch(
            "INSERT INTO channels (id, name, added_at) VALUES ('1000', 'shop-bot', 1);
             INSERT INTO groups (channel_id, name, added_at) VALUES ('1000', 'backend', 1);",
        )
        .unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.migrated().from, 7);
    let mut all = vec![OnBackend {
        name: "sqlite",
        store,
        at: Place::Sqlite(path),
        options: linetokd::store::StoreOptions::default(),
        _dir: Some(dir),
    }];
    // PostgreSQL's baseline has had the kind from the start: the same rows,
    // with the column's default.
    for b in backends("groups_get_their_kind") {
        if b.is_postgres() {
            b.batch(
                "INSERT INTO channels (id, name, added_at) VALUES ('1000', 'shop-bot', 1);
                 INSERT INTO groups (channel_id, name, added_at) VALUES ('1000', 'backend', 1);",
            );
            all.push(b);
        }
    }
    for b in all {
        let store = &b.store;
        // The kinds by group name, through the store where it can say.
        let kinds = || -> Vec<(String, TokenKind)> {
            checked(&b, store.groups(&ch("1000")))
                .into_iter()
                .map(|g| (g.name.to_string(), g.kind))
                .collect()
        };
        assert_eq!(
            kinds(),
            [("backend".to_owned(), TokenKind::V21)],
            "{}",
            b.name
        );

        let spec = |short: Vec<GroupName>| ChannelSpec {
            id: ch("1000"),
            name: "shop-bot".into(),
            groups: vec![gr("backend"), gr("liff")],
            fingerprint: None,
            short_lived: short,
        };
        sync(&b, t0(), &[spec(vec![gr("liff")])]);
        assert_eq!(
            kinds(),
            [
                ("backend".to_owned(), TokenKind::V21),
                ("liff".to_owned(), TokenKind::ShortLived)
            ],
            "{}",
            b.name
        );

        let value = AccessToken::new("short-lived-VALUE-1");
        let sl = KeyId::short_lived(&value);
        let intent = store.begin_issue(t0(), &ch("1000"), &gr("liff")).unwrap();
        store
            .complete_issue(
                t0(),
                intent,
                &IssuedToken {
                    key_id: sl.clone(),
                    value: value.clone(),
                    issued_at: t0(),
                    expires_at: t0() + Duration::days(30),
                    verified_at: Some(t0()),
                },
                &[],
            )
            .unwrap();
        issue(store, "backend", "kid-v21", "v21-VALUE", t0());
        // LINE lists no key ID at all: only the v2.1 token is missing from it.
        let later = t0() + Duration::minutes(1);
        let report = checked(&b, store.reconcile(later, &ch("1000"), &[], 0));
        assert_eq!(report.gone, vec![kid("kid-v21")]);
        assert_eq!(
            store.token(&sl).unwrap().unwrap().record.state,
            TokenState::Live
        );
        assert!(store.evictions_in(Scope::All, t0()).unwrap().is_empty());
        store
            .set_token_state(later, &sl, TokenState::Gone, "evicted or revoked")
            .unwrap();
        let evictions = store
            .evictions_in(Scope::Channel(&ch("1000")), t0())
            .unwrap();
        assert_eq!(
            evictions,
            vec![(ch("1000"), gr("liff"), later)],
            "{}",
            b.name
        );
        assert_eq!(store.evictions_in(Scope::All, t0()).unwrap(), evictions);
        assert!(
            store
                .evictions_in(Scope::All, later + Duration::seconds(1))
                .unwrap()
                .is_empty()
        );

        // Back to v2.1 in the config: the kind follows.
        sync(&b, later, &[spec(vec![])]);
        assert!(
            kinds().iter().all(|(_, kind)| *kind == TokenKind::V21),
            "{}",
            b.name
        );
    }
}

/// Migration 9 on a schema-8 database: the alerts keep every row and
/// column, now also accept `info`, and the long-lived table starts empty.
#[test]
fn a_schema_8_database_keeps_its_alerts_through_migration_9() {
    use linetokd::store::migrate::MIGRATIONS;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("linetokd.db");
    {
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        migrate::apply(&mut conn, &MIGRATIONS[..8]).unwrap();
        conn.execute_batch(
            "INSERT INTO channels (id, name, added_at) VALUES ('1000', 'shop', 1);
             INSERT INTO alerts (fingerprint, channel_id, group_name, label_name, label_value,
                                 alertname, severity, summary, started_at, last_seen_at,
                                 resolved_at) VALUES
               ('1000/-/foreign_token/k1', '1000', NULL, 'key_id', 'k1', 'foreign_token',
                'warning', 'foreign', 1000, 2000, NULL);",
        )
        .unwrap();
        let info = conn.execute(
            "INSERT INTO alerts (fingerprint, channel_id, alertname, severity, summary, \
             started_at, last_seen_at) VALUES ('x', '1000', 'x', 'info', 'x', 1, 1)",
            [],
        );
        assert!(info.is_err(), "schema 8 refuses info alerts");
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.migrated().from, 8);
    let firing = store.firing_alerts().unwrap();
    assert_eq!(firing.len(), 1);
    assert_eq!(
        firing[0].label,
        Some(("key_id".to_owned(), "k1".to_owned()))
    );
    assert_eq!(firing[0].started_at.timestamp_millis(), 1000);
    assert!(store.long_lived_rows().unwrap().is_empty());
    let at = chrono::DateTime::from_timestamp_millis(5000).unwrap();
    let ch = linetokd::domain::ChannelId::new("1000");
    store.retire_long_lived(at, &ch, "sha256:0123abcd").unwrap();
    let rows = store.long_lived_rows().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].retired_at, Some(at));
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO alerts (fingerprint, channel_id, alertname, severity, summary, \
         started_at, last_seen_at) VALUES ('y', '1000', 'y', 'info', 'y', 1, 1)",
        [],
    )
    .unwrap();
}

/// An issuance left open by a crash is counted as possibly issued until a
/// key-ID listing settles it, but only for a v2.1 group: nothing lists
/// short-lived tokens, so a short-lived group's lost issuance is closed
/// without being counted (it would hold the v2.1 pool for ever).
#[test]
fn a_crash_during_a_short_lived_issue_is_not_left_for_a_listing_to_settle() {
    for b in backends("short_lived_crash") {
        sync(
            &b,
            t0(),
            &[ChannelSpec {
                id: ch("1000"),
                name: "shop-bot".into(),
                groups: vec![gr("backend"), gr("liff")],
                fingerprint: None,
                short_lived: vec![gr("liff")],
            }],
        );
        let store = &b.store;
        store
            .begin_issue(t0(), &ch("1000"), &gr("backend"))
            .unwrap();
        store.begin_issue(t0(), &ch("1000"), &gr("liff")).unwrap();
        let lost = store.close_lost_intents(t0()).unwrap();
        assert_eq!(lost.len(), 2, "{}", b.name);
        let liff = lost.iter().find(|i| i.group == gr("liff")).unwrap();
        assert!(
            liff.error
                .as_deref()
                .unwrap()
                .contains("cannot be seen or revoked"),
            "{}: {liff:?}",
            b.name
        );
        let backend = lost.iter().find(|i| i.group == gr("backend")).unwrap();
        assert!(
            backend
                .error
                .as_deref()
                .unwrap()
                .contains("would show up as foreign"),
            "{}: {backend:?}",
            b.name
        );
        assert_eq!(
            store.unsettled_issues(&ch("1000"), 0).unwrap(),
            vec![gr("backend")],
            "{}",
            b.name
        );
        assert_eq!(
            store.unsettled_issues_by_channel().unwrap(),
            vec![(ch("1000"), gr("backend"))]
        );
    }
}

/// A store on one backend, and where its database lives. The store tests
/// of other concerns (`alerting`, `login`) use it too.
pub(crate) struct OnBackend {
    pub(crate) name: &'static str,
    pub(crate) store: Store,
    at: Place,
    options: linetokd::store::StoreOptions,
    _dir: Option<TempDir>,
}

/// Where a backend's database is.
enum Place {
    Sqlite(PathBuf),
    /// The test database's URL.
    Postgres(String),
}

/// The store on every backend this machine has: SQLite always,
/// PostgreSQL when the test cluster runs (else one skip line, or a failure
/// under `LINETOKD_REQUIRE_POSTGRES=1`). Each is empty and migrated.
pub(crate) fn backends(test: &str) -> Vec<OnBackend> {
    backends_with(test, &linetokd::store::StoreOptions::default())
}

/// [`backends`] opened with `options` (a keyring, say).
pub(crate) fn backends_with(test: &str, options: &linetokd::store::StoreOptions) -> Vec<OnBackend> {
    let (dir, path) = fresh();
    let mut out = vec![OnBackend {
        name: "sqlite",
        store: Store::open_with(&path, options.clone()).unwrap(),
        at: Place::Sqlite(path),
        options: options.clone(),
        _dir: Some(dir),
    }];
    if let Some(db) = crate::pg_harness::test_db_blocking(test) {
        let url = db.url();
        out.push(OnBackend {
            name: "postgres",
            store: open_postgres(&url, options),
            at: Place::Postgres(url),
            options: options.clone(),
            _dir: None,
        });
    }
    out
}

fn open_postgres(url: &str, options: &linetokd::store::StoreOptions) -> Store {
    let target = linetokd::store::pg::PgTarget::parse(url).unwrap();
    Store::open_postgres(
        &target,
        &linetokd::store::pg::PoolOptions::default(),
        options.clone(),
    )
    .unwrap()
}

/// [`open_postgres`] just after the last store on `url` dropped: a
/// PostgreSQL writer's lock on the database goes with its connection,
/// which the server may notice a moment later, so a refusal to connect or
/// lock (`StoreError::Pg`) is retried for a while.
fn reopen_postgres(url: &str, options: &linetokd::store::StoreOptions) -> Store {
    let target = linetokd::store::pg::PgTarget::parse(url).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match Store::open_postgres(
            &target,
            &linetokd::store::pg::PoolOptions::default(),
            options.clone(),
        ) {
            Ok(store) => return store,
            Err(StoreError::Pg(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("reopening {url}: {e:?}"),
        }
    }
}

impl OnBackend {
    /// [`OnBackend::restart`], by the name the sync tests use.
    fn reopened(self) -> Self {
        self.restart()
    }

    /// [`OnBackend::batch`], by the name the sync tests use.
    fn execute_raw(&self, sql: &str) {
        self.batch(sql);
    }

    pub(crate) fn is_postgres(&self) -> bool {
        matches!(self.at, Place::Postgres(_))
    }

    /// The store closed and its database opened again, as a restarted
    /// daemon opens it.
    pub(crate) fn restart(self) -> Self {
        let Self {
            name,
            store,
            at,
            options,
            _dir,
        } = self;
        // First: SQLite's writer lock lives as long as the store.
        drop(store);
        let store = match &at {
            Place::Sqlite(path) => Store::open_with(path, options.clone()).unwrap(),
            Place::Postgres(url) => reopen_postgres(url, &options),
        };
        Self {
            name,
            store,
            at,
            options,
            _dir,
        }
    }

    /// Runs `f` on a PostgreSQL connection of its own to the test
    /// database.
    fn on_postgres<T>(url: &str, f: impl AsyncFnOnce(&tokio_postgres::Client) -> T) -> T {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(async move {
                let _ = conn.await;
            });
            f(&client).await
        })
    }

    /// Runs statements on a connection of its own, beside the store: set-up
    /// and sabotage.
    pub(crate) fn batch(&self, sql: &str) {
        match &self.at {
            Place::Sqlite(path) => Connection::open(path).unwrap().execute_batch(sql).unwrap(),
            Place::Postgres(url) => {
                Self::on_postgres(url, async |c| c.batch_execute(sql).await.unwrap());
            }
        }
    }

    /// A query's rows on a connection of its own; every column must be
    /// text (cast it) or NULL. Parameters are written `?1`….
    fn texts(&self, sql: &str, params: &[&str]) -> Vec<Vec<Option<String>>> {
        match &self.at {
            Place::Sqlite(path) => {
                let conn = Connection::open(path).unwrap();
                let mut stmt = conn.prepare(sql).unwrap();
                let width = stmt.column_count();
                stmt.query_map(rusqlite::params_from_iter(params), |row| {
                    (0..width).map(|i| row.get(i)).collect()
                })
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
            }
            Place::Postgres(url) => {
                let sql = linetokd::store::sql::numbered(sql);
                Self::on_postgres(url, async |c| {
                    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                        .iter()
                        .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                        .collect();
                    c.query(sql.as_ref(), &params)
                        .await
                        .unwrap()
                        .iter()
                        .map(|row| (0..row.len()).map(|i| row.get(i)).collect())
                        .collect()
                })
            }
        }
    }

    /// The newest event's kind and key ID.
    fn last_event(&self) -> (String, Option<String>) {
        let events = checked(self, self.store.recent_events(1));
        let e = &events[0];
        (
            e.kind.as_str().to_owned(),
            e.key_id.as_ref().map(|k| k.to_string()),
        )
    }
}

/// `answer`, or a failure naming the backend.
fn checked<T>(b: &OnBackend, answer: Result<T, StoreError>) -> T {
    answer.unwrap_or_else(|e| panic!("{}: {e}", b.name))
}

/// `sync_config` on `b`'s store.
fn sync(b: &OnBackend, now: DateTime<Utc>, specs: &[ChannelSpec]) {
    checked(b, b.store.sync_config(now, specs));
}

/// Channel `1000` with groups `backend` and `crm` ([`synced_store`] on
/// every backend).
fn synced(b: &OnBackend) {
    sync(
        b,
        t0(),
        &[ChannelSpec {
            id: ch("1000"),
            name: "shop-bot".into(),
            groups: vec![gr("backend"), gr("crm")],
            fingerprint: None,
            short_lived: Vec::new(),
        }],
    );
}

#[test]
fn daemon_notes_are_overwritten_and_listed_by_literal_prefix_on_both_backends() {
    for b in backends("daemon_notes") {
        let store = &b.store;
        let t1 = t0() + Duration::milliseconds(1_234);
        store.set_note(t0(), "sinks/1000/backend", "first").unwrap();
        store.set_note(t1, "sinks/1000/backend", "second").unwrap();
        store.set_note(t0(), "sinks%/x", "percent").unwrap();
        store.set_note(t0(), "last_reload", "ok").unwrap();
        let note = store.note("sinks/1000/backend").unwrap().unwrap();
        assert_eq!((note.value.as_str(), note.at), ("second", t1), "{}", b.name);
        assert_eq!(store.note("missing").unwrap(), None, "{}", b.name);
        let keys: Vec<String> = store
            .notes_with_prefix("sinks/")
            .unwrap()
            .into_iter()
            .map(|n| n.key)
            .collect();
        assert_eq!(keys, ["sinks/1000/backend"], "{}", b.name);
        let keys: Vec<String> = store
            .notes_with_prefix("sinks%")
            .unwrap()
            .into_iter()
            .map(|n| n.key)
            .collect();
        assert_eq!(keys, ["sinks%/x"], "{}", b.name);
    }
}

/// Free text holding a stored token value is withheld before it is
/// written, on both backends: the value joins the screening set when
/// `complete_issue` stores it, and a restarted store refills the set from
/// the stored tokens. Checked in the events' own rows.
#[test]
fn screening_withholds_text_holding_a_stored_token_value_on_both_backends() {
    const WITHHELD: &str = "[withheld: the text contained a token value]";
    for b in backends("screening_withholds") {
        synced(&b);
        let value = "SCREEN-ME-token-value-0123456789";
        issue(&b.store, "backend", "k1", value, t0());
        let detail = |b: &OnBackend, kind: &str| -> Vec<String> {
            b.texts(
                "SELECT detail FROM events WHERE kind = ?1 ORDER BY id",
                &[kind],
            )
            .into_iter()
            .map(|mut r| r.remove(0).unwrap())
            .collect()
        };
        let failed = b.store.begin_issue(t0(), &ch("1000"), &gr("crm")).unwrap();
        b.store
            .fail_issue(t0(), failed, &format!("LINE echoed {value}"), false)
            .unwrap();
        assert_eq!(detail(&b, "issue_failed"), [WITHHELD], "{}", b.name);
        assert_eq!(
            b.store.intent(failed).unwrap().unwrap().error.as_deref(),
            Some(WITHHELD)
        );

        // A restarted store knows the value from the database alone.
        let b = b.restart();
        b.store
            .set_token_state(t0(), &kid("k1"), TokenState::Revoked, &format!("x{value}x"))
            .unwrap();
        assert_eq!(detail(&b, "revoked"), [WITHHELD], "{}", b.name);
        assert_eq!(
            b.store
                .token(&kid("k1"))
                .unwrap()
                .unwrap()
                .state_reason
                .as_deref(),
            Some(WITHHELD)
        );
        // Text without a value is kept as written.
        let failed = b.store.begin_issue(t0(), &ch("1000"), &gr("crm")).unwrap();
        b.store
            .fail_issue(t0(), failed, "LINE answered 500", true)
            .unwrap();
        assert_eq!(
            detail(&b, "issue_failed"),
            [WITHHELD, "LINE answered 500"],
            "{}",
            b.name
        );
    }
}

/// With a keyring, `complete_issue` stores the value only sealed, counts
/// each seal under the active key in `encryptions` (the upsert reads the
/// stored count on both dialects), and every read opens it again, also
/// after a restart, where the sealed value is screened too.
#[test]
fn sealed_values_are_counted_and_opened_on_both_backends() {
    use linetokd::store::crypt::{KeyMaterial, Keyring};
    let keyring =
        std::sync::Arc::new(Keyring::new([(3, KeyMaterial::generate().unwrap())], 3).unwrap());
    let options = linetokd::store::StoreOptions {
        keyring: Some(keyring),
        ..linetokd::store::StoreOptions::default()
    };
    for b in backends_with("sealed_values_counted", &options) {
        synced(&b);
        issue(&b.store, "backend", "k1", "sealed-value-one", t0());
        issue(&b.store, "crm", "k2", "sealed-value-two", t0());
        assert_eq!(b.store.seal_counts().unwrap(), [(3, 2)], "{}", b.name);
        let columns = b.texts(
            "SELECT key_id, access_token, CAST(enc_key_id AS TEXT) FROM tokens ORDER BY key_id",
            &[],
        );
        for row in &columns {
            assert_eq!(
                (row[1].as_deref(), row[2].as_deref()),
                (None, Some("3")),
                "{}",
                b.name
            );
        }
        assert_eq!(columns.len(), 2);

        let b = b.restart();
        let store = &b.store;
        assert_eq!(
            store.token(&kid("k1")).unwrap().unwrap().value.expose(),
            "sealed-value-one",
            "{}",
            b.name
        );
        let live = store.live_tokens_in(Scope::All).unwrap();
        assert_eq!(
            live.iter().map(|t| t.value.expose()).collect::<Vec<_>>(),
            ["sealed-value-one", "sealed-value-two"]
        );
        store
            .mark_refused(t0(), &kid("k2"), "LINE: sealed-value-two is invalid")
            .unwrap();
        assert_eq!(
            b.texts("SELECT detail FROM events WHERE kind = 'refused'", &[]),
            [[Some(
                "[withheld: the text contained a token value]".to_owned()
            )]],
            "{}",
            b.name
        );
        issue(store, "backend", "k3", "sealed-value-three", t0());
        assert_eq!(store.seal_counts().unwrap(), [(3, 3)], "{}", b.name);
        assert_eq!(store.decrypt_failures(), 0);
    }
}

/// The long-lived watch rows on both backends: an upsert keeps its first
/// sighting and its retirement, a channel's sync ends the values no
/// watcher holds, a restart ends the old ones, and the listing is by
/// channel in byte order (PostgreSQL under a linguistic collation), then
/// current, old, ended, newest first.
#[test]
fn long_lived_rows_are_kept_ended_and_listed_on_both_backends() {
    use linetokd::store::{LongLivedResult, LongLivedRole, LongLivedRow};
    for b in backends("long_lived_rows") {
        if b.is_postgres() {
            // As in the same-millisecond test: C would hide the order asked
            // for; ICU's root locale sorts `a` before `B`.
            b.batch(
                "ALTER TABLE long_lived_tokens ALTER COLUMN channel_id TYPE TEXT \
                 COLLATE \"und-x-icu\"",
            );
        }
        let store = &b.store;
        let row = |channel: &str, fp: &str, role: LongLivedRole, seen: i64| LongLivedRow {
            channel: ch(channel),
            fingerprint: fp.to_owned(),
            role,
            first_seen_at: t0() + Duration::seconds(seen),
            last_valid_at: None,
            last_checked_at: None,
            result: LongLivedResult::Pending,
            detail: String::new(),
            retired_at: None,
        };
        store
            .record_long_lived(&row("a-chan", "sha256:aaaa", LongLivedRole::Current, 1))
            .unwrap();
        store
            .retire_long_lived(t0() + Duration::seconds(9), &ch("B-chan"), "sha256:bbbb")
            .unwrap();
        // Written again: first sighting and retirement stay.
        let mut again = row("B-chan", "sha256:bbbb", LongLivedRole::Old, 5);
        again.result = LongLivedResult::Valid;
        again.last_valid_at = Some(t0() + Duration::seconds(6));
        store.record_long_lived(&again).unwrap();
        let ended = store
            .sync_long_lived(
                &ch("B-chan"),
                &[row("B-chan", "sha256:cccc", LongLivedRole::Current, 7)],
            )
            .unwrap();
        assert_eq!(ended, 1, "{}", b.name);
        store
            .record_long_lived(&row("B-chan", "sha256:dddd", LongLivedRole::Old, 8))
            .unwrap();
        assert_eq!(store.forget_old_long_lived().unwrap(), 1, "{}", b.name);

        let rows = store.long_lived_rows().unwrap();
        let seen: Vec<(&str, &str, LongLivedRole)> = rows
            .iter()
            .map(|r| (r.channel.as_str(), r.fingerprint.as_str(), r.role))
            .collect();
        assert_eq!(
            seen,
            [
                ("B-chan", "sha256:cccc", LongLivedRole::Current),
                ("B-chan", "sha256:bbbb", LongLivedRole::Ended),
                ("B-chan", "sha256:dddd", LongLivedRole::Ended),
                ("a-chan", "sha256:aaaa", LongLivedRole::Current),
            ],
            "{}",
            b.name
        );
        let bbbb = &rows[1];
        assert_eq!(
            bbbb.first_seen_at,
            t0() + Duration::seconds(9),
            "{}",
            b.name
        );
        assert_eq!(bbbb.retired_at, Some(t0() + Duration::seconds(9)));
        assert_eq!(bbbb.result, LongLivedResult::Valid);
        assert_eq!(bbbb.last_valid_at, Some(t0() + Duration::seconds(6)));
        assert!(
            bbbb.detail.contains("no longer holds it"),
            "{}",
            bbbb.detail
        );
    }
}

/// Puts a live v2.1 token of group `group` of channel `1000` straight into
/// `tokens`, as the issuance journal would store it: reconcile's tests
/// need tokens on every backend, whatever stores them there.
fn seed_token(
    b: &OnBackend,
    group: &str,
    key_id: &str,
    issued_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) {
    b.execute_raw(&format!(
        "INSERT INTO tokens (key_id, channel_id, group_name, access_token, issued_at, expires_at, \
         state, state_changed_at) VALUES ('{key_id}', '1000', '{group}', 'value-of-{key_id}', \
         {issued}, {expires}, 'live', {issued})",
        issued = issued_at.timestamp_millis(),
        expires = expires_at.timestamp_millis(),
    ));
}

/// One channel `1000` with groups `backend` and `crm`, on `store`.
fn sync_one_channel(store: &Store) {
    store
        .sync_config(
            t0(),
            &[ChannelSpec {
                id: ch("1000"),
                name: "shop-bot".into(),
                groups: vec![gr("backend"), gr("crm")],
                fingerprint: None,
                short_lived: Vec::new(),
            }],
        )
        .unwrap();
}

#[test]
fn reconcile_on_both_backends_judges_stored_tokens_and_keeps_foreign_first_seen() {
    for b in backends("reconcile_on_both_backends") {
        let store = &b.store;
        let name = b.name;
        sync_one_channel(store);
        let month = Duration::days(30);
        seed_token(&b, "backend", "ours-a", t0(), t0() + month);
        seed_token(&b, "crm", "ours-b", t0(), t0() + month);
        seed_token(
            &b,
            "crm",
            "ours-old",
            t0() - Duration::days(29),
            t0() + Duration::hours(1),
        );

        let t1 = t0() + Duration::hours(2);
        let report = store
            .reconcile(
                t1,
                &ch("1000"),
                &[kid("ours-a"), kid("f1"), kid("ours-old")],
                7,
            )
            .unwrap();
        assert_eq!(
            report.expired,
            [kid("ours-old")],
            "{name}: expired before judged gone"
        );
        assert_eq!(report.gone, [kid("ours-b")], "{name}");
        assert_eq!(report.new_foreign, [kid("f1")], "{name}");
        assert_eq!((report.ours_live, report.foreign_live), (1, 1), "{name}");
        let channel = store.channel(&ch("1000")).unwrap().unwrap();
        assert_eq!(channel.last_reconcile_at, Some(t1), "{name}");
        assert_eq!(channel.settled_through_intent, 7, "{name}");

        // A token issued at the time the list was asked for is not judged
        // by it; an older settling point never moves the settled one back.
        let t2 = t1 + Duration::hours(1);
        seed_token(&b, "crm", "ours-new", t2, t2 + month);
        let report = store
            .reconcile(t2, &ch("1000"), &[kid("ours-a"), kid("f1"), kid("f2")], 3)
            .unwrap();
        assert!(report.gone.is_empty(), "{name}: {report:?}");
        assert_eq!(
            report.new_foreign,
            [kid("f2")],
            "{name}: f1 is not new again"
        );
        assert_eq!((report.ours_live, report.foreign_live), (2, 2), "{name}");
        let channel = store.channel(&ch("1000")).unwrap().unwrap();
        assert_eq!(channel.settled_through_intent, 7, "{name}");

        // A successful listing ends the channel's listing streak.
        store
            .set_reconcile_runtime(
                &ch("1000"),
                &ReconcileRuntime {
                    failures: 2,
                    retry_not_before: Some(t2 + Duration::minutes(5)),
                    error: Some("LINE answered 500".into()),
                },
            )
            .unwrap();
        assert_eq!(
            store
                .channel(&ch("1000"))
                .unwrap()
                .unwrap()
                .reconcile
                .failures,
            2,
            "{name}"
        );
        let t3 = t2 + Duration::hours(1);
        let report = store
            .reconcile(
                t3,
                &ch("1000"),
                &[kid("ours-a"), kid("ours-new"), kid("f2")],
                9,
            )
            .unwrap();
        assert_eq!(report.foreign_gone, [kid("f1")], "{name}");
        assert!(report.new_foreign.is_empty(), "{name}");
        let channel = store.channel(&ch("1000")).unwrap().unwrap();
        assert_eq!(channel.reconcile, ReconcileRuntime::default(), "{name}");
        assert_eq!(channel.settled_through_intent, 9, "{name}");
        let foreign = |key_id: &str, first, last, gone| ForeignKid {
            channel_id: ch("1000"),
            key_id: kid(key_id),
            first_seen_at: first,
            last_seen_at: last,
            gone_at: gone,
        };
        assert_eq!(
            store.foreign_kids_in(Scope::All).unwrap(),
            [foreign("f1", t1, t2, Some(t3)), foreign("f2", t2, t3, None)],
            "{name}: first seen first"
        );
        let live: Vec<KeyId> = store
            .live_foreign_kids(&ch("1000"))
            .unwrap()
            .into_iter()
            .map(|f| f.key_id)
            .collect();
        assert_eq!(live, [kid("f2")], "{name}");

        // Listed again after it had gone: new again, first seen kept.
        let t4 = t3 + Duration::hours(1);
        let report = store
            .reconcile(
                t4,
                &ch("1000"),
                &[kid("ours-a"), kid("ours-new"), kid("f1"), kid("f2")],
                9,
            )
            .unwrap();
        assert_eq!(report.new_foreign, [kid("f1")], "{name}");
        let f1 = store
            .foreign_kids(&ch("1000"))
            .unwrap()
            .into_iter()
            .find(|f| f.key_id == kid("f1"))
            .unwrap();
        assert_eq!(
            (f1.first_seen_at, f1.last_seen_at, f1.gone_at),
            (t1, t4, None),
            "{name}"
        );

        let ours_b = store.token(&kid("ours-b"));
        let ours_b = ours_b.unwrap().unwrap();
        assert_eq!(ours_b.record.state, TokenState::Gone);
        assert_eq!(ours_b.state_changed_at, t1);
        assert_eq!(
            ours_b.state_reason.as_deref(),
            Some("no longer listed by LINE as valid (revoked outside linetokd?)")
        );
        let kinds: Vec<EventKind> = store
            .events_of_channel(&ch("1000"), 100)
            .unwrap()
            .iter()
            .map(|e| e.kind)
            .collect();
        for k in [
            EventKind::Gone,
            EventKind::Expired,
            EventKind::ForeignSeen,
            EventKind::ForeignGone,
        ] {
            assert!(kinds.contains(&k), "{name}: no {k} event in {kinds:?}");
        }

        let err = store.reconcile(t4, &ch("9999"), &[], 0).unwrap_err();
        assert!(
            matches!(err, StoreError::UnknownChannel { .. }),
            "{name}: {err:?}"
        );
    }
}

/// Text is listed in byte order, as SQLite orders it, on every backend:
/// channels, groups and foreign key IDs, even on a PostgreSQL database
/// whose collation would put `"a"` before `"B"`.
#[test]
fn channels_groups_and_foreign_key_ids_are_listed_in_byte_order_on_every_backend() {
    for b in backends_and_icu("listed_in_byte_order") {
        let store = &b.store;
        let name = b.name;
        let spec = |id: &str| ChannelSpec {
            id: ch(id),
            name: id.to_owned(),
            groups: vec![gr("alpha"), gr("Zeta"), gr("_under")],
            fingerprint: None,
            short_lived: Vec::new(),
        };
        store.sync_config(t0(), &[spec("a1"), spec("B2")]).unwrap();
        let ids: Vec<String> = store
            .channels()
            .unwrap()
            .into_iter()
            .map(|c| c.id.to_string())
            .collect();
        assert_eq!(ids, ["B2", "a1"], "{name}");
        let groups: Vec<String> = store
            .groups(&ch("a1"))
            .unwrap()
            .into_iter()
            .map(|g| g.name.to_string())
            .collect();
        assert_eq!(groups, ["Zeta", "_under", "alpha"], "{name}");
        let all: Vec<(String, String)> = store
            .all_groups()
            .unwrap()
            .into_iter()
            .map(|g| (g.channel_id.to_string(), g.name.to_string()))
            .collect();
        let expected: Vec<(String, String)> = ["B2", "a1"]
            .into_iter()
            .flat_map(|c| ["Zeta", "_under", "alpha"].map(|g| (c.to_owned(), g.to_owned())))
            .collect();
        assert_eq!(all, expected, "{name}");

        let listed = [kid("k1"), kid("K9"), kid("_x")];
        store.reconcile(t0(), &ch("a1"), &listed, 0).unwrap();
        let byte_order = [kid("K9"), kid("_x"), kid("k1")];
        let kids: Vec<KeyId> = store
            .foreign_kids(&ch("a1"))
            .unwrap()
            .into_iter()
            .map(|f| f.key_id)
            .collect();
        assert_eq!(
            kids, byte_order,
            "{name}: first seen together, then by key ID"
        );
        let kids: Vec<KeyId> = store
            .live_foreign_kids(&ch("a1"))
            .unwrap()
            .into_iter()
            .map(|f| f.key_id)
            .collect();
        assert_eq!(kids, byte_order, "{name}");
        let report = store
            .reconcile(t0() + Duration::hours(1), &ch("a1"), &[], 0)
            .unwrap();
        assert_eq!(report.foreign_gone, byte_order, "{name}");
    }
}

#[test]
fn a_changed_channel_config_ends_its_streaks_and_holds_on_both_backends() {
    for b in backends("changed_channel_config") {
        let store = &b.store;
        let name = b.name;
        let spec = |fingerprint: &str| ChannelSpec {
            id: ch("1000"),
            name: "shop-bot".into(),
            groups: vec![gr("backend"), gr("crm")],
            fingerprint: Some(fingerprint.to_owned()),
            short_lived: Vec::new(),
        };
        store.sync_config(t0(), &[spec("fp1")]).unwrap();
        let failing = GroupRuntime {
            last_error: Some("LINE answered 400".into()),
            last_error_at: Some(t0()),
            consecutive_failures: 2,
            retry_not_before: Some(t0() + Duration::hours(1)),
            failure_kind: Some(linetokd::domain::FailureKind::Permanent),
            failed_step: Some("issue".into()),
        };
        store
            .set_group_runtime(&ch("1000"), &gr("backend"), &failing)
            .unwrap();
        let listing = ReconcileRuntime {
            failures: 4,
            retry_not_before: Some(t0() + Duration::minutes(8)),
            error: Some("LINE answered 500".into()),
        };
        store.set_reconcile_runtime(&ch("1000"), &listing).unwrap();
        let hold = FullHold {
            since: t0(),
            until: t0() + Duration::days(30),
            intent: 12,
        };
        store.set_channel_full(&ch("1000"), Some(hold)).unwrap();
        let channel = store.channel(&ch("1000")).unwrap().unwrap();
        assert_eq!(
            (
                channel.reconcile,
                channel.full,
                channel.config_fingerprint.as_deref()
            ),
            (listing, Some(hold), Some("fp1")),
            "{name}"
        );

        // The same config again changes nothing.
        let report = store.sync_config(t0(), &[spec("fp1")]).unwrap();
        assert!(report.is_empty(), "{name}: {report:?}");
        assert_eq!(
            store
                .group(&ch("1000"), &gr("backend"))
                .unwrap()
                .unwrap()
                .runtime,
            failing,
            "{name}"
        );

        let t1 = t0() + Duration::minutes(1);
        let report = store.sync_config(t1, &[spec("fp2")]).unwrap();
        assert_eq!(report.changed_channels, [ch("1000")], "{name}");
        let runtime = store
            .group(&ch("1000"), &gr("backend"))
            .unwrap()
            .unwrap()
            .runtime;
        assert_eq!(
            runtime,
            GroupRuntime {
                consecutive_failures: 0,
                retry_not_before: None,
                failure_kind: None,
                failed_step: None,
                ..failing
            },
            "{name}: the streak ends, its last error stays for status"
        );
        let channel = store.channel(&ch("1000")).unwrap().unwrap();
        assert_eq!(channel.reconcile, ReconcileRuntime::default(), "{name}");
        assert_eq!(channel.full, None, "{name}");
        assert_eq!(channel.config_fingerprint.as_deref(), Some("fp2"), "{name}");
        let events = store.events_of_channel(&ch("1000"), 1).unwrap();
        assert_eq!(events[0].kind, EventKind::ConfigChanged, "{name}");
        assert!(
            events[0].detail.contains("1 group(s)"),
            "{name}: {:?}",
            events[0]
        );

        store.set_channel_full(&ch("1000"), Some(hold)).unwrap();
        store.set_channel_full(&ch("1000"), None).unwrap();
        assert_eq!(store.channel(&ch("1000")).unwrap().unwrap().full, None);
        let err = store
            .set_reconcile_runtime(&ch("9999"), &ReconcileRuntime::default())
            .unwrap_err();
        assert!(
            matches!(err, StoreError::UnknownChannel { .. }),
            "{name}: {err:?}"
        );
        assert_eq!(store.channel(&ch("9999")).unwrap(), None, "{name}");
    }
}

#[test]
fn operator_requests_are_recorded_listed_and_closed_on_both_backends() {
    use linetokd::domain::{RequestKind, RequestOutcome};
    for b in backends("operator_requests") {
        let store = &b.store;
        let name = b.name;
        let two = |groups: Vec<GroupName>| {
            [
                ChannelSpec {
                    id: ch("1000"),
                    name: "shop-bot".into(),
                    groups,
                    fingerprint: None,
                    short_lived: Vec::new(),
                },
                ChannelSpec {
                    id: ch("2000"),
                    name: "other".into(),
                    groups: vec![gr("backend")],
                    fingerprint: None,
                    short_lived: Vec::new(),
                },
            ]
        };
        store
            .sync_config(t0(), &two(vec![gr("backend"), gr("crm"), gr("old")]))
            .unwrap();
        let failing = GroupRuntime {
            consecutive_failures: 3,
            retry_not_before: Some(t0() + Duration::hours(1)),
            ..GroupRuntime::default()
        };
        store
            .set_group_runtime(&ch("1000"), &gr("backend"), &failing)
            .unwrap();

        let incident = store
            .add_requests(
                t0(),
                &ch("1000"),
                &[gr("backend"), gr("crm")],
                RequestKind::Incident,
                "alice",
            )
            .unwrap();
        assert_eq!(incident.len(), 2, "{name}");
        assert!(incident[0] < incident[1], "{name}: {incident:?}");
        // Both requests are the operator saying "try now" (design 4.7): an
        // incident waiting behind a hold left by a failure since fixed (a
        // wrong kid, held 30 minutes) was answered only after the wait.
        assert_eq!(
            store
                .group(&ch("1000"), &gr("backend"))
                .unwrap()
                .unwrap()
                .runtime,
            GroupRuntime::default(),
            "{name}: an incident ends the channel's streaks and holds"
        );
        store
            .set_group_runtime(&ch("1000"), &gr("backend"), &failing)
            .unwrap();
        let t1 = t0() + Duration::minutes(1);
        let other = store
            .add_requests(
                t1,
                &ch("2000"),
                &[gr("backend")],
                RequestKind::Rotate,
                "bob",
            )
            .unwrap();
        let rotate = store
            .add_requests(
                t1,
                &ch("1000"),
                &[gr("backend")],
                RequestKind::Rotate,
                "bob",
            )
            .unwrap();
        assert_eq!(
            store
                .group(&ch("1000"), &gr("backend"))
                .unwrap()
                .unwrap()
                .runtime
                .consecutive_failures,
            0,
            "{name}: a rotate is the operator saying \"try now\""
        );
        let requested = store
            .events_of_channel(&ch("1000"), 10)
            .unwrap()
            .into_iter()
            .find(|e| e.kind == EventKind::Requested)
            .unwrap();
        assert_eq!(requested.detail, "rotation requested by bob", "{name}");

        let open = store.open_requests(&ch("1000")).unwrap();
        let summary: Vec<(GroupName, i64, RequestKind, DateTime<Utc>, &str)> = open
            .iter()
            .map(|(g, r)| (g.clone(), r.id, r.kind, r.at, r.by.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                (
                    gr("backend"),
                    incident[0],
                    RequestKind::Incident,
                    t0(),
                    "alice"
                ),
                (gr("crm"), incident[1], RequestKind::Incident, t0(), "alice"),
                (gr("backend"), rotate[0], RequestKind::Rotate, t1, "bob"),
            ],
            "{name}"
        );
        let everywhere: Vec<(ChannelId, i64)> = store
            .open_requests_in(Scope::All)
            .unwrap()
            .into_iter()
            .map(|(c, _, r)| (c, r.id))
            .collect();
        assert_eq!(
            everywhere,
            [
                (ch("1000"), incident[0]),
                (ch("1000"), incident[1]),
                (ch("2000"), other[0]),
                (ch("1000"), rotate[0]),
            ],
            "{name}: oldest first"
        );

        // Closing names the channel: another channel's request is left alone.
        let t2 = t1 + Duration::minutes(1);
        store
            .close_requests(t2, &ch("2000"), &[incident[0]], "done")
            .unwrap();
        assert!(store.request_is_open(incident[0]).unwrap(), "{name}");
        store
            .close_requests(t2, &ch("1000"), &[incident[0]], "done")
            .unwrap();
        store
            .close_requests(t2, &ch("1000"), &[incident[1]], "dropped")
            .unwrap();
        // An already closed request keeps its first outcome.
        store
            .close_requests(t2, &ch("1000"), &[incident[0]], "dropped")
            .unwrap();
        assert!(!store.request_is_open(incident[0]).unwrap(), "{name}");
        assert!(store.request_is_open(rotate[0]).unwrap(), "{name}");
        assert_eq!(
            [incident[0], incident[1], rotate[0], 999_999]
                .map(|id| store.request_outcome(id).unwrap()),
            [
                Some(RequestOutcome::Done),
                Some(RequestOutcome::Dropped),
                Some(RequestOutcome::Open),
                None
            ],
            "{name}"
        );
        assert!(!store.request_is_open(999_999).unwrap(), "{name}");

        // A group not (or no longer) configured takes no request, and a
        // refused group refuses the whole call.
        store
            .sync_config(t2, &two(vec![gr("backend"), gr("crm")]))
            .unwrap();
        for refused in [[gr("backend"), gr("nope")], [gr("backend"), gr("old")]] {
            let err = store
                .add_requests(t2, &ch("1000"), &refused, RequestKind::Rotate, "carol")
                .unwrap_err();
            assert!(
                matches!(err, StoreError::UnknownGroup { .. }),
                "{name}: {err:?}"
            );
        }
        assert_eq!(store.open_requests(&ch("1000")).unwrap().len(), 1, "{name}");
    }
}

#[test]
fn events_are_listed_newest_first_by_kind_and_pruned_on_both_backends() {
    for b in backends("events_listed") {
        let store = &b.store;
        let name = b.name;
        store
            .sync_config(
                t0(),
                &[
                    ChannelSpec {
                        id: ch("1000"),
                        name: "shop-bot".into(),
                        groups: vec![gr("backend"), gr("crm")],
                        fingerprint: None,
                        short_lived: Vec::new(),
                    },
                    ChannelSpec {
                        id: ch("2000"),
                        name: "other".into(),
                        groups: vec![gr("backend")],
                        fingerprint: None,
                        short_lived: Vec::new(),
                    },
                ],
            )
            .unwrap();
        let event = |channel: &str, group: &str, kind: EventKind, detail: &str| NewEvent {
            channel_id: ch(channel),
            group: Some(gr(group)),
            key_id: Some(kid("k1")),
            kind,
            detail: detail.to_owned(),
        };
        let (t1, t2, t3) = (
            t0() + Duration::seconds(1),
            t0() + Duration::seconds(2),
            t0() + Duration::seconds(3),
        );
        let ok = store
            .record_event(
                t1,
                &event("1000", "backend", EventKind::HookSucceeded, "ok"),
            )
            .unwrap();
        let failed = store
            .record_event(
                t2,
                &event("1000", "backend", EventKind::HookFailed, "exit 1"),
            )
            .unwrap();
        let crm = store
            .record_event(t2, &event("1000", "crm", EventKind::HookSucceeded, ""))
            .unwrap();
        let other = store
            .record_event(t3, &event("2000", "backend", EventKind::HookFailed, ""))
            .unwrap();
        assert!(ok < failed && failed < crm && crm < other, "{name}");

        let recent = store.recent_events(2).unwrap();
        assert_eq!(
            recent.iter().map(|e| e.id).collect::<Vec<_>>(),
            [other, crm],
            "{name}: newest first"
        );
        assert_eq!(
            recent[0],
            linetokd::store::Event {
                id: other,
                at: t3,
                channel_id: ch("2000"),
                group: Some(gr("backend")),
                key_id: Some(kid("k1")),
                kind: EventKind::HookFailed,
                detail: String::new(),
            },
            "{name}"
        );
        let of_channel = store.events_of_channel(&ch("1000"), 100).unwrap();
        assert_eq!(
            of_channel.len(),
            6,
            "{name}: three from the sync, three recorded"
        );
        assert!(
            of_channel.iter().all(|e| e.channel_id == ch("1000")),
            "{name}"
        );
        assert_eq!(
            store
                .events_of_channel(&ch("1000"), 2)
                .unwrap()
                .iter()
                .map(|e| e.id)
                .collect::<Vec<_>>(),
            [crm, failed],
            "{name}"
        );

        let hooks = [EventKind::HookSucceeded, EventKind::HookFailed];
        let latest = store
            .latest_group_event(&ch("1000"), &gr("backend"), &hooks)
            .unwrap()
            .unwrap();
        assert_eq!(
            (latest.id, latest.detail.as_str()),
            (failed, "exit 1"),
            "{name}"
        );
        let latest = store
            .latest_group_event(&ch("1000"), &gr("backend"), &[EventKind::HookSucceeded])
            .unwrap()
            .unwrap();
        assert_eq!(latest.id, ok, "{name}");
        assert_eq!(
            store
                .latest_group_event(&ch("1000"), &gr("backend"), &[EventKind::Verified])
                .unwrap(),
            None,
            "{name}"
        );
        let ids =
            |events: Vec<linetokd::store::Event>| events.iter().map(|e| e.id).collect::<Vec<_>>();
        assert_eq!(
            ids(store.latest_hook_results().unwrap()),
            [failed, crm, other],
            "{name}: each group's newest hook result, by ID"
        );

        // The sync's five events are older than t1; the recorded ones stay.
        assert_eq!(store.prune_events(t1).unwrap(), 5, "{name}");
        assert_eq!(
            ids(store.recent_events(100).unwrap()),
            [other, crm, failed, ok],
            "{name}"
        );
        assert_eq!(store.prune_events(t1).unwrap(), 0, "{name}");
    }
}

/// A sync resolves the firing alerts nobody states any more: a removed
/// channel's, and a removed group's delivery alerts. The alerts are put in
/// by SQL, as raising them is the alert module's.
#[test]
fn sync_config_resolves_the_alerts_of_what_left_the_config_on_both_backends() {
    for b in backends("sync_config_resolves_alerts") {
        let store = &b.store;
        let name = b.name;
        let spec = |id: &str, groups: &[&str]| ChannelSpec {
            id: ch(id),
            name: id.to_owned(),
            groups: groups.iter().map(|g| gr(g)).collect(),
            fingerprint: None,
            short_lived: Vec::new(),
        };
        store
            .sync_config(
                t0(),
                &[
                    spec("1000", &["backend", "crm"]),
                    spec("2000", &["backend"]),
                ],
            )
            .unwrap();
        let at = t0().timestamp_millis();
        b.execute_raw(&format!(
            "INSERT INTO alerts (fingerprint, channel_id, group_name, alertname, severity, \
             summary, started_at, last_seen_at) VALUES \
             ('daemon', NULL, NULL, 'store_slow', 'warning', 's', {at}, {at}), \
             ('ch2000', '2000', NULL, 'channel_full', 'critical', 's', {at}, {at}), \
             ('sink-crm', '1000', 'crm', 'sink_failing', 'warning', 's', {at}, {at}), \
             ('engine-crm', '1000', 'crm', 'group_failing', 'critical', 's', {at}, {at}), \
             ('sink-backend', '1000', 'backend', 'sink_failing', 'warning', 's', {at}, {at})"
        ));
        let t1 = t0() + Duration::minutes(1);
        let report = store
            .sync_config(t1, &[spec("1000", &["backend"])])
            .unwrap();
        assert_eq!(report.resolved_alerts, 2, "{name}: {report:?}");
        let resolved: Vec<(ChannelId, Option<GroupName>, String)> = store
            .recent_events(100)
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == EventKind::AlertResolved)
            .map(|e| (e.channel_id, e.group, e.detail))
            .collect();
        assert_eq!(resolved.len(), 2, "{name}: {resolved:?}");
        assert!(
            resolved.contains(&(
                ch("2000"),
                None,
                "channel_full (no longer configured)".into()
            )),
            "{name}: {resolved:?}"
        );
        assert!(
            resolved.contains(&(
                ch("1000"),
                Some(gr("crm")),
                "sink_failing (no longer configured)".into()
            )),
            "{name}: {resolved:?}"
        );
        // Resolved once: the same config again resolves nothing.
        let report = store
            .sync_config(t1, &[spec("1000", &["backend"])])
            .unwrap();
        assert_eq!(report.resolved_alerts, 0, "{name}: {report:?}");
    }
}

/// [`backends`] plus a PostgreSQL database whose default collation is
/// ICU's root locale, which sorts text as people read it (`"a"` before
/// `"B"`) rather than by bytes as SQLite does: the test cluster's own
/// databases use the C locale, where the two agree and an ORDER BY that
/// forgot its `COLLATE "C"` would go unnoticed.
fn backends_and_icu(test: &str) -> Vec<OnBackend> {
    let mut out = backends(test);
    let Some(db) = crate::pg_harness::test_db_blocking(&format!("{test}_icu")) else {
        return out;
    };
    let icu_name = format!("{}_icu", db.name);
    OnBackend::on_postgres(&db.cluster.url("postgres"), async |c| {
        c.batch_execute(&format!(
            "CREATE DATABASE \"{icu_name}\" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'und'"
        ))
        .await
        .unwrap();
    });
    let url = db.cluster.url(&icu_name);
    // The premise: without a collation of its own, this database orders
    // text unlike SQLite.
    let sorted: Vec<String> = OnBackend::on_postgres(&url, async |c| {
        c.query(
            "SELECT x FROM (VALUES ('B'), ('a')) AS v (x) ORDER BY x",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    });
    assert_eq!(sorted, ["a", "B"]);
    let options = linetokd::store::StoreOptions::default();
    out.push(OnBackend {
        name: "postgres (ICU collation)",
        store: open_postgres(&url, &options),
        at: Place::Postgres(url),
        options,
        _dir: None,
    });
    out
}

/// Opens the database at `at` with `options` once the previous writer's
/// lock is gone (PostgreSQL notices a closed connection a moment later),
/// and answers what the open answered.
fn open_again(at: &Place, options: &linetokd::store::StoreOptions) -> Result<Store, StoreError> {
    let Place::Postgres(url) = at else {
        let Place::Sqlite(path) = at else {
            unreachable!()
        };
        return Store::open_with(path, options.clone());
    };
    let target = linetokd::store::pg::PgTarget::parse(url).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match Store::open_postgres(
            &target,
            &linetokd::store::pg::PoolOptions::default(),
            options.clone(),
        ) {
            Err(StoreError::Pg(linetokd::store::pg::PgError::WriterHeld { .. }))
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            answer => return answer,
        }
    }
}

/// Encryption at rest at open, on both backends: plaintext rows are sealed
/// when a keyring comes, a database with sealed rows refuses a writer
/// without its keys, and a new active key re-seals every row step by step.
#[test]
fn encryption_at_open_seals_refuses_and_rekeys_on_both_backends() {
    use linetokd::store::crypt::{KeyMaterial, Keyring};
    use linetokd::store::{StoreOptions, ValueCount};
    // Key material is not Clone (it is secret): each keyring reads it
    // from its file text, as the daemon reads key files.
    let (three, four) = (
        KeyMaterial::generate().unwrap().to_file_text(),
        KeyMaterial::generate().unwrap().to_file_text(),
    );
    let key = |text: &str| KeyMaterial::from_file_bytes(text.as_bytes()).unwrap();
    let with = |keys: Vec<(u32, KeyMaterial)>, active: u32| StoreOptions {
        keyring: Some(std::sync::Arc::new(Keyring::new(keys, active).unwrap())),
        ..StoreOptions::default()
    };
    for b in backends("encryption_at_open") {
        synced(&b);
        issue(&b.store, "backend", "k1", "plain-value-one", t0());
        issue(&b.store, "crm", "k2", "plain-value-two", t0());
        let counts = b.store.value_counts().unwrap();
        assert_eq!(counts, [ValueCount { key: None, rows: 2 }], "{}", b.name);
        let OnBackend {
            name, store, at, ..
        } = b;
        drop(store);

        // A keyring seals every plaintext row at open.
        let store = open_again(&at, &with(vec![(3, key(&three))], 3)).unwrap();
        assert_eq!(
            store.value_counts().unwrap(),
            [ValueCount {
                key: Some(3),
                rows: 2
            }],
            "{name}"
        );
        assert_eq!(
            store.token(&kid("k1")).unwrap().unwrap().value.expose(),
            "plain-value-one"
        );
        drop(store);

        // Without the keys, a writer is refused, naming what is sealed.
        let refused = open_again(&at, &StoreOptions::default()).unwrap_err();
        assert!(
            matches!(refused, StoreError::EncryptedWithoutKeys { .. }),
            "{name}: {refused:?}"
        );
        assert!(refused.needs_config_change(), "{name}");

        // A new active key: each step re-seals rows until none is left.
        let store = open_again(&at, &with(vec![(3, key(&three)), (4, key(&four))], 4)).unwrap();
        let step = store.rekey_step().unwrap();
        assert_eq!((step.rekeyed, step.remaining), (2, 0), "{name}");
        assert_eq!(
            store.value_counts().unwrap(),
            [ValueCount {
                key: Some(4),
                rows: 2
            }],
            "{name}"
        );
        assert_eq!(
            store.token(&kid("k2")).unwrap().unwrap().value.expose(),
            "plain-value-two"
        );
    }
}

#[test]
fn an_issue_condemns_the_tokens_its_incidents_could_not_revoke_on_both_backends() {
    use linetokd::domain::RequestKind;
    for b in backends("condemn_survivors") {
        let store = &b.store;
        let name = b.name;
        sync_shop_bot(store);
        let at = |secs| t0() + Duration::seconds(secs);
        let incident = |secs| {
            store
                .add_requests(
                    at(secs),
                    &ch("1000"),
                    &[gr("backend")],
                    RequestKind::Incident,
                    "alice",
                )
                .unwrap()[0]
        };
        let complete = |key: &str, secs, closes: &[i64]| {
            let intent = store
                .begin_issue(at(secs), &ch("1000"), &gr("backend"))
                .unwrap();
            let mut condemned = store
                .complete_issue(
                    at(secs),
                    intent,
                    &issued(key, &format!("tok-{key}"), at(secs)),
                    closes,
                )
                .unwrap()
                .condemned;
            condemned.sort();
            condemned
        };
        let refused = |key: &str| store.token(&kid(key)).unwrap().unwrap().record.refused_at;
        complete("k1", 0, &[]);
        issue(store, "crm", "c1", "tok-c1", at(0));
        let a = incident(30);
        // A rotation in flight when the incident was filed: its token came
        // after the leak, so the incident does not condemn it.
        complete("k2", 60, &[]);
        assert_eq!(complete("k3", 120, &[a]), [kid("k1")], "{name}");
        assert_eq!(refused("k1"), Some(at(120)), "{name}");
        assert_eq!(refused("k2"), None, "{name}");
        assert_eq!(b.last_event().0, "issued", "{name}");
        // A second incident condemns what it follows, the fresh token and
        // the other group aside; the first, closed already, adds nothing.
        let second = incident(150);
        assert_eq!(
            complete("k4", 180, &[a, second]),
            [kid("k2"), kid("k3")],
            "{name}"
        );
        for key in ["k2", "k3"] {
            assert_eq!(refused(key), Some(at(180)), "{name}: {key}");
        }
        assert_eq!(refused("k1"), Some(at(120)), "{name}: condemned once");
        assert_eq!((refused("k4"), refused("c1")), (None, None), "{name}");
        assert_eq!(
            b.texts(
                "SELECT key_id FROM events WHERE kind = 'refused' ORDER BY id",
                &[]
            ),
            ["k1", "k2", "k3"].map(|k| vec![Some(k.to_owned())]),
            "{name}"
        );
    }
}

#[test]
fn a_failure_under_replaced_credentials_is_not_recorded_on_both_backends() {
    for b in backends("failure_under_replaced") {
        let store = &b.store;
        let name = b.name;
        let spec = |fingerprint: &str| ChannelSpec {
            id: ch("1000"),
            name: "shop-bot".into(),
            groups: vec![gr("backend")],
            fingerprint: Some(fingerprint.into()),
            short_lived: Vec::new(),
        };
        store.sync_config(t0(), &[spec("old")]).unwrap();
        let failing = GroupRuntime {
            consecutive_failures: 1,
            retry_not_before: Some(t0() + Duration::minutes(30)),
            failure_kind: Some(linetokd::domain::FailureKind::Permanent),
            ..GroupRuntime::default()
        };
        let listing = ReconcileRuntime {
            failures: 1,
            retry_not_before: Some(t0() + Duration::minutes(30)),
            error: Some("invalid_client".into()),
        };
        let runtime = || {
            store
                .group(&ch("1000"), &gr("backend"))
                .unwrap()
                .unwrap()
                .runtime
        };
        let listing_failures = || {
            store
                .channel(&ch("1000"))
                .unwrap()
                .unwrap()
                .reconcile
                .failures
        };
        // Made under the digest the store holds (or none known): recorded.
        let group = gr("backend");
        for under in [Some("old"), None] {
            assert!(
                store
                    .record_group_failure(&ch("1000"), &group, &failing, under)
                    .unwrap(),
                "{name}"
            );
            assert!(
                store
                    .record_listing_failure(&ch("1000"), &listing, under)
                    .unwrap(),
                "{name}"
            );
        }
        assert_eq!(runtime(), failing, "{name}");
        assert_eq!(listing_failures(), 1, "{name}");
        // The reload with the fixed secret ends the streaks; a failure of a
        // call made before it, with the old secret, lands after: not
        // recorded, the streaks stay ended.
        store.sync_config(t0(), &[spec("new")]).unwrap();
        assert_eq!(runtime(), GroupRuntime::default(), "{name}");
        assert!(
            !store
                .record_group_failure(&ch("1000"), &group, &failing, Some("old"))
                .unwrap(),
            "{name}"
        );
        assert!(
            !store
                .record_listing_failure(&ch("1000"), &listing, Some("old"))
                .unwrap(),
            "{name}"
        );
        assert_eq!(runtime(), GroupRuntime::default(), "{name}");
        assert_eq!(listing_failures(), 0, "{name}");
    }
}
