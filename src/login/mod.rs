//! LINE Login user grants, kept fresh: import, refresh ahead of expiry
//! and before the 90-day horizon, serve, revoke, and tell people in time
//! that a user must log in again (SPECS.md §2c).
//!
//! One [`Login`] per daemon. Its task ([`Login::run`]) wakes at the
//! earliest due refresh or notice, refreshes the due grants under each
//! login channel's token bucket (`max_requests_per_second`, shared with
//! imports), and sleeps again. A refresh is journaled: the intent is
//! committed before the call, and the new access token, the new refresh
//! token (when LINE sent a non-empty one) and the intent's close commit in
//! one transaction before the new token is served ([`crate::store`]'s
//! `login`). What each outcome does is [`rules::decide`]: `invalid_grant`
//! ends the grant (`needs_login`, no further calls), `invalid_client`
//! pauses the whole login channel and alerts, 429 and transient failures
//! back off with jitter.
//!
//! Notices: `login_reauth_due` once per grant at horizon −
//! `reauth_notify_before` (recorded in the grant's row, so a restart does
//! not repeat it), `login_reauth_required` at the horizon or on
//! `invalid_grant`, `login_channel_rejected` while a channel is paused:
//! alerts (daemon-wide, labelled `login_grant` = `channel/hash` or
//! `login_channel` = the ID, through [`Store::sync_alerts`], so the alert
//! receivers get them) and events in the history.
//!
//! # Invariants
//! - A user token is stored only sealed (the store refuses otherwise) and
//!   never reaches a log line, an event, an alert, a metric or an error: a
//!   grant is named by [`subject_hash`]; the subject itself appears only in
//!   the API's paths and answers.
//! - Nothing is served before it is stored; no call is made for a grant
//!   that needs a new login.
//! - Requests to LINE per login channel never exceed the bucket's rate.
//!
//! Depends on `line::login`, `store`, `metrics`, `clock`; its rules
//! ([`rules`]) are pure.

pub mod rules;
pub mod setup;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use aws_lc_rs::digest;
use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::SharedClock;
use crate::domain::{AccessToken, ChannelId, RefreshToken, subject_hash};
use crate::line::login::{Deauthorization, LoginClient};
use crate::line::types::Verification;
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::store::{
    AlertLabel, AlertScope, AlertSpec, GrantRecord, GrantState, NewGrant, RefreshFailure,
    RefreshedGrant, Store, StoreError,
};
use rules::{Action, Bucket, Outcome, Timings};
pub use setup::{LoginChannelConfig, LoginConfig, LoginTimings};

/// The alerts this module owns (daemon-wide scope).
pub const ALERT_NAMES: [&str; 3] = [
    "login_reauth_due",
    "login_reauth_required",
    "login_channel_rejected",
];

/// More grants than this of one login channel under the same notice
/// (`login_reauth_due` or `login_reauth_required`) are told to the alert
/// receivers as one alert of the channel, not one per grant (SPECS §2c);
/// the event history and the metrics still count each grant.
pub const AGGREGATE_ABOVE: usize = 20;

/// How many grants' hashes an aggregated notice names.
const AGGREGATE_NAMES: usize = 5;

/// The most due grants one pass takes from the store at once.
const BATCH: usize = 100;

/// Above this many entries the grant-lock table drops the locks nobody
/// holds or waits for.
const GRANT_LOCKS_PRUNE: usize = 256;

/// How far in the future an import's `login_at` may lie (the importer's
/// clock may be ahead of this host's).
const LOGIN_AT_SKEW: TimeDelta = TimeDelta::minutes(5);

/// The longest a subject may be (LINE user IDs are 33 characters).
const MAX_SUBJECT_LEN: usize = 128;

/// Which API key a request presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Imports and deletes grants.
    Admin,
    /// Reads access tokens.
    Reader,
}

/// An import as the API receives it.
#[derive(Debug, Clone)]
pub struct Import {
    /// The user's LINE ID (`sub`).
    pub subject: String,
    /// The user access token.
    pub access_token: String,
    /// The refresh token.
    pub refresh_token: String,
    /// Seconds the access token has left, as the importer got it.
    pub expires_in: i64,
    /// When the user logged in, if known.
    pub login_at: Option<DateTime<Utc>>,
}

/// What an import stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// When the access token expires.
    pub access_expires_at: DateTime<Utc>,
    /// When the refresh token dies.
    pub horizon_at: DateTime<Utc>,
    /// True when the horizon is an estimate.
    pub horizon_estimated: bool,
    /// True when a grant of the subject was replaced.
    pub replaced: bool,
    /// What happened to the replaced access token, when the import asked
    /// for its revoke and a grant was replaced.
    pub previous_revoke: Option<PreviousRevoke>,
}

/// Why a request was not done.
#[derive(Debug, thiserror::Error)]
pub enum LoginApiError {
    /// No such login channel.
    #[error("no login channel {0} is configured")]
    UnknownChannel(String),
    /// A field is wrong (422); names the field, never its value.
    #[error("{field} {message}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// No grant for this subject.
    #[error("no grant for this subject")]
    NoGrant,
    /// The grant needs a new login (410).
    #[error("the user must log in again")]
    NeedsLogin,
    /// The access token expired and no refresh succeeded yet (503).
    #[error("the access token expired and is being refreshed")]
    NotFresh,
    /// LINE did not answer usefully (502).
    #[error("LINE: {0}")]
    Line(String),
    /// LINE answered 429: the channel's bucket is held for LINE's
    /// `Retry-After` and the caller is asked to wait as long (429).
    #[error("LINE is rate limiting the login channel; try again in {}s", retry_after.as_secs().max(1))]
    RateLimited {
        /// How long to wait (LINE's `Retry-After`, or a second).
        retry_after: Duration,
    },
    /// LINE refused the request with a client error (502): the channel's
    /// ID or secret is wrong (`invalid_client`) or the request is; nothing
    /// changed. Names LINE's OAuth code, never a value.
    #[error("LINE refused the {operation}{}: {detail}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    LineRefused {
        /// What was asked of LINE.
        operation: &'static str,
        /// LINE's OAuth `error` code, when it sent one.
        code: Option<String>,
        /// LINE's error as words (status, request ID).
        detail: String,
    },
    /// The store failed (500).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An access token to serve.
#[derive(Debug, Clone)]
pub struct Served {
    /// The token.
    pub access_token: AccessToken,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
    /// Its scopes.
    pub scope: String,
}

/// One login channel as the module holds it.
#[derive(Debug)]
struct Channel {
    config: LoginChannelConfig,
    bucket: Bucket,
    /// Set while LINE refuses the channel (`invalid_client`): no refresh
    /// before it.
    paused_until: Option<DateTime<Utc>>,
    /// LINE refused the channel (`invalid_client`) and no refresh has
    /// succeeded since, nor did its secret change: `login_channel_rejected`
    /// fires, across the pauses and the tries between them.
    rejected: bool,
    /// Transient failures of the channel's refreshes in a row.
    transient_failures: u32,
    /// No refresh of the channel before this (after a transient failure).
    transient_until: Option<DateTime<Utc>>,
}

impl Channel {
    fn new(config: LoginChannelConfig, rate: u32, now: DateTime<Utc>) -> Self {
        Self {
            config,
            bucket: Bucket::new(rate, now),
            paused_until: None,
            rejected: false,
            transient_failures: 0,
            transient_until: None,
        }
    }
}

/// Why no request may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoPermit {
    /// The login channel is not configured (any more).
    UnknownChannel,
    /// The module is stopping.
    Stopping,
}

impl NoPermit {
    fn api_error(self, channel: &ChannelId) -> LoginApiError {
        match self {
            Self::UnknownChannel => LoginApiError::UnknownChannel(channel.to_string()),
            Self::Stopping => LoginApiError::Line(STOPPING.to_owned()),
        }
    }
}

/// What a request cut short by the shutdown answers.
const STOPPING: &str = "linetokd is stopping; nothing was sent to LINE";

#[derive(Debug)]
struct Inner {
    timings: Timings,
    rate: u32,
    channels: HashMap<ChannelId, Channel>,
    admin_digest: Vec<u8>,
    reader_digest: Vec<u8>,
    /// The next instant a notice or a horizon falls due, from the last
    /// full scan; `None` forces a scan.
    next_notice: Option<DateTime<Utc>>,
    /// A reload changed the schedule's timings: the next pass reschedules
    /// every grant.
    reschedule: bool,
    /// Channels whose secret a reload changed while LINE refused them: the
    /// next pass ends their grants' waits, so the refused ones go at once.
    /// With each, the end of its pause, which its grants were moved to.
    resumed: Vec<(ChannelId, DateTime<Utc>)>,
    /// Spreads retry jitter differently per daemon (tests fix it).
    jitter_seed: u64,
}

/// The LINE Login module. Cheap to share in an `Arc`.
pub struct Login {
    store: Store,
    client: LoginClient,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    inner: Mutex<Inner>,
    wake: Notify,
    /// One lock per grant ([`Self::lock_grant`]), held from reading its
    /// tokens to storing the outcome: one grant is never refreshed twice at
    /// once (the journal allows one open intent per grant), an import or a
    /// delete never overlaps its refresh, and a report sees the grant as
    /// the last refresh left it. Weak: a lock lives while someone holds or
    /// waits for it.
    grant_locks: Mutex<HashMap<(ChannelId, String), Weak<GrantLock>>>,
    /// The "token refused" checks, so the shutdown waits for them.
    tasks: TaskTracker,
    /// Fires when [`Self::run`]'s `stop` does: ends the waits for a
    /// channel's bucket, between refreshes.
    halt: CancellationToken,
    /// The "token refused" reports in flight, one per grant: later reports
    /// of the same grant wait for its end instead of asking LINE again.
    flights: Mutex<HashMap<(ChannelId, String), Flight>>,
}

/// The lock of one grant ([`Login::lock_grant`]).
type GrantLock = tokio::sync::Mutex<()>;

/// Where the reports of one grant learn how its check ended: `None` while
/// it runs.
type Flight = watch::Receiver<Option<FlightEnd>>;

/// How a "token refused" check ended, as every report waiting on it
/// learns it (cloneable, so no store error is carried, only its text).
#[derive(Debug, Clone)]
enum FlightEnd {
    /// The grant is as the check left it: serve what the store holds (the
    /// same token, a refreshed one, or 410 when it needs a new login).
    Settled,
    /// No such grant.
    NoGrant,
    /// LINE did not answer usefully; nothing changed for good.
    Line(String),
    /// The store failed.
    Store(String),
}

/// What [`Login::refresh`] did with a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RefreshEnd {
    /// Nothing was sent (channel gone or paused): the grant was moved.
    Skipped,
    /// The new token is stored (or the grant changed meanwhile).
    Stored,
    /// The grant needs a new login (horizon or `invalid_grant`).
    NeedsLogin,
    /// A failure to retry later (transient, rate limit, channel refused).
    Failed,
}

/// What re-importing a subject did with the access token it replaced
/// (`revoke_previous`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreviousRevoke {
    /// LINE revoked it (or no longer knew it: LINE answers both alike).
    Revoked,
    /// The replaced grant held the same access token: nothing to revoke.
    Same,
    /// The revoke failed; the import stands. Names the failure, never a
    /// value.
    Failed(String),
}

impl PreviousRevoke {
    /// The API's and the event's word for it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Revoked => "revoked",
            Self::Same => "same_token",
            Self::Failed(_) => "failed",
        }
    }
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login").finish_non_exhaustive()
    }
}

/// The timings of a checked config.
pub fn timings(config: &LoginConfig) -> Timings {
    Timings {
        refresh_before: config.timings.refresh_before,
        horizon: config.timings.horizon,
        horizon_margin: config.timings.horizon_margin,
        reauth_notify_before: config.timings.reauth_notify_before,
    }
}

fn key_digest(key: &Secret) -> Vec<u8> {
    digest::digest(&digest::SHA256, key.expose().as_bytes())
        .as_ref()
        .to_vec()
}

fn fmt_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl Login {
    /// The module for `config`, not started: [`Self::start_up`] first.
    pub fn new(
        config: &LoginConfig,
        store: Store,
        client: LoginClient,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        seed: u64,
    ) -> Arc<Self> {
        let now = clock.now();
        let inner = Inner {
            timings: timings(config),
            rate: config.timings.max_requests_per_second,
            channels: config
                .channels
                .iter()
                .map(|c| {
                    (
                        c.id.clone(),
                        Channel::new(c.clone(), config.timings.max_requests_per_second, now),
                    )
                })
                .collect(),
            admin_digest: key_digest(&config.admin_api_key),
            reader_digest: key_digest(&config.reader_api_key),
            next_notice: None,
            reschedule: false,
            resumed: Vec::new(),
            jitter_seed: seed,
        };
        Arc::new(Self {
            store,
            client,
            clock,
            metrics,
            inner: Mutex::new(inner),
            wake: Notify::new(),
            grant_locks: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
            halt: CancellationToken::new(),
            flights: Mutex::new(HashMap::new()),
        })
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a reloaded config: channels added or removed (a channel kept
    /// keeps its bucket and its holds; a refusal by LINE, `invalid_client`,
    /// and its pause end only when its secret changed), new timings and
    /// keys. When `refresh_before` or `horizon_margin` changed, the next
    /// pass reschedules every active grant under them.
    pub fn reconfigure(&self, config: &LoginConfig) {
        let now = self.clock.now();
        {
            let mut inner = self.inner();
            let t = timings(config);
            if t.refresh_before != inner.timings.refresh_before
                || t.horizon_margin != inner.timings.horizon_margin
            {
                inner.reschedule = true;
            }
            inner.timings = t;
            inner.rate = config.timings.max_requests_per_second;
            let mut old = std::mem::take(&mut inner.channels);
            let mut resumed = Vec::new();
            for c in &config.channels {
                let channel = match old.remove(&c.id) {
                    Some(mut kept) => {
                        if kept.config.secret != c.secret {
                            // The grant LINE refused waits in the store
                            // until the pause's end: the next pass lets it
                            // (and every grant of the channel) go at once.
                            if let Some(until) = kept.paused_until {
                                resumed.push((c.id.clone(), until));
                            }
                            kept.paused_until = None;
                            kept.rejected = false;
                        }
                        kept.config = c.clone();
                        kept
                    }
                    None => Channel::new(c.clone(), config.timings.max_requests_per_second, now),
                };
                inner.channels.insert(c.id.clone(), channel);
            }
            inner.resumed.extend(resumed);
            inner.admin_digest = key_digest(&config.admin_api_key);
            inner.reader_digest = key_digest(&config.reader_api_key);
            inner.next_notice = None;
        }
        self.wake.notify_one();
    }

    /// Whether `presented` is the key of `role` (digests compared in
    /// constant time).
    pub fn authorized(&self, role: Role, presented: &str) -> bool {
        let want = {
            let inner = self.inner();
            match role {
                Role::Admin => inner.admin_digest.clone(),
                Role::Reader => inner.reader_digest.clone(),
            }
        };
        let got = digest::digest(&digest::SHA256, presented.as_bytes());
        aws_lc_rs::constant_time::verify_slices_are_equal(&want, got.as_ref()).is_ok()
    }

    /// The login channel `given` names (ID or name).
    pub fn channel_id(&self, given: &str) -> Option<ChannelId> {
        let inner = self.inner();
        inner
            .channels
            .values()
            .find(|c| c.config.id.as_str() == given)
            .or_else(|| inner.channels.values().find(|c| c.config.name == given))
            .map(|c| c.config.id.clone())
    }

    /// Start-up: reschedules every grant under the current timings, closes
    /// the refresh intents a previous run left open as lost (reported:
    /// `login_lost_refresh`, the grant due now), states the alerts and
    /// sets the metrics. Returns how many refreshes were lost.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn start_up(&self) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let t = self.inner().timings;
        let grants = self.store.blocking(|s| s.login_grants()).await?;
        let next = schedule(&t, &grants);
        self.store
            .blocking(move |s| s.reschedule_login_grants(&next))
            .await?;
        let lost = self.store.blocking(|s| s.open_refresh_intents()).await?;
        for intent in &lost {
            tracing::warn!(
                channel = %intent.channel,
                grant = %subject_hash(&intent.subject),
                "a LINE Login refresh was in flight when linetokd stopped: LINE may have rotated \
                 the refresh token without linetokd storing it; refreshing again now"
            );
            let intent = intent.clone();
            self.store
                .blocking(move |s| s.close_lost_refresh(now, &intent))
                .await?;
        }
        self.scan(now).await?;
        Ok(lost.len())
    }

    /// Runs until `stop`: refreshes what is due, states notices, sleeps
    /// until the next due instant or a wake-up (an import). `stop` also
    /// ends the waits of a pass and of the "token refused" checks (for
    /// the channel's bucket, a 429's hold) between grants, never inside
    /// one refresh: intent, call and commit finish or do not start. Returns
    /// when the checks in flight have ended too.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let halt = self.halt.clone();
        let link = async move {
            stop.cancelled().await;
            halt.cancel();
        };
        tokio::join!(link, self.run_passes());
        self.tasks.close();
        self.tasks.wait().await;
    }

    async fn run_passes(&self) {
        while !self.halt.is_cancelled() {
            let next = match self.pass().await {
                Ok(next) => next,
                Err(e) => {
                    tracing::error!(error = %crate::logging::error_chain(&e), "LINE Login pass failed; retrying in a minute");
                    Some(self.clock.now() + TimeDelta::minutes(1))
                }
            };
            let sleep = async {
                match next {
                    Some(at) => self.clock.sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.halt.cancelled() => return,
                () = self.wake.notified() => {}
                () = sleep => {}
            }
        }
    }

    /// One pass: a reschedule a reload asked for, horizons, due refreshes
    /// (each waiting for its channel's bucket), notices. Returns when the
    /// next pass is due; ends early, between two grants, when the module
    /// stops.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn pass(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let now = self.clock.now();
        let (scan_due, reschedule, resumed, t) = {
            let mut inner = self.inner();
            let reschedule = std::mem::take(&mut inner.reschedule);
            (
                inner.next_notice.is_none_or(|at| at <= now),
                reschedule,
                std::mem::take(&mut inner.resumed),
                inner.timings,
            )
        };
        for (channel, until) in resumed {
            self.store
                .blocking(move |s| s.end_login_pause(now, &channel, until))
                .await?;
        }
        if reschedule {
            let grants = self.store.blocking(|s| s.login_grants()).await?;
            let next = schedule(&t, &grants);
            self.store
                .blocking(move |s| s.reschedule_login_grants(&next))
                .await?;
        }
        if scan_due {
            self.scan(now).await?;
        }
        loop {
            if self.halt.is_cancelled() {
                return Ok(None);
            }
            let now = self.clock.now();
            let due = self
                .store
                .blocking(move |s| s.due_login_grants(now, BATCH))
                .await?;
            if due.is_empty() {
                break;
            }
            let mut worked = 0;
            for grant in due {
                if self.halt.is_cancelled() {
                    return Ok(None);
                }
                if self.refresh_due(grant).await? != RefreshEnd::Skipped {
                    worked += 1;
                }
            }
            if worked == 0 {
                break;
            }
        }
        // A refresh changed what the alerts say (a grant needs a new login,
        // a channel was refused or accepted again): state it now.
        if self.inner().next_notice.is_none() {
            self.scan(self.clock.now()).await?;
        }
        let next_refresh = self.store.blocking(|s| s.next_login_refresh()).await?;
        let next_notice = self.inner().next_notice;
        Ok(match (next_refresh, next_notice) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// Waits for a token of `channel`'s bucket (the wait ends when the
    /// module stops). Never called while holding a grant's lock, except by
    /// a delete, which holds only its own grant.
    async fn permit(&self, channel: &ChannelId) -> Result<(), NoPermit> {
        loop {
            if self.halt.is_cancelled() {
                return Err(NoPermit::Stopping);
            }
            let now = self.clock.now();
            let wait = {
                let mut inner = self.inner();
                let c = inner
                    .channels
                    .get_mut(channel)
                    .ok_or(NoPermit::UnknownChannel)?;
                match c.bucket.take(now) {
                    Ok(()) => return Ok(()),
                    Err(at) => at,
                }
            };
            tokio::select! {
                () = self.halt.cancelled() => return Err(NoPermit::Stopping),
                () = self.clock.sleep_until(wait) => {}
            }
        }
    }

    /// The lock of one grant, held from reading its tokens to storing what
    /// became of them: a refresh (scheduled or reported), an import's
    /// replacement and a delete of the same grant never overlap; other
    /// grants and channels are not held up.
    async fn lock_grant(
        &self,
        channel: &ChannelId,
        subject: &str,
    ) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self
                .grant_locks
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let key = (channel.clone(), subject.to_owned());
            if let Some(lock) = locks.get(&key).and_then(Weak::upgrade) {
                lock
            } else {
                if locks.len() >= GRANT_LOCKS_PRUNE {
                    locks.retain(|_, l| l.strong_count() > 0);
                }
                let lock = Arc::new(GrantLock::new(()));
                locks.insert(key, Arc::downgrade(&lock));
                lock
            }
        };
        lock.lock_owned().await
    }

    fn jitter_fraction(&self, key: &str, failures: u32) -> f64 {
        let seed = self.inner().jitter_seed;
        let key = format!("{seed}/{key}/{failures}");
        let h = crate::policy::jitter::fnv1a64(key.as_bytes());
        (h % 10_000) as f64 / 10_000.0
    }

    /// A due grant of a pass: its channel's gates, a permit (outside the
    /// grant's lock), then under the lock the grant as it is now (a report
    /// may have refreshed it meanwhile) and its refresh.
    async fn refresh_due(&self, grant: GrantRecord) -> Result<RefreshEnd, StoreError> {
        if let Some(end) = self.gate(&grant).await? {
            return Ok(end);
        }
        if self.permit(&grant.channel).await.is_err() {
            return Ok(RefreshEnd::Skipped);
        }
        let _grant = self.lock_grant(&grant.channel, &grant.subject).await;
        let (c, s) = (grant.channel.clone(), grant.subject.clone());
        let current = self
            .store
            .blocking(move |st| st.login_grant(&c, &s))
            .await?;
        let now = self.clock.now();
        let Some(grant) =
            current.filter(|g| g.state == GrantState::Active && g.next_refresh_at <= now)
        else {
            return Ok(RefreshEnd::Skipped);
        };
        // A hold may have begun while this waited.
        if let Some(end) = self.gate(&grant).await? {
            return Ok(end);
        }
        self.refresh_locked(grant).await
    }

    /// What keeps a grant from being refreshed now, done: its channel is
    /// no longer configured, paused (`invalid_client`) or held after a
    /// transient failure (the grant is moved to the end of it, no call, no
    /// failure counted), or its horizon passed (it needs a new login).
    /// `None` when a refresh may go ahead.
    async fn gate(&self, grant: &GrantRecord) -> Result<Option<RefreshEnd>, StoreError> {
        let now = self.clock.now();
        let held = {
            let inner = self.inner();
            match inner.channels.get(&grant.channel) {
                // A login channel no longer configured: its grants wait,
                // looked at again in a day (or when the channel comes back).
                None => Some(now + TimeDelta::days(1)),
                Some(c) => [c.paused_until, c.transient_until]
                    .into_iter()
                    .flatten()
                    .filter(|u| *u > now)
                    .max(),
            }
        };
        if let Some(until) = held {
            self.set_aside(grant, until).await?;
            return Ok(Some(RefreshEnd::Skipped));
        }
        if grant.horizon_at <= now {
            // The pass's scan ends it; nothing is sent.
            let (channel, subject) = (grant.channel.clone(), grant.subject.clone());
            self.store
                .blocking(move |s| {
                    s.fail_refresh(
                        now,
                        None,
                        &channel,
                        &subject,
                        &RefreshFailure::NeedsLogin {
                            reason: "the refresh token reached its horizon".to_owned(),
                        },
                    )
                })
                .await?;
            self.inner().next_notice = None;
            return Ok(Some(RefreshEnd::NeedsLogin));
        }
        Ok(None)
    }

    /// Refreshes one grant (due, or reported refused), journaled. The
    /// caller holds the grant's lock and a permit of its channel, and has
    /// passed [`Self::gate`].
    async fn refresh_locked(&self, grant: GrantRecord) -> Result<RefreshEnd, StoreError> {
        let channel = grant.channel.clone();
        let hash = grant.subject_hash();
        let (config, t) = {
            let inner = self.inner();
            let Some(c) = inner.channels.get(&channel) else {
                return Ok(RefreshEnd::Skipped);
            };
            (c.config.clone(), inner.timings)
        };
        let now = self.clock.now();
        let (c, s) = (channel.clone(), grant.subject.clone());
        let Some((intent, tokens)) = self
            .store
            .blocking(move |st| st.begin_refresh(now, &c, &s))
            .await?
        else {
            return Ok(RefreshEnd::Skipped);
        };
        let answer = self
            .client
            .refresh(&channel, config.secret.as_ref(), &tokens.refresh)
            .await;
        let now = self.clock.now();
        let failures = grant.consecutive_failures;
        let lost = answer.as_ref().is_err_and(|e| e.may_have_issued());
        let (outcome, detail) = match &answer {
            Ok(_) => (Outcome::Refreshed, String::new()),
            Err(e) if e.is_invalid_grant() => (Outcome::InvalidGrant, e.to_string()),
            Err(e) if e.is_invalid_client() => (Outcome::InvalidClient, e.to_string()),
            Err(e) if e.is_rate_limited() => (Outcome::RateLimited(e.retry_after()), e.to_string()),
            Err(e) => (Outcome::Transient, e.to_string()),
        };
        let grant_key = format!("{channel}/{}", grant.subject);
        let action = rules::decide(
            outcome,
            failures,
            self.jitter_fraction(&grant_key, failures),
        );
        let subject = grant.subject.clone();
        let end = match &action {
            Action::Store => RefreshEnd::Stored,
            Action::NeedsLogin => RefreshEnd::NeedsLogin,
            Action::PauseChannel | Action::Retry { .. } => RefreshEnd::Failed,
        };
        match (action, answer) {
            (Action::Store, Ok(answer)) => {
                // LINE answers this channel again: its holds and its
                // refusal are over.
                {
                    let mut inner = self.inner();
                    if let Some(c) = inner.channels.get_mut(&channel) {
                        let was_rejected = std::mem::take(&mut c.rejected);
                        c.transient_failures = 0;
                        c.transient_until = None;
                        c.paused_until = None;
                        if was_rejected {
                            inner.next_notice = None;
                        }
                    }
                }
                let access_expires_at = now + TimeDelta::seconds(answer.expires_in);
                // Store whatever non-empty refresh token came back (LINE may
                // rotate it), unless it is the one we hold.
                let refresh = answer
                    .refresh_token
                    .filter(|r| r.expose() != tokens.refresh.expose());
                let rotated = refresh.is_some();
                let next = rules::after_refresh(
                    &t,
                    now,
                    access_expires_at,
                    grant.horizon_at,
                    rules::jitter(channel.as_str(), &grant.subject),
                );
                let refreshed = RefreshedGrant {
                    access: answer.access_token,
                    refresh,
                    access_expires_at,
                    scope: answer.scope,
                    next_refresh_at: next,
                };
                let c = channel.clone();
                let stored = self
                    .store
                    .blocking(move |s| s.complete_refresh(now, intent, &c, &subject, &refreshed))
                    .await?;
                self.metrics.login_refresh(&channel, "success");
                tracing::info!(
                    channel = %channel, grant = %hash, rotated, stored,
                    access_expires_at = %fmt_time(access_expires_at),
                    next_refresh_at = %fmt_time(next),
                    "LINE Login grant refreshed"
                );
            }
            (Action::NeedsLogin, _) => {
                let reason = if grant.lost_refresh {
                    format!(
                        "LINE refused the refresh token (invalid_grant) after a refresh's answer \
                         was lost (in a crash or on the way): that answer had rotated it ({detail})"
                    )
                } else {
                    format!("LINE refused the refresh token (invalid_grant): {detail}")
                };
                tracing::warn!(channel = %channel, grant = %hash, "LINE Login grant needs a new login: {reason}");
                let c = channel.clone();
                self.store
                    .blocking(move |s| {
                        s.fail_refresh(
                            now,
                            Some(intent),
                            &c,
                            &subject,
                            &RefreshFailure::NeedsLogin { reason },
                        )
                    })
                    .await?;
                self.metrics.login_refresh(&channel, "invalid_grant");
                self.inner().next_notice = None;
            }
            (Action::PauseChannel, _) => {
                let until = now + TimeDelta::from_std(rules::CHANNEL_PAUSE).unwrap_or_default();
                tracing::error!(channel = %channel, "LINE refused the login channel's ID or secret (invalid_client): its refreshes are paused until {}: {detail}", fmt_time(until));
                if let Some(c) = self.inner().channels.get_mut(&channel) {
                    c.paused_until = Some(until);
                    c.rejected = true;
                }
                let (c, d) = (channel.clone(), detail.clone());
                self.store
                    .blocking(move |s| {
                        s.fail_refresh(
                            now,
                            Some(intent),
                            &c,
                            &subject,
                            &RefreshFailure::ChannelPaused { retry_at: until },
                        )?;
                        s.note_login_channel_rejected(now, &c, &d)
                    })
                    .await?;
                self.metrics.login_refresh(&channel, "invalid_client");
                self.inner().next_notice = None;
            }
            (
                Action::Retry {
                    after,
                    channel_hold,
                },
                _,
            ) => {
                let retry_at = now + TimeDelta::from_std(after).unwrap_or_default();
                let held_until = self.hold_channel(&channel, now, channel_hold);
                tracing::warn!(
                    channel = %channel, grant = %hash, retry_at = %fmt_time(retry_at),
                    channel_held_until = %fmt_time(held_until), lost,
                    "LINE Login refresh failed: {detail}"
                );
                let reason = detail.clone();
                let failure = if lost {
                    RefreshFailure::Lost { retry_at, reason }
                } else {
                    RefreshFailure::Retry { retry_at, reason }
                };
                let c = channel.clone();
                self.store
                    .blocking(move |s| s.fail_refresh(now, Some(intent), &c, &subject, &failure))
                    .await?;
                let result = if channel_hold.is_some() {
                    "rate_limited"
                } else if lost {
                    "lost"
                } else {
                    "transient"
                };
                self.metrics.login_refresh(&channel, result);
            }
            (Action::Store, Err(_)) => {}
        }
        Ok(end)
    }

    /// The API's answer to a failed call to LINE for `channel`: a 429
    /// holds the channel's bucket for LINE's `Retry-After` (every request
    /// of the channel waits it out) and asks the caller to wait as long;
    /// anything else is "LINE did not answer usefully".
    fn line_failed(&self, channel: &ChannelId, e: &crate::line::LoginError) -> LoginApiError {
        if e.is_rate_limited() {
            let retry_after = e.retry_after().unwrap_or(Duration::from_secs(1));
            self.hold_channel(channel, self.clock.now(), Some(retry_after));
            return LoginApiError::RateLimited { retry_after };
        }
        LoginApiError::Line(e.to_string())
    }

    /// Holds a channel after a failed refresh: a 429 empties its bucket
    /// for LINE's `Retry-After` (imports and reports wait too); any other
    /// transient failure (5xx, network, a lost answer) holds its refreshes
    /// for [`rules::backoff`] of the channel's failures in a row, doubling,
    /// with jitter, until a success, so an outage costs a few calls per
    /// channel, not one per due grant. Returns the end of the hold.
    fn hold_channel(
        &self,
        channel: &ChannelId,
        now: DateTime<Utc>,
        rate_limit: Option<Duration>,
    ) -> DateTime<Utc> {
        let failures = self
            .inner()
            .channels
            .get(channel)
            .map_or(0, |c| c.transient_failures);
        let jitter = self.jitter_fraction(channel.as_str(), failures);
        let mut inner = self.inner();
        let Some(c) = inner.channels.get_mut(channel) else {
            return now;
        };
        if let Some(hold) = rate_limit {
            let until = now + TimeDelta::from_std(hold).unwrap_or_default();
            c.bucket.hold(until);
            return until;
        }
        let until = now + TimeDelta::from_std(rules::backoff(failures, jitter)).unwrap_or_default();
        c.transient_failures = failures.saturating_add(1);
        c.transient_until = Some(until);
        until
    }

    /// Moves a grant's next refresh to `at` without a call.
    async fn set_aside(&self, grant: &GrantRecord, at: DateTime<Utc>) -> Result<(), StoreError> {
        let (channel, subject) = (grant.channel.clone(), grant.subject.clone());
        self.store
            .blocking(move |s| s.reschedule_login_grants(&[(channel, subject, at)]))
            .await
    }

    /// The full scan: ends grants past their horizon, records the notices
    /// that fell due, states the alerts, sets the metrics and finds the
    /// next instant a notice or horizon falls due.
    async fn scan(&self, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.store
            .blocking(move |s| s.expire_login_horizons(now))
            .await?;
        let grants = self.store.blocking(|s| s.login_grants()).await?;
        let (t, paused): (Timings, Vec<ChannelId>) = {
            let inner = self.inner();
            (
                inner.timings,
                inner
                    .channels
                    .values()
                    .filter(|c| c.rejected)
                    .map(|c| c.config.id.clone())
                    .collect(),
            )
        };
        let mut specs = Vec::new();
        let mut next: Option<DateTime<Utc>> = None;
        let mut counts: BTreeMap<(ChannelId, &'static str), u64> = BTreeMap::new();
        let mut in_window: BTreeMap<ChannelId, u64> = BTreeMap::new();
        let mut to_note = Vec::new();
        let mut notices: BTreeMap<(ChannelId, &'static str), Vec<Notice>> = BTreeMap::new();
        let channels: HashSet<ChannelId> = self.inner().channels.keys().cloned().collect();
        for c in &channels {
            for state in GrantState::ALL {
                counts.insert((c.clone(), state.as_str()), 0);
            }
            in_window.insert(c.clone(), 0);
        }
        for g in &grants {
            *counts
                .entry((g.channel.clone(), g.state.as_str()))
                .or_default() += 1;
            match g.state {
                GrantState::NeedsLogin => notices
                    .entry((g.channel.clone(), "login_reauth_required"))
                    .or_default()
                    .push(Notice::of(g)),
                GrantState::Active => {
                    let due_at = rules::reauth_due_at(&t, g.horizon_at);
                    if rules::in_notice_window(&t, g.horizon_at, now) {
                        *in_window.entry(g.channel.clone()).or_default() += 1;
                        if g.reauth_due_notified_at.is_none() {
                            to_note.push((g.channel.clone(), g.subject.clone(), g.horizon_at));
                        }
                        notices
                            .entry((g.channel.clone(), "login_reauth_due"))
                            .or_default()
                            .push(Notice::of(g));
                        next = Some(next.map_or(g.horizon_at, |n| n.min(g.horizon_at)));
                    } else if due_at > now {
                        next = Some(next.map_or(due_at, |n| n.min(due_at)));
                    } else {
                        next = Some(next.map_or(g.horizon_at, |n| n.min(g.horizon_at)));
                    }
                }
                GrantState::Revoked => {}
            }
        }
        for ((channel, alertname), grants) in notices {
            specs.extend(notice_specs(&channel, alertname, grants));
        }
        for c in &paused {
            specs.push(AlertSpec {
                group: None,
                label: Some(AlertLabel {
                    name: "login_channel",
                    value: c.to_string(),
                }),
                alertname: "login_channel_rejected",
                severity: "critical",
                summary: format!(
                    "LINE refuses login channel {c} (invalid_client): check its ID and \
                     secret_file; its refreshes are paused and tried again hourly"
                ),
            });
        }
        let paused_until = {
            let inner = self.inner();
            inner
                .channels
                .values()
                .filter_map(|c| c.paused_until.filter(|u| *u > now))
                .min()
        };
        if let Some(p) = paused_until {
            next = Some(next.map_or(p, |n| n.min(p)));
        }
        for (channel, subject, horizon_at) in to_note {
            let hash = subject_hash(&subject);
            let c = channel.clone();
            let noted = self
                .store
                .blocking(move |s| s.note_reauth_due(now, &c, &subject, horizon_at))
                .await?;
            if noted {
                tracing::warn!(channel = %channel, grant = %hash, horizon_at = %fmt_time(horizon_at), "LINE Login grant is due for a new login");
            }
        }
        let changes = self
            .store
            .blocking(move |s| {
                s.sync_alerts(
                    now,
                    AlertScope {
                        channel: None,
                        group: None,
                        names: &ALERT_NAMES,
                    },
                    &specs,
                )
            })
            .await?;
        for raised in &changes.raised {
            tracing::warn!(alert = raised.alertname, "{}", raised.summary);
        }
        for ((channel, state), n) in &counts {
            self.metrics.set_login_grants(channel, state, *n);
        }
        for (channel, n) in &in_window {
            self.metrics.set_login_reauth_due(channel, *n);
        }
        // Always look again within a day: a clock step or a reload may
        // move what is due.
        let cap = now + TimeDelta::days(1);
        self.inner().next_notice = Some(next.map_or(cap, |n| n.min(cap)).max(now));
        Ok(())
    }

    /// Imports a grant: checks the fields, verifies the access token at
    /// LINE (within the channel's rate), stores it and wakes the task.
    ///
    /// # Errors
    /// [`LoginApiError::UnknownChannel`], [`LoginApiError::Invalid`] (422,
    /// naming the field), [`LoginApiError::Line`], [`LoginApiError::Store`].
    pub async fn import(
        &self,
        channel: &ChannelId,
        import: Import,
    ) -> Result<Imported, LoginApiError> {
        self.import_replacing(channel, import, false).await
    }

    /// [`Self::import`], and when `revoke_previous` is set and the import
    /// replaced a grant, revokes the replaced access token at LINE after
    /// the new grant is committed. The revoke's outcome is in
    /// [`Imported::previous_revoke`] and the event history; its failure
    /// never fails the import.
    ///
    /// # Errors
    /// As [`Self::import`].
    pub async fn import_replacing(
        &self,
        channel: &ChannelId,
        import: Import,
        revoke_previous: bool,
    ) -> Result<Imported, LoginApiError> {
        let result = self.import_inner(channel, import, revoke_previous).await;
        let label = match &result {
            Ok(i) if i.replaced => "replaced",
            Ok(_) => "imported",
            Err(LoginApiError::Invalid { .. }) => "rejected",
            Err(LoginApiError::UnknownChannel(_)) => return result,
            Err(_) => "failed",
        };
        self.metrics.login_import(channel, label);
        result
    }

    async fn import_inner(
        &self,
        channel: &ChannelId,
        import: Import,
        revoke_previous: bool,
    ) -> Result<Imported, LoginApiError> {
        let invalid = |field, message: &str| LoginApiError::Invalid {
            field,
            message: message.to_owned(),
        };
        if !self.inner().channels.contains_key(channel) {
            return Err(LoginApiError::UnknownChannel(channel.to_string()));
        }
        let subject = import.subject;
        if subject.is_empty()
            || subject.len() > MAX_SUBJECT_LEN
            || !subject.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(invalid(
                "subject",
                "must be the user's LINE ID: 1 to 128 visible ASCII characters",
            ));
        }
        let access = crate::line::validate::access_token(&import.access_token)
            .map_err(|_| invalid("access_token", "is not shaped like a LINE access token"))?;
        let refresh = crate::line::validate::refresh_token(&import.refresh_token)
            .map_err(|_| invalid("refresh_token", "is not shaped like a LINE refresh token"))?;
        if import.expires_in <= 0 {
            return Err(invalid(
                "expires_in",
                "must be above 0: the access token has expired",
            ));
        }
        if let Some(login_at) = import.login_at {
            let (now, horizon) = (self.clock.now(), self.inner().timings.horizon);
            if login_at > now + LOGIN_AT_SKEW {
                return Err(invalid("login_at", "lies in the future"));
            }
            if login_at + TimeDelta::from_std(horizon).unwrap_or(TimeDelta::MAX) <= now {
                return Err(invalid(
                    "login_at",
                    "is older than the horizon: the refresh token of that login is dead",
                ));
            }
        }
        self.permit(channel)
            .await
            .map_err(|e| e.api_error(channel))?;
        let verified = self
            .client
            .verify(&access)
            .await
            .map_err(|e| self.line_failed(channel, &e))?;
        let v = match verified {
            Verification::Valid(v) => v,
            Verification::Rejected { .. } => {
                return Err(invalid(
                    "access_token",
                    "is not accepted by LINE (expired, revoked or unknown)",
                ));
            }
        };
        if &v.client_id != channel {
            return Err(invalid(
                "access_token",
                "belongs to another channel (LINE's client_id differs from the login channel)",
            ));
        }
        if v.expires_in <= 0 {
            return Err(invalid(
                "access_token",
                "has expired (LINE's expires_in is 0)",
            ));
        }
        let now = self.clock.now();
        let t = self.inner().timings;
        // LINE's answer is the truth about the token; the importer's
        // expires_in was only checked.
        let access_expires_at = now + TimeDelta::seconds(v.expires_in);
        let horizon = rules::horizon(&t, now, v.expires_in, import.login_at);
        let next = rules::next_refresh(
            &t,
            access_expires_at,
            horizon.at,
            rules::jitter(channel.as_str(), &subject),
            None,
        );
        let grant = NewGrant {
            channel: channel.clone(),
            subject: subject.clone(),
            access,
            refresh,
            access_expires_at,
            login_at: import.login_at,
            horizon_at: horizon.at,
            horizon_estimated: horizon.estimated,
            scope: v.scope.unwrap_or_default(),
            next_refresh_at: next,
        };
        // The token to revoke is the one the import replaces, read in the
        // same transaction as the replacement (a refresh in between would
        // otherwise leave the newer token alive).
        let new_access = grant.access.clone();
        // Under the grant's lock: no refresh of the old grant is in flight
        // (its answer, superseded by the import, would never be stored, and
        // its token would outlive a revoke unseen), and none starts on the
        // old tokens after the replacement.
        let (replaced, previous) = {
            let _grant = self.lock_grant(channel, &subject).await;
            self.store
                .blocking(move |s| s.replace_login_grant(now, &grant, revoke_previous))
                .await?
        };
        tracing::info!(
            channel = %channel, grant = %subject_hash(&subject), replaced,
            horizon_at = %fmt_time(horizon.at), horizon_estimated = horizon.estimated,
            "LINE Login grant imported"
        );
        {
            self.inner().next_notice = None;
        }
        self.wake.notify_one();
        let previous_revoke = match previous {
            Some(old) if old.expose() == new_access.expose() => Some(PreviousRevoke::Same),
            Some(old) => Some(self.revoke_previous(channel, &subject, &old).await),
            None => None,
        };
        Ok(Imported {
            access_expires_at,
            horizon_at: horizon.at,
            horizon_estimated: horizon.estimated,
            replaced,
            previous_revoke,
        })
    }

    /// Revokes the access token a re-import replaced, within the
    /// channel's rate, and records the outcome as an event of the grant.
    async fn revoke_previous(
        &self,
        channel: &ChannelId,
        subject: &str,
        old: &AccessToken,
    ) -> PreviousRevoke {
        let secret = {
            let inner = self.inner();
            inner.channels.get(channel).map(|c| c.config.secret.clone())
        };
        let hash = subject_hash(subject);
        let outcome = match secret {
            None => PreviousRevoke::Failed("the login channel is no longer configured".into()),
            Some(secret) => match self.permit(channel).await {
                Err(NoPermit::Stopping) => PreviousRevoke::Failed(STOPPING.to_owned()),
                Err(NoPermit::UnknownChannel) => {
                    PreviousRevoke::Failed("the login channel is no longer configured".into())
                }
                // LINE answers 200 for a token it no longer knows; a
                // refusal is about the request (a wrong secret), and the
                // token lives on.
                Ok(()) => match self.client.revoke(channel, secret.as_ref(), old).await {
                    Ok(()) => PreviousRevoke::Revoked,
                    Err(e) => PreviousRevoke::Failed(e.to_string()),
                },
            },
        };
        let detail = match &outcome {
            PreviousRevoke::Revoked => "the replaced access token was revoked at LINE".to_owned(),
            PreviousRevoke::Same => "the replaced grant held the same access token".to_owned(),
            PreviousRevoke::Failed(why) => format!(
                "revoking the replaced access token failed (it lives until it expires): {why}"
            ),
        };
        match &outcome {
            PreviousRevoke::Failed(why) => {
                tracing::warn!(channel = %channel, grant = %hash, "revoking the access token a re-import replaced failed; the import stands: {why}");
            }
            _ => {
                tracing::info!(channel = %channel, grant = %hash, outcome = outcome.as_str(), "the access token a re-import replaced was revoked");
            }
        }
        let (now, c, s) = (self.clock.now(), channel.clone(), subject.to_owned());
        if let Err(e) = self
            .store
            .blocking(move |st| st.note_login_import(now, &c, &s, &detail))
            .await
        {
            tracing::error!(channel = %channel, grant = %hash, error = %crate::logging::error_chain(&e), "cannot record the outcome of revoking a replaced access token");
        }
        outcome
    }

    /// A consumer's report that LINE answered 401 to the access token it
    /// was served (`POST …/token/refused`). Under the grant's single
    /// flight: verifies the stored token at LINE within the channel's
    /// rate; if LINE still accepts it, serves it again (the problem is
    /// elsewhere); if LINE refuses it, makes one journaled refresh, the
    /// scheduled path's, and serves the new token, or answers
    /// [`LoginApiError::NeedsLogin`] when LINE refused the refresh token
    /// too. Reports of one grant that arrive while a check runs wait for
    /// it and share its end: at most one verify and one refresh.
    ///
    /// # Errors
    /// [`LoginApiError::NoGrant`], [`LoginApiError::NeedsLogin`],
    /// [`LoginApiError::Line`] when LINE could not be asked or the refresh
    /// failed transiently, [`LoginApiError::Store`].
    pub async fn token_refused(
        self: &Arc<Self>,
        channel: &ChannelId,
        subject: &str,
    ) -> Result<Served, LoginApiError> {
        let key = (channel.clone(), subject.to_owned());
        let mut end = {
            let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(running) = flights.get(&key) {
                running.clone()
            } else {
                let (tx, rx) = watch::channel(None);
                flights.insert(key.clone(), rx.clone());
                // Its own task: a report whose client hangs up must not
                // cut a refresh short between LINE's answer and the store.
                let me = Arc::clone(self);
                self.tasks.spawn(async move {
                    let end = me.check_refused(&key.0, &key.1).await;
                    me.flights
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&key);
                    let _ = tx.send(Some(end));
                });
                rx
            }
        };
        let settled = end
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|v| v.clone());
        match settled {
            Some(FlightEnd::Settled) => self.token(channel, subject).await,
            Some(FlightEnd::NoGrant) => Err(LoginApiError::NoGrant),
            Some(FlightEnd::Line(why)) => Err(LoginApiError::Line(why)),
            Some(FlightEnd::Store(what)) => {
                Err(LoginApiError::Store(StoreError::Internal { what }))
            }
            None => Err(LoginApiError::Line(
                "the check of the refused token stopped before it ended".to_owned(),
            )),
        }
    }

    /// The work of one "token refused" flight.
    async fn check_refused(&self, channel: &ChannelId, subject: &str) -> FlightEnd {
        match self.check_refused_inner(channel, subject).await {
            Ok(end) => end,
            Err(e) => {
                tracing::error!(channel = %channel, grant = %subject_hash(subject), error = %crate::logging::error_chain(&e), "checking a refused LINE Login token failed");
                FlightEnd::Store(e.to_string())
            }
        }
    }

    /// A verify, then at most one refresh, each after a permit and under
    /// the grant's lock (never waiting for the bucket while holding it).
    async fn check_refused_inner(
        &self,
        channel: &ChannelId,
        subject: &str,
    ) -> Result<FlightEnd, StoreError> {
        let hash = subject_hash(subject);
        let no_permit = |e: NoPermit| match e {
            NoPermit::UnknownChannel => FlightEnd::NoGrant,
            NoPermit::Stopping => FlightEnd::Line(STOPPING.to_owned()),
        };
        // Nothing is sent for a grant that needs a new login.
        if let Err(end) = self.live_grant(channel, subject).await? {
            return Ok(end);
        }
        if let Err(e) = self.permit(channel).await {
            return Ok(no_permit(e));
        }
        let checked = {
            let _grant = self.lock_grant(channel, subject).await;
            let (_, tokens) = match self.live_grant(channel, subject).await? {
                Err(end) => return Ok(end),
                Ok(found) => found,
            };
            let verified = match self.client.verify(&tokens.access).await {
                Ok(v) => v,
                Err(e) => return Ok(FlightEnd::Line(e.to_string())),
            };
            match verified {
                Verification::Valid(v) if v.expires_in > 0 && &v.client_id == channel => {
                    tracing::info!(channel = %channel, grant = %hash, "a consumer reported a LINE Login token refused, but LINE still accepts it: served again");
                    self.metrics.login_refused(channel, "still_valid");
                    return Ok(FlightEnd::Settled);
                }
                _ => tokens.access,
            }
        };
        tracing::warn!(channel = %channel, grant = %hash, "LINE no longer accepts a LINE Login grant's access token (the user logged out or was deauthorized?): refreshing once");
        if let Err(e) = self.permit(channel).await {
            return Ok(no_permit(e));
        }
        let end = {
            let _grant = self.lock_grant(channel, subject).await;
            let (grant, tokens) = match self.live_grant(channel, subject).await? {
                Err(end) => return Ok(end),
                Ok(found) => found,
            };
            if tokens.access.expose() != checked.expose() {
                // Refreshed or re-imported meanwhile: serve what is stored.
                return Ok(FlightEnd::Settled);
            }
            match self.gate(&grant).await? {
                Some(end) => end,
                None => self.refresh_locked(grant).await?,
            }
        };
        self.wake.notify_one();
        Ok(match end {
            RefreshEnd::Stored => {
                self.metrics.login_refused(channel, "refreshed");
                FlightEnd::Settled
            }
            RefreshEnd::NeedsLogin => {
                self.metrics.login_refused(channel, "needs_login");
                FlightEnd::Settled
            }
            RefreshEnd::Skipped | RefreshEnd::Failed => {
                self.metrics.login_refused(channel, "failed");
                FlightEnd::Line(
                    "LINE refuses the access token and the refresh did not succeed; it is \
                     retried later"
                        .to_owned(),
                )
            }
        })
    }

    /// A grant with its tokens when it is active and before its horizon;
    /// otherwise how a report ends (no grant, or settled: it needs a new
    /// login).
    async fn live_grant(
        &self,
        channel: &ChannelId,
        subject: &str,
    ) -> Result<Result<(GrantRecord, crate::store::GrantTokens), FlightEnd>, StoreError> {
        let (c, s) = (channel.clone(), subject.to_owned());
        let Some((grant, tokens)) = self
            .store
            .blocking(move |st| st.login_grant_tokens(&c, &s))
            .await?
        else {
            return Ok(Err(FlightEnd::NoGrant));
        };
        if grant.state != GrantState::Active || grant.horizon_at <= self.clock.now() {
            return Ok(Err(FlightEnd::Settled));
        }
        Ok(Ok((grant, tokens)))
    }

    /// The current access token of a grant.
    ///
    /// # Errors
    /// [`LoginApiError::NoGrant`], [`LoginApiError::NeedsLogin`] after the
    /// horizon or `invalid_grant`, [`LoginApiError::NotFresh`] when the
    /// access token expired, [`LoginApiError::Store`].
    pub async fn token(&self, channel: &ChannelId, subject: &str) -> Result<Served, LoginApiError> {
        let (c, s) = (channel.clone(), subject.to_owned());
        let Some((grant, tokens)) = self
            .store
            .blocking(move |st| st.login_grant_tokens(&c, &s))
            .await?
        else {
            return Err(LoginApiError::NoGrant);
        };
        let now = self.clock.now();
        if grant.state != GrantState::Active || grant.horizon_at <= now {
            return Err(LoginApiError::NeedsLogin);
        }
        if grant.access_expires_at <= now {
            return Err(LoginApiError::NotFresh);
        }
        Ok(Served {
            access_token: tokens.access,
            expires_at: grant.access_expires_at,
            scope: grant.scope,
        })
    }

    /// Ends a grant: deauthorizes the user first when `deauthorize_with`
    /// holds a channel token of the login channel, revokes the access
    /// token (and, best effort, the refresh token) at LINE, then deletes
    /// the grant, all under the grant's lock (a refresh in flight ends
    /// first, and its token is the one revoked). A revoke LINE did not
    /// confirm, whether it could not answer or refused the request (a wrong
    /// secret: LINE answers 200 for a token it no longer knows), keeps the
    /// grant, so the caller can fix and try again.
    ///
    /// # Errors
    /// [`LoginApiError::NoGrant`], [`LoginApiError::Line`],
    /// [`LoginApiError::LineRefused`], [`LoginApiError::Store`].
    pub async fn delete(
        &self,
        channel: &ChannelId,
        subject: &str,
        deauthorize_with: Option<AccessToken>,
    ) -> Result<(), LoginApiError> {
        let secret = {
            let inner = self.inner();
            let Some(c) = inner.channels.get(channel) else {
                return Err(LoginApiError::UnknownChannel(channel.to_string()));
            };
            c.config.secret.clone()
        };
        let permit = |e: NoPermit| e.api_error(channel);
        self.permit(channel).await.map_err(permit)?;
        let _grant = self.lock_grant(channel, subject).await;
        let (c, s) = (channel.clone(), subject.to_owned());
        let Some((_, tokens)) = self
            .store
            .blocking(move |st| st.login_grant_tokens(&c, &s))
            .await?
        else {
            return Err(LoginApiError::NoGrant);
        };
        let hash = subject_hash(subject);
        let mut detail = Vec::new();
        if let Some(channel_token) = deauthorize_with {
            match self
                .client
                .deauthorize(channel, &channel_token, &tokens.access)
                .await
            {
                Ok(Deauthorization::Deauthorized) => detail.push("deauthorized"),
                Ok(Deauthorization::NotAccepted { .. }) => {
                    detail.push("deauthorize not accepted (already deauthorized or token dead)");
                }
                Err(e) => return Err(self.line_failed(channel, &e)),
            }
            self.permit(channel).await.map_err(permit)?;
        }
        match self
            .client
            .revoke(channel, secret.as_ref(), &tokens.access)
            .await
        {
            Ok(()) => {}
            Err(e @ crate::line::error::LineError::Permanent { .. }) => {
                return Err(LoginApiError::LineRefused {
                    operation: "revoke of the access token",
                    code: e.code().map(str::to_owned),
                    detail: e.to_string(),
                });
            }
            Err(e) => return Err(self.line_failed(channel, &e)),
        }
        // LINE answers the revoke 200 whatever it did (a dead or unknown
        // token too): only a verify that refuses shows it is gone. Until
        // then the grant is kept, so the delete can be asked again.
        self.permit(channel).await.map_err(permit)?;
        match self.client.verify(&tokens.access).await {
            Ok(Verification::Rejected { .. }) => detail.push("access token revoked"),
            Ok(Verification::Valid(_)) => {
                tracing::warn!(channel = %channel, grant = %hash, "LINE answered the revoke of a LINE Login access token but still accepts it; the grant is kept");
                return Err(LoginApiError::Line(
                    "LINE answered the revoke but still accepts the access token; the grant \
                     is kept: delete it again"
                        .to_owned(),
                ));
            }
            Err(e) => {
                return Err(LoginApiError::Line(format!(
                    "the access token was revoked, but the verify that confirms it failed \
                     ({e}); the grant is kept: delete it again"
                )));
            }
        }
        match self.permit(channel).await {
            Ok(()) => {
                if let Err(e) =
                    revoke_refresh(&self.client, channel, secret.as_ref(), &tokens.refresh).await
                {
                    tracing::info!(channel = %channel, grant = %hash, "revoking the refresh token (LINE's undocumented form) failed: {e}");
                } else {
                    detail.push("refresh token revoked");
                }
            }
            Err(_) => {
                tracing::info!(channel = %channel, grant = %hash, "the refresh token was not revoked (LINE's undocumented form): linetokd is stopping");
            }
        }
        let now = self.clock.now();
        let (c, s, d) = (channel.clone(), subject.to_owned(), detail.join(", "));
        self.store
            .blocking(move |st| st.delete_login_grant(now, &c, &s, &d))
            .await?;
        tracing::info!(channel = %channel, grant = %hash, "LINE Login grant deleted ({})", detail.join(", "));
        self.inner().next_notice = None;
        self.wake.notify_one();
        Ok(())
    }

    /// Runs one pass now (tests and `linetokd` internals wake the task
    /// instead).
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// One grant under a notice, as its alert tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Notice {
    hash: String,
    horizon_at: DateTime<Utc>,
    estimated: bool,
}

impl Notice {
    fn of(g: &GrantRecord) -> Self {
        Self {
            hash: g.subject_hash(),
            horizon_at: g.horizon_at,
            estimated: g.horizon_estimated,
        }
    }
}

/// The alerts of one login channel's grants under one notice: one per
/// grant, or, when more than [`AGGREGATE_ABOVE`] are, one for the channel
/// (labelled `login_channel`) with their count, the span of their
/// horizons and the first few hashes. A receiver then gets one message
/// per channel however many grants fall due in a pass; what it supports
/// (one request per alert for linetokd's event format, a text limit for
/// LINE) stays within bounds.
fn notice_specs(
    channel: &ChannelId,
    alertname: &'static str,
    mut grants: Vec<Notice>,
) -> Vec<AlertSpec> {
    let due = alertname == "login_reauth_due";
    if grants.len() <= AGGREGATE_ABOVE {
        return grants
            .into_iter()
            .map(|n| AlertSpec {
                group: None,
                label: Some(AlertLabel {
                    name: "login_grant",
                    value: format!("{channel}/{}", n.hash),
                }),
                alertname,
                severity: "warning",
                summary: if due {
                    format!(
                        "LINE Login grant {} of login channel {channel} ends at {}{}: ask the \
                         user to log in again",
                        n.hash,
                        fmt_time(n.horizon_at),
                        if n.estimated { " (estimated)" } else { "" }
                    )
                } else {
                    format!(
                        "LINE Login grant {} of login channel {channel} needs a new login: its \
                         refresh token is no longer accepted",
                        n.hash
                    )
                },
            })
            .collect();
    }
    grants.sort_by(|a, b| (a.horizon_at, &a.hash).cmp(&(b.horizon_at, &b.hash)));
    let count = grants.len();
    let first: Vec<&str> = grants
        .iter()
        .take(AGGREGATE_NAMES)
        .map(|n| n.hash.as_str())
        .collect();
    let named = format!(
        "grants {} and {} more; `linetokd status` counts them and the event history lists each",
        first.join(", "),
        count - first.len()
    );
    let summary = if due {
        let (from, to) = (
            grants.first().map(|n| n.horizon_at),
            grants.last().map(|n| n.horizon_at),
        );
        format!(
            "{count} LINE Login grants of login channel {channel} end between {} and {}: ask \
             their users to log in again ({named})",
            from.map(fmt_time).unwrap_or_default(),
            to.map(fmt_time).unwrap_or_default(),
        )
    } else {
        format!(
            "{count} LINE Login grants of login channel {channel} need a new login: their \
             refresh tokens are no longer accepted ({named})"
        )
    };
    vec![AlertSpec {
        group: None,
        label: Some(AlertLabel {
            name: "login_channel",
            value: channel.to_string(),
        }),
        alertname,
        severity: "warning",
        summary,
    }]
}

async fn revoke_refresh(
    client: &LoginClient,
    channel: &ChannelId,
    secret: Option<&crate::domain::ChannelSecret>,
    refresh: &RefreshToken,
) -> Result<(), crate::line::login::LoginError> {
    client.revoke_refresh_token(channel, secret, refresh).await
}

/// Every active grant's next refresh under `t` (keeping a pending
/// backoff): the start-up schedule, also what `linetokd bench` times for
/// 100,000 grants.
pub fn schedule(t: &Timings, grants: &[GrantRecord]) -> Vec<(ChannelId, String, DateTime<Utc>)> {
    grants
        .iter()
        .filter(|g| g.state == GrantState::Active)
        .map(|g| {
            let next = if g.lost_refresh {
                g.next_refresh_at
            } else {
                rules::resume(
                    t,
                    g.access_expires_at,
                    g.horizon_at,
                    rules::jitter(g.channel.as_str(), &g.subject),
                    g.retry_not_before,
                    g.last_refresh_at,
                )
            };
            (g.channel.clone(), g.subject.clone(), next)
        })
        .collect()
}

/// How long a bucket at `rate` takes to serve `requests` (for the CLI's
/// estimate).
pub fn duration_at_rate(requests: u64, rate: u32) -> Duration {
    Duration::from_secs_f64(requests as f64 / f64::from(rate.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notices(n: usize) -> Vec<Notice> {
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        (0..n)
            .map(|i| Notice {
                hash: format!("h{i:07}"),
                horizon_at: t0 + TimeDelta::hours(i64::try_from(n - i).unwrap_or(0)),
                estimated: false,
            })
            .collect()
    }

    #[test]
    fn up_to_twenty_notices_are_one_alert_each() {
        let c = ChannelId::new("1660000000");
        let specs = notice_specs(&c, "login_reauth_due", notices(AGGREGATE_ABOVE));
        assert_eq!(specs.len(), AGGREGATE_ABOVE);
        assert!(
            specs
                .iter()
                .all(|s| s.label.as_ref().is_some_and(|l| l.name == "login_grant"))
        );
    }

    #[test]
    fn more_than_twenty_notices_are_one_alert_of_the_channel_naming_the_first_few() {
        let c = ChannelId::new("1660000000");
        for alertname in ["login_reauth_due", "login_reauth_required"] {
            let specs = notice_specs(&c, alertname, notices(AGGREGATE_ABOVE + 1));
            assert_eq!(specs.len(), 1);
            let spec = &specs[0];
            assert_eq!(spec.alertname, alertname);
            let label = spec.label.as_ref().map(|l| (l.name, l.value.as_str()));
            assert_eq!(label, Some(("login_channel", "1660000000")));
            assert!(
                spec.summary.starts_with("21 LINE Login grants"),
                "{}",
                spec.summary
            );
            // The earliest horizons first: the last generated ones.
            assert!(
                spec.summary.contains(
                    "grants h0000020, h0000019, h0000018, h0000017, h0000016 and 16 more"
                ),
                "{}",
                spec.summary
            );
        }
    }
}
