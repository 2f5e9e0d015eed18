//! Validation: every rule of docs/design.md section 7, each problem named by its
//! key, all problems collected, and a typed [`ValidConfig`] as the result.
//!
//! The rules, in the order they are checked:
//!
//! - `[daemon]`: `line_api` an http(s) URL, `listen` an `IP:port`,
//!   `log_format` text or json, `request_timeout` above zero and at most
//!   5 minutes.
//! - `[rotation]`: `token_lifetime` 1 s to 30 days (LINE's `token_exp`),
//!   `rotate_before` shorter than it, `rotate_before + rotation_jitter`
//!   shorter too (else a new token is due the moment it is issued),
//!   `verify_interval` and `reconcile_interval` above zero and at most 30
//!   days, `revoke_previous_after` and `removal_grace` at most 30 days (no
//!   token lives longer), `max_issues_per_hour` at least 1,
//!   `assertion_window` above zero and at most 30 minutes.
//! - `[[channel]]`: `id` digits (at most 32) and unique, `name` a safe
//!   identifier, unique and not another channel's `id` (either names the channel), `kid` not empty, at most 128 bytes, no control
//!   characters, `key_file` a readable RSA-2048 private key that other users
//!   cannot access, `secret_file` likewise private and not empty (and
//!   present when `revoke_previous_after` needs it), at most 15 groups (LINE
//!   keeps 30 live tokens per channel; each group may hold 2).
//! - `[[channel.group]]`: `name` a safe identifier, unique in its channel;
//!   sinks with an absolute path (unique across the file), a known format,
//!   an octal mode no one but the owner can write and others cannot read;
//!   `on_rotate` a non-empty argv (at most 256 arguments of 4096 bytes)
//!   whose program exists and is executable (looked up in the `PATH` the
//!   config was loaded with when it has no slash, as the hook will be);
//!   `hook_timeout` above zero and at most 1 hour; `api_key_file` private
//!   and not empty.
//! - `[ha]`: the rules of `super::ha` (`lease` longer than
//!   `request_timeout + renew + 5s`, room for an orphan in every channel).
//! - `[channel.stateless]`: the rules of `super::stateless` (auth, the
//!   secret it needs, margins, the per-minute guard, a required
//!   `api_key_file` while enabled), its API key file read like a group's,
//!   its sinks checked like a group's (paths unique across the file).
//!
//! Every value is bounded, so nothing downstream overflows on
//! `verify_interval = "500000000y"` or carries a megabyte `kid` into every
//! request; an error quotes at most the start of an overlong value. Key and
//! secret files are read only up to [`super::MAX_SECRET_FILE`].
//!
//! Validation reads the key and secret files once and hands their contents
//! on in the [`ValidConfig`], so what was checked is what is used; it also
//! looks at (but does not run) each hook program.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::channel_index::ChannelIndex;
use crate::domain::{ChannelId, ChannelSecret, GroupName, SigningKid, TokenKind};
use crate::line::keys::SigningKey;
use crate::secret::Secret;

use super::duration::format as fmt_dur;
use super::files::{read_private, secret_from_bytes};
use super::{
    AlertsConfig, ChannelSettings, ConfigError, GroupSettings, Problem, RotationSettings, Settings,
};

/// LINE's cap on live v2.1 tokens per channel.
pub(super) const CHANNEL_TOKEN_CAP: usize = 30;
/// Live tokens one group may hold: current and previous.
const TOKENS_PER_GROUP: usize = 2;
/// So many groups fit in one channel.
pub const MAX_GROUPS_PER_CHANNEL: usize = CHANNEL_TOKEN_CAP / TOKENS_PER_GROUP;

/// LINE's longest token lifetime (`token_exp`).
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 86_400);
/// LINE's longest assertion lifetime.
const MAX_ASSERTION_WINDOW: Duration = Duration::from_secs(30 * 60);
/// Longest channel or group name: it appears in URLs, paths and labels.
const MAX_NAME_LEN: usize = 64;
/// Longest `kid`: the console's are UUIDs (36 bytes); it goes into every
/// assertion's header.
const MAX_KID_LEN: usize = 128;
/// Longest channel ID: LINE's are 10 digits.
const MAX_CHANNEL_ID_LEN: usize = 32;
/// Longest `line_api` URL.
const MAX_URL_LEN: usize = 2048;
/// Longest user or group name for a sink's owner.
const MAX_ACCOUNT_LEN: usize = 64;
/// Most arguments of an `on_rotate` argv, the program included.
const MAX_HOOK_ARGS: usize = 256;
/// Longest argument of an `on_rotate` argv (Linux's `PATH_MAX`, too).
const MAX_HOOK_ARG_LEN: usize = 4096;
/// Longest `request_timeout`: a LINE call slower than this is not coming.
const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Longest `verify_interval`, `reconcile_interval`, `revoke_previous_after`
/// and `removal_grace`: no token lives longer, so a longer value means
/// "never" and is a typo more likely than a wish.
const MAX_INTERVAL: Duration = MAX_TOKEN_LIFETIME;
/// Longest `hook_timeout`.
const MAX_HOOK_TIMEOUT: Duration = Duration::from_secs(3_600);
/// Where an `on_rotate` program without a slash is looked for when the
/// environment has no `PATH` (the usual default of `execvp`).
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// How much of an overlong value an error message quotes.
const QUOTE_LEN: usize = 60;

/// A configuration that passed every rule, in typed form. Built only by
/// [`Settings::validate`].
#[derive(Debug, Clone)]
pub struct ValidConfig {
    /// `[daemon]`.
    pub daemon: DaemonConfig,
    /// `[rotation]`, as written (every value is already typed and checked).
    pub rotation: RotationSettings,
    /// `[[channel]]`, in file order.
    pub channels: Vec<ChannelConfig>,
    /// `[alerts]`: where raised alerts are sent.
    pub alerts: AlertsConfig,
    /// `[encryption]`, when present: the database keys.
    pub encryption: Option<super::EncryptionConfig>,
    /// `[[login_channel]]` and `[login]`, when a login channel is
    /// configured.
    pub login: Option<super::LoginConfig>,
    /// `[ha]`, when present.
    pub ha: Option<super::HaConfig>,
}

impl ValidConfig {
    /// What is allowed but likely a mistake, one sentence each: shown by
    /// `linetokd check-config` and logged when the daemon loads the file.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = self.alerts.warnings();
        for c in &self.channels {
            let short: Vec<&str> = c
                .groups
                .iter()
                .filter(|g| g.kind == TokenKind::ShortLived)
                .map(|g| g.name.as_str())
                .collect();
            if !short.is_empty() {
                out.push(format!(
                    "channel {} keeps {} with short-lived tokens: LINE evicts the channel's \
                     oldest short-lived token when a 31st is issued, so another issuer on \
                     this channel can evict ours (and ours theirs); linetokd notices \
                     another issuer's eviction only at the next verify \
                     (rotation.verify_interval)",
                    c.name,
                    short.join(", ")
                ));
            }
            if let Some(ll) = &c.long_lived
                && super::long_lived::token_file_missing(&ll.token_file)
            {
                out.push(format!(
                    "channel {}'s long-lived token_file {:?} does not exist: the daemon \
                     serves no long-lived token and alerts (long_lived_file_unreadable) \
                     until it appears",
                    c.name,
                    ll.token_file.display().to_string()
                ));
            }
        }
        if let Some(ha) = &self.ha {
            // After a takeover that interrupted an issuance, the group whose
            // issuance it was issues nothing for up to lease + assertion
            // window + allowance;
            // a rotation due later than that still lands before expiry.
            let hold = ha
                .lease
                .saturating_add(self.rotation.assertion_window)
                .saturating_add(ha.line_clock_allowance);
            if self.rotation.rotate_before <= hold {
                out.push(format!(
                    "rotation.rotate_before ({}) is not longer than ha.lease + \
                     rotation.assertion_window + ha.line_clock_allowance ({}): after a takeover \
                     that interrupted a group's issuance that group issues nothing for up to \
                     that long, so it can run out of its token meanwhile",
                    super::duration::format(self.rotation.rotate_before),
                    super::duration::format(hold)
                ));
            }
        }
        out
    }

    /// The channels by ID and by name, for whatever names a channel
    /// (`--channel`, the token API's paths).
    pub fn channel_index(&self) -> ChannelIndex {
        self.channels
            .iter()
            .map(|c| (c.id.clone(), c.name.clone()))
            .collect()
    }

    /// The channel that `given` names, by its ID or its configured name.
    pub fn channel(&self, given: &str) -> Option<&ChannelConfig> {
        let id = self.channel_index().resolve(given)?.clone();
        self.channels.iter().find(|c| c.id == id)
    }
}

/// `[daemon]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    /// The SQLite database (default `state_dir/linetokd.db`); not used when
    /// `postgres` is set.
    pub database: PathBuf,
    /// The PostgreSQL database `database_url_file` names, when set: the
    /// store lives there instead.
    pub postgres: Option<crate::store::pg::PgTarget>,
    /// The daemon's directory; the control socket lives here.
    pub state_dir: PathBuf,
    /// LINE's API base URL.
    pub line_api: reqwest::Url,
    /// Per-request timeout for calls to LINE.
    pub request_timeout: Duration,
    /// Address of the health, metrics and token API listener.
    pub listen: SocketAddr,
    /// How logs are written.
    pub log_format: LogFormat,
}

impl DaemonConfig {
    /// Where the store lives: the PostgreSQL database when
    /// `database_url_file` is set, else the SQLite file.
    pub fn store(&self) -> crate::store::Location {
        match &self.postgres {
            Some(target) => crate::store::Location::Postgres(Box::new(target.clone())),
            None => crate::store::Location::Sqlite(self.database.clone()),
        }
    }
}

/// How the daemon writes logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// What `linetokd status` and `linetokd plan` need of a config: the
/// `[daemon]` and `[rotation]` sections and each channel's ID, name, groups
/// and whether it has a secret, checked as [`Settings::validate`] checks
/// them ([`Settings::outline`] lists what it leaves out). Each channel's key
/// and secret file is read, so a config the daemon would refuse for a
/// missing or unreadable one is refused here too, but the key is not parsed
/// and the groups' own rules (sinks, hooks, API key files) are not checked:
/// an RSA key parse per channel and a file per group were most of
/// `status`'s time at 100,000 groups, and neither changes what a report of
/// the store shows.
#[derive(Debug, Clone)]
pub struct Outline {
    /// `[daemon]`.
    pub daemon: DaemonConfig,
    /// `[rotation]`.
    pub rotation: RotationSettings,
    /// `[alerts] capacity_low_threshold` (a rule the forecast applies).
    pub capacity_low_threshold: u32,
    /// `[[channel]]`, in file order.
    pub channels: Vec<ChannelOutline>,
    /// `[encryption]`, when present: `status`, `plan` and `token` open
    /// sealed values with it.
    pub encryption: Option<super::EncryptionConfig>,
    /// `[[login_channel]]` and `[login]` as `status` reports them (not
    /// checked here; the daemon checks them).
    pub login: super::LoginOutline,
}

/// One `[[channel]]` as [`Outline`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelOutline {
    /// The channel ID.
    pub id: ChannelId,
    /// The channel's short name.
    pub name: String,
    /// Its groups' names, in file order.
    pub groups: Vec<GroupName>,
    /// The groups (of `groups`) kept with short-lived tokens.
    pub short_lived: Vec<GroupName>,
    /// True when `secret_file` is set (needed to revoke); the file is read
    /// to check it, its content not kept.
    pub has_secret: bool,
    /// `[channel.stateless]`, when enabled (its API key file not read).
    pub stateless: Option<super::StatelessOutline>,
}

/// One `[[channel]]`, checked, with its key and secret loaded.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// The channel ID.
    pub id: ChannelId,
    /// The channel's short name.
    pub name: String,
    /// The assertion signing key and its `kid`: required when a v2.1 group
    /// or `stateless.auth = "assertion"` needs it, optional otherwise (a
    /// channel of short-lived groups, stateless tokens by secret or a
    /// watched long-lived token needs none).
    pub assertion: Option<AssertionKey>,
    /// The channel secret, when configured; needed to revoke.
    pub secret: Option<ChannelSecret>,
    /// The channel's groups, in file order.
    pub groups: Vec<GroupConfig>,
    /// The watched long-lived token, when `[channel.long_lived]` is set.
    pub long_lived: Option<super::LongLivedConfig>,
    /// `[channel.stateless]`, when enabled.
    pub stateless: Option<super::StatelessConfig>,
}

/// A channel's assertion signing key, checked and loaded.
#[derive(Debug, Clone)]
pub struct AssertionKey {
    /// The `kid` of the registered public key.
    pub kid: SigningKid,
    /// Where the signing key came from (for messages).
    pub key_file: PathBuf,
    /// The RSA-2048 assertion signing key, shared because it cannot be
    /// cloned.
    pub key: Arc<SigningKey>,
}

/// True when the channel's config calls for its assertion key: a v2.1 group
/// (issued and listed with assertions) or stateless tokens by assertion.
/// How many of the channel's groups are kept with tokens of `kind` (each
/// kind has its own pool of 30 at LINE).
pub(super) fn groups_of_kind(c: &ChannelSettings, kind: TokenKind) -> usize {
    c.groups
        .iter()
        .filter(|g| TokenKind::parse(&g.kind) == Some(kind))
        .count()
}

fn needs_assertion_key(c: &ChannelSettings) -> bool {
    c.groups
        .iter()
        .any(|g| TokenKind::parse(&g.kind) != Some(TokenKind::ShortLived))
        || c.stateless
            .as_ref()
            .is_some_and(|s| s.enabled && s.auth == "assertion")
}

/// True when the channel names a key or a kid: then both are checked, even
/// where nothing needs them.
fn assertion_given(c: &ChannelSettings) -> bool {
    !c.key_file.as_os_str().is_empty() || !c.kid.trim().is_empty()
}

/// One `[[channel.group]]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// The group's name, unique in its channel.
    pub name: GroupName,
    /// The kind of token it is kept with.
    pub kind: TokenKind,
    /// Files the current token is written to.
    pub sinks: Vec<SinkConfig>,
    /// The program run after each new token, if any.
    pub on_rotate: Option<HookConfig>,
    /// The group's token API key, if any.
    pub api_key: Option<Secret>,
}

/// A group's `on_rotate` hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookConfig {
    /// Program and arguments; never run through a shell.
    pub argv: Vec<String>,
    /// How long it may run.
    pub timeout: Duration,
}

/// One file sink, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkConfig {
    /// The file.
    pub path: PathBuf,
    /// What goes in it.
    pub format: SinkFormat,
    /// Its mode (permission bits only).
    pub mode: u32,
    /// Owner to set (user name or uid).
    pub owner: Option<String>,
    /// Group to set (group name or gid).
    pub group: Option<String>,
}

/// What a sink file holds (docs/design.md section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkFormat {
    /// The token alone.
    Raw,
    /// `access_token`, `token_type`, `key_id`, `expires_at`, and the previous
    /// token.
    Json,
    /// `LINE_CHANNEL_ACCESS_TOKEN=...`.
    Env,
}

impl Settings {
    /// Checks every rule and returns the typed configuration. Reads the key,
    /// secret and API key files (and nothing else).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] listing every problem found, each naming its
    /// key.
    pub fn validate(&self) -> Result<ValidConfig, ConfigError> {
        let mut login_problems = Vec::new();
        let login = super::login::validate(
            &self.login_channels,
            &self.login,
            self.encryption.is_some(),
            &mut login_problems,
        );
        // `[ha]`'s problems join the login ones: both are checked beside
        // the main walk and reported after it.
        let ha = self.ha.as_ref().and_then(|h| {
            super::ha::validate(
                h,
                self.daemon.request_timeout,
                &self.channels,
                &mut login_problems,
            )
        });
        if self.ha.is_some() && !self.login_channels.is_empty() {
            // Every instance would refresh the same grants: LINE Login's
            // refresh tokens are not leased yet (docs/design.md §14.6).
            login_problems.push(Problem::new(
                "ha",
                "cannot be used with login_channels yet: every instance would refresh the same \
                 LINE Login grants; run LINE Login on an instance without [ha] and its own database",
            ));
        }
        if self.ha.is_some() && self.daemon.database_url_file.is_none() {
            login_problems.push(Problem::new(
                "ha",
                "needs daemon.database_url_file: instances share their state only through one \
                 PostgreSQL database",
            ));
        }
        let checked = self.check(|v, i, c| v.channel(self, i, c));
        let (daemon, channels, alerts, encryption) = match checked {
            Err(ConfigError::Invalid { mut problems }) if !login_problems.is_empty() => {
                problems.extend(login_problems);
                return Err(ConfigError::Invalid { problems });
            }
            Err(e) => return Err(e),
            Ok(_) if !login_problems.is_empty() => {
                return Err(ConfigError::Invalid {
                    problems: login_problems,
                });
            }
            Ok(checked) => checked,
        };
        Ok(ValidConfig {
            daemon,
            rotation: self.rotation.clone(),
            channels,
            alerts,
            encryption,
            login,
            ha,
        })
    }

    /// The [`Outline`] of the config: every rule of [`Self::validate`] but
    /// the key's parse and the groups' own rules (sinks, hooks, API key
    /// files): `[daemon]`, `[rotation]`, `[alerts]` (its URL and secret
    /// files read), each channel's ID, name, kid, key and secret file (read,
    /// the key not parsed) and group count, group names, duplicates.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] listing every problem found, each naming its
    /// key.
    pub fn outline(&self) -> Result<Outline, ConfigError> {
        // `[alerts]` is checked (a config the daemon refuses is refused
        // here too) but only its capacity threshold kept: reports do not
        // send alerts.
        let (daemon, channels, alerts, encryption) =
            self.check(|v, i, c| v.channel_outline(self, i, c))?;
        Ok(Outline {
            daemon,
            rotation: self.rotation.clone(),
            capacity_low_threshold: alerts.capacity_low_threshold,
            channels,
            encryption,
            login: super::login::outline(&self.login_channels, &self.login),
        })
    }

    /// The walk both share: `[daemon]`, `[rotation]`, each channel through
    /// `channel`, the duplicates, `[alerts]`; every problem collected.
    fn check<T>(
        &self,
        channel: impl Fn(&mut Validator, usize, &ChannelSettings) -> Option<T> + Sync,
    ) -> Result<Checked<T>, ConfigError>
    where
        T: Send,
    {
        let validator = || Validator {
            search_path: self.hook_search_path.clone(),
            ..Validator::default()
        };
        let mut v = validator();
        let daemon = v.daemon(self);
        v.rotation(&self.rotation);
        // On every core for a large config; each run's problems join in
        // channel order.
        let mut channels: Vec<Option<T>> = Vec::with_capacity(self.channels.len());
        for (checked, run) in super::spread::in_order(&self.channels, validator, channel) {
            channels.extend(checked);
            v.problems.extend(run.problems);
        }
        v.duplicates(self);
        let alerts = super::alerts::validate(&self.alerts, &self.channels, &mut v.problems);
        let encryption = self
            .encryption
            .as_ref()
            .map(|e| super::encryption::validate(e, &mut v.problems));
        if !v.problems.is_empty() {
            return Err(ConfigError::Invalid {
                problems: v.problems,
            });
        }
        let channels: Option<Vec<T>> = channels.into_iter().collect();
        let (Some(daemon), Some(channels), Some(alerts), Some(encryption)) = (
            daemon,
            channels,
            alerts,
            encryption.map_or(Some(None), |e| e.map(Some)),
        ) else {
            // Every `None` above pushed a problem, so this is unreachable in
            // practice; report it rather than panic if a rule forgets to.
            return Err(ConfigError::Invalid {
                problems: vec![Problem::new("config", "failed validation")],
            });
        };
        Ok((daemon, channels, alerts, encryption))
    }
}

/// What [`Settings::check`] hands back: `[daemon]`, the channels as the
/// caller checked them, `[alerts]` and `[encryption]`.
type Checked<T> = (
    DaemonConfig,
    Vec<T>,
    AlertsConfig,
    Option<super::EncryptionConfig>,
);

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
    /// The `PATH` to find `on_rotate` programs in (see
    /// [`Settings::hook_search_path`]).
    search_path: Option<String>,
}

impl Validator {
    fn problem(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem::new(key, message));
    }

    /// Records the error (if any) and hands on the value.
    fn keep<T>(&mut self, key: &str, result: Result<T, String>) -> Option<T> {
        result.map_err(|m| self.problem(key, m)).ok()
    }

    fn positive(&mut self, key: &str, value: Duration) {
        if value.is_zero() {
            self.problem(key, "must be longer than 0s");
        }
    }

    /// Above zero and at most `max` (`max_text` says why that is the
    /// limit).
    fn bounded(&mut self, key: &str, value: Duration, max: Duration, why: &str) {
        self.positive(key, value);
        self.at_most(key, value, max, why);
    }

    fn at_most(&mut self, key: &str, value: Duration, max: Duration, why: &str) {
        if value > max {
            self.problem(
                key,
                format!("({}) must be at most {}{why}", fmt_dur(value), fmt_dur(max)),
            );
        }
    }

    fn daemon(&mut self, s: &Settings) -> Option<DaemonConfig> {
        let d = &s.daemon;
        if d.state_dir.as_os_str().is_empty() {
            self.problem("daemon.state_dir", "is empty");
        }
        if d.database
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            self.problem(
                "daemon.database",
                "is empty: remove it to use state_dir/linetokd.db",
            );
        }
        let postgres = match (&d.database, &d.database_url_file) {
            (Some(_), Some(_)) => {
                self.problem(
                    "daemon.database_url_file",
                    "and daemon.database are both set: the store is either a SQLite file \
                     (database) or a PostgreSQL database (database_url_file), not both",
                );
                None
            }
            (None, Some(file)) => self.keep("daemon.database_url_file", postgres_target(file)),
            _ => None,
        };
        self.bounded(
            "daemon.request_timeout",
            d.request_timeout,
            MAX_REQUEST_TIMEOUT,
            "",
        );
        let line_api = self.keep("daemon.line_api", parse_line_api(&d.line_api));
        let listen = self.keep(
            "daemon.listen",
            d.listen.trim().parse::<SocketAddr>().map_err(|_| {
                format!(
                    "{} is not an IP address and port like \"127.0.0.1:9464\" or \"[::1]:9464\"",
                    quoted(&d.listen)
                )
            }),
        );
        let log_format = self.keep(
            "daemon.log_format",
            match d.log_format.as_str() {
                "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                other => Err(format!(
                    "{} is not one of \"text\", \"json\"",
                    quoted(other)
                )),
            },
        );
        Some(DaemonConfig {
            database: d.database_path(),
            postgres,
            state_dir: d.state_dir.clone(),
            line_api: line_api?,
            request_timeout: d.request_timeout,
            listen: listen?,
            log_format: log_format?,
        })
    }

    fn rotation(&mut self, r: &RotationSettings) {
        let lifetime = r.token_lifetime;
        if lifetime > MAX_TOKEN_LIFETIME {
            self.problem(
                "rotation.token_lifetime",
                format!(
                    "({}) must be at most 30d, the longest token lifetime LINE grants",
                    fmt_dur(lifetime)
                ),
            );
        } else if lifetime < Duration::from_secs(1) {
            self.problem("rotation.token_lifetime", "must be at least 1s");
        }
        if r.rotate_before >= lifetime {
            self.problem(
                "rotation.rotate_before",
                format!(
                    "({}) must be shorter than rotation.token_lifetime ({})",
                    fmt_dur(r.rotate_before),
                    fmt_dur(lifetime)
                ),
            );
        } else if r.rotate_before.saturating_add(r.rotation_jitter) >= lifetime {
            self.problem(
                "rotation.rotation_jitter",
                format!(
                    "({}) plus rotation.rotate_before ({}) must be shorter than \
                     rotation.token_lifetime ({}), or a new token is due as soon as it is issued",
                    fmt_dur(r.rotation_jitter),
                    fmt_dur(r.rotate_before),
                    fmt_dur(lifetime)
                ),
            );
        }
        let longest = ", the longest a token lives";
        self.bounded(
            "rotation.verify_interval",
            r.verify_interval,
            MAX_INTERVAL,
            longest,
        );
        self.bounded(
            "rotation.reconcile_interval",
            r.reconcile_interval,
            MAX_INTERVAL,
            longest,
        );
        if let Some(after) = r.revoke_previous_after {
            self.at_most(
                "rotation.revoke_previous_after",
                after,
                MAX_INTERVAL,
                longest,
            );
        }
        self.at_most(
            "rotation.removal_grace",
            r.removal_grace,
            MAX_INTERVAL,
            longest,
        );
        // rotation_jitter is bounded by the rule above: with rotate_before
        // it must stay under token_lifetime.
        if r.max_issues_per_hour == 0 {
            self.problem(
                "rotation.max_issues_per_hour",
                "is 0, so no token could ever be issued; it must be at least 1",
            );
        }
        if r.assertion_window.is_zero() {
            self.problem("rotation.assertion_window", "must be longer than 0s");
        } else if r.assertion_window > MAX_ASSERTION_WINDOW {
            self.problem(
                "rotation.assertion_window",
                format!(
                    "({}) must be at most 30m, the longest assertion lifetime LINE accepts",
                    fmt_dur(r.assertion_window)
                ),
            );
        }
    }

    fn channel(&mut self, s: &Settings, i: usize, c: &ChannelSettings) -> Option<ChannelConfig> {
        let at = format!("channel[{i}]");
        let (id, name_ok, kid) = self.channel_names(&at, c);
        let key = if needs_assertion_key(c) || assertion_given(c) {
            self.keep(&format!("{at}.key_file"), load_key(&c.key_file))
                .map(Some)
        } else {
            Some(None)
        };
        let secret = match &c.secret_file {
            Some(path) => self
                .keep(&format!("{at}.secret_file"), load_secret(path))
                .map(|s| Some(ChannelSecret::new(s.expose()))),
            None => Some(None),
        };
        self.channel_limits(s, &at, c);
        let groups: Vec<Option<GroupConfig>> = c
            .groups
            .iter()
            .enumerate()
            .map(|(g, group)| self.group(&format!("{at}.group[{g}]"), group))
            .collect();
        let groups: Option<Vec<GroupConfig>> = groups.into_iter().collect();
        let long_lived = match &c.long_lived {
            None => Some(None),
            Some(ll) => {
                let sinks: Option<Vec<SinkConfig>> = ll
                    .sinks
                    .iter()
                    .enumerate()
                    .map(|(k, sink)| self.sink(&format!("{at}.long_lived.sinks[{k}]"), sink))
                    .collect::<Vec<_>>()
                    .into_iter()
                    .collect();
                match super::long_lived::check(&at, ll) {
                    Ok(ll) => sinks.map(|sinks| Some(super::LongLivedConfig { sinks, ..ll })),
                    Err(problems) => {
                        for (key, message) in problems {
                            self.problem(key, message);
                        }
                        None
                    }
                }
            }
        };
        let stateless = self.stateless(&at, c);
        name_ok.then_some(())?;
        let assertion = match (kid?, key?) {
            (Some(kid), Some(key)) => Some(AssertionKey {
                kid,
                key_file: c.key_file.clone(),
                key: Arc::new(key),
            }),
            _ => None,
        };
        Some(ChannelConfig {
            id: id?,
            name: c.name.clone(),
            assertion,
            secret: secret?,
            groups: groups?,
            long_lived: long_lived?,
            stateless: stateless?,
        })
    }

    /// The part of [`Self::channel`] an [`Outline`] needs: every rule but
    /// the key's parse and the groups' own (sinks, hooks, API keys).
    fn channel_outline(
        &mut self,
        s: &Settings,
        i: usize,
        c: &ChannelSettings,
    ) -> Option<ChannelOutline> {
        let at = format!("channel[{i}]");
        let (id, name_ok, kid) = self.channel_names(&at, c);
        let key_ok = !(needs_assertion_key(c) || assertion_given(c))
            || self
                .keep(&format!("{at}.key_file"), read_key_file(&c.key_file))
                .is_some();
        let secret_ok = c.secret_file.as_ref().is_none_or(|path| {
            self.keep(&format!("{at}.secret_file"), load_secret(path))
                .is_some()
        });
        self.channel_limits(s, &at, c);
        let groups: Option<Vec<GroupName>> = c
            .groups
            .iter()
            .enumerate()
            .map(|(g, group)| {
                self.keep(
                    &format!("{at}.group[{g}].name"),
                    check_name(&group.name, "group"),
                )
                .map(GroupName::new)
            })
            .collect::<Vec<_>>()
            .into_iter()
            .collect();
        let stateless = c.stateless.as_ref().and_then(|s| {
            super::stateless::check(at.as_str(), s, c.secret_file.is_some(), &mut self.problems)
        });
        (name_ok && key_ok && secret_ok && kid.is_some()).then_some(())?;
        let short_lived = c
            .groups
            .iter()
            .filter(|g| TokenKind::parse(&g.kind) == Some(TokenKind::ShortLived))
            .map(|g| GroupName::new(g.name.clone()))
            .collect();
        Some(ChannelOutline {
            id: id?,
            name: c.name.clone(),
            groups: groups?,
            short_lived,
            has_secret: c.secret_file.is_some(),
            stateless,
        })
    }

    /// `[channel.stateless]`: its values (`super::stateless::check`), its
    /// API key and its sinks. `Some(None)` when absent or disabled, `None`
    /// after a problem.
    fn stateless(
        &mut self,
        at: &str,
        c: &ChannelSettings,
    ) -> Option<Option<super::StatelessConfig>> {
        let Some(s) = &c.stateless else {
            return Some(None);
        };
        let before = self.problems.len();
        let outline = super::stateless::check(at, s, c.secret_file.is_some(), &mut self.problems);
        let sinks: Vec<Option<SinkConfig>> = s
            .sinks
            .iter()
            .enumerate()
            .map(|(k, sink)| self.sink(&format!("{at}.stateless.sinks[{k}]"), sink))
            .collect();
        let api_key = match (&s.api_key_file, s.enabled) {
            (Some(path), true) => {
                self.keep(&format!("{at}.stateless.api_key_file"), load_secret(path))
            }
            _ => None,
        };
        if self.problems.len() > before {
            return None;
        }
        let Some(outline) = outline else {
            // Disabled (a problem would have been counted above).
            return Some(None);
        };
        Some(Some(super::StatelessConfig {
            outline,
            api_key: api_key?,
            sinks: sinks.into_iter().collect::<Option<Vec<_>>>()?,
        }))
    }

    /// A channel's ID, name and kid, checked.
    /// The kid is `Some(None)` for a channel that neither needs nor names
    /// an assertion key, `None` after a problem.
    fn channel_names(
        &mut self,
        at: &str,
        c: &ChannelSettings,
    ) -> (Option<ChannelId>, bool, Option<Option<SigningKid>>) {
        let id = self.keep(&format!("{at}.id"), check_channel_id(&c.id));
        let name_ok = self
            .keep(&format!("{at}.name"), check_name(&c.name, "channel"))
            .is_some();
        let kid = if needs_assertion_key(c) || assertion_given(c) {
            self.keep(&format!("{at}.kid"), check_kid(&c.kid))
                .map(|k| Some(SigningKid::new(k)))
        } else {
            Some(None)
        };
        (id, name_ok, kid)
    }

    /// The rules on a channel as a whole: the secret that
    /// `revoke_previous_after` needs, and how many groups fit.
    fn channel_limits(&mut self, s: &Settings, at: &str, c: &ChannelSettings) {
        if c.secret_file.is_none()
            && let Some(after) = s.rotation.revoke_previous_after
        {
            self.problem(
                format!("{at}.secret_file"),
                format!(
                    "is missing, but rotation.revoke_previous_after ({}) needs the \
                     channel secret to revoke tokens",
                    fmt_dur(after)
                ),
            );
        }
        for kind in [TokenKind::V21, TokenKind::ShortLived] {
            let n = groups_of_kind(c, kind);
            if n > MAX_GROUPS_PER_CHANNEL {
                self.problem(
                    format!("{at}.group"),
                    format!(
                        "has {n} {kind} groups; at most {MAX_GROUPS_PER_CHANNEL} fit in one channel \
                         (LINE allows {CHANNEL_TOKEN_CAP} live {kind} tokens and each group may \
                         hold {TOKENS_PER_GROUP})"
                    ),
                );
            }
        }
        if c.secret_file.is_none()
            && let Some(g) = c
                .groups
                .iter()
                .find(|g| TokenKind::parse(&g.kind) == Some(TokenKind::ShortLived))
        {
            self.problem(
                format!("{at}.secret_file"),
                format!(
                    "is missing, but group {:?} is kept with short-lived tokens, which LINE \
                     issues only with the channel secret",
                    g.name
                ),
            );
        }
    }

    fn group(&mut self, at: &str, g: &GroupSettings) -> Option<GroupConfig> {
        let name = self.keep(&format!("{at}.name"), check_name(&g.name, "group"));
        let sinks: Option<Vec<SinkConfig>> = g
            .sinks
            .iter()
            .enumerate()
            .map(|(s, sink)| {
                let key = format!("{at}.sinks[{s}]");
                self.sink(&key, sink)
            })
            .collect::<Vec<_>>()
            .into_iter()
            .collect();
        let on_rotate = match &g.on_rotate {
            None => Some(None),
            Some(argv) if argv.is_empty() => {
                self.problem(
                    format!("{at}.on_rotate"),
                    "is empty: give the program and its arguments, e.g. \
                     [\"/usr/local/bin/reload-backend\"], or remove the key",
                );
                None
            }
            Some(argv) if argv[0].trim().is_empty() => {
                self.problem(
                    format!("{at}.on_rotate[0]"),
                    "is empty: it is the program to run",
                );
                None
            }
            Some(argv) if argv.len() > MAX_HOOK_ARGS => {
                self.problem(
                    format!("{at}.on_rotate"),
                    format!(
                        "has {} arguments; at most {MAX_HOOK_ARGS} are allowed",
                        argv.len()
                    ),
                );
                None
            }
            Some(argv) => {
                let mut ok = true;
                for (n, arg) in argv.iter().enumerate() {
                    if arg.len() > MAX_HOOK_ARG_LEN {
                        self.problem(
                            format!("{at}.on_rotate[{n}]"),
                            format!(
                                "is {} bytes long; an argument is at most {MAX_HOOK_ARG_LEN}",
                                arg.len()
                            ),
                        );
                        ok = false;
                    }
                }
                if ok {
                    ok = self
                        .keep(
                            &format!("{at}.on_rotate[0]"),
                            check_program(&argv[0], self.search_path.as_deref()),
                        )
                        .is_some();
                }
                ok.then(|| {
                    Some(HookConfig {
                        argv: argv.clone(),
                        timeout: g.hook_timeout,
                    })
                })
            }
        };
        self.bounded(
            &format!("{at}.hook_timeout"),
            g.hook_timeout,
            MAX_HOOK_TIMEOUT,
            "",
        );
        let api_key = match &g.api_key_file {
            Some(path) => self
                .keep(&format!("{at}.api_key_file"), load_secret(path))
                .map(Some),
            None => Some(None),
        };
        let kind = self.keep(&format!("{at}.kind"), check_kind(&g.kind));
        Some(GroupConfig {
            name: GroupName::new(name?),
            kind: kind?,
            sinks: sinks?,
            on_rotate: on_rotate?,
            api_key: api_key?,
        })
    }

    fn sink(&mut self, at: &str, s: &super::SinkSettings) -> Option<SinkConfig> {
        let path_ok = self
            .keep(&format!("{at}.path"), check_sink_path(&s.path))
            .is_some();
        let format = self.keep(
            &format!("{at}.format"),
            match s.format.as_str() {
                "raw" => Ok(SinkFormat::Raw),
                "json" => Ok(SinkFormat::Json),
                "env" => Ok(SinkFormat::Env),
                "" => Err("is missing: one of \"raw\", \"json\", \"env\"".to_owned()),
                other => Err(format!(
                    "{} is not one of \"raw\", \"json\", \"env\"",
                    quoted(other)
                )),
            },
        );
        let mode = self.keep(&format!("{at}.mode"), check_sink_mode(&s.mode));
        let owner = self.keep(
            &format!("{at}.owner"),
            check_account(s.owner.as_deref(), "user"),
        );
        let group = self.keep(
            &format!("{at}.group"),
            check_account(s.group.as_deref(), "group"),
        );
        if !path_ok {
            return None;
        }
        Some(SinkConfig {
            path: s.path.clone(),
            format: format?,
            mode: mode?,
            owner: owner?,
            group: group?,
        })
    }

    /// Rules across entries: duplicate channel IDs and names, a name that
    /// is another channel's ID, group names within a channel, sink paths
    /// anywhere.
    fn duplicates(&mut self, s: &Settings) {
        let mut ids: HashMap<&str, usize> = HashMap::new();
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut sink_paths: HashMap<&Path, String> = HashMap::new();
        for (i, c) in s.channels.iter().enumerate() {
            if !c.id.is_empty() {
                if let Some(first) = ids.get(c.id.as_str()) {
                    self.problem(
                        format!("channel[{i}].id"),
                        format!("{} duplicates channel[{first}].id", quoted(&c.id)),
                    );
                } else {
                    ids.insert(&c.id, i);
                }
            }
            if !c.name.is_empty() {
                if let Some(first) = names.get(c.name.as_str()) {
                    self.problem(
                        format!("channel[{i}].name"),
                        format!("{} duplicates channel[{first}].name", quoted(&c.name)),
                    );
                } else {
                    names.insert(&c.name, i);
                }
            }
            let stateless_sinks = c
                .stateless
                .iter()
                .flat_map(|s| s.sinks.iter().enumerate())
                .map(|(k, sink)| (format!("channel[{i}].stateless.sinks[{k}].path"), sink));
            let long_lived_sinks = c
                .long_lived
                .iter()
                .flat_map(|s| s.sinks.iter().enumerate())
                .map(|(k, sink)| (format!("channel[{i}].long_lived.sinks[{k}].path"), sink));
            for (here, sink) in stateless_sinks.chain(long_lived_sinks) {
                if sink.path.as_os_str().is_empty() {
                    continue;
                }
                if let Some(first) = sink_paths.get(sink.path.as_path()) {
                    self.problem(
                        here,
                        format!(
                            "{:?} duplicates {first}: two sinks would overwrite each other",
                            sink.path.display().to_string()
                        ),
                    );
                } else {
                    sink_paths.insert(&sink.path, here);
                }
            }
            let mut groups: HashMap<&str, usize> = HashMap::new();
            for (g, group) in c.groups.iter().enumerate() {
                if !group.name.is_empty() {
                    if let Some(first) = groups.get(group.name.as_str()) {
                        self.problem(
                            format!("channel[{i}].group[{g}].name"),
                            format!(
                                "{} duplicates channel[{i}].group[{first}].name in channel {}",
                                quoted(&group.name),
                                quoted(&c.name)
                            ),
                        );
                    } else {
                        groups.insert(&group.name, g);
                    }
                }
                for (k, sink) in group.sinks.iter().enumerate() {
                    if sink.path.as_os_str().is_empty() {
                        continue;
                    }
                    let here = format!("channel[{i}].group[{g}].sinks[{k}].path");
                    if let Some(first) = sink_paths.get(sink.path.as_path()) {
                        self.problem(
                            here,
                            format!(
                                "{:?} duplicates {first}: two sinks would overwrite each other",
                                sink.path.display().to_string()
                            ),
                        );
                    } else {
                        sink_paths.insert(&sink.path, here);
                    }
                }
            }
        }
        // A watched long-lived token file belongs to the operator: no sink
        // may overwrite it, and two channels cannot watch one token (LINE
        // issues one per channel).
        let mut token_files: HashMap<&Path, usize> = HashMap::new();
        for (i, c) in s.channels.iter().enumerate() {
            let Some(ll) = &c.long_lived else { continue };
            if ll.token_file.as_os_str().is_empty() {
                continue;
            }
            let here = format!("channel[{i}].long_lived.token_file");
            if let Some(sink) = sink_paths.get(ll.token_file.as_path()) {
                self.problem(
                    here.clone(),
                    format!(
                        "{:?} is also {sink}: the sink would overwrite the watched token",
                        ll.token_file.display().to_string()
                    ),
                );
            }
            if let Some(first) = token_files.get(ll.token_file.as_path()) {
                self.problem(
                    here,
                    format!(
                        "{:?} is also channel[{first}].long_lived.token_file: a long-lived \
                         token belongs to one channel",
                        ll.token_file.display().to_string()
                    ),
                );
            } else {
                token_files.insert(&ll.token_file, i);
            }
        }
        // `--channel` and the token API's paths take an ID or a name: a
        // name that is another channel's ID would name two channels.
        for (i, c) in s.channels.iter().enumerate() {
            if let Some(&other) = ids.get(c.name.as_str())
                && other != i
            {
                self.problem(
                    format!("channel[{i}].name"),
                    format!(
                        "{:?} is channel[{other}].id: a channel's name must not be another \
                         channel's ID, since `--channel` and the token API's URLs take either",
                        c.name
                    ),
                );
            }
        }
    }
}

/// `text` quoted as `{:?}` does, cut after [`QUOTE_LEN`] characters with
/// its length added, so a megabyte value makes a one-line error.
fn quoted(text: &str) -> String {
    match text.char_indices().nth(QUOTE_LEN) {
        None => format!("{text:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &text[..cut], text.len()),
    }
}

fn parse_line_api(text: &str) -> Result<reqwest::Url, String> {
    if text.len() > MAX_URL_LEN {
        return Err(format!(
            "{} is longer than {MAX_URL_LEN} bytes; LINE's is \"https://api.line.me\"",
            quoted(text)
        ));
    }
    let url = reqwest::Url::parse(text).map_err(|e| {
        format!(
            "{} is not a URL ({e}); LINE's is \"https://api.line.me\"",
            quoted(text)
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
        return Err(format!(
            "{} must be an http:// or https:// URL; LINE's is \"https://api.line.me\"",
            quoted(text)
        ));
    }
    Ok(url)
}

/// A channel ID as LINE gives it: digits only, at most
/// `MAX_CHANNEL_ID_LEN` of them. The error completes a sentence that
/// starts with the value's name.
///
/// # Errors
/// What is wrong with `id`.
pub fn check_channel_id(id: &str) -> Result<ChannelId, String> {
    if id.is_empty() {
        return Err("is missing: the channel ID from the LINE Developers Console".to_owned());
    }
    if !id.bytes().all(|b| b.is_ascii_digit()) || id.len() > MAX_CHANNEL_ID_LEN {
        return Err(format!(
            "{} must be the channel's numeric ID from the LINE Developers Console (digits only, \
             at most {MAX_CHANNEL_ID_LEN})",
            quoted(id)
        ));
    }
    Ok(ChannelId::new(id))
}

/// The `kid` as it goes into every assertion's header: trimmed, not empty,
/// at most [`MAX_KID_LEN`] bytes, no control characters.
fn check_kid(kid: &str) -> Result<String, String> {
    let kid = kid.trim();
    if kid.is_empty() {
        return Err(
            "is empty: paste the kid the LINE Developers Console assigned to the public key"
                .to_owned(),
        );
    }
    if kid.len() > MAX_KID_LEN {
        return Err(format!(
            "is {} bytes long; a kid from the LINE Developers Console is at most {MAX_KID_LEN} \
             (it starts {})",
            kid.len(),
            quoted(kid)
        ));
    }
    if kid.chars().any(char::is_control) {
        return Err(format!(
            "{} holds a control character; paste the kid exactly as the console shows it",
            quoted(kid)
        ));
    }
    Ok(kid.to_owned())
}

/// A group's `kind`: one of the token kinds a group can be kept with.
fn check_kind(kind: &str) -> Result<TokenKind, String> {
    TokenKind::parse(kind).ok_or_else(|| {
        format!(
            "is {kind:?}; a group is kept with \"v2.1\" (the default) or \"short-lived\" tokens \
             (stateless and long-lived tokens are set per channel, not per group)"
        )
    })
}

/// Channel and group names end up in URLs, file names, metric labels and
/// log fields, so they are kept to characters that need no escaping there.
pub(super) fn check_name(name: &str, what: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err(format!(
            "is missing: a short name for the {what}, like \"backend\""
        ));
    }
    let safe = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !safe || name.len() > MAX_NAME_LEN || name.starts_with('.') {
        return Err(format!(
            "{} must be 1 to {MAX_NAME_LEN} letters, digits, '-', '_' or '.', not starting \
             with '.' (it appears in URLs, file names and metric labels)",
            quoted(name)
        ));
    }
    Ok(name.to_owned())
}

/// A sink path: absolute (a relative one would depend on the daemon's
/// working directory) and naming a file.
fn check_sink_path(path: &Path) -> Result<(), String> {
    if path.as_os_str().is_empty() {
        return Err("is missing: the file to write the token to".to_owned());
    }
    let shown = quoted(&path.display().to_string());
    if !path.is_absolute() {
        return Err(format!(
            "{shown} is relative; give an absolute path (a relative one would depend on the \
             daemon's working directory)"
        ));
    }
    if path.file_name().is_none() || path.as_os_str().as_encoded_bytes().ends_with(b"/") {
        return Err(format!("{shown} does not name a file"));
    }
    Ok(())
}

/// An `on_rotate` program: one with a slash must be an executable regular
/// file there; one without is looked for in `search_path` (or
/// [`DEFAULT_PATH`]), as the hook will be run. Checked with `access(X_OK)`
/// for the user validating, which is the daemon's own user when the daemon
/// validates.
fn check_program(program: &str, search_path: Option<&str>) -> Result<(), String> {
    let shown = quoted(program);
    let executable = |path: &Path| -> Result<(), String> {
        let meta = std::fs::metadata(path).map_err(|e| {
            format!(
                "{} cannot be used: {e}",
                quoted(&path.display().to_string())
            )
        })?;
        if !meta.is_file() {
            return Err(format!(
                "{} is not a regular file",
                quoted(&path.display().to_string())
            ));
        }
        rustix::fs::access(path, rustix::fs::Access::EXEC_OK).map_err(|e| {
            use std::os::unix::fs::PermissionsExt as _;
            format!(
                "{} is not executable (mode {:04o}): {e}",
                quoted(&path.display().to_string()),
                meta.permissions().mode() & 0o7777
            )
        })
    };
    if program.contains('/') {
        return executable(Path::new(program));
    }
    let search_path = search_path.unwrap_or(DEFAULT_PATH);
    let found = search_path
        .split(':')
        .filter(|dir| !dir.is_empty())
        .any(|dir| executable(&Path::new(dir).join(program)).is_ok());
    if found {
        Ok(())
    } else {
        Err(format!(
            "{shown} is not an executable file in any directory of PATH ({}); give its \
             absolute path",
            quoted(search_path)
        ))
    }
}

/// A sink mode: an octal string (`"0600"`, `"640"`, `"0o600"`) that lets
/// neither the group nor others write the file, nor others read it: the
/// file holds a live token.
fn check_sink_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    let mode = (!digits.is_empty() && digits.len() <= 4)
        .then(|| u32::from_str_radix(digits, 8).ok())
        .flatten()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| {
            format!(
                "{} is not an octal file mode like \"0600\" (write it as a string)",
                quoted(text)
            )
        })?;
    if mode & 0o022 != 0 {
        return Err(format!(
            "{text:?} lets the group or other users write the token file; use \"0600\" or \"0640\""
        ));
    }
    if mode & 0o007 != 0 {
        return Err(format!(
            "{text:?} lets other users read the token; use \"0600\", or \"0640\" with a group"
        ));
    }
    Ok(mode)
}

fn check_account(value: Option<&str>, what: &str) -> Result<Option<String>, String> {
    match value {
        None => Ok(None),
        Some(v)
            if !v.is_empty()
                && v.len() <= MAX_ACCOUNT_LEN
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) =>
        {
            Ok(Some(v.to_owned()))
        }
        Some(v) => Err(format!(
            "{} is not a {what} name (at most {MAX_ACCOUNT_LEN} letters, digits, '-', '_', '.') \
             or numeric id; remove the key to leave it unchanged",
            quoted(v)
        )),
    }
}

fn load_key(path: &Path) -> Result<SigningKey, String> {
    let bytes = read_key_file(path)?;
    SigningKey::parse(&bytes).map_err(|e| format!("{:?}: {e}", path.display().to_string()))
}

/// A key file's bytes, read as a private file (see [`read_private`]).
fn read_key_file(path: &Path) -> Result<Vec<u8>, String> {
    if path.as_os_str().is_empty() {
        return Err(
            "is missing: the path of the channel's assertion signing key (PEM or private JWK)"
                .to_owned(),
        );
    }
    read_private(path).map_err(|reason| format!("{:?} {reason}", path.display().to_string()))
}

impl Settings {
    /// Where the store lives, from `[daemon]`'s database keys alone (the
    /// URL file read and parsed when set): for a command that must find
    /// the database of a config whose other parts may be broken.
    ///
    /// # Errors
    /// The URL file cannot be read or holds no usable URL (the message
    /// names the file, never the URL).
    pub fn store_location(&self) -> Result<crate::store::Location, String> {
        match &self.daemon.database_url_file {
            None => Ok(crate::store::Location::Sqlite(self.daemon.database_path())),
            Some(file) => {
                postgres_target(file).map(|t| crate::store::Location::Postgres(Box::new(t)))
            }
        }
    }
}

/// The PostgreSQL database named by the URL in the secret file `file`. The
/// message names the file and what is wrong with the URL, never the URL
/// itself (it holds the password).
fn postgres_target(file: &Path) -> Result<crate::store::pg::PgTarget, String> {
    use crate::store::pg::{PgTarget, Roots, TlsMode};
    let shown = file.display().to_string();
    let url = load_secret(file)?;
    let target = PgTarget::parse(url.expose())
        .map_err(|e| format!("{shown:?} does not hold a usable URL: {e}"))?;
    // The CA file is read only when the first connection is made; a wrong
    // path is a config mistake, found here rather than at `run`.
    if let TlsMode::Require(Roots::CaFile(ca)) = target.tls()
        && !ca.is_file()
    {
        return Err(format!(
            "{shown:?}: its URL's sslrootcert {:?} is not a readable file",
            ca.display().to_string()
        ));
    }
    Ok(target)
}

pub(super) fn load_secret(path: &Path) -> Result<Secret, String> {
    if path.as_os_str().is_empty() {
        return Err("is empty: give a file path or remove the key".to_owned());
    }
    let shown = path.display().to_string();
    read_private(path)
        .and_then(secret_from_bytes)
        .map_err(|reason| format!("{shown:?} {reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_modes() {
        assert_eq!(check_sink_mode("0600"), Ok(0o600));
        assert_eq!(check_sink_mode("640"), Ok(0o640));
        assert_eq!(check_sink_mode("0o400"), Ok(0o400));
        for bad in ["", "rw", "0x600", "0800", "17777", "-600"] {
            let err = check_sink_mode(bad).unwrap_err();
            assert!(err.contains("is not an octal file mode"), "{bad}: {err}");
        }
        assert!(check_sink_mode("0660").unwrap_err().contains("write"));
        assert!(check_sink_mode("0602").unwrap_err().contains("write"));
        assert!(check_sink_mode("0644").unwrap_err().contains("read"));
    }

    #[test]
    fn names_and_ids() {
        assert!(check_channel_id("1234567890").is_ok());
        assert!(check_channel_id("12a").unwrap_err().contains("digits only"));
        assert!(check_channel_id("").unwrap_err().contains("is missing"));
        assert!(check_name("shop-bot.v2_x", "channel").is_ok());
        assert!(check_name("shop bot", "channel").is_err());
        assert!(check_name(".hidden", "group").is_err());
        assert!(check_name(&"a".repeat(65), "group").is_err());
        assert!(check_channel_id(&"1".repeat(33)).is_err());
        assert!(check_channel_id(&"1".repeat(32)).is_ok());
    }

    #[test]
    fn kids_are_bounded_and_errors_quote_only_the_start_of_a_long_value() {
        assert_eq!(check_kid("  5e0d-kid \n").unwrap(), "5e0d-kid");
        assert!(check_kid(&"k".repeat(MAX_KID_LEN)).is_ok());
        let huge = "k".repeat(10 * 1024 * 1024);
        let err = check_kid(&huge).unwrap_err();
        assert!(err.starts_with("is 10485760 bytes long"), "{err}");
        assert!(err.len() < 300, "{} bytes of error", err.len());
        assert!(
            check_kid("a\u{7}b")
                .unwrap_err()
                .contains("control character")
        );
        let err = check_name(&huge, "group").unwrap_err();
        assert!(err.len() < 300 && err.contains("(10485760 bytes)"), "{err}");
    }

    #[test]
    fn sink_paths_must_be_absolute_files() {
        assert!(check_sink_path(Path::new("/run/linetokd/a.json")).is_ok());
        for bad in ["run/a.json", "./a.json", "a.json"] {
            let err = check_sink_path(Path::new(bad)).unwrap_err();
            assert!(err.contains("is relative"), "{bad}: {err}");
        }
        assert!(check_sink_path(Path::new("/run/dir/")).is_err());
        assert!(check_sink_path(Path::new("/")).is_err());
        assert!(
            check_sink_path(Path::new(""))
                .unwrap_err()
                .contains("missing")
        );
    }

    #[test]
    fn hook_programs_must_exist_and_be_executable() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("reload");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        let path = dir.path().to_str().unwrap();

        assert!(check_program(script.to_str().unwrap(), None).is_ok());
        assert!(check_program("reload", Some(path)).is_ok());
        assert!(check_program("sh", Some("/nonexistent:/bin:/usr/bin")).is_ok());
        let err = check_program(plain.to_str().unwrap(), None).unwrap_err();
        assert!(err.contains("is not executable (mode 0644)"), "{err}");
        let err = check_program(&format!("{path}/missing"), None).unwrap_err();
        assert!(err.contains("No such file"), "{err}");
        let err = check_program(path, None).unwrap_err();
        assert!(err.contains("is not a regular file"), "{err}");
        let err = check_program("reload", Some("/nonexistent")).unwrap_err();
        assert!(
            err.contains("not an executable file in any directory of PATH"),
            "{err}"
        );
    }

    #[test]
    fn line_api_urls() {
        assert!(parse_line_api("https://api.line.me").is_ok());
        assert!(parse_line_api("http://127.0.0.1:8080").is_ok());
        assert!(parse_line_api("api.line.me").is_err());
        assert!(parse_line_api("ftp://api.line.me").is_err());
    }

    #[test]
    fn the_group_cap_follows_from_lines_token_cap() {
        assert_eq!(MAX_GROUPS_PER_CHANNEL, 15);
    }
}
