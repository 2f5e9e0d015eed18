//! When to try again after LINE fails (docs/design.md section 5).
//!
//! Transient failures (network, timeout, 5xx) back off exponentially with
//! full jitter; a 429 waits at least its `Retry-After` (capped at
//! [`MAX_RETRY_AFTER`]); an answer that leaves open whether LINE issued
//! waits at least [`MAYBE_ISSUED_FLOOR`] (past the deadline only when the
//! one before it was one too); permanent ones (bad key, unknown
//! `kid`, wrong secret) retry at a slow fixed pace. Every wait is
//! deadline-aware: while attempts fail, the next is never scheduled after
//! the deadline (the current token's expiry less a safety margin), so a
//! long backoff cannot carry the group past the moment its consumers lose
//! access. The random number full jitter needs is an argument, so this
//! stays a pure function the rotator feeds from its own RNG and tests feed
//! fixed values.
//!
//! Depends on chrono and [`super::rules`] only. The LINE client classifies
//! its errors into [`FailureKind`]; this module never sees them.

use chrono::{DateTime, Duration, Utc};

use super::rules::RetryRules;
use super::time;
pub use crate::domain::FailureKind;

/// A group's failure streak: the rotator keeps one per group, replaces it
/// after each failure with [`RetryState::after_failure`], and drops it after
/// the next success. While `now < not_before` the plan makes no request to
/// LINE for the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryState {
    /// Consecutive failures so far (at least 1). Drives the backoff ceiling
    /// and tells an operator how long this has been going on.
    pub failures: u32,
    /// How the last attempt failed.
    pub kind: FailureKind,
    /// The step the last attempt failed at, when known (a streak stored
    /// before steps were kept has none): with `kind`, which of the
    /// group's steps the streak holds ([`RetryState::holds`]).
    pub step: Option<StepKind>,
    /// The earliest instant of the next attempt.
    pub not_before: DateTime<Utc>,
}

/// One failed attempt, as the backoff sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failed {
    /// How it failed.
    pub kind: FailureKind,
    /// The step it failed at.
    pub step: StepKind,
    /// LINE's `Retry-After`, if it sent one (capped at [`MAX_RETRY_AFTER`]).
    pub retry_after: Option<Duration>,
}

impl Failed {
    /// A failure of `kind` at `step`, without a `Retry-After`.
    pub fn at(step: StepKind, kind: FailureKind) -> Self {
        Self {
            kind,
            step,
            retry_after: None,
        }
    }

    /// The same failure with LINE's `Retry-After`.
    #[must_use]
    pub fn retry_after(self, retry_after: Option<Duration>) -> Self {
        Self {
            retry_after,
            ..self
        }
    }
}

/// The kind of step a group's failure streak failed at. The store keeps
/// its name with the streak (`groups.failed_step`), and logs and events
/// show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepKind {
    /// Listing the channel's valid key IDs.
    Reconcile,
    /// Revoking a token.
    Revoke,
    /// Verifying a token.
    Verify,
    /// Issuing a token.
    Issue,
    /// Closing operator requests that need no issue.
    CloseRequests,
}

impl StepKind {
    /// Every kind, for tests and for reading names back.
    pub const ALL: [StepKind; 5] = [
        Self::Reconcile,
        Self::Revoke,
        Self::Verify,
        Self::Issue,
        Self::CloseRequests,
    ];

    /// The name the store keeps and logs show.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Reconcile => "reconcile",
            Self::Revoke => "revoke",
            Self::Verify => "verify",
            Self::Issue => "issue",
            Self::CloseRequests => "close requests",
        }
    }

    /// The kind named `name` ([`StepKind::name`]), if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// The longest LINE's `Retry-After` is honoured: a 429 asking for 99999999
/// seconds must not park a group for years (and the deadline caps it
/// further).
pub const MAX_RETRY_AFTER: Duration = Duration::hours(1);

/// The shortest wait after an answer that leaves open whether LINE issued:
/// each such retry may leave a live token nobody can revoke, so they are
/// slow, and the next step is a reconcile anyway. Past the deadline it
/// holds only for the second of such answers in a row: the first retries
/// at `retry.base`.
pub const MAYBE_ISSUED_FLOOR: Duration = Duration::minutes(1);

/// The shortest wait after a permanent failure, even at the deadline: a
/// wrong key fails the same way every time.
const PERMANENT_FLOOR: Duration = Duration::minutes(1);

impl RetryState {
    /// The streak after one more failure at `now`.
    ///
    /// `previous` is the streak before it (`None` after a success);
    /// `failed` is the attempt (its kind, step and LINE's `Retry-After`,
    /// capped at [`MAX_RETRY_AFTER`]); `u` is a uniform random number in
    /// `[0, 1)` (out-of-range values are clamped).
    ///
    /// - transient: `backoff(failures, u)`;
    /// - rate limited: the backoff, or longer if `Retry-After` says so;
    /// - may have issued: as transient, but at least [`MAYBE_ISSUED_FLOOR`];
    /// - permanent: `permanent_interval`;
    /// - channel full: as transient (the channel's own hold does the rest).
    ///
    /// Then the deadline: with `deadline` (the current token's expiry less
    /// the safety margin), the attempt is moved up to the deadline; once
    /// the deadline is near or past, attempts come at most `retry.base`
    /// apart (a minute for permanent failures, and for an answer that may
    /// have issued right after another one), because every attempt is a
    /// chance to keep consumers served.
    pub fn after_failure(
        previous: Option<&RetryState>,
        now: DateTime<Utc>,
        failed: Failed,
        u: f64,
        rules: &RetryRules,
        deadline: Option<DateTime<Utc>>,
    ) -> RetryState {
        let Failed {
            kind,
            step,
            retry_after,
        } = failed;
        let failures = previous.map_or(1, |p| p.failures.saturating_add(1));
        let jittered = backoff_with(rules, failures, u);
        let asked = retry_after
            .map_or(Duration::zero(), time::non_negative)
            .min(MAX_RETRY_AFTER);
        let wait = match kind {
            FailureKind::Transient | FailureKind::ChannelFull => jittered.max(asked),
            FailureKind::RateLimited => jittered.max(asked),
            FailureKind::MaybeIssued => jittered.max(asked).max(MAYBE_ISSUED_FLOOR),
            FailureKind::Permanent => time::non_negative(rules.permanent_interval).max(asked),
        };
        // How often attempts may come at or past the deadline (a group
        // without a token is always there): as often as the base allows,
        // except where retrying fast helps nobody. A permanent failure fails
        // the same way every time. An answer that may have issued may leave
        // one more token nobody can revoke each time, so a run of them stays
        // a minute apart (LINE's own 30 tokens are the limit they would
        // eat); but the first of a run (a crash mid-issue, one dropped
        // answer) retries as soon as the base allows, after the listing
        // that settles it (the plan asks for that listing first): a minute
        // there left a group without a token for a minute while LINE
        // answered (outside test).
        let repeat_unknown = previous.is_some_and(|p| p.kind == FailureKind::MaybeIssued);
        let floor = match kind {
            FailureKind::Permanent => PERMANENT_FLOOR,
            FailureKind::MaybeIssued if repeat_unknown => MAYBE_ISSUED_FLOOR,
            _ => time::non_negative(rules.base),
        };
        let wait = before_deadline(wait, floor, now, deadline);
        RetryState {
            failures,
            kind,
            step: Some(step),
            not_before: time::add(now, wait),
        }
    }

    /// A "may have issued" streak of the group's issue whose attempts a
    /// key-ID listing has since settled without finding a key ID nobody
    /// holds: LINE issued nothing, so the streak goes on as a transient
    /// one. Its retry comes at the transient backoff from `now`, no later
    /// than the retry it had, and deadline-aware as in
    /// [`RetryState::after_failure`]; and a next unknown answer is the
    /// first of a run again, not a repeat held a minute even past the
    /// deadline. (Two unknown answers in a row left a group without a
    /// token for 49 s while LINE answered every other issue: an outside
    /// test.) `None` for any other streak.
    pub fn settled_nothing(
        &self,
        now: DateTime<Utc>,
        u: f64,
        rules: &RetryRules,
        deadline: Option<DateTime<Utc>>,
    ) -> Option<RetryState> {
        if self.kind != FailureKind::MaybeIssued || self.step != Some(StepKind::Issue) {
            return None;
        }
        let wait = backoff_with(rules, self.failures, u);
        let wait = before_deadline(wait, time::non_negative(rules.base), now, deadline);
        Some(RetryState {
            failures: self.failures,
            kind: FailureKind::Transient,
            step: self.step,
            not_before: self.not_before.min(time::add(now, wait)),
        })
    }

    /// Whether the streak holds the group's steps of `step` until
    /// `not_before`. LINE limits and refuses each endpoint on its own, so
    /// a streak of these speaks only for the step it failed at:
    ///
    /// - LINE's 429 to a verify holds the verifies, not an issue the
    ///   group needs, the listing before it or a revocation. (Holding
    ///   everything left a due rotation waiting for its deadline, where
    ///   one more failure cost the token: an outside test.)
    /// - A revoke refused for good (a wrong secret) holds the revocations:
    ///   the group plans as one without the secret
    ///   ([`RetryState::refuses_revokes`]), so its issues go on and an
    ///   incident still gets its fresh token. (Holding the group left an
    ///   incident's group on the leaked token, then without one, until the
    ///   revoke's slow retry: an outside test.)
    ///
    /// - An issue answer that may have issued holds everything but the
    ///   listing that settles it: that listing shows whether LINE issued,
    ///   and when it did not, the streak goes on at the transient pace
    ///   ([`RetryState::settled_nothing`]).
    ///
    /// Any other streak holds every step: the group's next call to LINE
    /// waits for `not_before`.
    pub fn holds(&self, step: StepKind) -> bool {
        match (self.kind, self.step) {
            (FailureKind::RateLimited, Some(StepKind::Verify)) => step == StepKind::Verify,
            (FailureKind::Permanent, Some(StepKind::Revoke)) => step == StepKind::Revoke,
            (FailureKind::MaybeIssued, Some(StepKind::Issue)) => step != StepKind::Reconcile,
            _ => true,
        }
    }

    /// Whether a success of `step` ends the streak: one of the step that
    /// failed, or an issue, which is what every streak is ultimately
    /// about. Another step succeeding says nothing about the failed one:
    /// ending the streak there made the backoff restart at its first step
    /// before every retry (a successful listing before each retried issue).
    pub fn ended_by(&self, step: StepKind) -> bool {
        step == StepKind::Issue || self.step == Some(step)
    }

    /// True when LINE refused the group's revoke for good: the group plans
    /// as one without the secret until the streak ends (a reload with a
    /// changed secret, `linetokd rotate`).
    pub fn refuses_revokes(&self) -> bool {
        self.kind == FailureKind::Permanent && self.step == Some(StepKind::Revoke)
    }

    /// When the streak is LINE's 429 to the group's issue: the instant its
    /// retry waits for. LINE limits each endpoint of a channel, so the
    /// channel's other issues wait until then too
    /// ([`drive`](super::drive)); a 429 to a verify says nothing about
    /// issuing.
    pub fn pauses_issues_until(&self) -> Option<DateTime<Utc>> {
        (self.kind == FailureKind::RateLimited && self.step == Some(StepKind::Issue))
            .then_some(self.not_before)
    }
}

/// Full-jitter backoff with the default rules: a wait drawn uniformly from
/// `[0, min(10 min, 5 s * 2^(attempt-1)))` by `u` in `[0, 1)`.
///
/// `attempt` counts from 1 (0 is read as 1). Full jitter (rather than a fixed
/// doubling) keeps many groups that failed together from retrying together.
pub fn backoff(attempt: u32, u: f64) -> Duration {
    backoff_with(&RetryRules::default(), attempt, u)
}

/// `wait` moved up to the deadline: never past it while it is ahead, and
/// `floor` apart (or `wait`, if shorter) once it is near or past.
fn before_deadline(
    wait: Duration,
    floor: Duration,
    now: DateTime<Utc>,
    deadline: Option<DateTime<Utc>>,
) -> Duration {
    match deadline {
        Some(deadline) => {
            let left = deadline.signed_duration_since(now);
            wait.min(left.max(floor.min(wait)))
        }
        None => wait,
    }
}

/// [`backoff`] with the given rules.
pub fn backoff_with(rules: &RetryRules, attempt: u32, u: f64) -> Duration {
    let base_ms = rules.base.num_milliseconds().max(1);
    let cap_ms = rules.cap.num_milliseconds().max(base_ms);
    // 2^(attempt-1), stopping as soon as the cap is reached so the shift can
    // never overflow however long the streak.
    let doublings = attempt.saturating_sub(1).min(62);
    let ceiling_ms = base_ms
        .checked_mul(1_i64 << doublings)
        .map_or(cap_ms, |c| c.min(cap_ms));
    let u = if u.is_finite() {
        u.clamp(0.0, 1.0)
    } else {
        0.0
    };
    // The product is at most ceiling_ms (< 2^63), so the conversion is exact
    // enough and cannot overflow; `min` keeps u == 1.0 inside the range.
    let wait_ms = ((ceiling_ms as f64) * u).floor() as i64;
    Duration::milliseconds(wait_ms.min(ceiling_ms.saturating_sub(1)).max(0))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    /// A failure of an issue.
    fn issue(kind: FailureKind) -> Failed {
        Failed::at(StepKind::Issue, kind)
    }

    #[test]
    fn ceiling_doubles_from_five_seconds_to_ten_minutes() {
        let just_under_one = 1.0 - f64::EPSILON;
        let ceilings: Vec<i64> = (1..=10)
            .map(|a| backoff(a, just_under_one).num_milliseconds() + 1)
            .collect();
        assert_eq!(
            ceilings,
            [
                5_000, 10_000, 20_000, 40_000, 80_000, 160_000, 320_000, 600_000, 600_000, 600_000
            ]
        );
        assert_eq!(backoff(1, 0.0), Duration::zero());
        assert_eq!(backoff(3, 0.5), Duration::seconds(10));
        assert_eq!(backoff(0, 0.5), backoff(1, 0.5));
    }

    #[test]
    fn absurd_inputs_stay_in_range() {
        for u in [f64::NAN, f64::INFINITY, -1.0, 1.0, 7.0] {
            for a in [0, 1, 64, u32::MAX] {
                let d = backoff(a, u);
                assert!(
                    d >= Duration::zero() && d < Duration::minutes(10),
                    "{a} {u} {d}"
                );
            }
        }
    }

    #[test]
    fn transient_failures_honour_retry_after_when_longer() {
        let r = RetryRules::default();
        let first =
            RetryState::after_failure(None, t0(), issue(FailureKind::Transient), 0.5, &r, None);
        assert_eq!(
            (first.failures, first.not_before),
            (1, t0() + Duration::milliseconds(2_500))
        );
        let second = RetryState::after_failure(
            Some(&first),
            t0(),
            issue(FailureKind::Transient).retry_after(Some(Duration::seconds(120))),
            0.5,
            &r,
            None,
        );
        assert_eq!(
            (second.failures, second.not_before),
            (2, t0() + Duration::seconds(120))
        );
        let third = RetryState::after_failure(
            Some(&second),
            t0(),
            issue(FailureKind::Transient).retry_after(Some(Duration::seconds(1))),
            0.5,
            &r,
            None,
        );
        assert_eq!(third.not_before, t0() + Duration::seconds(10));
    }

    #[test]
    fn retry_after_is_capped_at_an_hour_and_never_past_the_deadline() {
        let r = RetryRules::default();
        let huge = Some(Duration::seconds(99_999_999));
        let s = RetryState::after_failure(
            None,
            t0(),
            issue(FailureKind::RateLimited).retry_after(huge),
            0.5,
            &r,
            None,
        );
        assert_eq!(s.not_before, t0() + MAX_RETRY_AFTER);
        let deadline = t0() + Duration::minutes(7);
        let s = RetryState::after_failure(
            None,
            t0(),
            issue(FailureKind::RateLimited).retry_after(huge),
            0.5,
            &r,
            Some(deadline),
        );
        assert_eq!(s.not_before, deadline);
    }

    #[test]
    fn at_the_deadline_attempts_come_at_most_a_base_apart() {
        let r = RetryRules::default();
        let past = Some(t0() - Duration::minutes(1));
        let mut streak = None;
        for _ in 0..12 {
            let s = RetryState::after_failure(
                streak.as_ref(),
                t0(),
                issue(FailureKind::Transient),
                0.99,
                &r,
                past,
            );
            assert!(s.not_before <= t0() + r.base, "{s:?}");
            streak = Some(s);
        }
        let p = RetryState::after_failure(None, t0(), issue(FailureKind::Permanent), 0.5, &r, past);
        assert_eq!(p.not_before, t0() + Duration::minutes(1));
    }

    #[test]
    fn an_unknown_outcome_retries_slowly() {
        let r = RetryRules::default();
        let s =
            RetryState::after_failure(None, t0(), issue(FailureKind::MaybeIssued), 0.0, &r, None);
        assert_eq!(s.not_before, t0() + MAYBE_ISSUED_FLOOR);
    }

    #[test]
    fn past_the_deadline_only_a_run_of_unknown_outcomes_waits_a_minute() {
        let r = RetryRules::default();
        let past = Some(t0() - Duration::seconds(1));
        let unknown = |previous: Option<&RetryState>| {
            RetryState::after_failure(
                previous,
                t0(),
                issue(FailureKind::MaybeIssued),
                0.9,
                &r,
                past,
            )
        };
        // The first (a crash mid-issue, one dropped answer): the base.
        let first = unknown(None);
        assert_eq!(first.not_before, t0() + r.base);
        let transient =
            RetryState::after_failure(None, t0(), issue(FailureKind::Transient), 0.9, &r, past);
        assert_eq!(unknown(Some(&transient)).not_before, t0() + r.base);
        // One after another: a minute apart.
        assert_eq!(unknown(Some(&first)).not_before, t0() + MAYBE_ISSUED_FLOOR);
    }

    #[test]
    fn permanent_failures_retry_every_thirty_minutes() {
        let r = RetryRules::default();
        let s = RetryState::after_failure(None, t0(), issue(FailureKind::Permanent), 0.0, &r, None);
        assert_eq!(s.not_before, t0() + Duration::minutes(30));
        let s = RetryState::after_failure(
            Some(&s),
            t0(),
            issue(FailureKind::Permanent),
            0.99,
            &r,
            None,
        );
        assert_eq!(
            (s.failures, s.not_before),
            (2, t0() + Duration::minutes(30))
        );
    }

    proptest! {
        #[test]
        fn backoff_is_within_full_jitter_bounds(attempt in 0u32..100, u in 0.0f64..1.0) {
            let d = backoff(attempt, u).num_milliseconds();
            let ceiling = (5_000_i64 << attempt.saturating_sub(1).min(20)).min(600_000);
            prop_assert!(d >= 0 && d < ceiling, "attempt {} u {} -> {}ms", attempt, u, d);
        }

        #[test]
        fn backoff_grows_with_u(attempt in 1u32..20, a in 0.0f64..1.0, b in 0.0f64..1.0) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(backoff(attempt, lo) <= backoff(attempt, hi));
        }
    }

    #[test]
    fn a_streak_holds_only_the_steps_it_speaks_for() {
        let streak = |kind, step| RetryState {
            failures: 1,
            kind,
            step: Some(step),
            not_before: t0() + Duration::minutes(5),
        };
        for step in StepKind::ALL {
            assert_eq!(StepKind::from_name(step.name()), Some(step));
            assert_eq!(step.to_string(), step.name());
        }
        // A verify's 429: the verifies only.
        let verify_429 = streak(FailureKind::RateLimited, StepKind::Verify);
        for step in StepKind::ALL {
            assert_eq!(verify_429.holds(step), step == StepKind::Verify, "{step}");
        }
        assert_eq!(verify_429.pauses_issues_until(), None);
        // A revoke refused for good: the revocations only, and the group
        // plans as without the secret.
        let refused = streak(FailureKind::Permanent, StepKind::Revoke);
        for step in StepKind::ALL {
            assert_eq!(refused.holds(step), step == StepKind::Revoke, "{step}");
        }
        assert!(refused.refuses_revokes());
        // An issue's 429 holds every step and pauses the channel's issues.
        let issue_429 = streak(FailureKind::RateLimited, StepKind::Issue);
        assert!(StepKind::ALL.into_iter().all(|s| issue_429.holds(s)));
        assert_eq!(issue_429.pauses_issues_until(), Some(issue_429.not_before));
        assert!(!issue_429.refuses_revokes());
        // Anything else holds every step, and so does a streak whose step
        // was never stored.
        for kind in [
            FailureKind::Transient,
            FailureKind::MaybeIssued,
            FailureKind::Permanent,
        ] {
            let s = streak(kind, StepKind::Verify);
            assert!(
                StepKind::ALL.into_iter().all(|step| s.holds(step)),
                "{kind}"
            );
        }
        let unknown = RetryState {
            step: None,
            ..refused
        };
        assert!(StepKind::ALL.into_iter().all(|step| unknown.holds(step)));
        assert!(!unknown.refuses_revokes());
    }

    #[test]
    fn a_settled_unknown_outcome_goes_on_at_the_transient_pace() {
        let r = RetryRules::default();
        let unknown =
            RetryState::after_failure(None, t0(), issue(FailureKind::MaybeIssued), 0.5, &r, None);
        assert_eq!(unknown.not_before, t0() + MAYBE_ISSUED_FLOOR);
        assert!(
            !unknown.holds(StepKind::Reconcile),
            "the listing settles it"
        );
        assert!(unknown.holds(StepKind::Issue) && unknown.holds(StepKind::Verify));
        let now = t0() + Duration::seconds(1);
        let settled = unknown.settled_nothing(now, 0.5, &r, None).unwrap();
        assert_eq!(settled.kind, FailureKind::Transient);
        assert_eq!(settled.failures, 1);
        assert_eq!(settled.not_before, now + backoff_with(&r, 1, 0.5));
        // A next unknown answer is the first of a run again: near the
        // deadline it waits only the base, not a minute.
        let deadline = now + Duration::seconds(2);
        let next = RetryState::after_failure(
            Some(&settled),
            now,
            issue(FailureKind::MaybeIssued),
            0.5,
            &r,
            Some(deadline),
        );
        assert!(next.not_before <= now + r.base, "{next:?}");
        // Deadline-aware, and never later than the retry it had.
        let late = unknown
            .settled_nothing(now, 1.0, &r, Some(now - Duration::seconds(1)))
            .unwrap();
        assert_eq!(late.not_before, now + backoff_with(&r, 1, 1.0).min(r.base));
        let soon = RetryState {
            not_before: now,
            ..unknown.clone()
        };
        assert_eq!(
            soon.settled_nothing(now, 1.0, &r, None).unwrap().not_before,
            now
        );
        // Only a "may have issued" streak of the issue.
        let transient =
            RetryState::after_failure(None, t0(), issue(FailureKind::Transient), 0.5, &r, None);
        assert_eq!(transient.settled_nothing(now, 0.5, &r, None), None);
    }
}
