//! The rotator: where the policy's decisions meet IO.
//!
//! [`Rotator::work_channel`] works one channel until nothing is due: read
//! the channel's state from the store ([`Snapshot`]), ask the pure driver
//! ([`policy::drive`]) for the next thing to do, do it against LINE while
//! recording every outcome in the store before telling anyone
//! ([`RotationEvent`]), and drive again; when the driver says "idle until
//! T", return T. The [`scheduler`](crate::scheduler) owns those due times
//! and calls `work_channel` for the channels that are due.
//!
//! The rotator keeps no state a restart would lose: failure streaks (with
//! their kind and step), the channel's listing streak and full hold,
//! operator requests and raised alerts are all rows. What it holds in
//! memory is configuration (channels, rules), the random source for
//! backoff jitter, and [`Wakes`], the channels the scheduler should look at
//! now because something outside their own timers changed.
//!
//! A channel is never interrupted in the middle of a LINE call:
//! cancellation is checked between steps, so the call in flight finishes
//! and its result is stored before the daemon stops.
//!
//! Depends on `policy`, `snapshot`, `store`, `line`, `clock`, `metrics`
//! and `domain`. Reads no config: `app` hands it [`ChannelSetup`]s and
//! [`Rules`].

mod execute;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use chrono::{DateTime, Duration, Utc};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::domain::{ChannelId, ChannelSecret, GroupName, KeyId, RequestKind, TokenKind};
pub use crate::event::RotationEvent;
use crate::ha::StepDown;
use crate::leader::Leadership;
use crate::line::LineClient;
use crate::line::jwt::AssertionSigner;
pub use crate::logging::error_chain;
use crate::metrics::Metrics;
use crate::policy::{self, Alert, Decision, Next, Rules, Severity};
use crate::snapshot::Snapshot;
use crate::store::{AlertLabel, AlertScope, AlertSpec, Fence, Store, StoreError};
pub use crate::wakes::Wakes;

/// How many driver rounds one call of [`Rotator::work_channel`] may run.
/// Every executed step changes the state so the next decision differs; the
/// bound only matters if a bug made a step change nothing.
const MAX_ROUNDS: usize = 64;

/// The most issues of one channel decided together
/// ([`policy::issue_round`]): a channel's 15 groups at a first start in one
/// round. They still go to LINE one at a time.
const MAX_ISSUE_ROUND: usize = 16;

/// How soon to look again after the store failed (disk full, IO error).
const STORE_RETRY: Duration = Duration::seconds(30);

/// One channel as the rotator works it.
#[derive(Debug)]
pub struct ChannelSetup {
    /// The channel ID.
    pub id: ChannelId,
    /// The operator's name for it, for logs.
    pub name: String,
    /// Signs the assertions for issue and key-ID listing; `None` for a
    /// channel without v2.1 groups (validation requires the key otherwise).
    pub signer: Option<AssertionSigner>,
    /// The channel secret, without which tokens cannot be revoked.
    pub secret: Option<ChannelSecret>,
    /// The configured groups.
    pub groups: Vec<GroupName>,
    /// The digest of its credentials (ID, kid, key, secret) that the store
    /// keeps as `channels.config_fingerprint`; `None` where the caller keeps
    /// none. A failure of a call made under a digest the store no longer
    /// holds (a reload replaced it) is not recorded.
    pub fingerprint: Option<String>,
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
    /// How many channels are worked on at once (the scheduler reads it).
    pub concurrency: usize,
    /// Seed for the backoff jitter; `None` seeds from the OS. Simulations fix
    /// it so a run can be repeated.
    pub seed: Option<u64>,
    /// Where token and rotation metrics go.
    pub metrics: Arc<Metrics>,
    /// Under `[ha]`: which channels this instance leads. A channel is
    /// worked only while led, every write of its work is fenced by the
    /// grant, and a LINE call starts only while the grant has time left.
    /// `None`: the only writer, every channel worked.
    pub leadership: Option<Arc<Leadership>>,
}

tokio::task_local! {
    /// The grant the channel work running in this task is fenced with:
    /// [`Rotator::db`] fences every store call of the work with it, and
    /// [`Rotator::line_allowed`] asks the leadership before LINE calls.
    static WORK_FENCE: Fence;
}

/// The configured channels, in config order and by ID: every round looks
/// its channel up, and a scan of the list made each round's cost grow
/// with the number of channels.
struct Channels {
    list: Arc<Vec<Arc<ChannelSetup>>>,
    by_id: HashMap<ChannelId, Arc<ChannelSetup>>,
}

impl Channels {
    fn new(channels: Vec<ChannelSetup>) -> Self {
        let list: Vec<Arc<ChannelSetup>> = channels.into_iter().map(Arc::new).collect();
        let by_id = list.iter().map(|c| (c.id.clone(), Arc::clone(c))).collect();
        Self {
            list: Arc::new(list),
            by_id,
        }
    }
}

/// The rotation engine. Shared behind an `Arc` by the scheduler, the control
/// socket and the HTTP API.
pub struct Rotator {
    store: Store,
    line: LineClient,
    clock: SharedClock,
    /// Replaced whole on a config reload.
    rules: RwLock<Arc<Rules>>,
    channels: RwLock<Arc<Channels>>,
    events: broadcast::Sender<RotationEvent>,
    rng: Mutex<StdRng>,
    concurrency: usize,
    metrics: Arc<Metrics>,
    wakes: Arc<Wakes>,
    /// Set when an operator request met a fatal store error: the next
    /// channel work checks the file and stops the scheduler with that
    /// error. A round that has nothing to write would not notice.
    store_suspect: AtomicBool,
    /// Whether `clock_skew` fires, as last stated to the store; `None`
    /// until first judged, when the store's row is read (so a restart
    /// keeps the hysteresis where it was).
    /// Held across a judgement, so two channels' works never interleave
    /// theirs.
    skew_firing: tokio::sync::Mutex<Option<bool>>,
    leadership: Option<Arc<Leadership>>,
}

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
    /// The store could not record the request.
    #[error("the request could not be recorded: {0}")]
    Store(#[from] StoreError),
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
            channels: RwLock::new(Arc::new(Channels::new(parts.channels))),
            events,
            rng: Mutex::new(rng),
            concurrency: parts.concurrency.max(1),
            metrics: parts.metrics,
            wakes: Arc::new(Wakes::default()),
            store_suspect: AtomicBool::new(false),
            skew_firing: tokio::sync::Mutex::new(None),
            leadership: parts.leadership,
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

    /// Replaces the rules (a config reload); every channel is looked at
    /// again at once, since every plan depends on them.
    pub fn set_rules(&self, rules: Rules) {
        *self.rules.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(rules);
        self.wakes.wake_all();
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

    /// The metrics the rotator writes.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// How many channels the scheduler may work on at once.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// The channels the scheduler should look at before their due time.
    pub fn wakes(&self) -> Arc<Wakes> {
        Arc::clone(&self.wakes)
    }

    /// The configured channels.
    pub fn channels(&self) -> Arc<Vec<Arc<ChannelSetup>>> {
        let channels = self.channels.read().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(&channels.list)
    }

    /// Replaces the configured channels (a config reload) and wakes every
    /// channel. The store must already have been synced with the same
    /// channels and groups.
    pub fn set_channels(&self, channels: Vec<ChannelSetup>) {
        *self
            .channels
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(Channels::new(channels));
        self.wakes.wake_all();
    }

    fn setup(&self, channel: &ChannelId) -> Option<Arc<ChannelSetup>> {
        let channels = self.channels.read().unwrap_or_else(PoisonError::into_inner);
        channels.by_id.get(channel).cloned()
    }

    /// Whether `setup` is still its channel's setup in force: a reload
    /// replaces every channel's.
    fn in_force(&self, setup: &ChannelSetup) -> bool {
        self.setup(&setup.id)
            .is_some_and(|s| std::ptr::eq(Arc::as_ptr(&s), setup))
    }

    /// Asks for a rotation of one group, or of every group of the channel,
    /// now (`linetokd rotate`): a request row per group, and the channel's
    /// failure streaks and holds end (the operator says "try now"). `by`
    /// says who asked. Returns the groups and their request IDs.
    ///
    /// # Errors
    /// [`RequestError`] when the channel or group is not configured or the
    /// store fails.
    pub async fn request_rotation(
        &self,
        channel: &ChannelId,
        group: Option<&GroupName>,
        by: &str,
    ) -> Result<Vec<(GroupName, i64)>, RequestError> {
        let targets = self.targets(channel, group)?;
        self.request(channel, targets, RequestKind::Rotate, by)
            .await
    }

    /// Declares an incident for one group (`linetokd revoke`): every live
    /// token of the group is revoked and a fresh one issued, touching no
    /// other group. Kept in the store, so a restart carries it out. Like a
    /// rotation request it ends the channel's failure streaks and holds.
    ///
    /// # Errors
    /// [`RequestError`] when the channel or group is not configured or the
    /// store fails.
    pub async fn request_incident(
        &self,
        channel: &ChannelId,
        group: &GroupName,
        by: &str,
    ) -> Result<i64, RequestError> {
        let targets = self.targets(channel, Some(group))?;
        let ids = self
            .request(channel, targets, RequestKind::Incident, by)
            .await?;
        Ok(ids.first().map_or(0, |(_, id)| *id))
    }

    fn targets(
        &self,
        channel: &ChannelId,
        group: Option<&GroupName>,
    ) -> Result<Vec<GroupName>, RequestError> {
        let setup = self
            .setup(channel)
            .ok_or_else(|| RequestError::UnknownChannel(channel.clone()))?;
        match group {
            Some(g) if setup.groups.contains(g) => Ok(vec![g.clone()]),
            Some(g) => Err(RequestError::UnknownGroup {
                channel: channel.clone(),
                group: g.clone(),
            }),
            None => Ok(setup.groups.clone()),
        }
    }

    async fn request(
        &self,
        channel: &ChannelId,
        groups: Vec<GroupName>,
        kind: RequestKind,
        by: &str,
    ) -> Result<Vec<(GroupName, i64)>, RequestError> {
        let now = self.clock.now();
        let (ch, gs, by) = (channel.clone(), groups.clone(), by.to_owned());
        let recorded = self
            .db(move |store| store.add_requests(now, &ch, &gs, kind, &by))
            .await;
        // When the database is gone the daemon must stop, not run on until
        // the next due time: the woken channel's work checks the file first.
        if recorded.as_ref().is_err_and(StoreError::is_fatal) {
            self.store_suspect.store(true, Ordering::SeqCst);
        }
        self.wakes.wake(channel);
        let ids = recorded?;
        Ok(groups.into_iter().zip(ids).collect())
    }

    /// The operator requests of a group not carried out yet, read from the
    /// store. The control socket waits on this to tell the operator when a
    /// `rotate` or `revoke` is done.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    pub async fn pending_requests(
        &self,
        channel: &ChannelId,
        group: &GroupName,
    ) -> Result<PendingRequests, StoreError> {
        let ch = channel.clone();
        let open = self.db(move |store| store.open_requests(&ch)).await?;
        let at = |kind| {
            open.iter()
                .find(|(g, r)| g == group && r.kind == kind)
                .map(|(_, r)| r.at)
        };
        Ok(PendingRequests {
            rotation: at(RequestKind::Rotate),
            incident: at(RequestKind::Incident),
        })
    }

    /// Start-up duties before the first pass: every issuance a previous run
    /// left open is closed as lost and reported (the crash journal). Such a
    /// token, if LINE issued it, counts against capacity until a reconcile
    /// settles it, then shows up as foreign until it expires.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read or written.
    pub async fn start_up(&self) -> Result<usize, StoreError> {
        // Under leases other instances' intents may be in flight: each
        // channel's older intents are closed by its next leader instead
        // (`take_over`).
        if self.leadership.is_some() {
            return Ok(0);
        }
        let now = self.clock.now();
        // Each group whose issuance was in flight waits as after any
        // answer that may have issued, and is held before its intents
        // close: a daemon killed in between finds them open again at its
        // next start and holds them then, rather than asking LINE at once.
        let open = self.db(|store| store.open_intents()).await?;
        let mut groups: BTreeMap<ChannelId, Vec<GroupName>> = BTreeMap::new();
        for intent in &open {
            let of_channel = groups.entry(intent.channel_id.clone()).or_default();
            if !of_channel.contains(&intent.group) {
                of_channel.push(intent.group.clone());
            }
        }
        // A failure here must not stop the start: the daemon is better
        // running (its groups then retry as before) than down. A channel
        // no longer configured is not looked after at all.
        for (channel, groups) in groups {
            if let Some(setup) = self.setup(&channel)
                && let Err(e) = self.hold_after_lost_issues(&setup, &groups, now).await
            {
                tracing::warn!(
                    channel = %channel,
                    "could not hold the groups whose issuance was lost: {}",
                    crate::logging::error_chain(&e)
                );
            }
        }
        let lost = self.db(move |store| store.close_lost_intents(now)).await?;
        for intent in &lost {
            tracing::warn!(
                channel = %intent.channel_id,
                group = %intent.group,
                intent = %intent.id,
                started_at = %intent.started_at,
                "an issuance was in flight when linetokd last stopped: {}",
                intent.error.as_deref().unwrap_or("its outcome is unknown")
            );
        }
        Ok(lost.len())
    }

    /// The configured channel IDs, for the scheduler.
    pub fn channel_ids(&self) -> Vec<ChannelId> {
        self.channels().iter().map(|c| c.id.clone()).collect()
    }

    /// Works one channel until nothing is due and returns when it is next
    /// due; `Ok(None)` when the channel is not configured (any more). Stops
    /// between steps once `cancel` fires.
    ///
    /// # Errors
    /// Only a fatal store error (the database file is gone): the daemon
    /// must stop. Other store errors are logged and the channel is looked
    /// at again shortly.
    pub async fn work_channel(
        &self,
        channel: &ChannelId,
        cancel: &CancellationToken,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let Some(setup) = self.setup(channel) else {
            return Ok(None);
        };
        let Some(lead) = &self.leadership else {
            return self.work_setup(&setup, cancel).await;
        };
        // Under `[ha]` only the leader works the channel; the keeper wakes
        // it when this instance is granted its lease.
        let Some(work) = lead.work(channel).await else {
            return Ok(None);
        };
        let (fence, takeover) = (work.fence.clone(), work.takeover);
        let epoch = fence.epoch;
        let worked = WORK_FENCE
            .scope(fence, async {
                if takeover {
                    self.take_over(&setup).await?;
                    lead.taken_over(channel, epoch);
                }
                self.work_setup(&setup, cancel).await
            })
            .await;
        drop(work);
        match worked {
            Err(e) if e.is_fenced() => {
                if !matches!(e, StoreError::LeaseEnding { .. }) {
                    self.metrics.fenced_write();
                }
                tracing::warn!(channel = %channel, error = %error_chain(&e), "stepping down from the channel");
                lead.step_down(channel, epoch, StepDown::Expiring);
                Ok(None)
            }
            other => other,
        }
    }

    /// A new grant's first duty (docs/design.md §14.3): the channel's open
    /// intents of older epochs (a predecessor's, or a run without leases)
    /// are closed as lost, possibly issued: counted against capacity until
    /// a key-ID listing settles them, which the policy then asks for.
    async fn take_over(&self, setup: &ChannelSetup) -> Result<(), StoreError> {
        let now = self.clock.now();
        let lost = self
            .db(move |store| store.close_intents_of_older_epochs(now))
            .await?;
        for intent in &lost {
            tracing::warn!(
                channel = %intent.channel_id,
                group = %intent.group,
                intent = %intent.id,
                started_at = %intent.started_at,
                "taking the channel over: an issuance of the previous leader was in flight; it may have issued a token, which stays counted until LINE's key-ID list settles it"
            );
        }
        tracing::debug!(channel = %setup.id, lost = lost.len(), "took the channel over");
        Ok(())
    }

    /// [`Rotator::work_channel`] for a channel this instance may work.
    async fn work_setup(
        &self,
        setup: &ChannelSetup,
        cancel: &CancellationToken,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        if self.store_suspect.load(Ordering::SeqCst) {
            self.db(Store::check_same_file).await?;
            self.store_suspect.store(false, Ordering::SeqCst);
        }
        let next = {
            // When the work ends, however it ends (an error, a panic, the
            // future dropped), the channel's signing burst is over: its key
            // goes back to DER until it is next due (`SigningKey`'s doc
            // says why).
            let _release = ReleaseKey(setup.signer.as_ref());
            self.work_rounds(setup, cancel).await?
        };
        // LINE's answers of this work carry its Date: judged now, not at
        // the channel's next work an hour later.
        if let Some(skew) = self.line.last_clock_skew() {
            self.metrics.set_clock_skew(skew);
            match self.judge_clock_skew(skew).await {
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %error_chain(&e), "could not record the clock_skew alert");
                }
                Ok(()) => {}
            }
        }
        Ok(Some(next))
    }

    /// Driver rounds until the channel idles; returns when it is next due.
    async fn work_rounds(
        &self,
        setup: &ChannelSetup,
        cancel: &CancellationToken,
    ) -> Result<DateTime<Utc>, StoreError> {
        for _ in 0..MAX_ROUNDS {
            // A reload replaced the setup: the channel is worked again at
            // once with the new one (its key, kid and secret).
            if cancel.is_cancelled() || !self.in_force(setup) {
                return Ok(self.clock.now());
            }
            match self.round(setup, cancel).await {
                Ok(Some(until)) => return Ok(until),
                Ok(None) => {}
                Err(e) if e.is_fatal() || e.is_fenced() => return Err(e),
                Err(e) => {
                    tracing::error!(channel = %setup.id, error = %error_chain(&e), "the store failed; looking at the channel again soon");
                    return Ok(self.clock.now() + STORE_RETRY);
                }
            }
        }
        tracing::warn!(
            channel = %setup.id,
            "{MAX_ROUNDS} steps in a row without settling; looking again shortly"
        );
        Ok(self.clock.now() + Duration::seconds(1))
    }

    /// Works every configured channel once, one after another, and returns
    /// the earliest instant any of them is due again. For tests and tools
    /// that drive the engine without the scheduler.
    ///
    /// # Errors
    /// A fatal store error.
    pub async fn pass(&self, cancel: &CancellationToken) -> Result<DateTime<Utc>, StoreError> {
        let mut next = self.clock.now() + policy::MAX_SLEEP;
        for channel in self.channel_ids() {
            if let Some(at) = self.work_channel(&channel, cancel).await? {
                next = next.min(at);
            }
        }
        Ok(next)
    }

    /// One driver round: `Ok(None)` when something was done (drive again),
    /// `Ok(Some(until))` when the channel idles until `until`.
    async fn round(
        &self,
        setup: &ChannelSetup,
        cancel: &CancellationToken,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let now = self.clock.now();
        let rules = self.rules();
        let mut snapshot = self.snapshot(setup, now).await?;
        // Tokens whose expiry has come are marked expired (an event each)
        // before anything is decided. The policy itself reads expiry from
        // the instant, so this write is only needed when one is due: most
        // rounds skip it.
        let due = snapshot
            .groups
            .iter()
            .flat_map(|(_, tokens)| tokens)
            .any(|t| {
                t.record.state == crate::domain::TokenState::Live && t.record.expires_at <= now
            });
        if due {
            let channel = setup.id.clone();
            let expired = self
                .db(move |store| store.expire_due_in(now, &channel))
                .await?;
            if !expired.is_empty() {
                tracing::info!(channel = %setup.id, key_ids = %policy::joined(&expired), "tokens expired");
                self.emit(RotationEvent::Expired {
                    channel: setup.id.clone(),
                    key_ids: expired,
                });
            }
            snapshot = self.snapshot(setup, now).await?;
        }
        let state = snapshot.state(&setup.id, setup.secret.is_some());
        let decision = policy::drive(now, &state, &rules);
        match decision.next.clone() {
            Next::Execute { group, plan } => {
                // Under `[ha]` issues go one round trip at a time: a
                // takeover holds every group whose issuance it interrupted
                // until LINE's list can settle it (docs/design.md §14.5),
                // and a round journals each next intent before the store
                // has seen the grant's fence again.
                let round = if self.leadership.is_none() {
                    policy::issue_round(now, &state, &rules, group, &plan, MAX_ISSUE_ROUND)
                } else {
                    Vec::new()
                };
                if round.len() > 1 {
                    self.execute_round(setup, &snapshot, &state, &round, cancel)
                        .await?;
                } else {
                    self.execute(setup, &snapshot, &state, group, &plan).await?;
                }
                Ok(None)
            }
            Next::FreeCapacity { group, victims } => {
                self.free_capacity(setup, &snapshot, &state, group, victims)
                    .await?;
                Ok(None)
            }
            Next::Idle { until } => {
                self.report(setup, &snapshot, &state, &decision, now)
                    .await?;
                Ok(Some(until))
            }
        }
    }

    async fn snapshot(
        &self,
        setup: &ChannelSetup,
        now: DateTime<Utc>,
    ) -> Result<Snapshot, StoreError> {
        let channel = setup.id.clone();
        self.db(move |store| Snapshot::read(store, &channel, now))
            .await
    }

    /// Metrics and alerts for a channel at rest: each group's live count,
    /// expiry and next rotation; the alerts its plans raise, the foreign
    /// tokens listed and the issue attempts lost, synced with the store
    /// (which logs each start and end once).
    async fn report(
        &self,
        setup: &ChannelSetup,
        snapshot: &Snapshot,
        state: &policy::ChannelState,
        decision: &Decision,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let live_ours = policy::live_ours(now, &state.groups, TokenKind::V21);
        let live_short = policy::live_ours(now, &state.groups, TokenKind::ShortLived);
        // Listed key IDs of ours that no instance holds (under [ha]:
        // recorded orphans and key IDs adopted as lost), counted apart from
        // the foreign ones.
        let mut lost: u32 = 0;
        let mut alerts: Vec<(Option<GroupName>, Alert)> = Vec::new();
        for (view, plan) in state.groups.iter().zip(&decision.plans) {
            let live = view.live_tokens(now);
            self.metrics.set_group(
                &setup.id,
                &view.group,
                view.kind,
                live.len(),
                view.current(now).map(|t| t.expires_at),
                plan.next_rotation_at,
            );
            alerts.extend(
                plan.alerts
                    .iter()
                    .map(|a| (Some(view.group.clone()), a.clone())),
            );
        }
        alerts.extend(decision.channel_alerts.iter().map(|a| (None, a.clone())));
        // Foreign and lost tokens need the listing's first-seen times and
        // the journal; a channel with neither (the usual case) skips the
        // read.
        if !snapshot.foreign.is_empty() || !snapshot.unsettled.is_empty() {
            let channel = setup.id.clone();
            let since = now - policy::rules::MAX_TOKEN_LIFETIME;
            let (foreign, orphans, attempts) = self
                .db(move |store| {
                    let attempts = store
                        .unknown_outcomes_since(&channel, since)?
                        .into_iter()
                        .map(|(intent, group, started_at)| policy::UnknownOutcome {
                            intent,
                            group,
                            started_at,
                        })
                        .collect::<Vec<_>>();
                    Ok((
                        store.live_foreign_kids(&channel)?,
                        store.orphan_key_ids(&channel)?,
                        attempts,
                    ))
                })
                .await?;
            let settled = snapshot
                .channel
                .as_ref()
                .map_or(0, |c| c.settled_through_intent);
            let listed: Vec<(KeyId, DateTime<Utc>)> = foreign
                .iter()
                .map(|k| (k.key_id.clone(), k.first_seen_at))
                .collect();
            let unheld = policy::Unheld::sort(
                &listed,
                &orphans,
                &attempts,
                settled,
                self.leadership.is_some(),
            );
            lost = u32::try_from(unheld.ours()).unwrap_or(u32::MAX);
            alerts.extend(standing_alerts(&unheld, &attempts, settled));
        }
        self.metrics.set_channel(
            &setup.id,
            live_ours,
            state.view.foreign.saturating_sub(lost),
            lost,
            live_short,
        );
        let mut specs: Vec<(AlertSpec, Alert)> = Vec::new();
        for (group, alert) in alerts {
            let spec = alert_spec(group, &alert);
            if !specs.iter().any(|(s, _)| {
                s.alertname == spec.alertname && s.group == spec.group && s.label == spec.label
            }) {
                specs.push((spec, alert));
            }
        }
        // A reload that removed the channel meanwhile resolved its alerts;
        // stating them now would raise them again with nobody to end them.
        if self.setup(&setup.id).is_none() {
            return Ok(());
        }
        let channel = setup.id.clone();
        let wanted: Vec<AlertSpec> = specs.iter().map(|(s, _)| s.clone()).collect();
        let changes = self
            .db(move |store| {
                let scope = AlertScope {
                    channel: Some(&channel),
                    group: None,
                    names: ENGINE_ALERTS,
                };
                store.sync_alerts(now, scope, &wanted)
            })
            .await?;
        for raised in &changes.raised {
            let group = raised.group.as_ref().map_or("-", GroupName::as_str);
            if raised.severity == "critical" {
                tracing::error!(channel = %setup.id, group, alert = raised.alertname, "CRITICAL: {}", raised.summary);
            } else {
                tracing::warn!(channel = %setup.id, group, alert = raised.alertname, "{}", raised.summary);
            }
            if let (Some(g), Some((_, alert))) = (
                raised.group.as_ref(),
                specs.iter().find(|(s, _)| {
                    s.alertname == raised.alertname
                        && s.group == raised.group
                        && s.label == raised.label
                }),
            ) {
                self.emit(RotationEvent::Alert {
                    channel: setup.id.clone(),
                    group: g.clone(),
                    alert: alert.clone(),
                });
            }
        }
        for resolved in &changes.resolved {
            tracing::info!(channel = %setup.id, alert = %resolved.fingerprint, "alert resolved");
        }
        Ok(())
    }

    /// Raises or resolves the daemon-wide `clock_skew` alert for the
    /// latest skew LINE's answers showed ([`policy::clock_skew_fires`]).
    /// Writes only when the judgement changes.
    async fn judge_clock_skew(&self, skew: Duration) -> Result<(), StoreError> {
        let mut judged = self.skew_firing.lock().await;
        let known = *judged;
        let was = match known {
            Some(was) => was,
            None => self
                .db(|store| store.firing_alerts())
                .await?
                .iter()
                .any(|a| a.channel_id.is_none() && a.alertname == CLOCK_SKEW),
        };
        let fires = policy::clock_skew_fires(skew, was);
        if known == Some(fires) {
            return Ok(());
        }
        let now = self.clock.now();
        let summary = fires.then(|| {
            format!(
                "this machine's clock is {} s {} LINE's (from the Date of LINE's answers); \
                 rotations and deadlines are computed on the local clock: check NTP",
                skew.num_seconds().abs(),
                if skew > Duration::zero() {
                    "ahead of"
                } else {
                    "behind"
                }
            )
        });
        let changes = self
            .db(move |store| store.set_daemon_warning(now, CLOCK_SKEW, summary))
            .await?;
        for raised in &changes.raised {
            tracing::warn!(alert = raised.alertname, "{}", raised.summary);
        }
        if !changes.resolved.is_empty() {
            tracing::info!(alert = CLOCK_SKEW, "the clock agrees with LINE's again");
        }
        *judged = Some(fires);
        Ok(())
    }

    fn emit(&self, event: RotationEvent) {
        // No receiver is fine: nobody is listening (e.g. `plan`).
        let _ = self.events.send(event);
    }

    /// A uniform random number in `[0, 1)` for full-jitter backoff.
    fn jitter(&self) -> f64 {
        self.rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .random::<f64>()
    }

    /// Runs a store call off the async runtime (both backends block).
    /// Inside a led channel's work the store is fenced with its grant.
    async fn db<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        match WORK_FENCE.try_with(Clone::clone) {
            Ok(fence) => self.store.fenced(fence).blocking(f).await,
            Err(_) => self.store.blocking(f).await,
        }
    }

    /// Under `[ha]`, inside a led channel's work: refuses a LINE call the
    /// grant has too little time left for ([`Leadership::may_call_line`]).
    /// Without leases every call is allowed.
    ///
    /// # Errors
    /// [`StoreError::LeaseEnding`]: step down.
    fn line_allowed(&self, channel: &ChannelId) -> Result<(), StoreError> {
        let (Some(lead), Ok(epoch)) = (&self.leadership, WORK_FENCE.try_with(|f| f.epoch)) else {
            return Ok(());
        };
        if lead.may_call_line(channel, epoch) {
            Ok(())
        } else {
            Err(StoreError::LeaseEnding {
                channel: channel.clone(),
            })
        }
    }

    /// The leadership, under `[ha]`.
    pub fn leadership(&self) -> Option<&Arc<Leadership>> {
        self.leadership.as_ref()
    }
}

/// The daemon-wide alert for a local clock far from LINE's.
pub const CLOCK_SKEW: &str = "clock_skew";

/// Every alert name the rotator raises and resolves on a channel (its
/// scope in [`Store::sync_alerts`]): the policy's, `foreign_token` and
/// `lost_token`.
pub const ENGINE_ALERTS: &[&str] = &[
    "no_live_token",
    "deadline_at_risk",
    "capacity_exhausted",
    "issue_budget_exhausted",
    "rotation_failing",
    "too_many_live",
    "reconcile_failing",
    "channel_full",
    "revoke_needs_secret",
    "capacity_low",
    "foreign_token",
    "lost_token",
    "short_lived_evicted",
];

/// Releases a channel's parsed signing key when dropped.
struct ReleaseKey<'a>(Option<&'a AssertionSigner>);

impl Drop for ReleaseKey<'_> {
    fn drop(&mut self) {
        if let Some(signer) = self.0 {
            signer.release_key();
        }
    }
}

/// The stable name of an alert, the part of its fingerprint after the
/// channel and group.
pub fn alert_name(alert: &Alert) -> &'static str {
    match alert {
        Alert::NoLiveToken { .. } => "no_live_token",
        Alert::ExpiresBeforeSuccessor { .. } => "deadline_at_risk",
        Alert::NoCapacity { .. } => "capacity_exhausted",
        Alert::RateLimited { .. } => "issue_budget_exhausted",
        Alert::PermanentFailure { .. } => "rotation_failing",
        Alert::TooManyLive { .. } => "too_many_live",
        Alert::ReconcileFailing { .. } => "reconcile_failing",
        Alert::ChannelFull { .. } => "channel_full",
        Alert::RevokeNeedsSecret { .. } => "revoke_needs_secret",
        Alert::CapacityLow { .. } => "capacity_low",
        Alert::ForeignToken { .. } => "foreign_token",
        Alert::LostToken { .. } => "lost_token",
        Alert::ShortLivedEvicted { .. } => "short_lived_evicted",
    }
}

/// The alerts a channel's listing and journal raise by themselves: one
/// per foreign key ID listed, and `lost_token` for each group whose issue
/// attempts of unknown outcome may have left a token
/// ([`policy::lost_tokens`], over the listed key IDs that are not recorded
/// orphans). A key ID `unheld` adopted as lost (under `[ha]`) is reported
/// by `lost_token` only, never as foreign (docs/design.md §14.3).
pub fn standing_alerts(
    unheld: &policy::Unheld,
    attempts: &[policy::UnknownOutcome],
    settled_through: i64,
) -> Vec<(Option<GroupName>, Alert)> {
    let lost = policy::lost_tokens(attempts, settled_through, &unheld.candidates);
    let mut out: Vec<(Option<GroupName>, Alert)> = unheld
        .foreign()
        .map(|key_id| {
            (
                None,
                Alert::ForeignToken {
                    key_id: key_id.clone(),
                },
            )
        })
        .collect();
    out.extend(lost.into_iter().map(|(g, alert)| (Some(g), alert)));
    out
}

/// An alert as the store keeps it: its name, severity, sentence and, for a
/// foreign token, the `key_id` label that tells it from the channel's
/// others.
pub fn alert_spec(group: Option<GroupName>, alert: &Alert) -> AlertSpec {
    let label = match alert {
        Alert::ForeignToken { key_id } => Some(AlertLabel {
            name: "key_id",
            value: key_id.to_string(),
        }),
        _ => None,
    };
    AlertSpec {
        group,
        label,
        alertname: alert_name(alert),
        severity: match alert.severity() {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
        },
        summary: describe_alert(alert),
    }
}

/// An operator-facing sentence for an alert.
pub fn describe_alert(alert: &Alert) -> String {
    // The sentences live with the policy's other words (`policy::words`).
    alert.to_string()
}

/// A short phrase for logs, status and the event history.
pub fn revoke_reason_text(reason: policy::RevokeReason) -> &'static str {
    reason.text()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ForeignKid;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn kid(key: &str, first_seen: i64) -> ForeignKid {
        ForeignKid {
            channel_id: ChannelId::new("1"),
            key_id: KeyId::new(key),
            first_seen_at: t(first_seen),
            last_seen_at: t(first_seen),
            gone_at: None,
        }
    }

    fn names(alerts: &[(Option<GroupName>, Alert)]) -> Vec<&'static str> {
        alerts.iter().map(|(_, a)| alert_name(a)).collect()
    }

    #[test]
    fn under_ha_a_key_id_a_lost_attempt_could_have_made_is_lost_not_foreign() {
        // A possibly-issued attempt at 10; key "late" first listed at 20
        // (it could be the attempt's), key "early" at 5 (it cannot).
        let attempts = [policy::UnknownOutcome {
            intent: 7,
            group: GroupName::new("g"),
            started_at: t(10),
        }];
        let foreign = [kid("early", 5), kid("late", 20)];
        let alerts = |attempts: &[policy::UnknownOutcome], adopt: bool| {
            let listed: Vec<(KeyId, DateTime<Utc>)> = foreign
                .iter()
                .map(|k| (k.key_id.clone(), k.first_seen_at))
                .collect();
            let unheld = policy::Unheld::sort(&listed, &[], attempts, 7, adopt);
            standing_alerts(&unheld, attempts, 7)
        };
        let single = alerts(&attempts, false);
        assert_eq!(
            names(&single),
            ["foreign_token", "foreign_token", "lost_token"]
        );
        let ha = alerts(&attempts, true);
        assert_eq!(names(&ha), ["foreign_token", "lost_token"]);
        assert!(matches!(&ha[0].1, Alert::ForeignToken { key_id } if key_id.as_str() == "early"));
        // Without a lost attempt nothing is adopted.
        let none = alerts(&[], true);
        assert_eq!(names(&none), ["foreign_token", "foreign_token"]);
    }
}
