//! The channel's issuance budget (invariant 4): at most
//! `max_issues_per_hour` attempts in any rolling hour, with two bounded
//! exceptions for groups whose consumers would otherwise lose their token.
//!
//! The caller persists every attempt (successful or not) and passes the last
//! hour's; this module says when the next one is allowed. A window of one
//! hour means an attempt at `t` stops counting at exactly `t + 1h`.
//!
//! # The rule ([`issue_allowed_at`], docs/design.md section 5.8)
//!
//! Let `B` be `max_issues_per_hour` and "the hour" the rolling hour ending
//! now. A group that needs a new token may attempt:
//!
//! 1. **Within the budget**: the channel has fewer than `B` attempts in the
//!    hour.
//! 2. **First-start burst**: the group has no usable token, needs one for
//!    that reason ([`IssueReason::NoCurrent`](super::IssueReason::NoCurrent))
//!    and has made no attempt in the hour. Once per group per hour, whatever
//!    the channel's count: a new channel with 15 groups is served in one
//!    pass, not over hours.
//! 3. **Deadline rescue**: the group is *at risk* (it has no usable token, or
//!    the budget's next slot comes after its deadline, the current token's
//!    expiry less `deadline_margin`: waiting would lose consumers their
//!    token), its own last attempt is at least [`OVER_BUDGET_SPACING`] ago,
//!    and the channel has fewer than [`OVER_BUDGET_FACTOR`]` × B` attempts
//!    in the hour.
//!
//! Every attempt counts in the hour whatever allowed it. Failed attempts
//! spend the budget too, so without the rescue a run of failures (30 %
//! errors, a few groups rotating together) could hold a group past its
//! expiry while LINE answers most of the time.
//!
//! # The bound this gives (what the property tests check)
//!
//! No rolling hour holds more than `2B + G` attempts on a channel, `G` its
//! groups: an attempt allowed by 1 or 3 finds fewer than `2B` before it in
//! its own hour, so the hour up to the last such attempt holds at most `2B`;
//! after it come only bursts, at most one per group. And a group makes an
//! over-budget attempt at most once per [`OVER_BUDGET_SPACING`]. So a crash
//! or bug loop stays bounded at about twice the operator's budget, while a
//! group about to lose its token still gets several tries before it does.
//!
//! Depends on chrono and the policy's time helpers only.

use chrono::{DateTime, Duration, Utc};

use super::time;

/// The length of the rolling window.
pub const ISSUE_WINDOW: Duration = Duration::hours(1);

/// The channel-wide ceiling for over-budget attempts, as a multiple of
/// `max_issues_per_hour`: a deadline rescue is refused once the hour holds
/// this many times the budget (bursts aside, see the module documentation).
pub const OVER_BUDGET_FACTOR: u32 = 2;

/// The least time between a group's last attempt (any outcome) and an
/// over-budget one: at most one rescue attempt per group per minute, the
/// same pace as a group without a token retries at
/// ([`NO_TOKEN_RETRY`](super::plan::NO_TOKEN_RETRY)). With the default
/// 5-minute `deadline_margin` a group at risk gets about five tries before
/// its token expires, and the channel's ceiling still caps them all.
pub const OVER_BUDGET_SPACING: Duration = Duration::minutes(1);

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

/// How pressing a group's issue is, as far as the budget cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// The group has a usable token; `deadline` is its expiry less the
    /// safety margin ([`deadline`](super::deadline)). At risk only if the
    /// budget's next slot comes after it.
    Until {
        /// When the group's next attempt must come by.
        deadline: DateTime<Utc>,
    },
    /// The group has no usable token: always at risk.
    NoToken {
        /// The first-start burst applies: the issue is for want of a token
        /// and the group made no attempt within the hour.
        first_in_hour: bool,
    },
}

/// What the budget knows about one group and its channel.
#[derive(Debug, Clone, Copy)]
pub struct BudgetInput<'a> {
    /// The channel's attempts within the hour (older ones are ignored).
    pub channel_times: &'a [DateTime<Utc>],
    /// `max_issues_per_hour`.
    pub max_per_hour: u32,
    /// How pressing the group's issue is.
    pub urgency: Urgency,
    /// The group's latest attempt (any outcome), if it made one within the
    /// hour.
    pub group_last_attempt: Option<DateTime<Utc>>,
}

/// The earliest instant at or after `now` when the group's issue attempt is
/// allowed by the budget and its bounded exceptions (see the module
/// documentation for the rule and the bound it gives).
///
/// The answer only moves later as attempts are added, and a group at risk
/// stays at risk until its tokens change, so the caller may sleep until it.
pub fn issue_allowed_at(now: DateTime<Utc>, input: &BudgetInput<'_>) -> DateTime<Utc> {
    let budget_at = next_issue_allowed_at(now, input.channel_times, input.max_per_hour);
    if budget_at <= now {
        return now;
    }
    match input.urgency {
        Urgency::NoToken {
            first_in_hour: true,
        } => now,
        // Waiting for the budget keeps the deadline: wait.
        Urgency::Until { deadline } if budget_at <= deadline => budget_at,
        Urgency::Until { .. } | Urgency::NoToken { .. } => {
            let spaced = input
                .group_last_attempt
                .map_or(now, |last| time::add(last, OVER_BUDGET_SPACING))
                .max(now);
            let ceiling = input.max_per_hour.saturating_mul(OVER_BUDGET_FACTOR);
            let under_ceiling = next_issue_allowed_at(now, input.channel_times, ceiling);
            budget_at.min(spaced.max(under_ceiling))
        }
    }
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

    fn ask(times: &[DateTime<Utc>], urgency: Urgency, last: Option<i64>) -> BudgetInput<'_> {
        BudgetInput {
            channel_times: times,
            max_per_hour: 6,
            urgency,
            group_last_attempt: last.map(t),
        }
    }

    fn until(deadline: i64) -> Urgency {
        Urgency::Until {
            deadline: t(deadline),
        }
    }

    #[test]
    fn within_the_budget_anyone_goes() {
        let times = [t(-100); 5];
        for urgency in [
            until(9_999),
            until(0),
            Urgency::NoToken {
                first_in_hour: false,
            },
        ] {
            assert_eq!(
                issue_allowed_at(t(0), &ask(&times, urgency, Some(-1))),
                t(0)
            );
        }
    }

    #[test]
    fn a_spent_budget_holds_a_group_whose_deadline_it_keeps() {
        let times = [t(-3000), t(-100), t(-90), t(-80), t(-70), t(-60)];
        // The budget opens at t(600): in time for a deadline at t(600).
        assert_eq!(
            issue_allowed_at(t(0), &ask(&times, until(600), None)),
            t(600)
        );
        assert_eq!(
            issue_allowed_at(t(0), &ask(&times, until(5000), None)),
            t(600)
        );
    }

    #[test]
    fn a_spent_budget_lets_a_group_at_risk_go_a_minute_after_its_last_try() {
        let times = [t(-3000), t(-100), t(-90), t(-80), t(-70), t(-60)];
        // The budget opens at t(600), after the deadline: go now...
        assert_eq!(issue_allowed_at(t(0), &ask(&times, until(599), None)), t(0));
        assert_eq!(
            issue_allowed_at(t(0), &ask(&times, until(-50), Some(-60))),
            t(0)
        );
        // ...but a minute after the group's own last attempt.
        assert_eq!(
            issue_allowed_at(t(0), &ask(&times, until(599), Some(-20))),
            t(40)
        );
        let no_token = Urgency::NoToken {
            first_in_hour: false,
        };
        assert_eq!(
            issue_allowed_at(t(0), &ask(&times, no_token, Some(-20))),
            t(40)
        );
        // The budget itself opening first wins.
        let times = [t(-3590), t(-100), t(-90), t(-80), t(-70), t(-60)];
        assert_eq!(
            issue_allowed_at(t(0), &ask(&times, until(0), Some(-1))),
            t(10)
        );
    }

    #[test]
    fn twice_the_budget_stops_rescues_but_not_first_start_bursts() {
        let times: Vec<_> = (0..12).map(|i| t(-3000 + i * 100)).collect();
        let no_token = Urgency::NoToken {
            first_in_hour: false,
        };
        // The first attempt of the twelve ages out at t(600).
        assert_eq!(issue_allowed_at(t(0), &ask(&times, until(0), None)), t(600));
        assert_eq!(issue_allowed_at(t(0), &ask(&times, no_token, None)), t(600));
        let burst = Urgency::NoToken {
            first_in_hour: true,
        };
        assert_eq!(issue_allowed_at(t(0), &ask(&times, burst, None)), t(0));
    }

    proptest! {
        /// Any schedule that only attempts when [`issue_allowed_at`] allows
        /// it keeps the documented bound: at most `2B + G` attempts in any
        /// rolling hour, and a group's over-budget attempts at least
        /// [`OVER_BUDGET_SPACING`] apart.
        #[test]
        fn any_schedule_the_rule_allows_keeps_the_bound(
            steps in prop::collection::vec((0usize..4, 0u8..3, 1i64..120), 1..300),
            max in 1u32..6,
        ) {
            let groups = 4;
            let mut now = t(0);
            let mut attempts: Vec<(usize, DateTime<Utc>)> = Vec::new();
            let mut over: Vec<(usize, DateTime<Utc>)> = Vec::new();
            for (g, kind, gap) in steps {
                now += Duration::seconds(gap);
                let hour: Vec<DateTime<Utc>> = attempts
                    .iter()
                    .map(|(_, at)| *at)
                    .filter(|at| *at > now - ISSUE_WINDOW)
                    .collect();
                let last = attempts
                    .iter()
                    .filter(|(h, at)| *h == g && *at > now - ISSUE_WINDOW)
                    .map(|(_, at)| *at)
                    .max();
                // The worst case: every group always at risk.
                let urgency = match kind {
                    0 => until(-1_000_000),
                    _ => Urgency::NoToken { first_in_hour: kind == 2 && last.is_none() },
                };
                let input = BudgetInput {
                    channel_times: &hour,
                    max_per_hour: max,
                    urgency,
                    group_last_attempt: last,
                };
                if issue_allowed_at(now, &input) > now {
                    continue;
                }
                if hour.len() >= max as usize {
                    if let Some(prev) = over.iter().rev().find(|(h, _)| *h == g) {
                        prop_assert!(now - prev.1 >= OVER_BUDGET_SPACING);
                    }
                    over.push((g, now));
                }
                attempts.push((g, now));
                let in_hour = attempts.iter().filter(|(_, at)| *at > now - ISSUE_WINDOW).count();
                prop_assert!(in_hour <= 2 * max as usize + groups, "{in_hour} in an hour");
            }
        }

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
