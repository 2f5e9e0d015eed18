//! Where "now" comes from.
//!
//! Token expiry is wall-clock time, so everything that compares against an
//! expiry asks a [`Clock`] instead of calling `Utc::now()`. Production wires
//! in [`SystemClock`]; tests, the simulation and the sandbox use
//! [`ManualClock`], whose clones share one time, so the daemon and the
//! sandbox can run months of virtual time in lockstep.
//!
//! Only `app` (and `main`) choose the clock; lower modules receive one.

use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Duration, Utc};

/// A source of the current wall-clock time.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// A clock shared between tasks.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to. Clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<DateTime<Utc>>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            now: Arc::new(Mutex::new(start)),
        }
    }

    /// Moves the clock forward (or backward, for a negative `by`).
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now += by;
    }

    /// Sets the clock to `to`.
    pub fn set(&self, to: DateTime<Utc>) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_of_a_manual_clock_share_one_time() {
        let start = DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        let a = ManualClock::new(start);
        let b = a.clone();
        a.advance(Duration::hours(3));
        assert_eq!(b.now(), start + Duration::hours(3));
        b.set(start);
        assert_eq!(a.now(), start);
    }
}
