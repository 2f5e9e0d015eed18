//! `linetokd login import`: the real binary against the real daemon (the
//! binary's `run`), whose LINE is the in-process sandbox on the system
//! clock. Outcomes are judged from the outside: the CLI's exit code and
//! output, the daemon's API, and the sandbox's log of verify calls (the
//! rate). The 429 path is driven against a fake daemon, since the real
//! one paces imports by holding them instead.
//!
//! Depends on `e2e::harness` (processes and their output), `support`
//! (the fake HTTP server) and the crate's sandbox.

use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use linetokd::clock::SystemClock;
use linetokd::domain::{ChannelId, ChannelSecret, subject_hash};
use linetokd::login_import::{Summary, Target, import};
use linetokd::sandbox::{LoginAppType, LoginChannelConfig as SandboxLogin, Sandbox};
use linetokd::secret::Secret;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::e2e::harness::{Proc, http_url, write_private};
use crate::support::{Mock, Reply};

const LOGIN: &str = "1660000000";
const OTHER: &str = "1660000001";
const SECRET: &str = "login-SECRET-never-shown";
const ADMIN: &str = "admin-key-0123456789";
const READER: &str = "reader-key-0123456789";

/// The sandbox on the wall clock, a config for it, and a running daemon.
struct ImportLab {
    sandbox: Sandbox,
    sandbox_url: String,
    stop_sandbox: CancellationToken,
    dir: tempfile::TempDir,
    config: PathBuf,
    daemon: Proc,
    daemon_url: String,
}

impl ImportLab {
    async fn start(rate: u32) -> Self {
        let sandbox = Sandbox::empty(Arc::new(SystemClock));
        for id in [LOGIN, OTHER] {
            sandbox
                .register_login_channel(SandboxLogin {
                    id: ChannelId::new(id),
                    secret: ChannelSecret::new(SECRET),
                    app_type: LoginAppType::Native,
                    rotate_refresh_tokens: false,
                })
                .unwrap();
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sandbox_url = format!("http://{}", listener.local_addr().unwrap());
        let stop_sandbox = CancellationToken::new();
        tokio::spawn(sandbox.clone().serve(listener, stop_sandbox.clone()));

        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        linetokd::keygen::write_db_key(&d.join("db.key")).unwrap();
        write_private(&d.join("admin.key"), ADMIN);
        write_private(&d.join("reader.key"), READER);
        std::fs::create_dir(d.join("state")).unwrap();
        let config = d.join("linetokd.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[daemon]
database = "{d}/linetokd.db"
state_dir = "{d}/state"
line_api = "{sandbox_url}"
listen = "127.0.0.1:0"
log_format = "json"

[encryption]
key_files = [{{ id = 1, file = "{d}/db.key" }}]
active = 1

[[login_channel]]
id = "{LOGIN}"
name = "shop-login"

[login]
max_requests_per_second = {rate}
admin_api_key_file = "{d}/admin.key"
reader_api_key_file = "{d}/reader.key"
"#,
                d = d.display()
            ),
        )
        .unwrap();
        let daemon = Proc::spawn(
            "daemon",
            &["run", "--config", config.to_str().unwrap()],
            &[("RUST_LOG", "info")],
        );
        let daemon_url = http_url(&daemon).await;
        Self {
            sandbox,
            sandbox_url,
            stop_sandbox,
            dir,
            config,
            daemon,
            daemon_url,
        }
    }

    /// A user logs in at the sandbox; the import line for that grant.
    fn login_line(&self, channel: &str, subject: &str) -> Value {
        let grant = self
            .sandbox
            .login(&ChannelId::new(channel), subject, "profile openid")
            .unwrap();
        json!({
            "subject": subject,
            "access_token": grant.access_token,
            "refresh_token": grant.refresh_token,
            "expires_in": grant.expires_in,
        })
    }

    fn write_lines(&self, name: &str, lines: &[String]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    }

    /// `linetokd login import` (the binary), waited on off the runtime.
    async fn import(&self, args: &[&str], stdin: Option<PathBuf>) -> Output {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_linetokd"));
        command
            .args(["login", "import", "--config", self.config.to_str().unwrap()])
            .args(args)
            .env_clear()
            .stdin(match stdin {
                Some(path) => std::fs::File::open(path).unwrap().into(),
                None => std::process::Stdio::null(),
            });
        tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap()
    }

    /// Any other `linetokd` command with this lab's config.
    async fn cli(&self, args: &[&str]) -> Output {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_linetokd"));
        command
            .args(args)
            .args(["--config", self.config.to_str().unwrap()])
            .env_clear();
        tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap()
    }

    /// The grant's access token, as a reader gets it from the daemon.
    async fn served(&self, subject: &str) -> (u16, Value) {
        let response = reqwest::Client::new()
            .get(format!(
                "{}/v1/login/{LOGIN}/grants/{subject}/token",
                self.daemon_url
            ))
            .bearer_auth(READER)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Verify calls at the sandbox for `channel`'s user tokens, from the
    /// sandbox's own inspection route.
    async fn verify_calls(&self, channel: &str) -> Vec<i64> {
        let body: Value = reqwest::get(format!(
            "{}/_sandbox/login/{channel}/verify_calls",
            self.sandbox_url
        ))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        body["at_ms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect()
    }

    async fn stop(mut self) {
        self.daemon.signal("TERM");
        self.daemon.exit_ok().await;
        self.stop_sandbox.cancel();
    }
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The most calls in any one-second window `[t, t + 1000 ms)`.
fn busiest_second(at_ms: &[i64]) -> usize {
    let mut sorted = at_ms.to_vec();
    sorted.sort_unstable();
    let mut most = 0;
    let mut start = 0;
    for end in 0..sorted.len() {
        while sorted[end] - sorted[start] >= 1000 {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

#[test]
fn busiest_second_counts_half_open_windows() {
    assert_eq!(busiest_second(&[]), 0);
    assert_eq!(busiest_second(&[0, 999, 1000]), 2);
    assert_eq!(busiest_second(&[5, 0, 10, 2000]), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_malformed_and_foreign_lines_are_each_reported() {
    let lab = ImportLab::start(50).await;
    let good_a = lab.login_line(LOGIN, "Ugood-a");
    let good_b = lab.login_line(LOGIN, "Ugood-b");
    let foreign = lab.login_line(OTHER, "Uforeign");
    let lines = vec![
        good_a.to_string(),
        r#"{"subject": "Ubroken", "access_token": "#.to_owned(),
        String::new(),
        foreign.to_string(),
        good_b.to_string(),
        // The same subject again: a replacement, not a second grant.
        good_a.to_string(),
    ];
    let file = lab.write_lines("grants.jsonl", &lines);
    let out = lab
        .import(
            &["--channel", "shop-login", "--file", file.to_str().unwrap()],
            None,
        )
        .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("refused line 2: is not JSON"),
        "the malformed line by number: {stdout}"
    );
    let foreign_hash = subject_hash("Uforeign");
    assert!(
        stdout.contains(&format!(
            "refused line 4 (subject {foreign_hash}): [access_token] access_token belongs to \
             another channel"
        )),
        "the foreign token by line, hashed subject and field: {stdout}"
    );
    assert!(
        stdout.contains(
            "login channel shop-login (1660000000): 5 lines, 2 imported, 1 replaced, 2 refused \
             (lines 2, 4)"
        ),
        "{stdout}"
    );
    // Nothing the file held but line numbers and hashes is printed.
    for secret in [&good_a, &good_b, &foreign] {
        for field in ["access_token", "refresh_token"] {
            let value = secret[field].as_str().unwrap();
            assert!(!stdout.contains(value) && !stderr.contains(value));
        }
    }
    assert!(!stdout.contains("Uforeign") && !stdout.contains("Ugood"));
    // The malformed line never reached LINE: one verify per good line sent
    // (three), none for line 2; the foreign token's verify counts at its
    // own channel.
    assert_eq!(lab.verify_calls(LOGIN).await.len(), 3);
    assert_eq!(lab.verify_calls(OTHER).await.len(), 1);
    assert_eq!(lab.served("Ugood-b").await.0, 200);
    let (status, body) = lab.served("Ugood-a").await;
    assert_eq!(status, 200);
    assert_eq!(body["access_token"], good_a["access_token"]);
    assert_eq!(lab.served("Uforeign").await.0, 404);

    // All good, read from stdin (`-`): exit 0. This user logged in 85
    // days ago: 5 days to the horizon, inside the 7-day notice window.
    let mut late = lab.login_line(LOGIN, "Uc");
    late["login_at"] = json!((chrono::Utc::now() - chrono::Duration::days(85)).to_rfc3339());
    let again = lab.write_lines("again.jsonl", &[late.to_string()]);
    let out = lab
        .import(&["--channel", LOGIN, "--file", "-"], Some(again))
        .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("1 lines, 1 imported, 0 replaced, 0 refused"));

    // `status` counts the grants per login channel and state, the ones
    // inside the notice window and the estimated horizons; no subject, no
    // token.
    let status = lab.cli(&["status", "--json"]).await;
    let (stdout, stderr) = text(&status);
    assert_eq!(status.status.code(), Some(0), "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        report["login"],
        json!({
            "reauth_notify_before_secs": 7 * 86_400,
            "channels": [{
                "channel": LOGIN, "name": "shop-login", "active": 3, "needs_login": 0,
                "revoked": 0, "reauth_due": 1, "horizon_estimated": 2,
            }],
        })
    );
    let status = lab.cli(&["status"]).await;
    let (shown, _) = text(&status);
    assert!(
        shown.contains(
            "login channel shop-login (1660000000): 3 active, 0 needs_login, 0 revoked; 1 inside \
             the notice window, 2 with an estimated horizon"
        ),
        "{shown}"
    );
    for out in [&stdout, &shown] {
        assert!(!out.contains("Ugood") && !out.contains("Uc\""), "{out}");
        for line in [&good_a, &good_b, &late] {
            assert!(!out.contains(line["access_token"].as_str().unwrap()));
            assert!(!out.contains(line["refresh_token"].as_str().unwrap()));
        }
    }

    // An unknown login channel is a usage error, before anything is read.
    let out = lab.import(&["--channel", "nope"], None).await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("login channel nope is not configured"),
        "{stderr}"
    );
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_daemon_is_named_by_its_address() {
    let lab = ImportLab::start(5).await;
    let line = lab.login_line(LOGIN, "Ua").to_string();
    let file = lab.write_lines("one.jsonl", &[line]);
    let ImportLab {
        mut daemon,
        config,
        dir,
        stop_sandbox,
        daemon_url,
        ..
    } = lab;
    daemon.signal("TERM");
    daemon.exit_ok().await;
    stop_sandbox.cancel();
    // The stopped daemon removed its address record: the config's port 0
    // leaves nothing to reach, and the CLI says where it looked.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_linetokd"))
        .args(["login", "import", "--config", config.to_str().unwrap()])
        .args(["--channel", LOGIN, "--file", file.to_str().unwrap()])
        .env_clear()
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is `linetokd run"), "{stderr}");
    // With the address fixed in the config, the error names it.
    let addr = daemon_url.trim_start_matches("http://");
    let fixed = std::fs::read_to_string(&config)
        .unwrap()
        .replace("127.0.0.1:0", addr);
    std::fs::write(&config, fixed).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_linetokd"))
        .args(["login", "import", "--config", config.to_str().unwrap()])
        .args(["--channel", LOGIN, "--file", file.to_str().unwrap()])
        .env_clear()
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("no linetokd daemon answers at {addr}")),
        "{stderr}"
    );
    drop(dir);
}

/// A bulk import through the CLI and a real daemon keeps to
/// `max_requests_per_second` as the sandbox sees the verify calls: no
/// one-second window holds more. The rate is the highest the config allows
/// (50), which binds (a debug daemon imports about 75 a second here); the
/// window, not the duration, is judged. 1,000 lines (20 s of real time)
/// make 20 full windows; the 10,000-grant figure is
/// `login::a_bulk_import_keeps_to_the_rate_limit`, on a manual clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_import_keeps_to_the_rate_at_the_sandbox() {
    const RATE: usize = 50;
    const LINES: usize = 1_000;
    let lab = ImportLab::start(u32::try_from(RATE).unwrap()).await;
    let lines: Vec<String> = (0..LINES)
        .map(|i| lab.login_line(LOGIN, &format!("Ubulk{i:05}")).to_string())
        .collect();
    let file = lab.write_lines("bulk.jsonl", &lines);
    let out = lab
        .import(
            &["--channel", LOGIN, "--file", file.to_str().unwrap()],
            None,
        )
        .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!(
            "{LINES} lines, {LINES} imported, 0 replaced, 0 refused"
        )),
        "{stdout}"
    );
    let calls = lab.verify_calls(LOGIN).await;
    assert_eq!(calls.len(), LINES, "one verify per line");
    let busiest = busiest_second(&calls);
    assert!(
        busiest <= RATE,
        "{busiest} verify calls in one second at the sandbox; the limit is {RATE}"
    );
    lab.stop().await;
}

/// The daemon paces by holding a request, but a 429 with `Retry-After`
/// (from a proxy, or a daemon that refuses instead) makes the client wait
/// and send the same line again, never skip it.
#[tokio::test]
async fn a_429_is_waited_out_and_the_line_sent_again() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let mock = Mock::start(move |_| match seen.fetch_add(1, Ordering::SeqCst) {
        0 | 1 => Reply::json(429, r#"{"error":"rate_limited","message":"slow down"}"#)
            .header("retry-after", "0"),
        _ => Reply::json(201, r#"{"replaced":false}"#),
    })
    .await;
    let target = Target {
        http: mock.base_url.trim_start_matches("http://").parse().unwrap(),
        channel: LOGIN.into(),
        admin_key: Secret::new(ADMIN),
    };
    let input: &[u8] =
        b"{\"subject\":\"Ua\",\"access_token\":\"a\",\"refresh_token\":\"r\",\"expires_in\":5}\n";
    let mut summary = Summary::default();
    import(&target, input, &mut summary, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(summary.imported, 1);
    assert_eq!(summary.rate_limited, 2);
    assert!(summary.all_imported());
    let sent = mock.seen();
    assert_eq!(sent.len(), 3, "the one line, sent three times");
    assert!(
        sent.iter()
            .all(|s| s.path == format!("/v1/login/{LOGIN}/grants")
                && s.json.as_ref().is_some_and(|j| j["subject"] == "Ua"))
    );
}

/// `check-config` prints the login channels and `[login]` resolved, its
/// key and secret files by path, size and mode only.
#[test]
fn check_config_shows_login_channels_and_timings_masked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    linetokd::keygen::write_db_key(&d.join("db.key")).unwrap();
    write_private(&d.join("admin.key"), ADMIN);
    write_private(&d.join("reader.key"), READER);
    write_private(&d.join("login.secret"), SECRET);
    let config = d.join("linetokd.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[daemon]
database = "{d}/linetokd.db"
state_dir = "{d}/state"

[encryption]
key_files = [{{ id = 1, file = "{d}/db.key" }}]
active = 1

[[login_channel]]
id = "{LOGIN}"
name = "shop-login"
secret_file = "{d}/login.secret"

[login]
horizon_margin = "36h"
admin_api_key_file = "{d}/admin.key"
reader_api_key_file = "{d}/reader.key"
"#,
            d = d.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_linetokd"))
        .args(["check-config", "--config", config.to_str().unwrap()])
        .env_clear()
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let shown: toml::Value = toml::from_str(&stdout).unwrap();
    let channel = &shown["login_channel"][0];
    assert_eq!(channel["id"].as_str(), Some(LOGIN));
    assert_eq!(channel["name"].as_str(), Some("shop-login"));
    assert_eq!(
        channel["secret_file"].as_str().unwrap(),
        format!(
            "{} (secret, {} bytes, mode 0600)",
            d.join("login.secret").display(),
            SECRET.len()
        )
    );
    let login = &shown["login"];
    for (key, value) in [
        ("refresh_before", "3d"),
        ("horizon", "90d"),
        ("horizon_margin", "36h"),
        ("reauth_notify_before", "7d"),
    ] {
        assert_eq!(login[key].as_str(), Some(value), "{key}: {stdout}");
    }
    assert_eq!(login["max_requests_per_second"].as_integer(), Some(5));
    assert!(
        login["admin_api_key_file"]
            .as_str()
            .unwrap()
            .ends_with(&format!(
                "admin.key (secret, {} bytes, mode 0600)",
                ADMIN.len()
            )),
        "{stdout}"
    );
    for secret in [ADMIN, READER, SECRET] {
        assert!(!stdout.contains(secret) && !stderr.contains(secret));
    }
}
