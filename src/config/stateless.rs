//! `[channel.stateless]`: stateless channel tokens on demand (docs/design.md §6, "Stateless tokens").
//!
//! ```toml
//! [channel.stateless]
//! enabled = true                  # default when the table is present
//! auth = "assertion"              # "assertion" (key_file/kid) | "secret" (secret_file)
//! refresh_margin = "2m"           # never hand out a token with less than this left
//! refresh_ahead = "5m"            # inside this window: serve cached, refresh in background
//! max_issues_per_minute = 30      # local guard; LINE publishes no stateless limit
//! api_key_file = "/etc/linetokd/secrets/stateless.apikey"
//! sinks = []                      # optional file sinks, rewritten each refresh
//! ```
//!
//! The rules, each problem named by its key (`channel[0].stateless.refresh_ahead`):
//! `auth` one of the two; `auth = "secret"` needs the channel's
//! `secret_file` (named `channel[i].secret_file`); `refresh_margin <
//! refresh_ahead < 15m` (a stateless token lives 15 minutes);
//! `max_issues_per_minute` 1 to [`MAX_ISSUES_PER_MINUTE`]; `api_key_file`
//! required while enabled (read and checked like a group's, by
//! `validate`); sinks as a group's. A disabled table is still checked, so
//! turning it on later meets no surprise, but needs no API key.
//!
//! Depends on `duration` and the config's problem type.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::duration::{self, format as fmt_dur};
use super::{Problem, SinkConfig, SinkSettings};
use crate::secret::Secret;

/// A stateless token's lifetime at LINE: `refresh_ahead` must be shorter.
pub const STATELESS_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// The most `max_issues_per_minute` allowed: one a second. More than that
/// is a client loop, not a cache.
pub const MAX_ISSUES_PER_MINUTE: u32 = 60;

/// `[channel.stateless]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatelessSettings {
    /// Serve stateless tokens for this channel; true when the table is
    /// present unless set false.
    pub enabled: bool,
    /// `assertion` or `secret`.
    pub auth: String,
    /// A token with this little left is never handed out.
    #[serde(deserialize_with = "duration::deserialize")]
    pub refresh_margin: Duration,
    /// Inside this much before expiry a token is served and refreshed in
    /// the background.
    #[serde(deserialize_with = "duration::deserialize")]
    pub refresh_ahead: Duration,
    /// Calls to LINE per rolling minute (a local guard).
    pub max_issues_per_minute: u32,
    /// The key clients present to `GET /v1/channels/{channel}/stateless-token`.
    pub api_key_file: Option<PathBuf>,
    /// Files rewritten with every new token.
    pub sinks: Vec<SinkSettings>,
}

impl Default for StatelessSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            auth: "assertion".to_owned(),
            refresh_margin: Duration::from_secs(2 * 60),
            refresh_ahead: Duration::from_secs(5 * 60),
            max_issues_per_minute: 30,
            api_key_file: None,
            sinks: Vec::new(),
        }
    }
}

/// How a channel's stateless tokens are issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatelessAuthKind {
    /// A client assertion signed with the channel's key.
    Assertion,
    /// The channel secret.
    Secret,
}

impl StatelessAuthKind {
    /// As the config spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Assertion => "assertion",
            Self::Secret => "secret",
        }
    }
}

/// What `status` shows of an enabled `[channel.stateless]`: how tokens
/// are issued and served, nothing of the key or the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatelessOutline {
    /// How tokens are issued.
    pub auth: StatelessAuthKind,
    /// `refresh_margin`.
    pub refresh_margin: Duration,
    /// `refresh_ahead`.
    pub refresh_ahead: Duration,
    /// `max_issues_per_minute`.
    pub max_issues_per_minute: u32,
    /// How many sinks are configured.
    pub sinks: usize,
}

/// An enabled `[channel.stateless]`, checked, with its API key loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatelessConfig {
    /// How tokens are issued and served.
    pub outline: StatelessOutline,
    /// The key clients present.
    pub api_key: Secret,
    /// Files rewritten with every new token.
    pub sinks: Vec<SinkConfig>,
}

/// Checks the table's own values (not its files: `validate` reads the API
/// key and checks the sinks), pushing every problem. `at` is
/// `channel[i]`; `has_secret` tells whether the channel has a
/// `secret_file`. Returns the outline when the table is enabled and its
/// values are good.
pub(super) fn check(
    at: &str,
    s: &StatelessSettings,
    has_secret: bool,
    problems: &mut Vec<Problem>,
) -> Option<StatelessOutline> {
    let before = problems.len();
    let key = |name: &str| format!("{at}.stateless.{name}");
    let auth = match s.auth.as_str() {
        "assertion" => Some(StatelessAuthKind::Assertion),
        "secret" => Some(StatelessAuthKind::Secret),
        other => {
            problems.push(Problem::new(
                key("auth"),
                format!("{other:?} is not one of \"assertion\", \"secret\""),
            ));
            None
        }
    };
    if s.enabled && auth == Some(StatelessAuthKind::Secret) && !has_secret {
        problems.push(Problem::new(
            format!("{at}.secret_file"),
            "is missing, but stateless.auth = \"secret\" issues stateless tokens with the \
             channel secret",
        ));
    }
    if s.refresh_ahead <= s.refresh_margin {
        problems.push(Problem::new(
            key("refresh_ahead"),
            format!(
                "({}) must be longer than {at}.stateless.refresh_margin ({}): a token is \
                 refreshed before it is too old to hand out",
                fmt_dur(s.refresh_ahead),
                fmt_dur(s.refresh_margin)
            ),
        ));
    } else if s.refresh_ahead >= STATELESS_LIFETIME {
        problems.push(Problem::new(
            key("refresh_ahead"),
            format!(
                "({}) must be shorter than 15m, the lifetime of a stateless token, or every \
                 request refreshes",
                fmt_dur(s.refresh_ahead)
            ),
        ));
    }
    if !(1..=MAX_ISSUES_PER_MINUTE).contains(&s.max_issues_per_minute) {
        problems.push(Problem::new(
            key("max_issues_per_minute"),
            format!(
                "is {}; it must be 1 to {MAX_ISSUES_PER_MINUTE}",
                s.max_issues_per_minute
            ),
        ));
    }
    if s.enabled && s.api_key_file.is_none() {
        problems.push(Problem::new(
            key("api_key_file"),
            "is missing: the stateless token API needs a key (a file holding it, mode 0600)",
        ));
    }
    if problems.len() > before || !s.enabled {
        return None;
    }
    Some(StatelessOutline {
        auth: auth?,
        refresh_margin: s.refresh_margin,
        refresh_ahead: s.refresh_ahead,
        max_issues_per_minute: s.max_issues_per_minute,
        sinks: s.sinks.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(s: &StatelessSettings, has_secret: bool) -> Vec<String> {
        let mut problems = Vec::new();
        check("channel[0]", s, has_secret, &mut problems);
        problems.into_iter().map(|p| p.key).collect()
    }

    fn good() -> StatelessSettings {
        StatelessSettings {
            api_key_file: Some(PathBuf::from("/k")),
            ..StatelessSettings::default()
        }
    }

    #[test]
    fn each_rule_names_its_key() {
        assert!(keys(&good(), false).is_empty());
        let secret = StatelessSettings {
            auth: "secret".into(),
            ..good()
        };
        assert_eq!(keys(&secret, false), ["channel[0].secret_file"]);
        assert!(keys(&secret, true).is_empty());
        let bad_auth = StatelessSettings {
            auth: "password".into(),
            ..good()
        };
        assert_eq!(keys(&bad_auth, true), ["channel[0].stateless.auth"]);
        let inverted = StatelessSettings {
            refresh_margin: Duration::from_secs(300),
            refresh_ahead: Duration::from_secs(120),
            ..good()
        };
        assert_eq!(
            keys(&inverted, true),
            ["channel[0].stateless.refresh_ahead"]
        );
        let too_long = StatelessSettings {
            refresh_ahead: Duration::from_secs(15 * 60),
            ..good()
        };
        assert_eq!(
            keys(&too_long, true),
            ["channel[0].stateless.refresh_ahead"]
        );
        for n in [0, MAX_ISSUES_PER_MINUTE + 1] {
            let s = StatelessSettings {
                max_issues_per_minute: n,
                ..good()
            };
            assert_eq!(
                keys(&s, true),
                ["channel[0].stateless.max_issues_per_minute"]
            );
        }
        let keyless = StatelessSettings {
            api_key_file: None,
            ..StatelessSettings::default()
        };
        assert_eq!(keys(&keyless, true), ["channel[0].stateless.api_key_file"]);
        // Disabled: no key needed, no secret needed, values still checked.
        let off = StatelessSettings {
            enabled: false,
            auth: "secret".into(),
            api_key_file: None,
            ..StatelessSettings::default()
        };
        assert!(keys(&off, false).is_empty());
        let off_bad = StatelessSettings {
            enabled: false,
            refresh_ahead: Duration::from_secs(60),
            ..StatelessSettings::default()
        };
        assert_eq!(
            keys(&off_bad, false),
            ["channel[0].stateless.refresh_ahead"]
        );
    }
}
