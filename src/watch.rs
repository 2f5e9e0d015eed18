//! Noticing that the config file changed, for live reload.
//!
//! The watcher uses inotify on the file's *directory*, not the file: editors
//! and config managers replace a file by writing a new one and renaming it
//! over the old (and Kubernetes swaps a symlinked directory), which an
//! inotify watch on the old inode would never report. Any event naming the
//! file (written, moved in, created, deleted, attributes) counts.
//!
//! [`ConfigWatcher::changed`] resolves per burst of events; the caller
//! debounces (an editor's save is several events) with
//! [`ConfigWatcher::settled`]. inotify through rustix's safe wrapper: no
//! `unsafe` here, no extra crate.

use std::ffi::OsString;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::time::Duration;

use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
use tokio::io::unix::AsyncFd;

/// Watches one file for replacement or change.
pub struct ConfigWatcher {
    fd: AsyncFd<OwnedFd>,
    file_name: OsString,
}

impl std::fmt::Debug for ConfigWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigWatcher")
            .field("file_name", &self.file_name)
            .finish_non_exhaustive()
    }
}

impl ConfigWatcher {
    /// Starts watching `path`'s directory for events about `path`.
    ///
    /// # Errors
    /// When inotify is unavailable or the directory cannot be watched.
    pub fn new(path: &Path) -> io::Result<Self> {
        let file_name = path
            .file_name()
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the config path has no file name",
                )
            })?
            .to_owned();
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
        inotify::add_watch(
            &fd,
            &dir,
            WatchFlags::CLOSE_WRITE
                | WatchFlags::MOVED_TO
                | WatchFlags::MOVED_FROM
                | WatchFlags::CREATE
                | WatchFlags::DELETE
                | WatchFlags::ATTRIB
                | WatchFlags::ONLYDIR,
        )?;
        // `AsyncFd::new` is deprecated because a `T` that merely borrows a
        // descriptor could let it be closed while registered; an `OwnedFd`
        // owns it, so it lives exactly as long as the registration. The
        // replacement (`register`) is `unsafe`, which this crate forbids.
        #[allow(deprecated)]
        let fd = AsyncFd::new(fd)?;
        Ok(Self { fd, file_name })
    }

    /// Resolves when an event about the file arrives.
    ///
    /// # Errors
    /// When reading inotify fails.
    pub async fn changed(&mut self) -> io::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
            let mut reader = inotify::Reader::new(guard.get_inner(), &mut buf);
            let mut relevant = false;
            loop {
                match reader.next() {
                    Ok(event) => {
                        if event
                            .file_name()
                            .is_some_and(|name| name.to_bytes() == self.file_name.as_bytes())
                        {
                            relevant = true;
                        }
                    }
                    Err(rustix::io::Errno::AGAIN) => {
                        guard.clear_ready();
                        break;
                    }
                    Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if relevant {
                return Ok(());
            }
        }
    }

    /// Waits until no event about the file arrived for `quiet`: the end of
    /// a save.
    ///
    /// # Errors
    /// When reading inotify fails.
    pub async fn settled(&mut self, quiet: Duration) -> io::Result<()> {
        loop {
            tokio::select! {
                () = tokio::time::sleep(quiet) => return Ok(()),
                changed = self.changed() => changed?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_rename_over_the_file_is_noticed_after_unrelated_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("linetokd.toml");
        std::fs::write(&path, "a").unwrap();
        let mut watcher = ConfigWatcher::new(&path).unwrap();

        // Another file in the same directory: no event for us.
        std::fs::write(dir.path().join("other.toml"), "x").unwrap();
        // The editor's save: write a temp file, rename it over.
        let tmp = dir.path().join(".linetokd.toml.swp");
        std::fs::write(&tmp, "b").unwrap();
        std::fs::rename(&tmp, &path).unwrap();

        watcher.changed().await.unwrap();
        // After the burst, the watcher settles.
        watcher.settled(Duration::from_millis(50)).await.unwrap();
    }
}
