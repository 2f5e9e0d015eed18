//! Whether a daemon holds the database, told from the kernel's lock table
//! without touching the lock.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::store::WriterLock;

// ---------------------------------------------------------------------------
// Is a daemon running?

/// Whether a daemon holds the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DaemonStatus {
    /// True when a process holds the writer lock, false when none does,
    /// `null` when it cannot be told (no readable `/proc/locks`).
    pub running: Option<bool>,
    /// The holder's PID as it wrote it into `<database>.lock` (or as the
    /// kernel lists it); when `running` is `null`, whatever PID the lock
    /// file holds.
    pub pid: Option<u32>,
    /// The SQLite writer lock file; `null` on PostgreSQL (whose writer
    /// holds a lock in the database, which `status` does not inspect).
    pub lock_file: Option<PathBuf>,
    /// Where the running daemon's HTTP listener is bound (health, metrics,
    /// the token API), as it recorded in its state directory; `null` when
    /// no running daemon recorded one.
    pub http: Option<SocketAddr>,
}

/// Tells whether a daemon holds the writer lock of the database at `db`.
///
/// The lock is an exclusive `flock` on `<db>.lock`. Trying to take it, even
/// shared and released at once, would for that instant make a daemon that
/// is starting refuse to run, so this never locks: it looks the lock file's
/// inode up in the kernel's table of held locks (`/proc/locks`). Only the
/// inode is compared, because the device numbers there are the
/// superblock's, which differ from `stat`'s on btrfs subvolumes and
/// overlay filesystems; a wrong "running" would need another file with the
/// same inode number to be `flock`ed on another filesystem. Where
/// `/proc/locks` cannot be read (not Linux), the answer is "unknown".
pub fn probe_daemon_at(location: &crate::store::Location) -> DaemonStatus {
    match location {
        crate::store::Location::Sqlite(db) => probe_daemon(db),
        // Instances may run on other hosts: nothing here can tell. The
        // HTTP record in the state directory may still name a local one.
        crate::store::Location::Postgres(_) => DaemonStatus {
            running: None,
            pid: None,
            lock_file: None,
            http: None,
        },
    }
}

/// [`probe_daemon_at`] for a SQLite database file.
pub fn probe_daemon(db: &Path) -> DaemonStatus {
    let lock_file = WriterLock::path_for(db);
    let meta = match std::fs::metadata(&lock_file) {
        Ok(meta) => meta,
        Err(e) => {
            // No lock file: no daemon has ever opened this database for
            // writing. Anything else (permissions): cannot tell.
            let running = (e.kind() == std::io::ErrorKind::NotFound).then_some(false);
            return DaemonStatus {
                running,
                pid: None,
                lock_file: Some(lock_file.clone()),
                http: None,
            };
        }
    };
    let pid_in_file = std::fs::read_to_string(&lock_file)
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok());
    match std::fs::read_to_string("/proc/locks") {
        // `/proc/locks` is generated as it is read, a page at a time: when
        // other processes take or drop locks between two reads, a line can
        // be skipped (seen under load, with many tests locking at once).
        // So a holder missing from it is looked for where the kernel lists
        // one process's locks alone: the fdinfo of the PID the lock file
        // names.
        Ok(table) => match flock_holder(&table, meta.ino()).or_else(|| {
            pid_in_file
                .filter(|pid| holds_flock(*pid, meta.ino()))
                .map(Some)
        }) {
            Some(kernel_pid) => DaemonStatus {
                running: Some(true),
                pid: pid_in_file.or(kernel_pid),
                lock_file: Some(lock_file.clone()),
                http: None,
            },
            None => DaemonStatus {
                running: Some(false),
                pid: None,
                lock_file: Some(lock_file.clone()),
                http: None,
            },
        },
        Err(_) => DaemonStatus {
            running: None,
            pid: pid_in_file,
            lock_file: Some(lock_file.clone()),
            http: None,
        },
    }
}

/// Finds an exclusive `flock` on inode `ino` in the text of `/proc/locks`
/// (`1: FLOCK  ADVISORY  WRITE 1234 fe:00:5800560 0 EOF`; waiters are
/// marked `->` and skipped). `Some(pid)` when held, with the holder's PID
/// if the kernel shows one.
fn flock_holder(table: &str, ino: u64) -> Option<Option<u32>> {
    table.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, kind, _, access, pid, dev_ino, ..] = fields.as_slice() else {
            return None;
        };
        if *kind != "FLOCK" || *access != "WRITE" {
            return None;
        }
        let inode: u64 = dev_ino.rsplit(':').next()?.parse().ok()?;
        (inode == ino).then(|| pid.parse::<u32>().ok().filter(|p| *p > 0))
    })
}

/// True when process `pid` holds an exclusive `flock` on the file with
/// inode `ino`, as its `/proc/PID/fdinfo/*` `lock:` lines show (the same
/// format as `/proc/locks`, one process at a time).
fn holds_flock(pid: u32, ino: u64) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_to_string(fd.path()).is_ok_and(|info| {
            let table: String = info
                .lines()
                .filter_map(|line| line.strip_prefix("lock:"))
                .map(|line| format!("{}\n", line.trim()))
                .collect();
            flock_holder(&table, ino).is_some()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROC_LOCKS: &str = "\
1: FLOCK  ADVISORY  WRITE 21762 fe:00:5800560 0 EOF
2: FLOCK  ADVISORY  READ 21763 fe:00:777 0 EOF
2: -> FLOCK  ADVISORY  WRITE 4242 fe:00:777 0 EOF
3: POSIX  ADVISORY  WRITE 99 00:1f:888 0 EOF
4: FLOCK  ADVISORY  WRITE 0 00:2a:999 0 EOF
";

    #[test]
    fn a_held_exclusive_flock_is_found_by_inode() {
        assert_eq!(flock_holder(PROC_LOCKS, 5_800_560), Some(Some(21762)));
        // The kernel shows 0 for a holder outside our PID namespace.
        assert_eq!(flock_holder(PROC_LOCKS, 999), Some(None));
    }

    #[test]
    fn shared_locks_waiters_posix_locks_and_other_inodes_are_not_a_daemon() {
        assert_eq!(flock_holder(PROC_LOCKS, 777), None);
        assert_eq!(flock_holder(PROC_LOCKS, 888), None);
        assert_eq!(flock_holder(PROC_LOCKS, 12345), None);
        assert_eq!(flock_holder("", 5_800_560), None);
        assert_eq!(flock_holder("garbage\n1: FLOCK\n", 5_800_560), None);
    }

    #[test]
    fn probing_a_database_nobody_ever_opened_says_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let probe = probe_daemon(&dir.path().join("linetokd.db"));
        assert_eq!(probe.running, Some(false));
        assert_eq!(probe.pid, None);
    }

    #[test]
    fn probing_sees_a_writer_in_this_process_and_its_release() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("linetokd.db");
        let lock = WriterLock::acquire(&db).unwrap();
        let probe = probe_daemon(&db);
        if std::fs::read_to_string("/proc/locks").is_ok() {
            assert_eq!(probe.running, Some(true));
            assert_eq!(probe.pid, Some(std::process::id()));
            // The holder's own lock table tells the same, without the
            // system-wide table that can skip lines while others lock.
            let ino = std::fs::metadata(WriterLock::path_for(&db)).unwrap().ino();
            assert!(holds_flock(std::process::id(), ino));
            drop(lock);
            assert!(!holds_flock(std::process::id(), ino));
            assert_eq!(probe_daemon(&db).running, Some(false));
        } else {
            assert_eq!(probe.running, None);
        }
    }
}
