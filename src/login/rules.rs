//! The pure rules of LINE Login grants: when a grant is refreshed, where
//! its horizon lies, what a refresh's outcome does, when the re-login
//! notice is due, and the per-channel request budget.
//!
//! Pure: depends on `chrono`, `policy::jitter`'s hash and nothing with IO.
//! Table-tested below.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::policy::jitter::fnv1a64;

/// LINE's access-token lifetime in seconds (30 days): an access token
/// with `expires_in` left was issued `2592000 − expires_in` seconds ago.
pub const ACCESS_LIFETIME_SECS: i64 = 2_592_000;

/// The most a refresh is moved earlier by its jitter, so 100,000 grants
/// imported in one hour do not all refresh in one second 27 days later.
pub const MAX_JITTER: Duration = Duration::from_secs(3600);

/// The first retry after a transient failure; doubled per failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(60);

/// The longest wait between retries.
pub const BACKOFF_MAX: Duration = Duration::from_secs(6 * 3600);

/// How long a channel LINE refused (`invalid_client`) waits before it is
/// tried again (a fixed secret needs a reload, which resets the pause).
pub const CHANNEL_PAUSE: Duration = Duration::from_secs(3600);

/// The timings the rules read (from `[login]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// Refresh when the access token has less than this left.
    pub refresh_before: Duration,
    /// The refresh token's lifetime from the login.
    pub horizon: Duration,
    /// The last refresh happens this long before the horizon.
    pub horizon_margin: Duration,
    /// The re-login notice this long before the horizon.
    pub reauth_notify_before: Duration,
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// A grant's stable jitter: a fraction of [`MAX_JITTER`] drawn from its
/// channel and subject, so a restart computes the same instant.
pub fn jitter(channel: &str, subject: &str) -> Duration {
    let mut bytes = Vec::with_capacity(channel.len() + subject.len() + 1);
    bytes.extend_from_slice(channel.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(subject.as_bytes());
    let max = u64::try_from(MAX_JITTER.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(fnv1a64(&bytes) % max.max(1))
}

/// The next refresh: `min(access_expires_at − refresh_before, horizon_at −
/// horizon_margin) − jitter`, and never before `not_before` (a backoff).
pub fn next_refresh(
    t: &Timings,
    access_expires_at: DateTime<Utc>,
    horizon_at: DateTime<Utc>,
    jitter: Duration,
    not_before: Option<DateTime<Utc>>,
) -> DateTime<Utc> {
    let by_access = access_expires_at - delta(t.refresh_before);
    let by_horizon = horizon_at - delta(t.horizon_margin);
    let at = by_access.min(by_horizon) - delta(jitter);
    not_before.map_or(at, |n| at.max(n))
}

/// The next refresh after a successful one at `now` that left the access
/// token valid until `access_expires_at`: [`next_refresh`], unless that is
/// not after `now`. Then either the horizon's bound has passed (this was
/// the last refresh before the horizon), and the grant's next look is its
/// horizon, where it ends without a call; or only the access bound has
/// (LINE gave a token with less than `refresh_before` left, or the jitter
/// pushed the slot back), and the next refresh comes halfway to the
/// access token's expiry, at least [`MIN_REFRESH_GAP`] later and no later
/// than the horizon's bound: the token never lapses, and the calls never
/// loop.
pub fn after_refresh(
    t: &Timings,
    now: DateTime<Utc>,
    access_expires_at: DateTime<Utc>,
    horizon_at: DateTime<Utc>,
    jitter: Duration,
) -> DateTime<Utc> {
    let next = next_refresh(t, access_expires_at, horizon_at, jitter, None);
    if next > now {
        return next;
    }
    let horizon_bound = horizon_at - delta(t.horizon_margin) - delta(jitter);
    if horizon_bound <= now {
        return horizon_at;
    }
    let halfway = now + (access_expires_at - now) / 2;
    halfway.max(now + delta(MIN_REFRESH_GAP)).min(horizon_bound)
}

/// The shortest gap [`after_refresh`] leaves between two refreshes when
/// the access bound has already passed.
pub const MIN_REFRESH_GAP: Duration = Duration::from_secs(60);

/// A grant's next refresh when it is scheduled afresh (start-up, a
/// reload): [`next_refresh`] (never before `not_before`, a backoff),
/// unless the refresh it names was already made, i.e. the last refresh
/// happened at or after it: then what [`after_refresh`] decided after
/// that refresh, so a restart makes no refresh a running daemon would not
/// have made (in particular none after the last one before the horizon).
pub fn resume(
    t: &Timings,
    access_expires_at: DateTime<Utc>,
    horizon_at: DateTime<Utc>,
    jitter: Duration,
    not_before: Option<DateTime<Utc>>,
    last_refresh_at: Option<DateTime<Utc>>,
) -> DateTime<Utc> {
    let next = next_refresh(t, access_expires_at, horizon_at, jitter, not_before);
    match last_refresh_at {
        Some(last) if next <= last => {
            let after = after_refresh(t, last, access_expires_at, horizon_at, jitter);
            not_before.map_or(after, |n| after.max(n))
        }
        _ => next,
    }
}

/// A grant's horizon and whether it is an estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Horizon {
    /// When the refresh token dies.
    pub at: DateTime<Utc>,
    /// True when the login time was not given.
    pub estimated: bool,
}

/// The horizon: `login_at + horizon` when the login time is known;
/// otherwise `now − (2592000 − expires_in − 1 s) + horizon`, flagged
/// estimated (`now` taken after LINE's answer, so never earlier than the
/// true horizon).
/// The estimate is exact only when the access token came from the login
/// itself; after refreshes it is later than the true horizon, so an
/// earlier `invalid_grant` may reveal the real end (SPECS.md §2c).
pub fn horizon(
    t: &Timings,
    now: DateTime<Utc>,
    expires_in: i64,
    login_at: Option<DateTime<Utc>>,
) -> Horizon {
    match login_at {
        Some(login) => Horizon {
            at: login + delta(t.horizon),
            estimated: false,
        },
        None => {
            // LINE floors `expires_in` to whole seconds, so the token may
            // have up to a second more left than it says: the smaller age
            // keeps the estimate from falling before the true horizon.
            let age = (ACCESS_LIFETIME_SECS - expires_in - 1).max(0);
            Horizon {
                at: now - TimeDelta::seconds(age) + delta(t.horizon),
                estimated: true,
            }
        }
    }
}

/// When the "re-login due" notice is due.
pub fn reauth_due_at(t: &Timings, horizon_at: DateTime<Utc>) -> DateTime<Utc> {
    horizon_at - delta(t.reauth_notify_before)
}

/// Whether a grant is inside its notice window at `now` (and not past the
/// horizon, where "re-login required" takes over).
pub fn in_notice_window(t: &Timings, horizon_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    reauth_due_at(t, horizon_at) <= now && now < horizon_at
}

/// What a refresh's outcome is, as the rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// LINE answered with a new access token.
    Refreshed,
    /// `invalid_grant`: the refresh token is dead.
    InvalidGrant,
    /// `invalid_client`: the channel ID or secret is wrong.
    InvalidClient,
    /// 429, with LINE's `Retry-After` if any.
    RateLimited(Option<Duration>),
    /// 5xx, network, timeouts, unreadable answers: nobody knows.
    Transient,
}

/// What to do after a refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Store the answer; the next refresh per [`next_refresh`].
    Store,
    /// The grant needs a new login; no further calls for it.
    NeedsLogin,
    /// Pause the whole login channel for [`CHANNEL_PAUSE`] and alert
    /// `login_channel_rejected`.
    PauseChannel,
    /// Retry this grant after the delay (with jitter), and hold the
    /// channel's requests for `channel_hold` (a 429's `Retry-After`).
    Retry {
        /// Until the grant's next attempt.
        after: Duration,
        /// How long the whole channel holds its requests.
        channel_hold: Option<Duration>,
    },
}

/// The rule for a refresh's outcome. `failures` counts the failures in a
/// row before this one; `jitter_fraction` in `[0, 1)` spreads retries.
pub fn decide(outcome: Outcome, failures: u32, jitter_fraction: f64) -> Action {
    match outcome {
        Outcome::Refreshed => Action::Store,
        Outcome::InvalidGrant => Action::NeedsLogin,
        Outcome::InvalidClient => Action::PauseChannel,
        Outcome::RateLimited(hint) => {
            let after = backoff(failures, jitter_fraction).max(hint.unwrap_or_default());
            Action::Retry {
                after,
                channel_hold: Some(hint.unwrap_or(BACKOFF_BASE)),
            }
        }
        Outcome::Transient => Action::Retry {
            after: backoff(failures, jitter_fraction),
            channel_hold: None,
        },
    }
}

/// `BACKOFF_BASE · 2^failures`, at most [`BACKOFF_MAX`], plus up to half
/// of itself as jitter.
pub fn backoff(failures: u32, jitter_fraction: f64) -> Duration {
    let base = BACKOFF_BASE
        .saturating_mul(1u32 << failures.min(20))
        .min(BACKOFF_MAX);
    let extra = base.mul_f64(jitter_fraction.clamp(0.0, 1.0) / 2.0);
    base + extra
}

/// A token bucket of `rate` requests per second holding at most one
/// token: the per-channel limit of requests to LINE, strict in every
/// one-second window (a bucket holding `rate` would allow twice the rate
/// in the first second). Pure: the caller passes the time.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: u32,
    tokens: f64,
    at: DateTime<Utc>,
}

impl Bucket {
    /// A full bucket at `now`.
    pub fn new(rate: u32, now: DateTime<Utc>) -> Self {
        Self {
            rate: rate.max(1),
            tokens: 1.0,
            at: now,
        }
    }

    fn fill(&mut self, now: DateTime<Utc>) {
        if now > self.at {
            let secs = (now - self.at).as_seconds_f64();
            self.tokens = (self.tokens + secs * f64::from(self.rate)).min(1.0);
            self.at = now;
        }
    }

    /// Takes one token when there is one; otherwise the instant one will
    /// be there.
    pub fn take(&mut self, now: DateTime<Utc>) -> Result<(), DateTime<Utc>> {
        self.fill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / f64::from(self.rate);
            // Whole milliseconds, rounded up, so the token is there then.
            let ms = (wait * 1000.0).ceil() as i64;
            Err(self.at + TimeDelta::milliseconds(ms.max(1)))
        }
    }

    /// Empties the bucket until `until` (a 429's hold).
    pub fn hold(&mut self, until: DateTime<Utc>) {
        if until > self.at {
            self.tokens = 0.0;
            self.at = until;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    fn t() -> Timings {
        Timings {
            refresh_before: Duration::from_secs(3 * DAY),
            horizon: Duration::from_secs(90 * DAY),
            horizon_margin: Duration::from_secs(12 * 3600),
            reauth_notify_before: Duration::from_secs(7 * DAY),
        }
    }

    fn at(day: f64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_225_600, 0).unwrap()
            + TimeDelta::milliseconds((day * 86_400_000.0) as i64)
    }

    #[test]
    fn next_refresh_table() {
        let j = Duration::from_secs(600);
        // (access expiry, horizon, not_before, expected), days from the start.
        let cases: [(f64, f64, Option<f64>, f64); 5] = [
            // Access expiry first: 3 days before it, minus the jitter.
            (30.0, 90.0, None, 27.0 - 600.0 / 86_400.0),
            // The horizon first: 12 hours before it.
            (89.0, 80.0, None, 79.5 - 600.0 / 86_400.0),
            // Exactly equal: either.
            (82.5, 80.0, None, 79.5 - 600.0 / 86_400.0),
            // A backoff is never shortened by the rule.
            (30.0, 90.0, Some(28.0), 28.0),
            // A backoff earlier than the rule changes nothing.
            (30.0, 90.0, Some(1.0), 27.0 - 600.0 / 86_400.0),
        ];
        for (access, horizon, not_before, want) in cases {
            let got = next_refresh(&t(), at(access), at(horizon), j, not_before.map(at));
            assert_eq!(got, at(want), "{access} {horizon} {not_before:?}");
        }
    }

    #[test]
    fn a_rescheduled_grant_is_not_due_again_for_a_refresh_already_made() {
        let j = Duration::from_secs(600);
        let h = at(90.0);
        // The last refresh before the horizon was made at its slot (89.5
        // days less the jitter): its slot is the same after a restart.
        let slot = at(89.5) - TimeDelta::seconds(600);
        let access = slot + TimeDelta::days(30);
        assert_eq!(next_refresh(&t(), access, h, j, None), slot);
        assert_eq!(resume(&t(), access, h, j, None, Some(slot)), h);
        // Made a minute later (the pass ran late): done too.
        let late = slot + TimeDelta::minutes(1);
        assert_eq!(
            resume(&t(), late + TimeDelta::days(30), h, j, None, Some(late)),
            h
        );
        // A refresh at 54 days: the next (81 days) is still ahead.
        let next = next_refresh(&t(), at(84.0), h, j, None);
        assert_eq!(resume(&t(), at(84.0), h, j, None, Some(at(54.0))), next);
        // Never refreshed (imported late): due as computed.
        let next = next_refresh(&t(), at(100.0), h, j, None);
        assert_eq!(resume(&t(), at(100.0), h, j, None, None), next);
    }

    #[test]
    fn only_the_horizons_bound_ends_the_refreshes() {
        // refresh_before close to the access token's whole life: the
        // jitter puts the access slot before the refresh that just
        // happened. That is not the last refresh: the next comes halfway
        // to the access token's expiry, and the token never lapses.
        let long = Timings {
            refresh_before: Duration::from_secs(30 * 86_400 - 600),
            ..t()
        };
        let j = Duration::from_secs(3000);
        let (now, h) = (at(10.0), at(90.0));
        let access = now + TimeDelta::days(30);
        let next = after_refresh(&long, now, access, h, j);
        assert_eq!(next, now + TimeDelta::days(15));
        assert!(next < access && next < h);
        // LINE answered a token with only 90 s left: a minute later at
        // the soonest, not a loop.
        let short = now + TimeDelta::seconds(90);
        assert_eq!(
            after_refresh(&t(), now, short, h, j),
            now + TimeDelta::minutes(1)
        );
        // Past the horizon's bound: the horizon, no further call.
        let late = at(89.9);
        assert_eq!(
            after_refresh(&t(), late, late + TimeDelta::days(30), h, j),
            h
        );
        // A restart after such a refresh resumes the same decision.
        assert_eq!(resume(&long, access, h, j, None, Some(now)), next);
    }

    #[test]
    fn jitter_is_stable_bounded_and_spread() {
        assert_eq!(jitter("1", "Ua"), jitter("1", "Ua"));
        assert!(jitter("1", "Ua") < MAX_JITTER);
        let distinct: std::collections::HashSet<_> =
            (0..100).map(|i| jitter("1", &format!("U{i}"))).collect();
        assert!(distinct.len() > 90);
    }

    #[test]
    fn horizon_table() {
        let now = at(10.0);
        let given = horizon(&t(), now, 2_592_000, Some(at(2.0)));
        assert_eq!(
            given,
            Horizon {
                at: at(92.0),
                estimated: false
            }
        );
        // A fresh token: the login was now.
        let fresh = horizon(&t(), now, 2_592_000, None);
        assert_eq!(
            fresh,
            Horizon {
                at: at(100.0),
                estimated: true
            }
        );
        // Ten days used: the login was ten days ago at the latest, less
        // the second LINE's whole-second expires_in may hide.
        let used = horizon(&t(), now, 2_592_000 - 10 * 86_400, None);
        assert_eq!(
            used,
            Horizon {
                at: at(90.0) + TimeDelta::seconds(1),
                estimated: true
            }
        );
        // A longer expires_in than LINE's lifetime never moves it later.
        let odd = horizon(&t(), now, 3_000_000, None);
        assert_eq!(odd.at, at(100.0));
    }

    #[test]
    fn the_last_refresh_is_before_the_horizon() {
        // Walk a grant from login to its horizon: each refresh gives 30
        // days; every refresh happens before horizon − margin.
        let h = at(90.0);
        let mut access = at(30.0);
        let mut refreshes = Vec::new();
        loop {
            let next = next_refresh(&t(), access, h, jitter("1", "U"), None);
            if next >= h {
                break;
            }
            assert!(next <= h - TimeDelta::hours(12));
            refreshes.push(next);
            access = next + TimeDelta::days(30);
            if refreshes.len() > 10 {
                break;
            }
            if access >= h + TimeDelta::days(29) {
                break;
            }
        }
        let last = *refreshes.last().unwrap();
        assert!(last <= h - TimeDelta::hours(12) && last > h - TimeDelta::days(2));
        assert_eq!(refreshes.len(), 4, "{refreshes:?}");
    }

    #[test]
    fn outcome_table() {
        assert_eq!(decide(Outcome::Refreshed, 3, 0.5), Action::Store);
        assert_eq!(decide(Outcome::InvalidGrant, 0, 0.5), Action::NeedsLogin);
        assert_eq!(decide(Outcome::InvalidClient, 0, 0.5), Action::PauseChannel);
        assert_eq!(
            decide(Outcome::Transient, 0, 0.0),
            Action::Retry {
                after: BACKOFF_BASE,
                channel_hold: None
            }
        );
        assert_eq!(
            decide(Outcome::Transient, 2, 1.0),
            Action::Retry {
                after: Duration::from_secs(360),
                channel_hold: None
            }
        );
        assert_eq!(
            decide(Outcome::Transient, 40, 0.0),
            Action::Retry {
                after: BACKOFF_MAX,
                channel_hold: None
            }
        );
        let hint = Duration::from_secs(900);
        assert_eq!(
            decide(Outcome::RateLimited(Some(hint)), 0, 0.0),
            Action::Retry {
                after: hint,
                channel_hold: Some(hint)
            }
        );
    }

    #[test]
    fn notice_window_table() {
        let h = at(90.0);
        assert_eq!(reauth_due_at(&t(), h), at(83.0));
        for (now, inside) in [(82.9, false), (83.0, true), (89.9, true), (90.0, false)] {
            assert_eq!(in_notice_window(&t(), h, at(now)), inside, "{now}");
        }
    }

    #[test]
    fn the_bucket_keeps_the_rate() {
        let mut b = Bucket::new(5, at(0.0));
        let mut now = at(0.0);
        let mut taken = 0;
        // One virtual minute of a caller that asks as fast as allowed.
        while now < at(0.0) + TimeDelta::seconds(60) {
            match b.take(now) {
                Ok(()) => taken += 1,
                Err(next) => now = next,
            }
        }
        // The one token it starts with, then 5 a second.
        assert!((300..=301).contains(&taken), "{taken}");
        b.hold(now + TimeDelta::seconds(10));
        assert!(b.take(now + TimeDelta::seconds(9)).is_err());
    }
}
