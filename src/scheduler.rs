//! The scheduler: runs a rotator pass, sleeps until the earliest instant
//! anything is due (or until woken), and runs the next.
//!
//! There is no polling loop: the sleep ends at the time the policy named,
//! at a wake-up (an operator command, a config reload), or at shutdown.
//! After every wake-up the pass re-reads the clock and plans afresh, so a
//! suspended machine or a clock step never skips a rotation; the system
//! clock's sleeps are also capped (see [`crate::clock::MAX_SYSTEM_SLEEP`]).
//!
//! Depends on `rotator`, `clock` and `metrics` (it counts its wake-ups).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::rotator::Rotator;

/// What the scheduler last did, for readiness and `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SchedulerState {
    /// How many passes have completed.
    pub passes: u64,
    /// When the next pass is due, once the first pass has planned it.
    pub next_wake: Option<DateTime<Utc>>,
}

/// Runs passes until `shutdown` fires.
pub struct Scheduler {
    rotator: Arc<Rotator>,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    state: watch::Sender<SchedulerState>,
}

impl Scheduler {
    /// A scheduler for `rotator` that counts its wake-ups in `metrics`.
    pub fn new(rotator: Arc<Rotator>, metrics: Arc<Metrics>) -> Self {
        Self {
            rotator,
            metrics,
            wake: Arc::new(Notify::new()),
            state: watch::Sender::new(SchedulerState::default()),
        }
    }

    /// A handle that makes the scheduler run a pass now.
    pub fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    /// A receiver of the scheduler's progress (readiness waits on the first
    /// completed pass; tests wait on pass counts instead of sleeping).
    pub fn state(&self) -> watch::Receiver<SchedulerState> {
        self.state.subscribe()
    }

    /// Runs until `shutdown` is cancelled. A pass in progress finishes the
    /// LINE call in flight and stores its result before this returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let clock = self.rotator_clock();
        loop {
            let next = self.rotator.pass(&shutdown).await;
            self.state.send_modify(|s| {
                s.passes += 1;
                s.next_wake = Some(next);
            });
            if shutdown.is_cancelled() {
                break;
            }
            tracing::debug!(next_wake = %next, "pass done");
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.wake.notified() => {}
                () = clock.sleep_until(next) => {}
            }
            self.metrics.scheduler_woke();
        }
        tracing::debug!("scheduler stopped");
    }

    fn rotator_clock(&self) -> crate::clock::SharedClock {
        self.rotator.clock()
    }
}
