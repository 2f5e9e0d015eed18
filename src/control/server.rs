//! The daemon's half: the control lock, the socket created without a
//! moment of wider access, and one task per connection.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::{
    DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _,
    PermissionsExt as _,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{
    ControlHandler, LOCK_FILE, MAX_REQUEST, REQUEST_READ_TIMEOUT, Request, Response, socket_path,
};
use crate::accept::AcceptBackoff;

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
