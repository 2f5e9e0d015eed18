//! The local control socket: how `linetokd rotate` and `linetokd revoke`
//! reach the running daemon (docs/design.md section 6, "Control"), so the daemon
//! stays the only writer of the database.
//!
//! # Protocol
//!
//! One connection per command: the client writes one JSON [`Request`] on a
//! line, the daemon answers one JSON [`Response`] on a line and closes. The
//! daemon answers once the request is carried out (a fresh token issued
//! and, for an incident, every older token of the group revoked), when a
//! step fails (LINE refused or could not be reached: the daemon keeps
//! retrying with backoff and says when), or after a bounded wait
//! ([`DEFAULT_WAIT`]) with what happened so far.
//!
//! # The socket file
//!
//! `<state_dir>/control.sock`, mode 0600, so only the daemon's user (and
//! root) can connect; the daemon also checks the peer's uid. It is created
//! without a moment of wider access whatever the umask: the socket is bound
//! inside a fresh 0700 directory, chmod-ed to 0600 there, and renamed into
//! place. It is removed on shutdown.
//!
//! One daemon per state directory: the daemon holds an exclusive `flock` on
//! `<state_dir>/control.lock` while it runs (the store's writer lock only
//! covers one database; two daemons with different databases but the same
//! state directory would otherwise fight over the socket). Holding that
//! lock also proves any socket file already there is stale, left by a
//! crashed run, so it is replaced; a non-socket file at that path is never
//! touched.
//!
//! # Waiting for the outcome
//!
//! The handler subscribes to the rotator's events before it asks, wakes the
//! scheduler, and then watches two things: the events of the targeted
//! groups (what was revoked, what was issued, what failed) and the end of
//! each scheduler pass. After each, it asks the engine where its own
//! request rows stand ([`Engine::request_outcome`]): the issue that carries
//! a request out closes it in the transaction that stores the new token, so
//! "closed" is exactly "done", with no guessing from timestamps.
//!
//! The engine announces the new token (`Issued`) right after that
//! transaction commits, so the handler can see a request closed a moment
//! before the event is sent. A request closed by an issue is therefore
//! answered only once its group's `Issued` event is in (or events were lost
//! to lag); answering at the first sight of the closed row sent `done`
//! without the new key ID, which a loaded machine showed.
//!
//! Depends on the [`Engine`] contract (which `app` implements for the
//! rotator), `event`, `scheduler` (its progress) and `domain`; reads no
//! config: `app` binds the server and hands it a [`ControlHandler`]. The
//! client half ([`send`]) is plain blocking std IO for the CLI.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, BufRead as _, BufReader, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::{
    DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _,
    PermissionsExt as _,
};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accept::AcceptBackoff;
use crate::channel_index::ChannelIndex;
use crate::domain::{ChannelId, GroupName, KeyId, RequestOutcome};
use crate::event::RotationEvent;
use crate::policy::joined;
use crate::scheduler::SchedulerState;

/// The socket's file name inside the state directory.
pub const SOCKET_FILE: &str = "control.sock";

/// The lock file that keeps a second daemon off the same state directory.
pub const LOCK_FILE: &str = "control.lock";

/// How long the daemon waits for a request to be carried out before it
/// answers with what happened so far.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// How long the client waits for the answer: the daemon's wait plus room.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);

/// The largest request line read; a real one is under 200 bytes.
const MAX_REQUEST: u64 = 4096;

/// The largest response line read by the client.
const MAX_RESPONSE: u64 = 1 << 20;

/// How long a client may take to send its request line.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The control socket of a state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_FILE)
}

/// A command for the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// `linetokd rotate`: issue a fresh token now for one group, or for
    /// every group of the channel.
    Rotate {
        /// The channel: its ID or its configured name, as typed (the daemon
        /// resolves it with the config in force).
        channel: ChannelId,
        /// The group; `None` means every group of the channel.
        #[serde(default)]
        group: Option<GroupName>,
    },
    /// `linetokd revoke`: the incident command. Revoke every token of the
    /// group at LINE and issue a fresh one, touching no other group.
    Revoke {
        /// The channel: its ID or its configured name, as typed.
        channel: ChannelId,
        /// The group.
        group: GroupName,
    },
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Response {
    /// Carried out for every targeted group.
    Done {
        /// What happened, per group.
        groups: Vec<GroupReport>,
    },
    /// A step failed for at least one group; the daemon keeps retrying.
    Failed {
        /// What happened, per group; failed ones carry `failure`.
        groups: Vec<GroupReport>,
    },
    /// Not carried out within the wait (or the daemon is stopping); the
    /// request stays in force and the daemon keeps working on it.
    Pending {
        /// What happened so far, per group.
        groups: Vec<GroupReport>,
        /// Why the answer came before the outcome.
        reason: String,
    },
    /// The request was refused and nothing was done (unknown channel or
    /// group, no channel secret to revoke with, a malformed request).
    Refused {
        /// Why, in a sentence.
        error: String,
    },
}

/// What happened to one group while the daemon worked on a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupReport {
    /// The channel.
    pub channel: ChannelId,
    /// The group.
    pub group: GroupName,
    /// True once the request is carried out for this group.
    pub done: bool,
    /// Tokens of the group revoked meanwhile, in order.
    pub revoked: Vec<KeyId>,
    /// The newest token issued for the group meanwhile.
    pub issued: Option<IssuedKey>,
    /// The last failure, with when the daemon tries again.
    pub failure: Option<String>,
    /// Alerts raised for the group meanwhile.
    pub notes: Vec<String>,
}

/// A freshly issued token, by key ID (never its value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedKey {
    /// LINE's key ID.
    pub key_id: KeyId,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
}

impl GroupReport {
    fn new(channel: ChannelId, group: GroupName) -> Self {
        Self {
            channel,
            group,
            done: false,
            revoked: Vec::new(),
            issued: None,
            failure: None,
            notes: Vec::new(),
        }
    }

    /// One line per fact, for the CLI.
    fn describe(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = write!(out, "channel {} group {}: ", self.channel, self.group);
        let mut facts = Vec::new();
        if !self.revoked.is_empty() {
            let ids: Vec<&str> = self.revoked.iter().map(KeyId::as_str).collect();
            facts.push(format!(
                "revoked {} token{} ({})",
                ids.len(),
                if ids.len() == 1 { "" } else { "s" },
                ids.join(", ")
            ));
        }
        match &self.issued {
            Some(issued) => facts.push(format!(
                "new token {} (expires {})",
                issued.key_id,
                issued
                    .expires_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )),
            None if self.done => facts.push("nothing left to do".to_owned()),
            None => facts.push("no new token yet".to_owned()),
        }
        if let Some(failure) = &self.failure {
            facts.push(format!("failed: {failure}"));
        }
        let _ = writeln!(out, "{}", facts.join("; "));
        for note in &self.notes {
            let _ = writeln!(out, "  alert: {note}");
        }
    }
}

impl Response {
    /// The answer as the CLI prints it.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        match self {
            Self::Done { groups } => {
                for g in groups {
                    g.describe(&mut out);
                }
            }
            Self::Failed { groups } => {
                out.push_str("the request failed; the daemon keeps retrying on its own:\n");
                for g in groups {
                    g.describe(&mut out);
                }
            }
            Self::Pending { groups, reason } => {
                out.push_str(&format!("not finished yet: {reason}\n"));
                for g in groups {
                    g.describe(&mut out);
                }
            }
            Self::Refused { error } => {
                out.push_str(error);
                out.push('\n');
            }
        }
        out
    }
}

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another daemon holds the state directory's control lock.
    #[error(
        "another linetokd{} is running with state_dir {state_dir}: only one daemon may use a state directory (its control socket)",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    InUse {
        /// The state directory.
        state_dir: PathBuf,
        /// The holder's PID, when its lock file names it.
        pid: Option<u32>,
    },
    /// Something that is not a socket sits where the socket goes.
    #[error("{path} exists and is not a socket: move it away so the control socket can be created")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A file system step failed.
    #[error("while {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ControlError {
    let path = path.to_path_buf();
    move |source| ControlError::Io { what, path, source }
}

/// The bound control socket, ready to serve. Dropping it removes the
/// socket file and releases the state directory.
pub struct ControlServer {
    listener: UnixListener,
    /// The socket file; removed on drop.
    path: PathBuf,
    /// The uid that owns the socket (the daemon's); peers must be it or root.
    owner_uid: u32,
    /// Held for the daemon's lifetime: closing it releases the flock.
    _lock: File,
}

impl ControlServer {
    /// Takes the state directory (creating it, mode 0700, if missing),
    /// replaces a stale socket file, and binds `<state_dir>/control.sock`
    /// with mode 0600. Must run inside a tokio runtime.
    ///
    /// # Errors
    /// [`ControlError::InUse`] when another daemon uses the state
    /// directory, [`ControlError::NotASocket`] when a regular file or
    /// directory sits at the socket's path, [`ControlError::Io`] otherwise.
    pub fn bind(state_dir: &Path) -> Result<Self, ControlError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(io_err("creating the state directory", state_dir))?;
        let lock = take_lock(state_dir)?;
        let path = socket_path(state_dir);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_socket() => {
                // We hold the lock, so no running daemon owns it: a crashed
                // run left it behind.
                tracing::info!(path = %path.display(), "replacing a stale control socket");
                fs::remove_file(&path).map_err(io_err("removing the stale socket", &path))?;
            }
            Ok(_) => return Err(ControlError::NotASocket { path }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("inspecting", &path)(e)),
        }
        let std_listener = bind_private(state_dir, &path)?;
        std_listener
            .set_nonblocking(true)
            .map_err(io_err("setting up", &path))?;
        let listener = UnixListener::from_std(std_listener).map_err(io_err("setting up", &path))?;
        let owner_uid = fs::metadata(&path)
            .map_err(io_err("inspecting", &path))?
            .uid();
        Ok(Self {
            listener,
            path,
            owner_uid,
            _lock: lock,
        })
    }

    /// The socket file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Answers connections until `shutdown` fires, then tells the clients
    /// still waiting that the daemon is stopping, removes the socket and
    /// releases the state directory.
    pub async fn serve(self, handler: ControlHandler, shutdown: CancellationToken) {
        let handler = Arc::new(handler);
        let connections = TaskTracker::new();
        // EMFILE and the like are waited out with backoff, logged once per
        // streak: the listener stays.
        let mut backoff = AcceptBackoff::new("control");
        while let Some((stream, _)) = backoff.accept(|| self.listener.accept(), &shutdown).await {
            let handler = Arc::clone(&handler);
            let cancel = shutdown.child_token();
            let owner = self.owner_uid;
            connections.spawn(async move {
                if let Err(e) = connection(stream, owner, &handler, &cancel).await {
                    tracing::warn!(error = %e, "control connection failed");
                }
            });
        }
        connections.close();
        connections.wait().await;
        tracing::debug!(path = %self.path.display(), "control socket closed");
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        // Still holding the lock, so the file is ours to remove.
        if let Err(e) = fs::remove_file(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove the control socket");
        }
    }
}

/// Takes `<state_dir>/control.lock` and writes our PID into it.
fn take_lock(state_dir: &Path) -> Result<File, ControlError> {
    let lock_path = state_dir.join(LOCK_FILE);
    let err = |what| io_err(what, &lock_path);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(err("opening the lock file"))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let pid = file
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse().ok());
            return Err(ControlError::InUse {
                state_dir: state_dir.to_path_buf(),
                pid,
            });
        }
        Err(TryLockError::Error(e)) => return Err(err("locking")(e)),
    }
    file.set_len(0).map_err(err("writing"))?;
    file.seek(SeekFrom::Start(0)).map_err(err("writing"))?;
    writeln!(file, "{}", std::process::id()).map_err(err("writing"))?;
    Ok(file)
}

/// Binds the socket in a fresh 0700 directory, makes it 0600 there and
/// renames it to `path`: nobody else can reach it before its mode is
/// final, whatever the umask.
fn bind_private(
    state_dir: &Path,
    path: &Path,
) -> Result<std::os::unix::net::UnixListener, ControlError> {
    let staging = state_dir.join(format!(".control-{}", std::process::id()));
    if fs::symlink_metadata(&staging).is_ok() {
        // Left by a crashed run that had our PID (after a reboot).
        fs::remove_dir_all(&staging).map_err(io_err("removing the leftover", &staging))?;
    }
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(io_err("creating", &staging))?;
    let result = (|| {
        let temp = staging.join("s");
        let listener = std::os::unix::net::UnixListener::bind(&temp)
            .map_err(io_err("binding the control socket at", &temp))?;
        fs::set_permissions(&temp, fs::Permissions::from_mode(0o600))
            .map_err(io_err("setting the mode of", &temp))?;
        fs::rename(&temp, path).map_err(io_err("moving the control socket to", path))?;
        Ok(listener)
    })();
    // The directory is empty once the rename is done; on failure the
    // bound-but-unmoved socket goes with it.
    let _ = fs::remove_dir_all(&staging);
    result
}

/// Serves one connection: one request line in, one response line out.
async fn connection(
    stream: UnixStream,
    owner_uid: u32,
    handler: &ControlHandler,
    cancel: &CancellationToken,
) -> io::Result<()> {
    let peer = stream.peer_cred()?;
    let peer_uid = peer.uid();
    // Who asked, as the request row records it.
    let by = match peer.pid() {
        Some(pid) => format!("uid {peer_uid} (pid {pid}) over the control socket"),
        None => format!("uid {peer_uid} over the control socket"),
    };
    let (read, mut write) = stream.into_split();
    let response = if peer_uid != owner_uid && peer_uid != 0 {
        tracing::warn!(peer_uid, "control request from another user refused");
        Response::Refused {
            error: "permission denied: only the daemon's user or root may control it".to_owned(),
        }
    } else {
        let mut line = String::new();
        let mut reader = tokio::io::BufReader::new(read.take(MAX_REQUEST));
        let read = tokio::time::timeout(REQUEST_READ_TIMEOUT, reader.read_line(&mut line)).await;
        match read {
            Err(_) => Response::Refused {
                error: "no request received in time".to_owned(),
            },
            Ok(Err(e)) => return Err(e),
            Ok(Ok(_)) => match serde_json::from_str::<Request>(line.trim_end()) {
                Ok(request) => handler.handle_from(request, &by, cancel).await,
                Err(e) => Response::Refused {
                    error: format!("malformed request: {e}"),
                },
            },
        }
    };
    let mut out = serde_json::to_vec(&response).map_err(io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

/// A future the [`Engine`] returns (boxed, so the trait stays object safe).
pub type EngineFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// What the control socket asks of the rotation engine. `app` implements it
/// for the rotator, so this module knows the engine only by this contract
/// (and its [`RotationEvent`]s).
pub trait Engine: Send + Sync {
    /// A receiver of everything the engine does from now on.
    fn subscribe(&self) -> broadcast::Receiver<RotationEvent>;
    /// The configured channels: ID, name, and whether its secret is
    /// configured (an incident needs it).
    fn channels(&self) -> Vec<(ChannelId, String, bool)>;
    /// Records a rotation request for one group or every group of the
    /// channel; the groups it covers with their request IDs, or why it was
    /// refused.
    fn request_rotation<'a>(
        &'a self,
        channel: &'a ChannelId,
        group: Option<&'a GroupName>,
        by: &'a str,
    ) -> EngineFuture<'a, Result<Vec<(GroupName, i64)>, String>>;
    /// Records an incident for one group: its request ID, or why it was
    /// refused.
    fn request_incident<'a>(
        &'a self,
        channel: &'a ChannelId,
        group: &'a GroupName,
        by: &'a str,
    ) -> EngineFuture<'a, Result<i64, String>>;
    /// Where request `id` stands; `None` when the engine cannot tell now
    /// (the store could not be read, or it knows no such request).
    fn request_outcome(&self, id: i64) -> EngineFuture<'_, Option<RequestOutcome>>;
}

/// Carries out requests against the engine and waits for their outcome.
pub struct ControlHandler {
    rotator: Arc<dyn Engine>,
    scheduler: watch::Receiver<SchedulerState>,
    wait: Duration,
}

/// The request being worked on.
struct Work {
    channel: ChannelId,
    reports: Vec<GroupReport>,
    /// The request row of each report's group, in the same order, and
    /// where it stood when last asked.
    requests: Vec<(i64, RequestOutcome)>,
    /// True once the handler fell behind the engine's events: some detail
    /// is lost, so an `Issued` event is not waited for.
    lagged: bool,
}

impl ControlHandler {
    /// A handler that asks `rotator`, wakes the scheduler through `waker`,
    /// watches its passes on `scheduler`, and answers after at most `wait`.
    pub fn new(
        rotator: Arc<dyn Engine>,
        scheduler: watch::Receiver<SchedulerState>,
        wait: Duration,
    ) -> Self {
        Self {
            rotator,
            scheduler,
            wait,
        }
    }

    /// Carries out `request` and waits for its outcome (see the module
    /// documentation). `cancel` cuts the wait short (daemon shutdown).
    pub async fn handle(&self, request: Request, cancel: &CancellationToken) -> Response {
        self.handle_from(request, "the control socket", cancel)
            .await
    }

    /// [`ControlHandler::handle`] for a request from `by` (who asked, as
    /// the request row records it: the socket peer's uid and pid).
    pub async fn handle_from(
        &self,
        request: Request,
        by: &str,
        cancel: &CancellationToken,
    ) -> Response {
        // Subscribed before asking, so no event of the request is missed.
        let mut events = self.rotator.subscribe();
        let mut passes = self.scheduler.clone();
        passes.mark_unchanged();
        let mut work = match self.ask(request, by).await {
            Ok(work) => work,
            Err(error) => {
                tracing::info!(error = %error, "control request refused");
                return Response::Refused { error };
            }
        };
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            self.check_done(&mut work).await;
            if work.reports.iter().all(|r| r.done) {
                // Take in what is queued: the revokes and, once the engine
                // has announced it, the new token.
                loop {
                    match events.try_recv() {
                        Ok(event) => work.apply(&event),
                        Err(broadcast::error::TryRecvError::Lagged(_)) => work.lagged = true,
                        Err(_) => break,
                    }
                }
                if work.announced() {
                    return Response::Done {
                        groups: work.reports,
                    };
                }
                // Closed by an issue whose `Issued` event is a moment behind
                // the commit: wait for it below.
            } else if work.reports.iter().any(|r| r.failure.is_some()) {
                return Response::Failed {
                    groups: work.reports,
                };
            }
            tokio::select! {
                () = cancel.cancelled() => {
                    return pending(work, "the daemon is shutting down; the request is dropped with it".to_owned());
                }
                () = tokio::time::sleep_until(deadline) => {
                    return pending(work, format!(
                        "still in progress after {}s; the daemon keeps working on it (see `linetokd status`)",
                        self.wait.as_secs()
                    ));
                }
                changed = passes.changed() => {
                    if changed.is_err() {
                        return pending(work, "the scheduler stopped".to_owned());
                    }
                }
                event = events.recv() => match event {
                    Ok(event) => work.apply(&event),
                    // Missed events only cost detail in the report; whether
                    // the request is done is asked of the rotator.
                    Err(RecvError::Lagged(n)) => {
                        tracing::debug!(missed = n, "control handler lagged behind the rotator's events");
                        work.lagged = true;
                    }
                    Err(RecvError::Closed) => {
                        return pending(work, "the rotator stopped".to_owned());
                    }
                },
            }
        }
    }

    /// The channel that `given` names, by ID or by name, among the
    /// channels in force; an unknown one as it is, for the rotator to refuse.
    fn channel_id(&self, given: ChannelId) -> ChannelId {
        let index: ChannelIndex = self
            .rotator
            .channels()
            .into_iter()
            .map(|(id, name, _)| (id, name))
            .collect();
        index.resolve(given.as_str()).cloned().unwrap_or(given)
    }

    /// Places the request with the rotator.
    async fn ask(&self, request: Request, by: &str) -> Result<Work, String> {
        match request {
            Request::Rotate { channel, group } => {
                let channel = self.channel_id(channel);
                let requests = self
                    .rotator
                    .request_rotation(&channel, group.as_ref(), by)
                    .await?;
                let groups: Vec<GroupName> = requests.iter().map(|(g, _)| g.clone()).collect();
                tracing::info!(channel = %channel, groups = %joined(&groups), "rotation requested over the control socket");
                Ok(Work::new(channel, requests))
            }
            Request::Revoke { channel, group } => {
                let channel = self.channel_id(channel);
                let channels = self.rotator.channels();
                if channels
                    .iter()
                    .any(|(id, _, can_revoke)| *id == channel && !can_revoke)
                {
                    return Err(format!(
                        "channel {channel} has no secret_file: its tokens cannot be revoked at LINE, \
                         so an incident cannot be handled; add secret_file to the channel"
                    ));
                }
                let id = self.rotator.request_incident(&channel, &group, by).await?;
                tracing::warn!(channel = %channel, group = %group, "incident declared over the control socket: revoking the group's tokens and issuing a fresh one");
                Ok(Work::new(channel, vec![(group, id)]))
            }
        }
    }

    /// Asks where each of the work's request rows stands.
    async fn check_done(&self, work: &mut Work) {
        for (report, (id, outcome)) in work.reports.iter_mut().zip(&mut work.requests) {
            // When the engine cannot tell (the store could not be read),
            // nothing changes: ask again at the next event or pass.
            let Some(now) = self.rotator.request_outcome(*id).await else {
                continue;
            };
            *outcome = now;
            report.done = now != RequestOutcome::Open;
        }
    }
}

fn pending(work: Work, reason: String) -> Response {
    Response::Pending {
        groups: work.reports,
        reason,
    }
}

impl Work {
    fn new(channel: ChannelId, requests: Vec<(GroupName, i64)>) -> Self {
        let (reports, requests) = requests
            .into_iter()
            .map(|(g, id)| {
                (
                    GroupReport::new(channel.clone(), g),
                    (id, RequestOutcome::Open),
                )
            })
            .unzip();
        Self {
            channel,
            reports,
            requests,
            lagged: false,
        }
    }

    /// True when every request an issue carried out has its new token in
    /// the report (or events were lost, so it never will).
    fn announced(&self) -> bool {
        self.lagged
            || self
                .reports
                .iter()
                .zip(&self.requests)
                .all(|(r, (_, outcome))| *outcome != RequestOutcome::Done || r.issued.is_some())
    }

    fn report(&mut self, channel: &ChannelId, group: &GroupName) -> Option<&mut GroupReport> {
        if channel != &self.channel {
            return None;
        }
        self.reports.iter_mut().find(|r| &r.group == group)
    }

    /// Folds one of the rotator's events into the reports.
    fn apply(&mut self, event: &RotationEvent) {
        match event {
            RotationEvent::Issued {
                channel,
                group,
                key_id,
                expires_at,
                ..
            } => {
                if let Some(r) = self.report(channel, group) {
                    r.issued = Some(IssuedKey {
                        key_id: key_id.clone(),
                        expires_at: *expires_at,
                    });
                    // A success after a failure ends that failure.
                    r.failure = None;
                }
            }
            RotationEvent::Revoked {
                channel,
                group,
                key_id,
                ..
            } => {
                if let Some(r) = self.report(channel, group) {
                    r.revoked.push(key_id.clone());
                }
            }
            RotationEvent::Failed {
                channel,
                group,
                step,
                error,
                retry_at,
            } => {
                if let Some(r) = self.report(channel, group) {
                    r.failure = Some(format!(
                        "{step}: {error}; the daemon retries at {}",
                        retry_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    ));
                }
            }
            RotationEvent::Alert {
                channel,
                group,
                alert,
            } => {
                if let Some(r) = self.report(channel, group) {
                    r.notes.push(alert.to_string());
                }
            }
            RotationEvent::Expired { .. }
            | RotationEvent::Gone { .. }
            | RotationEvent::ForeignSeen { .. } => {}
        }
    }
}

/// Why [`send`] got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon listens: the socket is missing, or a crashed run left it.
    #[error("no linetokd daemon is running (no control socket at {})", path.display())]
    NoSocket {
        /// The socket path.
        path: PathBuf,
    },
    /// The socket file exists but nothing answers on it.
    #[error("no linetokd daemon is running (nothing answers on the control socket at {})", path.display())]
    NotListening {
        /// The socket path.
        path: PathBuf,
    },
    /// Connecting or talking failed otherwise (permission, timeout).
    #[error("while {what} the control socket at {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The daemon's answer could not be read.
    #[error("the daemon's answer on {} is not understood: {detail}", path.display())]
    BadResponse {
        /// The socket path.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
}

/// Sends `request` to the daemon whose state directory is `state_dir` and
/// waits (at most `timeout`) for its answer. Blocking: for the CLI.
///
/// # Errors
/// [`ClientError::NoSocket`] / [`ClientError::NotListening`] when no daemon
/// runs; the others when the exchange fails.
pub fn send(
    state_dir: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let path = socket_path(state_dir);
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| ClientError::Io { what, path, source }
    };
    let mut stream = match StdUnixStream::connect(&path) {
        Ok(stream) => stream,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ClientError::NoSocket { path });
        }
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            return Err(ClientError::NotListening { path });
        }
        Err(e) => return Err(io("connecting to", &path)(e)),
    };
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(io("setting up", &path))?;
    let mut line = serde_json::to_vec(request).map_err(|e| ClientError::BadResponse {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io("writing to", &path))?;
    let mut answer = String::new();
    BufReader::new((&stream).take(MAX_RESPONSE))
        .read_line(&mut answer)
        .map_err(io("reading from", &path))?;
    if answer.is_empty() {
        return Err(ClientError::BadResponse {
            path,
            detail: "the daemon closed the connection without answering".to_owned(),
        });
    }
    serde_json::from_str(answer.trim_end()).map_err(|e| ClientError::BadResponse {
        path,
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_format_is_stable() {
        let rotate = Request::Rotate {
            channel: ChannelId::new("1"),
            group: None,
        };
        assert_eq!(
            serde_json::to_string(&rotate).unwrap(),
            r#"{"command":"rotate","channel":"1","group":null}"#
        );
        let parsed: Request =
            serde_json::from_str(r#"{"command":"rotate","channel":"1"}"#).unwrap();
        assert_eq!(parsed, rotate);
        let revoke: Request =
            serde_json::from_str(r#"{"command":"revoke","channel":"1","group":"a"}"#).unwrap();
        assert_eq!(
            revoke,
            Request::Revoke {
                channel: ChannelId::new("1"),
                group: GroupName::new("a")
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"command":"revoke","channel":"1"}"#).is_err());
        let refused = Response::Refused { error: "no".into() };
        assert_eq!(
            serde_json::to_string(&refused).unwrap(),
            r#"{"outcome":"refused","error":"no"}"#
        );
    }
}
