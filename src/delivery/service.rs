//! The delivery service: keeps the [`TokenBook`] current and pushes every
//! change to the group's sinks and hook.
//!
//! It listens to the rotator's events. An `Issued` event arrives only after
//! the token is durably stored (invariant 6), so everything here publishes
//! stored tokens only. Sinks are written on the blocking pool; each hook
//! runs in its own task, so a slow or hanging hook never delays another
//! group, the rotator, or the next sink write. A newer token cancels the
//! retries of an older token's hook: only the current token is worth
//! announcing.
//!
//! At start the book is filled from the store, the temporary files a
//! killed writer left next to the configured sinks are removed, and every
//! sink rewritten (a tmpfs may be empty after a reboot).
//!
//! # Failing sinks
//!
//! A sink write that fails (a read-only directory, a directory where the
//! file should be, a full disk) is retried on the injected clock with
//! backoff ([`SinkRetry`]: 1 s, doubling, at most 5 min) until it succeeds,
//! so a fixed directory gets the current token within minutes, not at the
//! next rotation. Each group's sink state ([`SinkHealth`]) is kept in a
//! `watch` channel that readiness reads; every write round is counted in
//! the metrics (`linetokd_sink_failures_total`,
//! `linetokd_sink_last_success_timestamp_seconds`) and recorded as a store
//! note under [`sink_note_key`], which `linetokd status` (another process)
//! reads. Writes of one group's sinks are serialised, and read the book
//! inside that lock, so a retry can never put an older token over a newer
//! one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::hook::{self, HookOutcome, HookReport, HookRetry, HookRun, HookSpec};
use super::published::{GroupTokens, PublishedToken, TokenBook};
use super::sink::{self, SinkContext, SinkSpec};
use crate::clock::SharedClock;
use crate::domain::{ChannelId, GroupName, KeyId};
use crate::event::RotationEvent;
use crate::metrics::Metrics;
use crate::store::{
    AlertLabel, AlertRecord, AlertScope, AlertSpec, EventKind, NewEvent, Scope, Store, StoreError,
    sink_note_key,
};

/// A listening connection (kept open while it is held) and the payloads
/// of its notifications.
type Listener = (tokio_postgres::Client, tokio::sync::mpsc::Receiver<String>);

/// Whether this instance leads a channel now ([`Delivery::follow`] leaves
/// those to the rotator's events).
pub type LedHere = Arc<dyn Fn(&ChannelId) -> bool + Send + Sync>;

/// Where one group's token goes.
#[derive(Debug, Clone, Default)]
pub struct GroupDelivery {
    /// Files to keep current.
    pub sinks: Vec<SinkSpec>,
    /// The program to run after each rotation.
    pub hook: Option<HookSpec>,
}

/// Key of a group.
type GroupKey = (ChannelId, GroupName);

/// What no group's delivery is: no sink, no hook.
static NOTHING: GroupDelivery = GroupDelivery {
    sinks: Vec::new(),
    hook: None,
};

/// A configured group's delivery as the service keeps it: boxed, and
/// nothing at all for a group with neither sink nor hook (most groups of a
/// large config are served through the token API only). The table holds an
/// entry per configured group; this keeps each at one word instead of a
/// whole [`GroupDelivery`] (about 100 bytes per group at 100,000 groups).
struct Configured(Option<Box<GroupDelivery>>);

impl Configured {
    fn new(delivery: GroupDelivery) -> Self {
        if delivery.sinks.is_empty() && delivery.hook.is_none() {
            Self(None)
        } else {
            Self(Some(Box::new(delivery)))
        }
    }

    fn into_inner(self) -> GroupDelivery {
        self.0.map_or_else(GroupDelivery::default, |d| *d)
    }

    /// Every group's delivery, as kept.
    fn table(groups: HashMap<GroupKey, GroupDelivery>) -> HashMap<GroupKey, Self> {
        groups
            .into_iter()
            .map(|(key, delivery)| (key, Self::new(delivery)))
            .collect()
    }
}

impl std::ops::Deref for Configured {
    type Target = GroupDelivery;

    fn deref(&self) -> &GroupDelivery {
        self.0.as_deref().unwrap_or(&NOTHING)
    }
}

/// How far apart failed sink writes are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkRetry {
    /// The wait after the first failed round; it doubles after each further
    /// one.
    pub base: Duration,
    /// The longest wait.
    pub cap: Duration,
}

impl Default for SinkRetry {
    /// 1 s, doubling, at most 5 min: a directory fixed by hand gets the
    /// token within minutes, and a sink broken for days costs one attempt
    /// every 5 minutes.
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(300),
        }
    }
}

impl SinkRetry {
    /// The wait after the `rounds`-th failed round in a row (counting from
    /// 1): `base * 2^(rounds-1)`, at most `cap`.
    pub fn delay_after(&self, rounds: u32) -> Duration {
        let doublings = rounds.saturating_sub(1).min(31);
        self.base
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.cap)
            .min(self.cap)
    }
}

/// A sink whose last write failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailingSink {
    /// The sink file.
    pub path: PathBuf,
    /// Why the last write failed (names the path and step, never a token).
    pub error: String,
    /// When it started failing.
    pub since: DateTime<Utc>,
    /// Write rounds this sink failed in a row. It can be fewer than the
    /// group's [`SinkHealth::failed_rounds`]: a sink added (or broken)
    /// while another already failed starts at 1.
    pub rounds: u32,
}

/// How a group's sinks stand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkHealth {
    /// The sinks whose last write failed; empty when all are current.
    pub failing: Vec<FailingSink>,
    /// When every sink of the group was last written.
    pub last_success: Option<DateTime<Utc>>,
    /// Write rounds failed in a row (the backoff's exponent); 0 when the
    /// last round succeeded.
    pub failed_rounds: u32,
    /// When the failing sinks are tried again.
    pub next_retry: Option<DateTime<Utc>>,
    /// Write rounds done since start, failed or not.
    pub rounds: u64,
}

/// Every group's [`SinkHealth`], by channel and group.
pub type SinkBoard = BTreeMap<(ChannelId, GroupName), SinkHealth>;

/// Publishes tokens to sinks and hooks.
pub struct Delivery {
    book: TokenBook,
    store: Store,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    hook_retry: HookRetry,
    sink_retry: SinkRetry,
    /// Each group's sink state; readiness and tests watch it.
    sinks: watch::Sender<SinkBoard>,
    /// Groups with a running sink retry task. Checked together with
    /// `sinks` under this lock, so a failure is never left without one.
    retrying: Mutex<HashSet<GroupKey>>,
    /// One lock per group: its sink writes never overlap.
    write_locks: Mutex<HashMap<GroupKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Whether the stale temporaries were cleaned up (once, at start).
    cleaned: AtomicBool,
    /// Stops the retry tasks when the service stops.
    stop: CancellationToken,
    /// The configured groups' delivery, replaced on reload.
    groups: RwLock<HashMap<GroupKey, Configured>>,
    /// Groups that left the config: their sinks go once their tokens do.
    removed: Mutex<HashMap<GroupKey, GroupDelivery>>,
    /// The running hook of each group, to cancel when a newer token comes.
    hooks: Mutex<HashMap<GroupKey, CancellationToken>>,
    tasks: TaskTracker,
}

impl Delivery {
    /// A delivery service for `groups`, publishing into `book`.
    pub fn new(
        book: TokenBook,
        store: Store,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        groups: HashMap<GroupKey, GroupDelivery>,
        hook_retry: HookRetry,
    ) -> Arc<Self> {
        Arc::new(Self {
            book,
            store,
            clock,
            metrics,
            hook_retry,
            sink_retry: SinkRetry::default(),
            sinks: watch::Sender::new(SinkBoard::new()),
            retrying: Mutex::new(HashSet::new()),
            write_locks: Mutex::new(HashMap::new()),
            cleaned: AtomicBool::new(false),
            stop: CancellationToken::new(),
            groups: RwLock::new(Configured::table(groups)),
            removed: Mutex::new(HashMap::new()),
            hooks: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
        })
    }

    /// The book this service keeps.
    pub fn book(&self) -> &TokenBook {
        &self.book
    }

    /// Every group's sink state, updated after each write round.
    pub fn sink_health(&self) -> watch::Receiver<SinkBoard> {
        self.sinks.subscribe()
    }

    /// One sentence per sink whose last write failed, naming the group, the
    /// path and the error: what `/readyz` reports.
    pub fn failing_sinks(&self) -> Vec<String> {
        let board = self.sinks.borrow();
        board
            .iter()
            .flat_map(|((channel, group), health)| {
                health.failing.iter().map(move |f| {
                    format!(
                        "{channel}/{group}: the sink {} is failing since {}: {}",
                        f.path.display(),
                        f.since.to_rfc3339_opts(SecondsFormat::Secs, true),
                        f.error
                    )
                })
            })
            .collect()
    }

    /// Fills the book from the store's live tokens and rewrites every sink;
    /// the first time, removes first the temporary files a killed writer
    /// left next to the configured sinks.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn load(self: &Arc<Self>) -> Result<(), StoreError> {
        if !self.cleaned.swap(true, Ordering::SeqCst) {
            self.remove_stale_temporaries().await;
        }
        let loaded = self.read_live().await?;
        for (channel, group, tokens) in loaded {
            let has_current = tokens.current.is_some();
            self.book.update(&channel, &group, |_| tokens);
            if has_current {
                self.write_sinks(&channel, &group).await;
            }
        }
        self.resolve_stale_alerts().await;
        Ok(())
    }

    /// Every configured group's live tokens in the store, newest first,
    /// read in one query.
    async fn read_live(&self) -> Result<Vec<(ChannelId, GroupName, GroupTokens)>, StoreError> {
        let now = self.clock.now();
        let keys: HashSet<GroupKey> = self.read_groups().keys().cloned().collect();
        self.store
            .blocking(move |store| -> Result<_, StoreError> {
                // One query for every group's live tokens, not one per group:
                // at 100,000 groups that is the difference between a start in
                // a moment and one in many seconds.
                let mut live: HashMap<GroupKey, Vec<PublishedToken>> =
                    HashMap::with_capacity(keys.len());
                for t in store.live_tokens_in(Scope::All)? {
                    // A refused token (LINE's verify refused it, or an
                    // incident condemned it) is still counted but never
                    // handed out: not after a restart or reload either.
                    if !t.record.is_usable_at(now) {
                        continue;
                    }
                    let key = (t.channel_id, t.group);
                    if !keys.contains(&key) {
                        continue;
                    }
                    live.entry(key).or_default().push(PublishedToken {
                        key_id: t.record.key_id,
                        token: t.value,
                        issued_at: t.record.issued_at,
                        expires_at: t.record.expires_at,
                    });
                }
                let mut out = Vec::with_capacity(keys.len());
                for (channel, group) in keys {
                    let mut live = live
                        .remove(&(channel.clone(), group.clone()))
                        .unwrap_or_default();
                    live.sort_by_key(|t| std::cmp::Reverse((t.issued_at, t.expires_at)));
                    let mut live = live.into_iter();
                    let tokens = GroupTokens {
                        current: live.next(),
                        previous: live.next().map(Box::new),
                    };
                    out.push((channel, group, tokens));
                }
                Ok(out)
            })
            .await
    }

    /// Under `[ha]` another instance may lead a channel: what it stores
    /// reaches this instance's book, sinks and hooks only through the
    /// shared store. Every `every` the store's live tokens are compared
    /// with the book; a group whose current token changed is published as
    /// after an issue here (sinks, then its hook), one whose older tokens
    /// changed gets its sinks rewritten. A group this instance published
    /// itself already matches and costs nothing. Runs until `shutdown`.
    pub async fn follow(
        self: Arc<Self>,
        every: Duration,
        led_here: LedHere,
        shutdown: CancellationToken,
    ) {
        // Writers on PostgreSQL announce each change (`NOTIFY`); a
        // notification only hastens the look, which happens every `every`
        // anyway: notifications are lost while the listening connection
        // is down, and it is opened again at the next look.
        let mut listener: Option<Listener> = None;
        loop {
            if listener.is_none() {
                listener = self.listen().await;
            }
            let heard = async {
                match listener.as_mut() {
                    Some((_, told)) => told.recv().await.is_some(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
                alive = heard => {
                    if !alive {
                        tracing::debug!("the notification connection ended; looking at the store every tick until it is back");
                        listener = None;
                    }
                }
            }
            // Everything announced so far is read by this one look.
            if let Some((_, told)) = listener.as_mut() {
                while told.try_recv().is_ok() {}
            }
            if let Err(e) = self.refresh(&led_here).await {
                tracing::warn!(error = %crate::logging::error_chain(&e), "could not read the shared store's tokens; trying again");
            }
        }
    }

    /// Listens for the writers' change notifications, when the store is
    /// PostgreSQL and the connection opens.
    async fn listen(&self) -> Option<Listener> {
        let ops = self.store.lease_ops()?;
        match ops
            .run(|pool| async move { pool.listen(crate::store::CHANGED_NOTIFICATION).await })
            .await
        {
            Ok(listener) => Some(listener),
            Err(e) => {
                tracing::warn!(error = %crate::logging::error_chain(&e), "cannot listen for the other instances' changes; looking at the store every tick");
                None
            }
        }
    }

    /// One comparison of the store with the book ([`Self::follow`]).
    async fn refresh(self: &Arc<Self>, led_here: &LedHere) -> Result<(), StoreError> {
        for (channel, group, stored) in self.read_live().await? {
            // The leader publishes from its own events, in order; reading
            // the store too could run a hook twice.
            if led_here(&channel) {
                continue;
            }
            let before = self.book.get(&channel, &group);
            let key_of = |t: Option<&PublishedToken>| t.map(|t| t.key_id.clone());
            if key_of(before.current.as_ref()) == key_of(stored.current.as_ref())
                && key_of(before.previous.as_deref()) == key_of(stored.previous.as_deref())
            {
                continue;
            }
            let new_current = key_of(before.current.as_ref()) != key_of(stored.current.as_ref());
            let current = stored.current.clone();
            self.book.update(&channel, &group, |_| stored);
            if let Some(current) = current {
                self.write_sinks(&channel, &group).await;
                if new_current {
                    tracing::info!(channel = %channel, group = %group, key_id = %current.key_id, "published a token another instance stored");
                    self.start_hook(&channel, &group, current);
                }
            }
        }
        Ok(())
    }

    /// Removes the temporary files of every configured sink that a writer
    /// killed mid-write left behind (each holds a token).
    async fn remove_stale_temporaries(&self) {
        let specs: Vec<SinkSpec> = self
            .read_groups()
            .values()
            .flat_map(|d| d.sinks.iter().cloned())
            .collect();
        let outcome = tokio::task::spawn_blocking(move || {
            specs
                .iter()
                .map(|spec| (spec.path.clone(), sink::remove_stale_temporaries(spec)))
                .collect::<Vec<_>>()
        })
        .await;
        for (path, result) in outcome.unwrap_or_default() {
            match result {
                Ok(removed) => {
                    for leftover in removed {
                        tracing::warn!(sink = %path.display(), leftover = %leftover.display(), "removed a temporary sink file an interrupted write left behind");
                    }
                }
                Err(e) => {
                    tracing::error!(sink = %path.display(), error = %e, "could not remove the temporary files an interrupted write left");
                }
            }
        }
    }

    /// Replaces the configured groups (config reload). Groups no longer
    /// configured keep their sinks until their tokens are gone. A group
    /// whose sinks changed gets them written now, not at its next rotation.
    pub fn set_groups(self: &Arc<Self>, groups: HashMap<GroupKey, GroupDelivery>) {
        let mut changed = Vec::new();
        {
            let mut current = self.groups.write().unwrap_or_else(PoisonError::into_inner);
            let mut removed = self.removed.lock().unwrap_or_else(PoisonError::into_inner);
            for (key, delivery) in groups.iter() {
                let before = current.get(key).map(|d| &d.sinks);
                if before != Some(&delivery.sinks) && !delivery.sinks.is_empty() {
                    changed.push(key.clone());
                }
            }
            for (key, delivery) in current.drain() {
                if !groups.contains_key(&key) {
                    removed.insert(key, delivery.into_inner());
                }
            }
            for key in groups.keys() {
                removed.remove(key);
            }
            *current = Configured::table(groups);
        }
        for (channel, group) in changed {
            if self.book.get(&channel, &group).current.is_none() {
                continue;
            }
            let this = Arc::clone(self);
            self.tasks
                .spawn(async move { this.write_sinks(&channel, &group).await });
        }
        let this = Arc::clone(self);
        self.tasks
            .spawn(async move { this.resolve_stale_alerts().await });
    }

    /// Applies events until `shutdown`, then waits for running hooks to
    /// stop (they are cancelled).
    pub async fn run(
        self: Arc<Self>,
        mut events: broadcast::Receiver<RotationEvent>,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                event = events.recv() => match event {
                    Ok(event) => self.apply(event).await,
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "delivery fell behind the rotator; reloading from the store");
                        if let Err(e) = self.load().await {
                            tracing::error!(error = %crate::logging::error_chain(&e), "reloading published tokens failed");
                        }
                    }
                    Err(RecvError::Closed) => break,
                },
            }
        }
        for token in self.lock_hooks().values() {
            token.cancel();
        }
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    async fn apply(self: &Arc<Self>, event: RotationEvent) {
        match event {
            RotationEvent::Issued {
                channel,
                group,
                key_id,
                token,
                issued_at,
                expires_at,
                condemned,
                ..
            } => {
                let now = self.clock.now();
                let published = PublishedToken {
                    key_id,
                    token,
                    issued_at,
                    expires_at,
                };
                // A token the issue condemned (a leaked one an incident
                // could not revoke) goes in the same update: it is never
                // the previous token, not even between two writes.
                self.book.update(&channel, &group, |g| {
                    condemned
                        .iter()
                        .fold(g.with_new(published.clone(), now), |g, key_id| {
                            g.without(key_id)
                        })
                });
                self.write_sinks(&channel, &group).await;
                self.start_hook(&channel, &group, published);
            }
            RotationEvent::Revoked {
                channel,
                group,
                key_id,
                ..
            } => self.drop_token(&channel, Some(&group), &key_id).await,
            RotationEvent::Expired { channel, key_ids } => {
                for key_id in &key_ids {
                    self.drop_token(&channel, None, key_id).await;
                }
            }
            RotationEvent::Gone {
                channel, key_id, ..
            } => self.drop_token(&channel, None, &key_id).await,
            RotationEvent::ForeignSeen { .. }
            | RotationEvent::Failed { .. }
            | RotationEvent::ListingFailed { .. }
            | RotationEvent::Alert { .. } => {}
        }
    }

    /// Takes a token out of the book (and the sinks) of whichever group
    /// holds it.
    async fn drop_token(
        self: &Arc<Self>,
        channel: &ChannelId,
        group: Option<&GroupName>,
        key_id: &KeyId,
    ) {
        let holders: Vec<GroupName> = self
            .book
            .groups()
            .into_iter()
            .filter(|(c, g)| c == channel && group.is_none_or(|want| want == g))
            .map(|(_, g)| g)
            .filter(|g| {
                let tokens = self.book.get(channel, g);
                [tokens.current, tokens.previous.map(|p| *p)]
                    .iter()
                    .flatten()
                    .any(|t| &t.key_id == key_id)
            })
            .collect();
        for group in holders {
            let after = self.book.update(channel, &group, |g| g.without(key_id));
            let removed = self
                .removed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains_key(&(channel.clone(), group.clone()));
            if removed && after.current.is_none() {
                self.retire(channel, &group).await;
            } else if after.current.is_some() {
                self.write_sinks(channel, &group).await;
            }
        }
    }

    /// A removed group's last token is gone: delete its sinks and forget it.
    async fn retire(&self, channel: &ChannelId, group: &GroupName) {
        let key = (channel.clone(), group.clone());
        let delivery = self
            .removed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
        self.book.remove(channel, group);
        if let Some(token) = self.lock_hooks().remove(&key) {
            token.cancel();
        }
        // Under the group's write lock: a retry round in flight finishes
        // first, so it can neither put the group's state (and a
        // `sink_failing` alert) back after this, nor write a sink after it
        // is deleted. A later round finds no sinks and nothing to write.
        let lock = self.write_lock(&key);
        {
            let _serialised = lock.lock().await;
            self.retire_locked(channel, group, &key, delivery).await;
        }
        self.release_write_lock(&key, lock);
    }

    /// [`Self::retire`]'s work under the group's write lock.
    async fn retire_locked(
        &self,
        channel: &ChannelId,
        group: &GroupName,
        key: &GroupKey,
        delivery: Option<GroupDelivery>,
    ) {
        // Its retry task (if any) sees no failure left and ends.
        self.sinks.send_modify(|board| {
            board.remove(key);
        });
        self.metrics.remove_sinks(channel, group);
        for name in [SINK_FAILING, HOOK_FAILING] {
            self.sync_group_alerts(channel, group, name, |_| Vec::new())
                .await;
        }
        let Some(delivery) = delivery else { return };
        let result = tokio::task::spawn_blocking(move || {
            delivery
                .sinks
                .iter()
                .map(|spec| sink::remove(spec).map(|()| spec.path.clone()))
                .collect::<Vec<_>>()
        })
        .await;
        for outcome in result.unwrap_or_default() {
            match outcome {
                Ok(path) => {
                    tracing::info!(channel = %channel, group = %group, path = %path.display(), "sink of a removed group deleted");
                }
                Err(e) => {
                    tracing::warn!(channel = %channel, group = %group, error = %e, "could not delete a removed group's sink");
                }
            }
        }
    }

    /// Rewrites every sink of a group from the book and, when a write
    /// fails, makes sure a retry task runs for the group.
    async fn write_sinks(self: &Arc<Self>, channel: &ChannelId, group: &GroupName) {
        let key = (channel.clone(), group.clone());
        self.write_round(&key).await;
        self.ensure_retry(&key);
    }

    /// The sinks of a configured group, or of a removed one still
    /// publishing its last tokens.
    fn sinks_of(&self, key: &GroupKey) -> Vec<SinkSpec> {
        let configured = self.read_groups().get(key).map(|d| d.sinks.clone());
        configured.unwrap_or_else(|| {
            self.removed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(key)
                .map(|d| d.sinks.clone())
                .unwrap_or_default()
        })
    }

    /// One write round: every sink of the group from the book, under the
    /// group's write lock; then the group's [`SinkHealth`], metrics and
    /// status note are updated.
    async fn write_round(&self, key: &GroupKey) {
        let lock = self.write_lock(key);
        {
            let _serialised = lock.lock().await;
            self.write_round_locked(key).await;
        }
        self.release_write_lock(key, lock);
    }

    /// [`Self::write_round`]'s work under the group's write lock.
    async fn write_round_locked(&self, key: &GroupKey) {
        let (channel, group) = key;
        let sinks = self.sinks_of(key);
        // Read inside the lock: a round that started later never writes
        // an older token than one that started earlier.
        let tokens = self.book.get(channel, group);
        if sinks.is_empty() || tokens.current.is_none() {
            // Nothing to deliver (no sink, or the last token went): any
            // failure is moot; the next token writes afresh. Its alerts go
            // too (before the board changes, as below), or a sink dropped
            // from the config would stay `sink_failing` for good.
            let was_failing = self
                .sinks
                .borrow()
                .get(key)
                .is_some_and(|h| !h.failing.is_empty());
            if was_failing {
                self.sync_group_alerts(channel, group, SINK_FAILING, |_| Vec::new())
                    .await;
            }
            self.sinks
                .send_if_modified(|board| board.remove(key).is_some());
            return;
        }
        // The token the sinks now hold, for the log: never its value.
        let key_id = tokens.current.as_ref().map(|t| t.key_id.to_string());
        let paths: Vec<PathBuf> = sinks.iter().map(|s| s.path.clone()).collect();
        let written = {
            let key = key.clone();
            tokio::task::spawn_blocking(move || {
                let (channel, group) = key;
                let ctx = SinkContext {
                    channel: &channel,
                    group: &group,
                    tokens: &tokens,
                };
                sinks
                    .iter()
                    .map(|spec| (spec.path.clone(), sink::write(spec, &ctx)))
                    .collect::<Vec<_>>()
            })
            .await
        };
        let results: Vec<(PathBuf, Result<(), String>)> = match written {
            Ok(results) => results
                .into_iter()
                .map(|(path, r)| (path, r.map_err(|e| e.to_string())))
                .collect(),
            // The writer panicked: nothing is known to be written.
            Err(e) => paths
                .into_iter()
                .map(|path| (path, Err(format!("the sink writer stopped: {e}"))))
                .collect(),
        };
        let now = self.clock.now();
        let mut failed = Vec::new();
        for (path, result) in results {
            match result {
                Ok(()) => {
                    tracing::debug!(channel = %channel, group = %group, key_id = key_id.as_deref(), path = %path.display(), "sink written");
                }
                Err(error) => {
                    tracing::error!(channel = %channel, group = %group, key_id = key_id.as_deref(), path = %path.display(), error = %error, "writing a sink failed; retrying with backoff");
                    failed.push((path, error));
                }
            }
        }
        // This group's entry changes only here, under its lock: compute it,
        // record it (metrics, the status note), then publish it, so whoever
        // watches the health finds the note and metrics already current.
        let mut health = self.sinks.borrow().get(key).cloned().unwrap_or_default();
        health.rounds += 1;
        if failed.is_empty() {
            if health.failed_rounds > 0 {
                tracing::info!(channel = %channel, group = %group, "every sink written again");
            }
            health.failing.clear();
            health.failed_rounds = 0;
            health.next_retry = None;
            health.last_success = Some(now);
        } else {
            health.failed_rounds = health.failed_rounds.saturating_add(1);
            let before = std::mem::take(&mut health.failing);
            health.failing = failed
                .iter()
                .map(|(path, error)| {
                    let earlier = before.iter().find(|f| &f.path == path);
                    FailingSink {
                        path: path.clone(),
                        error: error.clone(),
                        since: earlier.map_or(now, |f| f.since),
                        rounds: earlier.map_or(1, |f| f.rounds.saturating_add(1)),
                    }
                })
                .collect();
            let wait = self.sink_retry.delay_after(health.failed_rounds);
            health.next_retry = Some(
                chrono::Duration::from_std(wait)
                    .ok()
                    .and_then(|w| now.checked_add_signed(w))
                    .unwrap_or(DateTime::<Utc>::MAX_UTC),
            );
        }
        if failed.is_empty() {
            self.metrics.sinks_written(channel, group, now);
        } else {
            self.metrics.sink_failures(
                channel,
                group,
                u64::try_from(failed.len()).unwrap_or(u64::MAX),
            );
        }
        let note = note_text(&health);
        let store = self.store.clone();
        let note_key = sink_note_key(channel, group);
        let result = store
            .blocking(move |s| s.set_note(now, &note_key, &note))
            .await;
        if let Err(e) = result {
            tracing::warn!(channel = %channel, group = %group, error = %e, "could not record the sinks' state for status");
        }
        // A group that left the config is still written while it holds
        // tokens, but raises nothing new: the config no longer asks for it.
        let configured = self.read_groups().contains_key(key);
        let (g, failing) = (group.clone(), health.failing.clone());
        self.sync_group_alerts(channel, group, SINK_FAILING, move |firing| {
            if configured {
                sink_alerts(&g, &failing, firing)
            } else {
                Vec::new()
            }
        })
        .await;
        self.sinks.send_modify(|board| {
            board.insert(key.clone(), health);
        });
    }

    /// The lock that serialises the group's sink writes. It exists only
    /// while someone holds or awaits it ([`Self::release_write_lock`]): a
    /// lock per configured group, kept for good, was 150 bytes per group.
    fn write_lock(&self, key: &GroupKey) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(
            self.write_locks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(key.clone())
                .or_default(),
        )
    }

    /// Gives back the group's write lock taken with [`Self::write_lock`]
    /// (its guard already dropped): forgets it when nobody else holds or
    /// awaits it. Whoever takes it after that makes a fresh one; nobody
    /// can hold the old one then, since every holder got it from the map
    /// under the map's mutex, and the map's and this `lock` were the only
    /// references left.
    fn release_write_lock(&self, key: &GroupKey, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut locks = self
            .write_locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if Arc::strong_count(&lock) == 2 && locks.get(key).is_some_and(|l| Arc::ptr_eq(l, &lock)) {
            locks.remove(key);
        }
    }

    /// States the group's `name` alerts in the store (raising and
    /// resolving as needed): `specs` builds them from what fires now. A
    /// store failure is logged: the alert is a report, the next round
    /// states it again.
    async fn sync_group_alerts(
        &self,
        channel: &ChannelId,
        group: &GroupName,
        name: &'static str,
        specs: impl FnOnce(&[AlertRecord]) -> Vec<AlertSpec> + Send + 'static,
    ) {
        let (ch, g, now) = (channel.clone(), group.clone(), self.clock.now());
        let changes = self
            .store
            .blocking(move |store| {
                let scope = AlertScope {
                    channel: Some(&ch),
                    group: Some(&g),
                    names: &[name],
                };
                let firing = store.firing_in(scope)?;
                store.sync_alerts(now, scope, &specs(&firing))
            })
            .await;
        match changes {
            Ok(changes) => {
                for raised in &changes.raised {
                    tracing::warn!(channel = %channel, group = %group, alert = raised.alertname, "{}", raised.summary);
                }
                for resolved in &changes.resolved {
                    tracing::info!(channel = %channel, group = %group, alert = %resolved.fingerprint, "alert resolved");
                }
            }
            Err(e) => {
                tracing::warn!(channel = %channel, group = %group, error = %e, "could not record the {name} alert");
            }
        }
    }

    /// Resolves the sink and hook alerts the config no longer backs: a
    /// `hook_failing` of a group that has no hook now, a `sink_failing` of
    /// a path no longer among the group's sinks (at start, such alerts may
    /// be left by a run with another config). One read of what fires; a
    /// write only for the groups concerned. Groups that left the config are
    /// the store's to resolve (`Store::sync_config`).
    async fn resolve_stale_alerts(&self) {
        let firing = match self.store.blocking(Store::firing_alerts).await {
            Ok(firing) => firing,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the firing alerts");
                return;
            }
        };
        let mut stale: Vec<(ChannelId, GroupName, &'static str)> = Vec::new();
        {
            let groups = self.read_groups();
            for a in &firing {
                let (Some(channel), Some(group)) = (&a.channel_id, &a.group) else {
                    continue;
                };
                let Some(delivery) = groups.get(&(channel.clone(), group.clone())) else {
                    continue;
                };
                let name = match a.alertname.as_str() {
                    HOOK_FAILING if delivery.hook.is_none() => HOOK_FAILING,
                    SINK_FAILING
                        if !a.label.as_ref().is_some_and(|(_, path)| {
                            delivery
                                .sinks
                                .iter()
                                .any(|s| s.path.display().to_string() == *path)
                        }) =>
                    {
                        SINK_FAILING
                    }
                    _ => continue,
                };
                let key = (channel.clone(), group.clone(), name);
                if !stale.contains(&key) {
                    stale.push(key);
                }
            }
        }
        for (channel, group, name) in stale {
            let sinks: Vec<String> = self
                .read_groups()
                .get(&(channel.clone(), group.clone()))
                .map(|d| {
                    d.sinks
                        .iter()
                        .map(|s| s.path.display().to_string())
                        .collect()
                })
                .unwrap_or_default();
            self.sync_group_alerts(&channel, &group, name, move |firing| {
                if name == HOOK_FAILING {
                    return Vec::new();
                }
                firing
                    .iter()
                    .filter(|a| a.label.as_ref().is_some_and(|(_, p)| sinks.contains(p)))
                    .map(restated_sink_alert)
                    .collect()
            })
            .await;
        }
    }

    /// Starts the group's retry task unless one runs or nothing fails.
    fn ensure_retry(self: &Arc<Self>, key: &GroupKey) {
        let mut retrying = self.retrying.lock().unwrap_or_else(PoisonError::into_inner);
        let failing = self
            .sinks
            .borrow()
            .get(key)
            .is_some_and(|h| !h.failing.is_empty());
        if !failing || retrying.contains(key) {
            return;
        }
        retrying.insert(key.clone());
        let this = Arc::clone(self);
        let key = key.clone();
        self.tasks.spawn(async move { this.retry_sinks(key).await });
    }

    /// Rewrites a group's sinks at each [`SinkHealth::next_retry`] until a
    /// round succeeds, the group has nothing left to write, or the service
    /// stops.
    async fn retry_sinks(self: Arc<Self>, key: GroupKey) {
        loop {
            let due = {
                // Decided under the same lock `ensure_retry` takes: a
                // failure recorded after this check finds no task and
                // starts one.
                let mut retrying = self.retrying.lock().unwrap_or_else(PoisonError::into_inner);
                let due = self
                    .sinks
                    .borrow()
                    .get(&key)
                    .filter(|h| !h.failing.is_empty())
                    .and_then(|h| h.next_retry);
                if due.is_none() {
                    retrying.remove(&key);
                    return;
                }
                due
            };
            let Some(due) = due else { return };
            // A system clock may wake early (see Clock::sleep_until): re-check.
            while self.clock.now() < due {
                tokio::select! {
                    biased;
                    () = self.stop.cancelled() => {
                        self.retrying.lock().unwrap_or_else(PoisonError::into_inner).remove(&key);
                        return;
                    }
                    () = self.clock.sleep_until(due) => {}
                }
            }
            self.write_round(&key).await;
        }
    }

    /// Starts the group's hook for a new token in its own task, cancelling
    /// the retries of an older token's hook.
    fn start_hook(self: &Arc<Self>, channel: &ChannelId, group: &GroupName, token: PublishedToken) {
        let key = (channel.clone(), group.clone());
        let Some(spec) = self.read_groups().get(&key).and_then(|d| d.hook.clone()) else {
            return;
        };
        let cancel = CancellationToken::new();
        if let Some(previous) = self.lock_hooks().insert(key.clone(), cancel.clone()) {
            previous.cancel();
        }
        let this = Arc::clone(self);
        self.tasks.spawn(async move {
            let (channel, group) = key;
            let run = HookRun {
                channel: &channel,
                group: &group,
                token: &token,
            };
            let report =
                hook::run_with_retries(&spec, &run, &this.hook_retry, &this.clock, &cancel).await;
            this.record_hook(&channel, &group, &token.key_id, &report)
                .await;
        });
    }

    async fn record_hook(
        &self,
        channel: &ChannelId,
        group: &GroupName,
        key_id: &KeyId,
        report: &HookReport,
    ) {
        let kind = match report.last.outcome {
            // Superseded by a newer token, or shutdown: nothing to report.
            HookOutcome::Cancelled => return,
            HookOutcome::Succeeded => EventKind::HookSucceeded,
            _ => EventKind::HookFailed,
        };
        self.metrics
            .hook_run(channel, group, kind == EventKind::HookSucceeded);
        let detail = report.summary();
        let now: DateTime<Utc> = self.clock.now();
        let event = NewEvent {
            channel_id: channel.clone(),
            group: Some(group.clone()),
            key_id: Some(key_id.clone()),
            kind,
            detail,
        };
        let store = self.store.clone();
        let result = store.blocking(move |s| s.record_event(now, &event)).await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not record the hook's outcome");
        }
        // A run is already every attempt the retry rules allow: one failed
        // run is the hook failing, one that succeeds ends it.
        let alerts = if kind == EventKind::HookFailed {
            vec![AlertSpec {
                group: Some(group.clone()),
                label: None,
                alertname: HOOK_FAILING,
                severity: "warning",
                summary: format!(
                    "the on_rotate hook failed for token {key_id}: {}",
                    report.summary()
                ),
            }]
        } else {
            Vec::new()
        };
        self.sync_group_alerts(channel, group, HOOK_FAILING, move |_| alerts)
            .await;
    }

    fn read_groups(&self) -> std::sync::RwLockReadGuard<'_, HashMap<GroupKey, Configured>> {
        self.groups.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_hooks(&self) -> std::sync::MutexGuard<'_, HashMap<GroupKey, CancellationToken>> {
        self.hooks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The alert a group's sinks raise after [`SINK_ALERT_AFTER_ROUNDS`]
/// failed write rounds in a row.
pub const SINK_FAILING: &str = "sink_failing";
/// The alert a group's hook raises when a run failed every attempt.
pub const HOOK_FAILING: &str = "hook_failing";
/// Failed write rounds in a row (each retried with backoff) after which a
/// failing sink raises `sink_failing`: one failed write can be a passing
/// hiccup, five in a row (15 s with the default backoff) are not.
pub const SINK_ALERT_AFTER_ROUNDS: u32 = 5;

/// One `sink_failing` alert per sink (labelled by its path) that failed
/// [`SINK_ALERT_AFTER_ROUNDS`] write rounds in a row. Counted per sink: a
/// sink that just started failing beside one failing for long is a hiccup
/// until it, too, has failed that often. A sink whose alert already fires
/// (`firing`, e.g. from before a restart, which starts the count again)
/// keeps it while it still fails: only a write that succeeds resolves it.
fn sink_alerts(
    group: &GroupName,
    failing: &[FailingSink],
    firing: &[AlertRecord],
) -> Vec<AlertSpec> {
    failing
        .iter()
        .filter(|f| {
            let path = f.path.display().to_string();
            f.rounds >= SINK_ALERT_AFTER_ROUNDS
                || firing
                    .iter()
                    .any(|a| a.label.as_ref().is_some_and(|(_, p)| *p == path))
        })
        .map(|f| AlertSpec {
            group: Some(group.clone()),
            label: Some(AlertLabel {
                name: "sink",
                value: f.path.display().to_string(),
            }),
            alertname: SINK_FAILING,
            severity: "warning",
            summary: format!(
                "writing the sink {} failed {} times in a row: {}",
                f.path.display(),
                f.rounds,
                f.error
            ),
        })
        .collect()
}

/// A firing `sink_failing` stated again as it stands.
fn restated_sink_alert(a: &AlertRecord) -> AlertSpec {
    AlertSpec {
        group: a.group.clone(),
        label: a.label.as_ref().map(|(_, value)| AlertLabel {
            name: "sink",
            value: value.clone(),
        }),
        alertname: SINK_FAILING,
        severity: "warning",
        summary: a.summary.clone(),
    }
}

/// The store note for a group's sinks: `ok: every sink written` or
/// `failing since <time> (<n> rounds; next retry at <time>): <path>: <error>; ...`.
fn note_text(health: &SinkHealth) -> String {
    let ts = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
    if health.failing.is_empty() {
        return "ok: every sink written".to_owned();
    }
    let since = health
        .failing
        .iter()
        .map(|f| f.since)
        .min()
        .map_or_else(String::new, ts);
    let rounds = if health.failed_rounds == 1 {
        "1 attempt".to_owned()
    } else {
        format!("{} attempts", health.failed_rounds)
    };
    let next = health
        .next_retry
        .map_or_else(String::new, |t| format!("; next retry at {}", ts(t)));
    let sinks: Vec<String> = health
        .failing
        .iter()
        .map(|f| format!("{}: {}", f.path.display(), f.error))
        .collect();
    format!(
        "failing since {since} ({rounds}{next}): {}",
        sinks.join("; ")
    )
}
