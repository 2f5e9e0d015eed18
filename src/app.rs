//! Wiring: turns a validated config into a running daemon.
//!
//! `app` is where the config, the clock and the signals meet the library:
//! it opens the store (taking the one-writer lock), syncs the configured
//! channels and groups into it, builds the LINE client, the signers and the
//! rules, starts the rotator's scheduler, and stops it all on shutdown.
//! Below `app`, nothing reads the config file, the environment or the wall
//! clock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use anyhow::Context as _;
use chrono::{DateTime, Duration, Utc};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::addresses;
use crate::alerting::{self, NotifierSettings};
use crate::clock::{SharedClock, ShiftedClock};
use crate::config::{self, ChannelConfig, DaemonConfig, RotationSettings, Settings, ValidConfig};
use crate::control::{self, ControlHandler, ControlServer};
use crate::delivery::hook::{self, HookRetry, HookSpec};
use crate::delivery::sink::{SinkFormat, SinkSpec};
use crate::delivery::{Delivery, GroupDelivery, TokenBook};
use crate::domain::{ChannelId, GroupName, RequestOutcome, TokenKind};
use crate::http::{self, ApiKeys, HttpState, Readiness};
use crate::line::jwt::AssertionSigner;
use crate::line::{LineClient, LineClientConfig, RequestObserver};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::policy::{RetryRules, Rules};
use crate::rotator::{ChannelSetup, RotationEvent, Rotator, RotatorParts, Wakes};
use crate::scheduler::{Scheduler, SchedulerState};
use crate::stateless::{Margins, Stateless, StatelessAuth, StatelessRules, StatelessSetup};
use crate::store::LAST_RELOAD;
use crate::store::{ChannelSpec, Durability, Store, StoreError, StoreOptions};
use crate::watch::ConfigWatcher;
use tokio::signal::unix::{SignalKind, signal};

/// How many channels are worked on at once. Each has at most one request
/// to LINE in flight, so this is also the most connections to LINE. Enough
/// that the store's writer thread finds many jobs queued behind each
/// commit (group commit: one fsync for all of them); at 4, commits were
/// hardly shared and bootstrap cost 0.96 ms of CPU a group, at 32 it costs
/// 0.62 ms (`linetokd bench`, 10,000 groups, 2 cores).
const CHANNEL_CONCURRENCY: usize = 32;

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
    /// Leaves the alert notifier's task unstarted: the caller steps the
    /// daemon's notifier itself ([`Daemon::alert_notifier`]), so the
    /// simulation can send on its manual clock without real-time waits.
    pub manual_alerts: bool,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("seed", &self.seed)
            .field("retry", &self.retry)
            .field("durability", &self.durability)
            .field("observer", &self.observer.as_ref().map(|_| "set"))
            .field("manual_alerts", &self.manual_alerts)
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
    pub wakes: Arc<Wakes>,
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
    /// `<state_dir>/daemon.json`, naming the bound addresses for
    /// `linetokd health` and `status`; removed when the daemon stops.
    address_record: Option<addresses::RecordFile>,
    /// The token API's keys, replaced on reload.
    keys: Arc<RwLock<ApiKeys>>,
    /// The stateless token cache; its channels are replaced on reload.
    stateless: Arc<Stateless>,
    /// Sinks and hooks, replaced on reload.
    delivery: Arc<Delivery>,
    /// Sends raised alerts to the receivers; its settings are replaced on
    /// reload.
    alert_notifier: Arc<alerting::Notifier>,
    /// The long-lived token watchers, changed on reload.
    pub long_lived: Arc<crate::longlived::Service>,
    /// The LINE Login module, when login channels are configured.
    pub login: Option<Arc<crate::login::Login>>,
    /// The `[daemon]` section in force: a reload cannot change it live.
    daemon_config: DaemonConfig,
    /// The `[ha]` section in force: a reload cannot change it live either.
    ha_config: Option<crate::config::HaConfig>,
    clock: SharedClock,
    tasks: TaskTracker,
    /// The scheduler's task: its error is the fatal store error that
    /// stopped the daemon, which [`Daemon::stopped`] hands back.
    scheduler_task: JoinHandle<Result<(), StoreError>>,
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
        // Under [ha] the engine runs on the database's time: the keeper
        // moves this clock to it at every reading of the lease table, and
        // no channel is worked before the first (it needs a grant).
        let (clock, shifted): (SharedClock, _) = if config.ha.is_some() {
            let shifted = ShiftedClock::new(clock);
            (Arc::clone(&shifted) as SharedClock, Some(shifted))
        } else {
            (clock, None)
        };
        let location = config.daemon.store();
        let store_options = StoreOptions {
            durability: options.durability,
            keyring: config.encryption.as_ref().map(|e| Arc::clone(&e.keyring)),
            keep_plaintext: false,
            shared: config.ha.is_some(),
        };
        let store = tokio::task::spawn_blocking(move || Store::open_at(&location, store_options))
            .await
            .context("while opening the database")??;
        if config.ha.is_none() && store.lease_ops().is_some() {
            // This instance is about to write every channel: never beside
            // instances that lead channels under leases.
            let ha = {
                let store = store.clone();
                tokio::task::spawn_blocking(move || store.ha_state())
                    .await
                    .context("while reading the instances alive")??
            };
            if let Some((instance, _)) = ha.instances.first() {
                anyhow::bail!(
                    "instances under [ha] write the PostgreSQL database {} (instance {instance} is \
                     alive); add [ha] to this config to run beside them, or stop them first",
                    config.daemon.store()
                );
            }
        }
        // Bound before anything runs, so a taken port or state directory
        // stops the start with nothing half-started.
        let listener = bind_http(config).await?;
        let control = bind_control(config)?;
        let now = clock.now();
        let specs = channel_specs(config);
        let synced = {
            store
                .blocking(move |s| s.sync_config(now, &specs))
                .await
                .context("while syncing the config into the database")?
        };
        for (channel, group) in &synced.added_groups {
            tracing::info!(channel = %channel, group = %group, "group added");
        }
        for (channel, group) in &synced.removed_groups {
            tracing::warn!(channel = %channel, group = %group, "group no longer in the config: {}", removal_words(config, channel));
        }

        let metrics = Metrics::shared();
        metrics.set_channel_names(config.channel_index());
        let observer: RequestObserver = {
            let metrics = Arc::clone(&metrics);
            // A test's own observer (the simulation counts requests) sees
            // every request too.
            let extra = options.observer.clone();
            Arc::new(move |endpoint, status, latency| {
                metrics.line_request(endpoint.as_str(), status, latency);
                if let Some(extra) = &extra {
                    extra(endpoint, status, latency);
                }
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

        let mut rules = daemon_rules(config, config.ha.as_ref());
        if let Some(retry) = options.retry {
            rules.retry = retry;
        }
        // Config validation already refuses these; the policy's own check is
        // the second line of defence for rules built in code (tests, demo).
        rules
            .validate()
            .context("while checking the rotation rules")?;
        let http_clock = Arc::clone(&clock);
        let reload_clock = Arc::clone(&clock);
        let long_lived_line = line.clone();
        let login_line = line.clone();
        // Stateless tokens share the client (its pool, its skew record and
        // the request metrics) but nothing of the rotator.
        let stateless = Arc::new(
            Stateless::new(line.clone(), Arc::clone(&clock), Arc::clone(&metrics))
                .with_store(store.clone()),
        );
        stateless.set_channels(stateless_setups(config)?);
        let mut keeper = None;
        let rotator = Rotator::new(RotatorParts {
            store,
            line,
            clock,
            rules,
            channels: channel_setups(config)?,
            concurrency: CHANNEL_CONCURRENCY,
            seed: options.seed,
            metrics: Arc::clone(&metrics),
            leadership: leadership(config, &metrics),
        });
        if let Some(lead) = rotator.leadership() {
            lead.set_config_digest(config_digest(config));
        }
        if let (Some(lead), Some(ops), Some(shifted)) = (
            rotator.leadership(),
            rotator.store().lease_ops(),
            shifted.clone(),
        ) {
            tracing::info!(instance = %lead.me(), "high availability: leading channels under leases shared with other instances");
            let channels: crate::leader::keeper::ChannelList = {
                let rotator = Arc::downgrade(&rotator);
                Arc::new(move || {
                    let mut ids = rotator
                        .upgrade()
                        .map(|r| r.channel_ids())
                        .unwrap_or_default();
                    ids.push(ChannelId::new(crate::leader::DAEMON_DUTIES));
                    ids
                })
            };
            keeper = Some(crate::leader::keeper::Keeper::new(
                Arc::clone(lead),
                ops,
                channels,
                rotator.wakes(),
                Arc::clone(&metrics),
                shifted,
            ));
        }
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

        // This start loaded a valid config: a reload rejected by an earlier
        // run is over.
        reload_alert(rotator.store(), rotator.clock().now(), None).await;

        let events = rotator.subscribe();
        let scheduler = Scheduler::new(Arc::clone(&rotator));
        let state = scheduler.state();
        let wakes = rotator.wakes();
        let tasks = TaskTracker::new();
        // The keeper hands its grants back after the scheduler's last step
        // (it takes each channel's work lock first), and the daemon's stop
        // waits for that.
        if let Some(keeper) = keeper {
            tasks.spawn(keeper.run(shutdown.child_token()));
        }
        let shutdown_child = shutdown.child_token();
        let tokens = TokenBook::new();
        // Delivery fills the book from the store and rewrites every sink
        // before the first pass (a tmpfs may be empty after a reboot), and
        // subscribes before the scheduler starts so it misses no event.
        let delivery = Delivery::new(
            tokens.clone(),
            rotator.store().clone(),
            Arc::clone(&http_clock),
            Arc::clone(&metrics),
            delivery_groups(config),
            HookRetry::default(),
        );
        delivery
            .load()
            .await
            .context("while publishing the stored tokens")?;
        tasks.spawn(Arc::clone(&delivery).run(rotator.subscribe(), shutdown.child_token()));
        if let Some(lead) = rotator.leadership() {
            // Channels led elsewhere reach this instance's sinks and hooks
            // through the shared store.
            let every = crate::leader::keeper::Keeper::tick(lead.settings().renew)
                .to_std()
                .unwrap_or(std::time::Duration::from_secs(5));
            let led_here: crate::delivery::LedHere = {
                let lead = Arc::clone(lead);
                Arc::new(move |channel: &ChannelId| lead.standing(channel).held().is_some())
            };
            tasks.spawn(Arc::clone(&delivery).follow(every, led_here, shutdown.child_token()));
        }
        let alert_notifier = alerting::Notifier::new(
            rotator.store().clone(),
            Arc::clone(&http_clock),
            Arc::clone(&metrics),
            {
                log_config_warnings(config);
                notifier_settings(config, book_tokens(&tokens))
            },
        )
        .context("while setting up the alert notifier")?;
        if let Some(lead) = rotator.leadership() {
            let lead = Arc::clone(lead);
            let every = crate::leader::keeper::Keeper::tick(lead.settings().renew);
            alert_notifier.share(Arc::new(move || lead.has_daemon_duties()), every);
        }
        if !options.manual_alerts {
            tasks.spawn(Arc::clone(&alert_notifier).run(shutdown.child_token()));
        }
        crate::rekey::refresh_metrics(rotator.store(), &metrics).await;
        if config.encryption.is_some() {
            // Re-encrypts under a changed active key, a step per tick.
            tasks.spawn(crate::rekey::run(
                rotator.store().clone(),
                rotator.clock(),
                Arc::clone(&metrics),
                rotator.subscribe(),
                shutdown.child_token(),
            ));
        }
        let long_lived = crate::longlived::Service::start(
            crate::longlived::Parts {
                store: rotator.store().clone(),
                line: long_lived_line,
                clock: Arc::clone(&http_clock),
                metrics: Arc::clone(&metrics),
                seed: options.seed,
                read: config::read_token_file,
            },
            shutdown.child_token(),
        )
        .await
        .context("while starting the long-lived token watchers")?;
        long_lived.set_channels(long_lived_channels(config));
        {
            let (long_lived, stop) = (Arc::clone(&long_lived), shutdown.clone());
            tasks.spawn(async move {
                stop.cancelled().await;
                long_lived.stopped().await;
            });
        }
        let login = match &config.login {
            Some(login_config) => {
                let login_observer: RequestObserver<crate::line::login::LoginEndpoint> = {
                    let metrics = Arc::clone(&metrics);
                    Arc::new(move |endpoint, status, latency| {
                        metrics.line_request(endpoint.as_str(), status, latency);
                    })
                };
                let login = crate::login::Login::new(
                    login_config,
                    rotator.store().clone(),
                    crate::line::login::LoginClient::new(login_line, Some(login_observer)),
                    Arc::clone(&http_clock),
                    Arc::clone(&metrics),
                    options.seed.unwrap_or(0),
                );
                let lost = login
                    .start_up()
                    .await
                    .context("while checking the LINE Login refresh journal")?;
                if lost > 0 {
                    tracing::warn!(
                        lost,
                        "LINE Login refreshes left unfinished by the previous run were reported as lost"
                    );
                }
                tasks.spawn(Arc::clone(&login).run(shutdown.child_token()));
                Some(login)
            }
            None => None,
        };
        let keys = Arc::new(RwLock::new(api_keys(config)));
        let readiness = readiness(
            &rotator,
            &tokens,
            &delivery,
            state.clone(),
            Arc::clone(&http_clock),
        );
        let http_addr = spawn_http(
            config,
            listener,
            HttpState {
                tokens: tokens.clone(),
                keys: Arc::clone(&keys),
                clock: http_clock,
                metrics: Some(Arc::clone(&metrics)),
                readiness: Some(readiness),
                long_lived: Some({
                    let long_lived = Arc::clone(&long_lived);
                    Arc::new(move |channel: &ChannelId| {
                        long_lived.served(channel).map(|s| http::LongLivedToken {
                            token: s.token,
                            fingerprint: s.fingerprint,
                        })
                    })
                }),
                stateless: Some(Arc::clone(&stateless)),
                login: login.clone(),
            },
            &tasks,
            &shutdown,
        )?;
        let control_socket = spawn_control(
            control,
            ControlHandler::new(rotator.clone(), state.clone(), control::DEFAULT_WAIT)
                .with_long_lived(Arc::clone(&long_lived) as Arc<dyn control::LongLivedEngine>),
            &tasks,
            &shutdown,
        );
        let fatal = scheduler.fatal();
        let stop_all = shutdown.clone();
        tasks.spawn(async move {
            // The database vanished or was replaced underfoot: stop the whole
            // daemon (the error was logged) rather than store tokens where
            // nobody will find them. On a normal stop this task just ends.
            tokio::select! {
                () = fatal.cancelled() => stop_all.cancel(),
                () = stop_all.cancelled() => {}
            }
        });
        let scheduler_task = tasks.spawn(scheduler.run(shutdown_child));
        tasks.close();
        let address_record = record_addresses(config, http_addr, &control_socket);
        // Logged once the addresses are recorded: whoever waits for this line
        // and then runs `linetokd health` or `login import` (which find the
        // daemon through that record) must not race the record.
        tracing::info!(listen = %http_addr, "HTTP listening (/healthz, token API)");
        tracing::info!(
            channels = config.channels.len(),
            groups = config.channels.iter().map(|c| c.groups.len()).sum::<usize>(),
            line_api = %config.daemon.line_api,
            "linetokd running"
        );
        Ok(Self {
            rotator,
            scheduler: state,
            wakes,
            metrics,
            events,
            http_addr,
            control_socket,
            tokens,
            address_record,
            keys,
            stateless,
            delivery,
            alert_notifier,
            long_lived,
            login,
            daemon_config: config.daemon.clone(),
            ha_config: config.ha.clone(),
            clock: Arc::clone(&reload_clock),
            tasks,
            scheduler_task,
        })
    }

    /// Applies a new, validated config while running (docs/design.md section 7,
    /// "Reload"): channels and groups are synced into the store (a new one
    /// is issued a token at the next pass, a removed group's tokens are
    /// revoked after `removal_grace`), the rotator gets the new channels and
    /// rules, the token API the new keys, and a pass runs at once. The
    /// `[daemon]` section needs a restart; a change there is logged.
    ///
    /// # Errors
    /// When the store cannot be written or a signer cannot be built; the old
    /// config then stays in force.
    pub async fn reload(&self, config: &ValidConfig) -> anyhow::Result<()> {
        let setups = channel_setups(config)?;
        let stateless = stateless_setups(config)?;
        let new_rules = daemon_rules(config, self.ha_config.as_ref());
        new_rules
            .validate()
            .context("while checking the reloaded rotation rules")?;
        let specs = channel_specs(config);
        let now = self.clock.now();
        let store = self.rotator.store().clone();
        let synced = store
            .blocking(move |s| s.sync_config(now, &specs))
            .await
            .context("while syncing the reloaded config into the database")?;
        self.rotator.set_channels(setups);
        self.metrics.set_channel_names(config.channel_index());
        self.rotator.set_rules(new_rules);
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = api_keys(config);
        // Changed margins and sinks apply at once; a channel whose auth or
        // key changed starts cold.
        self.stateless.set_channels(stateless);
        self.delivery.set_groups(delivery_groups(config));
        self.long_lived.set_channels(long_lived_channels(config));
        match (&self.login, &config.login) {
            (Some(login), Some(login_config)) => login.reconfigure(login_config),
            (None, None) => {}
            _ => tracing::warn!(
                "login channels were added or all removed: the LINE Login module starts or stops \
                 only with a restart"
            ),
        }
        let alert_settings = notifier_settings(config, book_tokens(&self.tokens));
        log_config_warnings(config);
        self.alert_notifier.set_settings(alert_settings);
        for (channel, group) in &synced.added_groups {
            tracing::info!(channel = %channel, group = %group, "group added by reload");
        }
        for (channel, group) in &synced.removed_groups {
            self.metrics.remove_group(channel, group);
            tracing::warn!(channel = %channel, group = %group, "group removed by reload: {}", removal_words(config, channel));
        }
        if config.daemon != self.daemon_config {
            tracing::warn!("the [daemon] section changed; it takes effect at the next restart");
        }
        if let Some(lead) = self.rotator.leadership() {
            lead.set_config_digest(config_digest(config));
        }
        if config.ha != self.ha_config {
            tracing::warn!("the [ha] section changed; it takes effect at the next restart");
        }
        let keys =
            |ring: Option<&crate::store::crypt::Keyring>| ring.map(|r| (r.active(), r.ids()));
        if keys(config.encryption.as_ref().map(|e| &*e.keyring))
            != keys(self.rotator.store().keyring())
        {
            tracing::warn!("the [encryption] section changed; it takes effect at the next restart");
        }
        Ok(())
    }

    /// The alert notifier, for a caller that steps it itself
    /// ([`RunOptions::manual_alerts`]).
    pub fn alert_notifier(&self) -> Arc<alerting::Notifier> {
        Arc::clone(&self.alert_notifier)
    }

    /// Waits until every task has stopped (after shutdown).
    ///
    /// # Errors
    /// The fatal store error that stopped the daemon on its own (the
    /// database file was deleted or replaced while it ran): `run` exits 1
    /// with it.
    pub async fn stopped(mut self) -> Result<(), StoreError> {
        // Gone first: once the tasks end, the control lock is free and the
        // next daemon may write its own record.
        self.address_record.take();
        self.tasks.wait().await;
        // A task cancelled while its store job waited leaves that job with
        // the store's writer thread, which holds the store (and so the
        // writer lock) until the job has run. One empty job behind it makes
        // sure the thread has let go, so the lock goes with this daemon and
        // a daemon started next in this process is not refused.
        let _ = self.rotator.store().blocking(|_| Ok(())).await;
        match self.scheduler_task.await {
            Ok(outcome) => outcome,
            // A panic was reported where it happened; it is no store error.
            Err(_) => Ok(()),
        }
    }
}

/// Readiness (`/readyz`): the first pass has run, every configured group
/// has a live published token, and no sink fails to be written. A group
/// that is failing, or held back by capacity or the hourly budget, keeps
/// the daemon unready: its consumers have nothing to use; so does a sink
/// that cannot be written: its consumer reads a stale token.
fn readiness(
    rotator: &Arc<Rotator>,
    tokens: &TokenBook,
    delivery: &Arc<Delivery>,
    scheduler: watch::Receiver<SchedulerState>,
    clock: SharedClock,
) -> Readiness {
    let (rotator, tokens, delivery) = (Arc::clone(rotator), tokens.clone(), Arc::clone(delivery));
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
        waiting.extend(delivery.failing_sinks());
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
    tasks.spawn(http::serve(
        listener,
        state,
        http::ServeSettings::default(),
        stop,
    ));
    Ok(addr)
}

/// Records the bound addresses in the state directory (see [`addresses`]).
/// A failure only costs `health` and `status` their way to a port-0
/// daemon, so it is logged, not fatal.
fn record_addresses(
    config: &ValidConfig,
    http: SocketAddr,
    control_socket: &Path,
) -> Option<addresses::RecordFile> {
    let record = addresses::Recorded {
        pid: std::process::id(),
        http,
        control_socket: control_socket.to_path_buf(),
    };
    addresses::write(&config.daemon.state_dir, &record)
        .map_err(|e| {
            tracing::warn!(
                state_dir = %config.daemon.state_dir.display(),
                error = %e,
                "could not record the daemon's addresses; `linetokd health` finds it only at daemon.listen"
            );
        })
        .ok()
}

/// `[alerts]` as the alert notifier takes it; `line` receivers get their
/// group's current token from `tokens`.
pub fn notifier_settings(config: &ValidConfig, tokens: alerting::TokenSource) -> NotifierSettings {
    let a = &config.alerts;
    // Validation bounds every interval to 30 days, so none overflows.
    let dur = |d: std::time::Duration| Duration::from_std(d).unwrap_or(Duration::MAX);
    let receivers = a
        .receivers
        .iter()
        .map(|r| alerting::Receiver {
            name: r.name.clone(),
            min_severity: match r.min_severity {
                config::MinSeverity::Warning => alerting::Severity::Warning,
                config::MinSeverity::Critical => alerting::Severity::Critical,
            },
            timeout: r.timeout,
            kind: match &r.kind {
                config::ReceiverKind::Webhook {
                    url,
                    format,
                    signing_key,
                } => alerting::ReceiverKind::Webhook {
                    url: alerting::Endpoint(url.expose().clone()),
                    format: match format {
                        config::WebhookFormat::Alertmanager => {
                            alerting::WebhookFormat::Alertmanager
                        }
                        config::WebhookFormat::Linetokd => alerting::WebhookFormat::Linetokd,
                    },
                    secret: signing_key.clone(),
                },
                config::ReceiverKind::Slack { url } => alerting::ReceiverKind::Slack {
                    url: alerting::Endpoint(url.expose().clone()),
                },
                config::ReceiverKind::Alertmanager {
                    urls,
                    resend_interval,
                } => alerting::ReceiverKind::Alertmanager {
                    urls: urls.clone(),
                    resend_interval: dur(*resend_interval),
                },
                config::ReceiverKind::Line {
                    channel,
                    group,
                    to,
                    monthly_message_budget,
                } => alerting::ReceiverKind::Line {
                    api: config.daemon.line_api.clone(),
                    channel: channel.clone(),
                    group: group.clone(),
                    to: to.clone(),
                    monthly_budget: *monthly_message_budget,
                },
            },
        })
        .collect();
    NotifierSettings {
        route: alerting::RouteSettings {
            group_wait: dur(a.group_wait),
            group_interval: dur(a.group_interval),
            repeat_warning: dur(a.repeat_interval_warning),
            repeat_critical: dur(a.repeat_interval_critical),
        },
        external_url: a.external_url.as_ref().map(ToString::to_string),
        receivers,
        channel_names: config.channel_index(),
        tokens,
    }
}

/// The token source of `line` receivers in the daemon: the token book.
fn book_tokens(book: &TokenBook) -> alerting::TokenSource {
    let book = book.clone();
    alerting::TokenSource::new(move |channel, group| {
        book.get(channel, group).current.map(|t| t.token)
    })
}

/// Logs what the config allows but is likely a mistake
/// ([`ValidConfig::warnings`]).
fn log_config_warnings(config: &ValidConfig) {
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
}

/// Under `[ha]`, the leadership of channels: the instance ID (the
/// configured one, else `hostname:pid`, read here), the lease, the renewal
/// interval and the request timeout, on the suspend-counting clock.
fn leadership(
    config: &ValidConfig,
    metrics: &Arc<Metrics>,
) -> Option<Arc<crate::leader::Leadership>> {
    let ha = config.ha.as_ref()?;
    let hostname = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    let me = config::resolve_instance_id(ha.instance_id.as_ref(), &hostname, std::process::id());
    let span =
        |d: std::time::Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    Some(crate::leader::Leadership::new(
        crate::leader::LeaseSettings {
            me,
            incarnation: format!("{:032x}", rand::random::<u128>()),
            lease: span(ha.lease),
            renew: span(ha.renew),
            request_timeout: span(config.daemon.request_timeout),
            line_clock_allowance: span(ha.line_clock_allowance),
        },
        Arc::new(|| crate::ha::Mono::from_millis(crate::clock::boot_millis())),
        Arc::clone(metrics),
    ))
}

/// Each configured group's sinks and hook, for the delivery service.
pub fn delivery_groups(config: &ValidConfig) -> HashMap<(ChannelId, GroupName), GroupDelivery> {
    // Hooks inherit a small, fixed part of the daemon's environment
    // (PATH, HOME, locale, TZ): never NOTIFY_SOCKET or anything secret.
    // `vars_os`: a variable that is not UTF-8 must not stop the daemon
    // (`vars` panics on one); those inherited are passed on as they are.
    let hook_env = hook::inherited_env(std::env::vars_os());
    let mut groups = HashMap::new();
    for channel in &config.channels {
        for group in &channel.groups {
            let sinks = group
                .sinks
                .iter()
                .map(|s| SinkSpec {
                    path: s.path.clone(),
                    format: match s.format {
                        config::SinkFormat::Raw => SinkFormat::Raw,
                        config::SinkFormat::Json => SinkFormat::Json,
                        config::SinkFormat::Env => SinkFormat::Env,
                    },
                    mode: s.mode,
                    owner: s.owner.clone(),
                    group: s.group.clone(),
                })
                .collect();
            let hook = group.on_rotate.as_ref().map(|h| HookSpec {
                argv: h.argv.clone(),
                timeout: h.timeout,
                env: hook_env.clone(),
            });
            groups.insert(
                (channel.id.clone(), group.name.clone()),
                GroupDelivery { sinks, hook },
            );
        }
    }
    groups
}

/// The token API's keys: every configured group, with its API key digest
/// when it has an `api_key_file`.
pub fn api_keys(config: &ValidConfig) -> ApiKeys {
    let mut keys = ApiKeys::new();
    for channel in &config.channels {
        keys.name_channel(channel.id.clone(), channel.name.clone());
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
        if let Some(ll) = &channel.long_lived {
            keys.insert_long_lived(channel.id.clone(), ll.api_key.as_ref());
        }
        if let Some(stateless) = &channel.stateless {
            if !http::usable_api_key(&stateless.api_key) {
                tracing::warn!(
                    channel = %channel.id,
                    "the stateless api_key_file holds spaces or control characters, which no `Authorization: Bearer` header can carry: the stateless token API will refuse every request for this channel"
                );
            }
            keys.insert_stateless(channel.id.clone(), &stateless.api_key);
        }
    }
    keys
}

/// The stateless token cache's channels: every channel whose
/// `[channel.stateless]` is enabled, with its credentials, rules and
/// sinks. The load timeout is `daemon.request_timeout`.
///
/// # Errors
/// When an assertion window is out of LINE's range (validation already
/// refuses that).
pub fn stateless_setups(config: &ValidConfig) -> anyhow::Result<Vec<StatelessSetup>> {
    let window = Duration::from_std(config.rotation.assertion_window)
        .context("rotation.assertion_window is out of range")?;
    let mut setups = Vec::new();
    for c in &config.channels {
        let Some(s) = &c.stateless else { continue };
        let d = |std: std::time::Duration| Duration::from_std(std).unwrap_or(Duration::MAX);
        let auth = match (s.outline.auth, &c.secret) {
            (config::StatelessAuthKind::Secret, Some(secret)) => {
                StatelessAuth::Secret(secret.clone())
            }
            (config::StatelessAuthKind::Secret, None) => {
                anyhow::bail!(
                    "channel {}: stateless.auth = \"secret\" needs secret_file",
                    c.id
                )
            }
            (config::StatelessAuthKind::Assertion, _) => {
                let Some(a) = &c.assertion else {
                    anyhow::bail!(
                        "channel {}: stateless.auth = \"assertion\" needs key_file and kid",
                        c.id
                    )
                };
                StatelessAuth::Assertion(Arc::new(
                    AssertionSigner::new(c.id.clone(), a.kid.clone(), Arc::clone(&a.key))
                        .with_window(window)
                        .with_context(|| format!("channel {}: rotation.assertion_window", c.id))?,
                ))
            }
        };
        setups.push(StatelessSetup {
            channel: c.id.clone(),
            identity: stateless_identity(c, &auth),
            auth,
            rules: StatelessRules {
                margins: Margins {
                    refresh_margin: d(s.outline.refresh_margin),
                    refresh_ahead: d(s.outline.refresh_ahead),
                },
                max_issues_per_minute: s.outline.max_issues_per_minute,
                load_timeout: config.daemon.request_timeout,
            },
            sinks: s.sinks.iter().map(sink_spec).collect(),
        });
    }
    Ok(setups)
}

/// A digest of the credentials a channel's stateless issues use: the
/// auth kind and, by assertion, the kid and the key's public half, by
/// secret, the secret. SHA-256, so it reveals nothing of the secret.
fn stateless_identity(c: &ChannelConfig, auth: &StatelessAuth) -> String {
    let (kid, n, e) = assertion_parts(c);
    let parts: Vec<&str> = match auth {
        StatelessAuth::Assertion(_) => vec![c.id.as_str(), "assertion", &kid, &n, &e],
        StatelessAuth::Secret(secret) => vec![c.id.as_str(), "secret", secret.expose()],
    };
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in parts {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A configured sink as the writer takes it.
fn sink_spec(s: &config::SinkConfig) -> SinkSpec {
    SinkSpec {
        path: s.path.clone(),
        format: match s.format {
            config::SinkFormat::Raw => SinkFormat::Raw,
            config::SinkFormat::Json => SinkFormat::Json,
            config::SinkFormat::Env => SinkFormat::Env,
        },
        mode: s.mode,
        owner: s.owner.clone(),
        group: s.group.clone(),
    }
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

/// Runs the daemon from the config at `config_path` until `shutdown` fires:
/// tells systemd when it is ready (and keeps its watchdog fed), reloads the
/// config on SIGHUP and when the file changes, and stops cleanly.
///
/// `env` is the process environment (for `LINETOKD__` overrides, `${NAME}`
/// expansion and systemd's `NOTIFY_SOCKET`/`WATCHDOG_*`).
/// `config_text` is the file's text that `config` was validated from: kept
/// as the config in force ([`CONFIG_IN_FORCE`]), then dropped (a config of
/// 100,000 groups is 10 MB of text). `config` itself is dropped once the
/// daemon has started: everything kept of it is in the daemon's parts (its
/// group entries and their API keys' text alone are about 170 bytes a
/// group), and a reload reads the file anew.
///
/// # Errors
/// As [`Daemon::start`], or when the SIGHUP handler cannot be installed.
pub async fn run(
    config_path: &Path,
    config_text: String,
    env: &HashMap<String, String>,
    config: ValidConfig,
    clock: SharedClock,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Installed first: SIGHUP's default action would kill the process.
    let mut hangup = signal(SignalKind::hangup()).context("while installing the SIGHUP handler")?;
    // Watching before anything starts: an edit made while the store opens
    // or the first pass runs is queued, not missed.
    let mut watcher = match ConfigWatcher::new(config_path) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(path = %config_path.display(), error = %e, "cannot watch the config file; reload with SIGHUP");
            None
        }
    };
    let notifier = systemd_notifier(env).map(Arc::new);
    let daemon = Daemon::start(
        &config,
        Arc::clone(&clock),
        shutdown.clone(),
        RunOptions::default(),
    )
    .await?;

    let state_dir = config.daemon.state_dir.clone();
    drop(config);
    save_config_in_force(&state_dir, &config_text);
    drop(config_text);

    // READY=1 once the store is open and the first pass has planned.
    let mut progress = daemon.scheduler.clone();
    tokio::select! {
        _ = progress.wait_for(|s| s.passes >= 1) => {}
        () = shutdown.cancelled() => {}
    }
    let watchdog = notifier.as_ref().map(|n| {
        let _ = n
            .ready()
            .map_err(|e| tracing::warn!(error = %e, "could not tell systemd we are ready"));
        let (n, clock, stop) = (Arc::clone(n), Arc::clone(&clock), shutdown.child_token());
        tokio::spawn(async move { n.keep_watchdog(clock.as_ref(), stop).await })
    });

    loop {
        let cause = tokio::select! {
            () = shutdown.cancelled() => break,
            _ = hangup.recv() => "SIGHUP",
            changed = file_changed(&mut watcher) => {
                if let Err(e) = changed {
                    tracing::warn!(error = %e, "watching the config file failed; reload with SIGHUP");
                    watcher = None;
                    continue;
                }
                "the config file changed"
            }
        };
        if let Some(n) = &notifier {
            let _ = n.reloading();
        }
        reload(&daemon, config_path, env, cause, &state_dir).await;
        if let Some(n) = &notifier {
            let _ = n.ready();
        }
    }

    tracing::info!("shutting down: finishing the LINE call in flight");
    if let Some(n) = &notifier {
        let _ = n.stopping();
    }
    let outcome = daemon.stopped().await;
    if let Some(task) = watchdog {
        let _ = task.await;
    }
    // No daemon runs on it any more: the commands must judge the file
    // itself again (a mistake in it is then a usage error, exit 2).
    let _ = std::fs::remove_file(state_dir.join(CONFIG_IN_FORCE));
    // The database went away underfoot: the error names the file; exit 1.
    outcome?;
    tracing::info!("stopped");
    Ok(())
}

/// How long the config file must be quiet before a change is applied: an
/// editor's save is several events.
const RELOAD_DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(300);

async fn file_changed(watcher: &mut Option<ConfigWatcher>) -> std::io::Result<()> {
    match watcher {
        Some(w) => {
            w.changed().await?;
            w.settled(RELOAD_DEBOUNCE).await
        }
        None => std::future::pending().await,
    }
}

/// Loads, validates and applies the config file. A bad file leaves the old
/// config in force: the error is logged with the offending keys, counted in
/// `linetokd_config_reloads_total{result="failure"}`, and noted for
/// `linetokd status`.
///
/// The text applied is kept as the config in force in `state_dir`, the
/// running daemon's (where `run` removes it when it stops), even when the
/// new file names another one.
async fn reload(
    daemon: &Daemon,
    path: &Path,
    env: &HashMap<String, String>,
    cause: &str,
    state_dir: &Path,
) {
    tracing::info!(cause, path = %path.display(), "reloading the config");
    // The text is read once: what is validated and applied is what is kept
    // as the config in force.
    let loaded = crate::config::read_text(path).and_then(|text| {
        Settings::from_toml(&text, path, env)
            .and_then(|s| s.validate())
            .map(|config| (text, config))
    });
    let outcome = match loaded {
        Ok((text, config)) => {
            let applied = daemon.reload(&config).await;
            if applied.is_ok() {
                save_config_in_force(state_dir, &text);
            }
            applied
        }
        Err(e) => Err(anyhow::Error::new(e)),
    };
    daemon.metrics.config_reload(outcome.is_ok());
    let note = match &outcome {
        Ok(()) => format!("ok ({cause})"),
        Err(e) => format!("failed ({cause}): {e:#}"),
    };
    // The note and the alert are stored before the outcome is logged: what
    // watches the log (an operator, a test) then finds them in `status`.
    let (store, now) = (daemon.rotator.store().clone(), daemon.clock.now());
    let written = store
        .blocking(move |s| s.set_note(now, LAST_RELOAD, &note))
        .await;
    if let Err(e) = written {
        tracing::warn!(error = %e, "could not record the reload's outcome");
    }
    let failure = outcome.as_ref().err().map(|e| {
        format!(
            "the config reload ({cause}) was rejected and the previous config stays in force: {e:#}"
        )
    });
    reload_alert(daemon.rotator.store(), now, failure).await;
    match &outcome {
        Ok(()) => tracing::info!("config reloaded"),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "config reload failed; the previous config stays in force");
        }
    }
}

/// The copy of the config file the daemon runs on, in `state_dir`, removed
/// when it stops: the commands that talk to the running daemon (`status`,
/// `health`, `token`, `rotate`, `revoke`) fall back to it while the file
/// itself has a mistake, so a half-finished edit never locks the operator
/// out.
pub const CONFIG_IN_FORCE: &str = "config-in-force.toml";

/// Writes `text` as [`CONFIG_IN_FORCE`] (mode 0600, replaced atomically).
/// A failure is logged: the file is a convenience for the commands.
fn save_config_in_force(state_dir: &Path, text: &str) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let target = state_dir.join(CONFIG_IN_FORCE);
    let temporary = state_dir.join(format!(".{CONFIG_IN_FORCE}.tmp"));
    let written = (|| {
        let _ = std::fs::remove_file(&temporary);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, &target)
    })();
    if let Err(e) = written {
        tracing::warn!(path = %target.display(), error = %e, "cannot keep a copy of the config in force; the commands cannot fall back to it");
    }
}

/// The daemon-wide alert for a rejected config reload: raised with
/// `failure`, resolved by the next good load (a reload or a start).
pub const CONFIG_RELOAD_FAILED: &str = "config_reload_failed";

/// States `config_reload_failed`: firing with `failure`'s sentence, or
/// resolved when `None`. A store failure is logged: the outcome is also in
/// the log and `linetokd status`.
async fn reload_alert(store: &Store, now: DateTime<Utc>, failure: Option<String>) {
    let synced = store
        .blocking(move |store| store.set_daemon_warning(now, CONFIG_RELOAD_FAILED, failure))
        .await;
    // Each edge logged once, as every other alert owner does.
    match synced {
        Ok(changes) => {
            for raised in &changes.raised {
                tracing::warn!(alert = raised.alertname, "{}", raised.summary);
            }
            if !changes.resolved.is_empty() {
                tracing::info!(
                    alert = CONFIG_RELOAD_FAILED,
                    "alert resolved: the config in force was loaded without problems"
                );
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not record the config_reload_failed alert");
        }
    }
}

/// The systemd notifier, when running under `Type=notify`.
fn systemd_notifier(env: &HashMap<String, String>) -> Option<Notifier> {
    let get = |k: &str| env.get(k).map(String::as_str);
    match Notifier::from_env_values(
        get("NOTIFY_SOCKET"),
        get("WATCHDOG_USEC"),
        get("WATCHDOG_PID"),
        std::process::id(),
    ) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring systemd's notification settings");
            None
        }
    }
}

/// A token cancelled on the first SIGINT or SIGTERM.
///
/// # Errors
/// When the signal handlers cannot be installed.
pub fn shutdown_on_signals() -> std::io::Result<CancellationToken> {
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

/// The policy's rules from the `[rotation]` settings and `[alerts]
/// capacity_low_threshold`.
pub fn rules(r: &RotationSettings, capacity_low_threshold: u32) -> Rules {
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
        capacity_low_threshold,
        ..Rules::default()
    }
}

/// The rules the daemon runs by: [`rules`], and under `[ha]` (the section
/// in force: a reload does not change it) its `line_clock_allowance`.
fn daemon_rules(config: &ValidConfig, ha: Option<&crate::config::HaConfig>) -> Rules {
    let mut rules = rules(&config.rotation, config.alerts.capacity_low_threshold);
    if let Some(ha) = ha {
        rules.line_clock_allowance =
            Duration::from_std(ha.line_clock_allowance).unwrap_or(Duration::MAX);
    }
    rules
}

/// A digest of the channels and groups `config` names (what the instances
/// under `[ha]` compare: they share one set of groups in the store).
fn config_digest(config: &ValidConfig) -> String {
    let specs = format!("{:?}", channel_specs(config));
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, specs.as_bytes())
        .as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
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
            short_lived: c
                .groups
                .iter()
                .filter(|g| g.kind == TokenKind::ShortLived)
                .map(|g| g.name.clone())
                .collect(),
            fingerprint: Some(channel_fingerprint(c)),
        })
        .collect()
}

/// The channel's assertion `kid` and the public key's `n` and `e`, empty
/// without a key: what digests of the channel's credentials take in.
fn assertion_parts(c: &ChannelConfig) -> (String, String, String) {
    c.assertion.as_ref().map_or_else(Default::default, |a| {
        let jwk = a.key.public_jwk();
        (a.kid.to_string(), jwk.n, jwk.e)
    })
}

/// A digest of what LINE judges a channel's requests by: its ID, key ID,
/// the signing key's public half and the secret. When it changes (a config
/// fix), the store ends the channel's failure streaks, also across a
/// restart. SHA-256, so the stored digest reveals nothing of the secret.
fn channel_fingerprint(c: &ChannelConfig) -> String {
    let (kid, n, e) = assertion_parts(c);
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in [
        c.id.as_str(),
        &kid,
        &n,
        &e,
        c.secret.as_ref().map_or("", |s| s.expose()),
    ] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every channel's `[channel.long_lived]`, for the watchers.
pub fn long_lived_channels(config: &ValidConfig) -> Vec<(ChannelId, crate::longlived::Settings)> {
    config
        .channels
        .iter()
        .filter_map(|c| {
            c.long_lived.as_ref().map(|ll| {
                (
                    c.id.clone(),
                    crate::longlived::Settings {
                        token_file: ll.token_file.clone(),
                        verify_interval: ll.verify_interval,
                        sinks: ll.sinks.iter().map(sink_spec).collect(),
                    },
                )
            })
        })
        .collect()
}

/// The control socket's view of the long-lived watchers.
impl control::LongLivedEngine for crate::longlived::Service {
    fn retire<'a>(
        &'a self,
        channel: &'a ChannelId,
        expected: Option<&'a str>,
    ) -> control::EngineFuture<'a, Result<String, String>> {
        Box::pin(async move { self.retire(channel, expected).await.map(|r| r.fingerprint) })
    }
}

/// The control socket's view of the rotator (see [`control::Engine`]).
impl control::Engine for Rotator {
    fn subscribe(&self) -> broadcast::Receiver<RotationEvent> {
        Rotator::subscribe(self)
    }

    fn channels(&self) -> Vec<(ChannelId, String, bool)> {
        Rotator::channels(self)
            .iter()
            .map(|c| (c.id.clone(), c.name.clone(), c.secret.is_some()))
            .collect()
    }

    fn request_rotation<'a>(
        &'a self,
        channel: &'a ChannelId,
        group: Option<&'a GroupName>,
        by: &'a str,
    ) -> control::EngineFuture<'a, Result<Vec<(GroupName, i64)>, String>> {
        Box::pin(async move {
            Rotator::request_rotation(self, channel, group, by)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn request_incident<'a>(
        &'a self,
        channel: &'a ChannelId,
        group: &'a GroupName,
        by: &'a str,
    ) -> control::EngineFuture<'a, Result<i64, String>> {
        Box::pin(async move {
            Rotator::request_incident(self, channel, group, by)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn request_outcome(&self, id: i64) -> control::EngineFuture<'_, Option<RequestOutcome>> {
        Box::pin(async move {
            let store = self.store().clone();
            store
                .blocking(move |s| s.request_outcome(id))
                .await
                .ok()
                .flatten()
        })
    }

    fn live_tokens<'a>(
        &'a self,
        channel: &'a ChannelId,
        group: &'a GroupName,
    ) -> control::EngineFuture<'a, Option<control::LiveTokens>> {
        Box::pin(async move {
            let now = self.clock().now();
            let (store, channel, group) = (self.store().clone(), channel.clone(), group.clone());
            let tokens = store
                .blocking(move |s| s.tokens_of_group(&channel, &group))
                .await
                .ok()?;
            let mut live: Vec<_> = tokens
                .into_iter()
                .filter(|t| t.record.is_live_at(now))
                .map(|t| (t.record.issued_at, t.record.key_id, t.record.expires_at))
                .collect();
            live.sort();
            Some(live.into_iter().map(|(_, k, e)| (k, e)).collect())
        })
    }

    fn led_elsewhere(&self, channel: &ChannelId) -> Option<String> {
        let lead = self.leadership()?;
        if lead.standing(channel).held().is_some() {
            return None;
        }
        Some(match lead.last_holder(channel) {
            Some(holder) => format!("instance {holder}"),
            None => "no instance at the moment (its lease is free and is taken within seconds)"
                .to_owned(),
        })
    }
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
            let signer = c
                .assertion
                .as_ref()
                .map(|a| {
                    AssertionSigner::new(c.id.clone(), a.kid.clone(), Arc::clone(&a.key))
                        .with_window(window)
                        .with_context(|| format!("channel {}: rotation.assertion_window", c.id))
                })
                .transpose()?;
            Ok(ChannelSetup {
                id: c.id.clone(),
                name: c.name.clone(),
                signer,
                secret: c.secret.clone(),
                groups: c.groups.iter().map(|g| g.name.clone()).collect(),
                fingerprint: Some(channel_fingerprint(c)),
            })
        })
        .collect()
}

/// What happens to the tokens of a group that left the config: revoked
/// after `removal_grace` when its channel is still configured with its
/// secret, else left to expire (the secret left with the channel). (An
/// outside test saw the log promise a revocation `status` then said would
/// not come.)
fn removal_words(config: &ValidConfig, channel: &ChannelId) -> &'static str {
    let secret = config
        .channels
        .iter()
        .any(|c| &c.id == channel && c.secret.is_some());
    if secret {
        "its tokens are revoked after removal_grace"
    } else {
        "its tokens are left to expire: linetokd has no secret for its channel to revoke them with"
    }
}
