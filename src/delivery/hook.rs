//! Rotation hooks: a group's `on_rotate` program, run after each new token
//! (docs/design.md section 6, issue 4 item 2).
//!
//! # What a hook gets
//!
//! - **argv, no shell**: `argv[0]` is the program (looked up in the hook's
//!   `PATH` when it has no slash), the rest are its arguments verbatim; a `;`
//!   or `$` in an argument is just a character.
//! - **The token on stdin, only**: exactly the token's bytes, no trailing
//!   newline, then end of file. Never in argv or the environment, where
//!   `ps` and `/proc/<pid>/environ` would show it.
//! - **A small environment**: the daemon's environment is *not* inherited.
//!   The hook sees [`HookSpec::env`] (which `app` fills from the daemon's own
//!   environment through [`inherited_env`]: `PATH`, `HOME`, locale, `TZ`,
//!   `TMPDIR`) plus `LINETOKD_CHANNEL`, `LINETOKD_GROUP`, `LINETOKD_KEY_ID`
//!   and `LINETOKD_EXPIRES_AT` (RFC 3339, UTC, whole seconds). Anything else
//!   the daemon was started with (its `LINETOKD__*` overrides, a service
//!   manager's credential paths) stays out of reach of a third-party script.
//! - **Its own process group, ended with the hook**: the hook is started as
//!   the leader of a new process group. When the hook's main process exits
//!   (success or failure), when [`HookSpec::timeout`] passes, or when the run
//!   is cancelled (its future dropped), the whole group gets `SIGKILL`, so a
//!   `sleep 1000 &` the script left behind dies with it instead of
//!   outliving every rotation. A descendant that leaves the group on purpose
//!   (`setsid`, a daemonizing double fork) survives: a hook must not start
//!   long-lived processes.
//!
//!   The group is signalled while its leader is still unreaped (a zombie):
//!   the exit is noticed with `waitid(WNOWAIT)` on `SIGCHLD`, the group
//!   killed, and only then the leader reaped. A zombie leader pins its PID,
//!   so the group ID cannot have been reused by an unrelated process.
//!
//! # Output
//!
//! stdout and stderr are captured, keeping the last [`OUTPUT_TAIL_BYTES`] of
//! each, and logged line by line (stdout at info, stderr at warn) with the
//! channel, group and key ID. Before anything is kept or logged, every
//! occurrence of the token value is replaced by its fingerprint, so a hook
//! that echoes its stdin cannot put the token into the log. The common
//! encodings of the whole token are screened too ([`token_forms`]): standard
//! and URL-safe base64 with and without padding, percent-encoding (of the
//! reserved bytes, and of every byte) and hex, each in upper and lower case
//! where case is free. A transformation beyond those (the token base64'd
//! together with other bytes, encrypted, split over lines) cannot be
//! screened: a hook should not print what it got on stdin.
//!
//! # Retries
//!
//! [`run_with_retries`] runs a failing hook again with exponential backoff
//! ([`HookRetry`]), sleeping on the injected [`Clock`](crate::clock::Clock)
//! so tests move a manual clock instead of waiting. A
//! [`CancellationToken`] stops it at once, killing a running attempt: the
//! delivery service cancels a group's run when a newer token arrives (the
//! new run delivers the newer token anyway) and at shutdown.
//!
//! The process timeout itself is real elapsed time (tokio's timer), not the
//! injected clock: it bounds how long a real program runs.
//!
//! Depends on `domain`, `clock` and [`super::published`]; reads no config
//! and no environment (`app` passes both in).

use std::ffi::OsString;
use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use chrono::SecondsFormat;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStdin, Command};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::published::PublishedToken;
use crate::clock::SharedClock;
use crate::domain::{ChannelId, GroupName};

/// How much of each output stream is kept (the end of it).
pub const OUTPUT_TAIL_BYTES: usize = 4096;

/// How long to keep reading a hook's output after it exited or was killed:
/// a grandchild that still holds the pipes open must not hold up the run.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// The variables of the daemon's environment a hook inherits (when set):
/// enough to find programs and format text, nothing that configures the
/// daemon.
pub const INHERITED_ENV: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR"];

/// The part of an environment a hook inherits: the [`INHERITED_ENV`]
/// variables among `vars`. `app` calls it with `std::env::vars_os()`:
/// names and values need not be UTF-8 (a `PATH` entry or `HOME` may not
/// be), and are passed on byte for byte.
pub fn inherited_env(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Vec<(OsString, OsString)> {
    vars.into_iter()
        .filter(|(name, _)| INHERITED_ENV.iter().any(|n| name.as_os_str() == *n))
        .collect()
}

/// A group's hook, as `app` derives it from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookSpec {
    /// The program and its arguments; never run through a shell. Must not
    /// be empty (the config refuses an empty `on_rotate`; an empty argv here
    /// fails the run as [`HookOutcome::SpawnFailed`]).
    pub argv: Vec<String>,
    /// How long one attempt may run before its process group is killed.
    pub timeout: Duration,
    /// The base environment, before the `LINETOKD_*` variables are added;
    /// usually [`inherited_env`] of the daemon's.
    pub env: Vec<(OsString, OsString)>,
}

/// One delivery to run a hook for: which group, which token.
#[derive(Debug, Clone, Copy)]
pub struct HookRun<'a> {
    /// The channel.
    pub channel: &'a ChannelId,
    /// The group.
    pub group: &'a GroupName,
    /// The new token (its value goes to stdin, its key ID and expiry to the
    /// environment).
    pub token: &'a PublishedToken,
}

/// How one attempt, or a whole run, ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    /// The hook exited with status 0.
    Succeeded,
    /// The hook exited with a non-zero status.
    Exited {
        /// Its exit status.
        code: i32,
    },
    /// The hook was killed by a signal it did not get from us.
    Signalled {
        /// The signal number.
        signal: i32,
    },
    /// The hook ran past its timeout; its process group was killed.
    TimedOut {
        /// The timeout that passed.
        after: Duration,
    },
    /// The hook could not be started (missing program, not executable, ...).
    SpawnFailed {
        /// Why, in words; never holds the token (it is in neither argv nor
        /// the environment).
        reason: String,
    },
    /// The run was cancelled (a newer token, or shutdown) before it ended.
    Cancelled,
}

impl HookOutcome {
    /// True for [`HookOutcome::Succeeded`].
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Succeeded)
    }

    fn from_status(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(0), _) => Self::Succeeded,
            (Some(code), _) => Self::Exited { code },
            (None, Some(signal)) => Self::Signalled { signal },
            // Neither code nor signal does not happen on unix for a waited
            // process; reporting it as a failure is the safe reading.
            (None, None) => Self::Exited { code: -1 },
        }
    }
}

impl fmt::Display for HookOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Succeeded => f.write_str("succeeded"),
            Self::Exited { code } => write!(f, "exited with status {code}"),
            Self::Signalled { signal } => write!(f, "killed by signal {signal}"),
            Self::TimedOut { after } => {
                write!(
                    f,
                    "timed out after {} and was killed",
                    humantime::format_duration(*after)
                )
            }
            Self::SpawnFailed { reason } => write!(f, "could not be started: {reason}"),
            Self::Cancelled => f.write_str("cancelled"),
        }
    }
}

/// One attempt: how it ended and the end of what it printed (token values
/// already replaced by the token's fingerprint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookAttempt {
    /// How it ended.
    pub outcome: HookOutcome,
    /// The last [`OUTPUT_TAIL_BYTES`] of stdout, redacted.
    pub stdout: String,
    /// The last [`OUTPUT_TAIL_BYTES`] of stderr, redacted.
    pub stderr: String,
}

/// Runs the hook once for `run`: spawn, token to stdin, wait up to the
/// timeout, kill the process group if it passes, log the output and the
/// outcome.
///
/// Cancel-safe: dropping the future kills the hook's process group.
pub async fn run_once(spec: &HookSpec, run: &HookRun<'_>) -> HookAttempt {
    let attempt = attempt(spec, run).await;
    log_attempt(spec, run, &attempt);
    attempt
}

async fn attempt(spec: &HookSpec, run: &HookRun<'_>) -> HookAttempt {
    let forms = token_forms(run.token.token.expose().as_bytes());
    let marker = format!("[token sha256:{}]", run.token.token.fingerprint());
    let mut stdout = Tail::new(&forms, marker.as_bytes());
    let mut stderr = Tail::new(&forms, marker.as_bytes());
    let outcome = supervise(spec, run, &mut stdout, &mut stderr).await;
    HookAttempt {
        outcome,
        stdout: stdout.finish(),
        stderr: stderr.finish(),
    }
}

/// Spawns the hook and waits for it, feeding `stdout`/`stderr` as output
/// arrives.
async fn supervise(
    spec: &HookSpec,
    run: &HookRun<'_>,
    stdout: &mut Tail<'_>,
    stderr: &mut Tail<'_>,
) -> HookOutcome {
    let Some((program, args)) = spec.argv.split_first() else {
        return HookOutcome::SpawnFailed {
            reason: "the hook's argv is empty".to_owned(),
        };
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .env("LINETOKD_CHANNEL", run.channel.as_str())
        .env("LINETOKD_GROUP", run.group.as_str())
        .env("LINETOKD_KEY_ID", run.token.key_id.as_str())
        .env(
            "LINETOKD_EXPIRES_AT",
            run.token
                .expires_at
                .to_rfc3339_opts(SecondsFormat::Secs, true),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A new process group led by the hook, so a timeout can kill
        // everything it started; kill_on_drop covers the leader if the
        // future is dropped before the group guard is set up.
        .process_group(0)
        .kill_on_drop(true);
    // Listening for SIGCHLD before the hook exists, so its exit cannot be
    // missed: the exit is noticed without reaping (see `exited`), which
    // lets the group be killed while the zombie leader still pins its ID.
    let mut sigchld = match signal(SignalKind::child()) {
        Ok(s) => s,
        Err(e) => {
            return HookOutcome::SpawnFailed {
                reason: format!("cannot watch for the hook's exit (SIGCHLD): {e}"),
            };
        }
    };
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            return HookOutcome::SpawnFailed {
                reason: format!("{program}: {e}"),
            };
        }
    };
    let mut group = GroupKiller::new(child.id());
    let stdin = child.stdin.take();
    let out_pipe = child.stdout.take();
    let err_pipe = child.stderr.take();
    let token = run.token.token.expose().as_bytes();

    let io = async {
        tokio::join!(
            feed(stdin, token),
            drain(out_pipe, stdout),
            drain(err_pipe, stderr)
        )
    };
    tokio::pin!(io);
    let mut io_done = false;
    let deadline = tokio::time::Instant::now() + spec.timeout;
    let timed_out = loop {
        match group.exited() {
            Ok(true) => break false,
            Ok(false) => {}
            Err(e) => {
                // Cannot tell without reaping: fall back to waiting for
                // the leader, then the group is killed after all.
                tracing::debug!(error = %e, "waitid on a hook failed; waiting for it instead");
                break tokio::select! {
                    _ = child.wait() => false,
                    () = tokio::time::sleep_until(deadline) => true,
                };
            }
        }
        tokio::select! {
            _ = sigchld.recv() => {}
            _ = &mut io, if !io_done => io_done = true,
            () = tokio::time::sleep_until(deadline) => break true,
        }
    };
    // The leader has exited (or ran out of time) and is not reaped yet:
    // end whatever it left running in its group. Should the group signal
    // fail, the leader at least must go.
    group.kill();
    let _ = child.start_kill();
    // SIGKILL cannot be caught, so this returns promptly; it reaps the
    // leader so no zombie is left behind.
    let waited = child.wait().await;
    // The leader is reaped: its PID may be reused from here on, so the
    // group must not be signalled any more.
    group.disarm();
    let outcome = if timed_out {
        HookOutcome::TimedOut {
            after: spec.timeout,
        }
    } else {
        match waited {
            Ok(status) => HookOutcome::from_status(status),
            Err(e) => HookOutcome::SpawnFailed {
                reason: format!("waiting for {program}: {e}"),
            },
        }
    };
    if !io_done {
        // Output written just before the exit is still in the pipes; a
        // descendant outside the group holding them open is given up on
        // after a grace.
        let _ = tokio::time::timeout(OUTPUT_GRACE, &mut io).await;
    }
    outcome
}

/// Writes the token to the hook's stdin and closes it. A hook that exits
/// without reading its stdin is its own business, so write errors
/// (a broken pipe) are ignored.
async fn feed(stdin: Option<ChildStdin>, token: &[u8]) {
    if let Some(mut stdin) = stdin {
        let _ = stdin.write_all(token).await;
        let _ = stdin.shutdown().await;
    }
}

/// Reads `pipe` to its end into `tail`. A read error ends the reading: the
/// output is diagnostics, never worth failing the run over.
async fn drain(pipe: Option<impl AsyncRead + Unpin>, tail: &mut Tail<'_>) {
    let Some(mut pipe) = pipe else { return };
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => tail.push(&buf[..n]),
        }
    }
}

/// Sends `SIGKILL` to the hook's process group when told to, or when dropped
/// while armed (the run's future was dropped: cancellation).
struct GroupKiller {
    pgid: Option<rustix::process::Pid>,
}

impl GroupKiller {
    fn new(leader: Option<u32>) -> Self {
        let pgid = leader
            .and_then(|pid| i32::try_from(pid).ok())
            .and_then(rustix::process::Pid::from_raw);
        Self { pgid }
    }

    /// True once the leader has exited, without reaping it
    /// (`waitid(P_PID, WEXITED | WNOWAIT | WNOHANG)`).
    fn exited(&self) -> std::io::Result<bool> {
        let Some(pid) = self.pgid else {
            return Ok(true);
        };
        use rustix::process::{WaitId, WaitIdOptions, waitid};
        let options = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT | WaitIdOptions::NOHANG;
        Ok(waitid(WaitId::Pid(pid), options)?.is_some())
    }

    fn kill(&mut self) {
        if let Some(pgid) = self.pgid {
            // ESRCH (the group is already gone) is the outcome we wanted.
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
    }

    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The token and the encodings of it a hook might print, longest first
/// (so a padded base64 form is replaced whole before its unpadded prefix),
/// without duplicates and without empty strings.
///
/// Standard and URL-safe base64, each with and without padding; hex in
/// lower and upper case; percent-encoding of every byte outside RFC 3986's
/// unreserved set, and of every byte, each with lower- and upper-case hex.
pub fn token_forms(token: &[u8]) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    if token.is_empty() {
        return Vec::new();
    }
    let mut forms: Vec<Vec<u8>> = vec![token.to_vec()];
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        forms.push(engine.encode(token).into_bytes());
    }
    let hex_lower: String = token.iter().map(|b| format!("{b:02x}")).collect();
    forms.push(hex_lower.to_ascii_uppercase().into_bytes());
    forms.push(hex_lower.into_bytes());
    for upper in [true, false] {
        let mut reserved = String::new();
        let mut every = String::new();
        for &b in token {
            let escaped = if upper {
                format!("%{b:02X}")
            } else {
                format!("%{b:02x}")
            };
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                reserved.push(char::from(b));
            } else {
                reserved.push_str(&escaped);
            }
            every.push_str(&escaped);
        }
        forms.push(reserved.into_bytes());
        forms.push(every.into_bytes());
    }
    forms.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    forms.dedup();
    forms
}

/// The end of one output stream, with the token (and its encodings, see
/// [`token_forms`]) replaced.
///
/// Redaction runs before anything is cut, and at least the longest form's
/// length is always kept, so a form split across two reads is still whole in
/// the buffer when the second part arrives.
struct Tail<'a> {
    buf: Vec<u8>,
    /// What to replace, longest first.
    forms: &'a [Vec<u8>],
    marker: &'a [u8],
    truncated: bool,
}

impl<'a> Tail<'a> {
    fn new(forms: &'a [Vec<u8>], marker: &'a [u8]) -> Self {
        Self {
            buf: Vec::new(),
            forms,
            marker,
            truncated: false,
        }
    }

    /// How much must stay in the buffer between reads.
    fn keep(&self) -> usize {
        let longest = self.forms.iter().map(Vec::len).max().unwrap_or(0);
        OUTPUT_TAIL_BYTES.max(longest)
    }

    fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
        // Cut only now and then, so a chatty hook costs amortised O(n).
        if self.buf.len() > 2 * self.keep() {
            self.redact();
            self.cut_to(self.keep());
        }
    }

    fn finish(mut self) -> String {
        self.redact();
        self.cut_to(OUTPUT_TAIL_BYTES);
        let text = String::from_utf8_lossy(&self.buf);
        if self.truncated {
            format!("…{text}")
        } else {
            text.into_owned()
        }
    }

    fn cut_to(&mut self, len: usize) {
        if self.buf.len() > len {
            self.buf.drain(..self.buf.len() - len);
            self.truncated = true;
        }
    }

    fn redact(&mut self) {
        for form in self.forms {
            if form.is_empty() || self.buf.len() < form.len() {
                continue;
            }
            let mut out = Vec::with_capacity(self.buf.len());
            let mut rest = self.buf.as_slice();
            while let Some(at) = find(rest, form) {
                out.extend_from_slice(&rest[..at]);
                out.extend_from_slice(self.marker);
                rest = &rest[at + form.len()..];
            }
            out.extend_from_slice(rest);
            self.buf = out;
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn log_attempt(spec: &HookSpec, run: &HookRun<'_>, attempt: &HookAttempt) {
    let channel = run.channel.as_str();
    let group = run.group.as_str();
    let key_id = run.token.key_id.as_str();
    let program = spec.argv.first().map_or("", String::as_str);
    for line in attempt.stdout.lines().filter(|l| !l.trim().is_empty()) {
        tracing::info!(channel, group, key_id, program, line, "hook stdout");
    }
    for line in attempt.stderr.lines().filter(|l| !l.trim().is_empty()) {
        tracing::warn!(channel, group, key_id, program, line, "hook stderr");
    }
    let outcome = attempt.outcome.to_string();
    if attempt.outcome.is_success() {
        tracing::info!(channel, group, key_id, program, "hook succeeded");
    } else {
        tracing::warn!(channel, group, key_id, program, outcome, "hook failed");
    }
}

/// How often, and how far apart, a failing hook is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HookRetry {
    /// Attempts in all, the first included (0 is read as 1).
    pub attempts: u32,
    /// The wait after the first failure; it doubles after each further one.
    pub base: Duration,
    /// The longest wait.
    pub cap: Duration,
}

impl Default for HookRetry {
    /// 5 attempts, 10 s apart at first, doubling, at most 5 min: a hook that
    /// fails for a passing reason (a backend restarting) gets about 2.5 min
    /// to recover, while a broken one stops being run after a few tries.
    fn default() -> Self {
        Self {
            attempts: 5,
            base: Duration::from_secs(10),
            cap: Duration::from_secs(300),
        }
    }
}

impl HookRetry {
    /// The wait after the `failures`-th failure (counting from 1):
    /// `base * 2^(failures-1)`, at most `cap`.
    pub fn delay_after(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.base
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.cap)
            .min(self.cap)
    }
}

/// How a run with retries ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookReport {
    /// The last attempt (for a run cancelled between attempts: outcome
    /// [`HookOutcome::Cancelled`] with no output).
    pub last: HookAttempt,
    /// How many attempts were started.
    pub attempts: u32,
}

impl HookReport {
    /// True when the last attempt succeeded.
    pub fn is_success(&self) -> bool {
        self.last.outcome.is_success()
    }

    /// One line for the event history and status: the outcome, the attempt
    /// count and, for a failure, the last line of stderr. Holds no token
    /// value (the output is redacted).
    pub fn summary(&self) -> String {
        let tries = if self.attempts == 1 {
            "1 attempt".to_owned()
        } else {
            format!("{} attempts", self.attempts)
        };
        let mut text = format!("hook {} ({tries})", self.last.outcome);
        if !self.is_success()
            && let Some(line) = self
                .last
                .stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
        {
            text.push_str(": ");
            text.push_str(line.trim());
        }
        text
    }
}

/// Runs the hook until it succeeds, `retry.attempts` attempts have failed,
/// or `cancel` fires. Between attempts it waits [`HookRetry::delay_after`]
/// on `clock`. Cancellation kills a running attempt and ends the run with
/// [`HookOutcome::Cancelled`].
pub async fn run_with_retries(
    spec: &HookSpec,
    run: &HookRun<'_>,
    retry: &HookRetry,
    clock: &SharedClock,
    cancel: &CancellationToken,
) -> HookReport {
    let attempts = retry.attempts.max(1);
    let cancelled = |attempts| HookReport {
        last: HookAttempt {
            outcome: HookOutcome::Cancelled,
            stdout: String::new(),
            stderr: String::new(),
        },
        attempts,
    };
    let mut started = 0;
    loop {
        if cancel.is_cancelled() {
            return cancelled(started);
        }
        started += 1;
        let attempt = tokio::select! {
            biased;
            () = cancel.cancelled() => return cancelled(started),
            attempt = run_once(spec, run) => attempt,
        };
        if attempt.outcome.is_success() || started >= attempts {
            return HookReport {
                last: attempt,
                attempts: started,
            };
        }
        let wait = retry.delay_after(started);
        tracing::warn!(
            channel = run.channel.as_str(),
            group = run.group.as_str(),
            key_id = run.token.key_id.as_str(),
            attempt = started,
            of = attempts,
            retry_in = %humantime::format_duration(wait),
            "hook failed; will retry"
        );
        let due = chrono::Duration::from_std(wait)
            .ok()
            .and_then(|w| clock.now().checked_add_signed(w))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
        // A system clock may wake early (see Clock::sleep_until): re-check.
        while clock.now() < due {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return cancelled(started),
                () = clock.sleep_until(due) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail_of(token: &str, chunks: &[&str]) -> String {
        let marker = b"[T]";
        let forms = token_forms(token.as_bytes());
        let mut tail = Tail::new(&forms, marker);
        for c in chunks {
            tail.push(c.as_bytes());
        }
        tail.finish()
    }

    #[test]
    fn a_token_split_across_reads_is_redacted() {
        assert_eq!(
            tail_of("secret-token", &["a secr", "et-tok", "en b"]),
            "a [T] b"
        );
        assert_eq!(tail_of("tok", &["tok", "tok", "x"]), "[T][T]x");
    }

    #[test]
    fn a_long_output_keeps_its_end_and_no_token_survives_the_cut() {
        let token = "T".repeat(100) + "END";
        let filler = "x".repeat(3 * OUTPUT_TAIL_BYTES);
        // The token straddles the point where the buffer is cut.
        let (a, b) = token.split_at(50);
        let text = tail_of(&token, &[&filler, a, b, "\ndone"]);
        assert!(!text.contains("END"), "the token's end survived");
        assert!(text.ends_with("[T]\ndone"), "{}", &text[text.len() - 20..]);
        assert!(text.starts_with('…'));
        assert!(text.len() <= OUTPUT_TAIL_BYTES + '…'.len_utf8());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let r = HookRetry {
            attempts: 9,
            base: Duration::from_secs(10),
            cap: Duration::from_secs(60),
        };
        let waits: Vec<u64> = (1..=5).map(|n| r.delay_after(n).as_secs()).collect();
        assert_eq!(waits, [10, 20, 40, 60, 60]);
        assert_eq!(r.delay_after(0).as_secs(), 10);
        assert_eq!(r.delay_after(u32::MAX), r.cap);
    }

    #[test]
    fn only_the_listed_variables_are_inherited() {
        use std::os::unix::ffi::OsStringExt as _;
        let os = |s: &str| OsString::from(s);
        let not_utf8 = OsString::from_vec(b"/home/\xff".to_vec());
        let env = inherited_env([
            (os("PATH"), os("/bin")),
            (os("LINETOKD__DAEMON__STATE_DIR"), os("/x")),
            (os("CREDENTIALS_DIRECTORY"), os("/run/c")),
            (OsString::from_vec(b"JUNK\xfe".to_vec()), os("x")),
            (os("HOME"), not_utf8.clone()),
            (os("LANG"), os("C.UTF-8")),
        ]);
        assert_eq!(
            env,
            [
                (os("PATH"), os("/bin")),
                (os("HOME"), not_utf8),
                (os("LANG"), os("C.UTF-8"))
            ]
        );
    }

    #[test]
    fn a_failure_summary_names_the_outcome_the_attempts_and_the_last_stderr_line() {
        let report = HookReport {
            last: HookAttempt {
                outcome: HookOutcome::Exited { code: 3 },
                stdout: "ignored\n".into(),
                stderr: "first\nbackend refused reload\n\n".into(),
            },
            attempts: 4,
        };
        assert_eq!(
            report.summary(),
            "hook exited with status 3 (4 attempts): backend refused reload"
        );
    }
}
