//! The configuration file (docs/design.md section 7): load, validate, print.
//!
//! Three stages, each a type:
//!
//! 1. [`Settings::load`]: the TOML file, then `LINETOKD__SECTION__KEY`
//!    environment overrides (the `parse` module), then `${NAME}`
//!    expansion in path values. Unknown keys are refused (`deny_unknown_fields`)
//!    so a typo is an error naming the key, not a silently ignored line.
//!    Serde stops at the first type error, so this stage reports one problem.
//! 2. [`Settings::validate`]: every rule of section 7 and a few more, each
//!    problem named by its key (`channel[1].id "123" duplicates
//!    channel[0].id`), all of them collected before giving up. It reads the
//!    key and secret files (checking their mode and the key's size) and
//!    returns a [`ValidConfig`] of typed values, so nothing downstream can
//!    hold a half-checked config.
//! 3. [`Settings::render_resolved`]: the resolved config as TOML for
//!    `linetokd check-config`, with defaults filled in and secret files shown
//!    as their path, size and mode, never their contents.
//!
//! The environment is always a parameter (`&HashMap<String, String>`): this
//! module never reads the process environment, so tests pass their own and
//! run in parallel.
//!
//! Only `cli` and `app` use this module. Lower modules (rotator, delivery,
//! http) get their own small structs, built by `app` from a [`ValidConfig`],
//! so the file format can change without touching them.
//!
//! Depends on `domain`, `secret`, `line::keys` (to check assertion keys),
//! `store::crypt` (to check database keys for `[encryption]`), `ha` (the
//! instance ID type of `[ha]`), the
//! `config`, `toml_parser` and `humantime` crates.

mod alerts;
pub mod duration;
mod encryption;
mod error;
mod expand;
mod files;
mod ha;
mod login;
mod long_lived;
mod masked;
mod parse;
mod split;
mod spread;
mod stateless;
mod validate;

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use alerts::{
    AlertsConfig, AlertsSettings, MinSeverity, ReceiverConfig, ReceiverKind, ReceiverSettings,
    SecretUrl, WebhookFormat,
};
pub use encryption::{EncryptionConfig, EncryptionSettings, KeyFileSettings};
pub use error::{ConfigError, Problem};
pub use files::{MAX_CONFIG_FILE, MAX_SECRET_FILE, read_secret_file};
pub use ha::{HaConfig, HaSettings, resolve_instance_id};
pub use login::{
    LoginChannelConfig, LoginChannelSettings, LoginConfig, LoginOutline, LoginSettings,
    LoginTimings,
};
pub use long_lived::{LongLivedConfig, LongLivedSettings, read_token_file};
pub use stateless::{StatelessAuthKind, StatelessConfig, StatelessOutline, StatelessSettings};
pub use validate::{
    ChannelConfig, ChannelOutline, DaemonConfig, GroupConfig, HookConfig, LogFormat, Outline,
    SinkConfig, SinkFormat, ValidConfig, check_channel_id,
};

/// Where the daemon looks for its config file unless told otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/linetokd/linetokd.toml";

/// The prefix of environment variables that override config keys:
/// `LINETOKD__ROTATION__ROTATE_BEFORE=12h` sets `rotation.rotate_before`.
pub const ENV_PREFIX: &str = "LINETOKD__";

/// The longest path value, after `${NAME}` expansion (Linux's `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;

/// The sections whose keys the environment may override. `[[channel]]` is an
/// array, which `SECTION__KEY` cannot address, so it is refused rather than
/// half-supported.
const ENV_SECTIONS: [&str; 2] = ["daemon", "rotation"];

/// The whole file, as written, after environment overrides and `${NAME}`
/// expansion, with defaults filled in. Not yet validated: call
/// [`Settings::validate`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `[daemon]`: where the daemon keeps its state and how it talks.
    #[serde(default)]
    pub daemon: DaemonSettings,
    /// `[rotation]`: when tokens are issued, verified, reconciled, revoked.
    #[serde(default)]
    pub rotation: RotationSettings,
    /// `[[channel]]`: the LINE channels whose tokens linetokd keeps.
    #[serde(default, rename = "channel")]
    pub channels: Vec<ChannelSettings>,
    /// `[alerts]`: where raised alerts are sent.
    #[serde(default)]
    pub alerts: AlertsSettings,
    /// `[encryption]`: the database keys sealing token values at rest;
    /// absent means values are stored in plaintext.
    #[serde(default)]
    pub encryption: Option<EncryptionSettings>,
    /// `[[login_channel]]`: LINE Login channels whose users' tokens are
    /// kept fresh.
    #[serde(default, rename = "login_channel")]
    pub login_channels: Vec<LoginChannelSettings>,
    /// `[login]`: the LINE Login module's timings and API keys.
    #[serde(default)]
    pub login: LoginSettings,
    /// `[ha]`: several instances sharing one database, one leader per
    /// channel; absent means one instance.
    #[serde(default)]
    pub ha: Option<HaSettings>,
    /// The `PATH` of the environment the file was loaded with: where
    /// validation looks for an `on_rotate` program given without a slash,
    /// as the hook will be run with the daemon's `PATH`. Not a key of the
    /// file.
    #[serde(skip)]
    pub hook_search_path: Option<String>,
}

/// `[daemon]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonSettings {
    /// The SQLite database. `None` means `state_dir/linetokd.db`; see
    /// [`DaemonSettings::database_path`].
    pub database: Option<PathBuf>,
    /// A secret file holding a `postgres://` URL: the store is then that
    /// PostgreSQL database instead of a SQLite file.
    pub database_url_file: Option<PathBuf>,
    /// The daemon's own directory: the control socket lives here.
    pub state_dir: PathBuf,
    /// LINE's API base URL; the sandbox's URL in tests and demos.
    pub line_api: String,
    /// How long one request to LINE may take before it counts as transient.
    #[serde(deserialize_with = "duration::deserialize")]
    pub request_timeout: Duration,
    /// `IP:port` for health, metrics and the token API.
    pub listen: String,
    /// `text` or `json`.
    pub log_format: String,
}

impl DaemonSettings {
    /// The database path: `database` if set, else `state_dir/linetokd.db`,
    /// so moving `state_dir` moves the database with it.
    pub fn database_path(&self) -> PathBuf {
        self.database
            .clone()
            .unwrap_or_else(|| self.state_dir.join("linetokd.db"))
    }
}

impl Default for DaemonSettings {
    fn default() -> Self {
        Self {
            database: None,
            database_url_file: None,
            state_dir: PathBuf::from("/var/lib/linetokd"),
            line_api: "https://api.line.me".to_owned(),
            request_timeout: Duration::from_secs(10),
            listen: "127.0.0.1:9464".to_owned(),
            log_format: "text".to_owned(),
        }
    }
}

/// `[rotation]`: the rules of docs/design.md section 4, shared by every channel.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RotationSettings {
    /// Requested lifetime of each token (`token_exp`); at most 30 days.
    #[serde(deserialize_with = "duration::deserialize")]
    pub token_lifetime: Duration,
    /// Rotation starts this long before the current token expires.
    #[serde(deserialize_with = "duration::deserialize")]
    pub rotate_before: Duration,
    /// Upper bound of the stable per-group offset that spreads rotations.
    #[serde(deserialize_with = "duration::deserialize")]
    pub rotation_jitter: Duration,
    /// How often the current token is checked with LINE's verify endpoint.
    #[serde(deserialize_with = "duration::deserialize")]
    pub verify_interval: Duration,
    /// How often each channel's live key IDs are listed and compared.
    #[serde(deserialize_with = "duration::deserialize")]
    pub reconcile_interval: Duration,
    /// Issue attempts per channel per rolling hour; a group about to lose
    /// its token may go over it, up to twice this plus one per group
    /// (`policy::rate`).
    pub max_issues_per_hour: u32,
    /// Revoke the previous token this long after rotation; `None` lets it
    /// expire on its own so slow consumers keep working.
    #[serde(deserialize_with = "duration::deserialize_option")]
    pub revoke_previous_after: Option<Duration>,
    /// A group removed from the config keeps its tokens this long.
    #[serde(deserialize_with = "duration::deserialize")]
    pub removal_grace: Duration,
    /// Lifetime of each signed assertion (its `exp`); at most 30 minutes.
    #[serde(deserialize_with = "duration::deserialize")]
    pub assertion_window: Duration,
}

impl Default for RotationSettings {
    fn default() -> Self {
        const HOUR: u64 = 3_600;
        Self {
            token_lifetime: Duration::from_secs(30 * 24 * HOUR),
            rotate_before: Duration::from_secs(24 * HOUR),
            rotation_jitter: Duration::from_secs(30 * 60),
            verify_interval: Duration::from_secs(6 * HOUR),
            reconcile_interval: Duration::from_secs(HOUR),
            max_issues_per_hour: 6,
            revoke_previous_after: None,
            removal_grace: Duration::from_secs(24 * HOUR),
            assertion_window: Duration::from_secs(10 * 60),
        }
    }
}

/// One `[[channel]]`. Required strings default to empty so that validation,
/// not serde, reports them missing, all at once and by key.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSettings {
    /// The channel ID from the LINE Developers Console (digits).
    #[serde(default)]
    pub id: String,
    /// A short name for logs, metrics, status and the token API's URLs.
    #[serde(default)]
    pub name: String,
    /// The assertion signing private key (PEM or private JWK), mode 0600.
    #[serde(default)]
    pub key_file: PathBuf,
    /// The `kid` the console assigned to the registered public key.
    #[serde(default)]
    pub kid: String,
    /// The channel secret; needed only to revoke tokens.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// `[[channel.group]]`: the consumers of this channel's tokens.
    #[serde(default, rename = "group")]
    pub groups: Vec<GroupSettings>,
    /// `[channel.long_lived]`: a console-issued long-lived token to watch.
    #[serde(default)]
    pub long_lived: Option<LongLivedSettings>,
    /// `[channel.stateless]`: stateless tokens on demand, if wanted.
    #[serde(default)]
    pub stateless: Option<StatelessSettings>,
}

/// One `[[channel.group]]`: a consumer with its own token lineage.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSettings {
    /// The group's name, unique within its channel.
    #[serde(default)]
    pub name: String,
    /// The kind of token the group is kept with: `"v2.1"` (the default;
    /// JWT assertion) or `"short-lived"` (needs the channel's
    /// `secret_file`).
    #[serde(default = "default_kind")]
    pub kind: String,
    /// Files the current token is written to.
    #[serde(default)]
    pub sinks: Vec<SinkSettings>,
    /// A program (argv, no shell) run after each new token is stored; it
    /// gets the token on stdin.
    #[serde(default)]
    pub on_rotate: Option<Vec<String>>,
    /// How long `on_rotate` may run before it is killed.
    #[serde(
        default = "default_hook_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub hook_timeout: Duration,
    /// A file holding this group's key for the token API; without it the API
    /// serves this group nothing.
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
}

fn default_kind() -> String {
    crate::domain::TokenKind::V21.as_str().to_owned()
}

fn default_hook_timeout() -> Duration {
    Duration::from_secs(30)
}

/// One file sink of a group.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSettings {
    /// The file written (atomically) with the token.
    #[serde(default)]
    pub path: PathBuf,
    /// `raw`, `json` or `env`.
    #[serde(default)]
    pub format: String,
    /// The file mode as an octal string.
    #[serde(default = "default_sink_mode")]
    pub mode: String,
    /// Owner (user name or uid) to give the file; unchanged when absent.
    #[serde(default)]
    pub owner: Option<String>,
    /// Group (name or gid) to give the file; unchanged when absent.
    #[serde(default)]
    pub group: Option<String>,
}

fn default_sink_mode() -> String {
    "0600".to_owned()
}

impl Settings {
    /// Reads `path`, applies `LINETOKD__SECTION__KEY` overrides from `env`,
    /// and expands `${NAME}` in path values from `env`.
    ///
    /// `env` is the environment to use, usually `std::env::vars().collect()`
    /// in `cli`; tests pass their own.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Read`] when the file cannot be read,
    /// [`ConfigError::Parse`] for bad TOML, an unknown key or a bad value,
    /// [`ConfigError::Invalid`] for environment variables that name no
    /// overridable key or `${NAME}`s that are not set.
    pub fn load(path: &Path, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        Self::from_toml(&read_text(path)?, path, env)
    }

    /// The state directory `text` names, read from everything but its
    /// `[[channel]]` entries: for a file that does not load because of a
    /// mistake in an entry (even a TOML syntax error there), the commands
    /// still find the running daemon's copy of its config. A file too
    /// broken to be cut into entries (an unclosed header) is read for its
    /// `[daemon]` table's lines alone. `None` when what is read does not
    /// load either, or there is no `[daemon]` table to read.
    pub fn state_dir_of(
        text: &str,
        origin: &Path,
        env: &HashMap<String, String>,
    ) -> Option<PathBuf> {
        let rest = match split::Parts::of(text) {
            Some(parts) => parts.rest,
            None => daemon_table(text)?,
        };
        Self::from_toml(&rest, origin, env)
            .ok()
            .map(|settings| settings.daemon.state_dir)
    }

    /// Like [`Settings::load`] for TOML already in memory; `origin` names it
    /// in errors.
    ///
    /// # Errors
    ///
    /// As [`Settings::load`], without the read error.
    pub fn from_toml(
        text: &str,
        origin: &Path,
        env: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut settings = parse::parse(text, origin, env)?;
        settings.expand_paths(env)?;
        settings.hook_search_path = env.get("PATH").cloned();
        Ok(settings)
    }

    /// Expands `${NAME}` in every path value, collecting every failure.
    fn expand_paths(&mut self, env: &HashMap<String, String>) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut fix = |key: String, path: &mut PathBuf| {
            let Some(text) = path.to_str() else { return };
            let too_long =
                |len: usize| format!("is {len} bytes long; a path is at most {MAX_PATH_LEN} bytes");
            if text.len() > MAX_PATH_LEN {
                problems.push(Problem::new(key, too_long(text.len())));
                return;
            }
            match expand::expand(text, env) {
                Ok(expanded) if expanded.len() > MAX_PATH_LEN => {
                    problems.push(Problem::new(key, too_long(expanded.len())));
                }
                Ok(expanded) => *path = PathBuf::from(expanded),
                Err(message) => problems.push(Problem::new(key, message)),
            }
        };
        if let Some(db) = self.daemon.database.as_mut() {
            fix("daemon.database".into(), db);
        }
        if let Some(url) = self.daemon.database_url_file.as_mut() {
            fix("daemon.database_url_file".into(), url);
        }
        fix("daemon.state_dir".into(), &mut self.daemon.state_dir);
        if let Some(encryption) = self.encryption.as_mut() {
            for (i, key) in encryption.key_files.iter_mut().enumerate() {
                fix(format!("encryption.key_files[{i}].file"), &mut key.file);
            }
        }
        for (i, c) in self.login_channels.iter_mut().enumerate() {
            if let Some(secret) = c.secret_file.as_mut() {
                fix(format!("login_channel[{i}].secret_file"), secret);
            }
        }
        if let Some(key) = self.login.admin_api_key_file.as_mut() {
            fix("login.admin_api_key_file".into(), key);
        }
        if let Some(key) = self.login.reader_api_key_file.as_mut() {
            fix("login.reader_api_key_file".into(), key);
        }
        for (r, receiver) in self.alerts.receivers.iter_mut().enumerate() {
            if let Some(url) = receiver.url_file.as_mut() {
                fix(format!("alerts.receiver[{r}].url_file"), url);
            }
            if let Some(secret) = receiver.signing_secret_file.as_mut() {
                fix(format!("alerts.receiver[{r}].signing_secret_file"), secret);
            }
        }
        for (c, channel) in self.channels.iter_mut().enumerate() {
            fix(format!("channel[{c}].key_file"), &mut channel.key_file);
            if let Some(secret) = channel.secret_file.as_mut() {
                fix(format!("channel[{c}].secret_file"), secret);
            }
            if let Some(ll) = channel.long_lived.as_mut() {
                fix(
                    format!("channel[{c}].long_lived.token_file"),
                    &mut ll.token_file,
                );
                if let Some(api_key) = ll.api_key_file.as_mut() {
                    fix(format!("channel[{c}].long_lived.api_key_file"), api_key);
                }
                for (s, sink) in ll.sinks.iter_mut().enumerate() {
                    fix(
                        format!("channel[{c}].long_lived.sinks[{s}].path"),
                        &mut sink.path,
                    );
                }
            }
            if let Some(stateless) = channel.stateless.as_mut() {
                if let Some(api_key) = stateless.api_key_file.as_mut() {
                    fix(format!("channel[{c}].stateless.api_key_file"), api_key);
                }
                for (s, sink) in stateless.sinks.iter_mut().enumerate() {
                    fix(
                        format!("channel[{c}].stateless.sinks[{s}].path"),
                        &mut sink.path,
                    );
                }
            }
            for (g, group) in channel.groups.iter_mut().enumerate() {
                if let Some(api_key) = group.api_key_file.as_mut() {
                    fix(format!("channel[{c}].group[{g}].api_key_file"), api_key);
                }
                for (s, sink) in group.sinks.iter_mut().enumerate() {
                    fix(
                        format!("channel[{c}].group[{g}].sinks[{s}].path"),
                        &mut sink.path,
                    );
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid { problems })
        }
    }
}

/// What `linetokd check-config` does: load, validate, and render the
/// resolved config with secrets masked.
///
/// # Errors
///
/// Whatever [`Settings::load`] or [`Settings::validate`] finds.
pub fn check(path: &Path, env: &HashMap<String, String>) -> Result<Checked, ConfigError> {
    let settings = Settings::load(path, env)?;
    let valid = settings.validate()?;
    Ok(Checked {
        resolved: settings.render_resolved(),
        warnings: valid.warnings(),
    })
}

/// What [`check`] found in a valid file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The resolved config as TOML.
    pub resolved: String,
    /// What is allowed but likely a mistake ([`ValidConfig::warnings`]).
    pub warnings: Vec<String>,
}

/// The process environment as the config sees it, from
/// `std::env::vars_os()` (which, unlike `vars()`, does not panic on a
/// variable that is not UTF-8).
///
/// A variable whose name or value is not UTF-8 cannot be a config override
/// or a `${NAME}` path value, and is left out, except that a
/// `LINETOKD__...` one is an error naming it: an override that silently did
/// nothing would be worse.
///
/// # Errors
///
/// [`ConfigError::Invalid`] naming every `LINETOKD__` variable that is not
/// UTF-8 (the name shown with `\xNN` escapes for its bad bytes).
pub fn environment(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<HashMap<String, String>, ConfigError> {
    let mut env = HashMap::new();
    let mut problems = Vec::new();
    for (name, value) in vars {
        match (name.into_string(), value.into_string()) {
            (Ok(name), Ok(value)) => {
                env.insert(name, value);
            }
            (name, _) => {
                let shown = match name {
                    Ok(name) => name,
                    Err(name) => name.as_encoded_bytes().escape_ascii().to_string(),
                };
                let bytes = shown.as_bytes();
                let ours = bytes.len() >= ENV_PREFIX.len()
                    && bytes[..ENV_PREFIX.len()].eq_ignore_ascii_case(ENV_PREFIX.as_bytes());
                if ours {
                    problems.push(Problem::new(
                        shown,
                        "is not UTF-8 text, so it cannot set a config value; \
                         fix or unset the variable",
                    ));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(env)
    } else {
        problems.sort_by(|a, b| a.key.cmp(&b.key));
        Err(ConfigError::Invalid { problems })
    }
}

/// The `[daemon]` header's line and the lines after it up to the next
/// header, as written: a line-by-line reading for a file the TOML lexer
/// cannot cut ([`Settings::state_dir_of`]). `None` without such a header.
fn daemon_table(text: &str) -> Option<String> {
    let is_header = |line: &str| {
        line.trim_start()
            .strip_prefix("[daemon]")
            .is_some_and(|after| after.trim().is_empty() || after.trim_start().starts_with('#'))
    };
    let mut lines = text.lines().skip_while(|line| !is_header(line));
    let header = lines.next()?;
    let mut table = format!("{header}\n");
    for line in lines.take_while(|line| !line.trim_start().starts_with('[')) {
        table.push_str(line);
        table.push('\n');
    }
    Some(table)
}

/// The config file's text, as [`Settings::load`] reads it (size-limited,
/// UTF-8): for a caller that must keep the very text it validated (the
/// daemon's copy of the config in force).
///
/// # Errors
///
/// [`ConfigError::Read`].
pub fn read_text(path: &Path) -> Result<String, ConfigError> {
    let read = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let bytes = files::read_limited(path, MAX_CONFIG_FILE).map_err(read)?;
    String::from_utf8(bytes).map_err(|_| {
        read(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "it is not UTF-8 text",
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::from_toml(text, Path::new("test.toml"), &env)
    }

    #[test]
    fn the_state_dir_is_found_despite_a_syntax_error_in_a_channel_entry() {
        let env = HashMap::from([("STATE".to_owned(), "/srv/lt".to_owned())]);
        let good = "[daemon]\nstate_dir = \"${STATE}/state\"\n\n\
                    [[channel]]\nid = \"1\"\n[[channel.group]]\nname = \"a\"\n";
        let origin = Path::new("test.toml");
        // Found what an operator's half-finished edits leave: an unclosed
        // header, an unclosed string, a duplicate key.
        for broken in [
            format!("{good}\n[[channel.group\nname = \"broken\"\n"),
            format!("{good}\n[[channel.group]]\nname = \"broken\n"),
            format!("{good}\n[[channel.group]]\nname = \"b\"\nname = \"c\"\n"),
        ] {
            assert!(
                Settings::from_toml(&broken, origin, &env).is_err(),
                "{broken}"
            );
            assert_eq!(
                Settings::state_dir_of(&broken, origin, &env),
                Some(PathBuf::from("/srv/lt/state")),
                "{broken}"
            );
        }
        // A mistake outside the entries hides it, as does a file too
        // broken to cut that has no `[daemon]` table.
        let bad_daemon = good.replace("[daemon]", "[daemon");
        assert_eq!(Settings::state_dir_of(&bad_daemon, origin, &env), None);
        let no_daemon = "[[channel]]\nid = \"1\"\n[[channel.group\n";
        assert_eq!(Settings::state_dir_of(no_daemon, origin, &env), None);
        // A header with a comment is still the header.
        let commented = format!(
            "{}\n[[channel.group\n",
            good.replace("[daemon]", "[daemon]  # where it keeps state")
        );
        assert_eq!(
            Settings::state_dir_of(&commented, origin, &env),
            Some(PathBuf::from("/srv/lt/state"))
        );
    }

    #[test]
    fn an_empty_file_gets_every_default() {
        let s = parse("", &[]).unwrap();
        assert_eq!(s.daemon, DaemonSettings::default());
        assert_eq!(s.rotation, RotationSettings::default());
        assert!(s.channels.is_empty());
        assert_eq!(
            s.daemon.database_path(),
            PathBuf::from("/var/lib/linetokd/linetokd.db")
        );
    }

    #[test]
    fn a_bad_duration_names_its_key_and_value() {
        let text =
            "[[channel]]\nid = \"1\"\n[[channel.group]]\nname = \"g\"\nhook_timeout = \"soon\"\n";
        let err = parse(text, &[]).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "test.toml: channel[0].group[0].hook_timeout: \"soon\" is not a duration"
            ),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_key_is_named() {
        let err = parse("[rotation]\nrotate_befor = \"1h\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("rotation: unknown field `rotate_befor`"),
            "{err}"
        );
    }

    #[test]
    fn env_overrides_win_and_bad_ones_name_the_variable() {
        let s = parse(
            "[rotation]\nrotate_before = \"24h\"\n",
            &[
                ("LINETOKD__ROTATION__ROTATE_BEFORE", "12h"),
                ("LINETOKD__ROTATION__MAX_ISSUES_PER_HOUR", "3"),
                ("LINETOKD_CONFIG", "/not/an/override"),
            ],
        )
        .unwrap();
        assert_eq!(s.rotation.rotate_before, Duration::from_secs(12 * 3_600));
        assert_eq!(s.rotation.max_issues_per_hour, 3);
        assert_eq!(s.rotation.revoke_previous_after, None);

        let s = parse("", &[("LINETOKD__ROTATION__REVOKE_PREVIOUS_AFTER", "1h")]).unwrap();
        assert_eq!(
            s.rotation.revoke_previous_after,
            Some(Duration::from_secs(3_600))
        );

        let err = parse("", &[("LINETOKD__ROTATION__VERIFY_INTERVAL", "often")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("rotation.verify_interval (set by LINETOKD__ROTATION__VERIFY_INTERVAL)"),
            "{err}"
        );

        let err = parse("", &[("LINETOKD__CHANNEL__0__KID", "x")]).unwrap_err();
        assert_eq!(err.problems()[0].key, "LINETOKD__CHANNEL__0__KID");
    }

    #[test]
    fn a_variable_that_is_not_utf8_is_skipped_unless_it_is_an_override() {
        use std::os::unix::ffi::OsStringExt as _;
        let os = |b: &[u8]| OsString::from_vec(b.to_vec());
        let env = environment([
            (os(b"HOME"), os(b"/home/x")),
            (os(b"JUNK"), os(b"\xff\xfe")),
            (os(b"JUNK\xff"), os(b"x")),
        ])
        .unwrap();
        assert_eq!(env.len(), 1);
        assert_eq!(env["HOME"], "/home/x");

        let err = environment([
            (os(b"LINETOKD__DAEMON__STATE_DIR"), os(b"/var/\xff")),
            (os(b"linetokd__rotation__x\xfe"), os(b"1h")),
            (os(b"JUNK"), os(b"\xff")),
        ])
        .unwrap_err();
        let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["LINETOKD__DAEMON__STATE_DIR", "linetokd__rotation__x\\xfe"],
            "{err}"
        );
        assert!(err.to_string().contains("is not UTF-8"), "{err}");
    }
}
