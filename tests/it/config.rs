//! The config file: shipped examples, environment overrides, `${NAME}`
//! expansion, masked printing, and the table of bad configs under
//! `tests/bad-config/` with the message each must produce.
//!
//! Key and secret files are created in a temp dir (keys by
//! `line::keys::generate`, wrong-kind keys copied from `tests/fixtures/keys`)
//! with the modes the rules expect; configs reach them through
//! `${CREDENTIALS_DIRECTORY}`, which each test passes in its own environment
//! map, so nothing touches the process environment.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use linetokd::config::{self, ConfigError, LogFormat, Settings, SinkFormat};
use serde::Deserialize;

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");
const CHANNEL_SECRET: &str = "0123456789abcdef0123456789abcdef";
const API_KEY: &str = "api-key-for-backend-7f3a";

/// One generated RSA-2048 key (PKCS#8 PEM) shared by every test: generating
/// is the slow part and the tests only need a valid key, not a unique one.
fn key_pem() -> &'static str {
    static PEM: OnceLock<String> = OnceLock::new();
    PEM.get_or_init(|| {
        linetokd::line::keys::generate()
            .unwrap()
            .to_pkcs8_pem()
            .unwrap()
    })
}

fn write(path: &Path, body: &[u8], mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, body).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn fixture_key(name: &str) -> Vec<u8> {
    fs::read(Path::new(MANIFEST).join("tests/fixtures/keys").join(name)).unwrap()
}

/// A credentials directory holding every file the bad configs refer to.
/// A PostgreSQL URL with a password that must never be shown.
const DATABASE_URL: &str =
    "postgres://linetokd:pg-Passw0rd-never-shown@db.example:5432/linetokd?sslmode=disable\n";

struct Credentials {
    dir: tempfile::TempDir,
}

impl Credentials {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        write(&p.join("shop-bot.pem"), key_pem().as_bytes(), 0o600);
        write(&p.join("world-readable.pem"), key_pem().as_bytes(), 0o644);
        write(
            &p.join("rsa1024.pem"),
            &fixture_key("rsa1024-pkcs8.pem"),
            0o600,
        );
        write(
            &p.join("ec-p256.pem"),
            &fixture_key("ec-p256-pkcs8.pem"),
            0o600,
        );
        write(&p.join("database.url"), DATABASE_URL.as_bytes(), 0o600);
        write(
            &p.join("mysql.url"),
            b"mysql://root:pw@db/linetokd\n",
            0o600,
        );
        write(
            &p.join("database-ca.url"),
            b"postgres://lt:pw@db.example/linetokd?sslmode=require&sslrootcert=%2Fno%2Fsuch%2Fca.pem\n",
            0o600,
        );
        let secret = format!("{CHANNEL_SECRET}\n");
        write(&p.join("shop-bot.secret"), secret.as_bytes(), 0o600);
        write(&p.join("world-readable.secret"), secret.as_bytes(), 0o644);
        write(&p.join("backend.apikey"), API_KEY.as_bytes(), 0o640);
        write(
            &p.join("shop-bot.longlived"),
            b"LongLivedTokenFromTheConsole0123456789+/=\n",
            0o600,
        );
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn env(&self) -> HashMap<String, String> {
        env(&[("CREDENTIALS_DIRECTORY", self.path().to_str().unwrap())])
    }
}

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn load_str(text: &str, env: &HashMap<String, String>) -> Result<Settings, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("linetokd.toml");
    fs::write(&path, text).unwrap();
    Settings::load(&path, env)
}

const VALID: &str = r#"
[daemon]
state_dir = "${CREDENTIALS_DIRECTORY}/state"

[[channel]]
id = "1234567890"
name = "shop-bot"
key_file = "${CREDENTIALS_DIRECTORY}/shop-bot.pem"
kid = "kid-shop-bot"
secret_file = "${CREDENTIALS_DIRECTORY}/shop-bot.secret"

  [[channel.group]]
  name = "backend"
  sinks = [
    { path = "${CREDENTIALS_DIRECTORY}/out/backend.json", format = "json" },
    { path = "/run/linetokd/backend.env", format = "env", mode = "0640", group = "backend" },
  ]
  on_rotate = ["/bin/sh", "-c", "exit 0"]
  api_key_file = "${CREDENTIALS_DIRECTORY}/backend.apikey"
"#;

#[test]
fn credentials_directory_expands_in_every_path_and_the_result_is_typed() {
    let creds = Credentials::new();
    let settings = load_str(VALID, &creds.env()).unwrap();
    let valid = settings.validate().unwrap();

    let dir = creds.path();
    assert_eq!(valid.daemon.state_dir, dir.join("state"));
    assert_eq!(valid.daemon.database, dir.join("state/linetokd.db"));
    assert_eq!(valid.daemon.listen.to_string(), "127.0.0.1:9464");
    assert_eq!(valid.daemon.log_format, LogFormat::Text);
    assert_eq!(valid.daemon.line_api.as_str(), "https://api.line.me/");
    assert_eq!(
        valid.rotation.token_lifetime,
        Duration::from_secs(30 * 86_400)
    );

    let [channel] = valid.channels.as_slice() else {
        panic!("one channel expected: {valid:?}")
    };
    assert_eq!(channel.id.as_str(), "1234567890");
    assert_eq!(
        channel.assertion.as_ref().unwrap().kid.as_str(),
        "kid-shop-bot"
    );
    assert_eq!(
        channel.assertion.as_ref().unwrap().key_file,
        dir.join("shop-bot.pem")
    );
    assert_eq!(channel.assertion.as_ref().unwrap().key.bits(), 2048);
    assert_eq!(channel.secret.as_ref().unwrap().expose(), CHANNEL_SECRET);

    let [group] = channel.groups.as_slice() else {
        panic!("one group expected: {channel:?}")
    };
    assert_eq!(group.name.as_str(), "backend");
    assert_eq!(group.api_key.as_ref().unwrap().expose(), API_KEY);
    let hook = group.on_rotate.as_ref().unwrap();
    assert_eq!(hook.argv, ["/bin/sh", "-c", "exit 0"]);
    assert_eq!(hook.timeout, Duration::from_secs(30));
    assert_eq!(group.sinks[0].path, dir.join("out/backend.json"));
    assert_eq!(group.sinks[0].format, SinkFormat::Json);
    assert_eq!(group.sinks[0].mode, 0o600);
    assert_eq!(group.sinks[1].format, SinkFormat::Env);
    assert_eq!(group.sinks[1].mode, 0o640);
    assert_eq!(group.sinks[1].group.as_deref(), Some("backend"));

    // Invariant 5: the typed config may be logged with {:?}.
    let debug = format!("{valid:?}");
    assert!(!debug.contains(CHANNEL_SECRET), "{debug}");
    assert!(!debug.contains(API_KEY), "{debug}");
    assert!(!debug.contains("PRIVATE KEY"), "{debug}");
}

/// `--channel` and the token API's paths find a channel by its ID or its
/// name; a name may equal its own channel's ID, never another's (that case
/// is `tests/bad-config/name-is-another-channels-id.toml`).
#[test]
fn a_channel_is_found_by_its_id_or_its_name() {
    let creds = Credentials::new();
    let second = r#"
[[channel]]
id = "2345678901"
name = "2345678901"
key_file = "${CREDENTIALS_DIRECTORY}/shop-bot.pem"
kid = "kid-other-bot"
"#;
    let valid = load_str(&format!("{VALID}{second}"), &creds.env())
        .unwrap()
        .validate()
        .unwrap();
    for (given, id) in [
        ("1234567890", "1234567890"),
        ("shop-bot", "1234567890"),
        ("2345678901", "2345678901"),
    ] {
        let channel = valid.channel(given).unwrap_or_else(|| panic!("{given}"));
        assert_eq!(channel.id.as_str(), id, "{given}");
        assert_eq!(valid.channel_index().resolve(given).unwrap().as_str(), id);
    }
    assert!(valid.channel("other-bot").is_none());
    assert!(valid.channel("SHOP-BOT").is_none());
}

#[test]
fn an_unset_credentials_directory_names_every_key_that_uses_it() {
    let err = load_str(VALID, &env(&[])).unwrap_err();
    let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "daemon.state_dir",
            "channel[0].key_file",
            "channel[0].secret_file",
            "channel[0].group[0].api_key_file",
            "channel[0].group[0].sinks[0].path",
        ],
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("${CREDENTIALS_DIRECTORY}, which is not set"),
        "{err}"
    );
}

#[test]
fn environment_overrides_apply_over_the_file() {
    let creds = Credentials::new();
    let mut env = creds.env();
    env.extend(self::env(&[
        ("LINETOKD__ROTATION__ROTATE_BEFORE", "12h"),
        ("LINETOKD__ROTATION__MAX_ISSUES_PER_HOUR", "2"),
        ("LINETOKD__DAEMON__LISTEN", "0.0.0.0:9000"),
        ("LINETOKD__DAEMON__LOG_FORMAT", "json"),
        (
            "LINETOKD__DAEMON__DATABASE",
            "${CREDENTIALS_DIRECTORY}/db.sqlite",
        ),
    ]));
    let text = format!("[rotation]\nrotate_before = \"36h\"\nmax_issues_per_hour = 5\n{VALID}");
    let valid = load_str(&text, &env).unwrap().validate().unwrap();
    assert_eq!(
        valid.rotation.rotate_before,
        Duration::from_secs(12 * 3_600)
    );
    assert_eq!(valid.rotation.max_issues_per_hour, 2);
    assert_eq!(valid.daemon.listen.to_string(), "0.0.0.0:9000");
    assert_eq!(valid.daemon.log_format, LogFormat::Json);
    assert_eq!(valid.daemon.database, creds.path().join("db.sqlite"));
}

#[test]
fn environment_overrides_are_validated_like_the_file() {
    let creds = Credentials::new();
    let mut env = creds.env();
    env.insert("LINETOKD__ROTATION__TOKEN_LIFETIME".into(), "40d".into());
    let err = load_str(VALID, &env).unwrap().validate().unwrap_err();
    assert!(
        err.to_string()
            .contains("rotation.token_lifetime (40d) must be at most 30d"),
        "{err}"
    );

    let mut env = creds.env();
    env.insert("LINETOKD__ROTATION__ROTATE_BEFOR".into(), "1h".into());
    let err = load_str(VALID, &env).unwrap_err().to_string();
    assert!(err.contains("unknown field `rotate_befor`"), "{err}");
}

#[test]
fn environment_variables_cannot_address_channels() {
    let creds = Credentials::new();
    let mut env = creds.env();
    env.insert("LINETOKD__CHANNEL__KID".into(), "x".into());
    env.insert("LINETOKD__LISTEN".into(), "0.0.0.0:1".into());
    let err = load_str(VALID, &env).unwrap_err();
    let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        ["LINETOKD__CHANNEL__KID", "LINETOKD__LISTEN"],
        "{err}"
    );
}

#[test]
fn check_config_prints_the_resolved_config_with_secrets_masked() {
    let creds = Credentials::new();
    let path = creds.path().join("linetokd.toml");
    fs::write(&path, VALID).unwrap();
    let shown = config::check(&path, &creds.env()).unwrap().resolved;

    let secret_len = CHANNEL_SECRET.len() + 1; // the file ends with a newline
    let dir = creds.path().display();
    for expected in [
        format!("{dir}/shop-bot.secret (secret, {secret_len} bytes, mode 0600)"),
        format!(
            "{dir}/backend.apikey (secret, {} bytes, mode 0640)",
            API_KEY.len()
        ),
        format!(
            "{dir}/shop-bot.pem (secret, {} bytes, mode 0600)",
            key_pem().len()
        ),
        // Defaults are filled in.
        "token_lifetime = \"30d\"".to_owned(),
        "rotate_before = \"24h\"".to_owned(),
        "hook_timeout = \"30s\"".to_owned(),
        "mode = \"0600\"".to_owned(),
        format!("database = \"{dir}/state/linetokd.db\""),
    ] {
        assert!(
            shown.contains(&expected),
            "missing {expected:?} in:\n{shown}"
        );
    }
    assert!(!shown.contains(CHANNEL_SECRET), "{shown}");
    assert!(!shown.contains(API_KEY), "{shown}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    // The output is TOML.
    shown.parse::<toml::Table>().unwrap();
}

/// `[ha]` is checked, typed, and shown by `check-config` with its
/// defaults; an unset `instance_id` is left to the daemon (it resolves
/// `hostname:pid` itself), and a config without `[ha]` shows none.
#[test]
fn check_config_shows_the_ha_section() {
    let creds = Credentials::new();
    let path = creds.path().join("linetokd.toml");

    let with_pg = VALID.replace(
        "[daemon]\n",
        "[daemon]\ndatabase_url_file = \"${CREDENTIALS_DIRECTORY}/database.url\"\n",
    );
    assert_ne!(with_pg, VALID);
    fs::write(&path, format!("{with_pg}\n[ha]\ninstance_id = \"web-1\"\n")).unwrap();
    let shown = config::check(&path, &creds.env()).unwrap().resolved;
    let table = shown.parse::<toml::Table>().unwrap();
    let ha = table["ha"].as_table().unwrap();
    assert_eq!(ha["instance_id"].as_str(), Some("web-1"), "{shown}");
    assert_eq!(ha["lease"].as_str(), Some("30s"), "{shown}");
    assert_eq!(ha["renew"].as_str(), Some("10s"), "{shown}");
    let valid = Settings::load(&path, &creds.env())
        .unwrap()
        .validate()
        .unwrap();
    // The store is the URL file's PostgreSQL database: shown by its file,
    // never by the URL (it holds the password).
    assert!(!shown.contains("pg-Passw0rd-never-shown"), "{shown}");
    let daemon = table["daemon"].as_table().unwrap();
    assert!(!daemon.contains_key("database"), "{shown}");
    assert!(
        daemon["database_url_file"]
            .as_str()
            .unwrap()
            .contains("database.url (secret, "),
        "{shown}"
    );
    let target = valid.daemon.postgres.as_ref().unwrap();
    assert_eq!(
        target.redacted(),
        "postgres://linetokd:***@db.example:5432/linetokd"
    );
    let ha = valid.ha.unwrap();
    assert_eq!(ha.instance_id.unwrap().as_str(), "web-1");
    assert_eq!(ha.lease, Duration::from_secs(30));

    fs::write(&path, format!("{with_pg}\n[ha]\nlease = \"1m\"\n")).unwrap();
    let shown = config::check(&path, &creds.env()).unwrap().resolved;
    let table = shown.parse::<toml::Table>().unwrap();
    let ha = table["ha"].as_table().unwrap();
    assert!(!ha.contains_key("instance_id"), "{shown}");
    assert_eq!(ha["lease"].as_str(), Some("1m"), "{shown}");
    assert_eq!(ha["line_clock_allowance"].as_str(), Some("5m"), "{shown}");

    // A rotation due sooner before expiry than a takeover's hold can last
    // (lease + assertion window + allowance) is allowed, with a warning.
    let hold_warning = |rotate_before: &str| {
        let body = format!("[rotation]\nrotate_before = \"{rotate_before}\"\n{with_pg}");
        fs::write(&path, format!("{body}\n[ha]\n")).unwrap();
        config::check(&path, &creds.env())
            .unwrap()
            .warnings
            .into_iter()
            .find(|w| w.contains("after a takeover that interrupted"))
    };
    let warned = hold_warning("10m").expect("a warning for 10m");
    assert!(
        warned.contains("rotation.rotate_before (10m) is not longer than"),
        "{warned}"
    );
    assert_eq!(hold_warning("1h"), None);

    fs::write(&path, VALID).unwrap();
    let shown = config::check(&path, &creds.env()).unwrap().resolved;
    assert!(!shown.contains("[ha]"), "{shown}");
}

#[test]
fn check_config_fails_with_every_problem() {
    let creds = Credentials::new();
    let path = creds.path().join("linetokd.toml");
    let text = VALID
        .replace("kid-shop-bot", "")
        .replace("1234567890", "x1");
    fs::write(&path, text).unwrap();
    let err = config::check(&path, &creds.env()).unwrap_err();
    assert_eq!(err.problems().len(), 2, "{err}");
    let missing = config::check(&creds.path().join("nope.toml"), &creds.env()).unwrap_err();
    assert!(matches!(missing, ConfigError::Read { .. }), "{missing}");
}

/// `tests/bad-config/expected.toml`: for each bad file, substrings its error
/// must contain and how many problems it has (default 1: each file breaks
/// one rule, so a second problem means the file tests more than it says).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expectation {
    contains: Vec<String>,
    #[serde(default = "one")]
    problems: usize,
}

fn one() -> usize {
    1
}

#[test]
fn every_bad_config_fails_with_its_expected_message() {
    let dir = Path::new(MANIFEST).join("tests/bad-config");
    let table: BTreeMap<String, Expectation> =
        toml::from_str(&fs::read_to_string(dir.join("expected.toml")).unwrap()).unwrap();
    let creds = Credentials::new();
    let env = creds.env();

    let mut files: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".toml") && name != "expected.toml")
        .collect();
    files.sort();
    assert!(files.len() >= 12, "only {} bad configs", files.len());

    let mut failures = Vec::new();
    for name in &files {
        let result = Settings::load(&dir.join(name), &env).and_then(|s| s.validate());
        let err = match result {
            Ok(_) => {
                failures.push(format!("{name}: validated, but it must fail"));
                continue;
            }
            Err(err) => err,
        };
        let shown = err.to_string().replace(
            &creds.path().display().to_string(),
            "$CREDENTIALS_DIRECTORY",
        );
        let Some(expected) = table.get(name) else {
            failures.push(format!(
                "{name}: no entry in expected.toml; it fails with:\n    {shown}"
            ));
            continue;
        };
        for needle in &expected.contains {
            if !shown.contains(needle) {
                failures.push(format!("{name}: error lacks {needle:?}:\n    {shown}"));
            }
        }
        let count = err.problems().len().max(1);
        if count != expected.problems {
            failures.push(format!(
                "{name}: {count} problems, expected {}:\n    {shown}",
                expected.problems
            ));
        }
    }
    for name in table.keys() {
        if !files.contains(name) {
            failures.push(format!("{name}: in expected.toml but no such file"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Every `config/*.toml` is TOML, and every daemon config among them
/// (`config/linetokd*.toml`) loads. Its key and secret files cannot exist on
/// a test machine, so validation must report exactly those as missing and
/// nothing else; then the test creates them under a temp dir, points the
/// config there, and the config must validate completely.
#[test]
fn every_shipped_config_parses_and_validates() {
    let dir = Path::new(MANIFEST).join("config");
    let mut daemon_configs = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if !name.ends_with(".toml") {
            continue;
        }
        let text = fs::read_to_string(&path).unwrap();
        text.parse::<toml::Table>()
            .unwrap_or_else(|e| panic!("{name} is not TOML: {e}"));
        if name.starts_with("linetokd") {
            daemon_configs += 1;
            check_shipped_daemon_config(&name, &text);
        }
    }
    assert!(daemon_configs >= 1, "config/linetokd.toml is missing");
}

fn check_shipped_daemon_config(name: &str, text: &str) {
    let root = tempfile::tempdir().unwrap();
    let env = env(&[(
        "CREDENTIALS_DIRECTORY",
        root.path().join("credentials").to_str().unwrap(),
    )]);
    let settings = Settings::from_toml(text, Path::new(name), &env)
        .unwrap_or_else(|e| panic!("{name} does not load: {e}"));
    assert!(!settings.channels.is_empty(), "{name} shows no channel");

    let err = settings
        .validate()
        .expect_err("the shipped files point at files this machine lacks");
    let mut relocated = text.to_owned();
    for problem in err.problems() {
        let is_file_key = ["key_file", "secret_file", "api_key_file"]
            .iter()
            .any(|k| problem.key.ends_with(k));
        // The example's hook program is the operator's own, absent here.
        let is_hook = problem.key.ends_with("on_rotate[0]");
        assert!(
            (is_file_key && problem.message.contains("cannot be read: No such file"))
                || (is_hook && problem.message.contains("cannot be used: No such file")),
            "{name}: only missing files may fail, not: {problem}"
        );
        let missing = missing_path(&problem.message);
        let target = if missing.starts_with(root.path()) {
            missing.clone()
        } else {
            let moved = root.path().join(missing.strip_prefix("/").unwrap());
            relocated = relocated.replace(missing.to_str().unwrap(), moved.to_str().unwrap());
            moved
        };
        let body = if problem.key.ends_with("key_file") && !problem.key.ends_with("api_key_file") {
            if target.extension().is_some_and(|e| e == "jwk") {
                fixture_key("rsa2048-private.jwk")
            } else {
                key_pem().as_bytes().to_vec()
            }
        } else if is_hook {
            b"#!/bin/sh\nexit 0\n".to_vec()
        } else {
            b"shipped-config-test-secret\n".to_vec()
        };
        write(&target, &body, if is_hook { 0o755 } else { 0o600 });
    }

    let valid = Settings::from_toml(&relocated, Path::new(name), &env)
        .and_then(|s| s.validate())
        .unwrap_or_else(|e| panic!("{name} with its files in place: {e}"));
    assert_eq!(valid.channels.len(), settings.channels.len());
}

/// The path quoted at the start of a file problem's message.
fn missing_path(message: &str) -> PathBuf {
    let quoted = message.split('"').nth(1).unwrap();
    PathBuf::from(quoted)
}

/// `linetokd check-config`, the real binary: exit 0 with the masked config,
/// exit 2 with every problem on stderr.
#[test]
fn check_config_command_exits_0_or_2() {
    let creds = Credentials::new();
    let good = creds.path().join("good.toml");
    fs::write(&good, VALID).unwrap();
    let run = |config: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_linetokd"))
            .arg("check-config")
            .arg("--config")
            .arg(config)
            .env_clear()
            .env("CREDENTIALS_DIRECTORY", creds.path())
            .env("LINETOKD__ROTATION__ROTATE_BEFORE", "36h")
            .output()
            .unwrap()
    };

    let ok = run(&good);
    let stdout = String::from_utf8(ok.stdout).unwrap();
    assert_eq!(ok.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("rotate_before = \"36h\""), "{stdout}");
    assert!(stdout.contains("(secret, "), "{stdout}");
    assert!(!stdout.contains(CHANNEL_SECRET), "{stdout}");

    let bad = creds.path().join("bad.toml");
    fs::write(
        &bad,
        VALID
            .replace("kid-shop-bot", "")
            .replace("\"json\"", "\"yaml\""),
    )
    .unwrap();
    let failed = run(&bad);
    let stderr = String::from_utf8(failed.stderr).unwrap();
    assert_eq!(failed.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("2 problems in the configuration:"),
        "{stderr}"
    );
    assert!(stderr.contains("\n  channel[0].kid is empty"), "{stderr}");
    assert!(
        stderr.contains("\n  channel[0].group[0].sinks[0].format \"yaml\""),
        "{stderr}"
    );
    assert!(failed.stdout.is_empty());
}

/// `check-config` warns (stderr, exit 0) when every alert receiver is a
/// `line` receiver, which pushes through a channel linetokd itself manages;
/// stdout stays exactly the resolved config. A webhook beside it silences
/// the warning.
#[test]
fn check_config_warns_on_stderr_when_every_alert_receiver_is_a_line_receiver() {
    let creds = Credentials::new();
    write(
        &creds.path().join("ops.url"),
        b"https://hooks.example/ops\n",
        0o600,
    );
    let line_receiver = format!(
        "\n[alerts]\n[[alerts.receiver]]\nname = \"admins\"\ntype = \"line\"\n\
         channel = \"shop-bot\"\ngroup = \"backend\"\nto = [\"U{}\"]\n\
         monthly_message_budget = 50\n",
        "0123456789abcdef".repeat(2)
    );
    let webhook = "[[alerts.receiver]]\nname = \"ops\"\ntype = \"webhook\"\n\
                   url_file = \"${CREDENTIALS_DIRECTORY}/ops.url\"\n";
    let run = |config: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_linetokd"))
            .args(["check-config", "--config"])
            .arg(config)
            .env_clear()
            .env("CREDENTIALS_DIRECTORY", creds.path())
            .output()
            .unwrap()
    };

    let line_only = creds.path().join("line-only.toml");
    fs::write(&line_only, format!("{VALID}{line_receiver}")).unwrap();
    let out = run(&line_only);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let warnings: Vec<&str> = stderr.lines().collect();
    let [warning] = warnings.as_slice() else {
        panic!("one warning expected on stderr: {stderr}")
    };
    assert!(
        warning.starts_with("warning: alerts: every receiver is a line receiver: "),
        "{warning}"
    );
    assert!(warning.contains("add a webhook, slack or alertmanager receiver"));
    // Stdout is the resolved config the library renders, warning-free, so
    // it can still be saved as a file.
    let checked = config::check(&line_only, &creds.env()).unwrap();
    assert_eq!(stdout, checked.resolved);
    assert!(!stdout.contains("line receiver"), "{stdout}");
    assert!(stdout.contains("type = \"line\""), "{stdout}");
    assert_eq!(checked.warnings.len(), 1);

    let mixed = creds.path().join("mixed.toml");
    fs::write(&mixed, format!("{VALID}{line_receiver}{webhook}")).unwrap();
    let out = run(&mixed);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stderr, "", "no warning with a webhook receiver too");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout,
        config::check(&mixed, &creds.env()).unwrap().resolved
    );
    assert!(stdout.contains("type = \"webhook\""), "{stdout}");
    assert!(
        !stdout.contains("hooks.example"),
        "the URL is masked: {stdout}"
    );
}

/// A channel with short-lived groups validates (they need its secret,
/// which `VALID` has), `check-config` resolves their kind, and warns once
/// that other issuers on the channel can evict them; v2.1 groups alone give
/// no such warning.
#[test]
fn check_config_warns_that_short_lived_tokens_can_be_evicted() {
    let creds = Credentials::new();
    let path = creds.path().join("short.toml");
    let body = format!(
        "{VALID}\n  [[channel.group]]\n  name = \"liff\"\n  kind = \"short-lived\"\n\n  \
         [[channel.group]]\n  name = \"liff-admin\"\n  kind = \"short-lived\"\n"
    );
    fs::write(&path, body).unwrap();
    let checked = config::check(&path, &creds.env()).unwrap();
    assert!(
        checked.resolved.contains("kind = \"short-lived\""),
        "{}",
        checked.resolved
    );
    assert!(
        checked.resolved.contains("kind = \"v2.1\""),
        "{}",
        checked.resolved
    );
    let [warning] = checked.warnings.as_slice() else {
        panic!("one warning expected: {:?}", checked.warnings)
    };
    assert!(
        warning.contains("channel shop-bot keeps liff, liff-admin with short-lived tokens"),
        "{warning}"
    );
    assert!(
        warning.contains("can evict ours (and ours theirs)"),
        "{warning}"
    );
    let plain = creds.path().join("plain.toml");
    fs::write(&plain, VALID).unwrap();
    assert!(
        config::check(&plain, &creds.env())
            .unwrap()
            .warnings
            .is_empty()
    );
}

/// A config file is read up to 64 MiB: `/dev/zero` ends with an error
/// naming the limit, a file with a 10 MB `kid` with one naming the kid's
/// length, from the library and from `check-config`; a kid over 128 bytes
/// is refused by name.
#[test]
fn the_config_file_is_read_with_a_size_limit_and_a_long_kid_is_refused() {
    let creds = Credentials::new();
    let err = Settings::load(Path::new("/dev/zero"), &creds.env()).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    assert!(err.to_string().contains("larger than 64 MiB"), "{err}");

    let huge = creds.path().join("huge-kid.toml");
    fs::write(
        &huge,
        VALID.replace("kid-shop-bot", &"k".repeat(10 * 1024 * 1024)),
    )
    .unwrap();
    let err = Settings::load(&huge, &creds.env())
        .unwrap()
        .validate()
        .unwrap_err();
    assert!(err.to_string().contains("is 10485760 bytes long"), "{err}");

    let long = VALID.replace("kid-shop-bot", &"k".repeat(129));
    let err = load_str(&long, &creds.env())
        .unwrap()
        .validate()
        .unwrap_err();
    assert_eq!(err.problems().len(), 1, "{err}");
    assert_eq!(err.problems()[0].key, "channel[0].kid");
    assert!(err.to_string().contains("is 129 bytes long"), "{err}");

    for config in ["/dev/zero", huge.to_str().unwrap()] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_linetokd"))
            .args(["check-config", "--config", config])
            .env_clear()
            .env("CREDENTIALS_DIRECTORY", creds.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{config}: {stderr}");
        assert!(
            stderr.contains("larger than 64 MiB") || stderr.contains("is 10485760 bytes long"),
            "{config}: {stderr}"
        );
        assert!(
            stderr.len() < 1000,
            "{config}: {} bytes of error",
            stderr.len()
        );
    }
}

/// Every duration has an upper bound that the error states.
#[test]
fn durations_are_bounded_and_the_bound_is_named() {
    let creds = Credentials::new();
    for (setting, key, bound) in [
        (
            "[rotation]\nverify_interval = \"500000000y\"\n",
            "rotation.verify_interval",
            "30d",
        ),
        (
            "[rotation]\nreconcile_interval = \"31d\"\n",
            "rotation.reconcile_interval",
            "30d",
        ),
        (
            "[rotation]\nremoval_grace = \"1000y\"\n",
            "rotation.removal_grace",
            "30d",
        ),
        (
            "[rotation]\nrevoke_previous_after = \"60d\"\n",
            "rotation.revoke_previous_after",
            "30d",
        ),
        (
            "[daemon]\nrequest_timeout = \"2h\"\n",
            "daemon.request_timeout",
            "5m",
        ),
    ] {
        let text = match setting.strip_prefix("[daemon]\n") {
            Some(rest) => VALID.replacen("[daemon]\n", &format!("[daemon]\n{rest}"), 1),
            None => format!("{setting}{VALID}"),
        };
        let err = load_str(&text, &creds.env())
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(err.problems().len(), 1, "{setting}: {err}");
        assert_eq!(err.problems()[0].key, key, "{err}");
        assert!(
            err.problems()[0]
                .message
                .contains(&format!("must be at most {bound}")),
            "{setting}: {err}"
        );
    }
    let err = load_str(
        &VALID.replace("api_key_file", "hook_timeout = \"2h\"\n  api_key_file"),
        &creds.env(),
    )
    .unwrap()
    .validate()
    .unwrap_err();
    assert_eq!(err.problems()[0].key, "channel[0].group[0].hook_timeout");
    assert!(err.to_string().contains("(2h) must be at most 1h"), "{err}");
}

/// A hook program is found where the hook would be run from: by path, or
/// in the `PATH` the config was loaded with.
#[test]
fn hook_programs_are_checked_at_validation() {
    let creds = Credentials::new();
    let bin = creds.path().join("bin");
    write(&bin.join("reload-backend"), b"#!/bin/sh\nexit 0\n", 0o755);
    let with_hook = |argv: &str| VALID.replace(r#"["/bin/sh", "-c", "exit 0"]"#, argv);
    let mut env = creds.env();
    env.insert("PATH".into(), format!("/nonexistent:{}", bin.display()));
    load_str(&with_hook(r#"["reload-backend", "--graceful"]"#), &env)
        .unwrap()
        .validate()
        .unwrap();

    for (argv, message) in [
        (
            r#"["reload-backend"]"#,
            "not an executable file in any directory of PATH",
        ),
        (
            r#"["/usr/local/bin/no-such-hook-program"]"#,
            "cannot be used: No such file",
        ),
        (r#"["/etc/passwd"]"#, "is not executable"),
        (r#"["/etc"]"#, "is not a regular file"),
    ] {
        let err = load_str(&with_hook(argv), &creds.env())
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(err.problems().len(), 1, "{argv}: {err}");
        assert_eq!(err.problems()[0].key, "channel[0].group[0].on_rotate[0]");
        assert!(err.to_string().contains(message), "{argv}: {err}");
    }
}

/// The real binary: a variable that is not UTF-8 in the environment does
/// not stop `run` (it panicked in `std::env::vars()`), and a `LINETOKD__`
/// override that is not UTF-8 is an error naming it instead of being
/// ignored.
#[test]
fn a_non_utf8_environment_does_not_stop_run_and_a_non_utf8_override_is_refused() {
    use std::io::BufRead as _;
    use std::os::unix::ffi::OsStringExt as _;

    let not_utf8 = std::ffi::OsString::from_vec(b"caf\xe9".to_vec());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("key.pem"), key_pem().as_bytes(), 0o600);
    fs::create_dir(d.join("state")).unwrap();
    let config = d.join("linetokd.toml");
    fs::write(
        &config,
        format!(
            r#"
[daemon]
state_dir = "{d}/state"
line_api = "http://127.0.0.1:1"
listen = "127.0.0.1:0"

[[channel]]
id = "1234567890"
name = "shop-bot"
key_file = "{d}/key.pem"
kid = "kid-shop-bot"

  [[channel.group]]
  name = "backend"
  sinks = [{{ path = "{d}/out/backend.json", format = "json" }}]
"#,
            d = d.display()
        ),
    )
    .unwrap();

    let mut daemon = std::process::Command::new(env!("CARGO_BIN_EXE_linetokd"))
        .args(["run", "--config", config.to_str().unwrap()])
        .env_clear()
        .env("RUST_LOG", "info")
        .env("PATH", "/usr/bin:/bin")
        .env("JUNK", &not_utf8)
        .env(std::ffi::OsString::from_vec(b"ALSO\xffJUNK".to_vec()), "x")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Reads the log until the daemon says it runs, or its stderr closes
    // (it exited): no sleeping. The reader keeps draining afterwards, so
    // the daemon never writes into a closed pipe.
    let stderr = daemon.stderr.take().unwrap();
    let (tell, running) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut printed = String::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.unwrap();
            if line.contains("linetokd running") {
                let _ = tell.send(());
            }
            printed.push_str(&line);
            printed.push('\n');
        }
        printed
    });
    // Bounded: a daemon that neither starts nor exits fails the test.
    let running = running.recv_timeout(Duration::from_secs(90)).is_ok();
    if running {
        let term = std::process::Command::new("kill")
            .args(["-s", "TERM", &daemon.id().to_string()])
            .status()
            .unwrap();
        assert!(term.success());
    } else {
        let _ = daemon.kill();
    }
    let status = daemon.wait().unwrap();
    let printed = reader.join().unwrap();
    assert!(running, "the daemon did not start ({status}):\n{printed}");
    assert_eq!(status.code(), Some(0), "{printed}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_linetokd"))
        .args(["check-config", "--config", config.to_str().unwrap()])
        .env_clear()
        .env("LINETOKD__ROTATION__VERIFY_INTERVAL", &not_utf8)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("LINETOKD__ROTATION__VERIFY_INTERVAL is not UTF-8"),
        "{stderr}"
    );
}

/// `status` and `plan` take the outline: the same rules on what they use,
/// each channel's key and secret file read, the key not parsed, no API key
/// file read.
#[test]
fn the_outline_reads_key_and_secret_files_but_parses_no_key_and_reads_no_api_key() {
    let creds = Credentials::new();
    let settings = load_str(VALID, &creds.env()).unwrap();
    let outline = settings.outline().unwrap();
    assert_eq!(outline.channels.len(), 1);
    let shop = &outline.channels[0];
    assert_eq!(
        (shop.id.as_str(), shop.name.as_str()),
        ("1234567890", "shop-bot")
    );
    assert_eq!(shop.groups[0].as_str(), "backend");
    assert!(shop.has_secret);

    // No API key file: the daemon refuses the config, the outline does not
    // read it. A key file that holds no RSA key: the same.
    fs::remove_file(creds.path().join("backend.apikey")).unwrap();
    write(
        &creds.path().join("shop-bot.pem"),
        &fixture_key("ec-p256-pkcs8.pem"),
        0o600,
    );
    let settings = load_str(VALID, &creds.env()).unwrap();
    let refused = settings.validate().unwrap_err().to_string();
    assert!(refused.contains("channel[0].key_file"), "{refused}");
    assert!(refused.contains("api_key_file"), "{refused}");
    assert!(settings.outline().is_ok());

    // A missing key or secret file, or a bad channel ID, is refused by both.
    fs::remove_file(creds.path().join("shop-bot.pem")).unwrap();
    fs::remove_file(creds.path().join("shop-bot.secret")).unwrap();
    let text = VALID
        .replace("id = \"1234567890\"", "id = \"not-a-number\"")
        .replace("kid = \"kid-shop-bot\"", "kid = \"\"");
    let err = load_str(&text, &creds.env())
        .unwrap()
        .outline()
        .unwrap_err();
    let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "channel[0].id",
            "channel[0].kid",
            "channel[0].key_file",
            "channel[0].secret_file"
        ],
        "{err}"
    );
}
