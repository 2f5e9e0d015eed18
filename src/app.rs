//! Wiring: turns a validated config into a running daemon.
//!
//! `app` is where the config, the clock and the signals meet the library:
//! it opens the store (taking the one-writer lock), syncs the configured
//! channels and groups into it, builds the LINE client, the signers and the
//! rules, starts the rotator's scheduler, and stops it all on shutdown.
//! Below `app`, nothing reads the config file, the environment or the wall
//! clock.

use std::sync::Arc;

use anyhow::Context as _;
use chrono::Duration;
use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::SharedClock;
use crate::config::{ChannelConfig, ValidConfig};
use crate::line::jwt::AssertionSigner;
use crate::line::{LineClient, LineClientConfig, RequestObserver};
use crate::policy::{RetryRules, Rules};
use crate::rotator::{ChannelSetup, RotationEvent, Rotator, RotatorParts};
use crate::scheduler::{Scheduler, SchedulerState};
use crate::store::{ChannelSpec, Durability, Store, StoreOptions};

/// How many channels are worked on at once.
const CHANNEL_CONCURRENCY: usize = 4;

/// Extra knobs for tests and the simulation; production uses the defaults.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Fixes the backoff jitter's random sequence.
    pub seed: Option<u64>,
    /// Overrides the retry pacing (tests shrink it).
    pub retry: Option<RetryRules>,
    /// How hard the store syncs its commits. Production keeps the default
    /// ([`Durability::Full`]); the simulation, which throws its database
    /// away, skips the fsyncs.
    pub durability: Durability,
    /// Called for every request the daemon makes to LINE (endpoint, status,
    /// latency), so a test can count what the daemon asked from the outside.
    pub observer: Option<RequestObserver>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("seed", &self.seed)
            .field("retry", &self.retry)
            .field("durability", &self.durability)
            .field("observer", &self.observer.as_ref().map(|_| "set"))
            .finish()
    }
}

/// A started daemon: its rotator, and handles to wait on it.
pub struct Daemon {
    /// The rotation engine.
    pub rotator: Arc<Rotator>,
    /// The scheduler's progress.
    pub scheduler: watch::Receiver<SchedulerState>,
    /// Makes the scheduler run a pass now.
    pub waker: Arc<Notify>,
    /// Everything the rotator does, subscribed before the first pass so
    /// nothing is missed. Dropping it is fine.
    pub events: broadcast::Receiver<RotationEvent>,
    tasks: TaskTracker,
}

impl Daemon {
    /// Opens the store, syncs the config into it, reports what a previous
    /// run left unfinished, and starts the scheduler. Returns once the
    /// daemon runs; it stops when `shutdown` is cancelled.
    ///
    /// # Errors
    /// When the store cannot be opened (another daemon holds it, a newer
    /// schema, a missing directory), or the LINE client cannot be built.
    pub async fn start(
        config: &ValidConfig,
        clock: SharedClock,
        shutdown: CancellationToken,
        options: RunOptions,
    ) -> anyhow::Result<Self> {
        let db_path = config.daemon.database.clone();
        let store_options = StoreOptions {
            durability: options.durability,
        };
        let store = tokio::task::spawn_blocking(move || Store::open_with(&db_path, store_options))
            .await
            .context("while opening the database")??;
        let now = clock.now();
        let specs = channel_specs(config);
        let synced = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.sync_config(now, &specs))
                .await
                .context("while syncing the config into the database")??
        };
        for (channel, group) in &synced.added_groups {
            tracing::info!(channel = %channel, group = %group, "group added");
        }
        for (channel, group) in &synced.removed_groups {
            tracing::warn!(channel = %channel, group = %group, "group no longer in the config: its tokens are revoked after removal_grace");
        }

        let line = LineClient::new(
            LineClientConfig {
                base_url: config.daemon.line_api.to_string(),
                timeout: config.daemon.request_timeout,
                observer: options.observer.clone(),
            },
            Arc::clone(&clock),
        )
        .context("while setting up the LINE client")?;

        let mut rules = rules(config);
        if let Some(retry) = options.retry {
            rules.retry = retry;
        }
        let rotator = Rotator::new(RotatorParts {
            store,
            line,
            clock,
            rules,
            channels: channel_setups(config)?,
            concurrency: CHANNEL_CONCURRENCY,
            seed: options.seed,
        });
        let lost = rotator
            .start_up()
            .await
            .context("while checking the issuance journal")?;
        if lost > 0 {
            tracing::warn!(
                lost,
                "issuances left unfinished by the previous run were reported as lost"
            );
        }

        let events = rotator.subscribe();
        let scheduler = Scheduler::new(Arc::clone(&rotator));
        let state = scheduler.state();
        let waker = scheduler.waker();
        let tasks = TaskTracker::new();
        tasks.spawn(scheduler.run(shutdown.child_token()));
        tasks.close();
        tracing::info!(
            channels = config.channels.len(),
            groups = config.channels.iter().map(|c| c.groups.len()).sum::<usize>(),
            line_api = %config.daemon.line_api,
            "linetokd running"
        );
        Ok(Self {
            rotator,
            scheduler: state,
            waker,
            events,
            tasks,
        })
    }

    /// Waits until every task has stopped (after shutdown).
    pub async fn stopped(self) {
        self.tasks.wait().await;
    }
}

/// Runs the daemon until `shutdown` fires, then stops it.
///
/// # Errors
/// As [`Daemon::start`].
pub async fn run(
    config: &ValidConfig,
    clock: SharedClock,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let daemon = Daemon::start(config, clock, shutdown.clone(), RunOptions::default()).await?;
    shutdown.cancelled().await;
    tracing::info!("shutting down: finishing the LINE call in flight");
    daemon.stopped().await;
    tracing::info!("stopped");
    Ok(())
}

/// A token cancelled on the first SIGINT or SIGTERM.
///
/// # Errors
/// When the signal handlers cannot be installed.
pub fn shutdown_on_signals() -> std::io::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let trigger = token.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "stop requested");
        trigger.cancel();
    });
    Ok(token)
}

/// The policy's rules from the `[rotation]` settings.
pub fn rules(config: &ValidConfig) -> Rules {
    let r = &config.rotation;
    let d = |std: std::time::Duration| Duration::from_std(std).unwrap_or(Duration::MAX);
    Rules {
        token_lifetime: d(r.token_lifetime),
        rotate_before: d(r.rotate_before),
        rotation_jitter: d(r.rotation_jitter),
        verify_interval: d(r.verify_interval),
        reconcile_interval: d(r.reconcile_interval),
        revoke_previous_after: r.revoke_previous_after.map(d),
        max_issues_per_hour: r.max_issues_per_hour,
        removal_grace: d(r.removal_grace),
        ..Rules::default()
    }
}

/// The part of the config the store keeps.
pub fn channel_specs(config: &ValidConfig) -> Vec<ChannelSpec> {
    config
        .channels
        .iter()
        .map(|c| ChannelSpec {
            id: c.id.clone(),
            name: c.name.clone(),
            groups: c.groups.iter().map(|g| g.name.clone()).collect(),
        })
        .collect()
}

/// The rotator's channels: signers built from the loaded keys.
///
/// # Errors
/// When an assertion window is out of LINE's range (validation already
/// refuses that, so this is a second line of defence).
pub fn channel_setups(config: &ValidConfig) -> anyhow::Result<Vec<ChannelSetup>> {
    let window = Duration::from_std(config.rotation.assertion_window)
        .context("rotation.assertion_window is out of range")?;
    config
        .channels
        .iter()
        .map(|c: &ChannelConfig| {
            let signer = AssertionSigner::new(c.id.clone(), c.kid.clone(), Arc::clone(&c.key))
                .with_window(window)
                .with_context(|| format!("channel {}: rotation.assertion_window", c.id))?;
            Ok(ChannelSetup {
                id: c.id.clone(),
                name: c.name.clone(),
                signer,
                secret: c.secret.clone(),
                groups: c.groups.iter().map(|g| g.name.clone()).collect(),
            })
        })
        .collect()
}
