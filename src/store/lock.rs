//! One writer per database (docs/design.md section 5, "One writer").
//!
//! A [`WriterLock`] is an exclusive `flock` on `<db>.lock` beside the
//! database. The kernel drops it when the holder closes the file or dies, so
//! a crashed daemon never leaves a stale lock behind and no PID liveness
//! guessing is needed. The holder writes its PID into the file only so the
//! refusal message can name it.
//!
//! The lock file is never deleted: deleting it would let a newcomer lock a
//! fresh inode while an old holder still holds the unlinked one.
//!
//! Depends on std only.

use std::ffi::OsString;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::StoreError;

/// Proof that this process is the only writer of a database. Released when
/// dropped or when the process dies.
#[derive(Debug)]
pub struct WriterLock {
    /// Held open for the lock's lifetime: closing it releases the flock.
    file: File,
    db_path: PathBuf,
    lock_path: PathBuf,
}

impl WriterLock {
    /// Takes the writer lock of the database at `db_path`, creating
    /// `<db_path>.lock` (mode 0600) if needed, and writes this process's PID
    /// into it.
    ///
    /// # Errors
    ///
    /// [`StoreError::Locked`] (naming the holder's PID when it is known)
    /// when another process or another `WriterLock` in this process holds
    /// it; [`StoreError::LockFile`] when the lock file cannot be created,
    /// read or written.
    pub fn acquire(db_path: &Path) -> Result<Self, StoreError> {
        let lock_path = lock_path_of(db_path);
        let io_err = |source| StoreError::LockFile {
            path: lock_path.clone(),
            source,
        };
        // No truncate: the file may hold the current holder's PID, which the
        // refusal message needs.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    path: db_path.to_path_buf(),
                    pid: read_pid(&mut file),
                });
            }
            Err(TryLockError::Error(source)) => return Err(io_err(source)),
        }
        file.set_len(0).map_err(io_err)?;
        file.seek(SeekFrom::Start(0)).map_err(io_err)?;
        writeln!(file, "{}", std::process::id()).map_err(io_err)?;
        Ok(Self {
            file,
            db_path: db_path.to_path_buf(),
            lock_path,
        })
    }

    /// The lock file guarding the database at `db_path`: `<db_path>.lock`.
    /// `linetokd status` reads it (never locks it) to tell whether a daemon
    /// holds the database.
    pub fn path_for(db_path: &Path) -> PathBuf {
        lock_path_of(db_path)
    }

    /// The database this lock guards.
    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    /// The lock file, `<db>.lock`.
    pub fn lock_path(&self) -> &Path {
        &self.lock_path
    }
}

impl Drop for WriterLock {
    fn drop(&mut self) {
        // Still locked here, so no one else can be writing the file. Clearing
        // the PID is cosmetic (the flock is what counts), so a failure is
        // ignored: the lock is released when `file` closes right after.
        let _ = self.file.set_len(0);
    }
}

/// `<db>.lock`, beside the database.
fn lock_path_of(db_path: &Path) -> PathBuf {
    let mut name = OsString::from(db_path.as_os_str());
    name.push(".lock");
    PathBuf::from(name)
}

/// The PID the holder wrote, if it has written one yet (it may be between
/// locking and writing).
fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}
