//! The policy's values in words, for every line a person reads.
//!
//! `Debug` is for developers: `NoCurrent`, `KeyId("…")`,
//! `NoLiveToken { next_attempt_at: Some(…) }` must never reach a log line,
//! the demo, `status` or a control answer. Everything a person reads goes
//! through the `Display` impls here instead: [`IssueReason`],
//! [`RevokeReason`], [`Severity`], [`Hold`] and [`Alert`], plus [`joined`]
//! for lists of key IDs or group names (`a, b, c`).
//!
//! Depends on the policy's own types, `domain` (through them) and chrono.
//! Pure like the rest of `policy`: formatting only, no clock, no IO. Times
//! are written as RFC 3339 in UTC to the second, the form `status` uses.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};

use super::backoff::StepKind;
use super::plan::{Alert, Hold, IssueReason, RevokeReason, Severity};

/// An instant as people read it in linetokd's output, to the millisecond
/// (LINE's expiries are instants): `2026-03-01T12:00:00.250Z`.
fn at(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl IssueReason {
    /// Why the token is issued, in a few words ("rotation due").
    pub fn text(self) -> &'static str {
        match self {
            Self::NoCurrent => "no live token",
            Self::Due => "rotation due",
            Self::Requested => "rotation requested",
            Self::Incident => "incident",
        }
    }
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for IssueReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

impl RevokeReason {
    /// Why the token is revoked, in a few words ("superseded for
    /// revoke_previous_after").
    pub fn text(self) -> &'static str {
        match self {
            Self::Incident => "incident",
            Self::Excess => "more than two live tokens",
            Self::Superseded => "superseded for revoke_previous_after",
            Self::MakeRoom => "making room for the next rotation",
            Self::Removed => "group removed from the config",
            Self::FreeCapacity => "freeing channel capacity",
            Self::Refused => {
                "refused (by LINE's verify, or leaked and condemned by an incident) but possibly still counted"
            }
        }
    }
}

impl fmt::Display for RevokeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

impl Severity {
    /// `warning` or `critical`: the word logs, `status` and its JSON use.
    pub fn text(self) -> &'static str {
        match self {
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

impl fmt::Display for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Retry { until } => {
                write!(f, "the last attempt failed; retrying at {}", at(*until))
            }
            Self::OlderTokenLive { until } => write!(
                f,
                "two tokens are live and there is no channel secret to revoke the older; \
                 waiting for it to expire at {}",
                at(*until)
            ),
            Self::RateLimit { until } => write!(
                f,
                "the channel's hourly issue budget is spent; this group may try again at {}",
                at(*until)
            ),
            Self::Reconcile => f.write_str("the channel's key IDs are listed first"),
            Self::Settling { until } => write!(
                f,
                "an issue on the channel whose outcome is unknown may still reach LINE; \
                 the key-ID listing that settles it comes at {}",
                at(*until)
            ),
            Self::Capacity { needed } => {
                write!(f, "the channel is full: {needed} token(s) must go first")
            }
            Self::LinePaused { until } => write!(
                f,
                "LINE answered another group's issue on the channel 429 (too many \
                 requests); this group can wait and issues at {} at the earliest",
                at(*until)
            ),
        }
    }
}

impl fmt::Display for Alert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoLiveToken { next_attempt_at } => match next_attempt_at {
                Some(next) => write!(
                    f,
                    "the group has no live token; next attempt at {}",
                    at(*next)
                ),
                None => f.write_str("the group has no live token"),
            },
            Self::ExpiresBeforeSuccessor {
                key_id,
                expires_at,
                next_attempt_at,
            } if next_attempt_at > expires_at => write!(
                f,
                "token {key_id} expires at {}, before the next possible issue at {}: \
                 consumers will lose access",
                at(*expires_at),
                at(*next_attempt_at)
            ),
            // A full channel: the next issue can come only once the token
            // itself has expired and freed its slot, at the same instant.
            Self::ExpiresBeforeSuccessor {
                key_id, expires_at, ..
            } => write!(
                f,
                "token {key_id} expires at {} and no successor can be issued before then \
                 unless room appears first: consumers will lose access",
                at(*expires_at)
            ),
            Self::NoCapacity { needed } => write!(
                f,
                "the channel has no room for another token ({needed} must go first) \
                 and none of ours can be revoked"
            ),
            Self::RateLimited { until } => write!(
                f,
                "the channel's hourly issue budget is spent; this group may try again at {}",
                at(*until)
            ),
            Self::PermanentFailure { failures, retry_at } => write!(
                f,
                "LINE refuses this group's requests ({failures} failures in a row); \
                 retrying slowly, next at {}",
                at(*retry_at)
            ),
            Self::TooManyLive { live } => write!(
                f,
                "the group has {live} live tokens and no channel secret to revoke the extras"
            ),
            Self::ReconcileFailing { failures, retry_at } => write!(
                f,
                "listing the channel's key IDs failed {failures} times in a row, next attempt \
                 at {}; meanwhile issues go on the last listing's count (attempts that may \
                 have issued, and a channel never listed, wait for a listing)",
                at(*retry_at)
            ),
            Self::ChannelFull { until } => write!(
                f,
                "LINE refused an issue: the channel holds 30 live tokens; no issue before {} \
                 (whichever comes first: a token of ours expiring, or a one-minute recheck, \
                 since other issuers' expiries are known only to LINE), and then only into \
                 room a listing of the channel's key IDs shows",
                at(*until)
            ),
            Self::RevokeNeedsSecret { key_id, reason } => write!(
                f,
                "token {key_id} should be revoked ({reason}) but linetokd cannot revoke \
                 on this channel (no secret_file, or LINE refused its secret); it lives \
                 until it expires, or until a reload brings a secret LINE accepts"
            ),
            Self::CapacityLow { free, threshold } => write!(
                f,
                "the channel can take only {free} more tokens even after revoking our superseded \
                 ones (warning at {threshold} or fewer); another issuer or a few more groups \
                 will fill it"
            ),
            Self::ShortLivedEvicted { at: when } => write!(
                f,
                "LINE's verify refused a short-lived token of this group that still had time \
                 left (at {}): a 31st short-lived token on the channel (another issuer's, or one of ours) evicted it, or it was \
                 revoked outside linetokd; a replacement is issued at once",
                at(*when)
            ),
            Self::ForeignToken { key_id } => write!(
                f,
                "LINE lists token {key_id} on the channel and it is not one of ours; it counts \
                 against the channel's 30 until it expires or its issuer revokes it"
            ),
            Self::LostToken {
                attempts,
                unsettled,
                since,
                candidates,
            } => {
                write!(
                    f,
                    "{attempts} issue attempt(s) of this group since {} ended without a usable \
                     answer (a crash, a lost reply, or a 200 linetokd could not use), so LINE may \
                     hold a token of ours nobody can hand out or revoke; ",
                    at(*since)
                )?;
                if *unsettled > 0 {
                    f.write_str("counted against capacity until the next key-ID listing")
                } else {
                    write!(
                        f,
                        "listed since then and possibly ours: {} (counted against capacity \
                         until it expires)",
                        joined(candidates)
                    )
                }
            }
        }
    }
}

/// A list shown as its items' `Display` joined by ", " (`k1, k2`), for key
/// IDs and group names in logs and messages; `none` when empty.
#[derive(Clone, Copy)]
pub struct Joined<'a, T>(&'a [T]);

/// Shows `items` as `a, b, c` (see [`Joined`]).
pub fn joined<T: fmt::Display>(items: &[T]) -> Joined<'_, T> {
    Joined(items)
}

impl<T: fmt::Display> fmt::Display for Joined<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items = self.0.iter();
        match items.next() {
            None => f.write_str("none"),
            Some(first) => {
                write!(f, "{first}")?;
                for item in items {
                    write!(f, ", {item}")?;
                }
                Ok(())
            }
        }
    }
}

impl<T: fmt::Display> fmt::Debug for Joined<'_, T> {
    /// The same words: a `Joined` handed to a `?` field still reads well.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{GroupName, KeyId};

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_772_323_200, 0).unwrap()
    }

    /// What a debug name would leave in the text: a struct's `{`, a tuple
    /// struct's `(` right after a type name (`KeyId(`, `Some(`), quotes, or
    /// a CamelCase variant name.
    fn assert_words(text: &str, variant: &str) {
        assert!(!text.is_empty(), "{variant} shows as nothing");
        assert!(!text.contains('{'), "{variant} shows a struct: {text}");
        assert!(
            !text.contains('"'),
            "{variant} shows a quoted string: {text}"
        );
        for word in text.split(|c: char| !c.is_alphanumeric() && c != '_') {
            let chars: Vec<char> = word.chars().collect();
            let camel = chars
                .windows(2)
                .any(|w| w[0].is_lowercase() && w[1].is_uppercase());
            assert!(!camel, "{variant} shows the name {word}: {text}");
        }
        for name in [
            "Some(",
            "None",
            "KeyId(",
            "GroupName(",
            "ChannelId(",
            variant,
        ] {
            assert!(!text.contains(name), "{variant} shows {name}: {text}");
        }
        // A "(" after a capitalised name is a tuple struct (`KeyId(`,
        // `Some(`); words in brackets and "token(s)" are fine.
        for (i, _) in text.match_indices('(') {
            let before: String = text[..i]
                .chars()
                .rev()
                .take_while(|c| c.is_alphanumeric())
                .collect();
            assert!(
                !before.chars().last().is_some_and(char::is_uppercase),
                "{variant} shows a tuple struct: {text}"
            );
        }
    }

    #[test]
    fn issue_reasons_read_as_words() {
        for (reason, name) in [
            (IssueReason::NoCurrent, "NoCurrent"),
            (IssueReason::Due, "Due"),
            (IssueReason::Requested, "Requested"),
            (IssueReason::Incident, "Incident"),
        ] {
            assert_words(&reason.to_string(), name);
        }
        assert_eq!(IssueReason::Due.to_string(), "rotation due");
    }

    #[test]
    fn revoke_reasons_read_as_words() {
        for (reason, name) in [
            (RevokeReason::Incident, "Incident"),
            (RevokeReason::Excess, "Excess"),
            (RevokeReason::Superseded, "Superseded"),
            (RevokeReason::MakeRoom, "MakeRoom"),
            (RevokeReason::Removed, "Removed"),
            (RevokeReason::FreeCapacity, "FreeCapacity"),
        ] {
            assert_words(&reason.to_string(), name);
        }
    }

    #[test]
    fn severities_read_as_words() {
        assert_eq!(Severity::Warning.to_string(), "warning");
        assert_eq!(Severity::Critical.to_string(), "critical");
    }

    #[test]
    fn holds_read_as_words() {
        for (hold, name) in [
            (Hold::Retry { until: t0() }, "Retry"),
            (Hold::OlderTokenLive { until: t0() }, "OlderTokenLive"),
            (Hold::RateLimit { until: t0() }, "RateLimit"),
            (Hold::Reconcile, "Reconcile"),
            (Hold::Settling { until: t0() }, "Settling"),
            (Hold::Capacity { needed: 2 }, "Capacity"),
            (Hold::LinePaused { until: t0() }, "LinePaused"),
        ] {
            assert_words(&hold.to_string(), name);
        }
        assert_eq!(
            Hold::Retry { until: t0() }.to_string(),
            "the last attempt failed; retrying at 2026-03-01T00:00:00.000Z"
        );
    }

    #[test]
    fn a_token_whose_successor_can_come_only_at_its_expiry_says_so_once() {
        // Found by an outside test: on a full channel the next issue is at
        // the token's own expiry, and the words named that instant twice,
        // "expires at T, before the next possible issue at T".
        let at_expiry = Alert::ExpiresBeforeSuccessor {
            key_id: KeyId::new("kid-1"),
            expires_at: t0(),
            next_attempt_at: t0(),
        }
        .to_string();
        assert!(!at_expiry.contains("next possible issue"), "{at_expiry}");
        assert!(
            at_expiry.contains("no successor can be issued before then"),
            "{at_expiry}"
        );
        let later = Alert::ExpiresBeforeSuccessor {
            key_id: KeyId::new("kid-1"),
            expires_at: t0(),
            next_attempt_at: t0() + chrono::Duration::minutes(5),
        }
        .to_string();
        assert!(
            later.contains("before the next possible issue at"),
            "{later}"
        );
    }

    #[test]
    fn alerts_read_as_words() {
        let key_id = KeyId::new("kid-1");
        for (alert, name) in [
            (
                Alert::NoLiveToken {
                    next_attempt_at: Some(t0()),
                },
                "NoLiveToken",
            ),
            (
                Alert::NoLiveToken {
                    next_attempt_at: None,
                },
                "NoLiveToken",
            ),
            (
                Alert::ExpiresBeforeSuccessor {
                    key_id: key_id.clone(),
                    expires_at: t0(),
                    next_attempt_at: t0(),
                },
                "ExpiresBeforeSuccessor",
            ),
            (
                Alert::ExpiresBeforeSuccessor {
                    key_id: key_id.clone(),
                    expires_at: t0(),
                    next_attempt_at: t0() + chrono::Duration::minutes(5),
                },
                "ExpiresBeforeSuccessor",
            ),
            (Alert::NoCapacity { needed: 1 }, "NoCapacity"),
            (Alert::RateLimited { until: t0() }, "RateLimited"),
            (
                Alert::PermanentFailure {
                    failures: 3,
                    retry_at: t0(),
                },
                "PermanentFailure",
            ),
            (Alert::TooManyLive { live: 3 }, "TooManyLive"),
            (
                Alert::CapacityLow {
                    free: 3,
                    threshold: 4,
                },
                "CapacityLow",
            ),
            (
                Alert::ForeignToken {
                    key_id: key_id.clone(),
                },
                "ForeignToken",
            ),
            (
                Alert::LostToken {
                    attempts: 1,
                    unsettled: 1,
                    since: t0(),
                    candidates: vec![],
                },
                "LostToken",
            ),
            (
                Alert::LostToken {
                    attempts: 1,
                    unsettled: 0,
                    since: t0(),
                    candidates: vec![KeyId::new("kid-9")],
                },
                "LostToken",
            ),
            (
                Alert::RevokeNeedsSecret {
                    key_id,
                    reason: RevokeReason::MakeRoom,
                },
                "RevokeNeedsSecret",
            ),
        ] {
            assert_words(&alert.to_string(), name);
        }
    }

    #[test]
    fn lists_join_with_commas() {
        let keys = [KeyId::new("k1"), KeyId::new("k2")];
        assert_eq!(joined(&keys).to_string(), "k1, k2");
        assert_eq!(format!("{:?}", joined(&keys)), "k1, k2");
        let groups = [GroupName::new("g1")];
        assert_eq!(joined(&groups).to_string(), "g1");
        assert_eq!(joined::<GroupName>(&[]).to_string(), "none");
    }
}
