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
//! At start the book is filled from the store and every sink rewritten (a
//! tmpfs may be empty after a reboot).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use chrono::{DateTime, Utc};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::hook::{self, HookOutcome, HookReport, HookRetry, HookRun, HookSpec};
use super::published::{GroupTokens, PublishedToken, TokenBook};
use super::sink::{self, SinkContext, SinkSpec};
use crate::clock::SharedClock;
use crate::domain::{ChannelId, GroupName, KeyId};
use crate::event::RotationEvent;
use crate::store::{EventKind, NewEvent, Store, StoreError};

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

/// Publishes tokens to sinks and hooks.
pub struct Delivery {
    book: TokenBook,
    store: Store,
    clock: SharedClock,
    hook_retry: HookRetry,
    /// The configured groups' delivery, replaced on reload.
    groups: RwLock<HashMap<GroupKey, GroupDelivery>>,
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
        groups: HashMap<GroupKey, GroupDelivery>,
        hook_retry: HookRetry,
    ) -> Arc<Self> {
        Arc::new(Self {
            book,
            store,
            clock,
            hook_retry,
            groups: RwLock::new(groups),
            removed: Mutex::new(HashMap::new()),
            hooks: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
        })
    }

    /// The book this service keeps.
    pub fn book(&self) -> &TokenBook {
        &self.book
    }

    /// Fills the book from the store's live tokens and rewrites every sink.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn load(&self) -> Result<(), StoreError> {
        let now = self.clock.now();
        let keys: Vec<GroupKey> = self.read_groups().keys().cloned().collect();
        let store = self.store.clone();
        let loaded = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let mut out = Vec::new();
            for (channel, group) in keys {
                let tokens = store.tokens_of_group(&channel, &group)?;
                let mut live: Vec<PublishedToken> = tokens
                    .into_iter()
                    .filter(|t| t.record.is_live_at(now))
                    .map(|t| PublishedToken {
                        key_id: t.record.key_id,
                        token: t.value,
                        issued_at: t.record.issued_at,
                        expires_at: t.record.expires_at,
                    })
                    .collect();
                live.sort_by_key(|t| std::cmp::Reverse((t.issued_at, t.expires_at)));
                let mut live = live.into_iter();
                let tokens = GroupTokens {
                    current: live.next(),
                    previous: live.next(),
                };
                out.push((channel, group, tokens));
            }
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Internal {
            what: e.to_string(),
        })??;
        for (channel, group, tokens) in loaded {
            let has_current = tokens.current.is_some();
            self.book.update(&channel, &group, |_| tokens);
            if has_current {
                self.write_sinks(&channel, &group).await;
            }
        }
        Ok(())
    }

    /// Replaces the configured groups (config reload). Groups no longer
    /// configured keep their sinks until their tokens are gone.
    pub fn set_groups(&self, groups: HashMap<GroupKey, GroupDelivery>) {
        let mut current = self.groups.write().unwrap_or_else(PoisonError::into_inner);
        let mut removed = self.removed.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, delivery) in current.drain() {
            if !groups.contains_key(&key) {
                removed.insert(key, delivery);
            }
        }
        for key in groups.keys() {
            removed.remove(key);
        }
        *current = groups;
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
                            tracing::error!(error = %crate::rotator::error_chain(&e), "reloading published tokens failed");
                        }
                    }
                    Err(RecvError::Closed) => break,
                },
            }
        }
        for token in self.lock_hooks().values() {
            token.cancel();
        }
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
                ..
            } => {
                let now = self.clock.now();
                let published = PublishedToken {
                    key_id,
                    token,
                    issued_at,
                    expires_at,
                };
                self.book
                    .update(&channel, &group, |g| g.with_new(published.clone(), now));
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
            | RotationEvent::Alert { .. } => {}
        }
    }

    /// Takes a token out of the book (and the sinks) of whichever group
    /// holds it.
    async fn drop_token(&self, channel: &ChannelId, group: Option<&GroupName>, key_id: &KeyId) {
        let holders: Vec<GroupName> = self
            .book
            .groups()
            .into_iter()
            .filter(|(c, g)| c == channel && group.is_none_or(|want| want == g))
            .map(|(_, g)| g)
            .filter(|g| {
                let tokens = self.book.get(channel, g);
                [tokens.current, tokens.previous]
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

    /// Rewrites every sink of a group from the book.
    async fn write_sinks(&self, channel: &ChannelId, group: &GroupName) {
        let key = (channel.clone(), group.clone());
        let configured = self.read_groups().get(&key).map(|d| d.sinks.clone());
        let sinks = configured.unwrap_or_else(|| {
            self.removed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&key)
                .map(|d| d.sinks.clone())
                .unwrap_or_default()
        });
        if sinks.is_empty() {
            return;
        }
        let tokens = self.book.get(channel, group);
        // The token the sinks now hold, for the log: never its value.
        let key_id = tokens.current.as_ref().map(|t| t.key_id.to_string());
        let outcome = tokio::task::spawn_blocking(move || {
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
        .await;
        for (path, result) in outcome.unwrap_or_default() {
            match result {
                Ok(()) => {
                    tracing::debug!(channel = %channel, group = %group, key_id = key_id.as_deref(), path = %path.display(), "sink written");
                }
                Err(e) => {
                    tracing::error!(channel = %channel, group = %group, key_id = key_id.as_deref(), path = %path.display(), error = %e, "writing a sink failed");
                }
            }
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
        let result = tokio::task::spawn_blocking(move || store.record_event(now, &event)).await;
        if let Ok(Err(e)) = result {
            tracing::warn!(error = %e, "could not record the hook's outcome");
        }
    }

    fn read_groups(&self) -> std::sync::RwLockReadGuard<'_, HashMap<GroupKey, GroupDelivery>> {
        self.groups.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_hooks(&self) -> std::sync::MutexGuard<'_, HashMap<GroupKey, CancellationToken>> {
        self.hooks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
