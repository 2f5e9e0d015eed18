//! Where a running daemon listens, recorded in its state directory.
//!
//! A daemon configured with `listen = "127.0.0.1:0"` (the demo, tests, a
//! user who wants any free port) binds a port nobody knows in advance. So
//! after binding, the daemon writes `<state_dir>/daemon.json` with its HTTP
//! address, its control socket and its PID, and removes it on a clean stop;
//! `linetokd health` and `linetokd status` read it to find the daemon.
//!
//! Invariants:
//! - The file is written atomically (a private temporary file in the same
//!   directory, renamed into place) with mode 0600, so a reader sees a
//!   whole file or none, and only the daemon's user reads it.
//! - Only the daemon holding the state directory's control lock writes or
//!   removes it (`app` writes it after `control` took the lock), so two
//!   daemons never fight over it. A crash (kill -9) leaves it behind; the
//!   next daemon replaces it, and readers that find nobody answering at a
//!   recorded address say so.
//!
//! Depends on std, serde and tempfile only; reads no config, clock or
//! environment: `app` and `cli` pass the state directory.

use std::fs;
use std::io::{self, Write as _};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// The file's name inside the state directory.
pub const FILE: &str = "daemon.json";

/// The largest file [`read`] accepts: a real one is about 200 bytes.
const MAX_LEN: u64 = 64 * 1024;

/// What a running daemon records about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    /// The daemon's process ID.
    pub pid: u32,
    /// The HTTP listener's bound address (health, metrics, the token API),
    /// with the real port when the config asked for port 0.
    pub http: SocketAddr,
    /// The control socket `linetokd rotate` and `linetokd revoke` use.
    pub control_socket: PathBuf,
}

impl Recorded {
    /// The address a client on this host connects to: a daemon bound to
    /// every address (`0.0.0.0`, `::`) is reached on loopback.
    pub fn reachable_http(&self) -> SocketAddr {
        reachable(self.http)
    }
}

/// `addr` with an unspecified IP replaced by loopback of the same family.
pub fn reachable(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

/// The record's path for a state directory.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// The written file; removes it when dropped, unless another writer has
/// replaced it since.
#[derive(Debug)]
pub struct RecordFile {
    path: PathBuf,
    contents: String,
}

impl Drop for RecordFile {
    fn drop(&mut self) {
        // Compare first: never remove a file that is no longer ours.
        if fs::read_to_string(&self.path).is_ok_and(|now| now == self.contents)
            && let Err(e) = fs::remove_file(&self.path)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove the daemon's address record");
        }
    }
}

/// Writes `record` to `<state_dir>/daemon.json` atomically, mode 0600.
///
/// # Errors
/// When the state directory cannot be written.
pub fn write(state_dir: &Path, record: &Recorded) -> io::Result<RecordFile> {
    let mut contents = serde_json::to_string_pretty(record).map_err(io::Error::other)?;
    contents.push('\n');
    // tempfile creates it 0600 whatever the umask.
    let mut temp = tempfile::Builder::new()
        .prefix(".daemon.json.")
        .suffix(".tmp")
        .tempfile_in(state_dir)?;
    temp.write_all(contents.as_bytes())?;
    temp.as_file().sync_all()?;
    let path = path(state_dir);
    temp.persist(&path).map_err(|e| e.error)?;
    Ok(RecordFile { path, contents })
}

/// Why a record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file exists but cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The record's path.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// The file is not a record (too long, not JSON, wrong fields).
    #[error("{path} is not a linetokd address record: {reason}")]
    Invalid {
        /// The record's path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Reads the record in `state_dir` and when it was written; `None` when
/// there is none (no daemon has run, or the last one stopped cleanly).
///
/// # Errors
/// When the file exists but cannot be read or is not a record.
pub fn read(state_dir: &Path) -> Result<Option<(Recorded, SystemTime)>, ReadError> {
    use std::io::Read as _;
    let path = path(state_dir);
    let io_error = |source| ReadError::Io {
        path: path.clone(),
        source,
    };
    let file = match fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(e)),
    };
    let written = file
        .metadata()
        .and_then(|m| m.modified())
        .map_err(io_error)?;
    let mut text = String::new();
    file.take(MAX_LEN + 1)
        .read_to_string(&mut text)
        .map_err(io_error)?;
    if text.len() as u64 > MAX_LEN {
        return Err(ReadError::Invalid {
            path,
            reason: format!("longer than {MAX_LEN} bytes"),
        });
    }
    let record = serde_json::from_str(&text).map_err(|e| ReadError::Invalid {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    Ok(Some((record, written)))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn record() -> Recorded {
        Recorded {
            pid: 42,
            http: "127.0.0.1:43123".parse().unwrap(),
            control_socket: PathBuf::from("/run/linetokd/control.sock"),
        }
    }

    #[test]
    fn a_written_record_reads_back_private_and_goes_when_dropped() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        assert!(read(dir.path())?.is_none());
        let file = write(dir.path(), &record())?;
        let mode = fs::metadata(path(dir.path()))?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (back, _) = read(dir.path())?.ok_or_else(|| anyhow::anyhow!("no record"))?;
        assert_eq!(back, record());
        // Nothing but the record is left in the directory.
        assert_eq!(fs::read_dir(dir.path())?.count(), 1);
        drop(file);
        assert!(read(dir.path())?.is_none());
        Ok(())
    }

    #[test]
    fn a_replaced_record_is_not_removed_by_the_old_writer() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let old = write(dir.path(), &record())?;
        let newer = Recorded {
            pid: 43,
            ..record()
        };
        let _new = write(dir.path(), &newer)?;
        drop(old);
        let (back, _) = read(dir.path())?.ok_or_else(|| anyhow::anyhow!("no record"))?;
        assert_eq!(back.pid, 43);
        Ok(())
    }

    #[test]
    fn garbage_is_an_error_naming_the_file() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        fs::write(path(dir.path()), "not json")?;
        let err = read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("daemon.json"), "{err}");
        Ok(())
    }

    #[test]
    fn every_address_is_reached_on_loopback() {
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert_eq!(reachable(any).to_string(), "127.0.0.1:8080");
        let any6: SocketAddr = "[::]:8080".parse().unwrap();
        assert_eq!(reachable(any6).to_string(), "[::1]:8080");
    }
}
