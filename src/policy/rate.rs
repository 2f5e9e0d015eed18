//! The channel's issuance budget: at most `max_issues_per_hour` attempts in
//! any rolling hour (invariant 4).
//!
//! The caller persists every attempt (successful or not) and passes the last
//! hour's; this module says when the next one is allowed. A window of one
//! hour means an attempt at `t` stops counting at exactly `t + 1h`.
//!
//! Depends on chrono only.

use chrono::{DateTime, Duration, Utc};

use super::time;

/// The length of the rolling window.
pub const ISSUE_WINDOW: Duration = Duration::hours(1);

/// The earliest instant at or after `now` when one more issue attempt keeps
/// every rolling hour at `max` attempts or fewer, given the attempts `times`.
///
/// Attempts at or before `now - 1h` are ignored; attempts after `now` (the
/// clock went back) are counted, since they will be inside the window for
/// longer, not shorter. With `max == 0` nothing is ever allowed: the answer
/// is the end of time.
pub fn next_issue_allowed_at(
    now: DateTime<Utc>,
    times: &[DateTime<Utc>],
    max: u32,
) -> DateTime<Utc> {
    if max == 0 {
        return DateTime::<Utc>::MAX_UTC;
    }
    let window_start = time::sub(now, ISSUE_WINDOW);
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    // Counted before anything is collected: the policy asks on every plan,
    // and the budget is rarely spent.
    if times.iter().filter(|t| **t > window_start).count() < max {
        return now;
    }
    let mut recent: Vec<DateTime<Utc>> = times
        .iter()
        .copied()
        .filter(|t| *t > window_start)
        .collect();
    recent.sort();
    // Once the (len - max)th oldest attempt leaves the window, max - 1 remain
    // in it and one more fits.
    let oldest_to_age_out = recent[recent.len() - max];
    time::add(oldest_to_age_out, ISSUE_WINDOW).max(now)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn open_while_under_the_limit() {
        assert_eq!(next_issue_allowed_at(t(0), &[], 6), t(0));
        assert_eq!(next_issue_allowed_at(t(0), &[t(-10); 5], 6), t(0));
    }

    #[test]
    fn full_window_opens_when_the_oldest_is_an_hour_old() {
        let times = [t(-3000), t(-100), t(-2000), t(-50), t(-10), t(-3500)];
        assert_eq!(next_issue_allowed_at(t(0), &times, 6), t(100));
        // Two over the limit: the second oldest must age out.
        let times = [t(-3500), t(-3000), t(-2000), t(-10)];
        assert_eq!(next_issue_allowed_at(t(0), &times, 2), t(1600));
    }

    #[test]
    fn attempts_an_hour_old_no_longer_count() {
        assert_eq!(next_issue_allowed_at(t(0), &[t(-3600)], 1), t(0));
        assert_eq!(next_issue_allowed_at(t(0), &[t(-3599)], 1), t(1));
    }

    #[test]
    fn zero_allows_nothing_ever() {
        assert_eq!(
            next_issue_allowed_at(t(0), &[], 0),
            DateTime::<Utc>::MAX_UTC
        );
    }

    proptest! {
        /// Issuing at the answer never puts more than `max` attempts in the
        /// hour that ends there, and one second earlier would have.
        #[test]
        fn the_answer_is_the_earliest_safe_instant(
            offsets in prop::collection::vec(-4000i64..0, 0..12),
            max in 1u32..8,
        ) {
            let times: Vec<_> = offsets.iter().map(|&o| t(o)).collect();
            let at = next_issue_allowed_at(t(0), &times, max);
            let in_window = |end: DateTime<Utc>| times.iter().filter(|&&x| x > end - ISSUE_WINDOW && x <= end).count();
            prop_assert!(in_window(at) < max as usize);
            if at > t(0) {
                prop_assert!(in_window(at - Duration::seconds(1)) >= max as usize);
            }
        }
    }
}
