//! The LINE Login figure: how long computing the refresh schedule of
//! 100,000 grants takes here ([`crate::login::schedule`], what the daemon
//! runs for every stored grant at each start and reload).
//!
//! The grants are made up in memory (spread over ten login channels, with
//! imports, horizons and a few pending backoffs spread over 90 days, so
//! both bounds of the rule and the backoff are taken); no store, no LINE.
//! The figure is the median of a few runs after a warm-up, so a stray
//! interruption on a shared machine does not move it.
//!
//! Depends on `login` (the schedule and its timings) and `store`'s grant
//! record type.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, TimeDelta, Utc};

use super::stats;
use crate::domain::ChannelId;
use crate::login::rules::Timings;
use crate::store::{GrantRecord, GrantState};

/// How many grants the figure is stated for (issue 13: "100,000 grants'
/// refresh schedule is computed in well under a second").
pub const GRANTS: usize = 100_000;

/// How many timed runs the median is taken over.
const RUNS: usize = 5;

/// What computing one schedule cost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduleCost {
    /// How many grants were scheduled per run.
    pub grants: usize,
    /// The median run, in milliseconds.
    pub median_ms: f64,
    /// How many runs were timed.
    pub runs: usize,
}

/// `[login]`'s defaults.
fn timings() -> Timings {
    const DAY: u64 = 86_400;
    Timings {
        refresh_before: Duration::from_secs(3 * DAY),
        horizon: Duration::from_secs(90 * DAY),
        horizon_margin: Duration::from_secs(12 * 3600),
        reauth_notify_before: Duration::from_secs(7 * DAY),
    }
}

/// `n` made-up grants imported over the 90 days before `now`.
fn grants(n: usize, now: DateTime<Utc>) -> Vec<GrantRecord> {
    let channels: Vec<ChannelId> = (0..10)
        .map(|c| ChannelId::new(format!("16600000{c:02}")))
        .collect();
    (0..n)
        .map(|i| {
            let spread = i64::try_from(i).unwrap_or(i64::MAX);
            let login_at = now - TimeDelta::minutes((spread * 1297) % (90 * 24 * 60));
            // Refreshed 3 days early each time: 33, 63 and 93 days after the
            // login, the last one past the horizon (its bound then wins).
            let access_expires_at = login_at + TimeDelta::days(30 * (spread % 3 + 1) + 3);
            GrantRecord {
                channel: channels[i % channels.len()].clone(),
                subject: format!("U{i:032x}"),
                access_expires_at,
                login_at: (i % 2 == 0).then_some(login_at),
                horizon_at: login_at + TimeDelta::days(90),
                horizon_estimated: i % 2 == 1,
                scope: "profile openid".to_owned(),
                state: GrantState::Active,
                imported_at: login_at,
                last_refresh_at: None,
                consecutive_failures: u32::from(i % 50 == 0),
                retry_not_before: (i % 50 == 0).then(|| now + TimeDelta::minutes(5)),
                next_refresh_at: access_expires_at,
                reauth_due_notified_at: None,
                lost_refresh: false,
            }
        })
        .collect()
}

/// Times [`crate::login::schedule`] over `n` grants, `RUNS` times after
/// one warm-up run.
///
/// # Errors
/// When no run was timed, or a schedule lost a grant (then the figure
/// would not be the one stated).
pub fn measure(n: usize, now: DateTime<Utc>) -> anyhow::Result<ScheduleCost> {
    let t = timings();
    let grants = grants(n, now);
    let warm = crate::login::schedule(&t, &grants);
    anyhow::ensure!(
        warm.len() == n,
        "the schedule covered {} of {n} grants",
        warm.len()
    );
    drop(warm);
    let mut samples = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let started = Instant::now();
        let schedule = crate::login::schedule(&t, &grants);
        samples.push(stats::ms(started.elapsed()));
        std::hint::black_box(schedule);
    }
    let median_ms = stats::median(&samples).context("no schedule run was timed")?;
    Ok(ScheduleCost {
        grants: n,
        median_ms,
        runs: RUNS,
    })
}

/// The line `linetokd bench` prints.
pub fn line(cost: &ScheduleCost) -> String {
    format!(
        "LINE Login refresh schedule of {} grants: {:.1} ms (median of {}, login::schedule)\n",
        cost.grants, cost.median_ms, cost.runs
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_up_grants_take_both_bounds_and_the_backoff() {
        let now = DateTime::from_timestamp(1_767_225_600, 0).unwrap();
        let grants = grants(1000, now);
        let next = crate::login::schedule(&timings(), &grants);
        assert_eq!(next.len(), 1000);
        let by_horizon = grants
            .iter()
            .zip(&next)
            .filter(|(g, (_, _, at))| {
                g.retry_not_before.is_none()
                    && *at <= g.horizon_at - TimeDelta::hours(12)
                    && *at > g.horizon_at - TimeDelta::hours(13)
            })
            .count();
        assert!(by_horizon > 0 && by_horizon < 1000, "{by_horizon}");
        assert!(
            grants
                .iter()
                .zip(&next)
                .any(|(g, (_, _, at))| g.retry_not_before == Some(*at))
        );
        let cost = measure(1000, now).unwrap();
        assert_eq!((cost.grants, cost.runs), (1000, RUNS));
        assert!(line(&cost).starts_with("LINE Login refresh schedule of 1000 grants: "));
    }
}
