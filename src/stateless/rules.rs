//! The pure rules of the stateless token cache: when a cached token is
//! served, when a background refresh starts, when a request has to issue,
//! how long a failure holds issuing back, and the local per-minute guard.
//!
//! No IO, no clock: every function takes `now`. The slot (`stateless::slot`)
//! applies these under its lock; the table tests below pin them down.
//!
//! Depends on nothing but `chrono`.

use std::collections::VecDeque;

use chrono::{DateTime, Duration, Utc};

/// The first wait after a failed issue (docs/design.md §6): an outage of
/// LINE is not hammered.
pub const BACKOFF_FIRST: Duration = Duration::seconds(2);

/// The longest wait after repeated failures; a success resets the
/// doubling.
pub const BACKOFF_MAX: Duration = Duration::seconds(30);

/// The longest `Retry-After` from LINE honoured for stateless issues. A
/// stateless token lives 15 minutes, so a longer wait would leave every
/// consumer without a token for longer than one lifetime; an hour-long
/// `Retry-After` from a confused proxy must not park the channel.
pub const MAX_RETRY_HINT: Duration = Duration::minutes(5);

/// The window of the local issue guard (`max_issues_per_minute`).
pub const ISSUE_WINDOW: Duration = Duration::minutes(1);

/// How close to its expiry a cached token may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Margins {
    /// A token with this little left (or less) is never handed out.
    pub refresh_margin: Duration,
    /// Inside this much before expiry, a token is still served but one
    /// background refresh starts. Longer than `refresh_margin`.
    pub refresh_ahead: Duration,
}

/// What a request gets, decided from the cache's state at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Serve the cached token.
    Serve {
        /// True inside `refresh_ahead`: the token is served, and a refresh
        /// is due.
        ahead: bool,
        /// True when this request is the one to start the background
        /// refresh (none runs and issuing is not held back).
        start_refresh: bool,
    },
    /// No servable token and issuing is held back (a failure's backoff or
    /// the local guard) until the instant given: answer the failure at
    /// once, do not call LINE.
    HeldBack {
        /// When issuing may be tried again.
        until: DateTime<Utc>,
    },
    /// No servable token: issue one (as the single flight's leader, or by
    /// waiting for the flight in progress).
    Issue,
}

/// Decides what a request gets.
///
/// - `expires_at`: the cached token's expiry, if one is cached;
/// - `held_until`: issuing is held back until then (a failure's backoff or
///   the local guard), if it is;
/// - `refreshing`: a background refresh is already running.
pub fn decide(
    now: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    margins: Margins,
    held_until: Option<DateTime<Utc>>,
    refreshing: bool,
) -> Decision {
    let held = held_until.filter(|until| *until > now);
    match expires_at {
        Some(exp) if now < exp - margins.refresh_margin => {
            let ahead = now >= exp - margins.refresh_ahead;
            Decision::Serve {
                ahead,
                start_refresh: ahead && !refreshing && held.is_none(),
            }
        }
        _ => match held {
            Some(until) => Decision::HeldBack { until },
            None => Decision::Issue,
        },
    }
}

/// The negative backoff after failed issues: 2 s, doubling per failure in
/// a row, at most 30 s, reset by a success. A `Retry-After` from LINE
/// lengthens a wait (up to [`MAX_RETRY_HINT`]), never shortens it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// Records a failure and returns how long to hold issuing back.
    pub fn failed(&mut self, hint: Option<Duration>) -> Duration {
        self.failures = self.failures.saturating_add(1);
        // 2 s · 2^(n−1), computed without overflow: past 2^4 it is capped.
        let doublings = (self.failures - 1).min(5);
        let wait = (BACKOFF_FIRST * (1 << doublings)).min(BACKOFF_MAX);
        match hint {
            Some(hint) => wait.max(hint.min(MAX_RETRY_HINT)),
            None => wait,
        }
    }

    /// Records a success: the next failure waits [`BACKOFF_FIRST`] again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// The local guard: at most `max` issue attempts per rolling minute.
/// LINE publishes no stateless limit, but bursts "may be temporarily
/// restricted"; this keeps a bug or a client loop from finding out where.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IssueWindow {
    /// The attempts of the last minute, oldest first.
    times: VecDeque<DateTime<Utc>>,
}

impl IssueWindow {
    /// Takes one attempt at `now` if fewer than `max` were made in the
    /// last minute; otherwise returns when the oldest of them leaves the
    /// window (the earliest instant another attempt is allowed).
    ///
    /// # Errors
    /// The instant the window has room again.
    pub fn take(&mut self, now: DateTime<Utc>, max: u32) -> Result<(), DateTime<Utc>> {
        while self.times.front().is_some_and(|t| *t + ISSUE_WINDOW <= now) {
            self.times.pop_front();
        }
        if self.times.len() >= max as usize {
            let oldest = self.times.front().copied().unwrap_or(now);
            return Err(oldest + ISSUE_WINDOW);
        }
        self.times.push_back(now);
        Ok(())
    }
}

/// Whole seconds until `until`, at least 1: a `Retry-After` value.
pub fn retry_after_secs(now: DateTime<Utc>, until: DateTime<Utc>) -> u64 {
    let millis = u64::try_from((until - now).num_milliseconds()).unwrap_or(0);
    millis.div_ceil(1000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_772_323_200, 0).unwrap()
    }

    const M: Margins = Margins {
        refresh_margin: Duration::minutes(2),
        refresh_ahead: Duration::minutes(5),
    };

    #[test]
    fn decisions() {
        let exp = t0() + Duration::minutes(15);
        let held = Some(t0() + Duration::seconds(1));
        let serve = |ahead, start_refresh| Decision::Serve {
            ahead,
            start_refresh,
        };
        /// (seconds after t0, cached?, held until, refreshing?, expected)
        type Row = (i64, bool, Option<DateTime<Utc>>, bool, Decision);
        let table: Vec<Row> = vec![
            // cold cache: issue, unless held back
            (0, false, None, false, Decision::Issue),
            (
                0,
                false,
                held,
                false,
                Decision::HeldBack {
                    until: t0() + Duration::seconds(1),
                },
            ),
            // a hold that has ended holds nothing
            (1, false, held, false, Decision::Issue),
            // fresh: served, whatever else is going on
            (0, true, None, false, serve(false, false)),
            (0, true, held, true, serve(false, false)),
            (599, true, None, false, serve(false, false)),
            // inside refresh_ahead (10 min in): served, one refresh starts
            (600, true, None, false, serve(true, true)),
            (600, true, None, true, serve(true, false)),
            (
                600,
                true,
                Some(t0() + Duration::minutes(11)),
                false,
                serve(true, false),
            ),
            (779, true, None, false, serve(true, true)),
            // inside refresh_margin (13 min in): never served
            (780, true, None, false, Decision::Issue),
            (780, true, None, true, Decision::Issue),
            (900, true, None, false, Decision::Issue),
            (
                780,
                true,
                Some(t0() + Duration::minutes(14)),
                false,
                Decision::HeldBack {
                    until: t0() + Duration::minutes(14),
                },
            ),
        ];
        for (secs, cached, held, refreshing, expected) in table {
            let now = t0() + Duration::seconds(secs);
            let got = decide(now, cached.then_some(exp), M, held, refreshing);
            assert_eq!(got, expected, "{secs}s cached={cached} held={held:?}");
        }
    }

    #[test]
    fn backoff_doubles_from_2s_to_30s_and_resets() {
        let mut b = Backoff::default();
        let waits: Vec<i64> = (0..7).map(|_| b.failed(None).num_seconds()).collect();
        assert_eq!(waits, [2, 4, 8, 16, 30, 30, 30]);
        for _ in 0..100 {
            assert_eq!(b.failed(None), BACKOFF_MAX);
        }
        b.succeeded();
        assert_eq!(b.failed(None), BACKOFF_FIRST);
        // LINE's Retry-After lengthens, never shortens, and is capped.
        assert_eq!(b.failed(Some(Duration::seconds(1))), Duration::seconds(4));
        assert_eq!(b.failed(Some(Duration::seconds(20))), Duration::seconds(20));
        assert_eq!(b.failed(Some(Duration::hours(1))), MAX_RETRY_HINT);
    }

    #[test]
    fn the_issue_window_allows_max_per_rolling_minute() {
        let mut w = IssueWindow::default();
        for i in 0..3 {
            assert_eq!(w.take(t0() + Duration::seconds(i), 3), Ok(()));
        }
        assert_eq!(
            w.take(t0() + Duration::seconds(30), 3),
            Err(t0() + Duration::seconds(60))
        );
        // The refused attempt took nothing: the first slot frees at 60 s.
        assert_eq!(w.take(t0() + Duration::seconds(60), 3), Ok(()));
        assert_eq!(
            w.take(t0() + Duration::seconds(60), 3),
            Err(t0() + Duration::seconds(61))
        );
    }

    #[test]
    fn retry_after_rounds_up_to_at_least_one_second() {
        assert_eq!(retry_after_secs(t0(), t0()), 1);
        assert_eq!(retry_after_secs(t0(), t0() - Duration::seconds(5)), 1);
        assert_eq!(
            retry_after_secs(t0(), t0() + Duration::milliseconds(1500)),
            2
        );
        assert_eq!(retry_after_secs(t0(), t0() + Duration::seconds(30)), 30);
    }
}
