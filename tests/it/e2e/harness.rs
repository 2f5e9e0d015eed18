//! The end-to-end harness: the real `linetokd` binary as child processes
//! (keygen, the sandbox, the daemon), every line they print captured, and
//! waits on those lines instead of sleeps.
//!
//! [`Proc`] is one child: stdout and stderr are read line by line into one
//! shared, ordered log that tests search and wait on ([`Proc::wait_for`]).
//! Dropping a `Proc` kills its process, so a failing test leaves nothing
//! running. [`Lab`] is one test's world: a temp dir with a key pair made by
//! `linetokd keygen`, a sandbox process with that key registered, and a
//! daemon config pointing at it; each test builds its own, on its own ports,
//! so tests run in parallel.
//!
//! Every wait is bounded by [`PATIENCE`], a hang guard rather than a
//! performance goal: on a loaded 2-core machine a debug daemon is slow, and
//! a failed wait prints everything the process said.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use linetokd::domain::{ChannelId, GroupName};
use linetokd::store::{Location, Store, StoredToken};
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The longest any wait may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(90);

/// The channel every lab configures, in the sandbox and the daemon.
pub const CHANNEL: &str = "1234567890";
/// Its channel secret: it must never show up in any output either.
pub const SECRET: &str = "e2e-channel-SECRET-5f2b9c0d7a1e4f63";
/// The kid the keygen public key is registered under.
pub const KID: &str = "e2e-kid-0b7c5d2e";
/// The channel's groups.
pub const GROUPS: [&str; 2] = ["a", "b"];

/// The binary under test.
fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_linetokd")
}

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error (the logs).
    Stderr,
}

/// One line a process printed; JSON log lines are parsed.
#[derive(Debug, Clone)]
pub struct Line {
    /// Where it came from.
    pub stream: Stream,
    /// The line as printed.
    pub text: String,
    json: Option<serde_json::Map<String, Value>>,
}

impl Line {
    fn new(stream: Stream, text: String) -> Self {
        let json = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.as_object().cloned());
        Self { stream, text, json }
    }

    /// True if this is the log event `message`: a JSON line's `message`
    /// field equals it, or a text line contains it.
    pub fn is(&self, message: &str) -> bool {
        match &self.json {
            Some(json) => json.get("message").and_then(Value::as_str) == Some(message),
            None => self.text.contains(message),
        }
    }

    /// True if this is a log event whose message starts with `prefix`
    /// (long messages are matched by their beginning).
    pub fn begins(&self, prefix: &str) -> bool {
        match &self.json {
            Some(json) => json
                .get("message")
                .and_then(Value::as_str)
                .is_some_and(|m| m.starts_with(prefix)),
            None => self.text.contains(prefix),
        }
    }

    /// A field of a JSON log line, as text (strings unquoted).
    pub fn field(&self, name: &str) -> Option<String> {
        let value = self.json.as_ref()?.get(name)?;
        Some(match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }

    /// True for the event `message` whose field `name` is `value`.
    pub fn is_with(&self, message: &str, name: &str, value: &str) -> bool {
        self.is(message) && self.field(name).as_deref() == Some(value)
    }
}

/// Everything one process printed, in the order it was read.
#[derive(Default)]
struct Output {
    lines: Mutex<Vec<Line>>,
}

/// A child process whose output is captured. Killed when dropped.
pub struct Proc {
    /// A name for messages.
    pub name: String,
    child: Child,
    pid: u32,
    output: Arc<Output>,
    /// Counts lines read, and streams closed, so waiters wake on news.
    news: watch::Receiver<(usize, usize)>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Starts `linetokd ARGS` with only `env` in its environment (nothing of
    /// the test runner's leaks in, e.g. a `LINETOKD__` override).
    pub fn spawn(name: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(binary());
        command
            .args(args)
            .env_clear()
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap();
        let pid = child.id().unwrap();
        let output = Arc::new(Output::default());
        let (tell, news) = watch::channel((0, 0));
        let tell = Arc::new(tell);
        let readers = vec![
            read_lines(child.stdout.take().unwrap(), Stream::Stdout, &output, &tell),
            read_lines(child.stderr.take().unwrap(), Stream::Stderr, &output, &tell),
        ];
        Self {
            name: name.to_owned(),
            child,
            pid,
            output,
            news,
            readers,
            status: None,
        }
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<Line> {
        self.output.lines.lock().unwrap().clone()
    }

    /// How many lines so far: a mark to wait for news after.
    pub fn mark(&self) -> usize {
        self.output.lines.lock().unwrap().len()
    }

    /// Everything printed so far, one string.
    pub fn all_text(&self) -> String {
        let mut text = String::new();
        for line in self.lines() {
            text.push_str(&line.text);
            text.push('\n');
        }
        text
    }

    /// The index of the first line matching `pred` at or after `from`.
    pub fn find(&self, from: usize, pred: impl Fn(&Line) -> bool) -> Option<usize> {
        let lines = self.output.lines.lock().unwrap();
        lines
            .iter()
            .enumerate()
            .skip(from)
            .find(|(_, l)| pred(l))
            .map(|(i, _)| i)
    }

    /// How many lines at or after `from` match `pred`.
    pub fn count(&self, from: usize, pred: impl Fn(&Line) -> bool) -> usize {
        let lines = self.output.lines.lock().unwrap();
        lines.iter().skip(from).filter(|l| pred(l)).count()
    }

    /// Waits for the first line at or after `from` that matches `pred`, and
    /// returns its index and the line. Fails the test (printing the whole
    /// output) if the process closes its output first or after
    /// [`PATIENCE`].
    pub async fn wait_for(
        &self,
        from: usize,
        what: &str,
        pred: impl Fn(&Line) -> bool,
    ) -> (usize, Line) {
        let mut news = self.news.clone();
        let found = tokio::time::timeout(PATIENCE, async {
            loop {
                // Mark the news seen *before* looking: a line pushed after
                // the look then always wakes `changed` (marking it after
                // could swallow the notice of a line the look just missed,
                // and wait for the next line, which may never come).
                let closed = news.borrow_and_update().1 == 2;
                if let Some(i) = self.find(from, &pred) {
                    return Some(i);
                }
                if closed {
                    // Both pipes are at EOF: nothing more will come.
                    return None;
                }
                if news.changed().await.is_err() {
                    return self.find(from, &pred);
                }
            }
        })
        .await;
        match found {
            Ok(Some(i)) => (i, self.lines()[i].clone()),
            Ok(None) => panic!(
                "{} ended its output without {what}; it printed:\n{}",
                self.name,
                self.all_text()
            ),
            Err(_) => panic!(
                "{} did not print {what} within {PATIENCE:?}; it printed:\n{}",
                self.name,
                self.all_text()
            ),
        }
    }

    /// Waits until `n` lines at or after `from` match `pred`; returns the
    /// index of the last of them.
    pub async fn wait_for_n(
        &self,
        from: usize,
        n: usize,
        what: &str,
        pred: impl Fn(&Line) -> bool,
    ) -> usize {
        let mut at = from;
        let mut last = from;
        for _ in 0..n {
            let (i, _) = self.wait_for(at, what, &pred).await;
            last = i;
            at = i + 1;
        }
        last
    }

    /// Sends a signal by name (`TERM`, `INT`) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args(["-s", name, &self.pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -s {name} {} failed", self.pid);
    }

    /// Kills the process with SIGKILL (`kill -9`) and reaps it.
    pub async fn kill9(&mut self) {
        self.child.start_kill().unwrap();
        self.exit().await;
    }

    /// Waits for the process to exit and for its output to be read to the
    /// end, and returns how it exited.
    pub async fn exit(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let status = match tokio::time::timeout(PATIENCE, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!(
                "{} did not exit within {PATIENCE:?}; it printed:\n{}",
                self.name,
                self.all_text()
            ),
        };
        for reader in self.readers.drain(..) {
            tokio::time::timeout(PATIENCE, reader)
                .await
                .expect("output readers end at EOF")
                .unwrap();
        }
        self.status = Some(status);
        status
    }

    /// Waits for the exit and asserts it was a clean 0.
    pub async fn exit_ok(&mut self) {
        let status = self.exit().await;
        assert_eq!(
            status.code(),
            Some(0),
            "{} exited with {status}; it printed:\n{}",
            self.name,
            self.all_text()
        );
    }
}

fn read_lines(
    pipe: impl AsyncRead + Unpin + Send + 'static,
    stream: Stream,
    output: &Arc<Output>,
    tell: &Arc<watch::Sender<(usize, usize)>>,
) -> JoinHandle<()> {
    let output = Arc::clone(output);
    let tell = Arc::clone(tell);
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(text)) = lines.next_line().await {
            output.lines.lock().unwrap().push(Line::new(stream, text));
            tell.send_modify(|(n, _)| *n += 1);
        }
        tell.send_modify(|(_, closed)| *closed += 1);
    })
}

/// One token as the sandbox's inspection API shows it. `Debug` leaves the
/// value out, so a failing assertion does not print tokens either.
#[derive(Clone, Deserialize)]
#[serde(from = "InspectedToken")]
pub struct SandboxToken {
    /// LINE's key ID; for a short-lived token (LINE gives none) the
    /// fingerprint identity linetokd stores it under; empty for a stateless
    /// one.
    pub key_id: String,
    /// `v2.1`, `short_lived` or `stateless`.
    pub kind: String,
    /// The value.
    pub access_token: String,
    /// When the sandbox issued it.
    pub issued_at: DateTime<Utc>,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
    /// `live`, `expired`, `revoked`.
    pub state: String,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// [`SandboxToken`] as the inspection API sends it.
#[derive(Deserialize)]
struct InspectedToken {
    key_id: Option<String>,
    kind: String,
    access_token: String,
    issued_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    state: String,
    revoked_at: Option<DateTime<Utc>>,
}

impl From<InspectedToken> for SandboxToken {
    fn from(t: InspectedToken) -> Self {
        // Short-lived tokens have no key ID at LINE: the store names them by
        // fingerprint. Stateless ones are never stored: no identity at all.
        let key_id = t.key_id.unwrap_or_else(|| {
            if t.kind == "short_lived" {
                linetokd::domain::KeyId::short_lived(&linetokd::domain::AccessToken::new(
                    t.access_token.clone(),
                ))
                .to_string()
            } else {
                String::new()
            }
        });
        Self {
            key_id,
            kind: t.kind,
            access_token: t.access_token,
            issued_at: t.issued_at,
            expires_at: t.expires_at,
            state: t.state,
            revoked_at: t.revoked_at,
        }
    }
}

impl std::fmt::Debug for SandboxToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxToken")
            .field("key_id", &self.key_id)
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .field("state", &self.state)
            .field("revoked_at", &self.revoked_at)
            .finish_non_exhaustive()
    }
}

/// A string that may be `null` (read as empty).
impl SandboxToken {
    /// True if LINE accepted it at `at`.
    pub fn live_at(&self, at: DateTime<Utc>) -> bool {
        self.issued_at <= at && at < self.expires_at && self.revoked_at.is_none_or(|r| at < r)
    }
}

/// One test's world: keys, a sandbox process, a daemon config.
pub struct Lab {
    /// The sandbox process.
    pub sandbox: Proc,
    /// What `linetokd keygen` printed.
    pub keygen: Proc,
    /// `http://127.0.0.1:PORT` of the sandbox.
    pub url: String,
    /// The daemon's config file.
    pub config: PathBuf,
    /// The daemon's database file (unused on PostgreSQL).
    pub db: PathBuf,
    /// Where the daemon's store lives: `db`, or a PostgreSQL database.
    pub location: Location,
    /// The `[daemon]` line that names the store.
    database_line: String,
    http: reqwest::Client,
    /// The temp dir holding everything; declared last so it is removed
    /// after the processes are gone.
    _dir: tempfile::TempDir,
}

impl Lab {
    /// Makes a key pair with `linetokd keygen`, starts `linetokd sandbox` on
    /// a free port with its public half registered (sandbox logs at
    /// `sandbox_log`), and writes a daemon config with `[rotation]` taken
    /// from `rotation` (TOML lines).
    pub async fn start(rotation: &str, sandbox_log: &str) -> Self {
        Self::start_on(rotation, sandbox_log, None, &[]).await
    }

    /// [`Lab::start`] with the daemon's store in a fresh database of the
    /// test PostgreSQL cluster (`[daemon] database_url_file`); `None`, after
    /// the skip line, when there is no PostgreSQL (a failure under
    /// `LINETOKD_REQUIRE_POSTGRES=1`).
    ///
    /// The daemon connects as a role that needs its password
    /// ([`crate::pg_harness::PASSWORD_USER`], which owns the database), so
    /// the tests can look for the password in every output.
    pub async fn start_on_postgres(rotation: &str, sandbox_log: &str, test: &str) -> Option<Self> {
        Self::start_on_postgres_with_channels(rotation, sandbox_log, test, &[]).await
    }

    /// [`Lab::start_on_postgres`] with `extra` channels registered at the
    /// sandbox beside [`CHANNEL`]: the same secret, and the keygen public
    /// key under the kid [`kid_of`] names. The lab's own daemon config
    /// still lists only [`CHANNEL`]; a test adds the others to the configs
    /// it writes.
    pub async fn start_on_postgres_with_channels(
        rotation: &str,
        sandbox_log: &str,
        test: &str,
        extra: &[&str],
    ) -> Option<Self> {
        use crate::pg_harness::{PASSWORD, PASSWORD_USER};
        let db = crate::pg_harness::test_db(test).await?;
        db.client()
            .await
            .batch_execute(&format!(
                "ALTER DATABASE \"{}\" OWNER TO {PASSWORD_USER}",
                db.name
            ))
            .await
            .unwrap();
        let url = format!(
            "postgres://{PASSWORD_USER}:{PASSWORD}@127.0.0.1:{}/{}?sslmode=disable",
            db.cluster.port, db.name
        );
        Some(Self::start_on(rotation, sandbox_log, Some(url), extra).await)
    }

    async fn start_on(
        rotation: &str,
        sandbox_log: &str,
        postgres: Option<String>,
        extra: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let mut keygen = Proc::spawn(
            "keygen",
            &["keygen", "--out", keys.to_str().unwrap(), "--name", "chan"],
            &[],
        );
        keygen.exit_ok().await;

        let sandbox_config = dir.path().join("sandbox.toml");
        let mut channels = String::new();
        for id in std::iter::once(&CHANNEL).chain(extra) {
            channels.push_str(&format!(
                "[[channels]]\nid = \"{id}\"\nsecret = \"{SECRET}\"\n\
                 keys = [{{ kid = \"{}\", public_key_file = \"keys/chan.public.jwk\" }}]\n",
                kid_of(id)
            ));
        }
        std::fs::write(&sandbox_config, channels).unwrap();
        let sandbox = Proc::spawn(
            "sandbox",
            &[
                "sandbox",
                "--listen",
                "127.0.0.1:0",
                "--config",
                sandbox_config.to_str().unwrap(),
            ],
            &[("RUST_LOG", sandbox_log)],
        );
        let (_, line) = sandbox
            .wait_for(0, "its listening address", |l| {
                l.stream == Stream::Stdout && l.text.starts_with("linetokd sandbox listening on ")
            })
            .await;
        let url = line
            .text
            .trim_start_matches("linetokd sandbox listening on ")
            .to_owned();

        write_private(&dir.path().join("chan.secret"), SECRET);
        let db = dir.path().join("linetokd.db");
        let (location, database_line) = match postgres {
            None => (
                Location::Sqlite(db.clone()),
                format!("database = \"{}\"", db.display()),
            ),
            Some(url) => {
                let file = dir.path().join("database.url");
                write_private(&file, &url);
                (
                    Location::Postgres(Box::new(
                        linetokd::store::pg::PgTarget::parse(&url).unwrap(),
                    )),
                    format!("database_url_file = \"{}\"", file.display()),
                )
            }
        };
        let mut groups = String::new();
        for group in GROUPS {
            groups.push_str(&format!("\n  [[channel.group]]\n  name = \"{group}\"\n"));
        }
        let config_path = dir.path().join("linetokd.toml");
        std::fs::write(
            &config_path,
            daemon_config(dir.path(), &database_line, &url, rotation, &groups),
        )
        .unwrap();

        Self {
            sandbox,
            keygen,
            url,
            config: config_path,
            db,
            location,
            database_line,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    /// The lab's temp dir: a place for sinks, API key files and config
    /// copies.
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// A daemon config like the one [`Lab::start`] writes, with the
    /// caller's `[rotation]` lines and the channel's `[[channel.group]]`
    /// tables (`groups`, TOML).
    pub fn config_text(&self, rotation: &str, groups: &str) -> String {
        daemon_config(self.dir(), &self.database_line, &self.url, rotation, groups)
    }

    /// Replaces the daemon's config file as an editor does: writes a temp
    /// file beside it, then renames it over the old one.
    pub fn replace_config(&self, text: &str) {
        let temp = self.dir().join(".linetokd.toml.new");
        std::fs::write(&temp, text).unwrap();
        std::fs::rename(&temp, &self.config).unwrap();
    }

    /// Runs `linetokd ARGS --config <the lab's config>` to its end.
    pub async fn cli(&self, name: &str, args: &[&str]) -> Proc {
        let mut all: Vec<&str> = args.to_vec();
        let config = self.config.to_str().unwrap();
        all.extend(["--config", config]);
        let mut proc = Proc::spawn(name, &all, &[]);
        proc.exit().await;
        proc
    }

    /// Starts `linetokd run` with `RUST_LOG=rust_log` and `env`.
    pub fn run(&self, name: &str, rust_log: &str, env: &[(&str, &str)]) -> Proc {
        let mut all = vec![("RUST_LOG", rust_log)];
        all.extend_from_slice(env);
        Proc::spawn(
            name,
            &["run", "--config", self.config.to_str().unwrap()],
            &all,
        )
    }

    /// Writes the config of one `[ha]` instance of the lab, `name`, with
    /// its own state directory (`<dir>/<name>`), `ha` as its `[ha]` lines,
    /// `request_timeout` as given, and each group writing a raw sink in
    /// that directory (`<group>.token`) and running an `on_rotate` hook that
    /// appends the key ID it was run for to `<group>.hooked` there. Returns
    /// the config's path.
    pub fn ha_instance(
        &self,
        name: &str,
        rotation: &str,
        request_timeout: &str,
        ha: &str,
    ) -> PathBuf {
        let state = self.dir().join(name);
        std::fs::create_dir_all(&state).unwrap();
        let mut groups = String::new();
        for group in GROUPS {
            // Each instance's hook appends the key ID it was run for.
            groups.push_str(&format!(
                "\n  [[channel.group]]\n  name = \"{group}\"\n  sinks = [{{ path = \"{}\", format = \"raw\" }}]\n  \
                 on_rotate = [\"/bin/sh\", \"-c\", \"echo \\\"$LINETOKD_KEY_ID\\\" >> {}\"]\n",
                state.join(format!("{group}.token")).display(),
                state.join(format!("{group}.hooked")).display()
            ));
        }
        let text = daemon_config(
            self.dir(),
            &self.database_line,
            &self.url,
            rotation,
            &groups,
        )
        .replace(
            &format!("state_dir = \"{}\"", self.dir().display()),
            &format!("state_dir = \"{}\"", state.display()),
        )
        .replace(
            "request_timeout = \"30s\"",
            &format!("request_timeout = \"{request_timeout}\""),
        ) + &format!("\n[ha]\n{ha}\n");
        let path = state.join("linetokd.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Starts `linetokd run --config CONFIG` with `RUST_LOG=rust_log`.
    pub fn run_config(&self, name: &str, config: &Path, rust_log: &str) -> Proc {
        Proc::spawn(
            name,
            &["run", "--config", config.to_str().unwrap()],
            &[("RUST_LOG", rust_log)],
        )
    }

    /// Runs `linetokd ARGS --config CONFIG` to its end.
    pub async fn cli_with(&self, name: &str, config: &Path, args: &[&str]) -> Proc {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", config.to_str().unwrap()]);
        let mut proc = Proc::spawn(name, &all, &[]);
        proc.exit().await;
        proc
    }

    /// Every token the sandbox ever issued on the channel, oldest first.
    pub async fn tokens(&self) -> Vec<SandboxToken> {
        self.tokens_of(CHANNEL).await
    }

    /// Every token the sandbox ever issued on `channel`, oldest first.
    pub async fn tokens_of(&self, channel: &str) -> Vec<SandboxToken> {
        let response = self
            .http
            .get(format!("{}/_sandbox/channels/{channel}/tokens", self.url))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{response:?}");
        response.json().await.unwrap()
    }

    /// Replaces the sandbox's fault rules (a `Faults` document).
    pub async fn set_faults(&self, faults: Value) {
        let response = self
            .http
            .put(format!("{}/_sandbox/faults", self.url))
            .json(&faults)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{}",
            response.text().await.unwrap()
        );
    }

    /// The database, read-only (the daemon may be running).
    pub fn store(&self) -> Store {
        Store::open_read_only_at(&self.location, None).unwrap()
    }

    /// Every token the store holds, group by group, oldest first.
    pub fn stored(&self) -> Vec<StoredToken> {
        let store = self.store();
        GROUPS
            .iter()
            .flat_map(|g| {
                store
                    .tokens_of_group(&ChannelId::new(CHANNEL), &GroupName::new(*g))
                    .unwrap()
            })
            .collect()
    }

    /// Stops the sandbox with SIGTERM; it must exit cleanly, and then all of
    /// its output has been read.
    pub async fn stop_sandbox(&mut self) {
        self.sandbox.signal("TERM");
        self.sandbox.exit_ok().await;
    }

    /// Asserts that no token the sandbox issued, and not the channel
    /// secret, appears in anything keygen, the sandbox (so far) and `procs`
    /// printed. Returns how many tokens were searched for.
    pub async fn assert_nothing_secret_printed(&self, procs: &[&Proc]) -> usize {
        let tokens = self.tokens().await;
        let mut all = vec![&self.sandbox, &self.keygen];
        all.extend_from_slice(procs);
        assert_nothing_secret_in(&tokens, &all);
        tokens.len()
    }
}

/// Asserts that none of `tokens`, and not the channel secret, appears in
/// anything `procs` printed. Pieces of each token are searched too (its
/// payload and signature segments; the header is the same for all), so a
/// log that cut or split a token is caught.
pub fn assert_nothing_secret_in(tokens: &[SandboxToken], procs: &[&Proc]) {
    let mut needles: Vec<(String, String)> = vec![(SECRET.to_owned(), "channel secret".into())];
    for t in tokens {
        needles.push((t.access_token.clone(), format!("token {}", t.key_id)));
        for piece in t.access_token.split('.').skip(1) {
            if piece.len() >= 16 {
                needles.push((piece.to_owned(), format!("a piece of token {}", t.key_id)));
            }
        }
    }
    for proc in procs {
        for line in proc.lines() {
            for (needle, what) in &needles {
                assert!(
                    !line.text.contains(needle.as_str()),
                    "{} printed the {what}: {}",
                    proc.name,
                    line.text
                );
            }
        }
    }
}

/// The kid the keygen public key is registered under for `channel` at the
/// sandbox (kids are unique across its channels): [`KID`] for [`CHANNEL`].
pub fn kid_of(channel: &str) -> String {
    if channel == CHANNEL {
        KID.to_owned()
    } else {
        format!("{KID}-{channel}")
    }
}

/// The daemon config of a lab in `dir` whose sandbox is at `url`: JSON
/// logs, port 0, the keygen key and the channel secret, `rotation` as the
/// `[rotation]` lines and `groups` as the channel's `[[channel.group]]`
/// tables.
fn daemon_config(dir: &Path, database: &str, url: &str, rotation: &str, groups: &str) -> String {
    format!(
        "[daemon]\n{database}\nstate_dir = \"{state}\"\nline_api = \"{url}\"\n\
         listen = \"127.0.0.1:0\"\nlog_format = \"json\"\nrequest_timeout = \"30s\"\n\n\
         [rotation]\n{rotation}\n\n\
         [[channel]]\nid = \"{CHANNEL}\"\nname = \"chan\"\nkey_file = \"{key}\"\n\
         kid = \"{KID}\"\nsecret_file = \"{secret}\"\n{groups}",
        state = dir.display(),
        key = dir.join("keys").join("chan.private.pem").display(),
        secret = dir.join("chan.secret").display(),
    )
}

/// The address of a running daemon's HTTP listener (`http://IP:PORT`), from
/// its "HTTP listening" log line (the config asks for port 0).
pub async fn http_url(daemon: &Proc) -> String {
    let (_, line) = daemon
        .wait_for(0, "its HTTP address", |l| l.begins("HTTP listening"))
        .await;
    let listen = line
        .field("listen")
        .unwrap_or_else(|| panic!("no listen field in {}", line.text));
    format!("http://{listen}")
}

/// Writes a file only its owner may read, as the daemon demands for secrets.
pub fn write_private(path: &Path, contents: &str) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    file.write_all(contents.as_bytes()).unwrap();
}
