//! `linetokd demo` teaches, and a daemon on port 0 can be found.
//!
//! - The real binary's demo prints its daemon's HTTP address (a port that
//!   answers while the demo runs) and a block of commands; the printed
//!   `status`, `health`, `curl /metrics` and `curl` of the token API lines
//!   work as pasted into `sh` while the demo runs, and no Rust debug name
//!   (`NoCurrent`, `KeyId(`…) reaches its output.
//! - A daemon with `listen = "127.0.0.1:0"` records where it listens in its
//!   state directory, so `linetokd health --config P` finds it (exit 0),
//!   and the record is gone once it stops.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use linetokd::app::{Daemon, RunOptions};
use linetokd::clock::SharedClock;
use linetokd::config::Settings;
use linetokd::rotator::RotationEvent;
use tokio_util::sync::CancellationToken;

use crate::support::{LAB_CHANNEL, LAB_KID, LAB_SECRET, sandbox_lab};

/// How long the test waits for any one thing the demo or daemon does.
const PATIENCE: Duration = Duration::from_secs(60);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs one printed command line as a user pasting it would.
fn sh(line: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(line)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// Runs `line` until it exits 0 (the daemon needs its first tokens before
/// it is ready), at most until `PATIENCE` passes; returns the last output.
fn sh_until_success(line: &str) -> Output {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let out = sh(line);
        if out.status.success() || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A plain HTTP/1.0 GET; returns the whole response (status line,
/// headers, body).
fn http_get(addr: SocketAddr, path: &str, headers: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{headers}\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// The demo's output, line by line, read on a thread.
struct DemoOutput {
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl DemoOutput {
    /// Reads until a line satisfies `want`; returns it.
    fn until(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(e) => panic!("no {what} ({e}); the demo said:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// Reads to the end of the output.
    fn rest(&mut self) {
        while let Ok(line) = self.lines.recv_timeout(PATIENCE) {
            self.seen.push(line);
        }
    }
}

#[test]
fn the_demo_shows_where_it_listens_and_commands_that_work() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_linetokd"))
        .args(["demo", "--for", "10m"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut out = DemoOutput {
        lines: rx,
        seen: Vec::new(),
    };

    // The address, then the block of commands.
    let listens = out.until("address line", |l| l.starts_with("The daemon listens on"));
    let addr: SocketAddr = listens
        .trim_start_matches("The daemon listens on http://")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(addr.port(), 0, "{listens}");
    let mut block = Vec::new();
    loop {
        let line = out.until("command block", |_| true);
        if line.trim().is_empty() {
            break;
        }
        if let Some(command) = line.strip_prefix("  ") {
            block.push(command.to_owned());
        }
    }
    let find = |needle: &str| -> String {
        block
            .iter()
            .find(|c| c.contains(needle))
            .unwrap_or_else(|| panic!("no `{needle}` command in {block:#?}"))
            .clone()
    };
    let binary = env!("CARGO_BIN_EXE_linetokd");
    for sub in ["status", "plan", "token", "rotate", "revoke", "health"] {
        let command = find(&format!(" {sub} --config "));
        assert!(command.starts_with(binary), "{command}");
    }
    let config = find(" status --config ")
        .split(" --config ")
        .nth(1)
        .unwrap()
        .to_owned();
    assert!(
        Path::new(&config).is_file(),
        "{config} is not the demo's config"
    );
    let token_api = find("Authorization: Bearer");
    assert!(
        token_api.contains("$(cat ") && token_api.contains(&format!("http://{addr}/v1/channels/")),
        "{token_api}"
    );

    // The address is a real, bound port while the demo runs.
    let healthz = http_get(addr, "/healthz", "");
    assert!(
        healthz
            .lines()
            .next()
            .unwrap_or_default()
            .ends_with(" 200 OK"),
        "{healthz}"
    );

    // The printed commands work as pasted.
    let status = sh(&find(" status --config "));
    assert!(status.status.success(), "status: {}", text(&status.stderr));
    assert!(
        text(&status.stdout).contains(&format!("HTTP on http://{addr}")),
        "{}",
        text(&status.stdout)
    );
    let plan = sh(&find(" plan --config "));
    assert!(plan.status.success(), "plan: {}", text(&plan.stderr));
    let health = sh_until_success(&find(" health --config "));
    assert!(health.status.success(), "health: {}", text(&health.stderr));
    let metrics = http_get(addr, "/metrics", "");
    assert!(metrics.contains("linetokd_"), "{metrics}");
    // The key is read from its file, never printed.
    let key_file = token_api
        .split("$(cat ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap()
        .to_owned();
    let key = fs::read_to_string(&key_file).unwrap();
    let path = token_api.rsplit(' ').next().unwrap();
    let path = path.trim_start_matches(&format!("http://{addr}"));
    let answer = http_get(
        addr,
        path,
        &format!("Authorization: Bearer {}\r\n", key.trim()),
    );
    let status_line = answer.lines().next().unwrap_or_default();
    assert!(
        status_line.ends_with(" 200 OK"),
        "the token API answered {status_line}"
    );
    assert!(
        answer.contains("\"access_token\""),
        "the token API answered no token"
    );
    if sh("command -v curl").status.success() {
        for line in [find("/metrics"), token_api.clone()] {
            let curl = sh(&line);
            assert!(curl.status.success(), "{line}: {}", text(&curl.stderr));
            assert!(!curl.stdout.is_empty(), "{line} printed nothing");
        }
    }

    // Every group's first token, told in words.
    let mut issued = BTreeSet::new();
    while issued.len() < 3 {
        let line = out.until("three ISSUED lines", |l| l.contains(" ISSUED "));
        issued.insert(line.split_whitespace().nth(1).unwrap().to_owned());
        assert!(line.contains("(no live token)"), "{line}");
    }

    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::INT,
    )
    .unwrap();
    out.rest();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "the demo ended with {status}: {stderr}");
    let all = out.seen.join("\n");
    assert!(all.contains("demo over:"), "{all}");
    for debug in ["NoCurrent", "KeyId(", "GroupName(", "(Due)", "Some(", " { "] {
        assert!(
            !all.contains(debug),
            "`{debug}` in the demo's output:\n{all}"
        );
        assert!(
            !stderr.contains(debug),
            "`{debug}` in the demo's logs:\n{stderr}"
        );
    }
    assert!(!all.contains(key.trim()), "the demo printed an API key");
    let record = Path::new(&config).with_file_name("daemon.json");
    assert!(!record.exists(), "{} outlived the demo", record.display());
}

fn write_private(path: &Path, bytes: &[u8]) {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
}

/// One channel (the lab's) with group `a`, listening on port 0.
fn write_port_zero_config(dir: &Path, line_api: &str) -> PathBuf {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys/rsa2048-pkcs8.pem");
    write_private(&dir.join("key.pem"), &fs::read(fixture).unwrap());
    write_private(&dir.join("secret"), LAB_SECRET.as_bytes());
    let toml = format!(
        r#"
[daemon]
database = "{d}/linetokd.db"
state_dir = "{d}"
line_api = "{line_api}"
listen = "127.0.0.1:0"

[[channel]]
id = "{LAB_CHANNEL}"
name = "lab"
key_file = "{d}/key.pem"
kid = "{LAB_KID}"
secret_file = "{d}/secret"

  [[channel.group]]
  name = "a"
"#,
        d = dir.display(),
    );
    let path = dir.join("linetokd.toml");
    fs::write(&path, toml).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_finds_a_daemon_listening_on_port_0() {
    let lab = sandbox_lab().await;
    // The daemon judges readiness on its clock; keep it at the wall clock.
    lab.clock
        .set(chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp(), 0).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let config = write_port_zero_config(dir.path(), &lab.base_url);
    let health_line = format!(
        "'{}' health --config '{}'",
        env!("CARGO_BIN_EXE_linetokd"),
        config.display()
    );

    // No daemon: the answer names the record it looked for.
    let line = health_line.clone();
    let none = tokio::task::spawn_blocking(move || sh(&line))
        .await
        .unwrap();
    assert_eq!(none.status.code(), Some(1), "{}", text(&none.stderr));
    assert!(
        text(&none.stderr).contains("daemon.json"),
        "{}",
        text(&none.stderr)
    );

    let valid = Settings::load(&config, &HashMap::new())
        .unwrap()
        .validate()
        .unwrap();
    let clock: SharedClock = Arc::new(lab.clock.clone());
    let shutdown = CancellationToken::new();
    let mut daemon = Daemon::start(&valid, clock, shutdown.clone(), RunOptions::default())
        .await
        .unwrap();
    assert_ne!(daemon.http_addr.port(), 0);
    tokio::time::timeout(PATIENCE, async {
        loop {
            if let RotationEvent::Issued { .. } = daemon.events.recv().await.unwrap() {
                break;
            }
        }
    })
    .await
    .expect("no token issued");

    let line = health_line.clone();
    let ready = tokio::task::spawn_blocking(move || sh_until_success(&line))
        .await
        .unwrap();
    assert!(ready.status.success(), "health: {}", text(&ready.stderr));
    assert_eq!(text(&ready.stdout).trim(), "ready");

    let record = dir.path().join("daemon.json");
    let recorded: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&record).unwrap()).unwrap();
    assert_eq!(recorded["http"], daemon.http_addr.to_string());
    assert_eq!(recorded["pid"], std::process::id());

    shutdown.cancel();
    daemon.stopped().await.unwrap();
    assert!(!record.exists(), "the address record outlived the daemon");
}
