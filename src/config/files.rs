//! Files that hold secrets: assertion keys, channel secrets, API keys.
//!
//! The daemon refuses a secret file that other users can access (docs/design.md
//! section 11): `mode & 0o007` must be zero. Group access is allowed so a
//! file can be `0640 root:linetokd`, the usual shape of a packaged secret.
//! Every message here names the file and what is wrong with it (missing,
//! mode, size), and never its contents.
//!
//! Unix only, like the daemon: modes are what makes a secret file safe.

use std::fs;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::secret::Secret;

use super::ConfigError;

/// Access bits for "other users"; any of them set refuses the file.
const OTHERS: u32 = 0o007;

/// The largest secret file read: an RSA-2048 key is under 2 KiB as PEM and
/// 4 KiB as a private JWK; secrets and API keys are shorter still. A larger
/// file is a wrong path (a log, a disk image), refused before it is read.
pub const MAX_SECRET_FILE: u64 = 64 * 1024;

/// The largest config file read: 100,000 groups on 6,700 channels (what
/// `linetokd bench` runs) fit with room to spare; `--config /dev/zero`
/// stops here instead of filling memory.
pub const MAX_CONFIG_FILE: u64 = 64 * 1024 * 1024;

/// "64 KiB", "1 MiB": a limit as people write it.
pub fn size_text(bytes: u64) -> String {
    if bytes >= 1024 * 1024 && bytes.is_multiple_of(1024 * 1024) {
        format!("{} MiB", bytes / (1024 * 1024))
    } else if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} bytes")
    }
}

/// Reads at most `limit` bytes of `path`; a longer file (or a device that
/// never ends, like `/dev/zero`) is an error naming the limit, found by
/// reading one byte past it rather than trusting the size metadata, which
/// devices and `/proc` files do not report.
///
/// # Errors
///
/// The I/O error, or [`std::io::ErrorKind::FileTooLarge`] saying the limit.
pub fn read_limited(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let file = fs::File::open(path)?;
    let too_large = || {
        std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!(
                "it is larger than {}, the most linetokd reads from such a file",
                size_text(limit)
            ),
        )
    };
    let size = file
        .metadata()
        .ok()
        .filter(fs::Metadata::is_file)
        .map(|m| m.len());
    if size.is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    // Sized up front: a config of 100,000 groups is 10 MB, and growing the
    // buffer by doubling copied it about twice over (a tenth of `status`).
    // One byte more, so reading to the end needs no second allocation.
    let mut bytes = Vec::with_capacity(
        size.and_then(|len| usize::try_from(len).ok())
            .map_or(0, |len| len.saturating_add(1)),
    );
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > limit {
        return Err(too_large());
    }
    Ok(bytes)
}

/// Reads a secret file (channel secret, API key) for the daemon: checks that
/// other users cannot access it, drops a trailing newline (editors add one),
/// and refuses an empty result.
///
/// # Errors
///
/// [`ConfigError::Secret`] naming the file when it is missing, unreadable,
/// accessible to other users, not UTF-8, or empty.
pub fn read_secret_file(path: &Path) -> Result<Secret, ConfigError> {
    let fail = |reason: String| ConfigError::Secret {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = read_private(path).map_err(fail)?;
    secret_from_bytes(bytes).map_err(fail)
}

/// The checks shared by every secret file, as a reason to follow its name:
/// it exists, is a regular file, other users cannot access it, it is at
/// most [`MAX_SECRET_FILE`] long, and it can be read. Returns its bytes.
pub(super) fn read_private(path: &Path) -> Result<Vec<u8>, String> {
    let meta = fs::metadata(path).map_err(|e| format!("cannot be read: {e}"))?;
    if !meta.is_file() {
        return Err("is not a regular file".to_owned());
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & OTHERS != 0 {
        return Err(format!(
            "has mode {mode:04o}, so other users can access it; run chmod 600 (or 640 with a group) on it"
        ));
    }
    if meta.len() > MAX_SECRET_FILE {
        return Err(format!(
            "is {} bytes long; a key or secret file is at most {} (is this the right file?)",
            meta.len(),
            size_text(MAX_SECRET_FILE)
        ));
    }
    read_limited(path, MAX_SECRET_FILE).map_err(|e| format!("cannot be read: {e}"))
}

/// Turns a secret file's bytes into a [`Secret`], trimming one trailing
/// newline (`\n` or `\r\n`).
pub(super) fn secret_from_bytes(bytes: Vec<u8>) -> Result<Secret, String> {
    let mut text = String::from_utf8(bytes).map_err(|_| "is not UTF-8 text".to_owned())?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.trim().is_empty() {
        return Err("is empty".to_owned());
    }
    // Read in doubling steps, the buffer is up to twice the secret; kept
    // for every group that names the file, the slack is memory for nothing.
    text.shrink_to_fit();
    Ok(Secret::new(text))
}

/// How `check-config` shows a secret file: its size and mode, or why it
/// cannot be inspected. Reads metadata only, never contents.
pub(super) fn describe(path: &Path) -> String {
    match fs::metadata(path) {
        Ok(meta) => format!(
            "secret, {} bytes, mode {:04o}",
            meta.len(),
            meta.permissions().mode() & 0o7777
        ),
        Err(e) => format!("secret, cannot be inspected: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &[u8], mode: u32) -> std::path::PathBuf {
        let path = dir.join(name);
        fs::write(&path, body).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn reads_and_trims_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "s", b"abc123\r\n", 0o600);
        assert_eq!(read_secret_file(&p).unwrap().expose(), "abc123");
        let p = write(dir.path(), "t", b" spaced \n\n", 0o640);
        assert_eq!(read_secret_file(&p).unwrap().expose(), " spaced \n");
    }

    #[test]
    fn refuses_files_others_can_read_without_showing_contents() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "s", b"TOPSECRET", 0o644);
        let err = read_secret_file(&p).unwrap_err().to_string();
        assert!(err.contains("has mode 0644"), "{err}");
        assert!(!err.contains("TOPSECRET"), "{err}");
    }

    #[test]
    fn refuses_missing_empty_and_binary_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = read_secret_file(&dir.path().join("nope")).unwrap_err();
        assert!(missing.to_string().contains("cannot be read"), "{missing}");
        let empty = write(dir.path(), "e", b"\n", 0o600);
        assert!(
            read_secret_file(&empty)
                .unwrap_err()
                .to_string()
                .contains("is empty")
        );
        let binary = write(dir.path(), "b", &[0xff, 0xfe], 0o600);
        assert!(
            read_secret_file(&binary)
                .unwrap_err()
                .to_string()
                .contains("not UTF-8")
        );
        let err = read_secret_file(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn refuses_a_file_larger_than_the_limit_without_reading_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![b'a'; usize::try_from(MAX_SECRET_FILE).unwrap() + 1];
        let p = write(dir.path(), "big", &big, 0o600);
        let err = read_secret_file(&p).unwrap_err().to_string();
        assert!(err.contains("is 65537 bytes long"), "{err}");
        assert!(err.contains("at most 64 KiB"), "{err}");
        let exact = write(dir.path(), "exact", &big[1..], 0o600);
        assert!(read_secret_file(&exact).is_ok());
        // A device reports no size: the read itself stops past the limit.
        let err = read_limited(Path::new("/dev/zero"), 10).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::FileTooLarge);
        assert!(err.to_string().contains("larger than 10 bytes"), "{err}");
        assert_eq!(size_text(MAX_CONFIG_FILE), "64 MiB");
    }

    #[test]
    fn describe_shows_size_and_mode_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "s", b"TOPSECRET", 0o600);
        assert_eq!(describe(&p), "secret, 9 bytes, mode 0600");
    }
}
