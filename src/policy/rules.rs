//! The settings the policy decides by.
//!
//! [`Rules`] is the policy's own small settings struct (STYLE.md: lower
//! modules never read the config); `app` builds it from the `[rotation]`
//! section. Every field documents why it exists. The defaults are docs/design.md's.
//!
//! The policy never panics on odd values: intervals shorter than a second are
//! read as one second (a zero interval would make a step due again the
//! instant it ran), negative spans as zero. [`Rules::validate`] still rejects
//! them, so a caller can refuse bad settings instead of living with the
//! reading.
//!
//! Depends on chrono and thiserror only.

use chrono::Duration;

use crate::policy::time::{human, sum};

/// The longest `token_exp` LINE accepts for a v2.1 token: 30 days.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::days(30);

/// The lifetime LINE gives every short-lived token: 30 days, fixed (no
/// `token_exp` to ask for).
pub const SHORT_LIVED_LIFETIME: Duration = Duration::days(30);

/// LINE's cap on live v2.1 tokens per channel.
pub const LINE_CHANNEL_TOKEN_CAP: u32 = 30;

/// How the lifecycle of docs/design.md section 4 is tuned. All durations are
/// chrono durations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// The `token_exp` asked for on each issue (default and max 30 days).
    /// Longer lifetimes mean fewer issues; LINE caps it at 30 days.
    pub token_lifetime: Duration,
    /// How long before expiry rotation starts (default 24 h). This is the
    /// margin for consumers to pick up the new token and for retries when
    /// LINE fails: it is what invariant 2 buys time with.
    pub rotate_before: Duration,
    /// The span of the stable per-group offset added to `rotate_before`
    /// (default 30 min), so groups configured together do not all rotate in
    /// the same second. Also spreads verification (see `verify_interval`).
    pub rotation_jitter: Duration,
    /// How often the current token is verified with LINE (default 6 h), to
    /// notice a token revoked in the console or by someone else. Each group
    /// verifies a stable offset of up to `min(rotation_jitter,
    /// verify_interval / 2)` early, so verifications spread too.
    pub verify_interval: Duration,
    /// How often the channel's live key IDs are listed (default 1 h), to
    /// mark our missing tokens gone and count foreign ones.
    pub reconcile_interval: Duration,
    /// The oldest a reconcile may be when a token is issued (default 5 min):
    /// capacity is only as good as the last listing, and an issue is the one
    /// request that can hit LINE's cap.
    pub reconcile_max_age_before_issue: Duration,
    /// Revoke the previous token once it has been superseded this long
    /// (`None`, the default: let it expire, so consumers that have not yet
    /// switched keep working). Needs the channel secret.
    pub revoke_previous_after: Option<Duration>,
    /// The issue attempts per channel in any rolling hour (default 6). The
    /// caller persists attempt times, so no crash loop or bug can hammer
    /// LINE's issuing endpoint (invariant 4). A group at risk of losing its
    /// token may go over it, within twice this plus one per group
    /// ([`rate`](super::rate)).
    pub max_issues_per_hour: u32,
    /// How long a group removed from the config keeps its tokens before they
    /// are revoked (default 24 h), so an edit mistake can be undone without
    /// breaking its consumers.
    pub removal_grace: Duration,
    /// LINE's cap on live v2.1 tokens per channel (30). A setting only so
    /// tests can use a small cap; production leaves it at LINE's value.
    pub channel_token_cap: u32,
    /// `capacity_low` fires when the channel can take at most this many
    /// more tokens once our own superseded ones are revoked (default 4).
    pub capacity_low_threshold: u32,
    /// How failed requests are retried (docs/design.md section 5).
    pub retry: RetryRules,
    /// How long before the current token's expiry a failing group's
    /// attempts must come (at most a quarter of `rotate_before`): the
    /// backoff never schedules past it (default 5 min).
    pub deadline_margin: Duration,
    /// After LINE's 30-token refusal, when the next expiry LINE will honour
    /// is unknown (only foreign tokens, whose expiry nobody knows), how soon
    /// to list the key IDs and try again (default 1 min).
    pub full_recheck: Duration,
    /// The longest the driver idles before looking at a channel again,
    /// even with nothing due (default [`super::MAX_SLEEP`], 1 h; the wake
    /// falls on the next whole multiple of it, the top of the hour): the
    /// daemon's due times are wall-clock arithmetic, and a clock that jumps
    /// or a machine that suspends must not stretch a wait unseen. Not a
    /// setting; the forecast, whose clock is virtual, plans without it.
    pub max_sleep: Duration,
    /// Under `[ha]`: how long after an issue assertion's `exp` LINE may
    /// still accept it. A takeover's possibly-issued intent is settled only
    /// by a key-ID listing asked for after its assertion's `exp` plus this
    /// (docs/design.md §14.3; default 5 min).
    pub line_clock_allowance: Duration,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            token_lifetime: MAX_TOKEN_LIFETIME,
            rotate_before: Duration::hours(24),
            rotation_jitter: Duration::minutes(30),
            verify_interval: Duration::hours(6),
            reconcile_interval: Duration::hours(1),
            reconcile_max_age_before_issue: Duration::minutes(5),
            revoke_previous_after: None,
            max_issues_per_hour: 6,
            removal_grace: Duration::hours(24),
            channel_token_cap: LINE_CHANNEL_TOKEN_CAP,
            capacity_low_threshold: 4,
            retry: RetryRules::default(),
            deadline_margin: Duration::minutes(5),
            full_recheck: Duration::minutes(1),
            max_sleep: super::MAX_SLEEP,
            line_clock_allowance: crate::ha::orphan::LINE_CLOCK_ALLOWANCE,
        }
    }
}

/// Backoff after failures (docs/design.md section 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryRules {
    /// The first transient retry waits up to this long (default 5 s); each
    /// further failure doubles the ceiling.
    pub base: Duration,
    /// The ceiling of transient backoff (default 10 min): long enough to let
    /// LINE recover, short enough to stay well inside `rotate_before`.
    pub cap: Duration,
    /// The fixed wait after a permanent failure (default 30 min): slow,
    /// because only an operator can fix it, but regular, so a config fix is
    /// picked up without a restart.
    pub permanent_interval: Duration,
}

impl Default for RetryRules {
    fn default() -> Self {
        Self {
            base: Duration::seconds(5),
            cap: Duration::minutes(10),
            permanent_interval: Duration::minutes(30),
        }
    }
}

/// A setting the policy cannot work with. Names the field as `[rotation]`
/// spells it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    /// A duration that must be positive is zero or negative.
    #[error("{field} must be positive, got {}", human(.value))]
    NotPositive {
        /// The field's name.
        field: &'static str,
        /// Its value, as chrono prints it.
        value: Duration,
    },
    /// A duration that must not be negative is.
    #[error("{field} must not be negative, got {}", human(.value))]
    Negative {
        /// The field's name.
        field: &'static str,
        /// Its value, as chrono prints it.
        value: Duration,
    },
    /// `token_lifetime` is over LINE's 30 days.
    #[error("token_lifetime ({}) is longer than LINE's maximum of 30d", human(.0))]
    LifetimeTooLong(Duration),
    /// Rotation would be due the moment a token is issued.
    #[error(
        "rotate_before ({}) plus rotation_jitter ({}) must be shorter than token_lifetime ({})",
        human(.rotate_before), human(.jitter), human(.lifetime)
    )]
    RotateBeforeTooLong {
        /// `rotate_before`.
        rotate_before: Duration,
        /// `rotation_jitter`.
        jitter: Duration,
        /// `token_lifetime`.
        lifetime: Duration,
    },
    /// A count that must be at least one is zero.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// The transient backoff ceiling is below its first step.
    #[error("retry cap ({}) must not be shorter than retry base ({})", human(.cap), human(.base))]
    RetryCapBelowBase {
        /// The first step.
        base: Duration,
        /// The ceiling.
        cap: Duration,
    },
}

impl Rules {
    /// Checks that the policy can honour these rules as written.
    ///
    /// # Errors
    ///
    /// The first problem found, naming the field.
    pub fn validate(&self) -> Result<(), RulesError> {
        let positive = [
            ("token_lifetime", self.token_lifetime),
            ("rotate_before", self.rotate_before),
            ("verify_interval", self.verify_interval),
            ("reconcile_interval", self.reconcile_interval),
            ("retry.base", self.retry.base),
            ("retry.cap", self.retry.cap),
            ("retry.permanent_interval", self.retry.permanent_interval),
        ];
        for (field, value) in positive {
            if value <= Duration::zero() {
                return Err(RulesError::NotPositive { field, value });
            }
        }
        let mut non_negative = vec![
            ("rotation_jitter", self.rotation_jitter),
            (
                "reconcile_max_age_before_issue",
                self.reconcile_max_age_before_issue,
            ),
            ("removal_grace", self.removal_grace),
        ];
        if let Some(after) = self.revoke_previous_after {
            non_negative.push(("revoke_previous_after", after));
        }
        for (field, value) in non_negative {
            if value < Duration::zero() {
                return Err(RulesError::Negative { field, value });
            }
        }
        if self.token_lifetime > MAX_TOKEN_LIFETIME {
            return Err(RulesError::LifetimeTooLong(self.token_lifetime));
        }
        if sum(self.rotate_before, self.rotation_jitter) >= self.token_lifetime {
            return Err(RulesError::RotateBeforeTooLong {
                rotate_before: self.rotate_before,
                jitter: self.rotation_jitter,
                lifetime: self.token_lifetime,
            });
        }
        if self.max_issues_per_hour == 0 {
            return Err(RulesError::Zero("max_issues_per_hour"));
        }
        if self.channel_token_cap == 0 {
            return Err(RulesError::Zero("channel_token_cap"));
        }
        if self.retry.cap < self.retry.base {
            return Err(RulesError::RetryCapBelowBase {
                base: self.retry.base,
                cap: self.retry.cap,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_designs_and_valid() {
        let r = Rules::default();
        assert_eq!(r.token_lifetime, Duration::days(30));
        assert_eq!(r.rotate_before, Duration::hours(24));
        assert_eq!(r.max_issues_per_hour, 6);
        assert_eq!(r.channel_token_cap, 30);
        assert_eq!(r.validate(), Ok(()));
    }

    #[test]
    fn the_demo_settings_are_valid() {
        let r = Rules {
            token_lifetime: Duration::minutes(2),
            rotate_before: Duration::seconds(40),
            rotation_jitter: Duration::seconds(5),
            verify_interval: Duration::seconds(30),
            ..Rules::default()
        };
        assert_eq!(r.validate(), Ok(()));
    }

    #[test]
    fn each_bad_setting_is_named() {
        let cases: Vec<(Rules, &str)> = vec![
            (
                Rules {
                    token_lifetime: Duration::days(31),
                    ..Rules::default()
                },
                "token_lifetime",
            ),
            (
                Rules {
                    rotate_before: Duration::zero(),
                    ..Rules::default()
                },
                "rotate_before must be positive",
            ),
            (
                Rules {
                    rotate_before: Duration::days(30),
                    ..Rules::default()
                },
                "rotate_before (30d) plus rotation_jitter (30m)",
            ),
            (
                Rules {
                    rotation_jitter: Duration::seconds(-1),
                    ..Rules::default()
                },
                "rotation_jitter",
            ),
            (
                Rules {
                    verify_interval: Duration::zero(),
                    ..Rules::default()
                },
                "verify_interval",
            ),
            (
                Rules {
                    reconcile_interval: Duration::zero(),
                    ..Rules::default()
                },
                "reconcile_interval",
            ),
            (
                Rules {
                    revoke_previous_after: Some(Duration::seconds(-1)),
                    ..Rules::default()
                },
                "revoke_previous_after",
            ),
            (
                Rules {
                    max_issues_per_hour: 0,
                    ..Rules::default()
                },
                "max_issues_per_hour",
            ),
            (
                Rules {
                    channel_token_cap: 0,
                    ..Rules::default()
                },
                "channel_token_cap",
            ),
            (
                Rules {
                    retry: RetryRules {
                        cap: Duration::seconds(1),
                        ..RetryRules::default()
                    },
                    ..Rules::default()
                },
                "retry cap",
            ),
        ];
        for (rules, needle) in cases {
            let msg = rules.validate().map_err(|e| e.to_string()).err();
            let msg = msg.unwrap_or_default();
            assert!(msg.contains(needle), "expected {needle:?} in {msg:?}");
        }
    }
}
