//! How far our clock is from LINE's.
//!
//! LINE judges the assertion's `exp` by its own clock (docs/line-api.md section
//! 8): a local clock running fast pushes `exp` past LINE's 30-minute window, a
//! slow one makes a fresh assertion look expired. The client compares each
//! answer's `Date` header with [`crate::clock::Clock::now`], keeps the last
//! difference for status and metrics, and says when it is worth a warning:
//! beyond [`WARN_THRESHOLD`], at most once per [`WARN_INTERVAL`] of our
//! clock, so a skewed host does not flood the log.
//!
//! `Date` has one-second resolution and the answer's flight time adds to the
//! difference, so a skew of a second or two is noise.
//!
//! Depends on nothing in the crate; pure bookkeeping behind a std mutex that
//! is never held across an await.

use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Duration, Utc};

/// Skew beyond which a warning is logged.
pub const WARN_THRESHOLD: Duration = Duration::seconds(30);

/// Least time between two skew warnings.
pub const WARN_INTERVAL: Duration = Duration::minutes(10);

/// The last observed skew and when it was last warned about.
#[derive(Debug, Default)]
pub(crate) struct SkewTracker {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last: Option<Duration>,
    last_warned: Option<DateTime<Utc>>,
}

impl SkewTracker {
    /// Records one answer's `Date` (`line`) against our clock at receipt
    /// (`local`). Returns the skew (local minus LINE) when a warning is due.
    pub(crate) fn observe(&self, local: DateTime<Utc>, line: DateTime<Utc>) -> Option<Duration> {
        let skew = local - line;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.last = Some(skew);
        if skew.abs() <= WARN_THRESHOLD {
            return None;
        }
        // A clock that jumped backwards makes `local - last_warned` negative:
        // warn again rather than stay silent until it catches up.
        let due = match state.last_warned {
            None => true,
            Some(at) => {
                let since = local - at;
                since >= WARN_INTERVAL || since < Duration::zero()
            }
        };
        if due {
            state.last_warned = Some(local);
            Some(skew)
        } else {
            None
        }
    }

    /// The skew seen on the last answer that had a `Date` header.
    pub(crate) fn last(&self) -> Option<Duration> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn records_local_minus_line() {
        let t = SkewTracker::default();
        assert_eq!(t.last(), None);
        assert_eq!(t.observe(at(5), at(0)), None);
        assert_eq!(t.last(), Some(Duration::seconds(5)));
        assert_eq!(t.observe(at(0), at(3)), None);
        assert_eq!(t.last(), Some(Duration::seconds(-3)));
    }

    #[test]
    fn warns_beyond_the_threshold_at_most_every_interval() {
        let t = SkewTracker::default();
        assert_eq!(t.observe(at(0), at(-31)), Some(Duration::seconds(31)));
        // Still skewed a minute later: no second warning yet.
        assert_eq!(t.observe(at(60), at(29)), None);
        // Ten minutes after the first warning: warn again (slow clock now).
        let ten = WARN_INTERVAL.num_seconds();
        assert_eq!(
            t.observe(at(ten), at(ten + 45)),
            Some(Duration::seconds(-45))
        );
        // Exactly at the threshold is not a warning.
        assert_eq!(t.observe(at(3 * ten), at(3 * ten - 30)), None);
    }

    #[test]
    fn a_clock_jumping_back_warns_again() {
        let t = SkewTracker::default();
        assert!(t.observe(at(1000), at(0)).is_some());
        assert!(t.observe(at(500), at(0)).is_some());
    }
}
