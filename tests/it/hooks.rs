//! Rotation hooks (`delivery::hook`) with real `/bin/sh` scripts in temp
//! directories: what a hook receives (stdin, environment, argv), the
//! timeout that kills its whole process group, retries on the manual clock,
//! redaction of an echoed token, independence of groups; and the store's
//! hook events with the schema bump that makes older binaries refuse them.
//!
//! Process death is observed through a named pipe the hook's processes hold
//! open: reading it to the end returns once every holder has exited, so no
//! test sleeps or polls.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use linetokd::clock::{Clock, ManualClock, SharedClock};
use linetokd::delivery::PublishedToken;
use linetokd::delivery::hook::{
    self, HookOutcome, HookReport, HookRetry, HookRun, HookSpec, inherited_env,
};
use linetokd::domain::{AccessToken, ChannelId, GroupName, KeyId};
use linetokd::store::migrate::{self, MIGRATIONS};
use linetokd::store::{ChannelSpec, EventKind, IssuedToken, NewEvent, Store, StoreError};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

use crate::support;

const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.hook-test-token-value.sig";

fn published(value: &str, key_id: &str) -> PublishedToken {
    PublishedToken {
        key_id: KeyId::new(key_id),
        token: AccessToken::new(value),
        issued_at: support::start_time(),
        expires_at: support::start_time() + chrono::Duration::days(30),
    }
}

/// Writes an executable `#!/bin/sh` script.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A hook running `script` through `/bin/sh`, with `args` after it.
///
/// Running a just-written script directly can fail with ETXTBSY when another
/// test thread forks while the script's write descriptor is open; going
/// through `/bin/sh` sidesteps that. (One test runs a script directly.)
fn spec(script: &Path, args: &[&str], timeout: Duration) -> HookSpec {
    let mut argv = vec!["/bin/sh".to_owned(), script.display().to_string()];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    HookSpec {
        argv,
        timeout,
        env: inherited_env(std::env::vars_os()),
    }
}

/// Runs a hook with retries for channel `1000`, owning everything so it can
/// be spawned.
async fn deliver(
    spec: HookSpec,
    group: &'static str,
    token: PublishedToken,
    retry: HookRetry,
    clock: SharedClock,
    cancel: CancellationToken,
) -> HookReport {
    let channel = ChannelId::new("1000");
    let group = GroupName::new(group);
    let run = HookRun {
        channel: &channel,
        group: &group,
        token: &token,
    };
    hook::run_with_retries(&spec, &run, &retry, &clock, &cancel).await
}

/// Awaits `run`, moving the clock to each deadline it sleeps on (the
/// backoff between attempts) as soon as it sleeps.
async fn drive<T>(clock: &ManualClock, mut run: tokio::task::JoinHandle<T>) -> T {
    loop {
        tokio::select! {
            out = &mut run => return out.unwrap(),
            due = clock.next_deadline() => {
                if due > clock.now() {
                    clock.set(due);
                }
                // A woken sleeper stays listed until its task runs: let it.
                tokio::task::yield_now().await;
            }
        }
    }
}

async fn once(spec: &HookSpec, group: &str, token: &PublishedToken) -> hook::HookAttempt {
    let channel = ChannelId::new("1000");
    let group = GroupName::new(group);
    let run = HookRun {
        channel: &channel,
        group: &group,
        token,
    };
    hook::run_once(spec, &run).await
}

/// A named pipe that a hook opens for writing as fd 3 (`exec 3> "$PIPE"`)
/// and passes on to everything it starts.
struct Lifeline {
    path: PathBuf,
}

impl Lifeline {
    fn new(dir: &Path) -> Self {
        let path = dir.join("lifeline");
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        Self { path }
    }

    /// Opens the read end; the returned task yields the reader once a hook
    /// has opened the write end.
    fn open(&self) -> tokio::task::JoinHandle<BufReader<fs::File>> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || BufReader::new(fs::File::open(path).unwrap()))
    }
}

/// Reads one line (blocking on a thread).
async fn read_line(mut reader: BufReader<fs::File>) -> (String, BufReader<fs::File>) {
    tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        (line, reader)
    })
    .await
    .unwrap()
}

/// Reads to the end: returns once every process holding the write end has
/// exited. Bounded so a broken kill fails the test instead of hanging it.
async fn until_all_holders_exit(mut reader: BufReader<fs::File>) {
    let read = tokio::task::spawn_blocking(move || {
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap();
    });
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("a process of the hook survived")
        .unwrap();
}

/// Waits until `pid` is gone or a zombie, for at most 30 s; false if it is
/// still running then. A process closes its files (the lifeline) early in
/// its exit and turns zombie only after: on a busy machine `/proc` shows it
/// running for a while after the lifeline's end (a loaded suite run saw
/// exactly that).
async fn dies(pid: &str) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !is_dead(pid) {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// True when `pid` is gone or a zombie waiting to be reaped.
fn is_dead(pid: &str) -> bool {
    match fs::read_to_string(format!("/proc/{}/stat", pid.trim())) {
        Err(_) => true,
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

#[tokio::test]
async fn the_hook_gets_the_token_on_stdin_only_and_the_metadata_in_its_environment() {
    let dir = TempDir::new().unwrap();
    let out = dir.path();
    let s = script(
        out,
        "record.sh",
        r#"cat > "$1/stdin"; env > "$1/env"; printf '%s\n' "$0" "$@" > "$1/argv""#,
    );
    let token = published(TOKEN, "kid-42");
    let attempt = once(
        &spec(&s, &[out.to_str().unwrap()], Duration::from_secs(30)),
        "backend",
        &token,
    )
    .await;
    assert_eq!(attempt.outcome, HookOutcome::Succeeded);

    assert_eq!(fs::read_to_string(out.join("stdin")).unwrap(), TOKEN);
    let env = fs::read_to_string(out.join("env")).unwrap();
    let vars: Vec<&str> = env.lines().collect();
    for expected in [
        "LINETOKD_CHANNEL=1000",
        "LINETOKD_GROUP=backend",
        "LINETOKD_KEY_ID=kid-42",
        "LINETOKD_EXPIRES_AT=2026-03-31T00:00:00Z",
    ] {
        assert!(vars.contains(&expected), "{expected} missing from {env}");
    }
    // Not the daemon's whole environment: cargo runs this test with
    // CARGO_* variables set, and none reaches the hook.
    let daemon_only: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("CARGO"))
        .collect();
    assert!(!daemon_only.is_empty());
    for name in &daemon_only {
        assert!(
            !vars.iter().any(|v| v.starts_with(&format!("{name}="))),
            "{name} leaked into the hook's environment"
        );
    }
    assert!(!env.contains(TOKEN), "the token is in the environment");
    assert!(
        !fs::read_to_string(out.join("argv"))
            .unwrap()
            .contains(TOKEN)
    );
}

#[tokio::test]
async fn argv_is_passed_verbatim_and_never_through_a_shell() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("args");
    let s = script(
        dir.path(),
        "args.sh",
        r#"out="$1"; shift; for a in "$@"; do printf '<%s>\n' "$a"; done > "$out""#,
    );
    let args = [
        out.to_str().unwrap(),
        "a; touch pwned",
        "$HOME",
        "two words",
        "*",
        "`id`",
        "",
    ];
    // The script itself is argv[0], run by its shebang line.
    let mut argv = vec![s.display().to_string()];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    let spec = HookSpec {
        argv,
        timeout: Duration::from_secs(30),
        env: inherited_env(std::env::vars_os()),
    };
    let token = published(TOKEN, "kid-1");
    let mut attempt = once(&spec, "backend", &token).await;
    // See `spec`: a concurrent fork elsewhere in the test binary can make a
    // fresh script briefly unexecutable (ETXTBSY). That is the test's race,
    // not the hook runner's, so it is given a few more chances.
    for _ in 0..5 {
        match &attempt.outcome {
            HookOutcome::SpawnFailed { reason } if reason.contains("busy") => {
                attempt = once(&spec, "backend", &token).await;
            }
            _ => break,
        }
    }
    assert_eq!(attempt.outcome, HookOutcome::Succeeded, "{attempt:?}");
    assert_eq!(
        fs::read_to_string(&out).unwrap(),
        "<a; touch pwned>\n<$HOME>\n<two words>\n<*>\n<`id`>\n<>\n"
    );
    assert!(!dir.path().join("pwned").exists());
}

#[tokio::test]
async fn a_hook_past_its_timeout_is_killed_with_everything_it_started() {
    let dir = TempDir::new().unwrap();
    let life = Lifeline::new(dir.path());
    let reader = life.open();
    // The script and the sleep it starts in the background both hold the
    // lifeline (fd 3) and record their PIDs, then the script waits.
    let s = script(
        dir.path(),
        "hang.sh",
        r#"exec 3> "$1"
echo $$ > "$2/leader.pid"
sleep 600 &
echo $! > "$2/child.pid"
echo started >&3
wait"#,
    );
    let token = published(TOKEN, "kid-1");
    let spec = spec(
        &s,
        &[life.path.to_str().unwrap(), dir.path().to_str().unwrap()],
        Duration::from_millis(1500),
    );
    let attempt = once(&spec, "backend", &token).await;
    assert_eq!(
        attempt.outcome,
        HookOutcome::TimedOut {
            after: Duration::from_millis(1500)
        }
    );
    let (started, reader) = read_line(reader.await.unwrap()).await;
    assert_eq!(started, "started\n", "the script ran to its wait");
    until_all_holders_exit(reader).await;
    for pid_file in ["leader.pid", "child.pid"] {
        let pid = fs::read_to_string(dir.path().join(pid_file)).unwrap();
        assert!(
            dies(&pid).await,
            "{pid_file} ({}) is still running",
            pid.trim()
        );
    }
}

#[tokio::test]
async fn a_failing_hook_is_retried_with_backoff_on_the_clock_then_reported_failed() {
    let dir = TempDir::new().unwrap();
    let count = dir.path().join("count");
    let s = script(
        dir.path(),
        "fail.sh",
        r#"echo run >> "$1"; echo "backend refused the reload" >&2; exit 3"#,
    );
    let clock = support::manual_clock();
    let shared: SharedClock = Arc::new(clock.clone());
    let retry = HookRetry {
        attempts: 3,
        base: Duration::from_secs(10),
        cap: Duration::from_secs(60),
    };
    let run = tokio::spawn(deliver(
        spec(&s, &[count.to_str().unwrap()], Duration::from_secs(30)),
        "backend",
        published(TOKEN, "kid-1"),
        retry,
        shared,
        CancellationToken::new(),
    ));
    let report = drive(&clock, run).await;
    assert_eq!(fs::read_to_string(&count).unwrap(), "run\n".repeat(3));
    assert_eq!(report.attempts, 3);
    assert_eq!(report.last.outcome, HookOutcome::Exited { code: 3 });
    assert!(!report.is_success());
    assert_eq!(
        report.summary(),
        "hook exited with status 3 (3 attempts): backend refused the reload"
    );
    // Waited 10 s then 20 s of clock time, and not after the last attempt.
    assert_eq!(
        clock.now() - support::start_time(),
        chrono::Duration::seconds(30)
    );
}

#[tokio::test]
async fn a_hook_that_fails_once_succeeds_on_the_retry() {
    let dir = TempDir::new().unwrap();
    let count = dir.path().join("count");
    let s = script(
        dir.path(),
        "flaky.sh",
        r#"echo run >> "$1"; [ "$(wc -l < "$1")" -ge 2 ]"#,
    );
    let clock = support::manual_clock();
    let run = tokio::spawn(deliver(
        spec(&s, &[count.to_str().unwrap()], Duration::from_secs(30)),
        "backend",
        published(TOKEN, "kid-1"),
        HookRetry::default(),
        Arc::new(clock.clone()),
        CancellationToken::new(),
    ));
    let report = drive(&clock, run).await;
    assert!(report.is_success(), "{report:?}");
    assert_eq!(report.attempts, 2);
    assert_eq!(report.summary(), "hook succeeded (2 attempts)");
}

#[tokio::test]
async fn cancelling_during_the_backoff_stops_the_retries() {
    let dir = TempDir::new().unwrap();
    let count = dir.path().join("count");
    let s = script(dir.path(), "fail.sh", r#"echo run >> "$1"; exit 1"#);
    let clock = support::manual_clock();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(deliver(
        spec(&s, &[count.to_str().unwrap()], Duration::from_secs(30)),
        "backend",
        published(TOKEN, "kid-1"),
        HookRetry::default(),
        Arc::new(clock.clone()),
        cancel.clone(),
    ));
    // The run sleeps before its second attempt: supersede it.
    clock.next_deadline().await;
    cancel.cancel();
    let report = run.await.unwrap();
    assert_eq!(report.last.outcome, HookOutcome::Cancelled);
    assert_eq!(report.attempts, 1);
    assert_eq!(fs::read_to_string(&count).unwrap(), "run\n");
}

#[test]
fn an_echoed_token_is_redacted_in_the_captured_output_and_the_log() {
    let logs = Arc::new(Mutex::new(Vec::<u8>::new()));
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("linetokd=debug")
        .with_ansi(false)
        .with_writer(move || LogWriter(writer.clone()))
        .finish();
    // See line_client.rs: a second live dispatcher keeps a parallel test
    // thread from caching "no interest" for these callsites.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let _guard = tracing::subscriber::set_default(subscriber);
    // Parallel tests may have cached "nobody listens" for these callsites.
    tracing::callsite::rebuild_interest_cache();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = TempDir::new().unwrap();
    let s = script(
        dir.path(),
        "echo.sh",
        r#"t="$(cat)"; echo "got $t"; echo "cannot use $t" >&2; exit 1"#,
    );
    let token = published(TOKEN, "kid-7");
    let attempt = runtime.block_on(once(
        &spec(&s, &[], Duration::from_secs(30)),
        "backend",
        &token,
    ));
    let mark = format!("[token sha256:{}]", token.token.fingerprint());
    assert_eq!(attempt.outcome, HookOutcome::Exited { code: 1 });
    assert_eq!(attempt.stdout, format!("got {mark}\n"));
    assert_eq!(attempt.stderr, format!("cannot use {mark}\n"));

    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(!logs.contains(TOKEN), "the token reached the log: {logs}");
    assert!(logs.contains(&format!("got {mark}")), "{logs}");
    assert!(logs.contains("hook stderr"), "{logs}");
    assert!(logs.contains("key_id=\"kid-7\""), "{logs}");
    assert!(logs.contains("exited with status 1"), "{logs}");
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

#[tokio::test]
async fn a_hanging_hook_does_not_delay_another_groups_hook() {
    let dir = TempDir::new().unwrap();
    let life = Lifeline::new(dir.path());
    let reader = life.open();
    let hang = script(
        dir.path(),
        "hang.sh",
        r#"exec 3> "$1"; echo started >&3; exec sleep 600"#,
    );
    let b_out = dir.path().join("b-token");
    let quick = script(dir.path(), "quick.sh", r#"cat > "$1""#);
    let clock: SharedClock = Arc::new(support::manual_clock());
    let cancel_a = CancellationToken::new();
    let a = tokio::spawn(deliver(
        spec(
            &hang,
            &[life.path.to_str().unwrap()],
            Duration::from_secs(600),
        ),
        "a",
        published("token-of-a", "kid-a"),
        HookRetry::default(),
        clock.clone(),
        cancel_a.clone(),
    ));
    // A is running (and will not end by itself) before B starts.
    let (started, reader) = read_line(reader.await.unwrap()).await;
    assert_eq!(started, "started\n");

    let b = tokio::spawn(deliver(
        spec(&quick, &[b_out.to_str().unwrap()], Duration::from_secs(30)),
        "b",
        published("token-of-b", "kid-b"),
        HookRetry::default(),
        clock,
        CancellationToken::new(),
    ));
    let b = b.await.unwrap();
    assert!(b.is_success(), "{b:?}");
    assert_eq!(fs::read_to_string(&b_out).unwrap(), "token-of-b");
    assert!(!a.is_finished(), "A's hook should still be hanging");

    // Cancelling A (a newer token, or shutdown) kills its hook.
    cancel_a.cancel();
    let a = a.await.unwrap();
    assert_eq!(a.last.outcome, HookOutcome::Cancelled);
    until_all_holders_exit(reader).await;
}

#[tokio::test]
async fn a_missing_program_is_a_spawn_failure_naming_it() {
    let spec = HookSpec {
        argv: vec!["/nonexistent/reload-backend".into()],
        timeout: Duration::from_secs(5),
        env: Vec::new(),
    };
    let attempt = once(&spec, "backend", &published(TOKEN, "kid-1")).await;
    match attempt.outcome {
        HookOutcome::SpawnFailed { reason } => {
            assert!(reason.contains("/nonexistent/reload-backend"), "{reason}");
        }
        other => panic!("expected a spawn failure, got {other:?}"),
    }
}

fn issued(key_id: &str, value: &str) -> IssuedToken {
    let at = support::start_time();
    IssuedToken {
        key_id: KeyId::new(key_id),
        value: AccessToken::new(value),
        issued_at: at,
        expires_at: at + chrono::Duration::days(30),
        verified_at: Some(at),
    }
}

#[test]
fn hook_events_are_recorded_and_a_groups_latest_hook_result_is_found() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(&dir.path().join("linetokd.db")).unwrap();
    let t0 = support::start_time();
    let channel = ChannelId::new("1000");
    let (backend, crm) = (GroupName::new("backend"), GroupName::new("crm"));
    store
        .sync_config(
            t0,
            &[ChannelSpec {
                id: channel.clone(),
                name: "shop-bot".into(),
                groups: vec![backend.clone(), crm.clone()],
                fingerprint: None,
                short_lived: Vec::new(),
            }],
        )
        .unwrap();
    let intent = store.begin_issue(t0, &channel, &backend).unwrap();
    store
        .complete_issue(t0, intent, &issued("kid-1", TOKEN), &[])
        .unwrap();
    let event = |group: &GroupName, kind, detail: &str| NewEvent {
        channel_id: channel.clone(),
        group: Some(group.clone()),
        key_id: Some(KeyId::new("kid-1")),
        kind,
        detail: detail.into(),
    };
    let hooks = [EventKind::HookSucceeded, EventKind::HookFailed];
    assert_eq!(
        store
            .latest_group_event(&channel, &backend, &hooks)
            .unwrap(),
        None
    );
    store
        .record_event(
            t0,
            &event(
                &backend,
                EventKind::HookSucceeded,
                "hook succeeded (1 attempt)",
            ),
        )
        .unwrap();
    // A hook's stderr that somehow holds the token is withheld.
    store
        .record_event(
            t0,
            &event(
                &backend,
                EventKind::HookFailed,
                &format!("hook exited with status 1: {TOKEN}"),
            ),
        )
        .unwrap();
    store
        .record_event(t0, &event(&backend, EventKind::Verified, ""))
        .unwrap();
    store
        .record_event(t0, &event(&crm, EventKind::HookSucceeded, "ok"))
        .unwrap();

    let latest = store
        .latest_group_event(&channel, &backend, &hooks)
        .unwrap()
        .unwrap();
    assert_eq!(latest.kind, EventKind::HookFailed);
    assert!(!latest.detail.contains(TOKEN), "{}", latest.detail);
    let crm_latest = store
        .latest_group_event(&channel, &crm, &hooks)
        .unwrap()
        .unwrap();
    assert_eq!(crm_latest.kind, EventKind::HookSucceeded);
    assert_eq!(crm_latest.detail, "ok");
    // The kinds round-trip through their stored names.
    let kinds: Vec<EventKind> = store
        .recent_events(10)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(kinds.contains(&EventKind::HookSucceeded) && kinds.contains(&EventKind::HookFailed));
    for kind in hooks {
        assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
    }
}

#[test]
fn a_database_with_hook_events_is_refused_by_a_binary_that_predates_them() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("linetokd.db");
    drop(Store::open(&path).unwrap());
    let mut conn = rusqlite::Connection::open(&path).unwrap();
    // What linetokd before hook events would run at open: the migrations
    // before the hook events' one (version 3).
    let older = &MIGRATIONS[..2];
    let err = migrate::apply(&mut conn, older).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::TooNew {
                found,
                known: 2,
                ..
            } if found == migrate::latest_version()
        ),
        "{err:?}"
    );
    assert_eq!(
        migrate::schema_version(&conn).unwrap(),
        migrate::latest_version()
    );
}

#[tokio::test]
async fn a_background_child_dies_when_the_hook_exits_whether_it_succeeded_or_failed() {
    for (code, expected) in [
        (0, HookOutcome::Succeeded),
        (3, HookOutcome::Exited { code: 3 }),
    ] {
        let dir = TempDir::new().unwrap();
        let life = Lifeline::new(dir.path());
        let reader = life.open();
        // The child holds the lifeline (fd 3) and outlives the script
        // unless the daemon ends the hook's process group.
        let s = script(
            dir.path(),
            "leaves-a-child.sh",
            &format!(
                r#"exec 3> "$1"
sleep 1000 &
echo $! > "$2/child.pid"
exit {code}"#
            ),
        );
        let token = published(TOKEN, "kid-1");
        let spec = spec(
            &s,
            &[life.path.to_str().unwrap(), dir.path().to_str().unwrap()],
            Duration::from_secs(60),
        );
        let attempt = once(&spec, "backend", &token).await;
        assert_eq!(attempt.outcome, expected);
        // Returns once every holder of the lifeline is gone (bounded).
        until_all_holders_exit(reader.await.unwrap()).await;
        let pid = fs::read_to_string(dir.path().join("child.pid")).unwrap();
        assert!(dies(&pid).await, "the hook's child {} survived", pid.trim());
    }
}

#[tokio::test]
async fn encodings_of_the_token_are_redacted_in_the_captured_output() {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    // A token whose base64 forms differ between the alphabets and need
    // padding, and whose percent-encoding differs from it.
    let value = "eyJhbGciOiJSUzI1NiJ9.p?q>r~s.sig";
    let hex: String = value.bytes().map(|b| format!("{b:02x}")).collect();
    let percent: String = value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let every: String = value.bytes().map(|b| format!("%{b:02x}")).collect();
    let forms = [
        STANDARD.encode(value),
        STANDARD_NO_PAD.encode(value),
        URL_SAFE.encode(value),
        URL_SAFE_NO_PAD.encode(value),
        hex.clone(),
        hex.to_uppercase(),
        percent,
        every,
    ];
    assert_ne!(
        forms[0], forms[2],
        "the alphabets must differ for this test"
    );
    assert_ne!(forms[0], forms[1], "padding must be needed for this test");
    let dir = TempDir::new().unwrap();
    let printed = dir.path().join("printed");
    fs::write(
        &printed,
        forms
            .iter()
            .map(|f| format!("x {f} y\n"))
            .collect::<String>(),
    )
    .unwrap();
    let s = script(
        dir.path(),
        "encodes.sh",
        r#"cat > /dev/null; cat "$1"; cat "$1" >&2"#,
    );
    let token = published(value, "kid-enc");
    let attempt = once(
        &spec(&s, &[printed.to_str().unwrap()], Duration::from_secs(30)),
        "backend",
        &token,
    )
    .await;
    assert_eq!(attempt.outcome, HookOutcome::Succeeded);
    let mark = format!("x [token sha256:{}] y\n", token.token.fingerprint());
    for output in [&attempt.stdout, &attempt.stderr] {
        assert_eq!(
            *output,
            mark.repeat(forms.len()),
            "not all forms were redacted"
        );
    }
}

/// Through the delivery service: a run that failed every attempt raises
/// `hook_failing` for the group (one alert, whatever the attempts); a later
/// run for a newer token that succeeds resolves it.
#[tokio::test]
async fn a_run_failing_every_attempt_raises_hook_failing_and_a_newer_tokens_success_resolves_it() {
    use linetokd::delivery::{Delivery, GroupDelivery, TokenBook};
    use linetokd::metrics::Metrics;
    use linetokd::policy::IssueReason;
    use linetokd::rotator::RotationEvent;
    use std::collections::HashMap;
    use tokio::sync::broadcast;

    let dir = TempDir::new().unwrap();
    let count = dir.path().join("count");
    let fixed = dir.path().join("fixed");
    let s = script(
        dir.path(),
        "reload.sh",
        r#"echo run >> "$1"; [ -e "$2" ] && exit 0; echo "backend refused the reload" >&2; exit 3"#,
    );
    let channel = ChannelId::new("1000");
    let group = GroupName::new("backend");
    let clock = support::manual_clock();
    let store = Store::open(&dir.path().join("linetokd.db")).unwrap();
    let delivery = Delivery::new(
        TokenBook::new(),
        store.clone(),
        Arc::new(clock.clone()),
        Metrics::shared(),
        HashMap::from([(
            (channel.clone(), group.clone()),
            GroupDelivery {
                sinks: Vec::new(),
                hook: Some(spec(
                    &s,
                    &[count.to_str().unwrap(), fixed.to_str().unwrap()],
                    Duration::from_secs(30),
                )),
            },
        )]),
        HookRetry {
            attempts: 3,
            base: Duration::from_secs(10),
            cap: Duration::from_secs(60),
        },
    );
    let (events, receiver) = broadcast::channel(16);
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(Arc::clone(&delivery).run(receiver, shutdown.clone()));
    let issue = |key_id: &str| {
        let at = clock.now();
        events
            .send(RotationEvent::Issued {
                channel: channel.clone(),
                group: group.clone(),
                key_id: KeyId::new(key_id),
                token: AccessToken::new(TOKEN),
                issued_at: at,
                expires_at: at + chrono::Duration::days(30),
                reason: IssueReason::NoCurrent,
                verified: true,
                condemned: Vec::new(),
            })
            .unwrap();
    };

    issue("kid-1");
    let firing = support::firing_until(&store, Some(&clock), |f| !f.is_empty()).await;
    // Raised only once every attempt had failed, 10 s then 20 s apart.
    assert_eq!(fs::read_to_string(&count).unwrap(), "run\n".repeat(3));
    let [alert] = firing.as_slice() else {
        panic!("one alert expected: {firing:#?}")
    };
    assert_eq!(alert.alertname, "hook_failing");
    assert_eq!(alert.channel_id.as_ref(), Some(&channel));
    assert_eq!(alert.group.as_ref(), Some(&group));
    assert_eq!(alert.label, None);
    assert_eq!(alert.severity, "warning");
    assert_eq!(alert.resolved_at, None);
    assert_eq!(
        alert.started_at,
        support::start_time() + chrono::Duration::seconds(30)
    );
    assert_eq!(
        alert.summary,
        "the on_rotate hook failed for token kid-1: \
         hook exited with status 3 (3 attempts): backend refused the reload"
    );

    // The backend is fixed; the next token's hook succeeds at once.
    fs::write(&fixed, "").unwrap();
    issue("kid-2");
    support::firing_until(&store, Some(&clock), <[_]>::is_empty).await;
    assert_eq!(fs::read_to_string(&count).unwrap(), "run\n".repeat(4));
    let events = store.events_of_channel(&channel, 100).unwrap();
    let kinds: Vec<EventKind> = events.iter().rev().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EventKind::HookFailed,
            EventKind::AlertRaised,
            EventKind::HookSucceeded,
            EventKind::AlertResolved,
        ],
        "{events:#?}"
    );
    for e in &events {
        assert!(!e.detail.contains(TOKEN), "{e:?}");
    }

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the delivery service stops")
        .unwrap();
}
