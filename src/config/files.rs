//! Files that hold secrets: assertion keys, channel secrets, API keys.
//!
//! The daemon refuses a secret file that other users can access (DESIGN.md
//! section 11): `mode & 0o007` must be zero. Group access is allowed so a
//! file can be `0640 root:linetokd`, the usual shape of a packaged secret.
//! Every message here names the file and what is wrong with it (missing,
//! mode, size), and never its contents.
//!
//! Unix only, like the daemon: modes are what makes a secret file safe.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::secret::Secret;

use super::ConfigError;

/// Access bits for "other users"; any of them set refuses the file.
const OTHERS: u32 = 0o007;

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
/// it exists, is a regular file, other users cannot access it, and it can be
/// read. Returns its bytes.
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
    fs::read(path).map_err(|e| format!("cannot be read: {e}"))
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
    fn describe_shows_size_and_mode_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "s", b"TOPSECRET", 0o600);
        assert_eq!(describe(&p), "secret, 9 bytes, mode 0600");
    }
}
