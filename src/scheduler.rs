//! The scheduler: owns every channel's due time, works the channels that
//! are due, and sleeps until the next due time or a wake-up.
//!
//! Due times live in a map ordered by time (`(instant, channel)`), so a
//! wake-up costs work only for the channels that are due, never a walk over
//! all of them. A channel's work returns its next due time (the driver's
//! "idle until"); an operator request or a config reload wakes the channels
//! it touches through [`Wakes`](crate::wakes::Wakes). There is no polling
//! loop: between due times the scheduler does not wake at all.
//!
//! After every wake-up the clock is read again, so a suspended machine or
//! a clock step never skips a rotation; the system clock's sleeps are also
//! capped (see [`crate::clock::MAX_SYSTEM_SLEEP`]), and the policy never
//! idles a channel longer than an hour.
//!
//! Depends on `rotator` and `clock`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::domain::ChannelId;
use crate::rotator::{Rotator, error_chain};
use crate::store::StoreError;
use crate::wakes::Woken;

/// What the scheduler last did, for readiness and `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SchedulerState {
    /// How many rounds (wake-ups that worked due channels) have completed;
    /// the first works every channel.
    pub passes: u64,
    /// When the next channel is due, once the first round has planned it.
    pub next_wake: Option<DateTime<Utc>>,
}

/// Every channel's next due time, ordered by time.
#[derive(Debug, Default)]
struct DueTimes {
    by_time: BTreeSet<(DateTime<Utc>, ChannelId)>,
    by_channel: HashMap<ChannelId, DateTime<Utc>>,
}

impl DueTimes {
    fn set(&mut self, channel: ChannelId, at: DateTime<Utc>) {
        if let Some(old) = self.by_channel.insert(channel.clone(), at) {
            self.by_time.remove(&(old, channel.clone()));
        }
        self.by_time.insert((at, channel));
    }

    fn remove(&mut self, channel: &ChannelId) {
        if let Some(old) = self.by_channel.remove(channel) {
            self.by_time.remove(&(old, channel.clone()));
        }
    }

    /// Takes every channel due at or before `now`.
    fn take_due(&mut self, now: DateTime<Utc>) -> Vec<ChannelId> {
        let mut due = Vec::new();
        while let Some((at, _)) = self.by_time.first() {
            if *at > now {
                break;
            }
            if let Some((_, channel)) = self.by_time.pop_first() {
                self.by_channel.remove(&channel);
                due.push(channel);
            }
        }
        due
    }

    fn next(&self) -> Option<DateTime<Utc>> {
        self.by_time.first().map(|(at, _)| *at)
    }
}

/// Works channels until `shutdown` fires.
pub struct Scheduler {
    rotator: Arc<Rotator>,
    state: watch::Sender<SchedulerState>,
    fatal: CancellationToken,
}

impl Scheduler {
    /// A scheduler for `rotator`.
    pub fn new(rotator: Arc<Rotator>) -> Self {
        Self {
            rotator,
            state: watch::Sender::new(SchedulerState::default()),
            fatal: CancellationToken::new(),
        }
    }

    /// A receiver of the scheduler's progress (readiness waits on the first
    /// completed round; tests wait on round counts instead of sleeping).
    pub fn state(&self) -> watch::Receiver<SchedulerState> {
        self.state.subscribe()
    }

    /// Cancelled when the scheduler stopped on a fatal store error (the
    /// database file is gone): the daemon must stop with that error.
    pub fn fatal(&self) -> CancellationToken {
        self.fatal.clone()
    }

    /// Runs until `shutdown` is cancelled. A channel in progress finishes
    /// the LINE call in flight and stores its result before this returns.
    ///
    /// # Errors
    /// The fatal store error that stopped it.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StoreError> {
        let clock = self.rotator.clock();
        let wakes = self.rotator.wakes();
        let mut due = DueTimes::default();
        let start = clock.now();
        for channel in self.rotator.channel_ids() {
            due.set(channel, start);
        }
        let mut first_pass = true;
        loop {
            let now = clock.now();
            match wakes.take() {
                Some(Woken::All) => {
                    due = DueTimes::default();
                    for channel in self.rotator.channel_ids() {
                        due.set(channel, now);
                    }
                }
                Some(Woken::Some(channels)) => {
                    for channel in channels {
                        due.set(channel, now);
                    }
                }
                None => {}
            }
            let ready = due.take_due(now);
            // The first pass counts even with nothing to work: a daemon
            // without channels (LINE Login only, say) is ready at once,
            // and its reload loop, which waits for the first pass, runs.
            if !ready.is_empty() || first_pass {
                first_pass = false;
                if let Err(e) = self.work(ready, &mut due, &shutdown).await {
                    tracing::error!(error = %error_chain(&e), "stopping: the store cannot be trusted any more");
                    self.fatal.cancel();
                    return Err(e);
                }
                let next = due.next();
                self.state.send_modify(|s| {
                    s.passes += 1;
                    s.next_wake = next;
                });
                // Tests and operators wait on this line (at debug level).
                match next {
                    Some(next) => tracing::debug!(next_wake = %next, "pass done"),
                    None => tracing::debug!("pass done"),
                }
            }
            if shutdown.is_cancelled() {
                break;
            }
            // A wake-up may have arrived while channels were worked: its
            // permit is kept by `notified`, so the select returns at once.
            let next = due.next();
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = wakes.notified() => {}
                () = async {
                    match next {
                        Some(at) => clock.sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
            // Every wake-up counts, due or not: `linetokd bench` reads this
            // to show that an idle daemon does not wake between due times.
            self.rotator.metrics().scheduler_woke();
        }
        tracing::debug!("scheduler stopped");
        Ok(())
    }

    /// Works `ready` channels, a bounded number at once, and records each
    /// one's next due time.
    async fn work(
        &self,
        ready: Vec<ChannelId>,
        due: &mut DueTimes,
        shutdown: &CancellationToken,
    ) -> Result<(), StoreError> {
        // A channel's task is spawned when a running one ends, not all at
        // once: each task holds the whole state of a channel's round (about
        // 4.7 KiB), and spawning every ready channel of a first start
        // (6,667 at 100,000 groups) at once held 30 MiB that the allocator
        // kept after the tasks ended.
        let limit = self.rotator.concurrency().max(1);
        let mut waiting = ready.into_iter();
        let mut tasks = JoinSet::new();
        let clock = self.rotator.clock();
        let mut fatal = None;
        loop {
            // Once stopping (or the store failed), the channels still
            // waiting are not started: `run` returns right after this pass.
            while tasks.len() < limit && !shutdown.is_cancelled() && fatal.is_none() {
                let Some(channel) = waiting.next() else { break };
                let rotator = Arc::clone(&self.rotator);
                let cancel = shutdown.clone();
                tasks.spawn(async move {
                    let next = rotator.work_channel(&channel, &cancel).await;
                    (channel, next)
                });
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            match joined {
                Ok((channel, Ok(Some(at)))) => due.set(channel, at),
                Ok((channel, Ok(None))) => due.remove(&channel),
                Ok((_, Err(e))) => fatal = Some(e),
                Err(e) => {
                    // Which channel is unknown: look at them all soon.
                    tracing::error!(error = %e, "working a channel panicked; looking at every channel again soon");
                    let soon = clock.now() + chrono::Duration::seconds(30);
                    for channel in self.rotator.channel_ids() {
                        due.set(channel, soon);
                    }
                }
            }
        }
        fatal.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    #[test]
    fn due_times_hand_out_only_the_due_channels_in_time_order() {
        let mut d = DueTimes::default();
        d.set(ChannelId::new("a"), t(10));
        d.set(ChannelId::new("b"), t(5));
        d.set(ChannelId::new("c"), t(20));
        // Moving a channel replaces its old time.
        d.set(ChannelId::new("c"), t(1));
        assert_eq!(d.next(), Some(t(1)));
        assert_eq!(
            d.take_due(t(10)),
            vec![
                ChannelId::new("c"),
                ChannelId::new("b"),
                ChannelId::new("a")
            ]
        );
        assert_eq!(d.take_due(t(100)), Vec::<ChannelId>::new());
        d.set(ChannelId::new("a"), t(3));
        d.remove(&ChannelId::new("a"));
        assert_eq!(d.next(), None);
    }
}
