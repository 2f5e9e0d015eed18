//! `linetokd status` and `linetokd plan`, run as the real binary against a
//! store built without the network: tokens issued through the journal, a
//! reconcile that saw a foreign key ID, a failing group, a lost and a
//! failed issuance, an issuance in flight, and a group removed from the
//! config. Checks the facts each command reports, its exit codes, that it
//! reads beside a writer, and that no token value ever reaches its output.

use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chrono::{DateTime, Duration, DurationRound as _, Utc};
use linetokd::domain::{AccessToken, ChannelId, GroupName, KeyId, TokenRecord, TokenState};
use linetokd::line::keys;
use linetokd::policy::{GroupView, Rules, rotation_due_at};
use linetokd::store::{
    ChannelSpec, EventKind, GroupRuntime, IssuedToken, LAST_RELOAD, NewEvent, Store,
};
use serde_json::Value;
use tempfile::TempDir;

const SHOP: &str = "1000000001";
const NEWS: &str = "1000000002";

/// Every token value the store holds: none may appear in any output.
const VALUES: [&str; 4] = [
    "VALUE-backend-old-b3c1d9e8f7a6",
    "VALUE-backend-cur-0a9b8c7d6e5f",
    "VALUE-legacy-4f3e2d1c0b9a",
    "VALUE-analytics-5e6f7a8b9c0d",
];

struct Lab {
    dir: TempDir,
    /// The instant the store was built around (whole seconds, as stored).
    now: DateTime<Utc>,
}

impl Lab {
    fn db(&self) -> PathBuf {
        self.dir.path().join("linetokd.db")
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("linetokd.toml")
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_linetokd"))
            .args(args)
            .arg("--config")
            .arg(self.config())
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert_no_token_values(&out);
        out
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_no_token_values(out: &Output) {
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    for value in VALUES {
        assert!(!all.contains(value), "a token value leaked:\n{all}");
    }
}

fn write_private(path: &Path, body: &[u8]) {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(body).unwrap();
}

fn write_config(dir: &Path, db: &Path) {
    for name in ["shop.pem", "news.pem"] {
        let pem = keys::generate().unwrap().to_pkcs8_pem().unwrap();
        write_private(&dir.join(name), pem.as_bytes());
    }
    write_private(
        &dir.join("shop.secret"),
        b"0123456789abcdef0123456789abcdef",
    );
    let d = dir.display();
    let config = format!(
        r#"
[daemon]
database = "{db}"
state_dir = "{d}"
line_api = "http://127.0.0.1:9"

[[channel]]
id = "{SHOP}"
name = "shop-bot"
key_file = "{d}/shop.pem"
kid = "kid-shop"
secret_file = "{d}/shop.secret"

  [[channel.group]]
  name = "backend"

  [[channel.group]]
  name = "crm"

[[channel]]
id = "{NEWS}"
name = "news-bot"
key_file = "{d}/news.pem"
kid = "kid-news"

  [[channel.group]]
  name = "analytics"
"#,
        db = db.display()
    );
    std::fs::write(dir.join("linetokd.toml"), config).unwrap();
}

fn ch(id: &str) -> ChannelId {
    ChannelId::new(id)
}

fn gr(name: &str) -> GroupName {
    GroupName::new(name)
}

fn issue(store: &Store, channel: &str, group: &str, key: &str, value: &str, at: DateTime<Utc>) {
    let intent = store.begin_issue(at, &ch(channel), &gr(group)).unwrap();
    store
        .complete_issue(
            at,
            intent,
            &IssuedToken {
                key_id: KeyId::new(key),
                value: AccessToken::new(value),
                issued_at: at,
                expires_at: at + Duration::days(30),
                verified_at: Some(at),
            },
            &[],
        )
        .unwrap();
}

fn specs(shop_groups: &[&str]) -> Vec<ChannelSpec> {
    vec![
        ChannelSpec {
            id: ch(SHOP),
            name: "shop-bot".into(),
            groups: shop_groups.iter().map(|g| gr(g)).collect(),
            fingerprint: None,
            short_lived: Vec::new(),
        },
        ChannelSpec {
            id: ch(NEWS),
            name: "news-bot".into(),
            groups: vec![gr("analytics")],
            fingerprint: None,
            short_lived: Vec::new(),
        },
    ]
}

/// A config, and a store whose channels (shop-bot with `shop_groups`)
/// were configured 40 days before the lab's `now`, holding nothing else.
fn new_lab(shop_groups: &[&str]) -> (Lab, Store) {
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now().duration_trunc(Duration::seconds(1)).unwrap();
    let lab = Lab { dir, now };
    write_config(lab.dir.path(), &lab.db());
    let store = Store::open(&lab.db()).unwrap();
    store
        .sync_config(now - Duration::days(40), &specs(shop_groups))
        .unwrap();
    (lab, store)
}

/// The store state every test reads (see the module doc), with the writer
/// dropped afterwards.
fn lab() -> Lab {
    let (lab, store) = new_lab(&["backend", "crm", "legacy"]);
    let now = lab.now;
    issue(
        &store,
        SHOP,
        "backend",
        "kid-b-old",
        VALUES[0],
        now - Duration::days(20),
    );
    issue(
        &store,
        SHOP,
        "backend",
        "kid-b-cur",
        VALUES[1],
        now - Duration::days(1),
    );
    issue(
        &store,
        SHOP,
        "legacy",
        "kid-legacy",
        VALUES[2],
        now - Duration::days(5),
    );
    issue(
        &store,
        NEWS,
        "analytics",
        "kid-a-cur",
        VALUES[3],
        now - Duration::days(10),
    );
    store
        .reconcile(
            now - Duration::hours(3),
            &ch(SHOP),
            &[
                KeyId::new("kid-b-old"),
                KeyId::new("kid-b-cur"),
                KeyId::new("kid-legacy"),
                KeyId::new("kid-foreign-1"),
            ],
            store.newest_intent_id(&ch(SHOP)).unwrap(),
        )
        .unwrap();
    // The legacy group leaves the config two hours ago.
    store
        .sync_config(now - Duration::hours(2), &specs(&["backend", "crm"]))
        .unwrap();
    // crm: one issuance lost in a crash, one failed, and a failure streak.
    store
        .begin_issue(now - Duration::minutes(90), &ch(SHOP), &gr("crm"))
        .unwrap();
    store
        .close_lost_intents(now - Duration::minutes(80))
        .unwrap();
    let failed = store
        .begin_issue(now - Duration::minutes(30), &ch(SHOP), &gr("crm"))
        .unwrap();
    store
        .fail_issue(
            now - Duration::minutes(30),
            failed,
            "LINE answered 500 Internal Server Error",
            true,
        )
        .unwrap();
    store
        .set_group_runtime(
            &ch(SHOP),
            &gr("crm"),
            &GroupRuntime {
                last_error: Some("issue: LINE answered 500 Internal Server Error".into()),
                last_error_at: Some(now - Duration::minutes(30)),
                consecutive_failures: 3,
                retry_not_before: Some(now + Duration::minutes(10)),
                failure_kind: None,
                failed_step: None,
            },
        )
        .unwrap();
    // backend: a streak a reload ended two hours ago, its last error kept
    // in the row.
    store
        .set_group_runtime(
            &ch(SHOP),
            &gr("backend"),
            &GroupRuntime {
                last_error: Some("issue: LINE answered 404 Not Found".into()),
                last_error_at: Some(now - Duration::hours(2)),
                ..GroupRuntime::default()
            },
        )
        .unwrap();
    // news-bot: an issuance in flight.
    store
        .begin_issue(now - Duration::minutes(1), &ch(NEWS), &gr("analytics"))
        .unwrap();
    // backend's hook failed for its current token; a reload was refused.
    store
        .record_event(
            now - Duration::minutes(20),
            &NewEvent {
                channel_id: ch(SHOP),
                group: Some(gr("backend")),
                key_id: Some(KeyId::new("kid-b-cur")),
                kind: EventKind::HookFailed,
                detail: "hook exited with status 3 (5 attempts): backend unreachable".into(),
            },
        )
        .unwrap();
    store
        .set_note(
            now - Duration::minutes(5),
            LAST_RELOAD,
            "failed (SIGHUP): rotation.rotate_before (30d) must be shorter than rotation.token_lifetime (30d)",
        )
        .unwrap();
    drop(store);
    lab
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .unwrap_or_else(|| panic!("not a time: {v}"))
        .parse()
        .unwrap()
}

fn channel<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no channel {id} in {report:#}"))
}

fn group<'a>(channel: &'a Value, name: &str) -> &'a Value {
    channel["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == name)
        .unwrap_or_else(|| panic!("no group {name} in {channel:#}"))
}

#[test]
fn status_json_reports_what_the_store_knows() {
    let lab = lab();
    let now = lab.now;
    let report = lab.json(&["status", "--json"]);
    assert_eq!(report["version"], 2);
    assert_eq!(report["daemon"]["running"], false);
    assert_eq!(report["channel_token_cap"], 30);

    let shop = channel(&report, SHOP);
    assert_eq!(shop["name"], "shop-bot");
    assert_eq!(shop["can_revoke"], true);
    assert_eq!(shop["live_ours"], 3, "backend 2 + legacy 1");
    assert_eq!(shop["foreign_live"], 1);
    assert_eq!(shop["unsettled"], 2, "the lost and the failed issuance");
    assert_eq!(shop["capacity"], 30 - 3 - 1 - 2);
    assert_eq!(shop["issues_last_hour"], 1);
    assert_eq!(time(&shop["last_reconcile_at"]), now - Duration::hours(3));
    assert!(shop["last_reconcile_ago_secs"].as_i64().unwrap() >= 3 * 3600);
    assert_eq!(shop["foreign"][0]["key_id"], "kid-foreign-1");

    assert_eq!(report["last_reload"]["ok"], false);
    assert!(
        report["last_reload"]["outcome"]
            .as_str()
            .unwrap()
            .contains("rotation.rotate_before"),
        "{}",
        report["last_reload"]
    );

    let backend = group(shop, "backend");
    assert_eq!(backend["last_hook"]["ok"], false);
    assert_eq!(backend["last_hook"]["key_id"], "kid-b-cur");
    assert!(
        backend["last_hook"]["detail"]
            .as_str()
            .unwrap()
            .contains("status 3")
    );
    assert!(group(shop, "crm")["last_hook"].is_null());
    assert_eq!(backend["live_tokens"], 2);
    assert_eq!(backend["current"]["key_id"], "kid-b-cur");
    assert_eq!(backend["previous"]["key_id"], "kid-b-old");
    let cur_expires = now + Duration::days(29);
    assert_eq!(time(&backend["current"]["expires_at"]), cur_expires);
    let secs = backend["current"]["expires_in_secs"].as_i64().unwrap();
    assert!((29 * 86_400 - 120..=29 * 86_400).contains(&secs), "{secs}");
    let record = TokenRecord {
        key_id: KeyId::new("kid-b-cur"),
        issued_at: now - Duration::days(1),
        expires_at: cur_expires,
        state: TokenState::Live,
        refused_at: None,
        verified_at: None,
    };
    let due = rotation_due_at(
        &record,
        &GroupView::new(ch(SHOP), gr("backend"), true),
        &Rules::default(),
    );
    assert_eq!(time(&backend["next_rotation_at"]), due);
    // Its ended streak's error is no running failure.
    assert!(backend["last_error"].is_null(), "{backend:#}");
    assert!(backend["alerts"].as_array().unwrap().is_empty());

    let crm = group(shop, "crm");
    assert!(crm["current"].is_null());
    assert_eq!(crm["live_tokens"], 0);
    assert_eq!(crm["last_error"]["consecutive_failures"], 3);
    assert!(
        crm["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("LINE answered 500")
    );
    assert_eq!(
        time(&crm["last_error"]["next_retry_at"]),
        now + Duration::minutes(10)
    );
    assert_eq!(crm["hold"]["kind"], "retry");
    assert_eq!(time(&crm["next_rotation_at"]), now + Duration::minutes(10));
    assert_eq!(crm["alerts"][0]["severity"], "critical", "no live token");
    let unfinished: Vec<&str> = shop["recent_unfinished_intents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(unfinished, ["lost", "failed"]);

    let legacy = group(shop, "legacy");
    assert_eq!(legacy["in_config"], false);
    assert_eq!(legacy["current"]["key_id"], "kid-legacy");
    assert_eq!(time(&legacy["removed_at"]), now - Duration::hours(2));
    assert_eq!(time(&legacy["revoke_at"]), now + Duration::hours(22));
    assert!(legacy["next_rotation_at"].is_null());

    let news = channel(&report, NEWS);
    assert_eq!(news["can_revoke"], false);
    assert!(news["last_reconcile_at"].is_null());
    let analytics = group(news, "analytics");
    assert_eq!(analytics["current"]["key_id"], "kid-a-cur");
    assert!(analytics["previous"].is_null());
    let open = news["open_intents"].as_array().unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0]["group"], "analytics");
    assert_eq!(open[0]["outcome"], "open");
}

/// Only a group the daemon can revoke shows when its tokens go: one
/// removed from a channel without a secret, or from a channel that left
/// the config too, keeps its tokens until they expire (the daemon does not
/// look after an unconfigured channel, and cannot revoke without a secret).
#[test]
fn a_removed_group_the_daemon_cannot_revoke_shows_no_revoke_time() {
    const GONE: &str = "1000000003";
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now().duration_trunc(Duration::seconds(1)).unwrap();
    let lab = Lab { dir, now };
    write_config(lab.dir.path(), &lab.db());
    let store = Store::open(&lab.db()).unwrap();
    let mut before = specs(&["backend", "legacy"]);
    before[1].groups.push(gr("archive"));
    before.push(ChannelSpec {
        id: ch(GONE),
        name: "gone-bot".into(),
        groups: vec![gr("old")],
        fingerprint: None,
        short_lived: Vec::new(),
    });
    store.sync_config(now - Duration::days(3), &before).unwrap();
    let at = now - Duration::days(2);
    issue(&store, SHOP, "legacy", "kid-legacy", VALUES[0], at);
    issue(&store, NEWS, "archive", "kid-archive", VALUES[1], at);
    issue(&store, GONE, "old", "kid-old", VALUES[2], at);
    // legacy leaves a channel with a secret, archive one without, and old
    // leaves with its whole channel.
    store
        .sync_config(now - Duration::hours(2), &specs(&["backend"]))
        .unwrap();
    drop(store);

    let report = lab.json(&["status", "--json"]);
    let legacy = group(channel(&report, SHOP), "legacy");
    assert_eq!(time(&legacy["revoke_at"]), now + Duration::hours(22));
    for (id, name) in [(NEWS, "archive"), (GONE, "old")] {
        let g = group(channel(&report, id), name);
        assert_eq!(g["in_config"], false, "{name}");
        assert_eq!(time(&g["removed_at"]), now - Duration::hours(2), "{name}");
        assert!(g["current"].is_object(), "{name} still holds its token");
        assert!(g["revoke_at"].is_null(), "{name}: {g:#}");
    }

    let out = lab.run(&["status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    let state = |name: &str| {
        shown
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name} in:\n{shown}"))
            .to_owned()
    };
    assert!(state("legacy").contains("removed: revoked at"), "{shown}");
    for name in ["archive", "old"] {
        let row = state(name);
        assert!(
            row.contains("removed: not revoked, expires on its own"),
            "{row}"
        );
        assert!(!row.contains("revoked at"), "{row}");
    }
}

#[test]
fn status_text_is_a_table_of_key_ids() {
    let lab = lab();
    let out = lab.run(&["status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    for needle in [
        "daemon:   not running",
        "channel shop-bot (1000000001)",
        "capacity 24 of 30",
        "kid-b-cur",
        "kid-b-old (expires in ",
        "removed: revoked at",
        "crm: 3 failure(s) in a row, the last",
        "LINE answered 500 Internal Server Error; next attempt",
        "CRITICAL",
        "foreign key ID kid-foreign-1",
        "channel secret: no (cannot revoke)",
        "in flight since",
        "backend: HOOK FAILED: hook exited with status 3",
        "last config reload at",
        "failed (SIGHUP): rotation.rotate_before",
    ] {
        assert!(shown.contains(needle), "{needle:?} missing from:\n{shown}");
    }
}

/// A full channel (28 foreign key IDs beside our 2) whose `backend` is due
/// a rotation: `status` says when the daemon next looks for room, and that
/// no rotation comes sooner.
#[test]
fn status_names_a_full_channels_next_look_for_room() {
    let (lab, store) = new_lab(&["backend", "crm"]);
    let now = lab.now;
    // backend's token expires in 12 hours: its rotation is due.
    let backend_at = now - Duration::days(29) - Duration::hours(12);
    issue(&store, SHOP, "backend", "kid-b-cur", VALUES[1], backend_at);
    issue(
        &store,
        SHOP,
        "crm",
        "kid-crm",
        VALUES[0],
        now - Duration::days(1),
    );
    let mut listed = vec![KeyId::new("kid-b-cur"), KeyId::new("kid-crm")];
    listed.extend((0..28).map(|i| KeyId::new(format!("kid-foreign-{i}"))));
    store
        .reconcile(
            now,
            &ch(SHOP),
            &listed,
            store.newest_intent_id(&ch(SHOP)).unwrap(),
        )
        .unwrap();
    // Verified just now: nothing else is due before the next listing.
    for kid in ["kid-b-cur", "kid-crm"] {
        store.record_verified(now, &KeyId::new(kid)).unwrap();
    }
    drop(store);

    let report = lab.json(&["status", "--json"]);
    let shop = channel(&report, SHOP);
    assert_eq!(shop["capacity"], 0, "{shop:#}");
    let backend = group(shop, "backend");
    let hold = &backend["hold"];
    assert_eq!(hold["kind"], "capacity", "{backend:#}");
    assert_eq!(
        hold["until"],
        Value::Null,
        "a full channel has no known end"
    );
    // Other issuers' tokens expire at instants nobody tells us: the next
    // listing (five minutes after the last) is when the channel is looked
    // at next, and the next rotation cannot come before it. Within five
    // minutes of the top of the hour the daemon's hourly safety wake-up
    // (`policy::MAX_SLEEP`, aligned) comes first, and is the next look.
    // (`status` reads the wall clock, so this test's `now` is the
    // wall clock's too: it failed once at 07:58:31.)
    let step = linetokd::policy::MAX_SLEEP.num_milliseconds();
    let top = chrono::DateTime::from_timestamp_millis(
        (now.timestamp_millis().div_euclid(step) + 1) * step,
    )
    .unwrap();
    let listing = now + Duration::minutes(5);
    let look = time(&hold["next_look_at"]);
    assert!(
        look == listing || (look == top && top < listing),
        "next look {look}, not the listing at {listing} or the safety wake-up at {top}: {backend:#}"
    );
    assert_eq!(time(&backend["next_rotation_at"]), look, "{backend:#}");
    let message = hold["message"].as_str().unwrap();
    assert!(
        message.contains("the next look for room is at"),
        "{message}"
    );
    // crm is not held at all.
    assert_eq!(group(shop, "crm")["hold"], Value::Null);

    let out = lab.run(&["status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(
        shown.contains("backend: waiting: the channel is full: 1 token(s) must go first; the next look for room is at"),
        "{shown}"
    );
}

#[test]
fn status_reads_while_a_writer_holds_the_database() {
    let lab = lab();
    let writer = Store::open(&lab.db()).unwrap();
    let report = lab.json(&["status", "--json"]);
    if std::fs::read_to_string("/proc/locks").is_ok() {
        assert_eq!(report["daemon"]["running"], true);
        assert_eq!(report["daemon"]["pid"], std::process::id());
    }
    assert_eq!(
        group(channel(&report, SHOP), "backend")["current"]["key_id"],
        "kid-b-cur"
    );
    // The writer still works: status took no lock.
    writer
        .record_verified(lab.now, &KeyId::new("kid-b-cur"))
        .unwrap();
    drop(writer);
    assert_eq!(lab.json(&["status", "--json"])["daemon"]["running"], false);
}

#[test]
fn status_without_a_database_exits_1_and_says_so() {
    let lab = lab();
    std::fs::remove_file(lab.db()).unwrap();
    let out = lab.run(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("no database at"), "{err}");
    assert!(err.contains("has linetokd run yet?"), "{err}");
}

#[test]
fn status_and_plan_refuse_a_bad_config_with_exit_2() {
    let lab = lab();
    std::fs::remove_file(lab.dir.path().join("shop.pem")).unwrap();
    for args in [&["status"][..], &["plan"], &["status", "--json"]] {
        let out = lab.run(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("key_file"),
            "{}",
            text(&out.stderr)
        );
    }
    let out = lab.run(&["plan", "--days", "0"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn plan_lists_issues_revocations_and_expiries() {
    let lab = lab();
    let now = lab.now;
    let report = lab.json(&["plan", "--days", "3", "--json"]);
    assert_eq!(report["database_found"], true);
    assert_eq!(report["complete"], true);
    let until = time(&report["until"]);
    assert!(until >= now + Duration::days(3));
    let actions = report["actions"].as_array().unwrap();
    let find = |group: &str, action: &str| {
        actions
            .iter()
            .filter(|a| a["group"] == group && a["action"] == action)
            .collect::<Vec<_>>()
    };
    // crm is issued a token once its retry time has come.
    let crm = find("crm", "issue");
    assert_eq!(crm.len(), 1, "{crm:?}");
    assert_eq!(time(&crm[0]["at"]), now + Duration::minutes(10));
    assert_eq!(crm[0]["reason"], "no_current");
    assert_eq!(crm[0]["synthetic_key"], true);
    assert_eq!(crm[0]["channel_name"], "shop-bot");
    // The removed group's token goes when removal_grace is over.
    let legacy = find("legacy", "revoke");
    assert_eq!(legacy.len(), 1, "{legacy:?}");
    assert_eq!(legacy[0]["key_id"], "kid-legacy");
    assert_eq!(legacy[0]["reason"], "removed");
    assert_eq!(time(&legacy[0]["at"]), now + Duration::hours(22));
    // Nothing else is due within three days; routine reads are counted only.
    assert!(find("backend", "issue").is_empty());
    assert!(
        actions
            .iter()
            .all(|a| a["action"] != "verify" && a["action"] != "reconcile")
    );
    // Without --all the routine reads are not simulated, so not counted.
    assert!(report["counts"]["reconcile"].is_null());
    let at: Vec<DateTime<Utc>> = actions.iter().map(|a| time(&a["at"])).collect();
    assert!(
        at.windows(2).all(|w| w[0] <= w[1]),
        "the timeline is in time order"
    );

    let all = lab.json(&["plan", "--days", "3", "--json", "--all"]);
    assert!(all["counts"]["reconcile"].as_u64().unwrap() > 0);
    assert!(
        all["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "verify")
    );
}

#[test]
fn plan_text_is_a_timeline() {
    let lab = lab();
    let out = lab.run(&["plan", "--days", "30"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    for needle in [
        "assuming every call to LINE succeeds",
        "TIME",
        "legacy",
        "group removed from the config",
        "kid-b-old",
        "reaches its expiry",
        "rotation due",
        "routine verifies and reconciles not simulated (--all simulates and lists them)",
        "keys named next-N stand for tokens not issued yet",
    ] {
        assert!(shown.contains(needle), "{needle:?} missing from:\n{shown}");
    }
}

#[test]
fn plan_without_a_database_starts_from_nothing() {
    let lab = lab();
    std::fs::remove_file(lab.db()).unwrap();
    let report = lab.json(&["plan", "--json", "--days", "1"]);
    assert_eq!(report["database_found"], false);
    let issued: Vec<(&str, &str)> = report["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "issue")
        .map(|a| (a["group"].as_str().unwrap(), a["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(
        issued,
        [
            ("backend", "no_current"),
            ("crm", "no_current"),
            ("analytics", "no_current")
        ]
    );
    assert!(!lab.db().exists(), "plan must not create the database");
}

/// `status` and `plan` read every channel at once (`Snapshot::read_all`);
/// the rotator reads one channel at a time (`Snapshot::read`). Both must
/// give each channel the same snapshot, or `plan` would forecast from a
/// state the daemon never sees.
#[test]
fn reading_all_channels_at_once_gives_each_the_snapshot_the_rotator_reads() {
    use linetokd::snapshot::Snapshot;

    let lab = lab();
    let store = Store::open_read_only(&lab.db()).unwrap();
    // The tokens read on a second connection, as `status` does, and on the
    // same one: both as the rotator sees each channel.
    let second = Store::open_read_only(&lab.db()).unwrap();
    let all = Snapshot::read_all(&store, &second, lab.now).unwrap();
    let alone = Snapshot::read_all(&store, &store, lab.now).unwrap();
    assert_eq!(format!("{all:?}"), format!("{alone:?}"));
    let channels = store.channels().unwrap();
    assert_eq!(all.len(), channels.len());
    assert!(all.len() >= 2, "the lab has more than one channel");
    for (snapshot, row) in all.iter().zip(&channels) {
        let one = Snapshot::read(&store, &row.id, lab.now).unwrap();
        assert_eq!(
            format!("{snapshot:?}"),
            format!("{one:?}"),
            "channel {}",
            row.id
        );
    }
    // The lab's channels hold what read_all must sort out: tokens of
    // several groups, a foreign key ID, unsettled issuances and attempts
    // in the last hour.
    let shop = all
        .iter()
        .find(|s| s.channel.as_ref().is_some_and(|c| c.id.as_str() == SHOP))
        .unwrap();
    assert!(shop.groups.len() >= 2 && !shop.foreign.is_empty() && !shop.unsettled.is_empty());
    assert!(!shop.issues_last_hour.is_empty());
}
