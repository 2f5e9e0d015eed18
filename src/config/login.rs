//! `[[login_channel]]` and `[login]`: LINE Login channels whose users'
//! access tokens linetokd keeps fresh (SPECS.md §2c).
//!
//! ```toml
//! [[login_channel]]
//! id = "1660000000"
//! name = "shop-login"
//! secret_file = "/etc/linetokd/secrets/shop-login"   # optional; LINE needs it for web apps
//!
//! [login]
//! refresh_before = "3d"            # refresh when the access token has less left (at most 29d)
//! horizon = "90d"                  # refresh-token lifetime from the login
//! horizon_margin = "12h"           # the last refresh happens this long before the horizon
//! reauth_notify_before = "7d"      # "re-login due" this long before the horizon
//! max_requests_per_second = 5      # per login channel
//! admin_api_key_file = "/etc/linetokd/secrets/login-admin.apikey"
//! reader_api_key_file = "/etc/linetokd/secrets/login-reader.apikey"
//! ```
//!
//! The rules, each problem named by its key: IDs numeric and names as a
//! channel's, both unique among login channels; `refresh_before` above
//! zero and at most 29 days (an access token lives 30: refreshes stay a
//! day apart); `horizon` above 30
//! days; `horizon_margin` and `reauth_notify_before` above zero and below
//! `horizon`; `max_requests_per_second` 1 to [`MAX_REQUESTS_PER_SECOND`];
//! both API key files required (read like any API key file, private and
//! not empty) and different. User tokens are stored only encrypted, so
//! login channels without `[encryption]` are refused, naming
//! `[encryption]`. A `[login]` table without login channels is checked
//! but needs no key files.
//!
//! Depends on `duration`, the config's problem type and `validate`'s file
//! readers.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Problem;
use super::duration::{self, format as fmt_dur};
use super::validate::{check_channel_id, check_name, load_secret};
use crate::domain::{ChannelId, ChannelSecret};

/// The most `max_requests_per_second` allowed. LINE discloses no limit and
/// asks clients not to send "large numbers of requests"; a few a second
/// refresh 100,000 users with room to spare.
pub const MAX_REQUESTS_PER_SECOND: u32 = 50;

/// How long a LINE Login access token lives: `horizon` must be longer.
pub const ACCESS_TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// The largest `refresh_before`: a refresh gives the access token 30 days,
/// the next comes `refresh_before` (and up to an hour of jitter) before
/// their end, so this keeps a grant's refreshes about a day apart.
pub const MAX_REFRESH_BEFORE: Duration = Duration::from_secs(29 * 24 * 3600);

/// One `[[login_channel]]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoginChannelSettings {
    /// The LINE Login channel's ID (its `client_id`).
    pub id: String,
    /// A short name for paths, logs and metrics.
    pub name: String,
    /// The channel secret, sent when present (LINE requires it for web
    /// apps and ignores it otherwise).
    pub secret_file: Option<PathBuf>,
}

/// `[login]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoginSettings {
    /// Refresh when the access token has less than this left.
    #[serde(deserialize_with = "duration::deserialize")]
    pub refresh_before: Duration,
    /// The refresh token's lifetime from the login.
    #[serde(deserialize_with = "duration::deserialize")]
    pub horizon: Duration,
    /// The last refresh happens this long before the horizon.
    #[serde(deserialize_with = "duration::deserialize")]
    pub horizon_margin: Duration,
    /// "Re-login due" this long before the horizon.
    #[serde(deserialize_with = "duration::deserialize")]
    pub reauth_notify_before: Duration,
    /// Requests to LINE per second per login channel.
    pub max_requests_per_second: u32,
    /// The key that imports and deletes grants.
    pub admin_api_key_file: Option<PathBuf>,
    /// The key that reads access tokens.
    pub reader_api_key_file: Option<PathBuf>,
}

impl Default for LoginSettings {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        Self {
            refresh_before: Duration::from_secs(3 * DAY),
            horizon: Duration::from_secs(90 * DAY),
            horizon_margin: Duration::from_secs(12 * 3600),
            reauth_notify_before: Duration::from_secs(7 * DAY),
            max_requests_per_second: 5,
            admin_api_key_file: None,
            reader_api_key_file: None,
        }
    }
}

// The checked forms live with the module that uses them, so `login`
// needs nothing of the config file.
pub use crate::login::setup::{LoginChannelConfig, LoginConfig, LoginTimings};

/// What `linetokd status` needs of the login config: the channels as
/// written (ID, name) and the notice window. No file is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginOutline {
    /// `[[login_channel]]` IDs and names, in file order.
    pub channels: Vec<(ChannelId, String)>,
    /// `[login] reauth_notify_before`.
    pub reauth_notify_before: Duration,
}

/// The [`LoginOutline`] of `[[login_channel]]` and `[login]`.
pub(super) fn outline(channels: &[LoginChannelSettings], s: &LoginSettings) -> LoginOutline {
    LoginOutline {
        channels: channels
            .iter()
            .map(|c| (ChannelId::new(c.id.clone()), c.name.clone()))
            .collect(),
        reauth_notify_before: s.reauth_notify_before,
    }
}

/// Checks `[[login_channel]]` and `[login]`, pushing every problem; reads
/// the secret and API key files. `encrypted` tells whether `[encryption]`
/// is configured. `None` when no login channel is configured or a problem
/// was found.
pub(super) fn validate(
    channels: &[LoginChannelSettings],
    s: &LoginSettings,
    encrypted: bool,
    problems: &mut Vec<Problem>,
) -> Option<LoginConfig> {
    let before = problems.len();
    let timings = check_timings(s, problems);
    if channels.is_empty() {
        return None;
    }
    if !encrypted {
        problems.push(Problem::new(
            "login_channel",
            "is configured, but [encryption] is not: LINE Login user tokens are stored only \
             encrypted; add [encryption] (linetokd keygen --db-key) or remove the login channels",
        ));
    }
    let mut checked = Vec::new();
    for (i, c) in channels.iter().enumerate() {
        let at = format!("login_channel[{i}]");
        let id = check_channel_id(&c.id)
            .map_err(|m| problems.push(Problem::new(format!("{at}.id"), m)))
            .ok();
        let name = check_name(&c.name, "login channel")
            .map_err(|m| problems.push(Problem::new(format!("{at}.name"), m)))
            .ok();
        let secret = match &c.secret_file {
            Some(path) => load_secret(path)
                .map(|s| Some(ChannelSecret::new(s.expose())))
                .map_err(|m| problems.push(Problem::new(format!("{at}.secret_file"), m)))
                .ok(),
            None => Some(None),
        };
        for (j, earlier) in channels[..i].iter().enumerate() {
            if !c.id.is_empty() && c.id == earlier.id {
                problems.push(Problem::new(
                    format!("{at}.id"),
                    format!("{:?} duplicates login_channel[{j}].id", c.id),
                ));
            }
            if !c.name.is_empty() && c.name == earlier.name {
                problems.push(Problem::new(
                    format!("{at}.name"),
                    format!("{:?} duplicates login_channel[{j}].name", c.name),
                ));
            }
        }
        if let (Some(id), Some(name), Some(secret)) = (id, name, secret) {
            checked.push(LoginChannelConfig { id, name, secret });
        }
    }
    let key = |name: &str, path: &Option<PathBuf>, problems: &mut Vec<Problem>| match path {
        Some(path) => load_secret(path)
            .map_err(|m| problems.push(Problem::new(format!("login.{name}"), m)))
            .ok(),
        None => {
            problems.push(Problem::new(
                format!("login.{name}"),
                "is missing: the login grant API needs it (a file holding the key, mode 0600)",
            ));
            None
        }
    };
    let admin = key("admin_api_key_file", &s.admin_api_key_file, problems);
    let reader = key("reader_api_key_file", &s.reader_api_key_file, problems);
    if let (Some(a), Some(r)) = (&admin, &reader)
        && a.expose() == r.expose()
    {
        problems.push(Problem::new(
            "login.reader_api_key_file",
            "holds the same key as login.admin_api_key_file: a reader must not be able to \
             import or delete grants",
        ));
    }
    if problems.len() > before {
        return None;
    }
    Some(LoginConfig {
        channels: checked,
        timings: timings?,
        admin_api_key: admin?,
        reader_api_key: reader?,
    })
}

/// The timing rules of `[login]`.
fn check_timings(s: &LoginSettings, problems: &mut Vec<Problem>) -> Option<LoginTimings> {
    let before = problems.len();
    let mut problem = |key: &str, message: String| {
        problems.push(Problem::new(format!("login.{key}"), message));
    };
    if s.refresh_before.is_zero() || s.refresh_before > MAX_REFRESH_BEFORE {
        problem(
            "refresh_before",
            format!(
                "({}) must be above 0s and at most 29d: a LINE Login access token lives 30d, \
                 and each refresh must leave it a day before the next (closer to 30d, every \
                 grant would be refreshed again within minutes)",
                fmt_dur(s.refresh_before)
            ),
        );
    }
    if s.horizon <= ACCESS_TOKEN_LIFETIME {
        problem(
            "horizon",
            format!(
                "({}) must be longer than 30d, the life of one access token (LINE's refresh \
                 tokens last 90d from the login)",
                fmt_dur(s.horizon)
            ),
        );
    }
    for (name, value) in [
        ("horizon_margin", s.horizon_margin),
        ("reauth_notify_before", s.reauth_notify_before),
    ] {
        if value.is_zero() || value >= s.horizon {
            problem(
                name,
                format!(
                    "({}) must be above 0s and shorter than login.horizon ({})",
                    fmt_dur(value),
                    fmt_dur(s.horizon)
                ),
            );
        }
    }
    if !(1..=MAX_REQUESTS_PER_SECOND).contains(&s.max_requests_per_second) {
        problem(
            "max_requests_per_second",
            format!(
                "is {}; it must be 1 to {MAX_REQUESTS_PER_SECOND}",
                s.max_requests_per_second
            ),
        );
    }
    if problems.len() > before {
        return None;
    }
    Some(LoginTimings {
        refresh_before: s.refresh_before,
        horizon: s.horizon,
        horizon_margin: s.horizon_margin,
        reauth_notify_before: s.reauth_notify_before,
        max_requests_per_second: s.max_requests_per_second,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(channels: &[LoginChannelSettings], s: &LoginSettings, encrypted: bool) -> Vec<String> {
        let mut problems = Vec::new();
        validate(channels, s, encrypted, &mut problems);
        problems.into_iter().map(|p| p.key).collect()
    }

    fn channel(id: &str, name: &str) -> LoginChannelSettings {
        LoginChannelSettings {
            id: id.into(),
            name: name.into(),
            secret_file: None,
        }
    }

    #[test]
    fn no_login_channel_needs_no_keys_nor_encryption() {
        assert!(keys(&[], &LoginSettings::default(), false).is_empty());
    }

    #[test]
    fn bad_timings_name_their_key() {
        type Edit = fn(&mut LoginSettings);
        let cases: [(&str, Edit); 6] = [
            ("login.refresh_before", |s| {
                s.refresh_before = Duration::ZERO
            }),
            ("login.refresh_before", |s| {
                s.refresh_before = MAX_REFRESH_BEFORE + Duration::from_secs(1);
            }),
            ("login.horizon", |s| s.horizon = ACCESS_TOKEN_LIFETIME),
            ("login.horizon_margin", |s| s.horizon_margin = s.horizon),
            ("login.reauth_notify_before", |s| {
                s.reauth_notify_before = Duration::ZERO;
            }),
            ("login.max_requests_per_second", |s| {
                s.max_requests_per_second = 0;
            }),
        ];
        for (key, edit) in cases {
            let mut s = LoginSettings::default();
            edit(&mut s);
            assert_eq!(keys(&[], &s, true), [key], "{key}");
        }
    }

    #[test]
    fn channels_need_encryption_keys_and_unique_names() {
        let found = keys(
            &[channel("123", "a"), channel("123", "a"), channel("x1", "b")],
            &LoginSettings::default(),
            false,
        );
        for key in [
            "login_channel",
            "login_channel[1].id",
            "login_channel[1].name",
            "login_channel[2].id",
            "login.admin_api_key_file",
            "login.reader_api_key_file",
        ] {
            assert!(found.iter().any(|k| k == key), "{key} in {found:?}");
        }
    }
}
