//! Wiring: turns a validated config into a running daemon.
//!
//! `app` is where the config, the clock and the signals meet the library:
//! it opens the store (taking the one-writer lock), syncs the configured
//! channels and groups into it, builds the LINE client, the signers and the
//! rules, starts the rotator's scheduler, and stops it all on shutdown.
//! Below `app`, nothing reads the config file, the environment or the wall
//! clock.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use chrono::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::SharedClock;
use crate::config::{ChannelConfig, ValidConfig};
use crate::control::{self, ControlHandler, ControlServer};
use crate::delivery::TokenBook;
use crate::http::{self, ApiKeys, HttpState, Readiness};
use crate::line::jwt::AssertionSigner;
use crate::line::{LineClient, LineClientConfig, RequestObserver};
use crate::metrics::Metrics;
use crate::policy::{RetryRules, Rules};
use crate::rotator::{ChannelSetup, RotationEvent, Rotator, RotatorParts};
use crate::scheduler::{Scheduler, SchedulerState};
use crate::store::{ChannelSpec, Store};

/// How many channels are worked on at once.
const CHANNEL_CONCURRENCY: usize = 4;

/// Extra knobs for tests and the simulation; production uses the defaults.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Fixes the backoff jitter's random sequence.
    pub seed: Option<u64>,
    /// Overrides the retry pacing (tests shrink it).
    pub retry: Option<RetryRules>,
}

/// A started daemon: its rotator, and handles to wait on it.
pub struct Daemon {
    /// The rotation engine.
    pub rotator: Arc<Rotator>,
    /// The scheduler's progress.
    pub scheduler: watch::Receiver<SchedulerState>,
    /// Makes the scheduler run a pass now.
    pub waker: Arc<Notify>,
    /// The daemon's metrics.
    pub metrics: Arc<Metrics>,
    /// Everything the rotator does, subscribed before the first pass so
    /// nothing is missed. Dropping it is fine.
    pub events: broadcast::Receiver<RotationEvent>,
    /// Where the HTTP listener (health, token API) is bound: the configured
    /// `listen`, with the real port when it asked for port 0.
    pub http_addr: SocketAddr,
    /// The control socket `linetokd rotate` and `linetokd revoke` connect to.
    pub control_socket: PathBuf,
    /// Every group's published tokens, which the token API answers from.
    pub tokens: TokenBook,
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
        let store = tokio::task::spawn_blocking(move || Store::open(&db_path))
            .await
            .context("while opening the database")??;
        // Bound before anything runs, so a taken port or state directory
        // stops the start with nothing half-started.
        let listener = bind_http(config).await?;
        let control = bind_control(config)?;
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

        let metrics = Metrics::shared();
        let observer: RequestObserver = {
            let metrics = Arc::clone(&metrics);
            Arc::new(move |endpoint, status, latency| {
                metrics.line_request(endpoint.as_str(), status, latency);
            })
        };
        let line = LineClient::new(
            LineClientConfig {
                base_url: config.daemon.line_api.to_string(),
                timeout: config.daemon.request_timeout,
                observer: Some(observer),
            },
            Arc::clone(&clock),
        )
        .context("while setting up the LINE client")?;

        let mut rules = rules(config);
        if let Some(retry) = options.retry {
            rules.retry = retry;
        }
        let http_clock = Arc::clone(&clock);
        let rotator = Rotator::new(RotatorParts {
            store,
            line,
            clock,
            rules,
            channels: channel_setups(config)?,
            concurrency: CHANNEL_CONCURRENCY,
            seed: options.seed,
            metrics: Arc::clone(&metrics),
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
        let tokens = TokenBook::new();
        let keys = Arc::new(RwLock::new(api_keys(config)));
        let readiness = readiness(&rotator, &tokens, state.clone(), Arc::clone(&http_clock));
        let http_addr = spawn_http(
            config,
            listener,
            HttpState {
                tokens: tokens.clone(),
                keys: Arc::clone(&keys),
                clock: http_clock,
                metrics: Some(Arc::clone(&metrics)),
                readiness: Some(readiness),
            },
            &tasks,
            &shutdown,
        )?;
        let control_socket = spawn_control(
            control,
            ControlHandler::new(
                Arc::clone(&rotator),
                Arc::clone(&waker),
                state.clone(),
                control::DEFAULT_WAIT,
            ),
            &tasks,
            &shutdown,
        );
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
            metrics,
            events,
            http_addr,
            control_socket,
            tokens,
            tasks,
        })
    }

    /// Waits until every task has stopped (after shutdown).
    pub async fn stopped(self) {
        self.tasks.wait().await;
    }
}

/// Readiness (`/readyz`): the first pass has run and every configured group
/// has a live published token. A group that is failing, or held back by
/// capacity or the hourly budget, keeps the daemon unready: its consumers
/// have nothing to use.
fn readiness(
    rotator: &Arc<Rotator>,
    tokens: &TokenBook,
    scheduler: watch::Receiver<SchedulerState>,
    clock: SharedClock,
) -> Readiness {
    let (rotator, tokens) = (Arc::clone(rotator), tokens.clone());
    Arc::new(move || {
        let mut waiting = Vec::new();
        if scheduler.borrow().passes == 0 {
            waiting.push("the first pass has not finished".to_owned());
        }
        let now = clock.now();
        for channel in rotator.channels().iter() {
            for group in &channel.groups {
                let published = tokens.get(&channel.id, group);
                if published.current.is_none_or(|t| t.expires_at <= now) {
                    waiting.push(format!("{}/{group} has no live token", channel.id));
                }
            }
        }
        if waiting.is_empty() {
            Ok(())
        } else {
            Err(waiting)
        }
    })
}

/// Binds `daemon.listen` for health and the token API.
///
/// # Errors
/// When the address cannot be bound (in use, not local).
async fn bind_http(config: &ValidConfig) -> anyhow::Result<TcpListener> {
    let listen = config.daemon.listen;
    TcpListener::bind(listen)
        .await
        .with_context(|| format!("while binding daemon.listen {listen}"))
}

/// Serves the HTTP app on `listener` until shutdown; returns the bound
/// address.
///
/// # Errors
/// When the listener's address cannot be read.
fn spawn_http(
    config: &ValidConfig,
    listener: TcpListener,
    state: HttpState,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let addr = listener.local_addr().with_context(|| {
        format!(
            "while reading the address bound for {}",
            config.daemon.listen
        )
    })?;
    let stop = shutdown.child_token();
    tasks.spawn(async move {
        if let Err(e) = http::serve(listener, state, stop).await {
            tracing::error!(error = %e, "the HTTP listener failed");
        }
    });
    tracing::info!(listen = %addr, "HTTP listening (/healthz, token API)");
    Ok(addr)
}

/// The token API's keys: every configured group, with its API key digest
/// when it has an `api_key_file`.
pub fn api_keys(config: &ValidConfig) -> ApiKeys {
    let mut keys = ApiKeys::new();
    for channel in &config.channels {
        for group in &channel.groups {
            if let Some(key) = &group.api_key
                && !http::usable_api_key(key)
            {
                tracing::warn!(
                    channel = %channel.id,
                    group = %group.name,
                    "the api_key_file holds spaces or control characters, which no `Authorization: Bearer` header can carry: the token API will refuse every request for this group"
                );
            }
            keys.insert(
                channel.id.clone(),
                group.name.clone(),
                group.api_key.as_ref(),
            );
        }
    }
    keys
}

/// Takes the state directory and binds its control socket.
///
/// # Errors
/// When another daemon uses the state directory, or the socket cannot be
/// created.
fn bind_control(config: &ValidConfig) -> anyhow::Result<ControlServer> {
    ControlServer::bind(&config.daemon.state_dir).with_context(|| {
        format!(
            "while setting up the control socket in daemon.state_dir {}",
            config.daemon.state_dir.display()
        )
    })
}

/// Serves the control socket until shutdown; returns its path.
fn spawn_control(
    server: ControlServer,
    handler: ControlHandler,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> PathBuf {
    let path = server.path().to_path_buf();
    tasks.spawn(server.serve(handler, shutdown.child_token()));
    tracing::info!(socket = %path.display(), "control socket listening (linetokd rotate, linetokd revoke)");
    path
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
