//! Encryption at rest (`[encryption]`): token values sealed with
//! AES-256-GCM in the store, opened on read, bound to their row and key;
//! a plaintext database migrated in one transaction with nothing left in
//! the file or its WAL; rotation to a new key; refusals naming what is
//! missing; and the real binary: exit 2 without keys, kill -9 in the middle
//! of the migration, a daemon run against the sandbox.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use linetokd::domain::{AccessToken, ChannelId, GroupName, KeyId};
use linetokd::store::crypt::{KeyMaterial, Keyring};
use linetokd::store::{
    ChannelSpec, Durability, IssuedToken, Store, StoreError, StoreOptions, ValueCount,
};

use crate::e2e::harness::{GROUPS, Lab, Line, Proc, SandboxToken, write_private};

const CHANNEL: &str = "1234567890";

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

/// A token value as long as LINE's, distinct per `n`.
fn value(n: usize) -> String {
    format!(
        "eyJhbGciOiJIUzI1NiJ9.secret-token-value-{n:04}-{}",
        "Qx".repeat(40)
    )
}

/// Writes a fresh database key file with `linetokd keygen`'s code.
fn key_file(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    linetokd::keygen::write_db_key(&path).unwrap();
    path
}

fn ring(keys: &[(u32, &Path)], active: u32) -> Arc<Keyring> {
    let keys = keys.iter().map(|(id, path)| {
        (
            *id,
            KeyMaterial::from_file_bytes(&std::fs::read(path).unwrap()).unwrap(),
        )
    });
    Arc::new(Keyring::new(keys, active).unwrap())
}

fn options(keyring: Option<Arc<Keyring>>) -> StoreOptions {
    StoreOptions {
        durability: Durability::Unsynced,
        keyring,
        keep_plaintext: false,
        shared: false,
    }
}

fn open(path: &Path, keyring: Option<Arc<Keyring>>) -> Result<Store, StoreError> {
    Store::open_with(path, options(keyring))
}

fn sync(store: &Store) {
    store
        .sync_config(
            t0(),
            &[ChannelSpec {
                id: ChannelId::new(CHANNEL),
                name: "chan".into(),
                groups: GROUPS.iter().map(|g| GroupName::new(*g)).collect(),
                fingerprint: None,
                short_lived: Vec::new(),
            }],
        )
        .unwrap();
}

fn store_token(store: &Store, group: &str, key_id: &str, value: &str) {
    let intent = store
        .begin_issue(t0(), &ChannelId::new(CHANNEL), &GroupName::new(group))
        .unwrap();
    store
        .complete_issue(
            t0(),
            intent,
            &IssuedToken {
                key_id: KeyId::new(key_id),
                value: AccessToken::new(value),
                issued_at: t0(),
                expires_at: t0() + Duration::days(30),
                verified_at: Some(t0()),
            },
            &[],
        )
        .unwrap();
}

/// Every byte of the database file and its WAL, as they are on disk.
fn file_bytes(db: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(db).unwrap();
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    if let Ok(more) = std::fs::read(PathBuf::from(wal)) {
        bytes.extend_from_slice(&more);
    }
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// (plaintext rows, sealed rows), read with SQLite directly.
fn raw_counts(db: &Path) -> (i64, i64) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row(
        "SELECT count(access_token), count(access_token_enc) FROM tokens",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

fn sealed_of(db: &Path, key_id: &str) -> Vec<u8> {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row(
        "SELECT access_token_enc FROM tokens WHERE key_id = ?1",
        [key_id],
        |r| r.get(0),
    )
    .unwrap()
}

fn set_sealed(db: &Path, key_id: &str, sealed: &[u8]) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute(
        "UPDATE tokens SET access_token_enc = ?2 WHERE key_id = ?1",
        rusqlite::params![key_id, sealed],
    )
    .unwrap();
}

fn assert_no_value_in(err: &StoreError, values: &[String]) {
    let text = linetokd::logging::error_chain(err);
    for v in values {
        assert!(!text.contains(v.as_str()), "{text}");
    }
}

#[test]
fn values_are_sealed_on_write_opened_on_read_and_still_screened() {
    let dir = tempfile::tempdir().unwrap();
    let k1 = key_file(dir.path(), "db-1.key");
    let keys = ring(&[(1, &k1)], 1);
    let db = dir.path().join("linetokd.db");
    let store = open(&db, Some(Arc::clone(&keys))).unwrap();
    sync(&store);
    store_token(&store, "a", "kid-a", &value(1));
    store_token(&store, "b", "kid-b", &value(2));
    let read = store.token(&KeyId::new("kid-a")).unwrap().unwrap();
    assert_eq!(read.value.expose(), value(1));
    assert_eq!(
        store.value_counts().unwrap(),
        [ValueCount {
            key: Some(1),
            rows: 2
        }]
    );
    assert_eq!(store.seal_counts().unwrap(), [(1, 2)]);
    // Screening works on the clear values kept in memory.
    assert!(store.holds_token(&format!("x {} y", value(2))).unwrap());
    let screened = store.screen_text(&format!("leak: {}", value(1))).unwrap();
    assert!(!screened.contains(&value(1)), "{screened}");
    drop(store);

    // On disk: no plaintext column, the sealed format's header.
    assert_eq!(raw_counts(&db), (0, 2));
    let sealed = sealed_of(&db, "kid-a");
    assert_eq!(&sealed[..6], &[1, 1, 0, 0, 0, 1]);
    assert_eq!(sealed.len(), 6 + 12 + value(1).len() + 16);

    // A restart screens too: the values are opened into memory at open.
    let store = open(&db, Some(Arc::clone(&keys))).unwrap();
    assert!(store.holds_token(&format!("x {} y", value(1))).unwrap());
    drop(store);

    // Read-only beside a daemon: with the keys the value, without them an
    // error naming the row and never the value.
    let reader = Store::open_read_only_with(&db, Some(keys)).unwrap();
    let tokens = reader
        .tokens_of_group(&ChannelId::new(CHANNEL), &GroupName::new("b"))
        .unwrap();
    assert_eq!(tokens[0].value.expose(), value(2));
    let err = Store::open_read_only(&db)
        .unwrap()
        .token(&KeyId::new("kid-a"))
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("token kid-a"), "{text}");
    assert!(
        linetokd::logging::error_chain(&err).contains("not in [encryption] key_files"),
        "{text}"
    );
    assert_no_value_in(&err, &[value(1), value(2)]);
}

#[test]
fn a_flipped_byte_swapped_values_and_an_unknown_key_each_fail_naming_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let k1 = key_file(dir.path(), "db-1.key");
    let keys = ring(&[(1, &k1)], 1);
    let db = dir.path().join("linetokd.db");
    let store = open(&db, Some(Arc::clone(&keys))).unwrap();
    sync(&store);
    store_token(&store, "a", "kid-a", &value(1));
    store_token(&store, "b", "kid-b", &value(2));
    drop(store);
    let values = [value(1), value(2)];
    let a = sealed_of(&db, "kid-a");
    let b = sealed_of(&db, "kid-b");
    let read_a = || {
        Store::open_read_only_with(&db, Some(Arc::clone(&keys)))
            .unwrap()
            .token(&KeyId::new("kid-a"))
    };

    // One flipped byte in the ciphertext.
    let mut flipped = a.clone();
    flipped[20] ^= 0x01;
    set_sealed(&db, "kid-a", &flipped);
    let err = read_a().unwrap_err();
    assert!(matches!(err, StoreError::Undecryptable { .. }), "{err}");
    let text = linetokd::logging::error_chain(&err);
    assert!(
        text.contains("token kid-a (channel 1234567890, group a)"),
        "{text}"
    );
    assert!(text.contains("altered, moved from another row"), "{text}");
    assert_no_value_in(&err, &values);
    // The daemon refuses to start on it, naming the row.
    let err = open(&db, Some(Arc::clone(&keys))).unwrap_err();
    assert!(err.to_string().contains("token kid-a"), "{err}");
    assert!(err.needs_config_change());

    // Two rows' values swapped: each opens nowhere but its own row.
    set_sealed(&db, "kid-a", &b);
    set_sealed(&db, "kid-b", &a);
    let err = read_a().unwrap_err();
    assert!(
        linetokd::logging::error_chain(&err).contains("moved from another row"),
        "{err}"
    );
    let err = Store::open_read_only_with(&db, Some(Arc::clone(&keys)))
        .unwrap()
        .token(&KeyId::new("kid-b"))
        .unwrap_err();
    assert!(err.to_string().contains("token kid-b"), "{err}");
    assert_no_value_in(&err, &values);

    // Put back, both open again.
    set_sealed(&db, "kid-a", &a);
    set_sealed(&db, "kid-b", &b);
    assert_eq!(read_a().unwrap().unwrap().value.expose(), value(1));

    // An unknown key: a keyring without key 1 refuses to start, naming the
    // key and its rows; a read names the key.
    let k2 = key_file(dir.path(), "db-2.key");
    let other = ring(&[(2, &k2)], 2);
    let err = open(&db, Some(Arc::clone(&other))).unwrap_err();
    assert!(matches!(err, StoreError::MissingKeys { .. }), "{err}");
    assert!(err.to_string().contains("key 1: 2 rows"), "{err}");
    let err = Store::open_read_only_with(&db, Some(other))
        .unwrap()
        .token(&KeyId::new("kid-a"))
        .unwrap_err();
    assert!(
        linetokd::logging::error_chain(&err)
            .contains("sealed under database key 1, which is not in [encryption] key_files"),
        "{err}"
    );
    // And no keyring at all: refused, naming [encryption].
    let err = open(&db, None).unwrap_err();
    assert!(
        matches!(err, StoreError::EncryptedWithoutKeys { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("no [encryption]"), "{err}");
    assert!(err.to_string().contains("key 1: 2 rows"), "{err}");
}

#[test]
fn a_key_of_the_wrong_length_or_mode_is_refused_naming_the_key() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.key");
    write_private(&short, "SECRETKEYBYTES\n");
    let open_to_all = key_file(dir.path(), "open.key");
    std::fs::set_permissions(&open_to_all, std::fs::Permissions::from_mode(0o644)).unwrap();
    let good = key_file(dir.path(), "good.key");
    let text = format!(
        "[encryption]\nkey_files = [ {{ id = 1, file = \"{}\" }}, {{ id = 2, file = \"{}\" }},\n\
         {{ id = 3, file = \"{}\" }}, {{ id = 3, file = \"{}\" }} ]\nactive = 9\n",
        short.display(),
        open_to_all.display(),
        good.display(),
        good.display(),
    );
    let settings = linetokd::config::Settings::from_toml(
        &text,
        Path::new("test.toml"),
        &std::collections::HashMap::new(),
    )
    .unwrap();
    let err = settings.validate().unwrap_err();
    let problem = |key: &str| {
        err.problems()
            .iter()
            .find(|p| p.key == key)
            .unwrap_or_else(|| panic!("no problem at {key}: {err}"))
            .message
            .clone()
    };
    assert!(
        problem("encryption.key_files[0].file").contains("holds 14 characters"),
        "{err}"
    );
    assert!(
        problem("encryption.key_files[1].file").contains("has mode 0644"),
        "{err}"
    );
    assert!(
        problem("encryption.key_files[3].id").contains("duplicates encryption.key_files[2].id"),
        "{err}"
    );
    assert!(
        problem("encryption.active").contains("9 is not the id of any key_files entry"),
        "{err}"
    );
    assert!(!err.to_string().contains("SECRETKEYBYTES"), "{err}");
}

#[test]
fn a_new_active_key_re_encrypts_every_row_and_the_old_key_becomes_unused() {
    let dir = tempfile::tempdir().unwrap();
    let k1 = key_file(dir.path(), "db-1.key");
    let k2 = key_file(dir.path(), "db-2.key");
    let db = dir.path().join("linetokd.db");
    let store = open(&db, Some(ring(&[(1, &k1)], 1))).unwrap();
    sync(&store);
    for n in 0..250 {
        let group = GROUPS[n % 2];
        store_token(&store, group, &format!("kid-{n}"), &value(n));
    }
    drop(store);

    let store = open(&db, Some(ring(&[(1, &k1), (2, &k2)], 2))).unwrap();
    // Opening does not re-encrypt: that is the background task's job.
    assert_eq!(
        store.value_counts().unwrap(),
        [ValueCount {
            key: Some(1),
            rows: 250
        }]
    );
    let mut steps = Vec::new();
    loop {
        let step = store.rekey_step().unwrap();
        steps.push(step.rekeyed);
        if step.remaining == 0 {
            break;
        }
    }
    assert_eq!(steps, [100, 100, 50], "at most 100 rows a step");
    assert_eq!(
        store.value_counts().unwrap(),
        [ValueCount {
            key: Some(2),
            rows: 250
        }]
    );
    assert_eq!(store.seal_counts().unwrap(), [(1, 250), (2, 250)]);
    assert_eq!(store.rekey_step().unwrap().rekeyed, 0);
    drop(store);

    // Key 1 can go: a keyring of key 2 alone opens every value.
    let store = open(&db, Some(ring(&[(2, &k2)], 2))).unwrap();
    for n in [0, 101, 249] {
        let t = store
            .token(&KeyId::new(format!("kid-{n}")))
            .unwrap()
            .unwrap();
        assert_eq!(t.value.expose(), value(n));
    }
}

#[test]
fn migrating_a_plaintext_database_leaves_no_value_in_the_file_or_its_wal() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("linetokd.db");
    let store = open(&db, None).unwrap();
    sync(&store);
    let values: Vec<String> = (0..40).map(value).collect();
    for (n, v) in values.iter().enumerate() {
        store_token(&store, GROUPS[n % 2], &format!("kid-{n}"), v);
    }
    drop(store);
    let before = file_bytes(&db);
    assert!(
        values.iter().all(|v| contains(&before, v)),
        "the plaintext values are on disk before"
    );

    let k1 = key_file(dir.path(), "db-1.key");
    let store = open(&db, Some(ring(&[(1, &k1)], 1))).unwrap();
    assert_eq!(
        store.value_counts().unwrap(),
        [ValueCount {
            key: Some(1),
            rows: 40
        }]
    );
    // Read while the store is still open (its WAL in place), and after.
    let during = file_bytes(&db);
    store_token(&store, "a", "kid-new", &value(99));
    drop(store);
    let after = file_bytes(&db);
    for v in values.iter().chain([&value(99)]) {
        // The whole value and its distinctive middle: no piece survives.
        let middle = &v[20..50];
        for bytes in [&during, &after] {
            assert!(!contains(bytes, v), "a value is still on disk");
            assert!(!contains(bytes, middle), "part of a value is still on disk");
        }
    }
    assert_eq!(raw_counts(&db), (0, 41));
}

/// A run that sealed the plaintext rows and died before scrubbing the file
/// left the old values in free pages: the next open finishes the scrub
/// (the marker is committed with the seals).
#[test]
fn a_scrub_interrupted_by_a_crash_is_finished_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("linetokd.db");
    let store = open(&db, None).unwrap();
    sync(&store);
    let values: Vec<String> = (0..20).map(value).collect();
    for (n, v) in values.iter().enumerate() {
        store_token(&store, GROUPS[n % 2], &format!("kid-{n}"), v);
    }
    drop(store);
    let k1 = key_file(dir.path(), "db-1.key");
    drop(open(&db, Some(ring(&[(1, &k1)], 1))).unwrap());
    // What the crash leaves: the rows sealed, the marker set, and old
    // plaintext in free pages (put back here by hand, without
    // secure_delete, as the migration's table rebuild leaves it).
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TABLE leftover (v TEXT); \
             INSERT INTO daemon_notes (key, value, at) VALUES ('scrub_pending', 'pending', 0);",
        )
        .unwrap();
        for v in &values {
            conn.execute("INSERT INTO leftover (v) VALUES (?1)", [v])
                .unwrap();
        }
        conn.execute_batch("DROP TABLE leftover; PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
    }
    assert!(
        values.iter().any(|v| contains(&file_bytes(&db), v)),
        "the test's leftover plaintext is in free pages"
    );
    let store = open(&db, Some(ring(&[(1, &k1)], 1))).unwrap();
    drop(store);
    let after = file_bytes(&db);
    assert!(
        values.iter().all(|v| !contains(&after, v)),
        "the interrupted scrub was not finished"
    );
    let conn = rusqlite::Connection::open(&db).unwrap();
    let pending: i64 = conn
        .query_row(
            "SELECT count(*) FROM daemon_notes WHERE key = 'scrub_pending'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(pending, 0, "the marker is cleared once scrubbed");
}

#[test]
fn a_failure_in_the_middle_of_the_migration_leaves_every_row_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("linetokd.db");
    let store = open(&db, None).unwrap();
    sync(&store);
    for n in 0..10 {
        store_token(&store, GROUPS[n % 2], &format!("kid-{n}"), &value(n));
    }
    drop(store);
    // Key 1 may seal only 4 more values: the 5th seal fails mid-transaction.
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute(
            "INSERT INTO encryptions (enc_key_id, sealed) VALUES (1, ?1)",
            [(1i64 << 31) - 4],
        )
        .unwrap();
    }
    let k1 = key_file(dir.path(), "db-1.key");
    let err = open(&db, Some(ring(&[(1, &k1)], 1))).unwrap_err();
    assert!(
        matches!(err, StoreError::KeyWornOut { enc_key_id: 1 }),
        "{err}"
    );
    assert!(err.to_string().contains("2^31"), "{err}");
    assert_eq!(raw_counts(&db), (10, 0), "all plaintext, nothing half done");

    // With a fresh key the migration runs whole.
    let k2 = key_file(dir.path(), "db-2.key");
    let store = open(&db, Some(ring(&[(1, &k1), (2, &k2)], 2))).unwrap();
    drop(store);
    assert_eq!(raw_counts(&db), (0, 10));
}

// ---------------------------------------------------------------------------
// The real binary.

/// A daemon config for `dir` (database, state, a channel with the fixture
/// key) against an unreachable LINE, with `extra` appended.
fn binary_config(dir: &Path, extra: &str) -> PathBuf {
    let key = dir.join("chan.pem");
    if !key.exists() {
        let fixture = std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys/rsa2048-pkcs8.pem"),
        )
        .unwrap();
        write_private(&key, &fixture);
    }
    let groups: String = GROUPS
        .iter()
        .map(|g| format!("\n  [[channel.group]]\n  name = \"{g}\"\n"))
        .collect();
    let text = format!(
        "[daemon]\ndatabase = \"{db}\"\nstate_dir = \"{state}\"\nline_api = \"http://127.0.0.1:9\"\n\
         listen = \"127.0.0.1:0\"\nlog_format = \"json\"\n\n\
         [[channel]]\nid = \"{CHANNEL}\"\nname = \"chan\"\nkey_file = \"{key}\"\nkid = \"kid-1\"\n{groups}\n{extra}",
        db = dir.join("linetokd.db").display(),
        state = dir.display(),
        key = key.display(),
    );
    let path = dir.join("linetokd.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn encryption_section(keys: &[(u32, &Path)], active: u32) -> String {
    let files: Vec<String> = keys
        .iter()
        .map(|(id, path)| format!("{{ id = {id}, file = \"{}\" }}", path.display()))
        .collect();
    format!(
        "[encryption]\nkey_files = [ {} ]\nactive = {active}\n",
        files.join(", ")
    )
}

#[tokio::test]
async fn an_encrypted_database_without_encryption_in_the_config_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("linetokd.db");
    let k1 = key_file(dir.path(), "db-1.key");
    let store = open(&db, Some(ring(&[(1, &k1)], 1))).unwrap();
    sync(&store);
    store_token(&store, "a", "kid-a", &value(1));
    store_token(&store, "b", "kid-b", &value(2));
    drop(store);
    let config = binary_config(dir.path(), "");
    for args in [
        vec!["run", "--config", config.to_str().unwrap()],
        vec!["status", "--config", config.to_str().unwrap()],
        vec![
            "token",
            "--channel",
            CHANNEL,
            "--group",
            "a",
            "--config",
            config.to_str().unwrap(),
        ],
    ] {
        let mut proc = Proc::spawn(args[0], &args, &[]);
        let status = proc.exit().await;
        let text = proc.all_text();
        assert_eq!(status.code(), Some(2), "{args:?}: {text}");
        assert!(text.contains("[encryption]"), "{args:?}: {text}");
        assert!(!text.contains(&value(1)), "{text}");
    }
    // `run` names the keys and rows it would need.
    let mut run = Proc::spawn("run", &["run", "--config", config.to_str().unwrap()], &[]);
    run.exit().await;
    assert!(
        run.all_text().contains("key 1: 2 rows"),
        "{}",
        run.all_text()
    );
    assert_eq!(raw_counts(&db), (0, 2), "nothing was changed");
}

#[tokio::test]
async fn kill_9_in_the_middle_of_the_migration_leaves_all_plaintext_or_all_encrypted() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("linetokd.db");
    let store = open(&db, None).unwrap();
    sync(&store);
    store_token(&store, "a", "kid-first", &value(0));
    drop(store);
    // Many rows, so sealing them takes a while after the daemon says it
    // started.
    const ROWS: i64 = 20_000;
    {
        let mut conn = rusqlite::Connection::open(&db).unwrap();
        let tx = conn.transaction().unwrap();
        for n in 1..ROWS {
            tx.execute(
                "INSERT INTO tokens (key_id, channel_id, group_name, access_token, issued_at, \
                 expires_at, state, state_changed_at) VALUES (?1, ?2, 'b', ?3, 0, 1, 'expired', 0)",
                rusqlite::params![
                    format!("kid-{n}"),
                    CHANNEL,
                    value(usize::try_from(n).unwrap())
                ],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    let k1 = key_file(dir.path(), "db-1.key");
    let config = binary_config(dir.path(), &encryption_section(&[(1, &k1)], 1));
    let mut daemon = Proc::spawn(
        "daemon",
        &["run", "--config", config.to_str().unwrap()],
        &[("RUST_LOG", "info")],
    );
    daemon
        .wait_for(0, "the migration to start", |l: &Line| {
            l.begins("encrypting every plaintext token value")
        })
        .await;
    daemon.kill9().await;
    let (plain, sealed) = raw_counts(&db);
    assert!(
        (plain, sealed) == (ROWS, 0) || (plain, sealed) == (0, ROWS),
        "half migrated: {plain} plaintext, {sealed} encrypted"
    );

    // The next start finishes (or finds finished) the migration.
    let mut daemon = Proc::spawn(
        "daemon again",
        &["run", "--config", config.to_str().unwrap()],
        &[("RUST_LOG", "info")],
    );
    daemon
        .wait_for(0, "the daemon to run", |l: &Line| l.is("linetokd running"))
        .await;
    daemon.signal("TERM");
    daemon.exit().await;
    assert_eq!(raw_counts(&db), (0, ROWS));
    let bytes = file_bytes(&db);
    assert!(!contains(&bytes, &value(0)));
    assert!(!contains(&bytes, &value(12_345)));
}

#[tokio::test]
async fn keygen_writes_a_private_db_key_and_never_overwrites_one() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("db.key");
    let args = ["keygen", "--db-key", "--out", out.to_str().unwrap()];
    let mut first = Proc::spawn("keygen", &args, &[]);
    first.exit_ok().await;
    let meta = std::fs::metadata(&out).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let written = std::fs::read(&out).unwrap();
    assert!(KeyMaterial::from_file_bytes(&written).is_ok());
    assert!(
        !first
            .all_text()
            .contains(std::str::from_utf8(&written).unwrap().trim())
    );
    let mut again = Proc::spawn("keygen again", &args, &[]);
    assert_eq!(again.exit().await.code(), Some(2), "{}", again.all_text());
    assert!(
        again.all_text().contains("already exists"),
        "{}",
        again.all_text()
    );
    assert_eq!(std::fs::read(&out).unwrap(), written);
}

/// Tokens that rotate 3 to 4 seconds after issue, quietly.
const ROTATING: &str = r#"
token_lifetime = "12s"
rotate_before = "8s"
rotation_jitter = "1s"
verify_interval = "1h"
reconcile_interval = "1h"
max_issues_per_hour = 1000
"#;

async fn wait_issued(daemon: &Proc, n: usize) {
    for group in GROUPS {
        daemon
            .wait_for_n(
                0,
                n,
                &format!("{n} tokens issued for {group}"),
                |l: &Line| l.is_with("token issued", "group", group),
            )
            .await;
    }
}

async fn status_values(lab: &Lab) -> serde_json::Value {
    let mut status = Proc::spawn(
        "status",
        &["status", "--json", "--config", lab.config.to_str().unwrap()],
        &[],
    );
    status.exit_ok().await;
    let json: String = status
        .lines()
        .iter()
        .filter(|l| l.stream == crate::e2e::harness::Stream::Stdout)
        .map(|l| l.text.clone())
        .collect::<Vec<_>>()
        .join("\n");
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    report["token_values"].clone()
}

#[tokio::test]
async fn a_daemon_with_encryption_issues_rotates_and_serves_and_rekeys_without_a_value_on_disk() {
    let lab = Lab::start(ROTATING, "info").await;
    let k1 = key_file(lab.dir(), "db-1.key");
    let k2 = key_file(lab.dir(), "db-2.key");
    let base = std::fs::read_to_string(&lab.config).unwrap();
    lab.replace_config(&format!("{base}\n{}", encryption_section(&[(1, &k1)], 1)));

    let mut daemon = lab.run("daemon", "debug", &[]);
    wait_issued(&daemon, 2).await;
    // Served: `linetokd token` opens the newest value read-only. The
    // daemon rotates every 4 s or so here, so the sandbox's book is read
    // once `token` has printed: read before, it may lack the token a
    // rotation issued meanwhile (a busy machine takes seconds to start a
    // process).
    let asked = Utc::now();
    let mut token = Proc::spawn(
        "token",
        &[
            "token",
            "--channel",
            "1234567890",
            "--group",
            "a",
            "--config",
            lab.config.to_str().unwrap(),
        ],
        &[],
    );
    token.exit_ok().await;
    let tokens: Vec<SandboxToken> = lab.tokens().await;
    // `plan` reads the same encrypted store beside the running daemon. Its
    // config differs only in the rotation timings: with this test's
    // 12-second tokens a day's forecast is thousands of rotations, a
    // minute and more for a debug build on a busy machine, and the store
    // is what is under test here.
    let slow = std::fs::read_to_string(&lab.config)
        .unwrap()
        .replace(r#"token_lifetime = "12s""#, r#"token_lifetime = "2h""#)
        .replace(r#"rotate_before = "8s""#, r#"rotate_before = "1h""#);
    assert!(slow.contains(r#"token_lifetime = "2h""#), "{slow}");
    let plan_config = lab.dir().join("plan.toml");
    std::fs::write(&plan_config, slow).unwrap();
    let mut plan = Proc::spawn(
        "plan",
        &[
            "plan",
            "--days",
            "1",
            "--config",
            plan_config.to_str().unwrap(),
        ],
        &[],
    );
    plan.exit_ok().await;
    assert!(plan.all_text().contains("issue"), "{}", plan.all_text());
    let printed = token.lines()[0].text.clone();
    assert!(
        tokens
            .iter()
            .any(|t| t.access_token == printed && t.expires_at > asked),
        "`token` printed a value the sandbox issued, unexpired when asked"
    );
    daemon.signal("TERM");
    daemon.exit_ok().await;

    let tokens = lab.tokens().await;
    assert!(tokens.len() >= 4, "{tokens:?}");
    let bytes = file_bytes(&lab.db);
    for t in &tokens {
        assert!(
            !contains(&bytes, &t.access_token),
            "{} is on disk",
            t.key_id
        );
    }
    let keys = ring(&[(1, &k1)], 1);
    let store = Store::open_read_only_with(&lab.db, Some(keys)).unwrap();
    for t in &tokens {
        let stored = store.token(&KeyId::new(t.key_id.clone())).unwrap().unwrap();
        assert_eq!(stored.value.expose(), t.access_token);
    }
    drop(store);
    assert_eq!(
        status_values(&lab).await,
        serde_json::json!([{ "key": 1, "rows": tokens.len() }])
    );

    // Rotation: key 2 active; the daemon re-encrypts in the background.
    lab.replace_config(&format!(
        "{base}\n{}",
        encryption_section(&[(1, &k1), (2, &k2)], 2)
    ));
    let mut daemon = lab.run("daemon with key 2", "info", &[]);
    daemon
        .wait_for(0, "the re-encryption to finish", |l: &Line| {
            l.begins("every stored token value is encrypted under the active database key")
        })
        .await;
    let values = status_values(&lab).await;
    let rows = values[0]["rows"].as_u64().unwrap();
    assert_eq!(values, serde_json::json!([{ "key": 2, "rows": rows }]));
    let url = crate::e2e::harness::http_url(&daemon).await;
    let metrics = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "linetokd_db_values{state=\"encrypted\",key_id=\"1\"} 0",
        "linetokd_db_decrypt_failures_total 0",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    assert!(
        metrics.contains("linetokd_db_values{state=\"encrypted\",key_id=\"2\"} "),
        "{metrics}"
    );
    assert!(
        metrics.contains("linetokd_db_encryptions_total{key_id=\"2\"} "),
        "{metrics}"
    );
    daemon.signal("TERM");
    daemon.exit_ok().await;
    let bytes = file_bytes(&lab.db);
    for t in lab.tokens().await {
        assert!(
            !contains(&bytes, &t.access_token),
            "{} is on disk",
            t.key_id
        );
    }
    lab.assert_nothing_secret_printed(&[&daemon, &plan]).await;
}

#[tokio::test]
async fn db_rekey_and_db_decrypt_run_with_the_daemon_stopped_and_name_it_when_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("linetokd.db");
    let k1 = key_file(dir.path(), "db-1.key");
    let k2 = key_file(dir.path(), "db-2.key");
    let store = open(&db, Some(ring(&[(1, &k1)], 1))).unwrap();
    sync(&store);
    store_token(&store, "a", "kid-a", &value(1));
    store_token(&store, "b", "kid-b", &value(2));
    drop(store);
    let config = binary_config(dir.path(), &encryption_section(&[(1, &k1), (2, &k2)], 2));
    let config = config.to_str().unwrap();
    let run = |name: &str, args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--config", config]);
        Proc::spawn(name, &all, &[])
    };

    let mut rekey = run("rekey", &["db", "rekey"]);
    rekey.exit_ok().await;
    assert!(
        rekey
            .all_text()
            .contains("re-encrypted 2 token values under key 2; 2 encrypted with key 2"),
        "{}",
        rekey.all_text()
    );

    let mut daemon = Proc::spawn(
        "daemon",
        &["run", "--config", config],
        &[("RUST_LOG", "info")],
    );
    daemon
        .wait_for(0, "the daemon to run", |l: &Line| l.is("linetokd running"))
        .await;
    let mut refused = run("rekey beside the daemon", &["db", "rekey"]);
    assert_eq!(
        refused.exit().await.code(),
        Some(1),
        "{}",
        refused.all_text()
    );
    let text = refused.all_text();
    assert!(
        text.contains(&format!("a running linetokd (pid {})", daemon.pid())),
        "{text}"
    );
    assert!(text.contains("in the background"), "{text}");
    let mut waited = run("rekey --wait", &["db", "rekey", "--wait"]);
    waited.exit_ok().await;
    assert!(
        waited
            .all_text()
            .contains("the daemon has re-encrypted every token value under key 2"),
        "{}",
        waited.all_text()
    );
    // The config asks for key 1 now, but the daemon was not restarted: it
    // keeps sealing under key 2, and `--wait` says so instead of waiting
    // for ever.
    let stale = dir.path().join("active-1.toml");
    let text = std::fs::read_to_string(config).unwrap();
    let swapped = text.replace("active = 2", "active = 1");
    assert_ne!(text, swapped, "{text}");
    std::fs::write(&stale, swapped).unwrap();
    let mut stalled = Proc::spawn(
        "rekey --wait, daemon not restarted",
        &["db", "rekey", "--wait", "--config", stale.to_str().unwrap()],
        &[],
    );
    assert_eq!(
        stalled.exit().await.code(),
        Some(1),
        "{}",
        stalled.all_text()
    );
    assert!(
        stalled
            .all_text()
            .contains("restart it to take [encryption] active = 1"),
        "{}",
        stalled.all_text()
    );
    let mut refused = run("decrypt beside the daemon", &["db", "decrypt"]);
    assert_eq!(
        refused.exit().await.code(),
        Some(1),
        "{}",
        refused.all_text()
    );
    assert!(
        refused.all_text().contains("stop it first"),
        "{}",
        refused.all_text()
    );
    daemon.signal("TERM");
    daemon.exit().await;

    let mut decrypt = run("decrypt", &["db", "decrypt"]);
    decrypt.exit_ok().await;
    assert!(
        decrypt
            .all_text()
            .contains("decrypted 2 token values; 2 plaintext"),
        "{}",
        decrypt.all_text()
    );
    assert_eq!(raw_counts(&db), (2, 0));
    for p in [&rekey, &waited, &decrypt] {
        assert!(!p.all_text().contains(&value(1)));
    }
}

#[test]
fn a_schema_6_database_keeps_every_token_through_migration_7_and_is_then_sealed() {
    use linetokd::store::migrate::{self, MIGRATIONS};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("linetokd.db");
    {
        let mut conn = rusqlite::Connection::open(&db).unwrap();
        migrate::apply(&mut conn, &MIGRATIONS[..6]).unwrap();
        conn.execute_batch(&format!(
            "INSERT INTO channels (id, name, added_at) VALUES ('{CHANNEL}', 'chan', 1);
             INSERT INTO groups (channel_id, name, added_at) VALUES ('{CHANNEL}', 'a', 1);
             INSERT INTO tokens (key_id, channel_id, group_name, access_token, issued_at,
                                 expires_at, state, state_reason, state_changed_at,
                                 last_verified_at, refused_at) VALUES
               ('kid-live', '{CHANNEL}', 'a', '{live}', 1000, 9000000000000, 'live', NULL,
                1000, 2000, NULL),
               ('kid-old', '{CHANNEL}', 'a', '{old}', 500, 900, 'revoked', 'superseded',
                950, NULL, 800);",
            live = value(1),
            old = value(2),
        ))
        .unwrap();
    }
    let store = open(&db, None).unwrap();
    assert_eq!(store.migrated().to, migrate::latest_version());
    let tokens = store
        .tokens_of_group(&ChannelId::new(CHANNEL), &GroupName::new("a"))
        .unwrap();
    assert_eq!(tokens.len(), 2);
    let old = &tokens[0];
    assert_eq!(old.record.key_id.as_str(), "kid-old");
    assert_eq!(old.value.expose(), value(2));
    assert_eq!(old.state_reason.as_deref(), Some("superseded"));
    assert_eq!(
        old.record.refused_at.map(|t| t.timestamp_millis()),
        Some(800)
    );
    assert_eq!(tokens[1].value.expose(), value(1));
    assert_eq!(
        tokens[1].record.verified_at.map(|t| t.timestamp_millis()),
        Some(2000)
    );
    assert_eq!(raw_counts(&db), (2, 0));
    drop(store);

    let k1 = key_file(dir.path(), "db-1.key");
    let store = open(&db, Some(ring(&[(1, &k1)], 1))).unwrap();
    let again = store
        .tokens_of_group(&ChannelId::new(CHANNEL), &GroupName::new("a"))
        .unwrap();
    assert_eq!(again, tokens);
    drop(store);
    assert_eq!(raw_counts(&db), (0, 2));
}
