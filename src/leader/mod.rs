//! Leadership under `[ha]`: which channels this instance leads right now,
//! and the keeper that acquires, renews and releases their leases
//! (docs/design.md §14).
//!
//! [`Leadership`] is the one place the rotator asks before it works a
//! channel ([`Leadership::work`]: the grant's fence for the channel's
//! writes, and whether this grant still has to take over from an earlier
//! one) and before every LINE call ([`Leadership::may_call_line`]). Its
//! state is each channel's [`Standing`] as the pure rules of [`crate::ha`]
//! compute it from the database's answers and this host's suspend-counting
//! monotonic clock; nothing in it outlives the process, and nothing needs
//! to: a restarted instance has a new instance ID (or waits for its old
//! grants to expire) and leads again only under new epochs.
//!
//! The [`keeper`] is the task that talks to the database: a heartbeat, the
//! lease table, renewals when due, acquisitions and releases by the
//! spreading rule ([`crate::ha::spread`]).
//!
//! Each channel has a work lock: the rotator holds it while it works the
//! channel, the keeper takes it before it releases a lease, so a handover
//! happens between steps, never with a LINE call in flight.
//!
//! Depends on `ha` (the rules), `store` (the fence type and the lease
//! statements), `metrics` and `wakes::Wakes`.

pub mod keeper;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::Duration;
use tokio::sync::OwnedMutexGuard;

use crate::domain::ChannelId;
use crate::ha::{Epoch, InstanceId, Mono, Standing, StepDown, may_call_line};
use crate::metrics::Metrics;
use crate::store::Fence;

/// The lease of the daemon-wide duties under `[ha]` (sending alert
/// notifications): kept by the keeper like a channel's, so exactly one
/// instance does them. No LINE channel ID is a word, so it cannot collide.
pub const DAEMON_DUTIES: &str = "daemon";

/// Reads the suspend-counting monotonic clock ([`crate::clock::boot_millis`]
/// in production; tests may move it by hand).
pub type MonoSource = Arc<dyn Fn() -> Mono + Send + Sync>;

/// The `[ha]` settings the leadership runs by.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// This instance's ID, the holder of its grants.
    pub me: InstanceId,
    /// Random per process: tells this process's heartbeat row from another
    /// process's under the same ID.
    pub incarnation: String,
    /// How long a grant lasts without renewal.
    pub lease: Duration,
    /// How often a grant is renewed.
    pub renew: Duration,
    /// The LINE client's request timeout: a call may start only while the
    /// grant has more than this plus [`crate::ha::CALL_MARGIN`] left.
    pub request_timeout: Duration,
    /// How long after an issue assertion's `exp` LINE may still accept it
    /// (`[ha] line_clock_allowance`).
    pub line_clock_allowance: Duration,
}

/// One channel as this instance sees it.
#[derive(Debug)]
struct Lead {
    standing: Standing,
    /// Whether this grant's takeover duties (the older epochs' open
    /// intents) are done; false from the grant until the rotator did them.
    taken_over: bool,
    /// Held while the rotator works the channel.
    work: Arc<tokio::sync::Mutex<()>>,
    /// The holder of the valid grant at the keeper's last reading of the
    /// lease table (`None`: nobody held it).
    holder: Option<InstanceId>,
}

impl Lead {
    fn new() -> Self {
        Self {
            standing: Standing::Follower,
            taken_over: false,
            work: Arc::new(tokio::sync::Mutex::new(())),
            holder: None,
        }
    }
}

/// What the rotator gets while it works a channel it leads.
#[derive(Debug)]
pub struct Work {
    /// The grant every write of this work is fenced with.
    pub fence: Fence,
    /// True on the first work under this grant: the older epochs' open
    /// intents are to be closed as possibly issued before anything else
    /// (docs/design.md §14.3).
    pub takeover: bool,
    _lock: OwnedMutexGuard<()>,
}

/// Which channels this instance leads, shared by the keeper and the
/// rotator.
pub struct Leadership {
    settings: LeaseSettings,
    mono: MonoSource,
    metrics: Arc<Metrics>,
    channels: Mutex<HashMap<ChannelId, Lead>>,
    /// A digest of the channels and groups this instance's config names
    /// (set at start and on every reload): instances compare theirs.
    config: Mutex<String>,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Leadership {
    /// A leadership that leads nothing yet.
    pub fn new(settings: LeaseSettings, mono: MonoSource, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            settings,
            mono,
            metrics,
            channels: Mutex::new(HashMap::new()),
            config: Mutex::new(String::new()),
        })
    }

    /// This instance's ID.
    pub fn me(&self) -> &InstanceId {
        &self.settings.me
    }

    /// The settings.
    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    /// Sets the digest of the channels and groups this instance's config
    /// names.
    pub fn set_config_digest(&self, digest: String) {
        *self.config.lock().unwrap_or_else(PoisonError::into_inner) = digest;
    }

    /// The digest [`Leadership::set_config_digest`] set.
    pub fn config_digest(&self) -> String {
        self.config
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The monotonic clock's reading now.
    pub fn mono_now(&self) -> Mono {
        (self.mono)()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ChannelId, Lead>> {
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts working `channel`: waits for its work lock, then answers
    /// the grant to fence the work's writes with, or `None` when this
    /// instance does not lead the channel (or its grant is running out,
    /// which steps it down here).
    pub async fn work(&self, channel: &ChannelId) -> Option<Work> {
        let guard = self.work_lock(channel).lock_owned().await;
        let now = self.mono_now();
        let mut channels = self.lock();
        let lead = channels.get_mut(channel)?;
        let (standing, step_down) = lead.standing.at(now);
        lead.standing = standing;
        if let Some(why) = step_down {
            drop(channels);
            self.stepped_down(channel, &why);
            return None;
        }
        let held = lead.standing.held()?;
        Some(Work {
            fence: Fence {
                channel: channel.clone(),
                holder: self.settings.me.clone(),
                epoch: held.epoch,
            },
            takeover: !lead.taken_over,
            _lock: guard,
        })
    }

    /// Records that the takeover duties of `epoch` on `channel` are done.
    pub fn taken_over(&self, channel: &ChannelId, epoch: Epoch) {
        if let Some(lead) = self.lock().get_mut(channel)
            && lead.standing.held().is_some_and(|h| h.epoch == epoch)
        {
            lead.taken_over = true;
        }
    }

    /// Whether a LINE call for `channel` under `epoch` may start now: the
    /// grant is still this instance's, with more than the request timeout
    /// plus the margin left on the local deadline (docs/design.md §14.2).
    pub fn may_call_line(&self, channel: &ChannelId, epoch: Epoch) -> bool {
        let now = self.mono_now();
        self.lock().get(channel).is_some_and(|lead| {
            lead.standing.held().is_some_and(|h| h.epoch == epoch)
                && may_call_line(&lead.standing, now, self.settings.request_timeout)
        })
    }

    /// Steps down from `channel`'s grant of `epoch` (a fenced write, the
    /// time left too short): final for the epoch.
    pub fn step_down(&self, channel: &ChannelId, epoch: Epoch, why: StepDown) {
        let was = {
            let mut channels = self.lock();
            match channels.get_mut(channel) {
                Some(lead) if lead.standing.held().is_some_and(|h| h.epoch == epoch) => {
                    lead.standing = Standing::Follower;
                    true
                }
                _ => false,
            }
        };
        if was {
            self.stepped_down(channel, &why);
        }
    }

    fn stepped_down(&self, channel: &ChannelId, why: &StepDown) {
        self.metrics.set_leader(channel, false);
        tracing::warn!(channel = %channel, instance = %self.settings.me, why = ?why, "no longer leading the channel");
    }

    /// Whether this instance holds the daemon-wide duties
    /// ([`DAEMON_DUTIES`]).
    pub fn has_daemon_duties(&self) -> bool {
        self.standing(&ChannelId::new(DAEMON_DUTIES))
            .held()
            .is_some()
    }

    /// The channels this instance leads and their epochs.
    pub fn led(&self) -> Vec<(ChannelId, Epoch)> {
        let mut led: Vec<(ChannelId, Epoch)> = self
            .lock()
            .iter()
            .filter_map(|(c, l)| l.standing.held().map(|h| (c.clone(), h.epoch)))
            .collect();
        led.sort();
        led
    }

    /// `channel`'s standing now.
    pub fn standing(&self, channel: &ChannelId) -> Standing {
        self.lock()
            .get(channel)
            .map_or(Standing::Follower, |l| l.standing)
    }

    /// Replaces `channel`'s standing (the keeper, after a statement).
    /// A new grant (another epoch) has its takeover still to do.
    fn set_standing(&self, channel: &ChannelId, standing: Standing) {
        let mut channels = self.lock();
        let lead = channels.entry(channel.clone()).or_insert_with(Lead::new);
        let before = lead.standing.held().map(|h| h.epoch);
        let after = standing.held().map(|h| h.epoch);
        if before != after {
            lead.taken_over = false;
        }
        lead.standing = standing;
    }

    /// The instance that held `channel`'s valid grant when the keeper last
    /// read the lease table.
    pub fn last_holder(&self, channel: &ChannelId) -> Option<InstanceId> {
        self.lock().get(channel).and_then(|l| l.holder.clone())
    }

    fn note_holder(&self, channel: &ChannelId, holder: Option<InstanceId>) {
        self.lock()
            .entry(channel.clone())
            .or_insert_with(Lead::new)
            .holder = holder;
    }

    /// The channel's work lock, for a handover between steps.
    fn work_lock(&self, channel: &ChannelId) -> Arc<tokio::sync::Mutex<()>> {
        let mut channels = self.lock();
        Arc::clone(
            &channels
                .entry(channel.clone())
                .or_insert_with(Lead::new)
                .work,
        )
    }

    /// Forgets the channels not in `keep` (a reload removed them) that
    /// this instance does not lead.
    fn forget_others(&self, keep: &[ChannelId]) {
        self.lock()
            .retain(|c, l| keep.contains(c) || l.standing.held().is_some());
    }
}
