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
//!    and the channel has fewer than [`OVER_BUDGET_FACTOR`]` × B` *repeat*
//!    attempts in the hour: attempts of a group that made another after it
//!    within the hour. A group's latest attempt is not a repeat, so the
//!    first-start burst does not count against the rescue: a new channel of
//!    15 groups whose first pass met 30 % errors retries its failed groups
//!    a minute later, not an hour later.
//!
//! Every attempt counts in the hour whatever allowed it. Failed attempts
//! spend the budget too, so without the rescue a run of failures (30 %
//! errors, a few groups rotating together) could hold a group past its
//! expiry while LINE answers most of the time.
//!
//! # The bound this gives (what the property tests check)
//!
//! No rolling hour holds more than `2B` repeat attempts, so no more than
//! `2B + G` attempts on a channel, `G` its groups. Take any hour and the
//! last attempt in it allowed by 1 or 3: the part of the hour before it
//! lies in that attempt's own hour, which held fewer than `2B` repeats (or
//! fewer than `B` attempts), and a subset of attempts never holds more
//! repeats; the attempt itself adds at most one (it makes its group's
//! previous attempt a repeat), so at most `2B` up to it. After it come only
//! bursts, each by a group with no other attempt in the hour, which add no
//! repeat. And a group makes an
//! over-budget attempt at most once per [`OVER_BUDGET_SPACING`]. So a
//! crash or bug loop stays bounded at about twice the operator's budget,
//! while a group about to lose its token still gets several tries before
//! it does.
//!
//! Depends on chrono and the policy's time helpers only.

use chrono::{DateTime, Duration, Utc};

use super::time;
use crate::domain::GroupName;

/// The length of the rolling window.
pub const ISSUE_WINDOW: Duration = Duration::hours(1);

/// The channel-wide ceiling for over-budget attempts, as a multiple of
/// `max_issues_per_hour`: a deadline rescue is refused once the hour holds
/// this many times the budget in repeat attempts (see the module
/// documentation).
pub const OVER_BUDGET_FACTOR: u32 = 2;

/// The least time between a group's last attempt (any outcome) and an
/// over-budget one: at most one rescue attempt per group per minute. With the default
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
    /// The channel's attempts within the hour, each with its group, in any
    /// order (older ones are ignored).
    pub channel_attempts: &'a [(GroupName, DateTime<Utc>)],
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
    let window_start = time::sub(now, ISSUE_WINDOW);
    let in_hour = |at: &DateTime<Utc>| *at > window_start;
    let max = usize::try_from(input.max_per_hour).unwrap_or(usize::MAX);
    // Counted before anything is collected: the policy asks on every plan,
    // and the budget is rarely spent.
    if input.max_per_hour > 0
        && input
            .channel_attempts
            .iter()
            .filter(|(_, at)| in_hour(at))
            .count()
            < max
    {
        return now;
    }
    let times: Vec<DateTime<Utc>> = input.channel_attempts.iter().map(|(_, at)| *at).collect();
    let budget_at = next_issue_allowed_at(now, &times, input.max_per_hour);
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
            let repeats = repeat_times(input.channel_attempts, window_start);
            let under_ceiling = next_issue_allowed_at(now, &repeats, ceiling);
            budget_at.min(spaced.max(under_ceiling))
        }
    }
}

/// The times of the repeat attempts among `attempts` after `window_start`:
/// every attempt of a group except its latest. As the hour moves on, a
/// repeat leaving it makes the group's next attempt the earliest, so the
/// count of repeats drops by one exactly when one of these times is an hour
/// old: [`next_issue_allowed_at`] over them says when fewer remain.
fn repeat_times(
    attempts: &[(GroupName, DateTime<Utc>)],
    window_start: DateTime<Utc>,
) -> Vec<DateTime<Utc>> {
    let mut recent: Vec<&(GroupName, DateTime<Utc>)> = attempts
        .iter()
        .filter(|(_, at)| *at > window_start)
        .collect();
    recent.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    recent
        .windows(2)
        .filter(|pair| pair[0].0 == pair[1].0)
        .map(|pair| pair[0].1)
        .collect()
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

    /// Attempts at `times`, all by one other group: every one but the
    /// latest is a repeat.
    fn by_one(times: &[DateTime<Utc>]) -> Vec<(GroupName, DateTime<Utc>)> {
        times
            .iter()
            .map(|at| (GroupName::new("other"), *at))
            .collect()
    }

    fn ask(
        attempts: &[(GroupName, DateTime<Utc>)],
        urgency: Urgency,
        last: Option<i64>,
    ) -> BudgetInput<'_> {
        BudgetInput {
            channel_attempts: attempts,
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
        let times = by_one(&[t(-100); 5]);
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
        let times = by_one(&[t(-3000), t(-100), t(-90), t(-80), t(-70), t(-60)]);
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
        let times = by_one(&[t(-3000), t(-100), t(-90), t(-80), t(-70), t(-60)]);
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
        let times = by_one(&[t(-3590), t(-100), t(-90), t(-80), t(-70), t(-60)]);
        assert_eq!(
            issue_allowed_at(t(0), &ask(&times, until(0), Some(-1))),
            t(10)
        );
    }

    #[test]
    fn twice_the_budget_in_repeats_stops_rescues_but_not_first_start_bursts() {
        // Thirteen attempts of one group: twelve repeats, the first of
        // which ages out at t(600).
        let times = by_one(&(0..13).map(|i| t(-3000 + i * 100)).collect::<Vec<_>>());
        let no_token = Urgency::NoToken {
            first_in_hour: false,
        };
        assert_eq!(issue_allowed_at(t(0), &ask(&times, until(0), None)), t(600));
        assert_eq!(issue_allowed_at(t(0), &ask(&times, no_token, None)), t(600));
        let burst = Urgency::NoToken {
            first_in_hour: true,
        };
        assert_eq!(issue_allowed_at(t(0), &ask(&times, burst, None)), t(0));
    }

    #[test]
    fn a_first_start_burst_does_not_count_against_the_rescue() {
        // Fifteen groups' first attempts a minute ago: the budget (6) is
        // spent, but none is a repeat, so a group whose attempt failed
        // tries again a minute after it, not an hour later.
        let burst: Vec<_> = (0..15)
            .map(|g| (GroupName::new(format!("g{g}")), t(-60)))
            .collect();
        let failed = Urgency::NoToken {
            first_in_hour: false,
        };
        assert_eq!(
            issue_allowed_at(t(0), &ask(&burst, failed, Some(-60))),
            t(0)
        );
        assert_eq!(
            issue_allowed_at(t(-30), &ask(&burst, failed, Some(-60))),
            t(0)
        );
        // Their retries are repeats of the burst: twelve of them spend the
        // rescue until the first burst attempt they repeat is an hour old.
        let mut retried = burst.clone();
        retried.extend((0..12).map(|g| (GroupName::new(format!("g{g}")), t(-30))));
        assert_eq!(
            issue_allowed_at(t(0), &ask(&retried, failed, Some(-60))),
            t(3540)
        );
    }

    #[test]
    fn repeats_are_every_attempt_but_each_groups_latest() {
        let a = |at: i64| (GroupName::new("a"), t(at));
        let b = |at: i64| (GroupName::new("b"), t(at));
        let attempts = [a(-10), b(-50), a(-30), a(-20), b(-4000), a(-3700)];
        // Older than the hour: ignored (b's only recent attempt is then its
        // latest).
        assert_eq!(repeat_times(&attempts, t(-3600)), vec![t(-30), t(-20)]);
        assert_eq!(
            repeat_times(&attempts, t(-5000)),
            vec![t(-3700), t(-30), t(-20), t(-4000)]
        );
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
            let name = |g: usize| GroupName::new(format!("g{g}"));
            let mut now = t(0);
            let mut attempts: Vec<(GroupName, DateTime<Utc>)> = Vec::new();
            let mut over: Vec<(usize, DateTime<Utc>)> = Vec::new();
            for (g, kind, gap) in steps {
                now += Duration::seconds(gap);
                let in_hour = |attempts: &[(GroupName, DateTime<Utc>)]| {
                    attempts.iter().filter(|(_, at)| *at > now - ISSUE_WINDOW).count()
                };
                let last = attempts
                    .iter()
                    .filter(|(h, at)| *h == name(g) && *at > now - ISSUE_WINDOW)
                    .map(|(_, at)| *at)
                    .max();
                // The worst case: every group always at risk.
                let urgency = match kind {
                    0 => until(-1_000_000),
                    _ => Urgency::NoToken { first_in_hour: kind == 2 && last.is_none() },
                };
                let input = BudgetInput {
                    channel_attempts: &attempts,
                    max_per_hour: max,
                    urgency,
                    group_last_attempt: last,
                };
                if issue_allowed_at(now, &input) > now {
                    continue;
                }
                if in_hour(&attempts) >= max as usize {
                    if let Some(prev) = over.iter().rev().find(|(h, _)| *h == g) {
                        prop_assert!(now - prev.1 >= OVER_BUDGET_SPACING);
                    }
                    over.push((g, now));
                }
                attempts.push((name(g), now));
                // Every rolling hour's worst is one ending at an attempt.
                let total = in_hour(&attempts);
                prop_assert!(total <= 2 * max as usize + groups, "{total} in an hour");
                let repeats = repeat_times(&attempts, now - ISSUE_WINDOW).len();
                prop_assert!(repeats <= 2 * max as usize, "{repeats} repeats in an hour");
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
