//! `[ha]`: several instances sharing one database, one leader per channel
//! (docs/design.md §14).
//!
//! ```toml
//! [ha]
//! instance_id = "web-1"   # default: "<hostname>:<pid>", filled in by `app`
//! lease = "30s"           # how long a grant lasts without renewal
//! renew = "10s"           # how often the leader renews it
//! line_clock_allowance = "5m"  # LINE's clock may be this far behind ours
//! ```
//!
//! The table's presence turns HA on. The rules, each problem named by its
//! key:
//!
//! - `instance_id`, when given: 1 to [`MAX_INSTANCE_ID_LEN`] bytes, no
//!   control characters, no surrounding spaces (it is the lease's holder,
//!   shown by `status` and in logs).
//! - `renew` at least 1 s; `lease` at most [`MAX_LEASE`];
//!   `lease > daemon.request_timeout + renew + 5s`: a leader that misses a
//!   renewal must still have time to finish a LINE call it started before
//!   its grant can pass to another instance (`ha::local`).
//! - Headroom: a takeover may leave one token nobody can hand out (an
//!   orphan, `ha::orphan`), so each channel keeps room for it:
//!   `2 × v2.1 groups + 1 ≤ 30`, named by channel. A channel already over
//!   the plain limit (15 groups) is reported once, by that rule.
//! - No short-lived groups: a takeover could not count a paused leader's
//!   short-lived token (no assertion expiry bounds its issue, and LINE
//!   does not list such tokens).
//!
//! The default `instance_id` is not computed here: this module reads no
//! hostname, process ID or environment (nothing below `app` does). It stays
//! `None` in [`HaConfig`] and `app` resolves it with
//! [`resolve_instance_id`], passing what it read.
//!
//! `[ha]` only makes sense with a database the instances share
//! (PostgreSQL, `[daemon] database_url_file`): `Settings::validate` refuses
//! it without that key; the rest of `[ha]` is checked here.
//!
//! Depends on `duration`, the config's problem type and `ha::InstanceId`.

use std::time::Duration;

use serde::Deserialize;

use super::duration::{self, format as fmt_dur};
use super::validate::{CHANNEL_TOKEN_CAP, MAX_GROUPS_PER_CHANNEL, groups_of_kind};
use super::{ChannelSettings, Problem};
use crate::domain::TokenKind;
use crate::ha::InstanceId;

/// Longest `instance_id`: a host name is at most 64 bytes, a pid 7 digits.
pub const MAX_INSTANCE_ID_LEN: usize = 128;

/// Longest `lease`: a dead leader's channels wait this long for another
/// instance, which is no longer high availability.
pub const MAX_LEASE: Duration = Duration::from_secs(10 * 60);

/// Shortest `renew`: more often only loads the database.
pub const MIN_RENEW: Duration = Duration::from_secs(1);

/// The slack `lease` keeps beyond `request_timeout + renew`.
pub const LEASE_SLACK: Duration = Duration::from_secs(5);

/// `[ha]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HaSettings {
    /// The name this instance holds leases under; `None` for the default
    /// (`hostname:pid`, resolved by `app`).
    pub instance_id: Option<String>,
    /// How long a grant lasts without renewal.
    #[serde(deserialize_with = "duration::deserialize")]
    pub lease: Duration,
    /// How often the leader renews.
    #[serde(deserialize_with = "duration::deserialize")]
    pub renew: Duration,
    /// How long after an issue assertion's `exp` LINE may still accept
    /// it (its clock behind ours): a takeover's possibly-issued intent
    /// settles only by a listing asked for after `exp` plus this.
    #[serde(deserialize_with = "duration::deserialize")]
    pub line_clock_allowance: Duration,
}

impl Default for HaSettings {
    fn default() -> Self {
        Self {
            instance_id: None,
            lease: Duration::from_secs(30),
            renew: Duration::from_secs(10),
            line_clock_allowance: DEFAULT_LINE_CLOCK_ALLOWANCE,
        }
    }
}

/// The default `line_clock_allowance`: LINE's clock may be five minutes off
/// ours (docs/design.md §14.3).
pub const DEFAULT_LINE_CLOCK_ALLOWANCE: Duration = Duration::from_secs(5 * 60);

/// The longest `line_clock_allowance`.
pub const MAX_LINE_CLOCK_ALLOWANCE: Duration = Duration::from_secs(60 * 60);

/// `[ha]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaConfig {
    /// The configured instance ID; `None` means the default, which `app`
    /// resolves with [`resolve_instance_id`].
    pub instance_id: Option<InstanceId>,
    /// How long a grant lasts without renewal.
    pub lease: Duration,
    /// How often the leader renews.
    pub renew: Duration,
    /// How long after an issue assertion's `exp` LINE may still accept it.
    pub line_clock_allowance: Duration,
}

/// The instance ID to hold leases under: the configured one, else
/// `hostname:pid` from the values `app` read (a host name longer than fits
/// is cut at a character boundary). The pid makes two instances on one
/// host distinct, and a restarted instance a new holder, whose
/// predecessor's grants expire or are fenced by their epoch.
pub fn resolve_instance_id(
    configured: Option<&InstanceId>,
    hostname: &str,
    pid: u32,
) -> InstanceId {
    if let Some(id) = configured {
        return id.clone();
    }
    let pid = pid.to_string();
    let room = MAX_INSTANCE_ID_LEN - pid.len() - 1;
    let mut host: String = hostname
        .trim()
        .chars()
        .filter(|c| !c.is_control() && !c.is_whitespace())
        .collect();
    while host.len() > room {
        host.pop();
    }
    if host.is_empty() {
        host.push_str("localhost");
    }
    InstanceId::new(format!("{host}:{pid}"))
}

/// Checks `[ha]` against `request_timeout` (`[daemon]`) and the channels,
/// pushing every problem onto `problems`.
pub(super) fn validate(
    s: &HaSettings,
    request_timeout: Duration,
    channels: &[ChannelSettings],
    problems: &mut Vec<Problem>,
) -> Option<HaConfig> {
    let before = problems.len();
    let instance_id = match &s.instance_id {
        None => None,
        Some(id) => match check_instance_id(id) {
            Ok(id) => Some(id),
            Err(message) => {
                problems.push(Problem::new("ha.instance_id", message));
                None
            }
        },
    };
    if s.renew < MIN_RENEW {
        problems.push(Problem::new(
            "ha.renew",
            format!(
                "({}) must be at least {}",
                fmt_dur(s.renew),
                fmt_dur(MIN_RENEW)
            ),
        ));
    }
    let needed = request_timeout
        .saturating_add(s.renew)
        .saturating_add(LEASE_SLACK);
    if s.lease > MAX_LEASE {
        problems.push(Problem::new(
            "ha.lease",
            format!(
                "({}) must be at most {}: a dead leader's channels wait that long for another \
                 instance",
                fmt_dur(s.lease),
                fmt_dur(MAX_LEASE)
            ),
        ));
    } else if s.lease <= needed {
        problems.push(Problem::new(
            "ha.lease",
            format!(
                "({}) must be longer than daemon.request_timeout ({}) + ha.renew ({}) + {} = {}: \
                 a leader that misses a renewal must still finish a LINE call before its lease \
                 can pass to another instance",
                fmt_dur(s.lease),
                fmt_dur(request_timeout),
                fmt_dur(s.renew),
                fmt_dur(LEASE_SLACK),
                fmt_dur(needed)
            ),
        ));
    }
    for (i, c) in channels.iter().enumerate() {
        // A takeover bounds a paused leader's issue by its assertion's
        // `exp` and counts what it may have issued through LINE's key-ID
        // list (docs/design.md §14.3, §14.5). A short-lived token has
        // neither: it is issued with the channel secret, at any later
        // instant the request reaches LINE, and no endpoint lists it.
        for (j, g) in c.groups.iter().enumerate() {
            if TokenKind::parse(&g.kind) == Some(TokenKind::ShortLived) {
                problems.push(Problem::new(
                    format!("channel[{i}].group[{j}].kind"),
                    format!(
                        "is \"short-lived\" (group {:?} of channel {:?}); [ha] keeps v2.1 \
                         groups only: a short-lived issue has no assertion whose expiry bounds \
                         when a paused leader's request can still reach LINE, and LINE cannot \
                         list short-lived tokens, so a takeover could not count one; keep \
                         short-lived groups on an instance without [ha]",
                        g.name, c.name
                    ),
                ));
            }
        }
        let n = groups_of_kind(c, TokenKind::V21);
        // Over 15 the plain rule (`validate`) already speaks.
        if n <= MAX_GROUPS_PER_CHANNEL && 2 * n + 1 > CHANNEL_TOKEN_CAP {
            problems.push(Problem::new(
                format!("channel[{i}].group"),
                format!(
                    "has {n} v2.1 groups in channel {:?}; with [ha] at most {} fit \
                     (2 × groups + 1 ≤ {CHANNEL_TOKEN_CAP}: a takeover may leave one token \
                     nobody can hand out, and it must not take a group's room)",
                    c.name,
                    (CHANNEL_TOKEN_CAP - 1) / 2
                ),
            ));
        }
    }
    if s.line_clock_allowance > MAX_LINE_CLOCK_ALLOWANCE {
        problems.push(Problem::new(
            "ha.line_clock_allowance",
            format!(
                "({}) must be at most {}: a takeover during an issuance holds that group's \
                 issues that long after the assertion expires",
                fmt_dur(s.line_clock_allowance),
                fmt_dur(MAX_LINE_CLOCK_ALLOWANCE)
            ),
        ));
    }
    if problems.len() > before {
        return None;
    }
    Some(HaConfig {
        instance_id,
        lease: s.lease,
        renew: s.renew,
        line_clock_allowance: s.line_clock_allowance,
    })
}

fn check_instance_id(id: &str) -> Result<InstanceId, String> {
    if id.is_empty() {
        return Err("is empty: remove it to use \"<hostname>:<pid>\"".to_owned());
    }
    if id.len() > MAX_INSTANCE_ID_LEN {
        return Err(format!(
            "is {} bytes long; an instance ID is at most {MAX_INSTANCE_ID_LEN}",
            id.len()
        ));
    }
    if id.chars().any(char::is_control) || id.trim() != id {
        return Err(format!(
            "{id:?} holds a control character or surrounding spaces"
        ));
    }
    Ok(InstanceId::new(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GroupSettings;

    fn channel(groups: &[&str]) -> ChannelSettings {
        ChannelSettings {
            id: "1234567890".into(),
            name: "shop-bot".into(),
            key_file: "/k".into(),
            kid: "kid".into(),
            secret_file: Some("/s".into()),
            groups: groups
                .iter()
                .enumerate()
                .map(|(i, kind)| GroupSettings {
                    name: format!("g{i}"),
                    kind: (*kind).to_owned(),
                    sinks: Vec::new(),
                    on_rotate: None,
                    hook_timeout: Duration::from_secs(30),
                    api_key_file: None,
                })
                .collect(),
            long_lived: None,
            stateless: None,
        }
    }

    fn problems(s: &HaSettings, timeout: u64, channels: &[ChannelSettings]) -> Vec<Problem> {
        let mut out = Vec::new();
        let got = validate(s, Duration::from_secs(timeout), channels, &mut out);
        assert_eq!(got.is_some(), out.is_empty(), "{out:?}");
        out
    }

    #[test]
    fn the_defaults_pass_with_the_default_request_timeout() {
        let got = validate(
            &HaSettings::default(),
            Duration::from_secs(10),
            &[channel(&["v2.1"; 14])],
            &mut Vec::new(),
        );
        assert_eq!(
            got,
            Some(HaConfig {
                instance_id: None,
                lease: Duration::from_secs(30),
                renew: Duration::from_secs(10),
                line_clock_allowance: DEFAULT_LINE_CLOCK_ALLOWANCE,
            })
        );
    }

    #[test]
    fn each_rule_names_its_key_and_values() {
        let s = |lease: u64, renew: u64| HaSettings {
            lease: Duration::from_secs(lease),
            renew: Duration::from_secs(renew),
            ..HaSettings::default()
        };
        // (settings, request_timeout s, expected key and message fragment)
        let cases: [(HaSettings, u64, &str, &str); 5] = [
            (
                s(25, 10),
                10,
                "ha.lease",
                "(25s) must be longer than daemon.request_timeout (10s) + ha.renew (10s) + 5s \
                 = 25s",
            ),
            (
                s(30, 10),
                20,
                "ha.lease",
                "daemon.request_timeout (20s) + ha.renew (10s) + 5s = 35s",
            ),
            (s(601, 10), 10, "ha.lease", "(601s) must be at most 10m"),
            (
                HaSettings {
                    renew: Duration::from_millis(500),
                    ..HaSettings::default()
                },
                10,
                "ha.renew",
                "(500ms) must be at least 1s",
            ),
            (
                HaSettings {
                    instance_id: Some(" web-1".into()),
                    ..HaSettings::default()
                },
                10,
                "ha.instance_id",
                "surrounding spaces",
            ),
        ];
        for (settings, timeout, key, fragment) in cases {
            let got = problems(&settings, timeout, &[]);
            assert_eq!(got.len(), 1, "{settings:?}: {got:?}");
            assert_eq!(got[0].key, key, "{settings:?}");
            assert!(
                got[0].message.contains(fragment),
                "{settings:?}: {}",
                got[0].message
            );
        }
        assert!(problems(&s(26, 10), 10, &[]).is_empty());
        for bad in ["", "a\tb", &"x".repeat(129)] {
            let got = problems(
                &HaSettings {
                    instance_id: Some(bad.to_owned()),
                    ..HaSettings::default()
                },
                10,
                &[],
            );
            assert_eq!(got[0].key, "ha.instance_id", "{bad:?}");
        }
    }

    #[test]
    fn headroom_for_one_orphan_per_pool_names_the_channel() {
        let got = problems(&HaSettings::default(), 10, &[channel(&["v2.1"; 15])]);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].key, "channel[0].group");
        assert!(
            got[0].message.starts_with(
                "has 15 v2.1 groups in channel \"shop-bot\"; with [ha] at most 14 fit"
            ),
            "{}",
            got[0].message
        );
        assert!(problems(&HaSettings::default(), 10, &[channel(&["v2.1"; 14])]).is_empty());
        // Over the plain limit, only the plain rule speaks.
        assert!(problems(&HaSettings::default(), 10, &[channel(&["v2.1"; 16])]).is_empty());
    }

    #[test]
    fn short_lived_groups_are_refused_under_ha_naming_each() {
        let got = problems(
            &HaSettings::default(),
            10,
            &[channel(&["v2.1", "short-lived", "v2.1", "short-lived"])],
        );
        let keys: Vec<&str> = got.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["channel[0].group[1].kind", "channel[0].group[3].kind"],
            "{got:?}"
        );
        assert!(
            got[0].message.starts_with("is \"short-lived\" (group \"g1\" of channel \"shop-bot\"); [ha] keeps v2.1 groups only"),
            "{}",
            got[0].message
        );
    }

    #[test]
    fn the_default_instance_id_is_hostname_and_pid() {
        let configured = InstanceId::new("web-1");
        assert_eq!(resolve_instance_id(Some(&configured), "h", 1), configured);
        assert_eq!(
            resolve_instance_id(None, "web-2", 4242).as_str(),
            "web-2:4242"
        );
        assert_eq!(resolve_instance_id(None, " \n", 7).as_str(), "localhost:7");
        let long = resolve_instance_id(None, &"é".repeat(100), 4_194_304);
        assert!(long.as_str().len() <= MAX_INSTANCE_ID_LEN);
        assert!(long.as_str().ends_with(":4194304"));
        assert!(check_instance_id(long.as_str()).is_ok());
    }
}
