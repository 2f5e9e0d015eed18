//! The rotator: where a plan meets IO.
//!
//! One [`Rotator::pass`] looks at every configured channel, builds each
//! group's view from the store, asks the pure [`policy`](crate::policy) for
//! a plan, and carries out the steps against LINE, recording every outcome
//! in the store before telling anyone ([`RotationEvent`]). It returns when
//! nothing is due and says when to look again; the
//! [`scheduler`](crate::scheduler) sleeps until then.
//!
//! Channels are worked on concurrently (bounded); the groups of one channel
//! one after another, because they share the channel's capacity and hourly
//! issue budget, and every step changes what the next plan sees. After each
//! executed plan the channel is planned again from fresh store reads, so
//! the policy always decides on the current state. A channel whose last
//! plans said nothing can change before some instant is skipped until then,
//! unless an operator request or a config change touched it.
//!
//! A pass is never interrupted in the middle of a LINE call: cancellation is
//! checked between steps, so the call in flight finishes and its result is
//! stored before the daemon stops.
//!
//! Depends on `policy`, `store`, `line`, `clock` and `domain`. Reads no
//! config: `app` hands it [`ChannelSetup`]s and [`Rules`].

mod event;
mod execute;
pub mod snapshot;

use std::collections::{HashMap, HashSet};
use std::mem::Discriminant;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use chrono::{DateTime, Duration, DurationRound as _, Utc};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::{Semaphore, broadcast};
use tokio_util::sync::CancellationToken;

pub use self::event::RotationEvent;
pub use self::execute::revoke_reason_text;
pub use self::snapshot::Snapshot;
use crate::clock::SharedClock;
use crate::domain::{ChannelId, ChannelSecret, GroupName};
use crate::line::LineClient;
use crate::line::jwt::AssertionSigner;
use crate::metrics::Metrics;
use crate::policy::{self, Alert, Hold, Plan, RetryState, Rules, Severity};
use crate::store::{Store, StoreError};

/// How many plans one channel may execute in one pass before the pass
/// moves on. Each executed plan changes the state so the next plan differs;
/// this bound only matters if a bug made a step change nothing.
const MAX_PLANS_PER_CHANNEL_PASS: usize = 64;

/// How soon to look again after the store failed (disk full, IO error).
const STORE_RETRY: Duration = Duration::seconds(30);

/// One channel as the rotator works it.
#[derive(Debug)]
pub struct ChannelSetup {
    /// The channel ID.
    pub id: ChannelId,
    /// The operator's name for it, for logs.
    pub name: String,
    /// Signs the assertions for issue and key-ID listing.
    pub signer: AssertionSigner,
    /// The channel secret, without which tokens cannot be revoked.
    pub secret: Option<ChannelSecret>,
    /// The configured groups.
    pub groups: Vec<GroupName>,
}

/// Everything a [`Rotator`] is built from.
pub struct RotatorParts {
    /// The store (opened for writing).
    pub store: Store,
    /// The LINE client.
    pub line: LineClient,
    /// The clock.
    pub clock: SharedClock,
    /// The lifecycle rules.
    pub rules: Rules,
    /// The configured channels.
    pub channels: Vec<ChannelSetup>,
    /// How many channels are worked on at once.
    pub concurrency: usize,
    /// Seed for the backoff jitter; `None` seeds from the OS. Simulations fix
    /// it so a run can be repeated.
    pub seed: Option<u64>,
    /// Where token and rotation metrics go.
    pub metrics: Arc<Metrics>,
}

/// In-memory state of one group that the store does not need to keep.
#[derive(Debug, Default)]
struct GroupState {
    /// The failure streak; seeded from the store's group row after a restart.
    retry: Option<RetryState>,
    /// Set when an operator (or a failed verify) asks for a rotation.
    rotate_requested_at: Option<DateTime<Utc>>,
    /// Set by the incident command.
    revoke_requested_at: Option<DateTime<Utc>>,
    /// The kinds of alert currently raised, so each is logged when it starts
    /// rather than on every pass.
    alerts: Vec<Discriminant<Alert>>,
    /// True once `retry` was seeded from the store.
    seeded: bool,
}

/// The rotation engine. Shared behind an `Arc` by the scheduler, the control
/// socket and the HTTP API.
pub struct Rotator {
    store: Store,
    line: LineClient,
    clock: SharedClock,
    /// Replaced whole on a config reload.
    rules: RwLock<Arc<Rules>>,
    channels: RwLock<Arc<Vec<Arc<ChannelSetup>>>>,
    groups: Mutex<HashMap<(ChannelId, GroupName), GroupState>>,
    /// Channels reconciled, in this process, after their last issue attempt
    /// that ended without a stored token. The store keeps whole seconds, so
    /// it cannot tell an attempt from a reconcile in the same second and
    /// keeps counting such an attempt as unsettled; the rotator knows the
    /// order of its own steps. Without this, a failed (or, at start, lost)
    /// issuance followed by a reconcile in the same second made the policy
    /// ask for a reconcile again and again until the second was over.
    settled: Mutex<HashSet<ChannelId>>,
    /// When each channel was last planned, and when it next needs planning
    /// as that pass said. A pass skips a channel whose time has not come:
    /// its plans are a pure function of its own store rows, its groups'
    /// in-memory state and the clock, and the policy's `wake_at` is the
    /// earliest instant any of that can change them. What changes those
    /// inputs from outside the channel's own pass (an operator request, new
    /// channels) forgets the entry. Without this, every wake-up of any
    /// channel re-read and re-planned all of them.
    next_look: Mutex<HashMap<ChannelId, NextLook>>,
    events: broadcast::Sender<RotationEvent>,
    rng: Mutex<StdRng>,
    concurrency: usize,
    metrics: Arc<Metrics>,
}

/// When a channel was last planned, and when that plan said to look again.
type NextLook = (DateTime<Utc>, DateTime<Utc>);

/// A group's operator requests not yet carried out
/// ([`Rotator::pending_requests`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PendingRequests {
    /// When `linetokd rotate` asked, if that rotation is still to come.
    pub rotation: Option<DateTime<Utc>>,
    /// When `linetokd revoke` declared an incident, if it is still to be
    /// carried out.
    pub incident: Option<DateTime<Utc>>,
}

/// Why an operator request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No such channel in the config.
    #[error("channel {0} is not configured")]
    UnknownChannel(ChannelId),
    /// No such group in the channel.
    #[error("group {group} is not configured in channel {channel}")]
    UnknownGroup {
        /// The channel.
        channel: ChannelId,
        /// The group.
        group: GroupName,
    },
}

impl Rotator {
    /// Builds a rotator.
    pub fn new(parts: RotatorParts) -> Arc<Self> {
        let rng = match parts.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let (events, _) = broadcast::channel(1024);
        Arc::new(Self {
            store: parts.store,
            line: parts.line,
            clock: parts.clock,
            rules: RwLock::new(Arc::new(parts.rules)),
            channels: RwLock::new(Arc::new(parts.channels.into_iter().map(Arc::new).collect())),
            groups: Mutex::new(HashMap::new()),
            settled: Mutex::new(HashSet::new()),
            next_look: Mutex::new(HashMap::new()),
            events,
            rng: Mutex::new(rng),
            concurrency: parts.concurrency.max(1),
            metrics: parts.metrics,
        })
    }

    /// A receiver of everything the rotator does from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<RotationEvent> {
        self.events.subscribe()
    }

    /// The rules in force.
    pub fn rules(&self) -> Arc<Rules> {
        Arc::clone(&self.rules.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the rules (a config reload); the next pass plans with them.
    pub fn set_rules(&self, rules: Rules) {
        *self.rules.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(rules);
        // Every channel's plan depends on the rules: plan them all again.
        self.lock_next_look().clear();
    }

    /// The clock the rotator reads.
    pub fn clock(&self) -> SharedClock {
        Arc::clone(&self.clock)
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The LINE client (for its clock-skew reading).
    pub fn line(&self) -> &LineClient {
        &self.line
    }

    /// The configured channels.
    pub fn channels(&self) -> Arc<Vec<Arc<ChannelSetup>>> {
        Arc::clone(&self.channels.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the configured channels (a config reload). The store must
    /// already have been synced with the same channels and groups.
    pub fn set_channels(&self, channels: Vec<ChannelSetup>) {
        *self
            .channels
            .write()
            .unwrap_or_else(PoisonError::into_inner) =
            Arc::new(channels.into_iter().map(Arc::new).collect());
        self.lock_next_look().clear();
    }

    /// Asks for a rotation of one group, or of every group of the channel,
    /// at the next pass (`linetokd rotate`).
    ///
    /// # Errors
    /// [`RequestError`] when the channel or group is not configured.
    pub fn request_rotation(
        &self,
        channel: &ChannelId,
        group: Option<&GroupName>,
    ) -> Result<Vec<GroupName>, RequestError> {
        let now = self.clock.now();
        self.for_groups(channel, group, |state| {
            state.rotate_requested_at = Some(now)
        })
    }

    /// Declares an incident for one group (`linetokd revoke`): every token of
    /// the group issued before now is revoked and a fresh one issued at the
    /// next pass, touching no other group.
    ///
    /// # Errors
    /// [`RequestError`] when the channel or group is not configured.
    pub fn request_incident(
        &self,
        channel: &ChannelId,
        group: &GroupName,
    ) -> Result<(), RequestError> {
        let now = self.clock.now();
        self.for_groups(channel, Some(group), |state| {
            state.revoke_requested_at = Some(now);
        })
        .map(|_| ())
    }

    /// The operator requests for a group that are not carried out yet:
    /// each is the time it was stamped, cleared once the issue it asked
    /// for succeeded (or a plan found nothing left to do for it). The
    /// control socket waits on this to tell the operator when a `rotate`
    /// or `revoke` is done.
    pub fn pending_requests(&self, channel: &ChannelId, group: &GroupName) -> PendingRequests {
        self.lock_groups()
            .get(&(channel.clone(), group.clone()))
            .map(|state| PendingRequests {
                rotation: state.rotate_requested_at,
                incident: state.revoke_requested_at,
            })
            .unwrap_or_default()
    }

    fn for_groups(
        &self,
        channel: &ChannelId,
        group: Option<&GroupName>,
        mut apply: impl FnMut(&mut GroupState),
    ) -> Result<Vec<GroupName>, RequestError> {
        let channels = self.channels();
        let setup = channels
            .iter()
            .find(|c| &c.id == channel)
            .ok_or_else(|| RequestError::UnknownChannel(channel.clone()))?;
        let targets: Vec<GroupName> = match group {
            Some(g) if setup.groups.contains(g) => vec![g.clone()],
            Some(g) => {
                return Err(RequestError::UnknownGroup {
                    channel: channel.clone(),
                    group: g.clone(),
                });
            }
            None => setup.groups.clone(),
        };
        let mut groups = self.lock_groups();
        for g in &targets {
            apply(groups.entry((channel.clone(), g.clone())).or_default());
        }
        self.lock_next_look().remove(channel);
        Ok(targets)
    }

    /// Start-up duties before the first pass: every issuance a previous run
    /// left open is closed as lost and reported (DESIGN.md section 5, crash
    /// journal). Such a token, if LINE issued it, shows up as foreign at the
    /// next reconcile and counts against capacity until it expires.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read or written.
    pub async fn start_up(&self) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let lost = self.db(move |store| store.close_lost_intents(now)).await?;
        for intent in &lost {
            tracing::warn!(
                channel = %intent.channel_id,
                group = %intent.group,
                intent = %intent.id,
                started_at = %intent.started_at,
                "an issuance was in flight when linetokd last stopped; if LINE issued that token, \
                 the next reconcile reports it as foreign and it counts against capacity until it expires"
            );
        }
        Ok(lost.len())
    }

    /// Works every channel until nothing is due, and returns when to look
    /// again. Stops between steps once `cancel` fires.
    pub async fn pass(self: &Arc<Self>, cancel: &CancellationToken) -> DateTime<Utc> {
        let channels = self.channels();
        let now = self.clock.now();
        let mut wake = now + policy::MAX_SLEEP;
        let semaphore = Arc::new(Semaphore::new(self.concurrency));
        let mut tasks = tokio::task::JoinSet::new();
        for setup in channels.iter() {
            // Skipped only while its time is ahead and no more than a plan's
            // longest sleep away (after the clock stepped back, the entry
            // says nothing about now), and while its plan was made in the
            // current period of that length: the first pass of a period
            // re-plans every channel, so their safety re-plans (a plan
            // sleeps at most MAX_SLEEP) fall into one pass instead of each
            // waking the scheduler on its own.
            let period_start = now.duration_trunc(policy::MAX_SLEEP).unwrap_or(now);
            let planned = self.lock_next_look().get(&setup.id).copied();
            if let Some((_, at)) = planned.filter(|(planned_at, at)| {
                *at > now && *at <= now + policy::MAX_SLEEP && *planned_at >= period_start
            }) {
                wake = wake.min(at);
                continue;
            }
            let this = Arc::clone(self);
            let setup = Arc::clone(setup);
            let cancel = cancel.clone();
            let semaphore = Arc::clone(&semaphore);
            tasks.spawn(async move {
                // The semaphore is never closed, so acquiring cannot fail.
                let _permit = semaphore.acquire_owned().await.ok();
                let planned_at = this.clock.now();
                let at = this.channel_pass(&setup, &cancel).await;
                (setup.id.clone(), planned_at, at)
            });
        }
        if let Some(skew) = self.line.last_clock_skew() {
            self.metrics.set_clock_skew(skew);
        }
        while let Some(result) = tasks.join_next().await {
            match result {
                Ok((channel, planned_at, at)) => {
                    wake = wake.min(at);
                    self.lock_next_look().insert(channel, (planned_at, at));
                }
                Err(e) => {
                    tracing::error!(error = %e, "a channel pass panicked; retrying soon");
                    // Which channel is unknown: plan them all next time.
                    self.lock_next_look().clear();
                    wake = wake.min(self.clock.now() + STORE_RETRY);
                }
            }
        }
        wake
    }

    async fn channel_pass(
        &self,
        setup: &ChannelSetup,
        cancel: &CancellationToken,
    ) -> DateTime<Utc> {
        for _ in 0..MAX_PLANS_PER_CHANNEL_PASS {
            if cancel.is_cancelled() {
                return self.clock.now();
            }
            match self.channel_step(setup).await {
                Ok(Some(wake)) => return wake,
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(channel = %setup.id, error = %error_chain(&e), "the store failed; retrying soon");
                    return self.clock.now() + STORE_RETRY;
                }
            }
        }
        tracing::warn!(
            channel = %setup.id,
            "{MAX_PLANS_PER_CHANNEL_PASS} plans in one pass without settling; looking again shortly"
        );
        self.clock.now() + Duration::seconds(1)
    }

    /// Plans every group of the channel once and executes the first plan
    /// that has work. `Ok(None)` means something was done (plan again);
    /// `Ok(Some(wake))` means nothing is due before `wake`.
    async fn channel_step(
        &self,
        setup: &ChannelSetup,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let now = self.clock.now();
        let expired = {
            let channel = setup.id.clone();
            self.db(move |store| store.expire_due_in(now, &channel))
                .await?
        };
        if !expired.is_empty() {
            tracing::info!(channel = %setup.id, key_ids = ?expired, "tokens expired");
            self.emit(RotationEvent::Expired {
                channel: setup.id.clone(),
                key_ids: expired,
            });
        }

        let rules = self.rules();
        let snapshot = Snapshot::load(self, setup, now).await?;
        let views = snapshot.group_views(self, setup);
        let mut channel_view = snapshot.channel_view(now, &views);
        if self.is_settled(&setup.id) {
            channel_view.lost = 0;
        }

        let mut wake = now + policy::MAX_SLEEP;
        self.metrics
            .set_channel(&setup.id, channel_view.live_ours, channel_view.foreign);
        for view in &views {
            let plan = policy::plan_group(now, view, &channel_view, &rules);
            self.raise_alerts(setup, &view.group, &plan);
            let live = view.live_tokens(now);
            self.metrics.set_group(
                &setup.id,
                &view.group,
                live.len(),
                live.first().map(|t| t.expires_at),
                plan.next_rotation_at,
            );
            if !plan.steps.is_empty() {
                self.execute(setup, view, &plan).await?;
                return Ok(None);
            }
            if plan.hold.is_none() && view.retry.as_ref().is_none_or(|r| r.not_before <= now) {
                // Nothing to do, nothing held back, no backoff hiding
                // steps: whatever the view's requests asked for is done
                // (e.g. a rotation that an issue already in flight
                // satisfied), so they stop being reported as pending.
                self.settle_requests(setup, view);
            }
            if let Some(Hold::Capacity { needed }) = plan.hold {
                let victims = policy::capacity_victims(now, &views, needed, &rules);
                if !victims.is_empty() {
                    self.free_capacity(setup, &view.group, victims).await?;
                    return Ok(None);
                }
            }
            wake = wake.min(plan.wake_at);
        }
        Ok(Some(wake.max(now)))
    }

    /// Logs (and emits) each alert of a plan when its kind starts, and the
    /// end of each kind that stopped; a level condition repeated on every
    /// pass would drown the log.
    fn raise_alerts(&self, setup: &ChannelSetup, group: &GroupName, plan: &Plan) {
        let kinds: Vec<_> = plan.alerts.iter().map(std::mem::discriminant).collect();
        let started: Vec<&Alert> = {
            let mut groups = self.lock_groups();
            let state = groups.entry((setup.id.clone(), group.clone())).or_default();
            let started = plan
                .alerts
                .iter()
                .filter(|a| !state.alerts.contains(&std::mem::discriminant(*a)))
                .collect();
            if state.alerts.len() > kinds.iter().filter(|k| state.alerts.contains(k)).count() {
                tracing::info!(channel = %setup.id, group = %group, "an alert condition cleared");
            }
            state.alerts = kinds;
            started
        };
        for alert in started {
            match alert.severity() {
                Severity::Critical => {
                    tracing::error!(channel = %setup.id, group = %group, alert = ?alert, "CRITICAL: {}", describe_alert(alert));
                }
                Severity::Warning => {
                    tracing::warn!(channel = %setup.id, group = %group, alert = ?alert, "{}", describe_alert(alert));
                }
            }
            self.emit(RotationEvent::Alert {
                channel: setup.id.clone(),
                group: group.clone(),
                alert: alert.clone(),
            });
        }
    }

    fn emit(&self, event: RotationEvent) {
        // No receiver is fine: nobody is listening (e.g. `plan`).
        let _ = self.events.send(event);
    }

    /// True when this process reconciled the channel after its last issue
    /// attempt that ended without a stored token (see `settled`).
    fn is_settled(&self, channel: &ChannelId) -> bool {
        self.settled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(channel)
    }

    /// Records that the channel was just reconciled (`true`) or that an issue
    /// attempt just ended with its outcome at LINE unknown (`false`).
    fn set_settled(&self, channel: &ChannelId, settled: bool) {
        let mut set = self.settled.lock().unwrap_or_else(PoisonError::into_inner);
        if settled {
            set.insert(channel.clone());
        } else {
            set.remove(channel);
        }
    }

    fn lock_groups(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(ChannelId, GroupName), GroupState>> {
        self.groups.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_next_look(&self) -> std::sync::MutexGuard<'_, HashMap<ChannelId, NextLook>> {
        self.next_look
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A uniform random number in `[0, 1)` for full-jitter backoff.
    fn jitter(&self) -> f64 {
        self.rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .random::<f64>()
    }

    /// Runs a store call on the blocking pool: rusqlite blocks.
    async fn db<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .unwrap_or_else(|e| {
                Err(StoreError::Internal {
                    what: format!("a store task failed: {e}"),
                })
            })
    }
}

/// An operator-facing sentence for an alert.
pub fn describe_alert(alert: &Alert) -> String {
    // The sentences live with the policy's other words (`policy::words`).
    alert.to_string()
}

/// An error and its sources on one line, `a: b: c`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors repeat their source in their own message.
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
