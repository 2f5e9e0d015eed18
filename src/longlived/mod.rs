//! Long-lived channel access tokens, watched (docs/design.md, "Long-lived
//! tokens"): LINE's console issues them, the operator keeps one in the
//! channel's `token_file`, and linetokd only checks it. One task per channel
//! with `[channel.long_lived]`:
//!
//! - reads the file at start, on every change (inotify on its directory,
//!   [`crate::watch`]) and before every verify (so a missed event costs at
//!   most one interval);
//! - verifies the current value every `verify_interval` (±10% jitter) with
//!   `POST /v2/oauth/verify`, checking `client_id` is the channel; a
//!   transient failure is retried with backoff;
//! - after the file changed, keeps the old value **in memory only** and
//!   verifies it every interval until LINE rejects it (the 0–24 h grace of
//!   a console reissue);
//! - states its alerts ([`rules::ALERT_NAMES`]) in the store, records each
//!   token's row (by fingerprint: the value never reaches the store, a log,
//!   a metric or an error) for `linetokd status`, and sets the
//!   `linetokd_long_lived_*` metrics;
//! - carries out `linetokd long-lived retire` for a running daemon
//!   ([`Service::retire`]): revoke with `POST /v2/oauth/revoke`, confirm
//!   with verify (LINE answers 200 even for an invalid token), then stop
//!   verifying and alerting about that fingerprint, persisted in the store.
//!
//! What a verify answer means, when to ask again and which alerts stand is
//! [`rules`] (pure). Depends on `line` (the client), `store`, `metrics`,
//! `clock`, `watch`; `app` hands it the settings and the config's token-file
//! reader and starts it ([`Service::set_channels`]) and nothing below
//! `app` calls it.

pub mod rules;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::SharedClock;
use crate::delivery::long_lived;
use crate::delivery::sink::{self, SinkSpec};
use crate::domain::{AccessToken, ChannelId};
use crate::line::{LineClient, Verification};
use crate::metrics::Metrics;
use crate::store::{AlertScope, LongLivedResult, LongLivedRole, LongLivedRow, Store};
use crate::watch::ConfigWatcher;

use self::rules::{Answer, Tracked};

/// How long the token file must be quiet after an event before it is read:
/// an editor's save or a config manager's rename is several events.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(100);

/// A token's name wherever people read about it: `sha256:` and the first 8
/// hex digits of its SHA-256.
pub fn fingerprint(token: &AccessToken) -> String {
    format!("sha256:{}", token.fingerprint())
}

/// What a retire did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retired {
    /// The revoked token's fingerprint.
    pub fingerprint: String,
}

/// Why a retire failed; never carries the token.
pub type RetireError = String;

/// A retire handed to a channel's watcher: the fingerprint the operator was
/// shown (if any), and where the outcome goes.
type RetireAsk = (
    Option<String>,
    oneshot::Sender<Result<Retired, RetireError>>,
);

/// Revokes `token` of `channel` at LINE and confirms with verify, since
/// `/v2/oauth/revoke` answers 200 for an invalid token too. Used by the
/// running daemon and by `linetokd long-lived retire` without one.
///
/// # Errors
/// When LINE cannot be reached, refuses the revoke, or still accepts the
/// token afterwards.
pub async fn revoke_and_confirm(line: &LineClient, token: &AccessToken) -> Result<(), RetireError> {
    let fp = fingerprint(token);
    line.revoke_short_lived(token)
        .await
        .map_err(|e| format!("revoking {fp} failed: {}", crate::logging::error_chain(&e)))?;
    match line.verify_short_lived(token).await {
        Ok(Verification::Rejected { .. }) => Ok(()),
        Ok(Verification::Valid(_)) => Err(format!(
            "LINE answered the revoke of {fp}, but still accepts the token: nothing was retired"
        )),
        Err(e) => Err(format!(
            "revoked {fp}, but the confirming verify failed: {}; run the command again",
            crate::logging::error_chain(&e)
        )),
    }
}

/// A channel's `[channel.long_lived]`, as `app` hands it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The watched file.
    pub token_file: PathBuf,
    /// How often the token is verified (before jitter).
    pub verify_interval: std::time::Duration,
    /// Files the current token is written to whenever it changes.
    pub sinks: Vec<SinkSpec>,
}

/// Reads a token file, with the checks every secret file gets (`app` hands
/// over the config's reader, so this module never reads the config); the
/// error names the file, never its contents.
pub type TokenReader = fn(&Path) -> Result<AccessToken, String>;

/// `linetokd long-lived retire` without a running daemon: revokes and
/// confirms, then records the retirement in `store` so the next start
/// neither verifies nor alerts about the token.
///
/// # Errors
/// As [`revoke_and_confirm`], or when the store cannot be written.
pub async fn retire_offline(
    line: &LineClient,
    store: &Store,
    now: DateTime<Utc>,
    channel: &ChannelId,
    token: &AccessToken,
) -> Result<(), RetireError> {
    revoke_and_confirm(line, token).await?;
    let fp = fingerprint(token);
    store.retire_long_lived(now, channel, &fp).map_err(|e| {
        format!(
            "revoked {fp}, but recording it failed: {}",
            crate::logging::error_chain(&e)
        )
    })
}

/// Everything a channel's watcher needs besides its own settings.
#[derive(Clone)]
pub struct Parts {
    /// The store rows and alerts go to.
    pub store: Store,
    /// LINE.
    pub line: LineClient,
    /// "Now" and the waits.
    pub clock: SharedClock,
    /// Where the gauges are.
    pub metrics: Arc<Metrics>,
    /// Fixes the jitter's random sequence (tests).
    pub seed: Option<u64>,
    /// Reads the token file.
    pub read: TokenReader,
}

struct Running {
    config: Settings,
    stop: CancellationToken,
    retire: mpsc::Sender<RetireAsk>,
}

/// A long-lived token the token API may hand out.
#[derive(Debug, Clone)]
pub struct Served {
    /// The value read from the token file.
    pub token: AccessToken,
    /// Its fingerprint.
    pub fingerprint: String,
}

/// What each channel's watcher serves through the token API: the file's
/// current value while it is neither refused by LINE nor retired.
type ServedBook = Arc<Mutex<HashMap<ChannelId, Served>>>;

/// A channel's values as its watcher last published them: the file's
/// current value and the old ones still inside a reissue's grace.
type Values = (Option<Held>, Vec<Held>);

/// One channel's [`Values`], in memory only, behind an async lock that a
/// watcher holds for its whole life: a watcher restarted by a reload (its
/// settings changed) waits until its predecessor has stopped and then takes
/// the values over, so no sequence of reloads loses an old value inside
/// its grace. A restart of the daemon forgets them, as it must (the values
/// are never stored).
type Slot = Arc<tokio::sync::Mutex<Values>>;

/// Every channel's [`Slot`].
type Memory = Arc<Mutex<HashMap<ChannelId, Slot>>>;

/// The watchers of every channel with `[channel.long_lived]`.
pub struct Service {
    parts: Parts,
    served: ServedBook,
    memory: Memory,
    running: Mutex<HashMap<ChannelId, Running>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    /// Counts the rounds every watcher published (see [`Service::rounds`]).
    rounds: Arc<tokio::sync::watch::Sender<u64>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("longlived::Service").finish_non_exhaustive()
    }
}

impl Service {
    /// A service with no watcher yet; they stop when `shutdown` fires.
    /// Marks the old values the previous run verified as ended: they were
    /// only in its memory.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn start(
        parts: Parts,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, crate::store::StoreError> {
        let forgotten = parts.store.blocking(Store::forget_old_long_lived).await?;
        if forgotten > 0 {
            tracing::info!(
                forgotten,
                "old long-lived token values of the previous run are no longer verified"
            );
        }
        Ok(Arc::new(Self {
            parts,
            served: Arc::default(),
            memory: Arc::default(),
            running: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
            shutdown,
            rounds: Arc::new(tokio::sync::watch::Sender::new(0)),
        }))
    }

    /// Makes the watchers match `channels`: starts the new ones, restarts
    /// those whose config changed, stops the removed ones (at start and on
    /// every reload). A restarted watcher takes over its predecessor's
    /// values, current and old (a [`Memory`]), so a reload never stops the
    /// verifying of an old value inside its grace.
    pub fn set_channels(&self, channels: Vec<(ChannelId, Settings)>) {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let wanted: HashMap<ChannelId, Settings> = channels.into_iter().collect();
        running.retain(|channel, r| {
            let keep = wanted.get(channel) == Some(&r.config);
            if !keep {
                r.stop.cancel();
                if !wanted.contains_key(channel) {
                    self.forget(channel);
                }
            }
            keep
        });
        for (channel, config) in wanted {
            if running.contains_key(&channel) {
                continue;
            }
            let stop = self.shutdown.child_token();
            let (tx, rx) = mpsc::channel(4);
            let slot = self.slot(&channel);
            let watcher = Watcher::new(
                self.parts.clone(),
                Arc::clone(&self.served),
                channel.clone(),
                config.clone(),
            );
            self.tasks
                .spawn(watcher.run(slot, Arc::clone(&self.rounds), stop.clone(), rx));
            running.insert(
                channel,
                Running {
                    config,
                    stop,
                    retire: tx,
                },
            );
        }
    }

    /// The channel's [`Slot`], made on first use and kept for good.
    fn slot(&self, channel: &ChannelId) -> Slot {
        Arc::clone(
            self.memory
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(channel.clone())
                .or_default(),
        )
    }

    /// Cleans up after a channel whose `[channel.long_lived]` was removed,
    /// once its watcher has stopped (it holds the channel's [`Slot`] until
    /// then, so its last publish cannot undo this): nothing is served, its
    /// values are dropped, its rows end and its alerts resolve, since
    /// nobody watches that token now. The slot stays in the map, so a
    /// section added back at once waits for this cleanup (the lock is
    /// fair) and starts from nothing.
    fn forget(&self, channel: &ChannelId) {
        let slot = self.slot(channel);
        let (served, metrics, store, clock, ch) = (
            Arc::clone(&self.served),
            Arc::clone(&self.parts.metrics),
            self.parts.store.clone(),
            Arc::clone(&self.parts.clock),
            channel.clone(),
        );
        self.tasks.spawn(async move {
            let mut values = slot.lock_owned().await;
            *values = (None, Vec::new());
            served
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&ch);
            metrics.remove_long_lived(&ch);
            let now = clock.now();
            let _ = store
                .blocking(move |s| {
                    s.sync_long_lived(&ch, &[])?;
                    s.sync_alerts(
                        now,
                        AlertScope {
                            channel: Some(&ch),
                            group: None,
                            names: rules::ALERT_NAMES,
                        },
                        &[],
                    )
                })
                .await;
        });
    }

    /// Retires the current long-lived token of `channel` (see the module
    /// documentation), in the channel's watcher.
    ///
    /// # Errors
    /// When the channel has no `[channel.long_lived]`, the file cannot be
    /// read or holds another token than `expected` (the fingerprint the
    /// operator was shown), or the revoke is not confirmed.
    pub async fn retire(
        &self,
        channel: &ChannelId,
        expected: Option<&str>,
    ) -> Result<Retired, RetireError> {
        let sender = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(channel)
            .map(|r| r.retire.clone())
            .ok_or_else(|| {
                format!("channel {channel} has no [channel.long_lived] in the config in force")
            })?;
        let (tx, rx) = oneshot::channel();
        sender
            .send((expected.map(str::to_owned), tx))
            .await
            .map_err(|_| "the long-lived watcher of the channel stopped".to_owned())?;
        rx.await
            .map_err(|_| "the long-lived watcher of the channel stopped".to_owned())?
    }

    /// How many rounds (read, verify, publish) the watchers have finished
    /// so far: a caller that must see the effect of the next round (a
    /// test after a start or a file change) waits for it to grow.
    pub fn rounds(&self) -> tokio::sync::watch::Receiver<u64> {
        self.rounds.subscribe()
    }

    /// The long-lived token `channel` serves through the token API, if any.
    pub fn served(&self, channel: &ChannelId) -> Option<Served> {
        self.served
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(channel)
            .cloned()
    }

    /// Waits until every watcher stopped (after shutdown).
    pub async fn stopped(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// A token the watcher holds: its value (memory only) and what is known.
#[derive(Clone)]
struct Held {
    value: AccessToken,
    tracked: Tracked,
}

struct Watcher {
    parts: Parts,
    served: ServedBook,
    channel: ChannelId,
    config: Settings,
    current: Option<Held>,
    old: Vec<Held>,
    file_problem: Option<String>,
    retired: HashSet<String>,
    /// The channel's rows as the store had them at start.
    stored: Vec<LongLivedRow>,
    /// Tokens the last run had as current that the file no longer holds
    /// (replaced while the daemon was stopped): ended at the next publish.
    stale: Vec<Tracked>,
    /// The fingerprint the sinks hold, once every one of them was written;
    /// in memory: a restart writes them again, which is harmless.
    written: Option<String>,
    rng: StdRng,
}

impl Watcher {
    fn new(parts: Parts, served: ServedBook, channel: ChannelId, config: Settings) -> Self {
        let rng = match parts.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self {
            parts,
            served,
            channel,
            config,
            current: None,
            old: Vec::new(),
            file_problem: None,
            retired: HashSet::new(),
            stored: Vec::new(),
            stale: Vec::new(),
            written: None,
            rng,
        }
    }

    async fn run(
        mut self,
        slot: Slot,
        rounds: Arc<tokio::sync::watch::Sender<u64>>,
        stop: CancellationToken,
        mut retires: mpsc::Receiver<RetireAsk>,
    ) {
        // A reload restarted this watcher: once its predecessor stopped,
        // what it held (the file's value, and old values still inside
        // their grace) goes on here.
        let mut values = tokio::select! {
            () = stop.cancelled() => return,
            values = slot.lock_owned() => values,
        };
        (self.current, self.old) = values.clone();
        self.load_stored().await;
        let mut file_watch = match ConfigWatcher::new(&self.config.token_file) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(channel = %self.channel, file = %self.config.token_file.display(), error = %e,
                    "cannot watch the long-lived token file; it is read again before every verify");
                None
            }
        };
        self.read_file();
        loop {
            self.verify_due().await;
            if stop.is_cancelled() {
                // Stopped during a verify: the successor takes the values
                // over and publishes them; this one must not serve any more.
                *values = (self.current.clone(), self.old.clone());
                return;
            }
            self.publish().await;
            *values = (self.current.clone(), self.old.clone());
            rounds.send_modify(|n| *n += 1);
            let next = self.next_at();
            let clock = Arc::clone(&self.parts.clock);
            tokio::select! {
                () = stop.cancelled() => return,
                () = async {
                    match next {
                        Some(at) => clock.sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {}
                changed = changed(&mut file_watch) => {
                    if let Err(e) = changed {
                        tracing::warn!(channel = %self.channel, error = %e, "watching the long-lived token file failed; it is read before every verify");
                        file_watch = None;
                    }
                    self.read_file();
                }
                Some((expected, reply)) = retires.recv() => {
                    let outcome = self.retire(expected.as_deref()).await;
                    let _ = reply.send(outcome);
                }
            }
        }
    }

    /// Takes over what the store knows of the file's token: when it was
    /// first seen, its last answers, whether it was retired.
    async fn load_stored(&mut self) {
        let channel = self.channel.clone();
        match self.parts.store.blocking(Store::long_lived_rows).await {
            Ok(rows) => {
                self.retired = rows
                    .iter()
                    .filter(|r| r.channel == channel && r.retired_at.is_some())
                    .map(|r| r.fingerprint.clone())
                    .collect();
                self.stored = rows.into_iter().filter(|r| r.channel == channel).collect();
            }
            Err(e) => {
                tracing::warn!(channel = %self.channel, error = %crate::logging::error_chain(&e), "cannot read the long-lived tokens' rows")
            }
        }
    }
}

/// Resolves when the token file changed and settled; never without a watch.
async fn changed(watch: &mut Option<ConfigWatcher>) -> std::io::Result<()> {
    match watch {
        Some(w) => {
            w.changed().await?;
            w.settled(SETTLE).await
        }
        None => std::future::pending().await,
    }
}

impl Watcher {
    fn now(&self) -> DateTime<Utc> {
        self.parts.clock.now()
    }

    fn interval(&mut self) -> chrono::Duration {
        rules::jittered(self.config.verify_interval, self.rng.random::<f64>())
    }

    /// Reads the token file; a new value becomes current and the one it
    /// replaces is kept, in memory, as old. An unreadable file keeps the
    /// last value and raises `long_lived_file_unreadable`.
    fn read_file(&mut self) {
        let value = match (self.parts.read)(&self.config.token_file) {
            Ok(value) => value,
            Err(reason) => {
                // The reader's reason names the file already.
                let problem = reason;
                if self.file_problem.as_deref() != Some(problem.as_str()) {
                    tracing::warn!(channel = %self.channel, problem = %problem, "cannot read the long-lived token file");
                }
                self.file_problem = Some(problem);
                return;
            }
        };
        self.file_problem = None;
        if self.current.as_ref().is_some_and(|c| c.value == value) {
            return;
        }
        let now = self.now();
        let fp = fingerprint(&value);
        // Back to a value still held as old: it is current again.
        let tracked = match self.old.iter().position(|o| o.value == value) {
            Some(i) => self.old.remove(i).tracked,
            None => self.restored(&fp, now),
        };
        tracing::info!(channel = %self.channel, fingerprint = %fp, "long-lived token read from the token file");
        if self.current.is_none() {
            // The first value this run read: a current token of the last
            // run that the file no longer holds was replaced meanwhile, and
            // its value is gone.
            let stale: Vec<Tracked> = self
                .stored
                .iter()
                .filter(|r| r.role == LongLivedRole::Current && r.fingerprint != fp)
                .map(|r| {
                    let mut t = self.restored(&r.fingerprint, now);
                    t.detail = "replaced in the token file while the daemon was stopped".to_owned();
                    t
                })
                .collect();
            self.stale = stale;
        }
        if let Some(previous) = self.current.take() {
            tracing::info!(channel = %self.channel, fingerprint = %previous.tracked.fingerprint,
                "long-lived token replaced in the file; the old value is verified until LINE rejects it");
            let mut previous = previous;
            previous.tracked.next_at = now;
            if !self.retired.contains(&previous.tracked.fingerprint) {
                self.old.push(previous);
            }
        }
        let mut tracked = tracked;
        tracked.next_at = now;
        self.current = Some(Held { value, tracked });
    }

    /// The tracking of `fp` as the store had it (a restart keeps when it was
    /// first seen), or a fresh one.
    fn restored(&self, fp: &str, now: DateTime<Utc>) -> Tracked {
        let mut t = Tracked::new(fp.to_owned(), now);
        if let Some(row) = self.stored.iter().find(|r| r.fingerprint == fp) {
            t.first_seen_at = row.first_seen_at;
            t.last_valid_at = row.last_valid_at;
            t.last_checked_at = row.last_checked_at;
            t.result = row.result;
            t.detail = row.detail.clone();
        }
        t
    }

    fn current_watched(&self) -> Option<&Held> {
        self.current
            .as_ref()
            .filter(|c| !self.retired.contains(&c.tracked.fingerprint))
    }

    /// The next instant a token is due for verify; `None` when nothing is
    /// watched (no readable file, or the current token is retired and no
    /// old one is left).
    fn next_at(&self) -> Option<DateTime<Utc>> {
        self.current_watched()
            .into_iter()
            .chain(self.old.iter())
            .map(|h| h.tracked.next_at)
            .min()
    }

    /// Verifies every watched token that is due; drops the old ones LINE
    /// rejected.
    async fn verify_due(&mut self) {
        let now = self.now();
        if self
            .current
            .as_ref()
            .is_some_and(|c| c.tracked.next_at <= now)
        {
            // Before each verify of the current token: a missed inotify
            // event costs at most one interval.
            self.read_file();
        }
        if let Some(held) = self.current.take() {
            let held = if self.retired.contains(&held.tracked.fingerprint) {
                held
            } else {
                self.verify_one(held, "current").await
            };
            self.current = Some(held);
        }
        let old = std::mem::take(&mut self.old);
        for held in old {
            let held = self.verify_one(held, "old").await;
            if held.tracked.refused() {
                tracing::info!(channel = %self.channel, fingerprint = %held.tracked.fingerprint,
                    "LINE no longer accepts the replaced long-lived token; it is forgotten");
                self.record(&held.tracked, LongLivedRole::Ended).await;
            } else {
                self.old.push(held);
            }
        }
    }

    async fn verify_one(&mut self, mut held: Held, which: &str) -> Held {
        let now = self.now();
        if held.tracked.next_at > now {
            return held;
        }
        let answer = match self.parts.line.verify_short_lived(&held.value).await {
            Ok(Verification::Valid(v)) => Answer::Valid {
                client_id: v.client_id.to_string(),
                expires_in: v.expires_in,
            },
            Ok(Verification::Rejected { code, .. }) => Answer::Rejected { code },
            Err(e) => {
                tracing::warn!(channel = %self.channel, fingerprint = %held.tracked.fingerprint, token = which,
                    error = %crate::logging::error_chain(&e), "verifying the long-lived token failed");
                Answer::Failed
            }
        };
        let interval = self.interval();
        let before = held.tracked.result;
        rules::apply(
            &mut held.tracked,
            &self.channel,
            self.now(),
            &answer,
            interval,
        );
        if held.tracked.result != before {
            tracing::info!(channel = %self.channel, fingerprint = %held.tracked.fingerprint, token = which,
                result = held.tracked.result.as_str(), "{}", held.tracked.detail);
        }
        held
    }

    /// Stores every row, states the alerts and sets the metrics.
    async fn publish(&mut self) {
        let mut rows: Vec<(Tracked, LongLivedRole)> = Vec::new();
        if let Some(c) = &self.current {
            rows.push((c.tracked.clone(), LongLivedRole::Current));
        }
        rows.extend(
            self.old
                .iter()
                .map(|o| (o.tracked.clone(), LongLivedRole::Old)),
        );
        rows.extend(
            std::mem::take(&mut self.stale)
                .into_iter()
                .map(|t| (t, LongLivedRole::Ended)),
        );
        let rows: Vec<LongLivedRow> = rows.iter().map(|(t, role)| self.row(t, *role)).collect();
        let channel = self.channel.clone();
        match self
            .parts
            .store
            .blocking(move |s| s.sync_long_lived(&channel, &rows))
            .await
        {
            Ok(0) => {}
            Ok(ended) => {
                tracing::info!(channel = %self.channel, ended, "long-lived token rows no watcher holds any more are ended");
            }
            Err(e) => {
                tracing::warn!(channel = %self.channel, error = %crate::logging::error_chain(&e), "cannot store the long-lived tokens' state");
            }
        }
        let current = self.current_watched().map(|c| c.tracked.clone());
        let old: Vec<Tracked> = self.old.iter().map(|o| o.tracked.clone()).collect();
        let specs = rules::alerts(current.as_ref(), &old, self.file_problem.as_deref());
        let (channel, now) = (self.channel.clone(), self.now());
        let changes = self
            .parts
            .store
            .blocking(move |s| {
                s.sync_alerts(
                    now,
                    AlertScope {
                        channel: Some(&channel),
                        group: None,
                        names: rules::ALERT_NAMES,
                    },
                    &specs,
                )
            })
            .await;
        match changes {
            Ok(changes) => {
                for raised in &changes.raised {
                    if raised.severity == "critical" {
                        tracing::error!(channel = %self.channel, alert = raised.alertname, "{}", raised.summary);
                    } else {
                        tracing::warn!(channel = %self.channel, alert = raised.alertname, "{}", raised.summary);
                    }
                }
                for resolved in &changes.resolved {
                    tracing::info!(channel = %self.channel, alert = resolved.alertname, "resolved");
                }
            }
            Err(e) => {
                tracing::warn!(channel = %self.channel, error = %crate::logging::error_chain(&e), "cannot store the long-lived token's alerts")
            }
        }
        match &current {
            Some(t) => {
                let valid = match t.result {
                    LongLivedResult::Valid => Some(true),
                    LongLivedResult::Invalid | LongLivedResult::WrongChannel => Some(false),
                    LongLivedResult::Pending | LongLivedResult::Unknown => None,
                };
                self.parts
                    .metrics
                    .set_long_lived(&self.channel, valid, t.last_checked_at);
            }
            // Retired (revoked on purpose): nothing is watched, so no
            // series says "invalid" (the shipped rule would page).
            None if self.current.is_some() => self.parts.metrics.remove_long_lived(&self.channel),
            // Never read: unknown.
            None => self.parts.metrics.set_long_lived(&self.channel, None, None),
        }
        let serve = self
            .current_watched()
            .filter(|c| !c.tracked.refused())
            .map(|c| Served {
                token: c.value.clone(),
                fingerprint: c.tracked.fingerprint.clone(),
            });
        if let Some(token) = &serve {
            self.write_sinks(token).await;
        }
        let mut served = self.served.lock().unwrap_or_else(PoisonError::into_inner);
        match serve {
            Some(token) => served.insert(self.channel.clone(), token),
            None => served.remove(&self.channel),
        };
    }

    /// Writes the token the API serves to every sink, once per token: a new
    /// value in the file is written at the next publish, and a failed write
    /// is tried again at the one after (each verify publishes). A token LINE
    /// refused is not served, and its files are left as they are: the
    /// watcher cannot know a better value. A retired one's are removed
    /// ([`Self::remove_sinks`]).
    async fn write_sinks(&mut self, token: &Served) {
        if self.config.sinks.is_empty() || self.written.as_ref() == Some(&token.fingerprint) {
            return;
        }
        let mut all = true;
        for spec in &self.config.sinks {
            let bytes = match long_lived::render(
                spec.format,
                &self.channel,
                &token.token,
                &token.fingerprint,
            ) {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::warn!(channel = %self.channel, path = %spec.path.display(), error = %e, "cannot render the long-lived token for a sink");
                    all = false;
                    continue;
                }
            };
            let owned = spec.clone();
            match tokio::task::spawn_blocking(move || sink::write_bytes(&owned, &bytes)).await {
                Ok(Ok(())) => {
                    tracing::info!(channel = %self.channel, path = %spec.path.display(), fingerprint = %token.fingerprint, "long-lived token written to its sink");
                }
                Ok(Err(e)) => {
                    tracing::warn!(channel = %self.channel, error = %e, "cannot write the long-lived token's sink; trying again at the next verify");
                    all = false;
                }
                Err(e) => {
                    tracing::warn!(channel = %self.channel, path = %spec.path.display(), error = %e, "the long-lived sink writer stopped");
                    all = false;
                }
            }
        }
        if all {
            self.written = Some(token.fingerprint.clone());
        }
    }

    /// Removes every sink file after a retire: the token in them was
    /// revoked on purpose, and a consumer that still reads them should
    /// find no file rather than a dead token. A later value in the token
    /// file writes them again.
    async fn remove_sinks(&mut self) {
        self.written = None;
        for spec in &self.config.sinks {
            let owned = spec.clone();
            match tokio::task::spawn_blocking(move || sink::remove(&owned)).await {
                Ok(Ok(())) => {
                    tracing::info!(channel = %self.channel, path = %spec.path.display(), "sink of the retired long-lived token removed");
                }
                Ok(Err(e)) => {
                    tracing::warn!(channel = %self.channel, error = %e, "cannot remove the retired long-lived token's sink");
                }
                Err(e) => {
                    tracing::warn!(channel = %self.channel, path = %spec.path.display(), error = %e, "the long-lived sink remover stopped");
                }
            }
        }
    }

    fn row(&self, t: &Tracked, role: LongLivedRole) -> LongLivedRow {
        LongLivedRow {
            channel: self.channel.clone(),
            fingerprint: t.fingerprint.clone(),
            role,
            first_seen_at: t.first_seen_at,
            last_valid_at: t.last_valid_at,
            last_checked_at: t.last_checked_at,
            result: t.result,
            detail: t.detail.clone(),
            retired_at: None,
        }
    }

    async fn record(&self, t: &Tracked, role: LongLivedRole) {
        let row = LongLivedRow {
            channel: self.channel.clone(),
            fingerprint: t.fingerprint.clone(),
            role,
            first_seen_at: t.first_seen_at,
            last_valid_at: t.last_valid_at,
            last_checked_at: t.last_checked_at,
            result: t.result,
            detail: t.detail.clone(),
            retired_at: None,
        };
        if let Err(e) = self
            .parts
            .store
            .blocking(move |s| s.record_long_lived(&row))
            .await
        {
            tracing::warn!(channel = %self.channel, error = %crate::logging::error_chain(&e), "cannot store the long-lived token's state");
        }
    }

    /// Revokes the current token, confirms, and stops watching it.
    async fn retire(&mut self, expected: Option<&str>) -> Result<Retired, RetireError> {
        self.read_file();
        let Some(current) = &self.current else {
            return Err(match &self.file_problem {
                Some(p) => p.clone(),
                None => "no long-lived token was read from the token file".to_owned(),
            });
        };
        let (value, fp) = (current.value.clone(), current.tracked.fingerprint.clone());
        if let Some(expected) = expected.filter(|e| *e != fp) {
            return Err(format!(
                "the token file now holds {fp}, not {expected} that was shown; nothing \
                 revoked: run retire again to see what it would revoke"
            ));
        }
        revoke_and_confirm(&self.parts.line, &value).await?;
        let (channel, now, stored_fp) = (self.channel.clone(), self.now(), fp.clone());
        self.parts
            .store
            .blocking(move |s| s.retire_long_lived(now, &channel, &stored_fp))
            .await
            .map_err(|e| {
                format!(
                    "revoked {fp}, but recording it failed: {}",
                    crate::logging::error_chain(&e)
                )
            })?;
        self.retired.insert(fp.clone());
        self.remove_sinks().await;
        if let Some(c) = self.current.as_mut() {
            c.tracked.result = LongLivedResult::Invalid;
            c.tracked.detail = "revoked by linetokd long-lived retire".to_owned();
            c.tracked.last_checked_at = Some(now);
        }
        tracing::warn!(channel = %self.channel, fingerprint = %fp, "long-lived token retired: revoked at LINE");
        Ok(Retired { fingerprint: fp })
    }
}
