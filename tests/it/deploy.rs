//! Deployment: the sd_notify protocol ([`linetokd::notify`]) through sockets
//! the tests own, and every file under `deploy/` checked against what it
//! claims: the systemd unit by `systemd-analyze verify` and `security`, the
//! sysusers file by `systemd-sysusers --dry-run`, each shipped config by the
//! config loader (with the credentials its unit or image provides), the
//! Dockerfile and compose files by their required pieces, the compose
//! demo's image layout by running the real daemon against the real sandbox
//! with exactly those files, and the HA compose file and the Kubernetes
//! manifests by their pieces and by `linetokd check-config` on the configs
//! they run, with the secret files laid out as the image or the kubelet
//! lays them out.
//!
//! Docker and Kubernetes cannot run here (no engine, no cluster), so the
//! images are not built and the manifests not applied; the systemd tools
//! are run where installed and skipped with a printed reason where not.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use linetokd::app::{Daemon, RunOptions};
use linetokd::clock::{Clock, SharedClock};
use linetokd::config::Settings;
use linetokd::domain::ChannelId;
use linetokd::line::keys::{SigningKey, VerifyingKey};
use linetokd::notify::{Notifier, NotifyError};
use linetokd::rotator::RotationEvent;
use linetokd::sandbox::{Sandbox, SandboxConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::support;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn env(pairs: &[(&str, &Path)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.to_str().unwrap().to_owned()))
        .collect()
}

fn write_private(path: &Path, body: &[u8], mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, body).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Where a program is, if it is installed.
fn installed(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain(["/usr/bin".into(), "/bin".into()])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

// ---------------------------------------------------------------------------
// sd_notify

/// A datagram socket in a temp dir standing in for systemd's.
struct FakeManager {
    _dir: tempfile::TempDir,
    path: PathBuf,
    socket: UnixDatagram,
}

impl FakeManager {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        // A bound on a broken test, not a wait: messages are already queued
        // when recv is called.
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Self {
            _dir: dir,
            path,
            socket,
        }
    }

    fn notifier(&self, watchdog_usec: Option<&str>) -> Notifier {
        Notifier::from_env_values(
            Some(self.path.to_str().unwrap()),
            watchdog_usec,
            Some(&std::process::id().to_string()),
            std::process::id(),
        )
        .unwrap()
        .expect("NOTIFY_SOCKET is set")
    }

    fn recv(&self) -> String {
        recv(&self.socket)
    }

    /// True when no message is waiting.
    fn is_quiet(&self) -> bool {
        self.socket.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        let quiet = matches!(
            self.socket.recv(&mut buf),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        );
        self.socket.set_nonblocking(false).unwrap();
        quiet
    }
}

fn recv(socket: &UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    let n = socket.recv(&mut buf).expect("a notification");
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

fn monotonic_usec() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec).unwrap() * 1_000_000 + u64::try_from(t.tv_nsec).unwrap() / 1_000
}

#[test]
fn notifier_sends_ready_watchdog_and_stopping_in_order() {
    let manager = FakeManager::new();
    let notifier = manager.notifier(Some("30000000"));
    assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(15)));

    notifier.ready().unwrap();
    notifier.watchdog().unwrap();
    notifier.stopping().unwrap();

    assert_eq!(manager.recv(), "READY=1");
    assert_eq!(manager.recv(), "WATCHDOG=1");
    assert_eq!(manager.recv(), "STOPPING=1");
    assert!(manager.is_quiet());
}

#[test]
fn reloading_carries_the_monotonic_time_and_status_stays_one_field() {
    let manager = FakeManager::new();
    let notifier = manager.notifier(None);
    assert_eq!(notifier.watchdog_interval(), None);

    let before = monotonic_usec();
    notifier.reloading().unwrap();
    let after = monotonic_usec();
    notifier.ready().unwrap();
    notifier
        .status("2 channels, 3 groups\nREADY=1\r\nnext rotation in 23h")
        .unwrap();

    let reloading = manager.recv();
    let fields: Vec<&str> = reloading.lines().collect();
    assert_eq!(fields[0], "RELOADING=1", "{reloading}");
    let usec: u64 = fields[1]
        .strip_prefix("MONOTONIC_USEC=")
        .unwrap_or_else(|| panic!("{reloading}"))
        .parse()
        .unwrap();
    assert!(
        (before..=after).contains(&usec),
        "{before} <= {usec} <= {after}"
    );
    assert_eq!(fields.len(), 2, "{reloading}");
    assert_eq!(manager.recv(), "READY=1");
    // A line break in a status would start a field of its own.
    assert_eq!(
        manager.recv(),
        "STATUS=2 channels, 3 groups READY=1  next rotation in 23h"
    );
}

#[test]
fn abstract_socket_addresses_work() {
    use std::os::linux::net::SocketAddrExt as _;
    use std::os::unix::net::SocketAddr;

    let name = format!("linetokd-test-notify-{}-{}", std::process::id(), line!());
    let socket =
        UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let notifier = Notifier::from_env_values(Some(&format!("@{name}")), None, None, 1)
        .unwrap()
        .unwrap();
    notifier.ready().unwrap();
    assert_eq!(recv(&socket), "READY=1");
}

#[test]
fn nothing_to_notify_without_a_socket_and_bad_values_are_named() {
    assert!(
        Notifier::from_env_values(None, Some("1000000"), None, 1)
            .unwrap()
            .is_none()
    );
    let err = Notifier::from_env_values(Some("relative/notify"), None, None, 1).unwrap_err();
    assert!(matches!(err, NotifyError::Address { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("NOTIFY_SOCKET=\"relative/notify\"")
    );
    let err = Notifier::from_env_values(Some("/run/notify"), Some("soon"), None, 1).unwrap_err();
    assert!(err.to_string().contains("WATCHDOG_USEC=\"soon\""), "{err}");
}

#[test]
fn a_watchdog_meant_for_another_process_is_not_ours() {
    let manager = FakeManager::new();
    let notifier = Notifier::from_env_values(
        Some(manager.path.to_str().unwrap()),
        Some("30000000"),
        Some("1"),
        std::process::id(),
    )
    .unwrap()
    .unwrap();
    assert_eq!(notifier.watchdog_interval(), None);
}

#[test]
fn sending_to_a_vanished_manager_is_an_error_naming_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gone.sock");
    let notifier = Notifier::from_env_values(Some(path.to_str().unwrap()), None, None, 1)
        .unwrap()
        .unwrap();
    let err = notifier.ready().unwrap_err();
    assert!(matches!(err, NotifyError::Send { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("READY=1") && text.contains("gone.sock"),
        "{text}"
    );
}

/// The manager's socket for an async test: a blocking receive would stall
/// the runtime the notifier runs on.
fn async_socket(manager: &FakeManager) -> tokio::net::UnixDatagram {
    let socket = manager.socket.try_clone().unwrap();
    socket.set_nonblocking(true).unwrap();
    tokio::net::UnixDatagram::from_std(socket).unwrap()
}

async fn recv_async(socket: &tokio::net::UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    // A bound on a broken test, not a wait.
    let n = tokio::time::timeout(Duration::from_secs(10), socket.recv(&mut buf))
        .await
        .expect("a notification within 10 s")
        .unwrap();
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

fn quiet(socket: &tokio::net::UnixDatagram) -> bool {
    let mut buf = [0u8; 64];
    matches!(socket.try_recv(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[tokio::test]
async fn keep_watchdog_pings_every_half_timeout_until_shutdown() {
    let manager = FakeManager::new();
    let socket = async_socket(&manager);
    let notifier = Arc::new(manager.notifier(Some("20000000")));
    let clock = support::manual_clock();
    let start = clock.now();
    let shutdown = CancellationToken::new();
    let task = {
        let (notifier, clock, shutdown) = (notifier.clone(), clock.clone(), shutdown.clone());
        tokio::spawn(async move { notifier.keep_watchdog(&clock, shutdown).await })
    };

    // The first ping goes at once, then one per 10 s of clock time, and
    // none before its time.
    for n in 0..3 {
        assert_eq!(recv_async(&socket).await, "WATCHDOG=1", "ping {n}");
        let next = clock.next_deadline().await;
        assert_eq!(next, start + chrono::Duration::seconds(10 * (n + 1)));
        assert!(quiet(&socket), "a ping before its time after ping {n}");
        clock.set(next);
    }
    assert_eq!(recv_async(&socket).await, "WATCHDOG=1");

    shutdown.cancel();
    task.await.unwrap();
    assert!(quiet(&socket));
}

#[tokio::test]
async fn keep_watchdog_returns_at_once_when_not_watched() {
    let manager = FakeManager::new();
    let notifier = manager.notifier(None);
    let clock = support::manual_clock();
    // Never cancelled: returning at all is the point.
    notifier
        .keep_watchdog(&clock, CancellationToken::new())
        .await;
    assert!(manager.is_quiet());
}

// ---------------------------------------------------------------------------
// systemd

const UNIT: &str = "deploy/systemd/linetokd.service";
const INSTALLED_BINARY: &str = "/usr/local/bin/linetokd";

/// `(section, key, value)` for every setting of a unit file, in order.
fn unit_settings(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a setting: {line}"));
        out.push((
            section.clone(),
            key.trim().to_owned(),
            value.trim().to_owned(),
        ));
    }
    out
}

fn service_values(settings: &[(String, String, String)], key: &str) -> Vec<String> {
    settings
        .iter()
        .filter(|(s, k, _)| s == "Service" && k == key)
        .map(|(_, _, v)| v.clone())
        .collect()
}

fn service_value(settings: &[(String, String, String)], key: &str) -> String {
    let values = service_values(settings, key);
    assert_eq!(values.len(), 1, "[Service] {key}= should be set once");
    values[0].clone()
}

/// The unit as it would be installed, with ExecStart pointing at the binary
/// cargo built (verify wants an executable there).
fn unit_for_verify(dir: &Path, text: &str) -> PathBuf {
    let binary = env!("CARGO_BIN_EXE_linetokd");
    assert!(text.contains(INSTALLED_BINARY));
    let path = dir.join("linetokd.service");
    fs::write(&path, text.replace(INSTALLED_BINARY, binary)).unwrap();
    path
}

/// Runs `systemd-analyze verify` on `unit`; `Err` carries every complaint:
/// a failing exit, or any message about the unit (verify reports unknown
/// keys and bad values as warnings and still exits 0).
fn verify(analyze: &Path, unit: &Path) -> Result<(), String> {
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("linetokd.service"))
        .collect();
    if out.status.success() && about_unit.is_empty() {
        Ok(())
    } else {
        Err(format!("{}: {stderr}", out.status))
    }
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let Some(analyze) = installed("systemd-analyze") else {
        println!("skipping: systemd-analyze not found");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let text = read(UNIT);
    let unit = unit_for_verify(dir.path(), &text);
    if let Err(complaints) = verify(&analyze, &unit) {
        panic!("systemd-analyze verify {UNIT}: {complaints}");
    }

    // The check above can fail: a misspelt value and an unknown key are
    // both caught.
    let broken = text.replace("ProtectSystem=strict", "ProtectSystem=strictly");
    let unit = unit_for_verify(dir.path(), &broken);
    let complaints = verify(&analyze, &unit).unwrap_err();
    assert!(complaints.contains("strictly"), "{complaints}");
    let broken = text.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes");
    let unit = unit_for_verify(dir.path(), &broken);
    assert!(verify(&analyze, &unit).is_err());
}

#[test]
fn systemd_unit_exposure_stays_low() {
    let Some(analyze) = installed("systemd-analyze") else {
        println!("skipping: systemd-analyze not found");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_verify(dir.path(), &read(UNIT));
    // Exposure runs from 0 (locked down) to 10 (none); the unit scores 1.4
    // with systemd 252. --threshold is in tenths.
    let out = Command::new(&analyze)
        .args(["security", "--offline=true", "--threshold=20", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("unrecognized option") {
        println!("skipping: this systemd-analyze has no offline security review");
        return;
    }
    assert!(
        out.status.success(),
        "{UNIT} is exposed above 2.0:\n{}{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn systemd_unit_has_notify_reload_user_directories_credentials_and_hardening() {
    let settings = unit_settings(&read(UNIT));
    let one = |key: &str| service_value(&settings, key);

    assert_eq!(one("Type"), "notify");
    assert_eq!(one("NotifyAccess"), "main");
    assert!(!one("WatchdogSec").is_empty());
    assert_eq!(
        one("ExecStart"),
        format!("{INSTALLED_BINARY} run --config /etc/linetokd/linetokd.toml")
    );
    let reload = one("ExecReload");
    assert!(reload.ends_with("kill -HUP $MAINPID"), "{reload}");
    assert_eq!(one("RestartPreventExitStatus"), "2", "config errors exit 2");

    // A dedicated user, the one the sysusers file creates.
    let user = one("User");
    assert_ne!(user, "root");
    let sysusers = read("deploy/systemd/linetokd.sysusers");
    let declared: Vec<&str> = sysusers
        .lines()
        .filter(|l| l.starts_with("u "))
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(declared, [user.as_str()]);

    assert_eq!(one("StateDirectory"), "linetokd");
    assert_eq!(one("ConfigurationDirectory"), "linetokd");
    assert_eq!(one("RuntimeDirectory"), "linetokd");
    assert!(!service_values(&settings, "LoadCredential").is_empty());

    for (key, value) in [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("NoNewPrivileges", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("CapabilityBoundingSet", ""),
        ("UMask", "0077"),
    ] {
        assert_eq!(one(key), value, "{key}");
    }
    let filters = service_values(&settings, "SystemCallFilter");
    assert_eq!(filters.first().map(String::as_str), Some("@system-service"));
}

#[test]
fn systemd_sysusers_file_parses() {
    let Some(sysusers) = installed("systemd-sysusers") else {
        println!("skipping: systemd-sysusers not found");
        return;
    };
    let root = tempfile::tempdir().unwrap();
    fs::create_dir(root.path().join("etc")).unwrap();
    let out = Command::new(sysusers)
        .arg(format!("--root={}", root.path().display()))
        .arg("--dry-run")
        .arg(repo("deploy/systemd/linetokd.sysusers"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("Creating user 'linetokd'"),
        "{stderr}{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Every `${CREDENTIALS_DIRECTORY}/NAME` a config refers to.
fn credential_names(config: &str) -> BTreeSet<String> {
    config
        .split("${CREDENTIALS_DIRECTORY}/")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_owned())
        .collect()
}

/// Makes every credential a config names in `dir`, with `mode`.
fn make_credentials(dir: &Path, names: &BTreeSet<String>, mode: u32) {
    for name in names {
        write_private(&dir.join(name), &credential_body(name), mode);
    }
}

/// What a credential file named `name` holds: keys are RSA-2048 PEMs (the
/// fixture key), `.url` files a PostgreSQL URL, everything else a secret
/// string.
fn credential_body(name: &str) -> Vec<u8> {
    if name.ends_with(".pem") {
        fs::read(repo("tests/fixtures/keys/rsa2048-pkcs8.pem")).unwrap()
    } else if name.ends_with(".url") {
        b"postgres://linetokd:pg-secret@postgres.example:5432/linetokd?sslmode=require\n".to_vec()
    } else {
        b"0123456789abcdef0123456789abcdef\n".to_vec()
    }
}

#[test]
fn systemd_config_validates_with_exactly_the_units_credentials() {
    let text = read("deploy/systemd/linetokd.toml");
    let needed = credential_names(&text);
    assert!(needed.iter().any(|n| n.ends_with(".pem")), "{needed:?}");

    // LoadCredential=NAME:PATH for each, from the root-only credstore.
    let settings = unit_settings(&read(UNIT));
    let loaded: BTreeSet<String> = service_values(&settings, "LoadCredential")
        .iter()
        .map(|v| {
            let (name, path) = v.split_once(':').unwrap();
            assert!(path.starts_with("/etc/credstore/linetokd/"), "{v}");
            name.to_owned()
        })
        .collect();
    assert_eq!(
        loaded, needed,
        "LoadCredential= lines vs the config's files"
    );

    // systemd hands credentials over as 0400 files of the service user.
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    let runtime = dir.path().join("run");
    make_credentials(&creds, &needed, 0o400);
    let environment = env(&[
        ("CREDENTIALS_DIRECTORY", &creds),
        ("RUNTIME_DIRECTORY", &runtime),
    ]);
    let origin = repo("deploy/systemd/linetokd.toml");
    let valid = Settings::from_toml(&text, &origin, &environment)
        .unwrap()
        .validate()
        .unwrap_or_else(|e| panic!("{}: {e}", origin.display()));

    // Its paths are the unit's directories.
    assert!(valid.daemon.database.starts_with("/var/lib/linetokd"));
    assert_eq!(valid.daemon.state_dir, Path::new("/var/lib/linetokd"));
    for channel in &valid.channels {
        for group in &channel.groups {
            for sink in &group.sinks {
                assert!(sink.path.starts_with(&runtime), "{}", sink.path.display());
            }
        }
    }
    assert!(valid.daemon.listen.ip().is_loopback());
}

// ---------------------------------------------------------------------------
// Docker

const DOCKERFILE: &str = "deploy/docker/Dockerfile";

/// One Dockerfile instruction, continuation lines joined.
#[derive(Debug)]
struct Instruction {
    stage: String,
    keyword: String,
    args: String,
}

fn dockerfile() -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut stage = String::new();
    let mut pending = String::new();
    for line in read(DOCKERFILE).lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (pending.is_empty() && trimmed.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let full = std::mem::take(&mut pending);
        let (keyword, args) = full.split_once(char::is_whitespace).unwrap();
        let keyword = keyword.to_ascii_uppercase();
        let args = args.split_whitespace().collect::<Vec<_>>().join(" ");
        if keyword == "FROM" {
            let words: Vec<&str> = args.split(' ').collect();
            assert!(
                words.len() == 3 && words[1].eq_ignore_ascii_case("AS"),
                "every stage is named: FROM {args}"
            );
            stage = words[2].to_owned();
        }
        out.push(Instruction {
            stage: stage.clone(),
            keyword,
            args,
        });
    }
    out
}

/// The stages `stage` is built on, itself first.
fn lineage(instructions: &[Instruction], stage: &str) -> Vec<String> {
    let mut chain = vec![stage.to_owned()];
    loop {
        let current = chain.last().unwrap().clone();
        let from = instructions
            .iter()
            .find(|i| i.keyword == "FROM" && i.stage == current)
            .unwrap();
        let base = from.args.split(' ').next().unwrap();
        if instructions
            .iter()
            .any(|i| i.keyword == "FROM" && i.stage == base)
        {
            chain.push(base.to_owned());
        } else {
            return chain;
        }
    }
}

fn in_stages<'a>(
    instructions: &'a [Instruction],
    stages: &[String],
    keyword: &str,
) -> Vec<&'a Instruction> {
    instructions
        .iter()
        .filter(|i| i.keyword == keyword && stages.contains(&i.stage))
        .collect()
}

#[test]
fn dockerfile_is_multi_stage_small_non_root_with_volume_and_healthcheck() {
    let all = dockerfile();
    let froms: Vec<&Instruction> = all.iter().filter(|i| i.keyword == "FROM").collect();
    assert!(
        froms
            .iter()
            .any(|f| f.stage == "build" && f.args.starts_with("rust:")),
        "a `FROM rust:... AS build` stage"
    );
    let last = froms.last().unwrap();
    assert_eq!(
        last.stage, "runtime",
        "the default target is the runtime image"
    );

    for target in ["runtime", "demo", "ha-demo"] {
        let stages = lineage(&all, target);
        let root_image = all
            .iter()
            .find(|i| i.keyword == "FROM" && Some(&i.stage) == stages.last())
            .unwrap();
        assert!(
            root_image.args.starts_with("gcr.io/distroless/"),
            "{target} is built on a small base: {}",
            root_image.args
        );
        let users = in_stages(&all, &stages, "USER");
        let user = &users.last().expect("a USER").args;
        let uid = user.split(':').next().unwrap();
        assert!(uid != "0" && uid != "root", "{target} runs as {user}");
        assert!(
            in_stages(&all, &stages, "VOLUME")
                .iter()
                .any(|v| v.args.contains("\"/var/lib/linetokd\"")),
            "{target}: VOLUME /var/lib/linetokd"
        );
        let health = in_stages(&all, &stages, "HEALTHCHECK");
        assert_eq!(health.len(), 1, "{target}");
        assert!(
            health[0]
                .args
                .ends_with("CMD [\"/usr/local/bin/linetokd\", \"health\"]"),
            "{}",
            health[0].args
        );
        let entry = in_stages(&all, &stages, "ENTRYPOINT");
        assert_eq!(entry[0].args, "[\"/usr/local/bin/linetokd\"]");
    }

    // The build uses the toolchain the repository pins.
    let toolchain = read("rust-toolchain.toml");
    let channel = toolchain
        .lines()
        .find_map(|l| l.strip_prefix("channel = "))
        .unwrap()
        .trim_matches('"');
    let arg = all
        .iter()
        .find(|i| i.keyword == "ARG" && i.args.starts_with("RUST_VERSION="))
        .unwrap();
    assert_eq!(arg.args, format!("RUST_VERSION={channel}"));
}

/// A `COPY` from the build context: flags, sources, destination.
struct Copy {
    chmod: Option<u32>,
    chown: Option<String>,
    sources: Vec<String>,
    dest: String,
}

fn context_copies(instructions: &[Instruction], stage: &str) -> Vec<Copy> {
    instructions
        .iter()
        .filter(|i| i.keyword == "COPY" && i.stage == stage && !i.args.contains("--from="))
        .map(|i| {
            let mut chmod = None;
            let mut chown = None;
            let mut paths = Vec::new();
            for word in i.args.split(' ') {
                if let Some(mode) = word.strip_prefix("--chmod=") {
                    chmod = Some(u32::from_str_radix(mode, 8).unwrap());
                } else if let Some(owner) = word.strip_prefix("--chown=") {
                    chown = Some(owner.to_owned());
                } else if !word.starts_with("--") {
                    paths.push(word.to_owned());
                }
            }
            let dest = paths.pop().unwrap();
            Copy {
                chmod,
                chown,
                sources: paths,
                dest,
            }
        })
        .collect()
}

#[test]
fn dockerignore_lets_in_what_the_dockerfile_copies_and_keeps_out_the_rest() {
    let ignore = read(".dockerignore");
    let rules: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(
        rules.first(),
        Some(&"*"),
        "an allow-list: everything out first"
    );
    let allowed: Vec<&str> = rules[1..]
        .iter()
        .map(|r| r.strip_prefix('!').expect("only exceptions after `*`"))
        .map(|r| r.trim_end_matches('/'))
        .collect();
    let let_in = |path: &str| {
        allowed
            .iter()
            .any(|a| path == *a || path.starts_with(&format!("{a}/")))
    };
    // What `cargo build` reads, and nothing of the target dir, git or
    // the toolchain file (see the Dockerfile).
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        ".cargo/config.toml",
        "deploy/build/hot-functions.txt",
        "src/main.rs",
        "migrations/0001_init.sql",
    ] {
        assert!(let_in(needed), "{needed} is needed to build");
        assert!(repo(needed).exists(), "{needed}");
    }
    for kept_out in ["target", ".git", "rust-toolchain.toml", "tests/it/main.rs"] {
        assert!(
            !let_in(kept_out),
            "{kept_out} should stay out of the context"
        );
    }
    let all = dockerfile();
    for stage in ["build", "runtime-base", "demo", "ha-demo", "runtime"] {
        for copy in context_copies(&all, stage) {
            for source in &copy.sources {
                if source != "." {
                    assert!(let_in(source), "COPY {source}: not in the build context");
                    assert!(repo(source).is_file(), "COPY {source}: no such file");
                }
            }
        }
    }
}

fn compose() -> serde_yaml_ng::Value {
    compose_file("deploy/docker/compose.yaml")
}

/// A compose file with its `<<` merge keys applied, as compose reads it.
fn compose_file(path: &str) -> serde_yaml_ng::Value {
    let mut value: serde_yaml_ng::Value = serde_yaml_ng::from_str(&read(path)).unwrap();
    value.apply_merge().unwrap();
    value
}

fn strings(value: &serde_yaml_ng::Value) -> Vec<String> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("a list: {value:?}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn compose_runs_the_sandbox_and_the_daemon_from_the_demo_image() {
    let compose = compose();
    let services = compose["services"].as_mapping().unwrap();
    let names: BTreeSet<&str> = services.keys().map(|k| k.as_str().unwrap()).collect();
    assert_eq!(names, BTreeSet::from(["sandbox", "daemon"]));

    let compose_dir = repo("deploy/docker");
    for name in ["sandbox", "daemon"] {
        let build = &compose["services"][name]["build"];
        let context = compose_dir.join(build["context"].as_str().unwrap());
        let dockerfile = context.join(build["dockerfile"].as_str().unwrap());
        assert_eq!(
            dockerfile.canonicalize().unwrap(),
            repo(DOCKERFILE).canonicalize().unwrap(),
            "{name}"
        );
        assert_eq!(build["target"].as_str(), Some("demo"), "{name}");
    }

    // The sandbox listens where the daemon's demo config looks for it.
    let sandbox = strings(&compose["services"]["sandbox"]["command"]);
    assert_eq!(sandbox[0], "sandbox");
    let listen = &sandbox[sandbox.iter().position(|a| a == "--listen").unwrap() + 1];
    let port = listen.rsplit(':').next().unwrap();
    assert_eq!(
        sandbox[sandbox.iter().position(|a| a == "--config").unwrap() + 1],
        "/etc/linetokd/sandbox.toml"
    );
    let demo: toml::Value = toml::from_str(&read("deploy/docker/demo/linetokd.toml")).unwrap();
    assert_eq!(
        demo["daemon"]["line_api"].as_str(),
        Some(format!("http://sandbox:{port}").as_str())
    );

    // The daemon runs, keeps its database on a volume, and publishes its
    // listener.
    let daemon = &compose["services"]["daemon"];
    assert_eq!(
        strings(&daemon["command"]),
        ["run", "--config", "/etc/linetokd/linetokd.toml"]
    );
    assert!(
        strings(&daemon["volumes"])
            .iter()
            .any(|v| v.ends_with(":/var/lib/linetokd")),
        "the database on a volume"
    );
    let listen_port = demo["daemon"]["listen"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    assert!(
        strings(&daemon["ports"])
            .iter()
            .any(|p| p.ends_with(&format!(":{listen_port}"))),
        "port {listen_port} published"
    );
    let depends = &daemon["depends_on"];
    assert!(
        strings(depends).contains(&"sandbox".to_owned()),
        "{depends:?}"
    );
}

#[test]
fn docker_config_validates_with_secrets_from_run_secrets() {
    let text = read("deploy/docker/linetokd.toml");
    let needed = credential_names(&text);
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    let runtime = dir.path().join("run");
    make_credentials(&secrets, &needed, 0o600);
    let environment = env(&[
        ("CREDENTIALS_DIRECTORY", &secrets),
        ("RUNTIME_DIRECTORY", &runtime),
    ]);
    let origin = repo("deploy/docker/linetokd.toml");
    let valid = Settings::from_toml(&text, &origin, &environment)
        .unwrap()
        .validate()
        .unwrap_or_else(|e| panic!("{}: {e}", origin.display()));
    // Inside a container the listener must face the container's network.
    assert!(valid.daemon.listen.ip().is_unspecified());
    assert!(valid.daemon.database.starts_with("/var/lib/linetokd"));

    // The image sets the variables this config relies on.
    let all = dockerfile();
    let image_env: String = in_stages(&all, &lineage(&all, "runtime"), "ENV")
        .iter()
        .map(|i| i.args.clone())
        .collect();
    assert!(image_env.contains("CREDENTIALS_DIRECTORY=/run/secrets"));
    assert!(image_env.contains("RUNTIME_DIRECTORY=/run/linetokd"));
}

/// The value the image built from `target` gives the environment variable
/// `name`: the last `ENV` setting it, base stages first.
fn image_env(instructions: &[Instruction], target: &str, name: &str) -> Option<String> {
    let mut stages = lineage(instructions, target);
    stages.reverse();
    let mut value = None;
    for stage in &stages {
        for env in in_stages(instructions, std::slice::from_ref(stage), "ENV") {
            for word in env.args.split(' ') {
                if let Some(v) = word.strip_prefix(&format!("{name}=")) {
                    value = Some(v.to_owned());
                }
            }
        }
    }
    value
}

/// A demo image's files from the build context (`/etc/linetokd`), laid out
/// in a temp dir by the `COPY` lines of its stages (base stages first, so a
/// later stage's file replaces an earlier one's) and its `ENV`.
struct DemoImage {
    root: tempfile::TempDir,
    credentials: PathBuf,
}

impl DemoImage {
    fn lay_out() -> Self {
        Self::lay_out_target("demo")
    }

    fn lay_out_target(target: &str) -> Self {
        let all = dockerfile();
        let root = tempfile::tempdir().unwrap();
        let mut stages = lineage(&all, target);
        stages.reverse();
        for stage in &stages {
            for copy in context_copies(&all, stage) {
                assert_eq!(copy.sources.len(), 1);
                let to = root.path().join(copy.dest.trim_start_matches('/'));
                fs::create_dir_all(to.parent().unwrap()).unwrap();
                fs::copy(repo(&copy.sources[0]), &to).unwrap();
                let mode = copy.chmod.expect("the demo sets every file's mode");
                fs::set_permissions(&to, fs::Permissions::from_mode(mode)).unwrap();
            }
        }
        let credentials = image_env(&all, target, "CREDENTIALS_DIRECTORY")
            .expect("the demo names its credentials directory");
        let credentials = root.path().join(credentials.trim_start_matches('/'));
        Self { root, credentials }
    }

    fn path(&self, in_image: &str) -> PathBuf {
        self.root.path().join(in_image.trim_start_matches('/'))
    }
}

#[tokio::test]
async fn demo_image_files_make_a_daemon_that_issues_from_the_demo_sandbox() {
    let image = DemoImage::lay_out();
    let clock = support::manual_clock();
    let shared: SharedClock = Arc::new(clock.clone());

    // The sandbox service: its config from the image, as compose runs it.
    let sandbox_config = SandboxConfig::load(&image.path("/etc/linetokd/sandbox.toml")).unwrap();
    let channel = ChannelId::new("1234567890");
    let sandbox = Sandbox::new(sandbox_config, Arc::clone(&shared)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sandbox_url = format!("http://{}", listener.local_addr().unwrap());
    let stop_sandbox = CancellationToken::new();
    tokio::spawn(sandbox.clone().serve(listener, stop_sandbox.clone()));

    // The daemon service: its config from the image, with compose's network
    // and volumes swapped for loopback and temp dirs.
    let state = tempfile::tempdir().unwrap();
    let environment = env(&[
        ("CREDENTIALS_DIRECTORY", &image.credentials),
        ("RUNTIME_DIRECTORY", &state.path().join("run")),
        ("LINETOKD__DAEMON__LINE_API", Path::new(&sandbox_url)),
        ("LINETOKD__DAEMON__STATE_DIR", state.path()),
        (
            "LINETOKD__DAEMON__DATABASE",
            &state.path().join("linetokd.db"),
        ),
        ("LINETOKD__DAEMON__LISTEN", Path::new("127.0.0.1:0")),
    ]);
    let config = Settings::load(&image.path("/etc/linetokd/linetokd.toml"), &environment)
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(config.channels[0].id, channel);

    // The key pair in the image is one: the sandbox verifies what the
    // daemon signs.
    let private = SigningKey::from_file(&image.credentials.join("example-private.pem")).unwrap();
    let public_file = image.path("/etc/linetokd/demo/example-public.jwk");
    let registered: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&public_file).unwrap()).unwrap();
    let derived: serde_json::Value =
        serde_json::from_str(&private.public_jwk().to_json_pretty()).unwrap();
    assert_eq!(
        (&registered["n"], &registered["e"]),
        (&derived["n"], &derived["e"])
    );
    assert_eq!(
        VerifyingKey::from_file(&public_file)
            .unwrap()
            .modulus_bits(),
        2048
    );

    let shutdown = CancellationToken::new();
    let mut daemon = Daemon::start(&config, shared, shutdown.clone(), RunOptions::default())
        .await
        .unwrap();
    let mut issued = BTreeMap::new();
    let groups: BTreeSet<String> = config.channels[0]
        .groups
        .iter()
        .map(|g| g.name.as_str().to_owned())
        .collect();
    // A bound on a broken test, not a wait: the first pass issues at once.
    tokio::time::timeout(Duration::from_secs(60), async {
        while issued.len() < groups.len() {
            match daemon.events.recv().await.unwrap() {
                RotationEvent::Issued {
                    group,
                    key_id,
                    verified,
                    ..
                } => {
                    assert!(verified, "the sandbox verifies the demo's tokens");
                    issued.insert(group.as_str().to_owned(), key_id);
                }
                failed @ (RotationEvent::Failed { .. } | RotationEvent::ListingFailed { .. }) => {
                    panic!("{failed:?}")
                }
                _ => {}
            }
        }
    })
    .await
    .expect("both demo groups get a token");
    assert_eq!(issued.keys().cloned().collect::<BTreeSet<_>>(), groups);
    let live: BTreeSet<_> = sandbox.live_key_ids(&channel).into_iter().collect();
    assert!(issued.values().all(|k| live.contains(k)), "{live:?}");

    shutdown.cancel();
    daemon.stopped().await.unwrap();
    stop_sandbox.cancel();
}

// ---------------------------------------------------------------------------
// High availability: the HA compose demo and the Kubernetes manifests

const HA_COMPOSE: &str = "deploy/ha/compose.yaml";
const KUBERNETES: &str = "deploy/kubernetes/linetokd.yaml";

/// `linetokd check-config` (the binary cargo built) on `config`, with only
/// the two directories the images name in its environment.
fn check_config(config: &Path, credentials: &Path, runtime: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_linetokd"))
        .args(["check-config", "--config"])
        .arg(config)
        .env_clear()
        .env("CREDENTIALS_DIRECTORY", credentials)
        .env("RUNTIME_DIRECTORY", runtime)
        .output()
        .unwrap()
}

/// The resolved config `check-config` prints, once it passed.
fn checked(config: &Path, credentials: &Path, runtime: &Path) -> toml::Table {
    let out = check_config(config, credentials, runtime);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "check-config {}: {}{stdout}",
        config.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.parse().unwrap()
}

/// The port of `host:port`.
fn port_of(address: &str) -> &str {
    address.rsplit(':').next().unwrap()
}

/// `postgres://USER:PASSWORD@HOST:PORT/DATABASE?QUERY`, in its parts.
fn pg_url_parts(url: &str) -> [String; 6] {
    let rest = url
        .trim()
        .strip_prefix("postgres://")
        .expect("a postgres:// URL");
    let (credentials, rest) = rest.split_once('@').unwrap();
    let (user, password) = credentials.split_once(':').unwrap();
    let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (host_port, database) = location.split_once('/').unwrap();
    let (host, port) = host_port.split_once(':').unwrap();
    [user, password, host, port, database, query].map(str::to_owned)
}

#[test]
fn ha_compose_runs_two_daemons_on_the_postgres_service_with_checked_configs() {
    let compose = compose_file(HA_COMPOSE);
    let services = &compose["services"];
    let names: BTreeSet<&str> = services
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap())
        .collect();
    // The daemons are the services that `run`.
    let daemons: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| {
            services[*n]["command"]
                .as_sequence()
                .and_then(|c| c.first())
                .and_then(|c| c.as_str())
                == Some("run")
        })
        .collect();
    assert_eq!(daemons, ["linetokd-a", "linetokd-b"]);
    assert_eq!(
        names,
        BTreeSet::from(["postgres", "sandbox", "linetokd-a", "linetokd-b"])
    );

    // PostgreSQL, with a health check the daemons wait for.
    let postgres = &services["postgres"];
    assert_eq!(postgres["image"].as_str(), Some("postgres:15"));
    let pg_check = strings(&postgres["healthcheck"]["test"]);
    assert!(pg_check.iter().any(|a| a == "pg_isready"), "{pg_check:?}");
    let pg_env = |key: &str| {
        postgres["environment"][key]
            .as_str()
            .unwrap_or_else(|| panic!("postgres sets {key}"))
            .to_owned()
    };

    // The sandbox's port, where the daemons' config looks for it.
    let sandbox = strings(&services["sandbox"]["command"]);
    let sandbox_listen = &sandbox[sandbox.iter().position(|a| a == "--listen").unwrap() + 1];

    // The image the daemons run, laid out by the Dockerfile's own lines.
    let all = dockerfile();
    let image = DemoImage::lay_out_target("ha-demo");
    let image_user = in_stages(&all, &lineage(&all, "ha-demo"), "USER")
        .last()
        .expect("a USER")
        .args
        .clone();
    let credentials_in_image = image_env(&all, "ha-demo", "CREDENTIALS_DIRECTORY").unwrap();
    let copies: Vec<Copy> = lineage(&all, "ha-demo")
        .iter()
        .flat_map(|stage| context_copies(&all, stage))
        .collect();

    let runtime = tempfile::tempdir().unwrap();
    let compose_dir = repo("deploy/ha");
    let mut hostnames = BTreeSet::new();
    let mut host_ports = BTreeSet::new();
    let mut state_volumes = BTreeSet::new();
    let mut url_files = BTreeSet::new();
    for name in &daemons {
        let service = &services[*name];
        let build = &service["build"];
        let context = compose_dir.join(build["context"].as_str().unwrap());
        assert_eq!(
            context
                .join(build["dockerfile"].as_str().unwrap())
                .canonicalize()
                .unwrap(),
            repo(DOCKERFILE).canonicalize().unwrap(),
            "{name}"
        );
        assert_eq!(build["target"].as_str(), Some("ha-demo"), "{name}");
        assert_eq!(
            service["depends_on"]["postgres"]["condition"].as_str(),
            Some("service_healthy"),
            "{name} waits for PostgreSQL"
        );
        assert_ne!(service["healthcheck"]["disable"].as_bool(), Some(true));
        assert_eq!(
            strings(&service["healthcheck"]["test"]),
            ["CMD", "/usr/local/bin/linetokd", "health"],
            "{name}"
        );
        assert!(hostnames.insert(service["hostname"].as_str().unwrap().to_owned()));

        // The config it runs, from the image.
        let command = strings(&service["command"]);
        assert_eq!(command[..2], ["run", "--config"]);
        let config = image.path(&command[2]);
        let text = fs::read_to_string(&config).unwrap();

        // Its secret files are the image user's and private, as copied in.
        let secrets = credential_names(&text);
        assert!(secrets.contains("database.url"), "{secrets:?}");
        for secret in &secrets {
            let dest = format!("{credentials_in_image}/{secret}");
            let copy = copies
                .iter()
                .find(|c| c.dest == dest)
                .unwrap_or_else(|| panic!("{name}: no COPY to {dest}"));
            assert_eq!(copy.chown.as_deref(), Some(image_user.as_str()), "{dest}");
            assert_eq!(copy.chmod, Some(0o600), "{dest}");
        }

        let resolved = checked(&config, &image.credentials, runtime.path());
        let ha = resolved
            .get("ha")
            .and_then(toml::Value::as_table)
            .expect("[ha] in the resolved config");
        // One shared config: the instance IDs come from the host names.
        assert!(!ha.contains_key("instance_id"), "{ha:?}");
        let daemon = resolved["daemon"].as_table().unwrap();
        assert!(!daemon.contains_key("database"), "{daemon:?}");
        let url_file = daemon["database_url_file"].as_str().unwrap();
        assert!(url_file.ends_with("mode 0600)"), "{url_file}");
        url_files.insert(url_file.split(" (secret").next().unwrap().to_owned());
        assert_eq!(
            daemon["line_api"].as_str(),
            Some(format!("http://sandbox:{}", port_of(sandbox_listen)).as_str())
        );

        // Its listener is published on loopback, on a port of its own.
        let listen = daemon["listen"].as_str().unwrap();
        let ports = strings(&service["ports"]);
        let published = ports
            .iter()
            .find(|p| p.ends_with(&format!(":{}", port_of(listen))))
            .unwrap_or_else(|| panic!("{name}: {listen} is not published: {ports:?}"));
        assert!(published.starts_with("127.0.0.1:"), "{published}");
        assert!(host_ports.insert(published.clone()));

        // A state directory (control socket) of its own.
        let state = strings(&service["volumes"])
            .into_iter()
            .find(|v| v.ends_with(":/var/lib/linetokd"))
            .unwrap_or_else(|| panic!("{name}: no volume on the state directory"));
        assert!(state_volumes.insert(state.clone()), "{state} shared");
    }
    assert_eq!(hostnames.len(), 2);

    // Both use the one URL file, which names the postgres service as it is
    // set up.
    assert_eq!(url_files.len(), 1, "{url_files:?}");
    let url_file = PathBuf::from(url_files.pop_first().unwrap());
    let [user, password, host, port, database, query] =
        pg_url_parts(&fs::read_to_string(&url_file).unwrap());
    assert!(names.contains(host.as_str()), "{host} is not a service");
    assert_eq!(host, "postgres");
    assert_eq!(port, "5432");
    assert_eq!(user, pg_env("POSTGRES_USER"));
    assert_eq!(password, pg_env("POSTGRES_PASSWORD"));
    assert_eq!(database, pg_env("POSTGRES_DB"));
    // The postgres image serves no TLS.
    assert_eq!(query, "sslmode=disable");

    // The check can fail: the URL file with the mode a git checkout (or a
    // compose file secret) would give it is refused.
    fs::set_permissions(&url_file, fs::Permissions::from_mode(0o644)).unwrap();
    let config = image.path("/etc/linetokd/linetokd.toml");
    let out = check_config(&config, &image.credentials, runtime.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("daemon.database_url_file") && stderr.contains("mode 0644"),
        "{stderr}"
    );
}

/// Every document of a multi-document YAML file, empty ones left out.
fn yaml_documents(path: &str) -> Vec<serde_yaml_ng::Value> {
    use serde::Deserialize as _;
    serde_yaml_ng::Deserializer::from_str(&read(path))
        .map(|doc| serde_yaml_ng::Value::deserialize(doc).unwrap())
        .filter(|doc| !doc.is_null())
        .collect()
}

/// A file mode as Kubernetes reads it: its YAML is 1.1, where `0400` is
/// octal (YAML 1.2, serde_yaml_ng's, keeps it a string); a number without a
/// leading 0 is decimal.
fn kubernetes_mode(value: &serde_yaml_ng::Value) -> u32 {
    match value {
        serde_yaml_ng::Value::Number(n) => u32::try_from(n.as_u64().unwrap()).unwrap(),
        serde_yaml_ng::Value::String(s) if s.starts_with('0') => u32::from_str_radix(s, 8).unwrap(),
        other => panic!("not a mode: {other:?}"),
    }
}

/// True when every label `selector` asks for is in `labels`.
fn selects(selector: &serde_yaml_ng::Value, labels: &serde_yaml_ng::Value) -> bool {
    let wanted = selector.as_mapping().expect("matchLabels");
    !wanted.is_empty() && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Secret files in `dir` as the kubelet mounts a secret volume: each name a
/// symlink through `..data` into a timestamped directory holding the file,
/// with `mode`.
fn lay_out_like_the_kubelet(dir: &Path, names: &BTreeSet<String>, mode: u32) {
    let stamped = dir.join("..2026_01_01_00_00_00.000000001");
    fs::create_dir_all(&stamped).unwrap();
    std::os::unix::fs::symlink(stamped.file_name().unwrap(), dir.join("..data")).unwrap();
    for name in names {
        write_private(&stamped.join(name), &credential_body(name), mode);
        std::os::unix::fs::symlink(Path::new("..data").join(name), dir.join(name)).unwrap();
    }
}

#[test]
fn kubernetes_runs_two_probed_replicas_with_a_pdb_and_read_only_secret_files() {
    let docs = yaml_documents(KUBERNETES);
    for doc in &docs {
        assert!(
            doc["apiVersion"].as_str().is_some() && doc["metadata"]["name"].as_str().is_some(),
            "{doc:?}"
        );
    }
    let of_kind = |kind: &str| -> Vec<&serde_yaml_ng::Value> {
        docs.iter()
            .filter(|d| d["kind"].as_str() == Some(kind))
            .collect()
    };
    // PostgreSQL is the cluster's own, not deployed here.
    assert!(of_kind("StatefulSet").is_empty());
    assert!(!read(KUBERNETES).contains("image: postgres"));

    let deployments = of_kind("Deployment");
    assert_eq!(deployments.len(), 1);
    let spec = &deployments[0]["spec"];
    assert_eq!(spec["replicas"].as_u64(), Some(2));
    let labels = &spec["template"]["metadata"]["labels"];
    assert!(selects(&spec["selector"]["matchLabels"], labels));
    let pod = &spec["template"]["spec"];
    let containers = pod["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    assert_eq!(container["image"].as_str(), Some("linetokd:latest"));
    let args = strings(&container["args"]);
    assert_eq!(args[..2], ["run", "--config"]);
    let config_path = Path::new(&args[2]);

    let mounts = container["volumeMounts"].as_sequence().unwrap();
    let volumes = pod["volumes"].as_sequence().unwrap();
    let volume = |name: &serde_yaml_ng::Value| {
        volumes
            .iter()
            .find(|v| &v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name:?}"))
    };
    let mounted_at = |path: &str| {
        mounts
            .iter()
            .find(|m| m["mountPath"].as_str() == Some(path))
            .unwrap_or_else(|| panic!("nothing mounted at {path}"))
    };

    // The config: the ConfigMap's file, mounted where `--config` looks.
    let config_mount = mounted_at(config_path.parent().unwrap().to_str().unwrap());
    assert_eq!(config_mount["readOnly"].as_bool(), Some(true));
    let config_map = volume(&config_mount["name"])["configMap"]["name"].clone();
    let config_maps = of_kind("ConfigMap");
    let config_map = config_maps
        .iter()
        .find(|c| c["metadata"]["name"] == config_map)
        .expect("the config's ConfigMap");
    let config_text = config_map["data"][config_path.file_name().unwrap().to_str().unwrap()]
        .as_str()
        .unwrap();
    let config: toml::Table = config_text.parse().unwrap();
    let listen = config["daemon"]["listen"].as_str().unwrap();
    let listen_port: u64 = port_of(listen).parse().unwrap();

    // Liveness on /healthz, readiness on /readyz, at the config's port.
    let port_named = |name: &str| {
        container["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port {name}"))
    };
    let probe = |kind: &str| {
        let get = &container[kind]["httpGet"];
        let port = match &get["port"] {
            serde_yaml_ng::Value::String(name) => port_named(name),
            number => number.as_u64().unwrap(),
        };
        (get["path"].as_str().unwrap().to_owned(), port)
    };
    assert_eq!(probe("livenessProbe"), ("/healthz".to_owned(), listen_port));
    assert_eq!(probe("readinessProbe"), ("/readyz".to_owned(), listen_port));

    // The image's non-root user, and its group on the secret files.
    let all = dockerfile();
    let user = in_stages(&all, &lineage(&all, "runtime"), "USER")
        .last()
        .unwrap()
        .args
        .clone();
    let (uid, gid) = user.split_once(':').unwrap();
    let security = &pod["securityContext"];
    assert_eq!(security["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(security["runAsUser"].as_u64(), Some(uid.parse().unwrap()));
    assert_eq!(security["runAsGroup"].as_u64(), Some(gid.parse().unwrap()));
    assert_eq!(security["fsGroup"].as_u64(), Some(gid.parse().unwrap()));
    let hardening = &container["securityContext"];
    assert_eq!(hardening["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(hardening["allowPrivilegeEscalation"].as_bool(), Some(false));

    // Secrets: mounted read-only, 0400, as files in the image's
    // CREDENTIALS_DIRECTORY: exactly those the config names.
    let mut secret_files = BTreeSet::new();
    for mount in mounts {
        let v = volume(&mount["name"]);
        let sources: Vec<&serde_yaml_ng::Value> = if v.get("secret").is_some() {
            vec![&v["secret"]]
        } else if v.get("projected").is_some() {
            v["projected"]["sources"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|s| &s["secret"])
                .collect()
        } else {
            continue;
        };
        assert_eq!(mount["readOnly"].as_bool(), Some(true), "{mount:?}");
        let mode = v
            .get("secret")
            .or_else(|| v.get("projected"))
            .map(|s| kubernetes_mode(&s["defaultMode"]))
            .unwrap();
        assert_eq!(mode, 0o400, "{v:?}");
        let credentials = image_env(&all, "runtime", "CREDENTIALS_DIRECTORY").unwrap();
        assert_eq!(mount["mountPath"].as_str(), Some(credentials.as_str()));
        for source in sources {
            assert!(source["name"].as_str().is_some(), "a Secret: {source:?}");
            // Items name each file, so a key added to the Secret is not
            // mounted unasked.
            for item in source["items"].as_sequence().expect("items") {
                assert!(item.get("mode").is_none(), "{item:?}");
                assert!(secret_files.insert(item["path"].as_str().unwrap().to_owned()));
            }
        }
    }
    let needed = credential_names(config_text);
    assert!(needed.contains("database.url"), "{needed:?}");
    assert_eq!(secret_files, needed, "the mounted files vs the config's");

    // At least one pod through voluntary disruptions.
    let budgets = of_kind("PodDisruptionBudget");
    assert_eq!(budgets.len(), 1);
    assert_eq!(budgets[0]["spec"]["minAvailable"].as_u64(), Some(1));
    assert!(selects(
        &budgets[0]["spec"]["selector"]["matchLabels"],
        labels
    ));

    // A Service for the token API and a headless one for Prometheus, both
    // on the pods' listener.
    let services = of_kind("Service");
    let (headless, balanced): (Vec<&serde_yaml_ng::Value>, Vec<&serde_yaml_ng::Value>) = services
        .iter()
        .copied()
        .partition(|s| s["spec"]["clusterIP"].as_str() == Some("None"));
    assert_eq!((headless.len(), balanced.len()), (1, 1));
    for service in services {
        assert!(selects(&service["spec"]["selector"], labels), "{service:?}");
        let target = &service["spec"]["ports"][0]["targetPort"];
        let target = target
            .as_str()
            .map_or_else(|| target.as_u64().unwrap(), port_named);
        assert_eq!(target, listen_port);
    }

    // The config passes check-config with the files as the kubelet mounts
    // them: symlinks, and 0440 (0400 plus fsGroup's read).
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("linetokd.toml");
    fs::write(&config_file, config_text).unwrap();
    let runtime = dir.path().join("run");
    let secrets = dir.path().join("secrets");
    lay_out_like_the_kubelet(&secrets, &needed, 0o440);
    let resolved = checked(&config_file, &secrets, &runtime);
    let ha = resolved
        .get("ha")
        .and_then(toml::Value::as_table)
        .expect("[ha] in the resolved config");
    // The instance ID is the default, hostname:pid: the pod's name.
    assert!(!ha.contains_key("instance_id"), "{ha:?}");
    assert!(
        resolved["daemon"]["database_url_file"]
            .as_str()
            .unwrap()
            .contains("(secret, "),
        "{resolved:?}"
    );
    assert!(
        listen
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .ip()
            .is_unspecified()
    );

    // The check can fail: Kubernetes' default mode (0644) is refused.
    let secrets = dir.path().join("default-mode");
    lay_out_like_the_kubelet(&secrets, &needed, 0o644);
    let out = check_config(&config_file, &secrets, &runtime);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("mode 0644"), "{stderr}");
}

// ---------------------------------------------------------------------------
// Prometheus rules

/// Every sample name and label set the daemon's /metrics can show, with one
/// series of each family recorded.
fn exported_samples() -> Vec<String> {
    use linetokd::channel_index::ChannelIndex;
    use linetokd::domain::GroupName;
    use linetokd::metrics::Metrics;

    let metrics = Metrics::new();
    let (channel, group) = (ChannelId::new("1234567890"), GroupName::new("backend"));
    let mut names = ChannelIndex::new();
    names.insert(channel.clone(), "shop-bot");
    metrics.set_channel_names(names);
    let now = chrono::Utc::now();
    metrics.set_group(
        &channel,
        &group,
        linetokd::domain::TokenKind::V21,
        1,
        Some(now),
        Some(now),
    );
    metrics.set_channel(&channel, 1, 1, 1, 0);
    metrics.short_lived_evicted(&channel);
    metrics.set_long_lived(&channel, Some(true), Some(now));
    metrics.rotation(&channel, &group, false);
    metrics.line_request("v21_issue", Some(200), Duration::from_millis(5));
    metrics.set_clock_skew(chrono::Duration::seconds(1));
    metrics.hook_run(&channel, &group, false);
    metrics.sink_failures(&channel, &group, 1);
    metrics.sinks_written(&channel, &group, now);
    metrics.config_reload(false);
    metrics.scheduler_woke();
    metrics
        .render()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The `linetokd_*` names in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("linetokd_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

#[test]
fn prometheus_rules_name_only_what_the_daemon_exports() {
    let text = read("deploy/prometheus/linetokd-rules.yml");
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let samples = exported_samples();
    let rules = doc["groups"][0]["rules"].as_sequence().unwrap();
    assert!(rules.len() >= 8, "{} rules", rules.len());
    let mut alerts = BTreeSet::new();
    for rule in rules {
        let name = rule["alert"].as_str().unwrap();
        assert!(alerts.insert(name), "{name} twice");
        let expr = rule["expr"].as_str().unwrap();
        let severity = rule["labels"]["severity"].as_str().unwrap();
        assert!(["warning", "critical"].contains(&severity), "{name}");
        let summary = rule["annotations"]["summary"].as_str().unwrap();
        let used = metric_names(expr);
        if name != "LinetokdDown" {
            assert!(!used.is_empty(), "{name}: {expr}");
        }
        let used_samples: Vec<&String> = samples
            .iter()
            .filter(|s| {
                used.iter()
                    .any(|m| s.starts_with(&format!("{m}{{")) || s.starts_with(&format!("{m} ")))
            })
            .collect();
        for metric in &used {
            assert!(
                used_samples.iter().any(|s| s.starts_with(metric.as_str())),
                "{name} uses {metric}, which /metrics does not export:\n{}",
                samples.join("\n")
            );
        }
        // Every label an annotation shows is on the metric it comes from.
        let mut rest = summary;
        while let Some(at) = rest.find("$labels.") {
            let tail = &rest[at + "$labels.".len()..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let label = &tail[..end];
            assert!(
                label == "instance"
                    || used_samples
                        .iter()
                        .any(|s| s.contains(&format!("{label}=\""))),
                "{name}: the summary shows {label}, which its metrics do not carry"
            );
            rest = &tail[end..];
        }
    }

    match installed("promtool") {
        Some(promtool) => {
            let out = Command::new(promtool)
                .args(["check", "rules"])
                .arg(repo("deploy/prometheus/linetokd-rules.yml"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "promtool check rules: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        None => eprintln!("promtool is not installed: the rules were checked by this test only"),
    }
}

/// `build.rs` hands `deploy/build/hot-functions.txt` to LLD as its symbol
/// ordering file: one symbol a line, as `nm` prints them, sorted and
/// unique (so a regenerated list diffs well), and the script that makes
/// it writes that very path.
#[test]
fn the_hot_function_list_is_one_symbol_a_line_sorted_and_made_by_its_script() {
    let list = read("deploy/build/hot-functions.txt");
    let names: Vec<&str> = list.lines().collect();
    assert!(names.len() > 1000, "{} names: is it whole?", names.len());
    assert!(
        names.windows(2).all(|w| w[0] < w[1]),
        "sorted (C locale) and unique"
    );
    for name in &names {
        assert!(
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()),
            "not a symbol: {name:?}"
        );
    }
    // The daemon's own code and its signing are in it.
    assert!(
        names.iter().any(|n| n.contains("8linetokd")),
        "no linetokd function"
    );
    let build = read("build.rs");
    assert!(build.contains("\"deploy/build/hot-functions.txt\""));
    let script = read("deploy/build/hot-functions.sh");
    assert!(script.contains("out=$PWD/deploy/build/hot-functions.txt"));
}
