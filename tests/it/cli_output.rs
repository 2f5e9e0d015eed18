//! What the real binary prints, beyond any one command's content: a closed
//! stdout ends a command quietly with exit 0 (`linetokd plan | head -1`),
//! the shell completions and the manual page generated from the clap
//! definitions, and `--version` with the git commit.
//!
//! The closed pipe is made deterministic: the test creates the pipe, drops
//! its read end before starting the binary, and hands it only the write
//! end, so the binary's first write fails with `EPIPE` every time.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn linetokd() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_linetokd"));
    // The quiet exit must not depend on the caller's settings, and a
    // backtrace must not appear unless asked for.
    command.env_remove("RUST_LOG").env_remove("RUST_BACKTRACE");
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `command` with a stdout whose reader is already gone.
fn run_with_closed_stdout(mut command: Command) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    command
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

/// A valid config with one channel and two groups, and no database: `plan`
/// forecasts a first start from it.
fn plan_config(dir: &Path) -> PathBuf {
    let key = dir.join("shop.pem");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys/rsa2048-pkcs8.pem"),
        &key,
    )
    .unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let d = dir.display();
    let config = dir.join("linetokd.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[daemon]
database = "{d}/linetokd.db"
state_dir = "{d}"
line_api = "http://127.0.0.1:9"

[[channel]]
id = "1000000001"
name = "shop-bot"
key_file = "{d}/shop.pem"
kid = "kid-shop"

  [[channel.group]]
  name = "backend"

  [[channel.group]]
  name = "crm"
"#
        ),
    )
    .unwrap();
    config
}

fn assert_quiet_success(what: &str, out: &Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: a closed stdout must end with exit 0; stderr: {}",
        text(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{what}: a closed stdout must end without a message, got: {}",
        text(&out.stderr)
    );
}

#[test]
fn plan_into_a_closed_pipe_exits_0_without_a_message_or_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let config = plan_config(dir.path());

    // The same command with a reader prints a forecast: the quiet exit
    // below is a closed pipe's doing, not an empty output.
    let out = linetokd()
        .args(["plan", "--days", "2", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("backend"),
        "{}",
        text(&out.stdout)
    );

    for args in [
        &["plan", "--days", "2"][..],
        &["plan", "--json"],
        &["check-config"],
    ] {
        let mut command = linetokd();
        command.args(args).arg("--config").arg(&config);
        assert_quiet_success(&args.join(" "), &run_with_closed_stdout(command));
    }
}

#[test]
fn generated_output_into_a_closed_pipe_exits_0_without_a_message() {
    for args in [
        &["man"][..],
        &["completions", "bash"],
        &["--version"],
        &["--help"],
    ] {
        let mut command = linetokd();
        command.args(args);
        assert_quiet_success(&args.join(" "), &run_with_closed_stdout(command));
    }
}

#[test]
fn real_errors_still_print_and_exit_nonzero_with_a_closed_stdout() {
    // A broken pipe is the only failure that is quiet: a bad config still
    // says what is wrong and exits 2.
    let dir = tempfile::tempdir().unwrap();
    let mut command = linetokd();
    command
        .args(["plan", "--config"])
        .arg(dir.path().join("missing.toml"));
    let out = run_with_closed_stdout(command);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("missing.toml"),
        "{}",
        text(&out.stderr)
    );
}

/// Found by an outside test: a missing config file named its cause twice
/// (`...: No such file or directory (os error 2): No such file or
/// directory (os error 2)`), and the sandbox's exited 1 where every other
/// config error exits 2.
#[test]
fn a_missing_config_is_exit_2_naming_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    for args in [
        &["status"][..],
        &["check-config"],
        &["sandbox", "--listen", "127.0.0.1:0"],
    ] {
        let out = linetokd()
            .args(args)
            .arg("--config")
            .arg(&missing)
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("missing.toml"), "{args:?}: {stderr}");
        assert_eq!(
            stderr.matches("No such file or directory").count(),
            1,
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn completion_scripts_name_every_subcommand() {
    let subcommands = [
        "run",
        "demo",
        "sandbox",
        "status",
        "plan",
        "rotate",
        "revoke",
        "token",
        "health",
        "check-config",
        "keygen",
        "assertion",
        "migrate",
        "alerts",
        "completions",
        "man",
    ];
    for shell in ["bash", "zsh", "fish"] {
        let out = linetokd().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(!script.trim().is_empty(), "{shell}: empty script");
        for sub in subcommands {
            assert!(
                script.contains(sub),
                "{shell}: {sub} missing from:\n{script}"
            );
        }
    }
    let out = linetokd().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn bash_completion_script_is_valid_bash() {
    let Some(bash) = ["/bin/bash", "/usr/bin/bash"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
    else {
        println!("skipping: bash not found");
        return;
    };
    let out = linetokd().args(["completions", "bash"]).output().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("linetokd.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    let check = Command::new(bash).arg("-n").arg(&script).output().unwrap();
    assert!(check.status.success(), "{}", text(&check.stderr));
}

#[test]
fn man_page_is_roff_with_every_subcommand_and_the_exit_codes() {
    let out = linetokd().arg("man").output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let page = text(&out.stdout);
    assert!(
        page.lines().any(|l| l.starts_with(".TH linetokd 1")),
        "no .TH line:\n{page}"
    );
    for section in [
        ".SH NAME",
        ".SH SYNOPSIS",
        ".SH COMMANDS",
        ".SH \"EXIT STATUS\"",
    ] {
        assert!(page.contains(section), "{section} missing");
    }
    for sub in ["run", "plan", "rotate", "revoke", "token", "completions"] {
        assert!(
            page.contains(&format!(".SS \"linetokd {sub}\"")),
            "{sub} missing"
        );
    }
    // Options are documented with their defaults, hyphens escaped for roff.
    assert!(page.contains("\\fB\\-\\-days\\fR \\fIDAYS\\fR"), "{page}");
    assert!(page.contains("[default: 7]"), "{page}");
}

#[test]
fn version_names_the_version_and_the_commit() {
    let out = linetokd().arg("--version").output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let version = text(&out.stdout);
    let expected_commit = git_head_short().unwrap_or_else(|| "unknown".to_owned());
    assert_eq!(
        version.trim(),
        format!(
            "linetokd {} (commit {expected_commit})",
            env!("CARGO_PKG_VERSION")
        )
    );
}

/// HEAD's short commit, `-dirty` when a source differs from it, when the
/// crate is the top of a git checkout (as `build.rs` decides); `None` for a
/// copy outside git.
fn git_head_short() -> Option<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| text(&out.stdout).trim().to_owned())
    };
    let top = git(&["rev-parse", "--show-toplevel"])?;
    if Path::new(&top).canonicalize().ok()? != dir.canonicalize().ok()? {
        return None;
    }
    let commit = git(&["rev-parse", "--short", "HEAD"])?;
    // build.rs's `SOURCES`: a change to any of them marks the build.
    let dirty = git(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        "src",
        "migrations",
        "build.rs",
        "Cargo.toml",
        "Cargo.lock",
        ".cargo/config.toml",
        "deploy/build/hot-functions.txt",
    ])
    .is_some_and(|changes| !changes.is_empty());
    Some(if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    })
}
