//! When to try again after LINE fails (DESIGN.md section 5).
//!
//! Transient failures (network, timeout, 5xx, 429) back off exponentially
//! with full jitter, honouring LINE's `Retry-After`; permanent ones (bad key,
//! unknown `kid`, wrong secret) retry at a slow fixed pace so a config fix
//! is picked up. The random number full jitter needs is an argument, so this
//! stays a pure function the rotator feeds from its own RNG and tests feed
//! fixed values.
//!
//! Depends on chrono and [`super::rules`] only. The LINE client classifies
//! its errors into [`FailureKind`]; this module never sees them.

use chrono::{DateTime, Duration, Utc};

use super::rules::RetryRules;
use super::time;

/// How a failed request failed, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// Worth retrying soon: network error, timeout, 5xx, 429.
    Transient,
    /// Will fail again until someone changes something: 400
    /// `invalid_client`, 404 unknown signing key, wrong channel secret,
    /// LINE's "maximum number of access tokens" refusal.
    Permanent,
}

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
    /// The earliest instant of the next attempt.
    pub not_before: DateTime<Utc>,
}

impl RetryState {
    /// The streak after one more failure at `now`.
    ///
    /// `previous` is the streak before it (`None` after a success);
    /// `retry_after` is LINE's `Retry-After`, if it sent one; `u` is a
    /// uniform random number in `[0, 1)` (out-of-range values are clamped).
    /// Transient: wait `max(backoff(failures, u), retry_after)`. Permanent:
    /// wait `permanent_interval`, or longer if LINE asked for longer.
    pub fn after_failure(
        previous: Option<&RetryState>,
        now: DateTime<Utc>,
        kind: FailureKind,
        retry_after: Option<Duration>,
        u: f64,
        rules: &RetryRules,
    ) -> RetryState {
        let failures = previous.map_or(1, |p| p.failures.saturating_add(1));
        let wait = match kind {
            FailureKind::Transient => backoff_with(rules, failures, u),
            FailureKind::Permanent => time::non_negative(rules.permanent_interval),
        };
        let wait = wait.max(retry_after.map_or(Duration::zero(), time::non_negative));
        RetryState {
            failures,
            kind,
            not_before: time::add(now, wait),
        }
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
        let first = RetryState::after_failure(None, t0(), FailureKind::Transient, None, 0.5, &r);
        assert_eq!(
            (first.failures, first.not_before),
            (1, t0() + Duration::milliseconds(2_500))
        );
        let second = RetryState::after_failure(
            Some(&first),
            t0(),
            FailureKind::Transient,
            Some(Duration::seconds(120)),
            0.5,
            &r,
        );
        assert_eq!(
            (second.failures, second.not_before),
            (2, t0() + Duration::seconds(120))
        );
        let third = RetryState::after_failure(
            Some(&second),
            t0(),
            FailureKind::Transient,
            Some(Duration::seconds(1)),
            0.5,
            &r,
        );
        assert_eq!(third.not_before, t0() + Duration::seconds(10));
    }

    #[test]
    fn permanent_failures_retry_every_thirty_minutes() {
        let r = RetryRules::default();
        let s = RetryState::after_failure(None, t0(), FailureKind::Permanent, None, 0.0, &r);
        assert_eq!(s.not_before, t0() + Duration::minutes(30));
        let s = RetryState::after_failure(Some(&s), t0(), FailureKind::Permanent, None, 0.99, &r);
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
}
