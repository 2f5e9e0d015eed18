//! LINE Login grants through the real daemon (`app::Daemon::start`) and the
//! real binary, on the in-process sandbox's manual clock: a config with
//! `[encryption]`, a `[[login_channel]]` and `[login]`; a grant imported
//! over HTTP, refreshed after the clock moves, served, and deleted with its
//! revoke at LINE. The captured log, the metrics and `linetokd status`
//! hold no user token and no subject (only its hash); the database file
//! and its WAL hold no token bytes. Without `[encryption]` the binary
//! refuses to start.
//!
//! Waits are on conditions (the sandbox's and the store's state), polled;
//! the clock is only moved by the test.

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
use linetokd::clock::{Clock as _, ManualClock, SharedClock};
use linetokd::config::Settings;
use linetokd::domain::{ChannelId, ChannelSecret, subject_hash};
use linetokd::sandbox::{LoginAppType, LoginChannelConfig as SandboxLogin};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::{LAB_CHANNEL, LAB_KID, LAB_SECRET, SandboxLab, sandbox_lab};

const LOGIN: &str = "1660000000";
const ADMIN: &str = "login-admin-key-0123456789";
const READER: &str = "login-reader-key-0123456789";
/// A LINE user ID: personal data, never to be logged.
const SUBJECT: &str = "U4af4980629b2c7c0e9a1d3f5b7c9e1f3";

fn write_private(path: &Path, bytes: &[u8]) {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
}

/// The config: one Messaging API channel, one login channel, and
/// `[encryption]` unless `encrypted` is false.
fn write_config(dir: &Path, line_api: &str, encrypted: bool) -> PathBuf {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys/rsa2048-pkcs8.pem");
    write_private(&dir.join("key.pem"), &fs::read(fixture).unwrap());
    write_private(&dir.join("secret"), LAB_SECRET.as_bytes());
    write_private(&dir.join("admin.apikey"), ADMIN.as_bytes());
    write_private(&dir.join("reader.apikey"), READER.as_bytes());
    let encryption = if encrypted {
        linetokd::keygen::write_db_key(&dir.join("db-1.key")).unwrap();
        format!(
            "[encryption]\nkey_files = [ {{ id = 1, file = \"{}/db-1.key\" }} ]\nactive = 1\n",
            dir.display()
        )
    } else {
        String::new()
    };
    let toml = format!(
        r#"
[daemon]
database = "{db}"
state_dir = "{dir}"
line_api = "{line_api}"
listen = "127.0.0.1:0"

{encryption}
[[channel]]
id = "{LAB_CHANNEL}"
name = "lab"
key_file = "{dir}/key.pem"
kid = "{LAB_KID}"
secret_file = "{dir}/secret"

  [[channel.group]]
  name = "a"

[[login_channel]]
id = "{LOGIN}"
name = "shop-login"

[login]
refresh_before = "3d"
horizon = "90d"
horizon_margin = "12h"
reauth_notify_before = "7d"
max_requests_per_second = 5
admin_api_key_file = "{dir}/admin.apikey"
reader_api_key_file = "{dir}/reader.apikey"
"#,
        db = dir.join("linetokd.db").display(),
        dir = dir.display(),
    );
    let path = dir.join("linetokd.toml");
    fs::write(&path, toml).unwrap();
    path
}

#[derive(Clone)]
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

/// Polls `done` until it holds (bounded, so a broken daemon fails the test).
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `work` while moving the manual clock to each deadline less than
/// a second away that something sleeps on: the login channel's token
/// bucket (5 a second) between a delete's calls to LINE. Farther
/// deadlines (the next rotation) are left alone.
async fn paced<T>(clock: &ManualClock, work: impl std::future::Future<Output = T>) -> T {
    tokio::pin!(work);
    loop {
        tokio::select! {
            biased;
            out = &mut work => return out,
            () = tokio::time::sleep(Duration::from_millis(2)) => {
                if clock.sleepers() > 0 {
                    let at = clock.next_deadline().await;
                    let now = clock.now();
                    if at > now && at - now <= chrono::Duration::seconds(1) {
                        clock.set(at);
                    }
                }
            }
        }
    }
}

async fn call(
    daemon: &Daemon,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("http://{}{path}", daemon.http_addr))
        .bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let answer = request.send().await.unwrap();
    let status = answer.status().as_u16();
    let body = answer.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Every token value the sandbox ever handed out for the login channel.
fn sandbox_values(lab: &SandboxLab) -> Vec<String> {
    let mut values = Vec::new();
    for g in lab.sandbox.login_grants(&ChannelId::new(LOGIN)) {
        values.push(g.refresh_token.clone());
        values.extend(g.retired_refresh_tokens.clone());
        values.extend(g.access_tokens.iter().map(|a| a.access_token.clone()));
    }
    values
}

#[test]
fn a_grant_lives_through_the_real_daemon_and_no_token_or_subject_is_shown() {
    let logs = Arc::new(Mutex::new(Vec::<u8>::new()));
    let writer = LogWriter(logs.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("linetokd=debug,tower_http=debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // As in long_lived.rs: a second dispatcher makes tracing ask ours for
    // callsites a parallel test thread saw first.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let _guard = tracing::subscriber::set_default(subscriber);
    tracing::callsite::rebuild_interest_cache();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (values, shown, files) = runtime.block_on(scenario());
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("LINE Login grant refreshed"), "{logs}");
    assert!(
        logs.contains(&subject_hash(SUBJECT)),
        "grants are logged by hash"
    );
    assert!(
        values.len() >= 4,
        "two access and two refresh tokens at least"
    );
    for (what, text) in [("the log", &logs), ("metrics and status", &shown)] {
        assert!(!text.contains(SUBJECT), "the subject is in {what}");
        for v in &values {
            assert!(!text.contains(v.as_str()), "a user token is in {what}");
        }
    }
    for v in &values {
        let needle = v.as_bytes();
        assert!(
            !files.windows(needle.len()).any(|w| w == needle),
            "a user token is in the database file or its WAL"
        );
    }
}

/// Runs the scenario; returns every token value, the metrics and status
/// output, and the bytes of the database file and its WAL.
async fn scenario() -> (Vec<String>, String, Vec<u8>) {
    let lab = sandbox_lab().await;
    // `status` (another process) reads beside the daemon with the wall
    // clock: start there.
    let start = DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
    lab.clock.set(start);
    lab.sandbox
        .register_login_channel(SandboxLogin {
            id: ChannelId::new(LOGIN),
            secret: ChannelSecret::new("login-secret-0123456789"),
            app_type: LoginAppType::Native,
            rotate_refresh_tokens: true,
        })
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &lab.base_url, true);
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
    let channel = ChannelId::new(LOGIN);

    // Import the user's login over HTTP.
    let login = lab
        .sandbox
        .login(&channel, SUBJECT, "profile openid")
        .unwrap();
    let (status, answer) = call(
        &daemon,
        reqwest::Method::POST,
        &format!("/v1/login/{LOGIN}/grants"),
        ADMIN,
        Some(json!({
            "subject": SUBJECT,
            "access_token": login.access_token,
            "refresh_token": login.refresh_token,
            "expires_in": login.expires_in,
            "login_at": start.timestamp(),
        })),
    )
    .await;
    assert_eq!(status, 201, "{answer}");

    // The clock reaches its refresh: the daemon's task refreshes it.
    let due = store
        .login_grant(&channel, SUBJECT)
        .unwrap()
        .unwrap()
        .next_refresh_at;
    assert!(due > start);
    lab.clock.set(due);
    until("the daemon refreshed the grant", || {
        store
            .login_grant(&channel, SUBJECT)
            .unwrap()
            .is_some_and(|g| g.last_refresh_at.is_some())
    })
    .await;
    let at_line = lab.sandbox.login_grants(&channel);
    assert_eq!(at_line[0].refreshes, 1);
    let newest = at_line[0]
        .access_tokens
        .last()
        .unwrap()
        .access_token
        .clone();

    // Served: the refreshed token.
    let (status, answer) = call(
        &daemon,
        reqwest::Method::GET,
        &format!("/v1/login/{LOGIN}/grants/{SUBJECT}/token"),
        READER,
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["access_token"], newest.as_str());

    // Metrics and status while the grant exists.
    let mut shown = daemon.metrics.render();
    assert!(
        shown.contains("linetokd_login_refresh_total{channel=\"1660000000\",result=\"success\"} 1"),
        "{shown}"
    );
    shown.push_str(&linetokd_status(&config).await);

    // Deleted, with the revoke at LINE (two calls: the access token, then
    // the refresh token, a bucket's token apart).
    let (status, answer) = paced(
        &lab.clock,
        call(
            &daemon,
            reqwest::Method::DELETE,
            &format!("/v1/login/{LOGIN}/grants/{SUBJECT}"),
            ADMIN,
            None,
        ),
    )
    .await;
    assert_eq!(status, 204, "{answer}");
    let ended = lab.sandbox.login_grants(&channel);
    assert!(
        ended[0]
            .access_tokens
            .iter()
            .all(|a| a.state != linetokd::sandbox::LoginTokenState::Live),
        "every access token is revoked at LINE: {:?}",
        ended[0]
            .access_tokens
            .iter()
            .map(|a| a.state)
            .collect::<Vec<_>>()
    );
    assert!(store.login_grant(&channel, SUBJECT).unwrap().is_none());
    shown.push_str(&daemon.metrics.render());
    shown.push_str(&format!("{:?}", store.recent_events(1000).unwrap()));
    shown.push_str(&format!("{:?}", store.firing_alerts().unwrap()));

    let values = sandbox_values(&lab);
    drop(store);
    shutdown.cancel();
    daemon.stopped().await.unwrap();
    let db = dir.path().join("linetokd.db");
    let mut files = fs::read(&db).unwrap();
    for companion in ["-wal", "-shm"] {
        if let Ok(more) = fs::read(format!("{}{companion}", db.display())) {
            files.extend(more);
        }
    }
    (values, shown, files)
}

/// `linetokd status --config` beside the running daemon: its output.
async fn linetokd_status(config: &Path) -> String {
    let bin = env!("CARGO_BIN_EXE_linetokd");
    let args = vec![
        "status".to_owned(),
        "--config".to_owned(),
        config.display().to_string(),
    ];
    let out = tokio::task::spawn_blocking(move || Command::new(bin).args(&args).output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[tokio::test]
async fn the_binary_refuses_login_channels_without_encryption() {
    let lab = sandbox_lab().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &lab.base_url, false);
    let bin = env!("CARGO_BIN_EXE_linetokd");
    let args = vec![
        "run".to_owned(),
        "--config".to_owned(),
        config.display().to_string(),
    ];
    let out = tokio::task::spawn_blocking(move || Command::new(bin).args(&args).output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("[encryption]"), "{stderr}");
    assert!(
        !dir.path().join("linetokd.db").exists(),
        "nothing was started: no database"
    );
}
