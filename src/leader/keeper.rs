//! The lease keeper: the task that keeps this instance's leases
//! (docs/design.md §14.1, §14.4).
//!
//! Every tick (half the renewal interval, at most 5 s) it:
//!
//! 1. renews each grant whose renewal is due, measuring the answer from
//!    when the statement was sent ([`Standing::after_renewal`]); a refusal
//!    or an error is a step-down;
//! 2. records this instance as alive and reads which instances are
//!    (`ha_instances`);
//! 3. reads the lease table and, channel by channel, does what
//!    [`lease_action`] says: acquire a channel nobody holds (or whose grant
//!    expired), release one another alive instance is preferred for (under
//!    the channel's work lock, so between steps), wait otherwise;
//! 4. moves the engine's clock to the database's time (the lease table's
//!    reading of it), so every instance dates and judges tokens alike;
//! 5. wakes the led channels that have operator requests waiting
//!    (`linetokd rotate` on another instance records a row; the leader
//!    carries it out).
//!
//! On shutdown it releases every grant it holds, each under its work lock
//! (so after the call in flight), and the next instance takes over at once
//! instead of after the lease.
//!
//! Depends on `ha`, `store::pg` (the statements), `metrics` and
//! `wakes::Wakes`.

use std::sync::Arc;

use chrono::Duration;
use tokio_util::sync::CancellationToken;

use super::Leadership;
use crate::clock::ShiftedClock;
use crate::domain::ChannelId;
use crate::ha::spread::lease_action;
use crate::ha::{AcquireAnswer, Epoch, InstanceId, LeaseAction, RenewAnswer, Standing, StepDown};
use crate::logging::error_chain;
use crate::metrics::Metrics;
use crate::store::pg::{LeaseOps, LeaseTable, PgError};
use crate::wakes::Wakes;

/// The configured channels, read afresh each tick (a reload changes them).
pub type ChannelList = Arc<dyn Fn() -> Vec<ChannelId> + Send + Sync>;

/// The longest tick: how late an instance notices a dead leader's expired
/// grant at most, beyond the lease itself.
const MAX_TICK: Duration = Duration::seconds(5);

/// The keeper's parts.
pub struct Keeper {
    lead: Arc<Leadership>,
    ops: LeaseOps,
    channels: ChannelList,
    wakes: Arc<Wakes>,
    metrics: Arc<Metrics>,
    /// The engine's clock, moved to the database's time at each reading of
    /// the lease table.
    time: Arc<ShiftedClock>,
    /// The newest open request seen per channel: a channel is woken when
    /// a newer one appears, not at every tick while one waits.
    requests_seen: std::sync::Mutex<std::collections::HashMap<ChannelId, i64>>,
    /// Whether another process was last seen alive under this instance
    /// ID (logged once per change).
    id_taken: std::sync::atomic::AtomicBool,
    /// The instances last seen naming other channels or groups.
    configs_differ: std::sync::Mutex<Vec<String>>,
}

impl Keeper {
    /// A keeper of `lead`'s leases through `ops`.
    pub fn new(
        lead: Arc<Leadership>,
        ops: LeaseOps,
        channels: ChannelList,
        wakes: Arc<Wakes>,
        metrics: Arc<Metrics>,
        time: Arc<ShiftedClock>,
    ) -> Self {
        Self {
            lead,
            ops,
            channels,
            wakes,
            metrics,
            time,
            requests_seen: std::sync::Mutex::new(std::collections::HashMap::new()),
            id_taken: std::sync::atomic::AtomicBool::new(false),
            configs_differ: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// How often the keeper looks: half the renewal interval, at most
    /// [`MAX_TICK`], at least 100 ms.
    pub fn tick(renew: Duration) -> Duration {
        (renew / 2).clamp(Duration::milliseconds(100), MAX_TICK)
    }

    /// Keeps the leases until `shutdown`, then releases them.
    pub async fn run(self, shutdown: CancellationToken) {
        let tick = Self::tick(self.lead.settings().renew)
            .to_std()
            .unwrap_or(std::time::Duration::from_secs(1));
        loop {
            self.round().await;
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(tick) => {}
            }
        }
        self.release_all().await;
    }

    /// One tick's work.
    async fn round(&self) {
        let channels = (self.channels)();
        self.lead.forget_others(&channels);
        self.renew_due().await;
        let me = self.lead.me().clone();
        let ttl = self.lead.settings().lease;
        let beat = {
            let me = me.clone();
            let incarnation = self.lead.settings().incarnation.clone();
            let config = self.lead.config_digest();
            self.ops
                .run(move |pool| async move {
                    pool.heartbeat(&me, &incarnation, &config, ttl).await
                })
                .await
        };
        let alive = match beat {
            Ok(beat) => {
                if let Some(until) = beat.taken_until {
                    // Another process runs under this instance ID (or this
                    // one's previous run has not aged out): two holders of
                    // one ID would take each other's leases for their own.
                    // Wait, leading nothing, until the row is free.
                    if !self
                        .id_taken
                        .swap(true, std::sync::atomic::Ordering::Relaxed)
                    {
                        tracing::error!(instance = %me, alive_until = %until, "another process is alive under this instance ID ([ha] instance_id must be unique): leading nothing until its heartbeat stops (a previous run of this instance ages out by then)");
                    }
                    for (channel, epoch) in self.lead.led() {
                        self.lead.step_down(&channel, epoch, StepDown::Released);
                    }
                    return;
                }
                if self
                    .id_taken
                    .swap(false, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::info!(instance = %me, "this instance ID is this process's now");
                }
                self.compare_configs(&beat.configs);
                beat.alive
            }
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "could not record this instance as alive; trying again at the next tick");
                return;
            }
        };
        let sent = self.time.inner_now();
        let table = match self
            .ops
            .run(|pool| async move { pool.leases().await })
            .await
        {
            Ok(table) => {
                self.time.observe(table.db_now, sent, self.time.inner_now());
                table
            }
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "could not read the channels' leases; trying again at the next tick");
                return;
            }
        };
        for channel in &channels {
            self.decide(channel, &alive, &table).await;
        }
        // Grants of channels no longer configured are handed back.
        for (channel, epoch) in self.lead.led() {
            if !channels.contains(&channel) {
                self.release(&channel, epoch).await;
            }
        }
        self.wake_requested().await;
    }

    /// Warns, once per change, while the instances alive name different
    /// channels or groups in their configs: they share one set of groups
    /// in the store, which each one's start and reloads rewrite, so a
    /// group one of them lacks is removed for all (docs/design.md §14.6).
    fn compare_configs(&self, configs: &[(InstanceId, String)]) {
        let mine = self.lead.config_digest();
        let differing: Vec<String> = configs
            .iter()
            .filter(|(_, digest)| *digest != mine)
            .map(|(id, _)| id.to_string())
            .collect();
        let mut last = self
            .configs_differ
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *last == differing {
            return;
        }
        if differing.is_empty() {
            tracing::info!("every instance alive names the same channels and groups again");
        } else {
            tracing::error!(instances = %differing.join(", "), "instances alive name other channels or groups in their configs than this one: they share one set of groups in the database, so give every instance the same channels and groups");
        }
        *last = differing;
    }

    /// Renews every grant whose renewal is due, all in one statement (one
    /// round trip however many channels this instance leads), each judged
    /// from when that statement was sent.
    async fn renew_due(&self) {
        let renew = self.lead.settings().renew;
        let ttl = self.lead.settings().lease;
        let now = self.lead.mono_now();
        let due: Vec<(ChannelId, Epoch)> = self
            .lead
            .led()
            .into_iter()
            .filter(|(channel, _)| match self.lead.standing(channel) {
                Standing::Leader(held) => now >= held.renewal_due_at(renew),
                _ => false,
            })
            .collect();
        if due.is_empty() {
            return;
        }
        let grants = due.clone();
        let sent_at = self.lead.mono_now();
        let answers = {
            let me = self.lead.me().clone();
            self.ops
                .run(move |pool| async move { pool.renew_leases(&grants, &me, ttl).await })
                .await
        };
        let answers = match answers {
            Ok(answers) => answers,
            Err(e) => {
                tracing::warn!(channels = due.len(), error = %error_chain(&e), "renewing the channels' leases failed; their outcome is unknown");
                vec![RenewAnswer::Failed; due.len()]
            }
        };
        for ((channel, epoch), answer) in due.into_iter().zip(&answers) {
            // Read again: a fenced write may have stepped down meanwhile,
            // and a step-down is final.
            let (standing, step_down) = self
                .lead
                .standing(&channel)
                .after_renewal(epoch, sent_at, answer, ttl);
            match step_down {
                Some(why) => {
                    self.metrics.lease_renew_failed();
                    self.lead.step_down(&channel, epoch, why);
                }
                None => self.lead.set_standing(&channel, standing),
            }
        }
    }

    /// Does what the spreading rule says about one channel's lease.
    async fn decide(&self, channel: &ChannelId, alive: &[InstanceId], table: &LeaseTable) {
        let me = self.lead.me();
        let row = table
            .leases
            .iter()
            .find(|(c, _)| c == channel)
            .map(|(_, l)| l);
        self.lead.note_holder(
            channel,
            row.filter(|l| l.is_valid_at(table.db_now))
                .map(|l| l.holder.clone()),
        );
        let grace = self.lead.settings().renew;
        let action = lease_action(me, alive, channel, row, table.db_now, grace);
        let standing = self.lead.standing(channel);
        if !matches!(action, LeaseAction::Wait) || row.is_none() {
            tracing::trace!(channel = %channel, action = ?action, leading = standing.held().is_some(), "lease");
        }
        match action {
            LeaseAction::Acquire if standing.held().is_none() => self.acquire(channel).await,
            LeaseAction::Release => {
                if let Some(held) = standing.held() {
                    self.release(channel, held.epoch).await;
                } else if let Some(row) = row {
                    // Our own grant that we stepped down from (its renewal
                    // went unanswered, say): hand it back so the channel
                    // need not wait for it to expire.
                    self.release(channel, row.epoch).await;
                }
            }
            LeaseAction::Keep => {
                if standing.held().is_none()
                    && let Some(row) = row
                {
                    // The row says ours but we stepped down from it: a
                    // step-down is final for the epoch, so end it and take
                    // a new one at the next tick.
                    self.release(channel, row.epoch).await;
                }
            }
            LeaseAction::Acquire | LeaseAction::Wait => {}
        }
    }

    async fn acquire(&self, channel: &ChannelId) {
        let ttl = self.lead.settings().lease;
        let sent_at = self.lead.mono_now();
        let answer = {
            let (channel, me) = (channel.clone(), self.lead.me().clone());
            self.ops
                .run(move |pool| async move { pool.acquire_lease(&channel, &me, ttl).await })
                .await
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => {
                tracing::warn!(channel = %channel, error = %error_chain(&e), "acquiring the channel's lease failed");
                AcquireAnswer::Failed
            }
        };
        let before = self.lead.standing(channel);
        let standing = before.after_acquire(sent_at, &answer, ttl);
        let AcquireAnswer::Granted { lease, .. } = &answer else {
            return;
        };
        if standing.held().is_none() {
            return;
        }
        self.lead.set_standing(channel, standing);
        self.metrics.set_leader(channel, true);
        if lease.epoch > Epoch(1) {
            self.metrics.lease_takeover(channel);
        }
        tracing::info!(channel = %channel, instance = %self.lead.me(), epoch = lease.epoch.0, "leading the channel");
        self.wakes.wake(channel);
    }

    /// Hands `channel`'s grant of `epoch` back, between steps.
    async fn release(&self, channel: &ChannelId, epoch: Epoch) {
        let lock = self.lead.work_lock(channel);
        let _between_steps = lock.lock().await;
        // Nothing more is started under this grant from here.
        self.lead.step_down(channel, epoch, StepDown::Released);
        let released = {
            let (channel, me) = (channel.clone(), self.lead.me().clone());
            self.ops
                .run(move |pool| async move { pool.release_lease(&channel, &me, epoch).await })
                .await
        };
        match released {
            Ok(Ok(_)) => {
                tracing::info!(channel = %channel, epoch = epoch.0, "handed the channel's lease back");
            }
            Ok(Err(why)) => {
                tracing::debug!(channel = %channel, epoch = epoch.0, why = ?why, "the grant to hand back had already ended");
            }
            Err(e) => {
                tracing::warn!(channel = %channel, error = %error_chain(&e), "handing the channel's lease back failed; it expires by itself");
            }
        }
    }

    /// Releases every grant held (shutdown).
    async fn release_all(&self) {
        for (channel, epoch) in self.lead.led() {
            self.release(&channel, epoch).await;
        }
    }

    /// Wakes the led channels with operator requests waiting: another
    /// instance may have recorded them.
    async fn wake_requested(&self) {
        let led = self.lead.led();
        if led.is_empty() {
            return;
        }
        let waiting = self
            .ops
            .run(|pool| async move { pool.channels_with_open_requests().await })
            .await;
        match waiting {
            Ok(waiting) => {
                let mut seen = self
                    .requests_seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for (channel, newest) in waiting {
                    let led_here = led.iter().any(|(c, _)| *c == channel);
                    let before = seen.insert(channel.clone(), newest);
                    if led_here && before.is_none_or(|b| b < newest) {
                        self.wakes.wake(&channel);
                    }
                }
            }
            Err(e @ PgError::Runtime { .. }) => {
                tracing::debug!(error = %error_chain(&e), "the store is closing");
            }
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "could not look for operator requests");
            }
        }
    }
}
