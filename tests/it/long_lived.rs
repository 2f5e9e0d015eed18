//! Long-lived tokens, watched (issue 11 part 3): the in-process sandbox's
//! console issues and reissues a long-lived token, the real daemon
//! (`app::Daemon::start`) watches the channel's `token_file` on the
//! sandbox's manual clock, and the real binary retires it.
//!
//! - The file replaced after a console reissue with a 24 h grace: the old
//!   value stays in memory and keeps verifying (`long_lived_old_still_valid`,
//!   info) until the grace ends, then is forgotten; nothing critical fires.
//! - The file *not* replaced after a reissue: the token keeps verifying
//!   until the grace ends, then `long_lived_invalid` (critical) fires and
//!   the gauge drops to 0; `linetokd long-lived retire` through the running
//!   daemon stops the alert.
//! - No long-lived value is ever in the captured log, the metrics, the
//!   store's rows or `linetokd status`.
//!
//! Waits are on conditions (the store's rows and alerts), polled; the clock
//! is only moved by the test.

use std::collections::HashMap;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use linetokd::app::{Daemon, RunOptions};
use linetokd::clock::SharedClock;
use linetokd::config::Settings;
use linetokd::store::{AlertRecord, LongLivedResult, LongLivedRole, LongLivedRow, Store};
use tokio_util::sync::CancellationToken;

use crate::support::{LAB_CHANNEL, LAB_KID, LAB_SECRET, sandbox_lab};

fn write_private(path: &Path, bytes: &[u8]) {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
}

/// Replaces the token file the way config managers do: a new file renamed
/// over the old.
fn replace_token(path: &Path, value: &str) {
    let tmp = path.with_extension("new");
    write_private(&tmp, format!("{value}\n").as_bytes());
    fs::rename(&tmp, path).unwrap();
}

fn write_config(dir: &Path, line_api: &str, token_file: &Path) -> PathBuf {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys/rsa2048-pkcs8.pem");
    write_private(&dir.join("key.pem"), &fs::read(fixture).unwrap());
    write_private(&dir.join("secret"), LAB_SECRET.as_bytes());
    write_private(&dir.join("ll.apikey"), API_KEY.as_bytes());
    let toml = format!(
        r#"
[daemon]
database = "{db}"
state_dir = "{dir}"
line_api = "{line_api}"
listen = "127.0.0.1:0"

[[channel]]
id = "{LAB_CHANNEL}"
name = "lab"
key_file = "{dir}/key.pem"
kid = "{LAB_KID}"
secret_file = "{dir}/secret"

  [[channel.group]]
  name = "a"

  [channel.long_lived]
  token_file = "{token}"
  verify_interval = "1h"
  api_key_file = "{dir}/ll.apikey"
  sinks = [{{ path = "{dir}/ll.json", format = "json" }}, {{ path = "{dir}/ll.env", format = "env" }}]
"#,
        db = dir.join("linetokd.db").display(),
        dir = dir.display(),
        token = token_file.display(),
    );
    let path = dir.join("linetokd.toml");
    fs::write(&path, toml).unwrap();
    path
}

/// The console routes of the sandbox, over HTTP as an operator's script
/// would call them: the new token's value.
async fn console(base: &str, path: &str) -> String {
    let answer = reqwest::Client::new()
        .post(format!("{base}/_sandbox/channels/{LAB_CHANNEL}/{path}"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{path}");
    let body: serde_json::Value = answer.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

/// The long-lived token API's key in the test config.
const API_KEY: &str = "long-lived-api-key-0123456789";

/// `GET /v1/channels/lab/long-lived-token` with `key`: status and body.
async fn api(daemon: &Daemon, key: Option<&str>) -> (u16, serde_json::Value) {
    let mut request = reqwest::Client::new().get(format!(
        "http://{}/v1/channels/lab/long-lived-token",
        daemon.http_addr
    ));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let answer = request.send().await.unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or_default())
}

fn fp(value: &str) -> String {
    linetokd::longlived::fingerprint(&linetokd::domain::AccessToken::new(value))
}

fn row(store: &Store, value: &str) -> Option<LongLivedRow> {
    let fp = fp(value);
    store
        .long_lived_rows()
        .unwrap()
        .into_iter()
        .find(|r| r.fingerprint == fp)
}

fn firing(store: &Store) -> Vec<AlertRecord> {
    store
        .firing_alerts()
        .unwrap()
        .into_iter()
        .filter(|a| a.alertname.starts_with("long_lived"))
        .collect()
}

/// Polls `cond` until it holds (30 s of real time at most).
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until LINE answered a verify of `value` at `at` or later.
async fn verified_at(store: &Store, value: &str, at: DateTime<Utc>) {
    until("the long-lived token is verified", || {
        row(store, value)
            .and_then(|r| r.last_checked_at)
            .is_some_and(|c| c >= at)
    })
    .await;
}

/// A `MakeWriter` target appending to a shared buffer.
struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_console_reissue_is_watched_through_its_grace_and_no_value_is_ever_shown() {
    let logs = Arc::new(Mutex::new(Vec::<u8>::new()));
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("linetokd=debug")
        .with_ansi(false)
        .with_writer(move || LogWriter(writer.clone()))
        .finish();
    // As in line_client.rs: a second dispatcher makes tracing ask ours for
    // callsites a parallel test thread saw first.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let _guard = tracing::subscriber::set_default(subscriber);
    tracing::callsite::rebuild_interest_cache();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (values, metrics, status) = runtime.block_on(scenario());
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("long-lived token replaced in the file"),
        "{logs}"
    );
    for value in &values {
        assert!(
            !logs.contains(value.as_str()),
            "a long-lived value is in the log"
        );
        assert!(
            !metrics.contains(value.as_str()),
            "a long-lived value is in the metrics"
        );
        assert!(
            !status.contains(value.as_str()),
            "a long-lived value is in status"
        );
    }
}

async fn scenario() -> (Vec<String>, String, String) {
    let lab = sandbox_lab().await;
    // `linetokd status` (another process) reads the store beside the
    // daemon; its "ago" texts use the wall clock, so start there.
    let start = DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
    lab.clock.set(start);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("lab.longlived");
    let t1 = console(&lab.base_url, "long-lived").await;
    write_private(&token_file, format!("{t1}\n").as_bytes());
    let config = write_config(dir.path(), &lab.base_url, &token_file);
    let valid = Settings::load(&config, &HashMap::new())
        .unwrap()
        .validate()
        .unwrap();
    let clock: SharedClock = Arc::new(lab.clock.clone());
    let shutdown = CancellationToken::new();
    let daemon = Daemon::start(&valid, clock, shutdown.clone(), RunOptions::default())
        .await
        .unwrap();
    let store = daemon.rotator.store().clone();
    verified_at(&store, &t1, start).await;
    let r1 = row(&store, &t1).unwrap();
    assert_eq!(
        (r1.role, r1.result),
        (LongLivedRole::Current, LongLivedResult::Valid)
    );
    // The sinks hold it, in the API's document.
    let sink = |name: &str| fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    until("the sinks hold the token", || sink("ll.env").contains(&t1)).await;
    let doc: serde_json::Value = serde_json::from_str(&sink("ll.json")).unwrap();
    assert_eq!(doc["access_token"], t1.as_str());
    assert_eq!(doc["fingerprint"], fp(&t1));
    assert_eq!(doc["kind"], "long_lived");
    assert!(doc["key_id"].is_null() && doc["expires_at"].is_null());
    assert_eq!(api(&daemon, Some(API_KEY)).await.1, doc);
    assert_eq!(sink("ll.env"), format!("LINE_CHANNEL_ACCESS_TOKEN={t1}\n"));
    let metrics = daemon.metrics.render();
    assert!(
        metrics.contains(&format!(
            r#"linetokd_long_lived_valid{{channel="{LAB_CHANNEL}",channel_name="lab"}} 1"#
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("linetokd_long_lived_last_verified_timestamp_seconds{"),
        "{metrics}"
    );

    // 1. Console reissue with a 24 h grace, and the file replaced: the old
    //    value is verified until LINE drops it.
    let t2 = console(&lab.base_url, "long-lived/reissue?grace=24h").await;
    replace_token(&token_file, &t2);
    until(
        "the new token is current and the old one still valid",
        || {
            let (new, old) = (row(&store, &t2), row(&store, &t1));
            new.is_some_and(|r| {
                r.role == LongLivedRole::Current && r.result == LongLivedResult::Valid
            }) && old
                .is_some_and(|r| r.role == LongLivedRole::Old && r.result == LongLivedResult::Valid)
        },
    )
    .await;
    // The new value reaches the sinks.
    until("the sinks hold the new token", || {
        sink("ll.json").contains(&t2) && sink("ll.env").contains(&t2)
    })
    .await;
    // The rows are stored before the alerts are stated.
    until("the info alert fires", || !firing(&store).is_empty()).await;
    let alerts = firing(&store);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(
        (alerts[0].alertname.as_str(), alerts[0].severity.as_str()),
        ("long_lived_old_still_valid", "info")
    );
    assert_eq!(alerts[0].label, Some(("fingerprint".to_owned(), fp(&t1))));
    // A reload that changes the section restarts the watcher: the old value
    // inside its grace is still watched (memory only, never stored).
    let text = fs::read_to_string(&config)
        .unwrap()
        .replace("verify_interval = \"1h\"", "verify_interval = \"90m\"");
    fs::write(&config, text).unwrap();
    let reloaded = Settings::load(&config, &HashMap::new())
        .unwrap()
        .validate()
        .unwrap();
    daemon.reload(&reloaded).await.unwrap();
    let after_reload = start + chrono::Duration::hours(3);
    lab.clock.set(after_reload);
    verified_at(&store, &t1, after_reload).await;
    assert_eq!(row(&store, &t1).unwrap().role, LongLivedRole::Old);
    assert_eq!(firing(&store).len(), 1);
    // The last millisecond of the grace: still valid.
    let last = start + chrono::Duration::hours(24) - chrono::Duration::milliseconds(1);
    lab.clock.set(last);
    verified_at(&store, &t1, last).await;
    assert_eq!(row(&store, &t1).unwrap().last_valid_at, Some(last));
    // Past the grace (and past the next verify, jitter included): LINE
    // refuses it, and it is forgotten; nothing fires.
    let t_after = start + chrono::Duration::hours(26);
    lab.clock.set(t_after);
    until("the old token is forgotten", || {
        row(&store, &t1).is_some_and(|r| r.role == LongLivedRole::Ended)
    })
    .await;
    verified_at(&store, &t2, t_after).await;
    until("the info alert resolves", || firing(&store).is_empty()).await;

    // 2. Reissued again, the file NOT replaced: valid through the grace,
    //    then the critical alert.
    let t3 = console(&lab.base_url, "long-lived/reissue?grace=24h").await;
    let in_grace = t_after + chrono::Duration::hours(23);
    lab.clock.set(in_grace);
    verified_at(&store, &t2, in_grace).await;
    assert_eq!(row(&store, &t2).unwrap().result, LongLivedResult::Valid);
    assert!(firing(&store).is_empty());
    let past = t_after + chrono::Duration::hours(26);
    lab.clock.set(past);
    until("long_lived_invalid fires", || {
        firing(&store)
            .iter()
            .any(|a| a.alertname == "long_lived_invalid" && a.severity == "critical")
    })
    .await;
    assert_eq!(row(&store, &t2).unwrap().result, LongLivedResult::Invalid);
    assert_eq!(
        api(&daemon, Some(API_KEY)).await.0,
        503,
        "a refused token is not served"
    );
    let metrics = daemon.metrics.render();
    assert!(
        metrics.contains(&format!(
            r#"linetokd_long_lived_valid{{channel="{LAB_CHANNEL}",channel_name="lab"}} 0"#
        )),
        "{metrics}"
    );

    // A retire naming another fingerprint than the file's (the file was
    // replaced after the operator was shown one) revokes nothing.
    let state_dir = dir.path().to_owned();
    let answer = tokio::task::spawn_blocking(move || {
        linetokd::control::send(
            &state_dir,
            &linetokd::control::Request::RetireLongLived {
                channel: linetokd::domain::ChannelId::new("lab"),
                fingerprint: Some("sha256:00000000".to_owned()),
            },
            linetokd::control::CLIENT_TIMEOUT,
        )
    })
    .await
    .unwrap()
    .unwrap();
    let text = answer.describe();
    assert!(
        text.contains("nothing revoked") && text.contains(&fp(&t2)),
        "{text}"
    );
    assert!(row(&store, &t2).unwrap().retired_at.is_none());

    // 3. Retired through the running daemon: revoked (confirmed with
    //    verify), recorded, and no longer alerting.
    let bin = env!("CARGO_BIN_EXE_linetokd");
    let args: Vec<String> = [
        "long-lived",
        "retire",
        "--channel",
        "lab",
        "--yes",
        "--config",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([config.display().to_string()])
    .collect();
    let out = tokio::task::spawn_blocking(move || Command::new(bin).args(&args).output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains(&fp(&t2)) && stdout.contains("revoked"),
        "{stdout}"
    );
    assert!(row(&store, &t2).unwrap().retired_at.is_some());
    until("the alert of the retired token resolves", || {
        firing(&store).is_empty()
    })
    .await;
    // No gauge says "invalid" any more: nothing is watched.
    until("the gauge of the retired token is removed", || {
        !daemon
            .metrics
            .render()
            .contains("linetokd_long_lived_valid{")
    })
    .await;
    // Its sinks are removed, and the API says why nothing is served.
    assert!(!dir.path().join("ll.json").exists() && !dir.path().join("ll.env").exists());
    let (code, body) = api(&daemon, Some(API_KEY)).await;
    assert_eq!(
        (code, body["error"].as_str()),
        (503, Some("long_lived_unavailable"))
    );

    // The console's current token put in the file: watched, valid.
    replace_token(&token_file, &t3);
    until("the new token is valid", || {
        row(&store, &t3).is_some_and(|r| r.result == LongLivedResult::Valid)
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = api(&daemon, Some(API_KEY)).await;
        if status == 200 && body["access_token"] == t3.as_str() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new token is not served: {status}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    until("the sinks hold the new token again", || {
        sink("ll.env").contains(&t3)
    })
    .await;
    let metrics = daemon.metrics.render();
    let status = {
        let args = vec![
            "status".to_owned(),
            "--config".to_owned(),
            config.display().to_string(),
        ];
        let out =
            tokio::task::spawn_blocking(move || Command::new(bin).args(&args).output().unwrap())
                .await
                .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            text.contains(&fp(&t3)) && text.contains("retired"),
            "{text}"
        );
        text + &String::from_utf8_lossy(&out.stderr)
    };
    // The store's rows hold no value either (only fingerprints).
    let rows = format!("{:?}", store.long_lived_rows().unwrap());
    for v in [&t1, &t2, &t3] {
        assert!(!rows.contains(v.as_str()));
    }
    shutdown.cancel();
    daemon.stopped().await.unwrap();
    (vec![t1, t2, t3], metrics, status)
}

/// The console routes answer as documented: one current token per channel
/// (409), a grace of at most 24 h (400), and a reissue without grace
/// invalidates the old token at once, as LINE's verify then says.
#[tokio::test]
async fn the_sandbox_console_keeps_one_long_lived_token_and_limits_the_grace() {
    use linetokd::line::Verification;
    let lab = sandbox_lab().await;
    let http = reqwest::Client::new();
    let post = |path: &str| {
        http.post(format!(
            "{}/_sandbox/channels/{LAB_CHANNEL}/{path}",
            lab.base_url
        ))
        .send()
    };
    assert_eq!(post("long-lived/reissue").await.unwrap().status(), 409);
    let first = console(&lab.base_url, "long-lived").await;
    assert_eq!(post("long-lived").await.unwrap().status(), 409);
    assert_eq!(
        post("long-lived/reissue?grace=25h").await.unwrap().status(),
        400
    );
    assert_eq!(
        post("long-lived/reissue?grace=soon")
            .await
            .unwrap()
            .status(),
        400
    );
    let token = |v: &str| linetokd::domain::AccessToken::new(v);
    match lab.client.verify_short_lived(&token(&first)).await.unwrap() {
        Verification::Valid(v) => {
            assert_eq!(v.client_id.as_str(), LAB_CHANNEL);
            assert!(v.expires_in > i64::from(i32::MAX), "{}", v.expires_in);
        }
        other => panic!("{other:?}"),
    }
    let second = console(&lab.base_url, "long-lived/reissue?grace=0").await;
    assert!(matches!(
        lab.client.verify_short_lived(&token(&first)).await.unwrap(),
        Verification::Rejected { .. }
    ));
    assert!(
        lab.client
            .verify_short_lived(&token(&second))
            .await
            .unwrap()
            .is_valid()
    );
    // Revoked with /v2/oauth/revoke like a short-lived token.
    lab.client
        .revoke_short_lived(&token(&second))
        .await
        .unwrap();
    assert!(
        !lab.client
            .verify_short_lived(&token(&second))
            .await
            .unwrap()
            .is_valid()
    );
    let listed = lab.sandbox.tokens(&lab.channel());
    assert_eq!(listed.len(), 2);
    assert!(
        listed
            .iter()
            .all(|t| t.kind == linetokd::sandbox::TokenKind::LongLived
                && t.issuer == linetokd::sandbox::TokenIssuer::Console)
    );
    assert_eq!(post("missing").await.unwrap().status(), 404);
}

/// Without a daemon, `long-lived retire` works from the config alone:
/// prints the fingerprint, refuses without `--yes`, revokes with it
/// (confirmed at the sandbox), and records it, so the daemon started
/// afterwards neither verifies nor alerts about that token.
#[tokio::test]
async fn retire_without_a_daemon_is_remembered_by_the_next_start() {
    let lab = sandbox_lab().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("lab.longlived");
    let value = console(&lab.base_url, "long-lived").await;
    write_private(&token_file, value.as_bytes());
    let config = write_config(dir.path(), &lab.base_url, &token_file);
    let run = |extra: &[&str]| {
        let mut args: Vec<String> = ["long-lived", "retire", "--channel", LAB_CHANNEL]
            .iter()
            .chain(extra)
            .map(|s| (*s).to_owned())
            .collect();
        args.extend(["--config".to_owned(), config.display().to_string()]);
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_linetokd"))
                .args(&args)
                .output()
                .unwrap()
        })
    };
    let dry = run(&[]).await.unwrap();
    assert_eq!(dry.status.code(), Some(2));
    let text =
        String::from_utf8_lossy(&dry.stdout).into_owned() + &String::from_utf8_lossy(&dry.stderr);
    assert!(
        text.contains(&fp(&value)) && text.contains("--yes"),
        "{text}"
    );
    assert!(!text.contains(&value));
    assert!(
        lab.client
            .verify_short_lived(&linetokd::domain::AccessToken::new(&value))
            .await
            .unwrap()
            .is_valid(),
        "nothing is revoked without --yes"
    );
    let done = run(&["--yes"]).await.unwrap();
    let text =
        String::from_utf8_lossy(&done.stdout).into_owned() + &String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "{text}");
    assert!(!text.contains(&value));
    let at_sandbox = lab.sandbox.tokens(&lab.channel());
    assert_eq!(
        at_sandbox[0].state,
        linetokd::sandbox::SandboxTokenState::Revoked
    );

    let valid = Settings::load(&config, &HashMap::new())
        .unwrap()
        .validate()
        .unwrap();
    let shutdown = CancellationToken::new();
    let clock: SharedClock = Arc::new(lab.clock.clone());
    let daemon = Daemon::start(&valid, clock, shutdown.clone(), RunOptions::default())
        .await
        .unwrap();
    let store = daemon.rotator.store().clone();
    // After the watcher's first round: a retired token is not served, and
    // no gauge says "invalid" (nothing is watched, so nothing pages).
    let mut rounds = daemon.long_lived.rounds();
    tokio::time::timeout(Duration::from_secs(30), rounds.wait_for(|n| *n >= 1))
        .await
        .expect("the watcher never published")
        .unwrap();
    assert!(
        !daemon
            .metrics
            .render()
            .contains("linetokd_long_lived_valid{"),
        "{}",
        daemon.metrics.render()
    );
    assert_eq!(api(&daemon, Some(API_KEY)).await.0, 503);
    // Published after its first round, in which a watched token is
    // verified at once: this one was not.
    let r = row(&store, &value).unwrap();
    assert!(r.retired_at.is_some());
    assert_eq!(r.last_checked_at, None, "a retired token is never verified");
    assert!(firing(&store).is_empty());
    shutdown.cancel();
    daemon.stopped().await.unwrap();
    drop(store);

    // A new console token put in the file while no daemon runs: the next
    // start watches it, and the row of the one the file no longer holds
    // ends.
    let next = console(&lab.base_url, "long-lived").await;
    replace_token(&token_file, &next);
    let shutdown = CancellationToken::new();
    let clock: SharedClock = Arc::new(lab.clock.clone());
    let daemon = Daemon::start(&valid, clock, shutdown.clone(), RunOptions::default())
        .await
        .unwrap();
    let store = daemon.rotator.store().clone();
    until("the new token is valid and the retired one ended", || {
        row(&store, &next).is_some_and(|r| r.result == LongLivedResult::Valid)
            && row(&store, &value).is_some_and(|r| r.role == LongLivedRole::Ended)
    })
    .await;
    shutdown.cancel();
    daemon.stopped().await.unwrap();
}

/// Reloads that move `token_file` to another path holding the same value
/// and straight back (without waiting for the watchers) keep the old value
/// inside its grace: it is verified until LINE drops it, then ended. A
/// channel whose `[channel.long_lived]` is removed ends its rows: nobody
/// verifies them, so `status` must not show them "valid".
#[tokio::test]
async fn path_changes_back_and_forth_keep_an_old_value_and_removal_ends_the_rows() {
    let lab = sandbox_lab().await;
    let start = DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
    lab.clock.set(start);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("lab.longlived");
    let t1 = console(&lab.base_url, "long-lived").await;
    write_private(&token_file, format!("{t1}\n").as_bytes());
    let config = write_config(dir.path(), &lab.base_url, &token_file);
    let load = || {
        Settings::load(&config, &HashMap::new())
            .unwrap()
            .validate()
            .unwrap()
    };
    let clock: SharedClock = Arc::new(lab.clock.clone());
    let shutdown = CancellationToken::new();
    let daemon = Daemon::start(&load(), clock, shutdown.clone(), RunOptions::default())
        .await
        .unwrap();
    let store = daemon.rotator.store().clone();
    verified_at(&store, &t1, start).await;
    let t2 = console(&lab.base_url, "long-lived/reissue?grace=24h").await;
    replace_token(&token_file, &t2);
    until("t1 is old and t2 current", || {
        row(&store, &t1).is_some_and(|r| r.role == LongLivedRole::Old)
            && row(&store, &t2).is_some_and(|r| r.role == LongLivedRole::Current)
    })
    .await;

    // Another path holding the same value, then back, reloaded at once.
    let other = dir.path().join("copy.longlived");
    write_private(&other, format!("{t2}\n").as_bytes());
    let original = fs::read_to_string(&config).unwrap();
    let moved = original.replace(
        &token_file.display().to_string(),
        &other.display().to_string(),
    );
    fs::write(&config, &moved).unwrap();
    daemon.reload(&load()).await.unwrap();
    fs::write(&config, &original).unwrap();
    daemon.reload(&load()).await.unwrap();
    fs::write(&config, &moved).unwrap();
    daemon.reload(&load()).await.unwrap();

    let later = start + chrono::Duration::hours(3);
    lab.clock.set(later);
    verified_at(&store, &t1, later).await;
    let r1 = row(&store, &t1).unwrap();
    assert_eq!(
        (r1.role, r1.result),
        (LongLivedRole::Old, LongLivedResult::Valid)
    );
    // Past the grace: refused, ended, and t2 alone is current.
    let past = start + chrono::Duration::hours(26);
    lab.clock.set(past);
    until("t1 is ended", || {
        row(&store, &t1).is_some_and(|r| r.role == LongLivedRole::Ended)
    })
    .await;
    verified_at(&store, &t2, past).await;
    let current: Vec<_> = store
        .long_lived_rows()
        .unwrap()
        .into_iter()
        .filter(|r| r.role != LongLivedRole::Ended)
        .map(|r| r.fingerprint)
        .collect();
    assert_eq!(current, vec![fp(&t2)]);

    // The section removed: its rows end, nothing stays "current".
    let start_of_section = original.find("  [channel.long_lived]").unwrap();
    fs::write(&config, &original[..start_of_section]).unwrap();
    daemon.reload(&load()).await.unwrap();
    until("every row is ended", || {
        store
            .long_lived_rows()
            .unwrap()
            .iter()
            .all(|r| r.role == LongLivedRole::Ended)
    })
    .await;
    shutdown.cancel();
    daemon.stopped().await.unwrap();
}

/// A token file that does not exist yet is no config mistake: the config
/// validates with a warning, the daemon starts, alerts
/// `long_lived_file_unreadable` and serves nothing, and picks the token up
/// as soon as the file appears.
#[tokio::test]
async fn a_token_file_that_appears_later_is_picked_up() {
    let lab = sandbox_lab().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("later.longlived");
    let config = write_config(dir.path(), &lab.base_url, &token_file);
    let valid = Settings::load(&config, &HashMap::new())
        .unwrap()
        .validate()
        .unwrap();
    assert!(
        valid
            .warnings()
            .iter()
            .any(|w| w.contains("later.longlived") && w.contains("does not exist")),
        "{:?}",
        valid.warnings()
    );
    let clock: SharedClock = Arc::new(lab.clock.clone());
    let shutdown = CancellationToken::new();
    let daemon = Daemon::start(&valid, clock, shutdown.clone(), RunOptions::default())
        .await
        .unwrap();
    let store = daemon.rotator.store().clone();
    until("long_lived_file_unreadable fires", || {
        firing(&store).iter().any(|a| {
            a.alertname == "long_lived_file_unreadable" && a.summary.contains("no value is served")
        })
    })
    .await;
    let (code, body) = api(&daemon, Some(API_KEY)).await;
    assert_eq!(
        (code, body["error"].as_str()),
        (503, Some("long_lived_unavailable"))
    );
    let value = console(&lab.base_url, "long-lived").await;
    replace_token(&token_file, &value);
    until("the token is valid", || {
        row(&store, &value).is_some_and(|r| r.result == LongLivedResult::Valid)
    })
    .await;
    until("the alert resolves", || firing(&store).is_empty()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while api(&daemon, Some(API_KEY)).await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never served");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.cancel();
    daemon.stopped().await.unwrap();
}
