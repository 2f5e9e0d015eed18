//! `[channel.long_lived]`: a long-lived channel access token the operator
//! issued in LINE's console and keeps in a file, which linetokd watches
//! (reads at start and on change, verifies every `verify_interval`) but
//! never issues, copies or stores (docs/design.md, "Long-lived tokens").
//!
//! The file is checked like every secret file (regular, not readable by
//! other users, small, UTF-8, not empty) and must hold one token: one line
//! of LINE's token characters. Problems are named by key
//! (`channel[0].long_lived.token_file`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::duration::{self, format as fmt_dur};
use super::files::{read_private, secret_from_bytes};
use crate::domain::AccessToken;
use crate::secret::Secret;

/// The shortest `verify_interval`: LINE asks clients not to hammer it.
const MIN_VERIFY_INTERVAL: Duration = Duration::from_secs(60);
/// The longest `verify_interval`: a day, so a refusal is noticed the same day.
const MAX_VERIFY_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// `[channel.long_lived]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongLivedSettings {
    /// The file holding the token (mode 0600 or 0640), watched for changes.
    #[serde(default)]
    pub token_file: PathBuf,
    /// How often LINE is asked whether the token is still valid (jittered).
    #[serde(
        default = "default_verify_interval",
        deserialize_with = "duration::deserialize"
    )]
    pub verify_interval: Duration,
    /// A file holding the key for `GET /v1/channels/{channel}/long-lived-token`;
    /// without it the API serves the long-lived token to nobody.
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// Files the token is written to whenever the watched file brings a new
    /// one (raw, json, env, as a group's sinks), so consumers read it the
    /// way they read every other token.
    #[serde(default)]
    pub sinks: Vec<super::SinkSettings>,
}

fn default_verify_interval() -> Duration {
    Duration::from_secs(3600)
}

/// `[channel.long_lived]`, checked. The token is not kept here: the watcher
/// reads the file itself, at start and on every change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LongLivedConfig {
    /// The watched file.
    pub token_file: PathBuf,
    /// How often the token is verified.
    pub verify_interval: Duration,
    /// The key of the long-lived token API, if any.
    pub api_key: Option<Secret>,
    /// Files the current token is written to.
    pub sinks: Vec<super::SinkConfig>,
}

/// Checks `[channel.long_lived]` of the channel at `at` (`channel[0]`):
/// every problem as (key, message).
pub(super) fn check(
    at: &str,
    s: &LongLivedSettings,
) -> Result<LongLivedConfig, Vec<(String, String)>> {
    let mut problems = Vec::new();
    let key = |k: &str| format!("{at}.long_lived.{k}");
    // A file that does not exist (yet) is not a config mistake: a config
    // manager may be replacing it, or deliver it after the daemon starts,
    // and refusing a reload for it would lose the reload's other changes.
    // The watcher reads it when it appears and alerts meanwhile
    // (`long_lived_file_unreadable`); `check-config` warns
    // ([`ValidConfig::warnings`](super::ValidConfig::warnings)). A file
    // that exists must pass every check.
    if !token_file_missing(&s.token_file)
        && let Err(m) = read_token_file(&s.token_file)
    {
        problems.push((key("token_file"), m));
    }
    let api_key = match &s.api_key_file {
        None => None,
        Some(path) if path.as_os_str().is_empty() => {
            problems.push((
                key("api_key_file"),
                "is empty: give a file path or remove the key".to_owned(),
            ));
            None
        }
        Some(path) => match read_private(path).and_then(secret_from_bytes) {
            Ok(secret) => Some(secret),
            Err(reason) => {
                problems.push((
                    key("api_key_file"),
                    format!("{:?} {reason}", path.display().to_string()),
                ));
                None
            }
        },
    };
    if s.verify_interval < MIN_VERIFY_INTERVAL || s.verify_interval > MAX_VERIFY_INTERVAL {
        problems.push((
            key("verify_interval"),
            format!(
                "({}) must be between {} and {}",
                fmt_dur(s.verify_interval),
                fmt_dur(MIN_VERIFY_INTERVAL),
                fmt_dur(MAX_VERIFY_INTERVAL)
            ),
        ));
    }
    if problems.is_empty() {
        Ok(LongLivedConfig {
            token_file: s.token_file.clone(),
            verify_interval: s.verify_interval,
            api_key,
            // Checked and filled in by the validator, which checks every
            // sink the same way.
            sinks: Vec::new(),
        })
    } else {
        Err(problems)
    }
}

/// True when `path` names nothing at all (not even a dangling link) but is
/// a path: the file may appear later.
pub fn token_file_missing(path: &Path) -> bool {
    !path.as_os_str().is_empty()
        && matches!(std::fs::symlink_metadata(path), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
}

/// Reads a long-lived token file: the secret-file checks, then one token
/// (a trailing newline is dropped). The message names the file, never
/// its contents.
///
/// # Errors
/// A reason to follow the file's key, e.g. `"/etc/x" has mode 0644, ...`.
pub fn read_token_file(path: &Path) -> Result<AccessToken, String> {
    if path.as_os_str().is_empty() {
        return Err("is empty: give the path of the file holding the long-lived token".to_owned());
    }
    let shown = path.display().to_string();
    let secret = read_private(path)
        .and_then(secret_from_bytes)
        .map_err(|reason| format!("{shown:?} {reason}"))?;
    let value = secret.expose().trim();
    if value.is_empty() || !value.chars().all(crate::domain::is_line_char) {
        return Err(format!(
            "{shown:?} does not hold one channel access token: it has characters a token never has \
             (spaces, several lines?)"
        ));
    }
    Ok(AccessToken::new(value))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn file(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let path = dir.join("ll.token");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_token_file_is_checked_like_a_secret_and_holds_one_token() {
        let dir = tempfile::tempdir().unwrap();
        let secret = "abc+/DEF=";
        let ok = file(dir.path(), &format!("{secret}\n"), 0o600);
        assert_eq!(read_token_file(&ok).unwrap().expose(), secret);
        let open = file(dir.path(), secret, 0o644);
        let err = read_token_file(&open).unwrap_err();
        assert!(err.contains("mode 0644"), "{err}");
        let two = file(dir.path(), "abc\ndef\n", 0o600);
        let err = read_token_file(&two).unwrap_err();
        assert!(
            err.contains("one channel access token") && !err.contains("abc"),
            "{err}"
        );
        let empty = file(dir.path(), "\n", 0o600);
        assert!(read_token_file(&empty).is_err());
        assert!(
            read_token_file(Path::new(""))
                .unwrap_err()
                .contains("is empty")
        );
    }

    #[test]
    fn a_missing_token_file_is_no_config_mistake_but_a_bad_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let settings = |token_file: PathBuf| LongLivedSettings {
            token_file,
            verify_interval: Duration::from_secs(3600),
            api_key_file: None,
            sinks: Vec::new(),
        };
        let missing = dir.path().join("missing");
        assert!(token_file_missing(&missing));
        assert!(check("channel[0]", &settings(missing)).is_ok());
        let open = file(dir.path(), "x\n", 0o644);
        assert!(!token_file_missing(&open));
        let problems = check("channel[0]", &settings(open)).unwrap_err();
        assert_eq!(problems[0].0, "channel[0].long_lived.token_file");
        assert!(!token_file_missing(Path::new("")));
        assert!(check("channel[0]", &settings(PathBuf::new())).is_err());
    }

    #[test]
    fn problems_are_named_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let s = LongLivedSettings {
            token_file: dir.path().join("open"),
            verify_interval: Duration::from_secs(1),
            api_key_file: Some(PathBuf::new()),
            sinks: Vec::new(),
        };
        std::fs::write(&s.token_file, "x\n").unwrap();
        let problems = check("channel[2]", &s).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "channel[2].long_lived.token_file",
                "channel[2].long_lived.api_key_file",
                "channel[2].long_lived.verify_interval"
            ]
        );
    }
}
